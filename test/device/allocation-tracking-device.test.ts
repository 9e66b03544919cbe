import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { AllocationMap, ALLOCATION_REGION_SIZE } from '../../src/device/allocation-map.js';
import { openAllocationStore } from '../../src/device/allocation-store.js';
import { AllocationTrackingDevice } from '../../src/device/allocation-tracking-device.js';
import type { BlockDevice } from '../../src/device/block-device.js';
import { MemoryBlockDevice } from '../../src/device/memory-device.js';
import { isAllZero } from '../../src/device/zero.js';
import { blockDeviceSuite } from '../../src/testing/block-device-suite.js';
import { MemoryFileSystem } from '../../src/testing/simulator/memory-fs.js';
import { WrappedDevice } from '../helpers/wrapped-device.js';
import { prng } from '../helpers/prng.js';

const R = ALLOCATION_REGION_SIZE;

/** A device on a memory file system (data device and map file both crashable). */
async function open(fs: MemoryFileSystem, size: number, initial: 'zero' | 'data', blockSize = 4096): Promise<{ device: AllocationTrackingDevice; view: ReturnType<MemoryFileSystem['view']> }> {
  const view = fs.view();
  const inner = await view.openDevice('/vol.img', { size, blockSize });
  const device = await AllocationTrackingDevice.open(inner, '/vol.allocation', { initial, fs: view });
  return { device, view };
}

const devices = new WeakMap<BlockDevice, MemoryFileSystem>();
blockDeviceSuite({
  name: 'AllocationTrackingDevice over a crashable memory device',
  async create(size, blockSize) {
    const fs = new MemoryFileSystem();
    const { device } = await open(fs, size, 'zero', blockSize);
    devices.set(device, fs);
    return device;
  },
  async reopen(device) {
    const fs = devices.get(device)!;
    const { device: again } = await open(fs, device.size, 'zero', device.blockSize);
    devices.set(again, fs);
    return again;
  },
  supports: { trim: true, flush: true, fua: true, reopen: true, allocation: true },
  blockSizes: [512, 4096, 65536],
  size: 1024 * 1024,
});

describe('AllocationMap', () => {
  it('starts all zero or all data, marks touched regions, reports merged extents cut to the range', () => {
    const map = new AllocationMap(4 * R + 4096, 'zero');
    assert.equal(map.regions, 5);
    assert.equal(map.zeroRegions, 5);
    map.markData(R + 4096, 4096);
    assert.deepEqual(
      map.extents(0, 4 * R + 4096).map((e) => [e.offset, e.length, e.zero]),
      [
        [0, R, true],
        [R, R, false],
        [2 * R, 2 * R + 4096, true],
      ],
    );
    assert.deepEqual(map.covered(4096, 2 * R), [1, 1], 'only regions wholly inside count as covered');
    assert.deepEqual(map.covered(3 * R, R + 4096), [3, 4], 'the short last region counts when covered to the end');
    const full = new AllocationMap(3 * R, 'data');
    assert.equal(full.zeroRegions, 0);
    assert.equal(full.bits[0], 0b111, 'no bits beyond the last region');
  });

  it('extents (whole bytes of the bitset skipped at once) match a region-by-region walk over random maps and ranges', () => {
    const random = prng(7);
    for (let round = 0; round < 300; round++) {
      const regions = 1 + Math.floor(random() * 200);
      const size = regions * R - (random() < 0.3 ? 4096 : 0);
      const map = new AllocationMap(size, random() < 0.5 ? 'zero' : 'data');
      const density = random();
      for (let i = 0; i < map.regions; i++) {
        if (random() >= density * 0.3) continue;
        if (map.isData(i)) map.setZero(i);
        else map.setData(i);
      }
      const offset = Math.floor((random() * size) / 4096) * 4096;
      const length = Math.floor((random() * (size - offset)) / 4096) * 4096;
      const naive: Array<[number, number, boolean]> = [];
      for (let pos = offset; pos < offset + length; ) {
        const i = Math.floor(pos / R);
        const next = Math.min(offset + length, (i + 1) * R);
        const zero = !map.isData(i);
        const last = naive.at(-1);
        if (last !== undefined && last[2] === zero) last[1] += next - pos;
        else naive.push([pos, next - pos, zero]);
        pos = next;
      }
      assert.deepEqual(map.extents(offset, length).map((e) => [e.offset, e.length, e.zero]), naive, `round ${round}`);
    }
  });

  it('a stored map is loaded again; a map of another size or a damaged file is not trusted (all "may hold data")', async () => {
    const fs = new MemoryFileSystem();
    const view = fs.view();
    const a = await openAllocationStore('/m', { size: 8 * R, initial: 'zero', fs: view });
    assert.equal(a.origin, 'created');
    a.map.markData(3 * R, 1);
    await a.persist();
    await a.close();
    const b = await openAllocationStore('/m', { size: 8 * R, initial: 'zero', fs: view });
    assert.equal(b.origin, 'loaded');
    assert.deepEqual([...Array(8).keys()].map((i) => b.map.isData(i)), [false, false, false, true, false, false, false, false]);
    await b.close();
    const c = await openAllocationStore('/m', { size: 16 * R, initial: 'zero', fs: view });
    assert.equal(c.origin, 'untrusted');
    assert.equal(c.map.zeroRegions, 0);
    await c.close();
    const f = await view.openFile('/m', 'open');
    await f.write(0, Buffer.from('garbage!'));
    await f.close();
    const d = await openAllocationStore('/m', { size: 16 * R, initial: 'zero', fs: view });
    assert.equal(d.origin, 'untrusted');
    assert.equal(d.map.zeroRegions, 0);
    await d.close();
  });
});

