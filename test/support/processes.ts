// Child processes of tests, benches, fuzz and soak: start, wait until ready, stop by pid (or process group), and never outlive the parent.
import { spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { ROOT } from './run-control.ts';

export interface Proc {
  child: ChildProcess;
  pid: number;
  exited: Promise<void>;
  /** The last ~50 KB of what it wrote on the piped streams. */
  output: () => string;
  /** Spawned in its own process group: stopping it signals the whole group (nginx's workers, wrk). */
  group: boolean;
}

export interface ProcOptions {
  cwd?: string;
  /** The whole environment (default: this process's). */
  env?: NodeJS.ProcessEnv;
  group?: boolean;
  stdin?: 'pipe' | 'ignore';
  /** 'pipe' keeps it in output(); a number is a file descriptor to write to (a log file). */
  stdout?: 'pipe' | 'ignore' | number;
  stderr?: 'pipe' | 'ignore' | number;
  /** Called with each complete line of stderr (when piped). */
  onStderrLine?: (line: string) => void;
}

const children = new Set<Proc>();

function signal(p: Proc, s: NodeJS.Signals): void {
  try {
    if (p.group) process.kill(-p.pid, s);
    else p.child.kill(s);
  } catch {
    // already gone
  }
}

// Last resort if this process dies without running its finally blocks: nothing it started survives it.
process.on('exit', () => {
  for (const p of children) if (alive(p)) signal(p, 'SIGKILL');
});

/** Spawns a tracked child. stdin is a pipe by default: children that watch it exit when this process goes away. */
export function startProc(cmd: string, args: readonly string[], opts: ProcOptions = {}): Proc {
  const spawnOpts: SpawnOptions = { cwd: opts.cwd ?? ROOT, stdio: [opts.stdin ?? 'pipe', opts.stdout ?? 'pipe', opts.stderr ?? 'pipe'], detached: opts.group ?? false };
  if (opts.env) spawnOpts.env = opts.env;
  const child = spawn(cmd, [...args], spawnOpts);
  let out = '';
  const keep = (d: Buffer) => {
    out += d.toString();
    if (out.length > 100_000) out = out.slice(-50_000);
  };
  child.stdout?.on('data', keep);
  child.stderr?.on('data', keep);
  if (opts.onStderrLine && child.stderr) {
    const onLine = opts.onStderrLine;
    let partial = '';
    child.stderr.on('data', (d: Buffer) => {
      const lines = (partial + d.toString()).split('\n');
      partial = lines.pop() ?? '';
      // A line without an end (a crash dump) is still reported, in pieces.
      if (partial.length > 100_000) {
        lines.push(partial);
        partial = '';
      }
      for (const l of lines) onLine(l);
    });
    child.stderr.on('end', () => partial && onLine(partial));
  }
  // A spawn error (ENOENT) must not crash the caller: it shows as an exit.
  child.on('error', (err) => keep(Buffer.from(`\nspawn error: ${err.message}\n`)));
  const proc: Proc = {
    child,
    pid: child.pid ?? -1,
    group: opts.group ?? false,
    output: () => out,
    exited: new Promise<void>((resolve) => {
      const done = () => {
        children.delete(proc);
        resolve();
      };
      child.once('exit', done);
      child.once('error', () => {
        if (child.pid === undefined) done();
      });
    }),
  };
  children.add(proc);
  return proc;
}

export function alive(p: Proc): boolean {
  return p.pid > 0 && p.child.exitCode === null && p.child.signalCode === null;
}

/** `sig` to its pid (or group), then SIGKILL after `graceMs`; resolves once the process has exited. */
export async function stopProc(p: Proc, graceMs: number, sig: NodeJS.Signals = 'SIGTERM'): Promise<void> {
  if (!alive(p)) return;
  signal(p, sig);
  const timer = setTimeout(() => signal(p, 'SIGKILL'), graceMs);
  await p.exited;
  clearTimeout(timer);
}

/** Resolves with the first stdout line matching `pattern`; rejects if the process exits first or `timeoutMs` passes. */
export function waitForLine(p: Proc, pattern: RegExp, what: string, timeoutMs = 20_000): Promise<RegExpExecArray> {
  return new Promise((resolve, reject) => {
    let seen = '';
    const finish = (err: Error | undefined, m?: RegExpExecArray) => {
      clearTimeout(timer);
      p.child.stdout?.removeListener('data', onData);
      if (err) reject(err);
      else resolve(m as RegExpExecArray);
    };
    const timer = setTimeout(() => finish(new Error(`${what} not ready in ${timeoutMs / 1000} s: ${p.output().slice(-2000)}`)), timeoutMs);
    const onData = (d: Buffer) => {
      seen += d.toString();
      for (const line of seen.split('\n')) {
        const m = pattern.exec(line);
        if (m) return finish(undefined, m);
      }
    };
    p.child.stdout?.on('data', onData);
    void p.exited.then(() => finish(new Error(`${what} exited during start (${String(p.child.exitCode ?? p.child.signalCode)}): ${p.output().slice(-2000)}`)));
  });
}

/** A child that prints "ready" on stdout once it listens (see serveUntilParentGoes). */
export async function startReadyChild(cmd: string, args: readonly string[], what: string, opts: ProcOptions = {}): Promise<Proc> {
  const p = startProc(cmd, args, opts);
  try {
    await waitForLine(p, /ready/, what);
  } catch (err) {
    await stopProc(p, 1000, 'SIGKILL');
    throw err;
  }
  return p;
}
