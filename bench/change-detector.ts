// The shared change detector's cost on a large catalog: Consul reads per check change, and the time from a change to the routing update.
//
//   node --import tsx bench/change-detector.ts
//   DETECTOR_SERVICES=500 DETECTOR_SERVED=50 DETECTOR_CHANGES=40 node --import tsx bench/change-detector.ts
//
// 1. Starts a Consul dev agent and one node:http upstream that every instance points at; registers
//    DETECTOR_SERVICES services (one instance each, with a passing check) on a synthetic node.
// 2. Starts a sidecar in this process with `consul.maxConnections=16` (9 watch slots for services), then sends one
//    request to services one by one until DETECTOR_SERVED of them are served by the shared change detector (the
//    rest of the ones requested have watches of their own).
// 3. DETECTOR_CHANGES times, for a detector-served service, an own-watch service and a service nobody requested:
//    flips its instance's check (passing → critical → passing, `PUT /v1/catalog/register`), then counts the
//    detector's `/v1/health/service` reads and wake-ups that change caused, and times from the write until the
//    sidecar's routing shows the new health (`GET /v1/instances/<service>`, polled back to back).
// Prints Markdown tables on stdout (progress on stderr). Loopback only; stops everything it started, also on error.
import { createServer, type Server } from 'node:http';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadConfig } from '../src/config/config.ts';
import { ConsulDevAgent } from '../src/consul/consul-dev-agent.ts';
import { freePorts } from '../src/common/free-port.ts';
import { Sidecar } from '../src/sidecar.ts';
import { intEnv } from '../test/support/env.ts';
import { getJson, putJson } from '../test/support/http-json.ts';
import { Distribution } from '../test/support/latency.ts';
import { checkInterrupted, installSignalHandlers, log, runMain, setLogPrefix, sleep } from '../test/support/run-control.ts';

setLogPrefix('detector');
installSignalHandlers();
const SERVICES = intEnv('DETECTOR_SERVICES', 500, 10);
const SERVED = intEnv('DETECTOR_SERVED', 50, 1);
const CHANGES = intEnv('DETECTOR_CHANGES', 40, 1);
const NODE = 'detector-bench-node';
const name = (i: number) => `svc-${String(i).padStart(4, '0')}`;

async function registerInstance(consul: string, service: string, port: number, status: 'passing' | 'critical'): Promise<void> {
  const r = await putJson(`${consul}/v1/catalog/register`, {
    Node: NODE,
    Address: '127.0.0.1',
    Service: { ID: `${service}-0`, Service: service, Address: '127.0.0.1', Port: port, Meta: { version: '1.0.0' }, Tags: ['v1'] },
    Check: { Node: NODE, CheckID: `${service}-0:check`, Name: `${service} check`, Status: status, ServiceID: `${service}-0` },
  });
  if (r.status !== 200) throw new Error(`catalog register ${service}: ${r.status} ${r.text}`);
}

async function healthy(api: string, service: string): Promise<boolean | undefined> {
  const { status, body } = await getJson(`${api}/v1/instances/${service}`);
  if (status !== 200) return undefined;
  return (body as { instances: { healthy: boolean }[] }).instances[0]?.healthy;
}

interface Sample {
  ms: number;
  reads: number;
  wakeUps: number;
}

/** Flips `service`'s check and measures until the sidecar's view shows it (or, for a service nobody requested, a quiet 300 ms). */
async function change(consul: string, sidecar: Sidecar, api: string, service: string, port: number, to: 'passing' | 'critical', followed: boolean): Promise<Sample> {
  const before = sidecar.discoveryStats().detector;
  const started = performance.now();
  await registerInstance(consul, service, port, to);
  let ms = Number.NaN;
  if (followed) {
    for (;;) {
      checkInterrupted();
      if ((await healthy(api, service)) === (to === 'passing')) break;
      if (performance.now() - started > 10_000) throw new Error(`${service}: no routing update within 10 s`);
    }
    ms = performance.now() - started;
  }
  await sleep(300); // let every read the change caused finish
  const after = sidecar.discoveryStats().detector;
  return { ms, reads: (after?.reads ?? 0) - (before?.reads ?? 0), wakeUps: (after?.wakeUps ?? 0) - (before?.wakeUps ?? 0) };
}

function row(label: string, samples: Sample[]): string {
  const ms = Distribution.of(samples.map((s) => s.ms));
  // Counts: recorded whole.
  const reads = Distribution.of(samples.map((s) => s.reads), 1);
  const wakes = Distribution.of(samples.map((s) => s.wakeUps), 1);
  const t = ms.count ? `${ms.percentile(50).toFixed(1)} / ${ms.percentile(99).toFixed(1)}` : 'n/a (not routed)';
  return `| ${label} | ${samples.length} | ${t} | ${reads.percentile(50)} (${Math.min(...samples.map((s) => s.reads))}–${reads.max}) | ${wakes.percentile(50)} |`;
}

