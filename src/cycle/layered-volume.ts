/**
 * {@link LayeredVolume}: a {@link BlockDevice} made of a base device, frozen
 * layers and one active layer, with redirect-on-write (SPEC 28, 29).
 *
 * - Writes go to the active layer. The first write to a granule that the
 *   layer does not hold yet copies up only the parts of its first and last
 *   granule that the write does not cover (from the layers below), writes,
 *   records the granules in the layer's map file and only then resolves.
 *   Later writes to those granules go straight to the layer's slot. A
 *   copy-up waits for the writes still in the layer frozen just before
 *   (issued before the freeze), so it copies the image of that freeze.
 * - Reads take each granule from the newest layer holding it, else the base.
 * - `freeze()` opens the new layer first (files created and durable, the
 *   manifest updated), then switches writes to it in one step, then seals the
 *   old one once its last write completed.
 * - `mergeFrozenIntoBase()` copies the oldest frozen layers into the base
 *   and deletes them; it is idempotent (a merge interrupted by a crash is
 *   simply done again).
 *
 * Files, next to the volume in `dir` (default: the directory of a
 * {@link FileBlockDevice} base), for volume `name`:
 * - `<name>.cycle` — manifest (JSON + CRC, replaced atomically): lineage,
 *   geometry, `base` (last freeze merged into the base device) and `top` (last
 *   freeze). Frozen layers are `base+1 … top`, the active one is `top+1`.
 * - `<name>.L<n>.data` / `<name>.L<n>.map` — layer `n` (see `layer-file.ts`).
 *
 * @module
 */
import { randomBytes } from 'node:crypto';
import { basename, dirname, join } from 'node:path';
import createDebug from 'debug';
import { BlockMirrorError } from '../errors.js';
import type { BlockDevice, BlockDeviceSupports, WriteOptions } from '../device/block-device.js';
import { FileBlockDevice } from '../device/file-device.js';
import { knownZero } from '../device/zero.js';
import { checkRange, checkWriteData } from '../device/range.js';
import { nodeFileSystem, type FileSystem } from '../storage/file-system.js';
import { FreezeTable } from './freeze-table.js';
import { DEFAULT_CHUNK_SIZE, cycleGeometry, type CycleGeometry } from './geometry.js';
import { LayerFile, layerPaths } from './layer-file.js';

const log = createDebug('blockmirror:cycle');

const SUPPORTS: BlockDeviceSupports = Object.freeze({ trim: true, flush: true, fua: true, reopen: true });
const MANIFEST_FORMAT = 'blockmirror-layered-volume';
/** Largest piece a merge or trim moves at once. */
const MOVE_BYTES = 1024 * 1024;
/** Merge reads/writes in flight. */
const MERGE_PARALLEL = 8;
let zeroChunk: Buffer | undefined;

/** Test hooks of a {@link LayeredVolume}. */
export interface LayeredVolumeHooks {
  /** Awaited before each base write of a merge; a throw aborts the merge there (as a crash would). */
  beforeMergeWrite?(info: { layer: number; offset: number; length: number }): void | Promise<void>;
}

/** Options of {@link LayeredVolume.open}. */
export interface LayeredVolumeOptions {
  /** Directory of the layer files and manifest. Default: the directory of a {@link FileBlockDevice} base. */
  dir?: string;
  /** Name prefix of the files. Default: the file name of a {@link FileBlockDevice} base. */
  name?: string;
  /** Chunk size of the freeze tables (power of two, default 1 MiB). Fixed when the volume is first opened. */
  chunkSize?: number;
  /** Dirty-tracking granularity (power of two, default max(4 KiB, block size)). Fixed when the volume is first opened. */
  granularity?: number;
  /** Test hooks. */
  hooks?: LayeredVolumeHooks;
  /** File system of the layer files and manifest (default: the real one; a simulation passes files in memory). */
  fs?: FileSystem;
}

