import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { parseSize } from '../../src/device/size.js';
import { isBlockMirrorError } from '../../src/errors.js';

describe('parseSize', () => {
  it('parses plain numbers and binary suffixes', () => {
    const cases: [string | number, number][] = [
      ['4096', 4096], ['0', 0], ['512K', 512 * 1024], ['64M', 64 * 2 ** 20], ['1G', 2 ** 30], ['2T', 2 * 2 ** 40],
      ['1GiB', 2 ** 30], ['1GB', 2 ** 30], ['8k', 8192], ['4mib', 4 * 2 ** 20], ['4096B', 4096], [' 16 M ', 16 * 2 ** 20],
      ['1.5G', 1.5 * 2 ** 30], ['0.5K', 512], [4096, 4096], [0, 0],
    ];
    for (const [input, bytes] of cases) assert.equal(parseSize(input), bytes, JSON.stringify(input));
  });

  it('refuses malformed, negative, fractional-byte and unsafe sizes with BM_ERR_INVALID_ARGUMENT', () => {
    const bad: unknown[] = [
      '', ' ', 'M', '-1', '-4K', '1.5', '0.1K', '1X', '1KK', '1 K B', '1iB', '1e3', '0x10', '10Ki', 'K1',
      '9007199254740993', '8192T', -1, 1.5, Number.NaN, Infinity, null, undefined, {}, 10n,
    ];
    for (const input of bad) {
      assert.throws(
        () => parseSize(input as string),
        (error: unknown) => isBlockMirrorError(error, 'BM_ERR_INVALID_ARGUMENT'),
        String(input),
      );
    }
  });

  it('multiplies by the suffix for every integer and spelling (property)', () => {
    const suffixes: [string, number][] = [
      ['', 1], ['B', 1], ['K', 2 ** 10], ['KB', 2 ** 10], ['KiB', 2 ** 10], ['M', 2 ** 20], ['MiB', 2 ** 20],
      ['G', 2 ** 30], ['GB', 2 ** 30], ['T', 2 ** 40], ['TiB', 2 ** 40],
    ];
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 8191 }), fc.constantFrom(...suffixes), fc.boolean(), (n, [suffix, mult], lower) => {
        const text = `${n}${lower ? suffix.toLowerCase() : suffix}`;
        assert.equal(parseSize(text), n * mult, text);
      }),
      { numRuns: 1000, seed: 42 },
    );
  });
});
