// Load generators of the benches: wrk (preferred: C, one thread, not the bottleneck) and autocannon (fallback, in this process), each as many requests as the connections carry or at a fixed rate.
import autocannon from 'autocannon';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Pinning } from './host-tools.ts';
import { Distribution } from './latency.ts';
import { startProc, stopProc } from './processes.ts';
import { log, whileRunning } from './run-control.ts';

export interface LoadResult {
  seconds: number;
  requests: number;
  rps: number;
  p50Ms: number;
  p99Ms: number;
  p999Ms: number;
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
  /** Requests per second over all connections; unset: as many as they carry. */
  rate?: number;
}

export interface LoadGenerator {
  name: string;
  run(spec: LoadSpec): Promise<LoadResult>;
}

const WRK_DONE = `-- Written by the Tandem benchmark: one JSON line with the figures, latencies in microseconds.
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,"p50_us":%d,"p99_us":%d,"p999_us":%d,"max_us":%d}\\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9), latency.max))
end
`;

const WRK_FIELDS = ['requests', 'duration_us', 'bytes', 'connect', 'read', 'write', 'status', 'timeout', 'p50_us', 'p99_us', 'p999_us', 'max_us'] as const;
type WrkJson = Record<(typeof WRK_FIELDS)[number], number>;

/**
 * wrk as the load generator (one thread, on core 0 when pinning), killed if it overruns its duration by 30 s.
 * A fixed `rate` uses wrk's `delay()` hook (wrk2 is not in Debian): each connection waits `connections × 1000 / rate`
 * ms (whole ms) after each response, so a slow answer delays that connection's next request (closed loop).
 */
export async function wrkGenerator(path: string, dir: string, pinning: Pinning): Promise<LoadGenerator> {
  const script = join(dir, 'report.lua');
  await writeFile(script, WRK_DONE);
  return {
    name: 'wrk (1 thread)',
    async run(spec) {
      let lua = script;
      if (spec.rate !== undefined) {
        const delayMs = Math.max(1, Math.round((spec.connections * 1000) / spec.rate));
        lua = join(dir, `paced-${delayMs}.lua`);
        await writeFile(lua, `${WRK_DONE}\ndelay = function()\n  return ${delayMs}\nend\n`);
      }
      const w = await runWrk(path, lua, pinning, spec);
      const seconds = w.duration_us / 1e6;
      return {
        seconds,
        requests: w.requests,
        rps: w.requests / seconds,
        p50Ms: w.p50_us / 1000,
        p99Ms: w.p99_us / 1000,
        p999Ms: w.p999_us / 1000,
        maxMs: w.max_us / 1000,
        errors: w.connect + w.read + w.write + w.timeout,
        non2xx: w.status,
        bytesPerResponse: w.requests > 0 ? Math.round(w.bytes / w.requests) : 0,
      };
    },
  };
}

async function runWrk(path: string, script: string, pinning: Pinning, spec: LoadSpec): Promise<WrkJson> {
  const args = ['-t1', `-c${spec.connections}`, `-d${spec.seconds}s`, '--timeout', '10s', '-s', script];
  for (const [k, v] of Object.entries(spec.headers)) args.push('-H', `${k}: ${v}`);
  args.push(spec.url);
  const [cmd, argv] = pinning.wrap(0, path, args);
  const p = startProc(cmd, argv, { group: true });
  const guard = setTimeout(() => {
    log(`wrk overran ${spec.seconds} s by 30 s: killing it`);
    void stopProc(p, 1000, 'SIGKILL');
  }, (spec.seconds + 30) * 1000);
  await whileRunning(() => void stopProc(p, 2000, 'SIGINT'), p.exited);
  clearTimeout(guard);
  const out = p.output();
  const line = out.split('\n').find((l) => l.startsWith('BENCH_JSON '));
  let parsed: unknown;
  try {
    parsed = line ? JSON.parse(line.slice('BENCH_JSON '.length)) : undefined;
  } catch {
    parsed = undefined;
  }
  const ok = typeof parsed === 'object' && parsed !== null && WRK_FIELDS.every((k) => typeof (parsed as Record<string, unknown>)[k] === 'number');
  if (!ok) throw new Error(`wrk gave no result (exit ${String(p.child.exitCode ?? p.child.signalCode)}): ${out.slice(-2000)}`);
  return parsed as WrkJson;
}

/** autocannon in this process (single-threaded Node: it may itself be the bottleneck); a fixed `rate` is its `overallRate`. */
export function autocannonGenerator(): LoadGenerator {
  return {
    name: 'autocannon 8 (in the bench process)',
    run(spec) {
      // Latencies from the per-response events: sub-millisecond (autocannon's own histogram keeps whole ms).
      const latencies = new Distribution();
      let inst: autocannon.Instance | undefined;
      let guard: NodeJS.Timeout | undefined;
      const opts: autocannon.Options = { url: spec.url, connections: spec.connections, duration: spec.seconds, timeout: 10, headers: spec.headers };
      if (spec.rate !== undefined) opts.overallRate = spec.rate;
      const work = new Promise<LoadResult>((resolve, reject) => {
        inst = autocannon(opts, (err: unknown, result: autocannon.Result) => {
          clearTimeout(guard);
          if (err) return reject(err instanceof Error ? err : new Error(String(err)));
          const requests = result.requests.total;
          const elapsed = result.duration > 0 ? result.duration : spec.seconds;
          resolve({
            seconds: elapsed,
            requests,
            rps: requests / elapsed,
            p50Ms: latencies.percentile(50),
            p99Ms: latencies.percentile(99),
            p999Ms: latencies.percentile(99.9),
            maxMs: latencies.max,
            errors: result.errors + result.timeouts,
            non2xx: result.non2xx,
            bytesPerResponse: requests > 0 ? Math.round(result.throughput.total / requests) : 0,
          });
        });
        inst.on('response', (_client, _status, _bytes, ms) => latencies.record(ms));
        guard = setTimeout(() => inst?.stop(), (spec.seconds + 30) * 1000);
      });
      return whileRunning(() => inst?.stop(), work);
    },
  };
}
