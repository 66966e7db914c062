// Load generators of the benchmarks: wrk (preferred: C, one thread, not the bottleneck), autocannon (fallback, in
// this process) and a paced open-loop client for latency at a fixed rate.
import autocannon from 'autocannon';
import { Agent, request } from 'node:http';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { log, startProc, stopProc, whileRunning, type Pinning } from './common.ts';

export interface LoadResult {
  seconds: number;
  requests: number;
  rps: number;
  p50Ms: number;
  p99Ms: number;
  maxMs: number;
  /** Socket errors (connect, read, write) and timeouts. */
  errors: number;
  non2xx: number;
  /** Average bytes read per response (headers + body): shows that full responses came back. */
  bytesPerResponse: number;
}

export interface LoadSpec {
  url: string;
  connections: number;
  seconds: number;
  headers: Record<string, string>;
}

export interface LoadGenerator {
  name: string;
  run(spec: LoadSpec): Promise<LoadResult>;
}

export function percentile(sorted: Float64Array, p: number): number {
  if (sorted.length === 0) return Number.NaN;
  const idx = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[idx] ?? Number.NaN;
}

// ---------------------------------------------------------------------------------------------------
// wrk

const WRK_DONE = `-- Written by the Tandem benchmark: one JSON line with the figures, latencies in microseconds.
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,"p50_us":%d,"p99_us":%d,"p999_us":%d,"max_us":%d}\\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9), latency.max))
end
`;

interface WrkJson {
  requests: number;
  duration_us: number;
  bytes: number;
  connect: number;
  read: number;
  write: number;
  status: number;
  timeout: number;
  p50_us: number;
  p99_us: number;
  p999_us: number;
  max_us: number;
}

function isWrkJson(v: unknown): v is WrkJson {
  if (typeof v !== 'object' || v === null) return false;
  const o = v as Record<string, unknown>;
  return ['requests', 'duration_us', 'bytes', 'connect', 'read', 'write', 'status', 'timeout', 'p50_us', 'p99_us', 'p999_us', 'max_us'].every((k) => typeof o[k] === 'number');
}

/** One wrk run (one thread, on core 0 when pinning); killed if it overruns its duration by 30 s. */
async function runWrk(path: string, script: string, pinning: Pinning, spec: LoadSpec): Promise<WrkJson> {
  const args = ['-t1', `-c${spec.connections}`, `-d${spec.seconds}s`, '--timeout', '10s', '-s', script];
  for (const [k, v] of Object.entries(spec.headers)) args.push('-H', `${k}: ${v}`);
  args.push(spec.url);
  const [cmd, argv] = pinning.wrap(0, path, args);
  const p = startProc(cmd, argv, { group: true });
  const stop = () => void stopProc(p, 2000, 'SIGINT');
  const guard = setTimeout(() => {
    log(`wrk overran ${spec.seconds} s by 30 s: killing it`);
    void stopProc(p, 1000, 'SIGKILL');
  }, (spec.seconds + 30) * 1000);
  await whileRunning(stop, p.exited);
  clearTimeout(guard);
  const out = p.output();
  const line = out.split('\n').find((l) => l.startsWith('BENCH_JSON '));
  let parsed: unknown;
  try {
    parsed = line ? JSON.parse(line.slice('BENCH_JSON '.length)) : undefined;
  } catch {
    parsed = undefined;
  }
  if (!isWrkJson(parsed)) throw new Error(`wrk gave no result (exit ${String(p.child.exitCode ?? p.child.signalCode)}): ${out.slice(-2000)}`);
  return parsed;
}

/** wrk as the load generator: as many requests as the connections can carry. */
export async function wrkGenerator(path: string, dir: string, pinning: Pinning): Promise<LoadGenerator> {
  const script = join(dir, 'report.lua');
  await writeFile(script, WRK_DONE);
  return {
    name: 'wrk (1 thread)',
    async run(spec) {
      const w = await runWrk(path, script, pinning, spec);
      const seconds = w.duration_us / 1e6;
      return {
        seconds,
        requests: w.requests,
        rps: w.requests / seconds,
        p50Ms: w.p50_us / 1000,
        p99Ms: w.p99_us / 1000,
        maxMs: w.max_us / 1000,
        errors: w.connect + w.read + w.write + w.timeout,
        non2xx: w.status,
        bytesPerResponse: w.requests > 0 ? Math.round(w.bytes / w.requests) : 0,
      };
    },
  };
}

/**
 * Fixed rate with wrk (wrk2 is not in Debian): `connections` connections, each waiting `connections × 1000 / rate` ms
 * (wrk's `delay()` hook, whole milliseconds) after each response before its next request. Latency is wrk's own
 * (send → response, µs). Closed loop per connection: a slow answer delays that connection's next request, so a stall
 * is under-counted a little compared with an open-loop client (the Node client below is open loop).
 */
export async function wrkPaced(path: string, dir: string, pinning: Pinning, url: string, rate: number, seconds: number, connections = 10): Promise<PacedResult> {
  const delayMs = Math.max(1, Math.round((connections * 1000) / rate));
  const script = join(dir, `paced-${delayMs}.lua`);
  await writeFile(script, `${WRK_DONE}\ndelay = function()\n  return ${delayMs}\nend\n`);
  const w = await runWrk(path, script, pinning, { url, connections, seconds, headers: {} });
  const secs = w.duration_us / 1e6;
  return {
    client: `wrk, ${connections} connections × 1 request per ${delayMs} ms`,
    rate: w.requests / secs,
    seconds: secs,
    sent: w.requests,
    ok: w.requests - w.status,
    errors: w.connect + w.read + w.write + w.timeout + w.status,
    p50Ms: w.p50_us / 1000,
    p99Ms: w.p99_us / 1000,
    p999Ms: w.p999_us / 1000,
    maxMs: w.max_us / 1000,
    scheduledP99Ms: Number.NaN,
    maxSendLagMs: Number.NaN,
  };
}

