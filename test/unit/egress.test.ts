// The egress policy without a network: which hosts that are not catalog services are reached, judged on the resolved address; allow entries; config checks.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { loadConfig } from '../../src/config/config.ts';
import { ControlPlaneGuard } from '../../src/proxy/control-plane.ts';
import { EgressPolicy, nonPublicReason, parseAllowEntry, type EgressOptions } from '../../src/proxy/egress.ts';

/** A resolver that knows a few made-up names and fails the test when asked about anything else. */
const names: Record<string, string[]> = {
  'public.example.com': ['93.184.216.34'],
  'sneaky.example.com': ['10.1.2.3', '93.184.216.34'],
  'mapped.example.com': ['::ffff:127.0.0.1'],
  'v6.example.com': ['2606:2800:220:1::1'],
  'api.partner.net': ['10.9.9.9'],
};
const lookup = async (host: string) => {
  const found = names[host];
  if (!found) throw Object.assign(new Error(`unexpected lookup of ${host}`), { code: 'ENOTFOUND' });
  return found.map((address) => ({ address, family: address.includes(':') ? 6 : 4 }));
};

function policy(o: Partial<EgressOptions> = {}): EgressPolicy {
  return new EgressPolicy({ mode: 'auto', allow: [], listenHost: '127.0.0.1', connectTimeoutMs: 1000, lookup, ...o });
}

async function refused(p: EgressPolicy, host: string, port: number, why: RegExp): Promise<void> {
  await assert.rejects(p.judge(host, port), (err: { code?: string; statusCode?: number; message?: string }) => {
    assert.equal(err.code, 'TANDEM_ERR_EGRESS_REFUSED', `${host}:${port}: ${err.message}`);
    assert.equal(err.statusCode, 403);
    assert.match(err.message ?? '', why, `${host}:${port}`);
    // Every refusal names the policy, its config key and the way around it.
    assert.match(err.message ?? '', /proxy\.egress\.mode '[^']+'/);
    assert.match(err.message ?? '', /proxy\.egress\.allow/);
    assert.match(err.message ?? '', /NO_PROXY/);
    return true;
  });
}

test('auto is public on a loopback listener, allow-list beyond it', () => {
  assert.equal(policy().mode, 'public');
  assert.equal(policy({ listenHost: '::1' }).mode, 'public');
  assert.equal(policy({ listenHost: '0.0.0.0' }).mode, 'allow-list');
  assert.equal(policy({ listenHost: '10.0.0.5' }).mode, 'allow-list');
  assert.equal(policy({ listenHost: '0.0.0.0', mode: 'public' }).mode, 'public');
  assert.equal(policy().label, 'auto (public)');
});

test('public: public addresses pass, every internal range is refused', async () => {
  const p = policy();
  assert.deepEqual(await p.judge('93.184.216.34', 80), { target: '93.184.216.34:80', host: '93.184.216.34', port: 80, address: '93.184.216.34' });
  assert.equal((await p.judge('[2606:2800:220:1::1]', 443)).address, '2606:2800:220:1::1');
  const cases: [string, RegExp][] = [
    ['127.0.0.1', /loopback/], ['127.9.9.9', /loopback/], ['::1', /loopback/], ['[::1]', /loopback/],
    ['10.0.0.1', /private/], ['172.16.5.5', /private/], ['172.31.255.255', /private/], ['192.168.1.1', /private/],
    ['fc00::1', /unique local/], ['fd12:3456::1', /unique local/],
    ['169.254.169.254', /link-local/], ['fe80::1', /link-local/],
    ['100.64.0.1', /CGNAT/], ['100.127.255.254', /CGNAT/],
    ['0.0.0.0', /unspecified/], ['::', /unspecified/],
    ['224.0.0.1', /multicast/], ['ff02::1', /multicast/], ['255.255.255.255', /special-purpose/], ['192.0.2.1', /special-purpose/],
    // IPv4 inside IPv6 is judged as the IPv4 it is.
    ['::ffff:127.0.0.1', /loopback/], ['::ffff:7f00:1', /loopback/], ['::ffff:10.0.0.1', /private/], ['64:ff9b::a00:1', /private/],
  ];
  for (const [host, why] of cases) await refused(p, host, 80, why);
  assert.equal(nonPublicReason('172.32.0.1'), undefined);
  assert.equal(nonPublicReason('100.128.0.1'), undefined);
});

test('names are judged on the address they resolve to, which is the one connected to', async () => {
  const p = policy();
  assert.equal((await p.judge('public.example.com', 80)).address, '93.184.216.34');
  assert.equal((await p.judge('PUBLIC.example.com.', 80)).host, 'public.example.com');
  // The first answer is judged and used: a name cannot pass with a public address and connect to a private one.
  await refused(p, 'sneaky.example.com', 80, /sneaky\.example\.com \(10\.1\.2\.3\) is a private address/);
  await refused(p, 'mapped.example.com', 80, /loopback/);
  assert.equal((await p.judge('v6.example.com', 443)).address, '2606:2800:220:1::1');
  await refused(p, 'localhost', 8080, /loopback/);
  await refused(p, 'app.localhost', 8080, /loopback/);
  await assert.rejects(p.judge('nowhere.example.com', 80), { code: 'TANDEM_ERR_EGRESS_FAILED', statusCode: 502 });
});

