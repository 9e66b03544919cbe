import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CrashableMemoryDevice } from '../../src/device/crashable-memory-device.js';
import { blockDeviceSuite } from '../../src/testing/block-device-suite.js';
import { Rng } from '../../src/testing/simulator/rng.js';
import { VirtualTime } from '../../src/testing/simulator/virtual-time.js';

blockDeviceSuite({
  name: 'CrashableMemoryDevice',
  create: async (size, blockSize) => new CrashableMemoryDevice(size, { blockSize, sectorSize: Math.min(512, blockSize) }),
  supports: { trim: true },
});

const always = (): number => 0; // random() < keep: every unflushed write survives
const never = (): number => 0.999999;

test('reads see every completed write; a crash keeps flushed writes and loses unflushed ones (keep probability 0)', async () => {
  const d = new CrashableMemoryDevice(16 * 4096);
  await d.write(0, Buffer.alloc(4096, 1));
  await d.flush();
  await d.write(4096, Buffer.alloc(4096, 2));
  assert.equal(d.unflushedWrites, 1);
  assert.equal((await d.read(4096, 4096))[0], 2);
  const report = d.crash(never);
  assert.deepEqual({ unflushed: report.unflushed, kept: report.kept }, { unflushed: 1, kept: 0 });
  assert.equal((await d.read(0, 4096))[0], 1);
  assert.equal((await d.read(4096, 4096))[0], 0);
  assert.equal(d.unflushedWrites, 0);
});

test('FUA writes survive a crash; unflushed writes are replayed in completion order', async () => {
  const d = new CrashableMemoryDevice(4 * 4096);
  await d.write(0, Buffer.alloc(4096, 1));
  await d.write(0, Buffer.alloc(4096, 2), { fua: true });
  await d.write(4096, Buffer.alloc(4096, 3));
  assert.equal(d.durableImage()[0], 2);
  d.crash(always, { tearProbability: 0 });
  assert.equal(d.peek(0, 1)[0], 2, 'the older write does not land over the newer FUA write');
  assert.equal(d.peek(4096, 1)[0], 3);
});

test('a crash may tear one write at a sector boundary (a prefix of its sectors survives)', async () => {
  const d = new CrashableMemoryDevice(4 * 4096, { sectorSize: 512 });
  await d.write(0, Buffer.alloc(4096, 7));
  // random(): keep (0 < 0.5), tear (0 < 1), pick the entry (0), keep 1 + floor(0.5 * 7) = 4 sectors
  const values = [0, 0, 0, 0.5];
  const report = d.crash(() => values.shift() ?? 0, { tearProbability: 1 });
  assert.deepEqual(report.torn, { offset: 0, length: 4096, keptBytes: 2048 });
  const image = d.peek(0, 4096);
  assert.ok(image.subarray(0, 2048).every((b) => b === 7));
  assert.ok(image.subarray(2048).every((b) => b === 0));
});

test('flush covers the writes completed before it was called; trims are writes of zeroes', async () => {
  const d = new CrashableMemoryDevice(4 * 4096);
  await d.write(0, Buffer.alloc(8192, 5));
  await d.flush();
  await d.trim(0, 4096);
  assert.equal(d.peek(0, 1)[0], 0);
  d.crash(never);
  assert.equal(d.peek(0, 1)[0], 5, 'the unflushed trim was lost');
  assert.equal(d.peek(4096, 1)[0], 5);
});

test('operations in progress at a crash are lost; a revoked session never settles', async () => {
  const vt = new VirtualTime();
  const d = new CrashableMemoryDevice(4 * 4096, { clock: vt, latency: () => 5 });
  const pending = assert.rejects(d.write(0, Buffer.alloc(4096, 9)), { code: 'BM_ERR_IO' });
  const session = d.session();
  let settled = false;
  session.write(4096, Buffer.alloc(4096, 4)).then(
    () => (settled = true),
    () => (settled = true),
  );
  d.crash(always);
  await vt.runFor(10);
  await pending;
  assert.equal(settled, false);
  assert.equal(session.revoked, true);
  assert.equal(d.peek(0, 1)[0], 0);
  assert.equal(d.peek(4096, 1)[0], 0);
  // a new session works
  await Promise.all([d.session().write(0, Buffer.alloc(4096, 1)), vt.runFor(10)]);
  assert.equal(d.peek(0, 1)[0], 1);
});

test('injected errors fail the next operations of a kind without touching the data', async () => {
  const d = new CrashableMemoryDevice(4 * 4096);
  d.injectError('write', 2);
  await assert.rejects(d.write(0, Buffer.alloc(4096, 1)), { code: 'BM_ERR_IO' });
  await assert.rejects(d.write(0, Buffer.alloc(4096, 1)), { code: 'BM_ERR_IO' });
  assert.equal(d.peek(0, 1)[0], 0);
  await d.write(0, Buffer.alloc(4096, 1));
  assert.equal(d.peek(0, 1)[0], 1);
  assert.equal(d.stats.injectedErrors, 2);
});

test('crashes drawn from the same seed lose the same writes', async () => {
  const images: string[] = [];
  for (let run = 0; run < 2; run++) {
    const d = new CrashableMemoryDevice(64 * 4096);
    for (let i = 0; i < 64; i++) await d.write(i * 4096, Buffer.alloc(4096, i + 1));
    d.crash(new Rng(42).random);
    images.push(d.peek().toString('hex'));
  }
  assert.equal(images[0], images[1]);
});
