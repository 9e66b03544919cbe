/**
 * {@link StagingStore}: the target side of freeze/copy cycles (SPEC 30, 31,
 * 33). A transfer's blocks are first written to a staging area, then merged
 * into the target's images under a commit marker, so that the target moves
 * from one complete freeze image to the next and never shows anything else,
 * even across a crash.
 *
 * Files in the store's directory:
 * - `cycle-target.state` — per volume: lineage, freeze held, `seeding` (JSON + CRC, replaced atomically).
 * - `<volume>.stage.data` — staged granules, slot-addressed like the source's
 *   layer (slot `s` at `s·chunkSize`; a sparse file).
 * - `<volume>.stage.table` — the transfer's freeze table (binary, as sent).
 * - `commit-<id>.marker` — the commit marker of one transfer: volumes, target
 *   freeze, geometry and the CRC of each staged table.
 *
 * Commit: staging files synced → marker written (atomically, durably) →
 * staged granules copied into the images → images flushed → state file
 * records the new freeze for every volume of the transfer → marker and
 * staging files removed. On open, a marker found is replayed from the start
 * (the copy writes absolute content, so doing it twice is harmless: merges
 * are idempotent), staging files without a marker are discarded. So a crash
 * before the marker leaves freeze k-1, a crash after it ends as freeze k.
 *
 * A merge that fails after its marker (an I/O error writing the image) leaves
 * the image between two freezes. The volume is then *pending*: the merge is
 * retried from the durable marker and staging files with exponential backoff
 * (as the replay on open would do), reads wait for it and fail with
 * `BM_ERR_IO` once `readTimeout` passes, new transfers are refused with
 * `BM_ERR_IO`, and {@link StagingStore.mergeFailure} tells what failed. Only a
 * completed retry ends the pending state: the image then holds freeze k.
 *
 * A full copy into a volume that holds no image of the source's lineage (the
 * first cycle) skips staging: the volume is marked `seeding` (no image) first,
 * the blocks go straight into the image, and the commit records freeze k.
 *
 * @module
 */
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { crc32 } from 'node:zlib';
import createDebug from 'debug';
import { BlockMirrorError, toBlockMirrorError } from '../errors.js';
import { systemClock, type Clock, type TimerHandle } from '../clock.js';
import type { BlockDevice } from '../device/block-device.js';
import { nodeFileSystem, type FileSystem } from '../storage/file-system.js';
import { FreezeTable } from './freeze-table.js';
import { writeZeroes, zeroWhereData } from '../device/zero.js';
import { cycleGeometry, runLength, type CycleGeometry } from './geometry.js';

const log = createDebug('blockmirror:cycle');
const STATE_FORMAT = 'blockmirror-cycle-target';
const MARKER_FORMAT = 'blockmirror-cycle-commit';
const MERGE_PARALLEL = 8;
const MERGE_RUN_BYTES = 1024 * 1024;
const DEFAULT_MERGE_RETRY = { min: 500, max: 30000 };
const DEFAULT_READ_TIMEOUT = 30000;

/** What a target holds of one volume. */
export interface TargetImageState {
  /** Lineage of the source volume the image belongs to (undefined: none yet). */
  lineage: string | undefined;
  /** Freeze number the image equals (0: no complete image). */
  freeze: number;
  /** A first full copy is being written straight into the image: it is not a freeze image. */
  seeding: boolean;
}

/** Test hooks of a `StagingStore` (the target-side staging area of a cycle). */
export interface StagingStoreHooks {
  /** After the commit marker is durable, before the first image write of the merge. */
  mergeStart?(info: { to: number; volumes: string[] }): void | Promise<void>;
  /** Before each image write of a merge; a throw aborts the merge there (as a crash would). */
  beforeMergeWrite?(info: { volume: string; offset: number; length: number }): void | Promise<void>;
}

/** What is known of a merge that failed after its commit marker (see {@link StagingStore.mergeFailure}). */
export interface MergeFailure {
  /** Freeze the merge brings the image to. */
  to: number;
  /** Volumes of the merge (a consistency group merges as one). */
  volumes: string[];
  /** Failed attempts so far (the first merge included). */
  attempts: number;
  /** The last attempt's error. */
  error: BlockMirrorError;
  /** Milliseconds until the next attempt (undefined: one is running, or the store is closed). */
  nextRetryInMs: number | undefined;
}

/** Reports of a {@link StagingStore} about merges that failed after their commit marker. */
export interface StagingStoreEvents {
  /** An attempt failed; the next one runs in `retryInMs` (undefined: the store is closing). */
  mergeError?(info: { to: number; volumes: string[]; error: BlockMirrorError; attempts: number; retryInMs: number | undefined }): void;
  /** A retry completed the merge: the images hold freeze `to`. */
  mergeRecovered?(info: { to: number; volumes: string[]; attempts: number }): void;
}

