// Builds the self-contained program: a CommonJS file with every dependency
// bundled, runnable as `node secgroup.cjs ...` or directly (it starts with
// `#!/usr/bin/env node`), and the controller's part beside it (below).
// Nothing is left to resolve at run time but Node's built-ins: the
// controller's store is node:sqlite (no native addon), so the agent, the
// policy commands and the controller run from these two files alone.
//
//   node scripts/bundle.mjs [--outfile FILE]      (npm run bundle -> dist/secgroup.cjs)
//   node scripts/bundle.mjs --entry FILE --outfile FILE   (tests, benches: bundle another entry the same way)
//   node scripts/bundle.mjs --sea --outfile FILE  (CommonJS from src/cli/sea.ts, the script of the
//                                                  single executable: scripts/build-sea.mjs)
//
// The program is two files: FILE and, beside it, secgroup-controller.cjs,
// what `secgroup controller` runs (src/cli/controller-main.ts and the
// controller: fastify, ajv, pg, the node:sqlite store, the API schemas, 1.2 MB
// of the 2.7). The first file loads the second only when a controller command
// runs: an agent neither parses nor keeps the controller's code (-2 MB idle
// RSS). The single executable carries the second file as an asset
// (scripts/build-sea.mjs). An --entry bundle stays one file.
//
// The format follows the outfile's name: `*.mjs` is an ES module (for entries
// with top-level await), anything else CommonJS. The program is CommonJS
// because Node holds a 2.7 MB file loaded as an ES module at ~3 MB more RSS
// than the same file loaded as CommonJS (idle agent 74.2 vs 71.1 MB; a
// 2-line ESM file that require()s the CommonJS one costs nothing more, so it is
// the module's compilation, not the ESM loader: bench/README.md, "Issue 18
// round 5").
//
// See systemd/README.md, "The program".
import { chmodSync, readFileSync } from 'node:fs';
import { isBuiltin } from 'node:module';
import path from 'node:path';
import process from 'node:process';
import console from 'node:console';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const args = process.argv.slice(2);
let outfile = path.join(repo, 'dist', 'secgroup.cjs');
let entry = path.join(repo, 'src/cli/main.ts');
let sea = false;
/** the secgroup program (not an --entry of a test or bench): its controller part goes into a file of its own */
let program = true;
for (let i = 0; i < args.length; i++) {
  if (args[i] === '--sea') {
    sea = true;
    entry = path.join(repo, 'src/cli/sea.ts');
  } else if (args[i] === '--outfile' && args[i + 1]) outfile = path.resolve(args[++i]);
  else if (args[i] === '--entry' && args[i + 1]) {
    entry = path.resolve(args[++i]);
    program = false;
  }
  else {
    console.error(`usage: node scripts/bundle.mjs [--entry FILE] [--outfile FILE] (unknown argument ${JSON.stringify(args[i])})`);
    process.exit(2);
  }
}

// CommonJS dependencies bundled into ESM call require() for Node built-ins
// (and for optional packages such as ws's bufferutil); esbuild's require shim
// throws "Dynamic require ... is not supported" unless a real `require`
// exists, so the ESM banner makes one. `__filename`/`__dirname` are not
// provided: no bundled code path we use needs them (pino is used with
// pino.destination only, never with worker-thread transports). The
// `#!/usr/bin/env node` line comes from src/cli/main.ts: esbuild keeps an
// entry point's hashbang above the banner (checked below).
const esmBanner = [
  "import { createRequire as __secgroupCreateRequire } from 'node:module';",
  'const require = __secgroupCreateRequire(import.meta.url);',
].join('\n');

// CommonJS has no import.meta: import.meta.url (src/cli/console-dir.ts looks
// for the web console next to the program), .filename and .dirname become
// the file's own. The single executable runs one CommonJS script (no
// top-level await): `require` exists there but loads only Node's built-ins,
// and the program's file is the executable itself.
const format = sea || !outfile.endsWith('.mjs') ? 'cjs' : 'esm';
const file = sea ? 'process.execPath' : '__filename';
// The banner starts with the "use strict" that esbuild puts first in a
// CommonJS file from ES modules: below the banner it would be no directive,
// and the whole program would run in sloppy mode.
const cjsBanner = `"use strict";const __secgroupImportMeta = { url: require('node:url').pathToFileURL(${file}).href, filename: ${file}, dirname: require('node:path').dirname(${file}) };`;

// Node's built-in modules come in as CommonJS (`require`), never as ESM
// `import`s. An ESM import of a built-in makes Node build that module's whole
// namespace, reading every export, lazy ones included: `import { createServer }
// from 'node:http'` loads http2 and undici for http's WebSocket exports (+14 MB
// of RSS, bench/README.md "Issue 18 round 4"). And esbuild hoists every
// built-in import to the top of the file, also those of modules it otherwise
// initialises only when first imported (the controller's, behind `await
// import()` in src/cli/controller-command.ts): the agent would load
// node:sqlite and the controller's HTTP stack at start. As CommonJS shims they
// load when the module that needs them is initialised.
//
// `tls` and `https` are lazier still: ws requires them at its start for
// wss:// (and prom-client for its push gateway), OpenSSL's set-up costs ~4 MB,
// and an agent with a ws:// controller never uses them. Their shims load the
// real module at the first property read (`tls.connect`, `https.request`).
const LAZY_BUILTINS = new Set(['tls', 'https']);
const builtinsAsCommonJs = {
  name: 'builtins-as-commonjs',
  setup(b) {
    b.onResolve({ filter: /^[a-z_/0-9:]+$/ }, (a) => {
      if (!isBuiltin(a.path) || a.namespace === 'builtin') return undefined;
      const name = a.path.replace(/^node:/, '');
      return { path: a.path.startsWith('node:') || !isBuiltin(`node:${name}`) ? a.path : `node:${name}`, namespace: 'builtin', pluginData: { lazy: LAZY_BUILTINS.has(name) } };
    });
    b.onLoad({ filter: /.*/, namespace: 'builtin' }, (a) => ({
      loader: 'js',
      contents: a.pluginData?.lazy
        ? `let m; const load = () => (m ??= require(${JSON.stringify(a.path)}));
           module.exports = new Proxy({}, {
             get: (_, k) => load()[k],
             has: (_, k) => k in load(),
             ownKeys: () => Reflect.ownKeys(load()),
             getOwnPropertyDescriptor: (_, k) => { const d = Reflect.getOwnPropertyDescriptor(load(), k); return d && { ...d, configurable: true }; },
           });`
        : `module.exports = require(${JSON.stringify(a.path)});`,
    }));
  },
};

