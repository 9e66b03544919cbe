import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { copyFileSync, mkdtempSync, readFileSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, describe, it } from 'node:test';
import fc from 'fast-check';
import { isBlockMirrorError } from '../../src/errors.js';
import { FileJournal } from '../../src/journal/file-journal.js';
import type { JournalFsyncPolicy } from '../../src/journal/file-journal.js';
import type { JournalEntry, PendingJournalEntry } from '../../src/journal/journal.js';
import { ALIGN, FLAG_PAD, FLAG_ZERO, RECORD_HEADER_BYTES, RING_START, decodeRecordHeader } from '../../src/journal/record-format.js';
import { assertEntries, collect, crashEntry, makeEntry, makeZero } from './helpers.js';

const here = dirname(fileURLToPath(import.meta.url));
const repoRoot = resolve(here, '..', '..');
const dir = mkdtempSync(join(tmpdir(), 'bm-journal-crash-'));
after(() => rmSync(dir, { recursive: true, force: true }));

/** Records (not wrap markers; zero records included, 8 payload bytes) whose header parses in a journal file: file offset, seq, payload length. */
function scanRecords(file: Buffer): Array<{ at: number; seq: number; dataLength: number; zero: boolean }> {
  const out: Array<{ at: number; seq: number; dataLength: number; zero: boolean }> = [];
  for (let at = RING_START; at + RECORD_HEADER_BYTES <= file.length; at += ALIGN) {
    const h = decodeRecordHeader(file, at);
    if (h !== undefined && (h.flags & FLAG_PAD) === 0) {
      out.push({ at, seq: h.seq, dataLength: h.dataLength, zero: (h.flags & FLAG_ZERO) !== 0 });
    }
  }
  return out;
}

type Command =
  | { kind: 'append'; size: number; gap: number; fua: boolean }
  | { kind: 'zero'; length: number; gap: number; fua: boolean }
  | { kind: 'release'; pick: number; oldest: boolean }
  | { kind: 'reopen' };

type Damage =
  | { kind: 'none' }
  | { kind: 'truncate'; newest: number; at: number }
  | { kind: 'corrupt'; newest: number; bytes: Array<{ at: number; xor: number }> };

const commandArb: fc.Arbitrary<Command> = fc.oneof(
  {
    weight: 6,
    arbitrary: fc.record({
      kind: fc.constant('append' as const),
      size: fc.oneof(fc.integer({ min: 0, max: 600 }), fc.integer({ min: 0, max: 7000 })),
      gap: fc.integer({ min: 1, max: 3 }),
      fua: fc.boolean(),
    }),
  },
  {
    weight: 2,
    arbitrary: fc.record({
      kind: fc.constant('zero' as const),
      // Small ranges and ranges beyond 4 GiB, up to the largest safe integer.
      length: fc.oneof(fc.integer({ min: 0, max: 1 << 20 }), fc.integer({ min: 2 ** 32, max: Number.MAX_SAFE_INTEGER })),
      gap: fc.integer({ min: 1, max: 3 }),
      fua: fc.boolean(),
    }),
  },
  { weight: 4, arbitrary: fc.record({ kind: fc.constant('release' as const), pick: fc.nat(), oldest: fc.boolean() }) },
  { weight: 1, arbitrary: fc.constant({ kind: 'reopen' as const }) },
);

const damageArb: fc.Arbitrary<Damage> = fc.oneof(
  { weight: 2, arbitrary: fc.constant({ kind: 'none' as const }) },
  {
    weight: 1,
    arbitrary: fc.record({
      kind: fc.constant('truncate' as const),
      newest: fc.integer({ min: 1, max: 4 }),
      at: fc.double({ min: 0, max: 1, noNaN: true, maxExcluded: true }),
    }),
  },
  {
    weight: 1,
    arbitrary: fc.record({
      kind: fc.constant('corrupt' as const),
      newest: fc.integer({ min: 1, max: 4 }),
      bytes: fc.array(
        fc.record({ at: fc.double({ min: 0, max: 1, noNaN: true, maxExcluded: true }), xor: fc.integer({ min: 1, max: 255 }) }),
        { minLength: 1, maxLength: 3 },
      ),
    }),
  },
);

const scenarioArb = fc.record({
  fsync: fc.constantFrom<JournalFsyncPolicy>('always', 'batch', 'none'),
  checkpointEvery: fc.integer({ min: 1, max: 12 }),
  commands: fc.array(commandArb, { minLength: 1, maxLength: 90 }),
  inFlight: fc.integer({ min: 0, max: 6 }),
  damage: damageArb,
});

