// The demo service `tandem dev` runs: a greeter at a given version, registered through the SDK (runs from the package, no checkout needed).
import { createServer } from 'node:http';
import { Tandem } from '../sdk/tandem.ts';

const version = process.argv[2] ?? '1.0.0';
const api = process.argv[3];
const tandem = new Tandem(api ? { url: api } : {});

const server = createServer((req, res) => {
  res.setHeader('content-type', 'application/json');
  res.end(`${JSON.stringify({ greeting: `hello from greeter ${version}`, version, pid: process.pid, path: req.url, sticky: req.headers['x-stickyid'] ?? null })}\n`);
});

// Listens on a free port, registers greeter@<version> with the SDK's TTL check, deregisters on SIGTERM/SIGINT.
const svc = await tandem.register(`greeter@${version}`, server);
process.stdout.write(`greeter ${version} listening on 127.0.0.1:${svc.port}, registered as ${svc.id}\n`);
