// The reference proxies the benches put beside Tandem: nginx (the reference local proxy), the bare node:http + undici
// proxy (the floor of a Node proxy) and Tandem's engine alone (the floor of Tandem's own data path). Each one: how to
// start it, its URL, its processes; a new row is one more starter here (and one line in bench/run.ts).
import { join } from 'node:path';
import { startNodeChild } from '../test/support/child-server.ts';
import type { Pinning } from '../test/support/host-tools.ts';
import { startNginx, type NginxInfo } from '../test/support/nginx.ts';
import { processTree } from '../test/support/proc-stats.ts';
import type { Proc } from '../test/support/processes.ts';

export interface ReferenceProxy {
  /** The scenario target, e.g. 'nginx'. */
  key: string;
  label: string;
  port: number;
  proc: Proc;
  /** Every process whose CPU counts as the proxy's. */
  pids(): Promise<number[]>;
}

/** Where each proxy under test runs. */
export interface ProxyPlace {
  port: number;
  upstreams: readonly number[];
  pinning: Pinning;
  core: number;
}

/** nginx with one worker, upstream keep-alive, `/bench/<rest>` → `/<rest>` round-robin like Tandem. */
export async function startNginxProxy(info: NginxInfo, dir: string, at: ProxyPlace): Promise<ReferenceProxy> {
  const http = `  upstream bench_up {
    ${at.upstreams.map((p) => `server 127.0.0.1:${p};`).join('\n    ')}
    keepalive 64;
    keepalive_requests 1000000;
  }
  server {
    listen 127.0.0.1:${at.port};
    location = / { return 200 'nginx proxy'; }
    location /bench/ {
      proxy_pass http://bench_up/;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffer_size 16k;
      proxy_buffers 16 16k;
      proxy_max_temp_file_size 0;
    }
  }`;
  const proc = await startNginx(info, join(dir, 'nginx-proxy'), http, at.port, { pinning: at.pinning, core: at.core });
  return { key: 'nginx', label: 'nginx (1 worker, keep-alive)', port: at.port, proc, pids: () => processTree(proc.pid) };
}

/** bench/bare-proxy.ts: node:http + undici Pool.dispatch, nothing else. */
export async function startBareProxy(at: ProxyPlace, nodeArgs: readonly string[] = []): Promise<ReferenceProxy> {
  const script = new URL('./bare-proxy.ts', import.meta.url).pathname;
  const proc = await startNodeChild(script, [at.port, ...at.upstreams], 'the bare proxy', { pinning: at.pinning, core: at.core, nodeArgs });
  return { key: 'bare', label: 'bare node:http + undici (floor)', port: at.port, proc, pids: async () => [proc.pid] };
}

/** bench/engine-floor.mjs: Tandem's engine with nothing but framing; plain node over dist/ (tsx would slow its parser). */
export async function startEngineFloor(at: ProxyPlace, nodeArgs: readonly string[] = []): Promise<ReferenceProxy> {
  const script = new URL('./engine-floor.mjs', import.meta.url).pathname;
  const proc = await startNodeChild(script, [at.port, ...at.upstreams], 'the engine floor', { pinning: at.pinning, core: at.core, tsx: false, nodeArgs });
  return { key: 'floor', label: "Tandem's engine alone (floor)", port: at.port, proc, pids: async () => [proc.pid] };
}
