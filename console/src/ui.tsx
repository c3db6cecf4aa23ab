/** Shared pieces of the views: links that route in place, data loading, live updates, small widgets. */
import type { ComponentChildren } from 'preact';
import { createContext } from 'preact';
import { useContext, useEffect, useState, useCallback } from 'preact/hooks';
import { api, ApiFailure, type Session } from './api';
import type { SseEvent } from './logic';

export function navigate(to: string): void {
  history.pushState(null, '', to);
  dispatchEvent(new PopStateEvent('popstate'));
}

/** A real link (keyboard, middle click, copy address all work) that routes without a reload. */
export function Link(props: { href: string; children: ComponentChildren; class?: string; 'aria-current'?: 'page' | undefined }) {
  return (
    <a
      href={props.href}
      class={props.class}
      aria-current={props['aria-current']}
      onClick={(e) => {
        if (e.defaultPrevented || e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
        e.preventDefault();
        navigate(props.href);
      }}
    >
      {props.children}
    </a>
  );
}

/** Live events: views subscribe to decide whether to re-read. */
export type LiveListener = (e: SseEvent) => void;
export class LiveBus {
  private readonly listeners = new Set<LiveListener>();
  on(l: LiveListener): () => void {
    this.listeners.add(l);
    return () => void this.listeners.delete(l);
  }
  emit(e: SseEvent): void {
    for (const l of [...this.listeners]) l(e);
  }
}

export interface AppContext {
  session: Session;
  live: LiveBus;
}
export const Ctx = createContext<AppContext | null>(null);
export function useApp(): AppContext {
  const c = useContext(Ctx);
  if (!c) throw new Error('no session');
  return c;
}

export interface Loaded<T> {
  data: T | null;
  error: ApiFailure | Error | null;
  loading: boolean;
  reload: () => void;
}

/** GETs `path` (re-read on `reload()` and when `deps` change); keeps the last data while re-reading. */
export function useGet<T>(path: string | null, deps: unknown[] = []): Loaded<T> {
  const { session } = useApp();
  const [state, setState] = useState<{ data: T | null; error: ApiFailure | Error | null; loading: boolean }>({ data: null, error: null, loading: true });
  const [tick, setTick] = useState(0);
  const reload = useCallback(() => setTick((t) => t + 1), []);
  useEffect(() => {
    if (path === null) return;
    let live = true;
    setState((s) => ({ ...s, loading: true }));
    api<T>(session, 'GET', path).then(
      (data) => live && setState({ data, error: null, loading: false }),
      (error: Error) => live && setState((s) => ({ data: s.data, error, loading: false })),
    );
    return () => {
      live = false;
    };
  }, [path, tick, session, ...deps]);
  return { ...state, reload };
}

/** Calls `fn` for every live event that `wanted` accepts. */
export function useLive(wanted: (e: SseEvent, data: Record<string, unknown>) => boolean, fn: () => void, deps: unknown[] = []): void {
  const { live } = useApp();
  useEffect(
    () =>
      live.on((e) => {
        let data: Record<string, unknown>;
        try {
          data = JSON.parse(e.data) as Record<string, unknown>;
        } catch {
          return;
        }
        if (wanted(e, data)) fn();
      }),
    deps,
  );
}

export function ErrorBox(props: { error: Error | null; what?: string }) {
  if (!props.error) return null;
  const code = props.error instanceof ApiFailure ? `${props.error.code}: ` : '';
  return (
    <p class="error" role="alert">
      {props.what ? `${props.what}: ` : ''}
      {code}
      {props.error.message}
    </p>
  );
}

export function Badge(props: { kind: string; children: ComponentChildren; title?: string }) {
  return (
    <span class={`badge badge-${props.kind}`} title={props.title}>
      {props.children}
    </span>
  );
}

export function Loading(props: { loaded: { loading: boolean; data: unknown } }) {
  return props.loaded.loading && props.loaded.data === null ? <p class="muted">Loading…</p> : null;
}

/** Marks the view rendered with its data, for the benchmark and the browser tests (performance marks). */
export function useRendered(name: string, ready: boolean): void {
  useEffect(() => {
    if (!ready) return;
    performance.mark(`console:${name}:rendered`);
    document.body.dataset.rendered = name;
  }, [ready, name]);
}
