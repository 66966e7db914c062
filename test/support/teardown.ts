// Always clean up: what a bench, fuzz or soak run starts is undone in reverse order at its end, whatever happened.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ConsulDevAgent } from '../../src/consul/consul-dev-agent.ts';
import { stopProc, type Proc } from './processes.ts';
import { checkInterrupted, errMessage, log } from './run-control.ts';

/** The undo steps of a run, last registered first; a failing step is logged and the others still run. */
export class Teardown {
  readonly #steps: [string, () => Promise<unknown>][] = [];
  readonly #procs: [string, Proc][] = [];

  /** `fn` runs at the end, before every step registered earlier. */
  defer(what: string, fn: () => Promise<unknown>): void {
    this.#steps.push([what, fn]);
  }

  /** A started process: stopped at the end (SIGTERM, SIGKILL after `graceMs`); the tail of its output is logged if the run fails. */
  proc<T extends Proc>(what: string, p: T, graceMs: number): T {
    this.#procs.push([what, p]);
    this.defer(`stop ${what}`, () => stopProc(p, graceMs));
    return p;
  }

  /** A Consul dev agent for the run (deploy/consul/install.sh provides consul), stopped at its end. */
  async consulAgent(): Promise<ConsulDevAgent> {
    const agent = new ConsulDevAgent();
    this.defer('stop consul', () => agent.stop());
    log('starting a Consul dev agent');
    await agent.start();
    checkInterrupted();
    return agent;
  }

  /** A temp dir for the run (state dirs, configs, logs), removed at its end. */
  async tempDir(prefix: string): Promise<string> {
    const dir = await mkdtemp(join(tmpdir(), prefix));
    this.defer('remove the temp dir', () => rm(dir, { recursive: true, force: true }));
    return dir;
  }

  logOutputs(): void {
    for (const [what, p] of this.#procs) if (p.output().trim()) log(`${what} output (tail):\n${p.output().trim().slice(-5000)}`);
  }

  async run(): Promise<void> {
    for (const [what, fn] of this.#steps.splice(0).reverse()) {
      const t = Date.now();
      try {
        await fn();
        if (Date.now() - t > 5000) log(`cleanup: ${what} took ${((Date.now() - t) / 1000).toFixed(1)} s`);
      } catch (err) {
        log(`cleanup: ${what} failed: ${errMessage(err)}`);
      }
    }
  }
}

/** Runs `work`, then its teardown (also on an error or an interruption, after logging what the processes wrote). */
export async function withTeardown<T>(work: (t: Teardown) => Promise<T>): Promise<T> {
  const t = new Teardown();
  try {
    return await work(t);
  } catch (err) {
    t.logOutputs();
    throw err;
  } finally {
    log('cleaning up');
    await t.run();
  }
}
