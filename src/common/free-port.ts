// Finds loopback ports nobody listens on, for dev agents and tests that run side by side.
import { createServer } from 'node:net';
import { createSocket } from 'node:dgram';

async function tcpFree(host: string, port: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen({ host, port, exclusive: true }, () => {
      const addr = srv.address();
      srv.close(() => resolve(typeof addr === 'object' && addr ? addr.port : 0));
    });
  });
}

async function udpFree(host: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const sock = createSocket('udp4');
    sock.once('error', () => resolve(false));
    sock.bind(port, host, () => sock.close(() => resolve(true)));
  });
}

/** `count` distinct ports free on `host` for TCP (and UDP too when `udp`, as Serf needs both). */
export async function freePorts(count: number, opts: { host?: string; udp?: boolean } = {}): Promise<number[]> {
  const host = opts.host ?? '127.0.0.1';
  const out = new Set<number>();
  for (let attempts = 0; out.size < count && attempts < count * 50; attempts++) {
    const port = await tcpFree(host, 0);
    if (out.has(port)) continue;
    if (opts.udp && !(await udpFree(host, port))) continue;
    out.add(port);
  }
  if (out.size < count) throw new Error(`could not find ${count} free ports on ${host}`);
  return [...out];
}
