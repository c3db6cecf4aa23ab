import { describe, expect, it } from 'vitest';
import { createRng, type Rng } from '../helpers/random-policy.js';
import { makeApi } from './controller-helpers.js';
import { createGroup, createInstance, createRules, deleteInstance, deleteRule, deleteGroup, ruleCreate, updateInstance, type RuleFields } from '../../src/controller/domain.js';
import { createAddressGroup, deleteAddressGroup, updateAddressGroup } from '../../src/controller/address-groups.js';
import { compileInstanceBody, indexProject, policyDigestOfBody, type ProjectIndex } from '../../src/controller/policy-documents.js';
import type { InstanceRow, ProjectSnapshot, RuleRow } from '../../src/controller/model.js';
import type { MutationContext, Mutation } from '../../src/controller/domain.js';
import { ApiError } from '../../src/controller/errors.js';

/** The reference: every group's rules and members indexed up front, as the compiler did before it indexed lazily. */
function fullIndex(snap: ProjectSnapshot): ProjectIndex {
  const rulesByGroup = new Map<string, RuleRow[]>();
  for (const r of snap.rules) if (r.enabled) rulesByGroup.set(r.security_group_id, [...(rulesByGroup.get(r.security_group_id) ?? []), r]);
  const membersByGroup = new Map<string, InstanceRow[]>();
  for (const i of snap.instances) for (const g of i.security_groups) membersByGroup.set(g, [...(membersByGroup.get(g) ?? []), i]);
  return { ...indexProject(snap), rulesByGroup, rulesIndexed: true, membersByGroup, membersIndexed: true };
}

const address = (rng: Rng): string => (rng.bool(0.7) ? `198.18.${rng.int(0, 2)}.${rng.int(1, 12)}` : `fd00:5ec::${rng.int(1, 12).toString(16)}`);

/** One random API-like change of the project (a mutation the domain may refuse). */
function randomChange(rng: Rng, snap: ProjectSnapshot, ctx: MutationContext): Mutation<unknown> {
  const groups = snap.groups.map((g) => g.id);
  const ags = snap.addressGroups;
  const pick = <T>(xs: readonly T[]): T | undefined => (xs.length ? rng.pick(xs) : undefined);
  const instance = pick(snap.instances);
  const rule = (): RuleFields => {
    const v6 = rng.bool(0.3);
    const kind = rng.int(0, 3);
    const ag = pick(ags.filter((a) => a.ip_version === (v6 ? 6 : 4)));
    return {
      direction: rng.pick(['ingress', 'egress'] as const),
      ethertype: v6 ? 'IPv6' : 'IPv4',
      priority: rng.int(1, 5),
      action: rng.pick(['allow', 'deny'] as const),
      protocol: rng.pick(['tcp', 'udp', undefined]),
      ...(rng.bool(0.5) ? { multiport: String(rng.int(1, 40)) } : {}),
      ...(kind === 1 ? { remote_group_id: rng.pick(groups) } : kind === 2 && ag ? { remote_address_group_id: ag.id } : kind === 3 ? { remote_ip_prefix: v6 ? 'fd00:5ec::/64' : `198.18.${rng.int(0, 2)}.0/24` } : {}),
      enabled: rng.bool(0.85),
    };
  };
  switch (rng.weighted<number>([[6, 0], [2, 1], [2, 2], [3, 3], [3, 4], [1, 5], [1, 6], [2, 7], [1, 8]])) {
    case 0: {
      const n = rng.int(1, 3);
      const g = rng.pick(groups);
      return createRules(snap, g, Array.from({ length: n }, () => ruleCreate(g, rule())), Array.from({ length: n }, (_, i) => `r[${i}]`), ctx, { ignoreDuplicates: true });
    }
    case 1:
      return deleteRule(snap, pick(snap.rules)?.id ?? 'none');
    case 2:
      return createGroup(snap, { name: `g${rng.int(0, 99)}`, description: '' }, ctx);
    case 3:
      return createInstance(snap, { name: 'i', addresses: [...new Set([address(rng), address(rng)])].slice(0, rng.int(0, 2)), security_groups: [...new Set([rng.pick(groups), rng.pick(groups)])] }, ctx);
    case 4:
      return updateInstance(
        snap,
        instance?.id ?? 'none',
        rng.bool() ? { addresses: [...new Set([address(rng), address(rng)])].slice(0, rng.int(0, 2)) } : { security_groups: [...new Set([rng.pick(groups), rng.pick(groups), rng.pick(groups)])] },
        ctx,
      );
    case 5:
      return deleteInstance(snap, instance?.id ?? 'none');
    case 6:
      return deleteGroup(snap, rng.pick(groups));
    case 7: {
      const ag = pick(ags);
      const v6 = ag ? ag.ip_version === 6 : rng.bool(0.3);
      const ip_set = [v6 ? `fd00:5ec:${rng.int(1, 9)}::/48` : `198.19.${rng.int(0, 9)}.0/24`];
      return ag && rng.bool(0.6) ? updateAddressGroup(snap, ag.id, { ip_set }, ctx) : createAddressGroup(snap, { name: 'a', description: '', ip_version: v6 ? 6 : 4, ip_set }, ctx);
    }
    default:
      return deleteAddressGroup(snap, pick(ags)?.id ?? 'none', { force: rng.bool() });
  }
}

describe.each([
  ['memory', false],
  ['sqlite', true],
] as const)('incremental compile (%s store)', (_name, sqlite) => {
  it('after random changes, exactly the documents whose full recompile differs get new revisions, and every stored document equals its full recompile', async () => {
    for (let seed = 1; seed <= 8; seed++) {
      const rng = createRng(seed);
      const t = makeApi({ sqlite, quotas: { rules_per_group: 1000, instances_per_project: 1000 } });
      const full = (snap: ProjectSnapshot) => {
        const ix = fullIndex(snap);
        return new Map(snap.instances.map((i) => [i.id, compileInstanceBody(ix, i)]));
      };
      let before = full(await t.service.read('p'));
      let applied = 0;
      let pushes = 0;
      for (let step = 0; step < 60; step++) {
        t.pushed.length = 0;
        try {
          await t.service.mutate('p', (snap, ctx) => randomChange(rng, snap, ctx));
          applied++;
        } catch (e) {
          if (!(e instanceof ApiError)) throw e;
        }
        const snap = await t.service.read('p');
        const after = full(snap);
        const changed = [...after].filter(([id, body]) => before.get(id) !== body).map(([id]) => id);
        const where = `seed ${seed} step ${step}`;
        expect(t.pushed.flatMap((p) => p.instances).sort(), where).toEqual(changed.sort());
        pushes += changed.length;
        for (const i of snap.instances) {
          expect(i.policy_hash, `${where} ${i.id}`).toBe(policyDigestOfBody(after.get(i.id)!));
          expect((await t.store.getPolicy('p', i.id))?.body, `${where} ${i.id}`).toBe(after.get(i.id));
        }
        before = after;
      }
      expect(applied, `seed ${seed}: most random changes are accepted`).toBeGreaterThan(20);
      expect(pushes, `seed ${seed}: documents changed`).toBeGreaterThan(20);
      await t.store.close();
    }
  }, 120_000);
});
