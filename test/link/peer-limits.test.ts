/**
 * Limits of the peer port against hostile clients on real sockets (127.0.0.1,
 * port 0): bounded pre-auth buffering, unauthenticated connections, sessions.
 * The primary already paired keeps working under each.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { once } from 'node:events';
import { encodeFrame } from '../../src/codec/encoder.js';
import { MessageType } from '../../src/codec/frame.js';
import { MemoryBlockDevice } from '../../src/device/memory-device.js';
import { createPrimary } from '../../src/replication/primary.js';
import { startPair } from '../helpers/pair.js';

const MiB = 1 << 20;

function rawSocket(port: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const sock = net.connect(port, '127.0.0.1');
    sock.once('error', reject);
    sock.once('connect', () => {
      sock.off('error', reject);
      sock.on('error', () => {});
      sock.resume();
      resolve(sock);
    });
  });
}

test('before authentication a frame with a payload closes the connection before anything is buffered; the paired primary is unaffected', async () => {
  const pair = await startPair([{ name: 'v', mode: 'sync' }], { target: { secret: 's3cret' }, primary: { secret: 's3cret' } });
  try {
    const errors = new Promise<string>((resolve) => pair.target.once('connection-error', (e) => resolve(e.code)));
    const sock = await rawSocket(pair.target.address.port);
    const closed = once(sock, 'close');
    // a HELLO-typed frame announcing a 4 MiB payload: refused from its 20-byte prefix
    const [head] = encodeFrame(MessageType.HELLO, { node: 'x' }, Buffer.alloc(4 * MiB), { limits: { maxHeaderLength: 65535, maxPayloadLength: 8 * MiB } });
    sock.write(head!);
    assert.equal(await errors, 'BM_ERR_FRAME_TOO_LARGE');
    await closed;
    assert.equal((await pair.primary.volume('v').write(0, Buffer.alloc(512, 1))).mirror, 'acknowledged');
  } finally {
    await pair.close();
  }
});

test('beyond maxUnauthenticated a connection is closed at once with BM_ERR_TOO_MANY_CONNECTIONS; the paired primary is unaffected', async () => {
  const pair = await startPair([{ name: 'v', mode: 'sync' }], { target: { maxUnauthenticated: 8 } });
  try {
    const silent = await Promise.all(Array.from({ length: 8 }, () => rawSocket(pair.target.address.port)));
    const refused = new Promise<string>((resolve) => pair.target.once('connection-error', (e) => resolve(e.code)));
    const extra = await rawSocket(pair.target.address.port);
    const extraClosed = once(extra, 'close');
    assert.equal(await refused, 'BM_ERR_TOO_MANY_CONNECTIONS');
    await extraClosed;
    assert.equal(pair.target.refusedConnections, 1);
    // the paired primary was already authenticated: unaffected
    assert.equal((await pair.primary.volume('v').write(0, Buffer.alloc(512, 2))).mirror, 'acknowledged');
    for (const s of silent) s.destroy();
  } finally {
    await pair.close();
  }
});

test('beyond maxSessions a new primary session is refused with BM_ERR_TOO_MANY_CONNECTIONS and claims nothing', async () => {
  const pair = await startPair([{ name: 'v', mode: 'sync' }], { target: { maxSessions: 1 } });
  try {
    const refused = new Promise<string>((resolve) => pair.target.once('refused', (r) => resolve(r.error.code)));
    await assert.rejects(
      createPrimary({
        peer: pair.target.address,
        volumes: [{ name: 'v', device: new MemoryBlockDevice(MiB, { blockSize: 512 }), mode: 'async' }],
      }),
      { code: 'BM_ERR_TOO_MANY_CONNECTIONS' },
    );
    assert.equal(await refused, 'BM_ERR_TOO_MANY_CONNECTIONS');
    assert.equal(pair.target.status().peers.length, 1);
    assert.equal((await pair.primary.volume('v').write(0, Buffer.alloc(512, 3))).mirror, 'acknowledged');
    // a restart of the same node (a new session) would replace its old session: the session limit lets it
    // through to the claim decision (which refuses this memory-only primary's new lineage, as it should)
    const nodeId = pair.primary.nodeId;
    const device = pair.devices.get('v')!.primary;
    await pair.primary.close({ drain: false });
    await assert.rejects(createPrimary({ peer: pair.target.address, nodeId, volumes: [{ name: 'v', device, mode: 'sync' }] }), { code: 'BM_ERR_SPLIT_BRAIN' });
  } finally {
    await pair.close();
  }
});
