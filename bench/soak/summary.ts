// The soak's report: samples of the sidecar process (RSS, fds), the RSS trend, and the summary printed and written to bench/results/soak.json.
import { fdCount, statusKb } from '../../test/support/proc-stats.ts';
import { REQUEST_KINDS, type Bucket, type ChurnEvent, type FailureRecord, type RequestKind } from './traffic.ts';

export interface Settings {
  seconds: number;
  concurrency: number;
  churnSeconds: number;
  warmupSeconds: number;
}

export interface ProcSample {
  /** Seconds since the traffic started. */
  t: number;
  rssKb: number;
  hwmKb: number;
  fds: number;
}

export interface SeriesPoint extends ProcSample {
  /** Over the interval since the previous point. */
  requests: number;
  failures: number;
  rps: number;
  p50Ms: number;
  p99Ms: number;
}

/** The sidecar's RSS, peak RSS and open fds now; throws when it is gone. */
export async function sampleProc(pid: number, t0: number): Promise<ProcSample> {
  const [rssKb, hwmKb, fds] = [await statusKb([pid]), await statusKb([pid], 'VmHWM'), await fdCount(pid)];
  if (Number.isNaN(rssKb)) throw new Error(`/proc/${pid}/status is gone`);
  return { t: Math.round((Date.now() - t0) / 100) / 10, rssKb, hwmKb, fds: fds.all };
}

export function round(n: number, digits = 2): number {
  const f = 10 ** digits;
  return Math.round(n * f) / f;
}

/** Least-squares slope of RSS over time, in kB per minute. */
export function slopeKbPerMin(points: readonly ProcSample[]): number {
  const pts = points.filter((p) => Number.isFinite(p.rssKb));
  if (pts.length < 2) return Number.NaN;
  const mx = pts.reduce((a, p) => a + p.t, 0) / pts.length;
  const my = pts.reduce((a, p) => a + p.rssKb, 0) / pts.length;
  let num = 0;
  let den = 0;
  for (const p of pts) {
    num += (p.t - mx) * (p.rssKb - my);
    den += (p.t - mx) ** 2;
  }
  return den === 0 ? Number.NaN : (num / den) * 60;
}

// ---------------------------------------------------------------------------------------------------
// Summary

export interface Summary {
  date: string;
  command: string;
  settings: Settings & { stickyKeys: number; killDownMs: number; deregDownMs: number; checkIntervalMs: number };
  machine: { cpus: number; model: string; loadavg: number[]; node: string; platform: string };
  passed: boolean;
  error?: string;
  durationSeconds: number;
  requests: number;
  rps: number;
  ok: number;
  latencyMs: { p50: number; p99: number; max: number };
  failures: {
    total: number;
    /** Every request of the mix is retry-safe (GET, or POST with Idempotency-Key). */
    idempotent: number;
    wrongAnswers: number;
    byRequestKind: Record<RequestKind, Bucket>;
    byCause: Record<string, number>;
    inFlightAtKill: Bucket;
    inChurnWindows: Bucket;
    outsideChurn: Bucket;
    details: FailureRecord[];
    detailsTruncated: boolean;
  };
  sticky: { keys: number; movedResponses: number; movedOutsideChurn: number; reassigned: number; reassignedOutsideChurn: number };
  perInstance: Record<string, number>;
  rss: {
    startKb: number;
    middleKb: number;
    endKb: number;
    hwmKb: number;
    startFds: number;
    endFds: number;
    slopeKbPerMinAfterWarmup: number;
    series: SeriesPoint[];
  };
  churn: { kills: number; deregistrations: number; skipped: number; withErrors: number; events: Omit<ChurnEvent, 'start' | 'end'>[] };
  sidecarLog: { warnLines: number; errorLines: number; tail: string[] };
}

export function fmtKb(kb: number): string {
  return Number.isFinite(kb) ? `${(kb / 1024).toFixed(1)} MiB` : 'n/a';
}

