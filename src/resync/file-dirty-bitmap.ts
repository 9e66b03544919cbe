/**
 * {@link FileDirtyBitmap}: a {@link DirtyBitmap} persisted to a sidecar file
 * with the write-intent rule of md's bitmap and DRBD's activity log: a region
 * is durably dirty on disk before the write it covers may be acknowledged.
 *
 * Format: see `bitmap-format.ts` (two CRC'd header slots on their own 4 KiB
 * pages, then the bit array in 4 KiB pages).
 *
 * Durability argument:
 * - `markDurable()` sets the bits in memory, queues the changed page(s) and
 *   resolves only after a flush cycle that started after the bits were set has
 *   written those pages and `fdatasync`ed the file (`batch`/`always`), or
 *   written them to the page cache (`none`: survives a process crash, not a
 *   power loss). Cycles run one at a time; every mark made while one runs
 *   joins the next (group commit).
 * - Page writes copy the live bits, so a page may carry bits set or cleared
 *   after its batch started: an extra dirty bit costs a resend, and a clear is
 *   allowed to reach the disk at any time after it was made. A page changed
 *   again after its copy is written again by the next cycle.
 * - A torn page write (power loss mid-write) leaves each 512-byte sector old
 *   or new; both hold every bit that was durable before the cycle, so the bit
 *   array needs no checksum. The header is only rewritten at open and close,
 *   alternating between two slots: a torn header write leaves the other slot.
 * - Clears are lazy: written by the next cycle, by `flush()`, by the periodic
 *   lazy flush (`lazyFlushMs`) or at close.
 *
 * @module
 */

import { syncParent } from '../storage/state-file.js';
import { randomInt } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import createDebug from 'debug';
import type { Clock, TimerHandle } from '../clock.js';
import { systemClock } from '../clock.js';
import { BlockMirrorError, toBlockMirrorError } from '../errors.js';
import {
  BITS_START,
  FLAG_CLEAN,
  HEADER_BYTES,
  HEADER_SLOTS,
  decodeBitmapHeader,
  encodeBitmapHeader,
} from './bitmap-format.js';
import type { BitmapHeader } from './bitmap-format.js';
import { BITMAP_PAGE_BYTES, DEFAULT_REGION_SIZE, MemoryDirtyBitmap, RESOLVED, resolveBitmapGeometry } from './dirty-bitmap.js';
import type { DirtyBitmap, DirtyBitmapGeometry, ResolvedBitmapGeometry } from './dirty-bitmap.js';

const debug = createDebug('blockmirror:bitmap');

/** When marks are made durable, see {@link FileDirtyBitmapOptions.flush}. */
export type BitmapFlushPolicy = 'always' | 'batch' | 'none';

/**
 * Test hooks of a {@link FileDirtyBitmap}: each is awaited before the I/O it
 * names; a throw or rejection counts as that I/O failing.
 */
export interface FileDirtyBitmapHooks {
  /** Before each positional write of a run of bitmap pages (`page`: first page index, `pages`: count). */
  beforeWrite?(info: { page: number; pages: number }): void | Promise<void>;
  /** Before each `fdatasync` of a flush cycle (not of the header writes at open/close). */
  beforeSync?(): void | Promise<void>;
}

/** Options of {@link FileDirtyBitmap.open}. */
export interface FileDirtyBitmapOptions extends DirtyBitmapGeometry {
  /**
   * Region size in bytes. Default: the file's when it exists, else
   * {@link DEFAULT_REGION_SIZE}. A value that differs from an existing file's is refused.
   */
  regionSize?: number;
  /**
   * `'batch'` (default): group commit: one write + `fdatasync` cycle at a time
   * covers every mark made before it started. `'always'`: every mark that sets
   * new bits gets its own cycle (slowest; a baseline). `'none'`: marks resolve
   * once their page reached the page cache (survives a process crash, not a
   * power loss).
   */
  flush?: BitmapFlushPolicy;
  /** `'batch'` only: wait this long (ms) after the first queued mark before a cycle, to gather more. Default 0. */
  batchDelayMs?: number;
  /**
   * Clears are written by the next cycle, or after at most this many ms
   * when no mark comes. 0: only with the next cycle, `flush()` or `close()`.
   * Default 5000.
   */
  lazyFlushMs?: number;
  /** Clock for `batchDelayMs` / `lazyFlushMs`. Default {@link systemClock}. */
  clock?: Clock;
  /** Test hooks (failure injection, observing I/O). */
  hooks?: FileDirtyBitmapHooks;
}

