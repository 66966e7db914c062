// The fuzz upstream, in a child process: answers every request with what it received, as JSON (service, method, url, header names, body size).
//   node --import tsx bench/fuzz/echo-upstream.ts <port>
import { createServer } from 'node:http';
import { serveUntilParentGoes } from '../../test/support/child-server.ts';
import { SERVICE } from './grammar.ts';

await serveUntilParentGoes(process.argv.slice(2).map(Number), () =>
  // Big enough for the fuzzer's huge headers: the proxy, not this server, is what refuses them.
  createServer({ maxHeaderSize: 64 * 1024 }, (req, res) => {
    let bodyBytes = 0;
    req.on('data', (c: Buffer) => (bodyBytes += c.length));
    req.on('error', () => res.destroy());
    req.on('end', () => {
      const body = JSON.stringify({ service: SERVICE, method: req.method, url: req.url, headers: Object.keys(req.headers), bodyBytes });
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
      res.end(body);
    });
  }),
);
