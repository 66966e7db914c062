// The soak's traffic: a mix of retry-safe requests through the proxy, each answer checked, counted by kind and by churn window.
import { performance } from 'node:perf_hooks';
import type { Pool } from 'undici';
import { Distribution } from '../../test/support/latency.ts';
import { errMessage, log } from '../../test/support/run-control.ts';
import type { ServiceName } from './instances.ts';

export const STICKY_KEYS = 1000;
/** Client-side timeouts per request (the proxy's own upstream timeout is 30 s, its whole-request budget 60 s). */
const REQUEST_TIMEOUT_MS = 20_000;
/** Requests that end this long after a churn event's recovery still count as "in its window". */
const WINDOW_GRACE_MS = 2_000;
const MAX_FAILURE_DETAILS = 1000;

export type RequestKind = 'rr-get' | 'ranged-get' | 'sticky-get' | 'post-idempotent';
export const REQUEST_KINDS: readonly RequestKind[] = ['rr-get', 'ranged-get', 'sticky-get', 'post-idempotent'];
/** Shares of the mix, out of 20. */
const MIX: readonly [RequestKind, number][] = [
  ['rr-get', 7],
  ['ranged-get', 4],
  ['sticky-get', 6],
  ['post-idempotent', 3],
];

function pickKind(): RequestKind {
  let r = Math.random() * 20;
  for (const [kind, weight] of MIX) {
    r -= weight;
    if (r < 0) return kind;
  }
  return 'rr-get';
}

export type ChurnKind = 'kill' | 'deregister';

export interface ChurnEvent {
  n: number;
  kind: ChurnKind;
  instance: string;
  port: number;
  /** Seconds since the traffic started. */
  at: number;
  start: number;
  /** When the instance was routable again (+ WINDOW_GRACE_MS ends its window); undefined while open. */
  end: number | undefined;
  /** kill: the sidecar's view showed it ejected / not healthy this long after the SIGKILL. */
  ejectedAfterMs?: number;
  unhealthyAfterMs?: number;
  restartedAfterMs?: number;
  /** deregister: DELETE answered (status, after ms), gone from the sidecar's view, registered again. */
  deleteStatus?: number;
  deleteMs?: number;
  goneAfterMs?: number;
  reregisteredAfterMs?: number;
  /** Healthy and not ejected in the sidecar's view again. */
  recoveredAfterMs?: number;
  /** Requests that overlapped the event's window, failures among them, and (kill) those in flight at the SIGKILL. */
  requests: number;
  failures: number;
  inFlightAtKill: number;
  inFlightAtKillFailures: number;
  error?: string;
}

export interface FailureRecord {
  /** Seconds since the traffic started, when the request ended. */
  at: number;
  kind: RequestKind;
  method: string;
  path: string;
  status?: number;
  code?: string;
  tandemError?: string;
  instance?: string;
  latencyMs: number;
  message: string;
  /** The churn event whose window the request overlapped, if any. */
  churn?: number;
  inFlightAtKill: boolean;
}

export interface Bucket {
  requests: number;
  failures: number;
}

export interface IntervalCounters {
  requests: number;
  failures: number;
  latencies: Distribution;
}

export class Stats {
  readonly t0: number;
  requests = 0;
  ok = 0;
  failures = 0;
  wrongAnswers = 0;
  byKind = new Map<RequestKind, Bucket>(REQUEST_KINDS.map((k) => [k, { requests: 0, failures: 0 }]));
  /** `<status> <x-tandem-error>` or the network error code → count. */
  byCause = new Map<string, number>();
  inChurnWindow: Bucket = { requests: 0, failures: 0 };
  inFlightAtKill: Bucket = { requests: 0, failures: 0 };
  outsideChurn: Bucket = { requests: 0, failures: 0 };
  details: FailureRecord[] = [];
  perInstance = new Map<string, number>();
  /** Sticky key → the instance that served it last and when (ms). */
  stickyOwner = new Map<string, { instance: string; at: number }>();
  stickyMoved = 0;
  stickyMovedOutsideChurn = 0;
  stickyReassigned = 0;
  /** Owner changes with no churn event between the key's previous request and this one. */
  stickyReassignedOutsideChurn = 0;
  latencies = new Distribution();
  interval: IntervalCounters = { requests: 0, failures: 0, latencies: new Distribution() };
  events: ChurnEvent[] = [];

  constructor(t0: number) {
    this.t0 = t0;
  }

  /** The churn event whose window [start, end + grace] overlaps [start, end] (events never overlap each other). */
  attribute(start: number, end: number): ChurnEvent | undefined {
    for (let i = this.events.length - 1; i >= 0; i--) {
      const ev = this.events[i];
      if (!ev) continue;
      if (ev.end !== undefined && ev.end + WINDOW_GRACE_MS < start) return undefined;
      if (ev.start <= end) return ev;
    }
    return undefined;
  }

  latency(ms: number): void {
    this.interval.latencies.record(ms);
    this.latencies.record(ms);
  }

