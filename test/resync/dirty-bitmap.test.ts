/**
 * MemoryDirtyBitmap semantics, checked against a plain Set model with
 * fast-check (the file bitmap shares this code and is checked in its own file).
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { isBlockMirrorError } from '../../src/errors.js';
import type { ErrorCode } from '../../src/errors.js';
import { DEFAULT_REGION_SIZE, MemoryDirtyBitmap, RESOLVED } from '../../src/resync/dirty-bitmap.js';
import { applyToBitmap, applyToModel, assertMatchesModel, bitmapOpArb, geometryArb } from './model.js';

function throwsCode(fn: () => unknown, code: ErrorCode): void {
  assert.throws(fn, (error: unknown) => isBlockMirrorError(error, code));
}

describe('MemoryDirtyBitmap', () => {
  it('matches a Set model under random marks, clears, merges (fast-check)', () => {
    fc.assert(
      fc.property(
        geometryArb.chain((g) => fc.tuple(fc.constant(g), fc.array(bitmapOpArb(g), { minLength: 1, maxLength: 40 }), fc.nat())),
        ([g, ops, probe]) => {
          const bitmap = new MemoryDirtyBitmap(g);
          const model = new Set<number>();
          for (const op of ops) {
            const expected = applyToModel(model, op, g);
            const actual = applyToBitmap(bitmap, op, g);
            assert.equal(actual, expected, `result of ${JSON.stringify(op)}`);
          }
          assertMatchesModel(bitmap, model, g, probe);
          const copy = bitmap.snapshot();
          assertMatchesModel(copy, model, g, probe);
          assertMatchesModel(MemoryDirtyBitmap.fromBuffer(bitmap.toBuffer(), g), model, g, probe);
          // The snapshot is independent.
          bitmap.markAll();
          assertMatchesModel(copy, model, g, probe);
        },
      ),
      { seed: 0xb17a, numRuns: 300 },
    );
  });

  it('mark touches every region of the range; clear only clears fully covered regions', () => {
    const b = new MemoryDirtyBitmap({ volumeSize: 10 * 65536 + 512 }); // 11 regions, the last 512 bytes
    assert.equal(b.regionSize, DEFAULT_REGION_SIZE);
    assert.equal(b.regionCount, 11);
    assert.equal(b.mark(65535, 2), 2, 'one byte each side of a boundary: regions 0 and 1');
    assert.equal(b.mark(0, 0), 0, 'zero length marks nothing');
    assert.deepEqual([...b.dirtyRegions()], [
      { index: 0, offset: 0, length: 65536 },
      { index: 1, offset: 65536, length: 65536 },
    ]);
    assert.equal(b.clear(1, 65536 * 2 - 2), 0, 'regions 0 and 1 are only partly covered');
    assert.equal(b.clear(0, 65536 + 4096), 1, 'region 0 is covered, region 1 is not');
    assert.deepEqual([...b.dirtyRegions()].map((r) => r.index), [1]);
    b.mark(b.volumeSize - 1, 1);
    assert.deepEqual(b.region(10), { index: 10, offset: 655360, length: 512 });
    assert.equal(b.dirtyBytes, 65536 + 512, 'the short last region counts its real size');
    assert.equal(b.clear(655360, 512), 1, 'a range reaching the end covers the short last region');
    assert.equal(b.markAll(), 10);
    assert.equal(b.dirtyBytes, b.volumeSize);
    assert.equal(b.clearRegion(3), true);
    assert.equal(b.clearRegion(3), false);
    assert.equal(b.nextDirty(3), 4);
    assert.equal(b.nextDirty(11), -1);
    assert.equal(b.regionIndex(65536 * 3 + 7), 3);
    assert.equal(b.clearAll(), 10);
    assert.equal(b.dirtyCount, 0);
    assert.equal(b.nextDirty(0), -1);
  });

  it('nextDirty skips long clean stretches (2^21 regions) and finds the last region', () => {
    const b = new MemoryDirtyBitmap({ volumeSize: 2 ** 21 * 4096, regionSize: 4096 });
    assert.equal(b.nextDirty(0), -1);
    b.mark(b.volumeSize - 4096, 4096);
    b.mark(4096 * 12345, 1);
    assert.equal(b.nextDirty(0), 12345);
    assert.equal(b.nextDirty(12346), 2 ** 21 - 1);
    assert.deepEqual([...b.dirtyRegions(1)].map((r) => r.index), [12345, 2 ** 21 - 1]);
  });

  it('dirtyRegions walks the live bitmap: marks ahead of the cursor show up, clears ahead do not', () => {
    const b = new MemoryDirtyBitmap({ volumeSize: 100 * 4096, regionSize: 4096 });
    b.mark(0, 4096);
    b.mark(50 * 4096, 4096);
    const seen: number[] = [];
    for (const region of b.dirtyRegions()) {
      seen.push(region.index);
      b.clearRegion(region.index); // resync: region sent, cleared
      if (region.index === 0) {
        b.mark(20 * 4096, 1); // a write during the walk
        b.clearRegion(50); // cleared by someone else
      }
    }
    assert.deepEqual(seen, [0, 20]);
    assert.equal(b.dirtyCount, 0);
  });

  it('markDurable of the memory bitmap marks and returns the shared resolved promise', async () => {
    const b = new MemoryDirtyBitmap({ volumeSize: 1 << 20, regionSize: 4096 });
    const p = b.markDurable(8192, 100);
    assert.equal(p, RESOLVED);
    await p;
    assert.equal(b.isDirty(2), true);
    await b.close();
    await assert.rejects(b.markDurable(0, 1), (e: unknown) => isBlockMirrorError(e, 'BM_ERR_CLOSED'));
    throwsCode(() => b.mark(0, 1), 'BM_ERR_CLOSED');
    assert.equal(b.isDirty(2), true, 'reads keep working after close');
  });

  it('validates geometry, ranges and indexes with coded errors', async () => {
    throwsCode(() => new MemoryDirtyBitmap({ volumeSize: 1000 }), 'BM_ERR_INVALID_ARGUMENT');
    throwsCode(() => new MemoryDirtyBitmap({ volumeSize: 0 }), 'BM_ERR_INVALID_ARGUMENT');
    throwsCode(() => new MemoryDirtyBitmap({ volumeSize: 1 << 20, regionSize: 2048 }), 'BM_ERR_INVALID_ARGUMENT');
    throwsCode(() => new MemoryDirtyBitmap({ volumeSize: 1 << 20, regionSize: 12288 }), 'BM_ERR_INVALID_ARGUMENT');
    throwsCode(() => new MemoryDirtyBitmap({ volumeSize: 2 ** 52, regionSize: 4096 }), 'BM_ERR_INVALID_ARGUMENT');
    const b = new MemoryDirtyBitmap({ volumeSize: 1 << 20, regionSize: 4096 });
    throwsCode(() => b.mark(-1, 1), 'BM_ERR_INVALID_ARGUMENT');
    throwsCode(() => b.mark(0.5, 1), 'BM_ERR_INVALID_ARGUMENT');
    throwsCode(() => b.mark(1 << 20, 1), 'BM_ERR_OUT_OF_RANGE');
    throwsCode(() => b.clear(0, (1 << 20) + 1), 'BM_ERR_OUT_OF_RANGE');
    throwsCode(() => b.isDirty(256), 'BM_ERR_OUT_OF_RANGE');
    throwsCode(() => b.clearRegion(-1), 'BM_ERR_INVALID_ARGUMENT');
    throwsCode(() => b.nextDirty(257), 'BM_ERR_OUT_OF_RANGE');
    throwsCode(() => b.regionIndex(1 << 20), 'BM_ERR_OUT_OF_RANGE');
    throwsCode(() => b.merge(Buffer.alloc(3)), 'BM_ERR_INVALID_ARGUMENT');
    throwsCode(() => b.merge(new MemoryDirtyBitmap({ volumeSize: 1 << 20 })), 'BM_ERR_INVALID_ARGUMENT');
    await assert.rejects(b.markDurable(0, 2 << 20), (e: unknown) => isBlockMirrorError(e, 'BM_ERR_OUT_OF_RANGE'));
    assert.equal(b.dirtyCount, 0, 'nothing changed by refused calls');
  });

  it('merge ignores bits beyond the last region in a raw buffer', () => {
    const g = { volumeSize: 10 * 4096, regionSize: 4096 };
    const b = new MemoryDirtyBitmap(g);
    assert.equal(b.merge(Buffer.from([0x00, 0xff])), 2, 'regions 8 and 9 only');
    assert.equal(b.dirtyCount, 2);
    assert.deepEqual(b.toBuffer(), Buffer.from([0x00, 0x03]));
  });
});
