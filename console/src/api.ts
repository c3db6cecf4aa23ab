/**
 * The console's edge to the controller: the session (API token and project,
 * in sessionStorage only: never in a URL, gone when the tab closes), JSON
 * requests with the token in `X-Auth-Token`, and the live event stream
 * (`GET /v3/{project}/events` read with fetch and a stream reader, so the
 * token stays in a header; EventSource cannot send one).
 */
import { SseParser, type SseEvent } from './logic';

const KEY = 'secgroup.console.session';

export interface Session {
  token: string;
  project: string;
}

export function loadSession(): Session | null {
  try {
    const s = JSON.parse(sessionStorage.getItem(KEY) ?? 'null') as Session | null;
    return s && typeof s.token === 'string' && typeof s.project === 'string' ? s : null;
  } catch {
    return null;
  }
}

export function saveSession(s: Session | null): void {
  if (s) sessionStorage.setItem(KEY, JSON.stringify(s));
  else sessionStorage.removeItem(KEY);
}

/** An answer that was not 2xx: the API's error code and message (Huawei shape). */
export class ApiFailure extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

export async function api<T = Record<string, unknown>>(session: Session, method: string, path: string, body?: unknown): Promise<T> {
  const r = await fetch(`/v3/${encodeURIComponent(session.project)}${path}`, {
    method,
    headers: { 'X-Auth-Token': session.token, ...(body === undefined ? {} : { 'Content-Type': 'application/json' }) },
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: 'no-store',
  });
  if (r.status === 204) return {} as T;
  const text = await r.text();
  let json: Record<string, unknown> = {};
  try {
    json = JSON.parse(text) as Record<string, unknown>;
  } catch {
    // not JSON: reported below with the status
  }
  if (!r.ok) throw new ApiFailure(r.status, String(json.error_code ?? `HTTP_${r.status}`), String(json.error_msg ?? (text.slice(0, 200) || r.statusText)));
  return json as T;
}

/**
 * Follows the project's events until `signal` aborts, reconnecting after a
 * loss (the server closes a stream after 15 minutes: auth is checked again).
 * `onReopen` runs on every reconnect (not the first connect: the pages have
 * just read everything): events may have been missed, re-read.
 */
export function followEvents(session: Session, signal: AbortSignal, onEvent: (e: SseEvent) => void, onReopen: () => void, onState: (live: boolean) => void): void {
  const run = async (): Promise<void> => {
    let delay = 1000;
    let first = true;
    while (!signal.aborted) {
      try {
        const r = await fetch(`/v3/${encodeURIComponent(session.project)}/events`, { headers: { 'X-Auth-Token': session.token, Accept: 'text/event-stream' }, signal, cache: 'no-store' });
        if (!r.ok || !r.body) throw new ApiFailure(r.status, `HTTP_${r.status}`, 'event stream refused');
        onState(true);
        if (!first) onReopen();
        first = false;
        delay = 1000;
        const parser = new SseParser();
        const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          for (const e of parser.push(value)) onEvent(e);
        }
      } catch {
        // lost or refused: retry below
      }
      onState(false);
      if (signal.aborted) return;
      await new Promise((resolve) => setTimeout(resolve, delay));
      delay = Math.min(delay * 2, 30_000);
    }
  };
  void run();
}