async function main(): Promise<void> {
  const consul = new ConsulDevAgent({ nodeName: 'detector-bench' });
  let upstream: Server | undefined;
  let sidecar: Sidecar | undefined;
  const stateDir = await mkdtemp(join(tmpdir(), 'tandem-detector-'));
  try {
    await consul.start();
    upstream = createServer((_req, res) => res.end('ok'));
    await new Promise<void>((r) => upstream?.listen(0, '127.0.0.1', r));
    const port = (upstream.address() as { port: number }).port;
    log(`registering ${SERVICES} services with a passing check`);
    for (let i = 0; i < SERVICES; i += 16) await Promise.all(Array.from({ length: Math.min(16, SERVICES - i) }, (_, k) => registerInstance(consul.address, name(i + k), port, 'passing')));
    const stateAny = await fetch(`${consul.address}/v1/health/state/any`);
    const stateAnyBytes = (await stateAny.arrayBuffer()).byteLength;

    const [proxyPort] = await freePorts(1);
    const config = loadConfig({
      argv: ['--consul', consul.address, '--api', '127.0.0.1:0', '--proxy', `127.0.0.1:${proxyPort}`, '--state-dir', stateDir, '--node-name', 'bench', '--advertise', '127.0.0.1', '--log-level', 'silent',
        '--set', 'consul.maxConnections=16', '--set', 'watch.maxServices=150', '--set', 'proxy.slowStartMs=0'],
      env: {},
    });
    sidecar = new Sidecar({ config });
    const { api, proxy } = await sidecar.start();
    let next = 0;
    while ((sidecar.discoveryStats().detector?.serving ?? 0) < SERVED) {
      checkInterrupted();
      if (next >= SERVICES) throw new Error('ran out of services before the detector served DETECTOR_SERVED');
      const res = await fetch(`${proxy}/${name(next++)}/x`);
      await res.arrayBuffer();
      if (res.status !== 200) throw new Error(`${name(next - 1)}: ${res.status}`);
    }
    const stats = sidecar.discoveryStats();
    const viaDetector = stats.watches.filter((w) => w.via === 'detector').map((w) => w.service);
    const viaWatch = stats.watches.filter((w) => w.via === 'watch').map((w) => w.service);
    log(`${viaWatch.length} services on their own watch, ${viaDetector.length} through the detector; budget ${JSON.stringify(stats.budget)}`);
    await sleep(500);

    const groups: [string, string[], boolean][] = [
      ['detector-served service', viaDetector, true],
      ['own-watch service', viaWatch, true],
      ['service nobody requested', Array.from({ length: SERVICES - next }, (_, k) => name(next + k)), false],
    ];
    const results: [string, Sample[]][] = [];
    for (const [label, pool, followed] of groups) {
      const samples: Sample[] = [];
      for (let i = 0; i < CHANGES; i++) {
        const service = pool[i % pool.length] as string;
        const to = i % 2 === 0 ? 'critical' : 'passing';
        samples.push(await change(consul.address, sidecar, api, service, port, to, followed));
        // Every flip to critical is undone before the next service (each change is one flip).
        if (to === 'critical' && i === CHANGES - 1) await change(consul.address, sidecar, api, service, port, 'passing', followed);
      }
      results.push([label, samples]);
      log(`${label}: done`);
    }
    const end = sidecar.discoveryStats();
    console.log(`\n### Shared change detector: ${SERVICES} services in the catalog, ${viaDetector.length} served through the detector, ${viaWatch.length} on own watches\n`);
    console.log('| check flipped on | changes | change → routing p50 / p99 (ms) | detector reads per change, median (min–max) | detector wake-ups per change |');
    console.log('|---|---|---|---|---|');
    for (const [label, samples] of results) console.log(row(label, samples));
    console.log(`\nConsul watch connections held: ${end.budget.inUse} of ${end.budget.capacity} (${end.budget.byKind.reserved} reserved: names watch + detector; ${end.budget.byKind.shared} shared: own watches).`);
    console.log(`Each detector wake-up also reads /v1/health/state/any: ${(stateAnyBytes / 1024).toFixed(0)} KB with ${SERVICES} checks.`);
  } finally {
    await sidecar?.close().catch(() => undefined);
    await new Promise<void>((r) => (upstream ? upstream.close(() => r()) : r()));
    await consul.stop().catch(() => undefined);
    await rm(stateDir, { recursive: true, force: true });
  }
}

runMain(main);
