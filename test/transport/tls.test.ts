/**
 * The replication link over mutually authenticated TLS, on real sockets
 * (127.0.0.1, port 0) with certificates made by the `openssl` CLI: every
 * connection of the connection array, the cycle protocol, peer identity by
 * name and by fingerprint, and the peers that must be refused (no
 * certificate, another CA, a certificate not in the allowed list, plain TCP).
 */
import assert from 'node:assert/strict';
import { createHash, X509Certificate } from 'node:crypto';
import net from 'node:net';
import { once } from 'node:events';
import { after, before, describe, it } from 'node:test';
import tls from 'node:tls';
import { MemoryBlockDevice } from '../../src/device/memory-device.js';
import { createMirrorTarget } from '../../src/replication/mirror-target.js';
import { createPrimary } from '../../src/replication/primary.js';
import { TlsTransport } from '../../src/transport/tls.js';
import { parsePeerPatterns } from '../../src/transport/peer-identity.js';
import { isBlockMirrorError } from '../../src/errors.js';
import FakeTimers from '@sinonjs/fake-timers';
import { clockFrom } from '../../src/clock.js';
import { createTestPki, type CertPair, type TestPki } from '../helpers/certs.js';
import { join } from 'node:path';
import { FileBlockDevice } from '../../src/device/file-device.js';
import { createCycleSource } from '../../src/cycle/cycle-runner.js';
import { linksUp, openVolume, pattern, subDir, tempDir } from '../cycle/helpers.js';
import { requireTool } from '../helpers/tools.js';
import type { LinkState } from '../../src/replication/primary.js';
import { MemoryPairStateStore } from '../../src/replication/pair-state.js';
import { linkReaches } from '../helpers/events.js';

const MiB = 1 << 20;
let pki: TestPki;
let targetCert: CertPair;
let primaryCert: CertPair;
let intruderCert: CertPair;
let rogueCert: CertPair;
const haveOpenssl = requireTool('openssl');

function fingerprint(pem: string): string {
  return `sha256:${new X509Certificate(pem).fingerprint256}`;
}

before(() => {
  if (!haveOpenssl) return;
  pki = createTestPki();
  targetCert = pki.issue('target');
  primaryCert = pki.issue('primary');
  intruderCert = pki.issue('intruder');
  rogueCert = pki.rogue('primary');
});
after(() => pki?.cleanup());

/** Link timers at millisecond scale (the state machine's timing itself is tested in virtual time, test/link). */
const LINK = { heartbeatInterval: 20, staleAfter: 600, probation: 50 };


function transport(pair: CertPair, peers?: string[], ca = pki.ca): TlsTransport {
  return new TlsTransport({ cert: pair.cert, key: pair.key, ca, ...(peers === undefined ? {} : { peers }) });
}

async function startTarget(peers?: string[]) {
  const device = new MemoryBlockDevice(MiB, { blockSize: 512 });
  const target = await createMirrorTarget({ listen: { host: '127.0.0.1', port: 0 }, transport: transport(targetCert, peers), volumes: [{ name: 'v', device }] });
  return { target, device };
}

