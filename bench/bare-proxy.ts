// The floor for a Node proxy: node:http + undici `Pool.dispatch` with a handler writing straight to the response
// (the best bare path in ../shared/notes/library-facts.md), round-robin over fixed upstreams. No routing, metrics,
// retries or Consul: what Tandem's data path costs on top of it is what Tandem itself adds.
//
// Usage: node --import tsx bench/bare-proxy.ts <listen port> <upstream port> [<upstream port> ...]   (started by bench/proxies.ts)
// Serves /<anything>/<rest> → upstream /<rest>. Prints "ready" once listening; exits on SIGTERM/SIGINT or when stdin closes.
import { createServer, type IncomingHttpHeaders } from 'node:http';
import { Pool, type Dispatcher } from 'undici';
import { serveUntilParentGoes } from '../test/support/child-server.ts';

const [listen, ...ups] = process.argv.slice(2).map(Number);
const HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'te', 'trailer', 'transfer-encoding', 'upgrade', 'host']);
const pools = ups.map((p) => new Pool(`http://127.0.0.1:${p}`, { connections: 64, keepAliveTimeout: 4000 }));
let next = 0;

const server = createServer((req, res) => {
  const url = req.url ?? '/';
  const slash = url.indexOf('/', 1);
  const path = slash === -1 ? '/' : url.slice(slash);
  const raw = req.rawHeaders;
  const headers: string[] = [];
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i] as string;
    if (!HOP.has(name.toLowerCase())) headers.push(name, raw[i + 1] as string);
  }
  const pool = pools[next++ % pools.length] as Pool;
  let controller: Dispatcher.DispatchController | undefined;
  const handler: Dispatcher.DispatchHandler = {
    onRequestStart(c) {
      controller = c;
    },
    onResponseStart(_c, status, h) {
      const out = h as IncomingHttpHeaders;
      for (const k of Object.keys(out)) if (HOP.has(k)) delete out[k];
      res.writeHead(status, out);
    },
    onResponseData(c, chunk) {
      if (!res.write(chunk)) {
        c.pause();
        res.once('drain', () => c.resume());
      }
    },
    onResponseEnd() {
      res.end();
    },
    onResponseError(_c, err) {
      if (res.headersSent) res.destroy(err);
      else {
        res.writeHead(502, { 'content-type': 'text/plain' });
        res.end('bad gateway');
      }
    },
  };
  pool.dispatch({ method: (req.method ?? 'GET') as Dispatcher.HttpMethod, path, headers, body: req.method === 'GET' || req.method === 'HEAD' ? null : req }, handler);
  // The client went away first: cancel the upstream request.
  res.once('close', () => {
    if (!res.writableFinished) controller?.abort(new Error('client closed the connection'));
  });
});

if (ups.length === 0) {
  process.stderr.write('usage: bare-proxy.ts <listen port> <upstream port> [<upstream port> ...]\n');
  process.exit(2);
}
await serveUntilParentGoes([listen ?? Number.NaN], () => server, () => {
  for (const p of pools) void p.destroy().catch(() => undefined);
});
