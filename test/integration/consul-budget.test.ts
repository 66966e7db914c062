// A flood of event streams and made-up service names cannot exhaust Consul for the host, nor leave connections behind.
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { after, test } from 'node:test';
import { eventually, useConsul } from '../support/consul.ts';
import { api, removeDir, startService, startSidecar } from '../support/sidecar.ts';

const consul = useConsul();

/** Established TCP connections from this host to the Consul agent's HTTP port (any process). */
async function consulConnections(port: number): Promise<number> {
  const text = await readFile('/proc/net/tcp', 'utf8');
  let n = 0;
  for (const line of text.split('\n').slice(1)) {
    const f = line.trim().split(/\s+/);
    // f[2] = rem_address "0100007F:1F90", f[3] = state (01 = ESTABLISHED)
    if (f[3] === '01' && f[2] && parseInt(f[2].split(':')[1] ?? '', 16) === port) n++;
  }
  return n;
}

/**
 * Connections the Consul agent holds for clients (its side of each socket, any state but LISTEN and
 * TIME_WAIT): a client that dropped a blocking query still counts here until Consul's wait ends.
 */
async function consulHeld(port: number): Promise<number> {
  let n = 0;
  for (const file of ['/proc/net/tcp', '/proc/net/tcp6']) {
    const text = await readFile(file, 'utf8').catch(() => '');
    for (const line of text.split('\n').slice(1)) {
      const f = line.trim().split(/\s+/);
      if (f[1] && parseInt(f[1].split(':').pop() ?? '', 16) === port && f[3] !== '0A' && f[3] !== '06') n++;
    }
  }
  return n;
}

/** Opens an SSE stream and resolves once its first bytes arrived; `close()` aborts it. */
async function openStream(url: string): Promise<{ close: () => void; status: number }> {
  const ac = new AbortController();
  const res = await fetch(url, { signal: ac.signal });
  if (res.status === 200 && res.body) {
    const reader = res.body.getReader();
    await reader.read();
    // Keep reading in the background so the sidecar never blocks on a full socket.
    void (async () => {
      try {
        for (;;) if ((await reader.read()).done) break;
      } catch {
        // aborted
      }
    })();
  } else await res.text();
  return { status: res.status, close: () => ac.abort() };
}

test('230 event streams and 200 unknown names at once: Consul still answers others, a real service routes, connections go back', { timeout: 180_000 }, async () => {
  const upstream = await startService('billing', '1.0.0');
  const { sidecar, api: apiUrl, stateDir } = await startSidecar(consul.address);
  after(async () => {
    await sidecar.close();
    await upstream.close();
    await removeDir(stateDir);
  });
  const proxy = sidecar.addresses.proxy;
  const reg = await api('POST', `${apiUrl}/v1/services`, { name: 'billing', version: '1.0.0', port: upstream.port, check: { kind: 'tcp' } });
  assert.equal(reg.status, 201, JSON.stringify(reg.body));
  await eventually(async () => (await fetch(`${proxy}/billing/x`)).status === 200, 'billing to route');
  // Let start-up calls finish; then take the baseline.
  await eventually(async () => (await consulConnections(consul.httpPort)) <= sidecar.config.consul.maxConnections, 'a settled baseline');
  const before = await consulConnections(consul.httpPort);

  const streams = await Promise.all(Array.from({ length: 230 }, (_, i) => openStream(`${apiUrl}/v1/events/flood-topic-${i}`)));
  const unknown = await Promise.all(
    Array.from({ length: 200 }, async (_, i) => {
      const res = await fetch(`${proxy}/no-such-service-${i}/x`);
      await res.text();
      return res.status;
    }),
  );
  const during = await consulConnections(consul.httpPort);
  console.log(`Consul connections: before ${before}, during the flood ${during} (max ${sidecar.config.consul.maxConnections})`);
  assert.ok(streams.every((s) => s.status === 200), `stream statuses: ${[...new Set(streams.map((s) => s.status))].join(',')}`);
  assert.ok(unknown.every((s) => s === 503), `unknown-name statuses: ${[...new Set(unknown)].join(',')}`);
  assert.ok(during <= sidecar.config.consul.maxConnections + 5, `${during} connections during the flood`);

  // A new client from 127.0.0.1 still gets answers, and the real service still routes.
  const leader = await fetch(`${consul.address}/v1/status/leader`);
  assert.equal(leader.status, 200);
  const routed = await fetch(`${proxy}/billing/y`);
  assert.equal(routed.status, 200);
  assert.equal(((await routed.json()) as { name: string }).name, 'billing');

  for (const s of streams) s.close();
  const t0 = Date.now();
  await eventually(async () => (await consulConnections(consul.httpPort)) <= before + 4, 'connections back to the baseline', 20_000);
  const afterCount = await consulConnections(consul.httpPort);
  console.log(`Consul connections ${Date.now() - t0} ms after the streams closed: ${afterCount} (before: ${before})`);
});

test("opening and closing event streams in a loop never piles up connections on Consul's side", { timeout: 180_000 }, async () => {
  const { sidecar, api: apiUrl, stateDir } = await startSidecar(consul.address);
  after(async () => {
    await sidecar.close();
    await removeDir(stateDir);
  });
  let most = 0;
  for (let i = 0; i < 300; i++) {
    const s = await openStream(`${apiUrl}/v1/events/churn-${i}`);
    assert.equal(s.status, 200);
    s.close();
    if (i % 10 === 0) most = Math.max(most, await consulHeld(consul.httpPort));
  }
  most = Math.max(most, await consulHeld(consul.httpPort));
  console.log(`connections Consul held during 300 open/close stream cycles: at most ${most}`);
  assert.ok(most <= 20, `Consul held ${most} connections`);
  const leader = await fetch(`${consul.address}/v1/status/leader`);
  assert.equal(leader.status, 200);
});