// zod configures its English messages itself and exports every other locale
// as `z.locales.*` (~60 of them, 300 KB, 11 % of the program's source text,
// which Node keeps in memory); nothing of ours uses them: `z.locales` holds
// `en` only. (-0.5 MB idle RSS, bench/README.md "Issue 18 round 5".)
const zodEnglishOnly = {
  name: 'zod-english-only',
  setup(b) {
    b.onResolve({ filter: /^\.\.\/locales\/index\.js$/ }, (a) => (/[\\/]node_modules[\\/]zod[\\/]/.test(a.importer) ? { path: path.join(a.resolveDir, a.path), namespace: 'zod-locales' } : undefined));
    b.onLoad({ filter: /.*/, namespace: 'zod-locales' }, (a) => ({ loader: 'js', resolveDir: path.dirname(a.path), contents: 'export { default as en } from "./en.js";' }));
  },
};

// `./controller-main.js`, imported by src/cli/controller-command.ts when a
// controller command runs, becomes a loader of the second file: the file
// beside this one (a relative require: the bundle's own directory, also
// through the ESM banner's createRequire), or the single executable's asset,
// compiled like a CommonJS module with the executable's `require` (built-ins
// only: the part bundles everything else).
const CONTROLLER_PART = 'secgroup-controller.cjs';
const controllerApart = {
  name: 'controller-apart',
  setup(b) {
    b.onResolve({ filter: /^\.\/controller-main\.js$/ }, (a) => (a.importer.endsWith(path.join('src', 'cli', 'controller-command.ts')) ? { path: CONTROLLER_PART, namespace: 'controller-part' } : undefined));
    b.onLoad({ filter: /.*/, namespace: 'controller-part' }, () => ({
      loader: 'js',
      contents: sea
        ? `const code = require('node:sea').getAsset(${JSON.stringify(CONTROLLER_PART)}, 'utf8');
           const part = { exports: {} };
           require('node:vm').compileFunction(code, ['exports', 'require', 'module', '__filename', '__dirname'], { filename: ${JSON.stringify(CONTROLLER_PART)} })(part.exports, require, part, process.execPath, require('node:path').dirname(process.execPath));
           module.exports = part.exports;`
        : `const name = ${JSON.stringify(`./${CONTROLLER_PART}`)};
           try {
             module.exports = require(name);
           } catch (e) {
             if (e?.code !== 'MODULE_NOT_FOUND' || !String(e.message).includes(name.slice(2))) throw e;
             throw new Error(\`the controller's part of the program, ${CONTROLLER_PART}, is not next to it (npm run bundle writes both files; install.sh installs both)\`, { cause: e });
           }`,
    }));
  },
};

async function bundle(entryPoint, out, outFormat, plugins) {
  return build({
    plugins: [builtinsAsCommonJs, zodEnglishOnly, ...plugins],
    absWorkingDir: repo,
    entryPoints: [entryPoint],
    // an --entry outside the repo still resolves packages from the repo's node_modules
    nodePaths: [path.join(repo, 'node_modules')],
    outfile: out,
    bundle: true,
    platform: 'node',
    target: 'node22',
    format: outFormat,
    banner: { js: outFormat === 'cjs' ? cjsBanner : esmBanner },
    ...(outFormat === 'cjs' ? { define: { 'import.meta': '__secgroupImportMeta' } } : {}),
    // ws loads these optional speed-ups inside try/catch; they are not installed.
    external: ['bufferutil', 'utf-8-validate'],
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
}

const results = [await bundle(entry, outfile, format, program ? [controllerApart] : [])];
if (!sea && !readFileSync(outfile, 'utf8').startsWith('#!/usr/bin/env node\n')) {
  // (an --entry without a hashbang fails here too: the artefact must run as a command)
  console.error(`bundle: ${outfile} does not start with #!/usr/bin/env node (src/cli/main.ts lost its hashbang?)`);
  process.exit(1);
}
chmodSync(outfile, 0o755);
const part = path.join(path.dirname(outfile), CONTROLLER_PART);
// (an --entry bundle writes its one file and nothing else: a program's part beside it, say in the directory a test
// bundled the program into, stays)
if (program) results.push(await bundle(path.join(repo, 'src/cli/controller-main.ts'), part, 'cjs', []));
for (const r of results) {
  const [file, o] = Object.entries(r.metafile.outputs)[0];
  console.log(`bundle: ${path.relative(process.cwd(), path.resolve(repo, file)) || file} (${(o.bytes / 1024).toFixed(0)} KiB, ${Object.keys(r.metafile.inputs).length} inputs)`);
}
