/**
 * The write-intent guarantee of FileDirtyBitmap against a real crash: a child
 * process marks and clears until it is SIGKILLed mid-stream; after reopening
 * the file, every region whose markDurable resolved (and was not cleared
 * afterwards) is dirty. What the child did is read from a log file it writes
 * synchronously (a line written to a stdout pipe may die queued in the child).
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, describe, it } from 'node:test';
import { FileDirtyBitmap } from '../../src/resync/file-dirty-bitmap.js';
import type { BitmapFlushPolicy } from '../../src/resync/file-dirty-bitmap.js';

const here = dirname(fileURLToPath(import.meta.url));
const repoRoot = resolve(here, '..', '..');
const dir = mkdtempSync(join(tmpdir(), 'bm-bitmap-crash-'));
after(() => rmSync(dir, { recursive: true, force: true }));

const REGION = 4096;
const VOLUME = 8 * 1024 * 1024 * 1024; // 2^21 regions: a 256 KiB bit array of 64 pages
const KILL_AFTER = 3000;

interface Run {
  marks: Array<{ seq: number; offset: number; length: number }>;
  clears: Array<{ seq: number; offset: number; length: number }>;
}

async function runUntilKilled(path: string, policy: BitmapFlushPolicy): Promise<Run> {
  const logPath = `${path}.log`;
  const child = spawn(process.execPath, ['--import', 'tsx', join(here, 'fixtures', 'bitmap-writer.ts'), path, policy, String(VOLUME), logPath], {
    cwd: repoRoot,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let err = '';
  let resolved = 0;
  const exited = new Promise<NodeJS.Signals | null>((resolveExit) => child.on('close', (_code, signal) => resolveExit(signal)));
  child.stderr.setEncoding('utf8').on('data', (chunk: string) => (err += chunk));
  child.stdout.setEncoding('utf8').on('data', (chunk: string) => {
    resolved += chunk.split('\n').filter((line) => line === 'M').length;
    if (resolved >= KILL_AFTER && child.exitCode === null && !child.killed) child.kill('SIGKILL');
  });
  const signal = await exited;
  assert.equal(signal, 'SIGKILL', `writer exited on its own: ${err}`);
  // The log, not stdout, is the record: its lines were written synchronously before the kill.
  const run: Run = { marks: [], clears: [] };
  const lines = readFileSync(logPath, 'utf8').split('\n');
  lines.pop(); // a line cut by the kill has no newline
  for (const line of lines) {
    const [tag, seq, offset, length] = line.split(' ');
    if (length === undefined) continue;
    const entry = { seq: Number(seq), offset: Number(offset), length: Number(length) };
    if (tag === 'M') run.marks.push(entry);
    if (tag === 'C') run.clears.push(entry);
  }
  return run;
}

describe('FileDirtyBitmap crash (SIGKILL)', () => {
  for (const policy of ['batch', 'none'] as const) {
    it(`SPEC 18: flush '${policy}': every region whose markDurable resolved and was not cleared later is dirty after the crash`, async () => {
      const path = join(dir, `${policy}.bitmap`);
      const run = await runUntilKilled(path, policy);
      assert.ok(run.marks.length >= KILL_AFTER, `${run.marks.length} resolved marks`);
      assert.ok(run.clears.length > 100, `${run.clears.length} clears`);

      const regions = VOLUME / REGION;
      const lastMark = new Int32Array(regions); // highest seq of a resolved mark touching the region
      const lastClear = new Int32Array(regions); // highest seq of a clear covering the region
      for (const m of run.marks) {
        for (let i = Math.floor(m.offset / REGION); i <= Math.floor((m.offset + m.length - 1) / REGION); i++) {
          lastMark[i] = Math.max(lastMark[i] as number, m.seq);
        }
      }
      for (const c of run.clears) {
        for (let i = c.offset / REGION; i < (c.offset + c.length) / REGION; i++) lastClear[i] = Math.max(lastClear[i] as number, c.seq);
      }

      const bitmap = await FileDirtyBitmap.open(path, { volumeSize: VOLUME });
      assert.equal(bitmap.stats().cleanOpen, false, 'the crash left the header unclean');
      let required = 0;
      let clearedOnDisk = 0;
      for (let i = 0; i < regions; i++) {
        const mark = lastMark[i] as number;
        const clear = lastClear[i] as number;
        if (mark > clear) {
          required++;
          assert.ok(bitmap.isDirty(i), `region ${i}: markDurable (op ${mark}) resolved, lost in the crash`);
        } else if (clear > 0 && mark > 0 && !bitmap.isDirty(i)) {
          clearedOnDisk++;
        }
      }
      assert.ok(required > 1000, `${required} regions checked`);
      // Informational: lazily written clears that reached the disk before the kill.
      assert.ok(clearedOnDisk >= 0);
      await bitmap.close();
    });
  }
});
