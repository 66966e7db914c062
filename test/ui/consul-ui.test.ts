// The Consul UI as the window: headless Chromium finds each Tandem instance with its own version tags and Meta.version (screenshots for the README).
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { after, before, test } from 'node:test';
import { chromium, type Browser, type Locator } from 'playwright-core';
import { ConsulDevAgent } from '../../src/consul/consul-dev-agent.ts';
import { eventually, healthOf } from '../support/consul.ts';
import { api, removeDir, startSidecar } from '../support/sidecar.ts';
import { startUpstream, type Upstream } from '../support/upstream.ts';

const CHROMIUM = process.env['CHROMIUM_PATH'] ?? '/usr/bin/chromium';
// Screenshots land in docs/img only when asked (they are committed, not rewritten by every run).
const SHOTS = process.env['UPDATE_SCREENSHOTS'] === '1' ? new URL('../../docs/img/', import.meta.url).pathname : undefined;

const consul = new ConsulDevAgent({ nodeName: 'host-a' });
let side: Awaited<ReturnType<typeof startSidecar>>;
let browser: Browser;
const ups: Upstream[] = [];

before(async () => {
  assert.ok(existsSync(CHROMIUM), `Chromium not found at ${CHROMIUM}: install Debian's chromium package (.ci/run does) or set CHROMIUM_PATH`);
  await consul.start();
  side = await startSidecar(consul.address, { nodeName: 'host-a' });
  for (const v of ['1.4.2', '2.0.0']) ups.push(await startUpstream('greeter', v));
  for (const u of ups) await api('POST', `${side.api}/v1/services`, { name: 'greeter', version: u.version, port: u.port, tags: ['demo'], meta: { team: 'web' }, check: { kind: 'http', path: '/health' } });
  await eventually(async () => (await healthOf(consul, 'greeter')).length === 2, 'greeters passing');
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
});
after(async () => {
  await browser?.close();
  await side?.sidecar.close();
  for (const u of ups) await u.close();
  await consul.stop();
  if (side) await removeDir(side.stateDir);
});

/** The tags a Consul UI row or page shows, in its order. */
async function tagsIn(scope: Locator): Promise<string[]> {
  return (await scope.locator('dl.tag-list dd span').allInnerTexts()).map((t) => t.trim());
}

test('the Consul UI shows each instance with its own version tags and Meta.version', async () => {
  // Each instance by the port it was registered with (not by what Consul says its version is: that is
  // what is checked): each must show its own version, not just some version.
  const rows = await healthOf(consul, 'greeter');
  const idOf = (version: string) => {
    const id = rows.find((r) => r.Service.Port === ups.find((u) => u.version === version)?.port)?.Service.ID;
    assert.ok(id, `the greeter registered as ${version} in Consul`);
    return id;
  };
  const older = idOf('1.4.2');
  const newer = idOf('2.0.0');
  const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  // A list row: the one whose link goes to `href` (the row's own page).
  const row = (href: string) => page.locator('li').filter({ has: page.locator(`a[href="${href}"]`) });

  await page.goto(`${consul.address}/ui/dc1/services`);
  const service = row('/ui/dc1/services/greeter/instances');
  await service.waitFor({ timeout: 20_000 });
  assert.deepEqual((await tagsIn(service)).sort(), ['demo', 'v1', 'v1-4-2', 'v2', 'v2-0-0'], "the greeter row's tags: both versions'");
  assert.ok(await row('/ui/dc1/services/tandem/instances').isVisible(), 'the sidecar itself is a service');
  if (SHOTS) await page.screenshot({ path: `${SHOTS}consul-services.png` });

  await page.goto(`${consul.address}/ui/dc1/services/greeter/instances`);
  const olderRow = row(`/ui/dc1/services/greeter/instances/host-a/${older}`);
  const newerRow = row(`/ui/dc1/services/greeter/instances/host-a/${newer}`);
  await olderRow.waitFor({ timeout: 20_000 });
  assert.deepEqual(await tagsIn(olderRow), ['v1', 'v1-4-2', 'demo'], `${older}'s row`);
  assert.deepEqual(await tagsIn(newerRow), ['v2', 'v2-0-0', 'demo'], `${newer}'s row`);
  if (SHOTS) await page.screenshot({ path: `${SHOTS}consul-instances.png` });

  await page.goto(`${consul.address}/ui/dc1/services/greeter/instances/host-a/${older}/metadata`);
  // A Meta row: its key cell, exactly, and the value next to it.
  const meta = (key: string) => page.locator('tr').filter({ has: page.locator('td:first-child', { hasText: new RegExp(`^\\s*${key}\\s*$`) }) }).locator('td').nth(1);
  await meta('version').waitFor({ timeout: 20_000 });
  assert.equal((await meta('version').innerText()).trim(), '1.4.2', `Meta.version of ${older}`);
  assert.match((await meta('tandem_sidecar').innerText()).trim(), /^tandem-host-a-\d+$/);
  assert.deepEqual(await tagsIn(page.locator('section.tags')), ['v1', 'v1-4-2', 'demo'], `${older}'s Tags & Meta tab`);
  if (SHOTS) await page.screenshot({ path: `${SHOTS}consul-instance-meta.png` });

  await page.goto(`${consul.address}/ui/dc1/services/greeter/instances/host-a/${older}/health-checks`);
  await page.getByText('greeter 1.4.2: HTTP GET /health').first().waitFor({ timeout: 20_000 });
  if (SHOTS) await page.screenshot({ path: `${SHOTS}consul-instance-checks.png` });
  await page.close();
});
