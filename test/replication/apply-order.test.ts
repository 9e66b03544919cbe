/**
 * ApplyOrder: the target's per-stream ordering state (barriers, skip records,
 * at-most-once, settle on a new session, incarnation).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ApplyOrder } from '../../src/replication/apply-order.js';

/** A controllable apply function: it runs when submitted and finishes when the test says so. */
function gate(): { apply: () => Promise<void>; runs: number; finish(): void; fail(e: Error): void } {
  let resolve: (() => void) | undefined;
  let reject: ((e: Error) => void) | undefined;
  const g = {
    runs: 0,
    apply: () => {
      g.runs++;
      return new Promise<void>((res, rej) => {
        resolve = res;
        reject = rej;
      });
    },
    finish: () => resolve!(),
    fail: (e: Error) => reject!(e),
  };
  return g;
}

/** Lets promise callbacks run (microtasks only: no timer, no I/O). */
async function settleMicrotasks(): Promise<void> {
  for (let i = 0; i < 10; i++) await Promise.resolve();
}

test('ApplyOrder: skip(from, to) waits for its barrier (from - 1) and only then moves the watermark to `to`', async () => {
  const order = new ApplyOrder();
  let skipped = false;
  const skip = order.skip(3, 5).then(() => (skipped = true));
  await settleMicrotasks();
  assert.equal(skipped, false);
  assert.equal(order.watermark, 0, 'nothing moves before seqs 1 and 2');
  assert.equal(order.isApplied(4), false);
  // seq 6 waits for 5, i.e. for the skip record
  const applied: number[] = [];
  const six = order.submit(6, 5, async () => void applied.push(6));
  await order.submit(1, 0, async () => void applied.push(1));
  await settleMicrotasks();
  assert.equal(order.watermark, 1);
  assert.equal(skipped, false, 'still waiting for seq 2');
  await order.submit(2, 1, async () => void applied.push(2));
  await skip;
  await six;
  assert.equal(order.watermark, 6);
  assert.deepEqual(applied, [1, 2, 6]);
  assert.equal(order.isApplied(3) && order.isApplied(4) && order.isApplied(5), true);
  // an empty skip (to < from) is a no-op
  await order.skip(9, 8);
  assert.equal(order.watermark, 6);
});

test('ApplyOrder: a skip record over seqs that are already applied, or a resent one, changes nothing', async () => {
  const order = new ApplyOrder(10);
  await order.skip(4, 7);
  assert.equal(order.watermark, 10);
  await order.skip(11, 12);
  await order.skip(11, 12);
  assert.equal(order.watermark, 12);
});

test('ApplyOrder: a duplicate submit (resend) is applied once: while pending it shares the outcome, afterwards it resolves without applying', async () => {
  const order = new ApplyOrder();
  const g = gate();
  const first = order.submit(1, 0, g.apply);
  const again = order.submit(1, 0, g.apply);
  assert.equal(g.runs, 1, 'the copy shares the running request');
  g.finish();
  await Promise.all([first, again]);
  let later = 0;
  await order.submit(1, 0, async () => void later++);
  assert.equal(later, 0, 'an applied seq is acknowledged without writing');
  assert.equal(order.watermark, 1);
  // an applied seq above the watermark (out of barrier order) is remembered too
  await order.submit(3, 1, async () => undefined);
  assert.equal(order.isApplied(3), true);
  assert.equal(order.watermark, 1);
  await order.submit(3, 1, async () => void later++);
  assert.equal(later, 0);
  await order.submit(2, 1, async () => undefined);
  assert.equal(order.watermark, 3);
});

test('ApplyOrder: a failed apply is not applied; the resent request runs again', async () => {
  const order = new ApplyOrder();
  const g = gate();
  const first = order.submit(1, 0, g.apply);
  g.fail(Object.assign(new Error('EIO'), { code: 'BM_ERR_IO' }));
  await assert.rejects(first, { code: 'BM_ERR_IO' });
  assert.equal(order.watermark, 0);
  let runs = 0;
  await order.submit(1, 0, async () => void runs++);
  assert.equal(runs, 1);
  assert.equal(order.watermark, 1);
});

test('ApplyOrder: settle() drops waiting requests with BM_ERR_CLOSED and resolves only once running ones finished', async () => {
  const order = new ApplyOrder();
  const running = gate();
  const one = order.submit(1, 0, running.apply);
  let waitingRan = false;
  const waiting = order.submit(3, 2, async () => void (waitingRan = true));
  const waitingRejected = assert.rejects(waiting, { code: 'BM_ERR_CLOSED' });
  assert.equal(order.waitingCount, 1);
  let settled = false;
  const settling = order.settle().then(() => (settled = true));
  await waitingRejected;
  assert.equal(order.waitingCount, 0);
  await settleMicrotasks();
  assert.equal(settled, false, 'settle waits for the running request');
  running.finish();
  await settling;
  await one;
  assert.equal(settled, true);
  assert.equal(order.watermark, 1);
  // the dropped request never ran, even once its barrier is met later; it can be submitted again
  await order.submit(2, 1, async () => undefined);
  await settleMicrotasks();
  assert.equal(waitingRan, false);
  let again = 0;
  await order.submit(3, 2, async () => void again++);
  assert.equal(again, 1);
  assert.equal(order.watermark, 3);
});

test('ApplyOrder: settle() with a running request that fails still resolves', async () => {
  const order = new ApplyOrder();
  const g = gate();
  const p = order.submit(1, 0, g.apply);
  const caught = p.catch(() => 'failed');
  const settling = order.settle();
  g.fail(new Error('boom'));
  await settling;
  assert.equal(await caught, 'failed');
});

test('ApplyOrder: each instance has its own incarnation; a given one is kept', () => {
  const a = new ApplyOrder();
  const b = new ApplyOrder();
  const c = new ApplyOrder(7);
  assert.notEqual(a.incarnation, b.incarnation);
  assert.notEqual(a.incarnation, c.incarnation);
  assert.match(a.incarnation, /^[0-9a-f]+$/);
  assert.equal(new ApplyOrder(0, 'fixed').incarnation, 'fixed');
  assert.equal(c.watermark, 7);
  assert.equal(c.isApplied(7), true);
  assert.equal(c.isApplied(8), false);
});

test('ApplyOrder: whenApplied runs at once below the watermark, else once the watermark reaches the barrier', async () => {
  const order = new ApplyOrder(2);
  const ran: string[] = [];
  order.whenApplied(2, () => ran.push('now'));
  order.whenApplied(3, () => ran.push('later'));
  assert.deepEqual(ran, ['now']);
  assert.equal(order.wouldWait(3), true);
  await order.submit(3, 2, async () => undefined);
  assert.deepEqual(ran, ['now', 'later']);
});
