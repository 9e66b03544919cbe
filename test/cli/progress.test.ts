/**
 * Progress output: JSON lines per interval off a TTY, an in-place bar on a
 * TTY. Virtual time (fake timers), no sleeps.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import FakeTimers from '@sinonjs/fake-timers';
import { clockFrom } from '../../src/clock.js';
import { OperationProgress } from '../../src/cli/operation-progress.js';
import { createProgress, type ProgressRecord } from '../../src/cli/progress.js';

const MiB = 1024 * 1024;

function sink(isTTY: boolean, columns?: number): { chunks: string[]; isTTY: boolean; columns?: number; write(s: string): boolean } {
  const chunks: string[] = [];
  const s: { chunks: string[]; isTTY: boolean; columns?: number; write(s: string): boolean } = {
    chunks,
    isTTY,
    write(c: string) {
      chunks.push(c);
      return true;
    },
  };
  if (columns !== undefined) s.columns = columns;
  return s;
}

describe('createProgress', () => {
  test('non-TTY: one JSON line per interval (also when stalled), a final line with finished: true', () => {
    const timers = FakeTimers.createClock(0);
    const out = sink(false);
    const p = createProgress({ label: 'resync vol0', total: 64 * MiB, stream: out, clock: clockFrom(timers) });
    p.update(16 * MiB);
    timers.tick(999);
    assert.equal(out.chunks.length, 0, 'nothing before the first interval');
    timers.tick(1);
    p.add(16 * MiB);
    timers.tick(1000);
    timers.tick(1000); // stalled: still a line
    p.finish();
    timers.tick(5000); // stopped: no more lines
    const lines = out.chunks.join('').split('\n').filter((l) => l !== '');
    assert.equal(lines.length, 4);
    const recs = lines.map((l) => JSON.parse(l) as ProgressRecord);
    assert.deepEqual(recs[0], {
      type: 'progress', label: 'resync vol0', done: 16 * MiB, total: 64 * MiB, percent: 25, rate: 16 * MiB, elapsedMs: 1000, etaMs: 3000,
    });
    assert.equal(recs[1]!.done, 32 * MiB);
    assert.equal(recs[1]!.percent, 50);
    assert.equal(recs[2]!.done, 32 * MiB);
    assert.equal(recs[2]!.elapsedMs, 3000);
    assert.deepEqual(recs[3], { type: 'progress', label: 'resync vol0', done: 64 * MiB, total: 64 * MiB, percent: 100, rate: Math.round((64 * MiB * 1000) / 3000), elapsedMs: 3000, finished: true });
    for (const l of lines) assert.ok(!l.includes('\r'));
    p.finish(); // idempotent
    assert.equal(out.chunks.join('').split('\n').filter((l) => l !== '').length, 4);
  });

  test('TTY: a bar redrawn in place (\\r, clear to end of line), newline only at the end', () => {
    const timers = FakeTimers.createClock(0);
    const out = sink(true);
    const p = createProgress({ label: 'verify', total: 100 * MiB, stream: out, clock: clockFrom(timers) });
    p.update(50 * MiB);
    timers.tick(100);
    assert.equal(out.chunks.length, 1);
    const frame = out.chunks[0]!;
    assert.equal(frame, '\rverify [###############...............]  50.0%  50.0 MiB / 100.0 MiB  500.0 MiB/s  ETA 1s\x1b[K');
    p.finish();
    const last = out.chunks.at(-1)!;
    assert.ok(last.startsWith(`\rverify [${'#'.repeat(30)}] 100.0%  100.0 MiB / 100.0 MiB `), JSON.stringify(last));
    assert.ok(last.endsWith('\x1b[K\n'), JSON.stringify(last));
    assert.equal(out.chunks.join('').split('\n').length, 2, 'exactly one newline, at the end');
  });

  test('TTY line cut to the terminal width; values clamped to 0…total; aborted finish keeps the amount', () => {
    const timers = FakeTimers.createClock(0);
    const out = sink(true, 50);
    const p = createProgress({ label: 'resync', total: 1000, unit: 'items', stream: out, clock: clockFrom(timers), interval: 10 });
    p.update(5000);
    assert.equal(p.done, 1000);
    p.update(-3);
    assert.equal(p.done, 0);
    p.add(250);
    timers.tick(10);
    const frame = out.chunks[0]!.replace('\r', '').replace('\x1b[K', '');
    assert.ok(frame.length <= 49, `cut to the width: ${JSON.stringify(frame)}`);
    assert.ok(frame.startsWith(`resync [${'#'.repeat(8)}${'.'.repeat(22)}]  25.0%`), frame);
    p.finish({ aborted: true });
    assert.equal(p.done, 250);
    assert.match(out.chunks.at(-1)!, /25\.0%/);
    p.update(900);
    assert.equal(p.done, 250, 'no updates after finish');
  });
});

describe('OperationProgress', () => {
  test('one display per label: the total can grow, finish ends it once (aborted keeps the amount), close ends the rest', () => {
    const timers = FakeTimers.createClock(0);
    const out = sink(false);
    const ops = new OperationProgress(out, clockFrom(timers));
    ops.report('resync vol0', 1 * MiB, 4 * MiB);
    ops.report('resync vol0', 3 * MiB, 8 * MiB); // new dirty regions: the total grew
    ops.report('verify vol1', 1 * MiB, 2 * MiB);
    ops.finish('resync vol0');
    ops.finish('resync vol0'); // no second final line
    ops.close();
    const recs = out.chunks.join('').split('\n').filter((l) => l !== '').map((l) => JSON.parse(l) as ProgressRecord);
    assert.deepEqual(
      recs.map((r) => [r.label, r.done, r.total, r.finished]),
      [
        ['resync vol0', 8 * MiB, 8 * MiB, true],
        ['verify vol1', 1 * MiB, 2 * MiB, true],
      ],
    );
  });
});

