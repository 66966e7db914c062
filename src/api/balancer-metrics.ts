// Prometheus metrics of instance picking: picks by balancer, queue waits, overload rejections, sticky moves by reason.
import { Counter, Histogram, type Registry } from 'prom-client';
import { HotCounter, type HotCount } from './hot-metrics.ts';
import type { BalancerEvents, BalancerKind, MoveReason } from '../proxy/balancing/balancer.ts';

/** Labels stay bounded: `service` is a watched service (≤ watch.maxServices), the rest are fixed sets. */
export function balancerMetrics(registry: Registry): BalancerEvents {
  const registers = [registry];
  const picks = new HotCounter({ name: 'tandem_proxy_picks_total', help: 'Instances picked for a try, by balancer (round-robin, least-loaded, sticky)', labelNames: ['service', 'balancer'], registers });
  const queue = new Histogram({
    name: 'tandem_proxy_queue_seconds',
    help: 'Time requests waited for an instance below its maxInFlight (admitted or not)',
    labelNames: ['service'],
    buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
    registers,
  });
  const overloaded = new Counter({ name: 'tandem_proxy_overloaded_total', help: 'Requests answered 503 TANDEM_ERR_OVERLOADED: every instance full and the queue full or timed out', labelNames: ['service'], registers });
  const moves = new Counter({ name: 'tandem_proxy_sticky_moves_total', help: 'Sticky requests not served by their ring owner, by reason (unavailable, load, full)', labelNames: ['service', 'reason'], registers });
  const pickCounts = new Map<string, Map<string, HotCount>>();
  return {
    picked: (service: string, balancer: BalancerKind | 'sticky') => {
      // Once per try: a plain number found by two lookups, read when Prometheus scrapes.
      let byKind = pickCounts.get(service);
      if (!byKind) {
        byKind = new Map();
        pickCounts.set(service, byKind);
      }
      let c = byKind.get(balancer);
      if (!c) {
        c = picks.child(service, balancer);
        byKind.set(balancer, c);
      }
      c.n++;
    },
    queued: (service: string, waitedMs: number) => queue.labels(service).observe(waitedMs / 1000),
    overloaded: (service: string) => overloaded.labels(service).inc(),
    stickyMoved: (service: string, reason: MoveReason) => moves.labels(service, reason).inc(),
  };
}
