// The SDK's own HTTP to the control API: sized bodies (never chunked), keep-alive reuse, one retry of a reset reused socket for idempotent calls only.
import assert from 'node:assert/strict';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { after, before, test } from 'node:test';
import { ControlHttp, readText } from '../../src/sdk/control-http.ts';

let server: Server;
let base: string;
const seen: { method: string; url: string; length: string | undefined; chunked: boolean; socket: number }[] = [];
/** Sockets the server resets on their next request instead of answering (the keep-alive race, made to happen). */
const resetNext = new WeakSet<Socket>();
const sockets: Socket[] = [];

/** Answers `{ body }`, or resets a socket marked in `resetNext` instead. */
function answer(req: IncomingMessage, res: ServerResponse): void {
  const socket = req.socket;
  if (!sockets.includes(socket)) sockets.push(socket);
  if (resetNext.has(socket)) {
    resetNext.delete(socket);
    return void socket.destroy();
  }
  seen.push({ method: req.method ?? '', url: req.url ?? '', length: req.headers['content-length'], chunked: req.headers['transfer-encoding'] === 'chunked', socket: sockets.indexOf(socket) });
  let body = '';
  req.on('data', (c: Buffer) => (body += c.toString()));
  req.on('end', () => res.end(JSON.stringify({ body })));
}

before(async () => {
  server = createServer(answer);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});
after(() => new Promise<void>((r) => server.close(() => r()).closeAllConnections()));

test('bodies are sent with their length, a body-less POST with 0; calls share a kept-alive socket', async () => {
  const http = new ControlHttp(base);
  seen.length = 0;
  assert.equal(await readText(await http.open('/a', { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"é":1}' })), JSON.stringify({ body: '{"é":1}' }));
  await readText(await http.open('/b', { method: 'POST', headers: {} }));
  await readText(await http.open('/c', { method: 'GET', headers: {} }));
  assert.deepEqual(
    seen.map((s) => [s.url, s.length, s.chunked]),
    [
      ['/a', String(Buffer.byteLength('{"é":1}')), false],
      ['/b', '0', false],
      ['/c', undefined, false],
    ],
  );
  assert.equal(new Set(seen.map((s) => s.socket)).size, 1, 'one socket, kept alive');
});

test('a reused socket reset before any answer: an idempotent call goes again on a fresh socket, a POST fails', async () => {
  const http = new ControlHttp(base);
  await readText(await http.open('/warm', { method: 'GET', headers: {} }));
  const last = sockets.at(-1) as Socket;
  resetNext.add(last);
  seen.length = 0;
  assert.equal(await readText(await http.open('/again', { method: 'PUT', headers: {}, body: '{}' })), JSON.stringify({ body: '{}' }));
  assert.deepEqual(seen.map((s) => s.url), ['/again']);
  assert.notEqual(seen[0]?.socket, sockets.indexOf(last), 'answered on a fresh socket');

  await readText(await http.open('/warm', { method: 'GET', headers: {} }));
  resetNext.add(sockets.at(-1) as Socket);
  seen.length = 0;
  await assert.rejects(http.open('/once', { method: 'POST', headers: {}, body: '{}' }), { code: 'ECONNRESET' });
  assert.deepEqual(seen, [], 'a POST is never sent twice');
});

test('a stream gets its own connection and an aborted one rejects with the abort', async () => {
  const http = new ControlHttp(base);
  await readText(await http.open('/call', { method: 'GET', headers: {} }));
  const before = sockets.length;
  await readText(await http.open('/stream', { method: 'GET', headers: {}, stream: true }));
  assert.equal(sockets.length, before + 1, 'not one of the calls’ pooled sockets');
  const ctrl = new AbortController();
  ctrl.abort();
  await assert.rejects(http.open('/aborted', { method: 'GET', headers: {}, signal: ctrl.signal, stream: true }), { name: 'AbortError' });
});
