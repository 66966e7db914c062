// The proxy's only view of the catalog: per-service update streams (reset/add/remove) from any source.
import type { SemVer } from 'semver';

/** One instance of a service, as the proxy routes to it. */
export interface Endpoint {
  /** Consul service id: unique, stable across updates. */
  readonly id: string;
  readonly service: string;
  readonly address: string;
  readonly port: number;
  /** `Meta.version`, or '' when the instance has none (then only range-less requests reach it). */
  readonly version: string;
  /** Parsed once per catalog update; null when `version` is not semver. */
  readonly semver: SemVer | null;
  readonly node: string;
  /** Consul says every check passes. */
  readonly healthy: boolean;
  /** Carries a Tandem sidecar's mark (tag `tandem-sidecar` or Meta `tandem_api`): never proxied to. */
  readonly controlPlane?: boolean;
  /** `Meta.tandem_max_inflight`: requests one calling sidecar may have in flight to it at once. */
  readonly maxInFlight?: number;
}

export type Update =
  | { readonly kind: 'reset'; readonly endpoints: readonly Endpoint[] }
  /** Added, or changed (health, address, version): replaces the instance with the same id. */
  | { readonly kind: 'add'; readonly endpoints: readonly Endpoint[] }
  | { readonly kind: 'remove'; readonly ids: readonly string[] };

export interface Subscription {
  /** Stops this subscriber's updates; the source stops watching when nobody listens. */
  close(): void;
}

export interface SubscribeOptions {
  /** Configured by the operator and watched from start (the source may give it reserved room). */
  pinned?: boolean;
}

export interface EndpointSource {
  /**
   * Starts (or shares) a watch of `service`. The first update a subscriber gets is a `reset`, sent as
   * soon as the source has a first answer (at once when it already has one).
   */
  subscribe(service: string, onUpdate: (update: Update) => void, opts?: SubscribeOptions): Subscription;
  /**
   * Whether the catalog has `service`, told without watching it: at once when the source knows, else a
   * promise of true, false, or undefined when it could not tell within `timeoutMs` (Consul does not
   * answer). A source without it lets the routing table watch any name.
   */
  exists?(service: string, timeoutMs: number): boolean | Promise<boolean | undefined>;
  /**
   * Calls `onExists` once, when `service` is (or comes) in the catalog, without watching it by name.
   * Returns the function that cancels the wait.
   */
  whenExists?(service: string, onExists: () => void): () => void;
  /**
   * Why answers may be incomplete right now (e.g. Consul refuses the sidecar's ACL token, and Consul
   * then filters reads to empty lists instead of failing), or undefined.
   */
  problem?(): string | undefined;
}
