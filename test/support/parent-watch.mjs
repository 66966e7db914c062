// The child's side of a server run as a child process, in plain JS so that plain-node children (bench/engine-floor.mjs) share it too.

/**
 * Prints "ready" for the parent, then calls `stop` once on SIGTERM/SIGINT or when stdin closes (the parent went
 * away), and exits a second later whatever still holds the loop.
 * @param {() => void} stop
 */
export function readyUntilParentGoes(stop) {
  let stopping = false;
  const once = () => {
    if (stopping) return;
    stopping = true;
    stop();
    setTimeout(() => process.exit(0), 1000).unref();
  };
  process.on('SIGTERM', once);
  process.on('SIGINT', once);
  process.stdin.on('end', once);
  process.stdin.on('error', once);
  process.stdin.resume();
  process.stdout.write('ready\n');
}
