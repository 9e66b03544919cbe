/**
 * The shared behaviour suite of {@link Journal} implementations: registered
 * once per implementation by the `*.test.ts` files of this folder.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { isBlockMirrorError } from '../../src/errors.js';
import type { ErrorCode } from '../../src/errors.js';
import type { Journal, JournalEntry } from '../../src/journal/journal.js';
import { assertEntries, collect, makeEntry, makeZero, payloadOf, prng } from './helpers.js';

/** Options of {@link journalSuite}. */
export interface JournalSuiteOptions {
  /** Title of the test group. */
  name: string;
  /** Creates an empty journal of (about) `capacityBytes` of space. */
  create(capacityBytes: number): Promise<Journal>;
  /** Journal space occupied by a write record with `dataLength` payload bytes (a zero range takes `footprint(0)`). */
  footprint(dataLength: number): number;
  /** Space that always stays free (the file ring keeps one 512-byte slot free: head = tail - 1). */
  reserveBytes: number;
}

async function rejectsWith(promise: Promise<unknown>, code: ErrorCode): Promise<void> {
  await assert.rejects(promise, (error: unknown) => {
    assert.ok(isBlockMirrorError(error, code), `expected ${code}, got ${String(error)}`);
    return true;
  });
}

/** Registers the shared journal tests for one implementation. */
export function journalSuite(options: JournalSuiteOptions): void {
  const { create, footprint } = options;

  describe(`${options.name}: shared journal behaviour`, () => {
    it('starts empty', async () => {
      const journal = await create(64 * 1024);
      try {
        assert.equal(journal.size, 0);
        assert.equal(journal.pendingBytes, 0);
        assert.equal(journal.lastSeq, 0);
        assert.deepEqual(await collect(journal), []);
        const stats = journal.stats();
        assert.equal(stats.entries, 0);
        assert.equal(stats.usedBytes, 0);
        assert.equal(stats.highWaterBytes, 0);
        assert.equal(stats.appended, 0);
        assert.equal(stats.released, 0);
        assert.ok(stats.capacityBytes > 0 && stats.capacityBytes <= 64 * 1024);
      } finally {
        await journal.close();
      }
    });

    it('SPEC 14: pending() yields the unacknowledged entries in FIFO order with their data', async () => {
      const journal = await create(256 * 1024);
      try {
        const random = prng(14);
        const entries: JournalEntry[] = [];
        let seq = 0;
        for (let i = 0; i < 60; i++) {
          seq += 1 + Math.floor(random() * 3); // gaps are allowed
          // A quarter are zero ranges, some of them beyond 4 GiB.
          const r = random();
          if (r < 0.15) entries.push(makeZero(seq, Math.floor(random() * 1_000_000)));
          else if (r < 0.25) entries.push(makeZero(seq, 2 ** 32 + Math.floor(random() * 2 ** 40)));
          else entries.push(makeEntry(seq, Math.floor(random() * 3000)));
        }
        entries.push(makeEntry(++seq, 0)); // empty payload
        entries.push(makeZero(++seq, 0)); // empty range
        for (const entry of entries) await journal.append(entry);
        assert.equal(journal.size, entries.length);
        assert.equal(journal.pendingBytes, entries.reduce((n, e) => n + payloadOf(e), 0));
        assert.equal(journal.lastSeq, seq);
        assertEntries(await collect(journal), entries);
        // pending() can be read again and can start after a seq.
        assertEntries(await collect(journal), entries);
        const from = entries[20] as JournalEntry;
        assertEntries(await collect(journal, from.seq), entries.slice(21));
        assertEntries(await collect(journal, from.seq - 1), entries.slice(20));
      } finally {
        await journal.close();
      }
    });

    it('concurrent appends resolve in append order', async () => {
      const journal = await create(512 * 1024);
      try {
        const order: number[] = [];
        const appends: Promise<void>[] = [];
        for (let seq = 1; seq <= 40; seq++) {
          appends.push(journal.append(makeEntry(seq, (seq % 7) * 1000)).then(() => void order.push(seq)));
        }
        // Accepted records are visible at once, before their appends resolve.
        assert.equal(journal.size, 40);
        await Promise.all(appends);
        assert.deepEqual(order, Array.from({ length: 40 }, (_, i) => i + 1));
        assert.equal((await collect(journal)).length, 40);
      } finally {
        await journal.close();
      }
    });

    it('refuses bad entries and non-increasing seqs with BM_ERR_INVALID_ARGUMENT, journal unchanged', async () => {
      const journal = await create(64 * 1024);
      try {
        await journal.append(makeEntry(5, 100));
        const good = makeEntry(6, 100);
        const zero = makeZero(6, 4096);
        const bad: unknown[] = [
          makeEntry(5, 100), // not increasing
          makeEntry(4, 100),
          { ...good, seq: 0 },
          { ...good, seq: 6.5 },
          { ...good, seq: -1 },
          { ...good, seq: Number.MAX_SAFE_INTEGER + 2 },
          { ...good, offset: -512 },
          { ...good, offset: 1.5 },
          { ...good, data: 'bytes' },
          { ...good, data: new Uint16Array(4) },
          { ...good, fua: 1 },
          { ...good, timestamp: Number.NaN },
          { ...good, timestamp: '1' },
          { ...good, kind: 'skip' },
          { ...good, kind: null },
          { ...zero, length: -1 },
          { ...zero, length: 1.5 },
          { ...zero, length: Number.MAX_SAFE_INTEGER + 1 },
          { ...zero, length: Number.NaN },
          { ...zero, length: '4096' },
          { ...zero, length: undefined },
          { ...zero, data: Buffer.alloc(1) },
          { ...zero, data: 'x' },
          { ...zero, seq: 5 },
          { ...zero, offset: -1 },
          { ...zero, fua: 'yes' },
          { ...zero, timestamp: Number.POSITIVE_INFINITY },
          null,
        ];
        for (const entry of bad) {
          await rejectsWith(journal.append(entry as JournalEntry), 'BM_ERR_INVALID_ARGUMENT');
        }
        assert.equal(journal.size, 1);
        assert.equal(journal.lastSeq, 5);
        assert.equal(journal.stats().appended, 1);
        await journal.append(good);
        // A zero entry may carry an empty buffer; 'write' may be spelled out.
        await journal.append({ ...makeZero(7, 512), data: Buffer.alloc(0) });
        await journal.append({ ...makeEntry(8, 10), kind: 'write' });
        assertEntries(await collect(journal), [makeEntry(5, 100), good, makeZero(7, 512), makeEntry(8, 10)]);
      } finally {
        await journal.close();
      }
    });

    it('SPEC 17: out-of-order release frees only the contiguous acknowledged prefix', async () => {
      const journal = await create(64 * 1024);
      try {
        const entries = [1, 2, 3, 4, 5].map((seq) => makeEntry(seq, 1000));
        for (const entry of entries) await journal.append(entry);
        const one = footprint(1000);
        assert.equal(journal.stats().usedBytes, 5 * one);

        journal.release(3);
        assert.equal(journal.size, 4);
        assert.equal(journal.pendingBytes, 4000);
        assert.equal(journal.stats().entries, 5, 'record 3 is acknowledged but not reclaimed');
        assert.equal(journal.stats().usedBytes, 5 * one);
        assertEntries(await collect(journal), [entries[0], entries[1], entries[3], entries[4]] as JournalEntry[]);

        journal.release(1);
        assert.equal(journal.stats().entries, 4);
        assert.equal(journal.stats().usedBytes, 4 * one);

        journal.release(999); // unknown: ignored
        journal.release(1); // already released: ignored
        journal.release(3);
        assert.equal(journal.size, 3);
        assert.equal(journal.stats().released, 2);

        journal.release(2); // frees 2 and the already acknowledged 3
        assert.equal(journal.stats().entries, 2);
        assert.equal(journal.stats().usedBytes, 2 * one);
        assertEntries(await collect(journal), [entries[3], entries[4]] as JournalEntry[]);

        journal.release(5);
        journal.release(4);
        assert.equal(journal.size, 0);
        assert.equal(journal.pendingBytes, 0);
        assert.equal(journal.stats().entries, 0);
        assert.equal(journal.stats().usedBytes, 0);
        assert.equal(journal.stats().released, 5);
        assert.equal(journal.lastSeq, 5);
        assert.deepEqual(await collect(journal), []);
      } finally {
        await journal.close();
      }
    });

    it('SPEC 16: a record that does not fit is refused with BM_ERR_JOURNAL_FULL and the journal stays intact', async () => {
      const capacity = 64 * 1024;
      const journal = await create(capacity);
      try {
        const size = 3000;
        const entries: JournalEntry[] = [];
        let seq = 1;
        for (;;) {
          const entry = makeEntry(seq, size);
          try {
            await journal.append(entry);
          } catch (error) {
            assert.ok(isBlockMirrorError(error, 'BM_ERR_JOURNAL_FULL'), String(error));
            break;
          }
          entries.push(entry);
          seq++;
        }
        const capacityBytes = journal.stats().capacityBytes;
        const fits = Math.floor((capacityBytes - options.reserveBytes) / footprint(size));
        assert.equal(entries.length, fits, 'fills exactly the usable space');
        const before = journal.stats();
        assert.ok(before.usedBytes <= capacityBytes - options.reserveBytes);
        assert.equal(before.highWaterBytes, before.usedBytes);

        // Refused again, and a record that can never fit is refused too; nothing changes.
        await rejectsWith(journal.append(makeEntry(seq, size)), 'BM_ERR_JOURNAL_FULL');
        await rejectsWith(journal.append(makeEntry(seq, capacity)), 'BM_ERR_JOURNAL_FULL');
        // An out-of-order release does not free space.
        journal.release(2);
        await rejectsWith(journal.append(makeEntry(seq, size)), 'BM_ERR_JOURNAL_FULL');
        assert.equal(journal.lastSeq, seq - 1, 'a refused seq is not consumed');
        assert.equal(journal.stats().appended, before.appended);
        assert.equal(journal.stats().usedBytes, before.usedBytes);
        assertEntries(await collect(journal), entries.filter((e) => e.seq !== 2));

        // Releasing the oldest frees the space of 1 and 2: the refused seq fits now.
        journal.release(1);
        await journal.append(makeEntry(seq, size));
        assertEntries(await collect(journal), [...entries.slice(2), makeEntry(seq, size)]);
      } finally {
        await journal.close();
      }
    });

    it('SPEC 16: wraps around the capacity over many cycles, FIFO and data intact', async () => {
      const capacity = 32 * 1024;
      const journal = await create(capacity);
      try {
        const random = prng(1616);
        const model: JournalEntry[] = []; // unreleased, oldest first
        const released = new Set<number>();
        let seq = 0;
        let appendedBytes = 0;
        let fullCount = 0;
        let highWater = 0;
        while (appendedBytes < 25 * capacity) {
          const r = random();
          if (r < 0.6 || model.length === 0) {
            const entry =
              random() < 0.2 ? makeZero(seq + 1, Math.floor(random() * 2 ** 34)) : makeEntry(seq + 1, Math.floor(random() * 5000));
            try {
              await journal.append(entry);
              seq++;
              appendedBytes += Math.max(payloadOf(entry), 500);
              model.push(entry);
            } catch (error) {
              assert.ok(isBlockMirrorError(error, 'BM_ERR_JOURNAL_FULL'), String(error));
              fullCount++;
              const oldest = model.shift() as JournalEntry;
              journal.release(oldest.seq);
              released.add(oldest.seq);
            }
          } else {
            // Mostly the oldest, sometimes one further on (out of order).
            const k = r < 0.9 ? 0 : Math.floor(random() * model.length);
            const [entry] = model.splice(k, 1);
            journal.release((entry as JournalEntry).seq);
            released.add((entry as JournalEntry).seq);
          }
          highWater = Math.max(highWater, journal.stats().usedBytes);
          assert.equal(journal.size, model.length);
          if (random() < 0.05) assertEntries(await collect(journal), model);
        }
        assertEntries(await collect(journal), model);
        const stats = journal.stats();
        assert.ok(fullCount > 0, 'the journal was full at times');
        assert.equal(stats.appended, seq);
        assert.equal(stats.released, released.size);
        assert.equal(stats.highWaterBytes, highWater);
        assert.ok(stats.highWaterBytes <= stats.capacityBytes - options.reserveBytes);
        assert.equal(journal.pendingBytes, model.reduce((n, e) => n + payloadOf(e), 0));
      } finally {
        await journal.close();
      }
    });

    it('zero entries: a 5 GiB range is a header-sized record without payload, FIFO with the writes around it', async () => {
      const journal = await create(64 * 1024);
      try {
        const entries: JournalEntry[] = [
          makeEntry(1, 1000),
          makeZero(2, 5 * 2 ** 30, { fua: true, offset: 2 ** 33 }),
          makeEntry(3, 200),
          makeZero(4, Number.MAX_SAFE_INTEGER, { offset: 0 }),
          makeZero(5, 0),
          makeZero(6, 2 ** 32),
          makeEntry(7, 0),
        ];
        for (const entry of entries) await journal.append(entry);
        assert.equal(journal.size, 7);
        assert.equal(journal.pendingBytes, 1200, 'zero ranges count no payload bytes');
        assert.equal(journal.lastSeq, 7);
        const used = footprint(1000) + footprint(200) + 5 * footprint(0);
        assert.equal(journal.stats().usedBytes, used, 'a zero range takes the space of an empty write');
        assert.equal(journal.stats().highWaterBytes, used);
        const replayed = await collect(journal);
        assertEntries(replayed, entries);
        const big = replayed[1];
        assert.ok(big?.kind === 'zero');
        assert.equal(big.length, 5 * 2 ** 30);
        assert.equal(big.data.length, 0);
        assert.equal(replayed[0]?.length, 1000, 'a write reports its length too');
        assertEntries(await collect(journal, 2), entries.slice(2));
        assertEntries(await collect(journal, 3), entries.slice(3));
      } finally {
        await journal.close();
      }
    });

    it('zero entries: release and reclaim as for writes, also out of order; a full journal refuses them', async () => {
      const journal = await create(16 * 1024);
      try {
        const capacityBytes = journal.stats().capacityBytes;
        const fits = Math.floor((capacityBytes - options.reserveBytes) / footprint(0));
        const entries: JournalEntry[] = [];
        for (let seq = 1; seq <= fits; seq++) {
          const entry = seq % 4 === 0 ? makeEntry(seq, 0) : makeZero(seq, seq * 2 ** 31);
          await journal.append(entry);
          entries.push(entry);
        }
        assert.equal(journal.stats().usedBytes, fits * footprint(0));
        assert.equal(journal.pendingBytes, 0);
        const next = makeZero(fits + 1, 2 ** 40);
        await rejectsWith(journal.append(next), 'BM_ERR_JOURNAL_FULL');
        assert.equal(journal.lastSeq, fits, 'a refused zero entry consumes no seq');

        journal.release(2); // out of order: frees nothing
        assert.equal(journal.size, fits - 1);
        assert.equal(journal.stats().entries, fits);
        await rejectsWith(journal.append(next), 'BM_ERR_JOURNAL_FULL');
        journal.release(1); // frees 1 and 2
        assert.equal(journal.stats().entries, fits - 2);
        assert.equal(journal.stats().usedBytes, (fits - 2) * footprint(0));
        await journal.append(next);
        assertEntries(await collect(journal), [...entries.slice(2), next]);

        for (const entry of [...entries, next]) journal.release(entry.seq);
        assert.equal(journal.size, 0);
        assert.equal(journal.stats().entries, 0);
        assert.equal(journal.stats().usedBytes, 0);
        assert.equal(journal.stats().released, fits + 1);
        assert.deepEqual(await collect(journal), []);
      } finally {
        await journal.close();
      }
    });

    it('pending() is live: skips entries released before they are reached, includes entries appended meanwhile', async () => {
      const journal = await create(64 * 1024);
      try {
        for (let seq = 1; seq <= 5; seq++) await journal.append(makeEntry(seq, 500));
        const seen: number[] = [];
        for await (const entry of journal.pending()) {
          seen.push(entry.seq);
          if (entry.seq === 1) {
            journal.release(3);
            await journal.append(makeEntry(6, 500));
            await journal.append(makeZero(7, 2 ** 33));
          }
        }
        assert.deepEqual(seen, [1, 2, 4, 5, 6, 7]);
      } finally {
        await journal.close();
      }
    });

    it('tracks stats: entries, usedBytes, highWaterBytes, appended, released', async () => {
      const journal = await create(64 * 1024);
      try {
        await journal.append(makeEntry(1, 100));
        await journal.append(makeEntry(2, 2000));
        await journal.append(makeEntry(3, 0));
        await journal.append(makeZero(4, 2 ** 36));
        const used = footprint(100) + footprint(2000) + 2 * footprint(0);
        const full = journal.stats();
        assert.equal(full.entries, 4);
        assert.equal(full.usedBytes, used);
        assert.equal(full.highWaterBytes, used);
        assert.equal(full.appended, 4);
        assert.equal(full.released, 0);
        journal.release(1);
        journal.release(2);
        const stats = journal.stats();
        assert.equal(stats.entries, 2);
        assert.equal(stats.usedBytes, 2 * footprint(0));
        assert.equal(stats.highWaterBytes, used);
        assert.equal(stats.released, 2);
        assert.equal(journal.pendingBytes, 0);
        assert.equal(journal.size, 2);
      } finally {
        await journal.close();
      }
    });

    it('after close(): append rejects with BM_ERR_CLOSED, pending() throws it, release is ignored, close is idempotent', async () => {
      const journal = await create(64 * 1024);
      await journal.append(makeEntry(1, 10));
      await journal.close();
      await journal.close();
      await rejectsWith(journal.append(makeEntry(2, 10)), 'BM_ERR_CLOSED');
      await rejectsWith(collect(journal), 'BM_ERR_CLOSED');
      journal.release(1);
      assert.equal(journal.size, 1);
    });

    it('close() waits for appends in progress', async () => {
      const journal = await create(256 * 1024);
      let resolved = 0;
      const appends = [1, 2, 3, 4, 5].map((seq) =>
        journal.append(seq === 3 ? makeZero(seq, 2 ** 35) : makeEntry(seq, 8000)).then(() => void resolved++),
      );
      await journal.close();
      assert.equal(resolved, 5, 'every append resolved before close() did');
      await Promise.all(appends);
    });
  });
}