/** Options of {@link StagingStore.open}. */
export interface StagingStoreOptions {
  /** Test hooks (crash injection). */
  hooks?: StagingStoreHooks;
  events?: StagingStoreEvents;
  /** Clock of the merge retries and read timeouts (default: the system clock). */
  clock?: Clock;
  /** Backoff between attempts of a merge that failed after its commit marker, in ms (doubling from `min` up to `max`; default 500–30000). */
  mergeRetry?: { min: number; max: number };
  /**
   * How long {@link StagingStore.whenStable} waits for a failed merge to be
   * completed by a retry before it fails with `BM_ERR_IO`, in ms (default
   * 30000; 0: fail at once; Infinity: wait for the retry however long it
   * takes). A merge that is running is always waited for.
   */
  readTimeout?: number;
  /** File system of the state, staging files and markers (default: the real one; a simulation passes files in memory). */
  fs?: FileSystem;
  /**
   * Transfers admitted at once, from their BEGIN until the BEGIN is handled
   * (begun or refused; default 16; see {@link StagingStore.admitTransfer}).
   * A source runs one transfer at a time per connection; the bound keeps a
   * flood of transfers (connections that send a whole transfer and close,
   * faster than BEGINs are handled on a busy disk) from piling up data.
   */
  maxPendingTransfers?: number;
}

/** Default of {@link StagingStoreOptions.maxPendingTransfers}. */
export const DEFAULT_MAX_PENDING_TRANSFERS = 16;

/** Per-volume plan of a transfer, as the store needs it. */
export interface StagePlan {
  name: string;
  /** Number by which table and data calls address this volume (default: its position in the plan list). */
  key?: number;
  lineage: string;
  /** Freeze the image must hold (ignored with `full`). */
  from: number;
  full: boolean;
  chunkSize: number;
  granularity: number;
  /** Bytes of table that will follow (0 with `full`). */
  tableBytes: number;
  /** Granules that will follow. */
  granules: number;
}

interface StoreState {
  format: string;
  version: number;
  volumes: Record<string, { lineage?: string; freeze: number; seeding?: boolean }>;
}

interface MarkerVolume {
  name: string;
  lineage: string;
  direct: boolean;
  /** A full copy: every granule is staged (slot = chunk); no table was sent. */
  full: boolean;
  size: number;
  blockSize: number;
  chunkSize: number;
  granularity: number;
  tableCrc: number;
  tableBytes: number;
}

interface Marker {
  format: string;
  version: number;
  to: number;
  volumes: MarkerVolume[];
}

function isMarker(v: unknown): v is Marker {
  const r = v as Record<string, unknown> | null;
  return typeof r === 'object' && r !== null && r.format === MARKER_FORMAT && r.version === 1 && typeof r.to === 'number' && Array.isArray(r.volumes);
}

function protocol(message: string, details: Record<string, unknown> = {}): BlockMirrorError {
  return new BlockMirrorError('BM_ERR_PROTOCOL', message, { details });
}

function stagePaths(dir: string, name: string): { data: string; table: string } {
  return { data: join(dir, `${name}.stage.data`), table: join(dir, `${name}.stage.table`) };
}

/** A merge that failed after its commit marker, waiting for its next attempt. */
interface PendingMerge {
  readonly markerPath: string;
  readonly marker: Marker;
  attempts: number;
  error: BlockMirrorError;
  timer: TimerHandle | undefined;
  /** `clock.now()` of the next attempt (undefined: none scheduled). */
  retryAt: number | undefined;
  /** Resolves when the merge completed or the store closed. */
  readonly settled: Promise<void>;
  readonly settle: () => void;
}

/** One hosted volume. */
class StoreVolume {
  readonly name: string;
  readonly device: BlockDevice;
  state: TargetImageState = { lineage: undefined, freeze: 0, seeding: false };
  /** The transfer currently receiving into this volume. */
  owner: StagedTransfer | undefined;
  /** Settles when the running merge of this volume ends. */
  merging: Promise<void> | undefined;
  /** A merge failed after its commit marker: the image is between two freezes until a retry completes it. */
  pending: PendingMerge | undefined;
  /** Commits announced but maybe not started yet (see {@link StagingStore.hold}). */
  readonly holds = new Set<Promise<unknown>>();
  /** Reads of the image in flight through {@link StagingStore.read} (a merge waits for them before writing). */
  readonly reads = new Set<Promise<unknown>>();

  constructor(name: string, device: BlockDevice) {
    this.name = name;
    this.device = device;
  }
}

/** One volume of a transfer being received. */
class StagedVolume {
  readonly volume: StoreVolume;
  readonly plan: StagePlan;
  readonly geometry: CycleGeometry;
  readonly direct: boolean;
  readonly tableBuf: Buffer;
  tableGot = 0;
  table: FreezeTable | undefined;
  readonly received: FreezeTable;
  receivedGranules = 0;
  staging: BlockDevice | undefined;

  constructor(volume: StoreVolume, plan: StagePlan, geometry: CycleGeometry, direct: boolean) {
    this.volume = volume;
    this.plan = plan;
    this.geometry = geometry;
    this.direct = direct;
    this.tableBuf = Buffer.alloc(plan.tableBytes);
    this.received = new FreezeTable(geometry);
    if (plan.full) this.table = FreezeTable.full(geometry);
    else if (plan.tableBytes === 0) this.table = new FreezeTable(geometry); // nothing changed: no table frames follow
  }
}

/**
 * A transfer being received: tables and data go to staging (or straight into
 * the image for a first full copy); {@link commit} makes it the new image.
 */
export class StagedTransfer {
  readonly to: number;
  readonly source: string;
  readonly volumes: StagedVolume[];
  readonly #byKey = new Map<number, StagedVolume>();
  readonly #store: StagingStore;
  readonly #pending = new Set<Promise<void>>();
  #error: BlockMirrorError | undefined;
  #done = false;
  #committing: Promise<void> | undefined;
  /** @internal set once the commit marker is durable (staging files must then be kept until merged). */
  marked = false;
  /** @internal set once merged. */
  merged = false;

