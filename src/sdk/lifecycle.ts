// The drain lifecycle stream of one SDK client: opened by its first drain listener, reopened by each register() (internal to tandem/sdk).
import { TandemError } from '../protocol/tandem-error.ts';
import type { SidecarClient } from './sidecar-client.ts';

/** What the lifecycle stream tells the app, as the client's events. */
export const LIFECYCLE_EVENTS: readonly string[] = ['drain', 'undrain', 'drained'];

/**
 * The `GET /v1/lifecycle` stream: it names the services this app answers for (a drain waits for their
 * ready-to-stop), so it is reopened whenever that list grows.
 *
 * @example
 * ```ts
 * const lifecycle = new LifecycleStream(client, () => [...handles.keys()], (e, d) => tandem.emit(e, d), track, untrack);
 * lifecycle.open();
 * await lifecycle.ready();
 * ```
 */
export class LifecycleStream {
  #client: SidecarClient;
  #services: () => string[];
  #emit: (event: string, data: unknown) => void;
  #track: () => AbortController;
  #untrack: (ctrl: AbortController) => void;
  #current: { ctrl: AbortController; ready: Promise<void> } | undefined;

  /** `track` gives the controller of a new stream (the client's close() aborts it), `untrack` stops one. */
  constructor(client: SidecarClient, services: () => string[], emit: (event: string, data: unknown) => void, track: () => AbortController, untrack: (ctrl: AbortController) => void) {
    this.#client = client;
    this.#services = services;
    this.#emit = emit;
    this.#track = track;
    this.#untrack = untrack;
  }

  get isOpen(): boolean {
    return this.#current !== undefined;
  }

  open(): void {
    const ctrl = this.#track();
    const ready = this.#client.stream({
      path: () => `/v1/lifecycle?services=${encodeURIComponent(this.#services().join(','))}`,
      onEvent: (event, data) => {
        if (LIFECYCLE_EVENTS.includes(event)) this.#emit(event, JSON.parse(data));
      },
      signal: ctrl.signal,
      // The route sends the drain state once its listeners are attached.
      ack: 'state',
    });
    this.#current = { ctrl, ready };
  }

  /** The services changed: an open stream is replaced by one that names them all. */
  reopen(): void {
    if (!this.#current) return;
    this.#untrack(this.#current.ctrl);
    this.open();
  }

  /** The client closed it (its controller is already aborted). */
  forget(): void {
    this.#current = undefined;
  }

  /** See `Tandem.lifecycleReady`. */
  async ready(): Promise<void> {
    for (;;) {
      const current = this.#current;
      if (!current) throw new TandemError('TANDEM_ERR_NO_LIFECYCLE_STREAM', 400, "no lifecycle stream is open: listen for 'drain', 'undrain' or 'drained' first");
      try {
        return await current.ready;
      } catch (err) {
        // Replaced by a register() meanwhile: the new stream is the one to wait for.
        if (this.#current === current) throw err;
      }
    }
  }
}