/** Counters of one layer. */
export interface LayerStatus {
  /** Layer number (= its freeze number once frozen). */
  layer: number;
  /** Chunks with a slot. */
  chunks: number;
  /** Granules held. */
  granules: number;
  /** Bytes held (granules × granularity, clipped at the end). */
  bytes: number;
}

/** Plain-object status of a {@link LayeredVolume}. */
export interface LayeredVolumeStatus {
  lineage: string;
  size: number;
  chunkSize: number;
  granularity: number;
  /** Last freeze merged into the base device. */
  baseFreeze: number;
  /** Last freeze taken. */
  lastFreeze: number;
  /** Frozen layers not yet merged, oldest first. */
  frozen: LayerStatus[];
  active: LayerStatus;
}

interface Manifest {
  format: string;
  version: number;
  lineage: string;
  size: number;
  blockSize: number;
  chunkSize: number;
  granularity: number;
  base: number;
  top: number;
}

interface Segment {
  source: BlockDevice;
  position: number;
  length: number;
}

function closedError(name: string): BlockMirrorError {
  return new BlockMirrorError('BM_ERR_CLOSED', `the layered volume ${name} is closed`, { details: { volume: name } });
}

function busy(name: string, what: string): BlockMirrorError {
  return new BlockMirrorError('BM_ERR_VOLUME_BUSY', `layered volume ${name}: ${what}`, { details: { volume: name } });
}

function firstRejection(results: PromiseSettledResult<unknown>[]): void {
  for (const r of results) if (r.status === 'rejected') throw r.reason;
}

function isManifest(m: unknown): m is Manifest {
  const r = m as Record<string, unknown> | null;
  return (
    typeof r === 'object' &&
    r !== null &&
    r.format === MANIFEST_FORMAT &&
    r.version === 1 &&
    typeof r.lineage === 'string' &&
    /^[0-9a-f]{32}$/.test(r.lineage) &&
    [r.size, r.blockSize, r.chunkSize, r.granularity, r.base, r.top].every((v) => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0) &&
    (r.base as number) <= (r.top as number)
  );
}

/**
 * A volume with freeze layers: see the module notes. Open it with
 * {@link LayeredVolume.open}; use it as any {@link BlockDevice}.
 *
 * `supports`: `{ trim: true, flush: true, fua: true, reopen: true }` (trim
 * writes zeroes). `close()` also closes the base device.
 *
 * Durability: a write resolves once its data and its map record are written
 * (a crash of the process loses no resolved write); `flush()` and FUA writes
 * `fdatasync` the layer files, so they survive a power loss too.
 */
export class LayeredVolume implements BlockDevice {
  readonly size: number;
  readonly blockSize: number;
  readonly supports: BlockDeviceSupports = SUPPORTS;
  readonly geometry: CycleGeometry;
  /** Identity of this volume's history (random, fixed at creation; hex). */
  readonly lineage: string;
  readonly dir: string;
  readonly name: string;
  readonly base: BlockDevice;

  readonly #lineageBytes: Buffer;
  readonly #manifestPath: string;
  readonly #hooks: LayeredVolumeHooks;
  readonly #fs: FileSystem;
  #frozen: LayerFile[];
  #active: LayerFile;
  #prepared: LayerFile | undefined;
  #preparing = false;
  #baseFreeze: number;
  #top: number;
  #recordedTop: number;
  #manifestChain: Promise<void> = Promise.resolve();
  #mergeChain: Promise<unknown> = Promise.resolve();
  #ops = 0;
  #opsIdle: Array<() => void> = [];
  #closed = false;
  #closing: Promise<void> | undefined;

  private constructor(fs: FileSystem, base: BlockDevice, dir: string, name: string, geometry: CycleGeometry, lineage: string, baseFreeze: number, top: number, frozen: LayerFile[], active: LayerFile, hooks: LayeredVolumeHooks) {
    this.#fs = fs;
    this.base = base;
    this.size = base.size;
    this.blockSize = base.blockSize;
    this.dir = dir;
    this.name = name;
    this.geometry = geometry;
    this.lineage = lineage;
    this.#lineageBytes = Buffer.from(lineage, 'hex');
    this.#manifestPath = join(dir, `${name}.cycle`);
    this.#baseFreeze = baseFreeze;
    this.#top = top;
    this.#recordedTop = top;
    this.#frozen = frozen;
    this.#active = active;
    this.#hooks = hooks;
  }

