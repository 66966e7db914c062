// The response bodies of the benchmark upstreams (node:http in test/support/fixed-upstream-child.ts, or nginx from test/support/fixed-upstreams.ts).

/** Response bodies the upstreams serve: path → size. `/` is the ~100-byte JSON body. */
export const BODY_PATHS = { '100B': '/', '1KB': '/1k', '64KB': '/64k' } as const;
export type BodySize = keyof typeof BODY_PATHS;
export const BODY_BYTES: Record<BodySize, number> = { '100B': 100, '1KB': 1024, '64KB': 65_536 };

/** `{"service":"bench","instance":"a","pad":"xxx…"}` padded to exactly `size` bytes (a trailing newline included when it fits). */
export function benchBody(instance: string, size: number, newline = true): string {
  const head = `{"service":"bench","instance":"${instance}","pad":"`;
  const tail = newline ? '"}\n' : '"}';
  return head + 'x'.repeat(Math.max(0, size - head.length - tail.length)) + tail;
}
