// The benchmark upstreams: fixed bodies on two (or more) ports, served by one nginx worker (the notes' reference setup) or by node:http.
import { chmod, mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { startNodeChild } from './child-server.ts';
import { BODY_BYTES, BODY_PATHS, benchBody, type BodySize } from './fixed-bodies.ts';
import { startNginx, type NginxInfo } from './nginx.ts';
import type { Proc } from './processes.ts';

const NODE_UPSTREAMS = new URL('./fixed-upstream-child.ts', import.meta.url).pathname;

/** Every port's server in one node:http child process (fixed-upstream-child.ts). */
export function startNodeUpstreams(ports: readonly number[]): Promise<Proc> {
  return startNodeChild(NODE_UPSTREAMS, ports, 'upstreams');
}

/** One nginx worker listening on every port, serving the bench bodies; static files for 1k/64k. */
export async function startNginxUpstreams(info: NginxInfo, dir: string, ports: readonly number[]): Promise<Proc> {
  const www = join(dir, 'www');
  await mkdir(www, { recursive: true });
  await chmod(www, 0o755);
  for (const [size, path] of Object.entries(BODY_PATHS) as [BodySize, string][]) {
    if (path === '/') continue;
    const file = join(www, path.slice(1));
    await writeFile(file, benchBody('static', BODY_BYTES[size]));
    await chmod(file, 0o644);
  }
  // nginx's `return` text has no escapes: the 100-byte body ends without a newline.
  const servers = ports.map(
    (port, i) => `  server {
    listen 127.0.0.1:${port} reuseport;
    default_type application/json;
    location = /1k { root ${www}; }
    location = /64k { root ${www}; }
    location / { return 200 '${benchBody(String.fromCharCode(97 + i), 100, false)}'; }
  }`,
  );
  return startNginx(info, dir, servers.join('\n'), ports[0] ?? 0);
}

/** nginx upstreams when nginx is there and wanted, else node:http ones. */
export function startFixedUpstreams(nginx: NginxInfo | undefined, dir: string, ports: readonly number[]): Promise<Proc> {
  return nginx ? startNginxUpstreams(nginx, join(dir, 'upstreams'), ports) : startNodeUpstreams(ports);
}
