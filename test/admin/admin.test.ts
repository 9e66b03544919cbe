/**
 * The admin endpoint: GET /status (JSON shape for primaries and targets),
 * GET /metrics (Prometheus text 0.0.4), 404/405, loopback binding; and the
 * latency histogram.
 */
import assert from 'node:assert/strict';
import http from 'node:http';
import net from 'node:net';
import { describe, test } from 'node:test';
import type { TestContext } from 'node:test';
import { LatencyHistogram, DEFAULT_LATENCY_BUCKETS } from '../../src/admin/histogram.js';
import { escapeLabelValue, renderMetrics, PROMETHEUS_CONTENT_TYPE } from '../../src/admin/metrics.js';
import { createAdminServer, type AdminServer, type AdminServerOptions } from '../../src/admin/server.js';
import { normalizeStatus, type AdminStatus } from '../../src/admin/status.js';
import { MemoryBlockDevice } from '../../src/device/memory-device.js';
import { BlockMirrorError } from '../../src/errors.js';
import { onceEvent } from '../helpers/events.js';
import { startPair } from '../helpers/pair.js';
import { RecordingDevice } from '../helpers/recording-device.js';
import { checkHistograms, parsePrometheus } from './prometheus.js';

interface Reply {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: string;
}

function request(admin: AdminServer, path: string, method = 'GET'): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: admin.address.host, port: admin.address.port, path, method, agent: false }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
    });
    req.on('error', reject);
    req.end();
  });
}

async function admin(t: TestContext, options: AdminServerOptions): Promise<AdminServer> {
  const a = await createAdminServer(options);
  t.after(() => a.close());
  return a;
}

