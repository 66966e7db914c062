// An HTTP server of a test on a free loopback port, with the close that ends its open connections too (keep-alive ones would hold it).
import type { Server } from 'node:http';

export async function listenLocal(server: Server): Promise<{ port: number; close: () => Promise<void> }> {
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    port: (server.address() as { port: number }).port,
    close: () =>
      new Promise<void>((r) => {
        server.closeAllConnections();
        server.close(() => r());
      }),
  };
}
