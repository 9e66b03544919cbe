/**
 * Dirty-region bitmaps: one bit per fixed-size region of a volume, set when
 * the region may differ between a primary and a target, cleared once it is
 * known to be in sync. The {@link DirtyBitmap} interface is implemented in
 * memory ({@link MemoryDirtyBitmap}) and in a crash-safe sidecar file
 * (`FileDirtyBitmap`, see `file-dirty-bitmap.ts`).
 *
 * Semantics shared by every implementation:
 * - Regions are `regionSize` bytes (a power of two, at least 4 KiB); the last
 *   region is shorter when the volume size is not a multiple of it.
 * - {@link DirtyBitmap.mark} sets every region the byte range *touches*.
 * - {@link DirtyBitmap.clear} clears only the regions the byte range *fully
 *   covers* (the short last region counts as covered when the range reaches
 *   the end of the volume): a region half-covered by a clear may still hold
 *   other differences, and a stale dirty bit only costs a resend while a lost
 *   one costs divergence.
 *
 * @module
 */

import { BlockMirrorError } from '../errors.js';

/** Default region size: 64 KiB. */
export const DEFAULT_REGION_SIZE = 64 * 1024;
/** Smallest region size: 4 KiB. */
export const MIN_REGION_SIZE = 4096;
/** Largest region size: 1 GiB. */
export const MAX_REGION_SIZE = 2 ** 30;
/** Most regions a bitmap may have (2^31: a 256 MiB bit array). */
export const MAX_REGION_COUNT = 2 ** 31;
/** Volume sizes must be multiples of this many bytes. */
export const VOLUME_SIZE_UNIT = 512;
/** Bytes per page of the bit array (the unit the file bitmap rewrites). */
export const BITMAP_PAGE_BYTES = 4096;

/** One region of a volume: its index and byte range. */
export interface BitmapRegion {
  /** Region index, 0-based. */
  readonly index: number;
  /** Byte offset of the region in the volume (`index * regionSize`). */
  readonly offset: number;
  /** Bytes in the region (`regionSize`, less for a short last region). */
  readonly length: number;
}

/** Geometry of a bitmap: volume size and region size. */
export interface DirtyBitmapGeometry {
  /** Volume size in bytes: a positive safe integer, multiple of 512. */
  volumeSize: number;
  /** Region size in bytes: a power of two from 4 KiB to 1 GiB. Default {@link DEFAULT_REGION_SIZE}. */
  regionSize?: number;
}

/**
 * A bitmap of dirty regions of one volume (see the module notes for the exact
 * mark/clear semantics).
 */
export interface DirtyBitmap {
  /** Volume size in bytes. */
  readonly volumeSize: number;
  /** Region size in bytes (a power of two). */
  readonly regionSize: number;
  /** Number of regions (`ceil(volumeSize / regionSize)`). */
  readonly regionCount: number;
  /** Number of dirty regions. */
  readonly dirtyCount: number;
  /** Bytes in the dirty regions (the short last region counts by its real size). */
  readonly dirtyBytes: number;
  /**
   * Marks every region that `[offset, offset + length)` touches; a zero length
   * marks nothing. Returns the number of regions that were clean before.
   * For a persistent bitmap the bits are written soon but this does not wait:
   * use {@link DirtyBitmap.markDurable} before a write that must not be lost.
   *
   * @throws {BlockMirrorError} `BM_ERR_INVALID_ARGUMENT` / `BM_ERR_OUT_OF_RANGE` for a bad range,
   *   `BM_ERR_CLOSED` after close, the bitmap's I/O error once it failed.
   */
  mark(offset: number, length: number): number;
  /**
   * Marks like {@link DirtyBitmap.mark} and resolves once every region of the
   * range is durably dirty (the write-intent rule: mark, await, then write).
   * Regions that were already durably dirty cost no I/O.
   * Rejects (never throws) with the errors listed for `mark`.
   */
  markDurable(offset: number, length: number): Promise<void>;
  /** Marks every region; returns the number that were clean before. */
  markAll(): number;
  /**
   * Clears the regions that `[offset, offset + length)` fully covers; returns
   * the number of regions that were dirty before. Persistent bitmaps write
   * clears lazily.
   */
  clear(offset: number, length: number): number;
  /** Clears region `index`; returns true when it was dirty. */
  clearRegion(index: number): boolean;
  /** Clears every region; returns the number that were dirty before. */
  clearAll(): number;
  /** True when region `index` is dirty. */
  isDirty(index: number): boolean;
  /** Index of the first dirty region at or after `from`, or -1. */
  nextDirty(from?: number): number;
  /**
   * The dirty regions at or after `fromRegion`, in index order. The walk reads
   * the live bitmap: a region marked ahead of the cursor during the walk is
   * yielded, one cleared ahead of it is not.
   */
  dirtyRegions(fromRegion?: number): Generator<BitmapRegion, void, undefined>;
  /** Index of the region holding byte `offset` (`offset < volumeSize`). */
  regionIndex(offset: number): number;
  /** The byte range of region `index`. */
  region(index: number): BitmapRegion;
  /**
   * ORs another bitmap of the same geometry (or its {@link DirtyBitmap.toBuffer}
   * bytes) into this one; returns the number of regions that became dirty.
   */
  merge(other: DirtyBitmap | Uint8Array): number;
  /** An independent in-memory copy of the current bits. */
  snapshot(): MemoryDirtyBitmap;
  /**
   * A copy of the bit array: `ceil(regionCount / 8)` bytes, region `i` at bit
   * `i % 8` (LSB first) of byte `floor(i / 8)`.
   */
  toBuffer(): Buffer;
  /** Resolves once every change made before the call (clears included) is durable. */
  flush(): Promise<void>;
  /** Flushes and releases the bitmap; later changes are refused with `BM_ERR_CLOSED`. Idempotent. */
  close(): Promise<void>;
}

