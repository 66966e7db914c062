// Latency (and other) distributions for benches and soak, on hdr-histogram-js: percentiles to 3 significant digits in constant memory, however many samples.
import { build, type Histogram } from 'hdr-histogram-js';

export interface DistributionSummary {
  n: number;
  p50: number;
  p99: number;
  max: number;
  mean: number;
}

/**
 * Values recorded at a fixed resolution: `resolution` 1000 keeps milliseconds to the microsecond (latencies,
 * the default), 1 keeps whole counts. Reads come back in the recorded unit; an empty one reads NaN.
 */
export class Distribution {
  readonly #h: Histogram = build({ numberOfSignificantValueDigits: 3 });
  readonly #resolution: number;

  constructor(resolution = 1000) {
    this.#resolution = resolution;
  }

  /** Every value of `values`, recorded into a new distribution. */
  static of(values: Iterable<number>, resolution = 1000): Distribution {
    const d = new Distribution(resolution);
    for (const v of values) d.record(v);
    return d;
  }

  record(value: number): void {
    if (Number.isFinite(value)) this.#h.recordValue(Math.max(0, Math.round(value * this.#resolution)));
  }

  get count(): number {
    return this.#h.totalCount;
  }

  percentile(p: number): number {
    // A bucket's highest equivalent value can pass the largest recorded value: never report more than the max.
    return this.count === 0 ? Number.NaN : Math.min(this.#h.getValueAtPercentile(p), this.#h.maxValue) / this.#resolution;
  }

  get max(): number {
    return this.count === 0 ? Number.NaN : this.#h.maxValue / this.#resolution;
  }

  get mean(): number {
    return this.count === 0 ? Number.NaN : this.#h.mean / this.#resolution;
  }

  summary(): DistributionSummary {
    return { n: this.count, p50: this.percentile(50), p99: this.percentile(99), max: this.max, mean: this.mean };
  }

  /** Empties it (e.g. for the next interval of a time series). */
  reset(): void {
    this.#h.reset();
  }
}
