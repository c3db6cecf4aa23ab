import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { MonitorParser, type MonitorEvent } from '../../src/nft/monitor.js';

/**
 * Output of `nft monitor` (nft 1.0.6) while, in a network namespace: our
 * table was created with a set and a chain, an element deleted, the set
 * flushed, the chain flushed, a rule inserted, the generation marker
 * replaced (as every transaction of the agent does), another table added,
 * and our table deleted. One transaction each.
 */
const TRANSCRIPT = readFileSync(new URL('../fixtures/nft/monitor-1.0.6.txt', import.meta.url), 'utf8');

const batches = (events: MonitorEvent[]) => events.flatMap((e) => (e.kind === 'batch' ? [e.batch] : []));

describe('nft monitor parser', () => {
  it('splits the output into the transactions that touched our table, with what each did', () => {
    const got = batches(new MonitorParser('secgroup').push(TRANSCRIPT));
    expect(got.map((b) => b.generation)).toEqual([2, 3, 4, 5, 6, 7, 9]); // 8 added another table only
    expect(got[0]).toMatchObject({ markers: ['gen1'], structural: true, tableDeleted: false, contentOnly: false, lines: 10, by: '3980 (nft)' });
    expect(got[0]!.sample).toHaveLength(5);
    expect(got[1]).toMatchObject({ markers: [], structural: false, contentOnly: true, lines: 1, sample: ['delete element inet secgroup s4 { 198.18.1.1 }'] });
    expect(got[2]).toMatchObject({ markers: [], structural: false, contentOnly: true, lines: 2 }); // set flushed: its elements deleted
    expect(got[3]).toMatchObject({ markers: [], structural: true, contentOnly: true, lines: 2 }); // chain flushed: its rules deleted
    expect(got[4]).toMatchObject({ markers: [], structural: true, contentOnly: true, sample: ['insert rule inet secgroup input accept'] });
    expect(got[5]).toMatchObject({ markers: ['gen2'], structural: false });
    expect(got[6]).toMatchObject({ markers: [], structural: true, tableDeleted: true, contentOnly: false, lines: 5 });
  });

  it('names the chains whose rules and the sets whose elements each transaction changed (what a drift repair restores)', () => {
    const got = batches(new MonitorParser('secgroup').push(TRANSCRIPT));
    const touched = got.map((b) => ({ rulesOf: b.rulesOf, elementsOf: b.elementsOf, elementsAddedTo: b.elementsAddedTo }));
    expect(touched[1]).toEqual({ rulesOf: [], elementsOf: ['s4'], elementsAddedTo: [] }); // an element deleted
    expect(touched[2]).toEqual({ rulesOf: [], elementsOf: ['s4'], elementsAddedTo: [] }); // the set flushed
    expect(touched[3]).toEqual({ rulesOf: ['input'], elementsOf: [], elementsAddedTo: [] }); // the chain flushed
    expect(touched[4]).toEqual({ rulesOf: ['input'], elementsOf: [], elementsAddedTo: [] }); // a rule inserted
    expect(touched[5]).toEqual({ rulesOf: [], elementsOf: ['sg_generation'], elementsAddedTo: ['sg_generation'] }); // the marker replaced
  });

  it('gives the same transactions however the output is cut into chunks', () => {
    const whole = new MonitorParser('secgroup').push(TRANSCRIPT);
    for (const size of [1, 7, 64]) {
      const p = new MonitorParser('secgroup');
      const events: MonitorEvent[] = [];
      for (let i = 0; i < TRANSCRIPT.length; i += size) events.push(...p.push(TRANSCRIPT.slice(i, i + size)));
      expect(events).toEqual(whole);
    }
  });

  it('ignores other tables, also ones whose name starts with ours or of another family', () => {
    const p = new MonitorParser('secgroup');
    const text = [
      'add table inet other',
      'add chain inet secgroup2 input { type filter hook input priority filter; policy drop; }',
      'add table ip secgroup',
      'delete table ip secgroup',
      'add element inet other sg_generation { 1 comment "x" }',
      '# new generation 10 by process 1 (nft)',
      '',
    ].join('\n');
    expect(p.push(text)).toEqual([]);
  });

  it('reports a transaction it printed no line of as unknown (nft 1.0.6: elements of an existing interval map with concatenated keys)', () => {
    const p = new MonitorParser('secgroup');
    expect(p.push('# new generation 3 by process 22895 (nft)\nadd table inet other\n# new generation 4 by process 1 (nft)\n')).toEqual([{ kind: 'unknown', generation: 3, by: '22895 (nft)' }]);
  });

  it('reports lost events', () => {
    expect(new MonitorParser('secgroup').push('# ERROR: We lost some netlink events!\n')).toEqual([{ kind: 'lost' }]);
  });

  it('keeps a transaction open until its generation line', () => {
    const p = new MonitorParser('secgroup');
    expect(p.push('delete rule inet secgroup input handle 4\n')).toEqual([]);
    expect(batches(p.push('# new generation 11\n'))).toEqual([expect.objectContaining({ generation: 11, by: null, lines: 1 })]);
  });
});