/** Counters and recovery facts of a {@link FileDirtyBitmap}. */
export interface FileDirtyBitmapStats {
  /** `fdatasync` calls since open (flush cycles plus the header syncs of open/close). */
  syncs: number;
  /** Flush cycles run since open. */
  cycles: number;
  /** Bitmap pages (4 KiB) written since open. */
  pageWrites: number;
  /** Positional write calls since open (a run of adjacent pages is one write). */
  writes: number;
  /** Header generation (incremented by every open and clean close). */
  generation: number;
  /** The file was created by this open. */
  created: boolean;
  /** The previous session closed the bitmap cleanly (false after a crash; true for a new file). */
  cleanOpen: boolean;
  /** The bit array was shorter than its header says: the regions it lacked were marked dirty. */
  truncated: boolean;
  /** The bitmap failed on an I/O error and refuses changes. */
  failed: boolean;
}

interface Batch {
  readonly id: number;
  readonly promise: Promise<void>;
  readonly resolve: () => void;
  readonly reject: (error: Error) => void;
  /** The cycle carrying this batch must `fdatasync`. */
  sync: boolean;
  settled: boolean;
}

interface Settings {
  policy: BitmapFlushPolicy;
  batchDelayMs: number;
  lazyFlushMs: number;
  clock: Clock;
  hooks: FileDirtyBitmapHooks | undefined;
}

/** Most pages one positional write carries (1 MiB). */
const MAX_RUN_PAGES = 256;
const READ_CHUNK = 1024 * 1024;

function noop(): void {}

function policyOf(value: unknown): BitmapFlushPolicy {
  if (value === undefined) return 'batch';
  if (value === 'always' || value === 'batch' || value === 'none') return value;
  throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', `bitmap flush must be 'always', 'batch' or 'none', got ${String(value)}`);
}

function msOption(name: string, value: unknown, fallback: number): number {
  if (value === undefined) return fallback;
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 0) {
    throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', `bitmap ${name} must be an integer >= 0, got ${String(value)}`);
  }
  return value;
}

async function writeAll(fd: FileHandle, data: Buffer, position: number): Promise<void> {
  let done = 0;
  while (done < data.length) {
    const { bytesWritten } = await fd.write(data, done, data.length - done, position + done);
    if (bytesWritten <= 0) throw Object.assign(new Error('bitmap write made no progress'), { code: 'EIO' });
    done += bytesWritten;
  }
}

/** Reads `length` bytes at `position`; returns the buffer (zero beyond the end of the file) and the bytes actually read. */
/**
 * The newest valid header of the two slots in `area` (the file's first
 * `BITS_START` bytes; null: none), and the format version of a slot this
 * code cannot read, if any.
 */
function newestHeader(area: Buffer): { header: BitmapHeader | null; version?: number } {
  let header: BitmapHeader | null = null;
  let version: number | undefined;
  for (const at of HEADER_SLOTS) {
    const result = decodeBitmapHeader(area.subarray(at, at + HEADER_BYTES));
    if (result.ok) {
      if (header === null || result.header.generation > header.generation) header = result.header;
    } else if (result.reason === 'version') {
      version = result.version;
    }
  }
  return version === undefined ? { header } : { header, version };
}

