// `tandem start` (the real CLI, built code) as a child process for tests, benches, fuzz, soak and the multi-host harness: start it, wait until its control API answers.
import { join } from 'node:path';
import type { Pinning } from './host-tools.ts';
import { alive, startProc, stopProc, type Proc, type ProcOptions } from './processes.ts';
import { ROOT, checkInterrupted, sleep } from './run-control.ts';

export const BIN = join(ROOT, 'bin', 'tandem.js');

export interface TandemProc extends Proc {
  /** Control API and proxy base URLs, e.g. http://127.0.0.1:7701. */
  api: string;
  proxy: string;
}

export interface TandemOptions {
  /** host:port of the control API and of the proxy. */
  api: string;
  proxy: string;
  /** Every other `tandem start` flag (benchArgs() gives the usual ones). */
  args: readonly string[];
  /** node flags before bin/tandem.js (e.g. `--cpu-prof`). */
  nodeArgs?: readonly string[];
  /** Added to an environment of only PATH: no CONSUL_HTTP_* or TANDEM_* of the caller leaks into the run. */
  env?: Record<string, string>;
  /** Pinned to `core` when pinning. */
  pin?: { pinning: Pinning; core: number };
  /** Where stdout/stderr go (default: stdout ignored, stderr kept in output()), and a hook per stderr line. */
  stdio?: Pick<ProcOptions, 'stdout' | 'stderr' | 'onStderrLine' | 'group'>;
  /** A degraded sidecar (503: Consul unreachable) counts as up. */
  degradedIsUp?: boolean;
  startTimeoutMs?: number;
}

/** The flags the benches, fuzz and soak run with: own state dir, warn-level logs, 1 s checks. */
export function benchArgs(o: { consul: string; stateDir: string; nodeName?: string; advertise?: string; set?: readonly string[] }): string[] {
  return [
    '--consul', o.consul,
    '--state-dir', o.stateDir,
    ...(o.nodeName ? ['--node-name', o.nodeName] : []),
    '--log-level', 'warn',
    '--advertise', o.advertise ?? '127.0.0.1',
    '--set', 'registration.checkIntervalMs=1000',
    ...(o.set ?? []).flatMap((s) => ['--set', s]),
  ];
}

/**
 * The Node flags the shipped units run the sidecar with (deploy/consul/systemd/tandem.service sets them in
 * NODE_OPTIONS, the compose file on the command line): a 1 MB young-generation semi-space keeps an idle
 * sidecar ~20-30 MB smaller and its scavenges short; benches run the sidecar the way it is deployed.
 */
export const DEPLOYED_NODE_ARGS: readonly string[] = ['--max-semi-space-size=1'];

/** Starts `tandem start` and resolves once GET /v1/health answers; stops it again if that never happens. */
export async function startTandem(o: TandemOptions): Promise<TandemProc> {
  const args = [...(o.nodeArgs ?? []), BIN, 'start', '--api', o.api, '--proxy', o.proxy, ...o.args];
  const [cmd, argv] = o.pin ? o.pin.pinning.wrap(o.pin.core, process.execPath, args) : [process.execPath, args];
  const p = startProc(cmd, argv, { env: { PATH: process.env['PATH'] ?? '', ...o.env }, stdin: 'ignore', stdout: 'ignore', ...o.stdio });
  const t: TandemProc = { ...p, api: `http://${o.api}`, proxy: `http://${o.proxy}` };
  const timeoutMs = o.startTimeoutMs ?? 30_000;
  try {
    for (const deadline = Date.now() + timeoutMs; ; await sleep(100)) {
      checkInterrupted();
      if (!alive(p)) throw new Error(`tandem exited during start (${String(p.child.exitCode ?? p.child.signalCode)}): ${p.output()}`);
      try {
        const res = await fetch(`${t.api}/v1/health`, { signal: AbortSignal.timeout(1000) });
        await res.arrayBuffer();
        if (res.ok || (o.degradedIsUp && res.status === 503)) return t;
      } catch {
        // not listening yet
      }
      if (Date.now() > deadline) throw new Error(`tandem's control API did not answer within ${timeoutMs / 1000} s: ${p.output()}`);
    }
  } catch (err) {
    await stopProc(p, 1000, 'SIGKILL');
    throw err;
  }
}
