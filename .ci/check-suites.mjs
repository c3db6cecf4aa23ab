// Fails unless the vitest JSON report shows every required suite ran with no
// skipped or failed test. Usage: node .ci/check-suites.mjs REPORT DIR [DIR...]
import { readFileSync } from 'node:fs';
import { relative } from 'node:path';

const [report, ...dirs] = process.argv.slice(2);
const data = JSON.parse(readFileSync(report, 'utf8'));
let bad = 0;
for (const dir of dirs) {
  const files = data.testResults.filter((f) => relative(process.cwd(), f.name).startsWith(dir));
  const tests = files.flatMap((f) => f.assertionResults);
  const passed = tests.filter((t) => t.status === 'passed').length;
  const skipped = tests.filter((t) => t.status === 'skipped' || t.status === 'pending' || t.status === 'todo').length;
  const failed = tests.filter((t) => t.status === 'failed').length;
  console.log(`suite ${dir}: ${files.length} files, ${passed} passed, ${failed} failed, ${skipped} skipped`);
  if (files.length === 0 || passed === 0 || skipped > 0 || failed > 0) {
    console.error(`suite ${dir} must run completely in CI (as root); it did not`);
    bad++;
  }
}
process.exit(bad ? 1 : 0);
