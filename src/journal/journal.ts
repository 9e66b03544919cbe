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

/** One journaled write. */
export interface JournalEntry {
  /**
   * Sequence number of the write in the volume's replication stream: a
   * positive safe integer, strictly increasing from one append to the next
   * (gaps are allowed).
   */
  seq: number;
  /** Byte offset of the write in the volume (a non-negative safe integer). */
  offset: number;
  /**
   * The written bytes. The journal keeps a reference (no copy): the caller must
   * not modify the buffer after `append()`. Entries yielded by
   * {@link Journal.pending} carry buffers the caller must not modify either.
   */
  data: Buffer;
  /** The write carried FUA (force unit access). */
  fua: boolean;
  /** When the write was accepted (milliseconds; any finite number, stored as a float64). */
  timestamp: number;
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
 * A durable (or volatile) FIFO of mirrored writes, freed by target
 * acknowledgements.
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
   * Appends a record; resolves once it is durable per the journal's fsync
   * policy (at once for a {@link MemoryJournal}).
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
   * The unacknowledged entries, oldest first (FIFO), data included (read from
   * disk for a {@link FileJournal}). The iteration is live: entries released
   * before they are reached are skipped, entries appended meanwhile are
   * included.
   *
   * @param afterSeq Start after this sequence number (default 0: from the oldest).
   */
  pending(afterSeq?: number): AsyncIterable<JournalEntry>;
  /** Number of unacknowledged entries. */
  readonly size: number;
  /** Payload bytes of the unacknowledged entries. */
  readonly pendingBytes: number;
  /** Highest `seq` ever appended (survives a restart for a {@link FileJournal}); 0 if none. */
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
  const { seq, offset, data, fua, timestamp } = entry;
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
  if (!Buffer.isBuffer(data)) {
    throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', 'journal entry data must be a Buffer', { details: { seq } });
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
