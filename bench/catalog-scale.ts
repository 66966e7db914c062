// Catalog scale: 1,000 services × 10 instances in a Consul dev agent; the sidecar's memory, its watch connections,
// and the time from a Consul change to the sidecar routing by it.
//
//   node --import tsx bench/catalog-scale.ts        (builds dist/ first; SCALE_SKIP_BUILD=1 skips it)
//   SCALE_SERVICES=1000 SCALE_INSTANCES=10 SCALE_WATCHED=100 SCALE_CHANGES=50 node --import tsx bench/catalog-scale.ts
//
// 1. Starts a Consul dev agent and one node:http upstream (bench/upstream.ts) that every instance points at.
// 2. Registers the catalog on SCALE_INSTANCES synthetic nodes (instance i of every service on node i), each
//    instance with a passing check. Three ways are measured on a sample of SCALE_SAMPLE services each (time until
//    the catalog shows them): `PUT /v1/catalog/register` (one instance per call, SCALE_CONCURRENCY in flight),
//    `PUT /v1/txn` (32 instances = 64 operations per transaction, Consul's limit) and the agent endpoint
//    `PUT /v1/agent/service/register`; the rest goes through the fastest.
// 3. Starts `tandem start` with SCALE_WATCHED of the services as upstreams (`--set upstreams=[...]`), waits until
//    each has all its instances, idles, and reads its RSS (/proc/<pid>/status) and its ESTABLISHED connections to
//    Consul's HTTP port (/proc/<pid>/fd + /proc/net/tcp).
// 4. SCALE_CHANGES times: registers a new instance of a watched service (catalog register, passing check) and
//    times until a request pinned to it (`x-tandem-instance`) is proxied with 200; then deregisters it and times
//    until that request is refused. Polls back to back over a keep-alive connection. A blocking query of our own
//    (`?index=`, like the sidecar's) is held on the same service to show how much of that time is Consul's.
//
// Prints a summary (progress on stderr) and writes bench/results/catalog-scale.json. Loopback only; every
// process it starts is stopped and the temp dir removed, also on error and on SIGINT/SIGTERM.
import { join } from 'node:path';
import { Pool } from 'undici';
import { freePorts } from '../src/common/free-port.ts';
import { Tandem } from '../src/sdk/index.ts';
import { flagEnv, intEnv } from '../test/support/env.ts';
import { startNodeUpstreams } from '../test/support/fixed-upstreams.ts';
import { setupPinning } from '../test/support/host-tools.ts';
import { getJson, putJson } from '../test/support/http-json.ts';
import { waitInstances } from '../test/support/instances.ts';
import { Distribution } from '../test/support/latency.ts';
import { cpuSeconds, establishedTo, pidListeningOn, rssMb } from '../test/support/proc-stats.ts';
import { machineInfo, mdTable, writeResult } from '../test/support/report.ts';
import { build, checkInterrupted, installSignalHandlers, log, runMain, setLogPrefix, sleep } from '../test/support/run-control.ts';
import { benchArgs, startTandem } from '../test/support/tandem-process.ts';
import { withTeardown } from '../test/support/teardown.ts';

setLogPrefix('scale');
const TXN_INSTANCES = 32;
const TARGET_P99_MS = 50;

interface Settings {
  services: number;
  instances: number;
  watched: number;
  changes: number;
  sample: number;
  concurrency: number;
  idleSeconds: number;
  pin: boolean;
}

function readSettings(): Settings {
  const s: Settings = {
    services: intEnv('SCALE_SERVICES', 1000, 1),
    instances: intEnv('SCALE_INSTANCES', 10, 1),
    watched: intEnv('SCALE_WATCHED', 100, 1),
    changes: intEnv('SCALE_CHANGES', 50, 1),
    sample: intEnv('SCALE_SAMPLE', 20, 1),
    concurrency: intEnv('SCALE_CONCURRENCY', 16, 1),
    idleSeconds: intEnv('SCALE_IDLE_SECONDS', 10, 0),
    pin: flagEnv('SCALE_PIN', true),
  };
  if (s.watched > s.services) throw new Error('SCALE_WATCHED must not exceed SCALE_SERVICES');
  if (s.watched > 150) throw new Error('SCALE_WATCHED is at most 150 (the sidecar caps watch.maxServices at 150)');
  return s;
}

