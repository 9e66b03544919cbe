/**
 * Helpers shared by the journal tests and the crash-writer fixture.
 */
import assert from 'node:assert/strict';
import type { Journal, JournalEntry } from '../../src/journal/journal.js';

/** Deterministic PRNG (mulberry32). */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** A deterministic entry: payload bytes derived from seq. */
export function makeEntry(seq: number, length: number, options: { fua?: boolean; offset?: number } = {}): JournalEntry {
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

/** Collects `journal.pending(afterSeq)`. */
export async function collect(journal: Journal, afterSeq?: number): Promise<JournalEntry[]> {
  const out: JournalEntry[] = [];
  for await (const entry of journal.pending(afterSeq)) out.push(entry);
  return out;
}

/** Asserts that `actual` equals `expected` field by field, data included. */
export function assertEntries(actual: readonly JournalEntry[], expected: readonly JournalEntry[], message?: string): void {
  assert.deepEqual(
    actual.map((e) => e.seq),
    expected.map((e) => e.seq),
    message,
  );
  for (let i = 0; i < expected.length; i++) {
    const a = actual[i] as JournalEntry;
    const e = expected[i] as JournalEntry;
    assert.equal(a.offset, e.offset, `offset of seq ${e.seq}`);
    assert.equal(a.fua, e.fua, `fua of seq ${e.seq}`);
    assert.equal(a.timestamp, e.timestamp, `timestamp of seq ${e.seq}`);
    assert.ok(Buffer.isBuffer(a.data), `data of seq ${e.seq} is a Buffer`);
    assert.ok(a.data.equals(e.data), `data of seq ${e.seq}`);
  }
}


/** The entry the crash-writer fixture appends for `seq` (sizes 0 … 4000 bytes). */
export function crashEntry(seq: number): JournalEntry {
  return makeEntry(seq, (seq * 7919) % 4001);
}
