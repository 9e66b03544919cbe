import assert from 'node:assert/strict';
import { afterEach, beforeEach, describe, it } from 'node:test';
import FakeTimers from '@sinonjs/fake-timers';
import { INLINE_BACKOFF_OPS, INLINE_EXCUSED_MS, INLINE_MAX_BYTES, INLINE_SLOW_MS, InlineGate } from '../../src/device/inline-gate.js';

describe('InlineGate', () => {
  let clock: ReturnType<typeof FakeTimers.install>;
  beforeEach(() => {
    clock = FakeTimers.install({ toFake: ['performance'] });
  });
  afterEach(() => clock.uninstall());

  it('runs small operations inline and leaves large or empty ones to the thread pool', () => {
    const gate = new InlineGate(true);
    assert.equal(gate.run(4096, () => 7), 7);
    assert.equal(gate.run(INLINE_MAX_BYTES, () => 8), 8);
    let ran = false;
    assert.equal(gate.run(INLINE_MAX_BYTES + 1, () => (ran = true)), undefined);
    assert.equal(gate.run(0, () => (ran = true)), undefined);
    assert.equal(ran, false);
  });

  it('a disabled gate never runs anything inline', () => {
    const gate = new InlineGate(false);
    let ran = false;
    assert.equal(gate.run(512, () => (ran = true)), undefined);
    assert.equal(ran, false);
  });

  it('after a slow operation the next ones go to the thread pool, then one probes again', () => {
    const gate = new InlineGate(true);
    assert.equal(gate.run(4096, () => clock.tick(INLINE_SLOW_MS)), clock.now, 'exactly the limit is not slow');
    assert.equal(gate.backingOff, false);
    gate.run(4096, () => clock.tick(INLINE_SLOW_MS + 0.5));
    assert.equal(gate.backingOff, true);
    let inline = 0;
    for (let i = 0; i < INLINE_BACKOFF_OPS; i++) if (gate.run(4096, () => ++inline) !== undefined) assert.fail(`op ${i} ran inline`);
    assert.equal(inline, 0);
    assert.equal(gate.backingOff, false);
    assert.equal(gate.run(4096, () => 'probe'), 'probe');
  });

  it('an excused operation (a write while the file is synced) up to INLINE_EXCUSED_MS neither backs off nor moves the mean; a slower one still backs off', () => {
    const gate = new InlineGate(true, 0.025);
    gate.run(4096, () => clock.tick(INLINE_EXCUSED_MS), true);
    assert.equal(gate.backingOff, false, 'a wait for a sync is not a slow disk');
    // the mean is untouched: page-cache-fast operations right after stay inline
    for (let i = 0; i < 100; i++) assert.notEqual(gate.run(4096, () => clock.tick(0.002)), undefined, `op ${i} went to the thread pool`);
    gate.run(4096, () => clock.tick(INLINE_EXCUSED_MS + 0.5), true);
    assert.equal(gate.backingOff, true, 'slower than any wait for a sync: the disk is slow');
    // not excused: the usual limit
    const plain = new InlineGate(true);
    plain.run(4096, () => clock.tick(INLINE_SLOW_MS + 0.5));
    assert.equal(plain.backingOff, true);
  });

  it('with a mean limit, operations that are each fast enough but slow on average (disk reads) back off', () => {
    const gate = new InlineGate(true, 0.025);
    let ran = 0;
    while (!gate.backingOff) {
      assert.notEqual(gate.run(4096, () => clock.tick(0.04)), undefined, `op ${ran} ran inline`);
      ran++;
      assert.ok(ran < 100, 'never backed off');
    }
    assert.ok(ran > 1, `one 40-µs operation alone must not back off (backed off after ${ran})`);
    // page-cache speed with one outlier: stays inline
    const warm = new InlineGate(true, 0.025);
    for (let i = 0; i < 5000; i++) {
      const ms = i === 2500 ? 0.3 : 0.002;
      assert.notEqual(
        warm.run(4096, () => clock.tick(ms)),
        undefined,
        `op ${i} went to the thread pool`,
      );
    }
    assert.equal(warm.backingOff, false);
    // without a mean limit the same 40-µs operations stay inline
    const plain = new InlineGate(true);
    for (let i = 0; i < 200; i++) plain.run(4096, () => clock.tick(0.04));
    assert.equal(plain.backingOff, false);
  });

  it('an operation that throws still counts: its error propagates and a slow failure backs off', () => {
    const gate = new InlineGate(true);
    assert.throws(
      () =>
        gate.run(4096, () => {
          clock.tick(5);
          throw Object.assign(new Error('EIO'), { code: 'EIO' });
        }),
      { code: 'EIO' },
    );
    assert.equal(gate.backingOff, true);
  });
});
