import { test } from 'node:test';
import assert from 'node:assert/strict';
import { consistentCut, type ObservedWrite } from '../../src/testing/simulator/prefix-check.js';
import { Rng } from '../../src/testing/simulator/rng.js';

const bs = 4;

/** A write of value `v` (undefined: zeroes) to blocks [first, first + blocks). */
function w(seq: number, first: number, blocks: number, v: number | undefined, issued: number, completed: number, extra: Partial<ObservedWrite> = {}): ObservedWrite {
  return { seq, offset: first * bs, length: blocks * bs, data: v === undefined ? undefined : Buffer.alloc(blocks * bs, v), issued, completed, ...extra };
}

/** An image of `values.length` blocks, block i filled with values[i]. */
function img(...values: number[]): Buffer {
  const b = Buffer.alloc(values.length * bs);
  values.forEach((v, i) => b.fill(v, i * bs, (i + 1) * bs));
  return b;
}

test('I4 check: concurrent writes may be present in any combination', () => {
  // A and B overlap in time (each issued before the other completed), disjoint blocks
  const history = [w(1, 0, 1, 1, 1, 4), w(2, 1, 1, 2, 2, 3)];
  const base = img(0, 0);
  assert.deepEqual(consistentCut(base, img(0, 0), history, bs), { ok: true, applied: [] });
  assert.deepEqual(consistentCut(base, img(1, 0), history, bs), { ok: true, applied: [0] });
  // the later seq without the earlier one: allowed, they were concurrent
  assert.deepEqual(consistentCut(base, img(0, 2), history, bs), { ok: true, applied: [1] });
  assert.deepEqual(consistentCut(base, img(1, 2), history, bs), { ok: true, applied: [0, 1] });
});

test('I4 check: a write present without one that completed before it was issued is refused', () => {
  // A completed (t=2) before B was issued (t=3); disjoint blocks
  const history = [w(1, 0, 1, 1, 1, 2), w(2, 1, 1, 2, 3, 4)];
  const base = img(0, 0);
  assert.equal(consistentCut(base, img(1, 0), history, bs).ok, true);
  assert.equal(consistentCut(base, img(1, 2), history, bs).ok, true);
  assert.deepEqual(consistentCut(base, img(0, 2), history, bs), { ok: false, block: 0, missing: 0 });
  // the same image with the two writes concurrent is fine
  const concurrent = [w(1, 0, 1, 1, 1, 3), w(2, 1, 1, 2, 2, 4)];
  assert.equal(consistentCut(base, img(0, 2), concurrent, bs).ok, true);
});

test('I4 check: overlapping writes are ordered by seq, also when concurrent in time', () => {
  // A (seq 1) writes block 0, B (seq 2) writes blocks 0-1; both in flight together
  const history = [w(1, 0, 1, 1, 1, 4), w(2, 0, 2, 2, 2, 3)];
  const base = img(0, 0);
  assert.equal(consistentCut(base, img(1, 0), history, bs).ok, true);
  assert.equal(consistentCut(base, img(2, 2), history, bs).ok, true);
  // B present on block 1 while block 0 shows A: the older overlapping write over the newer one
  assert.deepEqual(consistentCut(base, img(1, 2), history, bs), { ok: false, block: 0, missing: 1 });
  // B on block 1, base on block 0: B's presence needs A and B on block 0
  assert.equal(consistentCut(base, img(0, 2), history, bs).ok, false);
});

test('I4 check: happens-before is transitive (completion, then overlap)', () => {
  // A completes before B is issued; C overlaps B (later seq) and is concurrent with it
  const history = [w(1, 0, 1, 1, 1, 2), w(2, 1, 1, 2, 3, 6), w(3, 1, 2, 3, 4, 5)];
  const base = img(0, 0, 0);
  assert.equal(consistentCut(base, img(1, 3, 3), history, bs).ok, true);
  // C present (blocks 1-2) needs B, which needs A: block 0 must show A
  assert.deepEqual(consistentCut(base, img(0, 3, 3), history, bs), { ok: false, block: 0, missing: 0 });
});

