/**
 * The secgroup web console: sign-in, navigation, history routing (every view
 * has its own URL under /console; the controller answers index.html for
 * each) and the live event stream that views listen to. Everything a user or
 * the API supplied is rendered as text by Preact (no innerHTML anywhere), and
 * the CSP of /console forbids inline script and eval.
 */
import { render } from 'preact';
import { useEffect, useMemo, useState } from 'preact/hooks';
import { api, ApiFailure, followEvents, loadSession, saveSession, type Session } from './api';
import { href, parseRoute, type Route } from './logic';
import { Ctx, LiveBus, Link, navigate, useRendered } from './ui';
import { Overview } from './views/Overview';
import { AddressGroups, GroupDetail, Groups } from './views/Groups';
import { InstanceDetail, Instances } from './views/Instances';
import { Reachability } from './views/Reachability';
import './style.css';

function useRoute(): Route {
  const [route, setRoute] = useState(() => parseRoute(location.pathname, location.search));
  useEffect(() => {
    const on = () => setRoute(parseRoute(location.pathname, location.search));
    addEventListener('popstate', on);
    return () => removeEventListener('popstate', on);
  }, []);
  return route;
}

function SignIn(props: { onSession: (s: Session) => void }) {
  const [token, setToken] = useState('');
  const [project, setProject] = useState('demo');
  const [error, setError] = useState('');
  const submit = async (e: Event) => {
    e.preventDefault();
    const s = { token: token.trim(), project: project.trim() };
    try {
      // any project read proves the token and the project
      await api(s, 'GET', '/vpc/security-groups?limit=1');
      saveSession(s);
      props.onSession(s);
    } catch (err) {
      setError(err instanceof ApiFailure ? `${err.code}: ${err.message}` : `cannot reach the controller: ${(err as Error).message}`);
    }
  };
  return (
    <main id="main" class="signin">
      <h1>secgroup console</h1>
      <form class="form" aria-label="Sign in" onSubmit={submit}>
        <div class="field">
          <label for="f-project">Project</label>
          <input id="f-project" name="project" value={project} autoComplete="off" required onInput={(e) => setProject((e.target as HTMLInputElement).value)} />
        </div>
        <div class="field">
          <label for="f-token">API token</label>
          <input id="f-token" name="token" type="password" value={token} autoComplete="off" required onInput={(e) => setToken((e.target as HTMLInputElement).value)} />
        </div>
        {error && (
          <p class="error" role="alert">
            {error}
          </p>
        )}
        <button type="submit">Sign in</button>
        <p class="small">The token is kept in this tab's session storage only and sent in a header, never in a URL.</p>
      </form>
    </main>
  );
}

const NAV: { label: string; to: string; views: Route['view'][] }[] = [
  { label: 'Overview', to: href.overview(), views: ['overview'] },
  { label: 'Security groups', to: href.groups(), views: ['groups', 'group'] },
  { label: 'Address groups', to: href.addressGroups(), views: ['address-groups'] },
  { label: 'Instances', to: href.instances(), views: ['instances', 'instance'] },
  { label: 'Reachability', to: href.reachability(), views: ['reachability'] },
];

function View(props: { route: Route }) {
  const r = props.route;
  switch (r.view) {
    case 'overview':
      return <Overview />;
    case 'groups':
      return <Groups />;
    case 'group':
      return <GroupDetail id={r.id} />;
    case 'address-groups':
      return <AddressGroups />;
    case 'instances':
      return <Instances />;
    case 'instance':
      return <InstanceDetail id={r.id} />;
    case 'reachability':
      return <Reachability query={r.query} />;
    case 'not-found':
      return <NotFound path={r.path} />;
  }
}

function NotFound(props: { path: string }) {
  useRendered('not-found', true);
  return (
    <section>
      <h1>Not found</h1>
      <p>
        There is no console page at <code>{props.path}</code>. <Link href={href.overview()}>Go to the overview</Link>.
      </p>
    </section>
  );
}

function App() {
  const [session, setSession] = useState<Session | null>(loadSession);
  const [live, setLive] = useState(false);
  const route = useRoute();
  const bus = useMemo(() => new LiveBus(), []);
  useEffect(() => {
    if (!session) return;
    const stop = new AbortController();
    followEvents(
      session,
      stop.signal,
      (e) => bus.emit(e),
      // a reconnect may have missed events: every view re-reads
      () => bus.emit({ event: 'change', data: '{"resource_type":"*","operation":"reconnect","resource_ids":[]}' }),
      setLive,
    );
    return () => stop.abort();
  }, [session, bus]);
  useEffect(() => {
    const main = document.getElementById('main');
    main?.focus({ preventScroll: true });
    const id = decodeURIComponent(location.hash.slice(1));
    if (id) setTimeout(() => document.getElementById(id)?.scrollIntoView(), 300);
  }, [route]);
  if (!session) return <SignIn onSession={setSession} />;
  return (
    <Ctx.Provider value={{ session, live: bus }}>
      <a class="skip" href="#main">
        Skip to content
      </a>
      <header class="top">
        <span class="brand">secgroup</span>
        <nav aria-label="Main">
          <ul>
            {NAV.map((n) => (
              <li key={n.to}>
                <Link href={n.to} aria-current={n.views.includes(route.view) ? 'page' : undefined}>
                  {n.label}
                </Link>
              </li>
            ))}
          </ul>
        </nav>
        <span class="who">
          <span class={`dot ${live ? 'live' : ''}`} role="status" aria-label={live ? 'live updates on' : 'live updates off'} title={live ? 'live updates on' : 'live updates off'} />
          project <strong>{session.project}</strong>{' '}
          <button
            type="button"
            class="link"
            onClick={() => {
              saveSession(null);
              setSession(null);
              navigate(href.overview());
            }}
          >
            Sign out
          </button>
        </span>
      </header>
      <main id="main" tabIndex={-1}>
        <View route={route} />
      </main>
    </Ctx.Provider>
  );
}

render(<App />, document.getElementById('app')!);
