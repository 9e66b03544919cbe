/**
 * Helpers shared by the journal tests and the crash-writer fixture.
 */
import assert from 'node:assert/strict';
import type {
  Journal,
  JournalEntry,
  JournalWriteEntry,
  JournalZeroEntry,
  PendingJournalEntry,
} from '../../src/journal/journal.js';

export { prng } from '../helpers/prng.js';

/** A deterministic write entry: payload bytes derived from seq. */
export function makeEntry(seq: number, length: number, options: { fua?: boolean; offset?: number } = {}): JournalWriteEntry {
  const data = Buffer.allocUnsafe(length);
  let x = (seq * 2654435761) >>> 0;
  for (let i = 0; i < length; i++) {
    x = (x * 1103515245 + 12345) >>> 0;
    data[i] = x >>> 24;
  }
  return {
    seq,
    offset: options.offset ?? seq * 4096,
    data,
    fua: options.fua ?? seq % 3 === 0,
    timestamp: 1_700_000_000_000 + seq + 0.25,
  };
}

/** A deterministic zero-range entry of `length` bytes (fua, offset and timestamp derived from seq as in {@link makeEntry}). */
export function makeZero(seq: number, length: number, options: { fua?: boolean; offset?: number } = {}): JournalZeroEntry {
  return {
    kind: 'zero',
    seq,
    offset: options.offset ?? seq * 4096,
    length,
    fua: options.fua ?? seq % 3 === 0,
    timestamp: 1_700_000_000_000 + seq + 0.25,
  };
}

/** Payload bytes of an entry (0 for a zero range). */
export function payloadOf(entry: JournalEntry): number {
  return entry.kind === 'zero' ? 0 : entry.data.length;
}

/** Collects `journal.pending(afterSeq)`. */
export async function collect(journal: Journal, afterSeq?: number): Promise<PendingJournalEntry[]> {
  const out: PendingJournalEntry[] = [];
  for await (const entry of journal.pending(afterSeq)) out.push(entry);
  return out;
}

/**
 * Asserts that `actual` (as yielded by `pending()`) equals `expected` (as appended) field by field: kind, length and
 * data included (a zero entry must come with an empty `data`).
 */
export function assertEntries(actual: readonly PendingJournalEntry[], expected: readonly JournalEntry[], message?: string): void {
  assert.deepEqual(
    actual.map((e) => e.seq),
    expected.map((e) => e.seq),
    message,
  );
  for (let i = 0; i < expected.length; i++) {
    const a = actual[i] as PendingJournalEntry;
    const e = expected[i] as JournalEntry;
    assert.equal(a.kind, e.kind ?? 'write', `kind of seq ${e.seq}`);
    assert.equal(a.offset, e.offset, `offset of seq ${e.seq}`);
    assert.equal(a.fua, e.fua, `fua of seq ${e.seq}`);
    assert.equal(a.timestamp, e.timestamp, `timestamp of seq ${e.seq}`);
    assert.ok(Buffer.isBuffer(a.data), `data of seq ${e.seq} is a Buffer`);
    if (e.kind === 'zero') {
      assert.equal(a.length, e.length, `length of zero seq ${e.seq}`);
      assert.equal(a.data.length, 0, `zero seq ${e.seq} carries no data`);
    } else {
      assert.equal(a.length, e.data.length, `length of seq ${e.seq}`);
      assert.ok(a.data.equals(e.data), `data of seq ${e.seq}`);
    }
  }
}


/**
 * The entry the crash-writer fixture appends for `seq`: every fifth one a zero range (up to about 8 GiB),
 * the others writes of 0 … 4000 bytes.
 */
export function crashEntry(seq: number): JournalEntry {
  if (seq % 5 === 0) return makeZero(seq, ((seq * 7919) % 4001) * 2 ** 21 + (seq % 512));
  return makeEntry(seq, (seq * 7919) % 4001);
}