test('I4 check: parts of one operation are applied in order', () => {
  const parts = [w(5, 0, 1, 1, 1, 2, { op: 9, part: 0 }), w(5, 1, 1, 1, 1, 2, { op: 9, part: 1 })];
  const base = img(0, 0);
  assert.equal(consistentCut(base, img(1, 0), parts, bs).ok, true);
  assert.equal(consistentCut(base, img(1, 1), parts, bs).ok, true);
  assert.deepEqual(consistentCut(base, img(0, 1), parts, bs), { ok: false, block: 0, missing: 0 });
});

test('I4 check: a value no write explains is refused; zeroing writes count', () => {
  const history = [w(1, 0, 1, 5, 1, 2), w(2, 0, 1, undefined, 3, 4)];
  assert.deepEqual(consistentCut(img(0), img(7), history, bs), { ok: false, block: 0 });
  assert.deepEqual(consistentCut(img(9), img(0), history, bs), { ok: true, applied: [0, 1] });
  assert.deepEqual(consistentCut(img(9), img(5), history, bs), { ok: true, applied: [0] });
});

test('I4 check: a block value seen at two points is taken at the later one when the closure needs it', () => {
  // block 0: base 0, then 5 (seq 1), then zeroed (seq 2); block 1: 7 (seq 3) issued after the zeroing completed
  const history = [w(1, 0, 1, 5, 1, 2), w(2, 0, 1, undefined, 3, 4), w(3, 1, 1, 7, 5, 6)];
  assert.deepEqual(consistentCut(img(0, 0), img(0, 0), history, bs), { ok: true, applied: [] });
  assert.deepEqual(consistentCut(img(0, 0), img(0, 7), history, bs), { ok: true, applied: [0, 1, 2] });
  // the same with seq 2 writing 9: block 0 shows 0 only before seq 1, but seq 3 needs seq 2
  const other = [w(1, 0, 1, 5, 1, 2), w(2, 0, 1, 9, 3, 4), w(3, 1, 1, 7, 5, 6)];
  assert.equal(consistentCut(img(0, 0), img(0, 7), other, bs).ok, false);
});

function overlap(a: ObservedWrite, b: ObservedWrite): boolean {
  return a.offset < b.offset + b.length && b.offset < a.offset + a.length;
}

/** Direct happens-before (completion before issue, or overlapping and earlier seq). */
function hb(a: ObservedWrite, b: ObservedWrite): boolean {
  return a.completed < b.issued || (overlap(a, b) && a.seq < b.seq);
}

function closed(history: ObservedWrite[], inSet: (i: number) => boolean): boolean {
  for (let i = 0; i < history.length; i++) {
    if (!inSet(i)) continue;
    for (let j = 0; j < history.length; j++) if (!inSet(j) && hb(history[j]!, history[i]!)) return false;
  }
  return true;
}

/** `base` with the writes of the set applied in seq order. */
function imageOf(base: Buffer, history: ObservedWrite[], inSet: (i: number) => boolean): Buffer {
  const out = Buffer.from(base);
  const order = [...history.keys()].sort((a, b) => history[a]!.seq - history[b]!.seq);
  for (const i of order) {
    if (!inSet(i)) continue;
    const x = history[i]!;
    if (x.data === undefined) out.fill(0, x.offset, x.offset + x.length);
    else x.data.copy(out, x.offset);
  }
  return out;
}

/** Brute force: is there a subset closed under happens-before whose image is `image`? */
function oracle(base: Buffer, image: Buffer, history: ObservedWrite[]): boolean {
  for (let mask = 0; mask < 1 << history.length; mask++) {
    const inSet = (i: number): boolean => (mask & (1 << i)) !== 0;
    if (closed(history, inSet) && imageOf(base, history, inSet).equals(image)) return true;
  }
  return false;
}

