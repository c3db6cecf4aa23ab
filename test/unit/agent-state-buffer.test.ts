/**
 * AgentStateBuffer (src/controller/agent-state-buffer.ts) over the memory
 * store marked unavailable: what agents report during a database outage is
 * kept (one entry per instance, newest wins) and written when the store
 * answers again, never older over newer.
 */
import { describe, expect, it } from 'vitest';
import { AgentStateBuffer } from '../../src/controller/agent-state-buffer.js';
import { MemoryStore } from '../../src/controller/store/memory.js';
import { captureLogs } from '../helpers/log-capture.js';

const at = '2024-05-01T12:00:00.000Z';
const ack = (revision: number) => ({ revision, status: 'applied' as const, at, duration_ms: 5, digest: null, error: null });

async function setup(instances = ['ecs-1', 'ecs-2']) {
  const store = new MemoryStore();
  await store.mutate('p', () => ({
    ops: instances.map((id) => ({ op: 'putInstance' as const, instance: { id, name: id, addresses: ['198.18.0.10'], security_groups: [], revision: null, policy_hash: null, created_at: at, updated_at: at } })),
    value: null,
  }));
  const log = captureLogs('info');
  return { store, log, buffer: new AgentStateBuffer({ store, logger: log.logger }) };
}

describe('agent state held while the store is unavailable', () => {
  it('keeps one merged entry per instance (newest field wins) and writes it once the store is back', async () => {
    const { store, log, buffer } = await setup();
    await buffer.update('p', 'ecs-1', { applied_revision: 7, last_ack: ack(7), last_seen: at });
    store.unavailable = true;
    expect(await buffer.update('p', 'ecs-1', { applied_revision: 8, last_ack: ack(8), last_seen: '2024-05-01T12:00:01.000Z' })).toBe(true);
    expect(await buffer.update('p', 'ecs-1', { last_seen: '2024-05-01T12:00:02.000Z', connected_to: 'r1' })).toBe(true);
    expect(await buffer.update('p', 'ecs-2', { last_seen: at })).toBe(true);
    expect(buffer.size).toBe(2);
    expect(buffer.holds('p', 'ecs-1')).toBe(true);
    expect(log.lines.filter((l) => l.event === 'agent_states_held')).toHaveLength(1);

    // still away: nothing lost, nothing written
    await buffer.flush();
    expect(buffer.size).toBe(2);
    store.unavailable = false;
    expect(await store.getAgentState('p', 'ecs-1')).toMatchObject({ applied_revision: 7 });

    await buffer.flush();
    expect(buffer.size).toBe(0);
    expect(await store.getAgentState('p', 'ecs-1')).toMatchObject({ applied_revision: 8, last_ack: ack(8), last_seen: '2024-05-01T12:00:02.000Z', connected_to: 'r1' });
    expect(await store.getAgentState('p', 'ecs-2')).toMatchObject({ last_seen: at });
    expect(log.lines.filter((l) => l.event === 'agent_states_flushed')).toEqual([expect.objectContaining({ written: 2, gone: 0, left: 0 })]);
  });

  it('a successful write of another instance flushes what is held; an instance deleted meanwhile is dropped', async () => {
    const { store, log, buffer } = await setup(['ecs-1', 'ecs-2', 'ecs-3']);
    store.unavailable = true;
    await buffer.update('p', 'ecs-1', { applied_revision: 3 });
    await buffer.update('p', 'ecs-3', { applied_revision: 4 });
    store.unavailable = false;
    await store.mutate('p', () => ({ ops: [{ op: 'deleteInstance', id: 'ecs-3' }], value: null }));

    expect(await buffer.update('p', 'ecs-2', { applied_revision: 5 })).toBe(true);
    await buffer.flush();
    expect(buffer.size).toBe(0);
    expect(await store.getAgentState('p', 'ecs-1')).toMatchObject({ applied_revision: 3 });
    expect(log.lines.filter((l) => l.event === 'agent_states_flushed')).toEqual([expect.objectContaining({ written: 1, gone: 1, left: 0 })]);
  });

  it('a patch that arrives while the held one is being written stays held and lands after it', async () => {
    const { store, buffer } = await setup();
    store.unavailable = true;
    await buffer.update('p', 'ecs-1', { applied_revision: 3, last_seen: at });
    store.unavailable = false;
    const writing = buffer.flush();
    // merged into the held entry, not written on its own: it cannot be overtaken by the older patch
    await buffer.update('p', 'ecs-1', { applied_revision: 4 });
    await writing;
    expect(buffer.holds('p', 'ecs-1')).toBe(true);
    await buffer.flush();
    expect(buffer.size).toBe(0);
    expect(await store.getAgentState('p', 'ecs-1')).toMatchObject({ applied_revision: 4, last_seen: at });
  });

  it('errors other than STORE_UNAVAILABLE are not held', async () => {
    const { store, buffer } = await setup();
    await store.close();
    await expect(buffer.update('p', 'ecs-1', { applied_revision: 1 })).rejects.toThrow(/closed/);
    expect(buffer.size).toBe(0);
  });
});