/** Damages the crash copy in its newest records (the tail region of the log); true when it hit a zero record. */
function damage(path: string, d: Damage): boolean {
  if (d.kind === 'none') return false;
  const file = readFileSync(path);
  const records = scanRecords(file).sort((a, b) => b.seq - a.seq);
  const target = records[Math.min(d.newest, records.length) - 1];
  if (target === undefined) return false;
  const span = RECORD_HEADER_BYTES + target.dataLength;
  if (d.kind === 'truncate') {
    truncateSync(path, target.at + Math.floor(d.at * span));
  } else {
    for (const { at, xor } of d.bytes) {
      const i = target.at + Math.floor(at * span);
      file[i] = (file[i] as number) ^ xor;
    }
    writeFileSync(path, file);
  }
  return target.zero;
}

describe('FileJournal crash recovery', () => {
  it('SPEC 16: after a crash at any point (torn or corrupt tail) replay is an in-order run of intact records (writes and zero ranges), holes only where released, no resolved unreleased record lost', async () => {
    let run = 0;
    let zeroDamaged = 0;
    let zeroReplayed = 0;
    await fc.assert(
      fc.asyncProperty(scenarioArb, async (scenario) => {
        const path = join(dir, `prop-${++run}.journal`);
        const crashPath = `${path}.crash`;
        const open = (): Promise<FileJournal> =>
          FileJournal.open(path, { capacityBytes: 32 * 1024, fsync: scenario.fsync, checkpointEvery: scenario.checkpointEvery });
        let journal = await open();
        const appended: JournalEntry[] = []; // every accepted append, in order
        const released = new Set<number>();
        let seq = 0;
        const unreleased = (): JournalEntry[] => appended.filter((e) => !released.has(e.seq));
        for (const command of scenario.commands) {
          if (command.kind === 'append' || command.kind === 'zero') {
            const entry =
              command.kind === 'zero'
                ? makeZero(seq + command.gap, command.length, { fua: command.fua })
                : makeEntry(seq + command.gap, command.size, { fua: command.fua });
            try {
              await journal.append(entry);
              seq = entry.seq;
              appended.push(entry);
            } catch (error) {
              assert.ok(isBlockMirrorError(error, 'BM_ERR_JOURNAL_FULL'), String(error));
            }
          } else if (command.kind === 'release') {
            const pending = unreleased();
            const victim = command.oldest ? pending[0] : pending[command.pick % Math.max(1, pending.length)];
            if (victim !== undefined) {
              journal.release(victim.seq);
              released.add(victim.seq);
            }
          } else {
            await journal.close();
            journal = await open();
            assertEntries(await collect(journal), unreleased(), 'clean reopen replays exactly the unreleased records');
          }
        }
        const resolvedCount = appended.length;
        const releasedAtCrash = new Set(released);
        // Appends still in flight when the process "crashes".
        const inFlight: Promise<void>[] = [];
        for (let i = 0; i < scenario.inFlight; i++) {
          const entry = i % 3 === 1 ? makeZero(seq + 1, 2 ** 33 + i) : makeEntry(seq + 1, 1000 + i * 700);
          const p = journal.append(entry);
          inFlight.push(p.catch(() => undefined));
          if (journal.lastSeq === entry.seq) {
            seq = entry.seq;
            appended.push(entry);
          }
        }
        copyFileSync(path, crashPath); // the crash: what the file holds right now
        await Promise.all(inFlight);
        await journal.close();

        if (damage(crashPath, scenario.damage)) zeroDamaged++;
        const recovered = await FileJournal.open(crashPath);
        const replayed = await collect(recovered);
        if (replayed.some((e) => e.kind === 'zero')) zeroReplayed++;
        assert.equal(recovered.size, replayed.length);
        const index = new Map(appended.map((e, i) => [e.seq, i]));
        // Never garbage: every replayed record is one that was appended, with its exact content, in order,
        // and the replayed run has no holes except acknowledged records.
        let previous = -1;
        for (const entry of replayed) {
          const i = index.get(entry.seq);
          assert.ok(i !== undefined, `replayed seq ${entry.seq} was never appended`);
          assertEntries([entry], [appended[i] as JournalEntry]);
          assert.ok(i > previous, 'replay is in append order');
          // Only acknowledged records may be skipped (the checkpoint remembers out-of-order releases).
          if (previous >= 0) {
            for (const skipped of appended.slice(previous + 1, i)) {
              assert.ok(releasedAtCrash.has(skipped.seq), `replay skips unreleased seq ${skipped.seq}`);
            }
          }
          previous = i;
        }
        // Nothing unreleased is skipped at the front: older records were all acknowledged.
        const first = replayed[0];
        if (first !== undefined) {
          for (const entry of appended.slice(0, index.get(first.seq))) {
            assert.ok(releasedAtCrash.has(entry.seq), `unreleased seq ${entry.seq} before the replayed run`);
          }
        }
        assert.ok(recovered.lastSeq <= seq && recovered.lastSeq >= (replayed.at(-1)?.seq ?? 0));
        if (scenario.damage.kind === 'none') {
          // Every append that resolved before the crash and was not released is replayed.
          const replayedSeqs = new Set(replayed.map((e) => e.seq));
          for (const entry of appended.slice(0, resolvedCount)) {
            if (!releasedAtCrash.has(entry.seq)) assert.ok(replayedSeqs.has(entry.seq), `lost seq ${entry.seq}`);
          }
          assert.ok(recovered.lastSeq >= (appended[resolvedCount - 1]?.seq ?? 0));
        }
        // The recovered journal keeps working.
        const next = makeEntry(recovered.lastSeq + 1, 321);
        await recovered.append(next);
        const after = await collect(recovered);
        assert.equal(after.at(-1)?.seq, next.seq);
        await recovered.close();
        rmSync(path, { force: true });
        rmSync(crashPath, { force: true });
      }),
      { seed: 0x5eed16, numRuns: 60 },
    );
    // The fixed seed covers torn / corrupt zero records and recoveries that replay zero records.
    assert.ok(zeroDamaged >= 3, `zero records damaged in ${zeroDamaged} runs`);
    assert.ok(zeroReplayed >= 10, `zero records replayed in ${zeroReplayed} runs`);
  });

  it('SPEC 16/17: a writer SIGKILLed mid-stream (writes and zero ranges) loses no resolved, unreleased record', async () => {
    const path = join(dir, 'killed.journal');
    const child = spawn(process.execPath, ['--import', 'tsx', join(here, 'fixtures', 'crash-writer.ts'), path], {
      cwd: repoRoot,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    let err = '';
    let resolvedLines = 0;
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolveExit) =>
      child.on('close', (code, signal) => resolveExit({ code, signal })),
    );
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => (err += chunk));
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => {
      out += chunk;
      resolvedLines += chunk.split('\n').filter((line) => line.startsWith('A ')).length;
      // Kill it mid-stream, with appends in flight.
      if (resolvedLines >= 3000 && child.exitCode === null && !child.killed) child.kill('SIGKILL');
    });
    const { signal } = await exited;
    assert.equal(signal, 'SIGKILL', `writer exited on its own: ${err}`);

    const resolvedSeqs: number[] = [];
    const releasedSeqs = new Set<number>();
    for (const line of out.split('\n')) {
      // A line cut by the kill is incomplete: ignore it (no trailing newline).
      const [tag, value] = line.split(' ');
      if (value === undefined || !/^\d+$/.test(value)) continue;
      if (tag === 'A') resolvedSeqs.push(Number(value));
      if (tag === 'R') releasedSeqs.add(Number(value));
    }
    assert.ok(resolvedSeqs.length >= 3000);

    const journal = await FileJournal.open(path);
    const replayed = await collect(journal);
    assert.equal(journal.size, replayed.length);
    const replayedSeqs = new Set(replayed.map((e) => e.seq));
    for (const seq of resolvedSeqs) {
      if (!releasedSeqs.has(seq)) assert.ok(replayedSeqs.has(seq), `resolved, unreleased seq ${seq} lost`);
    }
    for (let i = 0; i < replayed.length; i++) {
      const entry = replayed[i] as PendingJournalEntry;
      assertEntries([entry], [crashEntry(entry.seq)]);
      if (i > 0) {
        const previous = (replayed[i - 1] as PendingJournalEntry).seq;
        assert.ok(entry.seq > previous, 'replay is in order');
        // Holes only where the writer released (the checkpoint remembers out-of-order releases).
        for (let skipped = previous + 1; skipped < entry.seq; skipped++) {
          assert.ok(releasedSeqs.has(skipped), `replay skips unreleased seq ${skipped}`);
        }
      }
    }
    assert.ok(replayed.some((e) => e.kind === 'zero'), 'zero ranges are replayed too');
    assert.ok(journal.lastSeq >= Math.max(...resolvedSeqs));
    await journal.close();
  });
});