describe('replication over TLS', { skip: !haveOpenssl }, () => {
  it('a primary with 3 connections mirrors over mutually authenticated TLS (peer checked by name on both sides); the images match', async () => {
    const { target, device } = await startTarget(['primary']);
    const local = new MemoryBlockDevice(MiB, { blockSize: 512 });
    const primary = await createPrimary({
      peer: target.address,
      transport: transport(primaryCert, ['target']),
      connections: 3,
      volumes: [{ name: 'v', device: local, mode: 'sync', initialSync: 'none' }],
    });
    try {
      assert.deepEqual(primary.status().peers[0]!.connections.map((c) => c.status), ['open', 'open', 'open']);
      for (let i = 0; i < 12; i++) assert.equal((await primary.volume('v').write(i * 4096, Buffer.alloc(4096, i + 1))).mirror, 'acknowledged');
      assert.ok((await device.read(0, MiB)).equals(await local.read(0, MiB)));
      assert.equal(target.status().volumes.v!.connections, 3);
      // no secret: the heartbeats are keyed from the TLS session of connection 0
      assert.equal(primary.status().peers[0]!.heartbeats?.auth, 'session');
    } finally {
      await primary.close();
      await target.close();
    }
  });

  it('issue 14: heartbeats without a secret stay authenticated; a restarted target (its session key lost) and a restarted primary (no key yet) both come back up by a reconnect by backoff, never by a probation on heartbeats nobody can sign', async () => {
    const tdev = new MemoryBlockDevice(MiB, { blockSize: 512 });
    const pdev = new MemoryBlockDevice(MiB, { blockSize: 512 });
    const startAt = (port: number) => createMirrorTarget({ listen: { host: '127.0.0.1', port }, transport: transport(targetCert, ['primary']), volumes: [{ name: 'v', device: tdev }], ...LINK });
    let target = await startAt(0);
    const port = target.address.port;
    // the primary's generations survive its restart, as a state file would
    const generations = new MemoryPairStateStore();
    const primaryOptions = {
      peer: target.address,
      transport: transport(primaryCert, ['target']),
      nodeId: 'tls-primary',
      volumes: [{ name: 'v', device: pdev, mode: 'async' as const, initialSync: 'none' as const, state: generations }],
      ...LINK,
      retryDelay: { min: 20, max: 200 },
    };
    let primary = await createPrimary(primaryOptions);
    const states: LinkState[] = [];
    primary.on('link', (s) => states.push(s));
    const heartbeats = () => primary.status().peers[0]!.heartbeats!;
    try {
      assert.equal(heartbeats().auth, 'session');
      await primary.volume('v').write(0, Buffer.alloc(4096, 1));
      // the target restarts: the primary keeps its key, the new target has none for it and answers unsigned
      await target.close();
      await linkReaches(primary, 'down');
      await primary.volume('v').write(4096, Buffer.alloc(4096, 2));
      target = await startAt(port);
      await linkReaches(primary, 'up');
      const afterDown = states.slice(states.indexOf('down'));
      assert.ok(!afterDown.includes('probation'), afterDown.join(' → '));
      assert.ok(heartbeats().rejectedByReason.auth! > 0, `the unsigned answers were refused: ${JSON.stringify(heartbeats().rejectedByReason)}`);
      assert.equal(heartbeats().auth, 'session');
      await primary.drain(10_000);
      assert.ok((await tdev.read(0, MiB)).equals(await pdev.read(0, MiB)));
      // the primary restarts while the target is away: no key, so it sends and accepts no heartbeat, and reconnects by backoff
      await primary.close();
      await target.close();
      primary = await createPrimary({ ...primaryOptions, waitForConnection: false });
      await linkReaches(primary, 'down');
      assert.equal(heartbeats().auth, 'pending');
      assert.equal(heartbeats().sent, 0);
      target = await startAt(port);
      await linkReaches(primary, 'up');
      assert.equal(heartbeats().auth, 'session');
      await primary.volume('v').write(8192, Buffer.alloc(4096, 3));
      await primary.drain(10_000);
      assert.ok((await tdev.read(0, MiB)).equals(await pdev.read(0, MiB)));
    } finally {
      await primary.close();
      await target.close();
    }
  });

  it('peer identity by SHA-256 fingerprint; a certificate of the same CA outside the list is refused and never reaches the handshake', async () => {
    const { target } = await startTarget([fingerprint(primaryCert.cert)]);
    try {
      const errors: string[] = [];
      target.on('connection-error', (e) => errors.push(e.code));
      // the intruder's certificate chains to the CA but is not allowed: the TLS connection is closed at once
      const intruder = transport(intruderCert);
      const conn = await intruder.connect(target.address).catch((e: unknown) => e);
      if (!isBlockMirrorError(conn)) {
        await once(conn as never, 'close');
      }
      assert.deepEqual(errors, [], 'an unauthorised peer never reaches the replication handshake');
      // the allowed one pairs
      const primary = await createPrimary({ peer: target.address, transport: transport(primaryCert, [fingerprint(targetCert.cert)]), volumes: [{ name: 'v', device: new MemoryBlockDevice(MiB, { blockSize: 512 }), mode: 'async', initialSync: 'none' }] });
      await primary.close();
    } finally {
      await target.close();
    }
  });

  it('a primary refuses a target whose certificate is not its allowed peer (BM_ERR_CONNECT_FAILED, reason peer), before naming any volume', async () => {
    const { target } = await startTarget();
    const seen: string[] = [];
    target.on('connection', (c) => seen.push(c.node));
    try {
      await assert.rejects(
        createPrimary({ peer: target.address, transport: transport(primaryCert, ['some-other-target']), volumes: [{ name: 'v', device: new MemoryBlockDevice(MiB, { blockSize: 512 }), mode: 'sync' }] }),
        (e) => isBlockMirrorError(e, 'BM_ERR_CONNECT_FAILED') && e.details.reason === 'peer',
      );
      assert.deepEqual(seen, []);
    } finally {
      await target.close();
    }
  });

  it('refused at the TLS layer: a client without a certificate, a certificate of another CA, and plain TCP; the target keeps serving', async () => {
    const { target } = await startTarget();
    try {
      const errors: string[] = [];
      target.on('connection-error', (e) => errors.push(e.code));
      // no client certificate
      const bare = tls.connect({ host: '127.0.0.1', port: target.address.port, ca: pki.ca, checkServerIdentity: () => undefined });
      bare.on('error', () => {});
      await new Promise((resolve) => bare.once('close', resolve));
      // a certificate of another CA
      // (TLS 1.3: the client may finish its side before the server refuses its certificate)
      const rogue = await transport(rogueCert).connect(target.address).catch((e: unknown) => e);
      if (isBlockMirrorError(rogue)) assert.equal(rogue.code, 'BM_ERR_CONNECT_FAILED');
      else await once(rogue as never, 'close');
      // plain TCP speaking the blockmirror protocol
      const plain = net.connect(target.address.port, '127.0.0.1');
      plain.on('error', () => {});
      plain.write(Buffer.from('BM\x01\x01 not tls at all'));
      plain.resume();
      await new Promise((resolve) => plain.once('close', resolve));
      assert.deepEqual(errors, [], 'none of them reached the replication handshake');
      const primary = await createPrimary({ peer: target.address, transport: transport(primaryCert), volumes: [{ name: 'v', device: new MemoryBlockDevice(MiB, { blockSize: 512 }), mode: 'sync', initialSync: 'none' }] });
      assert.equal((await primary.volume('v').write(0, Buffer.alloc(512, 9))).mirror, 'acknowledged');
      await primary.close();
    } finally {
      await target.close();
    }
  });

  it('freeze/copy cycles over TLS: a cycle source sends two cycles to a target that checks its certificate', async () => {
    const root = tempDir('tls');
    const device = await FileBlockDevice.open(join(root.dir, 'mirror.img'), { size: MiB, blockSize: 512 });
    const target = await createMirrorTarget({
      listen: { host: '127.0.0.1', port: 0 },
      transport: transport(targetCert, ['primary']),
      volumes: [{ name: 'v', device }],
      heartbeats: false,
      cycle: { dir: subDir(root.dir, 'state') },
    });
    const volume = await openVolume(root.dir, 'primary.img', MiB, { chunkSize: 64 * 1024 });
    const source = await createCycleSource({ volumes: [{ name: 'v', volume }], targets: [target.address], transport: transport(primaryCert, ['target']), interval: 0 });
    try {
      await linksUp(source);
      await volume.write(0, pattern(MiB, 1));
      assert.equal((await source.freezeNow()).targets[0]!.ok, true);
      await volume.write(64 * 1024, pattern(4096, 2));
      const expected = await volume.read(0, MiB);
      assert.equal((await source.freezeNow()).targets[0]!.ok, true);
      assert.deepEqual(await device.read(0, MiB), expected);
    } finally {
      await source.close();
      await volume.close();
      await target.close();
      await device.close();
      root.cleanup();
    }
  });

  it('a TCP client that never starts the TLS handshake is closed after handshakeTimeout (fake clock) and counted', async () => {
    const fake = FakeTimers.createClock(0);
    const t = new TlsTransport({ cert: targetCert.cert, key: targetCert.key, ca: pki.ca, handshakeTimeout: 2000, clock: clockFrom(fake) });
    const server = await t.listen({ host: '127.0.0.1', port: 0 });
    try {
      let connections = 0;
      server.on('connection', () => connections++);
      const silent = net.connect(server.address.port, '127.0.0.1');
      silent.on('error', () => {});
      silent.resume();
      await once(silent, 'connect');
      const closed = new Promise((resolve) => silent.once('close', resolve));
      // wait until the server accepted it (its timer is armed), without sleeping
      while (fake.countTimers() === 0) await new Promise<void>((resolve) => setImmediate(resolve));
      fake.tick(1999);
      assert.equal(silent.destroyed, false);
      fake.tick(1);
      await closed;
      assert.equal(server.stats.handshakeFailures, 1);
      assert.equal(connections, 0);
    } finally {
      await server.close();
    }
  });

  it('options: PEM or a SecureContext; bad PEM, a missing part and a malformed fingerprint are BM_ERR_INVALID_ARGUMENT', () => {
    const ctx = tls.createSecureContext({ cert: primaryCert.cert, key: primaryCert.key, ca: pki.ca });
    assert.ok(new TlsTransport({ secureContext: ctx }));
    assert.throws(() => new TlsTransport({ cert: primaryCert.cert, key: primaryCert.key }), (e) => isBlockMirrorError(e, 'BM_ERR_INVALID_ARGUMENT'));
    assert.throws(() => new TlsTransport({ cert: 'garbage', key: 'garbage', ca: pki.ca }), (e) => isBlockMirrorError(e, 'BM_ERR_INVALID_ARGUMENT'));
    assert.throws(() => parsePeerPatterns(['sha256:abcd']), (e) => isBlockMirrorError(e, 'BM_ERR_INVALID_ARGUMENT'));
    const fp = createHash('sha256').update('x').digest('hex');
    assert.deepEqual(parsePeerPatterns([`SHA256:${fp}`, 'name']), [{ kind: 'fingerprint', sha256: fp.toUpperCase() }, { kind: 'name', name: 'name' }]);
  });
});