/** The shared, already resolved promise returned on fast paths. */
export const RESOLVED: Promise<void> = Promise.resolve();

/** Set bits in each byte value. */
const POPCOUNT = new Uint8Array(256);
for (let i = 1; i < 256; i++) POPCOUNT[i] = (POPCOUNT[i >> 1] as number) + (i & 1);

function isPowerOfTwo(n: number): boolean {
  return n > 0 && (n & (n - 1)) === 0;
}

/** Index of the lowest set bit of a non-zero byte. */
function lowestBit(v: number): number {
  return 31 - Math.clz32(v & -v);
}

/** Validated geometry with derived values. */
export interface ResolvedBitmapGeometry {
  readonly volumeSize: number;
  readonly regionSize: number;
  readonly regionCount: number;
  /** Bytes of the bit array proper (`ceil(regionCount / 8)`). */
  readonly bitmapBytes: number;
  /** Bytes of the bit array rounded up to whole {@link BITMAP_PAGE_BYTES} pages. */
  readonly pagedBytes: number;
}

/**
 * Validates a bitmap geometry and derives region count and array sizes.
 *
 * @throws {BlockMirrorError} `BM_ERR_INVALID_ARGUMENT` (details `{ volumeSize, regionSize }`).
 */
export function resolveBitmapGeometry(geometry: DirtyBitmapGeometry): ResolvedBitmapGeometry {
  const volumeSize = geometry?.volumeSize;
  const regionSize = geometry?.regionSize ?? DEFAULT_REGION_SIZE;
  const details = { volumeSize, regionSize };
  if (typeof volumeSize !== 'number' || !Number.isSafeInteger(volumeSize) || volumeSize <= 0 || volumeSize % VOLUME_SIZE_UNIT !== 0) {
    throw new BlockMirrorError(
      'BM_ERR_INVALID_ARGUMENT',
      `bitmap volumeSize must be a positive multiple of ${VOLUME_SIZE_UNIT}, got ${String(volumeSize)}`,
      { details },
    );
  }
  if (
    typeof regionSize !== 'number' ||
    !Number.isSafeInteger(regionSize) ||
    regionSize < MIN_REGION_SIZE ||
    regionSize > MAX_REGION_SIZE ||
    !isPowerOfTwo(regionSize)
  ) {
    throw new BlockMirrorError(
      'BM_ERR_INVALID_ARGUMENT',
      `bitmap regionSize must be a power of two from ${MIN_REGION_SIZE} to ${MAX_REGION_SIZE}, got ${String(regionSize)}`,
      { details },
    );
  }
  const regionCount = Math.ceil(volumeSize / regionSize);
  if (regionCount > MAX_REGION_COUNT) {
    throw new BlockMirrorError(
      'BM_ERR_INVALID_ARGUMENT',
      `bitmap of ${regionCount} regions is too large (at most ${MAX_REGION_COUNT}); use a larger regionSize`,
      { details },
    );
  }
  const bitmapBytes = Math.ceil(regionCount / 8);
  const pagedBytes = Math.ceil(bitmapBytes / BITMAP_PAGE_BYTES) * BITMAP_PAGE_BYTES;
  return { volumeSize, regionSize, regionCount, bitmapBytes, pagedBytes };
}

