import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { FakeNftMonitor, type MonitorEvent } from '../../src/nft/monitor.js';
import { FallbackMonitor, ProcessNftWatch, WatchParser } from '../../src/nft/nftwatch.js';

/**
 * Output of native/secgroup-nftwatch.c (`secgroup-nftwatch secgroup`) while,
 * in a network namespace: our table was created with the marker set, an
 * interval set and a chain (gen 2); the marker replaced with a member added
 * (gen 3, as the agent's element updates do); a rule inserted (4); the set
 * flushed (5); another table with 20k elements added (6); our table deleted
 * (7). One transaction each. The `-lost` capture is the same run seen by a
 * second listener with `--rcvbuf 4096`: the 20k elements overflowed it.
 */
const CAPTURE = readFileSync(new URL('../fixtures/nft/nftwatch-capture.txt', import.meta.url), 'utf8');
const CAPTURE_LOST = readFileSync(new URL('../fixtures/nft/nftwatch-capture-lost.txt', import.meta.url), 'utf8');

const batches = (events: MonitorEvent[]) => events.flatMap((e) => (e.kind === 'batch' ? [e.batch] : []));

describe('secgroup-nftwatch parser', () => {
  it('reports ready, then the transactions that touched our table, with what each did and who committed it', () => {
    const events = new WatchParser('secgroup').push(CAPTURE);
    expect(events[0]).toEqual({ kind: 'ready' });
    const got = batches(events);
    expect(got.map((b) => b.generation)).toEqual([2, 3, 4, 5, 7]); // 6 added another table only
    expect(got[0]).toMatchObject({ markers: ['secgroup digest=ab12 revision=1 instance=lab-1'], structural: true, tableDeleted: false, contentOnly: false, lines: 7, by: '314 (nft)' });
    expect(got[0]!.sample).toEqual(['add table inet secgroup', 'add chain inet secgroup input', 'add set inet secgroup sg_generation', 'add element inet secgroup sg_generation', 'add set inet secgroup peers']);
    expect(got[1]).toMatchObject({ markers: ['secgroup digest=cd34 revision=2 instance=lab-1'], structural: false, lines: 3 });
    expect(got[2]).toMatchObject({ markers: [], structural: true, contentOnly: true, lines: 1, sample: ['add rule inet secgroup input'] });
    expect(got[3]).toMatchObject({ markers: [], structural: false, contentOnly: true, lines: 1, sample: ['delete element inet secgroup peers (7 messages)'] });
    expect(got[4]).toMatchObject({ markers: [], structural: true, tableDeleted: true, contentOnly: false, lines: 5, by: '392 (nft)' });
    expect(events.filter((e) => e.kind !== 'batch')).toEqual([{ kind: 'ready' }]);
  });

  it('names the chains whose rules and the sets whose elements each transaction changed, and which sets gained elements', () => {
    const got = batches(new WatchParser('secgroup').push(CAPTURE));
    const touched = got.map((b) => ({ rulesOf: b.rulesOf, elementsOf: b.elementsOf, elementsAddedTo: b.elementsAddedTo }));
    expect(touched[1]).toEqual({ rulesOf: [], elementsOf: ['sg_generation', 'peers'], elementsAddedTo: ['sg_generation', 'peers'] });
    expect(touched[2]).toEqual({ rulesOf: ['input'], elementsOf: [], elementsAddedTo: [] }); // a rule inserted
    expect(touched[3]).toEqual({ rulesOf: [], elementsOf: ['peers'], elementsAddedTo: [] }); // the set flushed
  });

  it('collects the keys of deleted elements per set, and marks a set whose keys are not all known', () => {
    const p = new WatchParser('secgroup');
    const got = batches(p.push('ready\nkey s4 c6120102\nkey s4 c6120103\nevent del element s4 2\nkey iv c6120200\nnokeys iv\nevent del element iv 2\ngen 3 10 nft\nevent del element s4 1\ngen 4 11 nft\n'));
    expect([...got[0]!.removedKeys]).toEqual([
      ['s4', ['c6120102', 'c6120103']],
      ['iv', null],
    ]);
    expect(got[1]!.removedKeys.size).toBe(0); // deleted, keys not reported: unknown
  });

  it('reports lost events where the listener overflowed, and the transactions after it', () => {
    const events = new WatchParser('secgroup').push(CAPTURE_LOST);
    expect(events.map((e) => (e.kind === 'batch' ? e.batch.generation : e.kind))).toEqual(['ready', 2, 3, 4, 5, 'lost', 7]);
  });

  it('gives the same events however the output is cut into chunks', () => {
    const whole = new WatchParser('secgroup').push(CAPTURE);
    for (const size of [1, 7, 64]) {
      const p = new WatchParser('secgroup');
      const events: MonitorEvent[] = [];
      for (let i = 0; i < CAPTURE.length; i += size) events.push(...p.push(CAPTURE.slice(i, i + size)));
      expect(events).toEqual(whole);
    }
  });

  it('keeps a transaction open until its gen line; a gen without a line before it yields nothing', () => {
    const p = new WatchParser('secgroup');
    expect(p.push('gen 9 1 nft\nevent del rule input 3\n')).toEqual([]);
    expect(batches(p.push('gen 10 0 -\n'))).toEqual([expect.objectContaining({ generation: 10, by: null, lines: 1, structural: true, sample: ['delete rule inet secgroup input (3 messages)'] })]);
  });

  it('marks a transaction that only added or removed rules and elements of ours (a rule\'s anonymous set with it) as repairable in place, any other object not', () => {
    const p = new WatchParser('secgroup');
    const flushed = batches(p.push('event del rule input 2\nevent del set __set0 1\nevent del rule input 5\ngen 12 100 nft\n'));
    expect(flushed).toEqual([expect.objectContaining({ contentOnly: true, structural: true })]);
    expect(batches(p.push('event new set evil 1\nevent new element evil 3\ngen 13 100 nft\n'))).toEqual([expect.objectContaining({ contentOnly: false })]);
    expect(batches(p.push('event new chain sneaky 1\ngen 14 100 nft\n'))).toEqual([expect.objectContaining({ contentOnly: false })]);
    expect(batches(p.push('event del table secgroup 1\ngen 15 100 nft\n'))).toEqual([expect.objectContaining({ contentOnly: false, tableDeleted: true })]);
  });

  it('refuses a table name that is not a safe nft name', () => {
    expect(() => new WatchParser('bad name')).toThrow(/safe nft name/);
  });
});

