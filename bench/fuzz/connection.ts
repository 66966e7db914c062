// One fuzz connection: writes a case's parts (with their pauses) and reads every answer until the server closes or goes quiet.
import { connect, type Socket } from 'node:net';
import type { FuzzCase } from './cases.ts';
import { HOST } from './grammar.ts';
import { ResponseStream } from './response-stream.ts';

const MAX_BYTES_IN = 32 * 1024 * 1024;

export interface ConnResult {
  stream: ResponseStream;
  connected: boolean;
  /** The server closed (or reset) the connection; otherwise we stopped waiting. */
  serverClosed: boolean;
  socketError: string | undefined;
  /** Bytes of a response still in progress when the connection ended. */
  leftover: number;
  bytesIn: number;
  rawIn: Buffer;
  written: boolean;
  /** How long the connection was open. */
  ms: number;
}

const openSockets = new Set<Socket>();
let stopWriting = false;

/** Slowloris connections stop writing; with `destroy`, every open connection is closed at once (interrupted run). */
export function stopConnections(destroy: boolean): void {
  stopWriting = true;
  if (destroy) for (const s of openSockets) s.destroy();
}

export function runConnection(port: number, c: FuzzCase): Promise<ConnResult> {
  return new Promise((resolve) => {
    const stream = new ResponseStream(c.methods);
    const t0 = Date.now();
    const sock = connect({ host: HOST, port });
    openSockets.add(sock);
    let connected = false;
    let written = false;
    let writesDone = false;
    let settled = false;
    let serverClosed = false;
    let socketError: string | undefined;
    let bytesIn = 0;
    const rawIn: Buffer[] = [];
    let rawLen = 0;
    let idle: NodeJS.Timeout | undefined;
    let writeTimer: NodeJS.Timeout | undefined;

    const done = () => {
      if (settled) return;
      settled = true;
      clearTimeout(hard);
      clearTimeout(idle);
      clearTimeout(writeTimer);
      sock.destroy();
      openSockets.delete(sock);
      const leftover = stream.finish(serverClosed);
      resolve({ stream, connected, serverClosed, socketError, leftover, bytesIn, rawIn: Buffer.concat(rawIn), written, ms: Date.now() - t0 });
    };
    const hard = setTimeout(done, c.maxMs);
    const armIdle = () => {
      if (!writesDone || settled) return;
      clearTimeout(idle);
      idle = setTimeout(done, c.idleMs);
    };
    const complete = () => stream.stopped || (writesDone && stream.finals.length >= c.methods.length);

    let i = 0;
    const writeNext = () => {
      if (settled) return;
      if (stopWriting && c.gen === 'slowloris') {
        writesDone = true;
        armIdle();
        return;
      }
      const part = c.parts[i++];
      if (part === undefined) {
        writesDone = true;
        if (c.endAfterWrite) sock.end();
        armIdle();
        if (complete()) done();
        return;
      }
      if (!sock.destroyed && sock.writable) {
        sock.write(part.data);
        written = true;
      }
      const next = c.parts[i];
      if (next === undefined || next.delayMs === 0) setImmediate(writeNext);
      else writeTimer = setTimeout(writeNext, next.delayMs);
    };

    sock.on('connect', () => {
      connected = true;
      writeNext();
    });
    sock.on('data', (d: Buffer) => {
      bytesIn += d.length;
      if (rawLen < 65_536) {
        rawIn.push(d);
        rawLen += d.length;
      }
      stream.push(d);
      if (bytesIn > MAX_BYTES_IN) {
        socketError = `more than ${MAX_BYTES_IN} bytes in`;
        done();
        return;
      }
      armIdle();
      if (complete() || (c.gen === 'slowloris' && stream.finals.length > 0)) done();
    });
    sock.on('end', () => {
      serverClosed = true;
      done();
    });
    sock.on('error', (err: NodeJS.ErrnoException) => {
      socketError = err.code ?? err.message;
    });
    sock.on('close', () => {
      if (!settled) serverClosed = true;
      done();
    });
  });
}

