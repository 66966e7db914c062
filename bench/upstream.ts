// Benchmark upstreams: plain node:http servers on 127.0.0.1 answering fixed bodies (run as a child of the benchmarks).
import { createServer, type Server } from 'node:http';
import { BODY_BYTES, BODY_PATHS, benchBody, type BodySize } from './bodies.ts';

// Usage: node --import tsx bench/upstream.ts <port> [<port> ...]
// GET /1k answers 1,024 bytes, /64k 65,536 bytes, any other path the ~100-byte body.
// Prints "ready" once every server listens; exits when stdin closes (the parent went away) or on SIGTERM/SIGINT.

async function listen(port: number, name: string): Promise<Server> {
  const payloads = new Map<string, Buffer>();
  for (const [size, path] of Object.entries(BODY_PATHS) as [BodySize, string][]) payloads.set(path, Buffer.from(benchBody(name, BODY_BYTES[size])));
  const small = payloads.get('/') as Buffer;
  const server = createServer((req, res) => {
    // Drain any request body, then answer the same bytes every time.
    req.resume();
    const payload = payloads.get(req.url ?? '/') ?? small;
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': payload.length });
    res.end(payload);
  });
  server.keepAliveTimeout = 65_000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', () => {
      server.removeListener('error', reject);
      resolve();
    });
  });
  return server;
}

const ports = process.argv.slice(2).map((p) => Number(p));
if (ports.length === 0 || ports.some((p) => !Number.isInteger(p) || p < 1 || p > 65535)) {
  process.stderr.write(`usage: upstream.ts <port> [<port> ...] (got ${process.argv.slice(2).join(' ')})\n`);
  process.exit(2);
}

const servers = await Promise.all(ports.map((port, i) => listen(port, String.fromCharCode(97 + i))));

let stopping = false;
function stop(): void {
  if (stopping) return;
  stopping = true;
  for (const s of servers) {
    s.closeAllConnections();
    s.close();
  }
  // Nothing should hold the loop open, but never linger.
  setTimeout(() => process.exit(0), 1000).unref();
}

process.on('SIGTERM', stop);
process.on('SIGINT', stop);
process.stdin.on('end', stop);
process.stdin.on('error', stop);
process.stdin.resume();
process.stdout.write('ready\n');
