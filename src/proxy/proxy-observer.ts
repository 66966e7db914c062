// What the data path tells about itself (metrics, access logs) through one interface; the agent implements it.

export type RequestOutcome = 'success' | 'retried' | 'failed' | 'timeout' | 'rejected' | 'aborted';

export interface RequestRecord {
  /** The service asked for, or '' when the request was refused before a service was known. */
  service: string;
  method: string;
  path: string;
  status: number;
  outcome: RequestOutcome;
  tries: number;
  instance: string | undefined;
  durationMs: number;
  requestId: string;
}

/** One request to a host that is not a catalog service (egress): plain HTTP in absolute form, or a CONNECT passthrough. */
export interface EgressRecord {
  kind: 'http' | 'connect';
  /** forwarded: answered by the host (any status) or tunnel opened; refused: by the egress policy; failed: not reached. */
  outcome: 'forwarded' | 'refused' | 'failed' | 'aborted';
  /** `host:port` as asked for: never a metric label (unbounded), only in the access log. */
  target: string;
  method: string;
  status: number;
  durationMs: number;
}

export interface ProxyObserver {
  /** Called once per request the proxy answered (or that the client abandoned). */
  request(r: RequestRecord): void;
  retry(service: string): void;
  retryBudgetExhausted(service: string): void;
  ejection(service: string, instance: string): void;
  /** Called once per egress request or tunnel (counted apart from requests to services). */
  egress(r: EgressRecord): void;
}

export const NO_OBSERVER: ProxyObserver = {
  request() {},
  egress() {},
  retry() {},
  retryBudgetExhausted() {},
  ejection() {},
};
