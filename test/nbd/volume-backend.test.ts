/**
 * NBD backends over blockmirror volumes: a primary volume (replies after the
 * mode says the write is done) and a mirror target volume (read-only).
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import type { TestContext } from 'node:test';
import { MemoryBlockDevice } from '../../src/device/memory-device.js';
import { NbdServer } from '../../src/nbd/server.js';
import { NBD_EPERM } from '../../src/nbd/protocol.js';
import { primaryVolumeBackend, targetVolumeBackend, type VolumeOpInfo } from '../../src/nbd/volume-backend.js';
import type { LinkState } from '../../src/replication/primary.js';
import { startPair, type Pair } from '../helpers/pair.js';
import { RecordingDevice } from '../helpers/recording-device.js';
import { RawClient } from './raw-client.js';

const KiB = 1024;

async function pairWith(t: TestContext, mode: 'sync' | 'async' = 'sync'): Promise<{ pair: Pair; p: RecordingDevice; m: RecordingDevice }> {
  const p = new RecordingDevice(new MemoryBlockDevice(1 << 20, { blockSize: 512 }));
  const m = new RecordingDevice(new MemoryBlockDevice(1 << 20, { blockSize: 512 }));
  // two blank devices: identical images, no initial sync (as --assume-clean)
  const pair = await startPair([{ name: 'vol0', mode, primaryDevice: p, targetDevice: m, initialSync: 'none' }]);
  t.after(() => pair.close());
  return { pair, p, m };
}

function waitForLink(pair: Pair, state: LinkState): Promise<void> {
  if (pair.primary.link === state) return Promise.resolve();
  return new Promise((resolve) => {
    const on = (s: LinkState): void => {
      if (s !== state) return;
      pair.primary.off('link', on);
      resolve();
    };
    pair.primary.on('link', on);
  });
}

describe('primaryVolumeBackend', () => {
  test('sync write: when it resolves, both devices hold the data; observer gets the latency and the result', async (t) => {
    const { pair, m } = await pairWith(t);
    const seen: VolumeOpInfo[] = [];
    const backend = primaryVolumeBackend(pair.primary.volume('vol0'), { observer: (i) => seen.push(i) });
    assert.equal(backend.size, 1 << 20);
    assert.equal(backend.blockSize, 512);
    assert.equal(backend.supports?.fua, pair.primary.volume('vol0').device.supports.fua, 'FUA capability follows the local device');
    const data = Buffer.alloc(8 * KiB, 0x5a);
    await backend.write(4 * KiB, data);
    assert.ok((await m.read(4 * KiB, 8 * KiB)).equals(data), 'mirror has it when the write resolves');
    assert.ok((await backend.read(4 * KiB, 8 * KiB)).equals(data));
    assert.equal(seen.length, 1);
    assert.equal(seen[0]!.op, 'write');
    assert.equal(seen[0]!.volume, 'vol0');
    assert.equal(seen[0]!.bytes, 8 * KiB);
    assert.equal(seen[0]!.result?.mirror, 'acknowledged');
    assert.ok(seen[0]!.seconds >= 0 && seen[0]!.seconds < 60);
  });

  test('FUA reaches both devices; trim and write-zeroes zero both sides; flush flushes the mirror', async (t) => {
    const { pair, p, m } = await pairWith(t);
    const seen: VolumeOpInfo[] = [];
    const backend = primaryVolumeBackend(pair.primary.volume('vol0'), { observer: (i) => seen.push(i) });
    await backend.write(0, Buffer.alloc(64 * KiB, 0xff), { fua: true });
    assert.ok(p.ops.some((o) => o.op === 'write' && o.fua), 'primary write with FUA');
    assert.ok(m.ops.some((o) => o.op === 'write' && o.fua), 'mirror write with FUA');
    await backend.trim!(0, 16 * KiB);
    await backend.writeZeroes!(32 * KiB, 16 * KiB, { fua: true, noHole: true });
    for (const dev of [p, m]) {
      const img = await dev.read(0, 64 * KiB);
      assert.ok(img.subarray(0, 16 * KiB).every((b) => b === 0));
      assert.ok(img.subarray(16 * KiB, 32 * KiB).every((b) => b === 0xff));
      assert.ok(img.subarray(32 * KiB, 48 * KiB).every((b) => b === 0));
      assert.ok(img.subarray(48 * KiB).every((b) => b === 0xff));
    }
    const flushes = m.count('flush');
    await backend.flush();
    assert.ok(m.count('flush') > flushes, 'the mirror flushed');
    assert.deepEqual(seen.map((s) => s.op), ['write', 'zero', 'zero', 'flush']);
  });

  test('sync mode with the link down: the write succeeds locally and resolves (NBD success), the volume lags', async (t) => {
    const { pair, p } = await pairWith(t);
    const seen: VolumeOpInfo[] = [];
    const backend = primaryVolumeBackend(pair.primary.volume('vol0'), { observer: (i) => seen.push(i) });
    const down = waitForLink(pair, 'down');
    await pair.target.close();
    await down;
    await backend.write(0, Buffer.alloc(4 * KiB, 1));
    assert.ok((await p.read(0, 4 * KiB)).every((b) => b === 1));
    assert.equal(seen[0]!.result?.mirror, 'failed');
    assert.equal(seen[0]!.error, undefined);
    const st = pair.primary.volume('vol0').status();
    assert.equal(st.state, 'lagging');
    assert.equal(st.pendingBytes, 4 * KiB);
  });

  test('a local failure rejects (NBD error reply) and is reported to the observer', async (t) => {
    const { pair, p } = await pairWith(t, 'async');
    const seen: VolumeOpInfo[] = [];
    const backend = primaryVolumeBackend(pair.primary.volume('vol0'), { observer: (i) => seen.push(i) });
    await p.inner.close();
    await assert.rejects(backend.write(0, Buffer.alloc(512)), { code: 'BM_ERR_CLOSED' });
    assert.equal(seen.length, 1);
    assert.equal((seen[0]!.error as { code?: string }).code, 'BM_ERR_CLOSED');
  });

  test('a throwing observer does not fail the write', async (t) => {
    const { pair } = await pairWith(t);
    const backend = primaryVolumeBackend(pair.primary.volume('vol0'), {
      observer: () => {
        throw new Error('observer bug');
      },
    });
    await backend.write(0, Buffer.alloc(512, 3));
  });

  test('through NbdServer: the WRITE reply arrives after the mirror has the data', async (t) => {
    const { pair, m } = await pairWith(t);
    const server = new NbdServer({ exports: [{ name: 'vol0', readOnly: false, backend: primaryVolumeBackend(pair.primary.volume('vol0')) }] });
    const { port } = await server.listen({ port: 0 });
    t.after(() => server.close());
    const client = await RawClient.connect(port);
    t.after(() => client.destroy());
    await client.go('vol0');
    const data = Buffer.alloc(16 * KiB, 0xc3);
    assert.equal(await client.writeAt(1, 64 * KiB, data), 0);
    assert.ok((await m.read(64 * KiB, 16 * KiB)).equals(data));
    await client.disconnect();
  });
});

describe('primaryVolumeBackend allocation', () => {
  test('blockStatus is the local device\'s when it knows its allocation; absent for a device without blockStatus', async (t) => {
    const pair = await startPair([{ name: 'mem' }, { name: 'plain', primaryDevice: new RecordingDevice(new MemoryBlockDevice(1 << 20, { blockSize: 512 })) }]);
    t.after(() => pair.close());
    const mem = primaryVolumeBackend(pair.primary.volume('mem'));
    await mem.write(128 * KiB, Buffer.alloc(4 * KiB, 7));
    assert.deepEqual(
      (await mem.blockStatus!(0, 1 << 20)).map((e) => [e.offset, e.length, e.zero]),
      [
        [0, 128 * KiB, true],
        [128 * KiB, 64 * KiB, false],
        [192 * KiB, (1 << 20) - 192 * KiB, true],
      ],
    );
    assert.equal(primaryVolumeBackend(pair.primary.volume('plain')).blockStatus, undefined);
  });
});

describe('targetVolumeBackend', () => {
  test('reads the mirror image; refuses writes (BM_ERR_READ_ONLY); a read-only export answers EPERM', async (t) => {
    const { pair } = await pairWith(t);
    await pair.primary.volume('vol0').write(0, Buffer.alloc(4 * KiB, 9));
    const backend = targetVolumeBackend(pair.target.volume('vol0'));
    assert.equal(backend.size, 1 << 20);
    assert.equal(backend.blockSize, 512);
    assert.equal(backend.trim, undefined);
    assert.ok((await backend.read(0, 4 * KiB)).every((b) => b === 9));
    await assert.rejects(backend.write(0, Buffer.alloc(512)), { code: 'BM_ERR_READ_ONLY' });
    await backend.flush();

    const server = new NbdServer({ exports: [{ name: 'vol0', readOnly: true, backend }] });
    const { port } = await server.listen({ port: 0 });
    t.after(() => server.close());
    const client = await RawClient.connect(port);
    t.after(() => client.destroy());
    await client.go('vol0');
    assert.equal(await client.writeAt(1, 0, Buffer.alloc(512, 1)), NBD_EPERM);
    const r = await client.readAt(2, 0, 4 * KiB);
    assert.equal(r.error, 0);
    assert.ok(r.data.every((b) => b === 9));
    await client.disconnect();
    assert.ok((await pair.target.volume('vol0').read(0, 512)).every((b) => b === 9), 'mirror unchanged');
  });
});