  /** The counters since the last call, for one point of the time series. */
  takeInterval(): IntervalCounters {
    const iv = this.interval;
    this.interval = { requests: 0, failures: 0, latencies: new Distribution() };
    return iv;
  }
}

interface Expected {
  service: ServiceName;
  /** The upstream must be at this major version (ranged requests). */
  major?: number;
  /** What the upstream must see as its URL. */
  url: string;
}

/** Checks that a 2xx came from the right kind of instance for the right path; a problem description otherwise. */
function validate(text: string, instance: string | undefined, exp: Expected): string | undefined {
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch {
    return `2xx body is not JSON: ${text.slice(0, 120)}`;
  }
  if (!isRecord(body)) return `2xx body is not an object: ${text.slice(0, 120)}`;
  const name = body['name'];
  if (typeof name !== 'string' || !name.startsWith(`${exp.service}@`)) return `answered by ${String(name)}, expected ${exp.service}`;
  if (exp.major !== undefined) {
    const major = Number(name.slice(exp.service.length + 1).split('.')[0]);
    if (major !== exp.major) return `answered by ${name}, outside the requested range ^${exp.major}`;
  }
  if (body['url'] !== exp.url) return `upstream saw url ${String(body['url'])}, expected ${exp.url}`;
  if (instance === undefined) return 'no x-tandem-instance header';
  if (!instance.startsWith(`${exp.service}-`) || !instance.endsWith(`-${String(body['port'])}`)) return `x-tandem-instance ${instance} does not match the answering app (${name} on port ${String(body['port'])})`;
  return undefined;
}

function headerValue(v: string | string[] | undefined): string | undefined {
  return Array.isArray(v) ? v[0] : v;
}

export interface Traffic {
  pool: Pool;
  stats: Stats;
  stop: boolean;
}

