/**
 * Geometry of a layered volume: how its bytes are cut into chunks (the unit
 * of the freeze table, SPEC 28) and granules (the unit of dirty tracking,
 * SPEC 35).
 *
 * @module
 */
import { BlockMirrorError } from '../errors.js';
import { validateGeometry } from '../device/range.js';

/** Default chunk size of a freeze table: 1 MiB, as in the seed. */
export const DEFAULT_CHUNK_SIZE = 1024 * 1024;
/** Default dirty-tracking granularity: 4 KiB (never below the device block size). */
export const DEFAULT_GRANULARITY = 4096;
/** Largest accepted chunk size (64 MiB). */
export const MAX_CHUNK_SIZE = 64 * 1024 * 1024;
/** Most granules a chunk may hold (keeps a table entry's bitmap ≤ 2 KiB). */
export const MAX_GRANULES_PER_CHUNK = 16384;

/** Geometry of a layered volume and of its freeze tables. */
export interface CycleGeometry {
  /** Volume size in bytes. */
  readonly size: number;
  /** Block size of the volume (alignment of requests). */
  readonly blockSize: number;
  /** Bytes per chunk (a power of two). */
  readonly chunkSize: number;
  /** Bytes per granule, the unit of dirty tracking and of copy-up (a power of two, `blockSize` ≤ granularity ≤ chunkSize). */
  readonly granularity: number;
  /** Number of chunks (the last one may be partial). */
  readonly chunkCount: number;
  /** Granules per full chunk. */
  readonly granulesPerChunk: number;
  /** Bytes of one chunk's granule bitmap. */
  readonly bitmapBytes: number;
}

function isPowerOfTwo(n: number): boolean {
  return Number.isSafeInteger(n) && n > 0 && 2 ** Math.round(Math.log2(n)) === n;
}

/**
 * Validates and completes a geometry.
 *
 * @throws {BlockMirrorError} `BM_ERR_INVALID_ARGUMENT` when a value is out of range.
 */
export function cycleGeometry(size: number, blockSize: number, chunkSize = DEFAULT_CHUNK_SIZE, granularity?: number): CycleGeometry {
  validateGeometry(size, blockSize);
  const gran = granularity ?? Math.max(DEFAULT_GRANULARITY, blockSize);
  if (!isPowerOfTwo(chunkSize) || chunkSize > MAX_CHUNK_SIZE || chunkSize < blockSize) {
    throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', `chunkSize must be a power of two from the block size to ${MAX_CHUNK_SIZE}`, {
      details: { chunkSize, blockSize },
    });
  }
  if (!isPowerOfTwo(gran) || gran < blockSize || gran > chunkSize) {
    throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', 'granularity must be a power of two from the block size to the chunk size', {
      details: { granularity: gran, blockSize, chunkSize },
    });
  }
  const granulesPerChunk = chunkSize / gran;
  if (granulesPerChunk > MAX_GRANULES_PER_CHUNK) {
    throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', `a chunk may hold at most ${MAX_GRANULES_PER_CHUNK} granules`, {
      details: { granularity: gran, chunkSize },
    });
  }
  const chunkCount = Math.ceil(size / chunkSize);
  if (chunkCount > 0xffffffff) {
    throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', 'too many chunks: use a larger chunkSize', { details: { size, chunkSize } });
  }
  return Object.freeze({ size, blockSize, chunkSize, granularity: gran, chunkCount, granulesPerChunk, bitmapBytes: Math.ceil(granulesPerChunk / 8) });
}

/** Granules in chunk `chunk` (fewer than `granulesPerChunk` for a partial last chunk). */
export function granulesIn(g: CycleGeometry, chunk: number): number {
  const start = chunk * g.chunkSize;
  const end = Math.min(g.size, start + g.chunkSize);
  return Math.ceil((end - start) / g.granularity);
}

/** Byte length of `count` granules starting at granule `granule` of `chunk`, clipped at the end of the volume. */
export function runLength(g: CycleGeometry, chunk: number, granule: number, count: number): number {
  const start = chunk * g.chunkSize + granule * g.granularity;
  return Math.min(g.size, start + count * g.granularity) - start;
}

/** True when both geometries describe the same layout. */
export function sameGeometry(a: CycleGeometry, b: CycleGeometry): boolean {
  return a.size === b.size && a.blockSize === b.blockSize && a.chunkSize === b.chunkSize && a.granularity === b.granularity;
}
