/**
 * {@link MemoryJournal}: a volatile {@link Journal} held in memory.
 *
 * @module
 */

import { BlockMirrorError } from '../errors.js';
import type { Journal, JournalEntry, JournalStats, PendingJournalEntry } from './journal.js';
import { NO_PAYLOAD, payloadLength, pendingEntry, validateCapacity, validateEntry } from './journal.js';
import { SeqQueue } from './seq-queue.js';

/** Options of {@link MemoryJournal}. */
export interface MemoryJournalOptions {
  /**
   * Journal space in bytes. Each record occupies its payload length (0 for a
   * zero range, whatever its length) plus {@link MEMORY_RECORD_OVERHEAD}
   * bytes. At least 1024.
   */
  capacityBytes: number;
}

/** Bytes of journal space a {@link MemoryJournal} charges per record on top of its payload. */
export const MEMORY_RECORD_OVERHEAD = 64;

interface MemoryRecord {
  readonly kind: 'write' | 'zero';
  readonly seq: number;
  readonly offset: number;
  /** Volume bytes covered (the zeroed length of a zero range). */
  readonly length: number;
  /** The payload (empty for a zero range). */
  readonly data: Buffer;
  readonly fua: boolean;
  readonly timestamp: number;
  released: boolean;
}

/**
 * A {@link Journal} kept in memory: nothing survives the process. For tests and
 * for volumes configured without a journal directory. Appends resolve at once
 * (in a microtask); the payload buffers are referenced, not copied; a zero
 * range is kept as its length, never as a buffer.
 *
 * @example
 * ```ts
 * const journal = new MemoryJournal({ capacityBytes: 64 * 1024 * 1024 });
 * await journal.append({ seq: 1, offset: 0, data, fua: false, timestamp: Date.now() });
 * for await (const entry of journal.pending()) send(entry);
 * journal.release(1);
 * ```
 */
export class MemoryJournal implements Journal {
  readonly #capacity: number;
  readonly #records = new SeqQueue<MemoryRecord>();
  #usedBytes = 0;
  #highWater = 0;
  #size = 0;
  #pendingBytes = 0;
  #lastSeq = 0;
  #appended = 0;
  #released = 0;
  #closed = false;

  /** @throws {BlockMirrorError} `BM_ERR_INVALID_ARGUMENT` for a bad `capacityBytes`. */
  constructor(options: MemoryJournalOptions) {
    this.#capacity = validateCapacity(options?.capacityBytes, 1024);
  }

  /** Number of unacknowledged entries. */
  get size(): number {
    return this.#size;
  }

  /** Payload bytes of the unacknowledged entries (zero ranges count 0). */
  get pendingBytes(): number {
    return this.#pendingBytes;
  }

  /** Highest seq ever appended; 0 if none. */
  get lastSeq(): number {
    return this.#lastSeq;
  }

  /** Appends a record (resolves in a microtask), see {@link Journal.append}. */
  async append(entry: JournalEntry): Promise<void> {
    if (this.#closed) throw new BlockMirrorError('BM_ERR_CLOSED', 'journal is closed');
    validateEntry(entry, this.#lastSeq);
    const payload = payloadLength(entry);
    const footprint = payload + MEMORY_RECORD_OVERHEAD;
    if (this.#usedBytes + footprint > this.#capacity) {
      throw new BlockMirrorError('BM_ERR_JOURNAL_FULL', `journal full: record of ${footprint} bytes does not fit`, {
        details: { seq: entry.seq, recordBytes: footprint, usedBytes: this.#usedBytes, capacityBytes: this.#capacity },
      });
    }
    this.#records.push({
      kind: entry.kind === 'zero' ? 'zero' : 'write',
      seq: entry.seq,
      offset: entry.offset,
      length: entry.kind === 'zero' ? entry.length : payload,
      data: entry.kind === 'zero' ? NO_PAYLOAD : entry.data,
      fua: entry.fua,
      timestamp: entry.timestamp,
      released: false,
    });
    this.#lastSeq = entry.seq;
    this.#usedBytes += footprint;
    if (this.#usedBytes > this.#highWater) this.#highWater = this.#usedBytes;
    this.#size++;
    this.#pendingBytes += payload;
    this.#appended++;
  }

  /** Marks `seq` acknowledged, see {@link Journal.release}. */
  release(seq: number): void {
    if (this.#closed) return;
    const record = this.#records.find(seq);
    if (record === undefined || record.released) return;
    record.released = true;
    this.#size--;
    this.#pendingBytes -= record.data.length;
    this.#released++;
    for (let first = this.#records.first(); first !== undefined && first.released; first = this.#records.first()) {
      this.#records.shift();
      this.#usedBytes -= first.data.length + MEMORY_RECORD_OVERHEAD;
    }
  }

  /** The unacknowledged entries, oldest first, see {@link Journal.pending}. */
  async *pending(afterSeq = 0): AsyncGenerator<PendingJournalEntry, void, undefined> {
    let after = afterSeq;
    for (;;) {
      if (this.#closed) throw new BlockMirrorError('BM_ERR_CLOSED', 'journal is closed');
      let i = this.#records.indexAfter(after);
      let record = this.#records.at(i);
      while (record !== undefined && record.released) record = this.#records.at(++i);
      if (record === undefined) return;
      after = record.seq;
      yield pendingEntry(record.kind, record.seq, record.offset, record.length, record.data, record.fua, record.timestamp);
    }
  }

  /** A snapshot of the counters. */
  stats(): JournalStats {
    return {
      entries: this.#records.length,
      usedBytes: this.#usedBytes,
      capacityBytes: this.#capacity,
      highWaterBytes: this.#highWater,
      appended: this.#appended,
      released: this.#released,
    };
  }

  /** Closes the journal; later calls are refused with `BM_ERR_CLOSED`. Idempotent. */
  async close(): Promise<void> {
    this.#closed = true;
  }
}
