/**
 * A sparse in-memory {@link BlockDevice}.
 *
 * @module
 */

import { BlockMirrorError } from '../errors.js';
import type { BlockDevice, BlockDeviceSupports, BlockExtent, WriteOptions } from './block-device.js';
import { ExtentBuilder } from './extents.js';
import { checkRange, checkWriteData, validateGeometry } from './range.js';

/** Bytes per lazily allocated page of a {@link MemoryBlockDevice}. */
const PAGE_SIZE = 65536;

const MEMORY_SUPPORTS: BlockDeviceSupports = Object.freeze({
  trim: true,
  allocation: true,
  // Nothing is durable: flush() and FUA are accepted but make no promise.
  flush: false,
  fua: false,
  reopen: false,
});

/** Options of {@link MemoryBlockDevice}. */
export interface MemoryBlockDeviceOptions {
  /** Alignment unit in bytes (power of two, 1 … 65536). Default 512. */
  blockSize?: number;
}

/**
 * A {@link BlockDevice} held in memory, for tests and examples.
 *
 * Storage is sparse: 64 KiB pages are allocated on the first write that
 * touches them, so a large device costs nothing until written; trimming a
 * whole page frees it. Writes are copied into the device before `write()`
 * returns its promise, so the caller may reuse its buffer at once.
 *
 * `supports`: `trim` yes; `flush` and `fua` no (nothing is durable — `flush()`
 * and `{ fua: true }` are accepted and do nothing); `reopen` no (the content
 * is dropped by `close()`); `allocation` yes: `blockStatus()` reports the
 * pages never written (or trimmed whole) as zero holes, the others as data.
 */
export class MemoryBlockDevice implements BlockDevice {
  /** Size in bytes. */
  readonly size: number;
  /** Alignment unit in bytes. */
  readonly blockSize: number;
  /** `{ trim: true, flush: false, fua: false, reopen: false, allocation: true }`. */
  readonly supports: BlockDeviceSupports = MEMORY_SUPPORTS;

  #pages = new Map<number, Buffer>();
  #closed = false;

  /**
   * @param size - size in bytes, a multiple of `blockSize`.
   * @throws {BlockMirrorError} `BM_ERR_INVALID_ARGUMENT` for a bad geometry.
   */
  constructor(size: number, options: MemoryBlockDeviceOptions = {}) {
    const blockSize = options.blockSize ?? 512;
    validateGeometry(size, blockSize);
    this.size = size;
    this.blockSize = blockSize;
  }

  /** Bytes of memory currently allocated for pages (grows on first writes, shrinks on whole-page trims). */
  get allocatedBytes(): number {
    let total = 0;
    for (const page of this.#pages.values()) total += page.length;
    return total;
  }

  /** Reads `length` bytes at `offset` into a new buffer. */
  read(offset: number, length: number): Promise<Buffer> {
    try {
      this.#checkOpen();
      checkRange(this, offset, length);
    } catch (error) {
      return Promise.reject(error);
    }
    const out = Buffer.alloc(length);
    this.#forEachPage(offset, length, (page, pageStart, pageEnd, outPos) => {
      const buf = this.#pages.get(page);
      if (buf !== undefined) buf.copy(out, outPos, pageStart, pageEnd);
    });
    return Promise.resolve(out);
  }

  /** Copies `data` into the device at `offset`. */
  write(offset: number, data: Uint8Array, _options?: WriteOptions): Promise<void> {
    try {
      this.#checkOpen();
      checkRange(this, offset, checkWriteData(data));
    } catch (error) {
      return Promise.reject(error);
    }
    this.#forEachPage(offset, data.byteLength, (page, pageStart, pageEnd, dataPos) => {
      let buf = this.#pages.get(page);
      if (buf === undefined) {
        buf = Buffer.alloc(Math.min(PAGE_SIZE, this.size - page * PAGE_SIZE));
        this.#pages.set(page, buf);
      }
      buf.set(data.subarray(dataPos, dataPos + (pageEnd - pageStart)), pageStart);
    });
    return Promise.resolve();
  }

  /** Does nothing (nothing is durable); rejects `BM_ERR_CLOSED` after close. */
  flush(): Promise<void> {
    try {
      this.#checkOpen();
    } catch (error) {
      return Promise.reject(error);
    }
    return Promise.resolve();
  }

  /** Zeroes `length` bytes at `offset`, freeing whole pages. */
  trim(offset: number, length: number): Promise<void> {
    try {
      this.#checkOpen();
      checkRange(this, offset, length);
    } catch (error) {
      return Promise.reject(error);
    }
    this.#forEachPage(offset, length, (page, pageStart, pageEnd) => {
      const buf = this.#pages.get(page);
      if (buf === undefined) return;
      if (pageStart === 0 && pageEnd === buf.length) this.#pages.delete(page);
      else buf.fill(0, pageStart, pageEnd);
    });
    return Promise.resolve();
  }

  /**
   * Allocation map of a range: unallocated 64 KiB pages are `zero` holes,
   * allocated pages are data (even when they happen to hold zeroes).
   */
  blockStatus(offset: number, length: number): Promise<BlockExtent[]> {
    try {
      this.#checkOpen();
      checkRange(this, offset, length);
    } catch (error) {
      return Promise.reject(error);
    }
    const map = new ExtentBuilder(offset, this.blockSize);
    this.#forEachPage(offset, length, (page, pageStart, pageEnd) => {
      const absent = !this.#pages.has(page);
      map.push(pageEnd - pageStart, absent, absent);
    });
    return Promise.resolve(map.extents());
  }

  /** Drops the content. Idempotent. */
  close(): Promise<void> {
    this.#closed = true;
    this.#pages.clear();
    return Promise.resolve();
  }

  #checkOpen(): void {
    if (this.#closed) throw new BlockMirrorError('BM_ERR_CLOSED', 'the memory device is closed');
  }

  /** Calls `fn(pageIndex, startInPage, endInPage, positionInRequest)` for each page the range touches. */
  #forEachPage(
    offset: number,
    length: number,
    fn: (page: number, pageStart: number, pageEnd: number, requestPos: number) => void,
  ): void {
    let pos = offset;
    const end = offset + length;
    while (pos < end) {
      const page = Math.floor(pos / PAGE_SIZE);
      const pageBase = page * PAGE_SIZE;
      const pageEnd = Math.min(end, pageBase + PAGE_SIZE) - pageBase;
      fn(page, pos - pageBase, pageEnd, pos - offset);
      pos = pageBase + pageEnd;
    }
  }
}
