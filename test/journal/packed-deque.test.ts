import { test } from 'node:test';
import assert from 'node:assert/strict';
import { PackedDeque } from '../../src/journal/packed-deque.js';

/** The deque's rows as arrays, oldest first. */
function rows(d: PackedDeque, stride: number): number[][] {
  return Array.from({ length: d.length }, (_, i) => Array.from({ length: stride }, (_, c) => d.get(i, c)));
}

test('PackedDeque keeps rows in FIFO order across growth while its ring has wrapped, and finds them by the first column', () => {
  const d = new PackedDeque(3);
  const model: number[][] = [];
  let next = 1;
  const push = (): void => {
    const i = d.push();
    const row = [next, next * 2 ** 40, -next];
    for (let c = 0; c < 3; c++) d.set(i, c, row[c]!);
    model.push(row);
    next += 2;
  };
  // wrap the 16-row ring, then grow it several times from a wrapped state
  for (let k = 0; k < 12; k++) push();
  for (let k = 0; k < 10; k++) {
    d.shift();
    model.shift();
  }
  for (let k = 0; k < 200; k++) push();
  assert.deepEqual(rows(d, 3), model);
  for (const row of model) assert.equal(d.find(row[0]!), model.indexOf(row));
  assert.equal(d.find(model[0]![0]! + 1), -1, 'an absent key');
  assert.equal(d.indexAfter(0), 0);
  assert.equal(d.indexAfter(model[5]![0]!), 6);
  assert.equal(d.indexAfter(Number.MAX_SAFE_INTEGER), model.length);
  d.truncate(7);
  assert.deepEqual(rows(d, 3), model.slice(0, 7));
  const i = d.push();
  assert.deepEqual([d.get(i, 0), d.get(i, 1), d.get(i, 2)], [0, 0, 0], 'a pushed row starts zeroed');
});

test('PackedDeque gives memory back once drained (shrinks to a quarter-used ring) and keeps working', () => {
  const d = new PackedDeque(5);
  for (let k = 1; k <= 100_000; k++) d.set(d.push(), 0, k);
  const full = d.byteLength;
  assert.ok(full >= 100_000 * 5 * 8);
  for (let k = 1; k <= 99_990; k++) d.shift();
  assert.ok(d.byteLength <= full / 1000, `${d.byteLength} bytes kept for ${d.length} rows`);
  assert.deepEqual(Array.from({ length: d.length }, (_, i) => d.get(i, 0)), Array.from({ length: 10 }, (_, i) => 99_991 + i));
  d.truncate(0);
  assert.equal(d.length, 0);
  d.set(d.push(), 0, 7);
  assert.equal(d.find(7), 0);
});
