/**
 * The {@link BlockDevice} compliance suite: one set of `node:test` tests that
 * every device implementation (and every wrapper) must pass.
 *
 * @module
 */

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { BlockDevice, BlockDeviceSupports, BlockExtent } from '../device/block-device.js';
import { BlockMirrorError } from '../errors.js';
import type { ErrorCode } from '../errors.js';

/** Options of {@link blockDeviceSuite}. */
export interface BlockDeviceSuiteOptions {
  /** Name of the implementation (the title of the test group). */
  name: string;
  /** Creates a fresh, never-written device of `size` bytes with the given block size. */
  create(size: number, blockSize: number): Promise<BlockDevice>;
  /**
   * Opens again the backing store of `device`, which the suite has already
   * closed. Required when `supports.reopen` is declared true.
   */
  reopen?(device: BlockDevice): Promise<BlockDevice>;
  /**
   * The capabilities the devices declare. Optional tests run only for the
   * capabilities declared true here (others are not registered); every declared
   * key is checked against `device.supports`. Undeclared keys count as false.
   */
  supports?: Partial<BlockDeviceSupports>;
  /** Block sizes to run the suite with. Default `[512, 4096]`. */
  blockSizes?: readonly number[];
  /** Device size in bytes (a multiple of every block size, at least 16 blocks). Default: the larger of 256 KiB and 16 blocks. */
  size?: number;
}

const SUPPORT_KEYS = ['trim', 'flush', 'fua', 'reopen'] as const;

/**
 * Registers the {@link BlockDevice} compliance tests (with `describe`/`it` from
 * `node:test`) for one implementation.
 *
 * Covered: geometry and `supports` manifest; zero-fill of unwritten bytes;
 * round trips at the start, middle and end; bounds (`BM_ERR_OUT_OF_RANGE`),
 * alignment (`BM_ERR_MISALIGNED`) and argument types (`BM_ERR_INVALID_ARGUMENT`),
 * with nothing touched by refused requests; zero-length requests; concurrent
 * disjoint writes; buffer ownership in both directions; Uint8Array views;
 * `readInto` (when the device has it); flush; FUA writes; a seeded random sequence against a model; trim (when
 * supported); reopen (when supported); `blockStatus()` (when `allocation` is
 * declared: aligned extents covering exactly the range, zero extents that read
 * as zeroes, written data never reported zero, argument checks);
 * `BM_ERR_CLOSED` after `close()`, idempotent close and requests in flight at close.
 *
 * Call it at the top level of a test file:
 * ```ts
 * blockDeviceSuite({ name: 'MyDevice', create: (size, blockSize) => MyDevice.open({ size, blockSize }) });
 * ```
 *
 * @throws {BlockMirrorError} `BM_ERR_INVALID_ARGUMENT` when `supports.reopen` is declared without `reopen`,
 *   or `size` is not a multiple of a block size or smaller than 16 blocks.
 */
export function blockDeviceSuite(options: BlockDeviceSuiteOptions): void {
  const declared = options.supports ?? {};
  const supports: BlockDeviceSupports = {
    trim: declared.trim ?? false,
    flush: declared.flush ?? false,
    fua: declared.fua ?? false,
    reopen: declared.reopen ?? false,
    allocation: declared.allocation ?? false,
  };
  if (supports.reopen && options.reopen === undefined) {
    throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', 'blockDeviceSuite: supports.reopen is true but no reopen() was given');
  }

  describe(`BlockDevice compliance: ${options.name}`, () => {
    for (const blockSize of options.blockSizes ?? [512, 4096]) {
      const size = options.size ?? Math.max(256 * 1024, 16 * blockSize);
      if (!Number.isSafeInteger(size) || size % blockSize !== 0 || size < 16 * blockSize) {
        throw new BlockMirrorError(
          'BM_ERR_INVALID_ARGUMENT',
          `blockDeviceSuite: size ${size} must be a multiple of blockSize ${blockSize} and at least 16 blocks`,
        );
      }
      describe(`blockSize ${blockSize}, size ${size}`, () => {
        registerTests(options, supports, declared, size, blockSize);
      });
    }
  });
}