  /** @internal */
  constructor(store: StagingStore, source: string, to: number, volumes: StagedVolume[]) {
    this.#store = store;
    this.source = source;
    this.to = to;
    this.volumes = volumes;
    volumes.forEach((sv, i) => this.#byKey.set(sv.plan.key ?? i, sv));
  }

  /** True once committed or aborted. */
  get done(): boolean {
    return this.#done;
  }

  /** A part of the table of volume `index` (its plan key) arrived. */
  table(index: number, offset: number, bytes: Uint8Array): void {
    const sv = this.#volume(index);
    if (sv.plan.full) throw protocol('a full copy carries no table');
    if (offset !== sv.tableGot || offset + bytes.length > sv.tableBuf.length) {
      throw protocol('table part out of order or too long', { volume: sv.plan.name, offset, expected: sv.tableGot });
    }
    sv.tableBuf.set(bytes, offset);
    sv.tableGot += bytes.length;
    if (sv.tableGot === sv.tableBuf.length) {
      sv.table = FreezeTable.decode(sv.geometry, sv.tableBuf);
      if (sv.table.granules !== sv.plan.granules) throw protocol('table does not hold the announced granules', { volume: sv.plan.name });
    }
  }

  /**
   * `count` granules of slot `slot` from granule `granule` of volume `index`
   * arrived (`'zero'`: a zero run, they read as zeroes). Validated against the table, then written; the promise settles
   * when written (errors are also kept for {@link commit}).
   */
  data(index: number, slot: number, granule: number, count: number, payload: Uint8Array | 'zero'): Promise<void> {
    const sv = this.#volume(index);
    const table = sv.table;
    if (table === undefined) throw protocol('data before the complete table', { volume: sv.plan.name });
    const chunk = table.chunkOf(slot);
    if (chunk < 0 || !table.hasAll(chunk, granule, count)) throw protocol('data for granules not in the table', { volume: sv.plan.name, slot, granule, count });
    const length = runLength(sv.geometry, chunk, granule, count);
    if (payload !== 'zero' && payload.length !== length) throw protocol('data length does not match its granules', { volume: sv.plan.name, length: payload.length, expected: length });
    if (sv.received.slotOf(chunk) < 0) sv.received.assign(chunk, slot);
    if (sv.received.mark(chunk, granule, count) !== count) throw protocol('granules sent twice', { volume: sv.plan.name, slot, granule });
    sv.receivedGranules += count;
    const g = sv.geometry;
    const at = sv.direct ? chunk * g.chunkSize + granule * g.granularity : slot * g.chunkSize + granule * g.granularity;
    const device = sv.direct ? sv.volume.device : sv.staging!;
    // a zero run: written into the image only where it holds data (a new image stays sparse); staged as zeroes
    const write = payload !== 'zero' ? device.write(at, payload) : sv.direct ? zeroWhereData(device, at, length, false) : writeZeroes(device, at, length, false);
    const p = write.catch((error: unknown) => {
      this.#error ??= toBlockMirrorError(error);
      throw this.#error;
    });
    this.#pending.add(p);
    void p.then(
      () => this.#pending.delete(p),
      () => this.#pending.delete(p),
    );
    return p;
  }

  /** Resolves when a commit that was started has ended (at once if none was). */
  settled(): Promise<void> {
    return this.#committing === undefined ? Promise.resolve() : this.#committing.catch(() => undefined);
  }

  /** True once {@link commit} was called. */
  get committing(): boolean {
    return this.#committing !== undefined;
  }

  /** Writes of data in flight. */
  get pendingWrites(): number {
    return this.#pending.size;
  }

  /**
   * Commits: checks completeness, makes staging durable, writes the commit
   * marker, merges into the images, records freeze `to`. Resolves once the
   * new images are durable.
   *
   * @throws {BlockMirrorError} `BM_ERR_PROTOCOL` when something is missing (the
   *   images are unchanged); I/O errors (before the marker: unchanged images;
   *   after it: the volumes are pending — reads wait, transfers are refused —
   *   and the merge is retried with backoff, or replayed when the store is
   *   opened again).
   */
  commit(): Promise<void> {
    if (this.#done || this.#committing !== undefined) return Promise.reject(protocol('transfer already finished'));
    this.#committing = this.#commit();
    return this.#committing;
  }

  async #commit(): Promise<void> {
    try {
      while (this.#pending.size > 0) await Promise.allSettled([...this.#pending]);
      if (this.#error !== undefined) throw this.#error;
      for (const sv of this.volumes) {
        if (sv.table === undefined) throw protocol('commit before the complete table', { volume: sv.plan.name });
        if (sv.receivedGranules !== sv.table.granules || sv.receivedGranules !== sv.plan.granules) {
          throw protocol('commit before every granule arrived', { volume: sv.plan.name, received: sv.receivedGranules, expected: sv.plan.granules });
        }
      }
      await this.#store._commit(this);
    } finally {
      this.#done = true;
      await this.#store._release(this);
    }
  }

  /**
   * Drops the transfer (the images keep their freeze; a seeding image stays
   * seeding). A commit already started is not interrupted: this waits for it.
   */
  async abort(): Promise<void> {
    if (this.#committing !== undefined) {
      await this.#committing.catch(() => undefined);
      return;
    }
    if (this.#done) return;
    this.#done = true;
    await Promise.allSettled([...this.#pending]);
    await this.#store._release(this);
  }

  #volume(index: number): StagedVolume {
    const sv = this.#byKey.get(index);
    if (sv === undefined) throw protocol(`no volume ${index} in this transfer`);
    if (this.#done) throw protocol('transfer already finished');
    return sv;
  }
}

/** The target's images, state and staging: see the module notes. */
export class StagingStore {
  readonly dir: string;
  readonly #volumes = new Map<string, StoreVolume>();
  readonly #hooks: StagingStoreHooks;
  readonly #events: StagingStoreEvents;
  readonly #clock: Clock;
  readonly #mergeRetry: { min: number; max: number };
  readonly #readTimeout: number;
  readonly #statePath: string;
  readonly #fs: FileSystem;
  readonly #maxPendingTransfers: number;
  #pendingTransfers = 0;
  #stateChain: Promise<void> = Promise.resolve();
  #closed = false;

  private constructor(dir: string, volumes: Array<{ name: string; device: BlockDevice }>, options: StagingStoreOptions) {
    this.dir = dir;
    this.#hooks = options.hooks ?? {};
    this.#events = options.events ?? {};
    this.#clock = options.clock ?? systemClock;
    const retry = options.mergeRetry ?? DEFAULT_MERGE_RETRY;
    if (!(retry.min >= 1 && retry.max >= retry.min && Number.isFinite(retry.max))) {
      throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', 'mergeRetry needs 1 <= min <= max (finite, ms)', { details: { mergeRetry: retry } });
    }
    this.#mergeRetry = { min: retry.min, max: retry.max };
    this.#readTimeout = options.readTimeout ?? DEFAULT_READ_TIMEOUT;
    if (!(this.#readTimeout >= 0)) throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', 'readTimeout must be a non-negative number of ms');
    this.#statePath = join(dir, 'cycle-target.state');
    this.#fs = options.fs ?? nodeFileSystem;
    this.#maxPendingTransfers = options.maxPendingTransfers ?? DEFAULT_MAX_PENDING_TRANSFERS;
    for (const v of volumes) this.#volumes.set(v.name, new StoreVolume(v.name, v.device));
  }

  /**
   * Opens the store: loads the state, replays interrupted merges, removes
   * stale staging files.
   *
   * @throws {BlockMirrorError} `BM_ERR_JOURNAL_CORRUPT` for damaged state or
   *   marker files; `BM_ERR_IO` on system errors (also when a replay fails:
   *   the marker stays, the next open replays it); `BM_ERR_INVALID_ARGUMENT`
   *   for bad options.
   */
  static async open(dir: string, volumes: Array<{ name: string; device: BlockDevice }>, options: StagingStoreOptions = {}): Promise<StagingStore> {
    const store = new StagingStore(dir, volumes, options);
    const stored = await store.#fs.readState(store.#statePath);
    if (stored !== undefined) {
      const s = stored as StoreState;
      if (s.format !== STATE_FORMAT || s.version !== 1 || typeof s.volumes !== 'object' || s.volumes === null) {
        throw new BlockMirrorError('BM_ERR_JOURNAL_CORRUPT', `${store.#statePath} is not a cycle target state file`);
      }
      for (const [name, st] of Object.entries(s.volumes)) {
        const v = store.#volumes.get(name);
        if (v !== undefined) v.state = { lineage: st.lineage, freeze: st.freeze, seeding: st.seeding === true };
      }
    }
    await store.#recover();
    return store;
  }

  /** What the target holds of volume `name`. */
  image(name: string): TargetImageState {
    const v = this.#get(name);
    return { ...v.state };
  }

  /** The image device of volume `name`. */
  device(name: string): BlockDevice {
    return this.#get(name).device;
  }

  /** Names of the hosted volumes. */
  get names(): string[] {
    return [...this.#volumes.keys()];
  }

  /** The merge of volume `name` that failed after its commit marker and is being retried (undefined: none). */
  mergeFailure(name: string): MergeFailure | undefined {
    const p = this.#get(name).pending;
    if (p === undefined) return undefined;
    return {
      to: p.marker.to,
      volumes: p.marker.volumes.map((mv) => mv.name),
      attempts: p.attempts,
      error: p.error,
      nextRetryInMs: p.retryAt === undefined ? undefined : Math.max(0, p.retryAt - this.#clock.now()),
    };
  }

  /**
   * Resolves when no commit or merge runs on volume `name` and its image is
   * one complete freeze (reads wait for it: they never see a half-merged
   * image). A merge that failed after its commit marker is waited for until a
   * retry completes it, at most `readTimeout` ms from the call.
   *
   * @throws {BlockMirrorError} `BM_ERR_IO` when the image is still between
   *   two freezes after `readTimeout` (a failed merge not yet retried to
   *   completion); `BM_ERR_CLOSED` when the store closes meanwhile.
   */
  whenStable(name: string): Promise<void> {
    return this.#whenStable(this.#get(name), this.#clock.now());
  }

  /**
   * Reads the image of volume `name` once it is one complete freeze (see
   * {@link whenStable}); a merge that starts meanwhile waits for the read
   * before it writes, so the read never returns parts of two freezes.
   *
   * @throws {BlockMirrorError} as {@link whenStable}; the device's errors.
   */
  async read(name: string, offset: number, length: number): Promise<Buffer> {
    const v = this.#get(name);
    const started = this.#clock.now();
    do await this.#whenStable(v, started);
    while (!this.#stable(v)); // something began between the wake-up and here: wait again
    const read = v.device.read(offset, length);
    v.reads.add(read);
    const done = (): void => void v.reads.delete(read);
    read.then(done, done);
    return read;
  }

  /** True when nothing is committing or merging into `v` and its image is one complete freeze. */
  #stable(v: StoreVolume): boolean {
    return v.holds.size === 0 && !(v.owner !== undefined && v.owner.committing && !v.owner.done) && v.merging === undefined && v.pending === undefined;
  }

  async #whenStable(v: StoreVolume, started: number): Promise<void> {
    for (;;) {
      if (v.holds.size > 0) await Promise.allSettled([...v.holds]);
      else if (v.owner !== undefined && v.owner.committing && !v.owner.done) await v.owner.settled();
      else if (v.merging !== undefined) await v.merging;
      else if (v.pending !== undefined) await this.#waitPending(v, v.pending, started);
      else return;
    }
  }

  /** Waits (until `readTimeout` from `started`) for a pending merge to end; throws when the time is up. */
  async #waitPending(v: StoreVolume, p: PendingMerge, started: number): Promise<void> {
    if (this.#closed) throw new BlockMirrorError('BM_ERR_CLOSED', `volume ${v.name} is between freeze images and the target is closed`, { details: { volume: v.name } });
    const left = this.#readTimeout - (this.#clock.now() - started);
    if (left <= 0) throw this.#unavailable(v, p, 'reads wait for a retry to complete it');
    if (left === Infinity) return p.settled; // readTimeout Infinity: wait as long as it takes
    let timer: TimerHandle | undefined;
    const timeout = new Promise<void>((resolve) => (timer = this.#clock.setTimeout(resolve, left)));
    try {
      await Promise.race([p.settled, timeout]);
    } finally {
      this.#clock.clearTimeout(timer);
    }
  }

  #unavailable(v: StoreVolume, p: PendingMerge, what: string): BlockMirrorError {
    return new BlockMirrorError(
      'BM_ERR_IO',
      `volume ${v.name}: the merge of freeze ${p.marker.to} failed (${p.error.message}) after ${p.attempts} attempt(s) and is retried; ${what}`,
      { cause: p.error, details: { volume: v.name, freeze: v.state.freeze, to: p.marker.to, attempts: p.attempts, mergePending: true } },
    );
  }

  /**
   * Registers `work` (a commit that was requested but may wait for its
   * transfer's setup) as pending on the volumes: {@link whenStable} waits for it.
   */
  hold(names: readonly string[], work: Promise<unknown>): void {
    const vols = names.map((n) => this.#get(n));
    for (const v of vols) v.holds.add(work);
    const release = (): void => {
      for (const v of vols) v.holds.delete(work);
    };
    work.then(release, release);
  }

  /**
   * Admits one more transfer (a receiver calls it at BEGIN, before
   * {@link begin}) and returns the function that ends its admission: call it
   * once the BEGIN was handled (begun or refused), when what the transfer
   * sent meanwhile and the receiver holds in RAM goes on to the staging
   * files (calling it again does nothing).
   *
   * @throws {BlockMirrorError} `BM_ERR_BUSY` when
   *   {@link StagingStoreOptions.maxPendingTransfers} transfers are admitted
   *   already: the transfer is refused at once and nothing changes (its
   *   source retries at its next cycle).
   */
  admitTransfer(): () => void {
    if (this.#pendingTransfers >= this.#maxPendingTransfers) {
      throw new BlockMirrorError('BM_ERR_BUSY', `${this.#pendingTransfers} transfers are being received already (maxPendingTransfers); try again later`);
    }
    this.#pendingTransfers++;
    let ended = false;
    return () => {
      if (ended) return;
      ended = true;
      this.#pendingTransfers--;
    };
  }

  /** Transfers admitted and not ended (see {@link admitTransfer}). */
  get pendingTransfers(): number {
    return this.#pendingTransfers;
  }

  /**
   * Starts receiving a transfer from `source` (a node id) into the given
   * volumes. A transfer of the same source still open on these volumes is
   * dropped (its connection died); a running merge is waited for.
   *
   * @throws {BlockMirrorError} `BM_ERR_UNKNOWN_VOLUME`; `BM_ERR_VOLUME_BUSY`
   *   when another source is transferring into a volume; `BM_ERR_PROTOCOL`
   *   when a delta does not start at the freeze the image holds (or the
   *   lineage differs); `BM_ERR_INVALID_ARGUMENT` for a bad geometry;
   *   `BM_ERR_NO_SPACE` when the staging directory's file system has less
   *   room than the granules and tables announced (checked before anything
   *   changes).
   */
  async begin(source: string, to: number, plans: StagePlan[]): Promise<StagedTransfer> {
    const vols = plans.map((p) => this.#get(p.name));
    const refusePending = (): void => {
      for (const v of vols) if (v.pending !== undefined) throw this.#unavailable(v, v.pending, 'no transfer until then');
    };
    if (this.#closed) throw new BlockMirrorError('BM_ERR_CLOSED', 'the staging store is closed');
    refusePending();
    for (const v of vols) {
      if (v.owner !== undefined && !v.owner.done) {
        if (v.owner.source !== source) throw new BlockMirrorError('BM_ERR_VOLUME_BUSY', `volume ${v.name} is receiving a transfer from ${v.owner.source}`);
        await v.owner.abort();
      }
    }
    for (const v of vols) while (v.merging !== undefined) await v.merging;
    refusePending(); // an aborted commit or a merge waited for may have failed
    if (this.#closed) throw new BlockMirrorError('BM_ERR_CLOSED', 'the staging store is closed');
    const staged: StagedVolume[] = [];
    let seeding = false;
    plans.forEach((p, i) => {
      const v = vols[i]!;
      const geometry = cycleGeometry(v.device.size, v.device.blockSize, p.chunkSize, p.granularity);
      const entry = 8 + geometry.bitmapBytes;
      if (p.tableBytes % entry !== 0 || p.tableBytes > geometry.chunkCount * entry) throw protocol('bad table size', { volume: p.name });
      const sameLineage = v.state.lineage === p.lineage && !v.state.seeding;
      if (!p.full && (!sameLineage || v.state.freeze !== p.from)) {
        throw protocol(`volume ${p.name} holds freeze ${v.state.freeze} of ${v.state.lineage ?? 'nothing'}, not ${p.from} of ${p.lineage}`, {
          volume: p.name,
          holds: v.state.freeze,
          from: p.from,
        });
      }
      const direct = p.full && (!sameLineage || v.state.freeze === 0);
      if (direct) seeding = true;
      staged.push(new StagedVolume(v, p, geometry, direct));
    });
    await this.#checkSpace(staged);
    const transfer = new StagedTransfer(this, source, to, staged);
    for (const v of vols) v.owner = transfer;
    try {
      if (seeding) {
        for (const sv of staged) if (sv.direct) sv.volume.state = { lineage: sv.plan.lineage, freeze: 0, seeding: true };
        await this.#writeState();
      }
      for (const sv of staged) {
        if (sv.direct) continue;
        const paths = stagePaths(this.dir, sv.plan.name);
        await this.#fs.remove(paths.data);
        await this.#fs.remove(paths.table);
        sv.staging = await this.#fs.openDevice(paths.data, { size: sv.geometry.chunkCount * sv.geometry.chunkSize, blockSize: sv.geometry.blockSize });
      }
    } catch (error) {
      await transfer.abort();
      throw toBlockMirrorError(error);
    }
    log('transfer from %s to freeze %d: %s', source, to, plans.map((p) => `${p.name}${p.full ? ' (full)' : ` from ${p.from}`}`).join(', '));
    return transfer;
  }

  /** Refuses a transfer whose staged granules and tables would not fit in the staging directory's file system. */
  async #checkSpace(staged: readonly StagedVolume[]): Promise<void> {
    let needed = 0;
    for (const sv of staged) if (!sv.direct) needed += sv.plan.granules * sv.plan.granularity + sv.plan.tableBytes;
    if (needed === 0 || this.#fs.freeBytes === undefined) return;
    const free = await this.#fs.freeBytes(this.dir);
    if (free === undefined || needed <= free) return;
    throw new BlockMirrorError('BM_ERR_NO_SPACE', `the transfer needs ${needed} bytes of staging space, ${free} are free in ${this.dir}`, {
      details: { needed, free, dir: this.dir },
    });
  }

  /** @internal the durable part of {@link StagedTransfer.commit}. */
  async _commit(t: StagedTransfer): Promise<void> {
    const markerVolumes: MarkerVolume[] = [];
    const tables = new Map<string, FreezeTable>();
    for (const sv of t.volumes) {
      const g = sv.geometry;
      const tableBytes = sv.plan.full ? Buffer.alloc(0) : sv.tableBuf;
      if (sv.direct) {
        await sv.volume.device.flush();
      } else {
        await sv.staging!.flush();
        await this.#fs.writeFile(stagePaths(this.dir, sv.plan.name).table, tableBytes);
        tables.set(sv.plan.name, sv.table!);
      }
      markerVolumes.push({
        name: sv.plan.name,
        lineage: sv.plan.lineage,
        direct: sv.direct,
        full: sv.plan.full,
        size: g.size,
        blockSize: g.blockSize,
        chunkSize: g.chunkSize,
        granularity: g.granularity,
        tableCrc: crc32(tableBytes),
        tableBytes: tableBytes.length,
      });
    }
    const marker: Marker = { format: MARKER_FORMAT, version: 1, to: t.to, volumes: markerVolumes };
    const markerPath = join(this.dir, `commit-${randomBytes(6).toString('hex')}.marker`);
    await this.#fs.writeState(markerPath, marker);
    t.marked = true;
    const stagings = new Map<string, BlockDevice>();
    for (const sv of t.volumes) if (sv.staging !== undefined) stagings.set(sv.plan.name, sv.staging);
    // a failure leaves the volumes pending (see #apply): retried from the marker and the kept staging files
    await this.#apply(markerPath, marker, tables, stagings, true);
    t.merged = true;
  }

  /** @internal releases a transfer's volumes and staging files. */
  async _release(t: StagedTransfer): Promise<void> {
    for (const sv of t.volumes) {
      if (sv.volume.owner === t) sv.volume.owner = undefined;
      if (sv.staging !== undefined) {
        const staging = sv.staging;
        sv.staging = undefined;
        await staging.close().catch(() => undefined);
        // after a marker, the staged files are the merge's source until it completed
        if (t.marked && !t.merged) continue;
        const paths = stagePaths(this.dir, sv.plan.name);
        await this.#fs.remove(paths.data).catch(() => undefined);
        await this.#fs.remove(paths.table).catch(() => undefined);
      }
    }
  }

  /**
   * Merges a committed transfer into the images and records it (idempotent;
   * also the replay and the retries). With `retry`, a failure makes the
   * volumes pending (a retry is scheduled) before the merge counts as ended,
   * so that no reader sees the image between the failure and the pending
   * state; a success ends a pending state of this marker (after `onDone`,
   * a clean-up that runs still inside the merge and whose failure is only logged).
   */
  async #apply(
    markerPath: string,
    marker: Marker,
    tables: Map<string, FreezeTable>,
    stagings: Map<string, BlockDevice>,
    retry: boolean,
    onDone?: () => Promise<void>,
  ): Promise<void> {
    const vols = marker.volumes.map((mv) => this.#get(mv.name));
    let finish!: () => void;
    const merging = new Promise<void>((resolve) => (finish = resolve));
    for (const v of vols) v.merging = merging;
    const before = vols.map((v) => v.state);
    let recorded = false;
    try {
      await this.#hooks.mergeStart?.({ to: marker.to, volumes: marker.volumes.map((v) => v.name) });
      // reads that started before the merge finish on the previous image
      await Promise.allSettled(vols.flatMap((v) => [...v.reads]));
      for (const mv of marker.volumes) {
        if (mv.direct) continue;
        const v = this.#get(mv.name);
        const table = tables.get(mv.name)!;
        const staging = stagings.get(mv.name)!;
        const g = table.geometry;
        const runs = [...table.runs(Math.max(1, MERGE_RUN_BYTES / g.granularity))];
        let next = 0;
        const worker = async (): Promise<void> => {
          while (next < runs.length) {
            const run = runs[next++]!;
            const data = await staging.read(run.slot * g.chunkSize + run.granule * g.granularity, run.length);
            await this.#hooks.beforeMergeWrite?.({ volume: mv.name, offset: run.offset, length: run.length });
            await v.device.write(run.offset, data);
          }
        };
        const results = await Promise.allSettled(Array.from({ length: Math.min(MERGE_PARALLEL, runs.length) }, worker));
        for (const r of results) if (r.status === 'rejected') throw r.reason;
        await v.device.flush();
      }
      for (const mv of marker.volumes) this.#get(mv.name).state = { lineage: mv.lineage, freeze: marker.to, seeding: false };
      await this.#writeState();
      recorded = true;
      await this.#fs.remove(markerPath);
      await this.#fs.syncDir(this.dir);
      log('merged freeze %d into %s', marker.to, marker.volumes.map((v) => v.name).join(', '));
      // still inside the merge: a transfer waiting for it must not find files of this one (leftovers are removed by the next begin or open)
      await onDone?.().catch((error: unknown) => log('cleaning up after the merge of freeze %d: %s', marker.to, toBlockMirrorError(error).message));
      const pending = vols[0]?.pending;
      if (pending !== undefined && pending.markerPath === markerPath) {
        for (const v of vols) v.pending = undefined;
        pending.settle();
        log('the merge of freeze %d recovered after %d failed attempt(s)', marker.to, pending.attempts);
        this.#report(() => this.#events.mergeRecovered?.({ to: marker.to, volumes: marker.volumes.map((mv) => mv.name), attempts: pending.attempts }));
      }
    } catch (error) {
      const err = toBlockMirrorError(error);
      // the state file still records the previous freeze: so does the memory (a recorded state stays: the image is complete)
      if (!recorded) vols.forEach((v, i) => (v.state = before[i]!));
      if (retry) this.#mergeFailed(markerPath, marker, err);
      throw err;
    } finally {
      for (const v of vols) if (v.merging === merging) v.merging = undefined;
      finish();
    }
  }

  /** Replays committed merges found on disk; removes staging files of uncommitted transfers. */
  async #recover(): Promise<void> {
    const entries = await this.#fs.list(this.dir);
    for (const entry of entries.filter((e) => /^commit-[0-9a-f]+\.marker$/.test(e)).sort()) {
      const markerPath = join(this.dir, entry);
      const marker = await this.#fs.readState(markerPath);
      if (!isMarker(marker)) throw new BlockMirrorError('BM_ERR_JOURNAL_CORRUPT', `${markerPath} is not a commit marker`);
      const stagings = new Map<string, BlockDevice>();
      try {
        const tables = await this.#loadStaged(marker, stagings);
        log('replaying the merge of freeze %d (%s)', marker.to, entry);
        await this.#apply(markerPath, marker, tables, stagings, false);
      } finally {
        for (const s of stagings.values()) await s.close().catch(() => undefined);
      }
    }
    for (const entry of await this.#fs.list(this.dir)) {
      const m = /^(.*)\.stage\.(data|table)$/.exec(entry);
      if (m !== null && this.#volumes.has(m[1]!)) await this.#fs.remove(join(this.dir, entry));
    }
  }

  /** Makes the marker's volumes pending (or counts one more failed attempt) and schedules the next attempt. */
  #mergeFailed(markerPath: string, marker: Marker, error: BlockMirrorError): void {
    const vols = marker.volumes.map((mv) => this.#get(mv.name));
    let p = vols[0]?.pending;
    if (p === undefined || p.markerPath !== markerPath) {
      let settle!: () => void;
      const settled = new Promise<void>((resolve) => (settle = resolve));
      p = { markerPath, marker, attempts: 0, error, timer: undefined, retryAt: undefined, settled, settle };
      for (const v of vols) v.pending = p;
    }
    const pending = p;
    pending.attempts++;
    pending.error = error;
    let delay: number | undefined;
    if (!this.#closed) {
      delay = Math.min(this.#mergeRetry.max, this.#mergeRetry.min * 2 ** Math.min(pending.attempts - 1, 30));
      pending.retryAt = this.#clock.now() + delay;
      pending.timer = this.#clock.setTimeout(() => void this.#retry(pending), delay);
    }
    log('the merge of freeze %d failed (attempt %d): %s; next attempt in %s ms', marker.to, pending.attempts, error.message, delay ?? '-');
    this.#report(() =>
      this.#events.mergeError?.({ to: marker.to, volumes: marker.volumes.map((mv) => mv.name), error, attempts: pending.attempts, retryInMs: delay }),
    );
  }

  /** One more attempt of a pending merge, from its marker and the staging files on disk (as on open). */
  async #retry(p: PendingMerge): Promise<void> {
    p.timer = undefined;
    p.retryAt = undefined;
    if (this.#closed) return;
    const stagings = new Map<string, BlockDevice>();
    const paths = p.marker.volumes.filter((mv) => !mv.direct).map((mv) => stagePaths(this.dir, mv.name));
    const closeStagings = async (): Promise<void> => {
      for (const s of stagings.values()) await s.close().catch(() => undefined);
      stagings.clear();
    };
    try {
      const tables = await this.#loadStaged(p.marker, stagings);
      log('retrying the merge of freeze %d (attempt %d)', p.marker.to, p.attempts + 1);
      await this.#apply(p.markerPath, p.marker, tables, stagings, true, async () => {
        await closeStagings();
        for (const f of paths) {
          await this.#fs.remove(f.data);
          await this.#fs.remove(f.table);
        }
      });
    } catch (error) {
      // a failure inside the merge is already counted; one while loading the staged files is counted here
      if (this.#get(p.marker.volumes[0]!.name).pending === p && p.timer === undefined && !this.#closed) this.#mergeFailed(p.markerPath, p.marker, toBlockMirrorError(error));
    } finally {
      await closeStagings();
    }
  }

  /** Reads the staged tables of a marker (checked against it) and opens its staging data files into `stagings`. */
  async #loadStaged(marker: Marker, stagings: Map<string, BlockDevice>): Promise<Map<string, FreezeTable>> {
    const tables = new Map<string, FreezeTable>();
    for (const mv of marker.volumes) {
      const v = this.#get(mv.name);
      if (mv.direct) continue;
      const paths = stagePaths(this.dir, mv.name);
      const bytes = await this.#fs.readFile(paths.table);
      if (bytes.length !== mv.tableBytes || crc32(bytes) !== mv.tableCrc) {
        throw new BlockMirrorError('BM_ERR_JOURNAL_CORRUPT', `staged table of ${mv.name} does not match its commit marker`, { details: { path: paths.table } });
      }
      const geometry = cycleGeometry(v.device.size, v.device.blockSize, mv.chunkSize, mv.granularity);
      tables.set(mv.name, mv.full === true ? FreezeTable.full(geometry) : FreezeTable.decode(geometry, bytes));
      stagings.set(mv.name, await this.#fs.openDevice(paths.data, { size: geometry.chunkCount * geometry.chunkSize, blockSize: geometry.blockSize, create: false }));
    }
    return tables;
  }

  /** Calls an event callback; its exception is logged, not thrown into the merge. */
  #report(call: () => void): void {
    try {
      call();
    } catch (error) {
      log('merge event listener threw: %s', toBlockMirrorError(error).message);
    }
  }

  /** Writes the state file (serialised; each write records the state at its turn). */
  #writeState(): Promise<void> {
    const run = this.#stateChain.then(() => {
      const volumes: StoreState['volumes'] = {};
      for (const v of this.#volumes.values()) {
        volumes[v.name] = { freeze: v.state.freeze, ...(v.state.lineage === undefined ? {} : { lineage: v.state.lineage }), ...(v.state.seeding ? { seeding: true } : {}) };
      }
      const body: StoreState = { format: STATE_FORMAT, version: 1, volumes };
      return this.#fs.writeState(this.#statePath, body);
    });
    this.#stateChain = run.catch(() => undefined);
    return run;
  }

  #get(name: string): StoreVolume {
    const v = this.#volumes.get(name);
    if (v === undefined) throw new BlockMirrorError('BM_ERR_UNKNOWN_VOLUME', `this target hosts no volume named ${JSON.stringify(name)}`);
    return v;
  }

  /**
   * Waits for running merges and stops retrying failed ones (their markers
   * stay: the next open replays them; reads waiting for them fail with
   * `BM_ERR_CLOSED`). Devices are not closed (they belong to the caller).
   */
  async close(): Promise<void> {
    this.#closed = true;
    for (const v of this.#volumes.values()) {
      if (v.owner !== undefined) await v.owner.abort();
      while (v.merging !== undefined) await v.merging;
    }
    for (const v of this.#volumes.values()) {
      const p = v.pending;
      if (p === undefined) continue;
      if (p.timer !== undefined) this.#clock.clearTimeout(p.timer);
      p.timer = undefined;
      p.retryAt = undefined;
      p.settle();
    }
    await this.#stateChain;
  }
}
