/**
 * Reading a `FakeNft.dump()` (the nft listing text of the fake's table), so
 * tests check the resulting table as nft would list it instead of poking at
 * the fake's internal objects: one detail (a chain's rules, a set's
 * elements, the table comment) or whole tables up to their generation.
 */

/** A set, map or chain of the listing. */
export interface DumpBlock {
  kind: 'set' | 'map' | 'chain';
  name: string;
  /** the `type`, `flags` and `comment` lines, without indentation */
  head: string[];
  /** a chain's rules as listed, without indentation */
  rules: string[];
  /** set and map elements (without the trailing commas) */
  elements: string[];
}

/** The sets, maps and chains of a listing in their order (the generation marker set included). */
export function dumpBlocks(dump: string): DumpBlock[] {
  const out: DumpBlock[] = [];
  let cur: DumpBlock | null = null;
  let inElements = false;
  for (const line of dump.split('\n')) {
    const open = /^\t(set|map|chain) (\S+) \{$/.exec(line);
    if (open) {
      cur = { kind: open[1] as DumpBlock['kind'], name: open[2]!, head: [], rules: [], elements: [] };
      out.push(cur);
      continue;
    }
    if (!cur) continue;
    if (line === '\t}') {
      cur = null;
      continue;
    }
    const text = line.trim();
    const inline = /^elements = \{ (.*) \}$/.exec(text);
    if (inline) cur.elements.push(...inline[1]!.split(', '));
    else if (text === 'elements = {') inElements = true;
    else if (inElements && text === '}') inElements = false;
    else if (inElements) cur.elements.push(text.replace(/,$/, ''));
    else if (/^(type|flags|comment) /.test(text)) cur.head.push(text);
    else cur.rules.push(text);
  }
  return out;
}

/** The named block; throws when the listing has none (so a missing block fails the test with its name). */
export function dumpBlock(dump: string, name: string): DumpBlock {
  const b = dumpBlocks(dump).find((x) => x.name === name);
  if (!b) throw new Error(`the table has no set, map or chain ${name}`);
  return b;
}

/** The table's comment (set by the last full reload), or null. */
export function tableComment(dump: string): string | null {
  return /^\tcomment "(.*)"$/m.exec(dump)?.[1] ?? null;
}

/** The generation marker (the comment of the `sg_generation` element, set by every transaction), or null. */
export function generationMarker(dump: string): string | null {
  const el = dumpBlocks(dump).find((b) => b.name === 'sg_generation')?.elements[0];
  return el ? (/comment "(.*)"$/.exec(el)?.[1] ?? null) : null;
}

/**
 * The listing with its generation (`secgroup digest=... revision=... instance=...`
 * in the table comment and the marker) blanked: a table updated by element
 * transactions and a fresh compile of the same policy differ only there.
 */
export function withoutGeneration(dump: string): string {
  return dump.replace(/"secgroup digest=[0-9a-f]+ revision=\d+ instance=[^"]*"/g, '"secgroup <generation>"');
}

/**
 * A listing (nft's or the fake's) with the flow mark's generation replaced
 * by `G`: the agent gives every transaction a new one (src/nft/flow-mark.ts),
 * so a table repaired or updated differs from the original only there.
 */
export function withoutFlowGeneration(listing: string): string {
  return listing
    .replace(/ct mark (?:and 0x[0-9a-f]{8} == 0x[0-9a-f]{8}|0x[0-9a-f]{8}\/\d+) accept comment "flow mark: allowed under generation \d+"/g, 'ct mark G accept comment "flow mark: allowed under generation G"')
    .replace(/ct mark set ct mark (?:and|&) 0x[0-9a-f]{8}(?: (?:or|\|) 0x[0-9a-f]{8})? accept comment "flow mark: [^"]*generation \d+\)?"/g, 'ct mark set G accept comment "flow mark: G"');
}
