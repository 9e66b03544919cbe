/**
 * An in-memory {@link BlockDevice} with crash semantics, for simulations:
 * completed writes are visible at once but durable only after `flush()` (or
 * when written with FUA); {@link CrashableMemoryDevice.crash} loses a random
 * subset of the writes that were not durable yet and may tear one of them,
 * as LazyFS and dm-log-writes model a power loss.
 *
 * @module
 */
import type { Clock } from '../clock.js';
import { BlockMirrorError } from '../errors.js';
import type { BlockDevice, BlockDeviceSupports, WriteOptions } from './block-device.js';
import { checkRange, checkWriteData, validateGeometry } from './range.js';

const CRASHABLE_SUPPORTS: BlockDeviceSupports = Object.freeze({ trim: true, flush: true, fua: true, reopen: true });

/** Operations of a {@link CrashableMemoryDevice} that {@link CrashableMemoryDevice.injectError} can fail. */
export type CrashableOp = 'read' | 'write' | 'flush' | 'trim';

/** Options of {@link CrashableMemoryDevice}. */
export interface CrashableMemoryDeviceOptions {
  /** Alignment unit in bytes (power of two). Default 4096. */
  blockSize?: number;
  /** Unit of a torn write in bytes (a divisor of `blockSize`). Default 512. */
  sectorSize?: number;
  /**
   * Clock on which operations take their latency. Without it (or with a zero
   * latency) operations complete in a microtask.
   */
  clock?: Clock;
  /** Latency of each operation in milliseconds (called once per operation; default 0). */
  latency?: (op: CrashableOp) => number;
  /**
   * Keep only the blocks that were written (non-zero), so that a volume of
   * many GiB costs memory for its written blocks only (default false).
   * {@link CrashableMemoryDevice.peek} then reads at most 1 GiB at once;
   * use {@link CrashableMemoryDevice.nonZeroBlocks} to walk the content.
   */
  sparse?: boolean;
}

/** Options of {@link CrashableMemoryDevice.crash}. */
export interface CrashOptions {
  /** Probability that an unflushed, non-FUA write survives (default 0.5). */
  keepProbability?: number;
  /** Probability that one surviving unflushed write is torn, keeping only a prefix of its sectors (default 0.3). */
  tearProbability?: number;
}

/** What {@link CrashableMemoryDevice.crash} did. */
export interface CrashReport {
  /** Writes (and trims) that were completed but not durable. */
  unflushed: number;
  /** Of those, how many survived (FUA writes always survive). */
  kept: number;
  /** Offset and surviving sectors of the torn write, if one was torn. */
  torn: { offset: number; length: number; keptBytes: number } | undefined;
}

/** One completed write or trim that is not durable yet (a dm-log-writes record). */
interface LogEntry {
  readonly id: number;
  readonly offset: number;
  readonly length: number;
  /** Undefined for a trim (zeroes). */
  readonly data: Buffer | undefined;
  readonly fua: boolean;
}

/** A never-settling promise: what an operation of a crashed process sees. */
function frozen<T>(): Promise<T> {
  return new Promise<T>(() => {});
}

/**
 * A {@link BlockDevice} in memory that models a volatile write cache.
 *
 * - Reads see every completed write.
 * - A completed write is *durable* once a `flush()` called after it
 *   completes, or when it was written with `{ fua: true }`.
 * - {@link crash} replays the durable image plus a random subset of the
 *   non-durable writes, in their completion order (FUA writes always kept),
 *   possibly tearing one at a sector boundary; operations in progress are
 *   lost (they reject with `BM_ERR_IO`).
 * - {@link injectError} makes the next operations of a kind fail with
 *   `BM_ERR_IO` without touching the data.
 * - {@link session} hands out views that a simulator revokes when the
 *   process that used them dies: a revoked view's operations never settle.
 *
 * `supports`: trim, flush, fua and reopen (the content survives `close()` of
 * a session; `close()` of the device itself drops it).
 */
