// Test helper: a real upstream HTTP server with the routes proxy tests need (echo, big bodies, SSE, WebSocket, status, hang).
import { createHash } from 'node:crypto';
import { createServer, type IncomingMessage, type Server } from 'node:http';
import { WebSocketServer } from 'ws';

export interface Upstream {
  name: string;
  version: string;
  port: number;
  server: Server;
  /** Requests seen, by method and path. */
  seen: { method: string; url: string; headers: IncomingMessage['headers'] }[];
  /** Resolves when a request to /hang is closed by the proxy. */
  hangClosed: Promise<void>;
  /** Status code /status answers with (default 200). */
  status: number;
  close(): Promise<void>;
}

export async function startUpstream(name: string, version: string, port = 0): Promise<Upstream> {
  let onHangClosed!: () => void;
  const up: Upstream = {
    name,
    version,
    port: 0,
    server: undefined as unknown as Server,
    seen: [],
    hangClosed: new Promise<void>((r) => (onHangClosed = r)),
    status: 200,
    close: async () => undefined,
  };
  const server = createServer((req, res) => {
    const url = req.url ?? '/';
    if (url === '/health') return void res.end('ok');
    up.seen.push({ method: req.method ?? 'GET', url, headers: req.headers });
    res.setHeader('x-upstream', `${name}@${version}:${up.port}`);
    if (url.startsWith('/echo')) {
      // Streams the request body straight back.
      res.writeHead(200, { 'content-type': 'application/octet-stream' });
      req.pipe(res);
      return;
    }
    if (url.startsWith('/hash')) {
      const h = createHash('sha256');
      let n = 0;
      req.on('data', (c: Buffer) => {
        h.update(c);
        n += c.length;
      });
      req.on('end', () => res.end(JSON.stringify({ sha256: h.digest('hex'), bytes: n })));
      return;
    }
    if (url.startsWith('/big')) {
      const size = Number(new URL(url, 'http://x').searchParams.get('bytes') ?? 10 * 1024 * 1024);
      res.writeHead(200, { 'content-type': 'application/octet-stream' });
      let sent = 0;
      const chunk = Buffer.alloc(64 * 1024);
      for (let i = 0; i < chunk.length; i++) chunk[i] = (i * 31 + 7) & 0xff;
      const pump = () => {
        while (sent < size) {
          const part = chunk.subarray(0, Math.min(chunk.length, size - sent));
          sent += part.length;
          if (!res.write(part)) return void res.once('drain', pump);
        }
        res.end();
      };
      pump();
      return;
    }
    if (url.startsWith('/sse')) {
      res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
      let i = 0;
      const t = setInterval(() => {
        res.write(`id: ${i}\ndata: event-${i}\n\n`);
        if (++i === 3) {
          clearInterval(t);
          res.end();
        }
      }, 200);
      req.on('close', () => clearInterval(t));
      return;
    }
    if (url.startsWith('/stall')) return; // never answers: for upstream timeouts
    if (url.startsWith('/hang')) {
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.write('started\n');
      req.socket.on('close', () => onHangClosed());
      return;
    }
    if (url.startsWith('/status')) {
      res.statusCode = up.status;
      return void res.end(JSON.stringify({ name, version, port: up.port, status: up.status }));
    }
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify({ name, version, port: up.port, url, method: req.method }));
  });
  const wss = new WebSocketServer({ server });
  wss.on('connection', (ws) => ws.on('message', (data, isBinary) => ws.send(isBinary ? data : `echo:${String(data)}`)));
  await new Promise<void>((r) => server.listen(port, '127.0.0.1', r));
  up.port = (server.address() as { port: number }).port;
  up.server = server;
  up.close = () =>
    new Promise<void>((r) => {
      for (const c of wss.clients) c.terminate();
      wss.close();
      server.closeAllConnections();
      server.close(() => r());
    });
  return up;
}
