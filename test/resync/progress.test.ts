/**
 * ProgressTracker in virtual time: rate, ETA, moving average, throttled events.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import FakeTimers from '@sinonjs/fake-timers';
import { clockFrom } from '../../src/clock.js';
import { isBlockMirrorError } from '../../src/errors.js';
import { ProgressTracker } from '../../src/resync/progress.js';
import type { ProgressSnapshot } from '../../src/resync/progress.js';

const MiB = 1024 * 1024;

describe('ProgressTracker', () => {
  it('rate and ETA at a steady 10 MiB/s (virtual time)', () => {
    const timers = FakeTimers.createClock(0);
    const progress = new ProgressTracker({ total: 100 * MiB, clock: clockFrom(timers) });
    for (let i = 0; i < 10; i++) {
      timers.tick(100);
      progress.add(MiB);
    }
    const s = progress.snapshot();
    assert.equal(s.done, 10 * MiB);
    assert.equal(s.remaining, 90 * MiB);
    assert.equal(s.percent, 10);
    assert.equal(s.elapsedMs, 1000);
    assert.equal(s.bytesPerSecond, 10 * MiB);
    assert.equal(s.averageBytesPerSecond, 10 * MiB);
    assert.equal(s.etaMs, 9000);
    assert.equal(s.finished, false);
  });

  it('the moving average follows a change of speed within the window; the overall average does not', () => {
    const timers = FakeTimers.createClock(0);
    const progress = new ProgressTracker({ total: 1000 * MiB, windowMs: 2000, clock: clockFrom(timers) });
    for (let i = 0; i < 100; i++) {
      timers.tick(100);
      progress.add(MiB); // 10 MiB/s for 10 s
    }
    for (let i = 0; i < 50; i++) {
      timers.tick(100);
      progress.add(MiB / 4); // 2.5 MiB/s for 5 s
    }
    const s = progress.snapshot();
    assert.equal(s.done, 100 * MiB + 12.5 * MiB);
    // Samples every windowMs/20 = 100 ms: the window is exactly the last 2 s.
    assert.equal(s.bytesPerSecond, 2.5 * MiB);
    assert.equal(s.averageBytesPerSecond, (112.5 * MiB) / 15);
    assert.equal(s.etaMs, Math.round(((1000 - 112.5) * MiB * 1000) / (2.5 * MiB)));
  });

  it('progress events at most every intervalMs, the latest state always delivered (trailing edge)', () => {
    const timers = FakeTimers.createClock(0);
    const progress = new ProgressTracker({ total: 64 * MiB, intervalMs: 500, clock: clockFrom(timers) });
    const events: Array<{ at: number; s: ProgressSnapshot }> = [];
    progress.on('progress', (s) => events.push({ at: timers.now, s }));
    progress.add(MiB); // leading edge: at once
    assert.deepEqual(
      events.map((e) => [e.at, e.s.done]),
      [[0, MiB]],
    );
    for (let i = 0; i < 20; i++) {
      timers.tick(50);
      progress.add(MiB); // t = 50 … 1000
    }
    timers.tick(1000); // nothing more added: one trailing event (for the add at t = 1000), then silence
    const times = events.map((e) => e.at);
    for (let i = 1; i < times.length; i++) assert.ok((times[i] as number) - (times[i - 1] as number) >= 500, `events ${times.join(',')}`);
    assert.deepEqual(times, [0, 500, 1000, 1500]);
    assert.equal(events.at(-1)?.s.done, 21 * MiB, 'the last event carries the final state');
    timers.tick(10_000);
    assert.equal(events.length, 4, 'no events without progress');
  });

  it('finish emits finish once, cancels the pending event, freezes elapsed time; setTotal and update adjust', () => {
    const timers = FakeTimers.createClock(0);
    const progress = new ProgressTracker({ total: 10 * MiB, intervalMs: 1000, clock: clockFrom(timers) });
    const finished: ProgressSnapshot[] = [];
    let progressEvents = 0;
    progress.on('progress', () => progressEvents++);
    progress.on('finish', (s) => finished.push(s));
    progress.add(MiB);
    timers.tick(100);
    progress.setTotal(20 * MiB); // more dirty regions appeared
    assert.equal(progress.snapshot().percent, 5);
    progress.update(20 * MiB);
    assert.equal(progress.snapshot().etaMs, 0);
    progress.finish();
    progress.finish();
    timers.tick(5000);
    assert.equal(progressEvents, 1, 'the trailing event was cancelled');
    assert.equal(finished.length, 1);
    assert.equal(finished[0]?.finished, true);
    assert.equal(finished[0]?.elapsedMs, 100);
    assert.equal(progress.snapshot().elapsedMs, 100, 'elapsed time stops at finish');
    progress.add(MiB);
    assert.equal(progress.done, 20 * MiB, 'ignored after finish');
    assert.equal(timers.countTimers(), 0);
  });

  it('unknown ETA while nothing moved; a resumed operation starts from done; bad options refused', () => {
    const timers = FakeTimers.createClock(0);
    const progress = new ProgressTracker({ total: 10 * MiB, done: 4 * MiB, clock: clockFrom(timers) });
    assert.equal(progress.snapshot().etaMs, null);
    assert.equal(progress.snapshot().percent, 40);
    timers.tick(1000);
    progress.add(MiB);
    assert.equal(progress.snapshot().bytesPerSecond, MiB, 'rate counts only bytes done since the start');
    assert.equal(progress.snapshot().etaMs, 5000);
    assert.equal(new ProgressTracker({ total: 0, clock: clockFrom(timers) }).snapshot().percent, 100);
    for (const bad of [{ total: -1 }, { total: 1.5 }, { total: 1, intervalMs: 0 }, { total: 1, windowMs: -5 }]) {
      assert.throws(() => new ProgressTracker({ ...bad, clock: clockFrom(timers) }), (e: unknown) => isBlockMirrorError(e, 'BM_ERR_INVALID_ARGUMENT'));
    }
    assert.throws(() => progress.add(-1), (e: unknown) => isBlockMirrorError(e, 'BM_ERR_INVALID_ARGUMENT'));
  });
});
