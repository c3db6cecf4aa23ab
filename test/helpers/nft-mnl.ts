/**
 * nf_tables netlink batches as comparable text: the batch `nft --debug=mnl`
 * prints (libmnl's dump: a message header, then one row per attribute header
 * and per 4 bytes of data), and a batch of bytes (nft/netlink-batch.ts).
 * Each message becomes its type and an indented attribute tree (nested
 * attributes by NLA_F_NESTED); lookups and dumps (GET messages) are left out
 * and set ids numbered in order of first use (nft's ids count sets of its
 * own evaluation too), so equal text means the same batch.
 */

interface Message {
  type: number;
  /** nfgenmsg and attributes */
  body: Buffer;
}

// eslint-disable-next-line no-control-regex
const ANSI = /\x1b\[[0-9;]*m/g;

/** The messages `nft --debug=mnl -f` printed (its stdout). */
export function mnlDumpMessages(dump: string): Message[] {
  const lines = dump.replace(ANSI, '').split('\n');
  const out: { type: number; parts: Buffer[] }[] = [];
  for (let i = 0; i < lines.length; i++) {
    const l = lines[i]!;
    if (/^\|\s+\d+\s+\|\s+\| message length/.test(l)) {
      const t = /^\|\s+(\d+)\s+\|/.exec(lines[i + 1] ?? '');
      out.push({ type: Number(t?.[1]), parts: [] });
      i += 3;
      continue;
    }
    const cur = out[out.length - 1];
    if (!cur) continue;
    const a = /^\|(\d+)\|(..)\|(\d+)\|\s+\|len/.exec(l);
    if (a) {
      const b = Buffer.alloc(4);
      b.writeUInt16LE(Number(a[1]));
      b.writeUInt16LE(Number(a[3]) | (a[2]![0] === 'N' ? 0x8000 : 0) | (a[2]![1] === 'B' ? 0x4000 : 0), 2);
      cur.parts.push(b);
      continue;
    }
    const d = /^\| ([0-9a-f]{2}) ([0-9a-f]{2}) ([0-9a-f]{2}) ([0-9a-f]{2}) {2}\|\s+\|\s+(data|extra header)/.exec(l);
    if (d) cur.parts.push(Buffer.from(d.slice(1, 5).join(''), 'hex'));
  }
  return out.map((m) => ({ type: m.type, body: Buffer.concat(m.parts) }));
}

/** The messages of a batch of bytes. */
export function batchMessages(batch: Buffer): Message[] {
  const out: Message[] = [];
  for (let o = 0; o < batch.length; ) {
    const len = batch.readUInt32LE(o);
    out.push({ type: batch.readUInt16LE(o + 4), body: batch.subarray(o + 16, o + len) });
    o += (len + 3) & ~3;
  }
  return out;
}

const GET = new Set([1, 4, 7, 10, 13, 16, 19, 23]);
const LOOKUP_NAME = Buffer.from('lookup\0').toString('hex');

/** The messages as text, one attribute a line (see the note at the top); `withEnd`: keep the batch end (nft --check sends none). */
export function batchText(messages: Message[], withEnd = true): string {
  const ids = new Map<string, string>();
  const id = (hex: string) => {
    if (!ids.has(hex)) ids.set(hex, `ID${ids.size + 1}`);
    return ids.get(hex)!;
  };
  const out: string[] = [];
  for (const m of messages) {
    const sub = m.type >> 8;
    const t = m.type & 0xff;
    if (sub === 10 && GET.has(t)) continue;
    if (!withEnd && m.type === 0x11) continue;
    out.push(`msg ${sub}:${t} ${m.body.subarray(0, 4).toString('hex')}`);
    const walk = (b: Buffer, depth: number, path: number[], lookup: boolean) => {
      for (let o = 0; o + 4 <= b.length; ) {
        const len = b.readUInt16LE(o);
        const type = b.readUInt16LE(o + 2);
        if (len < 4) break;
        const v = b.subarray(o + 4, o + len);
        const k = type & 0x3fff;
        if (type & 0x8000) {
          out.push(`${'  '.repeat(depth)}${k} N`);
          // an expression: [1 name, 2 data]; its data's attribute 4 is a lookup's set id
          let isLookup = lookup;
          if (path.length === 1 && path[0] === 4) isLookup = v.length > 4 && v.subarray(4, v.readUInt16LE(0)).toString('hex') === LOOKUP_NAME;
          walk(v, depth + 1, [...path, k], isLookup);
        } else {
          const hex = v.toString('hex');
          const isId = (t === 9 && path.length === 0 && k === 10) || (t === 12 && path.length === 0 && k === 4) || (t === 6 && lookup && path.length === 3 && k === 4);
          out.push(`${'  '.repeat(depth)}${k} ${isId ? id(hex) : hex}`);
        }
        o += (len + 3) & ~3;
      }
    };
    walk(m.body.subarray(4), 1, [], false);
  }
  return out.join('\n') + '\n';
}
