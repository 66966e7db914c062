// A test app in its own process: registers through the SDK, runs for leadership, prints what happens.
//   node --import tsx test/support/contender.ts <control API url> <group> <name>
import { createServer } from 'node:http';
import { Tandem } from '../../src/sdk/index.ts';

const [url, group, name] = process.argv.slice(2) as [string, string, string];
const tandem = new Tandem({ url });
const svc = await tandem.register(`${name}@1.0.0`, createServer((_req, res) => res.end(name)), { deregisterOnSignal: false });
tandem.elect(group, {
  service: svc,
  onPromote: (info) => process.stdout.write(`PROMOTED ${info.token} ${Date.now()}\n`),
  onDemote: (reason) => process.stdout.write(`DEMOTED ${Date.now()} ${reason}\n`),
});
process.stdout.write(`READY ${svc.id}\n`);
