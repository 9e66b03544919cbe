import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { MemoryNetwork } from '../../src/transport/memory.js';
import { MemoryBlockDevice } from '../../src/device/memory-device.js';
import type { BlockDevice, BlockDeviceSupports } from '../../src/device/block-device.js';
import { createMirrorTarget } from '../../src/replication/mirror-target.js';
import { createPrimary, type PrimaryOptions } from '../../src/replication/primary.js';
import { onceEvent } from '../helpers/events.js';
import { WrappedDevice } from '../helpers/wrapped-device.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const P = '10.6.0.1';
const T = '10.6.0.2';
const LINK = { heartbeatInterval: 10, staleAfter: 600, probation: 20 };

/** A device that does not know its allocation (no `blockStatus`): zero ranges are found by reading. */
class NoAllocation extends WrappedDevice {
  override get supports(): BlockDeviceSupports {
    return { ...this.inner.supports, allocation: false };
  }
}

/** A device counting reads. */
class CountingReads extends WrappedDevice {
  bytesRead = 0;
  override read(offset: number, length: number): Promise<Buffer> {
    this.bytesRead += length;
    return super.read(offset, length);
  }
  blockStatus(offset: number, length: number): ReturnType<NonNullable<BlockDevice['blockStatus']>> {
    return this.inner.blockStatus!(offset, length);
  }
}

/** `size` bytes with `data` bytes of random data in 256 KiB pieces spread over the volume. */
async function sparse(size: number, data: number): Promise<MemoryBlockDevice> {
  const d = new MemoryBlockDevice(size, { blockSize: 512 });
  const piece = 256 * KiB;
  const pieces = data / piece;
  const stride = Math.floor(size / pieces / piece) * piece;
  for (let i = 0; i < pieces; i++) await d.write(i * stride, randomBytes(piece));
  return d;
}

async function setup(primaryDevice: BlockDevice, targetDevice: BlockDevice, extra: Partial<PrimaryOptions> = {}, initialSync?: 'full' | 'checksum') {
  const network = new MemoryNetwork();
  const target = await createMirrorTarget({ transport: network.transport({ host: T }), listen: { host: T, port: 0 }, volumes: [{ name: 'v', device: targetDevice }], ...LINK });
  const primary = await createPrimary({
    transport: network.transport({ host: P }),
    peer: target.address,
    volumes: [{ name: 'v', device: primaryDevice, mode: 'async', ...(initialSync === undefined ? {} : { initialSync }) }],
    ...LINK,
    ...extra,
  });
  return { network, target, primary };
}

interface SyncResult {
  bytesSent: number;
  zeroBytesSent: number;
  regions: number;
}

for (const method of ['checksum', 'full'] as const) {
  test(`${method === 'checksum' ? 'SPEC 25: ' : ''}zero-aware initial sync (${method}) of a 64 MiB volume holding 1 MiB: ≈ the data on the wire, the rest as zero ranges (allocation known)`, async () => {
    const size = 64 * MiB;
    const data = MiB;
    const pdev = await sparse(size, data);
    // the target holds stale bytes where the primary has holes: they must be zeroed
    const tdev = new MemoryBlockDevice(size, { blockSize: 512 });
    await tdev.write(40 * MiB, Buffer.alloc(128 * KiB, 0x5a));
    const { network, target, primary } = await setup(pdev, tdev, {}, method);
    try {
      const [result] = await onceEvent<[SyncResult]>(primary, 'resync-done');
      await primary.drain(20000);
      assert.deepEqual(await tdev.read(0, size), await pdev.read(0, size));
      assert.equal(result.bytesSent, data, 'only the data regions carry payload');
      if (method === 'full') assert.equal(result.zeroBytesSent, size - data);
      // checksum: a run of holes the target also reads as zeroes (one digest for the run) is not sent; the run with stale bytes is, as a zero range
      else assert.ok(result.zeroBytesSent >= 128 * KiB && result.zeroBytesSent < size - data, `zero ranges sent: ${result.zeroBytesSent}`);
      const wire = network.streamBytesSent;
      assert.ok(wire <= 1.1 * data, `bytes on the wire ${wire} for ${data} bytes of data in a ${size}-byte volume`);
    } finally {
      await primary.close();
      await target.close();
    }
  });
}

