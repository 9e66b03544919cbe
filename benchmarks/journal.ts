/**
 * Journal benchmark: append throughput (MB/s, appends/s) of {@link FileJournal}
 * for 4 KiB and 64 KiB records with 32 appends in flight, for each fsync
 * policy, against plain positional writes of the same data to a file (the
 * reference: `pwrite`, and `pwrite` + `fdatasync` after each write). Every
 * resolved record is released at once (a target that keeps up), so the ring
 * cycles. Also the cost of a replay (`pending()` reading the records back).
 *
 * Run alone: `node --import tsx benchmarks/journal.ts` (`BM_BENCH_MS` = time per row, default 1500).
 *
 * @module
 */
import * as fs from 'node:fs';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { FileJournal } from '../src/journal/file-journal.js';
import type { JournalFsyncPolicy } from '../src/journal/file-journal.js';

/** One row of the journal benchmark. */
export interface JournalBenchResult {
  /** What was measured: `journal` (FileJournal.append), `pwrite` (reference) or `replay` (pending()). */
  target: 'journal' | 'pwrite' | 'replay';
  /** fsync policy (`always` for the reference = fdatasync after each write). */
  fsync: JournalFsyncPolicy;
  /** Payload bytes per record. */
  recordBytes: number;
  /** Operations in flight. */
  concurrency: number;
  /** Completed operations per second. */
  opsPerSec: number;
  /** Payload MB/s (10⁶ bytes). */
  MBps: number;
  /** fdatasync calls per operation (journal rows). */
  syncsPerOp: number | null;
  /** Throughput relative to the reference row of the same size and policy (journal rows). */
  vsReference: number | null;
}

/** Options of {@link runJournalBenchmark}. */
export interface JournalBenchOptions {
  /** Measuring time per row in ms. Default 1500. */
  durationMs?: number;
  /** Appends / writes in flight. Default 32. */
  concurrency?: number;
  /** Record payload sizes. Default 4 KiB and 64 KiB. */
  sizes?: readonly number[];
  /** Journal ring size. Default 256 MiB. */
  capacityBytes?: number;
  /** Directory for the files (default: a fresh one under os.tmpdir(), removed afterwards). */
  dir?: string;
}

function payload(size: number): Buffer {
  const b = Buffer.allocUnsafe(size);
  for (let i = 0; i < size; i++) b[i] = (i * 131 + 7) & 0xff;
  return b;
}

async function benchJournal(
  path: string,
  fsync: JournalFsyncPolicy,
  size: number,
  concurrency: number,
  durationMs: number,
  capacityBytes: number,
): Promise<{ ops: number; seconds: number; syncs: number }> {
  const journal = await FileJournal.open(path, { capacityBytes, fsync });
  const data = payload(size);
  const syncs0 = journal.stats().syncs;
  let seq = 0;
  let ops = 0;
  const start = performance.now();
  const deadline = start + durationMs;
  await new Promise<void>((resolve, reject) => {
    let inFlight = 0;
    const issue = (): void => {
      const s = ++seq;
      inFlight++;
      journal.append({ seq: s, offset: (s % 65536) * size, data, fua: false, timestamp: s }).then(() => {
        inFlight--;
        ops++;
        journal.release(s);
        if (performance.now() < deadline) issue();
        else if (inFlight === 0) resolve();
      }, reject);
    };
    for (let i = 0; i < concurrency; i++) issue();
  });
  const seconds = (performance.now() - start) / 1000;
  const syncs = journal.stats().syncs - syncs0;
  await journal.close();
  return { ops, seconds, syncs };
}

async function benchReplay(path: string, size: number, capacityBytes: number): Promise<{ ops: number; seconds: number }> {
  const journal = await FileJournal.open(path, { capacityBytes, fsync: 'none' });
  const data = payload(size);
  const count = Math.floor((capacityBytes * 0.5) / (size + 512));
  const appends: Promise<void>[] = [];
  for (let s = 1; s <= count; s++) appends.push(journal.append({ seq: s, offset: s * size, data, fua: false, timestamp: s }));
  await Promise.all(appends);
  await journal.close();
  const reopened = await FileJournal.open(path);
  const start = performance.now();
  let ops = 0;
  for await (const entry of reopened.pending()) if (entry.data.length === size) ops++;
  const seconds = (performance.now() - start) / 1000;
  await reopened.close();
  return { ops, seconds };
}

