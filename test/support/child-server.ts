// Servers run as child processes (bench upstreams, the bare proxy, the fuzz echo upstream): the child's side of the lifecycle, and the parent's.
import type { Server } from 'node:http';
import type { Pinning } from './host-tools.ts';
import { readyUntilParentGoes } from './parent-watch.mjs';
import { startReadyChild, type Proc } from './processes.ts';

/**
 * In the child: listens on each of `ports` on 127.0.0.1 with the server `make(i)` gives, prints "ready", and
 * stops on SIGTERM/SIGINT or when stdin closes (the parent went away). `onStop` frees anything else it holds.
 */
export async function serveUntilParentGoes(ports: readonly number[], make: (i: number) => Server, onStop: () => void = () => undefined): Promise<void> {
  if (ports.length === 0 || ports.some((p) => !Number.isInteger(p) || p < 1 || p > 65535)) {
    process.stderr.write(`usage: ${process.argv[1] ?? 'server'} <port> [<port> ...] (got ${process.argv.slice(2).join(' ')})\n`);
    process.exit(2);
  }
  const servers = ports.map((_, i) => make(i));
  await Promise.all(
    servers.map(
      (server, i) =>
        new Promise<void>((resolve, reject) => {
          server.keepAliveTimeout = 65_000;
          server.once('error', reject);
          server.listen(ports[i], '127.0.0.1', () => {
            server.removeListener('error', reject);
            resolve();
          });
        }),
    ),
  );
  readyUntilParentGoes(() => {
    for (const s of servers) {
      s.closeAllConnections();
      s.close();
    }
    onStop();
  });
}

/** In the parent: `node --import tsx <script> <args>` (plain node with `tsx: false`; on `core` when pinning), resolved once it printed "ready". */
export function startNodeChild(script: string, args: readonly (string | number)[], what: string, o: { pinning?: Pinning; core?: number; nodeArgs?: readonly string[]; tsx?: boolean } = {}): Promise<Proc> {
  const argv = [...(o.nodeArgs ?? []), ...(o.tsx === false ? [] : ['--import', 'tsx']), script, ...args.map(String)];
  const [cmd, full] = o.pinning && o.core !== undefined ? o.pinning.wrap(o.core, process.execPath, argv) : [process.execPath, argv];
  return startReadyChild(cmd, full, what);
}
