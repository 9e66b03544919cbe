/**
 * The per-volume journal: the primary appends every mirrored write before (or
 * while) sending it to the target, frees a record only when the target has
 * acknowledged it, and replays the unacknowledged records in FIFO order after
 * a link outage or a crash (SPEC 14–19).
 *
 * Two implementations: {@link MemoryJournal} (volatile, for tests and volumes
 * without a journal directory) and {@link FileJournal} (a crash-safe ring file).
 *
 * @module
 */

import { BlockMirrorError } from '../errors.js';

/** Fields shared by every kind of {@link JournalEntry}. */
export interface JournalEntryBase {
  /**
   * Sequence number of the request in the volume's replication stream: a
   * positive safe integer, strictly increasing from one append to the next
   * (gaps are allowed), whatever the kind of entry.
   */
  seq: number;
  /** Byte offset of the request in the volume (a non-negative safe integer). */
  offset: number;
  /** The request carried FUA (force unit access). */
  fua: boolean;
  /** When the request was accepted (milliseconds; any finite number, stored as a float64). */
  timestamp: number;
}

/**
 * A journaled write: its payload is kept in the journal. The default kind: an
 * entry without `kind` is a write.
 */
export interface JournalWriteEntry extends JournalEntryBase {
  /** `'write'` (or absent). */
  kind?: 'write';
  /**
   * The written bytes. The journal keeps a reference (no copy): the caller must
   * not modify the buffer after `append()`. Entries yielded by
   * {@link Journal.pending} carry buffers the caller must not modify either.
   */
  data: Buffer;
}

/**
 * A journaled zero / TRIM of `length` bytes at `offset`: a range record
 * without payload. It occupies the journal space of an empty write (its
 * header), whatever its length, and adds nothing to
 * {@link Journal.pendingBytes}.
 *
 * @example
 * ```ts
 * await journal.append({ kind: 'zero', seq, offset, length: 5 * 2 ** 30, fua: false, timestamp: Date.now() });
 * ```
 */
export interface JournalZeroEntry extends JournalEntryBase {
  /** `'zero'`: discriminates this kind. */
  kind: 'zero';
  /**
   * Bytes zeroed from `offset`: any non-negative safe integer (up to
   * `Number.MAX_SAFE_INTEGER`; more than 4 GiB is fine, nothing of that size
   * is ever allocated).
   */
  length: number;
  /**
   * No payload: omit it on `append()` (an empty buffer is accepted, anything
   * else is refused). Entries yielded by {@link Journal.pending} carry an
   * empty buffer here only so that code reading `data` keeps compiling: test
   * `kind` first.
   */
  data?: Buffer;
}

/**
 * An entry to append: a {@link JournalWriteEntry} (`kind` absent or
 * `'write'`) or a {@link JournalZeroEntry} (`kind: 'zero'`).
 */
export type JournalEntry = JournalWriteEntry | JournalZeroEntry;

/** A write as yielded by {@link Journal.pending}: `kind` and `length` (= `data.length`) are always set. */
export interface PendingWriteEntry extends JournalWriteEntry {
  kind: 'write';
  /** Bytes covered in the volume: `data.length`. */
  length: number;
}

/** A zero range as yielded by {@link Journal.pending}: `data` is always an empty buffer (no payload). */
export interface PendingZeroEntry extends JournalZeroEntry {
  /** Always empty (see {@link JournalZeroEntry.data}). */
  data: Buffer;
}

/**
 * An entry yielded by {@link Journal.pending}: `kind` tells a write (payload
 * in `data`) from a zero range (no payload, `data` empty); `length` is the
 * number of volume bytes covered for both. A zero entry is never materialized
 * as zero bytes.
 */
export type PendingJournalEntry = PendingWriteEntry | PendingZeroEntry;

/** The shared empty payload of zero entries yielded by {@link Journal.pending}. @internal */
export const NO_PAYLOAD: Buffer = Buffer.alloc(0);

/** Payload bytes of an entry that passed {@link validateEntry} (0 for a zero range). @internal */
export function payloadLength(entry: JournalEntry): number {
  return entry.kind === 'zero' ? 0 : entry.data.length;
}

/** The {@link PendingJournalEntry} of a record. @internal */
export function pendingEntry(
  kind: 'write' | 'zero',
  seq: number,
  offset: number,
  length: number,
  data: Buffer,
  fua: boolean,
  timestamp: number,
): PendingJournalEntry {
  return kind === 'zero'
    ? { kind, seq, offset, length, data: NO_PAYLOAD, fua, timestamp }
    : { kind, seq, offset, length: data.length, data, fua, timestamp };
}

/** Counters of a {@link Journal}. */
export interface JournalStats {
  /**
   * Records occupying journal space: the unacknowledged ones plus the
   * acknowledged ones that cannot be reclaimed yet because an older record is
   * still unacknowledged.
   */
  entries: number;
  /** Bytes of journal space occupied by those records (including per-record overhead). */
  usedBytes: number;
  /** Total journal space in bytes. */
  capacityBytes: number;
  /** Highest `usedBytes` seen since the journal was opened. */
  highWaterBytes: number;
  /** Records appended (accepted) since the journal was opened. */
  appended: number;
  /** Records acknowledged through `release()` since the journal was opened. */
  released: number;
}

