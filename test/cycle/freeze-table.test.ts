import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { FreezeTable } from '../../src/cycle/freeze-table.js';
import { cycleGeometry } from '../../src/cycle/geometry.js';
import { isBlockMirrorError } from '../../src/errors.js';

describe('FreezeTable', () => {
  it('SPEC 28: maps each chunk to -1 until its first write, then to the next slot of the layer', () => {
    const g = cycleGeometry(10 * 1024 * 1024, 512); // 1 MiB chunks, 4 KiB granules by default
    assert.equal(g.chunkSize, 1024 * 1024);
    assert.equal(g.granularity, 4096);
    assert.equal(g.chunkCount, 10);
    const t = new FreezeTable(g);
    for (let c = 0; c < 10; c++) assert.equal(t.slotOf(c), -1);
    assert.equal(t.allocate(7), 0);
    assert.equal(t.allocate(2), 1);
    assert.equal(t.allocate(7), 0, 'a chunk keeps its slot');
    assert.equal(t.slotOf(3), -1);
    assert.equal(t.chunkOf(1), 2);
  });

  it('rounds the chunk count up for a partial last chunk and clips its granules', () => {
    const g = cycleGeometry(1024 * 1024 + 6144, 512, 1024 * 1024, 4096);
    assert.equal(g.chunkCount, 2);
    const t = new FreezeTable(g);
    t.allocate(1);
    assert.throws(() => t.mark(1, 0, 3), (e) => isBlockMirrorError(e, 'BM_ERR_BAD_HEADER'));
    t.mark(1, 0, 2);
    const runs = [...t.runs()];
    assert.deepEqual(runs, [{ chunk: 1, slot: 0, granule: 0, count: 2, offset: 1024 * 1024, length: 6144 }]);
    assert.equal(t.bytes, 6144);
  });

  it('SPEC 35: tracks granules inside a chunk and yields runs of present granules', () => {
    const g = cycleGeometry(4 * 1024 * 1024, 512);
    const t = new FreezeTable(g);
    t.allocate(1);
    assert.equal(t.mark(1, 3, 2), 2);
    assert.equal(t.mark(1, 4, 3), 2, 'only new granules count');
    t.allocate(0);
    t.mark(0, 255, 1);
    assert.equal(t.granules, 5);
    assert.ok(t.hasAll(1, 3, 4) && !t.has(1, 2) && !t.has(1, 7));
    assert.deepEqual(
      [...t.runs(2)].map((r) => [r.chunk, r.slot, r.granule, r.count]),
      [
        [0, 1, 255, 1],
        [1, 0, 3, 2],
        [1, 0, 5, 2],
      ],
    );
  });

  it('round-trips the binary form, and decode rejects malformed tables', () => {
    const g = cycleGeometry(8 * 65536, 512, 65536, 4096);
    fc.assert(
      fc.property(fc.array(fc.record({ chunk: fc.nat(7), g: fc.nat(15), n: fc.integer({ min: 1, max: 16 }) }), { maxLength: 20 }), (marks) => {
        const t = new FreezeTable(g);
        for (const m of marks) {
          t.allocate(m.chunk);
          t.mark(m.chunk, m.g, Math.min(m.n, 16 - m.g));
        }
        const bytes = t.encode();
        const back = FreezeTable.decode(g, bytes);
        assert.deepEqual([...back.runs()], [...t.runs()]);
        assert.equal(back.granules, t.granules);
        assert.ok(back.encode().equals(bytes));
      }),
    );
    const t = new FreezeTable(g);
    t.allocate(3);
    t.mark(3, 0, 1);
    t.allocate(1);
    t.mark(1, 0, 1);
    const good = t.encode();
    const bad = (bytes: Buffer): void => assert.throws(() => FreezeTable.decode(g, bytes), (e) => isBlockMirrorError(e, 'BM_ERR_BAD_HEADER'));
    bad(good.subarray(1));
    const swapped = Buffer.concat([good.subarray(good.length / 2), good.subarray(0, good.length / 2)]);
    bad(swapped);
    const empty = Buffer.from(good);
    empty.fill(0, 8, 8 + g.bitmapBytes);
    bad(empty);
    const outOfRange = Buffer.from(good);
    outOfRange.writeUInt32BE(99, 0);
    bad(outOfRange);
    const sameSlot = Buffer.from(good);
    sameSlot.writeUInt32BE(sameSlot.readUInt32BE(4), 8 + g.bitmapBytes + 4);
    bad(sameSlot);
  });

  it('unions tables with fresh slots (the delta over several freezes) and builds a full table', () => {
    const g = cycleGeometry(4 * 65536, 512, 65536, 4096);
    const a = new FreezeTable(g);
    a.allocate(2);
    a.mark(2, 0, 2);
    const b = new FreezeTable(g);
    b.allocate(0);
    b.mark(0, 5, 1);
    b.allocate(2);
    b.mark(2, 1, 3);
    const u = FreezeTable.union(g, [a, b]);
    assert.deepEqual(
      [...u.runs()].map((r) => [r.chunk, r.slot, r.granule, r.count]),
      [
        [0, 0, 5, 1],
        [2, 1, 0, 4],
      ],
    );
    assert.equal(u.granules, 5);
    const full = FreezeTable.full(g);
    assert.equal(full.granules, 64);
    assert.equal(full.slotOf(3), 3);
  });

  it('refuses bad geometries', () => {
    for (const [size, bs, chunk, gran] of [
      [4096, 512, 3000, 512],
      [4096, 512, 4096, 256],
      [4096, 4096, 65536, 1024],
      [65536, 512, 1 << 30, 4096],
    ] as const) {
      assert.throws(() => cycleGeometry(size, bs, chunk, gran), (e) => isBlockMirrorError(e, 'BM_ERR_INVALID_ARGUMENT'));
    }
  });
});