/** The bit array of a bitmap with `geometry`; bytes the file lacks (short, torn) read as dirty: whatever they held is unknown. */
async function readBits(fd: FileHandle, geometry: ResolvedBitmapGeometry): Promise<{ bits: Buffer; read: number; truncated: boolean }> {
  const { data: bits, read } = await readFully(fd, geometry.pagedBytes, BITS_START);
  const truncated = read < geometry.bitmapBytes;
  if (truncated) bits.fill(0xff, read, geometry.bitmapBytes);
  return { bits, read, truncated };
}

async function readFully(fd: FileHandle, length: number, position: number): Promise<{ data: Buffer; read: number }> {
  const data = Buffer.alloc(length);
  let done = 0;
  while (done < length) {
    const { bytesRead } = await fd.read(data, done, length - done, position + done);
    if (bytesRead === 0) break;
    done += bytesRead;
  }
  return { data, read: done };
}

async function allZeroFrom(fd: FileHandle, position: number, end: number): Promise<boolean> {
  for (let at = position; at < end; at += READ_CHUNK) {
    const { data } = await readFully(fd, Math.min(READ_CHUNK, end - at), at);
    if (!data.every((b) => b === 0)) return false;
  }
  return true;
}


/**
 * A {@link DirtyBitmap} persisted to a sidecar file (one process at a time per
 * file). Use {@link FileDirtyBitmap.markDurable} before a write that must not
 * be lost in a crash; clears are written lazily. Only the 4 KiB pages of the
 * bit array that changed are rewritten.
 *
 * After an I/O error the bitmap is *failed*: pending and later `markDurable()`
 * calls reject with the coded error (`BM_ERR_IO`, `BM_ERR_NO_SPACE`, …),
 * changes throw it, reads keep working on the in-memory bits. Close it and
 * open it again (the bits on disk are a superset of the durable marks).
 *
 * @example
 * ```ts
 * const bitmap = await FileDirtyBitmap.open('/var/lib/bm/vol0.bitmap', { volumeSize: device.size });
 * await bitmap.markDurable(offset, data.length); // write intent
 * await device.write(offset, data);
 * // … once the target acknowledged and the region is in sync:
 * bitmap.clear(regionOffset, regionLength);
 * ```
 */
export class FileDirtyBitmap extends MemoryDirtyBitmap implements DirtyBitmap {
  /** Path of the bitmap file. */
  readonly path: string;
  readonly #fd: FileHandle;
  readonly #policy: BitmapFlushPolicy;
  readonly #batchDelayMs: number;
  readonly #lazyFlushMs: number;
  readonly #clock: Clock;
  readonly #hooks: FileDirtyBitmapHooks | undefined;
  readonly #bitmapId: number;
  readonly #createdAt: number;
  readonly #created: boolean;
  readonly #cleanOpen: boolean;
  readonly #truncated: boolean;
  #generation: number;

  /** Pages changed in memory and not yet handed to a write. */
  readonly #changedPages = new Set<number>();
  /** Per page, the newest batch that set bits in it and is not durable yet. */
  readonly #pageBatch = new Map<number, Batch>();
  /** Batches waiting for a cycle, oldest first. */
  readonly #queued: Batch[] = [];
  /** Batches carried by the running cycle. */
  #inFlight: Batch[] = [];
  /** `'batch'` policy: the queued batch new marks join. */
  #open: Batch | null = null;
  #nextBatchId = 1;
  #running = false;
  #kickQueued = false;
  #lazyWanted = false;
  /** Pages were written without an `fdatasync` after them. */
  #unsynced = false;
  #delayTimer: TimerHandle | null = null;
  #lazyTimer: TimerHandle | null = null;
  readonly #idleWaiters: Array<() => void> = [];
  #failure: BlockMirrorError | null = null;
  #closing: Promise<void> | null = null;

  #syncs = 0;
  #cycles = 0;
  #pageWrites = 0;
  #writes = 0;

