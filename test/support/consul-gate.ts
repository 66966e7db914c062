// Test helper: an HTTP gate in front of a Consul agent that can hold chosen requests or fail them all.
import { createServer, request, type IncomingMessage, type Server, type ServerResponse } from 'node:http';

export type GateMode = 'pass' | 'fail';

/**
 * Forwards every request to `target`, except: requests matching `hold` are kept open without an
 * answer (until the caller gives up, which the gate sees), and in `fail` mode every request gets a
 * 500 like Consul's during an election. Lets a test put "Consul has not answered yet" or "a Consul
 * hiccup" exactly where it wants.
 */
export class ConsulGate {
  mode: GateMode = 'pass';
  hold: ((req: IncomingMessage) => boolean) | undefined;
  /** Requests held right now; a client that aborts leaves this set. */
  readonly held = new Set<IncomingMessage>();
  /** How many requests were ever held. */
  heldTotal = 0;
  /** Paths answered 500 (fail mode), and paths forwarded, in order. */
  readonly failed: string[] = [];
  readonly passed: string[] = [];
  #server: Server;
  #target: URL;

  constructor(target: string) {
    this.#target = new URL(target);
    this.#server = createServer((req, res) => this.#handle(req, res));
  }

  async start(): Promise<string> {
    await new Promise<void>((r) => this.#server.listen(0, '127.0.0.1', r));
    return `http://127.0.0.1:${(this.#server.address() as { port: number }).port}`;
  }

  async close(): Promise<void> {
    this.#server.closeAllConnections();
    await new Promise<void>((r) => this.#server.close(() => r()));
  }

  #handle(req: IncomingMessage, res: ServerResponse): void {
    if (this.mode === 'fail') {
      this.failed.push(req.url ?? '');
      req.resume();
      res.writeHead(500, { 'content-type': 'text/plain' }).end('rpc error making call: No cluster leader (session hiccup)');
      return;
    }
    if (this.hold?.(req)) {
      this.held.add(req);
      this.heldTotal++;
      res.on('close', () => this.held.delete(req));
      return;
    }
    this.passed.push(req.url ?? '');
    const up = request({ host: this.#target.hostname, port: this.#target.port, method: req.method, path: req.url, headers: req.headers }, (r) => {
      res.writeHead(r.statusCode ?? 502, r.headers);
      r.pipe(res);
    });
    up.on('error', () => res.destroy());
    res.on('close', () => up.destroy());
    req.pipe(up);
  }
}
