import { test } from 'node:test';
import assert from 'node:assert/strict';
import { VirtualTime } from '../../src/testing/simulator/virtual-time.js';
import { Rng } from '../../src/testing/simulator/rng.js';
import { prefixPoint } from '../../src/testing/simulator/prefix-check.js';
import { simulate } from '../../src/testing/simulator/simulation.js';

test('virtual time fires timers in (due, creation) order and only when advanced', async () => {
  const vt = new VirtualTime();
  const fired: string[] = [];
  vt.setTimeout(() => fired.push('b@10'), 10);
  vt.setTimeout(() => fired.push('a@5'), 5);
  vt.setTimeout(() => fired.push('c@10'), 10);
  const cancelled = vt.setTimeout(() => fired.push('x'), 7);
  vt.clearTimeout(cancelled);
  const every = vt.setInterval(() => fired.push(`i@${vt.now()}`), 4);
  assert.deepEqual(fired, []);
  await vt.runUntil(10);
  vt.clearInterval(every);
  assert.deepEqual(fired, ['i@4', 'a@5', 'i@8', 'b@10', 'c@10']);
  assert.equal(vt.now(), 10);
  await vt.runFor(100);
  assert.equal(vt.pending, 0);
});

test('installGlobals routes setTimeout and Date.now to virtual time and restores them', async () => {
  const vt = new VirtualTime();
  const realSetTimeout = globalThis.setTimeout;
  const restore = vt.installGlobals(1000);
  let fired = false;
  try {
    assert.equal(Date.now(), 1000);
    const t = setTimeout(() => (fired = true), 50);
    t.unref();
    assert.throws(() => new VirtualTime().installGlobals(), { code: 'BM_ERR_INVALID_ARGUMENT' });
    await vt.runFor(49);
    assert.equal(fired, false);
    await vt.runFor(1);
    assert.equal(fired, true);
    assert.equal(Date.now(), 1050);
  } finally {
    restore();
  }
  assert.equal(globalThis.setTimeout, realSetTimeout);
});

test('runUntilTrue stops at the timer after which the condition holds', async () => {
  const vt = new VirtualTime();
  let n = 0;
  vt.setInterval(() => n++, 10);
  assert.equal(await vt.runUntilTrue(() => n === 3, 1000), true);
  assert.equal(vt.now(), 30);
  assert.equal(await vt.runUntilTrue(() => n === 1, 50), false);
  vt.clearAll();
});

test('Rng: same seed, same sequence; forks are independent of draws on the parent', () => {
  const a = new Rng(7);
  const b = new Rng(7);
  assert.deepEqual([a.int(0, 100), a.float(), a.pick(['x', 'y', 'z'])], [b.int(0, 100), b.float(), b.pick(['x', 'y', 'z'])]);
  const c = new Rng(9);
  const f1 = c.fork('net').float();
  c.float();
  assert.equal(c.fork('net').float(), f1);
  assert.notEqual(c.fork('disk').float(), f1);
});

test('prefixPoint finds the prefix of the history an image holds, and refuses a non-prefix image', () => {
  const bs = 4;
  const base = Buffer.alloc(12);
  const w = (seq: number, block: number, v: number) => ({ seq, offset: block * bs, length: bs, data: Buffer.alloc(bs, v) });
  const history = [w(1, 0, 1), w(2, 1, 2), w(3, 0, 3)];
  const image = Buffer.alloc(12);
  image.fill(1, 0, 4);
  image.fill(2, 4, 8);
  assert.deepEqual(prefixPoint(base, image, history, bs), { ok: true, seq: 2 });
  image.fill(3, 0, 4);
  assert.deepEqual(prefixPoint(base, image, history, bs), { ok: true, seq: 3 });
  // seq 3 applied without seq 2: no prefix explains it
  image.fill(0, 4, 8);
  assert.equal(prefixPoint(base, image, history, bs).ok, false);
  assert.equal(prefixPoint(base, Buffer.alloc(12), history, bs).seq, 0);
  // a zeroing write
  const zeroed = Buffer.alloc(12);
  assert.equal(prefixPoint(base, zeroed, [w(1, 2, 5), { seq: 2, offset: 8, length: 4, data: undefined }], bs).ok, true);
  zeroed.fill(5, 8, 12);
  assert.equal(prefixPoint(base, zeroed, [w(1, 2, 5), { seq: 2, offset: 8, length: 4, data: undefined }], bs).seq, 1);
});

test('a schedule without faults keeps every invariant', async () => {
  const r = await simulate({ seed: 3, config: { faults: new Set(), steps: 15 } });
  assert.deepEqual(r.violations, []);
  assert.ok(r.requests.completed > 0);
  assert.equal(r.replay, 'npm run sim -- --seed 3 --faults none');
});

test('same seed twice: identical trace and result (with every fault kind enabled)', async () => {
  for (const seed of [11, 12]) {
    const a = await simulate({ seed });
    const b = await simulate({ seed });
    assert.deepEqual(a.trace, b.trace);
    assert.deepEqual(a.violations, b.violations);
    assert.ok(a.trace.length > 20);
  }
});

test('different seeds draw different schedules', async () => {
  const a = await simulate({ seed: 21, config: { steps: 10 } });
  const b = await simulate({ seed: 22, config: { steps: 10 } });
  assert.notDeepEqual(a.trace, b.trace);
});
