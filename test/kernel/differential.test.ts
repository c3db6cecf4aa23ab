/**
 * Differential test: random policies x random packets, the kernel's verdict
 * (secgroup's rendering applied in a namespace, real packets) must equal the
 * reference evaluator's on every packet. Seeded; the seed is printed, and
 * SECGROUP_SEED=<n> replays a run. A mismatch prints policy, packet and script.
 */
import { expect, it } from 'vitest';
import { compilePolicy } from '../../src/nft/compile.js';
import { renderScript } from '../../src/nft/render.js';
import { evaluate, describeReason } from '../../src/policy/evaluate.js';
import { formatPacket } from '../../src/policy/packet-text.js';
import { parsePolicy, type PolicyInput } from '../../src/policy/schema.js';
import { createRng, randomPackets, randomPlatform, randomPolicy } from '../helpers/random-policy.js';
import { LAYOUT } from '../helpers/netns.js';
import { describeKernel, useLab } from '../helpers/vitest-lab.js';

const POLICIES = Number(process.env.SECGROUP_DIFF_POLICIES ?? 200);
const PACKETS = Number(process.env.SECGROUP_DIFF_PACKETS ?? 50);

/** Moves the generated instance onto the lab's host addresses (everywhere the old ones appear). */
function onLabHost(doc: PolicyInput): PolicyInput {
  const map = new Map<string, string>();
  for (const a of doc.instance.addresses ?? []) map.set(a, a.includes(':') ? LAYOUT.host.v6 : LAYOUT.host.v4);
  const swap = (a: string) => map.get(a) ?? a;
  return {
    ...doc,
    instance: { ...doc.instance, addresses: [...new Set((doc.instance.addresses ?? []).map(swap))] },
    group_members: Object.fromEntries(Object.entries(doc.group_members ?? {}).map(([k, v]) => [k, [...new Set(v.map(swap))]])),
  };
}

describeKernel('kernel verdict == reference evaluator on random policies', () => {
  const lab = useLab();

  it(`${POLICIES} random policies x ${PACKETS} packets`, async () => {
    const seed = Number(process.env.SECGROUP_SEED ?? Math.floor(Math.random() * 2 ** 31));
    console.log(`differential seed=${seed} (replay: SECGROUP_SEED=${seed})`);
    const rng = createRng(seed);
    let compared = 0;
    let accepted = 0;
    const failures: string[] = [];
    for (let i = 0; i < POLICIES && failures.length === 0; i++) {
      const doc = onLabHost(randomPolicy(rng));
      const policy = parsePolicy(doc);
      const platform = randomPlatform(rng);
      const script = renderScript(compilePolicy(policy, { platform }).table);
      await lab().applyScript(script);
      const packets = randomPackets(rng, policy, PACKETS);
      const seen = await lab().observeDetailed(packets);
      packets.forEach((p, j) => {
        const obs = seen[j]!;
        const want = evaluate(policy, p, platform);
        const got = obs.accepted ? 'accept' : 'drop';
        compared++;
        if (obs.accepted) accepted++;
        if (obs.ctState !== 'new') {
          failures.push(`policy #${i} packet ${formatPacket(p)}: the kernel saw ct state ${obs.ctState}, not new (generator/harness problem)`);
        } else if (got !== want.verdict) {
          failures.push(
            `policy #${i}: ${formatPacket(p)}\n  kernel: ${got}\n  evaluator: ${want.verdict} (${describeReason(want.reason)})\n` +
              `--- policy ---\n${JSON.stringify(doc, null, 1)}\n--- platform ---\n${JSON.stringify(platform)}\n--- script ---\n${script}`,
          );
        }
      });
    }
    console.log(`differential: ${compared} packets compared, ${accepted} accepted, ${compared - accepted} dropped, ${failures.length} mismatches (seed ${seed})`);
    expect(failures.slice(0, 3).join('\n\n'), `seed ${seed}`).toBe('');
    expect(compared).toBe(POLICIES * PACKETS);
    // a test where everything is dropped (or accepted) proves little
    expect(accepted).toBeGreaterThan(compared * 0.1);
    expect(accepted).toBeLessThan(compared * 0.9);
  }, 600_000);
});