export class CrashableMemoryDevice implements BlockDevice {
  readonly size: number;
  readonly blockSize: number;
  readonly sectorSize: number;
  readonly supports: BlockDeviceSupports = CRASHABLE_SUPPORTS;
  readonly #clock: Clock | undefined;
  readonly #latency: ((op: CrashableOp) => number) | undefined;
  #durable: Image;
  #current: Image;
  #log: LogEntry[] = [];
  #nextId = 1;
  #epoch = 0;
  #closed = false;
  readonly #errors = new Map<CrashableOp, number>();
  /** Operations completed, by kind. */
  readonly stats = { reads: 0, writes: 0, flushes: 0, trims: 0, injectedErrors: 0, crashes: 0 };

  /**
   * @param size - size in bytes, a multiple of `blockSize`.
   * @throws {BlockMirrorError} `BM_ERR_INVALID_ARGUMENT` for a bad geometry.
   */
  constructor(size: number, options: CrashableMemoryDeviceOptions = {}) {
    const blockSize = options.blockSize ?? 4096;
    validateGeometry(size, blockSize);
    const sectorSize = options.sectorSize ?? Math.min(512, blockSize);
    if (!Number.isSafeInteger(sectorSize) || sectorSize <= 0 || blockSize % sectorSize !== 0) {
      throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', 'sectorSize must divide blockSize', { details: { sectorSize, blockSize } });
    }
    this.size = size;
    this.blockSize = blockSize;
    this.sectorSize = sectorSize;
    this.#clock = options.clock;
    this.#latency = options.latency;
    this.#durable = options.sparse === true ? new SparseImage(size, blockSize) : new FlatImage(size);
    this.#current = this.#durable.clone();
  }

  /** True when only written blocks are kept (option `sparse`). */
  get sparse(): boolean {
    return this.#current instanceof SparseImage;
  }

  /** Indexes (in blocks) of the blocks that may hold non-zero data now, ascending (every block of a non-sparse device). */
  nonZeroBlocks(): number[] {
    return this.#current.nonZeroBlocks(this.blockSize);
  }

  /** True when `[offset, offset + length)` reads as zeroes now (synchronous; for checkers). */
  isZero(offset: number, length: number): boolean {
    return this.#current.isZero(offset, length, this.blockSize);
  }

  /** Completed writes not durable yet. */
  get unflushedWrites(): number {
    return this.#log.length;
  }

  /** Number of crashes so far (each one revokes every session). */
  get epoch(): number {
    return this.#epoch;
  }

  /** A copy of what reads return now (synchronous; for checkers). */
  peek(offset = 0, length = this.size - offset): Buffer {
    return this.#current.read(offset, length);
  }

