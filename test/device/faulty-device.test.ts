import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import FakeTimers from '@sinonjs/fake-timers';
import { clockFrom } from '../../src/clock.js';
import type { BlockDevice } from '../../src/device/block-device.js';
import { FaultyBlockDevice } from '../../src/device/faulty-device.js';
import { FileBlockDevice } from '../../src/device/file-device.js';
import { MemoryBlockDevice } from '../../src/device/memory-device.js';
import { BlockMirrorError } from '../../src/errors.js';
import type { ErrorCode } from '../../src/errors.js';
import { blockDeviceSuite } from '../../src/testing/block-device-suite.js';

blockDeviceSuite({
  name: 'FaultyBlockDevice(MemoryBlockDevice) without rules',
  create: async (size, blockSize) => new FaultyBlockDevice(new MemoryBlockDevice(size, { blockSize })),
  supports: { trim: true, flush: false, fua: false, reopen: false, allocation: true },
});

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'blockmirror-faulty-device-'));
after(() => fs.rmSync(dir, { recursive: true, force: true }));
let counter = 0;

blockDeviceSuite({
  name: 'FaultyBlockDevice(FileBlockDevice) without rules',
  create: async (size, blockSize) =>
    new FaultyBlockDevice(await FileBlockDevice.open(path.join(dir, `d${++counter}.img`), { size, blockSize })),
  reopen: async (device: BlockDevice) => {
    const inner = (device as FaultyBlockDevice).inner as FileBlockDevice;
    return new FaultyBlockDevice(await FileBlockDevice.open(inner.path, { blockSize: inner.blockSize }));
  },
  supports: { trim: true, flush: true, fua: true, reopen: true },
  blockSizes: [4096],
});

function isCode(code: ErrorCode, injected = false): (error: unknown) => boolean {
  return (error: unknown) => {
    assert.ok(error instanceof BlockMirrorError, `expected BlockMirrorError ${code}, got ${String(error)}`);
    assert.equal(error.code, code, error.message);
    assert.equal(error.details.injected === true, injected, `details.injected should be ${injected}`);
    return true;
  };
}

/** Resolves once every promise callback queued so far has run (no timers involved). */
const drainMicrotasks = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

function tracked<T>(promise: Promise<T>): { promise: Promise<T>; settled: () => boolean } {
  let done = false;
  promise.then(
    () => (done = true),
    () => (done = true),
  );
  return { promise, settled: () => done };
}

const BS = 512;
const SIZE = 64 * BS;

async function withFaulty(fn: (device: FaultyBlockDevice, inner: MemoryBlockDevice) => Promise<void>): Promise<void> {
  const inner = new MemoryBlockDevice(SIZE, { blockSize: BS });
  const device = new FaultyBlockDevice(inner);
  try {
    await fn(device, inner);
  } finally {
    await device.close();
  }
}