test('names that are never public hosts are refused without a lookup', async () => {
  const p = policy();
  for (const host of ['example.invalid', 'a.b.invalid', 'intranet', 'db.local', 'x.internal', 'nas.home.arpa', 'web1.node.consul', 'q.query.consul', 'foo.test']) {
    await refused(p, host, 80, /never a public host|single-label/);
  }
});

test('allow-list: only what is listed, by address (CIDR, port) or by name', async () => {
  const p = policy({ mode: 'allow-list', allow: ['127.0.0.1:8080', '10.200.0.0/16', 'api.partner.net:443', '*.svc.example.com', '[::1]:9000'] });
  assert.equal((await p.judge('127.0.0.1', 8080)).address, '127.0.0.1');
  await refused(p, '127.0.0.1', 8081, /not on proxy\.egress\.allow/);
  assert.equal((await p.judge('10.200.1.1', 5432)).address, '10.200.1.1');
  assert.equal((await p.judge('::1', 9000)).address, '::1');
  // A listed name is allowed whatever it resolves to (the operator named it), on its port only.
  assert.equal((await p.judge('api.partner.net', 443)).address, '10.9.9.9');
  await refused(p, 'api.partner.net', 80, /not on proxy\.egress\.allow/);
  // Public addresses need a listing too.
  await refused(p, '93.184.216.34', 80, /not on proxy\.egress\.allow/);
  // localhost resolves to loopback (RFC 6761) and is judged there: 127.0.0.1:8080 covers it.
  assert.equal((await p.judge('localhost', 8080)).address, '127.0.0.1');
});

test('public plus allow entries: listed internal addresses pass, others do not', async () => {
  const p = policy({ allow: ['127.0.0.1:8080', '192.168.0.0/16:443'] });
  assert.equal((await p.judge('127.0.0.1', 8080)).address, '127.0.0.1');
  assert.equal((await p.judge('192.168.4.4', 443)).address, '192.168.4.4');
  await refused(p, '192.168.4.4', 80, /private/);
  await refused(p, '127.0.0.1', 8081, /loopback/);
});

test('control planes are refused even when allow-listed', async () => {
  const guard = new ControlPlaneGuard({ consulAddresses: ['http://127.0.0.1:8500'] });
  guard.protect('127.0.0.1', 7701);
  const p = policy({ allow: ['127.0.0.0/8'], guard });
  await refused(p, '127.0.0.1', 8500, /control plane/);
  await refused(p, '127.0.0.2', 7701, /control plane/);
  await refused(p, 'localhost', 8500, /control plane/);
  assert.equal((await p.judge('127.0.0.1', 8080)).address, '127.0.0.1');
});

test('off refuses everything', async () => {
  const p = policy({ mode: 'off', allow: ['127.0.0.1:8080'] });
  await refused(p, '93.184.216.34', 80, /egress is off/);
  await refused(p, '127.0.0.1', 8080, /egress is off/);
});

test('allow entries: what parses and what is reported', () => {
  for (const ok of ['example.com', 'example.com:443', '*.example.com', '*.example.com:8443', '10.0.0.0/8', '10.0.0.0/8:443', '1.2.3.4', '1.2.3.4:80', '::1', '[::1]:80', 'fd00::/8', '[fd00::/8]:443', '2001:db8::1']) {
    assert.notEqual(typeof parseAllowEntry(ok), 'string', ok);
  }
  for (const bad of ['10.0.0.0/33', 'fd00::/129', 'example.com:0', 'example.com:70000', 'bad host', '-x.example', '1.2.3.4/8/9', 'http://example.com']) {
    assert.equal(typeof parseAllowEntry(bad), 'string', bad);
  }
});

test('config: proxy.egress is validated, every problem listed', () => {
  const c = loadConfig({ argv: [], env: {} });
  assert.deepEqual(c.proxy.egress, { mode: 'auto', allow: [] });
  assert.equal(c.proxy.headersTimeoutMs, 10_000);
  assert.throws(
    () => loadConfig({ argv: ['--set', 'proxy.egress.mode=open', '--set', 'proxy.egress.allow=["10.0.0.0/40","ok.example:443","x:0"]', '--set', 'proxy.headersTimeoutMs=10'], env: {} }),
    (err: { problems?: string[]; message: string }) => {
      const text = (err.problems ?? [err.message]).join('\n');
      assert.match(text, /egress\/mode/);
      assert.match(text, /egress\/allow\/0: '10\.0\.0\.0\/40'/);
      assert.match(text, /egress\/allow\/2: 'x:0'/);
      assert.doesNotMatch(text, /allow\/1/);
      assert.match(text, /headersTimeoutMs/);
      return true;
    },
  );
});
