// Host tools for benches: find a binary (or install it from Debian's registry when allowed), and pin processes to cores with taskset.
import { execFile } from 'node:child_process';
import { constants as fsConstants, accessSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { delimiter, join } from 'node:path';
import { promisify } from 'node:util';
import { log } from './run-control.ts';

const run = promisify(execFile);

export function which(name: string): string | undefined {
  for (const d of [...(process.env['PATH'] ?? '').split(delimiter), '/usr/sbin', '/usr/local/sbin', '/sbin']) {
    if (!d) continue;
    const p = join(d, name);
    try {
      accessSync(p, fsConstants.X_OK);
      return p;
    } catch {
      // not here
    }
  }
  return undefined;
}

let aptUpdated = false;

/**
 * The path of `name`, installing the first Debian package of `packages` that installs when it is missing
 * and `install` is true (root and apt-get needed). `{ reason }` says why it is not available.
 */
export async function ensureTool(name: string, packages: readonly string[], install: boolean): Promise<{ path: string } | { reason: string }> {
  const found = which(name);
  if (found) return { path: found };
  if (!install) return { reason: `${name} is not installed and BENCH_INSTALL=0` };
  if (process.getuid?.() !== 0) return { reason: `${name} is not installed and this is not root (apt-get install -y ${packages.join(' or ')})` };
  const apt = which('apt-get');
  if (!apt) return { reason: `${name} is not installed and there is no apt-get here` };
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  const opts = { env, timeout: 300_000, maxBuffer: 16 * 1024 * 1024 };
  const attempt = async (pkg: string): Promise<string | undefined> => {
    try {
      await run(apt, ['install', '-y', '--no-install-recommends', pkg], opts);
      return undefined;
    } catch (err) {
      const e = err as { stderr?: string; message: string };
      return (e.stderr ?? e.message).trim().split('\n').slice(-3).join(' / ');
    }
  };
  const errors: string[] = [];
  for (const pkg of packages) {
    log(`${name} not found: apt-get install -y ${pkg}`);
    let failed = await attempt(pkg);
    if (failed !== undefined && !aptUpdated) {
      log('apt-get update, then again');
      aptUpdated = true;
      await run(apt, ['update'], opts).catch((err: Error) => log(`apt-get update failed: ${err.message.split('\n')[0] ?? ''}`));
      failed = await attempt(pkg);
    }
    const path = which(name);
    if (failed === undefined && path) return { path };
    errors.push(`${pkg}: ${failed ?? `installed, but no ${name} binary found`}`);
  }
  return { reason: `could not install ${name}: ${errors.join('; ')}` };
}

/** Core pinning (the notes' method: load generator and upstreams on core 0, the proxy under test on core 1). */
export interface Pinning {
  enabled: boolean;
  /** The command line, prefixed with `taskset -c <core>` when pinning. */
  wrap(core: number, cmd: string, args: readonly string[]): [string, string[]];
  describe: string;
}

export async function setupPinning(want: boolean, offVar = 'BENCH_PIN'): Promise<Pinning> {
  const taskset = which('taskset');
  const cpus = await allowedCpus();
  let reason = '';
  if (!want) reason = `${offVar}=0`;
  else if (!taskset) reason = 'taskset is not installed';
  else if (!cpus.includes(0) || !cpus.includes(1)) reason = `cores 0 and 1 are not both available (allowed: ${cpus.join(',') || 'unknown'})`;
  if (reason !== '' || !taskset) {
    return { enabled: false, wrap: (_c, cmd, args) => [cmd, [...args]], describe: `unpinned (${reason}): load generator, upstreams, Consul and the proxy share every core` };
  }
  // This process (every thread), and so everything it starts from now on, goes to core 0; the proxy under test is started with `taskset -c 1`.
  await run(taskset, ['-a', '-p', '-c', '0', String(process.pid)]);
  return {
    enabled: true,
    wrap: (core, cmd, args) => [taskset, ['-c', String(core), cmd, ...args]],
    describe: 'pinned with taskset: load generator, upstreams and Consul on core 0, the proxy under test alone on core 1',
  };
}

async function allowedCpus(): Promise<number[]> {
  const status = await readFile('/proc/self/status', 'utf8').catch(() => '');
  const list = /^Cpus_allowed_list:\s*(.+)$/m.exec(status)?.[1] ?? '';
  const out: number[] = [];
  for (const part of list.trim().split(',')) {
    const [a, b] = part.split('-').map(Number);
    if (a === undefined || Number.isNaN(a)) continue;
    for (let i = a; i <= (b ?? a); i++) out.push(i);
  }
  return out;
}
