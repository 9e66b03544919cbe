/**
 * {@link FileJournal}: a crash-safe {@link Journal} in a preallocated ring file
 * (SPEC 16, 17, 19).
 *
 * Layout and record format: see `record-format.ts`. In short: two superblock
 * slots (checkpoints of the release point, alternating, CRC + generation),
 * then a ring of `capacityBytes` holding 512-byte-aligned records (48-byte
 * header with magic, version, flags, journal id, epoch, seq, timestamp, volume
 * offset, payload length and a CRC-32 over header and payload, then the
 * payload). A zero range is a record whose 8-byte payload is its length: it
 * takes one 512-byte slot whatever it zeroes. A record that does not fit
 * before the end of the ring is preceded by a wrap-padding marker and written
 * at position 0.
 *
 * Recovery walks the ring from the checkpointed tail and accepts records while
 * they are valid (magic, version, journal id, CRC) and ordered (seq strictly
 * increasing, epoch never decreasing, the first one matching the checkpoint);
 * the first invalid record ends the log, so a torn or corrupt record and
 * everything after it are discarded, never replayed.
 *
 * Invariants that make this safe:
 * - Appends resolve in order, only once every earlier append is durable too.
 * - Ring space that the last *durable* checkpoint still counts as live is never
 *   overwritten: an append that would do so first waits for a new checkpoint.
 * - Every open starts a new epoch (written to the superblock before any
 *   append), so stale records of an earlier life found after the recovered
 *   head are never taken as new ones.
 *
 * @module
 */

import { syncParent } from '../storage/state-file.js';
import { randomInt } from 'node:crypto';
import * as fs from 'node:fs';
import createDebug from 'debug';
import type { Clock } from '../clock.js';
import { systemClock } from '../clock.js';
import { BlockMirrorError, toBlockMirrorError } from '../errors.js';
import type { Journal, JournalEntry, JournalStats, PendingJournalEntry } from './journal.js';
import { payloadLength, pendingEntry, validateCapacity, validateEntry } from './journal.js';
import {
  ALIGN,
  FLAG_FUA,
  FLAG_PAD,
  FLAG_ZERO,
  RECORD_HEADER_BYTES,
  RELEASE_MAP_BITS,
  RING_START,
  SUPERBLOCK_BYTES,
  SUPERBLOCK_SLOTS,
  decodeRecordHeader,
  decodeSuperblock,
  decodeZeroPayload,
  encodeRecordHeader,
  encodeSuperblock,
  encodeZeroPayload,
  recordBytes,
  recordCrcOk,
  recordFlagsValid,
} from './record-format.js';
import type { Superblock } from './record-format.js';
import { SeqQueue } from './seq-queue.js';
import { PackedDeque } from './packed-deque.js';

const debug = createDebug('blockmirror:journal');

/** When appends are made durable, see {@link FileJournalOptions.fsync}. */
export type JournalFsyncPolicy = 'always' | 'batch' | 'none';

/**
 * Test hooks of a {@link FileJournal}: each is awaited before the I/O it names;
 * a throw or rejection is treated as that I/O failing (the journal then fails
 * as on a real I/O error).
 */
export interface FileJournalHooks {
  /** Before the positional write of a record (and of its wrap marker). */
  beforeWrite?(info: { seq: number; position: number }): void | Promise<void>;
  /** Before each `fdatasync` of the group commit / `always` policy (not of checkpoints). */
  beforeSync?(): void | Promise<void>;
  /**
   * After a checkpoint (superblock write) is durable; `tailSeq` is the oldest record it keeps (0: none).
   * A throw counts as a failed checkpoint.
   */
  afterCheckpoint?(info: { generation: number; tailSeq: number }): void;
}

/** Options of {@link FileJournal.open}. */
export interface FileJournalOptions {
  /**
   * Ring size in bytes (rounded down to a multiple of 512, at least 4096).
   * Default 256 MiB. Used when the file is created; an existing journal keeps
   * its size unless it holds no record at open, in which case it is
   * re-formatted with the new size (keeping `lastSeq`).
   */
  capacityBytes?: number;
  /**
   * `'always'`: every append waits for an `fdatasync` issued after its write.
   * `'batch'` (default): group commit: at most one `fdatasync` runs at a time and
   * covers every write completed before it started; appends that complete
   * while it runs wait for the next one. `'none'`: appends resolve when the
   * write reached the page cache (survives a process crash, not a power loss).
   */
  fsync?: JournalFsyncPolicy;
  /** `'batch'` only: wait this long (ms) after the first unsynced write before syncing, to gather more. Default 0. */
  batchDelayMs?: number;
  /**
   * Write a checkpoint of the release point after this many releases (and
   * always on close, and whenever space is needed). Bounds what a restart
   * replays again after a crash. Default 1024.
   */
  checkpointEvery?: number;
  /** Clock for `batchDelayMs`. Default {@link systemClock}. */
  clock?: Clock;
  /** Test hooks (failure injection, observing syncs). */
  hooks?: FileJournalHooks;
}

/** Counters of a {@link FileJournal}. */
export interface FileJournalStats extends JournalStats {
  /** `fdatasync` calls made since open (appends and checkpoints). */
  syncs: number;
  /** Checkpoints (superblock writes) since open, the one made by `open` included. */
  checkpoints: number;
  /** Records found by the recovery scan at open. */
  recovered: number;
  /** Epoch of this open (incremented on every open). */
  epoch: number;
  /** The journal failed on an I/O error and refuses appends. */
  failed: boolean;
}

/** Default ring size: 256 MiB. */
export const DEFAULT_JOURNAL_CAPACITY = 256 * 1024 * 1024;
const MIN_CAPACITY = 4096;
const READ_CHUNK = 1024 * 1024;
/**
 * `pending()` reads runs of consecutive records of up to this many bytes with
 * one read. Smaller than the recovery's reads: the payloads yielded share the
 * read buffer, which stays in memory while any of them is in use.
 */
const PENDING_READ_CHUNK = 256 * 1024;
/** Read buffers given back by `recycle()` kept for later reads, in bytes at most (dropped when a read finds nothing more). */
const SPARE_READ_BYTES = 32 * 1024 * 1024;
/** Read buffers are allocated in multiples of this (so that one fits later reads of about its size). */
const READ_SLAB = 64 * 1024;

/**
 * An append on its way to the file, from `append()` until it is durable (or
 * failed): the only per-record object, so there are as many as appends in
 * progress. Records on the file are rows of the packed record index.
 */
