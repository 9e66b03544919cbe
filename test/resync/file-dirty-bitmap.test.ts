/**
 * FileDirtyBitmap: persistence across reopen (fast-check model), crash copies,
 * header validation (torn/corrupt/mismatched), group commit, fast paths, page
 * granularity of writes, lazy clears in virtual time, I/O failure.
 */
import assert from 'node:assert/strict';
import { copyFileSync, mkdtempSync, readFileSync, rmSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import FakeTimers from '@sinonjs/fake-timers';
import fc from 'fast-check';
import { clockFrom } from '../../src/clock.js';
import { isBlockMirrorError } from '../../src/errors.js';
import type { ErrorCode } from '../../src/errors.js';
import { BITMAP_FORMAT_VERSION, BITS_START, HEADER_SLOTS, decodeBitmapHeader } from '../../src/resync/bitmap-format.js';
import { RESOLVED } from '../../src/resync/dirty-bitmap.js';
import { FileDirtyBitmap } from '../../src/resync/file-dirty-bitmap.js';
import type { BitmapFlushPolicy, FileDirtyBitmapOptions } from '../../src/resync/file-dirty-bitmap.js';
import { crc32 } from 'node:zlib';
import { applyToBitmap, applyToModel, assertMatchesModel, bitmapOpArb, geometryArb } from './model.js';
import type { BitmapOp } from './model.js';

const dir = mkdtempSync(join(tmpdir(), 'bm-bitmap-'));
after(() => rmSync(dir, { recursive: true, force: true }));
let fileNo = 0;
const freshPath = (): string => join(dir, `b${++fileNo}.bitmap`);

const MiB = 1024 * 1024;
/** 4 KiB regions: one bitmap page covers 32768 regions = 128 MiB. */
const PAGE_SPAN = 32768 * 4096;

function rejectsCode(promise: Promise<unknown>, code: ErrorCode): Promise<void> {
  return assert.rejects(promise, (error: unknown) => {
    assert.ok(isBlockMirrorError(error, code), `expected ${code}, got ${String(error)}`);
    return true;
  });
}

/** A promise and its resolver. */
function deferred(): { promise: Promise<void>; resolve: () => void } {
  let resolve: () => void = () => undefined;
  const promise = new Promise<void>((r) => (resolve = r));
  return { promise, resolve };
}

/** Bits of the bit array as stored in the file right now. */
function diskBits(path: string, regionCount: number): Set<number> {
  const file = readFileSync(path);
  const out = new Set<number>();
  for (let i = 0; i < regionCount; i++) {
    const byte = file[BITS_START + (i >>> 3)] ?? 0;
    if ((byte >> (i & 7)) & 1) out.add(i);
  }
  return out;
}

describe('FileDirtyBitmap persistence', () => {
  it('keeps its bits across close and reopen (fast-check model with reopen steps)', async () => {
    type Step = BitmapOp | { kind: 'reopen' } | { kind: 'durable'; offset: number; length: number };
    const scenario = geometryArb.chain((g) =>
      fc.tuple(
        fc.constant(g),
        fc.constantFrom<BitmapFlushPolicy>('batch', 'always', 'none'),
        fc.array(
          fc.oneof(
            { weight: 5, arbitrary: bitmapOpArb(g) as fc.Arbitrary<Step> },
            {
              weight: 3,
              arbitrary: bitmapOpArb(g).map(
                (op): Step => (op.kind === 'mark' ? { kind: 'durable', offset: op.offset, length: op.length } : op),
              ),
            },
            { weight: 1, arbitrary: fc.constant({ kind: 'reopen' as const }) },
          ),
          { minLength: 1, maxLength: 25 },
        ),
      ),
    );
    await fc.assert(
      fc.asyncProperty(scenario, async ([g, flush, steps]) => {
        const path = freshPath();
        const options: FileDirtyBitmapOptions = { ...g, flush, lazyFlushMs: 0 };
        let bitmap = await FileDirtyBitmap.open(path, options);
        const model = new Set<number>();
        for (const step of steps) {
          if (step.kind === 'reopen') {
            await bitmap.close();
            bitmap = await FileDirtyBitmap.open(path, { volumeSize: g.volumeSize, flush });
            assert.equal(bitmap.regionSize, g.regionSize, 'region size taken from the file');
            assert.equal(bitmap.stats().cleanOpen, true);
            assertMatchesModel(bitmap, model, g);
          } else if (step.kind === 'durable') {
            applyToModel(model, { kind: 'mark', offset: step.offset, length: step.length }, g);
            await bitmap.markDurable(step.offset, step.length);
          } else {
            assert.equal(applyToBitmap(bitmap, step, g), applyToModel(model, step, g));
          }
        }
        await bitmap.close();
        const reopened = await FileDirtyBitmap.open(path, options);
        assertMatchesModel(reopened, model, g);
        await reopened.close();
        rmSync(path);
      }),
      { seed: 0xf11e, numRuns: 40 },
    );
  });

  it('a copy taken at any moment (a crash) holds every durable mark; extra bits only where cleared lazily', async () => {
    const g = { volumeSize: 3 * PAGE_SPAN, regionSize: 4096 }; // 3 bitmap pages
    const opArb = fc.oneof(
      {
        weight: 3,
        arbitrary: fc
          .tuple(fc.integer({ min: 0, max: g.volumeSize - 1 }), fc.integer({ min: 1, max: 64 * 1024 }))
          .map(([offset, length]) => ({ kind: 'mark' as const, offset, length: Math.min(length, g.volumeSize - offset) })),
      },
      {
        weight: 2,
        arbitrary: fc
          .tuple(fc.integer({ min: 0, max: g.volumeSize / 4096 - 1 }), fc.integer({ min: 1, max: 40 }))
          .map(([region, n]) => ({ kind: 'clear' as const, offset: region * 4096, length: Math.min(n * 4096, g.volumeSize - region * 4096) })),
      },
      { weight: 1, arbitrary: fc.constant({ kind: 'copy' as const }) },
      { weight: 1, arbitrary: fc.constant({ kind: 'flush' as const }) },
    );
    await fc.assert(
      fc.asyncProperty(fc.constantFrom<BitmapFlushPolicy>('batch', 'none'), fc.array(opArb, { minLength: 1, maxLength: 40 }), async (flush, ops) => {
        const path = freshPath();
        const bitmap = await FileDirtyBitmap.open(path, { ...g, flush, lazyFlushMs: 0 });
        const model = new Set<number>();
        /** Regions cleared since the last flush: the disk may still hold them dirty. */
        const lazilyCleared = new Set<number>();
        const inFlight: Promise<void>[] = [];
        const check = async (): Promise<void> => {
          await Promise.all(inFlight.splice(0)); // every mark so far resolved
          const copy = `${path}.crash`;
          copyFileSync(path, copy);
          const recovered = await FileDirtyBitmap.open(copy, { volumeSize: g.volumeSize });
          assert.equal(recovered.stats().cleanOpen, false, 'the copy was not closed cleanly');
          const onDisk = new Set([...recovered.dirtyRegions()].map((r) => r.index));
          for (const i of model) assert.ok(onDisk.has(i), `durably marked region ${i} lost`);
          for (const i of onDisk) assert.ok(model.has(i) || lazilyCleared.has(i), `region ${i} dirty on disk but never marked`);
          await recovered.close();
          rmSync(copy);
        };
        for (const op of ops) {
          if (op.kind === 'mark') {
            applyToModel(model, op, g);
            for (const i of [...lazilyCleared]) if (model.has(i)) lazilyCleared.delete(i);
            inFlight.push(bitmap.markDurable(op.offset, op.length));
          } else if (op.kind === 'clear') {
            const before = new Set(model);
            applyToModel(model, op, g);
            for (const i of before) if (!model.has(i)) lazilyCleared.add(i);
            bitmap.clear(op.offset, op.length);
          } else if (op.kind === 'flush') {
            await bitmap.flush();
            await Promise.all(inFlight.splice(0));
            lazilyCleared.clear();
          } else {
            await check();
          }
        }
        await check();
        await bitmap.close();
        assert.deepEqual(diskBits(path, bitmap.regionCount), model, 'close writes the clears too');
        rmSync(path);
      }),
      { seed: 0xc4a5, numRuns: 25 },
    );
  });

  it('creates a file of header pages plus the page-rounded bit array, and counts generations', async () => {
    const path = freshPath();
    const volumeSize = 5 * PAGE_SPAN + 512; // 163841 regions: 20481 bytes → 6 pages
    const bitmap = await FileDirtyBitmap.open(path, { volumeSize, regionSize: 4096 });
    assert.equal(bitmap.regionCount, 163841);
    assert.equal(statSync(path).size, BITS_START + 6 * 4096);
    assert.deepEqual(
      { created: bitmap.stats().created, cleanOpen: bitmap.stats().cleanOpen, generation: bitmap.generation },
      { created: true, cleanOpen: true, generation: 1 },
    );
    await bitmap.markDurable(volumeSize - 1, 1);
    await bitmap.close();
    const file = readFileSync(path);
    const slot0 = decodeBitmapHeader(file.subarray(HEADER_SLOTS[0], HEADER_SLOTS[0] + 512));
    const slot1 = decodeBitmapHeader(file.subarray(HEADER_SLOTS[1], HEADER_SLOTS[1] + 512));
    assert.ok(slot0.ok && slot1.ok);
    assert.equal(slot1.header.generation, 1, 'open wrote generation 1 to slot 1');
    assert.equal(slot0.header.generation, 2, 'close wrote generation 2 to slot 0');
    assert.equal(slot0.header.flags & 1, 1, 'clean flag set by close');
    assert.equal(slot1.header.flags & 1, 0);
    assert.equal(file[BITS_START + (163840 >>> 3)], 1, 'last region is bit 0 of byte 20480');
    const again = await FileDirtyBitmap.open(path, { volumeSize });
    assert.equal(again.generation, 3);
    assert.deepEqual([...again.dirtyRegions()].map((r) => r.index), [163840]);
    await again.close();
  });
});

describe('FileDirtyBitmap header validation', () => {
  async function closedBitmapWithMarks(): Promise<{ path: string; volumeSize: number }> {
    const path = freshPath();
    const volumeSize = 64 * MiB;
    const bitmap = await FileDirtyBitmap.open(path, { volumeSize, regionSize: 65536 });
    await bitmap.markDurable(0, 1);
    await bitmap.markDurable(10 * 65536, 65536);
    await bitmap.close();
    return { path, volumeSize };
  }

  it('a torn newest header slot falls back to the other slot; the bits are kept', async () => {
    const { path, volumeSize } = await closedBitmapWithMarks();
    // Generation 2 (the close) is in slot 0: tear it.
    const file = readFileSync(path);
    file.fill(0xee, 200, 512);
    writeFileSync(path, file);
    const bitmap = await FileDirtyBitmap.open(path, { volumeSize });
    assert.equal(bitmap.stats().cleanOpen, false, 'slot 1 (the open) does not say clean');
    assert.deepEqual([...bitmap.dirtyRegions()].map((r) => r.index), [0, 10]);
    await bitmap.close();
  });

  it('both header slots torn → BM_ERR_BITMAP_CORRUPT, file untouched', async () => {
    const { path, volumeSize } = await closedBitmapWithMarks();
    const file = readFileSync(path);
    file[HEADER_SLOTS[0] + 20] = (file[HEADER_SLOTS[0] + 20] as number) ^ 0x40;
    file.fill(0, HEADER_SLOTS[1] + 256, HEADER_SLOTS[1] + 512); // cut mid-write
    writeFileSync(path, file);
    await rejectsCode(FileDirtyBitmap.open(path, { volumeSize }), 'BM_ERR_BITMAP_CORRUPT');
    assert.ok(readFileSync(path).equals(file), 'left untouched');
  });

  it('a file cut inside the header or not a bitmap at all → BM_ERR_BITMAP_CORRUPT', async () => {
    const { path, volumeSize } = await closedBitmapWithMarks();
    truncateSync(path, 300);
    await rejectsCode(FileDirtyBitmap.open(path, { volumeSize }), 'BM_ERR_BITMAP_CORRUPT');
    assert.equal(statSync(path).size, 300);
    const other = freshPath();
    writeFileSync(other, 'not a bitmap\n'.repeat(1000));
    await rejectsCode(FileDirtyBitmap.open(other, { volumeSize }), 'BM_ERR_BITMAP_CORRUPT');
    // Header area wiped but bits present: not mistaken for a new file.
    const wiped = freshPath();
    const bits = Buffer.alloc(BITS_START + 4096);
    bits[BITS_START + 3] = 0x10;
    writeFileSync(wiped, bits);
    await rejectsCode(FileDirtyBitmap.open(wiped, { volumeSize }), 'BM_ERR_BITMAP_CORRUPT');
  });

  it('an empty or all-zero file (a crash during creation) is formatted as a new bitmap', async () => {
    for (const size of [0, 4096, BITS_START + 8192]) {
      const path = freshPath();
      writeFileSync(path, Buffer.alloc(size));
      const bitmap = await FileDirtyBitmap.open(path, { volumeSize: 64 * MiB });
      assert.equal(bitmap.dirtyCount, 0);
      await bitmap.markDurable(0, 1);
      await bitmap.close();
      const again = await FileDirtyBitmap.open(path, { volumeSize: 64 * MiB });
      assert.equal(again.dirtyCount, 1);
      await again.close();
    }
  });

  it('a volume or region size different from the file → BM_ERR_INVALID_ARGUMENT, file untouched', async () => {
    const { path, volumeSize } = await closedBitmapWithMarks();
    const before = readFileSync(path);
    await rejectsCode(FileDirtyBitmap.open(path, { volumeSize: volumeSize * 2 }), 'BM_ERR_INVALID_ARGUMENT');
    await rejectsCode(FileDirtyBitmap.open(path, { volumeSize, regionSize: 4096 }), 'BM_ERR_INVALID_ARGUMENT');
    await rejectsCode(FileDirtyBitmap.open(path, { volumeSize: 1000 }), 'BM_ERR_INVALID_ARGUMENT');
    await rejectsCode(FileDirtyBitmap.open(path, { volumeSize, flush: 'sometimes' as BitmapFlushPolicy }), 'BM_ERR_INVALID_ARGUMENT');
    await rejectsCode(FileDirtyBitmap.open(path, { volumeSize, lazyFlushMs: -1 }), 'BM_ERR_INVALID_ARGUMENT');
    assert.ok(readFileSync(path).equals(before));
  });

  it('another format version (CRC valid) → BM_ERR_NOT_SUPPORTED', async () => {
    const { path, volumeSize } = await closedBitmapWithMarks();
    const file = readFileSync(path);
    for (const at of HEADER_SLOTS) {
      file.writeUInt16LE(BITMAP_FORMAT_VERSION + 1, at + 4);
      file.writeUInt32LE(crc32(file.subarray(at, at + 508)), at + 508);
    }
    writeFileSync(path, file);
    await rejectsCode(FileDirtyBitmap.open(path, { volumeSize }), 'BM_ERR_NOT_SUPPORTED');
  });

  it('a bit array cut short: the regions it lacked come back dirty (never silently clean)', async () => {
    const path = freshPath();
    const volumeSize = 4 * PAGE_SPAN; // 4 pages
    const bitmap = await FileDirtyBitmap.open(path, { volumeSize, regionSize: 4096 });
    await bitmap.markDurable(5 * 4096, 4096);
    await bitmap.close();
    truncateSync(path, BITS_START + 4096 + 100); // page 0, and 100 bytes (800 regions) of page 1
    const again = await FileDirtyBitmap.open(path, { volumeSize });
    assert.equal(again.stats().truncated, true);
    assert.equal(again.isDirty(5), true);
    assert.equal(again.isDirty(6), false);
    assert.equal(again.nextDirty(6), 32768 + 800, 'first region past the cut');
    assert.equal(again.dirtyCount, 1 + (again.regionCount - 32768 - 800));
    assert.equal(statSync(path).size, BITS_START + 4 * 4096, 'file extended');
    await again.close();
    const third = await FileDirtyBitmap.open(path, { volumeSize });
    assert.equal(third.stats().truncated, false);
    assert.equal(third.dirtyCount, 1 + (third.regionCount - 32768 - 800), 'the dirty fill was written');
    await third.close();
  });
});

describe('FileDirtyBitmap write intent', () => {
  it('group commit: 1000 concurrent markDurable calls cost at most 2 fdatasyncs (batch); always: one each', async () => {
    let syncs = 0;
    const path = freshPath();
    const bitmap = await FileDirtyBitmap.open(path, { volumeSize: 4 * PAGE_SPAN, regionSize: 4096, hooks: { beforeSync: () => void syncs++ } });
    const base = bitmap.stats().syncs;
    await Promise.all(Array.from({ length: 1000 }, (_, i) => bitmap.markDurable(i * 7 * 4096 * 17, 4096)));
    assert.equal(bitmap.dirtyCount, 1000);
    assert.ok(syncs >= 1 && syncs <= 2, `${syncs} fdatasyncs for 1000 marks`);
    assert.equal(bitmap.stats().syncs - base, syncs);
    await bitmap.close();

    let alwaysSyncs = 0;
    const strict = await FileDirtyBitmap.open(freshPath(), {
      volumeSize: 4 * PAGE_SPAN,
      regionSize: 4096,
      flush: 'always',
      hooks: { beforeSync: () => void alwaysSyncs++ },
    });
    await Promise.all(Array.from({ length: 20 }, (_, i) => strict.markDurable(i * 4096, 1)));
    assert.equal(alwaysSyncs, 20);
    await strict.close();
  });

  it('marks made while a sync runs share the next one; none resolves before its own sync', async () => {
    const gate = deferred();
    const entered = deferred();
    let syncs = 0;
    const bitmap = await FileDirtyBitmap.open(freshPath(), {
      volumeSize: 4 * PAGE_SPAN,
      regionSize: 4096,
      hooks: {
        beforeSync: async () => {
          syncs++;
          if (syncs === 1) {
            entered.resolve();
            await gate.promise;
          }
        },
      },
    });
    const resolved: string[] = [];
    const first = bitmap.markDurable(0, 4096).then(() => resolved.push('first'));
    await entered.promise; // cycle 1 is in its sync
    const again = bitmap.markDurable(0, 4096).then(() => resolved.push('again')); // dirty, not durable yet
    const later = Array.from({ length: 100 }, (_, i) => bitmap.markDurable((i + 1) * PAGE_SPAN / 128, 1).then(() => resolved.push('later')));
    await Promise.resolve();
    assert.deepEqual(resolved, [], 'nothing resolves before the sync completes');
    gate.resolve();
    await Promise.all([first, again, ...later]);
    assert.deepEqual(resolved.slice(0, 2).sort(), ['again', 'first']);
    assert.equal(syncs, 2, 'the 100 marks made during sync 1 shared sync 2');
    await bitmap.close();
  });

  it('fast path: marking durably dirty regions does no I/O and returns the shared resolved promise', async () => {
    const bitmap = await FileDirtyBitmap.open(freshPath(), { volumeSize: 4 * PAGE_SPAN, regionSize: 4096 });
    await bitmap.markDurable(4096 * 10, 4096 * 3);
    const before = bitmap.stats();
    const p1 = bitmap.markDurable(4096 * 10 + 5, 100);
    const p2 = bitmap.markDurable(4096 * 11, 4096 * 2);
    assert.equal(p1, RESOLVED);
    assert.equal(p2, RESOLVED);
    await Promise.all([p1, p2]);
    assert.equal(bitmap.mark(4096 * 12, 1), 0);
    await bitmap.flush();
    const afterStats = bitmap.stats();
    assert.deepEqual(
      [afterStats.syncs, afterStats.pageWrites, afterStats.cycles],
      [before.syncs, before.pageWrites, before.cycles],
      'no write, no sync, no cycle',
    );
    await bitmap.close();
  });

  it('rewrites only the 4 KiB bitmap pages that changed (adjacent pages in one write)', async () => {
    const writes: Array<{ page: number; pages: number }> = [];
    const bitmap = await FileDirtyBitmap.open(freshPath(), {
      volumeSize: 8 * PAGE_SPAN,
      regionSize: 4096,
      hooks: { beforeWrite: (info) => void writes.push(info) },
    });
    await bitmap.markDurable(2 * PAGE_SPAN + 4096 * 5, 4096);
    assert.deepEqual(writes, [{ page: 2, pages: 1 }]);
    writes.length = 0;
    await Promise.all([bitmap.markDurable(0, 1), bitmap.markDurable(7 * PAGE_SPAN, 1), bitmap.markDurable(5 * PAGE_SPAN - 4096, 8192)]);
    assert.deepEqual(writes, [
      { page: 0, pages: 1 },
      { page: 4, pages: 2 },
      { page: 7, pages: 1 },
    ]);
    await bitmap.close();
  });

  it('clears are lazy: not written until the lazy flush timer (virtual time), a mark cycle, flush() or close()', async () => {
    const timers = FakeTimers.createClock(0);
    const writes: number[] = [];
    let writeStarted = deferred();
    const path = freshPath();
    const bitmap = await FileDirtyBitmap.open(path, {
      volumeSize: 4 * PAGE_SPAN,
      regionSize: 4096,
      lazyFlushMs: 1000,
      clock: clockFrom(timers),
      hooks: {
        beforeWrite: ({ page }) => {
          writes.push(page);
          writeStarted.resolve();
        },
      },
    });
    await bitmap.markDurable(PAGE_SPAN * 3, 4096);
    writes.length = 0;
    writeStarted = deferred();
    assert.equal(bitmap.clear(PAGE_SPAN * 3, 4096), 1);
    await timers.tickAsync(999);
    assert.deepEqual(writes, [], 'nothing written before the lazy delay');
    assert.ok(diskBits(path, bitmap.regionCount).has(32768 * 3), 'still dirty on disk');
    await timers.tickAsync(1);
    await writeStarted.promise; // the timer started a write on its own
    assert.deepEqual(writes, [3]);
    await bitmap.flush();
    assert.equal(diskBits(path, bitmap.regionCount).size, 0, 'clear on disk');

    // A clear rides along with the next mark's cycle.
    await bitmap.markDurable(0, 1);
    bitmap.clear(0, 4096);
    writes.length = 0;
    await bitmap.markDurable(4096 * 2, 1);
    assert.deepEqual(writes, [0]);
    assert.deepEqual(diskBits(path, bitmap.regionCount), new Set([2]));
    bitmap.clear(0, 4 * PAGE_SPAN);
    await bitmap.close();
    assert.equal(diskBits(path, 4 * 32768).size, 0, 'close writes pending clears');
    assert.equal(timers.countTimers(), 0, 'no timer left behind');
  });

  it('an fdatasync failure rejects the pending marks with BM_ERR_IO and fails the bitmap', async () => {
    const path = freshPath();
    let fail = false;
    const bitmap = await FileDirtyBitmap.open(path, {
      volumeSize: 4 * PAGE_SPAN,
      regionSize: 4096,
      hooks: {
        beforeSync: () => {
          if (fail) throw Object.assign(new Error('injected EIO'), { code: 'EIO' });
        },
      },
    });
    await bitmap.markDurable(0, 1);
    fail = true;
    const marks = [bitmap.markDurable(PAGE_SPAN, 1), bitmap.markDurable(PAGE_SPAN * 2, 1)];
    bitmap.mark(PAGE_SPAN * 3, 1); // not awaited: must not become an unhandled rejection
    for (const m of marks) await rejectsCode(m, 'BM_ERR_IO');
    assert.equal(bitmap.stats().failed, true);
    await rejectsCode(bitmap.markDurable(0, 1), 'BM_ERR_IO');
    assert.throws(() => bitmap.mark(4096 * 9, 1), (e: unknown) => isBlockMirrorError(e, 'BM_ERR_IO'));
    await rejectsCode(bitmap.flush(), 'BM_ERR_IO');
    assert.equal(bitmap.isDirty(0), true, 'reads keep working');
    await bitmap.close();
    const again = await FileDirtyBitmap.open(path, { volumeSize: 4 * PAGE_SPAN });
    assert.equal(again.isDirty(0), true, 'the durable mark survived');
    assert.equal(again.stats().cleanOpen, false);
    await again.close();
  });

  it('close resolves pending marks first; afterwards changes are refused with BM_ERR_CLOSED', async () => {
    const timers = FakeTimers.createClock(0);
    const bitmap = await FileDirtyBitmap.open(freshPath(), {
      volumeSize: 4 * PAGE_SPAN,
      regionSize: 4096,
      batchDelayMs: 50,
      clock: clockFrom(timers),
    });
    const pending = bitmap.markDurable(4096, 1); // waits for the batch delay
    const closing = bitmap.close();
    await pending;
    await closing;
    await bitmap.close();
    await rejectsCode(bitmap.markDurable(0, 1), 'BM_ERR_CLOSED');
    assert.throws(() => bitmap.clear(0, 4096), (e: unknown) => isBlockMirrorError(e, 'BM_ERR_CLOSED'));
    await rejectsCode(bitmap.flush(), 'BM_ERR_CLOSED');
    assert.equal(timers.countTimers(), 0);
  });
});