  private constructor(
    path: string,
    fd: FileHandle,
    geometry: ResolvedBitmapGeometry,
    header: { bitmapId: number; createdAt: number; generation: number },
    recovery: { created: boolean; cleanOpen: boolean; truncated: boolean },
    settings: Settings,
  ) {
    super({ volumeSize: geometry.volumeSize, regionSize: geometry.regionSize });
    this.path = path;
    this.#fd = fd;
    this.#policy = settings.policy;
    this.#batchDelayMs = settings.batchDelayMs;
    this.#lazyFlushMs = settings.lazyFlushMs;
    this.#clock = settings.clock;
    this.#hooks = settings.hooks;
    this.#bitmapId = header.bitmapId;
    this.#createdAt = header.createdAt;
    this.#generation = header.generation;
    this.#created = recovery.created;
    this.#cleanOpen = recovery.cleanOpen;
    this.#truncated = recovery.truncated;
  }

  /**
   * Opens the bitmap at `path`, creating it (all clean) when missing. An
   * existing file keeps its bits; its header must match `volumeSize` (and
   * `regionSize` when given).
   *
   * A bit array shorter than its header says (a crash while the file was
   * being created, or a truncated file) is completed with *dirty* regions.
   *
   * @throws {BlockMirrorError} `BM_ERR_INVALID_ARGUMENT` for bad options or a
   *   geometry that differs from the file's (the file is left untouched),
   *   `BM_ERR_BITMAP_CORRUPT` when the file exists but holds no valid header,
   *   `BM_ERR_NOT_SUPPORTED` for another format version, `BM_ERR_IO` /
   *   `BM_ERR_NO_SPACE` on I/O errors.
   */
  static async open(path: string, options: FileDirtyBitmapOptions): Promise<FileDirtyBitmap> {
    if (typeof path !== 'string' || path.length === 0) {
      throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', 'bitmap path must be a non-empty string');
    }
    if (options === null || typeof options !== 'object') {
      throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', 'bitmap options with a volumeSize are required');
    }
    // Validates volumeSize (and regionSize when given) before touching the file.
    resolveBitmapGeometry({ volumeSize: options.volumeSize, regionSize: options.regionSize ?? DEFAULT_REGION_SIZE });
    const settings: Settings = {
      policy: policyOf(options.flush),
      batchDelayMs: msOption('batchDelayMs', options.batchDelayMs, 0),
      lazyFlushMs: msOption('lazyFlushMs', options.lazyFlushMs, 5000),
      clock: options.clock ?? systemClock,
      hooks: options.hooks,
    };

    let fd: FileHandle;
    let created = false;
    try {
      try {
        fd = await fsp.open(path, 'r+');
      } catch (error) {
        if ((error as { code?: unknown }).code !== 'ENOENT') throw error;
        fd = await fsp.open(path, 'wx+', 0o600);
        created = true;
      }
    } catch (error) {
      throw toBlockMirrorError(error);
    }

    try {
      const fileSize = (await fd.stat()).size;
      const { data: area } = await readFully(fd, BITS_START, 0);
      const { header: best, version } = newestHeader(area);
      if (version !== undefined) {
        throw new BlockMirrorError('BM_ERR_NOT_SUPPORTED', `bitmap ${path} has format version ${version}`, {
          details: { path, version },
        });
      }

      let bitmap: FileDirtyBitmap;
      if (best !== null) {
        if (best.volumeSize !== options.volumeSize || (options.regionSize !== undefined && options.regionSize !== best.regionSize)) {
          throw new BlockMirrorError(
            'BM_ERR_INVALID_ARGUMENT',
            `bitmap ${path} is for a volume of ${best.volumeSize} bytes in ${best.regionSize}-byte regions, ` +
              `not ${options.volumeSize} bytes in ${options.regionSize ?? best.regionSize}-byte regions`,
            {
              details: {
                path,
                fileVolumeSize: best.volumeSize,
                fileRegionSize: best.regionSize,
                volumeSize: options.volumeSize,
                regionSize: options.regionSize,
              },
            },
          );
        }
        const geometry = resolveBitmapGeometry({ volumeSize: best.volumeSize, regionSize: best.regionSize });
        const { bits, read, truncated } = await readBits(fd, geometry);
        if (truncated) debug('%s: bit array short (%d of %d bytes): missing regions marked dirty', path, read, geometry.bitmapBytes);
        bitmap = new FileDirtyBitmap(
          path,
          fd,
          geometry,
          best,
          { created, cleanOpen: (best.flags & FLAG_CLEAN) !== 0, truncated },
          settings,
        );
        bitmap.loadBits(bits);
        if (truncated) {
          await fd.truncate(BITS_START + geometry.pagedBytes);
          const fromPage = Math.floor(read / BITMAP_PAGE_BYTES);
          await bitmap.#writePages(fromPage, geometry.pagedBytes / BITMAP_PAGE_BYTES - fromPage);
        }
      } else {
        const blank = area.every((b) => b === 0) && (fileSize <= BITS_START || (await allZeroFrom(fd, BITS_START, fileSize)));
        if (!blank) {
          throw new BlockMirrorError('BM_ERR_BITMAP_CORRUPT', `${path} is not a blockmirror dirty bitmap (no valid header)`, {
            details: { path },
          });
        }
        // New (or a crash during creation left it blank): format it.
        const geometry = resolveBitmapGeometry({
          volumeSize: options.volumeSize,
          regionSize: options.regionSize ?? DEFAULT_REGION_SIZE,
        });
        await fd.truncate(BITS_START);
        await fd.truncate(BITS_START + geometry.pagedBytes);
        bitmap = new FileDirtyBitmap(
          path,
          fd,
          geometry,
          { bitmapId: randomInt(1, 2 ** 32 - 1), createdAt: Date.now(), generation: 0 },
          { created: true, cleanOpen: true, truncated: false },
          settings,
        );
      }
      // Marks the file in use (not cleanly closed) and makes size, pages and header durable.
      await bitmap.#writeHeader(false);
      if (created) await syncParent(path);
      debug('%s: open, generation %d, %d dirty regions, clean %s', path, bitmap.#generation, bitmap.dirtyCount, bitmap.#cleanOpen);
      return bitmap;
    } catch (error) {
      await fd.close().catch(noop);
      throw toBlockMirrorError(error);
    }
  }

  /** Header generation: incremented by every open and every clean close. */
  get generation(): number {
    return this.#generation;
  }

  /** A snapshot of the counters and of what the open found. */
  stats(): FileDirtyBitmapStats {
    return {
      syncs: this.#syncs,
      cycles: this.#cycles,
      pageWrites: this.#pageWrites,
      writes: this.#writes,
      generation: this.#generation,
      created: this.#created,
      cleanOpen: this.#cleanOpen,
      truncated: this.#truncated,
      failed: this.#failure !== null,
    };
  }

  #failedError(): BlockMirrorError {
    const failure = this.#failure as BlockMirrorError;
    return new BlockMirrorError(failure.code, `dirty bitmap failed earlier: ${failure.message}`, { cause: failure });
  }

