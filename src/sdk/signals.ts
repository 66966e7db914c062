// Deregistration on SIGTERM/SIGINT that changes nothing else about how the app handles the signal (internal to tandem/sdk).
// One listener per signal for the whole process, however many registrations and clients: with one per
// registration, the first to finish would re-raise the signal and kill the process while the others
// were still deregistering.

const SIGNALS = ['SIGTERM', 'SIGINT'] as const;

/** How long deregistration may hold back a signal the app does not handle itself. */
const SIGNAL_CLOSE_BOUND_MS = 10_000;

const closers = new Set<() => Promise<void>>();

function onSignal(signal: NodeJS.Signals): void {
  // This listener is prepended, so it runs before any other: every other listener is the app's own
  // (even a `once` one, which is only removed when it runs).
  const appHandles = process.listenerCount(signal) > 1;
  uninstall();
  const closing = Promise.allSettled([...closers].map((close) => close()));
  closers.clear();
  let timer: NodeJS.Timeout | undefined;
  const bound = new Promise<void>((resolve) => {
    timer = setTimeout(resolve, SIGNAL_CLOSE_BOUND_MS);
  });
  void Promise.race([closing, bound]).then(() => {
    clearTimeout(timer);
    // An app with its own listener decides what happens next. Without one, do what the signal would
    // have done had the SDK never listened: with no listener left, Node restores the default action,
    // so raising it again terminates the process the way the shell or supervisor expects.
    if (!appHandles && process.listenerCount(signal) === 0) process.kill(process.pid, signal);
  });
}

function install(): void {
  for (const s of SIGNALS) process.prependListener(s, onSignal);
}

function uninstall(): void {
  for (const s of SIGNALS) process.removeListener(s, onSignal);
}

/**
 * Runs `close` (deregistration) when the process gets SIGTERM or SIGINT, then lets the signal act as
 * it would have: the app's own listeners decide, and without any the process ends by that signal.
 * Returns the function that stops it (once nothing is left to close, the SDK listens to no signal).
 *
 * @example
 * ```ts
 * const stop = closeOnSignal(() => handle.close());
 * stop(); // closed some other way
 * ```
 */
export function closeOnSignal(close: () => Promise<void>): () => void {
  if (closers.size === 0) install();
  closers.add(close);
  return () => {
    if (!closers.delete(close)) return;
    if (closers.size === 0) uninstall();
  };
}
