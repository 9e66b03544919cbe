/**
 * A {@link BlockDevice} that keeps an {@link AllocationMap} of another device
 * (a file, an NBD export, …) in a file beside the volume's other state, and
 * answers `blockStatus()` from it.
 *
 * Crash safety — a crash may only make the map more conservative:
 * - a write to a region the stored map calls zero first marks the region
 *   "may hold data" in the file and syncs it; only then does the data write
 *   start;
 * - a zero (`trim`) skips regions already known zero and zeroes the others on
 *   the device; a region it covered whole is marked zero only at the next
 *   `flush()` (after the device's flush made the zeroes durable), and only
 *   when no write to the region started since the zero started.
 *
 * Reads of a range known zero return zeroes without touching the device.
 *
 * @module
 */
import type { BlockDevice, BlockDeviceSupports, BlockExtent, WriteOptions } from './block-device.js';
import { AllocationMap } from './allocation-map.js';
import { openAllocationStore, type AllocationStore, type AllocationStoreOptions } from './allocation-store.js';
import { checkRange, checkWriteData } from './range.js';
import { isAllZero, writeZeroes } from './zero.js';
import { readInto } from './read-into.js';
import { BlockMirrorError } from '../errors.js';

/** Options of {@link AllocationTrackingDevice.open}. */
export type AllocationTrackingOptions = Omit<AllocationStoreOptions, 'size'>;

/** Progress of {@link AllocationTrackingDevice.scanZeros}. */
export interface ZeroScanProgress {
  /** Bytes of "may hold data" regions read so far. */
  done: number;
  /** Bytes of "may hold data" regions to read in all. */
  total: number;
  /** Regions found all-zero so far. */
  zeroRegions: number;
}

/** A zero in progress over a region: how many, and whether a write started since. */
interface Zeroing {
  count: number;
  spoiled: boolean;
}

/** See the module notes. */
export class AllocationTrackingDevice implements BlockDevice {
  /** The device holding the data. */
  readonly inner: BlockDevice;
  /** The map (read it; change it only through this device). */
  readonly map: AllocationMap;
  readonly supports: BlockDeviceSupports;
  readonly #store: AllocationStore;
  /** The bits as the file holds them durably. */
  #durable: Uint8Array;
  #persistChain: Promise<void> = Promise.resolve();
  readonly #inflight = new Map<number, number>();
  readonly #zeroing = new Map<number, Zeroing>();
  /** Regions zeroed whole, waiting for a flush to be marked zero (value: the generation of the zero). */
  readonly #pendingZero = new Map<number, number>();
  #generation = 0;
  #closed = false;

  /** @internal use {@link AllocationTrackingDevice.open} */
  constructor(inner: BlockDevice, store: AllocationStore) {
    this.inner = inner;
    this.#store = store;
    this.map = store.map;
    this.#durable = Uint8Array.from(store.map.bits);
    this.supports = Object.freeze({ ...inner.supports, trim: true, allocation: true });
  }

  /**
   * Wraps `inner` with the map kept at `path` (created when missing: with
   * `initial: 'zero'` for a volume created empty, `'data'` for an existing
   * image; see `openAllocationStore`).
   */
  static async open(inner: BlockDevice, path: string, options: AllocationTrackingOptions): Promise<AllocationTrackingDevice> {
    const store = await openAllocationStore(path, { ...options, size: inner.size });
    return new AllocationTrackingDevice(inner, store);
  }

  /** How the map was obtained: `loaded`, `created` or `untrusted` (see `AllocationStore.origin`). */
  get origin(): AllocationStore['origin'] {
    return this.#store.origin;
  }

  get size(): number {
    return this.inner.size;
  }

  get blockSize(): number {
    return this.inner.blockSize;
  }

