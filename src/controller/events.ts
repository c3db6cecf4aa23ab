/**
 * Live events of a project for the console (`GET /v3/{project_id}/events`,
 * api/events-route.ts): the hub publishes `instance` (ack, connect,
 * disconnect, error) and `ports` (a port report), the API's writes publish
 * `change` (from the audit recorder, so exactly the writes that are audited
 * and succeeded). Publishing is synchronous fan-out to the subscribers of
 * that project only; a project nobody watches costs a map lookup, and the
 * hub asks `watched()` before reading the store to build an event.
 *
 * Delivery is best effort by design: an event is a hint to re-read (the
 * console fetches the resource it names), so a subscriber that cannot keep
 * up is dropped (its stream closed) rather than buffered without bound; it
 * reconnects and re-reads everything.
 */
import type { Store } from './store/store.js';

export interface InstanceEvent {
  instance_id: string;
  desired_revision: number | null;
  applied_revision: number | null;
  connected: boolean;
  last_error: { revision: number | null; code: string; message: string; at: string } | null;
}

export type ProjectEvent =
  | { type: 'instance'; data: InstanceEvent }
  | { type: 'ports'; data: { instance_id: string } }
  | { type: 'change'; data: { resource_type: string; operation: string; resource_ids: unknown[] } };

export type EventListener = (e: ProjectEvent) => void;

export class ProjectEvents {
  private readonly listeners = new Map<string, Set<EventListener>>();

  /** Adds a listener for one project; returns the function that removes it. */
  subscribe(projectId: string, listener: EventListener): () => void {
    let set = this.listeners.get(projectId);
    if (!set) this.listeners.set(projectId, (set = new Set()));
    set.add(listener);
    return () => {
      set.delete(listener);
      if (set.size === 0 && this.listeners.get(projectId) === set) this.listeners.delete(projectId);
    };
  }

  /** Is anybody listening to this project? (Building an event may cost store reads.) */
  watched(projectId: string): boolean {
    return this.listeners.has(projectId);
  }

  /** Subscribers over all projects (the `console_event_streams` gauge). */
  get size(): number {
    let n = 0;
    for (const s of this.listeners.values()) n += s.size;
    return n;
  }

  /** Hands the event to every listener of the project; a listener that throws does not stop the others. */
  publish(projectId: string, event: ProjectEvent): void {
    const set = this.listeners.get(projectId);
    if (!set) return;
    for (const l of [...set]) {
      try {
        l(event);
      } catch {
        // a listener's failure is its own (the stream closes itself)
      }
    }
  }
}

/** One event in text/event-stream framing (data is JSON: one line, no newline inside). */
export function sseFrame(e: ProjectEvent): string {
  return `event: ${e.type}\ndata: ${JSON.stringify(e.data)}\n\n`;
}

/** Publishes the instance's state as the store has it now (read only when someone watches the project). */
export async function publishInstanceState(events: ProjectEvents, store: Store, projectId: string, instanceId: string, connected: boolean): Promise<void> {
  if (!events.watched(projectId)) return;
  // the desired revision from the project snapshot (cached by version in every store), not by reading the whole document
  const [st, snap] = await Promise.all([store.getAgentState(projectId, instanceId), store.loadProject(projectId)]);
  const desired = snap?.instances.find((i) => i.id === instanceId)?.revision ?? null;
  events.publish(projectId, {
    type: 'instance',
    data: { instance_id: instanceId, desired_revision: desired, applied_revision: st?.applied_revision ?? null, connected, last_error: st?.last_error ?? null },
  });
}
