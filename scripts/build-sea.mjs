// Builds dist/secgroup: one executable file holding Node.js and the whole
// program (agent, CLI, controller), for hosts without Node.js. Node's single
// executable applications: the CommonJS bundle (bundle.mjs --sea) becomes a
// blob (`node --experimental-sea-config`) that postject injects into a copy
// of the node binary. The bundle's second file, the controller's part, goes
// into the blob as an asset (the script loads it when a controller command
// runs).
//
//   node scripts/build-sea.mjs          (npm run build:sea; run it with Node 24:
//                                        npm run build:sea, on Node >= 22)
//
// The node binary is the one running this script (process.execPath) or
// $SECGROUP_SEA_NODE; it must be Node >= 22 (SEA with code cache). The
// controller's store is Node's built-in node:sqlite: nothing else to ship.
import { execFileSync, spawnSync } from 'node:child_process';
import { chmodSync, copyFileSync, mkdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import process from 'node:process';
import console from 'node:console';
import { fileURLToPath } from 'node:url';

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const node = process.env.SECGROUP_SEA_NODE ?? process.execPath;
const version = execFileSync(node, ['--version'], { encoding: 'utf8' }).trim();
const major = Number(/^v(\d+)\./.exec(version)?.[1]);
if (!(major >= 22)) {
  console.error(`build-sea: ${node} is ${version}; single executables need Node.js >= 22 (scripts/setup.sh installs Node 24)`);
  process.exit(1);
}
const work = path.join(repo, 'dist', 'sea');
const out = path.join(repo, 'dist', 'secgroup');
const script = path.join(work, 'secgroup.cjs');
const blob = path.join(work, 'secgroup.blob');
mkdirSync(work, { recursive: true });
execFileSync(process.execPath, [path.join(repo, 'scripts/bundle.mjs'), '--sea', '--outfile', script], { stdio: 'inherit' });
writeFileSync(
  path.join(work, 'sea-config.json'),
  JSON.stringify({
    main: script,
    output: blob,
    disableExperimentalSEAWarning: true,
    // V8's code cache of the script: start-up compiles less, and the agent holds ~7 MB less (see bench/sea.ts)
    useCodeCache: true,
    useSnapshot: false,
    // what `secgroup controller` runs, loaded only then (scripts/bundle.mjs): the agent never reads it
    assets: { 'secgroup-controller.cjs': path.join(work, 'secgroup-controller.cjs') },
  }),
);
execFileSync(node, ['--experimental-sea-config', path.join(work, 'sea-config.json')], { stdio: ['ignore', 'ignore', 'inherit'] });
rmSync(out, { force: true });
copyFileSync(node, out);
chmodSync(out, 0o755);
// symbols are for debuggers only (-18 MB); stripped before the blob goes in, which strip would not keep
try {
  execFileSync('strip', ['--strip-all', out], { stdio: ['ignore', 'ignore', 'inherit'] });
} catch (e) {
  console.error(`build-sea: strip failed, the executable keeps its symbols: ${e instanceof Error ? e.message : String(e)}`);
}
execFileSync(
  process.execPath,
  [path.join(repo, 'node_modules/postject/dist/cli.js'), out, 'NODE_SEA_BLOB', blob, '--sentinel-fuse', 'NODE_SEA_FUSE_fce680ab2cc467b6e072b8b5df1996b2'],
  { stdio: ['ignore', 'ignore', 'inherit'] },
);
const got = execFileSync(out, ['--version'], { encoding: 'utf8', env: { PATH: '/usr/bin:/bin' } }).trim();
// the controller's part, from the asset: `controller` without --config fails in it, naming the option
const ctl = spawnSync(out, ['controller'], { encoding: 'utf8', env: { PATH: '/usr/bin:/bin' } });
if (ctl.status !== 2 || !ctl.stderr.includes("'--config <file>'")) {
  console.error(`build-sea: ${out} controller: exit ${ctl.status}, ${ctl.stderr.trim()}`);
  process.exit(1);
}
console.log(`build-sea: ${path.relative(process.cwd(), out)} (${(statSync(out).size / 1e6).toFixed(1)} MB, node ${version}, secgroup ${got})`);
