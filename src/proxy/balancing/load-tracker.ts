// Per-instance load as this sidecar sees it: requests in flight and a peak-sensitive EWMA of their latency (Linkerd's cost inputs).

/** How fast old latency samples fade: a sample's weight falls to 1/e after this long (Linkerd's default decay). */
export const DEFAULT_DECAY_MS = 10_000;
/**
 * Latency assumed for an instance with no sample yet. Small, so a new instance gets tried soon, but not
 * zero: a zero cost would send it every request until its first answer comes back.
 */
export const DEFAULT_RTT_MS = 1;

interface Load {
  inflight: number;
  /** Peak-EWMA of attempt latency, in ms; undefined until the first sample. */
  ewmaMs: number | undefined;
  /** When `ewmaMs` last changed (ms, performance.now() clock). */
  stamp: number;
}

export interface LoadView {
  inflight: number;
  ewmaMs: number | undefined;
  /** ewmaMs × (inflight + 1): what `least-loaded` compares (before the slow-start factor). */
  cost: number;
}

export class LoadTracker {
  readonly decayMs: number;
  #loads = new Map<string, Load>();
  #now: () => number;

  constructor(decayMs = DEFAULT_DECAY_MS, now: () => number = () => performance.now()) {
    this.decayMs = decayMs;
    this.#now = now;
  }

  inflight(id: string): number {
    return this.#loads.get(id)?.inflight ?? 0;
  }

  /**
   * Counts one request to `id` as in flight until the returned function is called (once; later calls
   * do nothing). That call records the request's latency, unless told the attempt says nothing about the
   * instance's speed (`sample: false`, e.g. the client left).
   */
  begin(id: string): (sample?: boolean) => void {
    const l = this.#get(id);
    l.inflight++;
    const started = this.#now();
    let done = false;
    return (sample = true) => {
      if (done) return;
      done = true;
      // The instance may have been forgotten meanwhile: then a fresh entry must not go negative.
      const cur = this.#loads.get(id);
      if (cur !== l) return;
      l.inflight--;
      if (sample) this.#observe(l, this.#now() - started);
      if (l.inflight === 0 && l.ewmaMs === undefined) this.#loads.delete(id);
    };
  }

  /** Feeds one latency sample directly (tests, and callers that time things themselves). */
  observe(id: string, latencyMs: number): void {
    this.#observe(this.#get(id), latencyMs);
  }

  /**
   * The latency estimate now (DEFAULT_RTT_MS before the first sample). Between samples it decays
   * towards zero by e^(−Δt/decay), as Tower's PeakEwma does: an instance shunned after a slow answer
   * becomes attractive again after a while and gets probed, instead of being avoided for good.
   */
  ewma(id: string): number {
    const l = this.#loads.get(id);
    if (l?.ewmaMs === undefined) return DEFAULT_RTT_MS;
    return l.ewmaMs * Math.exp(-Math.max(0, this.#now() - l.stamp) / this.decayMs);
  }

  /**
   * Linkerd's cost: latency estimate × (in flight + 1). The +1 makes latency count even when idle, and
   * the product makes a fast instance with a queue comparable with a slow idle one.
   */
  cost(id: string): number {
    return this.ewma(id) * (this.inflight(id) + 1);
  }

  view(id: string): LoadView {
    const l = this.#loads.get(id);
    const round = (v: number) => Math.round(v * 100) / 100;
    return { inflight: l?.inflight ?? 0, ewmaMs: l?.ewmaMs === undefined ? undefined : round(this.ewma(id)), cost: round(this.cost(id)) };
  }

  /** Instances that left: their state goes (requests still running on them release into nothing). */
  forget(ids: readonly string[]): void {
    for (const id of ids) this.#loads.delete(id);
  }

  #get(id: string): Load {
    let l = this.#loads.get(id);
    if (!l) {
      l = { inflight: 0, ewmaMs: undefined, stamp: this.#now() };
      this.#loads.set(id, l);
    }
    return l;
  }

  /**
   * Peak EWMA: a sample above the last estimate replaces it at once (a slowing instance is avoided
   * right away); one below is blended in with weight 1 − e^(−Δt/decay), Δt the time since the last
   * sample, so the estimate forgets at the same pace whatever the request rate.
   */
  #observe(l: Load, rtt: number): void {
    const now = this.#now();
    const sample = Math.max(0, rtt);
    if (l.ewmaMs === undefined || sample > l.ewmaMs) {
      l.ewmaMs = sample;
    } else {
      const w = Math.exp(-Math.max(0, now - l.stamp) / this.decayMs);
      l.ewmaMs = l.ewmaMs * w + sample * (1 - w);
    }
    l.stamp = now;
  }
}
