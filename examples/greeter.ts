// Example app: a greeter that joins the cluster through the local sidecar. Run two versions side by side:
//   node --import tsx examples/greeter.ts 1.0.0   and   node --import tsx examples/greeter.ts 2.0.0
// An optional second argument is the sidecar's control API (else TANDEM_API, else http://127.0.0.1:7701).
import { createServer } from 'node:http';
import { Tandem } from '../src/sdk/index.ts';

const version = process.argv[2] ?? '1.0.0';
const api = process.argv[3];
const tandem = new Tandem(api ? { url: api } : {});

const server = createServer((req, res) => {
  res.setHeader('content-type', 'application/json');
  res.end(`${JSON.stringify({ greeting: `hello from greeter ${version}`, version, pid: process.pid, path: req.url, sticky: req.headers['x-stickyid'] ?? null })}\n`);
});

// Listens on a free port, registers greeter@<version> with a TTL check the SDK keeps passing,
// and deregisters gracefully on Ctrl-C / SIGTERM.
const svc = await tandem.register(`greeter@${version}`, server);
console.log(`greeter ${version} listening on 127.0.0.1:${svc.port}, registered as ${svc.id}`);
