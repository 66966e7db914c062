// Example app: calls the greeter through the sidecar, round-robin and then sticky.
//   node --import tsx examples/caller.ts
import { Tandem } from '../src/sdk/index.ts';

const tandem = new Tandem();
await tandem.waitFor(['greeter'], { timeoutMs: 30_000 });

console.log('round-robin over every greeter:');
for (let i = 0; i < 4; i++) console.log(' ', ((await (await tandem.request('greeter', '/hello')).json()) as { greeting: string }).greeting);

console.log('only greeter ^1:');
for (let i = 0; i < 2; i++) console.log(' ', ((await (await tandem.request('greeter@^1', '/hello')).json()) as { greeting: string }).greeting);

console.log('sticky: user-42 always reaches the same instance:');
for (let i = 0; i < 4; i++) {
  const res = await tandem.request('greeter', '/hello', { stickyId: 'user-42' });
  console.log(' ', res.headers.get('x-tandem-instance'), ((await res.json()) as { greeting: string }).greeting);
}

const one = await tandem.resolve('greeter@2');
console.log(`resolve('greeter@2') → ${one.address}:${one.port} (${one.id})`);
