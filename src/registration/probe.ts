// Probes a service the way its Consul check will, so a registration starts with the status Consul would find.
// Consul runs a new HTTP/TCP check's first probe at a random point inside its interval and keeps the
// registered status until then: registering with the status this probe found makes a service routable
// at once when it is ready (and never routable when it is not), instead of seconds later or on faith.
import { request as httpRequest, type IncomingMessage } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { connect } from 'node:net';
import type { ConsulCheckDefinition } from '../consul/consul-client.ts';

export type ProbeStatus = 'passing' | 'warning' | 'critical';

export interface ProbeResult {
  status: ProbeStatus;
  /** One short line for logs (Consul's own check output replaces it at the check's first run). */
  output: string;
}

/** Go's http.Client, which Consul's HTTP check uses, gives up after ten redirects. */
const MAX_REDIRECTS = 10;

/**
 * Runs the check once, bounded by `timeoutMs` in all (a hanging port cannot stall a registration).
 * HTTP: GET, redirects followed, then 2xx passing, 429 warning, anything else (or no answer)
 * critical — Consul 1.8.7's rules, checked against a real agent (a 304 or a 302 without Location is
 * critical; a 301 to a 200 passes). TCP: a connection accepted is passing. TTL: critical — only the
 * app's heartbeat can pass it.
 */
export async function probeCheck(check: ConsulCheckDefinition, timeoutMs: number): Promise<ProbeResult> {
  if (check.HTTP !== undefined) return probeHttp(check.HTTP, timeoutMs);
  if (check.TCP !== undefined) return probeTcp(check.TCP, timeoutMs);
  return { status: 'critical', output: 'waiting for the first heartbeat' };
}

function probeTcp(hostPort: string, timeoutMs: number): Promise<ProbeResult> {
  const m = /^\[?([^\]]+)\]?:(\d+)$/.exec(hostPort);
  if (!m) return Promise.resolve({ status: 'critical', output: `not host:port: ${hostPort}` });
  const [, host, port] = m as unknown as [string, string, string];
  return new Promise((resolve) => {
    const socket = connect({ host, port: Number(port) });
    const done = (r: ProbeResult) => {
      clearTimeout(timer);
      socket.destroy();
      resolve(r);
    };
    const timer = setTimeout(() => done({ status: 'critical', output: `TCP connect ${hostPort}: no answer within ${timeoutMs} ms` }), timeoutMs);
    socket.once('connect', () => done({ status: 'passing', output: `TCP connect ${hostPort}: Success` }));
    socket.once('error', (err: NodeJS.ErrnoException) => done({ status: 'critical', output: `TCP connect ${hostPort}: ${err.code ?? err.message}` }));
  });
}

async function probeHttp(first: string, timeoutMs: number): Promise<ProbeResult> {
  const signal = AbortSignal.timeout(timeoutMs);
  let url = first;
  try {
    for (let hop = 0; ; hop++) {
      const res = await get(url, signal);
      const status = res.statusCode ?? 0;
      // Only the status matters; a body that never ends must not hold the probe's socket open.
      res.destroy();
      const location = res.headers.location;
      if ([301, 302, 303, 307, 308].includes(status) && location) {
        if (hop >= MAX_REDIRECTS) return { status: 'critical', output: `HTTP GET ${first}: stopped after ${MAX_REDIRECTS} redirects` };
        url = new URL(location, url).toString();
        continue;
      }
      const verdict: ProbeStatus = status >= 200 && status <= 299 ? 'passing' : status === 429 ? 'warning' : 'critical';
      return { status: verdict, output: `HTTP GET ${url}: ${status}` };
    }
  } catch (err) {
    const why = signal.aborted ? `no answer within ${timeoutMs} ms` : ((err as NodeJS.ErrnoException).code ?? (err as Error).message);
    return { status: 'critical', output: `HTTP GET ${url}: ${why}` };
  }
}

function get(url: string, signal: AbortSignal): Promise<IncomingMessage> {
  return new Promise((resolve, reject) => {
    const request = url.startsWith('https:') ? httpsRequest : httpRequest;
    // The headers Consul's check sends, so an app answers the probe as it will answer the check; no
    // keep-alive: a probe must not leave a connection open in the app.
    const req = request(url, { method: 'GET', signal, agent: false, headers: { 'user-agent': 'Consul Health Check', accept: 'text/plain, text/*, */*', connection: 'close' } }, resolve);
    req.once('error', reject);
    req.end();
  });
}
