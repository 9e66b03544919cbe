import assert from 'node:assert/strict';
import { test } from 'node:test';
import { MAX_POOLED_BYTES, MIN_POOLED_BYTES, ReadBuffers } from '../../src/nbd/read-buffers.js';

const KiB = 1024;

test('issue 13: ReadBuffers gives back a buffer of the exact length asked, reusing one given back of that length only', () => {
  const pool = new ReadBuffers(1024 * KiB);
  const a = pool.take(256 * KiB);
  assert.equal(a.length, 256 * KiB);
  assert.equal(a.byteOffset, 0, 'a buffer of its own, not a slice of a shared slab');
  assert.equal(a.buffer.byteLength, 256 * KiB);
  pool.give(a);
  assert.equal(pool.idleBytes, 256 * KiB);
  const other = pool.take(128 * KiB);
  assert.notEqual(other.buffer, a.buffer, 'another length gets another buffer');
  assert.equal(pool.take(256 * KiB), a, 'the same length gets the buffer given back');
  assert.equal(pool.idleBytes, 0);
  assert.notEqual(pool.take(256 * KiB), a, 'taken once: not handed out twice');
});

test('issue 13: ReadBuffers keeps at most its limit of idle bytes, and only lengths worth pooling', () => {
  const pool = new ReadBuffers(512 * KiB);
  const taken = [pool.take(256 * KiB), pool.take(256 * KiB), pool.take(256 * KiB)];
  for (const b of taken) pool.give(b);
  assert.equal(pool.idleBytes, 512 * KiB, 'the third is dropped');
  assert.equal(pool.pooled(MIN_POOLED_BYTES - 512), false);
  assert.equal(pool.pooled(MIN_POOLED_BYTES), true);
  assert.equal(pool.pooled(MAX_POOLED_BYTES), true);
  assert.equal(pool.pooled(MAX_POOLED_BYTES + 512), false);
  const small = new ReadBuffers(512 * KiB);
  small.give(Buffer.allocUnsafeSlow(4 * KiB));
  small.give(Buffer.allocUnsafeSlow(MAX_POOLED_BYTES + 4 * KiB));
  assert.equal(small.idleBytes, 0, 'lengths outside the pooled range are not kept');
});
