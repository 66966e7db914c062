// `npm test`: lint, type check, build, unit and integration tests, side by side where they are independent.
// Every integration file starts its own Consul dev agent and sidecars on free loopback ports (test/support),
// so files can run in parallel; what limits that is the CPU (2 cores on the machines this runs on) and
// the tests that measure speed. So:
// - the build first (every test needs dist/, and on its own it ends sooner); then the unit tests two files
//   at a time, and FILES_AT_ONCE integration files at a time: first the CPU-bound ones (BUSY), then those
//   that wait on real timers and Consul most of the time;
// - the files whose assertions measure latency, throughput or load shares (TIMED) run one at a time once
//   the unit tests and the BUSY files have ended, beside waiting files only: our own parallelism does not
//   decide whether they pass;
// - lint and the type check (pure CPU, no timing) run after the build at the lowest CPU priority: they use
//   the CPU the tests leave idle (the TIMED files mostly wait) and delay none. Once the tests are done
//   they get normal priority back, where the system allows it (on a machine others load too, they may
//   have been starved until then).
// The build skips type checking (`--noCheck`: the same output, in half the time) because the type check
// runs beside it on everything, src included; `npm ci` (prepare) builds with the checks. Each step's
// output is printed when it ends; the exit status is 1 if any step failed.
import { spawn } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { constants, setPriority } from 'node:os';
import { fileURLToPath } from 'node:url';

const FILES_AT_ONCE = 3;
/** CPU-bound most of the time they run (user+sys over wall time above 1/2, measured alone), the longest first. */
const BUSY = ['lineage', 'lifecycle', 'cli', 'observability', 'consul-budget', 'trust'];
/** Assert latency, throughput or load shares (dev-command: a process start under 5 s); the longest first. */
const TIMED = ['proxy', 'sdk', 'load-balancing', 'dev-command', 'discovery'];
/** The rest wait most of the time; these, the longest, start first (then name order). */
const LONGEST = ['cluster', 'datapath', 'cluster-acl', 'registration'];

const root = fileURLToPath(new URL('../', import.meta.url));
const bin = (tool: string) => `node_modules/.bin/${tool}`;
const testFiles = (dir: string) => readdirSync(new URL(dir, new URL('../', import.meta.url))).filter((f) => f.endsWith('.test.ts')).map((f) => `${dir}${f}`);
const nodeTest = (concurrency: number, paths: string[]) => [process.execPath, '--import', 'tsx', '--test', `--test-concurrency=${concurrency}`, ...paths];
const nameOf = (path: string) => path.replace(/^.*\//, '').replace(/\.test\.ts$/, '');
const rank = (path: string, order: string[]) => (order.includes(nameOf(path)) ? order.indexOf(nameOf(path)) : order.length);
const inOrder = (paths: string[], order: string[]) => [...paths].sort((a, b) => rank(a, order) - rank(b, order) || a.localeCompare(b));

interface Outcome {
  name: string;
  ok: boolean;
  ms: number;
}

/** Processes at the lowest CPU priority until the tests are done. */
const background = new Set<number>();
const renice = (pid: number, priority: number) => {
  try {
    setPriority(pid, priority);
  } catch {
    // Not allowed here (raising a priority back may need privileges): it stays as it is.
  }
};

/** Runs one command, buffering its output, and prints that output under a header when it ends. */
function run(name: string, command: string[], low = false): Promise<Outcome> {
  const t0 = performance.now();
  return new Promise((resolve) => {
    const [cmd, ...args] = command as [string, ...string[]];
    const child = spawn(cmd, args, { cwd: root, stdio: ['ignore', 'pipe', 'pipe'] });
    const pid = child.pid;
    if (low && pid !== undefined) {
      renice(pid, constants.priority.PRIORITY_LOW);
      background.add(pid);
      child.once('exit', () => background.delete(pid));
    }
    const out: Buffer[] = [];
    child.stdout.on('data', (d: Buffer) => out.push(d));
    child.stderr.on('data', (d: Buffer) => out.push(d));
    const done = (ok: boolean, note = '') => {
      const ms = performance.now() - t0;
      process.stdout.write(`\n=== ${name}: ${ok ? 'ok' : 'FAILED'} in ${(ms / 1000).toFixed(1)} s${note} (${command.join(' ')})\n`);
      process.stdout.write(Buffer.concat(out));
      resolve({ name, ok, ms });
    };
    child.once('error', (err) => done(false, `: ${err.message}`));
    child.once('close', (code, signal) => done(code === 0, code === 0 ? '' : `: exit ${code ?? signal}`));
  });
}

/** Runs the files `width` at a time, in the order given; each file's outcome as it ends. */
function pool(paths: string[], width: number): Map<string, Promise<Outcome>> {
  const queue = paths.map((path) => {
    let settle = (_: Outcome) => undefined as void;
    const outcome = new Promise<Outcome>((r) => (settle = r));
    return { path, outcome, settle };
  });
  const pending = [...queue];
  const worker = async () => {
    for (let job = pending.shift(); job; job = pending.shift()) job.settle(await run(job.path, nodeTest(1, [job.path])));
  };
  for (let i = 0; i < width; i++) void worker();
  return new Map(queue.map((j) => [j.path, j.outcome]));
}

/** Runs the files one after the other once `after` has settled. */
async function chain(paths: string[], after: Promise<unknown>): Promise<Outcome[]> {
  await after;
  const outcomes: Outcome[] = [];
  for (const path of paths) outcomes.push(await run(path, nodeTest(1, [path])));
  return outcomes;
}

const notRun = (name: string): Outcome => ({ name, ok: false, ms: 0 });
const t0 = performance.now();
const integration = testFiles('test/integration/');
const busy = inOrder(integration.filter((p) => BUSY.includes(nameOf(p))), BUSY);
const timed = inOrder(integration.filter((p) => TIMED.includes(nameOf(p))), TIMED);
const waiting = inOrder(integration.filter((p) => !BUSY.includes(nameOf(p)) && !TIMED.includes(nameOf(p))), LONGEST);

const build = await run('build', [bin('tsc'), '-p', 'tsconfig.build.json', '--noCheck']);
const checks = [run('lint', [bin('eslint'), '.'], true), run('typecheck', [bin('tsc'), '-p', 'tsconfig.json', '--noEmit'], true)];
let tests: Outcome[];
if (build.ok) {
  // The SDK package test and the integration tests' child processes (bin/tandem.js, the SDK apps) use dist/.
  const unit = run('test/unit', nodeTest(2, testFiles('test/unit/')));
  const files = pool([...busy, ...waiting], FILES_AT_ONCE);
  const timedOutcomes = chain(timed, Promise.all([unit, ...busy.map((p) => files.get(p))]));
  tests = [await unit, ...(await Promise.all(files.values())), ...(await timedOutcomes)];
} else {
  tests = [notRun('test/unit'), ...integration.map(notRun)];
}
for (const pid of background) renice(pid, constants.priority.PRIORITY_NORMAL);
const outcomes = [build, ...(await Promise.all(checks)), ...tests];

const seconds = (o: Outcome) => (o.ms ? `${(o.ms / 1000).toFixed(1)} s` : 'not run');
process.stdout.write(`\n=== npm test in ${((performance.now() - t0) / 1000).toFixed(1)} s: ${outcomes.map((o) => `${o.name.replace(/^test\/|\.test\.ts$/g, '')} ${seconds(o)}`).join(', ')}\n`);
const failed = outcomes.filter((o) => !o.ok);
if (failed.length > 0) {
  process.stdout.write(`=== FAILED: ${failed.map((o) => o.name).join(', ')}\n`);
  process.exitCode = 1;
}