export function printSummary(s: Summary): void {
  const f = s.failures;
  const out: string[] = [];
  out.push('');
  out.push(`Tandem soak: ${s.durationSeconds} s, ${s.requests} requests, ${s.rps} req/s (${s.settings.concurrency} loops), latency p50 ${s.latencyMs.p50} ms, p99 ${s.latencyMs.p99} ms, max ${s.latencyMs.max} ms`);
  out.push(`failures: ${f.total} (of retry-safe requests — GET, or POST with Idempotency-Key, i.e. all of them: ${f.idempotent}; 2xx from the wrong service/version/path: ${f.wrongAnswers})`);
  for (const k of REQUEST_KINDS) out.push(`  ${k.padEnd(16)} ${String(f.byRequestKind[k].requests).padStart(9)} requests, ${f.byRequestKind[k].failures} failed`);
  out.push(`  in flight at a kill -9: ${f.inFlightAtKill.requests} requests, ${f.inFlightAtKill.failures} failed`);
  out.push(`  in churn windows:       ${f.inChurnWindows.requests} requests, ${f.inChurnWindows.failures} failed`);
  out.push(`  outside churn:          ${f.outsideChurn.requests} requests, ${f.outsideChurn.failures} failed`);
  for (const [cause, n] of Object.entries(f.byCause)) out.push(`  cause ${cause}: ${n}`);
  for (const d of f.details.slice(0, 50)) {
    out.push(`  - at ${d.at} s ${d.method} ${d.path}: ${d.status ?? d.code ?? ''}${d.tandemError ? ` ${d.tandemError}` : ''}${d.churn !== undefined ? ` [churn #${d.churn}]` : ''}${d.inFlightAtKill ? ' [in flight at kill]' : ''} ${d.message.slice(0, 160)}`);
  }
  if (f.details.length > 50) out.push(`  … ${f.details.length - 50} more in bench/results/soak.json`);
  out.push(`sticky: ${s.sticky.keys} keys, ${s.sticky.movedResponses} 'moved' responses (${s.sticky.movedOutsideChurn} outside churn windows), ${s.sticky.reassigned} owner changes (${s.sticky.reassignedOutsideChurn} with no churn since the key's previous request)`);
  out.push(`served per instance: ${Object.entries(s.perInstance).map(([id, n]) => `${id} ${n}`).join(', ')}`);
  out.push(`sidecar RSS: start ${fmtKb(s.rss.startKb)}, middle ${fmtKb(s.rss.middleKb)}, end ${fmtKb(s.rss.endKb)} (peak ${fmtKb(s.rss.hwmKb)}; trend ${round(s.rss.slopeKbPerMinAfterWarmup, 1)} kB/min after warm-up); fds ${s.rss.startFds} → ${s.rss.endFds}`);
  out.push(`  series (t s: RSS, fds, req/s, p99 ms): ${s.rss.series.map((p) => `${p.t}: ${fmtKb(p.rssKb)}, ${p.fds}, ${p.rps}, ${p.p99Ms}`).join(' | ')}`);
  out.push(`churn: ${s.churn.kills} kill -9 + restart, ${s.churn.deregistrations} DELETE + register again, ${s.churn.skipped} skipped, ${s.churn.withErrors} with errors`);
  for (const e of s.churn.events) {
    const steps =
      e.kind === 'kill'
        ? `ejected +${e.ejectedAfterMs ?? '-'} ms, unhealthy +${e.unhealthyAfterMs ?? '-'} ms, restarted +${e.restartedAfterMs ?? '-'} ms`
        : `DELETE ${e.deleteStatus ?? '-'} in ${e.deleteMs ?? '-'} ms, gone +${e.goneAfterMs ?? '-'} ms, registered again +${e.reregisteredAfterMs ?? '-'} ms`;
    out.push(`  #${e.n} ${String(e.at).padStart(6)} s ${e.kind.padEnd(10)} ${e.instance}: ${steps}, routable +${e.recoveredAfterMs ?? '-'} ms; ${e.requests} requests in window, ${e.failures} failed${e.kind === 'kill' ? `, ${e.inFlightAtKill} in flight at the kill (${e.inFlightAtKillFailures} failed)` : ''}${e.error ? ` ERROR ${e.error}` : ''}`);
  }
  out.push(`sidecar log (warn+): ${s.sidecarLog.warnLines} warn, ${s.sidecarLog.errorLines} error lines`);
  out.push(`${s.passed ? 'PASSED' : 'FAILED'}${s.error ? `: ${s.error}` : ''}; written to bench/results/soak.json`);
  process.stdout.write(`${out.join('\n')}\n`);
}
