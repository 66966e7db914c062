// Writes a head (a latin1 string) and the first body bytes as one buffer: one write, one syscall, no writev arrays.
import type { Socket } from 'node:net';

/** Up to this many body bytes are copied next to the head; larger bodies go as a second buffer in one corked writev. */
const COPY_BYTES = 16_384;

export function writeHeadAndBody(socket: Socket, head: string, body: Buffer): boolean {
  if (body.length <= COPY_BYTES) {
    const out = Buffer.allocUnsafe(head.length + body.length);
    out.write(head, 0, 'latin1');
    body.copy(out, head.length);
    return socket.write(out);
  }
  socket.cork();
  socket.write(head, 'latin1');
  const ok = socket.write(body);
  socket.uncork();
  return ok;
}
