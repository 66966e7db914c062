// The floor of Tandem's own engine: its listener, parser, keep-alive pools and body passthrough, and nothing else
// (no routing, catalog, failover, metrics) — round-robin over fixed upstreams. Tandem minus this is what its features cost.
//
// Plain JS over the built engine (dist/, `npm run build`): tsx would compile the parser's imported tables into getter
// calls that cost more than the parsing (see src/proxy/http1/request-head.ts); the sidecar under test runs from dist too.
//
// Usage: node bench/engine-floor.mjs <listen port> <upstream port> [<upstream port> ...]   (started by bench/proxies.ts)
// Serves /<anything>/<rest> → upstream /<rest>. Prints "ready" once listening; exits on SIGTERM/SIGINT or when stdin closes.
import { exchange } from '../dist/proxy/engine/exchange.js';
import { Http1Server } from '../dist/proxy/engine/http1-server.js';
import { UpstreamPool } from '../dist/proxy/engine/upstream-pool.js';
import { upstreamRequestLines } from '../dist/proxy/headers.js';
import { DEFAULT_HEAD_LIMITS } from '../dist/proxy/http1/head-types.js';
import { readyUntilParentGoes } from '../test/support/parent-watch.mjs';

const [listen, ...ups] = process.argv.slice(2).map(Number);
if (listen === undefined || ups.length === 0 || [listen, ...ups].some((p) => !Number.isInteger(p) || p < 1 || p > 65535)) {
  process.stderr.write('usage: engine-floor.mjs <listen port> <upstream port> [<upstream port> ...]\n');
  process.exit(2);
}

const pools = ups.map((port) => new UpstreamPool({ host: '127.0.0.1', port, max: 64, connectTimeoutMs: 2000, idleMs: 4000 }));
const limits = { ...DEFAULT_HEAD_LIMITS, maxHeaderBytes: 65_536, maxHeaders: 1000 };
let next = 0;

const server = new Http1Server({
  limits: DEFAULT_HEAD_LIMITS,
  headersTimeoutMs: 10_000,
  keepAliveMs: 65_000,
  handle(req) {
    const url = req.url;
    const slash = url.indexOf('/', 1);
    const path = slash === -1 ? '/' : url.slice(slash);
    const pool = pools[next++ % pools.length];
    const h = req.head;
    const body = h.framing === 'none' ? { kind: 'none' } : { kind: 'stream', from: req };
    const framing = h.framing === 'chunked' ? 'transfer-encoding: chunked\r\n' : '';
    void exchange(pool, req, {
      method: req.method,
      head: `${req.method} ${path} HTTP/1.1\r\nhost: 127.0.0.1:${pool.o.port}\r\n${upstreamRequestLines(h.headers, h.connection, req.remoteAddress)}${framing}\r\n`,
      body,
      headersTimeoutMs: 30_000,
      bodyTimeoutMs: 0,
      retryStatuses: undefined,
      extraLines: '',
      replaySafe: false,
      limits,
    }).then((r) => {
      if (r.kind === 'failed' && !req.headersSent) req.respond(502, 'Bad Gateway', 'content-type: text/plain\r\n', 'bad gateway');
    });
  },
  refuse(conn) {
    conn.socket.destroy();
  },
});

await server.listen(listen, '127.0.0.1');
readyUntilParentGoes(() => {
  void server.close(0);
  for (const p of pools) void p.destroy();
});