test('zero-aware initial sync of a device that does not know its allocation: regions read as all zero go as zero ranges, never as bytes', async () => {
  const size = 16 * MiB;
  const data = MiB;
  const inner = await sparse(size, data);
  const pdev = new NoAllocation(inner);
  const tdev = new MemoryBlockDevice(size, { blockSize: 512 });
  const { network, target, primary } = await setup(pdev, tdev, {}, 'full');
  try {
    const [result] = await onceEvent<[SyncResult]>(primary, 'resync-done');
    await primary.drain(20000);
    assert.deepEqual(await tdev.read(0, size), await inner.read(0, size));
    assert.equal(result.bytesSent, data);
    assert.equal(result.zeroBytesSent, size - data);
    const regions = size / (64 * KiB);
    const wire = network.streamBytesSent;
    // a zero record and its acknowledgement per region: well under 1 % of the region
    assert.ok(wire <= data + regions * 256, `bytes on the wire ${wire}: data ${data} + ${regions} small records`);
    assert.equal(tdev.allocatedBytes, data, 'the target writes nothing where it already reads zeroes');
  } finally {
    await primary.close();
    await target.close();
  }
});

test('zero-aware bitmap resync: regions the primary zeroed behind the link reach the target as zero ranges; it converges byte for byte', async () => {
  const size = 32 * MiB;
  const pdev = new MemoryBlockDevice(size, { blockSize: 512 });
  const tdev = new MemoryBlockDevice(size, { blockSize: 512 });
  // both hold 8 MiB of the same data (paired, in sync)
  const content = randomBytes(8 * MiB);
  await pdev.write(0, content);
  await tdev.write(0, content);
  const { network, target, primary } = await setup(pdev, tdev, {}, 'full');
  try {
    await onceEvent(primary, 'resync-done');
    await primary.drain(20000);
    // the primary's copy of the first 6 MiB becomes zero (as data writes of zeroes, not as zero requests), tracked as dirty
    await pdev.write(0, Buffer.alloc(6 * MiB));
    const before = network.streamBytesSent;
    await primary.resync('v', { all: true });
    await primary.drain(20000);
    assert.deepEqual(await tdev.read(0, size), await pdev.read(0, size));
    const wire = network.streamBytesSent - before;
    assert.ok(wire <= 2 * MiB * 1.1 + 64 * KiB, `bytes on the wire ${wire}: the 2 MiB still holding data, not the 6 MiB of zeroes nor the 24 MiB hole`);
  } finally {
    await primary.close();
    await target.close();
  }
});

test('zero-aware verify: ranges known zero on both sides are not read for their digests', async () => {
  const size = 32 * MiB;
  const pinner = await sparse(size, MiB);
  const pdev = new CountingReads(pinner);
  const tinner = new MemoryBlockDevice(size, { blockSize: 512 });
  for (const e of await pinner.blockStatus(0, size)) if (!e.zero) await tinner.write(e.offset, await pinner.read(e.offset, e.length));
  const tdev = new CountingReads(tinner);
  const { target, primary } = await setup(pdev, tdev, {}, 'checksum');
  try {
    await onceEvent(primary, 'resync-done');
    await primary.drain(20000);
    pdev.bytesRead = 0;
    tdev.bytesRead = 0;
    const result = await primary.verify('v');
    assert.deepEqual(result.mismatches, []);
    assert.equal(pdev.bytesRead, MiB, 'the primary reads only its data regions');
    assert.equal(tdev.bytesRead, MiB, 'the target reads only its data regions');
  } finally {
    await primary.close();
    await target.close();
  }
});
