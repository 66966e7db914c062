// Test helper: a throwaway Consul dev agent per test file, and small readers of its HTTP API.
import { after, before } from 'node:test';
import { ConsulDevAgent, type DevAgentOptions } from '../../src/consul/consul-dev-agent.ts';

/** Starts a dev agent before the file's tests and always stops it after them. */
export function useConsul(opts: DevAgentOptions = {}): ConsulDevAgent {
  const agent = new ConsulDevAgent(opts);
  before(() => agent.start(), { timeout: 120_000 });
  after(() => agent.stop());
  return agent;
}

export interface HealthRow {
  Service: { ID: string; Service: string; Tags: string[]; Meta: Record<string, string>; Port: number; Address: string };
  Checks: { CheckID: string; Name: string; Status: string; ServiceID: string; Output: string }[];
}

export async function consulGet<T>(agent: ConsulDevAgent, path: string, token?: string): Promise<T> {
  const res = await fetch(`${agent.address}${path}`, { headers: token ? { 'x-consul-token': token } : {} });
  if (!res.ok) throw new Error(`GET ${path}: ${res.status} ${await res.text()}`);
  return (await res.json()) as T;
}

export function healthOf(agent: ConsulDevAgent, name: string, passing = true): Promise<HealthRow[]> {
  return consulGet<HealthRow[]>(agent, `/v1/health/service/${name}${passing ? '?passing' : ''}`);
}

export async function agentServiceIds(agent: ConsulDevAgent): Promise<string[]> {
  return Object.keys(await consulGet<Record<string, unknown>>(agent, '/v1/agent/services')).sort();
}

/** Polls `fn` until it returns a truthy value; fails with `what` after `timeoutMs`. */
export async function eventually<T>(fn: () => Promise<T | undefined | false> | T | undefined | false, what: string, timeoutMs = 15_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last ? ` (last error: ${String(last)})` : ''}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}
