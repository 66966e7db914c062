// A throwaway nginx for benches: its own prefix, config, pid and logs in a temp dir (never the system config), one worker.
import { execFile } from 'node:child_process';
import { chmod, mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { Pinning } from './host-tools.ts';
import { alive, startProc, stopProc, type Proc } from './processes.ts';
import { sleep } from './run-control.ts';

export interface NginxInfo {
  path: string;
  version: string;
  /** `nginx -V` said --without-http_<name>_module: its *_temp_path directive does not exist. */
  without: Set<string>;
}

export async function nginxInfo(path: string): Promise<NginxInfo> {
  const { stderr } = await promisify(execFile)(path, ['-V']);
  const version = /nginx version: (\S+)/.exec(stderr)?.[1] ?? 'nginx';
  const without = new Set([...stderr.matchAll(/--without-http_(\w+)_module/g)].map((m) => m[1] ?? ''));
  return { path, version, without };
}

/** The parts of nginx.conf that keep it off the system: pid, logs and temp paths in `dir`, one worker. */
function nginxMain(info: NginxInfo, dir: string, http: string): string {
  const temps = [`client_body_temp_path ${dir}/tmp/body;`, `proxy_temp_path ${dir}/tmp/proxy;`];
  for (const m of ['fastcgi', 'uwsgi', 'scgi']) if (!info.without.has(m)) temps.push(`${m}_temp_path ${dir}/tmp/${m};`);
  return `# Written by the Tandem benchmark: a throwaway nginx under ${dir}, never the system config.
worker_processes 1;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  ${temps.join('\n  ')}
  keepalive_timeout 65;
  keepalive_requests 1000000;
${http}
}
`;
}

/**
 * Starts nginx with its own prefix and config in `dir` (`-p <dir> -c <conf> -e <log> -g 'daemon off;'`), the
 * `http` block's servers inside, and waits until `port` answers. On `core` when pinning.
 */
export async function startNginx(info: NginxInfo, dir: string, http: string, port: number, pin?: { pinning: Pinning; core: number }): Promise<Proc> {
  await mkdir(join(dir, 'tmp'), { recursive: true });
  // Workers run as `nobody` when started by root: they must be able to read the tree.
  await chmod(dir, 0o755);
  const conf = join(dir, 'nginx.conf');
  await writeFile(conf, nginxMain(info, dir, http));
  const args = ['-p', dir, '-c', conf, '-e', join(dir, 'error.log'), '-g', 'daemon off;'];
  const [cmd, argv] = pin ? pin.pinning.wrap(pin.core, info.path, args) : [info.path, args];
  const p = startProc(cmd, argv, { group: true });
  for (const deadline = Date.now() + 10_000; ; await sleep(50)) {
    if (!alive(p)) throw new Error(`nginx exited during start: ${p.output()} ${await readFile(join(dir, 'error.log'), 'utf8').catch(() => '')}`);
    try {
      const res = await fetch(`http://127.0.0.1:${port}/`, { signal: AbortSignal.timeout(1000) });
      await res.arrayBuffer();
      return p;
    } catch {
      // not yet
    }
    if (Date.now() > deadline) {
      await stopProc(p, 2000);
      throw new Error(`nginx did not answer on ${port} within 10 s: ${p.output()}`);
    }
  }
}
