/**
 * Region hashing for checksum resync and online verify: digests against known
 * content, chunked reads (≤ 1 MiB), bounded concurrency, mismatch detection,
 * errors and abort.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { describe, it } from 'node:test';
import type { BlockDevice } from '../../src/device/block-device.js';
import { MemoryBlockDevice } from '../../src/device/memory-device.js';
import { isBlockMirrorError } from '../../src/errors.js';
import type { ErrorCode } from '../../src/errors.js';
import { MemoryDirtyBitmap } from '../../src/resync/dirty-bitmap.js';
import {
  DEFAULT_REGION_HASH,
  MAX_HASH_CHUNK,
  compareDigests,
  digestLength,
  hashRegion,
  hashRegions,
} from '../../src/resync/region-hash.js';
import type { RegionHashAlgorithm } from '../../src/resync/region-hash.js';

const MiB = 1024 * 1024;

/** Deterministic content: byte i of the volume. */
function content(size: number, seed = 1): Buffer {
  const out = Buffer.allocUnsafe(size);
  let x = seed >>> 0;
  for (let i = 0; i < size; i++) {
    x = (x * 1103515245 + 12345) >>> 0;
    out[i] = x >>> 24;
  }
  return out;
}

async function deviceWith(data: Buffer, blockSize = 512): Promise<MemoryBlockDevice> {
  const device = new MemoryBlockDevice(data.length, { blockSize });
  await device.write(0, data);
  return device;
}

/** Wraps a device and records reads: their lengths and the highest number in flight at once. */
class ReadProbe implements BlockDevice {
  readonly reads: number[] = [];
  inFlight = 0;
  maxInFlight = 0;
  failAt: number | null = null;
  constructor(readonly inner: BlockDevice) {}
  get size(): number {
    return this.inner.size;
  }
  get blockSize(): number {
    return this.inner.blockSize;
  }
  get supports(): BlockDevice['supports'] {
    return this.inner.supports;
  }
  async read(offset: number, length: number): Promise<Buffer> {
    this.reads.push(length);
    this.inFlight++;
    this.maxInFlight = Math.max(this.maxInFlight, this.inFlight);
    try {
      // Let other reads start before this one completes.
      await new Promise<void>((resolve) => setImmediate(resolve));
      if (this.failAt !== null && offset <= this.failAt && this.failAt < offset + length) {
        throw Object.assign(new Error('injected read error'), { code: 'EIO' });
      }
      return await this.inner.read(offset, length);
    } finally {
      this.inFlight--;
    }
  }
  write(offset: number, data: Uint8Array): Promise<void> {
    return this.inner.write(offset, data);
  }
  flush(): Promise<void> {
    return this.inner.flush();
  }
  close(): Promise<void> {
    return this.inner.close();
  }
}

function rejectsCode(promise: Promise<unknown>, code: ErrorCode): Promise<void> {
  return assert.rejects(promise, (error: unknown) => {
    assert.ok(isBlockMirrorError(error, code), `expected ${code}, got ${String(error)}`);
    return true;
  });
}

