// The Consul UI as the window: headless Chromium finds Tandem's services with their version tags (screenshots for the README).
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { after, before, test } from 'node:test';
import { chromium, type Browser } from 'playwright-core';
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

test('the Consul UI lists the services with their version tags, instances and Meta.version', async () => {
  const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  await page.goto(`${consul.address}/ui/dc1/services`);
  await page.getByText('greeter', { exact: true }).first().waitFor({ timeout: 20_000 });
  const list = await page.content();
  for (const tag of ['v1', 'v1-4-2', 'v2', 'v2-0-0', 'demo']) assert.ok(list.includes(`>${tag}<`) || list.includes(tag), `tag ${tag} in the services list`);
  assert.ok(list.includes('tandem'), 'the sidecar itself is a service');
  if (SHOTS) await page.screenshot({ path: `${SHOTS}consul-services.png` });

  await page.goto(`${consul.address}/ui/dc1/services/greeter/instances`);
  await page.getByText(/greeter-host-a-\d+/).first().waitFor({ timeout: 20_000 });
  const instances = await page.content();
  assert.equal((instances.match(/greeter-host-a-\d+/g) ?? []).length >= 2, true, 'both instances listed');
  if (SHOTS) await page.screenshot({ path: `${SHOTS}consul-instances.png` });

  const id = (await healthOf(consul, 'greeter'))[0]?.Service.ID as string;
  await page.goto(`${consul.address}/ui/dc1/services/greeter/instances/host-a/${id}/metadata`);
  await page.getByText('tandem_node').first().waitFor({ timeout: 20_000 });
  const meta = await page.content();
  assert.ok(meta.includes('version') && /1\.4\.2|2\.0\.0/.test(meta), 'Meta.version on the Tags & Meta tab');
  assert.ok(meta.includes('tandem_sidecar'));
  if (SHOTS) await page.screenshot({ path: `${SHOTS}consul-instance-meta.png` });

  await page.goto(`${consul.address}/ui/dc1/services/greeter/instances/host-a/${id}/health-checks`);
  await page.getByText(/greeter \d\.\d\.\d: HTTP GET \/health/).first().waitFor({ timeout: 20_000 });
  if (SHOTS) await page.screenshot({ path: `${SHOTS}consul-instance-checks.png` });
  await page.close();
});