  read(offset: number, length: number): Promise<Buffer> {
    if (this.#closed) return Promise.reject(closedError());
    try {
      checkRange(this, offset, length);
    } catch (error) {
      return Promise.reject(error);
    }
    if (length > 0 && this.map.allZero(offset, length)) return Promise.resolve(Buffer.alloc(length));
    return this.inner.read(offset, length);
  }

  /** Reads into `target` (see {@link BlockDevice.readInto}): zeroes where the map knows them, else from the inner device. */
  readInto(offset: number, target: Uint8Array): Promise<void> {
    if (this.#closed) return Promise.reject(closedError());
    try {
      checkRange(this, offset, target.length);
    } catch (error) {
      return Promise.reject(error);
    }
    if (target.length > 0 && this.map.allZero(offset, target.length)) {
      target.fill(0);
      return Promise.resolve();
    }
    return readInto(this.inner, offset, target);
  }

  async write(offset: number, data: Uint8Array, options?: WriteOptions): Promise<void> {
    if (this.#closed) throw closedError();
    checkWriteData(data);
    checkRange(this, offset, data.length);
    const [first, last] = this.map.touched(offset, data.length);
    this.#beginWrite(first, last);
    try {
      if (!this.#durablyData(first, last)) {
        for (let i = first; i <= last; i++) this.map.setData(i);
        await this.#persist();
      }
      await this.inner.write(offset, data, options);
    } finally {
      this.#endWrite(first, last);
    }
  }

  /** Zeroes the range (see the module notes); reads return zeroes afterwards. */
  async trim(offset: number, length: number): Promise<void> {
    if (this.#closed) throw closedError();
    checkRange(this, offset, length);
    if (length === 0) return;
    const [first, last] = this.map.covered(offset, length);
    const generation = ++this.#generation;
    for (let i = first; i <= last; i++) {
      const z = this.#zeroing.get(i) ?? { count: 0, spoiled: false };
      if ((this.#inflight.get(i) ?? 0) > 0) z.spoiled = true;
      z.count++;
      this.#zeroing.set(i, z);
    }
    let ok = false;
    try {
      for (const e of this.map.extents(offset, length)) {
        if (e.zero) continue;
        if (this.inner.supports.trim && this.inner.trim !== undefined) await this.inner.trim(e.offset, e.length);
        else await writeZeroes(this.inner, e.offset, e.length, false);
      }
      ok = true;
    } finally {
      for (let i = first; i <= last; i++) {
        const z = this.#zeroing.get(i)!;
        z.count--;
        if (ok && !z.spoiled && (this.#inflight.get(i) ?? 0) === 0) this.#pendingZero.set(i, generation);
        if (z.count === 0) this.#zeroing.delete(i);
      }
    }
  }

  /** Flushes the device, then marks the regions zeroed whole since as zero and stores the map. */
  async flush(): Promise<void> {
    if (this.#closed) throw closedError();
    await this.#flush();
  }

  async #flush(): Promise<void> {
    const candidates = [...this.#pendingZero];
    await this.inner.flush();
    for (const [i, generation] of candidates) {
      if (this.#pendingZero.get(i) !== generation || (this.#inflight.get(i) ?? 0) > 0) continue;
      this.#pendingZero.delete(i);
      this.map.setZero(i);
    }
    await this.#persist();
  }

  blockStatus(offset: number, length: number): Promise<BlockExtent[]> {
    if (this.#closed) return Promise.reject(closedError());
    try {
      checkRange(this, offset, length);
    } catch (error) {
      return Promise.reject(error);
    }
    return Promise.resolve(length === 0 ? [] : this.map.extents(offset, length));
  }

  /**
   * One-time scan of an image whose map says "may hold data": reads every
   * such region and marks the all-zero ones zero, then stores the map. Run it
   * before the device is used (no other request may run meanwhile).
   */
  async scanZeros(onProgress?: (p: ZeroScanProgress) => void, signal?: AbortSignal): Promise<ZeroScanProgress> {
    if (this.#closed) throw closedError();
    const map = this.map;
    const spans: Array<[number, number]> = [];
    const maxSpan = Math.max(1, Math.floor((4 * 1024 * 1024) / map.regionSize));
    for (let i = 0; i < map.regions; i++) {
      if (!map.isData(i)) continue;
      const last = spans.at(-1);
      if (last !== undefined && last[1] === i - 1 && last[1] - last[0] + 1 < maxSpan) last[1] = i;
      else spans.push([i, i]);
    }
    const regionBytes = (first: number, last: number): number => Math.min(map.size, (last + 1) * map.regionSize) - first * map.regionSize;
    const progress: ZeroScanProgress = { done: 0, total: spans.reduce((n, [a, b]) => n + regionBytes(a, b), 0), zeroRegions: 0 };
    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < spans.length) {
        signal?.throwIfAborted();
        const [first, last] = spans[next++]!;
        const data = await this.inner.read(first * map.regionSize, regionBytes(first, last));
        for (let i = first; i <= last; i++) {
          const from = (i - first) * map.regionSize;
          if (isAllZero(data.subarray(from, from + map.regionSize)) && map.setZero(i)) progress.zeroRegions++;
        }
        progress.done += data.length;
        onProgress?.({ ...progress });
      }
    };
    await Promise.all([worker(), worker(), worker(), worker()]);
    await this.#persist();
    return progress;
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    try {
      // zeroes done since the last flush are recorded when the device can still make them durable
      if (this.#pendingZero.size > 0) await this.#flush().catch(() => undefined);
      await this.#persistChain.catch(() => undefined);
      await this.#store.persist().catch(() => undefined);
      await this.#store.close();
    } finally {
      await this.inner.close();
    }
  }

  #beginWrite(first: number, last: number): void {
    for (let i = first; i <= last; i++) {
      this.#inflight.set(i, (this.#inflight.get(i) ?? 0) + 1);
      const z = this.#zeroing.get(i);
      if (z !== undefined) z.spoiled = true;
      this.#pendingZero.delete(i);
    }
  }

  #endWrite(first: number, last: number): void {
    for (let i = first; i <= last; i++) {
      const n = this.#inflight.get(i)! - 1;
      if (n === 0) this.#inflight.delete(i);
      else this.#inflight.set(i, n);
    }
  }

  #durablyData(first: number, last: number): boolean {
    const d = this.#durable;
    // both: a region marked zero in memory may be on its way to the file as zero
    for (let i = first; i <= last; i++) if ((d[i >> 3]! & (1 << (i & 7))) === 0 || !this.map.isData(i)) return false;
    return true;
  }

  /** Stores the map's changes (one store at a time; each call waits for one that starts after it). */
  #persist(): Promise<void> {
    const run = async (): Promise<void> => {
      const snapshot = Uint8Array.from(this.map.bits);
      await this.#store.persist();
      this.#durable = snapshot;
    };
    const p = this.#persistChain.then(run, run);
    this.#persistChain = p.catch(() => undefined);
    return p;
  }
}

function closedError(): BlockMirrorError {
  return new BlockMirrorError('BM_ERR_CLOSED', 'the device is closed');
}