const serviceName = (i: number) => `svc-${String(i).padStart(4, '0')}`;
const nodeName = (i: number) => `scale-node-${String(i).padStart(2, '0')}`;

interface Instance {
  service: string;
  id: string;
  node: string;
}

function instancesOf(services: readonly number[], perService: number): Instance[] {
  const out: Instance[] = [];
  for (const s of services) for (let i = 0; i < perService; i++) out.push({ service: serviceName(s), id: `${serviceName(s)}-i${i}`, node: nodeName(i) });
  return out;
}

// ---------------------------------------------------------------------------------------------------
// Registering

type Method = 'catalog' | 'txn' | 'agent';

/** Runs `fn` over `items` with at most `limit` in flight. */
async function pool<T>(items: readonly T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      checkInterrupted();
      const item = items[next++] as T;
      await fn(item);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
}

function serviceBody(inst: Instance, port: number) {
  return { ID: inst.id, Service: inst.service, Address: '127.0.0.1', Port: port, Meta: { version: '1.0.0' }, Tags: ['v1'] };
}

function checkBody(inst: Instance) {
  return { Node: inst.node, CheckID: `service:${inst.id}`, Name: 'bench', Status: 'passing', ServiceID: inst.id };
}

async function registerCatalog(consul: string, inst: Instance, port: number): Promise<void> {
  const r = await putJson(`${consul}/v1/catalog/register`, { Node: inst.node, Address: '127.0.0.1', Service: serviceBody(inst, port), Check: checkBody(inst) });
  if (r.status !== 200 || r.text.trim() !== 'true') throw new Error(`catalog register ${inst.id}: ${r.status} ${r.text}`);
}

async function registerAgent(consul: string, inst: Instance, port: number): Promise<void> {
  const svc = serviceBody(inst, port);
  const r = await putJson(`${consul}/v1/agent/service/register`, {
    ID: svc.ID,
    Name: svc.Service,
    Address: svc.Address,
    Port: svc.Port,
    Meta: svc.Meta,
    Tags: svc.Tags,
    Check: { CheckID: `service:${inst.id}`, Name: 'bench', TTL: '60m', Status: 'passing' },
  });
  if (r.status !== 200) throw new Error(`agent register ${inst.id}: ${r.status} ${r.text}`);
}

async function registerTxn(consul: string, batch: readonly Instance[], port: number): Promise<void> {
  const ops = batch.flatMap((inst) => [{ Service: { Verb: 'set', Node: inst.node, Service: serviceBody(inst, port) } }, { Check: { Verb: 'set', Check: checkBody(inst) } }]);
  const r = await putJson(`${consul}/v1/txn`, ops);
  if (r.status !== 200) throw new Error(`txn of ${batch.length} instances: ${r.status} ${r.text.slice(0, 500)}`);
}

async function registerWith(method: Method, consul: string, insts: readonly Instance[], port: number, concurrency: number): Promise<void> {
  if (method === 'catalog') return pool(insts, concurrency, (i) => registerCatalog(consul, i, port));
  if (method === 'agent') return pool(insts, concurrency, (i) => registerAgent(consul, i, port));
  const batches: Instance[][] = [];
  for (let i = 0; i < insts.length; i += TXN_INSTANCES) batches.push(insts.slice(i, i + TXN_INSTANCES));
  return pool(batches, Math.max(1, Math.ceil(concurrency / 4)), (b) => registerTxn(consul, b, port));
}

