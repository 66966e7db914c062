import autocannon from 'autocannon';
import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ConsulDevAgent } from '/work/main/src/agent/consul-dev-agent.ts';
import { freePorts } from '/work/main/src/agent/free-port.ts';

const agent = new ConsulDevAgent();
await agent.start();
const dir = await mkdtemp(join(tmpdir(), 'tandem-diag-'));
const [a, b, api, proxy] = (await freePorts(4)) as [number, number, number, number];
const up = spawn(process.execPath, ['--import', 'tsx', '/work/main/bench/upstream.ts', String(a), String(b)], { cwd: '/work/main', stdio: ['pipe', 'pipe', 'inherit'] });
const sc = spawn(process.execPath, ['/work/main/bin/tandem.js', 'start', '--consul', agent.address, '--api', `127.0.0.1:${api}`, '--proxy', `127.0.0.1:${proxy}`, '--state-dir', dir, '--log-level', 'info', '--advertise', '127.0.0.1', '--set', 'registration.checkIntervalMs=1000'], { stdio: ['ignore', 'ignore', 'pipe'], env: { PATH: process.env['PATH'] ?? '' } });
let log = '';
sc.stderr.on('data', (d: Buffer) => (log += d.toString()));
try {
  for (;;) { try { if ((await fetch(`http://127.0.0.1:${api}/v1/health`)).ok) break; } catch {} await new Promise((r) => setTimeout(r, 100)); }
  for (const p of [a, b]) await fetch(`http://127.0.0.1:${api}/v1/services`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ name: 'bench', version: '1.0.0', port: p }) });
  for (;;) { const j = (await (await fetch(`http://127.0.0.1:${api}/v1/instances/bench`)).json()) as { instances: { healthy: boolean }[] }; if (j.instances.length === 2 && j.instances.every((i) => i.healthy)) break; await new Promise((r) => setTimeout(r, 200)); }
  const inst = async () => JSON.stringify(((await (await fetch(`http://127.0.0.1:${api}/v1/instances/bench`)).json()) as { instances: { id: string; ejected: boolean }[] }).instances.map((i) => [i.id, i.ejected]));
  console.log('before', await inst());
  for (const headers of [{}, { 'x-stickyid': 'user-42' }]) {
    await new Promise<autocannon.Result>((res, rej) => autocannon({ url: `http://127.0.0.1:${proxy}/bench/`, connections: 32, duration: 2, headers }, (e, x) => (e ? rej(e) : res(x))));
    console.log(JSON.stringify(headers), 'right after', await inst());
    await new Promise((r) => setTimeout(r, 2500));
    console.log('2.5 s later', await inst());
  }
  // a single slow client abort
  const c = new AbortController();
  for (let i = 0; i < 3; i++) { const ac = new AbortController(); const p = fetch(`http://127.0.0.1:${proxy}/bench/`, { signal: ac.signal, headers: { 'x-stickyid': 'user-42' } }).catch(() => undefined); ac.abort(); await p; }
  void c;
  await new Promise((r) => setTimeout(r, 100));
  console.log('after 3 aborted fetches', await inst());
} finally {
  sc.kill('SIGTERM'); up.kill('SIGTERM');
  await new Promise((r) => sc.once('exit', r));
  await agent.stop(); await rm(dir, { recursive: true, force: true });
}