/**
 * A durable (or volatile) FIFO of mirrored writes and zero ranges, freed by
 * target acknowledgements.
 *
 * Contract (checked by the shared suite in `test/journal/journal-suite.ts`):
 * - `append()` validates synchronously: a bad entry or a `seq` not greater
 *   than every earlier one rejects with `BM_ERR_INVALID_ARGUMENT`, a record
 *   that does not fit rejects with `BM_ERR_JOURNAL_FULL`; in both cases nothing
 *   was written and the journal is unchanged. An accepted record counts in
 *   `size`/`pendingBytes` and shows in `pending()` at once, even before its
 *   append resolves.
 * - Appends resolve in the order they were made.
 * - `release()` may come in any order; space is reclaimed from the oldest end
 *   only as far as every record is acknowledged.
 * - After `close()`, `append()` rejects with `BM_ERR_CLOSED` and `pending()`
 *   throws `BM_ERR_CLOSED`; `release()` is ignored.
 */
export interface Journal {
  /**
   * Appends a record: a write (`{ seq, offset, data, fua, timestamp }`, `kind`
   * absent or `'write'`) or a zero range (`{ kind: 'zero', seq, offset,
   * length, fua, timestamp }`, no `data`). Resolves once it is durable per the
   * journal's fsync policy (at once for a {@link MemoryJournal}).
   *
   * @throws {BlockMirrorError} `BM_ERR_JOURNAL_FULL` when the record does not fit
   *   (nothing is written), `BM_ERR_INVALID_ARGUMENT` for a bad entry or a `seq`
   *   that is not strictly increasing, `BM_ERR_CLOSED` after `close()`,
   *   `BM_ERR_IO` / `BM_ERR_NO_SPACE` when the storage failed.
   */
  append(entry: JournalEntry): Promise<void>;
  /**
   * Marks `seq` acknowledged by the target. Acknowledgements may arrive out of
   * order; space is reclaimed from the oldest end as far as everything is
   * acknowledged. An unknown or already released `seq` is ignored.
   */
  release(seq: number): void;
  /**
   * The unacknowledged entries, oldest first (FIFO), writes and zero ranges
   * interleaved as appended, write data included (read from disk for a
   * {@link FileJournal}); a zero entry comes as `{ kind: 'zero', length }`
   * with an empty `data`, never as a buffer of zeros. The iteration is live:
   * entries released before they are reached are skipped, entries appended
   * meanwhile are included.
   *
   * @param afterSeq Start after this sequence number (default 0: from the oldest).
   */
  pending(afterSeq?: number): AsyncIterable<PendingJournalEntry>;
  /**
   * Optional: the caller is done with the `data` of a write entry yielded by
   * {@link Journal.pending} — nothing references those bytes any more — so
   * the journal may read later entries into that memory instead of leaving
   * it to the garbage collector ({@link FileJournal} does). Call it at most
   * once per entry, and never while the bytes are still in use (queued for a
   * socket, say); a buffer the journal did not yield is ignored.
   */
  recycle?(data: Uint8Array): void;
  /** Number of unacknowledged entries (zero entries included). */
  readonly size: number;
  /**
   * Payload bytes of the unacknowledged entries: the `data` bytes of the
   * writes; zero entries count 0, whatever their length.
   */
  readonly pendingBytes: number;
  /** Highest `seq` ever appended (survives a restart for a `FileJournal`); 0 if none. */
  readonly lastSeq: number;
  /** A snapshot of the counters. */
  stats(): JournalStats;
  /** Waits for appends in progress, persists the release point and releases resources. Idempotent. */
  close(): Promise<void>;
}

/** @internal Checks an entry against the journal's last seq; throws `BM_ERR_INVALID_ARGUMENT`. */
export function validateEntry(entry: JournalEntry, lastSeq: number): void {
  if (entry === null || typeof entry !== 'object') {
    throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', 'journal entry must be an object');
  }
  const { seq, offset, fua, timestamp } = entry;
  const kind: unknown = entry.kind;
  if (!Number.isSafeInteger(seq) || seq <= 0) {
    throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', `journal entry seq must be a positive safe integer, got ${String(seq)}`, {
      details: { seq },
    });
  }
  if (seq <= lastSeq) {
    throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', `journal entry seq ${seq} is not greater than the last seq ${lastSeq}`, {
      details: { seq, lastSeq },
    });
  }
  if (!Number.isSafeInteger(offset) || offset < 0) {
    throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', `journal entry offset must be a non-negative safe integer, got ${String(offset)}`, {
      details: { seq, offset },
    });
  }
  if (kind === 'zero') {
    const { length, data } = entry as JournalZeroEntry;
    if (!Number.isSafeInteger(length) || length < 0) {
      throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', `journal zero entry length must be a non-negative safe integer, got ${String(length)}`, {
        details: { seq, length },
      });
    }
    if (data !== undefined && !(Buffer.isBuffer(data) && data.length === 0)) {
      throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', 'journal zero entry must not carry data', { details: { seq } });
    }
  } else if (kind === undefined || kind === 'write') {
    if (!Buffer.isBuffer((entry as JournalWriteEntry).data)) {
      throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', 'journal entry data must be a Buffer', { details: { seq } });
    }
  } else {
    throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', `journal entry kind must be 'write' or 'zero', got ${String(kind)}`, {
      details: { seq },
    });
  }
  if (typeof fua !== 'boolean') {
    throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', 'journal entry fua must be a boolean', { details: { seq } });
  }
  if (typeof timestamp !== 'number' || !Number.isFinite(timestamp)) {
    throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', 'journal entry timestamp must be a finite number', { details: { seq } });
  }
}

/** @internal Checks a capacity option. */
export function validateCapacity(capacityBytes: unknown, minimum: number): number {
  if (typeof capacityBytes !== 'number' || !Number.isSafeInteger(capacityBytes) || capacityBytes < minimum) {
    throw new BlockMirrorError(
      'BM_ERR_INVALID_ARGUMENT',
      `journal capacityBytes must be a safe integer >= ${minimum}, got ${String(capacityBytes)}`,
      { details: { capacityBytes, minimum } },
    );
  }
  return capacityBytes;
}
