// The soak's upstream instances (one child process each, so one can be killed with SIGKILL), their registration through the control API, and the sidecar's view of them.
import { join } from 'node:path';
import type { InstanceInfo, Tandem } from '../../src/sdk/index.ts';
import { startReadyChild, stopProc, type Proc } from '../../test/support/processes.ts';
import { ROOT, checkInterrupted, errMessage, sleep } from '../../test/support/run-control.ts';

const UPSTREAM = join(ROOT, 'test', 'support', 'upstream-child.mjs');

export type ServiceName = 'soak-a' | 'soak-b';

export interface Instance {
  service: ServiceName;
  version: string;
  port: number;
  /** What the app answers as its `name`: `<service>@<version>`. */
  label: string;
  /** The registration id (from POST /v1/services). */
  id: string;
  proc: Proc | undefined;
}

/** Starts the instance's app (test/support/upstream-child.mjs) on its port; after a SIGKILL the port may take a moment to be free. */
export async function startInstance(inst: Instance): Promise<Proc> {
  let last = '';
  for (let attempt = 1; attempt <= 20; attempt++) {
    checkInterrupted();
    try {
      return await startReadyChild(process.execPath, [UPSTREAM, String(inst.port), inst.label], `upstream ${inst.label}`, { stdin: 'ignore' });
    } catch (err) {
      last = errMessage(err);
      await sleep(250);
    }
  }
  throw new Error(`upstream ${inst.label} did not start on 127.0.0.1:${inst.port}: ${last}`);
}

export async function killInstance(inst: Instance): Promise<void> {
  if (inst.proc) await stopProc(inst.proc, 0, 'SIGKILL');
  inst.proc = undefined;
}

/** Registers it as an orchestrator would (POST /v1/services, HTTP check every second); returns the registration id. */
export async function register(api: string, inst: Instance): Promise<string> {
  const spec = { name: inst.service, version: inst.version, port: inst.port, check: { kind: 'http', path: '/health', intervalMs: 1000 } };
  const res = await fetch(`${api}/v1/services`, { method: 'POST', body: JSON.stringify(spec), headers: { 'content-type': 'application/json' }, signal: AbortSignal.timeout(10_000) });
  const text = await res.text();
  const id = res.status === 201 ? (JSON.parse(text) as { id?: unknown }).id : undefined;
  if (typeof id !== 'string') throw new Error(`POST /v1/services ${inst.label} (port ${inst.port}) answered ${res.status}: ${text.slice(0, 300)}`);
  return id;
}

/** DELETE /v1/services/:id: its status (the sidecar drains it first). */
export async function deregister(api: string, inst: Instance): Promise<number> {
  const res = await fetch(`${api}/v1/services/${encodeURIComponent(inst.id)}`, { method: 'DELETE', signal: AbortSignal.timeout(10_000) });
  const text = await res.text();
  if (res.status !== 200) throw new Error(`DELETE /v1/services/${inst.id} answered ${res.status}: ${text.slice(0, 300)}`);
  return res.status;
}

/** The instance in the sidecar's routing view, if it is there. */
export async function viewOf(view: Tandem, inst: Instance): Promise<InstanceInfo | undefined> {
  return (await view.instances(inst.service)).find((v) => v.id === inst.id);
}

/** Every instance healthy and not ejected in the sidecar's view. */
export async function allRoutable(view: Tandem, insts: readonly Instance[]): Promise<boolean> {
  for (const service of ['soak-a', 'soak-b'] as const) {
    const list = await view.instances(service);
    for (const inst of insts.filter((i) => i.service === service)) {
      const v = list.find((x) => x.id === inst.id);
      if (!v || !v.healthy || v.ejected) return false;
    }
  }
  return true;
}
