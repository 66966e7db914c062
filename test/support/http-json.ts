// JSON over HTTP for benches: GET and PUT with a timeout, the body parsed when it is JSON (Consul's and the control API's answers).

/** GET `url`: its status and its body, parsed when it is JSON (else the text). */
export async function getJson(url: string, timeoutMs = 5000): Promise<{ status: number; body: unknown }> {
  const res = await fetch(url, { signal: AbortSignal.timeout(timeoutMs) });
  const text = await res.text();
  try {
    return { status: res.status, body: JSON.parse(text) as unknown };
  } catch {
    return { status: res.status, body: text };
  }
}

/** PUT `payload` as JSON: its status and the answer's text. */
export async function putJson(url: string, payload: unknown, timeoutMs = 30_000): Promise<{ status: number; text: string }> {
  const res = await fetch(url, { method: 'PUT', headers: { 'content-type': 'application/json' }, body: JSON.stringify(payload), signal: AbortSignal.timeout(timeoutMs) });
  return { status: res.status, text: await res.text() };
}
