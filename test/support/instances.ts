// Waiting on a sidecar's routing view through the SDK (what an app would call): until a service has the instances a run needs.
import type { InstanceInfo, Tandem } from '../../src/sdk/index.ts';
import { checkInterrupted, sleep } from './run-control.ts';

/** Resolves with the instances once `ready` says so; fails after `timeoutMs` with the last view. */
export async function waitInstances(tandem: Tandem, service: string, ready: (list: InstanceInfo[]) => boolean, timeoutMs = 30_000): Promise<InstanceInfo[]> {
  let last: string;
  for (const deadline = Date.now() + timeoutMs; ; await sleep(100)) {
    checkInterrupted();
    try {
      const list = await tandem.instances(service);
      if (ready(list)) return list;
      last = JSON.stringify(list);
    } catch (err) {
      last = String(err);
    }
    if (Date.now() > deadline) throw new Error(`${service}: not ready within ${timeoutMs} ms; last view: ${last.slice(0, 2000)}`);
  }
}

/** `count` instances, all healthy and none ejected. */
export const allRoutable = (count: number) => (list: InstanceInfo[]): boolean => list.length === count && list.every((i) => i.healthy && !i.ejected);
