/**
 * Validation of device geometry and of request ranges, done once at the
 * boundary of every {@link BlockDevice} adapter.
 *
 * @module
 */

import { BlockMirrorError } from '../errors.js';
import type { BlockDevice } from './block-device.js';

/** Largest block size a device may have. */
export const MAX_BLOCK_SIZE = 65536;

/** The geometry {@link checkRange} validates against. */
export type DeviceGeometry = Pick<BlockDevice, 'size' | 'blockSize'>;

function isPowerOfTwo(n: number): boolean {
  // n is a safe integer here; powers of two up to 2^16 fit the 32-bit trick.
  return n > 0 && (n & (n - 1)) === 0;
}

/**
 * Checks `size` and `blockSize` of a device.
 *
 * `blockSize` must be a power of two from 1 to 65536; `size` a non-negative
 * safe integer that is a multiple of `blockSize`.
 *
 * @throws {BlockMirrorError} `BM_ERR_INVALID_ARGUMENT` (details `{ size, blockSize }`).
 */
export function validateGeometry(size: number, blockSize: number): void {
  const details = { size, blockSize };
  if (
    typeof blockSize !== 'number' ||
    !Number.isSafeInteger(blockSize) ||
    blockSize < 1 ||
    blockSize > MAX_BLOCK_SIZE ||
    !isPowerOfTwo(blockSize)
  ) {
    throw new BlockMirrorError(
      'BM_ERR_INVALID_ARGUMENT',
      `blockSize must be a power of two from 1 to ${MAX_BLOCK_SIZE}, got ${String(blockSize)}`,
      { details },
    );
  }
  if (typeof size !== 'number' || !Number.isSafeInteger(size) || size < 0) {
    throw new BlockMirrorError(
      'BM_ERR_INVALID_ARGUMENT',
      `size must be a non-negative safe integer, got ${String(size)}`,
      { details },
    );
  }
  if (size % blockSize !== 0) {
    throw new BlockMirrorError(
      'BM_ERR_INVALID_ARGUMENT',
      `size ${size} is not a multiple of blockSize ${blockSize}`,
      { details },
    );
  }
}

/**
 * Validates a request of `length` bytes at `offset` against a device.
 *
 * Checks, in this order (the first failing one decides the code):
 * 1. `offset` and `length` are non-negative safe integers → else `BM_ERR_INVALID_ARGUMENT`;
 * 2. `offset + length <= size` → else `BM_ERR_OUT_OF_RANGE`;
 * 3. `offset` and `length` are multiples of `blockSize` → else `BM_ERR_MISALIGNED`.
 *
 * Zero-length requests are valid anywhere in `[0, size]` (aligned).
 * Every error carries `details: { offset, length, size, blockSize }`.
 *
 * @throws {BlockMirrorError} as above.
 */
export function checkRange(device: DeviceGeometry, offset: number, length: number): void {
  const { size, blockSize } = device;
  if (
    typeof offset !== 'number' ||
    typeof length !== 'number' ||
    !Number.isSafeInteger(offset) ||
    !Number.isSafeInteger(length) ||
    offset < 0 ||
    length < 0
  ) {
    throw new BlockMirrorError(
      'BM_ERR_INVALID_ARGUMENT',
      `offset and length must be non-negative safe integers, got offset ${String(offset)}, length ${String(length)}`,
      { details: { offset, length, size, blockSize } },
    );
  }
  // Written so that offset + length never has to be computed beyond 2^53.
  if (length > size || offset > size - length) {
    throw new BlockMirrorError(
      'BM_ERR_OUT_OF_RANGE',
      `request [${offset}, +${length}) exceeds the device size ${size}`,
      { details: { offset, length, size, blockSize } },
    );
  }
  if (offset % blockSize !== 0 || length % blockSize !== 0) {
    throw new BlockMirrorError(
      'BM_ERR_MISALIGNED',
      `request [${offset}, +${length}) is not aligned to the block size ${blockSize}`,
      { details: { offset, length, size, blockSize } },
    );
  }
}

/**
 * Validates the `data` argument of a write and returns its length.
 *
 * @throws {BlockMirrorError} `BM_ERR_INVALID_ARGUMENT` when `data` is not a `Uint8Array`.
 */
export function checkWriteData(data: unknown): number {
  if (!(data instanceof Uint8Array)) {
    throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', 'write data must be a Uint8Array (or Buffer)', {
      details: { type: data === null ? 'null' : typeof data },
    });
  }
  return data.byteLength;
}