/**
 * A {@link DirtyBitmap} in memory. Also the base of the file-backed bitmap,
 * which extends it with persistence through the protected hooks.
 *
 * The bit array is `ceil(regionCount / 8)` bytes (rounded up to 4 KiB pages);
 * finding the next dirty region skips clean stretches 32 regions at a time.
 *
 * @example
 * ```ts
 * const bitmap = new MemoryDirtyBitmap({ volumeSize: 1 << 30 });
 * bitmap.mark(4096, 8192);
 * for (const region of bitmap.dirtyRegions()) await resend(region.offset, region.length);
 * ```
 */
export class MemoryDirtyBitmap implements DirtyBitmap {
  /** Volume size in bytes. */
  readonly volumeSize: number;
  /** Region size in bytes. */
  readonly regionSize: number;
  /** Number of regions. */
  readonly regionCount: number;
  /**
   * The bit array, {@link BITMAP_PAGE_BYTES}-page sized; bits at and beyond
   * `regionCount` are always zero.
   */
  protected readonly bits: Uint8Array;
  readonly #words: Uint32Array;
  readonly #bitmapBytes: number;
  #dirty = 0;
  #closed = false;
  /** Pages changed by the operation in progress (reused). */
  readonly #opPages: number[] = [];

  /**
   * @throws {BlockMirrorError} `BM_ERR_INVALID_ARGUMENT` for a bad geometry.
   */
  constructor(geometry: DirtyBitmapGeometry) {
    const g = resolveBitmapGeometry(geometry);
    this.volumeSize = g.volumeSize;
    this.regionSize = g.regionSize;
    this.regionCount = g.regionCount;
    this.#bitmapBytes = g.bitmapBytes;
    const buffer = new ArrayBuffer(g.pagedBytes);
    this.bits = new Uint8Array(buffer);
    this.#words = new Uint32Array(buffer);
  }

  /**
   * A bitmap holding the bits of `bits` (as produced by {@link DirtyBitmap.toBuffer}).
   *
   * @throws {BlockMirrorError} `BM_ERR_INVALID_ARGUMENT` for a bad geometry or a buffer of the wrong length.
   */
  static fromBuffer(bits: Uint8Array, geometry: DirtyBitmapGeometry): MemoryDirtyBitmap {
    const bitmap = new MemoryDirtyBitmap(geometry);
    bitmap.merge(bits);
    return bitmap;
  }

  /** Number of dirty regions. */
  get dirtyCount(): number {
    return this.#dirty;
  }

  /** Bytes in the dirty regions, the short last region counted by its real size. */
  get dirtyBytes(): number {
    let bytes = this.#dirty * this.regionSize;
    const last = this.regionCount - 1;
    if (this.#dirty > 0 && this.#bit(last)) bytes -= last * this.regionSize + this.regionSize - this.volumeSize;
    return bytes;
  }

  /** True once {@link MemoryDirtyBitmap.close} was called. */
  get closed(): boolean {
    return this.#closed;
  }

  #bit(index: number): boolean {
    return (((this.bits[index >>> 3] as number) >>> (index & 7)) & 1) === 1;
  }