interface Append {
  readonly kind: 'write' | 'zero';
  readonly seq: number;
  readonly offset: number;
  /** Volume bytes covered: the payload length of a write, the range length of a zero record. */
  readonly length: number;
  /** Payload bytes in the file (8 for a zero record: its encoded length). */
  readonly dataLength: number;
  readonly fua: boolean;
  readonly timestamp: number;
  readonly epoch: number;
  /** Absolute ring position of the record header. */
  readonly recordAbs: number;
  /** Absolute position of the wrap marker written before this record, or -1. */
  readonly padAbs: number;
  /** Checkpoints must protect nothing before this absolute position before the record may be written. */
  readonly minCheckpointAbs: number;
  /** The write completed (the data is in the file). */
  written: boolean;
  /** The append failed; ignore late I/O completions. */
  failed: boolean;
  /** The payload (for a zero record: its encoded length), held until the write completed. */
  data: Buffer | null;
  /** Outstanding positional writes (record and wrap marker). */
  ioLeft: number;
  resolve: (() => void) | null;
  reject: ((error: Error) => void) | null;
}

/*
 * The record index: one row of 5 float64 (40 bytes) per record occupying ring
 * space, oldest first, instead of an object per record (a 4 GiB backlog of
 * 64 KiB writes is 65,536 records; of 4 KiB writes, a million). Records are
 * contiguous in the ring: the space of a record (its wrap marker, if any, and
 * the record) starts where the previous one ends, so only the oldest row's
 * start is kept apart (`#tailRegionAbs`).
 */
/** Column: seq (ascending: the search key). */
const COL_SEQ = 0;
/** Column: absolute ring position of the record header. */
const COL_RECORD = 1;
/** Column: payload bytes in the file (8 for a zero record). */
const COL_DATA = 2;
/** Column: epoch × 8 + flags (`ROW_*`). */
const COL_META = 3;
/**
 * Column: the CRC-32 of the record's header (set once it is encoded): a record
 * read back must be the very one appended or recovered, not just a valid one.
 */
const COL_CRC = 4;
const ROW_STRIDE = 5;
/** Row flag: a zero range record. */
const ROW_ZERO = 1;
/** Row flag: acknowledged (`release()`). */
const ROW_RELEASED = 2;
/** Row flag: the write completed (the record is in the file). */
const ROW_WRITTEN = 4;

/** Appends a row to the record index. */
function pushRow(index: PackedDeque, seq: number, recordAbs: number, dataLength: number, epoch: number, flags: number, crc: number): void {
  const i = index.push();
  index.set(i, COL_SEQ, seq);
  index.set(i, COL_RECORD, recordAbs);
  index.set(i, COL_DATA, dataLength);
  index.set(i, COL_META, epoch * 8 + flags);
  index.set(i, COL_CRC, crc);
}

function rowFlags(index: PackedDeque, i: number): number {
  return index.get(i, COL_META) % 8;
}

function rowEpoch(index: PackedDeque, i: number): number {
  return Math.floor(index.get(i, COL_META) / 8);
}

function setRowFlag(index: PackedDeque, i: number, flag: number): void {
  const meta = index.get(i, COL_META);
  if ((meta % 8 & flag) === 0) index.set(i, COL_META, meta + flag);
}

/** Absolute ring position after row `i`'s record (aligned). */
function rowEndAbs(index: PackedDeque, i: number): number {
  return index.get(i, COL_RECORD) + recordBytes(index.get(i, COL_DATA));
}

/** Bytes a row counts in `pendingBytes`: the data of a write, nothing for a zero range. */
function rowPendingBytes(index: PackedDeque, i: number): number {
  return (rowFlags(index, i) & ROW_ZERO) !== 0 ? 0 : index.get(i, COL_DATA);
}

interface Waiter {
  readonly ready: () => boolean;
  readonly resolve: () => void;
}

function fsyncPolicy(value: unknown): JournalFsyncPolicy {
  if (value === undefined) return 'batch';
  if (value === 'always' || value === 'batch' || value === 'none') return value;
  throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', `journal fsync must be 'always', 'batch' or 'none', got ${String(value)}`);
}

function nonNegativeInteger(name: string, value: unknown, fallback: number, minimum = 0): number {
  if (value === undefined) return fallback;
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < minimum) {
    throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', `journal ${name} must be an integer >= ${minimum}, got ${String(value)}`);
  }
  return value;
}

function writevAll(fd: number, buffers: Buffer[], position: number, callback: (error: Error | null) => void): void {
  fs.writev(fd, buffers, position, (error, written) => {
    if (error) return callback(error);
    let total = 0;
    for (const b of buffers) total += b.length;
    if (written >= total) return callback(null);
    if (written <= 0) return callback(Object.assign(new Error('journal write made no progress'), { code: 'EIO' }));
    const rest: Buffer[] = [];
    let skip = written;
    for (const b of buffers) {
      if (skip >= b.length) {
        skip -= b.length;
        continue;
      }
      rest.push(skip > 0 ? b.subarray(skip) : b);
      skip = 0;
    }
    writevAll(fd, rest, position + written, callback);
  });
}

function writeAll(fd: number, buffer: Buffer, position: number): Promise<void> {
  return new Promise((resolve, reject) => writevAll(fd, [buffer], position, (e) => (e ? reject(e) : resolve())));
}

/** Reads `length` bytes at `position`; bytes beyond the end of the file read as zero. */
function readFully(fd: number, length: number, position: number): Promise<Buffer> {
  return readInto(fd, Buffer.allocUnsafe(length), position);
}

/** Fills `out` from `position`; bytes beyond the end of the file read as zero. */
async function readInto(fd: number, out: Buffer, position: number): Promise<Buffer> {
  const length = out.length;
  let done = 0;
  while (done < length) {
    const n = await new Promise<number>((resolve, reject) =>
      fs.read(fd, out, done, length - done, position + done, (e, bytes) => (e ? reject(e) : resolve(bytes))),
    );
    if (n === 0) break;
    done += n;
  }
  if (done < length) out.fill(0, done);
  return out;
}

function fdatasync(fd: number): Promise<void> {
  return new Promise((resolve, reject) => fs.fdatasync(fd, (e) => (e ? reject(e) : resolve())));
}

function ftruncate(fd: number, length: number): Promise<void> {
  return new Promise((resolve, reject) => fs.ftruncate(fd, length, (e) => (e ? reject(e) : resolve())));
}

function fileSizeOf(fd: number): Promise<number> {
  return new Promise((resolve, reject) => fs.fstat(fd, (e, st) => (e ? reject(e) : resolve(st.size))));
}

function closeFd(fd: number): Promise<void> {
  return new Promise((resolve, reject) => fs.close(fd, (e) => (e ? reject(e) : resolve())));
}


/** What the recovery scan found. */
interface Recovery {
  /** The record index of the valid records found. */
  records: PackedDeque;
  /** Where the space of the first record starts (its wrap marker, if any). */
  tailRegionAbs: number;
  headAbs: number;
  lastSeq: number;
  discarded: string | null;
}

