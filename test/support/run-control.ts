// Run control for benches, fuzz and soak: a log prefix, sleeping, interruption by SIGINT/SIGTERM, ordered cleanup, the build step and the exit code.
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

export const ROOT = fileURLToPath(new URL('../..', import.meta.url));

let prefix = 'bench';
let timestamps = false;

/** Every log line starts with `[name]` (and the time of day with `timestamps`, for long runs like the soak). */
export function setLogPrefix(name: string, opts: { timestamps?: boolean } = {}): void {
  prefix = name;
  timestamps = opts.timestamps ?? false;
}

/** Progress goes to stderr: stdout is kept for the report. */
export function log(msg: string): void {
  process.stderr.write(`[${prefix}] ${timestamps ? `${new Date().toISOString().slice(11, 19)} ` : ''}${msg}\n`);
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

export function errMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

let bySignal = false;
const aborter = new AbortController();
const stops = new Set<() => void>();

/** Aborted on the first SIGINT/SIGTERM, or by abortRun() (e.g. the sidecar under test died): every wait of the run gives up. */
export const interruption: AbortSignal = aborter.signal;

/** Interrupted by a signal (exit status 130). */
export function isInterrupted(): boolean {
  return bySignal;
}

/** Ends the run as a signal would, for another reason (not exit status 130). */
export function abortRun(reason: Error): void {
  if (!aborter.signal.aborted) aborter.abort(reason);
}

export function checkInterrupted(): void {
  if (aborter.signal.aborted) throw bySignal ? new Error('interrupted') : (aborter.signal.reason as Error);
}

/** `stop` is called on the first SIGINT/SIGTERM while `work` runs (e.g. to end a load run early). */
export function whileRunning<T>(stop: () => void, work: Promise<T>): Promise<T> {
  stops.add(stop);
  return work.finally(() => stops.delete(stop));
}

/** SIGINT/SIGTERM: the first one stops the current run and lets the finally blocks clean up; a second exits at once (the exit hook still kills every child). */
export function installSignalHandlers(): void {
  const handler = (signal: NodeJS.Signals) => {
    if (bySignal) process.exit(130);
    bySignal = true;
    log(`${signal}: stopping and cleaning up (again to force)`);
    aborter.abort(new Error(`interrupted by ${signal}`));
    for (const stop of stops) stop();
  };
  process.on('SIGINT', handler);
  process.on('SIGTERM', handler);
}

/** Waits `ms`; resolves false at once (and early) when `signal` aborts. */
export function pause(ms: number, signal: AbortSignal = interruption): Promise<boolean> {
  if (signal.aborted) return Promise.resolve(false);
  return new Promise((resolve) => {
    const onAbort = () => {
      clearTimeout(timer);
      resolve(false);
    };
    const timer = setTimeout(() => {
      signal.removeEventListener('abort', onAbort);
      resolve(true);
    }, Math.max(0, ms));
    signal.addEventListener('abort', onAbort, { once: true });
  });
}

/** Polls `probe` every `everyMs` until it returns true; false once `timeoutMs` passes (or the run is interrupted). A throwing probe counts as not yet. */
export async function waitUntil(probe: () => Promise<boolean>, timeoutMs: number, everyMs = 100): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      if (await probe()) return true;
    } catch {
      // busy or not up yet: try again
    }
    if (Date.now() > deadline) return false;
    if (!(await pause(everyMs))) return false;
  }
}

/** `npm run build` (the runs start the built CLI), unless `skipVar`=1. */
export async function build(skipVar: string): Promise<void> {
  if (['1', 'true', 'yes', 'on'].includes((process.env[skipVar] ?? '').trim().toLowerCase())) return;
  log(`npm run build (${skipVar}=1 to skip)`);
  try {
    await promisify(execFile)('npm', ['run', 'build'], { cwd: ROOT, timeout: 300_000 });
  } catch (err) {
    const e = err as { stdout?: string; stderr?: string; message: string };
    throw new Error(`npm run build failed:\n${e.stdout ?? ''}${e.stderr ?? ''}${e.message}`, { cause: err });
  }
}

/** Runs a bench's main: its number is the exit status (0 without one); 130 after a signal, 1 on an error. */
export function runMain(main: () => Promise<number | void>): void {
  main().then(
    (code) => {
      process.exitCode = bySignal ? 130 : (code ?? 0);
    },
    (err: unknown) => {
      process.stderr.write(`[${prefix}] failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
      process.exitCode = bySignal ? 130 : 1;
    },
  );
}
