// Counters and histograms for the data path: plain numbers bumped per request, turned into prom-client metrics at scrape time.
import type { Registry } from 'prom-client';

type Labels = Record<string, string>;

/** What prom-client's registry asks of a metric (its own classes do more per observation than a request's framing). */
interface ScrapedMetric {
  name: string;
  help: string;
  type: 'counter' | 'histogram';
  aggregator: 'sum';
  get(): { name: string; help: string; type: string; aggregator: 'sum'; values: { labels: Labels; value: number; metricName?: string }[] };
  reset(): void;
}

/** One label set's count: `n++` on the hot path. */
export interface HotCount {
  n: number;
}

/** A counter whose children are plain objects; values are read when Prometheus scrapes. */
export class HotCounter implements ScrapedMetric {
  readonly type = 'counter' as const;
  readonly aggregator = 'sum' as const;
  readonly name: string;
  readonly help: string;
  #names: readonly string[];
  #children = new Map<string, { labels: Labels; c: HotCount }>();

  constructor(o: { name: string; help: string; labelNames: readonly string[]; registers: readonly Registry[] }) {
    this.name = o.name;
    this.help = o.help;
    this.#names = o.labelNames;
    for (const r of o.registers) r.registerMetric(this as never);
  }

  /** The count for these label values (in `labelNames` order); keep it: looking it up costs more than counting. */
  child(...values: string[]): HotCount {
    const key = values.join('\u0000');
    let e = this.#children.get(key);
    if (!e) {
      const labels: Labels = {};
      this.#names.forEach((n, i) => (labels[n] = values[i] ?? ''));
      e = { labels, c: { n: 0 } };
      this.#children.set(key, e);
    }
    return e.c;
  }

  get(): ReturnType<ScrapedMetric['get']> {
    return { name: this.name, help: this.help, type: this.type, aggregator: this.aggregator, values: [...this.#children.values()].map((e) => ({ labels: e.labels, value: e.c.n })) };
  }

  reset(): void {
    for (const e of this.#children.values()) e.c.n = 0;
  }
}

/** One label set's histogram: `observe(v)` finds a bucket and bumps two numbers. */
export class HotBuckets {
  readonly counts: Float64Array;
  sum = 0;
  count = 0;
  #bounds: readonly number[];

  constructor(bounds: readonly number[]) {
    this.#bounds = bounds;
    this.counts = new Float64Array(bounds.length);
  }

  observe(v: number): void {
    const b = this.#bounds;
    let i = 0;
    while (i < b.length && v > (b[i] as number)) i++;
    if (i < b.length) this.counts[i] = (this.counts[i] as number) + 1;
    this.sum += v;
    this.count++;
  }
}

export class HotHistogram implements ScrapedMetric {
  readonly type = 'histogram' as const;
  readonly aggregator = 'sum' as const;
  readonly name: string;
  readonly help: string;
  #label: string;
  #bounds: readonly number[];
  #children = new Map<string, HotBuckets>();

  constructor(o: { name: string; help: string; labelName: string; buckets: readonly number[]; registers: readonly Registry[] }) {
    this.name = o.name;
    this.help = o.help;
    this.#label = o.labelName;
    this.#bounds = o.buckets;
    for (const r of o.registers) r.registerMetric(this as never);
  }

  child(value: string): HotBuckets {
    let h = this.#children.get(value);
    if (!h) {
      h = new HotBuckets(this.#bounds);
      this.#children.set(value, h);
    }
    return h;
  }

  get(): ReturnType<ScrapedMetric['get']> {
    const values: { labels: Labels; value: number; metricName?: string }[] = [];
    for (const [v, h] of this.#children) {
      let cumulative = 0;
      this.#bounds.forEach((le, i) => {
        cumulative += h.counts[i] as number;
        values.push({ labels: { [this.#label]: v, le: String(le) }, value: cumulative, metricName: `${this.name}_bucket` });
      });
      values.push({ labels: { [this.#label]: v, le: '+Inf' }, value: h.count, metricName: `${this.name}_bucket` });
      values.push({ labels: { [this.#label]: v }, value: h.sum, metricName: `${this.name}_sum` });
      values.push({ labels: { [this.#label]: v }, value: h.count, metricName: `${this.name}_count` });
    }
    return { name: this.name, help: this.help, type: this.type, aggregator: this.aggregator, values };
  }

  reset(): void {
    this.#children.clear();
  }
}