  /**
   * Opens the layered volume over `base`, creating its files on first use and
   * recovering base, frozen and active layers from them otherwise (files of an
   * interrupted freeze or merge are cleaned up; an interrupted merge is done
   * again by the next {@link mergeFrozenIntoBase}).
   *
   * @throws {BlockMirrorError} `BM_ERR_INVALID_ARGUMENT` for bad options (or no
   *   `dir`/`name` for a base that is not a {@link FileBlockDevice});
   *   `BM_ERR_VOLUME_MISMATCH` when the files describe another size or geometry;
   *   `BM_ERR_JOURNAL_CORRUPT` for damaged files; `BM_ERR_IO` on system errors.
   */
  static async open(base: BlockDevice, options: LayeredVolumeOptions = {}): Promise<LayeredVolume> {
    if (base === null || typeof base !== 'object' || typeof base.read !== 'function') {
      throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', 'base must be a BlockDevice');
    }
    const fileBase = base instanceof FileBlockDevice ? base : undefined;
    const dir = options.dir ?? (fileBase === undefined ? undefined : dirname(fileBase.path));
    const name = options.name ?? (fileBase === undefined ? undefined : basename(fileBase.path));
    if (typeof dir !== 'string' || dir === '' || typeof name !== 'string' || name === '' || name.includes('/')) {
      throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', 'LayeredVolume needs dir and name (a plain file name) unless the base is a FileBlockDevice');
    }
    const manifestPath = join(dir, `${name}.cycle`);
    const fs = options.fs ?? nodeFileSystem;
    const stored = await fs.readState(manifestPath);
    const hooks = options.hooks ?? {};
    let volume: LayeredVolume;
    if (stored === undefined) {
      const geometry = cycleGeometry(base.size, base.blockSize, options.chunkSize ?? DEFAULT_CHUNK_SIZE, options.granularity);
      const lineage = randomBytes(16).toString('hex');
      const active = await LayerFile.create(fs, dir, name, 1, geometry, Buffer.from(lineage, 'hex'));
      volume = new LayeredVolume(fs, base, dir, name, geometry, lineage, 0, 0, [], active, hooks);
      await volume.#writeManifest();
      log('%s: created (lineage %s, chunk %d, granule %d)', name, lineage, geometry.chunkSize, geometry.granularity);
    } else {
      if (!isManifest(stored)) {
        throw new BlockMirrorError('BM_ERR_JOURNAL_CORRUPT', `${manifestPath} is not a layered-volume manifest`, { details: { path: manifestPath } });
      }
      const m = stored;
      if (
        m.size !== base.size ||
        m.blockSize !== base.blockSize ||
        (options.chunkSize !== undefined && options.chunkSize !== m.chunkSize) ||
        (options.granularity !== undefined && options.granularity !== m.granularity)
      ) {
        throw new BlockMirrorError('BM_ERR_VOLUME_MISMATCH', `layered volume ${name}: its files describe another size or geometry`, {
          details: { stored: { size: m.size, blockSize: m.blockSize, chunkSize: m.chunkSize, granularity: m.granularity }, base: { size: base.size, blockSize: base.blockSize } },
        });
      }
      const geometry = cycleGeometry(m.size, m.blockSize, m.chunkSize, m.granularity);
      const lineage = Buffer.from(m.lineage, 'hex');
      const frozen: LayerFile[] = [];
      let active: LayerFile | undefined;
      try {
        for (let n = m.base + 1; n <= m.top; n++) {
          const layer = await LayerFile.open(fs, dir, name, n, geometry, lineage);
          layer.sealed = true;
          frozen.push(layer);
        }
        const activePaths = layerPaths(dir, name, m.top + 1);
        const exists = await fs.exists(activePaths.map);
        active = exists ? await LayerFile.open(fs, dir, name, m.top + 1, geometry, lineage) : await LayerFile.create(fs, dir, name, m.top + 1, geometry, lineage);
      } catch (error) {
        for (const l of frozen) await l.close().catch(() => undefined);
        throw error;
      }
      volume = new LayeredVolume(fs, base, dir, name, geometry, m.lineage, m.base, m.top, frozen, active, hooks);
      log('%s: recovered (base %d, top %d, %d granules active)', name, m.base, m.top, active.table.granules);
    }
    await volume.#removeStaleFiles();
    return volume;
  }