async function oneRequest(t: Traffic, loop: number, seq: number): Promise<void> {
  const kind = pickKind();
  const tag = `${loop}-${seq}`;
  let method: 'GET' | 'POST' = 'GET';
  let path: string;
  let exp: Expected;
  let body: string | undefined;
  let stickyKey: string | undefined;
  const headers: Record<string, string> = {};
  switch (kind) {
    case 'rr-get':
      path = `/soak-a/rr/${tag}?q=${seq}`;
      exp = { service: 'soak-a', url: `/rr/${tag}?q=${seq}` };
      break;
    case 'ranged-get':
      // Raw and URL-encoded ranges alternate.
      path = seq % 2 === 0 ? `/soak-a@^1/ranged/${tag}` : `/soak-a@%5E1/ranged/${tag}`;
      exp = { service: 'soak-a', major: 1, url: `/ranged/${tag}` };
      break;
    case 'sticky-get': {
      stickyKey = `key-${Math.floor(Math.random() * STICKY_KEYS)}`;
      headers['x-stickyid'] = stickyKey;
      path = `/soak-b/sticky/${stickyKey}`;
      exp = { service: 'soak-b', url: `/sticky/${stickyKey}` };
      break;
    }
    case 'post-idempotent': {
      const service: ServiceName = seq % 2 === 0 ? 'soak-a' : 'soak-b';
      method = 'POST';
      path = `/${service}/orders/${tag}`;
      exp = { service, url: `/orders/${tag}` };
      body = JSON.stringify({ order: tag, items: Math.floor(Math.random() * 10), note: 'x'.repeat(Math.floor(Math.random() * 512)) });
      headers['content-type'] = 'application/json';
      headers['idempotency-key'] = `soak-${tag}`;
      break;
    }
  }

  const start = Date.now();
  const p0 = performance.now();
  let status: number | undefined;
  let code: string | undefined;
  let tandemError: string | undefined;
  let instance: string | undefined;
  let sticky: string | undefined;
  let problem: string | undefined;
  let wrong = false;
  try {
    const res = await t.pool.request({
      path,
      method,
      headers,
      headersTimeout: REQUEST_TIMEOUT_MS,
      bodyTimeout: REQUEST_TIMEOUT_MS,
      ...(body === undefined ? {} : { body }),
    });
    const text = await res.body.text();
    status = res.statusCode;
    instance = headerValue(res.headers['x-tandem-instance']);
    tandemError = headerValue(res.headers['x-tandem-error']);
    sticky = headerValue(res.headers['x-tandem-sticky']);
    if (status < 200 || status >= 300) problem = text.slice(0, 300);
    else {
      problem = validate(text, instance, exp);
      wrong = problem !== undefined;
    }
  } catch (err) {
    code = errCode(err) ?? 'ERROR';
    // The run was interrupted and the client pool destroyed under this request: not the proxy's doing.
    if (t.stop && code === 'UND_ERR_DESTROYED') return;
    problem = errMessage(err);
  }
  const end = Date.now();
  const latencyMs = performance.now() - p0;

  const s = t.stats;
  const failed = problem !== undefined;
  s.requests++;
  s.interval.requests++;
  s.latency(latencyMs);
  const k = s.byKind.get(kind);
  if (k) {
    k.requests++;
    if (failed) k.failures++;
  }
  const ev = s.attribute(start, end);
  const atKill = ev !== undefined && ev.kind === 'kill' && start < ev.start && end >= ev.start;
  const bucket = ev ? s.inChurnWindow : s.outsideChurn;
  bucket.requests++;
  if (ev) ev.requests++;
  if (atKill && ev) {
    ev.inFlightAtKill++;
    s.inFlightAtKill.requests++;
  }
  if (instance !== undefined && !failed) s.perInstance.set(instance, (s.perInstance.get(instance) ?? 0) + 1);
  if (stickyKey !== undefined && instance !== undefined && !failed) {
    if (sticky === 'moved') {
      s.stickyMoved++;
      if (!ev) s.stickyMovedOutsideChurn++;
    }
    const before = s.stickyOwner.get(stickyKey);
    if (before !== undefined && before.instance !== instance) {
      s.stickyReassigned++;
      if (!s.attribute(before.at, end)) {
        s.stickyReassignedOutsideChurn++;
        log(`sticky ${stickyKey} moved from ${before.instance} to ${instance} with no churn since its previous request`);
      }
    }
    s.stickyOwner.set(stickyKey, { instance, at: end });
  }
  if (!failed) {
    s.ok++;
    return;
  }
  s.failures++;
  s.interval.failures++;
  if (wrong) s.wrongAnswers++;
  bucket.failures++;
  if (ev) ev.failures++;
  if (atKill && ev) {
    ev.inFlightAtKillFailures++;
    s.inFlightAtKill.failures++;
  }
  const cause = wrong ? 'wrong answer' : status !== undefined ? `${status}${tandemError ? ` ${tandemError}` : ''}` : (code ?? 'ERROR');
  s.byCause.set(cause, (s.byCause.get(cause) ?? 0) + 1);
  const rec: FailureRecord = {
    at: Math.round((end - s.t0) / 100) / 10,
    kind,
    method,
    path,
    latencyMs: Math.round(latencyMs * 10) / 10,
    message: problem ?? '',
    inFlightAtKill: atKill,
    ...(status !== undefined ? { status } : {}),
    ...(code !== undefined ? { code } : {}),
    ...(tandemError !== undefined ? { tandemError } : {}),
    ...(instance !== undefined ? { instance } : {}),
    ...(ev ? { churn: ev.n } : {}),
  };
  if (s.details.length < MAX_FAILURE_DETAILS) s.details.push(rec);
  if (s.failures <= 200) log(`FAILED ${method} ${path}: ${cause}${instance ? ` (instance ${instance})` : ''}${ev ? ` [churn #${ev.n} ${ev.kind}]` : ''}: ${rec.message.slice(0, 200)}`);
}

/**
 * Before the load: every soak-a instance answers round-robin, ranged requests stay on 1.x and a sticky key stays
 * on one soak-b instance. Fails fast (5 s per request) when the proxy does not answer at all.
 */
export async function sanityCheck(proxy: string): Promise<void> {
  const get = async (path: string, headers: Record<string, string> = {}): Promise<{ name: string; instance: string }> => {
    let res: Response;
    try {
      res = await fetch(`${proxy}${path}`, { headers, signal: AbortSignal.timeout(5_000) });
    } catch (err) {
      throw new Error(`sanity check: GET ${proxy}${path} got no answer (${errCode(err) ?? errMessage(err)}); is dist/ a complete build?`, { cause: err });
    }
    const text = await res.text();
    if (res.status !== 200) throw new Error(`sanity check: GET ${path} answered ${res.status}: ${text.slice(0, 300)}`);
    const body: unknown = JSON.parse(text);
    return { name: isRecord(body) ? String(body['name']) : '?', instance: res.headers.get('x-tandem-instance') ?? '?' };
  };
  const rr = new Set<string>();
  for (let i = 0; i < 12; i++) rr.add((await get(`/soak-a/sanity/${i}`)).instance);
  if (rr.size !== 3) throw new Error(`sanity check: round-robin reached ${rr.size} soak-a instance(s) in 12 requests: ${[...rr].join(', ')}`);
  for (let i = 0; i < 6; i++) {
    const r = await get(`/soak-a@^1/sanity/${i}`);
    if (!r.name.startsWith('soak-a@1.')) throw new Error(`sanity check: /soak-a@^1 answered by ${r.name}`);
  }
  const sticky = new Set<string>();
  for (let i = 0; i < 6; i++) sticky.add((await get('/soak-b/sanity', { 'x-stickyid': 'sanity-key' })).instance);
  if (sticky.size !== 1) throw new Error(`sanity check: one sticky key reached ${sticky.size} soak-b instances: ${[...sticky].join(', ')}`);
}

export async function trafficLoop(t: Traffic, loop: number): Promise<void> {
  let seq = 0;
  while (!t.stop) await oneRequest(t, loop, seq++);
}

function errCode(err: unknown): string | undefined {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' ? code : undefined;
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}
