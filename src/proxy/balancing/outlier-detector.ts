// Passive outlier ejection: consecutive failures eject an instance for a growing, capped time.
import type { Endpoint } from '../endpoint-source.ts';

export type Outcome = 'success' | 'failure';

export interface OutlierOptions {
  /** Consecutive failures that eject an instance. */
  consecutiveFailures: number;
  baseEjectionMs: number;
  maxEjectionMs: number;
  /** Never treat more than this share of a subset as ejected: beyond it, ejection is ignored (panic mode). */
  maxEjectionShare: number;
}

interface State {
  failures: number;
  ejections: number;
  ejectedUntil: number;
}

export interface EjectionView {
  ejected: boolean;
  ejectedUntil?: number;
  consecutiveFailures: number;
}

export class OutlierDetector {
  readonly options: OutlierOptions;
  #states = new Map<string, State>();

  constructor(options: OutlierOptions) {
    this.options = options;
  }

  /** The one feedback path from the forwarder. True when this report ejected the instance. */
  report(endpoint: Endpoint, outcome: Outcome, now = Date.now()): boolean {
    let s = this.#states.get(endpoint.id);
    if (outcome === 'success') {
      if (s) {
        s.failures = 0;
        // A success after the ejection ran out means it recovered: the next ejection starts short again.
        if (s.ejectedUntil <= now) this.#states.delete(endpoint.id);
      }
      return false;
    }
    if (!s) {
      s = { failures: 0, ejections: 0, ejectedUntil: 0 };
      this.#states.set(endpoint.id, s);
    }
    s.failures++;
    if (s.failures >= this.options.consecutiveFailures && s.ejectedUntil <= now) {
      const ms = Math.min(this.options.baseEjectionMs * 2 ** s.ejections, this.options.maxEjectionMs);
      s.ejections++;
      s.ejectedUntil = now + ms;
      s.failures = 0;
      return true;
    }
    return false;
  }

  isEjected(id: string, now = Date.now()): boolean {
    const s = this.#states.get(id);
    return s !== undefined && s.ejectedUntil > now;
  }

  /** True when ejection may be applied to `endpoints` (false = too many ejected: panic mode, ignore it). */
  ejectionAllowed(endpoints: readonly Endpoint[], now = Date.now()): boolean {
    if (this.#states.size === 0) return true;
    let ejected = 0;
    for (const e of endpoints) if (this.isEjected(e.id, now)) ejected++;
    return ejected <= Math.floor(endpoints.length * this.options.maxEjectionShare);
  }

  view(id: string, now = Date.now()): EjectionView {
    const s = this.#states.get(id);
    if (!s) return { ejected: false, consecutiveFailures: 0 };
    return s.ejectedUntil > now ? { ejected: true, ejectedUntil: s.ejectedUntil, consecutiveFailures: s.failures } : { ejected: false, consecutiveFailures: s.failures };
  }

  /** Drops state of instances that left the catalog. */
  forget(ids: Iterable<string>): void {
    for (const id of ids) this.#states.delete(id);
  }
}
