// Test helper: runs sidecars in-process or as `tandem start` child processes, on free ports and temp state dirs.
import type { ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import { tmpdir } from 'node:os';
import { after, before } from 'node:test';
import { join } from 'node:path';
import { loadConfig } from '../../src/config/config.ts';
import { freePorts } from '../../src/common/free-port.ts';
import { ConsulDevAgent } from '../../src/consul/consul-dev-agent.ts';
import { Sidecar } from '../../src/sidecar.ts';
import { listenLocal } from './listen.ts';
import { startTandem } from './tandem-process.ts';

export { BIN } from './tandem-process.ts';

export async function tempDir(prefix = 'tandem-test-'): Promise<string> {
  return mkdtemp(join(tmpdir(), prefix));
}

export async function removeDir(dir: string): Promise<void> {
  await rm(dir, { recursive: true, force: true });
}

/** Fast settings for tests: checks every 500 ms, sync every 300 ms, a short drain. */
export const FAST = ['--set', 'proxy.slowStartMs=0', '--set', 'registration.checkIntervalMs=500', '--set', 'registration.syncIntervalMs=300', '--set', 'registration.drainMs=100', '--log-level', 'silent'];

export async function startSidecar(consulAddress: string, opts: { stateDir?: string; args?: string[]; nodeName?: string } = {}): Promise<{ sidecar: Sidecar; api: string; stateDir: string }> {
  const stateDir = opts.stateDir ?? (await tempDir());
  const [proxyPort] = await freePorts(1);
  const config = loadConfig({
    argv: ['--consul', consulAddress, '--api', '127.0.0.1:0', '--proxy', `127.0.0.1:${proxyPort}`, '--state-dir', stateDir, '--node-name', opts.nodeName ?? 'test-node', '--advertise', '127.0.0.1', ...FAST, ...(opts.args ?? [])],
    env: {},
  });
  const sidecar = new Sidecar({ config });
  const { api } = await sidecar.start();
  return { sidecar, api, stateDir };
}

/**
 * A test file's Consul dev agent and in-process sidecar (started with `args`), up before its tests: `onStart` gets
 * the control API and proxy URLs. After the tests, `cleanups` run (last first), then the sidecar and Consul stop.
 */
export function useSidecar(args: string[], onStart: (urls: { api: string; proxy: string }) => void): { consul: ConsulDevAgent; cleanups: (() => Promise<unknown>)[] } {
  const consul = new ConsulDevAgent();
  const cleanups: (() => Promise<unknown>)[] = [];
  let started: Awaited<ReturnType<typeof startSidecar>> | undefined;
  before(async () => {
    await consul.start();
    started = await startSidecar(consul.address, { args });
    onStart({ api: started.api, proxy: started.sidecar.addresses.proxy });
  });
  after(async () => {
    for (const c of cleanups.reverse()) await c().catch(() => undefined);
    await started?.sidecar.close();
    await consul.stop();
    if (started) await removeDir(started.stateDir);
  });
  return { consul, cleanups };
}

export interface ChildSidecar {
  child: ChildProcess;
  api: string;
  exited: Promise<number | null>;
  stderr: () => string;
}

/** Runs the real CLI (`bin/tandem.js start`, built code) and waits until its control API answers (a degraded 503 counts). */
export async function spawnSidecar(args: string[], env: Record<string, string> = {}, ports?: { api: number; proxy: number }): Promise<ChildSidecar> {
  const [apiPort, proxyPort] = ports ? [ports.api, ports.proxy] : await freePorts(2);
  const p = await startTandem({ api: `127.0.0.1:${apiPort}`, proxy: `127.0.0.1:${proxyPort}`, args, env, degradedIsUp: true, startTimeoutMs: 20_000 });
  return { child: p.child, api: p.api, exited: p.exited.then(() => p.child.exitCode), stderr: p.output };
}

/** A tiny HTTP service with `/health`, answering its own name and version. */
export async function startService(name: string, version: string): Promise<{ server: Server; port: number; close: () => Promise<void> }> {
  const server = createServer((req, res) => {
    if (req.url === '/health') return void res.end('ok');
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify({ name, version, url: req.url }));
  });
  return { server, ...(await listenLocal(server)) };
}

export async function api(method: string, url: string, body?: unknown, raw?: string): Promise<{ status: number; body: unknown; headers: Headers }> {
  const init: RequestInit = { method };
  if (raw !== undefined) init.body = raw;
  else if (body !== undefined) init.body = JSON.stringify(body);
  if (init.body !== undefined) init.headers = { 'content-type': 'application/json' };
  const res = await fetch(url, init);
  const text = await res.text();
  let parsed: unknown = text;
  try {
    parsed = JSON.parse(text);
  } catch {
    // not JSON
  }
  return { status: res.status, body: parsed, headers: res.headers };
}
