/**
 * Writes longer than one mirror request can carry (the codec's payload limit,
 * 8 MiB by default): the volume sends them as consecutive parts, one seq
 * each, and the stream goes on afterwards (issue 11, scenario 12).
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { describe, test } from 'node:test';
import { MemoryBlockDevice } from '../../src/device/memory-device.js';
import { isBlockMirrorError } from '../../src/errors.js';
import { createPrimary, type PrimaryOptions } from '../../src/replication/primary.js';
import type { ReplicationMode } from '../../src/replication/primary-volume.js';
import { MemoryNetwork } from '../../src/transport/memory.js';
import { imagesEqual, startPair, type Pair } from '../helpers/pair.js';

const KiB = 1024;
const MiB = 1024 * KiB;

async function memoryPair(mode: ReplicationMode, size: number, primary: Partial<PrimaryOptions> = {}, blockSize = 512): Promise<Pair> {
  const network = new MemoryNetwork();
  const primaryDevice = new MemoryBlockDevice(size, { blockSize });
  const targetDevice = new MemoryBlockDevice(size, { blockSize });
  // two blank devices: identical, no initial sync (as --assume-clean; hashing a 6 GiB sparse volume is not the point here)
  return startPair([{ name: 'v', mode, size, primaryDevice, targetDevice, initialSync: 'none' }], {
    target: { transport: network.transport({ host: '10.0.0.2' }), listen: { host: '10.0.0.2', port: 0 } },
    primary: { transport: network.transport({ host: '10.0.0.1' }), ...primary },
  });
}

describe('writes larger than the link payload limit', () => {
  for (const mode of ['sync', 'async'] as const) {
    test(`SPEC 10/14: ${mode}: a 20 MiB volume.write goes as 8 MiB parts with consecutive seqs, reaches the target, and later writes still do`, async () => {
      const pair = await memoryPair(mode, 32 * MiB);
      try {
        const v = pair.primary.volume('v');
        const before = v.status().lastSeq;
        const data = randomBytes(20 * MiB);
        const r = await v.write(4 * MiB, data);
        assert.equal(r.error, undefined);
        assert.equal(r.mirror, mode === 'sync' ? 'acknowledged' : 'queued');
        // 8 + 8 + 4 MiB: three requests, three seqs, the result names the last
        assert.equal(r.seq, before + 3);
        assert.equal(v.status().lastSeq, before + 3);
        if (mode === 'sync') {
          // acknowledged: the target has every part before the write resolved
          assert.equal(v.ackedSeq >= r.seq, true);
          const got = await pair.devices.get('v')!.target.read(4 * MiB, 20 * MiB);
          assert.ok(got.equals(data), 'the target holds the 20 MiB at once');
        }
        const small = await v.write(0, Buffer.alloc(4 * KiB, 0x33));
        assert.equal(small.seq, before + 4);
        await pair.primary.drain(30_000);
        assert.equal(await imagesEqual(pair, 'v'), true);
        const s = v.status();
        assert.equal(s.inSync, true);
        assert.equal(s.replicatedBytes, 20 * MiB + 4 * KiB);
        assert.equal(s.mirrorErrors, 0);
      } finally {
        await pair.close();
      }
    });
  }

  test('SPEC 14: parts follow the configured limit rounded down to the block size, in order; a write at the limit is one request', async () => {
    // limit 1 MiB + 512 bytes, 4 KiB blocks: parts of 1 MiB (the largest multiple of the block size)
    const pair = await memoryPair('async', 8 * MiB, { limits: { maxPayloadLength: MiB + 512 } }, 4 * KiB);
    try {
      const v = pair.primary.volume('v');
      const one = await v.write(0, randomBytes(MiB));
      assert.equal(one.seq, 1, 'a part-sized write: one request');
      const data = randomBytes(5 * MiB + 4 * KiB);
      const r = await v.write(2 * MiB, data);
      assert.equal(r.mirror, 'queued');
      assert.equal(r.seq, 1 + 6, 'five parts of 1 MiB and one of 4 KiB');
      await pair.primary.drain(30_000);
      assert.equal(await imagesEqual(pair, 'v'), true);
      assert.equal(v.status().replicatedBytes, MiB + data.length);
    } finally {
      await pair.close();
    }
  });

  test('SPEC 10: sync: a 48 MiB zero is one range record (no payload, not split) and is acknowledged; a large write over it still lands', async () => {
    const pair = await memoryPair('sync', 64 * MiB);
    try {
      const v = pair.primary.volume('v');
      const w0 = await v.write(0, Buffer.alloc(64 * MiB, 0x11));
      const z = await v.zero(0, 48 * MiB);
      assert.equal(z.mirror, 'acknowledged');
      assert.equal(z.seq, w0.seq! + 1);
      const w = await v.write(16 * MiB, randomBytes(24 * MiB));
      assert.equal(w.mirror, 'acknowledged');
      assert.equal(await imagesEqual(pair, 'v'), true);
    } finally {
      await pair.close();
    }
  });

  for (const mode of ['sync', 'async'] as const) {
    test(`SPEC 10/14: ${mode}: a 5 GiB zero (beyond the largest Buffer) on a sparse 6 GiB volume is one range record and the stream goes on`, async () => {
      const GiB = 1024 * MiB;
      const pair = await memoryPair(mode, 6 * GiB);
      try {
        const v = pair.primary.volume('v');
        const target = pair.devices.get('v')!.target;
        await v.write(5 * GiB - 4 * KiB, Buffer.alloc(8 * KiB, 0x44));
        const z = await v.zero(0, 5 * GiB);
        assert.equal(z.mirror, mode === 'sync' ? 'acknowledged' : 'queued');
        assert.equal(z.seq, 2, 'one record for the whole range');
        if (mode === 'async') assert.ok(v.status().journalBytes < 64 * KiB, `journal holds the range, not its bytes (${v.status().journalBytes})`);
        const w = await v.write(5 * GiB + 4 * KiB, Buffer.alloc(4 * KiB, 0x55));
        assert.equal(w.mirror, mode === 'sync' ? 'acknowledged' : 'queued');
        await pair.primary.drain();
        assert.equal(v.ackedSeq, w.seq);
        const tail = await target.read(5 * GiB - 4 * KiB, 12 * KiB);
        assert.ok(tail.subarray(0, 4 * KiB).every((b) => b === 0), 'zeroed on the target');
        assert.ok(tail.subarray(4 * KiB, 8 * KiB).every((b) => b === 0x44), 'beyond the zeroed range: untouched');
        assert.ok(tail.subarray(8 * KiB).every((b) => b === 0x55), 'the later write');
      } finally {
        await pair.close();
      }
    });
  }

  test('resync.regionSize larger than the payload limit is refused (one resync write is one request)', async () => {
    const network = new MemoryNetwork();
    await assert.rejects(
      createPrimary({
        peer: { host: '10.0.0.2', port: 1 },
        transport: network.transport({ host: '10.0.0.1' }),
        volumes: [{ name: 'v', device: new MemoryBlockDevice(MiB, { blockSize: 512 }) }],
        limits: { maxPayloadLength: 256 * KiB },
        resync: { regionSize: 512 * KiB },
      }),
      (e: unknown) => isBlockMirrorError(e, 'BM_ERR_INVALID_ARGUMENT'),
    );
  });
});