describe('FaultyBlockDevice', () => {
  it('fails with BM_ERR_IO only the writes overlapping the chosen range, without reaching the inner device', () =>
    withFaulty(async (device, inner) => {
      device.addFault({ op: 'write', range: { offset: 8 * BS, length: 2 * BS }, error: 'EIO' });
      await assert.rejects(device.write(8 * BS, Buffer.alloc(BS, 1)), (error: unknown) => {
        assert.ok(error instanceof BlockMirrorError && error.code === 'BM_ERR_IO', String(error));
        assert.deepEqual(error.details, { injected: true, op: 'write', offset: 8 * BS, length: BS });
        assert.equal((error.cause as NodeJS.ErrnoException).code, 'EIO');
        return true;
      });
      await assert.rejects(device.write(6 * BS, Buffer.alloc(3 * BS, 1)), isCode('BM_ERR_IO', true));
      await assert.rejects(device.write(9 * BS, Buffer.alloc(4 * BS, 1)), isCode('BM_ERR_IO', true));
      assert.deepEqual(await inner.read(0, SIZE), Buffer.alloc(SIZE), 'nothing reached the inner device');
      // Adjacent, non-overlapping writes and reads of the range pass.
      await device.write(7 * BS, Buffer.alloc(BS, 2));
      await device.write(10 * BS, Buffer.alloc(BS, 3));
      assert.deepEqual(await device.read(7 * BS, 4 * BS), Buffer.concat([Buffer.alloc(BS, 2), Buffer.alloc(2 * BS), Buffer.alloc(BS, 3)]));
      await device.write(8 * BS, new Uint8Array(0)); // zero-length requests overlap nothing
      assert.equal(device.stats.injectedErrors, 3);
    }));

  it('fails writes with BM_ERR_NO_SPACE after N operations (afterOps)', () =>
    withFaulty(async (device, inner) => {
      const fault = device.addFault({ op: 'write', afterOps: 3, error: 'ENOSPC' });
      for (let i = 0; i < 3; i++) await device.write(i * BS, Buffer.alloc(BS, i + 1));
      await device.read(0, BS); // reads do not count for a write rule
      await assert.rejects(device.write(3 * BS, Buffer.alloc(BS, 4)), isCode('BM_ERR_NO_SPACE', true));
      await assert.rejects(device.write(4 * BS, Buffer.alloc(BS, 5)), isCode('BM_ERR_NO_SPACE', true));
      assert.deepEqual(await inner.read(3 * BS, 2 * BS), Buffer.alloc(2 * BS), 'failed writes not applied');
      assert.deepEqual(await device.read(2 * BS, BS), Buffer.alloc(BS, 3));
      assert.equal(fault.seen, 5);
      assert.equal(fault.fired, 2);
    }));

  it('stops firing after `times` and can be removed or cleared', () =>
    withFaulty(async (device) => {
      const fault = device.addFault({ op: 'read', error: 'EIO', times: 2 });
      await assert.rejects(device.read(0, BS), isCode('BM_ERR_IO', true));
      await assert.rejects(device.read(BS, BS), isCode('BM_ERR_IO', true));
      await device.read(0, BS);
      assert.equal(fault.fired, 2);
      assert.equal(fault.seen, 3);

      const flushFault = device.addFault({ op: 'flush', error: 'EIO' });
      await assert.rejects(device.flush(), isCode('BM_ERR_IO', true));
      flushFault.remove();
      await device.flush();

      device.addFault({ error: 'ENOSPC' });
      await assert.rejects(device.trim(0, BS), isCode('BM_ERR_NO_SPACE', true));
      await assert.rejects(device.flush(), isCode('BM_ERR_NO_SPACE', true));
      device.clearFaults();
      await device.trim(0, BS);
      await device.flush();
    }));

  it('lets a range rule match reads, writes and trims but never flushes', () =>
    withFaulty(async (device) => {
      device.addFault({ range: { offset: 0, length: 1 }, error: 'EIO' });
      await device.flush();
      await assert.rejects(device.read(0, BS), isCode('BM_ERR_IO', true));
      await assert.rejects(device.write(0, Buffer.alloc(BS)), isCode('BM_ERR_IO', true));
      await assert.rejects(device.trim(0, BS), isCode('BM_ERR_IO', true));
      await device.read(BS, BS);
    }));

  it('validates arguments before the rules: invalid requests get the same codes and are not counted', () =>
    withFaulty(async (device) => {
      const fault = device.addFault({ error: 'EIO' });
      await assert.rejects(device.write(1, Buffer.alloc(BS)), isCode('BM_ERR_MISALIGNED'));
      await assert.rejects(device.read(SIZE, BS), isCode('BM_ERR_OUT_OF_RANGE'));
      await assert.rejects(device.trim(-BS, BS), isCode('BM_ERR_INVALID_ARGUMENT'));
      await assert.rejects(device.write(0, 'x' as unknown as Uint8Array), isCode('BM_ERR_INVALID_ARGUMENT'));
      assert.equal(fault.seen, 0);
      assert.deepEqual(device.stats, { reads: 0, writes: 0, flushes: 0, trims: 0, injectedErrors: 0, delayed: 0 });
    }));

  it('refuses malformed rules with BM_ERR_INVALID_ARGUMENT', () =>
    withFaulty(async (device) => {
      const bad: unknown[] = [
        {},
        { op: 'flush', range: { offset: 0, length: 512 }, error: 'EIO' },
        { op: 'erase', error: 'EIO' },
        { error: 'EPERM' },
        { error: 'EIO', times: 0 },
        { error: 'EIO', afterOps: -1 },
        { error: 'EIO', range: { offset: -1, length: 512 } },
        { latencyMs: -5 },
        { latencyMs: Number.NaN },
      ];
      for (const rule of bad) {
        assert.throws(() => device.addFault(rule as never), isCode('BM_ERR_INVALID_ARGUMENT'), JSON.stringify(rule));
      }
    }));

  it('counts the operations it sees', () =>
    withFaulty(async (device) => {
      device.addFault({ op: 'trim', error: 'EIO', times: 1 });
      await device.write(0, Buffer.alloc(BS));
      await device.write(BS, Buffer.alloc(BS));
      await device.read(0, BS);
      await device.flush();
      await assert.rejects(device.trim(0, BS), isCode('BM_ERR_IO', true));
      await device.trim(0, BS);
      assert.deepEqual(device.stats, { reads: 1, writes: 2, flushes: 1, trims: 2, injectedErrors: 1, delayed: 0 });
    }));

  it('passes size, blockSize and supports of the wrapped device through', () =>
    withFaulty(async (device, inner) => {
      assert.equal(device.size, inner.size);
      assert.equal(device.blockSize, inner.blockSize);
      assert.deepEqual(device.supports, inner.supports);
    }));

  it('refuses trim with BM_ERR_NOT_SUPPORTED when the wrapped device cannot trim', async () => {
    const inner = new MemoryBlockDevice(SIZE);
    const noTrim: BlockDevice = {
      size: inner.size,
      blockSize: inner.blockSize,
      supports: { trim: false, flush: false, fua: false, reopen: false },
      read: (o, l) => inner.read(o, l),
      write: (o, d, opts) => inner.write(o, d, opts),
      flush: () => inner.flush(),
      close: () => inner.close(),
    };
    const device = new FaultyBlockDevice(noTrim);
    try {
      await assert.rejects(device.trim(0, BS), isCode('BM_ERR_NOT_SUPPORTED'));
    } finally {
      await device.close();
    }
  });

  describe('latency (fake timers)', () => {
    const setup = () => {
      const timers = FakeTimers.createClock();
      const inner = new MemoryBlockDevice(SIZE, { blockSize: BS });
      const device = new FaultyBlockDevice(inner, { clock: clockFrom(timers) });
      return { timers, inner, device };
    };

    it('delays matching operations by latencyMs on the injected clock, and only those', async () => {
      const { timers, device } = setup();
      try {
        await device.write(0, Buffer.alloc(BS, 9));
        device.addLatency(100, { op: 'read' });
        const read = tracked(device.read(0, BS));
        const write = tracked(device.write(BS, Buffer.alloc(BS, 1)));
        await drainMicrotasks();
        assert.equal(write.settled(), true, 'writes are not delayed');
        timers.tick(99);
        await drainMicrotasks();
        assert.equal(read.settled(), false, 'read still waiting at 99 ms');
        timers.tick(1);
        await drainMicrotasks();
        assert.equal(read.settled(), true, 'read done at 100 ms');
        assert.deepEqual(await read.promise, Buffer.alloc(BS, 9));
        assert.equal(device.stats.delayed, 1);
        assert.equal(timers.countTimers(), 0);
      } finally {
        await device.close();
      }
    });

    it('applies the largest latency of the rules that fire, then the error', async () => {
      const { timers, device, inner } = setup();
      try {
        device.addLatency(50);
        device.addFault({ op: 'write', latencyMs: 200, error: 'EIO', times: 1 });
        const write = tracked(device.write(0, Buffer.alloc(BS, 1)));
        timers.tick(199);
        await drainMicrotasks();
        assert.equal(write.settled(), false, 'still waiting at 199 ms');
        timers.tick(1);
        await assert.rejects(write.promise, isCode('BM_ERR_IO', true));
        assert.deepEqual(await inner.read(0, BS), Buffer.alloc(BS), 'the failed write was not applied');
        // The error rule is spent; the 50 ms rule still applies.
        const second = tracked(device.write(0, Buffer.alloc(BS, 2)));
        timers.tick(49);
        await drainMicrotasks();
        assert.equal(second.settled(), false, 'second write waiting at 49 ms');
        timers.tick(1);
        await second.promise;
        assert.deepEqual(await inner.read(0, BS), Buffer.alloc(BS, 2));
      } finally {
        await device.close();
      }
    });

    it('close rejects operations waiting on latency with BM_ERR_CLOSED and clears their timers', async () => {
      const { timers, device, inner } = setup();
      device.addLatency(1000);
      const write = tracked(device.write(0, Buffer.alloc(BS, 1)));
      const flush = tracked(device.flush());
      assert.equal(timers.countTimers(), 2);
      await device.close();
      await assert.rejects(write.promise, isCode('BM_ERR_CLOSED'));
      await assert.rejects(flush.promise, isCode('BM_ERR_CLOSED'));
      assert.equal(timers.countTimers(), 0);
      await assert.rejects(inner.read(0, BS), isCode('BM_ERR_CLOSED'), 'the wrapped device is closed too');
    });
  });
});