  /** Throws when the bitmap refuses changes (closed, or failed for a persistent one). */
  protected assertWritable(): void {
    if (this.#closed) throw new BlockMirrorError('BM_ERR_CLOSED', 'dirty bitmap is closed');
  }

  /** Marks the bitmap closed: later changes throw `BM_ERR_CLOSED`. */
  protected markClosed(): void {
    this.#closed = true;
  }

  /**
   * Called once per operation that changed bits, with the (sorted, distinct)
   * {@link BITMAP_PAGE_BYTES} pages it changed; `set` tells whether bits were
   * set or cleared. The array is reused: do not keep it.
   */
  protected onPagesChanged(_pages: readonly number[], _set: boolean): void {
    // In memory: nothing to persist.
  }

  /** Resolves once regions `[first, end)` are durably dirty. In memory: at once. */
  protected whenDurable(_first: number, _end: number): Promise<void> {
    return RESOLVED;
  }

  #checkRange(offset: number, length: number): void {
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0) {
      throw new BlockMirrorError(
        'BM_ERR_INVALID_ARGUMENT',
        `bitmap range must be non-negative safe integers, got offset ${String(offset)}, length ${String(length)}`,
        { details: { offset, length, volumeSize: this.volumeSize } },
      );
    }
    if (length > this.volumeSize || offset > this.volumeSize - length) {
      throw new BlockMirrorError('BM_ERR_OUT_OF_RANGE', `bitmap range [${offset}, +${length}) exceeds the volume size ${this.volumeSize}`, {
        details: { offset, length, volumeSize: this.volumeSize },
      });
    }
  }

  #checkIndex(index: number, allowEnd = false): void {
    if (!Number.isSafeInteger(index) || index < 0) {
      throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', `region index must be a non-negative integer, got ${String(index)}`, {
        details: { index, regionCount: this.regionCount },
      });
    }
    if (index > this.regionCount || (index === this.regionCount && !allowEnd)) {
      throw new BlockMirrorError('BM_ERR_OUT_OF_RANGE', `region index ${index} is beyond the ${this.regionCount} regions`, {
        details: { index, regionCount: this.regionCount },
      });
    }
  }

  /** Sets (`set`) or clears bits `[first, end)`; returns how many changed and reports changed pages. */
  #apply(first: number, end: number, set: boolean): number {
    if (end <= first) return 0;
    const bits = this.bits;
    const firstByte = first >>> 3;
    const lastByte = (end - 1) >>> 3;
    const pages = this.#opPages;
    pages.length = 0;
    let changed = 0;
    for (let b = firstByte; b <= lastByte; b++) {
      const lo = b === firstByte ? first & 7 : 0;
      const hi = b === lastByte ? ((end - 1) & 7) + 1 : 8;
      const mask = (0xff >>> (8 - hi)) & (0xff << lo);
      const old = bits[b] as number;
      const next = set ? old | mask : old & ~mask;
      if (next === old) continue;
      bits[b] = next;
      changed += POPCOUNT[old ^ next] as number;
      const page = (b / BITMAP_PAGE_BYTES) | 0;
      if (pages.length === 0 || pages[pages.length - 1] !== page) pages.push(page);
    }
    if (changed > 0) {
      this.#dirty += set ? changed : -changed;
      this.onPagesChanged(pages, set);
    }
    return changed;
  }

  /** Regions `[first, end)` touched by the byte range (validated). */
  #touched(offset: number, length: number): [number, number] {
    if (length === 0) return [0, 0];
    return [Math.floor(offset / this.regionSize), Math.floor((offset + length - 1) / this.regionSize) + 1];
  }

  mark(offset: number, length: number): number {
    this.#checkRange(offset, length);
    this.assertWritable();
    const [first, end] = this.#touched(offset, length);
    return this.#apply(first, end, true);
  }

  markDurable(offset: number, length: number): Promise<void> {
    let first: number;
    let end: number;
    try {
      this.#checkRange(offset, length);
      this.assertWritable();
      [first, end] = this.#touched(offset, length);
      this.#apply(first, end, true);
    } catch (error) {
      return Promise.reject(error as Error);
    }
    return end > first ? this.whenDurable(first, end) : RESOLVED;
  }

  markAll(): number {
    this.assertWritable();
    return this.#apply(0, this.regionCount, true);
  }

  clear(offset: number, length: number): number {
    this.#checkRange(offset, length);
    this.assertWritable();
    const rangeEnd = offset + length;
    const first = Math.ceil(offset / this.regionSize);
    const end = rangeEnd === this.volumeSize ? this.regionCount : Math.floor(rangeEnd / this.regionSize);
    return this.#apply(first, end, false);
  }

  clearRegion(index: number): boolean {
    this.#checkIndex(index);
    this.assertWritable();
    return this.#apply(index, index + 1, false) === 1;
  }

  clearAll(): number {
    this.assertWritable();
    return this.#apply(0, this.regionCount, false);
  }

  isDirty(index: number): boolean {
    this.#checkIndex(index);
    return this.#bit(index);
  }

  nextDirty(from = 0): number {
    this.#checkIndex(from, true);
    if (this.#dirty === 0 || from === this.regionCount) return -1;
    const bits = this.bits;
    const nbytes = this.#bitmapBytes;
    let b = from >>> 3;
    const head = (bits[b] as number) & (0xff << (from & 7)) & 0xff;
    if (head !== 0) return b * 8 + lowestBit(head);
    b++;
    // Byte steps up to a word boundary, then whole zero words, then bytes again.
    for (; (b & 3) !== 0 && b < nbytes; b++) {
      const v = bits[b] as number;
      if (v !== 0) return b * 8 + lowestBit(v);
    }
    if (b >= nbytes) return -1;
    const words = this.#words;
    let w = b >>> 2;
    while (w < words.length && words[w] === 0) w++;
    for (b = w * 4; b < nbytes; b++) {
      const v = bits[b] as number;
      if (v !== 0) return b * 8 + lowestBit(v);
    }
    return -1;
  }

  *dirtyRegions(fromRegion = 0): Generator<BitmapRegion, void, undefined> {
    this.#checkIndex(fromRegion, true);
    for (let i = this.nextDirty(fromRegion); i >= 0; i = i + 1 < this.regionCount ? this.nextDirty(i + 1) : -1) {
      yield this.region(i);
    }
  }

  regionIndex(offset: number): number {
    if (!Number.isSafeInteger(offset) || offset < 0 || offset >= this.volumeSize) {
      throw new BlockMirrorError('BM_ERR_OUT_OF_RANGE', `offset ${String(offset)} is outside the volume of ${this.volumeSize} bytes`, {
        details: { offset, volumeSize: this.volumeSize },
      });
    }
    return Math.floor(offset / this.regionSize);
  }

  region(index: number): BitmapRegion {
    this.#checkIndex(index);
    const offset = index * this.regionSize;
    return { index, offset, length: Math.min(this.regionSize, this.volumeSize - offset) };
  }

  merge(other: DirtyBitmap | Uint8Array): number {
    let bytes: Uint8Array;
    if (other instanceof Uint8Array) {
      if (other.length !== this.#bitmapBytes) {
        throw new BlockMirrorError(
          'BM_ERR_INVALID_ARGUMENT',
          `bitmap bytes must be ${this.#bitmapBytes} long for ${this.regionCount} regions, got ${other.length}`,
          { details: { expected: this.#bitmapBytes, actual: other.length } },
        );
      }
      bytes = other;
    } else {
      if (other.volumeSize !== this.volumeSize || other.regionSize !== this.regionSize) {
        throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', 'cannot merge bitmaps of different geometry', {
          details: {
            volumeSize: this.volumeSize,
            regionSize: this.regionSize,
            otherVolumeSize: other.volumeSize,
            otherRegionSize: other.regionSize,
          },
        });
      }
      bytes = other instanceof MemoryDirtyBitmap ? other.bits : other.toBuffer();
    }
    this.assertWritable();
    const bits = this.bits;
    const pages = this.#opPages;
    pages.length = 0;
    let changed = 0;
    const n = this.#bitmapBytes;
    const lastMask = this.regionCount % 8 === 0 ? 0xff : 0xff >>> (8 - (this.regionCount % 8));
    for (let b = 0; b < n; b++) {
      const add = (bytes[b] as number) & (b === n - 1 ? lastMask : 0xff);
      const old = bits[b] as number;
      const next = old | add;
      if (next === old) continue;
      bits[b] = next;
      changed += POPCOUNT[old ^ next] as number;
      const page = (b / BITMAP_PAGE_BYTES) | 0;
      if (pages.length === 0 || pages[pages.length - 1] !== page) pages.push(page);
    }
    if (changed > 0) {
      this.#dirty += changed;
      this.onPagesChanged(pages, true);
    }
    return changed;
  }

  /**
   * Loads bits read from storage (bits beyond `regionCount` are dropped) and
   * recounts; reports no page change. For subclasses restoring a saved state.
   */
  protected loadBits(bytes: Uint8Array): void {
    const n = Math.min(bytes.length, this.#bitmapBytes);
    this.bits.set(bytes.subarray(0, n));
    this.bits.fill(0, n);
    if (this.regionCount % 8 !== 0) {
      const last = this.#bitmapBytes - 1;
      this.bits[last] = (this.bits[last] as number) & (0xff >>> (8 - (this.regionCount % 8)));
    }
    let dirty = 0;
    for (let b = 0; b < this.#bitmapBytes; b++) dirty += POPCOUNT[this.bits[b] as number] as number;
    this.#dirty = dirty;
  }

  snapshot(): MemoryDirtyBitmap {
    const copy = new MemoryDirtyBitmap({ volumeSize: this.volumeSize, regionSize: this.regionSize });
    copy.loadBits(this.bits);
    return copy;
  }

  toBuffer(): Buffer {
    return Buffer.from(this.bits.subarray(0, this.#bitmapBytes));
  }

  /** Nothing to make durable in memory: resolves at once. */
  flush(): Promise<void> {
    return RESOLVED;
  }

  /** Refuses further changes (reads keep working). */
  close(): Promise<void> {
    this.#closed = true;
    return RESOLVED;
  }
}
