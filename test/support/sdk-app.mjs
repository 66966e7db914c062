// A test app in its own process, on the built SDK (dist/, so `npm run build` first): registers, then does what its mode says.
//   node test/support/sdk-app.mjs <control API url> <mode> <name>
// hold         register, print READY <id>, serve until killed
// own-handler  as hold, with its own SIGTERM listener (prints APP-SIGTERM and keeps serving)
// close        register, then svc.close(): must exit by itself
// close-all    two registrations, a watch, a subscription and the drain stream, then tandem.close(): must exit by itself
// app-server   the app listens itself, registers, closes: its server stays open (prints STILL-LISTENING), then the app closes it
// env-proxy    as hold, for an app run with NODE_USE_ENV_PROXY=1 and HTTP_PROXY: a watch that sees it passing, a
//              subscription that gets an event back, the drain stream, each awaited ready; then prints RESULT <json>
//              with what it saw and what the global fetch does (through the proxy), and serves until killed
import { createServer } from 'node:http';
import { Tandem } from '../../dist/sdk/index.js';

const [url, mode, name] = process.argv.slice(2);
const tandem = new Tandem({ url });
const serve = (who) => createServer((_req, res) => res.end(who));
const server = serve(name);
if (mode === 'app-server') await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
const svc = await tandem.register(`${name}@1.0.0`, server);
process.stdout.write(`READY ${svc.id}\n`);
if (mode === 'own-handler') process.on('SIGTERM', () => process.stdout.write('APP-SIGTERM\n'));
if (mode === 'close') {
  await svc.close();
  process.stdout.write('CLOSED\n');
}
if (mode === 'close-all') {
  const other = await tandem.register(`${name}-b@1.0.0`, serve(`${name}-b`));
  process.stdout.write(`READY ${other.id}\n`);
  tandem.watch(name, () => undefined);
  tandem.subscribe(`${name}-events`, () => undefined);
  tandem.on('drain', () => undefined);
  await tandem.close();
  process.stdout.write('CLOSED\n');
}
if (mode === 'app-server') {
  await svc.close();
  if (server.listening) process.stdout.write('STILL-LISTENING\n');
  server.close();
}
if (mode === 'env-proxy') {
  const result = {};
  // Passing means the SDK's heartbeats reached the sidecar: the watch reports it only then.
  let passing;
  const seen = new Promise((resolve) => (passing = resolve));
  const stopWatch = tandem.watch(name, (e) => e.type === 'added' && e.instance.id === svc.id && passing());
  await stopWatch.ready;
  await seen;
  let got;
  const received = new Promise((resolve) => (got = resolve));
  const stopSub = tandem.subscribe(`${name}-events`, (payload) => got(payload));
  await stopSub.ready;
  await tandem.publish(`${name}-events`, { from: name });
  result.event = await received;
  tandem.on('drain', () => undefined);
  await tandem.lifecycleReady();
  result.instances = (await tandem.instances(name)).map((i) => i.id);
  result.request = await (await tandem.request(name, '/via-sdk')).text();
  // What the environment does to the global fetch: a service by name reaches it through the proxy...
  const byName = await fetch(`http://${name}.service.consul/`);
  result.byName = { status: byName.status, body: await byName.text() };
  // ...and the control API through the proxy is refused: what the SDK's own calls must never meet.
  result.controlViaFetch = await fetch(`${url}/v1/health`).then(
    (res) => ({ status: res.status, code: res.headers.get('x-tandem-error') }),
    (err) => ({ error: `${err.message}${err.cause ? ` (cause: ${err.cause.message ?? err.cause.code})` : ''}` }),
  );
  stopWatch();
  stopSub();
  process.stdout.write(`RESULT ${JSON.stringify(result)}\n`);
}