function registerTests(
  options: BlockDeviceSuiteOptions,
  supports: BlockDeviceSupports,
  declared: Partial<BlockDeviceSupports>,
  size: number,
  bs: number,
): void {
  const withDevice = async (fn: (device: BlockDevice) => Promise<void>): Promise<void> => {
    const device = await options.create(size, bs);
    try {
      await fn(device);
    } finally {
      await device.close();
    }
  };

  it('reports the size and block size it was created with', () =>
    withDevice(async (device) => {
      assert.equal(device.size, size);
      assert.equal(device.blockSize, bs);
    }));

  it('has a complete supports manifest that matches the declared capabilities', () =>
    withDevice(async (device) => {
      for (const key of SUPPORT_KEYS) {
        assert.equal(typeof device.supports[key], 'boolean', `supports.${key} is a boolean`);
        const expected = declared[key];
        if (expected !== undefined) assert.equal(device.supports[key], expected, `supports.${key}`);
      }
      // optional key: absent means false
      if (declared.allocation !== undefined) assert.equal(device.supports.allocation ?? false, declared.allocation, 'supports.allocation');
      if (device.supports.allocation === true) assert.equal(typeof device.blockStatus, 'function', 'supports.allocation is true, so blockStatus() must exist');
    }));

  it('reads never-written bytes as zero', () =>
    withDevice(async (device) => {
      const all = await device.read(0, size);
      assert.ok(Buffer.isBuffer(all), 'read resolves with a Buffer');
      assert.equal(all.length, size);
      assertZero(all, 'unwritten device');
      const one = await device.read(size - bs, bs);
      assert.equal(one.length, bs);
      assertZero(one, 'last block');
    }));

  it('round-trips writes at the start, the middle and the end', () =>
    withDevice(async (device) => {
      const model = Buffer.alloc(size);
      const middle = alignDown(size / 2 - bs, bs);
      const spots = [0, middle, size - 2 * bs];
      for (const [i, offset] of spots.entries()) {
        const data = pattern(2 * bs, i + 1);
        await device.write(offset, data);
        data.copy(model, offset);
      }
      for (const [i, offset] of spots.entries()) {
        const back = await device.read(offset, 2 * bs);
        assertBytes(back, pattern(2 * bs, i + 1), `data at ${offset}`);
      }
      assertEqualImage(await device.read(0, size), model);
    }));

  it('round-trips a whole-device write and a partial overwrite', () =>
    withDevice(async (device) => {
      const model = pattern(size, 7);
      await device.write(0, model);
      assertEqualImage(await device.read(0, size), model);
      const offset = alignDown(size / 3, bs);
      const patch = pattern(3 * bs, 8);
      await device.write(offset, patch);
      patch.copy(model, offset);
      assertEqualImage(await device.read(0, size), model);
      // A read that starts inside one write and ends inside another.
      assertBytes(await device.read(offset - bs, 5 * bs), model.subarray(offset - bs, offset + 4 * bs), 'read spanning two writes');
    }));

  it('accepts requests that end exactly at the device size', () =>
    withDevice(async (device) => {
      const data = pattern(bs, 3);
      await device.write(size - bs, data);
      assertBytes(await device.read(size - bs, bs), data, 'last block');
      assert.equal((await device.read(size, 0)).length, 0);
      await device.write(size, new Uint8Array(0));
      if (supports.trim) await callTrim(device, size, 0);
    }));

  it('refuses requests past the end with BM_ERR_OUT_OF_RANGE and leaves the data around untouched', () =>
    withDevice(async (device) => {
      const tail = pattern(2 * bs, 4);
      await device.write(size - 2 * bs, tail);
      await rejectsWith(device.write(size - bs, pattern(2 * bs, 5)), 'BM_ERR_OUT_OF_RANGE', 'write crossing the end');
      await rejectsWith(device.write(size, pattern(bs, 5)), 'BM_ERR_OUT_OF_RANGE', 'write at the end');
      await rejectsWith(device.write(size + bs, new Uint8Array(0)), 'BM_ERR_OUT_OF_RANGE', 'empty write past the end');
      await rejectsWith(device.read(size - bs, 2 * bs), 'BM_ERR_OUT_OF_RANGE', 'read crossing the end');
      await rejectsWith(device.read(size, bs), 'BM_ERR_OUT_OF_RANGE', 'read at the end');
      await rejectsWith(device.read(2 ** 52, bs), 'BM_ERR_OUT_OF_RANGE', 'read far past the end');
      await rejectsWith(device.read(0, size + bs), 'BM_ERR_OUT_OF_RANGE', 'read longer than the device');
      if (supports.trim) {
        await rejectsWith(callTrim(device, size - bs, 2 * bs), 'BM_ERR_OUT_OF_RANGE', 'trim crossing the end');
      }
      assertBytes(await device.read(size - 2 * bs, 2 * bs), tail, 'tail unchanged');
      assertZero(await device.read(0, size - 2 * bs), 'rest of the device');
    }));

  if (bs > 1) {
    it('refuses misaligned requests with BM_ERR_MISALIGNED and leaves the data untouched', () =>
      withDevice(async (device) => {
        const data = pattern(4 * bs, 6);
        await device.write(0, data);
        const half = bs / 2;
        await rejectsWith(device.write(half, pattern(bs, 9)), 'BM_ERR_MISALIGNED', 'write at a misaligned offset');
        await rejectsWith(device.write(0, pattern(bs + 1, 9)), 'BM_ERR_MISALIGNED', 'write of a misaligned length');
        await rejectsWith(device.write(bs, pattern(half, 9)), 'BM_ERR_MISALIGNED', 'write shorter than a block');
        await rejectsWith(device.read(1, bs), 'BM_ERR_MISALIGNED', 'read at a misaligned offset');
        await rejectsWith(device.read(0, bs - 1), 'BM_ERR_MISALIGNED', 'read of a misaligned length');
        if (supports.trim) {
          await rejectsWith(callTrim(device, half, bs), 'BM_ERR_MISALIGNED', 'trim at a misaligned offset');
          await rejectsWith(callTrim(device, 0, half), 'BM_ERR_MISALIGNED', 'trim of a misaligned length');
        }
        assertBytes(await device.read(0, 4 * bs), data, 'data unchanged');
      }));
  }

  it('refuses negative, fractional, unsafe and non-number arguments with BM_ERR_INVALID_ARGUMENT', () =>
    withDevice(async (device) => {
      const data = pattern(bs, 10);
      await device.write(0, data);
      const badNumbers: unknown[] = [-bs, -1, 0.5, bs + 0.5, Number.NaN, Infinity, -Infinity, 2 ** 53, '0', null, undefined];
      for (const bad of badNumbers) {
        const n = bad as number;
        const what = String(bad);
        await rejectsWith(device.read(n, bs), 'BM_ERR_INVALID_ARGUMENT', `read offset ${what}`);
        await rejectsWith(device.read(0, n), 'BM_ERR_INVALID_ARGUMENT', `read length ${what}`);
        await rejectsWith(device.write(n, pattern(bs, 11)), 'BM_ERR_INVALID_ARGUMENT', `write offset ${what}`);
        if (supports.trim) {
          await rejectsWith(callTrim(device, n, bs), 'BM_ERR_INVALID_ARGUMENT', `trim offset ${what}`);
          await rejectsWith(callTrim(device, 0, n), 'BM_ERR_INVALID_ARGUMENT', `trim length ${what}`);
        }
      }
      const badData: unknown[] = [null, undefined, 'abc', [1, 2, 3], { length: bs }, new ArrayBuffer(bs)];
      for (const bad of badData) {
        await rejectsWith(
          device.write(0, bad as Uint8Array),
          'BM_ERR_INVALID_ARGUMENT',
          `write data ${Object.prototype.toString.call(bad)}`,
        );
      }
      assertBytes(await device.read(0, bs), data, 'data unchanged');
      assertZero(await device.read(bs, size - bs), 'rest of the device');
    }));

  it('accepts zero-length reads and writes, which change nothing', () =>
    withDevice(async (device) => {
      const empty = await device.read(0, 0);
      assert.ok(Buffer.isBuffer(empty), 'read resolves with a Buffer');
      assert.equal(empty.length, 0);
      assert.equal((await device.read(bs, 0)).length, 0);
      await device.write(0, new Uint8Array(0));
      await device.write(bs, Buffer.alloc(0));
      await device.write(bs, new Uint8Array(0), { fua: true });
      if (supports.trim) await callTrim(device, bs, 0);
      assertZero(await device.read(0, size), 'device');
    }));

  it('lands every one of many concurrent writes to disjoint ranges', () =>
    withDevice(async (device) => {
      const blocks = size / bs;
      const count = Math.min(32, blocks);
      const stride = Math.floor(blocks / count);
      const offsets = Array.from({ length: count }, (_, i) => i * stride * bs);
      await Promise.all(offsets.map((offset, i) => device.write(offset, pattern(bs, 100 + i))));
      const reads = await Promise.all(offsets.map((offset) => device.read(offset, bs)));
      for (const [i, back] of reads.entries()) assertBytes(back, pattern(bs, 100 + i), `block ${i}`);
      const model = Buffer.alloc(size);
      for (const [i, offset] of offsets.entries()) pattern(bs, 100 + i).copy(model, offset);
      assertEqualImage(await device.read(0, size), model);
    }));

  it('gives the caller a read buffer it may modify without affecting the device', () =>
    withDevice(async (device) => {
      const data = pattern(2 * bs, 12);
      await device.write(bs, data);
      const first = await device.read(bs, 2 * bs);
      const second = await device.read(bs, 2 * bs);
      first.fill(0xee);
      assertBytes(second, data, 'a second read is not affected');
      assertBytes(await device.read(bs, 2 * bs), data, 'the device is not affected');
    }));

  it('readInto (when the device has it) fills the caller\'s buffer exactly as read returns, overwriting what was there; refuses what read refuses', () =>
    withDevice(async (device) => {
      if (device.readInto === undefined) return;
      const data = pattern(3 * bs, 23);
      await device.write(bs, data);
      // old content everywhere: every byte must be overwritten, zeroes included
      const target = Buffer.alloc(5 * bs, 0xa5);
      await device.readInto(0, target);
      assertBytes(target, await device.read(0, 5 * bs), 'readInto of written and unwritten blocks');
      const backing = Buffer.alloc(2 * bs + 7, 0x5a);
      const view = new Uint8Array(backing.buffer, backing.byteOffset + 7, 2 * bs);
      await device.readInto(2 * bs, view);
      assertBytes(backing.subarray(7), data.subarray(bs), 'a Uint8Array view at a byte offset');
      assert.ok(backing.subarray(0, 7).every((b) => b === 0x5a), 'bytes before the view untouched');
      await device.readInto(0, Buffer.alloc(0));
      await rejectsWith(device.readInto(size, Buffer.alloc(bs)), 'BM_ERR_OUT_OF_RANGE', 'readInto past the end');
      await rejectsWith(device.readInto(-bs, Buffer.alloc(bs)), 'BM_ERR_INVALID_ARGUMENT', 'readInto at a negative offset');
      if (bs > 1) await rejectsWith(device.readInto(0, Buffer.alloc(bs + 1)), 'BM_ERR_MISALIGNED', 'readInto of a misaligned length');
    }));

  it('is not changed when the caller modifies written data after the write settled', () =>
    withDevice(async (device) => {
      const data = pattern(2 * bs, 13);
      const copy = Buffer.from(data);
      await device.write(0, data);
      data.fill(0x55);
      assertBytes(await device.read(0, 2 * bs), copy, 'device content');
    }));

  it('writes Uint8Array views at a byte offset into a larger buffer', () =>
    withDevice(async (device) => {
      const backing = pattern(4 * bs + 3, 14);
      const view = new Uint8Array(backing.buffer, backing.byteOffset + 3, 2 * bs);
      await device.write(bs, view);
      assertBytes(await device.read(bs, 2 * bs), backing.subarray(3, 3 + 2 * bs), 'view content');
      assertZero(await device.read(0, bs), 'block before');
      assertZero(await device.read(3 * bs, bs), 'block after');
    }));

  it('resolves flush, with the data written before it still readable', () =>
    withDevice(async (device) => {
      await device.flush();
      const data = pattern(bs, 15);
      await device.write(bs, data);
      await device.flush();
      await Promise.all([device.flush(), device.flush()]);
      assertBytes(await device.read(bs, bs), data, 'data written before flush');
    }));

  it('accepts FUA writes and their data reads back', () =>
    withDevice(async (device) => {
      const data = pattern(2 * bs, 16);
      await device.write(2 * bs, data, { fua: true });
      await device.write(size - bs, data.subarray(0, bs), { fua: false });
      assertBytes(await device.read(2 * bs, 2 * bs), data, 'FUA write');
      assertBytes(await device.read(size - bs, bs), data.subarray(0, bs), 'write with fua: false');
    }));

  it('matches a model over a seeded random sequence of writes, reads and trims', () =>
    withDevice(async (device) => {
      const model = Buffer.alloc(size);
      const random = xorshift(0x9e3779b9 ^ bs);
      const blocks = size / bs;
      for (let step = 0; step < 200; step++) {
        const first = random() % blocks;
        const count = 1 + (random() % Math.min(16, blocks - first));
        const offset = first * bs;
        const length = count * bs;
        const kind = random() % 10;
        if (kind < 5) {
          const data = pattern(length, 1000 + step);
          await device.write(offset, data);
          data.copy(model, offset);
        } else if (kind < 7 && supports.trim) {
          await callTrim(device, offset, length);
          model.fill(0, offset, offset + length);
        } else {
          assertBytes(await device.read(offset, length), model.subarray(offset, offset + length), `step ${step}`);
        }
      }
      assertEqualImage(await device.read(0, size), model);
    }));

  if (supports.trim) {
    it('trim makes the range read as zero and keeps its neighbours', () =>
      withDevice(async (device) => {
        const data = pattern(4 * bs, 17);
        await device.write(bs, data);
        await callTrim(device, 2 * bs, 2 * bs);
        const back = await device.read(bs, 4 * bs);
        assertBytes(back.subarray(0, bs), data.subarray(0, bs), 'block before kept');
        assertZero(back.subarray(bs, 3 * bs), 'trimmed blocks');
        assertBytes(back.subarray(3 * bs), data.subarray(3 * bs), 'block after kept');
        // Trimming never-written blocks is fine; trimming the whole device zeroes everything.
        await callTrim(device, size - 2 * bs, 2 * bs);
        await device.write(0, pattern(size, 18));
        await callTrim(device, 0, size);
        assertZero(await device.read(0, size), 'device after a whole-device trim');
        // Written again after a trim.
        await device.write(2 * bs, data);
        assertBytes(await device.read(2 * bs, 4 * bs), data, 'written after trim');
      }));
  } else {
    it('without trim support, trim is absent or refused with BM_ERR_NOT_SUPPORTED', () =>
      withDevice(async (device) => {
        if (device.trim === undefined) return;
        await rejectsWith(device.trim(0, bs), 'BM_ERR_NOT_SUPPORTED', 'trim');
      }));
  }

  if (supports.allocation) {
    it('blockStatus covers exactly the range with aligned extents; zero extents read as zeroes; written data is never reported zero', () =>
      withDevice(async (device) => {
        const check = async (offset: number, length: number, what: string): Promise<BlockExtent[]> => {
          const extents = await callBlockStatus(device, offset, length);
          let pos = offset;
          for (const e of extents) {
            assert.equal(e.offset, pos, `${what}: extents are adjacent and in order`);
            assert.ok(e.length > 0 && e.length % bs === 0, `${what}: extent length ${e.length} is a positive multiple of ${bs}`);
            assert.equal(typeof e.zero, 'boolean');
            assert.equal(typeof e.hole, 'boolean');
            if (e.zero) assertZero(await device.read(e.offset, e.length), `${what}: extent reported zero at ${e.offset}`);
            pos += e.length;
          }
          assert.equal(pos, offset + length, `${what}: extents end at the end of the range`);
          return extents;
        };
        assert.deepEqual(await callBlockStatus(device, bs, 0), [], 'an empty range has no extents');
        await check(0, size, 'fresh device');
        const written = [bs, alignDown(size / 2, bs), size - bs];
        for (const [i, offset] of written.entries()) await device.write(offset, pattern(bs, 40 + i));
        const all = await check(0, size, 'after writes');
        for (const offset of written) {
          const e = all.find((x) => x.offset <= offset && offset < x.offset + x.length)!;
          assert.equal(e.zero, false, `written block at ${offset} is not reported zero`);
        }
        await check(bs, 3 * bs, 'sub-range');
        await check(size - 2 * bs, 2 * bs, 'tail');
        if (supports.trim) {
          await callTrim(device, 0, size);
          await check(0, size, 'after a whole-device trim');
        }
        await rejectsWith(callBlockStatus(device, size - bs, 2 * bs), 'BM_ERR_OUT_OF_RANGE', 'blockStatus crossing the end');
        if (bs > 1) await rejectsWith(callBlockStatus(device, 1, bs), 'BM_ERR_MISALIGNED', 'blockStatus at a misaligned offset');
        await rejectsWith(callBlockStatus(device, -bs, bs), 'BM_ERR_INVALID_ARGUMENT', 'blockStatus at a negative offset');
      }));
  }

  const reopen = options.reopen;
  if (supports.reopen && reopen !== undefined) {
    it('keeps its content across close and reopen', async () => {
      const device = await options.create(size, bs);
      const model = Buffer.alloc(size);
      try {
        for (const [i, offset] of [0, alignDown(size / 2, bs), size - bs].entries()) {
          const data = pattern(bs, 20 + i);
          await device.write(offset, data);
          data.copy(model, offset);
        }
        await device.flush();
      } finally {
        await device.close();
      }
      const again = await reopen(device);
      try {
        assert.equal(again.size, size);
        assert.equal(again.blockSize, bs);
        assertEqualImage(await again.read(0, size), model);
      } finally {
        await again.close();
      }
    });
  }

  it('rejects every operation with BM_ERR_CLOSED after close', () =>
    withDevice(async (device) => {
      await device.write(0, pattern(bs, 21));
      await device.close();
      await rejectsWith(device.read(0, bs), 'BM_ERR_CLOSED', 'read');
      await rejectsWith(device.read(0, 0), 'BM_ERR_CLOSED', 'zero-length read');
      await rejectsWith(device.write(0, pattern(bs, 22)), 'BM_ERR_CLOSED', 'write');
      await rejectsWith(device.write(0, pattern(bs, 22), { fua: true }), 'BM_ERR_CLOSED', 'FUA write');
      await rejectsWith(device.flush(), 'BM_ERR_CLOSED', 'flush');
      if (device.trim !== undefined) await rejectsWith(device.trim(0, bs), 'BM_ERR_CLOSED', 'trim');
      if (device.blockStatus !== undefined) await rejectsWith(device.blockStatus(0, bs), 'BM_ERR_CLOSED', 'blockStatus');
      if (device.readInto !== undefined) await rejectsWith(device.readInto(0, Buffer.alloc(bs)), 'BM_ERR_CLOSED', 'readInto');
    }));

  it('closes idempotently, sequentially and concurrently', async () => {
    const device = await options.create(size, bs);
    await Promise.all([device.close(), device.close()]);
    await device.close();
    await rejectsWith(device.read(0, bs), 'BM_ERR_CLOSED', 'read');
  });

  it('settles requests in flight when close is called (resolved, or rejected with BM_ERR_CLOSED)', async () => {
    const device = await options.create(size, bs);
    const ops: Promise<unknown>[] = [];
    for (let i = 0; i < 8; i++) {
      ops.push(device.write(i * bs, pattern(bs, 30 + i)));
      ops.push(device.read(i * bs, bs));
    }
    ops.push(device.flush());
    const closing = device.close();
    const results = await Promise.allSettled(ops);
    await closing;
    for (const result of results) {
      if (result.status === 'rejected') assertCode(result.reason, 'BM_ERR_CLOSED', 'request in flight at close');
    }
  });
}