describe('admin endpoint', () => {
  test('GET /status on a primary: role, peers[].address/link, volumes.NAME.mode/inSync/pendingBytes/state; binds loopback', async (t) => {
    const held = new RecordingDevice(new MemoryBlockDevice(1 << 20, { blockSize: 512 }));
    const pair = await startPair([
      // a blank device on both sides: identical images, no initial sync (as --assume-clean)
      { name: 'sync0', mode: 'sync', targetDevice: held, initialSync: 'none' },
      { name: 'async0', mode: 'async' },
    ]);
    t.after(() => pair.close());
    const a = await admin(t, { port: 0, source: pair.primary, version: '9.9.9' });
    assert.equal(a.address.host, '127.0.0.1', 'loopback by default');
    assert.match(a.url, /^http:\/\/127\.0\.0\.1:\d+$/);

    const r = await request(a, '/status');
    assert.equal(r.status, 200);
    assert.match(String(r.headers['content-type']), /^application\/json/);
    const s = JSON.parse(r.body) as AdminStatus;
    assert.equal(s.role, 'primary');
    assert.equal(s.version, '9.9.9');
    assert.equal(s.peers.length, 1);
    assert.equal(s.peers[0]!.address, `127.0.0.1:${pair.target.address.port}`);
    assert.equal(s.peers[0]!.link, 'up');
    assert.deepEqual(
      Object.fromEntries(Object.entries(s.volumes).map(([n, v]) => [n, [v.mode, v.inSync, v.pendingBytes, v.state]])),
      { sync0: ['sync', true, 0, 'in-sync'], async0: ['async', true, 0, 'in-sync'] },
    );

    // A write the mirror holds: pending, not in sync, replicating.
    held.hold();
    const heldOp = onceEvent(held, 'held');
    const write = pair.primary.volume('sync0').write(0, Buffer.alloc(4096, 7));
    await heldOp;
    const busy = JSON.parse((await request(a, '/status?x=1')).body) as AdminStatus;
    assert.deepEqual([busy.volumes.sync0!.inSync, busy.volumes.sync0!.pendingBytes, busy.volumes.sync0!.state], [false, 4096, 'replicating']);
    const metrics = parsePrometheus((await request(a, '/metrics')).body);
    assert.deepEqual(metrics.get('blockmirror_pending_bytes')!.samples.find((x) => x.labels.volume === 'sync0')?.value, 4096);
    assert.deepEqual(metrics.get('blockmirror_volume_in_sync')!.samples.find((x) => x.labels.volume === 'sync0')?.value, 0);
    held.release();
    assert.equal((await write).mirror, 'acknowledged');
    // in-sync once the target reported the write durable (its flush follows the acknowledgement)
    while (pair.primary.volume('sync0').state !== 'in-sync') await onceEvent(pair.primary, 'volume-state');
    const after = JSON.parse((await request(a, '/status')).body) as AdminStatus;
    assert.deepEqual([after.volumes.sync0!.inSync, after.volumes.sync0!.pendingBytes, after.volumes.sync0!.replicatedBytes], [true, 0, 4096]);
  });

  test('GET /status on a mirror target: mode "target", inSync while its primary is connected, state mirroring', async (t) => {
    const pair = await startPair([{ name: 'vol0' }]);
    t.after(() => pair.close());
    await pair.primary.volume('vol0').write(512, Buffer.alloc(1024, 1));
    const a = await admin(t, { port: 0, source: pair.target });
    const s = JSON.parse((await request(a, '/status')).body) as AdminStatus;
    assert.equal(s.role, 'target');
    assert.equal(s.peers[0]!.link, 'up');
    assert.equal(typeof s.peers[0]!.address, 'string');
    const v = s.volumes.vol0!;
    assert.deepEqual([v.mode, v.inSync, v.pendingBytes, v.state, v.replicatedBytes, v.mirrorErrors], ['target', true, 0, 'mirroring', 1024, 0]);
  });

  test('normalizeStatus: target volumes without a primary, or whose primary left; bad documents refused', () => {
    const base = { role: 'target', node: 't', address: '127.0.0.1:1', peers: [] };
    const vol = { size: 4096, blockSize: 512, appliedSeq: 0, appliedWrites: 0, bytesWritten: 0, errors: 2 };
    const s = normalizeStatus({
      ...base,
      volumes: { fresh: { ...vol, name: 'fresh', primary: undefined, connections: 0 }, left: { ...vol, name: 'left', primary: 'p1', connections: 0 } },
    });
    assert.deepEqual([s.volumes.fresh!.state, s.volumes.fresh!.inSync], ['unclaimed', false]);
    assert.deepEqual([s.volumes.left!.state, s.volumes.left!.inSync, s.volumes.left!.mirrorErrors], ['disconnected', false, 2]);
    assert.throws(() => normalizeStatus({ peers: [], volumes: {} }), BlockMirrorError);
    assert.throws(() => normalizeStatus(null), BlockMirrorError);
  });

  test('GET /metrics: Prometheus text 0.0.4, HELP/TYPE before samples, monotonic histogram buckets, escaped labels', async (t) => {
    const odd = 'we"ird\\vol';
    const pair = await startPair([{ name: 'vol0' }, { name: odd, mode: 'async' }]);
    t.after(() => pair.close());
    await pair.primary.volume('vol0').write(0, Buffer.alloc(8192, 1));
    await pair.primary.volume(odd).write(0, Buffer.alloc(512, 2));
    await pair.primary.drain();
    const h0 = new LatencyHistogram();
    for (const v of [0.0002, 0.0004, 0.003, 0.003, 0.2, 42]) h0.observe(v);
    const h1 = new LatencyHistogram();
    h1.observe(0.001);
    const a = await admin(t, { port: 0, source: pair.primary, metrics: { writeLatency: new Map([['vol0', h0], [odd, h1]]) }, version: '1.2.3' });

    const r = await request(a, '/metrics');
    assert.equal(r.status, 200);
    assert.equal(r.headers['content-type'], PROMETHEUS_CONTENT_TYPE);
    assert.match(r.body, new RegExp(`volume="we\\\\"ird\\\\\\\\vol"`), 'quote and backslash escaped in the raw text');
    const families = parsePrometheus(r.body);
    checkHistograms(families);
    const types = Object.fromEntries([...families.values()].map((f) => [f.name, f.type]));
    assert.deepEqual(
      {
        replicated: types.blockmirror_replicated_bytes_total,
        pending: types.blockmirror_pending_bytes,
        link: types.blockmirror_link_up,
        inSync: types.blockmirror_volume_in_sync,
        errors: types.blockmirror_mirror_errors_total,
        latency: types.blockmirror_write_latency_seconds,
      },
      { replicated: 'counter', pending: 'gauge', link: 'gauge', inSync: 'gauge', errors: 'counter', latency: 'histogram' },
    );
    for (const f of families.values()) {
      assert.ok(f.name.startsWith('blockmirror_'), f.name);
      assert.notEqual(f.help, '', `${f.name} has HELP text`);
    }
    const value = (family: string, labels: Record<string, string>, name = family): number | undefined =>
      families.get(family)!.samples.find((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v))?.value;
    assert.equal(value('blockmirror_replicated_bytes_total', { volume: 'vol0' }), 8192);
    assert.equal(value('blockmirror_replicated_bytes_total', { volume: odd }), 512, 'label value unescapes to the volume name');
    assert.equal(value('blockmirror_link_up', { peer: `127.0.0.1:${pair.target.address.port}` }), 1);
    assert.equal(value('blockmirror_volume_in_sync', { volume: 'vol0' }), 1);
    assert.equal(value('blockmirror_pending_bytes', { volume: 'vol0' }), 0);
    assert.equal(value('blockmirror_mirror_errors_total', { volume: 'vol0' }), 0);
    assert.equal(value('blockmirror_info', { role: 'primary', version: '1.2.3' }), 1);
    const lat = 'blockmirror_write_latency_seconds';
    assert.equal(value(lat, { volume: 'vol0' }, `${lat}_count`), 6);
    assert.ok(Math.abs(value(lat, { volume: 'vol0' }, `${lat}_sum`)! - 42.2066) < 1e-9);
    assert.equal(value(lat, { volume: 'vol0', le: '0.00025' }, `${lat}_bucket`), 1);
    assert.equal(value(lat, { volume: 'vol0', le: '0.005' }, `${lat}_bucket`), 4);
    assert.equal(value(lat, { volume: 'vol0', le: '10' }, `${lat}_bucket`), 5);
    assert.equal(value(lat, { volume: 'vol0', le: '+Inf' }, `${lat}_bucket`), 6);
    assert.equal(families.get(lat)!.samples.filter((s) => s.name === `${lat}_bucket` && s.labels.volume === 'vol0').length, DEFAULT_LATENCY_BUCKETS.length + 1);
  });

  test('label escaping: backslash, double quote and newline', () => {
    assert.equal(escapeLabelValue('a\\b"c\nd'), 'a\\\\b\\"c\\nd');
    const text = renderMetrics({ role: 'primary', node: 'n\n"x"', peers: [{ address: 'h\\1:2', link: 'down' }], volumes: {} });
    const families = parsePrometheus(text);
    assert.deepEqual(families.get('blockmirror_info')!.samples[0]!.labels, { role: 'primary', node: 'n\n"x"', version: '' });
    assert.deepEqual(families.get('blockmirror_link_up')!.samples[0], { name: 'blockmirror_link_up', labels: { peer: 'h\\1:2' }, value: 0 });
  });

  test('unknown path → 404 JSON error; methods other than GET → 405 with Allow: GET; failing status() → 500', async (t) => {
    let fail = false;
    const source = {
      status: () => {
        if (fail) throw new BlockMirrorError('BM_ERR_CLOSED', 'primary is closed');
        return { role: 'primary', peers: [], volumes: {} };
      },
    };
    const a = await admin(t, { port: 0, source });
    const missing = await request(a, '/nope');
    assert.equal(missing.status, 404);
    assert.match(String(missing.headers['content-type']), /^application\/json/);
    assert.equal((JSON.parse(missing.body) as { error: { code: string } }).error.code, 'not_found');
    assert.equal((await request(a, '/')).status, 404);
    for (const method of ['POST', 'PUT', 'DELETE', 'HEAD']) {
      const r = await request(a, '/status', method);
      assert.equal(r.status, 405, method);
      assert.equal(r.headers.allow, 'GET');
    }
    const post = await request(a, '/metrics', 'POST');
    assert.equal((JSON.parse(post.body) as { error: { code: string } }).error.code, 'method_not_allowed');
    fail = true;
    const broken = await request(a, '/status');
    assert.equal(broken.status, 500);
    assert.deepEqual(JSON.parse(broken.body), { error: { code: 'BM_ERR_CLOSED', message: 'primary is closed' } });
  });

  test('port in use → BM_ERR_ADDRESS_IN_USE; bad options → BM_ERR_INVALID_ARGUMENT', async (t) => {
    const blocker = net.createServer();
    await new Promise<void>((resolve) => blocker.listen({ host: '127.0.0.1', port: 0 }, () => resolve()));
    t.after(() => new Promise<void>((resolve) => blocker.close(() => resolve())));
    const port = (blocker.address() as net.AddressInfo).port;
    const source = { status: () => ({ role: 'primary', peers: [], volumes: {} }) };
    await assert.rejects(createAdminServer({ port, source }), { code: 'BM_ERR_ADDRESS_IN_USE' });
    await assert.rejects(createAdminServer({ port: -1, source }), { code: 'BM_ERR_INVALID_ARGUMENT' });
    await assert.rejects(createAdminServer({ port: 0, source: {} as never }), { code: 'BM_ERR_INVALID_ARGUMENT' });
  });

  test('issue 12 (5): POST /volumes/NAME/promote passes force and peer (HOST:PORT or [IPv6]:PORT); a malformed peer is 400 BM_ERR_INVALID_ARGUMENT and the action is not called', async (t) => {
    const calls: Array<{ volume: string; options: unknown }> = [];
    const source = { status: () => ({ role: 'target', peers: [], volumes: {} }) };
    const a = await admin(t, {
      port: 0,
      source,
      actions: {
        promote: async (volume, options) => {
          calls.push({ volume, options });
          return { volume };
        },
      },
    });
    assert.equal((await request(a, '/volumes/db/promote?force=1&peer=a.example%3A7070', 'POST')).status, 200);
    assert.equal((await request(a, '/volumes/db/promote?peer=%5B%3A%3A1%5D%3A7070', 'POST')).status, 200);
    assert.equal((await request(a, '/volumes/db/promote', 'POST')).status, 200);
    assert.deepEqual(calls, [
      { volume: 'db', options: { force: true, peer: { host: 'a.example', port: 7070 } } },
      { volume: 'db', options: { force: false, peer: { host: '::1', port: 7070 } } },
      { volume: 'db', options: { force: false } },
    ]);
    for (const bad of ['a.example', 'a.example%3A0', 'a.example%3A65536', '%3A7070', 'a%20b%3A1', '']) {
      const r = await request(a, `/volumes/db/promote?peer=${bad}`, 'POST');
      assert.equal(r.status, 400, bad);
      assert.equal((JSON.parse(r.body) as { error: { code: string } }).error.code, 'BM_ERR_INVALID_ARGUMENT');
    }
    assert.equal(calls.length, 3);
  });
});