/**
 * A {@link Journal} in a ring file of fixed capacity that survives a crash of
 * the process (and, with `fsync: 'always' | 'batch'`, of the machine): after
 * {@link FileJournal.open} on the same path, {@link FileJournal.pending} yields
 * every record whose append resolved and that was not released (records
 * released shortly before the crash may be replayed again; the target
 * de-duplicates by seq). One process at a time may open a journal file.
 *
 * After an I/O error (write, `fdatasync` or checkpoint) the journal is
 * *failed*: every append not yet durable rejects with the coded error
 * (`BM_ERR_IO`, `BM_ERR_NO_SPACE`, …), later appends are refused with it, and
 * `pending()` / `release()` keep working on the durable records. Close and
 * open it again to continue; none of the rejected records is replayed.
 *
 * @example
 * ```ts
 * const journal = await FileJournal.open('/var/lib/bm/vol0.journal', { capacityBytes: 1 << 30 });
 * for await (const entry of journal.pending()) await resend(entry); // replay after a restart
 * ```
 */
export class FileJournal implements Journal {
  /** Path of the journal file. */
  readonly path: string;
  readonly #fd: number;
  readonly #ring: number;
  readonly #fsync: JournalFsyncPolicy;
  readonly #batchDelayMs: number;
  readonly #checkpointEvery: number;
  readonly #clock: Clock;
  readonly #hooks: FileJournalHooks | undefined;
  readonly #journalId: number;
  readonly #epoch: number;
  readonly #createdAt: number;
  #generation: number;

  /** Records occupying ring space, oldest first: the packed record index (see `COL_*`). */
  readonly #records: PackedDeque;
  /** Where the space of the oldest record in the index starts (its wrap marker, if any). */
  #tailRegionAbs = 0;
  /** Appends not resolved yet, oldest first. */
  readonly #pipeline = new SeqQueue<Append>();
  /** Leading records of the pipeline whose writes completed. */
  #writtenCount = 0;
  /** Highest seq such that it and every earlier pipeline record are written. */
  #writtenSeq = 0;
  /** Highest seq known durable. */
  #durableSeq = 0;
  /** Highest seq covered by a sync already issued. */
  #syncRequestedSeq = 0;
  #syncRunning = false;
  #syncTimer: unknown = null;
  /** Appends waiting for a checkpoint before they may write. */
  readonly #blocked: Append[] = [];

  #headAbs: number;
  /** Start of the live region according to the last durable checkpoint. */
  #checkpointAbs: number;
  #checkpointRunning = false;
  #checkpointAgain = false;
  #releasesSinceCheckpoint = 0;

  #size = 0;
  #pendingBytes = 0;
  #lastSeq: number;
  #highWater = 0;
  #appended = 0;
  #released = 0;
  #syncs = 0;
  #checkpoints = 0;
  readonly #recovered: number;

  #ioInFlight = 0;
  /** Read buffers of `pending()` in use, by their memory: the entries yielded from it not recycled yet, +1 while it is being read. */
  readonly #lent = new WeakMap<ArrayBufferLike, { slab: Buffer; uses: number }>();
  /** Read buffers given back, for later reads. */
  readonly #spare: Buffer[] = [];
  #spareBytes = 0;
  #failure: BlockMirrorError | null = null;
  #closing: Promise<void> | null = null;
  #closed = false;
  readonly #waiters: Waiter[] = [];