// ---------------------------------------------------------------------------------------------------
// autocannon (fallback): programmatic, in this process

export function autocannonGenerator(): LoadGenerator {
  return {
    name: 'autocannon 8 (in the bench process)',
    run(spec) {
      const latencies: number[] = [];
      let inst: autocannon.Instance | undefined;
      let guard: NodeJS.Timeout | undefined;
      const work = new Promise<LoadResult>((resolve, reject) => {
        // Latencies from the per-response events (sub-millisecond; autocannon's histogram has whole ms only).
        inst = autocannon({ url: spec.url, connections: spec.connections, duration: spec.seconds, timeout: 10, headers: spec.headers }, (err, result) => {
          clearTimeout(guard);
          if (err) return reject(err);
          const sorted = Float64Array.from(latencies).sort();
          const requests = result.requests.total ?? latencies.length;
          const elapsed = result.duration > 0 ? result.duration : spec.seconds;
          resolve({
            seconds: elapsed,
            requests,
            rps: requests / elapsed,
            p50Ms: percentile(sorted, 50),
            p99Ms: percentile(sorted, 99),
            maxMs: sorted.length > 0 ? (sorted[sorted.length - 1] ?? Number.NaN) : Number.NaN,
            errors: result.errors + result.timeouts,
            non2xx: result.non2xx,
            bytesPerResponse: requests > 0 ? Math.round((result.throughput.total ?? 0) / requests) : 0,
          });
        });
        inst.on('response', (_client: unknown, _status: number, _bytes: number, ms: number) => {
          latencies.push(ms);
        });
        guard = setTimeout(() => inst?.stop(), (spec.seconds + 30) * 1000);
      });
      return whileRunning(() => inst?.stop(), work);
    },
  };
}

// ---------------------------------------------------------------------------------------------------
// Paced open-loop client: latency at a fixed request rate

export interface PacedResult {
  client: string;
  /** Achieved requests per second. */
  rate: number;
  seconds: number;
  sent: number;
  ok: number;
  errors: number;
  /** Latency from the moment each request was written, in ms. */
  p50Ms: number;
  p99Ms: number;
  p999Ms: number;
  maxMs: number;
  /** Latency from each request's scheduled time (counts the client's own lateness too), in ms. */
  scheduledP99Ms: number;
  /** How late the client sent, at worst (its own timer jitter). */
  maxSendLagMs: number;
}

/**
 * Sends `rate` requests per second for `seconds`, each at its scheduled time whatever the earlier ones do
 * (open loop, so slow answers cannot slow the load down: no coordinated omission). Keep-alive connections,
 * more opened as needed. Bounded: it stops waiting 10 s after the last send.
 */
export async function paced(url: string, rate: number, seconds: number, headers: Record<string, string>): Promise<PacedResult> {
  const agent = new Agent({ keepAlive: true, maxSockets: 256 });
  const target = new URL(url);
  const total = Math.round(rate * seconds);
  const interval = 1000 / rate;
  const fromSend: number[] = [];
  const fromSchedule: number[] = [];
  let ok = 0;
  let errors = 0;
  let sent = 0;
  let maxLag = 0;
  let stopped = false;
  let finished = 0;
  let resolveAll!: () => void;
  const allDone = new Promise<void>((r) => (resolveAll = r));
  const settle = () => {
    finished++;
    if (finished === total || (stopped && finished === sent)) resolveAll();
  };
  const fire = (scheduled: number) => {
    const start = performance.now();
    maxLag = Math.max(maxLag, start - scheduled);
    sent++;
    const req = request({ agent, host: target.hostname, port: target.port, path: target.pathname + target.search, method: 'GET', headers, timeout: 10_000 }, (res) => {
      res.on('data', () => undefined);
      res.on('end', () => {
        const end = performance.now();
        if (res.statusCode !== undefined && res.statusCode >= 200 && res.statusCode < 300) {
          ok++;
          fromSend.push(end - start);
          fromSchedule.push(end - scheduled);
        } else errors++;
        settle();
      });
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', () => {
      errors++;
      settle();
    });
    req.end();
  };
  const t0 = performance.now() + 5;
  let i = 0;
  const tick = () => {
    if (stopped) return;
    const now = performance.now();
    while (i < total && t0 + i * interval <= now) {
      fire(t0 + i * interval);
      i++;
    }
    if (i < total) {
      const wait = t0 + i * interval - performance.now();
      // setTimeout has ~1 ms granularity: sleep while far, spin through setImmediate when close.
      if (wait > 1.5) setTimeout(tick, wait - 1);
      else setImmediate(tick);
    }
  };
  tick();
  const stop = () => {
    stopped = true;
    if (finished === sent) resolveAll();
  };
  let guard: NodeJS.Timeout | undefined;
  const bounded = Promise.race([allDone, new Promise<void>((r) => (guard = setTimeout(r, (seconds + 10) * 1000)))]);
  await whileRunning(stop, bounded);
  clearTimeout(guard);
  stopped = true;
  agent.destroy();
  const a = Float64Array.from(fromSend).sort();
  const b = Float64Array.from(fromSchedule).sort();
  return {
    client: 'node open loop (this process)',
    rate: ok / seconds,
    seconds,
    sent,
    ok,
    errors: errors + (sent - finished),
    p50Ms: percentile(a, 50),
    p99Ms: percentile(a, 99),
    p999Ms: percentile(a, 99.9),
    maxMs: a.length > 0 ? (a[a.length - 1] ?? Number.NaN) : Number.NaN,
    scheduledP99Ms: percentile(b, 99),
    maxSendLagMs: maxLag,
  };
}

