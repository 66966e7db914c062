// Watching the fuzzed sidecar: its stderr, its liveness and /v1/health throughout, valid traffic before and after, and a graceful stop at the end.
import { fdCount, statusKb } from '../../test/support/proc-stats.ts';
import { alive } from '../../test/support/processes.ts';
import { isInterrupted, log, sleep } from '../../test/support/run-control.ts';
import type { TandemProc } from '../../test/support/tandem-process.ts';
import { isRecord, type Stats } from './checks.ts';
import { stopConnections } from './connection.ts';
import { SERVICE } from './grammar.ts';
import { esc } from './response-stream.ts';

/** SIGTERM to exit: the sidecar's own shutdownTimeoutMs (15 s) for in-flight requests, plus deregistration. */
const SHUTDOWN_MS = 30_000;
const STDERR_BAD = /unhandledRejection|uncaughtException|TypeError|RangeError|FATAL ERROR|heap out of memory|Maximum call stack/;

/** Checks each line the sidecar writes on stderr (pino JSON at warn and above; a crash prints plain text). */
export function stderrChecker(stats: Stats): (line: string) => void {
  return (line: string) => {
    if (line.trim() === '') return;
    stats.stderr.lines++;
    let level = 0;
    let msg = line;
    try {
      const j: unknown = JSON.parse(line);
      if (isRecord(j)) {
        level = typeof j['level'] === 'number' ? j['level'] : 0;
        msg = typeof j['msg'] === 'string' ? j['msg'] : line;
      }
    } catch {
      // not a pino line
    }
    if (level >= 50) {
      stats.stderr.error++;
      stats.finding(`sidecar logged at error level or above: ${esc(msg, 80)}`, `stderr: ${esc(line, 400)}`);
    } else if (level >= 40) {
      stats.stderr.warn++;
      stats.bump(stats.stderr.warnMessages, msg.slice(0, 120));
    } else stats.stderr.other++;
    if (STDERR_BAD.test(line)) stats.violation('sidecar stderr mentions a crash-class error', `stderr: ${esc(line, 400)}`);
  };
}

/** Until `until()`: the sidecar alive (else the crash is recorded), its RSS peak, and GET /v1/health every second. */
export async function monitor(sidecar: TandemProc, stats: Stats, until: () => boolean): Promise<void> {
  while (!until()) {
    if (!alive(sidecar)) {
      stats.crash ??= `tandem exited (${String(sidecar.child.exitCode ?? sidecar.child.signalCode)}); last stderr:\n${sidecar.output().slice(-3000)}`;
      stopConnections(false);
      return;
    }
    stats.rss.peak = Math.max(stats.rss.peak, (await statusKb([sidecar.pid])) || 0);
    try {
      const res = await fetch(`${sidecar.api}/v1/health`, { signal: AbortSignal.timeout(3000) });
      const body: unknown = await res.json();
      if (!res.ok || !isRecord(body) || body['status'] !== 'ok') throw new Error(`answered ${res.status}: ${JSON.stringify(body).slice(0, 200)}`);
      stats.health.ok++;
      stats.health.streak = 0;
    } catch (err) {
      stats.health.failed++;
      stats.health.streak++;
      stats.health.longestStreak = Math.max(stats.health.longestStreak, stats.health.streak);
      stats.health.lastError = err instanceof Error ? err.message : String(err);
      if (stats.health.streak === 3) stats.violation('GET /v1/health failed 3 times in a row', `last: ${stats.health.lastError}`);
    }
    await sleep(1000);
  }
}

/** Valid traffic through fetch (keep-alive) for `ms`: how many were sent and answered 200 (failures by reason into `stats`). */
export async function validTraffic(proxy: string, api: string, ms: number, stats: Stats | undefined): Promise<{ sent: number; ok: number }> {
  const until = Date.now() + ms;
  let sent = 0;
  let ok = 0;
  const worker = async (w: number) => {
    for (let i = 0; Date.now() < until && !isInterrupted(); i++) {
      const url = i % 5 === 4 ? `${api}/v1/instances/${SERVICE}` : `${proxy}/${SERVICE}${i % 2 ? '@^1' : ''}/valid/${w}/${i}`;
      sent++;
      try {
        const res = await fetch(url, { signal: AbortSignal.timeout(5000), headers: i % 3 === 0 ? { 'x-stickyid': `user-${w}` } : {} });
        await res.arrayBuffer();
        if (res.status === 200) ok++;
        else if (stats) stats.bump(stats.post.failures, `${url.startsWith(api) ? 'api' : 'proxy'} ${res.status} ${res.headers.get('x-tandem-error') ?? ''}`.trim());
      } catch (err) {
        if (stats) stats.bump(stats.post.failures, err instanceof Error ? `${err.name}: ${err.message}`.slice(0, 100) : String(err));
      }
    }
  };
  await Promise.all(Array.from({ length: 8 }, (_, w) => worker(w)));
  return { sent, ok };
}

/**
 * SIGTERM, as an orchestrator would: the sidecar must drain, deregister its services and exit 0 in time. Then asks the
 * Consul agent what is still registered.
 */
export async function gracefulStop(sidecar: TandemProc, consul: string, stats: Stats): Promise<void> {
  log('SIGTERM to the sidecar: it must deregister its services and exit');
  const held = await fdCount(sidecar.pid);
  const t = Date.now();
  sidecar.child.kill('SIGTERM');
  const exited = await Promise.race([sidecar.exited.then(() => true), sleep(SHUTDOWN_MS).then(() => false)]);
  const ms = Date.now() - t;
  await sleep(300); // the last stderr lines
  if (!exited) {
    stats.violation(
      `the sidecar did not exit within ${SHUTDOWN_MS / 1000} s of SIGTERM (graceful shutdown hung; killed with SIGKILL)`,
      `it held ${held.all} fds (${held.sockets} sockets) when SIGTERM was sent, with no client connection of ours open; last stderr: ${esc(sidecar.output().slice(-600), 600)}`,
    );
    sidecar.child.kill('SIGKILL');
    await sidecar.exited;
  } else if (sidecar.child.exitCode !== 0) {
    stats.violation('the sidecar did not exit 0 on SIGTERM', `exit ${String(sidecar.child.exitCode ?? sidecar.child.signalCode)}; last stderr: ${esc(sidecar.output().slice(-600), 600)}`);
  }
  stats.shutdown = { ms, status: exited ? String(sidecar.child.exitCode ?? sidecar.child.signalCode) : 'SIGKILL', killed: !exited };
  try {
    const res = await fetch(`${consul}/v1/agent/services`, { signal: AbortSignal.timeout(3000) });
    const body: unknown = await res.json();
    const names = isRecord(body) ? Object.values(body).flatMap((v) => (isRecord(v) && typeof v['Service'] === 'string' && v['Service'] !== 'consul' ? [v['Service']] : [])) : [];
    if (names.length > 0) stats.finding('services still registered in Consul after the sidecar stopped', `${names.length}: ${[...new Set(names)].slice(0, 12).join(', ')}`);
  } catch (err) {
    log(`could not list Consul's services after the stop: ${err instanceof Error ? err.message : String(err)}`);
  }
}
