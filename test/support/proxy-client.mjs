// Test helper run as a child process: one real HTTP client, configured only by the proxy variable in its environment,
// makes the requests given as JSON in argv[3] one after another and prints their results as JSON on stdout.
//
//   HTTP_PROXY=http://127.0.0.1:7700 [NODE_USE_ENV_PROXY=1] node proxy-client.mjs <fetch|http|undici|axios> '[{"url":"http://greeter.service.consul/hi","headers":{}}]'
import http from 'node:http';

const [client, plan] = process.argv.slice(2);
const requests = JSON.parse(plan ?? '[]');

async function viaFetch(url, headers) {
  const res = await fetch(url, { headers });
  return { status: res.status, headers: Object.fromEntries(res.headers), body: await res.text() };
}

function viaHttp(url, headers) {
  return new Promise((resolve, reject) => {
    const req = http.get(url, { headers }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body }));
    });
    req.on('error', reject);
  });
}

let undiciAgent;
async function viaUndici(url, headers) {
  const { EnvHttpProxyAgent, request } = await import('undici');
  undiciAgent ??= new EnvHttpProxyAgent(); // its defaults: the proxy from HTTP_PROXY, CONNECT tunnels
  const res = await request(url, { headers, dispatcher: undiciAgent });
  return { status: res.statusCode, headers: res.headers, body: await res.body.text() };
}

async function viaAxios(url, headers) {
  const { default: axios } = await import('axios');
  const res = await axios.get(url, { headers, validateStatus: () => true, responseType: 'text', transformResponse: (d) => d });
  return { status: res.status, headers: res.headers, body: res.data };
}

const run = { fetch: viaFetch, http: viaHttp, undici: viaUndici, axios: viaAxios }[client];
if (!run) {
  process.stderr.write(`unknown client '${client}'\n`);
  process.exit(2);
}
const out = [];
for (const r of requests) {
  try {
    out.push(await run(r.url, r.headers ?? {}));
  } catch (err) {
    out.push({ error: `${err?.message ?? err}${err?.cause ? ` (cause: ${err.cause.message ?? err.cause.code ?? err.cause})` : ''}` });
  }
}
process.stdout.write(`${JSON.stringify(out)}\n`);
await undiciAgent?.close();