  /** Last freeze merged into the base device. */
  get baseFreeze(): number {
    return this.#baseFreeze;
  }

  /** Number of the last freeze (0 before the first). */
  get lastFreeze(): number {
    return this.#top;
  }

  /** Numbers of the frozen layers not yet merged into the base, oldest first. */
  get frozenLayers(): number[] {
    return this.#frozen.map((l) => l.number);
  }

  /** True once `close()` was called. */
  get closed(): boolean {
    return this.#closed;
  }

  // ---------------------------------------------------------------- I/O

  /** Reads `length` bytes at `offset` (each granule from the newest layer holding it, else the base). */
  read(offset: number, length: number): Promise<Buffer> {
    if (this.#closed) return Promise.reject(closedError(this.name));
    try {
      checkRange(this, offset, length);
    } catch (error) {
      return Promise.reject(error);
    }
    if (length === 0) return Promise.resolve(Buffer.alloc(0));
    return this.#tracked(this.#readView(this.#stack(), offset, length));
  }

  /**
   * Writes `data` at `offset` into the active layer (redirect-on-write). With
   * `{ fua: true }` the layer files are synced before it resolves.
   */
  write(offset: number, data: Uint8Array, options?: WriteOptions): Promise<void> {
    if (this.#closed) return Promise.reject(closedError(this.name));
    let length: number;
    try {
      length = checkWriteData(data);
      checkRange(this, offset, length);
    } catch (error) {
      return Promise.reject(error);
    }
    const fua = options?.fua === true;
    if (length === 0 && !fua) return Promise.resolve();
    const layer = this.#active;
    layer.enter();
    return this.#tracked(this.#write(layer, offset, data, fua)).finally(() => layer.leave());
  }

  async #write(layer: LayerFile, offset: number, data: Uint8Array, fua: boolean): Promise<void> {
    const { chunkSize } = this.geometry;
    const end = offset + data.byteLength;
    const parts: Promise<void>[] = [];
    for (let at = offset; at < end; ) {
      const chunk = Math.floor(at / chunkSize);
      const spanEnd = Math.min(end, (chunk + 1) * chunkSize);
      parts.push(this.#writeSpan(layer, chunk, at, data.subarray(at - offset, spanEnd - offset)));
      at = spanEnd;
    }
    firstRejection(await Promise.allSettled(parts));
    if (fua) await layer.sync();
  }

  /** Writes a piece of one chunk into `layer`. */
  async #writeSpan(layer: LayerFile, chunk: number, at: number, data: Uint8Array): Promise<void> {
    const { chunkSize, granularity, size } = this.geometry;
    const chunkStart = chunk * chunkSize;
    const end = at + data.byteLength;
    const g0 = Math.floor((at - chunkStart) / granularity);
    const g1 = Math.floor((end - 1 - chunkStart) / granularity);
    const count = g1 - g0 + 1;
    if (layer.table.hasAll(chunk, g0, count)) {
      await layer.data.write(layer.position(chunk, at), data);
      layer.touched();
      return;
    }
    const release = await layer.lock(chunk);
    try {
      if (this.#closed) throw closedError(this.name);
      if (layer.table.hasAll(chunk, g0, count)) {
        await layer.data.write(layer.position(chunk, at), data);
        layer.touched();
        return;
      }
      const slot = layer.table.allocate(chunk);
      const headStart = chunkStart + g0 * granularity;
      const tailEnd = Math.min(size, chunkStart + (g1 + 1) * granularity);
      // Copy up only the parts of the first and last granule this write leaves alone.
      const copyHead = at > headStart && !layer.table.has(chunk, g0);
      const copyTail = end < tailEnd && !layer.table.has(chunk, g1);
      const work: Promise<void>[] = [layer.data.write(layer.position(chunk, at), data)];
      if (copyHead || copyTail) {
        // what is below must be the image of the last freeze: with every write issued before it
        await this.#lowerSettled(layer);
        // resolved after the wait (a merge may have removed a layer meanwhile), read in the same step
        const lower = this.#stack().filter((l) => l.number < layer.number);
        if (copyHead) work.push(this.#readView(lower, headStart, at - headStart).then((b) => layer.data.write(layer.position(chunk, headStart), b)));
        if (copyTail) work.push(this.#readView(lower, end, tailEnd - end).then((b) => layer.data.write(layer.position(chunk, end), b)));
      }
      firstRejection(await Promise.allSettled(work));
      layer.touched();
      // The copied-up neighbours must be durable before the record points at them (power loss).
      if (copyHead || copyTail) await layer.data.flush();
      await layer.appendRecord(chunk, slot, g0, count);
      layer.table.mark(chunk, g0, count);
    } finally {
      release();
    }
  }

  /**
   * Resolves once no write is left in the layers below `layer`. Only a layer
   * frozen a moment ago (not sealed yet) can still have some: a write issued
   * before the freeze, whose data or map record is not written yet. A copy-up
   * into `layer` that read the granule before then would take the older
   * content of the layers below, and `layer` (which wins) would hide that
   * write from every later freeze and from the volume (cycle seeds 7579, 7959).
   */
  async #lowerSettled(layer: LayerFile): Promise<void> {
    const unsealed = this.#frozen.filter((l) => l.number < layer.number && !l.sealed);
    if (unsealed.length > 0) await Promise.all(unsealed.map((l) => l.drained()));
  }

  /** Makes every write that completed before this call durable (syncs the layer files). */
  flush(): Promise<void> {
    if (this.#closed) return Promise.reject(closedError(this.name));
    return this.#tracked(
      (async () => {
        const layers = [...this.#frozen, this.#active];
        firstRejection(await Promise.allSettled(layers.map((l) => l.sync())));
      })(),
    );
  }

  /** Writes zeroes over a range (through the active layer, like any write). */
  async trim(offset: number, length: number): Promise<void> {
    if (this.#closed) throw closedError(this.name);
    checkRange(this, offset, length);
    zeroChunk ??= Buffer.alloc(MOVE_BYTES);
    for (let at = offset; at < offset + length; at += MOVE_BYTES) {
      const n = Math.min(MOVE_BYTES, offset + length - at);
      await this.write(at, n === MOVE_BYTES ? zeroChunk : zeroChunk.subarray(0, n));
    }
  }

  // ---------------------------------------------------------------- freeze

  /**
   * Freezes the volume: opens the new active layer (files created and synced,
   * manifest updated), switches writes to it, then seals the old layer once
   * the writes already in it completed. Resolves with the freeze number.
   *
   * @throws {BlockMirrorError} `BM_ERR_VOLUME_BUSY` when another freeze is being prepared.
   */
  async freeze(): Promise<number> {
    await this.prepareFreeze();
    const k = this.activatePrepared();
    await this.seal(k);
    return k;
  }

  /**
   * First half of a freeze (used by consistency groups to freeze several
   * volumes at one instant): creates the next layer and records the freeze in
   * the manifest. Writes still go to the current layer until
   * {@link activatePrepared}; a crash from here on recovers with the freeze
   * taken (the current layer frozen with everything written until then).
   */
  async prepareFreeze(): Promise<void> {
    if (this.#closed) throw closedError(this.name);
    if (this.#preparing || this.#prepared !== undefined) throw busy(this.name, 'a freeze is already being prepared');
    this.#preparing = true;
    try {
      const next = await LayerFile.create(this.#fs, this.dir, this.name, this.#top + 2, this.geometry, this.#lineageBytes);
      this.#recordedTop = this.#top + 1;
      try {
        await this.#writeManifest();
      } catch (error) {
        this.#recordedTop = this.#top;
        await next.remove(this.dir).catch(() => undefined);
        throw error;
      }
      if (this.#closed) {
        await next.close();
        throw closedError(this.name);
      }
      this.#prepared = next;
    } finally {
      this.#preparing = false;
    }
  }

  /**
   * Second half of a freeze, synchronous: from now on writes go to the new
   * layer. Returns the freeze number. Call {@link seal} next.
   *
   * @throws {BlockMirrorError} `BM_ERR_INVALID_ARGUMENT` when no freeze was prepared.
   */
  activatePrepared(): number {
    const next = this.#prepared;
    if (next === undefined) throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', `layered volume ${this.name}: no prepared freeze`);
    this.#prepared = undefined;
    this.#frozen.push(this.#active);
    this.#active = next;
    this.#top += 1;
    log('%s: freeze %d', this.name, this.#top);
    return this.#top;
  }

  /** Undoes {@link prepareFreeze} (the manifest is restored, the new layer deleted). */
  async abortPrepared(): Promise<void> {
    const next = this.#prepared;
    if (next === undefined) return;
    this.#prepared = undefined;
    this.#recordedTop = this.#top;
    await this.#writeManifest();
    await next.remove(this.dir);
  }

  /** Waits for the writes still in frozen layer `n`, then syncs it. Idempotent. */
  async seal(n: number): Promise<void> {
    const layer = this.#frozen.find((l) => l.number === n);
    if (layer === undefined || layer.sealed) return;
    await layer.drained();
    await layer.sync();
    layer.sealed = true;
  }

  // ---------------------------------------------------------------- cycle source

  /** Freeze table of frozen layer `n` (do not modify it). */
  frozenTable(n: number): FreezeTable {
    const layer = this.#frozen.find((l) => l.number === n);
    if (layer === undefined) throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', `layered volume ${this.name} has no frozen layer ${n}`);
    return layer.table;
  }

  /**
   * The granules that changed between freeze `from` and freeze `to` (the
   * union of the tables of layers `from+1 … to`). With a single layer this is
   * that layer's own table.
   *
   * @throws {BlockMirrorError} `BM_ERR_INVALID_ARGUMENT` when those layers are
   *   not all kept (`from < baseFreeze`) or `to` was not taken.
   */
  deltaTable(from: number, to: number): FreezeTable {
    if (!(from >= this.#baseFreeze && from <= to && to <= this.#top)) {
      throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', `layered volume ${this.name}: no delta from freeze ${from} to ${to} (kept: ${this.#baseFreeze}…${this.#top})`);
    }
    const tables = this.#frozen.filter((l) => l.number > from && l.number <= to).map((l) => l.table);
    if (tables.length === 0) return new FreezeTable(this.geometry);
    return tables.length === 1 ? tables[0]! : FreezeTable.union(this.geometry, tables);
  }

  /**
   * Reads the image as it was at freeze `n` (base plus frozen layers up to `n`).
   *
   * @throws {BlockMirrorError} `BM_ERR_INVALID_ARGUMENT` when freeze `n` is no
   *   longer available (already merged past it) or was not taken.
   */
  readFrozen(n: number, offset: number, length: number): Promise<Buffer> {
    if (this.#closed) return Promise.reject(closedError(this.name));
    if (!(n >= this.#baseFreeze && n <= this.#top)) {
      return Promise.reject(new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', `layered volume ${this.name}: freeze ${n} is not available (kept: ${this.#baseFreeze}…${this.#top})`));
    }
    try {
      checkRange(this, offset, length);
    } catch (error) {
      return Promise.reject(error);
    }
    if (length === 0) return Promise.resolve(Buffer.alloc(0));
    return this.#tracked(this.#readView(this.#frozen.filter((l) => l.number <= n), offset, length));
  }

  /**
   * True when `[offset, offset + length)` of the image as of freeze `n`
   * certainly reads as zeroes: no frozen layer up to `n` holds a chunk of
   * it and the base device knows the range to be zero (`blockStatus`).
   */
  async frozenKnownZero(n: number, offset: number, length: number): Promise<boolean> {
    if (this.#closed) throw closedError(this.name);
    checkRange(this, offset, length);
    if (length === 0) return true;
    const { chunkSize } = this.geometry;
    const layers = this.#frozen.filter((l) => l.number <= n);
    const last = Math.floor((offset + length - 1) / chunkSize);
    for (let chunk = Math.floor(offset / chunkSize); chunk <= last; chunk++) {
      if (layers.some((l) => l.table.slotOf(chunk) >= 0)) return false;
    }
    return knownZero(this.base, offset, length);
  }

  /**
   * Merges frozen layers up to freeze `upTo` (default: all) into the base,
   * oldest first, and deletes them. Each layer: its granules are copied into
   * the base, the base is flushed, the manifest records the new base freeze,
   * then the layer files are removed. Idempotent: a merge interrupted by a
   * crash or an error is done again. Resolves with the new base freeze.
   */
  mergeFrozenIntoBase(upTo = Number.MAX_SAFE_INTEGER): Promise<number> {
    const run = this.#mergeChain.then(async () => {
      while (!this.#closed && this.#frozen.length > 0 && this.#frozen[0]!.number <= upTo) {
        const layer = this.#frozen[0]!;
        await this.seal(layer.number);
        await this.#tracked(this.#mergeLayer(layer));
      }
      if (this.#closed) throw closedError(this.name);
      return this.#baseFreeze;
    });
    this.#mergeChain = run.catch(() => undefined);
    return run;
  }

  async #mergeLayer(layer: LayerFile): Promise<void> {
    const runs = [...layer.table.runs(Math.max(1, MOVE_BYTES / this.geometry.granularity))];
    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < runs.length) {
        const run = runs[next++]!;
        const data = await layer.data.read(layer.position(run.chunk, run.offset), run.length);
        await this.#hooks.beforeMergeWrite?.({ layer: layer.number, offset: run.offset, length: run.length });
        await this.base.write(run.offset, data);
      }
    };
    firstRejection(await Promise.allSettled(Array.from({ length: Math.min(MERGE_PARALLEL, runs.length) }, worker)));
    await this.base.flush();
    this.#baseFreeze = layer.number;
    await this.#writeManifest();
    this.#frozen = this.#frozen.filter((l) => l !== layer);
    await layer.remove(this.dir);
    log('%s: merged freeze %d into the base (%d runs)', this.name, layer.number, runs.length);
  }

  // ---------------------------------------------------------------- misc

  /** Plain-object status. */
  status(): LayeredVolumeStatus {
    const layerStatus = (l: LayerFile): LayerStatus => ({ layer: l.number, chunks: l.table.chunkCount, granules: l.table.granules, bytes: l.table.bytes });
    return {
      lineage: this.lineage,
      size: this.size,
      chunkSize: this.geometry.chunkSize,
      granularity: this.geometry.granularity,
      baseFreeze: this.#baseFreeze,
      lastFreeze: this.#top,
      frozen: this.#frozen.map(layerStatus),
      active: layerStatus(this.#active),
    };
  }

  /**
   * Refuses new requests, waits for those in flight, closes the layer files and
   * the base device. Nothing is flushed that was not flushed already (a close
   * is as safe as a crash, no safer). Idempotent.
   */
  close(): Promise<void> {
    this.#closing ??= (async () => {
      this.#closed = true;
      if (this.#ops > 0) await new Promise<void>((resolve) => this.#opsIdle.push(resolve));
      await this.#mergeChain;
      const layers = [...this.#frozen, this.#active, ...(this.#prepared === undefined ? [] : [this.#prepared])];
      for (const l of layers) await l.close().catch(() => undefined);
      await this.#manifestChain;
      await this.base.close();
    })();
    return this.#closing;
  }

  /** Base, then frozen layers, then the active one (ascending). */
  #stack(): LayerFile[] {
    return [...this.#frozen, this.#active];
  }

  #tracked<T>(p: Promise<T>): Promise<T> {
    this.#ops++;
    return p.finally(() => {
      if (--this.#ops === 0) for (const f of this.#opsIdle.splice(0)) f();
    });
  }

  /**
   * Reads a range through `layers` (ascending; the newest holding a granule
   * wins, else the base). Sources are resolved and reads issued in one
   * synchronous step, so a layer cannot be removed in between.
   */
  #readView(layers: readonly LayerFile[], offset: number, length: number): Promise<Buffer> {
    const { chunkSize, granularity } = this.geometry;
    const end = offset + length;
    const segments: Segment[] = [];
    const add = (source: BlockDevice, position: number, n: number): void => {
      const last = segments[segments.length - 1];
      if (last !== undefined && last.source === source && last.position + last.length === position) last.length += n;
      else segments.push({ source, position, length: n });
    };
    for (let at = offset; at < end; ) {
      const chunk = Math.floor(at / chunkSize);
      const chunkStart = chunk * chunkSize;
      const spanEnd = Math.min(end, chunkStart + chunkSize);
      const holders = layers.filter((l) => l.table.slotOf(chunk) >= 0);
      if (holders.length === 0) {
        add(this.base, at, spanEnd - at);
        at = spanEnd;
        continue;
      }
      while (at < spanEnd) {
        const granule = Math.floor((at - chunkStart) / granularity);
        const stop = Math.min(spanEnd, chunkStart + (granule + 1) * granularity);
        let source: LayerFile | undefined;
        for (let i = holders.length - 1; i >= 0; i--) {
          if (holders[i]!.table.has(chunk, granule)) {
            source = holders[i];
            break;
          }
        }
        if (source === undefined) add(this.base, at, stop - at);
        else add(source.data, source.position(chunk, at), stop - at);
        at = stop;
      }
    }
    const reads = segments.map((s) => s.source.read(s.position, s.length));
    if (reads.length === 1) return reads[0]!;
    return Promise.allSettled(reads).then((results) => {
      firstRejection(results);
      const out = Buffer.allocUnsafeSlow(length);
      let at = 0;
      for (const r of results) {
        const b = (r as PromiseFulfilledResult<Buffer>).value;
        out.set(b, at);
        at += b.length;
      }
      return out;
    });
  }

  /** Writes the manifest (serialised; each write records the state at its turn). */
  #writeManifest(): Promise<void> {
    const run = this.#manifestChain.then(() => {
      const body: Manifest = {
        format: MANIFEST_FORMAT,
        version: 1,
        lineage: this.lineage,
        size: this.geometry.size,
        blockSize: this.geometry.blockSize,
        chunkSize: this.geometry.chunkSize,
        granularity: this.geometry.granularity,
        base: this.#baseFreeze,
        top: this.#recordedTop,
      };
      return this.#fs.writeState(this.#manifestPath, body);
    });
    this.#manifestChain = run.catch(() => undefined);
    return run;
  }

  /** Deletes layer files the manifest no longer refers to (interrupted freezes and merges). */
  async #removeStaleFiles(): Promise<void> {
    const pattern = new RegExp(`^${this.name.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}\\.L(\\d+)\\.(data|map)$`);
    for (const entry of await this.#fs.list(this.dir)) {
      const m = pattern.exec(entry);
      if (m === null) continue;
      const n = Number(m[1]);
      if (n <= this.#baseFreeze || n > this.#top + 1) {
        log('%s: removing stale layer file %s', this.name, entry);
        await this.#fs.remove(join(this.dir, entry));
      }
    }
  }
}