/** Waits until the health endpoint lists `count` passing instances of each service (the agent endpoint syncs asynchronously). */
async function waitVisible(consul: string, services: readonly string[], count: number, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (const s of services) {
    for (;;) {
      checkInterrupted();
      const { body } = await getJson(`${consul}/v1/health/service/${s}?passing=true`);
      if (Array.isArray(body) && body.length === count) break;
      if (Date.now() > deadline) throw new Error(`${s} has ${Array.isArray(body) ? body.length : '?'} passing instances in the catalog, expected ${count}`);
      await sleep(20);
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// Change to routing

interface ChangeTiming {
  kind: 'add' | 'remove';
  service: string;
  /** From sending the write to the sidecar routing by it. */
  fromWriteMs: number;
  /** From Consul acknowledging the write to the sidecar routing by it (can be < 0: the sidecar may see it first). */
  fromAckMs: number;
  /** From sending the write to our own blocking query (same service, ?stale like the sidecar's) returning. */
  consulWakeMs: number | null;
  polls: number;
}

async function consulIndex(consul: string, service: string): Promise<number> {
  const res = await fetch(`${consul}/v1/health/service/${service}?stale`, { signal: AbortSignal.timeout(5000) });
  await res.arrayBuffer();
  return Number(res.headers.get('x-consul-index') ?? 0);
}

/** Resolves with the time (performance.now()) at which a blocking query on `service` past `index` returned. */
function blockingQuery(consul: string, service: string, index: number, signal: AbortSignal): Promise<number | null> {
  return fetch(`${consul}/v1/health/service/${service}?stale&index=${index}&wait=30s`, { signal }).then(
    async (res) => {
      const t = performance.now();
      await res.arrayBuffer();
      return t;
    },
    () => null,
  );
}

async function timeChange(o: {
  kind: 'add' | 'remove';
  consul: string;
  proxy: Pool;
  service: string;
  instanceId: string;
  write: () => Promise<void>;
  timeoutMs: number;
}): Promise<ChangeTiming> {
  const index = await consulIndex(o.consul, o.service);
  const ac = new AbortController();
  const woke = blockingQuery(o.consul, o.service, index, ac.signal);
  // The blocking query must be parked in Consul before the write.
  await sleep(20);
  const routed = async (): Promise<boolean> => {
    const r = await o.proxy.request({ method: 'GET', path: `/${o.service}/`, headers: { 'x-tandem-instance': o.instanceId } });
    await r.body.dump();
    return r.statusCode === 200;
  };
  const want = o.kind === 'add';
  if ((await routed()) === want) throw new Error(`${o.instanceId}: already ${want ? 'routed' : 'gone'} before the change`);
  const t0 = performance.now();
  let tAck = Number.NaN;
  const writing = o.write().then(() => {
    tAck = performance.now();
  });
  let polls = 0;
  let t1: number;
  for (;;) {
    polls++;
    if ((await routed()) === want) {
      t1 = performance.now();
      break;
    }
    if (performance.now() - t0 > o.timeoutMs) {
      ac.abort();
      throw new Error(`${o.instanceId}: the sidecar did not ${want ? 'route to' : 'drop'} it within ${o.timeoutMs} ms`);
    }
  }
  await writing;
  const wokeAt = await Promise.race([woke, sleep(2000).then(() => null)]);
  ac.abort();
  return { kind: o.kind, service: o.service, fromWriteMs: t1 - t0, fromAckMs: t1 - tAck, consulWakeMs: wokeAt === null ? null : wokeAt - t0, polls };
}

const stats = (values: readonly number[]) => Distribution.of(values).summary();

// ---------------------------------------------------------------------------------------------------
// Main

async function main(): Promise<void> {
  const settings = readSettings();
  installSignalHandlers();
  await build('SCALE_SKIP_BUILD');
  const pinning = await setupPinning(settings.pin, 'SCALE_PIN');
  log(pinning.describe);

  await withTeardown(async (t) => {
    const agent = await t.consulAgent();
    const consul = agent.address;
    const dir = await t.tempDir('tandem-scale-');
    const [upPort, apiPort, proxyPort] = (await freePorts(3)) as [number, number, number];
    t.proc('the upstream', await startNodeUpstreams([upPort]), 5_000);
    checkInterrupted();

    // Nodes first (catalog register of a node alone), so transactions can add services to them.
    for (let i = 0; i < settings.instances; i++) {
      const r = await putJson(`${consul}/v1/catalog/register`, { Node: nodeName(i), Address: '127.0.0.1' });
      if (r.status !== 200) throw new Error(`register node ${nodeName(i)}: ${r.status} ${r.text}`);
    }

    // Measure the three ways on a sample each, then register the rest with the fastest.
    const methods: Method[] = ['catalog', 'txn', 'agent'];
    const sample = Math.min(settings.sample, Math.floor(settings.services / (methods.length + 1)));
    const rates: { method: Method; instances: number; ms: number; perSecond: number }[] = [];
    let nextService = 0;
    for (const method of methods) {
      if (sample === 0) break;
      const services = Array.from({ length: sample }, (_, k) => nextService + k);
      nextService += sample;
      const insts = instancesOf(services, settings.instances);
      const t0 = performance.now();
      await registerWith(method, consul, insts, upPort, settings.concurrency);
      await waitVisible(consul, services.map(serviceName), settings.instances, 120_000);
      const ms = performance.now() - t0;
      rates.push({ method, instances: insts.length, ms, perSecond: (insts.length / ms) * 1000 });
      log(`${method}: ${insts.length} instances in ${ms.toFixed(0)} ms (${((insts.length / ms) * 1000).toFixed(0)}/s, until visible in /v1/health)`);
    }
    const best = [...rates].sort((a, b) => b.perSecond - a.perSecond)[0]?.method ?? 'txn';
    const rest = Array.from({ length: settings.services - nextService }, (_, k) => nextService + k);
    const restInsts = instancesOf(rest, settings.instances);
    log(`registering the other ${restInsts.length} instances with ${best}`);
    const tRest = performance.now();
    await registerWith(best, consul, restInsts, upPort, settings.concurrency);
    if (rest.length > 0) await waitVisible(consul, [serviceName(rest[rest.length - 1] as number)], settings.instances, 300_000);
    const restMs = performance.now() - tRest;
    const totalInstances = settings.services * settings.instances;
    const { body: catalogServices } = await getJson(`${consul}/v1/catalog/services`, 30_000);
    const serviceCount = typeof catalogServices === 'object' && catalogServices !== null ? Object.keys(catalogServices).length : 0;
    log(`catalog: ${serviceCount} services (incl. consul), ${restInsts.length} instances in ${(restMs / 1000).toFixed(1)} s with ${best}`);
    checkInterrupted();

    // The sidecar, watching SCALE_WATCHED services spread over the catalog.
    const stride = Math.max(1, Math.floor(settings.services / settings.watched));
    const watched = Array.from({ length: settings.watched }, (_, k) => serviceName((k * stride) % settings.services));
    const tStart = performance.now();
    const set = [`upstreams=${JSON.stringify(watched)}`, `watch.maxServices=${Math.min(150, settings.watched + 10)}`, 'proxy.slowStartMs=0'];
    const args = benchArgs({ consul, stateDir: join(dir, 'state'), nodeName: 'scale', set });
    const sc = t.proc('tandem', await startTandem({ api: `127.0.0.1:${apiPort}`, proxy: `127.0.0.1:${proxyPort}`, args, pin: { pinning, core: 1 } }), 20_000);
    const rssAtStartMb = await rssMb([sc.pid]);
    const view = new Tandem({ url: sc.api });
    for (const s of watched) await waitInstances(view, s, (l) => l.length === settings.instances, Math.max(1, 60_000 - (performance.now() - tStart)));
    const readyMs = performance.now() - tStart;
    log(`sidecar: all ${watched.length} watched services complete ${readyMs.toFixed(0)} ms after start; idle ${settings.idleSeconds} s`);
    const cpu0 = await cpuSeconds([sc.pid]);
    for (let w = 0; w < settings.idleSeconds * 1000; w += 500) {
      checkInterrupted();
      await sleep(500);
    }
    const idleCpuPercent = settings.idleSeconds > 0 ? (((await cpuSeconds([sc.pid])) - cpu0) / settings.idleSeconds) * 100 : 0;
    const idleRss = await rssMb([sc.pid]);
    const consulPort = agent.httpPort;
    const watchConnections = await establishedTo(sc.pid, consulPort);
    const consulPid = await pidListeningOn(consulPort);
    const consulRss = consulPid === undefined ? null : await rssMb([consulPid]);
    log(`idle: RSS ${idleRss.toFixed(1)} MB, ${watchConnections} ESTABLISHED connections to Consul :${consulPort}, idle CPU ${idleCpuPercent.toFixed(2)} %; Consul RSS ${consulRss?.toFixed(1) ?? '?'} MB`);

    // Change → routing.
    const pp = new Pool(sc.proxy, { connections: 1, pipelining: 1 });
    t.defer('close the proxy client', () => pp.destroy());
    const timings: ChangeTiming[] = [];
    for (let k = 0; k < settings.changes; k++) {
      checkInterrupted();
      const service = watched[(k * 7) % watched.length] as string;
      const inst: Instance = { service, id: `${service}-extra-${k}`, node: nodeName(k % settings.instances) };
      timings.push(await timeChange({ kind: 'add', consul, proxy: pp, service, instanceId: inst.id, timeoutMs: 10_000, write: () => registerCatalog(consul, inst, upPort) }));
      timings.push(
        await timeChange({
          kind: 'remove',
          consul,
          proxy: pp,
          service,
          instanceId: inst.id,
          timeoutMs: 10_000,
          write: async () => {
            const r = await putJson(`${consul}/v1/catalog/deregister`, { Node: inst.node, ServiceID: inst.id });
            if (r.status !== 200) throw new Error(`deregister ${inst.id}: ${r.status} ${r.text}`);
          },
        }),
      );
      const last = timings.slice(-2);
      log(`change ${k + 1}/${settings.changes}: add ${last[0]?.fromWriteMs.toFixed(2)} ms, remove ${last[1]?.fromWriteMs.toFixed(2)} ms (Consul woke its own watcher after ${last[0]?.consulWakeMs?.toFixed(2) ?? '?'} / ${last[1]?.consulWakeMs?.toFixed(2) ?? '?'} ms)`);
    }
    const rssAfterChangesMb = await rssMb([sc.pid]);
    const peakRssMb = await rssMb([sc.pid], 'VmHWM');
    const all = stats(timings.map((t) => t.fromWriteMs));
    const adds = stats(timings.filter((t) => t.kind === 'add').map((t) => t.fromWriteMs));
    const removes = stats(timings.filter((t) => t.kind === 'remove').map((t) => t.fromWriteMs));
    const fromAck = stats(timings.map((t) => t.fromAckMs));
    const consulWake = stats(timings.map((t) => t.consulWakeMs).filter((v): v is number => v !== null));

    await writeResult('catalog-scale.json', {
      date: new Date().toISOString(),
      command: 'node --import tsx bench/catalog-scale.ts',
      settings,
      machine: machineInfo(),
      pinning: pinning.describe,
      catalog: { services: settings.services, instancesPerService: settings.instances, instances: totalInstances, catalogServices: serviceCount, sampleRates: rates, chosen: best, restInstances: restInsts.length, restMs },
      sidecar: { watched: watched.length, readyMs, rssAtStartMb, idleRssMb: idleRss, rssAfterChangesMb, peakRssMb, idleCpuPercent, watchConnections, consulRssMb: consulRss },
      changeToRoutingMs: { all, adds, removes, fromAck, consulWake, targetP99Ms: TARGET_P99_MS, met: all.p99 <= TARGET_P99_MS },
      timings,
    });

    const f = (v: number) => (Number.isFinite(v) ? v.toFixed(2) : '—');
    const lines = [
      `${pinning.describe}; ${machineInfo().cpus} CPUs, node ${process.version}`,
      '',
      `Catalog: ${settings.services} services × ${settings.instances} instances = ${totalInstances} instances on ${settings.instances} nodes`,
      ...rates.map((r) => `  ${r.method.padEnd(7)} ${r.instances} instances in ${r.ms.toFixed(0)} ms = ${r.perSecond.toFixed(0)}/s (until visible in /v1/health)`),
      `  the other ${restInsts.length} with ${best}: ${(restMs / 1000).toFixed(1)} s`,
      '',
      `Sidecar watching ${watched.length} services (${settings.instances} instances each):`,
      `  all complete ${readyMs.toFixed(0)} ms after start`,
      `  RSS ${rssAtStartMb.toFixed(1)} MB at start, ${idleRss.toFixed(1)} MB idle, ${rssAfterChangesMb.toFixed(1)} MB after the changes, peak ${peakRssMb.toFixed(1)} MB`,
      `  ${watchConnections} ESTABLISHED connections to Consul's HTTP port; idle CPU ${idleCpuPercent.toFixed(2)} % of a core`,
      `  Consul agent RSS: ${consulRss === null ? 'unknown' : `${consulRss.toFixed(1)} MB`}`,
      '',
      mdTable(
        ['change → routing (ms)', 'n', 'p50', 'p99', 'max'],
        ([['all, from the write sent', all], ['add', adds], ['remove', removes], ["all, from Consul's ack", fromAck], ['Consul waking our own watcher', consulWake]] as const).map(([label, d]) => [label, String(d.n), f(d.p50), f(d.p99), f(d.max)]),
      ),
      '',
      `Target: change → routing ≤ ${TARGET_P99_MS} ms p99: ${f(all.p99)} ms — ${all.p99 <= TARGET_P99_MS ? 'met' : 'NOT met'}`,
      'Written to bench/results/catalog-scale.json',
    ];
    process.stdout.write(`\n${lines.join('\n')}\n`);
  });
}

runMain(main);
