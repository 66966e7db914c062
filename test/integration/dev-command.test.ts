// `tandem dev` as a new user runs it: --help starts nothing, a SIGTERM during start-up leaves no Consul behind, DNS answers version tags.
import assert from 'node:assert/strict';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { readdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { test } from 'node:test';
import { promisify } from 'node:util';
import { freePorts } from '../../src/common/free-port.ts';
import { BIN } from '../support/sidecar.ts';
import { eventually } from '../support/consul.ts';

const run = promisify(execFile);

/** Consul agents whose command line names this HTTP port. */
async function consulAgentsOn(port: number): Promise<string[]> {
  const { stdout } = await run('ps', ['-eo', 'pid,args']).catch(() => ({ stdout: '' }));
  return stdout.split('\n').filter((l) => l.includes('consul agent') && l.includes(`-http-port ${port} `));
}

function exited(child: ChildProcess): Promise<number | null> {
  return child.exitCode !== null ? Promise.resolve(child.exitCode) : new Promise((r) => child.once('exit', (code) => r(code)));
}

async function devStateDirs(): Promise<string[]> {
  return (await readdir(tmpdir())).filter((d) => d.startsWith('tandem-dev-'));
}

test('tandem dev --help prints usage and exits 0 without starting anything', async () => {
  const t0 = Date.now();
  const { stdout } = await run(process.execPath, [BIN, 'dev', '--help'], { timeout: 10_000 });
  const ms = Date.now() - t0;
  console.log(`tandem dev --help: ${ms} ms`);
  assert.match(stdout, /Usage: tandem dev/);
  assert.ok(ms < 5000, `took ${ms} ms`);
});

test('tandem dev with a bad flag exits 2 before starting Consul', async () => {
  const [port] = await freePorts(1);
  const err = await run(process.execPath, [BIN, 'dev', '--consul-port', String(port), '--no-such-flag'], { timeout: 10_000 }).then(
    () => undefined,
    (e: { code?: number; stderr?: string }) => e,
  );
  assert.equal(err?.code, 2);
  assert.match(err?.stderr ?? '', /--no-such-flag: unknown flag/);
  assert.deepEqual(await consulAgentsOn(port as number), []);
});

test('a SIGTERM while tandem dev starts Consul leaves no Consul agent and no state dir', { timeout: 120_000 }, async () => {
  const before = new Set(await devStateDirs());
  const [consulPort, dnsPort, proxyPort, apiPort] = (await freePorts(4, { udp: true })) as [number, number, number, number];
  const child = spawn(process.execPath, [BIN, 'dev', '--consul-port', String(consulPort), '--dns-port', String(dnsPort), '--proxy', `127.0.0.1:${proxyPort}`, '--api', `127.0.0.1:${apiPort}`, '--log-level', 'silent'], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout?.on('data', (d: Buffer) => (out += d.toString()));
  // Start-up is under way once it says so, and the agent process exists.
  await eventually(() => out.includes('Starting a Consul dev agent'), 'tandem dev to start Consul', 30_000);
  await eventually(async () => (await consulAgentsOn(consulPort)).length > 0, 'the consul agent process', 30_000);
  child.kill('SIGTERM');
  assert.equal(await exited(child), 0);
  await eventually(async () => (await consulAgentsOn(consulPort)).length === 0, 'no consul agent left', 15_000);
  const left = (await devStateDirs()).filter((d) => !before.has(d));
  assert.deepEqual(left, []);
});

test('tandem dev serves Consul DNS: dig finds greeter by its version tag', { timeout: 120_000 }, async (t) => {
  const dig = await run('dig', ['-v']).then(
    () => true,
    () => false,
  );
  if (!dig) return t.skip('dig is not installed (Debian package bind9-dnsutils; .ci/run installs it)');
  const [consulPort, dnsPort, proxyPort, apiPort] = (await freePorts(4, { udp: true })) as [number, number, number, number];
  const child = spawn(process.execPath, [BIN, 'dev', '--consul-port', String(consulPort), '--dns-port', String(dnsPort), '--proxy', `127.0.0.1:${proxyPort}`, '--api', `127.0.0.1:${apiPort}`, '--log-level', 'silent'], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout?.on('data', (d: Buffer) => (out += d.toString()));
  try {
    await eventually(() => out.includes('Tandem is running'), 'tandem dev to be running', 60_000);
    assert.match(out, new RegExp(`dig @127.0.0.1 -p ${dnsPort} v1.greeter.service.consul SRV`));
    const srv = await eventually(async () => {
      const { stdout } = await run('dig', ['@127.0.0.1', '-p', String(dnsPort), 'v2.greeter.service.consul', 'SRV', '+short']);
      return stdout.trim().split('\n').filter(Boolean).length === 1 ? stdout : undefined;
    }, 'an SRV answer for v2.greeter', 30_000);
    assert.match(srv, /^\d+ \d+ \d+ \S+\.$/m);
    // The absolute form with curl's own proxy flag, as the startup text suggests.
    const { stdout: hello } = await run('curl', ['-s', '-x', `http://127.0.0.1:${proxyPort}`, 'http://greeter.service.consul/hello']);
    assert.match(hello, /hello from greeter/);
  } finally {
    child.kill('SIGTERM');
    await exited(child);
  }
  await eventually(async () => (await consulAgentsOn(consulPort)).length === 0, 'no consul agent left', 15_000);
});