  private constructor(
    path: string,
    fd: number,
    superblock: Superblock,
    recovery: Recovery,
    options: {
      fsync: JournalFsyncPolicy;
      batchDelayMs: number;
      checkpointEvery: number;
      clock: Clock;
      hooks: FileJournalHooks | undefined;
    },
  ) {
    this.path = path;
    this.#fd = fd;
    this.#ring = superblock.ringBytes;
    this.#journalId = superblock.journalId;
    this.#epoch = superblock.epoch + 1;
    this.#generation = superblock.generation;
    this.#createdAt = superblock.createdAt;
    this.#fsync = options.fsync;
    this.#batchDelayMs = options.batchDelayMs;
    this.#checkpointEvery = options.checkpointEvery;
    this.#clock = options.clock;
    this.#hooks = options.hooks;
    this.#records = recovery.records;
    this.#tailRegionAbs = recovery.tailRegionAbs;
    for (let i = 0; i < this.#records.length; i++) {
      if ((rowFlags(this.#records, i) & ROW_RELEASED) === 0) {
        this.#size++;
        this.#pendingBytes += rowPendingBytes(this.#records, i);
      }
    }
    while (this.#records.length > 0 && (rowFlags(this.#records, 0) & ROW_RELEASED) !== 0) this.#shiftRecord();
    this.#recovered = this.#size;
    this.#headAbs = recovery.headAbs;
    this.#checkpointAbs = this.#tailAbs;
    this.#lastSeq = recovery.lastSeq;
    this.#durableSeq = this.#writtenSeq = this.#syncRequestedSeq = recovery.lastSeq;
    this.#highWater = this.#headAbs - this.#tailAbs;
  }

  /**
   * Opens the journal at `path`, creating and preallocating (sparse) it when
   * missing. An existing journal is recovered: the unreleased records of the
   * previous run are available through {@link FileJournal.pending}.
   *
   * @throws {BlockMirrorError} `BM_ERR_INVALID_ARGUMENT` for bad options,
   *   `BM_ERR_JOURNAL_CORRUPT` when the file exists but is not a journal (it is
   *   left untouched), `BM_ERR_NOT_SUPPORTED` for a journal of a newer format,
   *   `BM_ERR_IO` / `BM_ERR_NO_SPACE` on I/O errors.
   */
  static async open(path: string, options: FileJournalOptions = {}): Promise<FileJournal> {
    if (typeof path !== 'string' || path.length === 0) {
      throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', 'journal path must be a non-empty string');
    }
    const requested =
      options.capacityBytes === undefined ? undefined : validateCapacity(options.capacityBytes, MIN_CAPACITY);
    const ringBytes = Math.floor((requested ?? DEFAULT_JOURNAL_CAPACITY) / ALIGN) * ALIGN;
    const settings = {
      fsync: fsyncPolicy(options.fsync),
      batchDelayMs: nonNegativeInteger('batchDelayMs', options.batchDelayMs, 0),
      checkpointEvery: nonNegativeInteger('checkpointEvery', options.checkpointEvery, 1024, 1),
      clock: options.clock ?? systemClock,
      hooks: options.hooks,
    };

    let fd: number;
    let created = false;
    try {
      try {
        fd = await new Promise<number>((resolve, reject) =>
          fs.open(path, 'r+', (e, n) => (e ? reject(e) : resolve(n))),
        );
      } catch (error) {
        if ((error as { code?: unknown }).code !== 'ENOENT') throw error;
        fd = await new Promise<number>((resolve, reject) =>
          fs.open(path, 'wx+', 0o600, (e, n) => (e ? reject(e) : resolve(n))),
        );
        created = true;
      }
    } catch (error) {
      throw toBlockMirrorError(error);
    }

    try {
      let superblock = await FileJournal.#readSuperblock(fd, path);
      let recovery: Recovery;
      if (superblock === null) {
        superblock = await FileJournal.#format(fd, ringBytes, 0);
        recovery = { records: new PackedDeque(ROW_STRIDE), tailRegionAbs: 0, headAbs: 0, lastSeq: 0, discarded: null };
      } else {
        const size = await fileSizeOf(fd);
        if (size < RING_START + superblock.ringBytes) await ftruncate(fd, RING_START + superblock.ringBytes);
        recovery = await FileJournal.#recover(fd, superblock);
        if (recovery.discarded !== null) debug('%s: recovery stopped: %s', path, recovery.discarded);
        if (requested !== undefined && ringBytes !== superblock.ringBytes) {
          if (recovery.records.length === 0) {
            debug('%s: re-formatting empty journal from %d to %d bytes', path, superblock.ringBytes, ringBytes);
            superblock = await FileJournal.#format(fd, ringBytes, recovery.lastSeq, superblock.epoch, superblock.generation);
            recovery = { records: new PackedDeque(ROW_STRIDE), tailRegionAbs: 0, headAbs: 0, lastSeq: recovery.lastSeq, discarded: null };
          } else {
            debug('%s: keeping capacity %d (journal not empty), %d requested', path, superblock.ringBytes, ringBytes);
          }
        }
      }
      if (created) await syncParent(path);
      const journal = new FileJournal(path, fd, superblock, recovery, settings);
      debug('%s: open, epoch %d, %d records recovered, lastSeq %d', path, journal.#epoch, recovery.records.length, recovery.lastSeq);
      // The new epoch must be durable before any record of it is written.
      await journal.#writeCheckpoint();
      return journal;
    } catch (error) {
      await closeFd(fd).catch(() => undefined);
      throw toBlockMirrorError(error);
    }
  }

  /**
   * Reads both slots; null when the file is new (at most {@link RING_START} bytes, all zero: created, or a
   * crash during creation); throws for anything else that is not a journal.
   */
  static async #readSuperblock(fd: number, path: string): Promise<Superblock | null> {
    const fileSize = await fileSizeOf(fd);
    const area = await readFully(fd, RING_START, 0);
    let best: Superblock | null = null;
    let empty = 0;
    for (const at of SUPERBLOCK_SLOTS) {
      const result = decodeSuperblock(area.subarray(at, at + SUPERBLOCK_BYTES));
      if (result.ok) {
        if (best === null || result.superblock.generation > best.generation) best = result.superblock;
      } else if (result.reason === 'version') {
        throw new BlockMirrorError('BM_ERR_NOT_SUPPORTED', `journal ${path} has format version ${result.version}`, {
          details: { path, version: result.version },
        });
      } else if (result.reason === 'empty') {
        empty++;
      }
    }
    if (best !== null) return best;
    if (fileSize <= RING_START && empty === SUPERBLOCK_SLOTS.length && area.every((b) => b === 0)) return null;
    throw new BlockMirrorError('BM_ERR_JOURNAL_CORRUPT', `${path} is not a blockmirror journal (no valid superblock)`, {
      details: { path },
    });
  }

  /**
   * Drops the ring and writes a fresh superblock (an empty journal whose seqs continue after `lastSeq`),
   * then extends the file to its full (sparse) size. A crash in between leaves either the old superblock
   * over an empty ring or the new one over a short file (extended at the next open).
   */
  static async #format(fd: number, ringBytes: number, lastSeq: number, epoch = 0, generation = 0): Promise<Superblock> {
    if ((await fileSizeOf(fd)) > RING_START) await ftruncate(fd, RING_START);
    const superblock: Superblock = {
      journalId: randomInt(1, 2 ** 32 - 1),
      ringBytes,
      generation: generation + 1,
      epoch: epoch + 1,
      tailEpoch: 0,
      tailPos: 0,
      tailSeq: 0,
      lastSeq,
      createdAt: Date.now(),
      released: [],
    };
    await writeAll(fd, encodeSuperblock(superblock), SUPERBLOCK_SLOTS[superblock.generation % 2] as number);
    await fdatasync(fd);
    await ftruncate(fd, RING_START + ringBytes);
    return superblock;
  }

  /** Walks the ring from the checkpointed tail, keeping valid, ordered records. */
  static async #recover(fd: number, sb: Superblock): Promise<Recovery> {
    const ring = sb.ringBytes;
    let windowPos = -1;
    let window: Buffer = Buffer.alloc(0);
    const read = async (pos: number, length: number): Promise<Buffer> => {
      if (windowPos < 0 || pos < windowPos || pos + length > windowPos + window.length) {
        const span = Math.min(Math.max(length, READ_CHUNK), ring - pos);
        window = await readFully(fd, span, RING_START + pos);
        windowPos = pos;
      }
      return window.subarray(pos - windowPos, pos - windowPos + length);
    };

    const records = new PackedDeque(ROW_STRIDE);
    let tailRegionAbs = sb.tailPos;
    let pos = sb.tailPos;
    let abs = sb.tailPos;
    let walked = 0;
    let prev: { seq: number; epoch: number } | null = null;
    let pad: { seq: number; epoch: number; abs: number } | null = null;
    let discarded: string;
    for (;;) {
      const header = await read(pos, RECORD_HEADER_BYTES);
      const h = decodeRecordHeader(header);
      if (h === undefined || h.journalId !== sb.journalId || !recordFlagsValid(h.version, h.flags)) {
        discarded = `no valid record header at ${pos}`;
        break;
      }
      const isPad = (h.flags & FLAG_PAD) !== 0;
      let ordered: boolean;
      if (pad !== null) ordered = !isPad && pos === 0 && h.seq === pad.seq && h.epoch === pad.epoch;
      else if (prev !== null) ordered = h.seq > prev.seq && h.epoch >= prev.epoch;
      else if (sb.tailSeq !== 0) ordered = !isPad && h.seq === sb.tailSeq && h.epoch === sb.tailEpoch;
      else ordered = h.epoch === sb.epoch && h.seq > sb.lastSeq;
      if (!ordered) {
        discarded = `record seq ${h.seq} epoch ${h.epoch} at ${pos} is out of order`;
        break;
      }
      if (isPad) {
        const length = ring - pos;
        if (h.dataLength !== 0 || pos === 0 || walked + length > ring - ALIGN || !recordCrcOk(header, 0, Buffer.alloc(0))) {
          discarded = `invalid wrap marker at ${pos}`;
          break;
        }
        pad = { seq: h.seq, epoch: h.epoch, abs };
        walked += length;
        abs += length;
        pos = 0;
        continue;
      }
      const length = recordBytes(h.dataLength);
      if (pos + length > ring || walked + length > ring - ALIGN) {
        discarded = `record seq ${h.seq} at ${pos} has an impossible length ${h.dataLength}`;
        break;
      }
      const whole = await read(pos, RECORD_HEADER_BYTES + h.dataLength);
      const payload = whole.subarray(RECORD_HEADER_BYTES);
      if (!recordCrcOk(whole, 0, payload)) {
        discarded = `record seq ${h.seq} at ${pos} fails its CRC`;
        break;
      }
      const zero = (h.flags & FLAG_ZERO) !== 0;
      const zeroLength = zero ? decodeZeroPayload(payload) : 0;
      if (zeroLength < 0) {
        discarded = `zero record seq ${h.seq} at ${pos} has an invalid length`;
        break;
      }
      const flags = (zero ? ROW_ZERO : 0) | ROW_WRITTEN | (sb.released[records.length] === true ? ROW_RELEASED : 0);
      if (records.length === 0) tailRegionAbs = pad?.abs ?? abs;
      pushRow(records, h.seq, abs, h.dataLength, h.epoch, flags, h.crc);
      prev = h;
      pad = null;
      walked += length;
      abs += length;
      pos = (pos + length) % ring;
    }
    const last = records.length - 1;
    return {
      records,
      tailRegionAbs,
      headAbs: last >= 0 ? rowEndAbs(records, last) : sb.tailPos,
      lastSeq: Math.max(sb.lastSeq, last >= 0 ? records.get(last, COL_SEQ) : 0),
      discarded,
    };
  }

  /** Number of unacknowledged entries. */
  get size(): number {
    return this.#size;
  }

  /** Payload bytes of the unacknowledged entries (zero ranges count 0). */
  get pendingBytes(): number {
    return this.#pendingBytes;
  }

  /** Highest seq ever appended (kept across restarts); 0 if none. */
  get lastSeq(): number {
    return this.#lastSeq;
  }

  get #tailAbs(): number {
    return this.#records.length > 0 ? this.#tailRegionAbs : this.#headAbs;
  }

