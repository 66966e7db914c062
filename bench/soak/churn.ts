// The soak's churn: every SOAK_CHURN_SECONDS one soak-b instance is killed with SIGKILL (restarted 5 s later) or deregistered (registered again 5 s later), one at a time.
import type { Tandem } from '../../src/sdk/index.ts';
import { checkInterrupted, errMessage, interruption, log, pause, waitUntil } from '../../test/support/run-control.ts';
import { deregister, killInstance, register, startInstance, viewOf, allRoutable, type Instance } from './instances.ts';
import type { ChurnEvent, ChurnKind, Stats } from './traffic.ts';

/** kill -9 → restart on the same port after this long. */
export const KILL_DOWN_MS = 5_000;
/** DELETE → POST again this long after the DELETE was sent (the DELETE itself drains for ~2 s). */
export const DEREG_DOWN_MS = 5_000;
/** How long a churned instance may take to be routable again (healthy, not ejected) in the sidecar's view. */
const RECOVER_TIMEOUT_MS = 30_000;

export interface ChurnCtx {
  api: string;
  view: Tandem;
  all: readonly Instance[];
  victims: readonly Instance[];
  stats: Stats;
  churnMs: number;
  /** No event starts later than this (so each one finishes before the traffic stops). */
  lastStart: number;
  /** Aborted at the end of the run: no new event starts. */
  end: AbortSignal;
  skipped: number;
}

async function killEvent(c: ChurnCtx, victim: Instance, ev: ChurnEvent): Promise<void> {
  if (!victim.proc) throw new Error(`${victim.id} has no process`);
  await killInstance(victim);
  // Until the restart: when does the sidecar stop routing to it (ejected after failures, or critical in Consul)?
  const restartAt = ev.start + KILL_DOWN_MS;
  while (Date.now() < restartAt && !interruption.aborted) {
    try {
      const v = await viewOf(c.view, victim);
      const now = Date.now();
      if (v?.ejected && ev.ejectedAfterMs === undefined) ev.ejectedAfterMs = now - ev.start;
      if ((!v || !v.healthy) && ev.unhealthyAfterMs === undefined) ev.unhealthyAfterMs = now - ev.start;
    } catch {
      // keep polling
    }
    await pause(Math.min(100, restartAt - Date.now()));
  }
  checkInterrupted();
  victim.proc = await startInstance(victim);
  ev.restartedAfterMs = Date.now() - ev.start;
}

async function deregisterEvent(c: ChurnCtx, victim: Instance, ev: ChurnEvent): Promise<void> {
  ev.deleteStatus = await deregister(c.api, victim);
  ev.deleteMs = Date.now() - ev.start;
  if (await waitUntil(async () => (await viewOf(c.view, victim)) === undefined, 10_000)) ev.goneAfterMs = Date.now() - ev.start;
  await pause(ev.start + DEREG_DOWN_MS - Date.now());
  checkInterrupted();
  const id = await register(c.api, victim);
  if (id !== victim.id) throw new Error(`registered again as ${id}, was ${victim.id}`);
  ev.reregisteredAfterMs = Date.now() - ev.start;
}

export async function churnLoop(c: ChurnCtx): Promise<void> {
  let n = 0;
  let next = Date.now() + 5_000;
  for (;;) {
    if (!(await pause(next - Date.now(), c.end))) return;
    if (Date.now() > c.lastStart) return;
    // One instance down at a time: start only when every instance is routable (so ≥ 2 of each stay up).
    if (!(await waitUntil(() => allRoutable(c.view, c.all), 30_000))) {
      if (interruption.aborted) return;
      c.skipped++;
      log('churn: skipped an event, not every instance was routable within 30 s');
      next = Date.now() + c.churnMs;
      continue;
    }
    const victim = c.victims[n % c.victims.length];
    if (!victim) return;
    const kind: ChurnKind = n % 2 === 0 ? 'kill' : 'deregister';
    const start = Date.now();
    const ev: ChurnEvent = {
      n: n + 1,
      kind,
      instance: victim.id,
      port: victim.port,
      at: Math.round((start - c.stats.t0) / 100) / 10,
      start,
      end: undefined,
      requests: 0,
      failures: 0,
      inFlightAtKill: 0,
      inFlightAtKillFailures: 0,
    };
    c.stats.events.push(ev);
    log(`churn #${ev.n}: ${kind === 'kill' ? 'kill -9' : 'DELETE'} ${victim.id} at ${ev.at} s`);
    try {
      await (kind === 'kill' ? killEvent(c, victim, ev) : deregisterEvent(c, victim, ev));
      if (await waitUntil(async () => {
        const v = await viewOf(c.view, victim);
        return v !== undefined && v.healthy && !v.ejected;
      }, RECOVER_TIMEOUT_MS)) ev.recoveredAfterMs = Date.now() - ev.start;
      else if (!interruption.aborted) ev.error = `not routable again within ${RECOVER_TIMEOUT_MS} ms`;
    } catch (err) {
      ev.error = errMessage(err);
    }
    ev.end = Date.now();
    log(`churn #${ev.n}: done${ev.recoveredAfterMs !== undefined ? `, routable again after ${ev.recoveredAfterMs} ms` : ''}${ev.error ? ` — ${ev.error}` : ''}`);
    if (interruption.aborted) return;
    n++;
    next = Math.max(start + c.churnMs, Date.now() + 1_000);
  }
}