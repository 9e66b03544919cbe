/**
 * A reference model of a dirty bitmap (a Set of region indexes), the
 * fast-check arbitraries of bitmap operations, and the checks comparing a
 * bitmap with the model. Shared by the memory and file bitmap tests.
 */
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { MemoryDirtyBitmap } from '../../src/resync/dirty-bitmap.js';
import type { DirtyBitmap } from '../../src/resync/dirty-bitmap.js';

export interface Geometry {
  volumeSize: number;
  regionSize: number;
}

export type BitmapOp =
  | { kind: 'mark'; offset: number; length: number }
  | { kind: 'clear'; offset: number; length: number }
  | { kind: 'clearRegion'; index: number }
  | { kind: 'markAll' }
  | { kind: 'clearAll' }
  | { kind: 'merge'; indexes: number[]; viaBuffer: boolean };

/** Small geometries crossing byte and 32-bit word boundaries, with and without a short last region. */
export const geometryArb: fc.Arbitrary<Geometry> = fc
  .record({
    regionSize: fc.constantFrom(4096, 8192, 65536),
    regions: fc.integer({ min: 1, max: 300 }),
    shortBy: fc.oneof(fc.constant(0), fc.integer({ min: 1, max: 7 })),
  })
  .map(({ regionSize, regions, shortBy }) => {
    // shortBy > 0: the last region holds only (8 - shortBy) / 8 of a region (a multiple of 512).
    const volumeSize = regions * regionSize - (regions > 0 && shortBy > 0 ? (shortBy * regionSize) / 8 : 0);
    return { volumeSize, regionSize };
  });

/** A byte range inside the volume: arbitrary bytes, or aligned to region boundaries. */
function rangeArb(g: Geometry): fc.Arbitrary<{ offset: number; length: number }> {
  const count = Math.ceil(g.volumeSize / g.regionSize);
  const raw = fc
    .tuple(fc.integer({ min: 0, max: g.volumeSize }), fc.integer({ min: 0, max: g.volumeSize }))
    .map(([a, b]) => ({ offset: a, length: Math.min(b % (g.regionSize * 4 + 1), g.volumeSize - a) }));
  const aligned = fc
    .tuple(fc.integer({ min: 0, max: count }), fc.integer({ min: 0, max: count }), fc.boolean())
    .map(([a, n, toEnd]) => {
      const offset = Math.min(a * g.regionSize, g.volumeSize);
      const length = toEnd ? g.volumeSize - offset : Math.min(n * g.regionSize, g.volumeSize - offset);
      return { offset, length };
    });
  return fc.oneof(raw, aligned);
}

export function bitmapOpArb(g: Geometry): fc.Arbitrary<BitmapOp> {
  return fc.oneof(
    { weight: 8, arbitrary: rangeArb(g).map((r) => ({ kind: 'mark' as const, ...r })) },
    { weight: 5, arbitrary: rangeArb(g).map((r) => ({ kind: 'clear' as const, ...r })) },
    { weight: 2, arbitrary: fc.nat().map((index) => ({ kind: 'clearRegion' as const, index })) },
    { weight: 1, arbitrary: fc.constant({ kind: 'markAll' as const }) },
    { weight: 1, arbitrary: fc.constant({ kind: 'clearAll' as const }) },
    {
      weight: 2,
      arbitrary: fc
        .record({ indexes: fc.array(fc.nat(), { maxLength: 20 }), viaBuffer: fc.boolean() })
        .map((m) => ({ kind: 'merge' as const, ...m })),
    },
  );
}

/** Byte range of region i (the last one may be short). */
export function regionBounds(i: number, g: Geometry): [number, number] {
  const start = i * g.regionSize;
  return [start, Math.min(start + g.regionSize, g.volumeSize)];
}

/** Regions touched by a byte range (the model's own, naive definition). */
export function touchedRegions(offset: number, length: number, g: Geometry): number[] {
  const out: number[] = [];
  const count = Math.ceil(g.volumeSize / g.regionSize);
  for (let i = 0; i < count; i++) {
    const [start, end] = regionBounds(i, g);
    if (length > 0 && start < offset + length && end > offset) out.push(i);
  }
  return out;
}

