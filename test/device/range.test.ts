import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { checkRange, checkWriteData, validateGeometry } from '../../src/device/range.js';
import { BlockMirrorError } from '../../src/errors.js';
import type { ErrorCode } from '../../src/errors.js';

function codeOf(fn: () => void): ErrorCode | undefined {
  try {
    fn();
    return undefined;
  } catch (error) {
    assert.ok(error instanceof BlockMirrorError, `expected a BlockMirrorError, got ${String(error)}`);
    return error.code;
  }
}

describe('checkRange', () => {
  const dev = { size: 8192, blockSize: 512 };

  it('accepts aligned in-range requests, including ones ending at the size and zero-length ones', () => {
    for (const [offset, length] of [[0, 512], [0, 8192], [7680, 512], [4096, 0], [8192, 0], [0, 0]] as const) {
      assert.equal(codeOf(() => checkRange(dev, offset, length)), undefined, `${offset}+${length}`);
    }
  });

  it('refuses negative, fractional, unsafe and non-number values with BM_ERR_INVALID_ARGUMENT', () => {
    const bad: unknown[] = [-512, -1, 0.5, 512.5, Number.NaN, Infinity, 2 ** 53, '512', null, undefined, 512n];
    for (const value of bad) {
      assert.equal(codeOf(() => checkRange(dev, value as number, 512)), 'BM_ERR_INVALID_ARGUMENT', `offset ${String(value)}`);
      assert.equal(codeOf(() => checkRange(dev, 0, value as number)), 'BM_ERR_INVALID_ARGUMENT', `length ${String(value)}`);
    }
  });

  it('refuses requests past the size with BM_ERR_OUT_OF_RANGE', () => {
    assert.equal(codeOf(() => checkRange(dev, 7680, 1024)), 'BM_ERR_OUT_OF_RANGE');
    assert.equal(codeOf(() => checkRange(dev, 8192, 512)), 'BM_ERR_OUT_OF_RANGE');
    assert.equal(codeOf(() => checkRange(dev, 8704, 0)), 'BM_ERR_OUT_OF_RANGE');
    assert.equal(codeOf(() => checkRange(dev, 0, 8704)), 'BM_ERR_OUT_OF_RANGE');
    // offset + length would exceed 2^53: still a clean out-of-range, not an overflow.
    assert.equal(codeOf(() => checkRange(dev, Number.MAX_SAFE_INTEGER - 1, Number.MAX_SAFE_INTEGER - 1)), 'BM_ERR_OUT_OF_RANGE');
  });

  it('refuses misaligned offsets and lengths with BM_ERR_MISALIGNED', () => {
    assert.equal(codeOf(() => checkRange(dev, 1, 512)), 'BM_ERR_MISALIGNED');
    assert.equal(codeOf(() => checkRange(dev, 0, 511)), 'BM_ERR_MISALIGNED');
    assert.equal(codeOf(() => checkRange(dev, 256, 0)), 'BM_ERR_MISALIGNED');
  });

  it('checks arguments, then range, then alignment', () => {
    assert.equal(codeOf(() => checkRange(dev, -1, 100000)), 'BM_ERR_INVALID_ARGUMENT');
    assert.equal(codeOf(() => checkRange(dev, 8193, 1)), 'BM_ERR_OUT_OF_RANGE');
  });

  it('puts offset, length, size and blockSize in the error details', () => {
    try {
      checkRange(dev, 8192, 512);
      assert.fail('expected a throw');
    } catch (error) {
      assert.ok(error instanceof BlockMirrorError);
      assert.deepEqual(error.details, { offset: 8192, length: 512, size: 8192, blockSize: 512 });
    }
  });

  it('accepts exactly the aligned in-range requests (property)', () => {
    const geometry = fc
      .tuple(fc.integer({ min: 0, max: 16 }), fc.integer({ min: 0, max: 64 }))
      .map(([shift, blocks]) => ({ blockSize: 2 ** shift, size: 2 ** shift * blocks }));
    const position = (g: { size: number; blockSize: number }) =>
      fc.oneof(
        fc.integer({ min: 0, max: g.size + 2 * g.blockSize }),
        fc.integer({ min: 0, max: g.size / g.blockSize + 2 }).map((n) => n * g.blockSize),
        fc.integer({ min: -g.blockSize, max: -1 }),
        fc.constantFrom(g.size, g.size - g.blockSize, Number.MAX_SAFE_INTEGER),
      );
    fc.assert(
      fc.property(
        geometry.chain((g) => fc.tuple(fc.constant(g), position(g), position(g))),
        ([g, offset, length]) => {
          const code = codeOf(() => checkRange(g, offset, length));
          let expected: ErrorCode | undefined;
          if (offset < 0 || length < 0) expected = 'BM_ERR_INVALID_ARGUMENT';
          else if (offset + length > g.size) expected = 'BM_ERR_OUT_OF_RANGE';
          else if (offset % g.blockSize !== 0 || length % g.blockSize !== 0) expected = 'BM_ERR_MISALIGNED';
          assert.equal(code, expected, `size ${g.size} bs ${g.blockSize} offset ${offset} length ${length}`);
        },
      ),
      { numRuns: 2000, seed: 20240601 },
    );
  });

  it('refuses any non-integer number with BM_ERR_INVALID_ARGUMENT (property)', () => {
    fc.assert(
      fc.property(fc.double({ noInteger: true }), (value) => {
        assert.equal(codeOf(() => checkRange({ size: 1 << 20, blockSize: 1 }, value, 0)), 'BM_ERR_INVALID_ARGUMENT');
        assert.equal(codeOf(() => checkRange({ size: 1 << 20, blockSize: 1 }, 0, value)), 'BM_ERR_INVALID_ARGUMENT');
      }),
      { numRuns: 500, seed: 7 },
    );
  });
});

describe('validateGeometry', () => {
  it('accepts power-of-two block sizes from 1 to 65536 and sizes that are multiples of them', () => {
    for (let shift = 0; shift <= 16; shift++) {
      const bs = 2 ** shift;
      validateGeometry(0, bs);
      validateGeometry(bs * 3, bs);
    }
    validateGeometry(2 ** 40, 4096);
  });

  it('refuses bad block sizes and sizes with BM_ERR_INVALID_ARGUMENT', () => {
    const cases: [number, number][] = [
      [4096, 0], [4096, 3], [4096, 1536], [131072, 131072], [4096, -512], [4096, 512.5], [4096, Number.NaN],
      [1000, 512], [-512, 512], [512.5, 1], [2 ** 53, 1], [Infinity, 512], ['4096' as unknown as number, 512],
    ];
    for (const [size, bs] of cases) {
      assert.equal(codeOf(() => validateGeometry(size, bs)), 'BM_ERR_INVALID_ARGUMENT', `size ${size} bs ${bs}`);
    }
  });
});

describe('checkWriteData', () => {
  it('returns the byte length of a Uint8Array or Buffer and refuses anything else', () => {
    assert.equal(checkWriteData(new Uint8Array(7)), 7);
    assert.equal(checkWriteData(Buffer.alloc(3)), 3);
    for (const bad of [null, undefined, 'x', [1], new ArrayBuffer(4), new DataView(new ArrayBuffer(4))]) {
      assert.equal(codeOf(() => checkWriteData(bad)), 'BM_ERR_INVALID_ARGUMENT');
    }
  });
});