async function callBlockStatus(device: BlockDevice, offset: number, length: number): Promise<BlockExtent[]> {
  assert.equal(typeof device.blockStatus, 'function', 'supports.allocation is true, so blockStatus() must exist');
  return device.blockStatus!(offset, length);
}

async function callTrim(device: BlockDevice, offset: number, length: number): Promise<void> {
  assert.equal(typeof device.trim, 'function', 'supports.trim is true, so trim() must exist');
  await device.trim?.(offset, length);
}

function assertCode(error: unknown, code: ErrorCode, what: string): void {
  assert.ok(error instanceof BlockMirrorError, `${what}: expected a BlockMirrorError ${code}, got ${String(error)}`);
  assert.equal(error.code, code, `${what}: ${error.message}`);
}

async function rejectsWith(promise: Promise<unknown>, code: ErrorCode, what: string): Promise<void> {
  await assert.rejects(promise, (error: unknown) => {
    assertCode(error, code, what);
    return true;
  }, `${what}: expected a rejection with ${code}`);
}

function assertZero(buffer: Uint8Array, what: string): void {
  const at = buffer.findIndex((byte) => byte !== 0);
  assert.equal(at, -1, `${what}: expected zeroes, found ${buffer[at]} at byte ${at}`);
}

function assertEqualImage(actual: Buffer, expected: Buffer): void {
  assertBytes(actual, expected, 'device image compared with the model');
}

function assertBytes(actual: Uint8Array, expected: Uint8Array, what: string): void {
  assert.equal(actual.length, expected.length, `${what}: length`);
  if (Buffer.compare(actual, expected) === 0) return;
  let at = 0;
  while (actual[at] === expected[at]) at++;
  assert.fail(`${what}: differs at byte ${at} (${actual[at]} !== ${expected[at]})`);
}

function alignDown(n: number, bs: number): number {
  return Math.floor(n / bs) * bs;
}

/** Deterministic non-zero-heavy bytes, distinct per seed. */
function pattern(length: number, seed: number): Buffer {
  const next = xorshift(seed * 2654435761);
  const out = Buffer.allocUnsafe(length);
  for (let i = 0; i < length; i++) out[i] = (next() & 0xff) | 1;
  return out;
}

function xorshift(seed: number): () => number {
  let x = seed >>> 0 || 0x2545f491;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x;
  };
}
