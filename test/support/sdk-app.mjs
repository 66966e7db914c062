// A test app in its own process, on the built SDK (dist/, so `npm run build` first): registers, then does what its mode says.
//   node test/support/sdk-app.mjs <control API url> <mode> <name>
// hold         register, print READY <id>, serve until killed
// own-handler  as hold, with its own SIGTERM listener (prints APP-SIGTERM and keeps serving)
// close        register, then svc.close(): must exit by itself
// close-all    two registrations, a watch, a subscription and the drain stream, then tandem.close(): must exit by itself
// app-server   the app listens itself, registers, closes: its server stays open (prints STILL-LISTENING), then the app closes it
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
