// The idle part of `npm run bench`: a fresh sidecar watching many services (one request to each), then idle — its RSS, CPU and Consul connections.
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { freePorts } from '../src/common/free-port.ts';
import type { ConsulDevAgent } from '../src/consul/consul-dev-agent.ts';
import { Tandem } from '../src/sdk/index.ts';
import type { Pinning } from '../test/support/host-tools.ts';
import { waitInstances } from '../test/support/instances.ts';
import { cpuSeconds, establishedTo, rssMb } from '../test/support/proc-stats.ts';
import { stopProc } from '../test/support/processes.ts';
import { checkInterrupted, log, sleep } from '../test/support/run-control.ts';
import { benchArgs, startTandem, type TandemProc } from '../test/support/tandem-process.ts';

async function consulPut(url: string, payload?: unknown): Promise<void> {
  const res = await fetch(url, { method: 'PUT', ...(payload === undefined ? {} : { body: JSON.stringify(payload) }), signal: AbortSignal.timeout(30_000) });
  const text = await res.text();
  if (res.status !== 200) throw new Error(`PUT ${url}: ${res.status} ${text}`);
}

/** A fresh sidecar watching `count` services (one request to each), then idle: its RSS, CPU and Consul connections. */
export async function idleWithServices(o: { agent: ConsulDevAgent; nodeArgs: readonly string[]; count: number; idleSeconds: number; upstreamPort: number; dir: string; pinning: Pinning; core: number; onStart: (s: TandemProc) => void }) {
  const names = Array.from({ length: o.count }, (_, i) => `idle-${String(i).padStart(3, '0')}`);
  log(`registering ${o.count} services (one instance each, TTL check passed once) with the agent`);
  for (const name of names) {
    const id = `${name}-1`;
    const check = { CheckID: `service:${id}`, Name: 'bench TTL', TTL: '30m' };
    await consulPut(`${o.agent.address}/v1/agent/service/register`, { ID: id, Name: name, Address: '127.0.0.1', Port: o.upstreamPort, Meta: { version: '1.0.0' }, Check: check });
    await consulPut(`${o.agent.address}/v1/agent/check/pass/service:${id}`);
  }
  checkInterrupted();
  const [apiPort, proxyPort] = (await freePorts(2)) as [number, number];
  const stateDir = join(o.dir, 'idle-state');
  await mkdir(stateDir, { recursive: true });
  const started = Date.now();
  const set = [`upstreams=${JSON.stringify(names)}`, `watch.maxServices=${Math.max(100, o.count + 10)}`];
  const s = await startTandem({ api: `127.0.0.1:${apiPort}`, proxy: `127.0.0.1:${proxyPort}`, args: benchArgs({ consul: o.agent.address, stateDir, nodeName: 'bench-idle', set }), nodeArgs: o.nodeArgs, pin: { pinning: o.pinning, core: o.core } });
  o.onStart(s);
  const rssAtStartMb = await rssMb([s.pid]);
  const view = new Tandem({ url: s.api });
  for (const name of names) await waitInstances(view, name, (l) => l.length === 1 && l.every((i) => i.healthy));
  const watchReadyMs = Date.now() - started;
  log(`all ${o.count} services routable after ${watchReadyMs} ms; one request to each through the proxy`);
  for (const name of names) {
    const res = await fetch(`${s.proxy}/${name}/`, { signal: AbortSignal.timeout(5000) });
    await res.arrayBuffer();
    if (res.status !== 200) throw new Error(`GET ${s.proxy}/${name}/ answered ${res.status}`);
  }
  log(`idle for ${o.idleSeconds} s`);
  const cpu0 = await cpuSeconds([s.pid]);
  const t0 = performance.now();
  for (let waited = 0; waited < o.idleSeconds * 1000; waited += 500) {
    checkInterrupted();
    await sleep(500);
  }
  const cpu1 = await cpuSeconds([s.pid]);
  const elapsed = (performance.now() - t0) / 1000;
  const result = {
    services: o.count,
    /** VmRSS after the sidecar answered one request per service and then sat idle for `idleSeconds`. */
    rssMb: await rssMb([s.pid]),
    /** VmRSS right after start, before any service answered. */
    rssAtStartMb,
    peakRssMb: await rssMb([s.pid], 'VmHWM'),
    idleSeconds: o.idleSeconds,
    /** CPU used while idle, as a share of one core. */
    idleCpuPercent: elapsed > 0 ? ((cpu1 - cpu0) / elapsed) * 100 : 0,
    /** ESTABLISHED connections from the sidecar to Consul's HTTP port while idle. */
    consulConnections: await establishedTo(s.pid, o.agent.httpPort),
    /** From start until every service had a healthy instance in the routing table. */
    watchReadyMs,
  };
  await stopProc(s, 20_000);
  return result;
}
export type IdleResult = Awaited<ReturnType<typeof idleWithServices>>;