  /** Where the space of row `i` starts: the end of the previous record (records are contiguous). */
  #regionAbs(i: number): number {
    return i === 0 ? this.#tailRegionAbs : rowEndAbs(this.#records, i - 1);
  }

  /** Drops the oldest row of the index. */
  #shiftRecord(): void {
    this.#tailRegionAbs = rowEndAbs(this.#records, 0);
    this.#records.shift();
  }

  /** Appends a record; resolves once durable per the fsync policy, see {@link Journal.append}. */
  append(entry: JournalEntry): Promise<void> {
    if (this.#closing !== null) return Promise.reject(new BlockMirrorError('BM_ERR_CLOSED', 'journal is closed'));
    if (this.#failure !== null) return Promise.reject(this.#failedError());
    try {
      validateEntry(entry, this.#lastSeq);
    } catch (error) {
      return Promise.reject(error as Error);
    }
    const ring = this.#ring;
    const zero = entry.kind === 'zero';
    // A zero range is stored as its length: one 512-byte slot, whatever it zeroes.
    const data = zero ? encodeZeroPayload(entry.length) : entry.data;
    const dataLength = data.length;
    const length = recordBytes(dataLength);
    const startAbs = this.#headAbs;
    const pos = startAbs % ring;
    const wraps = pos + length > ring;
    const empty = this.#records.length === 0;
    const recordAbs = wraps ? startAbs + (ring - pos) : startAbs;
    // An empty journal needs no wrap marker: the checkpoint forced below points at the record.
    const regionAbs = wraps && empty ? recordAbs : startAbs;
    const endAbs = recordAbs + length;
    const tailAbs = empty ? regionAbs : this.#tailAbs;
    // SPEC 16: full when the record would reach the oldest unreleased one (head = tail - 1):
    // one 512-byte slot always stays free.
    if (endAbs - tailAbs > ring - ALIGN) {
      return Promise.reject(
        new BlockMirrorError('BM_ERR_JOURNAL_FULL', `journal full: record seq ${entry.seq} of ${length} bytes does not fit`, {
          details: {
            seq: entry.seq,
            recordBytes: length,
            usedBytes: this.#headAbs - this.#tailAbs,
            capacityBytes: ring,
          },
        }),
      );
    }
    let minCheckpointAbs = endAbs - (ring - ALIGN);
    if (wraps && empty) minCheckpointAbs = Math.max(minCheckpointAbs, recordAbs);
    const record: Append = {
      kind: zero ? 'zero' : 'write',
      seq: entry.seq,
      offset: entry.offset,
      length: zero ? entry.length : dataLength,
      dataLength,
      fua: entry.fua,
      timestamp: entry.timestamp,
      epoch: this.#epoch,
      recordAbs,
      padAbs: wraps && !empty ? startAbs : -1,
      minCheckpointAbs,
      written: false,
      failed: false,
      data,
      ioLeft: 0,
      resolve: null,
      reject: null,
    };
    const promise = new Promise<void>((resolve, reject) => {
      record.resolve = resolve;
      record.reject = reject;
    });
    if (empty) this.#tailRegionAbs = regionAbs;
    pushRow(this.#records, entry.seq, recordAbs, dataLength, this.#epoch, zero ? ROW_ZERO : 0, 0);
    this.#pipeline.push(record);
    this.#headAbs = endAbs;
    this.#lastSeq = entry.seq;
    this.#size++;
    this.#pendingBytes += payloadLength(entry);
    this.#appended++;
    const used = this.#headAbs - this.#tailAbs;
    if (used > this.#highWater) this.#highWater = used;

    if (this.#blocked.length > 0 || minCheckpointAbs > this.#checkpointAbs) {
      this.#blocked.push(record);
      this.#requestCheckpoint();
    } else {
      this.#startWrite(record);
    }
    return promise;
  }

  #failedError(): BlockMirrorError {
    const failure = this.#failure as BlockMirrorError;
    return new BlockMirrorError(failure.code, `journal failed earlier: ${failure.message}`, { cause: failure });
  }

  #startWrite(record: Append): void {
    const data = record.data as Buffer;
    const header = Buffer.allocUnsafe(RECORD_HEADER_BYTES);
    encodeRecordHeader(
      header,
      {
        flags: (record.fua ? FLAG_FUA : 0) | (record.kind === 'zero' ? FLAG_ZERO : 0),
        journalId: this.#journalId,
        epoch: record.epoch,
        seq: record.seq,
        timestamp: record.timestamp,
        offset: record.offset,
      },
      data,
    );
    const row = this.#records.find(record.seq);
    if (row >= 0) this.#records.set(row, COL_CRC, header.readUInt32LE(RECORD_HEADER_BYTES - 4));
    const position = RING_START + (record.recordAbs % this.#ring);
    record.ioLeft = 1;
    let padHeader: Buffer | null = null;
    if (record.padAbs >= 0) {
      record.ioLeft = 2;
      padHeader = Buffer.allocUnsafe(RECORD_HEADER_BYTES);
      encodeRecordHeader(
        padHeader,
        { flags: FLAG_PAD, journalId: this.#journalId, epoch: record.epoch, seq: record.seq, timestamp: record.timestamp, offset: 0 },
        Buffer.alloc(0),
      );
    }
    this.#ioInFlight += record.ioLeft;
    const done = (error: Error | null): void => {
      this.#ioInFlight--;
      this.#onWriteDone(record, error);
    };
    const hook = this.#hooks?.beforeWrite;
    const issue = (): void => {
      if (record.failed) {
        // The journal failed while the hook ran: write nothing.
        this.#ioInFlight -= record.ioLeft;
        this.#notify();
        return;
      }
      writevAll(this.#fd, [header, data], position, done);
      if (padHeader !== null) writevAll(this.#fd, [padHeader], RING_START + (record.padAbs % this.#ring), done);
    };
    if (hook === undefined) {
      issue();
    } else {
      Promise.resolve()
        .then(() => hook.call(this.#hooks, { seq: record.seq, position }))
        .then(issue, (error: unknown) => {
          const e = error instanceof Error ? error : new Error(String(error));
          for (let i = record.ioLeft; i > 0; i--) done(e);
        });
    }
  }

  #onWriteDone(record: Append, error: Error | null): void {
    if (record.failed) {
      this.#notify();
      return;
    }
    if (error !== null) {
      this.#fail(error, record.seq);
      return;
    }
    if (--record.ioLeft > 0) return;
    record.written = true;
    record.data = null;
    const row = this.#records.find(record.seq);
    if (row >= 0) setRowFlag(this.#records, row, ROW_WRITTEN);
    // Advance the contiguous written prefix of the pipeline.
    for (let next = this.#pipeline.at(this.#writtenCount); next !== undefined && next.written; next = this.#pipeline.at(this.#writtenCount)) {
      this.#writtenSeq = next.seq;
      this.#writtenCount++;
    }
    if (this.#fsync === 'none') {
      this.#durableSeq = this.#writtenSeq;
      this.#resolveDurable();
    } else {
      this.#scheduleSync();
    }
    if (row >= 0 && (rowFlags(this.#records, row) & ROW_RELEASED) !== 0) this.#advanceTail();
    this.#notify();
  }

  #scheduleSync(): void {
    if (this.#writtenSeq <= this.#syncRequestedSeq || this.#failure !== null) return;
    if (this.#fsync === 'always') {
      this.#runSync();
      return;
    }
    if (this.#syncRunning || this.#syncTimer !== null) return;
    if (this.#batchDelayMs > 0 && this.#closing === null) {
      this.#syncTimer = this.#clock.setTimeout(() => {
        this.#syncTimer = null;
        this.#runSync();
      }, this.#batchDelayMs);
    } else {
      this.#runSync();
    }
  }

  #runSync(): void {
    const cover = this.#writtenSeq;
    if (cover <= this.#syncRequestedSeq || this.#failure !== null) return;
    this.#syncRequestedSeq = cover;
    this.#syncRunning = true;
    this.#syncs++;
    this.#ioInFlight++;
    const finish = (error: unknown): void => {
      this.#ioInFlight--;
      this.#syncRunning = false;
      if (error !== null && error !== undefined) {
        this.#fail(error instanceof Error ? error : new Error(String(error)), this.#durableSeq + 1);
        return;
      }
      if (this.#failure === null) {
        if (cover > this.#durableSeq) this.#durableSeq = cover;
        this.#resolveDurable();
        if (this.#fsync === 'batch') this.#scheduleSync();
      }
      this.#notify();
    };
    const hook = this.#hooks?.beforeSync;
    if (hook === undefined) {
      fs.fdatasync(this.#fd, finish);
    } else {
      Promise.resolve()
        .then(() => hook.call(this.#hooks))
        .then(
          () => fs.fdatasync(this.#fd, finish),
          (error: unknown) => finish(error ?? new Error('sync hook failed')),
        );
    }
  }

  #resolveDurable(): void {
    for (let first = this.#pipeline.first(); first !== undefined && first.seq <= this.#durableSeq; first = this.#pipeline.first()) {
      this.#pipeline.shift();
      this.#writtenCount--;
      const resolve = first.resolve;
      first.resolve = first.reject = null;
      resolve?.();
    }
  }

  /** Fails the journal: every unresolved append from `fromSeq` on (and later ones) rejects; appends are refused from now on. */
  #fail(cause: Error, fromSeq: number): void {
    if (this.#failure === null) {
      this.#failure = toBlockMirrorError(cause);
      debug('%s: failed: %s', this.path, cause.message);
    }
    if (this.#syncTimer !== null) {
      this.#clock.clearTimeout(this.#syncTimer);
      this.#syncTimer = null;
    }
    // Everything not yet durable is given up: the chain on disk may be broken there.
    const firstFailed = Math.min(fromSeq, this.#durableSeq + 1);
    const failing: Append[] = [];
    const keep = this.#pipeline.indexAfter(firstFailed - 1);
    for (let i = keep; i < this.#pipeline.length; i++) failing.push(this.#pipeline.at(i) as Append);
    this.#pipeline.truncate(keep);
    this.#writtenCount = Math.min(this.#writtenCount, keep);
    this.#blocked.length = 0;
    if (failing.length > 0) {
      const records = this.#records;
      const cut = records.indexAfter((failing[0] as Append).seq - 1);
      for (let i = cut; i < records.length; i++) {
        if ((rowFlags(records, i) & ROW_RELEASED) === 0) {
          this.#size--;
          this.#pendingBytes -= rowPendingBytes(records, i);
        }
      }
      if (cut < records.length) this.#headAbs = this.#regionAbs(cut);
      records.truncate(cut);
      for (const record of failing) {
        record.failed = true;
        record.data = null;
        const reject = record.reject;
        record.resolve = record.reject = null;
        reject?.(new BlockMirrorError(this.#failure.code, `journal append of seq ${record.seq} failed: ${cause.message}`, {
          cause,
          details: { seq: record.seq },
        }));
      }
    }
    this.#notify();
  }

  /** Marks `seq` acknowledged, see {@link Journal.release}. */
  release(seq: number): void {
    if (this.#closed) return;
    const row = this.#records.find(seq);
    if (row < 0 || (rowFlags(this.#records, row) & ROW_RELEASED) !== 0) return;
    setRowFlag(this.#records, row, ROW_RELEASED);
    this.#size--;
    this.#pendingBytes -= rowPendingBytes(this.#records, row);
    if (this.#size === 0) {
      this.#spare.length = 0;
      this.#spareBytes = 0;
    }
    this.#released++;
    this.#releasesSinceCheckpoint++;
    this.#advanceTail();
  }

  #advanceTail(): void {
    let moved = false;
    const done = ROW_RELEASED | ROW_WRITTEN;
    while (this.#records.length > 0 && (rowFlags(this.#records, 0) & done) === done) {
      this.#shiftRecord();
      moved = true;
    }
    if (!moved || this.#failure !== null || this.#closing !== null) return;
    if (
      this.#releasesSinceCheckpoint >= this.#checkpointEvery ||
      this.#tailAbs - this.#checkpointAbs >= this.#ring / 8
    ) {
      this.#requestCheckpoint();
    }
  }

  #requestCheckpoint(): void {
    if (this.#checkpointRunning) {
      this.#checkpointAgain = true;
      return;
    }
    this.#writeCheckpoint().catch((error: unknown) => {
      this.#fail(error instanceof Error ? error : new Error(String(error)), this.#durableSeq + 1);
    });
  }

  /** Writes the release point to the next superblock slot (and syncs it), then unblocks waiting appends. */
  async #writeCheckpoint(): Promise<void> {
    this.#checkpointRunning = true;
    this.#ioInFlight++;
    try {
      do {
        this.#checkpointAgain = false;
        const records = this.#records;
        const hasTail = records.length > 0;
        const protectAbs = this.#tailAbs;
        const released: boolean[] = [];
        const mapped = Math.min(records.length, RELEASE_MAP_BITS);
        let anyReleased = false;
        for (let i = 0; i < mapped; i++) {
          const r = (rowFlags(records, i) & ROW_RELEASED) !== 0;
          released.push(r);
          anyReleased ||= r;
        }
        this.#releasesSinceCheckpoint = 0;
        this.#generation++;
        const superblock: Superblock = {
          journalId: this.#journalId,
          ringBytes: this.#ring,
          generation: this.#generation,
          epoch: this.#epoch,
          tailEpoch: hasTail ? rowEpoch(records, 0) : 0,
          tailPos: (hasTail ? records.get(0, COL_RECORD) : this.#headAbs) % this.#ring,
          tailSeq: hasTail ? records.get(0, COL_SEQ) : 0,
          lastSeq: this.#lastSeq,
          createdAt: this.#createdAt,
          released: anyReleased ? released : [],
        };
        await writeAll(this.#fd, encodeSuperblock(superblock), SUPERBLOCK_SLOTS[this.#generation % 2] as number);
        if (this.#fsync !== 'none') {
          this.#syncs++;
          await fdatasync(this.#fd);
        }
        this.#checkpoints++;
        this.#hooks?.afterCheckpoint?.({ generation: superblock.generation, tailSeq: superblock.tailSeq });
        if (protectAbs > this.#checkpointAbs) this.#checkpointAbs = protectAbs;
        while (this.#blocked.length > 0 && (this.#blocked[0] as Append).minCheckpointAbs <= this.#checkpointAbs) {
          this.#startWrite(this.#blocked.shift() as Append);
        }
        if (this.#blocked.length > 0) this.#checkpointAgain = true;
      } while (this.#checkpointAgain && this.#failure === null);
    } finally {
      this.#ioInFlight--;
      this.#checkpointRunning = false;
      this.#notify();
    }
  }

  /**
   * The unacknowledged entries, oldest first, read back from the file (CRC-checked) unless still in memory, see
   * {@link Journal.pending}. A zero record reads back as its header and 8-byte length, never as its range.
   *
   * @throws {BlockMirrorError} `BM_ERR_IO` when a record reads back corrupt or the read fails.
   */
  async *pending(afterSeq = 0): AsyncGenerator<PendingJournalEntry, void, undefined> {
    let after = afterSeq;
    // the run of on-disk records read with one read: seq, position and payload length of each
    const seqs: number[] = [];
    const positions: number[] = [];
    const lengths: number[] = [];
    const crcs: number[] = [];
    for (;;) {
      if (this.#closing !== null) throw new BlockMirrorError('BM_ERR_CLOSED', 'journal is closed');
      const records = this.#records;
      let i = records.indexAfter(after);
      while (i < records.length && (rowFlags(records, i) & ROW_RELEASED) !== 0) i++;
      if (i >= records.length) {
        // nothing more to read for now: the spare read buffers go
        this.#spare.length = 0;
        this.#spareBytes = 0;
        return;
      }
      const seq = records.get(i, COL_SEQ);
      if ((rowFlags(records, i) & ROW_WRITTEN) === 0) {
        // still in memory: its write has not completed
        const append = this.#pipeline.find(seq) as Append;
        after = seq;
        yield this.#entry(append, append.data as Buffer);
        continue;
      }
      // Read a run of consecutive on-disk records with one read.
      seqs.length = positions.length = lengths.length = crcs.length = 0;
      const startAbs = records.get(i, COL_RECORD);
      let endAbs = startAbs + RECORD_HEADER_BYTES + records.get(i, COL_DATA);
      let prevEndAbs = rowEndAbs(records, i);
      seqs.push(seq);
      positions.push(startAbs);
      lengths.push(records.get(i, COL_DATA));
      crcs.push(records.get(i, COL_CRC));
      for (let j = i + 1; j < records.length; j++) {
        const recordAbs = records.get(j, COL_RECORD);
        // stop at a record still in memory, one after a wrap marker, or a gap
        if ((rowFlags(records, j) & ROW_WRITTEN) === 0 || recordAbs !== prevEndAbs) break;
        const dataLength = records.get(j, COL_DATA);
        const nextEnd = recordAbs + RECORD_HEADER_BYTES + dataLength;
        const nextEndAbs = rowEndAbs(records, j);
        if (nextEnd - startAbs > PENDING_READ_CHUNK || Math.floor(startAbs / this.#ring) !== Math.floor((nextEndAbs - 1) / this.#ring)) break;
        seqs.push(records.get(j, COL_SEQ));
        positions.push(recordAbs);
        lengths.push(dataLength);
        crcs.push(records.get(j, COL_CRC));
        endAbs = nextEnd;
        prevEndAbs = nextEndAbs;
      }
      const lent = this.#lend(endAbs - startAbs);
      try {
        const chunk = lent.slab.subarray(0, endAbs - startAbs);
        this.#ioInFlight++;
        try {
          await readInto(this.#fd, chunk, RING_START + (startAbs % this.#ring));
        } catch (error) {
          throw toBlockMirrorError(error);
        } finally {
          this.#ioInFlight--;
          this.#notify();
        }
        yield* this.#entriesOf(chunk, startAbs, lent, seqs, positions, lengths, crcs, (seq) => {
          after = seq;
        });
      } finally {
        this.#giveBack(lent);
      }
    }
  }

  /** The entries of the records of one read (`seqs`… of the records in `chunk`), checked against the index. */
  *#entriesOf(
    chunk: Buffer,
    startAbs: number,
    lent: { uses: number },
    seqs: readonly number[],
    positions: readonly number[],
    lengths: readonly number[],
    crcs: readonly number[],
    passed: (seq: number) => void,
  ): Generator<PendingJournalEntry, void, undefined> {
    const count = seqs.length;
    for (let k = 0; k < count; k++) {
      if (this.#closing !== null) throw new BlockMirrorError('BM_ERR_CLOSED', 'journal is closed');
      const rseq = seqs[k] as number;
      passed(rseq);
      // released meanwhile (gone from the index, or flagged)
      const row = this.#records.find(rseq);
      if (row < 0 || (rowFlags(this.#records, row) & ROW_RELEASED) !== 0) continue;
      const zero = (rowFlags(this.#records, row) & ROW_ZERO) !== 0;
      const dataLength = lengths[k] as number;
      const at = (positions[k] as number) - startAbs;
      const h = decodeRecordHeader(chunk, at);
      const payload = chunk.subarray(at + RECORD_HEADER_BYTES, at + RECORD_HEADER_BYTES + dataLength);
      const zeroLength = zero ? decodeZeroPayload(payload) : 0;
      if (
        h === undefined ||
        h.seq !== rseq ||
        h.crc !== crcs[k] ||
        h.dataLength !== dataLength ||
        ((h.flags & FLAG_ZERO) !== 0) !== zero ||
        !recordCrcOk(chunk, at, payload) ||
        zeroLength < 0
      ) {
        throw new BlockMirrorError('BM_ERR_IO', `journal record seq ${rseq} reads back corrupt`, {
          details: { path: this.path, seq: rseq, position: (positions[k] as number) % this.#ring },
        });
      }
      if (!zero) lent.uses++;
      yield pendingEntry(zero ? 'zero' : 'write', rseq, h.offset, zero ? zeroLength : dataLength, payload, (h.flags & FLAG_FUA) !== 0, h.timestamp);
    }
  }

  /**
   * The caller is done with the `data` of a write entry yielded by
   * {@link FileJournal.pending}: nothing references those bytes any more, so
   * the memory they were read into may hold later reads (instead of waiting
   * for the garbage collector). Call it at most once per entry, and never for
   * bytes still in use; other buffers are ignored. See {@link Journal.recycle}.
   */
  recycle(data: Uint8Array): void {
    const lent = this.#lent.get(data.buffer);
    if (lent !== undefined && lent.uses > 0) this.#giveBack(lent);
  }

  /** A read buffer of at least `length` bytes (a spare one if one fits), lent with one use: the read. */
  #lend(length: number): { slab: Buffer; uses: number } {
    let slab: Buffer | undefined;
    for (let i = 0; i < this.#spare.length; i++) {
      const spare = this.#spare[i] as Buffer;
      if (spare.length >= length && spare.length <= 2 * length + READ_SLAB) {
        slab = spare;
        this.#spare.splice(i, 1);
        this.#spareBytes -= spare.length;
        break;
      }
    }
    slab ??= Buffer.allocUnsafeSlow(Math.ceil(length / READ_SLAB) * READ_SLAB);
    const lent = { slab, uses: 1 };
    this.#lent.set(slab.buffer, lent);
    return lent;
  }

  /** Drops one use of a read buffer; unused, it becomes a spare (or goes to the garbage collector). */
  #giveBack(lent: { slab: Buffer; uses: number }): void {
    if (lent.uses > 1) {
      lent.uses--;
      return;
    }
    lent.uses = 0;
    this.#lent.delete(lent.slab.buffer);
    // (none kept once nothing is pending: nothing will be read)
    if (this.#spareBytes + lent.slab.length > SPARE_READ_BYTES || this.#closing !== null || this.#size === 0) return;
    this.#spare.push(lent.slab);
    this.#spareBytes += lent.slab.length;
  }

  #entry(record: Append, data: Buffer): PendingJournalEntry {
    return pendingEntry(record.kind, record.seq, record.offset, record.length, data, record.fua, record.timestamp);
  }

  /** A snapshot of the counters, with the file-specific ones. */
  stats(): FileJournalStats {
    return {
      entries: this.#records.length,
      usedBytes: this.#headAbs - this.#tailAbs,
      capacityBytes: this.#ring,
      highWaterBytes: this.#highWater,
      appended: this.#appended,
      released: this.#released,
      syncs: this.#syncs,
      checkpoints: this.#checkpoints,
      recovered: this.#recovered,
      epoch: this.#epoch,
      failed: this.#failure !== null,
    };
  }

  #notify(): void {
    for (let i = 0; i < this.#waiters.length; ) {
      const waiter = this.#waiters[i] as Waiter;
      if (waiter.ready()) {
        this.#waiters.splice(i, 1);
        waiter.resolve();
      } else {
        i++;
      }
    }
  }

  #until(ready: () => boolean): Promise<void> {
    if (ready()) return Promise.resolve();
    return new Promise((resolve) => this.#waiters.push({ ready, resolve }));
  }

  /**
   * Waits for the appends in progress (they resolve or reject as usual), writes
   * a final checkpoint of the release point and closes the file. Idempotent.
   */
  close(): Promise<void> {
    // Deferred by a microtask so that #closing is set before #close runs.
    this.#closing ??= Promise.resolve().then(() => this.#close());
    return this.#closing;
  }

  async #close(): Promise<void> {
    if (this.#syncTimer !== null) {
      this.#clock.clearTimeout(this.#syncTimer);
      this.#syncTimer = null;
      this.#scheduleSync();
    }
    await this.#until(() => this.#pipeline.length === 0 && !this.#checkpointRunning && this.#ioInFlight === 0);
    try {
      if (this.#failure !== null) {
        // Best effort: make sure no record of a failed append is found after the head.
        await writeAll(this.#fd, Buffer.alloc(RECORD_HEADER_BYTES), RING_START + (this.#headAbs % this.#ring));
      }
      await this.#writeCheckpoint();
    } catch (error) {
      debug('%s: final checkpoint failed: %s', this.path, (error as Error).message);
    }
    await this.#until(() => this.#ioInFlight === 0);
    this.#closed = true;
    try {
      await closeFd(this.#fd);
    } catch (error) {
      throw toBlockMirrorError(error);
    }
    debug('%s: closed', this.path);
  }
}
