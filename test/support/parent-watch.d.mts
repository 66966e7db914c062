// Types of parent-watch.mjs (plain JS, shared with plain-node children).

/** Prints "ready", then calls `stop` once on SIGTERM/SIGINT or when stdin closes, and exits a second later. */
export declare function readyUntilParentGoes(stop: () => void): void;