  protected override assertWritable(): void {
    super.assertWritable();
    if (this.#failure !== null) throw this.#failedError();
  }

  protected override onPagesChanged(pages: readonly number[], set: boolean): void {
    for (const page of pages) this.#changedPages.add(page);
    if (!set) {
      this.#armLazy();
      return;
    }
    let batch = this.#open;
    if (batch === null) {
      batch = this.#newBatch();
      this.#queued.push(batch);
      if (this.#policy !== 'always') this.#open = batch;
    }
    for (const page of pages) this.#pageBatch.set(page, batch);
    this.#schedule();
  }

  protected override whenDurable(first: number, end: number): Promise<void> {
    if (this.#failure !== null) return Promise.reject(this.#failedError());
    if (this.#pageBatch.size === 0) return RESOLVED;
    const firstPage = Math.floor((first >>> 3) / BITMAP_PAGE_BYTES);
    const lastPage = Math.floor(((end - 1) >>> 3) / BITMAP_PAGE_BYTES);
    let latest: Batch | undefined;
    for (let page = firstPage; page <= lastPage; page++) {
      const batch = this.#pageBatch.get(page);
      if (batch !== undefined && (latest === undefined || batch.id > latest.id)) latest = batch;
    }
    return latest === undefined ? RESOLVED : latest.promise;
  }

  #newBatch(): Batch {
    let resolve: () => void = noop;
    let reject: (error: Error) => void = noop;
    const promise = new Promise<void>((res, rej) => {
      resolve = res;
      reject = rej;
    });
    // A mark() nobody awaits must not turn a failure into an unhandled rejection.
    promise.catch(noop);
    return { id: this.#nextBatchId++, promise, resolve, reject, sync: this.#policy !== 'none', settled: false };
  }

  #schedule(): void {
    if (this.#running || this.#delayTimer !== null || this.#kickQueued || this.#failure !== null) return;
    if (this.#policy === 'batch' && this.#batchDelayMs > 0 && this.#closing === null && !this.#lazyWanted) {
      this.#delayTimer = this.#clock.setTimeout(() => {
        this.#delayTimer = null;
        void this.#run();
      }, this.#batchDelayMs);
      return;
    }
    // Deferred to a microtask so that marks made in the same tick share the cycle.
    this.#kickQueued = true;
    queueMicrotask(() => {
      this.#kickQueued = false;
      void this.#run();
    });
  }

  #armLazy(): void {
    if (this.#lazyFlushMs === 0 || this.#lazyTimer !== null || this.#closing !== null || this.#failure !== null) return;
    this.#lazyTimer = this.#clock.setTimeout(() => {
      this.#lazyTimer = null;
      this.#lazyWanted = true;
      this.#schedule();
    }, this.#lazyFlushMs);
  }

  #cancelLazy(): void {
    if (this.#lazyTimer !== null) {
      this.#clock.clearTimeout(this.#lazyTimer);
      this.#lazyTimer = null;
    }
  }

  /** Runs flush cycles until nothing is queued. One runs at a time. */
  async #run(): Promise<void> {
    if (this.#running) return;
    this.#running = true;
    try {
      while (this.#failure === null && (this.#queued.length > 0 || this.#lazyWanted)) {
        const batches = this.#policy === 'always' ? this.#queued.splice(0, 1) : this.#queued.splice(0);
        this.#open = null;
        this.#inFlight = batches;
        this.#lazyWanted = false;
        this.#cancelLazy();
        const pages = [...this.#changedPages].sort((a, b) => a - b);
        this.#changedPages.clear();
        for (let i = 0; i < pages.length; ) {
          let j = i + 1;
          while (j < pages.length && pages[j] === (pages[j - 1] as number) + 1 && j - i < MAX_RUN_PAGES) j++;
          await this.#writePages(pages[i] as number, j - i);
          i = j;
        }
        if (batches.some((b) => b.sync)) {
          await this.#hooks?.beforeSync?.();
          await this.#fd.datasync();
          this.#syncs++;
          this.#unsynced = false;
        } else if (pages.length > 0) {
          this.#unsynced = true;
        }
        this.#cycles++;
        this.#inFlight = [];
        for (const batch of batches) {
          batch.settled = true;
          batch.resolve();
        }
        if (this.#pageBatch.size > 0) {
          for (const [page, batch] of this.#pageBatch) if (batch.settled) this.#pageBatch.delete(page);
        }
      }
    } catch (error) {
      this.#fail(error);
    } finally {
      this.#running = false;
      for (const wake of this.#idleWaiters.splice(0)) wake();
    }
  }

  /** Writes `count` pages from `page` on, copying the live bits. */
  async #writePages(page: number, count: number): Promise<void> {
    await this.#hooks?.beforeWrite?.({ page, pages: count });
    const start = page * BITMAP_PAGE_BYTES;
    const data = Buffer.from(this.bits.subarray(start, start + count * BITMAP_PAGE_BYTES));
    await writeAll(this.#fd, data, BITS_START + start);
    this.#writes++;
    this.#pageWrites += count;
  }

  /** Writes the next header slot (generation + 1) and syncs. */
  async #writeHeader(clean: boolean): Promise<void> {
    const generation = this.#generation + 1;
    const header = encodeBitmapHeader({
      flags: clean ? FLAG_CLEAN : 0,
      bitmapId: this.#bitmapId,
      regionSize: this.regionSize,
      volumeSize: this.volumeSize,
      regionCount: this.regionCount,
      generation,
      bitsBytes: Math.ceil(Math.ceil(this.regionCount / 8) / BITMAP_PAGE_BYTES) * BITMAP_PAGE_BYTES,
      createdAt: this.#createdAt,
      writtenAt: Date.now(),
    });
    await writeAll(this.#fd, header, HEADER_SLOTS[generation % 2] as number);
    await this.#fd.datasync();
    this.#syncs++;
    this.#unsynced = false;
    this.#generation = generation;
  }

  #fail(cause: unknown): void {
    if (this.#failure === null) {
      this.#failure = toBlockMirrorError(cause);
      debug('%s: failed: %s', this.path, this.#failure.message);
    }
    if (this.#delayTimer !== null) {
      this.#clock.clearTimeout(this.#delayTimer);
      this.#delayTimer = null;
    }
    this.#cancelLazy();
    const failing = [...this.#inFlight, ...this.#queued];
    this.#inFlight = [];
    this.#queued.length = 0;
    this.#open = null;
    this.#pageBatch.clear();
    const failure = this.#failure;
    for (const batch of failing) {
      if (batch.settled) continue;
      batch.settled = true;
      batch.reject(new BlockMirrorError(failure.code, `dirty bitmap write failed: ${failure.message}`, { cause: failure }));
    }
  }

  #idle(): Promise<void> {
    if (!this.#running) return RESOLVED;
    return new Promise((resolve) => this.#idleWaiters.push(resolve));
  }

  /**
   * Resolves once every change made before the call (clears included) is
   * written and synced, whatever the flush policy.
   */
  override flush(): Promise<void> {
    if (this.#failure !== null) return Promise.reject(this.#failedError());
    if (this.#closing !== null) return Promise.reject(new BlockMirrorError('BM_ERR_CLOSED', 'dirty bitmap is closed'));
    if (this.#changedPages.size === 0 && this.#queued.length === 0 && this.#inFlight.length === 0 && !this.#unsynced && !this.#running) {
      return RESOLVED;
    }
    let batch = this.#open;
    if (batch === null) {
      batch = this.#newBatch();
      this.#queued.push(batch);
      if (this.#policy !== 'always') this.#open = batch;
    }
    batch.sync = true;
    if (this.#delayTimer !== null) {
      this.#clock.clearTimeout(this.#delayTimer);
      this.#delayTimer = null;
    }
    this.#lazyWanted = true; // run at once, without the batch delay
    this.#schedule();
    return batch.promise;
  }

  /**
   * Writes every change, marks the file cleanly closed, syncs and closes it.
   * Pending `markDurable()` calls resolve first. Idempotent.
   *
   * @throws {BlockMirrorError} the I/O error when the final writes fail (the file is closed anyway).
   */
  override close(): Promise<void> {
    this.#closing ??= Promise.resolve().then(() => this.#close());
    return this.#closing;
  }

  async #close(): Promise<void> {
    this.markClosed();
    if (this.#delayTimer !== null) {
      this.#clock.clearTimeout(this.#delayTimer);
      this.#delayTimer = null;
    }
    this.#cancelLazy();
    const failedBefore = this.#failure !== null;
    for (;;) {
      if (this.#running) {
        await this.#idle();
        continue;
      }
      if (this.#failure !== null || (this.#queued.length === 0 && this.#changedPages.size === 0)) break;
      this.#lazyWanted = true;
      await this.#run();
    }
    let error: unknown = null;
    if (this.#failure === null) {
      try {
        await this.#writeHeader(true);
      } catch (e) {
        error = e;
      }
    } else if (!failedBefore) {
      error = this.#failure;
    }
    try {
      await this.#fd.close();
    } catch (e) {
      error ??= e;
    }
    if (error !== null) throw toBlockMirrorError(error);
    debug('%s: closed, %d dirty regions', this.path, this.dirtyCount);
  }
}

/** Result of {@link readBitmapRanges}. */
export type BitmapRangesResult =
  | {
      ok: true;
      /** The file's region size. */
      regionSize: number;
      /** Dirty regions in the file. */
      regions: number;
      /** Dirty byte ranges `[offset, length, …]`, sorted and disjoint: the dirty regions, coarsened when needed to at most `maxRanges` ranges (a superset). */
      ranges: number[];
    }
  | { ok: false; reason: string };

/**
 * Reads the dirty regions of the bitmap file at `path` without changing it
 * (not even its header): a mirror reading the bitmap a primary left in its
 * state directory. A crash does not matter (the bits on disk are a superset
 * of the durable marks); a short bit array counts its missing regions
 * dirty. Byte ranges are coarsened (neighbouring runs joined, in steps of
 * doubling granularity) until at most `maxRanges` remain, so the answer is
 * bounded whatever the volume size, and always covers every dirty region.
 */
export async function readBitmapRanges(path: string, options: { volumeSize: number; maxRanges: number }): Promise<BitmapRangesResult> {
  let fd: FileHandle;
  try {
    fd = await fsp.open(path, 'r');
  } catch (error) {
    return { ok: false, reason: (error as { code?: unknown }).code === 'ENOENT' ? 'no bitmap file' : `bitmap file unreadable (${(error as Error).message})` };
  }
  try {
    const { data: area } = await readFully(fd, BITS_START, 0);
    const { header: best } = newestHeader(area);
    if (best === null) return { ok: false, reason: 'bitmap file holds no valid header (torn or not a bitmap)' };
    if (best.volumeSize !== options.volumeSize) return { ok: false, reason: `bitmap file is for ${best.volumeSize} bytes, not ${options.volumeSize}` };
    const geometry = resolveBitmapGeometry({ volumeSize: best.volumeSize, regionSize: best.regionSize });
    const { bits } = await readBits(fd, geometry);
    const bitmap = new MemoryDirtyBitmap({ volumeSize: geometry.volumeSize, regionSize: geometry.regionSize });
    bitmap.merge(bits.subarray(0, geometry.bitmapBytes));
    return { ok: true, regionSize: geometry.regionSize, regions: bitmap.dirtyCount, ranges: dirtyRanges(bitmap, Math.max(1, options.maxRanges)) };
  } catch (error) {
    return { ok: false, reason: `bitmap file unreadable (${(error as Error).message})` };
  } finally {
    await fd.close().catch(noop);
  }
}

/** The dirty regions of `bitmap` as at most `maxRanges` byte ranges (coarsened: a superset). */
export function dirtyRanges(bitmap: Pick<DirtyBitmap, 'nextDirty' | 'regionCount' | 'regionSize' | 'volumeSize'>, maxRanges: number): number[] {
  for (let unit = 1; ; unit *= 2) {
    const runs: number[] = [];
    let start = -1;
    let end = -1;
    let fits = true;
    for (let i = bitmap.nextDirty(0); i >= 0; i = i + 1 < bitmap.regionCount ? bitmap.nextDirty(i + 1) : -1) {
      const u = Math.floor(i / unit);
      if (start >= 0 && u <= end + 1) {
        end = u;
        continue;
      }
      if (start >= 0) runs.push(start, end);
      if (runs.length / 2 >= maxRanges) {
        fits = false;
        break;
      }
      start = end = u;
    }
    if (!fits) continue;
    if (start >= 0) runs.push(start, end);
    const out: number[] = [];
    const bytes = unit * bitmap.regionSize;
    for (let k = 0; k < runs.length; k += 2) {
      const offset = runs[k]! * bytes;
      out.push(offset, Math.min(bitmap.volumeSize, (runs[k + 1]! + 1) * bytes) - offset);
    }
    return out;
  }
}
