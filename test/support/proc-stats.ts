// /proc sampling for benches, soak, fuzz and tests: CPU seconds, RSS, open fds, a process tree, and TCP connections by port (Linux).
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { readdir, readFile, readlink } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';

let clkTck: number | undefined;
async function clockTicks(): Promise<number> {
  if (clkTck !== undefined) return clkTck;
  try {
    const { stdout } = await promisify(execFile)('getconf', ['CLK_TCK']);
    const n = Number(stdout.trim());
    clkTck = Number.isInteger(n) && n > 0 ? n : 100;
  } catch {
    clkTck = 100;
  }
  return clkTck;
}

/** Fields of /proc/<pid>/stat after the `(comm)` field: index 0 is field 3 (state). */
async function statFields(pid: number): Promise<string[] | undefined> {
  try {
    const s = await readFile(`/proc/${pid}/stat`, 'utf8');
    return s.slice(s.lastIndexOf(')') + 2).split(' ');
  } catch {
    return undefined;
  }
}

/** Busy (non-idle, non-iowait) seconds of one core since boot, from /proc/stat. */
export async function coreBusySeconds(core: number): Promise<number> {
  const tck = await clockTicks();
  const text = await readFile('/proc/stat', 'utf8').catch(() => '');
  const line = text.split('\n').find((l) => l.startsWith(`cpu${core} `));
  if (!line) return Number.NaN;
  // user nice system idle iowait irq softirq steal ...
  const v = line.trim().split(/\s+/).slice(1).map(Number);
  const busy = (v[0] ?? 0) + (v[1] ?? 0) + (v[2] ?? 0) + (v[5] ?? 0) + (v[6] ?? 0) + (v[7] ?? 0);
  return busy / tck;
}

/** The pid and its descendants (nginx's master and workers). */
export async function processTree(pid: number): Promise<number[]> {
  const parents = new Map<number, number[]>();
  for (const name of await readdir('/proc').catch(() => [] as string[])) {
    if (!/^\d+$/.test(name)) continue;
    const f = await statFields(Number(name));
    const ppid = Number(f?.[1]);
    if (!f || Number.isNaN(ppid)) continue;
    parents.set(ppid, [...(parents.get(ppid) ?? []), Number(name)]);
  }
  const out: number[] = [];
  const todo = [pid];
  while (todo.length > 0) {
    const p = todo.pop() as number;
    out.push(p);
    todo.push(...(parents.get(p) ?? []));
  }
  return out;
}

/** utime + stime of these processes (all threads), in seconds. */
export async function cpuSeconds(pids: readonly number[]): Promise<number> {
  const tck = await clockTicks();
  let ticks = 0;
  for (const pid of pids) {
    const f = await statFields(pid);
    // utime and stime are fields 14 and 15 of the file: indexes 11 and 12 here.
    if (f) ticks += Number(f[11] ?? 0) + Number(f[12] ?? 0);
  }
  return ticks / tck;
}

/** A kB field of /proc/<pid>/status (VmRSS, VmHWM: the peak) summed over these processes; NaN when none could be read. */
export async function statusKb(pids: readonly number[], field: 'VmRSS' | 'VmHWM' = 'VmRSS'): Promise<number> {
  let kb = Number.NaN;
  for (const pid of pids) {
    try {
      const s = await readFile(`/proc/${pid}/status`, 'utf8');
      kb = (Number.isNaN(kb) ? 0 : kb) + Number(new RegExp(`^${field}:\\s*(\\d+)\\s*kB`, 'm').exec(s)?.[1] ?? 0);
    } catch {
      // gone
    }
  }
  return kb;
}

/** VmRSS (or VmHWM) of these processes, in MB (0 when gone). */
export async function rssMb(pids: readonly number[], field: 'VmRSS' | 'VmHWM' = 'VmRSS'): Promise<number> {
  const kb = await statusKb(pids, field);
  return Number.isNaN(kb) ? 0 : kb / 1024;
}

/** Open file descriptors of a process, and how many are sockets (zeros when it cannot be read). */
export async function fdCount(pid: number): Promise<{ all: number; sockets: number }> {
  const targets = await socketTargets(pid);
  return { all: targets.length, sockets: targets.filter((t) => t.startsWith('socket:')).length };
}

async function socketTargets(pid: number): Promise<string[]> {
  const dir = `/proc/${pid}/fd`;
  const fds = await readdir(dir).catch(() => [] as string[]);
  return Promise.all(fds.map((fd) => readlink(join(dir, fd)).catch(() => '')));
}

async function socketInodes(pid: number): Promise<Set<string>> {
  const out = new Set<string>();
  for (const target of await socketTargets(pid)) {
    const m = /^socket:\[(\d+)\]$/.exec(target);
    if (m?.[1] !== undefined) out.add(m[1]);
  }
  return out;
}

interface TcpEntry {
  localPort: number;
  remotePort: number;
  /** 01 = ESTABLISHED, 0A = LISTEN. */
  state: string;
  inode: string;
}

function tcpTable(): TcpEntry[] {
  const out: TcpEntry[] = [];
  for (const file of ['/proc/net/tcp', '/proc/net/tcp6']) {
    let text: string;
    try {
      text = readFileSync(file, 'utf8');
    } catch {
      continue;
    }
    for (const line of text.split('\n').slice(1)) {
      const [, local, remote, state, , , , , , inode] = line.trim().split(/\s+/);
      if (local === undefined || remote === undefined || state === undefined || inode === undefined) continue;
      out.push({ localPort: parseInt(local.split(':')[1] ?? '0', 16), remotePort: parseInt(remote.split(':')[1] ?? '0', 16), state, inode });
    }
  }
  return out;
}

/** Established TCP connections (any process on this host) whose remote end is `port`. */
export function connectionsTo(port: number): number {
  return tcpTable().filter((e) => e.state === '01' && e.remotePort === port).length;
}

/** ESTABLISHED TCP connections of `pid` to `remotePort` (e.g. the sidecar's connections to Consul's HTTP port). */
export async function establishedTo(pid: number, remotePort: number): Promise<number> {
  const inodes = await socketInodes(pid);
  return tcpTable().filter((e) => e.state === '01' && e.remotePort === remotePort && inodes.has(e.inode)).length;
}

/** The pid of the process listening on a TCP port (to find the Consul agent), if this user can see it. */
export async function pidListeningOn(port: number): Promise<number | undefined> {
  const inodes = new Set(tcpTable().filter((e) => e.state === '0A' && e.localPort === port).map((e) => e.inode));
  if (inodes.size === 0) return undefined;
  for (const name of await readdir('/proc').catch(() => [] as string[])) {
    if (!/^\d+$/.test(name)) continue;
    const mine = await socketInodes(Number(name));
    for (const i of inodes) if (mine.has(i)) return Number(name);
  }
  return undefined;
}