async function benchPwrite(
  path: string,
  sync: boolean,
  size: number,
  concurrency: number,
  durationMs: number,
  capacityBytes: number,
): Promise<{ ops: number; seconds: number }> {
  const fd = fs.openSync(path, 'w+');
  fs.ftruncateSync(fd, capacityBytes);
  const data = payload(size);
  const slots = Math.max(1, Math.floor(capacityBytes / size));
  let next = 0;
  let ops = 0;
  const start = performance.now();
  const deadline = start + durationMs;
  await new Promise<void>((resolve, reject) => {
    let inFlight = 0;
    const done = (): void => {
      inFlight--;
      ops++;
      if (performance.now() < deadline) issue();
      else if (inFlight === 0) resolve();
    };
    const issue = (): void => {
      const position = (next++ % slots) * size;
      inFlight++;
      fs.write(fd, data, 0, size, position, (error) => {
        if (error) return reject(error);
        if (!sync) return done();
        fs.fdatasync(fd, (e) => (e ? reject(e) : done()));
      });
    };
    for (let i = 0; i < concurrency; i++) issue();
  });
  const seconds = (performance.now() - start) / 1000;
  fs.closeSync(fd);
  return { ops, seconds };
}

const round = (n: number, digits = 0): number => Number(n.toFixed(digits));

/** Runs the journal benchmark and returns its rows. */
export async function runJournalBenchmark(options: JournalBenchOptions = {}): Promise<JournalBenchResult[]> {
  const durationMs = options.durationMs ?? 1500;
  const concurrency = options.concurrency ?? 32;
  const sizes = options.sizes ?? [4096, 65536];
  const capacityBytes = options.capacityBytes ?? 256 * 1024 * 1024;
  const dir = options.dir ?? mkdtempSync(join(tmpdir(), 'bm-bench-journal-'));
  const rows: JournalBenchResult[] = [];
  try {
    for (const size of sizes) {
      const reference = new Map<JournalFsyncPolicy, number>();
      for (const fsync of ['none', 'always'] as const) {
        const path = join(dir, `ref-${size}-${fsync}.bin`);
        const r = await benchPwrite(path, fsync === 'always', size, concurrency, durationMs, capacityBytes);
        rmSync(path, { force: true });
        const opsPerSec = r.ops / r.seconds;
        reference.set(fsync, opsPerSec);
        rows.push({
          target: 'pwrite',
          fsync,
          recordBytes: size,
          concurrency,
          opsPerSec: round(opsPerSec),
          MBps: round((opsPerSec * size) / 1e6, 1),
          syncsPerOp: null,
          vsReference: null,
        });
      }
      for (const fsync of ['none', 'batch', 'always'] as const) {
        const path = join(dir, `journal-${size}-${fsync}.journal`);
        const r = await benchJournal(path, fsync, size, concurrency, durationMs, capacityBytes);
        rmSync(path, { force: true });
        const opsPerSec = r.ops / r.seconds;
        const ref = reference.get(fsync === 'batch' ? 'always' : fsync) as number;
        rows.push({
          target: 'journal',
          fsync,
          recordBytes: size,
          concurrency,
          opsPerSec: round(opsPerSec),
          MBps: round((opsPerSec * size) / 1e6, 1),
          syncsPerOp: round(r.syncs / r.ops, 3),
          vsReference: round(opsPerSec / ref, 2),
        });
      }
      const path = join(dir, `replay-${size}.journal`);
      const r = await benchReplay(path, size, Math.min(capacityBytes, 64 * 1024 * 1024));
      rmSync(path, { force: true });
      rows.push({
        target: 'replay',
        fsync: 'none',
        recordBytes: size,
        concurrency: 1,
        opsPerSec: round(r.ops / r.seconds),
        MBps: round((r.ops * size) / r.seconds / 1e6, 1),
        syncsPerOp: null,
        vsReference: null,
      });
    }
  } finally {
    if (options.dir === undefined) rmSync(dir, { recursive: true, force: true });
  }
  return rows;
}

const invokedPath = process.argv[1];
if (invokedPath !== undefined && import.meta.url === pathToFileURL(invokedPath).href) {
  const durationMs = Number(process.env.BM_BENCH_MS ?? 1500);
  const rows = await runJournalBenchmark({ durationMs });
  console.table(rows);
  console.log('batch and always rows are compared with pwrite+fdatasync per write; none with plain pwrite.');
}