test('I4 check agrees with a brute-force search over every subset (random histories)', () => {
  const rng = new Rng(2024);
  let accepted = 0;
  let refused = 0;
  for (let round = 0; round < 400; round++) {
    const blocks = rng.int(2, 4);
    const n = rng.int(1, 7);
    // each write: issued, takes its seq, completes, at random logical times (seq = order of taking)
    const events: Array<{ issued: number; taken: number; completed: number; first: number; len: number; v: number | undefined }> = [];
    for (let i = 0; i < n; i++) {
      const issued = rng.float() * 10;
      const taken = issued + rng.float() * 3;
      const first = rng.int(0, blocks - 1);
      events.push({ issued, taken, completed: taken + rng.float() * 3, first, len: rng.int(1, blocks - first), v: rng.chance(0.15) ? undefined : rng.int(0, 3) });
    }
    events.sort((a, b) => a.taken - b.taken);
    const history = events.map((e, i) => w(i + 1, e.first, e.len, e.v, e.issued, e.completed));
    const base = img(...Array.from({ length: blocks }, () => rng.int(0, 2)));
    // an image from a random subset (closed or not), or random values
    const image = Buffer.from(base);
    if (rng.chance(0.8)) {
      for (const x of history) {
        if (!rng.chance(0.5)) continue;
        if (x.data === undefined) image.fill(0, x.offset, x.offset + x.length);
        else x.data.copy(image, x.offset);
      }
    } else {
      for (let b = 0; b < blocks; b++) image.fill(rng.int(0, 3), b * bs, (b + 1) * bs);
    }
    // a zeroing of several blocks is not atomic: the oracle sees it as one zeroing per block (same seq and times)
    const pieces = history.flatMap((x) => (x.data !== undefined || x.length <= bs ? [x] : Array.from({ length: x.length / bs }, (_, k) => ({ ...x, offset: x.offset + k * bs, length: bs }))));
    const expected = oracle(base, image, pieces);
    const got = consistentCut(base, image, history, bs);
    assert.equal(got.ok, expected, `round ${round}: ${JSON.stringify({ history: history.map((x) => ({ ...x, data: x.data?.[0] })), base: [...base], image: [...image] })}`);
    if (got.ok && pieces.length === history.length) {
      accepted++;
      // the set it reports is closed and explains the image
      const set = new Set(got.applied);
      assert.equal(closed(history, (i) => set.has(i)), true);
      assert.deepEqual(imageOf(base, history, (i) => set.has(i)), image);
    } else refused++;
  }
  // both outcomes were exercised
  assert.ok(accepted > 50 && refused > 50, `accepted ${accepted}, refused ${refused}`);
});

test('I4 check: a zeroing of several blocks may show on any of its blocks while it runs (it is not atomic on a device), but a write issued after it completed needs all of them', () => {
  // A (seq 1) writes block 1; Z (seq 2) zeroes blocks 0-3 after A completed; C (seq 3) writes block 3 after Z completed
  const base = img(5, 0, 5, 0);
  const history = [w(1, 1, 1, 1, 1, 2), w(2, 0, 4, undefined, 3, 4), w(3, 3, 1, 3, 5, 6)];
  // Z under way: block 0 zeroed, blocks 1 and 2 not yet
  assert.deepEqual(consistentCut(base, img(0, 1, 5, 0), history, bs), { ok: true, applied: [0, 1] });
  assert.equal(consistentCut(base, img(5, 1, 0, 0), history, bs).ok, true);
  // C present needs every block of Z: block 2 still shows the base
  assert.deepEqual(consistentCut(base, img(0, 0, 5, 3), history, bs), { ok: false, block: 2, missing: 1 });
  assert.equal(consistentCut(base, img(0, 0, 0, 3), history, bs).ok, true);
  // Z's zero on block 1 without A under it: the older overlapping write is missing
  assert.equal(consistentCut(base, img(5, 0, 5, 0), history, bs).ok, true, 'nothing applied');
});