describe('AllocationTrackingDevice', () => {
  it('a new volume is all holes; a write marks its regions; reads of known-zero ranges do not reach the device', async () => {
    let reads = 0;
    const counting = new (class extends WrappedDevice {
      override read(o: number, l: number): Promise<Buffer> {
        reads++;
        return super.read(o, l);
      }
    })(new MemoryBlockDevice(16 * R, { blockSize: 4096 }));
    const fs = new MemoryFileSystem();
    const device = await AllocationTrackingDevice.open(counting, '/a', { initial: 'zero', fs: fs.view() });
    try {
      assert.deepEqual(await device.blockStatus(0, 16 * R), [{ offset: 0, length: 16 * R, zero: true, hole: true }]);
      await device.write(5 * R + 512 * 8, Buffer.alloc(4096, 7));
      const ext = await device.blockStatus(0, 16 * R);
      assert.deepEqual(
        ext.map((e) => [e.offset, e.length, e.zero]),
        [
          [0, 5 * R, true],
          [5 * R, R, false],
          [6 * R, 10 * R, true],
        ],
      );
      assert.ok(isAllZero(await device.read(0, 4 * R)));
      assert.equal(reads, 0, 'a known-zero range is not read');
      assert.equal((await device.read(5 * R + 4096, 4096))[0], 7);
      assert.equal(reads, 1);
    } finally {
      await device.close();
    }
  });

  it('a trim skips regions known zero, and marks the regions it zeroed whole as zero only after a flush', async () => {
    const fs = new MemoryFileSystem();
    const { device } = await open(fs, 16 * R, 'zero');
    const disk = fs.device('/vol.img')!;
    try {
      await device.write(2 * R, Buffer.alloc(2 * R, 1));
      await device.flush();
      const writesBefore = disk.stats.writes + disk.stats.trims;
      await device.trim(0, 16 * R);
      assert.equal(disk.stats.writes + disk.stats.trims - writesBefore, 1, 'only the data extent is zeroed on the device');
      assert.equal(device.map.isData(2), true, 'not zero before the flush');
      await device.flush();
      assert.equal(device.map.zeroRegions, 16);
      // a partial trim never clears a region
      await device.write(4 * R, Buffer.alloc(4096, 2));
      await device.trim(4 * R, 4096);
      await device.flush();
      assert.equal(device.map.isData(4), true, 'a region trimmed in part may still hold data');
      assert.ok(isAllZero(await device.read(4 * R, R)));
    } finally {
      await device.close();
    }
  });

  it('a write that starts while a trim of its region runs keeps the region "may hold data"', async () => {
    const fs = new MemoryFileSystem();
    const { device } = await open(fs, 4 * R, 'data');
    try {
      const trim = device.trim(0, R);
      const write = device.write(0, Buffer.alloc(4096, 9));
      await Promise.all([trim, write]);
      await device.flush();
      assert.equal(device.map.isData(0), true);
    } finally {
      await device.close();
    }
  });

  it('--scan-zeros: an existing image without a map starts "may hold data"; the scan marks its all-zero regions', async () => {
    const fs = new MemoryFileSystem();
    const view = fs.view();
    const raw = await view.openDevice('/vol.img', { size: 160 * R, blockSize: 4096 });
    await raw.write(7 * R, Buffer.alloc(4096, 1));
    await raw.write(20 * R + R - 4096, Buffer.alloc(4096, 1));
    await raw.flush();
    await raw.close();
    const { device } = await open(fs, 160 * R, 'data');
    try {
      assert.equal(device.origin, 'created');
      assert.equal(device.map.zeroRegions, 0);
      const seen: number[] = [];
      const result = await device.scanZeros((p) => seen.push(p.done));
      assert.equal(result.total, 160 * R);
      assert.equal(result.done, 160 * R);
      assert.equal(result.zeroRegions, 158);
      assert.ok(seen.length >= 3, 'progress is reported per span read');
      assert.equal(seen.at(-1), 160 * R);
      assert.equal(device.map.isData(7), true);
      assert.equal(device.map.isData(20), true);
    } finally {
      await device.close();
    }
    const { device: again } = await open(fs, 160 * R, 'data');
    assert.equal(again.origin, 'loaded');
    assert.equal(again.map.zeroRegions, 158, 'the scan result is stored');
    await again.close();
  });

  it('crash safety: after a power loss at any point of writes, trims and flushes, no region the stored map calls zero holds data (500 seeds)', async () => {
    const regions = 8;
    for (let seed = 1; seed <= 500; seed++) {
      const random = prng(seed);
      const fs = new MemoryFileSystem();
      const { device, view } = await open(fs, regions * R, 'zero');
      const ops: Promise<unknown>[] = [];
      const steps = 5 + Math.floor(random() * 20);
      for (let i = 0; i < steps; i++) {
        const r = Math.floor(random() * regions);
        const k = random();
        const span = r < regions - 1 && random() < 0.5 ? 2 * R : R;
        const p = k < 0.5 ? device.write(r * R + Math.floor(random() * 16) * 4096, Buffer.alloc(4096, 1 + (seed % 250))) : k < 0.8 ? device.trim(r * R, span) : device.flush();
        ops.push(p.catch(() => undefined));
        if (random() < 0.2) await ops.at(-1);
      }
      // power loss after a random number of microtasks: operations may be anywhere
      const ticks = Math.floor(random() * 16);
      for (let t = 0; t < ticks; t++) await Promise.resolve();
      view.revoke();
      fs.crash(random);
      const after = await open(fs, regions * R, 'zero');
      try {
        assert.notEqual(after.device.origin, 'untrusted', `seed ${seed}: the map file survives`);
        for (let i = 0; i < regions; i++) {
          if (after.device.map.isData(i)) continue;
          const bytes = await after.device.inner.read(i * R, R);
          assert.ok(isAllZero(bytes), `seed ${seed}: region ${i} is zero in the stored map but holds data`);
        }
      } finally {
        await after.device.close();
      }
    }
  });
});