/** Regions fully covered by a byte range. */
export function coveredRegions(offset: number, length: number, g: Geometry): number[] {
  const out: number[] = [];
  const count = Math.ceil(g.volumeSize / g.regionSize);
  for (let i = 0; i < count; i++) {
    const [start, end] = regionBounds(i, g);
    if (start >= offset && end <= offset + length) out.push(i);
  }
  return out;
}

/** Applies `op` to the model; returns what the bitmap method should return. */
export function applyToModel(model: Set<number>, op: BitmapOp, g: Geometry): number | boolean {
  const count = Math.ceil(g.volumeSize / g.regionSize);
  const all = Array.from({ length: count }, (_, i) => i);
  const set = (regions: number[]): number => {
    let added = 0;
    for (const i of regions) {
      if (model.has(i)) continue;
      model.add(i);
      added++;
    }
    return added;
  };
  const unset = (regions: number[]): number => regions.filter((i) => model.delete(i)).length;
  switch (op.kind) {
    case 'mark':
      return set(touchedRegions(op.offset, op.length, g));
    case 'clear':
      return unset(coveredRegions(op.offset, op.length, g));
    case 'clearRegion':
      return unset([op.index % count]) === 1;
    case 'markAll':
      return set(all);
    case 'clearAll':
      return unset(all);
    case 'merge':
      return set([...new Set(op.indexes.map((i) => i % count))]);
  }
}

/** Applies `op` to a bitmap; returns its result. */
export function applyToBitmap(bitmap: DirtyBitmap, op: BitmapOp, g: Geometry): number | boolean {
  switch (op.kind) {
    case 'mark':
      return bitmap.mark(op.offset, op.length);
    case 'clear':
      return bitmap.clear(op.offset, op.length);
    case 'clearRegion':
      return bitmap.clearRegion(op.index % bitmap.regionCount);
    case 'markAll':
      return bitmap.markAll();
    case 'clearAll':
      return bitmap.clearAll();
    case 'merge': {
      const other = new MemoryDirtyBitmap(g);
      for (const i of op.indexes) other.mark((i % other.regionCount) * g.regionSize, 1);
      return bitmap.merge(op.viaBuffer ? other.toBuffer() : other);
    }
  }
}

/** Bytes of the model's dirty regions. */
export function modelBytes(model: ReadonlySet<number>, g: Geometry): number {
  let bytes = 0;
  for (const i of model) {
    const [start, end] = regionBounds(i, g);
    bytes += end - start;
  }
  return bytes;
}

/** Checks every observable of `bitmap` against the model; `probe` picks a start for nextDirty/dirtyRegions. */
export function assertMatchesModel(bitmap: DirtyBitmap, model: ReadonlySet<number>, g: Geometry, probe = 0): void {
  const count = Math.ceil(g.volumeSize / g.regionSize);
  assert.equal(bitmap.regionCount, count);
  assert.equal(bitmap.dirtyCount, model.size, 'dirtyCount');
  assert.equal(bitmap.dirtyBytes, modelBytes(model, g), 'dirtyBytes');
  const sorted = [...model].sort((a, b) => a - b);
  assert.deepEqual(
    [...bitmap.dirtyRegions()].map((r) => r.index),
    sorted,
    'dirtyRegions',
  );
  for (const r of bitmap.dirtyRegions()) {
    const [start, end] = regionBounds(r.index, g);
    assert.deepEqual([r.offset, r.length], [start, end - start], `bounds of region ${r.index}`);
  }
  for (let i = 0; i < count; i++) assert.equal(bitmap.isDirty(i), model.has(i), `isDirty(${i})`);
  const from = probe % (count + 1);
  assert.equal(bitmap.nextDirty(from), sorted.find((i) => i >= from) ?? -1, `nextDirty(${from})`);
  assert.deepEqual(
    [...bitmap.dirtyRegions(from)].map((r) => r.index),
    sorted.filter((i) => i >= from),
    `dirtyRegions(${from})`,
  );
  const bytes = bitmap.toBuffer();
  assert.equal(bytes.length, Math.ceil(count / 8));
  for (let i = 0; i < count; i++) {
    assert.equal(((bytes[i >>> 3] as number) >> (i & 7)) & 1, model.has(i) ? 1 : 0, `toBuffer bit ${i}`);
  }
}
