// The cluster directory (comrade's getMembers): every instance in the catalog with version, node, health and drain reason.
import type { Member } from '../protocol/wire.ts';
import type { ConsulClient } from '../consul/consul-client.ts';

export interface MemberFilter {
  service?: string | undefined;
  node?: string | undefined;
  health?: Member['health'] | undefined;
}

/** Reads the directory from Consul with non-blocking reads (one per service listed). */
export class Directory {
  #consul: ConsulClient;

  constructor(consul: ConsulClient) {
    this.#consul = consul;
  }

  async members(filter: MemberFilter = {}): Promise<Member[]> {
    const names = filter.service ? [filter.service] : (await this.#consul.catalogServices()).value.filter((s) => s !== 'consul');
    const members: Member[] = [];
    for (const name of names) {
      const { value } = await this.#consul.healthService(name, { index: 0, waitMs: 0, passing: false });
      for (const e of value) {
        // Maintenance (a drain, or an operator's) shows as its own health, with its reason.
        const maintenance = e.checks.find((c) => c.checkId.startsWith('_service_maintenance') || c.checkId === '_node_maintenance');
        const m: Member = {
          service: e.name,
          id: e.id,
          version: e.meta['version'] ?? '',
          node: e.node,
          address: e.address,
          port: e.port,
          health: maintenance ? 'maintenance' : e.status,
        };
        if (maintenance?.notes) m.reason = maintenance.notes;
        if (e.meta['tandem_sidecar']) m.sidecar = e.meta['tandem_sidecar'];
        members.push(m);
      }
    }
    return members
      .filter((m) => (!filter.node || m.node === filter.node) && (!filter.health || m.health === filter.health))
      .sort((x, y) => (x.service + x.id < y.service + y.id ? -1 : 1));
  }
}
