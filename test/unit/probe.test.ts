// The registration probe judges a service the way Consul 1.8.7's checks do (each case below was checked against a real agent).
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import { after, before, test } from 'node:test';
import { freePorts } from '../../src/common/free-port.ts';
import { probeCheck } from '../../src/registration/probe.ts';

let server: Server;
let base = '';
const seen: { url: string; ua: string | undefined }[] = [];

before(async () => {
  server = createServer((req, res) => {
    seen.push({ url: req.url ?? '', ua: req.headers['user-agent'] });
    const path = req.url ?? '/';
    if (path === '/ok') return void res.end('ok');
    if (path === '/301ok') return void res.writeHead(301, { location: '/ok' }).end();
    if (path === '/302bad') return void res.writeHead(302, { location: '/500' }).end();
    if (path === '/302none') return void res.writeHead(302).end();
    if (path === '/loop') return void res.writeHead(302, { location: '/loop' }).end();
    if (path === '/hang') return; // never answers
    res.writeHead(Number(path.slice(1))).end('x');
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  base = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
});
after(() => {
  server.closeAllConnections();
  server.close();
});

test('HTTP: redirects followed, then 2xx passing, 429 warning, anything else critical', async () => {
  const cases: [string, string][] = [
    ['/ok', 'passing'],
    ['/204', 'passing'],
    ['/301ok', 'passing'],
    ['/302bad', 'critical'],
    ['/302none', 'critical'],
    ['/304', 'critical'],
    ['/404', 'critical'],
    ['/429', 'warning'],
    ['/500', 'critical'],
    ['/loop', 'critical'],
  ];
  for (const [path, want] of cases) {
    const r = await probeCheck({ Name: 'x', HTTP: `${base}${path}`, Interval: '10s' }, 2000);
    assert.equal(r.status, want, `${path}: ${r.output}`);
  }
  assert.equal(seen.find((s) => s.url === '/ok')?.ua, 'Consul Health Check', 'the probe looks like the check to the app');
  assert.equal(seen.filter((s) => s.url === '/loop').length, 11, 'ten redirects, then it gives up');
});

test('a port that accepts but never answers is critical within the bound', async () => {
  const t0 = Date.now();
  const r = await probeCheck({ Name: 'x', HTTP: `${base}/hang`, Interval: '10s' }, 300);
  const took = Date.now() - t0;
  assert.equal(r.status, 'critical');
  assert.match(r.output, /no answer within 300 ms/);
  assert.ok(took >= 250 && took < 3000, `took ${took} ms`);
});

test('TCP: an accepted connection passes, a closed port is critical; TTL waits for a heartbeat', async () => {
  const [closed] = await freePorts(1);
  assert.equal((await probeCheck({ Name: 'x', TCP: base.replace('http://', ''), Interval: '10s' }, 1000)).status, 'passing');
  const r = await probeCheck({ Name: 'x', TCP: `127.0.0.1:${closed}`, Interval: '10s' }, 1000);
  assert.equal(r.status, 'critical');
  assert.match(r.output, /ECONNREFUSED/);
  assert.equal((await probeCheck({ Name: 'x', TCP: `[::1]:${closed}`, Interval: '10s' }, 1000)).status, 'critical');
  assert.equal((await probeCheck({ Name: 'x', TTL: '10s' }, 1000)).status, 'critical');
});