describe('LatencyHistogram', () => {
  test('cumulative buckets, sum, count, quantile, reset; bad bounds refused', () => {
    const h = new LatencyHistogram([0.001, 0.01, 0.1]);
    assert.ok(Number.isNaN(h.quantile(0.5)));
    for (const v of [0.0005, 0.001, 0.002, 0.05, 0.5, -1, NaN]) h.observe(v);
    const s = h.snapshot();
    assert.deepEqual(s.buckets, [
      { le: 0.001, count: 3 }, // 0.0005, 0.001 (le is inclusive), -1 counted as 0
      { le: 0.01, count: 4 },
      { le: 0.1, count: 5 },
      { le: Infinity, count: 6 },
    ]);
    assert.equal(s.count, 6);
    assert.ok(Math.abs(s.sum - 0.5535) < 1e-12);
    assert.equal(h.quantile(0.5), 0.001);
    assert.equal(h.quantile(0.8), 0.1);
    assert.equal(h.quantile(1), Infinity);
    h.reset();
    assert.deepEqual(h.snapshot(), { buckets: [{ le: 0.001, count: 0 }, { le: 0.01, count: 0 }, { le: 0.1, count: 0 }, { le: Infinity, count: 0 }], sum: 0, count: 0 });
    for (const bad of [[], [0.1, 0.1], [0.2, 0.1], [0, 1], [1, Infinity]]) {
      assert.throws(() => new LatencyHistogram(bad), { code: 'BM_ERR_INVALID_ARGUMENT' });
    }
  });
});
