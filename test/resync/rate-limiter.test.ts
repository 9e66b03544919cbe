/**
 * RateLimiter in virtual time (@sinonjs/fake-timers through an injected Clock).
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import FakeTimers from '@sinonjs/fake-timers';
import { clockFrom } from '../../src/clock.js';
import { isBlockMirrorError } from '../../src/errors.js';
import { RateLimiter } from '../../src/resync/rate-limiter.js';

const KiB = 1024;
const MiB = 1024 * 1024;

type FakeClock = ReturnType<typeof FakeTimers.createClock>;

function setup(): { timers: FakeClock; clock: ReturnType<typeof clockFrom> } {
  const timers = FakeTimers.createClock(0);
  return { timers, clock: clockFrom(timers) };
}

/** Records when (virtual ms) each take resolves. */
function track(timers: { now: number }, promise: Promise<void>, log: Array<[string, number]>, label: string): Promise<void> {
  return promise.then(() => {
    log.push([label, timers.now]);
  });
}

describe('RateLimiter', () => {
  it('SPEC 26: bytesPerSecond bytes beyond the burst take exactly 1 s', async () => {
    const { timers, clock } = setup();
    const limiter = new RateLimiter({ bytesPerSecond: MiB, burst: 64 * KiB, clock });
    const done: number[] = [];
    // 17 × 64 KiB: the first passes on the full bucket, the other 16 (1 MiB) need 1 s.
    const all = Array.from({ length: 17 }, () => limiter.take(64 * KiB).then(() => void done.push(timers.now)));
    await timers.tickAsync(2000);
    await Promise.all(all);
    assert.equal(done.length, 17);
    assert.equal(done[0], 0);
    assert.equal(done[16], 1000, 'the last 64 KiB at t = 1 s');
    for (let i = 1; i < 17; i++) assert.equal(done[i], Math.ceil(i * 62.5), `take ${i}`);
  });

  it('sustained rate: a stream of takes averages bytesPerSecond', async () => {
    const { timers, clock } = setup();
    const limiter = new RateLimiter({ bytesPerSecond: 10 * MiB, clock }); // default burst: 1 MiB
    assert.equal(limiter.burst, MiB);
    let sent = 0;
    let stop = false;
    const pump = (async () => {
      while (!stop) {
        await limiter.take(300 * KiB);
        sent += 300 * KiB;
      }
    })();
    await timers.tickAsync(10_000);
    stop = true;
    const expected = 10 * 10 * MiB + MiB; // 10 s at the rate plus the initial burst
    assert.ok(Math.abs(sent - expected) <= 300 * KiB, `sent ${sent}, expected about ${expected}`);
    await timers.tickAsync(1000);
    await pump;
  });

  it('FIFO: requests resolve in order; a request larger than the burst is not starved by small ones', async () => {
    const { timers, clock } = setup();
    const limiter = new RateLimiter({ bytesPerSecond: 1000, burst: 100, clock });
    const log: Array<[string, number]> = [];
    const all = [
      track(timers, limiter.take(100), log, 'a'), // bucket full: at once
      track(timers, limiter.take(5000), log, 'big'), // needs a full bucket (100 ms), then owes 4900
      track(timers, limiter.take(10), log, 'small1'),
      track(timers, limiter.take(10), log, 'small2'),
    ];
    assert.equal(limiter.pending, 3);
    await timers.tickAsync(10_000);
    await Promise.all(all);
    assert.deepEqual(
      log.map(([label]) => label),
      ['a', 'big', 'small1', 'small2'],
    );
    assert.deepEqual(log, [
      ['a', 0],
      ['big', 100],
      ['small1', 5010], // the 4900-byte debt takes 4.9 s, then 10 bytes 10 ms
      ['small2', 5020],
    ]);
    // Small requests arriving while the big one waits queue behind it.
    const later: Array<[string, number]> = [];
    const big = track(timers, limiter.take(1000), later, 'big');
    const small = track(timers, limiter.take(1), later, 'small');
    await timers.tickAsync(5000);
    await Promise.all([big, small]);
    assert.deepEqual(later.map(([l]) => l), ['big', 'small']);
  });

  it('setRate at runtime reschedules waiting requests; 0 / Infinity = unlimited', async () => {
    const { timers, clock } = setup();
    const limiter = new RateLimiter({ bytesPerSecond: 1000, burst: 1000, clock });
    await limiter.take(1000); // drain the bucket
    const log: Array<[string, number]> = [];
    const first = track(timers, limiter.take(1000), log, 'first'); // would be t = 1000 at 1000 B/s
    await timers.tickAsync(500); // 500 bytes earned
    limiter.setRate(10_000); // the other 500 now take 50 ms
    await timers.tickAsync(100);
    await first;
    assert.deepEqual(log, [['first', 550]]);

    limiter.setRate(100); // slow: 1000 bytes = 10 s
    const slow = track(timers, limiter.take(1000), log, 'slow');
    await timers.tickAsync(2000);
    assert.equal(log.length, 1);
    limiter.setRate(Infinity); // unlimited: released at once
    await timers.tickAsync(0);
    await slow;
    assert.deepEqual(log[1], ['slow', 2600]);
    assert.equal(limiter.available, Infinity);
    for (let i = 0; i < 100; i++) await limiter.take(10 * MiB);
    assert.equal(timers.now, 2600, 'unlimited takes never wait');

    const zero = new RateLimiter({ bytesPerSecond: 0, clock });
    await zero.take(1024 * MiB);
    assert.equal(timers.now, 2600);
  });

  it('abort removes a waiting request; close rejects the rest with BM_ERR_CLOSED', async () => {
    const { timers, clock } = setup();
    const limiter = new RateLimiter({ bytesPerSecond: 1000, burst: 100, clock });
    await limiter.take(100);
    const controller = new AbortController();
    const reason = new Error('resync stopped');
    const log: Array<[string, number]> = [];
    const aborted = limiter.take(1000, { signal: controller.signal });
    const next = track(timers, limiter.take(50), log, 'next');
    controller.abort(reason);
    await assert.rejects(aborted, (e: unknown) => e === reason);
    await timers.tickAsync(1000);
    await next;
    assert.deepEqual(log, [['next', 50]], 'the aborted request consumed nothing');

    await limiter.take(100); // drain the bucket refilled meanwhile
    const waiting = limiter.take(10_000);
    assert.equal(limiter.pending, 1);
    limiter.close();
    await assert.rejects(waiting, (e: unknown) => isBlockMirrorError(e, 'BM_ERR_CLOSED'));
    await assert.rejects(limiter.take(1), (e: unknown) => isBlockMirrorError(e, 'BM_ERR_CLOSED'));
    assert.equal(timers.countTimers(), 0, 'no timer left');
  });

  it('validates its arguments', async () => {
    const { clock } = setup();
    for (const bytesPerSecond of [-1, Number.NaN, -Infinity]) {
      assert.throws(() => new RateLimiter({ bytesPerSecond, clock }), (e: unknown) => isBlockMirrorError(e, 'BM_ERR_INVALID_ARGUMENT'));
    }
    assert.throws(() => new RateLimiter({ bytesPerSecond: 1, burst: 0, clock }), (e: unknown) => isBlockMirrorError(e, 'BM_ERR_INVALID_ARGUMENT'));
    const limiter = new RateLimiter({ bytesPerSecond: 1, clock });
    await assert.rejects(limiter.take(-1), (e: unknown) => isBlockMirrorError(e, 'BM_ERR_INVALID_ARGUMENT'));
    await assert.rejects(limiter.take(1.5), (e: unknown) => isBlockMirrorError(e, 'BM_ERR_INVALID_ARGUMENT'));
    assert.throws(() => limiter.setRate(-5), (e: unknown) => isBlockMirrorError(e, 'BM_ERR_INVALID_ARGUMENT'));
  });
});
