// Builds the self-contained program: one ESM file with every dependency
// bundled except better-sqlite3 (a native addon), runnable as
// `node secgroup.mjs ...` or directly (it starts with `#!/usr/bin/env node`).
//
//   node scripts/bundle.mjs [--outfile FILE]      (npm run bundle -> dist/secgroup.mjs)
//   node scripts/bundle.mjs --entry FILE --outfile FILE   (tests: bundle another entry the same way)
//   node scripts/bundle.mjs --sea --outfile FILE  (CommonJS from src/cli/sea.ts, the script of the
//                                                  single executable: scripts/build-sea.mjs)
//
// better-sqlite3 is replaced by a small module that loads the real package on
// first use, from a node_modules next to the bundle (or above it), so that
// only the controller needs it: the agent and the policy commands run from the
// single file alone. See systemd/README.md, "The program".
import { chmodSync, readFileSync } from 'node:fs';
import path from 'node:path';
import process from 'node:process';
import console from 'node:console';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const args = process.argv.slice(2);
let outfile = path.join(repo, 'dist', 'secgroup.mjs');
let entry = path.join(repo, 'src/cli/main.ts');
let sea = false;
for (let i = 0; i < args.length; i++) {
  if (args[i] === '--sea') {
    sea = true;
    entry = path.join(repo, 'src/cli/sea.ts');
  } else if (args[i] === '--outfile' && args[i + 1]) outfile = path.resolve(args[++i]);
  else if (args[i] === '--entry' && args[i + 1]) entry = path.resolve(args[++i]);
  else {
    console.error(`usage: node scripts/bundle.mjs [--entry FILE] [--outfile FILE] (unknown argument ${JSON.stringify(args[i])})`);
    process.exit(2);
  }
}

// CommonJS dependencies bundled into ESM call require() for Node built-ins
// (and for optional packages such as ws's bufferutil); esbuild's require shim
// throws "Dynamic require ... is not supported" unless a real `require`
// exists, so the banner makes one. `__filename`/`__dirname` are not provided:
// no bundled code path we use needs them (pino is used with
// pino.destination only, never with worker-thread transports). The
// `#!/usr/bin/env node` line comes from src/cli/main.ts: esbuild keeps an
// entry point's hashbang above the banner (checked below).
const banner = [
  "import { createRequire as __secgroupCreateRequire } from 'node:module';",
  'const require = __secgroupCreateRequire(import.meta.url);',
].join('\n');

// The single executable runs one CommonJS script (no top-level await, no
// import.meta): `require` exists there but loads only Node's built-ins, so
// import.meta.url (used by the lazy native loader below) becomes the
// executable's own file URL: better-sqlite3 is then looked up in a
// node_modules beside the executable.
const seaBanner = "const __secgroupImportMetaUrl = require('node:url').pathToFileURL(process.execPath).href;";

const LAZY_NATIVE = ['better-sqlite3'];

/** Replaces a native package by a proxy that require()s it on first use, with an error that says where to put it. */
const lazyNative = {
  name: 'lazy-native',
  setup(b) {
    const filter = new RegExp(`^(${LAZY_NATIVE.join('|')})$`);
    b.onResolve({ filter }, (a) => ({ path: a.path, namespace: 'lazy-native' }));
    b.onLoad({ filter: /.*/, namespace: 'lazy-native' }, (a) => ({
      loader: 'js',
      // createRequire, not require(): esbuild would resolve a require() of
      // the package to this very module again.
      contents: `
import { createRequire } from 'node:module';
const requireBesideBundle = createRequire(import.meta.url);
let real;
function load() {
  if (real === undefined) {
    try {
      real = requireBesideBundle(${JSON.stringify(a.path)});
    } catch (e) {
      const err = new Error(${JSON.stringify(a.path)} + ' is not installed next to this program: the controller needs the package with its native addon in a node_modules directory beside or above ' + import.meta.url.replace(/^file:\\/\\//, '') + ' (' + (e && e.message ? e.message.split('\\n')[0] : String(e)) + ')');
      err.code = 'NATIVE_DEPENDENCY_MISSING';
      err.cause = e;
      throw err;
    }
  }
  return real;
}
const lazy = new Proxy(function () {}, {
  apply: (_t, self, args) => Reflect.apply(load(), self, args),
  construct: (_t, args, target) => Reflect.construct(load(), args, target === lazy ? load() : target),
  get: (_t, key) => Reflect.get(load(), key),
  has: (_t, key) => Reflect.has(load(), key),
  getPrototypeOf: () => Reflect.getPrototypeOf(load()),
});
export default lazy;
`,
    }));
  },
};

const result = await build({
  absWorkingDir: repo,
  entryPoints: [entry],
  // an --entry outside the repo still resolves packages from the repo's node_modules
  nodePaths: [path.join(repo, 'node_modules')],
  outfile,
  bundle: true,
  platform: 'node',
  target: sea ? 'node22' : 'node20',
  format: sea ? 'cjs' : 'esm',
  banner: { js: sea ? seaBanner : banner },
  ...(sea ? { define: { 'import.meta.url': '__secgroupImportMetaUrl' } } : {}),
  // ws loads these optional speed-ups inside try/catch; they are not installed.
  external: ['bufferutil', 'utf-8-validate'],
  plugins: [lazyNative],
  legalComments: 'eof',
  // Whitespace and syntax minification, identifiers kept (stack traces still
  // name every function): Node keeps the whole source text in memory for
  // lazy compilation, and unminified it is 3.6 MB and, because a few
  // comments of dependencies carry non-Latin-1 characters (an em dash), a
  // two-byte string of 7 MB. Minified: 2.4 MB, one-byte. `--version` RSS
  // 71 -> 64 MB (bench/README.md, footprint).
  minifyWhitespace: true,
  minifySyntax: true,
  sourcemap: false,
  metafile: true,
  logLevel: 'warning',
});
if (!sea && !readFileSync(outfile, 'utf8').startsWith('#!/usr/bin/env node\n')) {
  // (an --entry without a hashbang fails here too: the artefact must run as a command)
  console.error(`bundle: ${outfile} does not start with #!/usr/bin/env node (src/cli/main.ts lost its hashbang?)`);
  process.exit(1);
}
chmodSync(outfile, 0o755);
const bytes = Object.values(result.metafile.outputs).reduce((n, o) => n + o.bytes, 0);
console.log(`bundle: ${path.relative(process.cwd(), outfile) || outfile} (${(bytes / 1024).toFixed(0)} KiB, ${Object.keys(result.metafile.inputs).length} inputs)`);