  /** A copy of the image a crash that keeps no unflushed write would leave (FUA writes included). */
  durableImage(): Buffer {
    const image = this.#durable.clone();
    for (const e of this.#log) if (e.fua) applyEntry(image, e, e.length);
    return image.read(0, this.size);
  }

  /** Makes the next `times` operations of kind `op` fail with `BM_ERR_IO` (nothing is written). */
  injectError(op: CrashableOp, times = 1): void {
    this.#errors.set(op, (this.#errors.get(op) ?? 0) + times);
  }

  /** Removes every injected error not yet consumed. */
  clearErrors(): void {
    this.#errors.clear();
  }

  /**
   * A power loss: the image becomes the durable image plus a random subset
   * of the unflushed writes (replayed in completion order; FUA writes always
   * kept), one of which may be torn. Operations in progress reject with
   * `BM_ERR_IO` and every {@link session} is revoked.
   *
   * @param random - a source in [0, 1) (use a seeded one for reproducible crashes).
   */
  crash(random: () => number, options: CrashOptions = {}): CrashReport {
    const keep = options.keepProbability ?? 0.5;
    const tear = options.tearProbability ?? 0.3;
    const kept = this.#log.filter((e) => e.fua || random() < keep);
    const tearable = kept.filter((e) => !e.fua && e.length > this.sectorSize);
    let torn: CrashReport['torn'];
    let tornEntry: LogEntry | undefined;
    if (tearable.length > 0 && random() < tear) {
      tornEntry = tearable[Math.floor(random() * tearable.length)]!;
      const sectors = tornEntry.length / this.sectorSize;
      const keptBytes = (1 + Math.floor(random() * (sectors - 1))) * this.sectorSize;
      torn = { offset: tornEntry.offset, length: tornEntry.length, keptBytes };
    }
    for (const e of kept) applyEntry(this.#durable, e, e === tornEntry ? torn!.keptBytes : e.length);
    const report: CrashReport = { unflushed: this.#log.length, kept: kept.length, torn };
    this.#log = [];
    this.#current = this.#durable.clone();
    this.#epoch++;
    this.stats.crashes++;
    return report;
  }

  /**
   * A view of this device for one process. {@link DeviceSession.revoke} (or
   * the next {@link crash}) freezes it: its operations in progress and all
   * later ones never settle, so a dead process can change nothing. With
   * `owner` (e.g. the file-system view it was opened through), the session
   * is also revoked once the owner is: the owner need not keep a list of its
   * sessions (which would hold every device it ever opened).
   */
  session(owner?: { readonly revoked: boolean }): DeviceSession {
    return new DeviceSession(this, owner);
  }

  read(offset: number, length: number): Promise<Buffer> {
    return this.#op('read', () => checkRange(this, offset, length), () => {
      this.stats.reads++;
      return this.#current.read(offset, length);
    });
  }

  write(offset: number, data: Uint8Array, options?: WriteOptions): Promise<void> {
    const fua = options?.fua === true;
    let copy: Buffer | undefined;
    let zeroLength = 0;
    return this.#op(
      'write',
      () => {
        checkRange(this, offset, checkWriteData(data));
        // the caller may reuse its buffer once the promise settles; the data is taken now
        // (a sparse device records a write of zeroes as such: nothing of its length is kept)
        const bytes = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
        copy = this.sparse && isZeroBuf(bytes, 0, bytes.length) ? undefined : Buffer.from(bytes);
        zeroLength = bytes.length;
      },
      () => {
        this.stats.writes++;
        this.#record(offset, zeroLength, copy, fua);
      },
    );
  }

