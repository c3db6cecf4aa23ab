/* eslint-disable @typescript-eslint/no-explicit-any -- API bodies are untyped JSON, checked by the assertions */
/**
 * The web console in a real browser (Debian's Chromium through
 * playwright-core) against the real controller, with a real agent enforcing
 * with nft in a network namespace (issue 17, item 3):
 *
 *   <prefix>-ctl  br0 198.18.11.1/24  controller (secgroup controller, console built from console/), RPC helper,
 *                                     ns-bridge (the browser's way in: root 127.0.0.1 -> Unix socket -> 198.18.11.1:8443)
 *     `-- veth -- <prefix>-a  eth0 198.18.11.2/24  agent for instance ecs-a, TCP listener on 8080
 *
 * A user signs in, creates a group, attaches the instance, adds a rule (a
 * bad port first: the API's message shows at the field), watches on a
 * second tab, live, the rule become applied and tcp/8080 turn from blocked
 * to open (and a real TCP connect succeed), asks the reachability question,
 * deletes the rule and watches the port close again. Then: names and
 * descriptions with HTML are text and no script runs (CSP and text
 * rendering). Screenshots of every page go to test-results/console/.
 *
 * Nothing in the root namespace but a listening socket on 127.0.0.1 and the
 * browser; everything is removed in afterAll, also after a failure.
 */
import { mkdirSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import type { Page } from 'playwright-core';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { AgentProcess, Peer, REPO, kernelSkipReason } from '../helpers/agent-lab.js';
import { browserSkipReason, launchBrowser, type Browser } from '../helpers/browser.js';
import { ControllerLab } from '../helpers/controller-lab.js';
import { loopbackToUnix } from '../helpers/ns-bridge.js';
import { openSqliteStore } from '../../src/controller/store/sqlite.js';

const skip = kernelSkipReason() ?? browserSkipReason();
const CTL = '198.18.11.1';
const A = '198.18.11.2';
const PORT = 8443;
const ADMIN = 'console-admin-token-0123456789';
const PROJECT = 'demo';
const API = `http://${CTL}:${PORT}/v3/${PROJECT}`;
const SHOTS = join(REPO, 'test-results/console');
const WAIT = 30_000;

type Json = Record<string, any>;

describe.skipIf(skip !== null)(`the web console in Chromium, with a real agent in a namespace${skip ? ` (skipped: ${skip})` : ''}`, () => {
  const lab = new ControllerLab(CTL, { a: A });
  let ctlRpc: Peer;
  let bridge: Awaited<ReturnType<typeof loopbackToUnix>> | undefined;
  let browser: Browser | undefined;
  let controller: AgentProcess;
  let base = '';
  let ruleId = '';

  const api = async (method: string, path: string, body?: unknown, expectStatus?: number): Promise<Json> => {
    const r = await ctlRpc.request({ cmd: 'http', method, url: `${API}${path}`, headers: { 'x-auth-token': ADMIN }, ...(body === undefined ? {} : { body }) });
    if (expectStatus !== undefined && r.status !== expectStatus) throw new Error(`${method} ${path}: expected ${expectStatus}, got ${String(r.status)}: ${JSON.stringify(r.body ?? r.error)}`);
    return r as Json;
  };
  const connectsToA = async (port: number) => (await ctlRpc.request({ cmd: 'connect', host: A, port, timeoutMs: 700 })).ok === true;
  const shot = (page: Page, name: string) => page.screenshot({ path: join(SHOTS, `${name}.png`), fullPage: true });
  // the view's data-rendered mark (useRendered in console/src/ui.tsx); a string: it runs in the page
  // (a locator, not waitForFunction: the console's CSP forbids the eval that needs)
  const rendered = (page: Page, view: string) => page.locator(`body[data-rendered="${view}"]`).waitFor({ timeout: WAIT });
  const portBadge = (page: Page, port: string) => page.locator(`tr[data-port="${port}"] .badge`);

  // every tab holds an event stream (Chromium allows 6 connections per host): each test closes its tabs, also on failure
  let pages: Page[] = [];
  const newPage = async (): Promise<Page> => {
    const p = await browser!.context.newPage();
    pages.push(p);
    return p;
  };
  afterEach(async () => {
    for (const p of pages) await p.close().catch(() => undefined);
    pages = [];
  });

  async function signIn(page: Page): Promise<void> {
    await page.goto(`${base}/console/`);
    await page.getByLabel('Project').fill(PROJECT);
    await page.getByLabel('API token').fill(ADMIN);
    await page.getByRole('button', { name: 'Sign in' }).click();
    await rendered(page, 'overview');
  }

  beforeAll(async () => {
    mkdirSync(SHOTS, { recursive: true });
    try {
      await lab.setup();
      // the console of this checkout, built like `npm run build` does, into the lab's directory
      const consoleDir = join(lab.dir, 'console');
      await execa(join(REPO, 'node_modules/.bin/vite'), ['build', '--config', 'console/vite.config.ts', '--outDir', consoleDir, '--logLevel', 'warn'], { cwd: REPO });
      const config = join(lab.dir, 'controller.json');
      await writeFile(
        config,
        JSON.stringify({
          listen: { host: CTL, port: PORT },
          data_dir: join(lab.dir, 'controller-data'),
          api: { tokens: [{ name: 'console', token: ADMIN }] },
          agents: { heartbeat_interval_ms: 2000 },
          log: { level: 'info' },
        }),
      );
      controller = lab.secgroup(lab.ns.ctl, ['controller', '--config', config], { SECGROUP_CONSOLE_DIR: consoleDir });
      await controller.waitFor((l) => l.event === 'listen', 30_000, 0, 'controller listening');
      [ctlRpc] = await Promise.all([lab.rpc(lab.ns.ctl), lab.listeners(lab.ns.a, [8080])]);
      // the instance starts in `default` without its ingress rules: nothing opens tcp/8080
      const listed = await api('GET', '/vpc/security-group-rules?security_group_id=default&direction=ingress', undefined, 200);
      for (const r of listed.body.security_group_rules as Json[]) await api('DELETE', `/vpc/security-group-rules/${String(r.id)}`, undefined, 204);
      const created = await api('POST', '/instances', { instance: { id: 'ecs-a', name: 'web-a', addresses: [A], security_groups: ['default'] } }, 201);
      const agentConfig = join(lab.dir, 'agent.json');
      await writeFile(
        agentConfig,
        JSON.stringify({
          instance_id: 'ecs-a',
          state_dir: join(lab.dir, 'state-a'),
          log_level: 'info',
          controller: { url: `ws://${CTL}:${PORT}`, token: created.body.token, reconnect_initial_ms: 100, reconnect_max_ms: 500, ping_interval_ms: 2000, pong_timeout_ms: 2000 },
          ports_interval_ms: 0,
          http_listen: '127.0.0.1:9469',
          platform: { dhcp: false },
        }),
      );
      lab.secgroup(lab.ns.a, ['agent', '--config', agentConfig]);
      for (let st: Json = {}, end = Date.now() + 30_000; !(st.connected && st.in_sync); ) {
        if (Date.now() > end) throw new Error(`ecs-a not in sync after 30 s: ${JSON.stringify(st)}`);
        await new Promise((r) => setTimeout(r, 100));
        st = (await api('GET', '/instances/ecs-a/status', undefined, 200)).body.status;
      }
      // the bridge for the browser: root 127.0.0.1 -> Unix socket -> the controller in its namespace
      const sock = join(lab.dir, 'bridge.sock');
      const b = lab.spawn(lab.ns.ctl, [join(REPO, 'test/helpers/ns-bridge.ts'), sock, CTL, String(PORT)], 'pipe');
      const bp = new AgentProcess(b, b.stdout!);
      for (const end = Date.now() + 20_000; !bp.raw.includes('ready'); ) {
        if (Date.now() > end) throw new Error(`ns-bridge did not start: ${bp.raw.join('\n')}`);
        await new Promise((r) => setTimeout(r, 50));
      }
      bridge = await loopbackToUnix(sock);
      base = bridge.url;
      browser = await launchBrowser();
    } catch (e) {
      await browser?.close();
      await bridge?.close();
      await lab.destroy();
      throw e;
    }
  }, 180_000);

  afterAll(async () => {
    await browser?.close();
    await bridge?.close();
    await lab.destroy();
  }, 60_000);

  it('signs in with the token kept in session storage, never in a URL; the overview counts the connected instance', async () => {
    const page = await newPage();
    const urls: string[] = [];
    page.on('request', (r) => urls.push(r.url()));
    await signIn(page);
    await page.locator('.card', { hasText: 'connected' }).filter({ hasText: '1' }).waitFor({ timeout: WAIT });
    await shot(page, 'overview');
    // functions, not strings: they run in the page without eval (which the CSP forbids)
    expect(await page.evaluate(() => (globalThis as any).sessionStorage.getItem('secgroup.console.session'))).toContain(ADMIN);
    expect(await page.evaluate(() => (globalThis as any).localStorage.length)).toBe(0);
    expect(urls.filter((u) => u.includes(ADMIN))).toEqual([]);
    await page.close();
  });

  it('creates a group, attaches the instance, adds a rule (the API message at the field first), and a second tab sees it applied and tcp/8080 open, live', async () => {
    const watcher = await newPage();
    const editor = await newPage();
    await signIn(watcher);
    await signIn(editor);
    await watcher.getByRole('link', { name: 'Instances' }).click();
    await rendered(watcher, 'instances');
    await watcher.getByRole('link', { name: 'web-a' }).click();
    await rendered(watcher, 'instance');
    expect(await connectsToA(8080)).toBe(false);
    await portBadge(watcher, 'tcp/8080').filter({ hasText: /^blocked$/ }).waitFor({ timeout: WAIT });

    // the group, from the list page
    await editor.getByRole('link', { name: 'Security groups' }).click();
    await rendered(editor, 'groups');
    const create = editor.getByRole('form', { name: 'Create a security group' });
    await create.getByLabel('ID (optional)').fill('sg-console');
    await create.getByLabel('Name').fill('console-web');
    await create.getByLabel('Description').fill('made in the console');
    await create.getByRole('button', { name: 'Create group' }).click();
    await editor.waitForURL(/\/console\/groups\/sg-console$/);
    await rendered(editor, 'group');
    // its default ingress rules (from its own members) go, so only the rule added below opens anything
    const ownMembers = editor.locator('tr', { hasText: 'from group sg-console' });
    expect(await ownMembers.count()).toBe(2);
    for (let n = 2; n > 0; n--) {
      const id = await ownMembers.first().locator('td.mono').textContent();
      await editor.getByRole('button', { name: `Delete rule ${id}` }).click();
      await editor.locator(`tr#rule-${id}`).waitFor({ state: 'detached', timeout: WAIT });
    }
    expect(await ownMembers.count()).toBe(0);
    await shot(editor, 'groups-list');

    // attach: the instance's groups in order, from the instance page
    await editor.goto(`${base}/console/instances/ecs-a`);
    await rendered(editor, 'instance');
    await editor.getByLabel('Security groups, in matching order (comma-separated)').fill('sg-console, default');
    await editor.getByRole('button', { name: 'Save groups' }).click();
    await editor.getByRole('status').filter({ hasText: 'Security groups saved.' }).waitFor({ timeout: WAIT });
    await watcher.locator('ol.inline li', { hasText: 'sg-console' }).waitFor({ timeout: WAIT });

    // a rule with a bad port: the API's message at the field
    await editor.goto(`${base}/console/groups/sg-console`);
    await rendered(editor, 'group');
    const form = editor.getByRole('form', { name: 'Add a rule' });
    await form.getByLabel('Ports (multiport)').fill('70000');
    await form.getByLabel('Remote IP prefix').fill('0.0.0.0/0');
    await form.getByLabel('Description').fill('web from anywhere');
    await form.getByRole('button', { name: 'Add rule' }).click();
    const fieldError = form.locator('#f-multiport-error');
    await fieldError.waitFor({ timeout: WAIT });
    expect(await fieldError.textContent()).toMatch(/70000/);
    expect(await form.getByLabel('Ports (multiport)').getAttribute('aria-invalid')).toBe('true');
    await shot(editor, 'group-field-error');
    await form.getByLabel('Ports (multiport)').fill('8080');
    // the preview (a dry run): which instances change, what becomes reachable from the internet; nothing is written
    await form.getByRole('button', { name: 'Preview impact' }).click();
    const impact = form.getByRole('status', { name: 'Impact of the change' });
    await impact.waitFor({ timeout: WAIT });
    expect(await impact.textContent()).toContain('Becomes reachable from the internet: ecs-a tcp/8080 (IPv4)');
    await shot(editor, 'group-preview');
    expect(await editor.locator('tr', { hasText: 'tcp 8080 from 0.0.0.0/0' }).count()).toBe(0);
    await form.getByRole('button', { name: 'Add rule' }).click();
    const row = editor.locator('tr', { hasText: 'tcp 8080 from 0.0.0.0/0' });
    await row.waitFor({ timeout: WAIT });
    ruleId = (await row.locator('td.mono').textContent())!;
    expect(ruleId).toMatch(/^[0-9a-f-]{36}$/);
    await shot(editor, 'group');

    // the watching tab was not reloaded: the event stream brought the ack and the port report
    await portBadge(watcher, 'tcp/8080').filter({ hasText: /^open$/ }).waitFor({ timeout: WAIT });
    const status = (await api('GET', '/instances/ecs-a/status', undefined, 200)).body.status;
    await watcher.getByTestId('applied-revision').filter({ hasText: new RegExp(`^${status.desired_revision}$`) }).waitFor({ timeout: WAIT });
    expect(await watcher.getByTestId('policy-state').textContent()).toContain('applied');
    const decider = watcher.locator('tr[data-port="tcp/8080"]').getByRole('link', { name: new RegExp(`allowed by sg-console / ${ruleId}`) });
    expect(await decider.getAttribute('href')).toBe(`/console/groups/sg-console#rule-${ruleId}`);
    expect(await connectsToA(8080)).toBe(true);
    await shot(watcher, 'instance');
    await watcher.setViewportSize({ width: 390, height: 844 });
    await shot(watcher, 'instance-phone');
    await watcher.setViewportSize({ width: 1280, height: 860 });

    // the deciding rule's link leads to the rule, highlighted
    await decider.click();
    await rendered(watcher, 'group');
    expect(await watcher.locator(`tr#rule-${ruleId}`).getAttribute('class')).toContain('target');
    await watcher.close();
    await editor.close();
  });

  it('answers the reachability question with links to the deciding rules', async () => {
    const page = await newPage();
    await signIn(page);
    await page.getByRole('link', { name: 'Reachability' }).click();
    await rendered(page, 'reachability');
    const form = page.getByRole('form', { name: 'Reachability question' });
    await form.getByLabel('From (instance id, IP or CIDR)').fill(CTL);
    await form.getByLabel('To (instance)').selectOption('ecs-a');
    await form.getByLabel('Port').fill('8080');
    await form.getByRole('button', { name: 'Check' }).click();
    await page.waitForURL(/\/console\/reachability\?from=198\.18\.11\.1&to=ecs-a&protocol=tcp&port=8080$/);
    const answer = page.getByRole('status', { name: 'Answer' });
    await answer.waitFor({ timeout: WAIT });
    expect(await answer.locator('.verdict .badge').textContent()).toBe('allowed');
    expect(await answer.getByRole('link', { name: new RegExp(`rule ${ruleId} of console-web`) }).getAttribute('href')).toBe(`/console/groups/sg-console#rule-${ruleId}`);
    expect(await answer.textContent()).toContain('Listening: yes');
    await shot(page, 'reachability');
    await page.close();
  });

  it('deletes the rule: the port turns blocked again and the connection fails', async () => {
    const watcher = await newPage();
    const editor = await newPage();
    await signIn(watcher);
    await signIn(editor);
    await watcher.goto(`${base}/console/instances/ecs-a`);
    await rendered(watcher, 'instance');
    await portBadge(watcher, 'tcp/8080').filter({ hasText: /^open$/ }).waitFor({ timeout: WAIT });
    await editor.goto(`${base}/console/groups/sg-console`);
    await rendered(editor, 'group');
    await editor.getByRole('button', { name: `Delete rule ${ruleId}` }).click();
    await editor.locator(`tr#rule-${ruleId}`).waitFor({ state: 'detached', timeout: WAIT });
    await portBadge(watcher, 'tcp/8080').filter({ hasText: /^blocked$/ }).waitFor({ timeout: WAIT });
    expect(await connectsToA(8080)).toBe(false);
    await editor.goto(`${base}/console/`);
    await rendered(editor, 'overview');
    await editor.locator('.changes li', { hasText: 'DeleteSecurityGroupRule' }).first().waitFor({ timeout: WAIT });
    await shot(editor, 'overview-after');
    await editor.goto(`${base}/console/address-groups`);
    await rendered(editor, 'address-groups');
    await shot(editor, 'address-groups');
    await watcher.close();
    await editor.close();
  });

  it('renders names and descriptions as text: HTML in them shows literally and no script runs (text rendering and the CSP)', async () => {
    // the API refuses "<" and ">" in descriptions; a store written by other means (an old version, a restored
    // backup, a hand edit) may still hold them, so they go in through the store, as such a file would
    const evil = '<img src=x onerror="window.__xss=1"><script>window.__xss=2</script>';
    const placeholder = { security_group_id: 'sg-console', direction: 'ingress', ethertype: 'IPv4', protocol: 'tcp', multiport: '9999', remote_ip_prefix: '198.18.11.0/24', description: 'placeholder' };
    const ruleOfGroup = (await api('POST', '/vpc/security-group-rules', { security_group_rule: placeholder }, 201)).body.security_group_rule.id as string;
    const store = openSqliteStore(join(lab.dir, 'controller-data', 'controller.db'));
    try {
      await store.mutate(PROJECT, (snap) => {
        const g = snap!.groups.find((x) => x.id === 'sg-console')!;
        const r = snap!.rules.find((x) => x.id === ruleOfGroup)!;
        return { ops: [{ op: 'putGroup', group: { ...g, description: evil } }, { op: 'putRule', rule: { ...r, description: `rule ${evil}` } }], value: null };
      });
    } finally {
      await store.close();
    }
    // what the API accepts and a careless renderer would still execute
    await api('POST', '/vpc/security-groups', { security_group: { id: 'sg-quote', name: 'quote', description: '" onmouseover="window.__xss=3" x="' } }, 201);
    const page = await newPage();
    const violations: string[] = [];
    page.on('console', (m) => {
      if (/Content Security Policy/i.test(m.text())) violations.push(m.text());
    });
    await signIn(page);
    await page.goto(`${base}/console/groups/sg-console`);
    await rendered(page, 'group');
    await page.getByText(evil, { exact: false }).first().waitFor({ timeout: WAIT });
    expect(await page.locator('body').textContent()).toContain(`rule ${evil}`);
    expect(await page.locator('img').count()).toBe(0);
    expect(await page.locator('script').count()).toBe(1); // the console's own module
    await page.goto(`${base}/console/groups`);
    await rendered(page, 'groups');
    const quoted = page.getByText('" onmouseover="window.__xss=3" x="');
    await quoted.hover();
    expect(await page.evaluate(() => (globalThis as any).__xss ?? null)).toBeNull();
    // and the CSP would stop an injected inline script anyway
    const ran = await page.evaluate(() => {
      const g = globalThis as any;
      const s = g.document.createElement('script');
      s.textContent = 'window.__inline = 1';
      g.document.body.appendChild(s);
      return g.__inline ?? null;
    });
    expect(ran).toBeNull();
    await page.waitForTimeout(200);
    expect(violations.join('\n')).toMatch(/Content Security Policy/);
    await shot(page, 'xss-as-text');
    await page.close();
  });
});
