import assert from 'node:assert/strict';
import { copyFileSync, existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { crc32 } from 'node:zlib';
import { after, describe, it } from 'node:test';
import FakeTimers from '@sinonjs/fake-timers';
import { clockFrom } from '../../src/clock.js';
import { isBlockMirrorError } from '../../src/errors.js';
import type { ErrorCode } from '../../src/errors.js';
import { FileJournal } from '../../src/journal/file-journal.js';
import type { FileJournalOptions } from '../../src/journal/file-journal.js';
import type { JournalEntry, PendingJournalEntry } from '../../src/journal/journal.js';
import {
  ALIGN,
  FLAG_ZERO,
  FORMAT_VERSION,
  RECORD_HEADER_BYTES,
  RING_START,
  ZERO_PAYLOAD_BYTES,
  decodeRecordHeader,
  recordBytes,
} from '../../src/journal/record-format.js';
import { assertEntries, collect, makeEntry, makeZero, payloadOf, prng } from './helpers.js';
import { journalSuite } from './journal-suite.js';

const dir = mkdtempSync(join(tmpdir(), 'bm-journal-'));
after(() => rmSync(dir, { recursive: true, force: true }));
let fileCounter = 0;
function freshPath(): string {
  return join(dir, `j${++fileCounter}.journal`);
}

for (const fsync of ['batch', 'none', 'always'] as const) {
  journalSuite({
    name: `FileJournal (fsync ${fsync})`,
    create: (capacityBytes) => FileJournal.open(freshPath(), { capacityBytes, fsync }),
    footprint: recordBytes,
    reserveBytes: ALIGN,
  });
}

async function rejectsWith(promise: Promise<unknown>, code: ErrorCode): Promise<void> {
  await assert.rejects(promise, (error: unknown) => {
    assert.ok(isBlockMirrorError(error, code), `expected ${code}, got ${String(error)}`);
    return true;
  });
}

/** Appends `entries` one after the other. */
async function appendAll(journal: FileJournal, entries: readonly JournalEntry[]): Promise<void> {
  for (const entry of entries) await journal.append(entry);
}

/** File offset of the record with this seq (scans the ring for its header). */
function findRecord(path: string, seq: number): number {
  const file = readFileSync(path);
  for (let at = RING_START; at + RECORD_HEADER_BYTES <= file.length; at += ALIGN) {
    if (file.readUInt32LE(at) === 0x524a4d42 && file.readUInt32LE(at + 16) === seq && (file.readUInt16LE(at + 6) & 2) === 0) {
      return at;
    }
  }
  throw new Error(`record ${seq} not found`);
}

function flipByte(path: string, position: number): void {
  const file = readFileSync(path);
  file[position] = (file[position] as number) ^ 0x5a;
  writeFileSync(path, file);
}

describe('FileJournal', () => {
  it('creates a sparse preallocated ring file of the requested capacity', async () => {
    const path = freshPath();
    const journal = await FileJournal.open(path, { capacityBytes: 1024 * 1024 + 100 });
    assert.equal(journal.stats().capacityBytes, 1024 * 1024, 'rounded down to 512');
    assert.equal(statSync(path).size, RING_START + 1024 * 1024);
    await journal.close();
  });

  it('refuses bad options with BM_ERR_INVALID_ARGUMENT', async () => {
    const bad: FileJournalOptions[] = [
      { capacityBytes: 1000 },
      { capacityBytes: 1.5e6 + 0.5 },
      { fsync: 'sometimes' as 'always' },
      { batchDelayMs: -1 },
      { checkpointEvery: 0 },
    ];
    for (const options of bad) await rejectsWith(FileJournal.open(freshPath(), options), 'BM_ERR_INVALID_ARGUMENT');
    await rejectsWith(FileJournal.open(''), 'BM_ERR_INVALID_ARGUMENT');
  });

  it('SPEC 16/19: reopen after close replays exactly the unreleased records with identical data', async () => {
    const path = freshPath();
    let journal = await FileJournal.open(path, { capacityBytes: 32 * 1024 });
    let model: JournalEntry[] = [];
    let seq = 0;
    for (let cycle = 0; cycle < 12; cycle++) {
      // Append a few, release some (in and out of order), close, reopen, compare.
      for (let i = 0; i < 4; i++) {
        ++seq;
        const entry = i === 2 ? makeZero(seq, seq * 2 ** 30 + 7) : makeEntry(seq, ((seq * 977) % 2000) + (i === 0 ? 0 : 1));
        await journal.append(entry);
        model.push(entry);
      }
      const releaseOrder = cycle % 2 === 0 ? [1, 0, 3] : [0, 2, 1];
      for (const k of releaseOrder) {
        const entry = model[k];
        if (entry !== undefined) journal.release(entry.seq);
      }
      const releasedSeqs = new Set(releaseOrder.map((k) => model[k]?.seq));
      model = model.filter((e) => !releasedSeqs.has(e.seq));
      await journal.close();
      journal = await FileJournal.open(path);
      assert.equal(journal.lastSeq, seq);
      assert.equal(journal.size, model.length);
      assert.equal(journal.stats().recovered, model.length);
      assert.equal(journal.pendingBytes, model.reduce((n, e) => n + payloadOf(e), 0));
      assertEntries(await collect(journal), model, `cycle ${cycle}`);
    }
    await journal.close();
  });

  it('keeps 64-bit seqs, offsets and fractional timestamps exactly across a restart', async () => {
    const path = freshPath();
    let journal = await FileJournal.open(path, { capacityBytes: 16 * 1024 });
    const big = [2 ** 32 - 1, 2 ** 32, 2 ** 40 + 3, Number.MAX_SAFE_INTEGER].map((seq, i) => ({
      ...makeEntry(seq, 100 * i),
      offset: [0, 2 ** 32 + 512, 2 ** 45, Number.MAX_SAFE_INTEGER - 1][i] as number,
      timestamp: [0, -1.5, 1e300, Math.PI][i] as number,
    }));
    await appendAll(journal, big);
    await journal.close();
    journal = await FileJournal.open(path);
    assert.equal(journal.lastSeq, Number.MAX_SAFE_INTEGER);
    assertEntries(await collect(journal), big);
    await journal.close();
  });

  it('keeps zero ranges of any safe length (beyond 4 GiB, up to 2^53 - 1) exactly across a restart, one slot each', async () => {
    const path = freshPath();
    let journal = await FileJournal.open(path, { capacityBytes: 16 * 1024 });
    const lengths = [0, 1, 2 ** 32 - 1, 2 ** 32, 2 ** 32 + 1, 5 * 2 ** 30, 2 ** 52 + 3, Number.MAX_SAFE_INTEGER];
    const zeros = lengths.map((length, i) => makeZero(i + 1, length, { offset: i * 2 ** 41, fua: i % 2 === 0 }));
    await appendAll(journal, zeros);
    assert.equal(journal.stats().usedBytes, lengths.length * ALIGN);
    assert.equal(journal.pendingBytes, 0);
    await journal.close();
    journal = await FileJournal.open(path);
    assert.equal(journal.size, lengths.length);
    assert.equal(journal.pendingBytes, 0);
    assert.equal(journal.stats().usedBytes, lengths.length * ALIGN);
    assertEntries(await collect(journal), zeros);
    // On disk: a zero record is its header plus the 8-byte length, flagged 4.
    const file = readFileSync(path);
    const at = findRecord(path, 6);
    const h = decodeRecordHeader(file, at);
    assert.ok(h !== undefined);
    assert.equal(h.version, FORMAT_VERSION);
    assert.equal(h.flags & FLAG_ZERO, FLAG_ZERO);
    assert.equal(h.dataLength, ZERO_PAYLOAD_BYTES);
    assert.equal(file.readUInt32LE(at + RECORD_HEADER_BYTES) + file.readUInt32LE(at + RECORD_HEADER_BYTES + 4) * 2 ** 32, 5 * 2 ** 30);
    await journal.close();
  });

  it('lastSeq survives a restart when everything was released; seqs must continue after it', async () => {
    const path = freshPath();
    let journal = await FileJournal.open(path, { capacityBytes: 16 * 1024 });
    await appendAll(journal, [makeEntry(7, 100), makeEntry(9, 100)]);
    journal.release(9);
    journal.release(7);
    await journal.close();
    journal = await FileJournal.open(path);
    assert.equal(journal.lastSeq, 9);
    assert.equal(journal.size, 0);
    assert.deepEqual(await collect(journal), []);
    await rejectsWith(journal.append(makeEntry(9, 10)), 'BM_ERR_INVALID_ARGUMENT');
    await journal.append(makeEntry(10, 10));
    await journal.close();
  });

  it('SPEC 16: a torn or corrupt newest record is discarded, never replayed', async () => {
    const path = freshPath();
    const journal = await FileJournal.open(path, { capacityBytes: 64 * 1024, fsync: 'always' });
    const entries = [1, 2, 3, 4, 5].map((seq) => makeEntry(seq, 1500));
    await appendAll(journal, entries);

    // Payload byte of the newest record.
    const a = join(dir, 'torn-a.journal');
    copyFileSync(path, a);
    flipByte(a, findRecord(a, 5) + RECORD_HEADER_BYTES + 700);
    // Header byte (the timestamp) of record 3: 3, 4 and 5 are lost, 1 and 2 stay.
    const b = join(dir, 'torn-b.journal');
    copyFileSync(path, b);
    flipByte(b, findRecord(b, 3) + 25);
    // The file cut in the middle of record 4.
    const c = join(dir, 'torn-c.journal');
    copyFileSync(path, c);
    writeFileSync(c, readFileSync(c).subarray(0, findRecord(c, 4) + 1000));

    for (const [copy, expected] of [
      [a, entries.slice(0, 4)],
      [b, entries.slice(0, 2)],
      [c, entries.slice(0, 3)],
    ] as const) {
      const recovered = await FileJournal.open(copy);
      assertEntries(await collect(recovered), expected, copy);
      assert.equal(recovered.lastSeq, expected.length);
      // The journal is usable again: the next append lands after the recovered head.
      const next = makeEntry(expected.length + 1, 999);
      await recovered.append(next);
      await recovered.close();
      const again = await FileJournal.open(copy);
      assertEntries(await collect(again), [...expected, next]);
      await again.close();
    }
    await journal.close();
  });

  it('SPEC 16: a torn or corrupt zero record is discarded like a write, never replayed', async () => {
    const path = freshPath();
    const journal = await FileJournal.open(path, { capacityBytes: 64 * 1024, fsync: 'always' });
    const entries: JournalEntry[] = [makeEntry(1, 1500), makeZero(2, 2 ** 40), makeEntry(3, 100), makeZero(4, 6 * 2 ** 30)];
    await appendAll(journal, entries);
    const copies: Array<[string, JournalEntry[]]> = [];
    const damaged = (name: string, expected: JournalEntry[], change: (file: Buffer) => Buffer): void => {
      const copy = join(dir, `torn-zero-${name}.journal`);
      writeFileSync(copy, change(readFileSync(path)));
      copies.push([copy, expected]);
    };
    const zero4 = findRecord(path, 4);
    const zero2 = findRecord(path, 2);
    // A bit of the newest zero record's length: its CRC fails.
    damaged('length', entries.slice(0, 3), (file) => {
      file[zero4 + RECORD_HEADER_BYTES + 4] = (file[zero4 + RECORD_HEADER_BYTES + 4] as number) ^ 1;
      return file;
    });
    // Its header written, its length not (torn inside the record).
    damaged('cut', entries.slice(0, 3), (file) => file.subarray(0, zero4 + RECORD_HEADER_BYTES + 3));
    // The zero flag of a middle record cleared: no longer a valid record, 2 and later are lost.
    damaged('flag', entries.slice(0, 1), (file) => {
      file.writeUInt16LE(file.readUInt16LE(zero2 + 6) & ~FLAG_ZERO, zero2 + 6);
      return file;
    });
    for (const [copy, expected] of copies) {
      const recovered = await FileJournal.open(copy);
      assertEntries(await collect(recovered), expected, copy);
      assert.equal(recovered.lastSeq, expected.at(-1)?.seq);
      const next = makeZero(recovered.lastSeq + 1, 2 ** 45);
      await recovered.append(next);
      await recovered.close();
      const again = await FileJournal.open(copy);
      assertEntries(await collect(again), [...expected, next]);
      await again.close();
    }
    await journal.close();
  });

  it('pending() reads zero records back from the file and refuses one altered after recovery with BM_ERR_IO', async () => {
    const path = freshPath();
    let journal = await FileJournal.open(path, { capacityBytes: 16 * 1024 });
    const entries: JournalEntry[] = [makeEntry(1, 700), makeZero(2, 7 * 2 ** 30), makeEntry(3, 10)];
    await appendAll(journal, entries);
    await journal.close();
    journal = await FileJournal.open(path);
    assertEntries(await collect(journal), entries);
    // The length of zero record 2 changes on disk under the open journal (CRC fixed up: only the
    // cross-check against the recovered record can tell).
    const file = readFileSync(path);
    const at = findRecord(path, 2);
    file.writeUInt32LE(12345, at + RECORD_HEADER_BYTES); // low word of the length
    const payload = file.subarray(at + RECORD_HEADER_BYTES, at + RECORD_HEADER_BYTES + ZERO_PAYLOAD_BYTES);
    file.writeUInt32LE(crc32(payload, crc32(file.subarray(at, at + 44))), at + 44);
    writeFileSync(path, file);
    await rejectsWith(collect(journal), 'BM_ERR_IO');
    assertEntries(await collect(journal, 2), entries.slice(2));
    await journal.close();
  });

  it('pending() refuses with BM_ERR_IO a write record replaced after recovery by another valid one (same seq and length, new offset and data, CRC fixed up)', async () => {
    const path = freshPath();
    let journal = await FileJournal.open(path, { capacityBytes: 16 * 1024 });
    const entries: JournalEntry[] = [makeEntry(1, 700), makeEntry(2, 300), makeEntry(3, 10)];
    await appendAll(journal, entries);
    await journal.close();
    journal = await FileJournal.open(path);
    const file = readFileSync(path);
    const at = findRecord(path, 2);
    file.writeUInt32LE(777 * 4096, at + 32); // the volume offset
    file[at + RECORD_HEADER_BYTES] = (file[at + RECORD_HEADER_BYTES] as number) ^ 0xff;
    const payload = file.subarray(at + RECORD_HEADER_BYTES, at + RECORD_HEADER_BYTES + 300);
    file.writeUInt32LE(crc32(payload, crc32(file.subarray(at, at + 44))), at + 44);
    writeFileSync(path, file);
    await rejectsWith(collect(journal), 'BM_ERR_IO');
    assertEntries(await collect(journal, 2), entries.slice(2));
    await journal.close();
  });

  it('recycle(): pending() reads later records into the memory of recycled entries, and never into bytes still in use', async () => {
    const path = freshPath();
    let journal = await FileJournal.open(path, { capacityBytes: 4 * 1024 * 1024, fsync: 'none' });
    // 60 KiB records: a read (at most 1 MiB) holds at most 16 of them, so a buffer that held more was reused
    const entries = Array.from({ length: 64 }, (_, i) => makeEntry(i + 1, 60 * 1024));
    await appendAll(journal, entries);
    await journal.close();
    journal = await FileJournal.open(path);
    // keep the first 16 entries (in use), recycle every other one as soon as it is yielded
    const kept: PendingJournalEntry[] = [];
    const keptCopies: Buffer[] = [];
    const seen: PendingJournalEntry[] = [];
    const memoryOf = new Map<ArrayBufferLike, number[]>();
    for await (const entry of journal.pending()) {
      seen.push({ ...entry, data: Buffer.from(entry.data) });
      memoryOf.set(entry.data.buffer, [...(memoryOf.get(entry.data.buffer) ?? []), entry.seq]);
      if (entry.seq <= 16) {
        kept.push(entry);
        keptCopies.push(Buffer.from(entry.data));
      } else {
        journal.recycle(entry.data);
      }
    }
    assertEntries(seen, entries);
    const shared = [...memoryOf.values()].filter((seqs) => seqs.length > 16);
    assert.ok(shared.length > 0, 'later reads went into recycled memory');
    const keptMemory = memoryOf.get(kept[0]!.data.buffer)!;
    assert.ok(keptMemory.every((seq) => seq <= 16), `the memory of entries in use held no other read (${keptMemory.join(',')})`);
    kept.forEach((entry, i) => assert.ok(entry.data.equals(keptCopies[i]!), `entry ${entry.seq} still in use is intact`));
    // a buffer pending() did not yield is ignored
    journal.recycle(Buffer.alloc(64 * 1024));
    assertEntries(await collect(journal), entries);
    kept.forEach((entry, i) => assert.ok(entry.data.equals(keptCopies[i]!), `entry ${entry.seq} still in use is intact`));
    await journal.close();
  });

  it('SPEC 14/16/19: thousands of records around the ring several times, released out of order: pending() and a reopen replay exactly the unreleased ones', async () => {
    const path = freshPath();
    const journal = await FileJournal.open(path, { capacityBytes: 256 * 1024, fsync: 'none', checkpointEvery: 7 });
    const random = prng(11);
    const live = new Map<number, JournalEntry>();
    for (let seq = 1; seq <= 6000; seq++) {
      const entry = seq % 5 === 0 ? makeZero(seq, 4096 * seq) : makeEntry(seq, 1 + Math.floor(random() * 1500));
      // make room: release the oldest live records, some younger ones first (out of order)
      while (journal.stats().usedBytes + recordBytes(payloadOf(entry) || ZERO_PAYLOAD_BYTES) > 256 * 1024 - 4 * ALIGN) {
        const keys = [...live.keys()];
        const victim = keys[random() < 0.3 && keys.length > 3 ? 2 : 0]!;
        journal.release(victim);
        live.delete(victim);
      }
      await journal.append(entry);
      live.set(seq, entry);
      if (seq % 997 === 0) assertEntries(await collect(journal), [...live.values()]);
    }
    assertEntries(await collect(journal), [...live.values()]);
    const middle = [...live.keys()][Math.floor(live.size / 2)]!;
    assertEntries(await collect(journal, middle), [...live.values()].filter((e) => e.seq > middle));
    await journal.close();
    const reopened = await FileJournal.open(path);
    assert.equal(reopened.size, live.size);
    assertEntries(await collect(reopened), [...live.values()]);
    await reopened.close();
  });

  it('SPEC 16: stale records of an earlier life after the recovered head are not replayed (epochs)', async () => {
    const path = freshPath();
    const journal = await FileJournal.open(path, { capacityBytes: 64 * 1024, fsync: 'always' });
    const entries = [1, 2, 3, 4, 5].map((seq) => makeEntry(seq, 2000));
    await appendAll(journal, entries);
    // Crash copy with record 3 torn: 4 and 5 stay intact on disk behind it.
    const crashed = join(dir, 'epochs.journal');
    copyFileSync(path, crashed);
    await journal.close();
    flipByte(crashed, findRecord(crashed, 3) + RECORD_HEADER_BYTES + 10);
    const reopened = await FileJournal.open(crashed);
    assertEntries(await collect(reopened), entries.slice(0, 2));
    // A new record 3 of the same size lands exactly where the torn one was; old 4 and 5 follow it on disk.
    const three = { ...makeEntry(3, 2000), data: Buffer.alloc(2000, 0x33) };
    await reopened.append(three);
    await reopened.close();
    const last = await FileJournal.open(crashed);
    assertEntries(await collect(last), [entries[0], entries[1], three] as JournalEntry[]);
    await last.close();
  });

  // Records of exactly 4096 ring bytes in a 16 KiB ring: every lap puts a record at the same 4 positions,
  // so after the first lap a stale but valid record sits wherever the next one goes.
  const LAP_RECORD = 4096 - RECORD_HEADER_BYTES;

  it('SPEC 16: an empty checkpoint ignores the stale record of an earlier lap at the head', async () => {
    const path = freshPath();
    let journal = await FileJournal.open(path, { capacityBytes: 16 * 1024 });
    for (let seq = 1; seq <= 6; seq++) {
      await journal.append(makeEntry(seq, LAP_RECORD));
      journal.release(seq);
    }
    await journal.close(); // checkpoint: nothing pending, head at the stale record 3
    journal = await FileJournal.open(path);
    assert.deepEqual(await collect(journal), []);
    assert.equal(journal.lastSeq, 6);
    await journal.close();
  });

  it('SPEC 16: a checkpoint whose tail record never reached the disk does not replay the stale record there', async () => {
    const path = freshPath();
    const crashed = join(dir, 'unwritten-tail.journal');
    let release8: () => void = () => undefined;
    let copied: () => void = () => undefined;
    const copiedPromise = new Promise<void>((resolve) => (copied = resolve));
    const journal = await FileJournal.open(path, {
      capacityBytes: 16 * 1024,
      checkpointEvery: 1,
      hooks: {
        beforeWrite: ({ seq }) => (seq === 8 ? new Promise<void>((resolve) => (release8 = resolve)) : undefined),
        afterCheckpoint: ({ tailSeq }) => {
          if (tailSeq === 8 && !existsSync(crashed)) {
            copyFileSync(path, crashed); // crash: checkpoint points at 8, 8 is not written
            copied();
          }
        },
      },
    });
    for (let seq = 1; seq <= 6; seq++) {
      await journal.append(makeEntry(seq, LAP_RECORD));
      journal.release(seq);
    }
    await journal.append(makeEntry(7, LAP_RECORD));
    const eight = journal.append(makeEntry(8, LAP_RECORD)); // held before its write, over stale record 4
    journal.release(7); // checkpoint with tail = 8
    await copiedPromise;
    release8();
    await eight;
    await journal.close();
    const recovered = await FileJournal.open(crashed);
    assert.deepEqual((await collect(recovered)).map((e) => e.seq), []);
    await recovered.close();
  });

  it('SPEC 16: a wrap marker whose record at position 0 never reached the disk ends the log there', async () => {
    const path = freshPath();
    let checkpointed: () => void = () => undefined;
    const tailAt3 = new Promise<void>((resolve) => (checkpointed = resolve));
    const journal = await FileJournal.open(path, {
      capacityBytes: 16 * 1024,
      checkpointEvery: 1,
      hooks: { afterCheckpoint: ({ tailSeq }) => (tailSeq === 3 ? checkpointed() : undefined) },
    });
    const size = 3072 - RECORD_HEADER_BYTES; // records at 0, 3072, …, 12288; the 6th needs a wrap marker at 15360
    const entries = [1, 2, 3, 4, 5].map((seq) => makeEntry(seq, size));
    await appendAll(journal, entries);
    journal.release(1);
    journal.release(2);
    await tailAt3;
    const before = readFileSync(path); // record 1 (released, stale) still at position 0
    await journal.append(makeEntry(6, size)); // wrap marker at 15360, record 6 at 0
    const afterWrap = readFileSync(path);
    await journal.close();
    assert.ok(findRecord(path, 6) === RING_START, 'record 6 was written at position 0');
    // The crash: wrap marker written, record 6 not (position 0 still holds stale record 1).
    const crashed = join(dir, 'pad-only.journal');
    before.copy(afterWrap, RING_START, RING_START, RING_START + 3072);
    writeFileSync(crashed, afterWrap);
    const recovered = await FileJournal.open(crashed);
    assert.equal(recovered.size, 3);
    assert.equal(recovered.stats().recovered, 3);
    assertEntries(await collect(recovered), entries.slice(2));
    await recovered.close();
  });

  it('a record of almost the whole capacity cycles through the ring (wrap of an empty journal)', async () => {
    const path = freshPath();
    const capacity = 16 * 1024;
    let journal = await FileJournal.open(path, { capacityBytes: capacity, fsync: 'batch' });
    const big = capacity - ALIGN - RECORD_HEADER_BYTES;
    await rejectsWith(journal.append(makeEntry(1, big + 1)), 'BM_ERR_JOURNAL_FULL');
    for (let seq = 1; seq <= 8; seq++) {
      const small = makeEntry(seq * 2 - 1, 1000);
      const entry = makeEntry(seq * 2, big);
      await journal.append(small);
      journal.release(small.seq);
      await journal.append(entry);
      // Crash copy and clean reopen both find it.
      const copy = join(dir, `big-${seq}.journal`);
      copyFileSync(path, copy);
      const crashed = await FileJournal.open(copy);
      assertEntries(await collect(crashed), [entry]);
      await crashed.close();
      await journal.close();
      journal = await FileJournal.open(path);
      assertEntries(await collect(journal), [entry]);
      journal.release(entry.seq);
    }
    await journal.close();
  });

  it('refuses a file that is not a journal with BM_ERR_JOURNAL_CORRUPT and leaves it untouched', async () => {
    const path = freshPath();
    const content = Buffer.alloc(20_000, 7);
    writeFileSync(path, content);
    await rejectsWith(FileJournal.open(path), 'BM_ERR_JOURNAL_CORRUPT');
    assert.ok(readFileSync(path).equals(content));
    // All-zero header but data further on: not taken for a new journal either.
    const zeros = Buffer.alloc(20_000);
    zeros[15_000] = 1;
    writeFileSync(path, zeros);
    await rejectsWith(FileJournal.open(path), 'BM_ERR_JOURNAL_CORRUPT');
    assert.ok(readFileSync(path).equals(zeros));
  });

  describe('version-1 journal files (written before zero records)', () => {
    const fixtures = join(dirname(fileURLToPath(import.meta.url)), 'fixtures');
    // Written by the FileJournal of commit 0e8ba6f (format version 1) with fsync 'always', capacity 8192:
    // append 1, 2, 3 (fua) of 1000 bytes and 4 of 400; release 1, 2; append 5 (1000 bytes) and 6 (1500 bytes,
    // wrapped: marker at the ring end, record at 0); release 4 (out of order); append 8 (0 bytes, fua, offset 2^40).
    // `crashed` is a copy taken before close() (release 4 not checkpointed), `closed` one taken after it.
    const v1 = {
      1: makeEntry(1, 1000),
      3: makeEntry(3, 1000, { fua: true }),
      4: makeEntry(4, 400),
      5: makeEntry(5, 1000),
      6: makeEntry(6, 1500),
      8: makeEntry(8, 0, { fua: true, offset: 2 ** 40 }),
    };
    const cases = [
      { name: 'closed', expected: [v1[3], v1[5], v1[6], v1[8]] },
      { name: 'crashed', expected: [v1[3], v1[4], v1[5], v1[6], v1[8]] },
    ];
    const ringRecords = (path: string): Array<{ seq: number; version: number; flags: number }> => {
      const file = readFileSync(path);
      const out: Array<{ seq: number; version: number; flags: number }> = [];
      for (let at = RING_START; at + RECORD_HEADER_BYTES <= file.length; at += ALIGN) {
        const h = decodeRecordHeader(file, at);
        if (h !== undefined) out.push({ seq: h.seq, version: h.version, flags: h.flags });
      }
      return out;
    };

    for (const { name, expected } of cases) {
      it(`replays the ${name} version-1 file exactly, then takes zero records and writes after its records`, async () => {
        const path = freshPath();
        copyFileSync(join(fixtures, `v1-journal-${name}.bin`), path);
        assert.ok(ringRecords(path).every((r) => r.version === 1), 'the fixture holds version-1 records only');
        assert.equal(readFileSync(path).readUInt16LE(4) | readFileSync(path).readUInt16LE(4096 + 4), 1);

        let journal = await FileJournal.open(path);
        assert.equal(journal.stats().capacityBytes, 8192);
        assert.equal(journal.lastSeq, 8);
        assert.equal(journal.size, expected.length);
        assert.equal(journal.pendingBytes, expected.reduce((n, e) => n + e.data.length, 0));
        assertEntries(await collect(journal), expected);

        // The fixture's ring is full: free the oldest record, then put version-2 records (a zero range and a
        // write) behind the version-1 ones.
        await rejectsWith(journal.append(makeZero(9, 5 * 2 ** 30)), 'BM_ERR_JOURNAL_FULL');
        journal.release(3);
        const kept = expected.slice(1);
        const added: JournalEntry[] = [makeZero(9, 5 * 2 ** 30), makeEntry(10, 300)];
        await appendAll(journal, added);
        const mixed = ringRecords(path);
        assert.ok(mixed.some((r) => r.version === 1) && mixed.some((r) => r.version === FORMAT_VERSION));
        await journal.close();
        // The superblock is version 2 now: a version-1 build refuses the file instead of misreading it.
        const file = readFileSync(path);
        assert.ok([0, 4096].some((at) => file.readUInt16LE(at + 4) === FORMAT_VERSION));

        journal = await FileJournal.open(path);
        assertEntries(await collect(journal), [...kept, ...added]);
        for (const entry of kept) journal.release(entry.seq);
        // Up to the end of the ring and on at position 0 (zero record 14).
        const more: JournalEntry[] = [
          makeEntry(11, 2000),
          makeZero(12, Number.MAX_SAFE_INTEGER),
          makeEntry(13, 1600),
          makeZero(14, 2 ** 33),
          makeEntry(15, 400),
        ];
        await appendAll(journal, more);
        assert.equal(findRecord(path, 14), RING_START, 'zero record 14 starts the next lap');
        await journal.close();
        journal = await FileJournal.open(path);
        assertEntries(await collect(journal), [...added, ...more]);
        await journal.close();
      });
    }

    it('a version-1 record flagged as a zero range is not a valid record: the log ends before it', async () => {
      const path = freshPath();
      copyFileSync(join(fixtures, 'v1-journal-closed.bin'), path);
      const file = readFileSync(path);
      const at = findRecord(path, 8);
      // Make record 8 a (version-1) zero record with a correct CRC: 8-byte payload, flag 4.
      file.writeUInt16LE(file.readUInt16LE(at + 6) | FLAG_ZERO, at + 6);
      file.writeUInt32LE(ZERO_PAYLOAD_BYTES, at + 40);
      file.fill(0, at + RECORD_HEADER_BYTES, at + RECORD_HEADER_BYTES + ZERO_PAYLOAD_BYTES);
      file[at + RECORD_HEADER_BYTES] = 1;
      const payload = file.subarray(at + RECORD_HEADER_BYTES, at + RECORD_HEADER_BYTES + ZERO_PAYLOAD_BYTES);
      file.writeUInt32LE(crc32(payload, crc32(file.subarray(at, at + 44))), at + 44);
      writeFileSync(path, file);
      const journal = await FileJournal.open(path);
      assertEntries(await collect(journal), [v1[3], v1[5], v1[6]]);
      await journal.close();
    });
  });

  it('refuses a journal of a newer format version with BM_ERR_NOT_SUPPORTED', async () => {
    const path = freshPath();
    const journal = await FileJournal.open(path, { capacityBytes: 16 * 1024 });
    await journal.close();
    const file = readFileSync(path);
    const { crc32 } = await import('node:zlib');
    for (const at of [0, 4096]) {
      file.writeUInt16LE(99, at + 4);
      file.writeUInt32LE(crc32(file.subarray(at, at + 508)), at + 508);
    }
    writeFileSync(path, file);
    await rejectsWith(FileJournal.open(path), 'BM_ERR_NOT_SUPPORTED');
  });

  it('keeps the capacity of a non-empty journal and re-formats an empty one to the new capacity', async () => {
    const path = freshPath();
    let journal = await FileJournal.open(path, { capacityBytes: 16 * 1024 });
    await journal.append(makeEntry(1, 100));
    await journal.close();
    journal = await FileJournal.open(path, { capacityBytes: 32 * 1024 });
    assert.equal(journal.stats().capacityBytes, 16 * 1024);
    assertEntries(await collect(journal), [makeEntry(1, 100)]);
    journal.release(1);
    await journal.close();
    journal = await FileJournal.open(path, { capacityBytes: 32 * 1024 });
    assert.equal(journal.stats().capacityBytes, 32 * 1024);
    assert.equal(statSync(path).size, RING_START + 32 * 1024);
    assert.equal(journal.lastSeq, 1);
    await journal.append(makeEntry(2, 20_000));
    await journal.close();
    journal = await FileJournal.open(path);
    assertEntries(await collect(journal), [makeEntry(2, 20_000)]);
    await journal.close();
  });

  it("fsync 'batch': N concurrent appends share fdatasync calls (group commit)", async () => {
    const journal = await FileJournal.open(freshPath(), { capacityBytes: 4 * 1024 * 1024, fsync: 'batch' });
    const before = journal.stats().syncs;
    const n = 64;
    const appends: Promise<void>[] = [];
    for (let seq = 1; seq <= n; seq++) appends.push(journal.append(makeEntry(seq, 4096)));
    await Promise.all(appends);
    const syncs = journal.stats().syncs - before;
    assert.ok(syncs >= 1 && syncs < n, `${syncs} fdatasync calls for ${n} appends`);
    await journal.close();
  });

  it("fsync 'always': every append waits for an fdatasync of its own", async () => {
    const journal = await FileJournal.open(freshPath(), { capacityBytes: 1024 * 1024, fsync: 'always' });
    const before = journal.stats().syncs;
    for (let seq = 1; seq <= 10; seq++) await journal.append(makeEntry(seq, 4096));
    assert.equal(journal.stats().syncs - before, 10);
    await journal.close();
  });

  it("fsync 'none': appends never call fdatasync", async () => {
    const journal = await FileJournal.open(freshPath(), { capacityBytes: 1024 * 1024, fsync: 'none' });
    await Promise.all([1, 2, 3, 4].map((seq) => journal.append(makeEntry(seq, 4096))));
    assert.equal(journal.stats().syncs, 0);
    await journal.close();
  });

  it("fsync 'batch': an append whose write completes while a sync runs waits for the next sync", async () => {
    const gates: Array<() => void> = [];
    const syncStarted: Array<() => void> = [];
    const syncCalls: Promise<void>[] = [];
    for (let i = 0; i < 4; i++) syncCalls.push(new Promise<void>((resolve) => syncStarted.push(resolve)));
    let calls = 0;
    const journal = await FileJournal.open(freshPath(), {
      capacityBytes: 1024 * 1024,
      fsync: 'batch',
      hooks: {
        beforeSync: () =>
          new Promise<void>((resolve) => {
            gates.push(resolve);
            syncStarted[calls++]?.();
          }),
      },
    });
    let aDone = false;
    let bDone = false;
    const a = journal.append(makeEntry(1, 4096)).then(() => void (aDone = true));
    await syncCalls[0]; // the sync covering A is running (held in the hook)
    const b = journal.append(makeEntry(2, 4096)).then(() => void (bDone = true));
    (gates[0] as () => void)();
    await a;
    assert.equal(bDone, false, 'B was not covered by the sync that started before its write');
    await syncCalls[1];
    assert.equal(bDone, false, 'B waits for the second sync');
    (gates[1] as () => void)();
    await b;
    assert.equal(aDone && bDone, true);
    assert.equal(calls, 2);
    await journal.close();
  });

  it("fsync 'batch' with batchDelayMs: no append resolves before the delay elapsed on the injected clock", async () => {
    const fake = FakeTimers.createClock(0);
    const journal = await FileJournal.open(freshPath(), {
      capacityBytes: 1024 * 1024,
      fsync: 'batch',
      batchDelayMs: 50,
      clock: clockFrom(fake),
    });
    const resolvedAt: number[] = [];
    const appends = [1, 2, 3].map((seq) => journal.append(makeEntry(seq, 4096)).then(() => void resolvedAt.push(fake.now)));
    let settled = false;
    const all = Promise.all(appends).then(() => void (settled = true));
    while (!settled) {
      await new Promise<void>((resolve) => setImmediate(resolve));
      fake.tick(10);
    }
    await all;
    assert.equal(resolvedAt.length, 3);
    for (const t of resolvedAt) assert.ok(t >= 50, `resolved at fake time ${t}`);
    await journal.close();
  });

  it('a failed write rejects that append and the later ones with a coded error; the journal refuses appends', async () => {
    const path = freshPath();
    const journal = await FileJournal.open(path, {
      capacityBytes: 256 * 1024,
      fsync: 'batch',
      hooks: {
        beforeWrite: ({ seq }) => {
          if (seq === 4) throw Object.assign(new Error('no space left on device'), { code: 'ENOSPC' });
        },
      },
    });
    const ok = [1, 2, 3].map((seq) => makeEntry(seq, 3000));
    await appendAll(journal, ok);
    const failing = [4, 5, 6].map((seq) => journal.append(makeEntry(seq, 3000)));
    for (const p of failing) await rejectsWith(p, 'BM_ERR_NO_SPACE');
    assert.equal(journal.stats().failed, true);
    await rejectsWith(journal.append(makeEntry(7, 10)), 'BM_ERR_NO_SPACE');
    assert.equal(journal.size, 3);
    assertEntries(await collect(journal), ok);
    journal.release(1);
    await journal.close();
    const reopened = await FileJournal.open(path);
    assertEntries(await collect(reopened), ok.slice(1));
    assert.equal(reopened.stats().failed, false);
    await reopened.append(makeEntry(8, 10));
    await reopened.close();
  });

  it('a failed sync rejects the appends it covered with BM_ERR_IO; none of them is replayed', async () => {
    const path = freshPath();
    let failSyncs = false;
    const journal = await FileJournal.open(path, {
      capacityBytes: 256 * 1024,
      fsync: 'always',
      hooks: {
        beforeSync: () => {
          if (failSyncs) throw Object.assign(new Error('i/o error'), { code: 'EIO' });
        },
      },
    });
    const ok = [1, 2].map((seq) => makeEntry(seq, 3000));
    await appendAll(journal, ok);
    failSyncs = true;
    const failing = [3, 4].map((seq) => journal.append(makeEntry(seq, 3000)));
    for (const p of failing) await rejectsWith(p, 'BM_ERR_IO');
    await journal.close();
    const reopened = await FileJournal.open(path);
    assertEntries(await collect(reopened), ok);
    await reopened.close();
  });
});
