import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createClock } from '@sinonjs/fake-timers';
import { clockFrom } from '../../src/clock.js';
import { BlockMirrorError } from '../../src/errors.js';
import { ConnectionArray } from '../../src/link/connection-array.js';
import type { FramedConnection } from '../../src/link/framed-connection.js';
import { DEFAULT_IDLE_TIMEOUT, IdleWatch } from '../../src/link/idle-watch.js';
import { entered, virtualPair } from './harness.js';

function setup(status: 'open' | 'closed' | 'connecting', idleTimeout?: number) {
  const fake = createClock();
  const clock = clockFrom(fake);
  const slots = new ConnectionArray(2);
  const slot = slots.slots[0]!;
  slot.status = status;
  const expired: number[] = [];
  const watch = new IdleWatch({ clock, slot, onExpire: () => expired.push(fake.now), ...(idleTimeout === undefined ? {} : { idleTimeout }) });
  return { fake, slot, expired, watch };
}

describe('IdleWatch', () => {
  it('SPEC 6: an idle handler whose slot is open keeps listening (checks every T3, never expires)', () => {
    const { fake, expired, watch } = setup('open');
    assert.equal(watch.idleTimeout, DEFAULT_IDLE_TIMEOUT);
    fake.tick(4999);
    assert.equal(watch.checks, 0);
    fake.tick(1);
    assert.equal(watch.checks, 1);
    fake.tick(60_000);
    assert.deepEqual(expired, []);
    assert.equal(watch.checks, 13);
    assert.equal(watch.expired, false);
    watch.stop();
    assert.equal(fake.countTimers(), 0);
  });

  it('SPEC 6: an idle handler whose slot is closed closes and exits at the first check', () => {
    const { fake, expired, watch } = setup('closed');
    fake.tick(60_000);
    assert.deepEqual(expired, [5000]);
    assert.equal(watch.expired, true);
    assert.equal(fake.countTimers(), 0, 'the watch stopped itself');
  });

  it('SPEC 6: the slot is checked only after T3 without frames; a frame restarts the idle time', () => {
    const { fake, slot, expired, watch } = setup('open', 1000);
    fake.tick(400);
    slot.status = 'closed'; // e.g. the link monitor marked it stale
    for (let t = 400; t < 3000; t += 500) {
      watch.touch();
      fake.tick(500);
    }
    // Frames at 400, 900, …, 2900: never idle for 1 s, so never checked.
    assert.equal(watch.checks, 0);
    assert.deepEqual(expired, []);
    fake.tick(5000);
    assert.deepEqual(expired, [3900]); // 1 s after the last frame
    assert.equal(watch.idleFor, 8400 - 2900);
  });

  it('SPEC 6: open then closed: the handler exits at the first check after the slot closed', () => {
    const { fake, slot, expired } = setup('connecting', 1000);
    fake.tick(3500);
    assert.deepEqual(expired, []);
    slot.status = 'closed';
    fake.tick(5000);
    assert.deepEqual(expired, [4000]);
  });

  it('SPEC 6: a slot that now holds another connection counts as closed for the old handler', () => {
    const fake = createClock();
    const slot = new ConnectionArray(1).slots[0]!;
    const mine = {} as FramedConnection;
    slot.connection = mine;
    slot.status = 'open';
    const expired: number[] = [];
    new IdleWatch({ clock: clockFrom(fake), idleTimeout: 1000, slot, connection: mine, onExpire: () => expired.push(fake.now) });
    fake.tick(2500);
    assert.deepEqual(expired, []);
    slot.connection = {} as FramedConnection; // reopened meanwhile by a new handler
    fake.tick(1000);
    assert.deepEqual(expired, [3000]);
  });

  it('stop() clears the timer; bad idleTimeout is BM_ERR_INVALID_ARGUMENT', () => {
    const { fake, expired, watch } = setup('closed');
    watch.stop();
    assert.equal(fake.countTimers(), 0);
    fake.tick(10_000);
    assert.deepEqual(expired, []);
    for (const idleTimeout of [0, -1, Number.NaN]) {
      assert.throws(
        () => new IdleWatch({ clock: clockFrom(fake), idleTimeout, slot: new ConnectionArray(1).slots[0]!, onExpire: () => {} }),
        (e: unknown) => e instanceof BlockMirrorError && e.code === 'BM_ERR_INVALID_ARGUMENT',
      );
    }
  });

  it('SPEC 4, 6: when the link monitor marks the slots stale, idle handlers exit at their next check', async () => {
    const pair = await virtualPair();
    const { a, b, fake } = pair;
    const exits: number[][] = a.slots.slots.map(() => []);
    const watches = a.slots.slots.map((slot) => new IdleWatch({ clock: pair.clock, slot, onExpire: () => exits[slot.index]!.push(fake.now) }));
    a.monitor.start();
    a.monitor.connected();
    b.monitor.start();
    pair.until(10_000);
    assert.deepEqual(exits, [[], [], [], []], 'idle but open: keep listening');
    pair.partition();
    pair.until(30_000);
    // b's last heartbeat arrived at 9001; the send at 13500 marks the slots closed; the next
    // idle checks (every 5 s from 0) are at 15000.
    assert.deepEqual(entered(a, 'down'), [13_500]);
    assert.deepEqual(exits, [[15_000], [15_000], [15_000], [15_000]]);
    for (const w of watches) assert.equal(w.expired, true);
    await pair.stop();
  });
});

