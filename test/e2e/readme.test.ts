// Every shell and TypeScript snippet in the README runs as written against `npm start` (tandem dev on the default ports).
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { eventually } from '../support/consul.ts';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const README = readFileSync(join(ROOT, 'README.md'), 'utf8');

interface Snippet {
  lang: 'sh' | 'ts';
  line: number;
  code: string;
  skip: string | undefined;
}

/** Fenced ```sh and ```ts blocks; a `<!-- readme-check: skip REASON -->` line right above one skips it (only the set-up commands). */
function snippets(): Snippet[] {
  const out: Snippet[] = [];
  const lines = README.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const m = /^```(sh|ts)\s*$/.exec(lines[i] ?? '');
    if (!m) continue;
    const skip = /^<!-- readme-check: skip (.+) -->$/.exec(lines[i - 1] ?? '')?.[1];
    const start = i;
    const body: string[] = [];
    for (i++; i < lines.length && lines[i] !== '```'; i++) body.push(lines[i] ?? '');
    out.push({ lang: m[1] as 'sh' | 'ts', line: start + 1, code: body.join('\n'), skip });
  }
  return out;
}

function portFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = createServer();
    s.once('error', () => resolve(false));
    s.listen(port, '127.0.0.1', () => s.close(() => resolve(true)));
  });
}

/** Runs a command in its own process group; resolves with its exit code and output, killing the whole group after it ends (background jobs too). */
function runGroup(cmd: string, args: string[], timeoutMs: number, cwd: string): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { cwd, detached: true, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, PATH: `${join(ROOT, 'node_modules', '.bin')}:${process.env['PATH'] ?? ''}` } });
    let out = '';
    child.stdout?.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr?.on('data', (d: Buffer) => (out += d.toString()));
    const timer = setTimeout(() => {
      out += `\n[timed out after ${timeoutMs} ms]`;
      kill(child);
    }, timeoutMs);
    child.once('exit', (code) => {
      clearTimeout(timer);
      kill(child);
      resolve({ code, out });
    });
  });
}

function kill(child: ChildProcess): void {
  try {
    if (child.pid) process.kill(-child.pid, 'SIGTERM');
  } catch {
    // already gone
  }
}

let dev: ChildProcess | undefined;
let devOut = '';

before(async () => {
  for (const port of [8500, 8600, 7700, 7701]) assert.ok(await portFree(port), `port ${port} is in use: the README's snippets use the default ports, so run this test where they are free`);
  // `npm start` is `node bin/tandem.js dev`.
  dev = spawn(process.execPath, [join(ROOT, 'bin', 'tandem.js'), 'dev'], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  dev.stdout?.on('data', (d: Buffer) => (devOut += d.toString()));
  dev.stderr?.on('data', (d: Buffer) => (devOut += d.toString()));
  await eventually(() => devOut.includes('Tandem is running'), `npm start to be running (output so far: ${devOut.slice(-500)})`, 90_000);
  // Both demo greeters routable.
  await eventually(async () => (await fetch('http://127.0.0.1:7700/greeter@2/hello')).status === 200 && (await fetch('http://127.0.0.1:7700/greeter@^1/hello')).status === 200, 'the demo greeters', 30_000);
}, { timeout: 120_000 });

after(async () => {
  if (dev && dev.exitCode === null) {
    dev.kill('SIGTERM');
    await new Promise((r) => dev?.once('exit', r));
  }
});

for (const s of snippets()) {
  test(`README line ${s.line}: \`\`\`${s.lang} snippet runs`, { timeout: 120_000 }, async (t) => {
    if (s.skip) return t.skip(s.skip);
    const dir = await mkdtemp(join(ROOT, '.readme-check-'));
    try {
      if (s.lang === 'sh') {
        const r = await runGroup('sh', ['-e', '-c', s.code], 60_000, ROOT);
        assert.equal(r.code, 0, `snippet at README line ${s.line} failed:\n${s.code}\n--- output ---\n${r.out}`);
        assert.doesNotMatch(r.out, /"code":"TANDEM_ERR_/, `snippet at README line ${s.line} got a Tandem error:\n${r.out}`);
      } else {
        // Inside the checkout, so `tandem/sdk` resolves to this package (self-reference through "exports").
        const file = join(dir, 'snippet.ts');
        await writeFile(file, `${s.code}\n`);
        const r = await runGroup(process.execPath, ['--import', 'tsx', file], 60_000, ROOT);
        assert.equal(r.code, 0, `snippet at README line ${s.line} did not exit 0 by itself:\n${s.code}\n--- output ---\n${r.out}`);
      }
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
}
