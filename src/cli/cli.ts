// The `tandem` command line: `start` runs the sidecar, `dev` runs a whole local setup; errors print one line.
import { FLAGS, loadConfig } from '../config/config.ts';
import { TandemError } from '../common/errors.ts';
import { OPERATOR_USAGE, runOperator } from './cli-client.ts';
import { Sidecar } from '../sidecar.ts';
import { TANDEM_VERSION } from '../common/version.ts';

const USAGE = `tandem ${TANDEM_VERSION} - a sidecar for Node.js services on Consul

Usage:
  tandem start [flags]   run the sidecar (registration, routing proxy, control API)
  tandem dev [flags]     run a Consul dev agent (UI, DNS), a sidecar and demo services (Ctrl-C stops all)
  tandem --version       print the version
  tandem <command> --help

Run 'tandem start --help' for every flag.

${OPERATOR_USAGE}`;

function startUsage(): string {
  const width = Math.max(...FLAGS.map((f) => `${f.flag} ${f.arg}`.length));
  const lines = FLAGS.map((f) => `  ${`${f.flag} ${f.arg}`.padEnd(width)}  ${f.help}`);
  return `Usage: tandem start [flags]

Runs the sidecar. Settings come from defaults < config file < environment < flags.

Flags:
${lines.join('\n')}
  ${'--help'.padEnd(width)}  show this help
`;
}

/** Runs the CLI; resolves with the exit code once the command is done. */
export async function main(argv: readonly string[]): Promise<number> {
  const [command, ...rest] = argv;
  if (command === undefined || command === '--help' || command === '-h' || command === 'help') {
    process.stdout.write(USAGE);
    return command === undefined ? 2 : 0;
  }
  if (command === '--version' || command === '-v') {
    process.stdout.write(`${TANDEM_VERSION}\n`);
    return 0;
  }
  if (command === 'start') {
    if (rest.includes('--help') || rest.includes('-h')) {
      process.stdout.write(startUsage());
      return 0;
    }
    return runStart(rest);
  }
  if (['drain', 'undrain', 'leaders', 'members', 'status'].includes(command)) {
    if (rest.includes('--help')) {
      process.stdout.write(OPERATOR_USAGE);
      return 0;
    }
    try {
      return await runOperator(command, rest, (s) => process.stdout.write(s));
    } catch (err) {
      process.stderr.write(`tandem ${command}: ${oneLine(err)}\n`);
      return 1;
    }
  }
  if (command === 'dev') {
    const { runDev } = await import('./dev-command.ts');
    return runDev(rest);
  }
  process.stderr.write(`tandem: unknown command '${command}' (see tandem --help)\n`);
  return 2;
}

async function runStart(args: readonly string[]): Promise<number> {
  let sidecar: Sidecar;
  try {
    sidecar = new Sidecar({ config: loadConfig({ argv: args }) });
  } catch (err) {
    process.stderr.write(`tandem: ${err instanceof Error ? err.message : String(err)}\n`);
    return 2;
  }
  try {
    await sidecar.start();
  } catch (err) {
    process.stderr.write(`tandem: could not start: ${oneLine(err)}\n`);
    await sidecar.close().catch(() => undefined);
    return 1;
  }
  // One plain line for whoever started it, beside the JSON logs: the sidecar runs, but not fully.
  const consul = sidecar.config.consul.address;
  if (sidecar.consulState === 'down') process.stderr.write(`tandem: Consul at ${consul} is unreachable; Tandem keeps retrying and routes from its persisted view meanwhile (GET /v1/health answers 503 degraded)\n`);
  if (sidecar.consulState === 'forbidden') process.stderr.write(`tandem: Consul at ${consul} refuses the sidecar's ACL token; set CONSUL_HTTP_TOKEN or CONSUL_HTTP_TOKEN_FILE to a token with the Tandem policy (GET /v1/health answers 503 degraded)\n`);
  return waitForSignal(() => sidecar.close());
}

/** Resolves with 0 after the first SIGTERM/SIGINT has run `stop`; a second signal exits at once. */
export function waitForSignal(stop: () => Promise<void>): Promise<number> {
  return new Promise((resolve) => {
    let stopping = false;
    const onSignal = (signal: NodeJS.Signals) => {
      if (stopping) {
        process.stderr.write(`tandem: ${signal} again, exiting now\n`);
        process.exit(1);
      }
      stopping = true;
      stop().then(
        () => resolve(0),
        (err: unknown) => {
          process.stderr.write(`tandem: error while stopping: ${oneLine(err)}\n`);
          resolve(1);
        },
      );
    };
    process.on('SIGTERM', onSignal);
    process.on('SIGINT', onSignal);
  });
}

function oneLine(err: unknown): string {
  if (err instanceof TandemError) return `${err.message} [${err.code}]`;
  return (err instanceof Error ? err.message : String(err)).split('\n')[0] ?? '';
}
