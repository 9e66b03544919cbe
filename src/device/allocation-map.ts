/**
 * The allocation map of a volume: one bit per region of
 * {@link ALLOCATION_REGION_SIZE} bytes, set when the region *may hold data*,
 * clear when it is *known to read as zeroes*. A set bit is always a correct
 * answer; a clear bit is a promise. Pure bookkeeping: persistence and the
 * ordering that keeps the promise across crashes live in
 * `allocation-store.ts` and `allocation-tracking-device.ts`.
 *
 * @module
 */
import type { BlockExtent } from './block-device.js';
import { BlockMirrorError } from '../errors.js';

/** Granularity of allocation maps: 64 KiB. */
export const ALLOCATION_REGION_SIZE = 64 * 1024;

/** Which regions of a volume may hold data (see the module notes). */
export class AllocationMap {
  /** Volume size in bytes. */
  readonly size: number;
  /** Bytes per region (a power of two). */
  readonly regionSize: number;
  /** Number of regions (the last one may be short). */
  readonly regions: number;
  /** One bit per region, 1 = may hold data. */
  readonly bits: Uint8Array;
  #dirtyFrom = Infinity;
  #dirtyTo = -1;

  /**
   * @param size - volume size in bytes
   * @param initial - `zero`: every region known zero (a new sparse volume); `data`: every region may hold data
   * @param regionSize - bytes per region (a power of two; default {@link ALLOCATION_REGION_SIZE})
   */
  constructor(size: number, initial: 'zero' | 'data', regionSize = ALLOCATION_REGION_SIZE) {
    if (!Number.isSafeInteger(size) || size < 0) throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', `allocation map size must be a non-negative integer, got ${size}`);
    if (!Number.isSafeInteger(regionSize) || regionSize <= 0 || (regionSize & (regionSize - 1)) !== 0) {
      throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', `allocation map region size must be a power of two, got ${regionSize}`);
    }
    this.size = size;
    this.regionSize = regionSize;
    this.regions = Math.ceil(size / regionSize);
    this.bits = new Uint8Array(Math.ceil(this.regions / 8));
    if (initial === 'data') {
      this.bits.fill(0xff);
      this.#clearTail();
    }
  }

  /** Index of the region holding byte `offset`. */
  regionOf(offset: number): number {
    return Math.floor(offset / this.regionSize);
  }

  /** True when region `index` may hold data. */
  isData(index: number): boolean {
    return (this.bits[index >> 3]! & (1 << (index & 7))) !== 0;
  }

  /** Regions touched by `[offset, offset + length)`: first and last index (last < first for length 0). */
  touched(offset: number, length: number): [number, number] {
    if (length === 0) return [0, -1];
    return [this.regionOf(offset), this.regionOf(offset + length - 1)];
  }

  /** Regions wholly inside `[offset, offset + length)` (the volume's short last region counts when covered to its end). */
  covered(offset: number, length: number): [number, number] {
    const first = Math.ceil(offset / this.regionSize);
    const end = offset + length;
    const last = end >= this.size ? this.regions - 1 : Math.floor(end / this.regionSize) - 1;
    return [first, last];
  }

  /** True when every region touched by the range may hold data. */
  allData(offset: number, length: number): boolean {
    const [first, last] = this.touched(offset, length);
    for (let i = first; i <= last; i++) if (!this.isData(i)) return false;
    return true;
  }

  /** True when every region touched by the range is known zero. */
  allZero(offset: number, length: number): boolean {
    const [first, last] = this.touched(offset, length);
    for (let i = first; i <= last; i++) if (this.isData(i)) return false;
    return true;
  }

  /** Marks region `index` as "may hold data"; true when it changed. */
  setData(index: number): boolean {
    if (this.isData(index)) return false;
    this.bits[index >> 3]! |= 1 << (index & 7);
    this.#dirty(index >> 3);
    return true;
  }

  /** Marks region `index` as known zero; true when it changed. */
  setZero(index: number): boolean {
    if (!this.isData(index)) return false;
    this.bits[index >> 3]! &= ~(1 << (index & 7));
    this.#dirty(index >> 3);
    return true;
  }

  /** Marks every region touched by the range as "may hold data"; true when any changed. */
  markData(offset: number, length: number): boolean {
    const [first, last] = this.touched(offset, length);
    let changed = false;
    for (let i = first; i <= last; i++) changed = this.setData(i) || changed;
    return changed;
  }

  /** Regions known zero. */
  get zeroRegions(): number {
    let n = 0;
    for (let i = 0; i < this.regions; i++) if (!this.isData(i)) n++;
    return n;
  }

  /**
   * The map over `[offset, offset + length)` as extents (zero regions are
   * `zero` and `hole`), merged, cut to the range.
   */
  extents(offset: number, length: number): BlockExtent[] {
    const out: Array<{ offset: number; length: number; zero: boolean; hole: boolean }> = [];
    const end = offset + length;
    const rs = this.regionSize;
    let pos = offset;
    while (pos < end) {
      let index = this.regionOf(pos);
      const zero = !this.isData(index);
      // the run of regions with the same state: whole bytes of the bitset at once (a sparse 4 GiB volume is 8 KiB of bits)
      const same = zero ? 0x00 : 0xff;
      index++;
      const lastIndex = this.regionOf(end - 1);
      while (index <= lastIndex) {
        if ((index & 7) === 0 && index + 7 <= lastIndex && this.bits[index >> 3] === same) {
          index += 8;
          continue;
        }
        if (this.isData(index) === zero) break;
        index++;
      }
      const next = Math.min(end, index * rs);
      out.push({ offset: pos, length: next - pos, zero, hole: zero });
      pos = next;
    }
    return out.map((e) => Object.freeze(e));
  }

  /** Bytes of {@link bits} changed since the last {@link takeDirty} (`[from, to)`), or undefined. */
  takeDirty(): { from: number; to: number } | undefined {
    if (this.#dirtyTo < 0) return undefined;
    const r = { from: this.#dirtyFrom, to: this.#dirtyTo + 1 };
    this.#dirtyFrom = Infinity;
    this.#dirtyTo = -1;
    return r;
  }

  /** Marks bytes `[from, to)` of {@link bits} changed again (a store of them failed). */
  redirty(from: number, to: number): void {
    this.#dirty(from);
    this.#dirty(to - 1);
  }

  /** Replaces the bits (from a stored map); bits beyond the last region are ignored. */
  load(bits: Uint8Array): void {
    if (bits.length !== this.bits.length) throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', `allocation map of ${bits.length} bytes, expected ${this.bits.length}`);
    this.bits.set(bits);
    this.#clearTail();
  }

  #dirty(byte: number): void {
    if (byte < this.#dirtyFrom) this.#dirtyFrom = byte;
    if (byte > this.#dirtyTo) this.#dirtyTo = byte;
  }

  #clearTail(): void {
    const extra = this.bits.length * 8 - this.regions;
    if (extra > 0) this.bits[this.bits.length - 1]! &= 0xff >> extra;
  }
}