describe('fallback from the listener to nft monitor', () => {
  const record = () => {
    const events: MonitorEvent[] = [];
    const exits: string[] = [];
    return { events, exits, h: { onEvent: (e: MonitorEvent) => events.push(e), onExit: (r: string) => exits.push(r) } };
  };

  it('switches for good, telling once, when the listener ends before it said ready', () => {
    const primary = new FakeNftMonitor();
    const fallback = new FakeNftMonitor();
    const told: string[] = [];
    const m = new FallbackMonitor(primary, fallback, (r) => told.push(r));
    const { events, exits, h } = record();
    m.follow(h);
    primary.exit('secgroup-nftwatch exited (code 1): socket: Operation not permitted');
    expect(told).toEqual(['secgroup-nftwatch exited (code 1): socket: Operation not permitted']);
    expect(exits).toEqual([]); // the caller's session goes on, on nft monitor
    expect([primary.running, fallback.running]).toEqual([0, 1]); // the source in use: nft monitor
    fallback.emit({ structural: true });
    expect(events).toEqual([expect.objectContaining({ kind: 'batch' })]);
    fallback.exit('nft monitor exited (SIGSEGV)');
    expect(exits).toEqual(['nft monitor exited (SIGSEGV)']);
    m.follow(record().h);
    expect([primary.started, fallback.started, told.length]).toEqual([1, 2, 1]);
  });

  it('keeps the listener when it ended after it said ready (restarted by the drift monitor as any monitor)', () => {
    const primary = new FakeNftMonitor();
    const fallback = new FakeNftMonitor();
    const m = new FallbackMonitor(primary, fallback, () => {
      throw new Error('no fallback expected');
    });
    const { events, exits, h } = record();
    m.follow(h);
    primary.ready();
    primary.exit('secgroup-nftwatch exited (SIGKILL)');
    expect(events).toEqual([{ kind: 'ready' }]);
    expect(exits).toEqual(['secgroup-nftwatch exited (SIGKILL)']);
    m.follow(record().h);
    expect([primary.started, fallback.started, primary.running, fallback.running]).toEqual([2, 0, 1, 0]); // the source in use: still the listener
  });

  it('stops the fallback session it started', () => {
    const primary = new FakeNftMonitor();
    const fallback = new FakeNftMonitor();
    const m = new FallbackMonitor(primary, fallback, () => {});
    const s = m.follow(record().h);
    primary.exit();
    expect(fallback.running).toBe(1);
    s.stop();
    expect(fallback.running).toBe(0);
  });

  it('falls back when the listener executable is absent', async () => {
    const fallback = new FakeNftMonitor();
    const told: string[] = [];
    const m = new FallbackMonitor(new ProcessNftWatch({ table: 'secgroup', path: '/nonexistent/secgroup-nftwatch' }), fallback, (r) => told.push(r));
    const s = m.follow(record().h);
    await new Promise<void>((res) => {
      const t = setInterval(() => {
        if (told.length) {
          clearInterval(t);
          res();
        }
      }, 5);
    });
    s.stop();
    expect(told).toEqual([expect.stringMatching(/^secgroup-nftwatch failed: .*ENOENT/)]);
    expect(fallback.started).toBe(1);
  });
});
