import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { ERROR_CODES } from '../../src/errors.js';
import { runFrameFuzz } from './fuzz-frames.js';

describe('codec: fuzzing', () => {
  it('100,000 mutated frames either decode or fail with a coded BlockMirrorError, with bounded buffering', () => {
    const stats = runFrameFuzz({ count: 100_000, seed: 0x5eed_c0de });
    assert.equal(stats.iterations, 100_000);
    for (const code of Object.keys(stats.errors)) assert.ok(Object.hasOwn(ERROR_CODES, code), code);
    // The mutations reach every check of the decoder, not just the first ones.
    for (const code of [
      'BM_ERR_BAD_MAGIC',
      'BM_ERR_BAD_VERSION',
      'BM_ERR_HEADER_TOO_LARGE',
      'BM_ERR_FRAME_TOO_LARGE',
      'BM_ERR_BAD_CHECKSUM',
      'BM_ERR_BAD_HEADER',
      'BM_ERR_UNKNOWN_MESSAGE',
    ]) {
      assert.ok((stats.errors[code] ?? 0) > 100, `${code} seen ${stats.errors[code] ?? 0} times`);
    }
    assert.ok(stats.framesDecoded > 10_000, `frames decoded: ${stats.framesDecoded}`);
    assert.ok(stats.framesIgnored > 1_000, `optional frames ignored: ${stats.framesIgnored}`);
    assert.ok(stats.datagramsDecoded > 0);
  });
});
