// A server-sent events client for tests: records every event as it arrives, the status, and whether the server ended the stream.

export interface SseStream<T> {
  status: Promise<number>;
  events: { event: string; data: T }[];
  /** The server ended the response. */
  ended: boolean;
  has(event: string): boolean;
  /** Leaves like a client that goes away. */
  close(): void;
}

/** Opens `url` and parses each event's data with `parse` (the raw text by default); a failed request reads status 0. */
export function sseStream<T = string>(url: string, init: { method?: string; headers?: Record<string, string> } = {}, parse: (data: string) => T = (d) => d as T): SseStream<T> {
  const ctrl = new AbortController();
  let resolveStatus: (n: number) => void = () => undefined;
  const s: SseStream<T> = {
    status: new Promise<number>((r) => (resolveStatus = r)),
    events: [],
    ended: false,
    has: (e) => s.events.some((x) => x.event === e),
    close: () => ctrl.abort(),
  };
  void (async () => {
    try {
      const res = await fetch(url, { method: init.method ?? 'GET', headers: init.headers ?? {}, signal: ctrl.signal });
      resolveStatus(res.status);
      let buf = '';
      const dec = new TextDecoder();
      for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
        buf += dec.decode(chunk, { stream: true });
        for (let end = buf.indexOf('\n\n'); end !== -1; end = buf.indexOf('\n\n')) {
          const lines = buf.slice(0, end).split('\n');
          buf = buf.slice(end + 2);
          const event = lines.find((l) => l.startsWith('event: '))?.slice(7);
          if (event) s.events.push({ event, data: parse(lines.find((l) => l.startsWith('data: '))?.slice(6) ?? '') });
        }
      }
      s.ended = true;
    } catch {
      resolveStatus(0);
    }
  })();
  return s;
}