describe('region hashing', () => {
  it('hashRegion gives the digest of the bytes of the range, for each algorithm (default sha256)', async () => {
    const data = content(3 * MiB + 4096);
    const device = await deviceWith(data);
    assert.equal(DEFAULT_REGION_HASH, 'sha256');
    for (const algorithm of ['sha256', 'sha1', 'md5'] as RegionHashAlgorithm[]) {
      const expected = createHash(algorithm).update(data.subarray(512, 512 + 2 * MiB + 1024)).digest();
      assert.deepEqual(await hashRegion(device, 512, 2 * MiB + 1024, algorithm), expected, algorithm);
      assert.deepEqual(await hashRegion(device, 512, 2 * MiB + 1024, { algorithm, chunkSize: 4096 }), expected, `${algorithm}, 4 KiB chunks`);
      assert.equal(expected.length, digestLength(algorithm));
    }
    const whole = createHash('sha256').update(data).digest();
    assert.deepEqual(await hashRegion(device, 0, data.length), whole);
    assert.deepEqual(await hashRegion(device, 0, 0), createHash('sha256').digest(), 'empty range');
    await device.close();
  });

  it('reads a region in chunks of at most 1 MiB (or the chunkSize given), one chunk of read-ahead', async () => {
    const probe = new ReadProbe(await deviceWith(content(4 * MiB)));
    await hashRegion(probe, 0, 3 * MiB + 512);
    assert.deepEqual(probe.reads, [MiB, MiB, MiB, 512]);
    assert.ok(probe.maxInFlight <= 1, 'the read-ahead starts once the previous chunk arrived');
    probe.reads.length = 0;
    await hashRegion(probe, MiB, 64 * 1024, { chunkSize: 16 * 1024 });
    assert.deepEqual(probe.reads, [16384, 16384, 16384, 16384]);
    await probe.close();
  });

  it('hashRegions: digests in input order, at most `concurrency` regions at once, bitmap regions accepted', async () => {
    const size = 8 * MiB;
    const data = content(size);
    const probe = new ReadProbe(await deviceWith(data));
    const bitmap = new MemoryDirtyBitmap({ volumeSize: size, regionSize: 256 * 1024 });
    for (const i of [1, 2, 5, 9, 10, 11, 17, 30, 31]) bitmap.mark(i * 256 * 1024, 1);
    const regions = [...bitmap.dirtyRegions()];
    const digests = await hashRegions(probe, bitmap.dirtyRegions(), { concurrency: 3 });
    assert.equal(digests.length, regions.length);
    for (let i = 0; i < regions.length; i++) {
      const r = regions[i] as { offset: number; length: number };
      assert.deepEqual(digests[i], createHash('sha256').update(data.subarray(r.offset, r.offset + r.length)).digest(), `region ${i}`);
    }
    assert.ok(probe.maxInFlight <= 3, `at most 3 reads in flight, saw ${probe.maxInFlight}`);
    assert.ok(probe.maxInFlight >= 2, `regions were hashed concurrently (saw ${probe.maxInFlight})`);
    assert.ok(Math.max(...probe.reads) <= MAX_HASH_CHUNK);
    assert.deepEqual(await hashRegions(probe, []), []);
    await probe.close();
  });

  it('compareDigests finds the region where a byte was flipped behind our back', async () => {
    const size = 4 * MiB;
    const data = content(size);
    const primary = await deviceWith(data);
    const flipped = Buffer.from(data);
    flipped[5 * 65536 + 777] = (flipped[5 * 65536 + 777] as number) ^ 0x01;
    const target = await deviceWith(flipped);
    const bitmap = new MemoryDirtyBitmap({ volumeSize: size, regionSize: 65536 });
    bitmap.markAll();
    const regions = [...bitmap.dirtyRegions()];
    const [a, b] = await Promise.all([hashRegions(primary, regions, { algorithm: 'md5' }), hashRegions(target, regions, { algorithm: 'md5' })]);
    assert.deepEqual(compareDigests(a, b), [5]);
    assert.deepEqual(compareDigests(a, a), []);
    assert.deepEqual(compareDigests(a, b.slice(0, 60)), [5, 60, 61, 62, 63], 'missing entries count as mismatches');
    await primary.close();
    await target.close();
  });

  it('refuses bad ranges and options with coded errors, propagates read errors, stops on abort', async () => {
    const probe = new ReadProbe(await deviceWith(content(2 * MiB), 4096));
    await rejectsCode(hashRegion(probe, 512, 4096), 'BM_ERR_MISALIGNED');
    await rejectsCode(hashRegion(probe, 0, 4 * MiB), 'BM_ERR_OUT_OF_RANGE');
    await rejectsCode(hashRegion(probe, 0, 4096, 'crc32' as RegionHashAlgorithm), 'BM_ERR_INVALID_ARGUMENT');
    await rejectsCode(hashRegion(probe, 0, 4096, { chunkSize: 2 * MiB }), 'BM_ERR_INVALID_ARGUMENT');
    await rejectsCode(hashRegion(probe, 0, 4096, { chunkSize: 1000 }), 'BM_ERR_INVALID_ARGUMENT');
    await rejectsCode(hashRegions(probe, [{ offset: 0, length: 4096 }], { concurrency: 0 }), 'BM_ERR_INVALID_ARGUMENT');
    await rejectsCode(hashRegions(probe, [{ offset: 0, length: 4096 }, { offset: 4096, length: 100 }]), 'BM_ERR_MISALIGNED');

    probe.failAt = MiB + 5;
    const regions = Array.from({ length: 32 }, (_, i) => ({ offset: i * 65536, length: 65536 }));
    await rejectsCode(hashRegions(probe, regions, { concurrency: 4 }), 'BM_ERR_IO');
    assert.equal(probe.inFlight, 0, 'no read left running');
    probe.failAt = null;

    const controller = new AbortController();
    const reason = new Error('verify stopped');
    controller.abort(reason);
    await assert.rejects(hashRegion(probe, 0, 65536, { signal: controller.signal }), (e: unknown) => e === reason);
    const live = new AbortController();
    probe.reads.length = 0;
    const running = hashRegions(probe, regions, { concurrency: 2, signal: live.signal, chunkSize: 16384 });
    live.abort(reason);
    await assert.rejects(running, (e: unknown) => e === reason);
    assert.ok(probe.reads.length < regions.length * 4, 'stopped before reading everything');
    await probe.close();
  });
});
