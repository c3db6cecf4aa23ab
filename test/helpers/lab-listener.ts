/** TCP listeners for the agent lab (run inside the host namespace): accepts and closes on every port given. */
import { createServer } from 'node:net';

const ports = process.argv.slice(2).map(Number);
let ready = 0;
for (const p of ports) {
  createServer((s) => s.end()).listen(p, '0.0.0.0', () => {
    if (++ready === ports.length) process.stdout.write('ready\n');
  });
}
process.stdin.on('close', () => process.exit(0));
process.stdin.resume();
