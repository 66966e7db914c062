// Which registrations live only as long as their app: each is held by the app's open liveness streams, and expires a grace after the last one closes.
// An app that dies without deregistering (SIGKILL, a crash) closes its sockets with it: the kernel ends
// the stream, and after `graceMs` without a new one (long enough for a sidecar restart or a brief
// hiccup, when the SDK reconnects) the registration is removed. Registrations made without a stream
// (plain HTTP) are never tracked here.

export class Liveness {
  #graceMs: number;
  #onExpire: (id: string) => void;
  /** Open streams per registration id. */
  #streams = new Map<string, number>();
  #timers = new Map<string, NodeJS.Timeout>();
  #closed = false;

  constructor(graceMs: number, onExpire: (id: string) => void) {
    this.#graceMs = graceMs;
    this.#onExpire = onExpire;
  }

  get graceMs(): number {
    return this.#graceMs;
  }

  /** `id` must be held by a stream: unless one is open now, it expires after the grace (a new registration, or one restored at start). */
  expect(id: string): void {
    if ((this.#streams.get(id) ?? 0) === 0) this.#arm(id);
  }

  /** An app opened a stream for `id`; the returned function (idempotent) is called when it closes. */
  open(id: string): () => void {
    this.#streams.set(id, (this.#streams.get(id) ?? 0) + 1);
    this.#disarm(id);
    let open = true;
    return () => {
      if (!open) return;
      open = false;
      const left = (this.#streams.get(id) ?? 1) - 1;
      if (left > 0) return void this.#streams.set(id, left);
      this.#streams.delete(id);
      this.#arm(id);
    };
  }

  /** The registration is gone (deregistered, drained, expired): nothing more to do for it. */
  forget(id: string): void {
    this.#disarm(id);
  }

  /** Whether a stream holds `id` now. */
  connected(id: string): boolean {
    return (this.#streams.get(id) ?? 0) > 0;
  }

  close(): void {
    this.#closed = true;
    for (const t of this.#timers.values()) clearTimeout(t);
    this.#timers.clear();
  }

  #arm(id: string): void {
    if (this.#closed) return;
    this.#disarm(id);
    const timer = setTimeout(() => {
      this.#timers.delete(id);
      if (!this.connected(id)) this.#onExpire(id);
    }, this.#graceMs);
    // A pending expiry never keeps the sidecar alive: shutdown deregisters everything anyway.
    timer.unref();
    this.#timers.set(id, timer);
  }

  #disarm(id: string): void {
    const t = this.#timers.get(id);
    if (t) clearTimeout(t);
    this.#timers.delete(id);
  }
}
