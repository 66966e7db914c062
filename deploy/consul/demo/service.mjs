// A demo service for the three-host demo and bench/harness.ts: node:http, no dependencies, registered through the local Tandem sidecar.
//
//   node service.mjs NAME VERSION LISTEN_HOST:PORT [SIDECAR_API] [CHECK_INTERVAL_MS]
//   node service.mjs greeter 1.0.0 0.0.0.0:8080 http://127.0.0.1:7701
//
// Answers every path with JSON {service, version, host, port, path} (host = the listen host, or this
// machine's name on 0.0.0.0), /health with `ok`. Registers NAME@VERSION with an HTTP check on /health,
// retrying until the sidecar answers, and prints `registered <id>` on stdout. SIGTERM/SIGINT deregister
// it (the sidecar drains first), then it exits. SIGKILL leaves the registration to go critical.
import { createServer } from 'node:http';
import { hostname } from 'node:os';

const [name = 'greeter', version = '1.0.0', listen = '0.0.0.0:8080', api = 'http://127.0.0.1:7701', interval = '2000'] = process.argv.slice(2);
const at = listen.lastIndexOf(':');
const host = listen.slice(0, at);
const port = Number(listen.slice(at + 1));
const label = host === '0.0.0.0' || host === '::' ? hostname() : host;

const server = createServer((req, res) => {
  if (req.url === '/health') return void res.end('ok');
  res.setHeader('content-type', 'application/json');
  res.setHeader('x-demo-host', label);
  res.end(`${JSON.stringify({ service: name, version, host: label, port, path: req.url })}\n`);
});
await new Promise((resolve) => server.listen(port, host, resolve));

const spec = { name, version, port, check: { kind: 'http', path: '/health', intervalMs: Number(interval) } };
let id;
for (let delay = 200; id === undefined; delay = Math.min(delay * 2, 5000)) {
  try {
    const res = await fetch(`${api}/v1/services`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(spec) });
    const body = await res.json();
    if (res.status === 201 || res.status === 202) id = body.id;
    else throw new Error(`${res.status} ${body.code ?? ''} ${body.message ?? ''}`);
  } catch (err) {
    process.stderr.write(`demo ${name}@${version}: sidecar at ${api} not ready (${err.message}); retrying\n`);
    await new Promise((r) => setTimeout(r, delay));
  }
}
process.stdout.write(`registered ${id} at ${label}:${port}\n`);

let stopping = false;
const stop = async () => {
  if (stopping) return;
  stopping = true;
  await fetch(`${api}/v1/services/${encodeURIComponent(id)}`, { method: 'DELETE', signal: AbortSignal.timeout(30_000) }).catch(() => undefined);
  server.closeAllConnections();
  server.close(() => process.exit(0));
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
