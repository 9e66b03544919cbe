/**
 * Admin endpoint access: loopback by default; off loopback only with a bearer
 * token or TLS client certificates; `/metrics` open only when asked. Real
 * sockets on 127.0.0.1 (port 0); the non-loopback rule is checked before
 * anything is bound.
 */
import assert from 'node:assert/strict';
import http from 'node:http';
import https from 'node:https';
import { after, before, describe, test } from 'node:test';
import { createAdminServer, type AdminServer } from '../../src/admin/server.js';
import { isBlockMirrorError } from '../../src/errors.js';
import { isLoopbackHost } from '../../src/transport/loopback.js';
import { createTestPki, type CertPair, type TestPki } from '../helpers/certs.js';
import { requireTool } from '../helpers/tools.js';

const TOKEN = 'a-long-enough-admin-token';
const source = { status: () => ({ role: 'primary', node: 'n', peers: [], volumes: {} }) };

function get(admin: AdminServer, path: string, headers: Record<string, string> = {}): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = http.get(`${admin.url}${path}`, { headers }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode ?? 0));
    });
    req.on('error', reject);
  });
}

describe('admin endpoint access', () => {
  test('isLoopbackHost: 127/8, ::1, localhost are loopback; 0.0.0.0, ::, other addresses are not', () => {
    for (const h of ['127.0.0.1', '127.1.2.3', '::1', '[::1]', 'localhost', '::ffff:127.0.0.1', '0:0:0:0:0:0:0:1']) assert.equal(isLoopbackHost(h), true, h);
    for (const h of ['0.0.0.0', '::', '10.0.0.1', '192.168.1.1', 'example.com', '128.0.0.1']) assert.equal(isLoopbackHost(h), false, h);
  });

  test('a non-loopback address without a token or TLS client certificates is refused before binding; a short token too', async () => {
    await assert.rejects(createAdminServer({ host: '0.0.0.0', port: 0, source }), (e) => isBlockMirrorError(e, 'BM_ERR_INVALID_ARGUMENT') && /needs authentication/.test(e.message));
    await assert.rejects(createAdminServer({ host: '10.255.255.1', port: 0, source, openMetrics: true }), (e) => isBlockMirrorError(e, 'BM_ERR_INVALID_ARGUMENT'));
    await assert.rejects(createAdminServer({ host: '127.0.0.1', port: 0, source, token: 'short' }), (e) => isBlockMirrorError(e, 'BM_ERR_INVALID_ARGUMENT'));
  });

  test('with a token: 401 without it or with a wrong one, 200 with it; /metrics stays closed unless openMetrics', async (t) => {
    const admin = await createAdminServer({ host: '127.0.0.1', port: 0, source, token: TOKEN });
    t.after(() => admin.close());
    assert.equal(await get(admin, '/status'), 401);
    assert.equal(await get(admin, '/metrics'), 401);
    assert.equal(await get(admin, '/status', { authorization: 'Bearer wrong-token-of-some-length' }), 401);
    assert.equal(await get(admin, '/status', { authorization: `Basic ${TOKEN}` }), 401);
    assert.equal(await get(admin, '/status', { authorization: `Bearer ${TOKEN}` }), 200);
    assert.equal(await get(admin, '/metrics', { authorization: `Bearer ${TOKEN}` }), 200);
    const open = await createAdminServer({ host: '127.0.0.1', port: 0, source, token: TOKEN, openMetrics: true });
    t.after(() => open.close());
    assert.equal(await get(open, '/metrics'), 200);
    assert.equal(await get(open, '/status'), 401);
  });
});

describe('admin endpoint over TLS with client certificates', { skip: !requireTool('openssl') }, () => {
  let pki: TestPki;
  let server: CertPair;
  let client: CertPair;
  let rogue: CertPair;
  before(() => {
    pki = createTestPki();
    server = pki.issue('admin', { dns: ['localhost'], ip: ['127.0.0.1'] });
    client = pki.issue('operator');
    rogue = pki.rogue('operator');
  });
  after(() => pki?.cleanup());

  function sget(admin: AdminServer, pair?: CertPair): Promise<number> {
    return new Promise((resolve, reject) => {
      const req = https.get(`${admin.url}/status`, { ca: pki.ca, ...(pair === undefined ? {} : { cert: pair.cert, key: pair.key }) }, (res) => {
        res.resume();
        res.on('end', () => resolve(res.statusCode ?? 0));
      });
      req.on('error', reject);
    });
  }

  test('HTTPS: a client with a certificate of the CA gets 200; without one, or with another CA, the TLS handshake fails', async (t) => {
    const admin = await createAdminServer({ host: '127.0.0.1', port: 0, source, tls: { cert: server.cert, key: server.key, ca: pki.ca } });
    t.after(() => admin.close());
    assert.match(admin.url, /^https:/);
    assert.equal(await sget(admin, client), 200);
    await assert.rejects(sget(admin));
    await assert.rejects(sget(admin, rogue));
  });
});

describe('heartbeat rejections in /metrics', () => {
  test('blockmirror_heartbeats_rejected_total{peer,reason} from the status of a primary; absent without heartbeats', async () => {
    const { renderMetrics } = await import('../../src/admin/metrics.js');
    const { normalizeStatus } = await import('../../src/admin/status.js');
    const status = normalizeStatus({
      role: 'primary',
      node: 'p',
      peers: [{ address: '10.0.0.2:7000', link: 'up', heartbeats: { rejectedByReason: { malformed: 0, auth: 2, 'unexpected-node': 5, replayed: 0 } } }],
      volumes: {},
    });
    const text = renderMetrics(status, {}, '0');
    assert.match(text, /^# TYPE blockmirror_heartbeats_rejected_total counter$/m);
    assert.match(text, /^blockmirror_heartbeats_rejected_total\{peer="10\.0\.0\.2:7000",reason="unexpected-node"\} 5$/m);
    assert.match(text, /^blockmirror_heartbeats_rejected_total\{peer="10\.0\.0\.2:7000",reason="auth"\} 2$/m);
    const none = renderMetrics(normalizeStatus({ role: 'primary', node: 'p', peers: [{ address: 'x:1', link: 'up' }], volumes: {} }), {}, '0');
    assert.doesNotMatch(none, /heartbeats_rejected/);
  });
});