  trim(offset: number, length: number): Promise<void> {
    return this.#op('trim', () => checkRange(this, offset, length), () => {
      this.stats.trims++;
      this.#record(offset, length, undefined, false);
    });
  }

  flush(): Promise<void> {
    const upTo = this.#nextId;
    return this.#op('flush', () => {}, () => {
      this.stats.flushes++;
      let n = 0;
      while (n < this.#log.length && this.#log[n]!.id < upTo) applyEntry(this.#durable, this.#log[n]!, this.#log[n++]!.length);
      if (n > 0) this.#log.splice(0, n);
    });
  }

  /** Drops the content. Idempotent. */
  close(): Promise<void> {
    this.#closed = true;
    this.#log = [];
    return Promise.resolve();
  }

  #record(offset: number, length: number, data: Buffer | undefined, fua: boolean): void {
    const entry: LogEntry = { id: this.#nextId++, offset, length, data, fua };
    applyEntry(this.#current, entry, length);
    this.#log.push(entry);
  }

  #op<T>(op: CrashableOp, check: () => void, run: () => T): Promise<T> {
    try {
      if (this.#closed) throw new BlockMirrorError('BM_ERR_CLOSED', 'the device is closed');
      check();
    } catch (error) {
      return Promise.reject(error);
    }
    const epoch = this.#epoch;
    const finish = (): T => {
      if (this.#closed) throw new BlockMirrorError('BM_ERR_CLOSED', 'the device is closed');
      if (epoch !== this.#epoch) throw new BlockMirrorError('BM_ERR_IO', `${op} lost in a crash of the device`);
      const left = this.#errors.get(op) ?? 0;
      if (left > 0) {
        this.#errors.set(op, left - 1);
        this.stats.injectedErrors++;
        throw new BlockMirrorError('BM_ERR_IO', `injected I/O error (${op})`, { details: { op } });
      }
      return run();
    };
    const ms = this.#latency === undefined || this.#clock === undefined ? 0 : this.#latency(op);
    if (!(ms > 0)) return Promise.resolve().then(finish);
    const clock = this.#clock!;
    return new Promise<void>((resolve) => clock.setTimeout(resolve, ms)).then(finish);
  }
}

/**
 * A revocable view of a {@link CrashableMemoryDevice} (see
 * {@link CrashableMemoryDevice.session}). Closing it does not close the device.
 */
export class DeviceSession implements BlockDevice {
  readonly #device: CrashableMemoryDevice;
  readonly #epoch: number;
  readonly #owner: { readonly revoked: boolean } | undefined;
  #revoked = false;
  #closed = false;

  /** @internal use {@link CrashableMemoryDevice.session} */
  constructor(device: CrashableMemoryDevice, owner?: { readonly revoked: boolean }) {
    this.#device = device;
    this.#epoch = device.epoch;
    this.#owner = owner;
  }

  get size(): number {
    return this.#device.size;
  }

  get blockSize(): number {
    return this.#device.blockSize;
  }

  get supports(): BlockDeviceSupports {
    return this.#device.supports;
  }

  /** True once revoked (explicitly, with its owner or by a crash of the device). */
  get revoked(): boolean {
    return this.#revoked || this.#owner?.revoked === true || this.#epoch !== this.#device.epoch;
  }

  /** Freezes the view: every operation in progress or to come never settles. */
  revoke(): void {
    this.#revoked = true;
  }

  read(offset: number, length: number): Promise<Buffer> {
    return this.#guard(() => this.#device.read(offset, length));
  }

  write(offset: number, data: Uint8Array, options?: WriteOptions): Promise<void> {
    return this.#guard(() => this.#device.write(offset, data, options));
  }

  flush(): Promise<void> {
    return this.#guard(() => this.#device.flush());
  }

  trim(offset: number, length: number): Promise<void> {
    return this.#guard(() => this.#device.trim(offset, length));
  }

  /** Closes this view only (later calls reject with `BM_ERR_CLOSED`). */
  close(): Promise<void> {
    this.#closed = true;
    return Promise.resolve();
  }

  #guard<T>(run: () => Promise<T>): Promise<T> {
    if (this.revoked) return frozen<T>();
    if (this.#closed) return Promise.reject(new BlockMirrorError('BM_ERR_CLOSED', 'the device session is closed'));
    return run().then(
      (value) => (this.revoked ? frozen<T>() : value),
      (error: unknown) => (this.revoked ? frozen<T>() : Promise.reject(error)),
    );
  }
}

function applyEntry(image: Image, e: LogEntry, bytes: number): void {
  if (e.data === undefined) image.zero(e.offset, bytes);
  else image.write(e.offset, e.data.subarray(0, bytes));
}

/** The content of a device (current or durable). */
interface Image {
  read(offset: number, length: number): Buffer;
  write(offset: number, data: Buffer): void;
  zero(offset: number, length: number): void;
  clone(): Image;
  nonZeroBlocks(blockSize: number): number[];
  isZero(offset: number, length: number, blockSize: number): boolean;
}

class FlatImage implements Image {
  readonly #buf: Buffer;
  constructor(size: number, buf?: Buffer) {
    this.#buf = buf ?? Buffer.alloc(size);
  }
  read(offset: number, length: number): Buffer {
    return Buffer.from(this.#buf.subarray(offset, offset + length));
  }
  write(offset: number, data: Buffer): void {
    data.copy(this.#buf, offset);
  }
  zero(offset: number, length: number): void {
    this.#buf.fill(0, offset, offset + length);
  }
  clone(): Image {
    return new FlatImage(this.#buf.length, Buffer.from(this.#buf));
  }
  nonZeroBlocks(blockSize: number): number[] {
    return Array.from({ length: this.#buf.length / blockSize }, (_, i) => i);
  }
  isZero(offset: number, length: number): boolean {
    for (let i = offset; i < offset + length; i++) if (this.#buf[i] !== 0) return false;
    return true;
  }
}

/** Only non-zero blocks are kept (a missing block reads as zeroes). */
class SparseImage implements Image {
  readonly #size: number;
  readonly #bs: number;
  readonly #blocks: Map<number, Buffer>;
  constructor(size: number, blockSize: number, blocks = new Map<number, Buffer>()) {
    this.#size = size;
    this.#bs = blockSize;
    this.#blocks = blocks;
  }
  read(offset: number, length: number): Buffer {
    if (length > 2 ** 30) throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', 'a sparse device reads at most 1 GiB at once');
    const out = Buffer.alloc(length);
    const bs = this.#bs;
    const first = Math.floor(offset / bs);
    const last = Math.floor((offset + length - 1) / bs);
    const visit = (b: number, block: Buffer): void => {
      const start = Math.max(offset, b * bs);
      const end = Math.min(offset + length, (b + 1) * bs);
      block.copy(out, start - offset, start - b * bs, end - b * bs);
    };
    if (last - first + 1 > this.#blocks.size) {
      for (const [b, block] of this.#blocks) if (b >= first && b <= last) visit(b, block);
    } else {
      for (let b = first; b <= last; b++) {
        const block = this.#blocks.get(b);
        if (block !== undefined) visit(b, block);
      }
    }
    return out;
  }
  write(offset: number, data: Buffer): void {
    const bs = this.#bs;
    for (let at = 0; at < data.length; ) {
      const b = Math.floor((offset + at) / bs);
      const inBlock = offset + at - b * bs;
      const n = Math.min(bs - inBlock, data.length - at);
      let block = this.#blocks.get(b);
      if (block === undefined) {
        if (isZeroBuf(data, at, n)) {
          at += n;
          continue;
        }
        this.#blocks.set(b, (block = Buffer.alloc(bs)));
      }
      data.copy(block, inBlock, at, at + n);
      if (n < bs ? isZeroBuf(block, 0, bs) : isZeroBuf(data, at, n)) this.#blocks.delete(b);
      at += n;
    }
  }
  zero(offset: number, length: number): void {
    const bs = this.#bs;
    const first = Math.floor(offset / bs);
    const last = Math.floor((offset + length - 1) / bs);
    if (this.#blocks.size === 0) return;
    const hit: number[] = [];
    if (last - first + 1 > this.#blocks.size) {
      for (const b of this.#blocks.keys()) if (b >= first && b <= last) hit.push(b);
    } else {
      for (let b = first; b <= last; b++) if (this.#blocks.has(b)) hit.push(b);
    }
    for (const b of hit) {
      const start = Math.max(offset, b * bs);
      const end = Math.min(offset + length, (b + 1) * bs);
      if (end - start === bs) this.#blocks.delete(b);
      else {
        const block = this.#blocks.get(b)!;
        block.fill(0, start - b * bs, end - b * bs);
        if (isZeroBuf(block, 0, bs)) this.#blocks.delete(b);
      }
    }
  }
  clone(): Image {
    const copy = new Map<number, Buffer>();
    for (const [b, block] of this.#blocks) copy.set(b, Buffer.from(block));
    return new SparseImage(this.#size, this.#bs, copy);
  }
  nonZeroBlocks(blockSize: number): number[] {
    const out = new Set<number>();
    for (const b of this.#blocks.keys()) {
      const first = Math.floor((b * this.#bs) / blockSize);
      const last = Math.floor(((b + 1) * this.#bs - 1) / blockSize);
      for (let x = first; x <= last; x++) out.add(x);
    }
    return [...out].sort((x, y) => x - y);
  }
  isZero(offset: number, length: number): boolean {
    const bs = this.#bs;
    const first = Math.floor(offset / bs);
    const last = Math.floor((offset + length - 1) / bs);
    for (const [b, block] of this.#blocks) {
      if (b < first || b > last) continue;
      const start = Math.max(offset, b * bs);
      const end = Math.min(offset + length, (b + 1) * bs);
      if (!isZeroBuf(block, start - b * bs, end - start)) return false;
    }
    return true;
  }
}

const ZEROES = Buffer.alloc(64 * 1024);

/** True when `buf[at, at + n)` is all zeroes (compared natively, 64 KiB at a time). */
function isZeroBuf(buf: Buffer, at: number, n: number): boolean {
  for (let i = at; i < at + n; i += ZEROES.length) {
    const m = Math.min(ZEROES.length, at + n - i);
    if (ZEROES.compare(buf, i, i + m, 0, m) !== 0) return false;
  }
  return true;
}

