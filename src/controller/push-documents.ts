/**
 * What the hub pushes to an agent, decided without sockets (the hub in
 * hub.ts only carries it): the `policy` frame of a document, and for a
 * changed document whether a `policy_delta` against the last document sent
 * on the connection says it, which is so when the two differ only in their
 * revision and member lists.
 *
 * A delta is checked against the digest of the document without its members
 * (`headDigest`), computed the same way for a document handed over by a
 * commit in parts (`BodyParts`) and for a body read from the store. The
 * caches (parsed member lists, encoded shared parts, delta texts) are owned
 * by one `PushDocuments`, bounded to a few recent entries (the documents of
 * one change mostly share them) or keyed weakly by the member-list objects.
 *
 * Pure: no I/O, no clock; the only state is those caches.
 */
import { sha256 } from '../lib/hash.js';
import { diffGroupMembers } from '../protocol/delta.js';
import { renderPolicyText } from './policy-documents.js';
import type { StoredPolicy } from './store/store.js';

export type Members = Readonly<Record<string, readonly string[]>>;

/** What a delta is computed against: the last document sent on a connection. */
export interface SentDocument {
  revision: number;
  /** digest of the document body before `group_members` (instance, groups, address groups), see `headDigest` */
  headDigest: string;
  /** the member lists, shared with other sessions that were sent the same lists */
  members: Members;
}

/** A changed document: the `policy_delta` frame to send (null: send it in full), and what later deltas are computed against. */
export interface ChangePlan {
  delta: string | null;
  next: SentDocument | null;
}

const MEMBERS_KEY = ',"group_members":{';
const GROUPS_KEY = ',"security_groups":';
const CLOSING_BRACE = Buffer.from('}');
/** entries kept in each bounded cache */
const RECENT = 8;

/**
 * A body's parts as `BodyParts` has them, found by searching (a document read
 * from the store). The body is serialised as instance, security groups,
 * address groups, members, in this order; the keys cannot occur inside a
 * string value, where quotes are escaped. Null when the body is not like that.
 */
function findParts(body: string): { instance: string; sharedHead: string; members: string } | null {
  const i = body.indexOf(GROUPS_KEY);
  const j = body.indexOf(MEMBERS_KEY);
  if (i < 0 || j < i || !body.endsWith('}}')) return null;
  return { instance: body.slice(0, i + 1), sharedHead: body.slice(i + 1, j), members: body.slice(j + MEMBERS_KEY.length - 1, -1) };
}

/** Digest of the document without its members: the same for a body found by search and for one handed over in parts. */
function headDigest(instance: string, sharedHeadDigest: string): string {
  return sha256(`${instance}\n${sharedHeadDigest}`);
}

function remember<K, V>(cache: Map<K, V>, key: K, value: V): V {
  cache.set(key, value);
  if (cache.size > RECENT) cache.delete(cache.keys().next().value!);
  return value;
}

export class PushDocuments {
  private readonly deltas: boolean;
  /** parsed member lists by their text, so agents sent the same lists share one copy (a few recent entries) */
  private readonly membersByText = new Map<string, Members>();
  /** by `BodyParts.shared` (one string for many documents): its UTF-8 bytes and the digest of its part before the members (a few recent entries) */
  private readonly sharedParts = new Map<string, { bytes?: Buffer; headDigest?: string }>();
  /** delta frame bodies (`group_members` of a `policy_delta`, null: no delta) by base and new member lists */
  private readonly deltaMemo = new WeakMap<Members, WeakMap<Members, string | null>>();

  /** `deltas`: membership-only changes may be sent as `policy_delta` */
  constructor(o: { deltas: boolean }) {
    this.deltas = o.deltas;
  }

  /**
   * The `policy` frame of a document. The document text is spliced in as
   * stored, so the agent gets exactly the bytes GET .../policy returns; a
   * Buffer holds UTF-8 text (the shared part encoded once for all documents
   * that have it).
   */
  policyFrame(p: StoredPolicy): string | Buffer {
    if (!p.parts) return `{"type":"policy","policy":${renderPolicyText(p.revision, p.body)}}`;
    const e = this.shared(p.parts.shared);
    e.bytes ??= Buffer.from(p.parts.shared);
    return Buffer.concat([Buffer.from(`{"type":"policy","policy":${renderPolicyText(p.revision, p.parts.instance)}`), e.bytes, CLOSING_BRACE]);
  }

  /**
   * A changed document `p`, the last one sent on the connection being `base`
   * (null: none, or deltas are off): the delta frame when `p` differs from
   * `base` only in its member lists, else null (send it in full).
   */
  change(base: SentDocument | null, p: StoredPolicy): ChangePlan {
    const next = base ? this.sentDocument(p) : null;
    if (!base || !next || next.headDigest !== base.headDigest) return { delta: null, next };
    const members = this.deltaText(base.members, next.members);
    if (members === null) return { delta: null, next };
    return { delta: `{"type":"policy_delta","base_revision":${base.revision},"revision":${p.revision},"group_members":${members}}`, next };
  }

  /** What later deltas are computed against once `p` was sent in full (`known`: already computed for it); null when deltas are off. */
  remember(p: StoredPolicy, known?: SentDocument | null): SentDocument | null {
    // null is a known answer too (a body that cannot be split): not searched again
    return this.deltas ? (known !== undefined ? known : this.sentDocument(p)) : null;
  }

  /** What a later delta is computed against; null when the body cannot be split (then no delta is sent). */
  sentDocument(p: StoredPolicy): SentDocument | null {
    let digest: string;
    let membersText: string;
    if (p.parts) {
      const { instance, shared, members } = p.parts;
      const e = this.shared(shared);
      e.headDigest ??= sha256(shared.slice(0, shared.length - members.length - MEMBERS_KEY.length));
      digest = headDigest(instance, e.headDigest);
      membersText = members;
    } else {
      const found = findParts(p.body);
      if (!found) return null;
      digest = headDigest(found.instance, sha256(found.sharedHead));
      membersText = found.members;
    }
    const members = this.membersByText.get(membersText) ?? remember(this.membersByText, membersText, JSON.parse(membersText) as Members);
    return { revision: p.revision, headDigest: digest, members };
  }

  /** Memo entry for a shared part (bounded: the documents of one change mostly share a few). */
  private shared(text: string): { bytes?: Buffer; headDigest?: string } {
    return this.sharedParts.get(text) ?? remember(this.sharedParts, text, {});
  }

  /** The `group_members` of a delta from `base` to `next`; null when it is not a delta (groups differ, or nothing changed). */
  private deltaText(base: Members, next: Members): string | null {
    let byNext = this.deltaMemo.get(base);
    if (!byNext) this.deltaMemo.set(base, (byNext = new WeakMap()));
    let text = byNext.get(next);
    if (text === undefined) {
      const d = diffGroupMembers(base, next);
      text = d && Object.keys(d).length ? JSON.stringify(d) : null;
      byNext.set(next, text);
    }
    return text;
  }
}
