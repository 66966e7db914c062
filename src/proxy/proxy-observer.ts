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

export interface ProxyObserver {
  /** Called once per request the proxy answered (or that the client abandoned). */
  request(r: RequestRecord): void;
  retry(service: string): void;
  retryBudgetExhausted(service: string): void;
  ejection(service: string, instance: string): void;
}

export const NO_OBSERVER: ProxyObserver = {
  request() {},
  retry() {},
  retryBudgetExhausted() {},
  ejection() {},
};
