// Benchmark upstreams in a child process: plain node:http servers on 127.0.0.1 answering fixed bodies (started by fixed-upstreams.ts).
//   node --import tsx test/support/fixed-upstream-child.ts <port> [<port> ...]
// GET /1k answers 1,024 bytes, /64k 65,536 bytes, any other path the ~100-byte body; one instance name (a, b, ...) per port.
import { createServer } from 'node:http';
import { serveUntilParentGoes } from './child-server.ts';
import { BODY_BYTES, BODY_PATHS, benchBody, type BodySize } from './fixed-bodies.ts';

await serveUntilParentGoes(process.argv.slice(2).map(Number), (i) => {
  const payloads = new Map<string, Buffer>();
  for (const [size, path] of Object.entries(BODY_PATHS) as [BodySize, string][]) payloads.set(path, Buffer.from(benchBody(String.fromCharCode(97 + i), BODY_BYTES[size])));
  const small = payloads.get('/') as Buffer;
  return createServer((req, res) => {
    // Drain any request body, then answer the same bytes every time.
    req.resume();
    const payload = payloads.get(req.url ?? '/') ?? small;
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': payload.length });
    res.end(payload);
  });
});
