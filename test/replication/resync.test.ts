import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MemoryNetwork } from '../../src/transport/memory.js';
import { MemoryBlockDevice } from '../../src/device/memory-device.js';
import { FileBlockDevice } from '../../src/device/file-device.js';
import { createMirrorTarget } from '../../src/replication/mirror-target.js';
import { createPrimary, type PrimaryOptions } from '../../src/replication/primary.js';
import { RecordingDevice } from '../helpers/recording-device.js';
import { onceEvent } from '../helpers/events.js';
import { cutOff } from '../helpers/network.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const P = '10.5.0.1';
const T = '10.5.0.2';
const LINK = { heartbeatInterval: 10, staleAfter: 80, probation: 20 };

async function filled(size: number, seed = 1): Promise<MemoryBlockDevice> {
  const d = new MemoryBlockDevice(size, { blockSize: 512 });
  for (let off = 0; off < size; off += MiB) await d.write(off, randomBytes(Math.min(MiB, size - off)).fill(seed, 0, 1));
  return d;
}

async function setup(primaryDevice: MemoryBlockDevice | RecordingDevice, targetDevice: MemoryBlockDevice | RecordingDevice, extra: Partial<PrimaryOptions> = {}, initialSync?: 'full' | 'checksum') {
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

test('initial sync of a blank target while writes continue: identical at the end, status inconsistent during the copy', async () => {
  const size = 8 * MiB;
  const pdev = await filled(size);
  const tdev = new MemoryBlockDevice(size, { blockSize: 512 });
  const states: string[] = [];
  const { target, primary } = await setup(pdev, tdev, { resync: { concurrency: 4 } }, 'full');
  try {
    states.push(primary.volume('v').state);
    primary.on('volume-state', (e) => states.push(e.state));
    const done = onceEvent<[{ bytesSent: number }]>(primary, 'resync-done');
    // writes continue during the initial sync; the copy never overwrites them with older data
    for (let i = 0; i < 64; i++) await primary.volume('v').write(((i * 37) % 128) * 64 * KiB, Buffer.alloc(4 * KiB, i + 1));
    const [result] = await done;
    await primary.drain(20000);
    assert.deepEqual(await tdev.read(0, size), await pdev.read(0, size));
    assert.ok(result.bytesSent >= size, 'every region was sent');
    assert.equal(states[0], 'inconsistent', `states: ${states.join(',')}`);
    assert.equal(states.at(-1), 'in-sync', `states: ${states.join(',')}`);
    assert.equal(primary.volume('v').status().bitmapDirtyRegions, 0, 'write-intent bits cleared once nothing is pending');
    assert.equal(primary.volume('v').state, 'in-sync');
  } finally {
    await primary.close();
    await target.close();
  }
});

test('SPEC 25: initial sync with checksums of a target that already holds the data sends no region payloads', async () => {
  const size = 8 * MiB;
  const pdev = await filled(size, 9);
  const tdev = new MemoryBlockDevice(size, { blockSize: 512 });
  await tdev.write(0, await pdev.read(0, size));
  const { network, target, primary } = await setup(pdev, tdev, {}, 'checksum');
  try {
    const before = network.streamBytesSent;
    const [result] = await onceEvent<[{ bytesSent: number; regions: number; regionsSent: number }]>(primary, 'resync-done');
    assert.equal(result.regions, size / (64 * KiB));
    assert.equal(result.regionsSent, 0);
    assert.equal(result.bytesSent, 0);
    await primary.drain();
    assert.equal(primary.volume('v').status().bitmapDirtyRegions, 0);
    const wire = network.streamBytesSent - before;
    assert.ok(wire < size / 50, `only digests and headers on the wire: ${wire} bytes for a ${size}-byte volume`);
    // one region differs: only it is sent
    await tdev.write(3 * MiB, Buffer.alloc(4096, 0xee));
    await primary.resync('v', { all: true });
    assert.deepEqual(await tdev.read(0, size), await pdev.read(0, size));
  } finally {
    await primary.close();
    await target.close();
  }
});

test('an interrupted resync resumes where it stopped (bytes on the wire ≤ 1.1 × dirty bytes)', async () => {
  const size = 16 * MiB;
  const pdev = await filled(size, 3);
  const tinner = new MemoryBlockDevice(size, { blockSize: 512 });
  const tdev = new RecordingDevice(tinner);
  const { network, target, primary } = await setup(pdev, tdev, { resync: { concurrency: 2 } });
  try {
    const before = network.streamBytesSent;
    let cut = false;
    tdev.on('op', (op) => {
      // cut the link once about a third of the volume has arrived
      if (!cut && op.op === 'write' && tdev.count('write') === Math.floor(size / (64 * KiB) / 3)) {
        cut = true;
        cutOff(network, P, T);
        setTimeout(() => network.heal(P, T), 50);
      }
    });
    await primary.resync('v', { all: true }).catch(() => undefined);
    assert.ok(cut, 'the link was cut during the resync');
    while (primary.volume('v').state !== 'in-sync') await onceEvent(primary, 'volume-state');
    await primary.drain(20000);
    assert.deepEqual(await tinner.read(0, size), await pdev.read(0, size));
    const wire = network.streamBytesSent - before;
    assert.ok(wire <= 1.1 * size, `bytes on the wire ${wire} for ${size} dirty bytes (resumed, not restarted)`);
  } finally {
    await primary.close();
    await target.close();
  }
});

test('online verify finds a byte flipped behind our back on the target and reports its range; repair resyncs it', async () => {
  const size = 4 * MiB;
  const pdev = await filled(size, 5);
  const tdev = new MemoryBlockDevice(size, { blockSize: 512 });
  await tdev.write(0, await pdev.read(0, size));
  const { target, primary } = await setup(pdev, tdev);
  try {
    assert.deepEqual((await primary.verify('v')).mismatches, []);
    const block = await tdev.read(2 * MiB + 65536 + 512, 512);
    block[100]! ^= 0x01;
    await tdev.write(2 * MiB + 65536 + 512, block);
    const reported: Array<{ offset: number; length: number }> = [];
    primary.on('verify-mismatch', (m) => reported.push({ offset: m.offset, length: m.length }));
    // writes continue during the verify: they are not mismatches
    const writes = Promise.all([0, 1, 2].map((i) => primary.volume('v').write(i * MiB, Buffer.alloc(4096, 7))));
    const result = await primary.verify('v', { repair: true });
    await writes;
    assert.deepEqual(result.mismatches, [{ offset: 2 * MiB + 65536, length: 65536 }]);
    assert.deepEqual(reported, result.mismatches);
    await primary.resync('v');
    assert.deepEqual((await primary.verify('v')).mismatches, []);
    assert.deepEqual(await tdev.read(0, size), await pdev.read(0, size));
  } finally {
    await primary.close();
    await target.close();
  }
});

test('SPEC 18: a primary that loses its journal (fsync none, crash) converges through the write-intent bitmap', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'bm-bitmap-'));
  const size = 4 * MiB;
  const pdev = await FileBlockDevice.open(join(dir, 'p.img'), { size });
  const tdev = new MemoryBlockDevice(size, { blockSize: 512 });
  const network = new MemoryNetwork();
  const target = await createMirrorTarget({ transport: network.transport({ host: T }), listen: { host: T, port: 0 }, volumes: [{ name: 'v', device: tdev }], ...LINK });
  try {
    const journal = { dir: join(dir, 'j'), fsync: 'none' as const };
    const first = await createPrimary({ transport: network.transport({ host: P }), peer: target.address, journal, volumes: [{ name: 'v', device: pdev, mode: 'async' }], ...LINK });
    cutOff(network, P, T);
    await onceEvent(first, 'link');
    for (let i = 0; i < 32; i++) await first.volume('v').write(i * 96 * KiB, Buffer.alloc(4 * KiB, i + 1));
    await first.volume('v').bitmap.flush();
    // the process dies; its unsynced journal is lost (we delete it), its bitmap survived
    await first.close({ drain: false });
    await rm(join(dir, 'j', 'v.journal'));
    network.heal(P, T);
    const second = await createPrimary({ transport: network.transport({ host: P }), peer: target.address, journal, volumes: [{ name: 'v', device: pdev, mode: 'async' }], ...LINK });
    try {
      assert.ok(second.volume('v').status().resyncRegions > 0, 'dirty regions from the bitmap');
      await second.resync('v');
      await second.drain(20000);
      assert.deepEqual(await tdev.read(0, size), await pdev.read(0, size));
    } finally {
      await second.close();
    }
  } finally {
    await target.close();
    await pdev.close();
    await rm(dir, { recursive: true, force: true });
  }
});
