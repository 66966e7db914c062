// Slow start and flap damping: remembers when each instance last became healthy and how often it flapped.
import type { EndpointSet } from '../endpoint-set.ts';

export interface HealthTrackerOptions {
  /** A newly healthy instance's share of traffic ramps from ~0 to full over this window; 0 = off. */
  slowStartMs: number;
  /** This many passing→critical transitions within `flapWindowMs` make an instance a flapper. */
  flapThreshold: number;
  flapWindowMs: number;
  /** A flapper is held out until it has stayed healthy this long. */
  flapHoldMs: number;
}

interface History {
  healthySince: number;
  /** When it went passing → critical, most recent last, pruned to the flap window. */
  drops: number[];
}

export class HealthTracker {
  readonly options: HealthTrackerOptions;
  #history = new Map<string, History>();

  constructor(options: HealthTrackerOptions) {
    this.options = options;
  }

  /**
   * Feeds one set change. Instances present in the first view of a service are not "new": a sidecar
   * (re)starting must not slow-start a whole healthy fleet.
   */
  observe(prev: EndpointSet | undefined, next: EndpointSet, now = Date.now()): void {
    if (!prev) return;
    for (const e of next.all) {
      const before = prev.byId.get(e.id);
      const wasHealthy = before?.healthy ?? false;
      if (e.healthy && !wasHealthy) {
        const h = this.#history.get(e.id) ?? { healthySince: now, drops: [] };
        h.healthySince = now;
        this.#history.set(e.id, h);
      } else if (!e.healthy && wasHealthy) {
        const h = this.#history.get(e.id) ?? { healthySince: 0, drops: [] };
        h.drops.push(now);
        const cutoff = now - this.options.flapWindowMs;
        while (h.drops.length > 0 && (h.drops[0] as number) < cutoff) h.drops.shift();
        this.#history.set(e.id, h);
      }
    }
    for (const e of prev.all) if (!next.byId.has(e.id)) this.#history.delete(e.id);
  }

  /**
   * The instance's share of traffic now: 0 = held out (flapping), between 0 and 1 = slow start, 1 = full.
   */
  weight(id: string, now = Date.now()): number {
    const h = this.#history.get(id);
    if (!h) return 1;
    const since = now - h.healthySince;
    const recentDrops = h.drops.filter((t) => t >= now - this.options.flapWindowMs).length;
    if (recentDrops >= this.options.flapThreshold && since < this.options.flapHoldMs) return 0;
    if (this.options.slowStartMs <= 0 || since >= this.options.slowStartMs) {
      if (h.drops.length === 0 || since >= this.options.flapHoldMs) this.#history.delete(id);
      return 1;
    }
    // Never exactly 0: a lone new instance must still get some traffic.
    return Math.max(0.05, since / this.options.slowStartMs);
  }

  view(id: string, now = Date.now()): { slowStart: boolean; flapping: boolean } {
    const w = this.weight(id, now);
    return { slowStart: w > 0 && w < 1, flapping: w === 0 };
  }
}
