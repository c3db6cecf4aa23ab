// Prints the directories (relative to the repo) of the installed packages that
// the production dependencies of package.json need at run time: the closure of
// dependencies, optionalDependencies and peerDependencies, resolved the way
// Node does (nearest node_modules upwards). Walks what is installed, so it does
// not depend on npm's view of the tree (`npm ls` calls everything "extraneous"
// when node_modules is a symlink to another checkout's).
//
//   node docker/prod-deps.mjs [repo]
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import process from 'node:process';
import console from 'node:console';

const repo = path.resolve(process.argv[2] ?? '.');
const readPkg = (dir) => JSON.parse(readFileSync(path.join(repo, dir, 'package.json'), 'utf8'));

function resolveFrom(fromDir, name) {
  // fromDir is '' (the repo) or node_modules/a[/node_modules/b...].
  for (let dir = fromDir; ; dir = path.dirname(dir)) {
    if (path.basename(dir) !== 'node_modules') {
      const candidate = path.join(dir === '.' ? '' : dir, 'node_modules', name);
      if (existsSync(path.join(repo, candidate, 'package.json'))) return candidate;
    }
    if (dir === '' || dir === '.' || dir === '/') return undefined;
  }
}

const seen = new Set();
const missing = [];
const queue = [''];
while (queue.length > 0) {
  const dir = queue.shift();
  const pkg = readPkg(dir);
  const required = Object.keys(pkg.dependencies ?? {});
  const optional = [
    ...Object.keys(pkg.optionalDependencies ?? {}),
    ...Object.keys(pkg.peerDependencies ?? {}).filter((n) => pkg.peerDependenciesMeta?.[n]?.optional),
  ];
  const peers = Object.keys(pkg.peerDependencies ?? {}).filter((n) => !pkg.peerDependenciesMeta?.[n]?.optional);
  for (const [names, mustExist] of [[required, true], [peers, dir === ''], [optional, false]]) {
    for (const name of names) {
      const found = resolveFrom(dir, name);
      if (found === undefined) {
        if (mustExist) missing.push(`${name} (needed by ${dir || 'package.json'})`);
        continue;
      }
      if (!seen.has(found)) {
        seen.add(found);
        queue.push(found);
      }
    }
  }
}
if (missing.length > 0) {
  console.error(`prod-deps: not installed: ${missing.join(', ')}`);
  process.exit(1);
}
for (const dir of [...seen].sort()) console.log(dir);
