// Errors answered on a raw socket (parser errors, CONNECT, failed upgrades), shared by the proxy and the control API.
import { STATUS_CODES } from 'node:http';
import type { Duplex } from 'node:stream';
import { HeadersTooLargeError, OverloadedError, TandemError } from './errors.ts';

/** Error answers' header lines (the body is JSON in the error shape): the one place they are written. */
export function errorLines(e: TandemError): string {
  const retry = e instanceof OverloadedError ? `retry-after: ${e.retryAfterS}\r\n` : '';
  return `content-type: application/json; charset=utf-8\r\nx-tandem-error: ${e.code}\r\n${retry}`;
}

/** Answers in the error shape on a raw socket and closes it for good. */
export function writeRawError(socket: Duplex, e: TandemError): void {
  if (!socket.writable) {
    socket.destroy();
    return;
  }
  const body = JSON.stringify(e.toBody());
  // Destroy once written: waiting for the client's FIN on a paused socket would hold it open forever.
  socket.end(
    `HTTP/1.1 ${e.statusCode} ${STATUS_CODES[e.statusCode] ?? 'Error'}\r\n${errorLines(e)}content-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`,
    () => socket.destroy(),
  );
  setTimeout(() => socket.destroy(), 5000).unref();
}

/**
 * A node:http `clientError`: 431 for oversized headers, `malformed()` otherwise — never written into a
 * response already in progress on that connection (an event stream, say), which is just cut instead.
 */
export function answerClientError(err: NodeJS.ErrnoException, socket: Duplex, malformed: () => TandemError): void {
  if (err.code === 'ECONNRESET' || (socket as { _httpMessage?: unknown })._httpMessage) {
    socket.destroy();
    return;
  }
  writeRawError(socket, err.code === 'HPE_HEADER_OVERFLOW' ? new HeadersTooLargeError() : malformed());
}
