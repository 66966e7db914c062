// The tables of `npm run bench`: each scenario's rounds summed up as medians, with its ratios to nginx, the bare proxy and direct.
import type { BodySize } from '../test/support/fixed-bodies.ts';
import type { LoadResult } from '../test/support/load-generators.ts';
import { fmt, mdTable } from '../test/support/report.ts';

/** 'direct', a reference proxy's key ('nginx', 'bare', ...), 'tandem-rr' or 'tandem-sticky'. */
export type Target = string;

export interface Scenario {
  key: string;
  label: string;
  target: Target;
  size: BodySize;
  connections: number;
  url: string;
  headers: Record<string, string>;
}

export interface Measurement extends LoadResult {
  /** Proxy CPU (utime+stime of its processes, all threads) per request, in µs. */
  cpuUsPerRequest: number | null;
  /** Proxy VmRSS right after the run, in MB. */
  rssMb: number | null;
  /** Share of the proxy's core (when pinned) that other processes used during the run: noise from neighbours. */
  othersOnProxyCorePct: number | null;
  /** Through Tandem: time waited before this run for ejections left by the previous one to expire. */
  ejectionWaitMs: number;
}

export function median(values: readonly number[]): number {
  const s = [...values].sort((a, b) => a - b);
  if (s.length === 0) return Number.NaN;
  const mid = Math.floor(s.length / 2);
  return s.length % 2 === 1 ? (s[mid] ?? Number.NaN) : ((s[mid - 1] ?? 0) + (s[mid] ?? 0)) / 2;
}

export function medianOrNull(values: readonly (number | null)[]): number | null {
  const v = values.filter((x): x is number => x !== null && Number.isFinite(x));
  return v.length === 0 ? null : median(v);
}

export function summarize(scenarios: readonly Scenario[], runs: ReadonlyMap<string, Measurement[]>) {
  const keyOf = (t: Target, s: BodySize, c: number) => `${t}-${s}-c${c}`;
  const rpsOf = (key: string) => median((runs.get(key) ?? []).map((m) => m.rps));
  const p50Of = (key: string) => median((runs.get(key) ?? []).map((m) => m.p50Ms));
  return scenarios.map((s) => {
    const ms = runs.get(s.key) ?? [];
    const rps = median(ms.map((m) => m.rps));
    const p50 = median(ms.map((m) => m.p50Ms));
    /** req/s ÷ that target's req/s for the same body and concurrency. */
    const ratio = (t: Target) => (runs.has(keyOf(t, s.size, s.connections)) ? rps / rpsOf(keyOf(t, s.size, s.connections)) : null);
    return {
      key: s.key,
      scenario: s.label,
      target: s.target,
      size: s.size,
      connections: s.connections,
      rps,
      p50Ms: p50,
      p99Ms: median(ms.map((m) => m.p99Ms)),
      xNginx: ratio('nginx'),
      xBare: ratio('bare'),
      xDirect: ratio('direct') ?? Number.NaN,
      /** p50 − direct p50 (same body and concurrency). */
      addedP50Ms: s.target === 'direct' ? null : p50 - p50Of(keyOf('direct', s.size, s.connections)),
      cpuUsPerRequest: medianOrNull(ms.map((m) => m.cpuUsPerRequest)),
      rssMb: medianOrNull(ms.map((m) => m.rssMb)),
      othersOnProxyCorePct: medianOrNull(ms.map((m) => m.othersOnProxyCorePct)),
      requests: ms.reduce((n, m) => n + m.requests, 0),
      errors: ms.reduce((n, m) => n + m.errors, 0),
      non2xx: ms.reduce((n, m) => n + m.non2xx, 0),
      bytesPerResponse: median(ms.map((m) => m.bytesPerResponse)),
      rounds: ms,
    };
  });
}
export type Row = ReturnType<typeof summarize>[number];

export const int = (v: number): string => (Number.isFinite(v) ? Math.round(v).toLocaleString('en-US') : '—');

export function loadTable(rows: readonly Row[]): string {
  return mdTable(
    ['scenario', 'body', 'conns', 'req/s', '× nginx', '× bare', '× direct', 'p50 ms', 'p99 ms', '+p50 ms', 'proxy CPU µs/req', 'proxy RSS MB', 'others on proxy core', 'errors', 'non-2xx'],
    rows.map((r) => [
      r.scenario, r.size, String(r.connections), int(r.rps), fmt(r.xNginx, 2), fmt(r.xBare, 2), fmt(r.xDirect, 2), fmt(r.p50Ms, 3), fmt(r.p99Ms, 3), fmt(r.addedP50Ms, 3),
      fmt(r.cpuUsPerRequest, 1), fmt(r.rssMb, 1), r.othersOnProxyCorePct === null ? '—' : `${r.othersOnProxyCorePct.toFixed(0)} %`, String(r.errors), String(r.non2xx),
    ]),
  );
}
