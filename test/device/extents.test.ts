/**
 * ExtentBuilder: allocation maps from extents of any size, aligned
 * conservatively to a block size.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import { ExtentBuilder } from '../../src/device/extents.js';

describe('ExtentBuilder', () => {
  test('merges neighbours with the same status and keeps aligned boundaries', () => {
    const b = new ExtentBuilder(0, 512);
    b.push(1024, true, true);
    b.push(512, true, true);
    b.push(2048, false, false);
    assert.deepEqual(b.extents().map((e) => [e.offset, e.length, e.zero, e.hole]), [
      [0, 1536, true, true],
      [1536, 2048, false, false],
    ]);
  });

  test('a block described in pieces is zero (or a hole) only when every piece is', () => {
    const b = new ExtentBuilder(4096, 4096);
    b.push(1000, true, true);
    b.push(3096 + 4096, false, false);
    b.push(2048, true, true);
    b.push(2048, true, false);
    assert.deepEqual(b.extents().map((e) => [e.offset, e.length, e.zero, e.hole]), [
      [4096, 8192, false, false],
      [12288, 4096, true, false],
    ]);
    // an unfinished block is not part of the output yet
    b.push(100, true, true);
    assert.equal(b.alignedEnd, 16384);
    assert.equal(b.end, 16484);
    assert.equal(b.extents().at(-1)!.offset + b.extents().at(-1)!.length, 16384);
  });

  test('property: the output covers the input exactly, is aligned, and a zero block was zero in every input piece', () => {
    fc.assert(
      fc.property(
        fc.constantFrom(1, 512, 4096),
        fc.array(fc.record({ length: fc.integer({ min: 1, max: 10000 }), zero: fc.boolean() }), { minLength: 1, maxLength: 30 }),
        (bs, pieces) => {
          const b = new ExtentBuilder(0, bs);
          const byte: boolean[] = [];
          for (const p of pieces) {
            b.push(p.length, p.zero, p.zero);
            for (let i = 0; i < p.length; i++) byte.push(p.zero);
          }
          const total = byte.length;
          const pad = (bs - (total % bs)) % bs;
          b.push(pad || 0, false, false);
          for (let i = 0; i < pad; i++) byte.push(false);
          let pos = 0;
          for (const e of b.extents()) {
            assert.equal(e.offset, pos);
            assert.equal(e.offset % bs, 0);
            assert.equal(e.length % bs, 0);
            if (e.zero) for (let i = e.offset; i < e.offset + e.length; i++) assert.ok(byte[i], `byte ${i} reported zero`);
            pos += e.length;
          }
          assert.equal(pos, byte.length);
        },
      ),
    );
  });
});
