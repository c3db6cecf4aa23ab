/**
 * What the hub pushes, decided without sockets: full document or
 * `policy_delta`, the digest a delta is checked against, and the caches
 * shared between the documents of one change.
 */
import { describe, expect, it } from 'vitest';
import { PushDocuments } from '../../src/controller/push-documents.js';
import { renderPolicyText } from '../../src/controller/policy-documents.js';
import { storedParts } from '../../src/controller/model.js';
import { sha256 } from '../../src/lib/hash.js';
import { applyPolicyDelta } from '../../src/protocol/delta.js';
import type { StoredPolicy } from '../../src/controller/store/store.js';

const GROUPS = '"security_groups":[{"id":"sg-web","name":"web","rules":[{"id":"r1","direction":"ingress","priority":1,"action":"allow","ethertype":"IPv4","remote_group_id":"sg-db"}]}],"address_groups":[]';

/** A stored document as a commit hands it to the hub (with parts) or as a store returns it (body only). */
function doc(revision: number, o: { addresses?: string[]; members?: Record<string, string[]>; groups?: string; parts?: boolean } = {}): StoredPolicy {
  const instance = `{"instance":${JSON.stringify({ id: 'ecs-1', addresses: o.addresses ?? ['198.18.0.1'] })},`;
  const members = JSON.stringify(o.members ?? { 'sg-db': ['198.18.0.2'] });
  const shared = `${o.groups ?? GROUPS},"group_members":${members}}`;
  const body = instance + shared;
  return o.parts === false ? { revision, body } : { revision, body, parts: { instance, shared, sharedHash: sha256(shared), members } };
}

const text = (frame: string | Buffer): string => (typeof frame === 'string' ? frame : frame.toString('utf8'));

describe('push documents', () => {
  it('a full policy frame carries the document exactly as rendered for GET .../policy, from parts or from a body', () => {
    const docs = new PushDocuments({ deltas: true });
    for (const p of [doc(3), doc(3, { parts: false })]) {
      const frame = text(docs.policyFrame(p));
      expect(frame).toBe(`{"type":"policy","policy":${renderPolicyText(3, p.body)}}`);
      expect(JSON.parse(frame).policy.revision).toBe(3);
    }
  });

  it('the parts found in a stored tail (storedParts, a read by another replica) are those a commit hands over, so frames, digests and deltas come out the same', () => {
    const committed = doc(3, { members: { 'sg-db': ['198.18.0.2', '198.18.0.3'] } });
    const { instance, shared, sharedHash } = committed.parts!;
    const found = storedParts(instance, shared, sharedHash);
    expect(found).toEqual(committed.parts);
    const docs = new PushDocuments({ deltas: true });
    const read = { revision: 3, body: committed.body, parts: found! };
    expect(text(docs.policyFrame(read))).toBe(text(docs.policyFrame(committed)));
    expect(docs.sentDocument(read)).toEqual(docs.sentDocument(committed));
    // a tail that does not end with a member list has no parts: the body is used as it is
    expect(storedParts(instance, '"security_groups":[]}', 'h')).toBeNull();
  });

  it('the first change on a connection (no document sent yet) is sent in full', () => {
    const docs = new PushDocuments({ deltas: true });
    expect(docs.change(null, doc(2))).toEqual({ delta: null, next: null });
  });

  it('a change of member lists only is a policy_delta from the last sent revision, and applying it gives the new document', () => {
    const docs = new PushDocuments({ deltas: true });
    const base = docs.remember(doc(4))!;
    const next = doc(5, { members: { 'sg-db': ['198.18.0.2', '198.18.0.3'] } });
    const { delta, next: sent } = docs.change(base, next);
    expect(delta).toBe('{"type":"policy_delta","base_revision":4,"revision":5,"group_members":{"sg-db":{"add":["198.18.0.3"],"remove":[]}}}');
    expect(sent).toMatchObject({ revision: 5, headDigest: base.headDigest, members: { 'sg-db': ['198.18.0.2', '198.18.0.3'] } });
    const applied = applyPolicyDelta(JSON.parse(renderPolicyText(4, doc(4).body)), JSON.parse(delta!));
    expect(JSON.stringify(applied)).toBe(renderPolicyText(5, next.body));
  });

  it('a change outside the member lists (the instance, the rules) is sent in full', () => {
    const docs = new PushDocuments({ deltas: true });
    const base = docs.remember(doc(4))!;
    const addresses = docs.change(base, doc(5, { addresses: ['198.18.0.9'], members: { 'sg-db': ['198.18.0.3'] } }));
    expect(addresses.delta).toBeNull();
    expect(addresses.next!.headDigest).not.toBe(base.headDigest);
    const rules = docs.change(base, doc(5, { groups: GROUPS.replace('"priority":1', '"priority":2') }));
    expect(rules.delta).toBeNull();
    expect(rules.next!.headDigest).not.toBe(base.headDigest);
  });

  it('a referenced group appearing or disappearing is not a delta, nor is an unchanged member list', () => {
    const docs = new PushDocuments({ deltas: true });
    const base = docs.remember(doc(4))!;
    expect(docs.change(base, doc(5, { members: { 'sg-db': ['198.18.0.2'], 'sg-web': [] } })).delta).toBeNull();
    expect(docs.change(base, doc(5, { members: {} })).delta).toBeNull();
    expect(docs.change(base, doc(5)).delta).toBeNull();
  });

  it('the digest of the document without its members is the same for a document in parts and for the same body read from the store', () => {
    const docs = new PushDocuments({ deltas: true });
    const fromParts = docs.sentDocument(doc(4))!;
    const fromBody = docs.sentDocument(doc(4, { parts: false }))!;
    expect(fromBody.headDigest).toBe(fromParts.headDigest);
    expect(fromBody.headDigest).toMatch(/^[0-9a-f]{64}$/);
    // so a delta computed against a document read back from the store works as against one handed over
    expect(docs.change(fromBody, doc(5, { members: { 'sg-db': [] } })).delta).toBe(
      '{"type":"policy_delta","base_revision":4,"revision":5,"group_members":{"sg-db":{"add":[],"remove":["198.18.0.2"]}}}',
    );
  });

  it('a body that cannot be split into its parts gets no delta base, so the next change goes in full', () => {
    const docs = new PushDocuments({ deltas: true });
    const odd: StoredPolicy = { revision: 4, body: '{"instance":{"id":"ecs-1","addresses":[]},"group_members":{},"security_groups":[]}' };
    expect(docs.sentDocument(odd)).toBeNull();
    expect(docs.remember(odd)).toBeNull();
  });

  it('documents with the same member lists share one parsed copy', () => {
    const docs = new PushDocuments({ deltas: true });
    const a = docs.sentDocument(doc(4))!;
    const b = docs.sentDocument(doc(7, { addresses: ['198.18.0.7'] }))!;
    expect(b.members).toBe(a.members);
    expect(b.headDigest).not.toBe(a.headDigest);
  });

  it('with deltas disabled nothing is remembered, so every change is sent in full', () => {
    const docs = new PushDocuments({ deltas: false });
    expect(docs.remember(doc(4))).toBeNull();
    expect(docs.change(null, doc(5, { members: { 'sg-db': [] } })).delta).toBeNull();
  });

  it('the delta base of a full send is the document already computed for the change when given', () => {
    const docs = new PushDocuments({ deltas: true });
    const known = docs.sentDocument(doc(4))!;
    expect(docs.remember(doc(4), known)).toBe(known);
  });
});
