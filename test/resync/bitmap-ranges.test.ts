/**
 * SPEC 22 / issue 12 (5): a mirror reads the write-intent bitmap its node
 * kept as a primary (failback) without changing the file, as byte ranges
 * bounded in number whatever the volume size (coarsened into a superset).
 */
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import fc from 'fast-check';
import { MemoryDirtyBitmap } from '../../src/resync/dirty-bitmap.js';
import { FileDirtyBitmap, dirtyRanges, readBitmapRanges } from '../../src/resync/file-dirty-bitmap.js';

test('SPEC 22, issue 12 (5): dirtyRanges: at most maxRanges sorted disjoint byte ranges within the volume that cover every dirty region (exact when they fit)', () => {
  fc.assert(
    fc.property(fc.integer({ min: 1, max: 300 }), fc.uniqueArray(fc.integer({ min: 0, max: 299 }), { maxLength: 120 }), fc.integer({ min: 1, max: 40 }), (count, dirty, max) => {
      const region = 4096;
      const bitmap = new MemoryDirtyBitmap({ volumeSize: count * region - 512, regionSize: region });
      const marked = dirty.filter((i) => i < count);
      for (const i of marked) bitmap.mark(i * region, 1);
      const ranges = dirtyRanges(bitmap, max);
      assert.ok(ranges.length / 2 <= max);
      for (let k = 0; k < ranges.length; k += 2) {
        assert.ok(ranges[k + 1]! > 0 && ranges[k]! + ranges[k + 1]! <= bitmap.volumeSize);
        if (k > 0) assert.ok(ranges[k]! > ranges[k - 2]! + ranges[k - 1]!, 'sorted, disjoint, not adjacent');
      }
      const covered = (i: number) => ranges.some((_, k) => k % 2 === 0 && ranges[k]! <= i * region && i * region < ranges[k]! + ranges[k + 1]!);
      for (const i of marked) assert.ok(covered(i), `region ${i} covered`);
      const runs = new Set(marked.filter((i) => !marked.includes(i - 1))).size;
      if (runs <= max) for (let i = 0; i < count; i++) assert.equal(covered(i), marked.includes(i), `exact when it fits (region ${i})`);
    }),
  );
});

test('SPEC 22, issue 12 (5): readBitmapRanges reads a bitmap file without changing it; a missing or torn file is no bitmap (with the reason)', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'bm-ranges-'));
  try {
    const path = join(dir, 'v.bitmap');
    assert.deepEqual(await readBitmapRanges(path, { volumeSize: 1 << 20, maxRanges: 8 }), { ok: false, reason: 'no bitmap file' });
    const bitmap = await FileDirtyBitmap.open(path, { volumeSize: 1 << 20, regionSize: 65536 });
    await bitmap.markDurable(65536 + 10, 100);
    await bitmap.markDurable(5 * 65536, 2 * 65536);
    // not closed: as after a crash of the primary
    const before = await readFile(path);
    assert.deepEqual(await readBitmapRanges(path, { volumeSize: 1 << 20, maxRanges: 8 }), { ok: true, regionSize: 65536, regions: 3, ranges: [65536, 65536, 5 * 65536, 2 * 65536] });
    assert.deepEqual(await readBitmapRanges(path, { volumeSize: 1 << 20, maxRanges: 1 }), { ok: true, regionSize: 65536, regions: 3, ranges: [0, 8 * 65536] });
    assert.ok((await readFile(path)).equals(before), 'the file is unchanged');
    await bitmap.close();
    assert.equal((await readBitmapRanges(path, { volumeSize: 2 << 20, maxRanges: 8 })).ok, false, 'another volume size');
    await writeFile(path, Buffer.alloc(16384, 0x5a));
    const torn = await readBitmapRanges(path, { volumeSize: 1 << 20, maxRanges: 8 });
    assert.equal(torn.ok, false);
    assert.match((torn as { reason: string }).reason, /no valid header/);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
