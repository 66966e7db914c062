// Raw bytes to an HTTP server over TCP, for tests of what a parser accepts: everything the server writes back until it closes or goes quiet.
import { connect, type Socket } from 'node:net';

export interface RawAnswer {
  /** The bytes the server wrote, as latin1. */
  out: string;
  /** The server ended the connection (rather than us stopping to wait). */
  closedByServer: boolean;
  ms: number;
}

/** Writes `text` to `url`'s host and port; `then` may write more (it gets the socket and what came back so far). */
export function rawExchange(url: string, text: string | Buffer, waitMs = 1500, then?: (sock: Socket, out: () => string) => void): Promise<RawAnswer> {
  const { port, hostname } = new URL(url);
  return new Promise((resolve, reject) => {
    const started = Date.now();
    const sock = connect(Number(port), hostname);
    let out = '';
    let closedByServer = false;
    const timer = setTimeout(() => sock.destroy(), waitMs);
    sock.on('data', (d) => (out += d.toString('latin1')));
    sock.on('end', () => (closedByServer = true));
    sock.on('close', () => {
      clearTimeout(timer);
      resolve({ out, closedByServer, ms: Date.now() - started });
    });
    sock.on('error', reject);
    sock.write(text);
    then?.(sock, () => out);
  });
}
