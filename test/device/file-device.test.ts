import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { BlockDevice } from '../../src/device/block-device.js';
import { FileBlockDevice } from '../../src/device/file-device.js';
import { BlockMirrorError, isBlockMirrorError } from '../../src/errors.js';
import type { ErrorCode } from '../../src/errors.js';
import { blockDeviceSuite } from '../../src/testing/block-device-suite.js';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'blockmirror-file-device-'));
after(() => fs.rmSync(dir, { recursive: true, force: true }));
let counter = 0;
const freshPath = (): string => path.join(dir, `device-${++counter}.img`);

blockDeviceSuite({
  name: 'FileBlockDevice',
  create: (size, blockSize) => FileBlockDevice.open(freshPath(), { size, blockSize }),
  reopen: (device: BlockDevice) => FileBlockDevice.open((device as FileBlockDevice).path, { blockSize: device.blockSize }),
  supports: { trim: true, flush: true, fua: true, reopen: true },
});

blockDeviceSuite({
  name: 'FileBlockDevice (thread pool only)',
  create: (size, blockSize) => FileBlockDevice.open(freshPath(), { size, blockSize, inlineReads: false, inlineWrites: false }),
  reopen: (device: BlockDevice) =>
    FileBlockDevice.open((device as FileBlockDevice).path, { blockSize: device.blockSize, inlineReads: false, inlineWrites: false }),
  supports: { trim: true, flush: true, fua: true, reopen: true },
});

function isCode(code: ErrorCode): (error: unknown) => boolean {
  return (error: unknown) => {
    assert.ok(error instanceof BlockMirrorError, `expected BlockMirrorError ${code}, got ${String(error)}`);
    assert.equal(error.code, code, error.message);
    return true;
  };
}

describe('FileBlockDevice', () => {
  for (const inlineReads of [true, false]) {
    it(`reads zeroes past the end of a file truncated behind its back (inlineReads ${inlineReads})`, async () => {
      const file = freshPath();
      const device = await FileBlockDevice.open(file, { size: 65536, blockSize: 4096, inlineReads });
      try {
        await device.write(0, Buffer.alloc(16384, 0xab));
        fs.truncateSync(file, 8192);
        const data = await device.read(4096, 8192);
        assert.deepEqual(data, Buffer.concat([Buffer.alloc(4096, 0xab), Buffer.alloc(4096)]));
      } finally {
        await device.close();
      }
    });
  }

  it('creates a sparse file: a 1 GiB device occupies almost no disk until written', async () => {
    const file = freshPath();
    const device = await FileBlockDevice.open(file, { size: 2 ** 30, blockSize: 4096 });
    try {
      assert.equal(device.size, 2 ** 30);
      assert.equal(device.path, file);
      const stat = fs.statSync(file);
      assert.equal(stat.size, 2 ** 30);
      assert.ok(stat.blocks * 512 < 1024 * 1024, `allocated ${stat.blocks * 512} bytes`);
      await device.write(2 ** 29, Buffer.alloc(4096, 1), { fua: true });
      assert.ok(fs.statSync(file).blocks * 512 < 1024 * 1024, 'one write allocates about one block');
    } finally {
      await device.close();
    }
  });

  it('reopens an existing file with its content, with the same size given or with no size', async () => {
    const file = freshPath();
    const first = await FileBlockDevice.open(file, { size: 65536 });
    await first.write(4096, Buffer.alloc(512, 0xa5));
    await first.close();
    for (const options of [{ size: 65536 }, {}, { create: false }]) {
      const again = await FileBlockDevice.open(file, options);
      try {
        assert.equal(again.size, 65536);
        assert.equal(again.blockSize, 512);
        assert.deepEqual(await again.read(4096, 512), Buffer.alloc(512, 0xa5));
        assert.deepEqual(await again.read(3584, 512), Buffer.alloc(512));
      } finally {
        await again.close();
      }
    }
  });

  it('refuses to open an existing file of another size, and leaves it untouched', async () => {
    const file = freshPath();
    fs.writeFileSync(file, Buffer.alloc(8192, 3));
    await assert.rejects(FileBlockDevice.open(file, { size: 16384 }), isCode('BM_ERR_INVALID_ARGUMENT'));
    await assert.rejects(FileBlockDevice.open(file, { size: 4096 }), isCode('BM_ERR_INVALID_ARGUMENT'));
    assert.deepEqual(fs.readFileSync(file), Buffer.alloc(8192, 3));
  });

  it('refuses a file whose size is not a multiple of the block size', async () => {
    const file = freshPath();
    fs.writeFileSync(file, Buffer.alloc(4096 + 512));
    await assert.rejects(FileBlockDevice.open(file, { blockSize: 4096 }), isCode('BM_ERR_INVALID_ARGUMENT'));
    const ok = await FileBlockDevice.open(file, { blockSize: 512 });
    assert.equal(ok.size, 4608);
    await ok.close();
  });

  it('refuses bad options and missing files it may not create, creating nothing', async () => {
    const missing = path.join(dir, 'missing.img');
    await assert.rejects(FileBlockDevice.open(missing), isCode('BM_ERR_INVALID_ARGUMENT'));
    await assert.rejects(FileBlockDevice.open(missing, { size: 4096, create: false }), isCode('BM_ERR_INVALID_ARGUMENT'));
    await assert.rejects(FileBlockDevice.open(missing, { size: 4096, readOnly: true }), isCode('BM_ERR_INVALID_ARGUMENT'));
    await assert.rejects(FileBlockDevice.open(missing, { size: 1000 }), isCode('BM_ERR_INVALID_ARGUMENT'));
    await assert.rejects(FileBlockDevice.open(missing, { size: 4096, blockSize: 3 }), isCode('BM_ERR_INVALID_ARGUMENT'));
    await assert.rejects(FileBlockDevice.open('', { size: 4096 }), isCode('BM_ERR_INVALID_ARGUMENT'));
    await assert.rejects(FileBlockDevice.open(path.join(dir, 'no-such-dir', 'x.img'), { size: 4096 }), isCode('BM_ERR_INVALID_ARGUMENT'));
    assert.equal(fs.existsSync(missing), false);
  });

  it('refuses a directory', async () => {
    await assert.rejects(FileBlockDevice.open(dir, { size: 4096 }), isCode('BM_ERR_INVALID_ARGUMENT'));
    await assert.rejects(FileBlockDevice.open(dir, { readOnly: true }), isCode('BM_ERR_INVALID_ARGUMENT'));
  });

  it('read-only: reads work, writes and trims are refused with BM_ERR_READ_ONLY, the file is unchanged', async () => {
    const file = freshPath();
    fs.writeFileSync(file, Buffer.alloc(8192, 7));
    const device = await FileBlockDevice.open(file, { readOnly: true });
    try {
      assert.equal(device.readOnly, true);
      assert.deepEqual(await device.read(0, 8192), Buffer.alloc(8192, 7));
      await assert.rejects(device.write(0, Buffer.alloc(512)), isCode('BM_ERR_READ_ONLY'));
      await assert.rejects(device.write(0, Buffer.alloc(512), { fua: true }), isCode('BM_ERR_READ_ONLY'));
      await assert.rejects(device.trim(0, 512), isCode('BM_ERR_READ_ONLY'));
      await device.flush();
      // Range errors keep their own code on a read-only device.
      await assert.rejects(device.write(1, Buffer.alloc(512)), isCode('BM_ERR_MISALIGNED'));
    } finally {
      await device.close();
    }
    assert.deepEqual(fs.readFileSync(file), Buffer.alloc(8192, 7));
  });

  it('trims ranges longer than its 1 MiB zero buffer', async () => {
    const size = 4 * 1024 * 1024;
    const device = await FileBlockDevice.open(freshPath(), { size, blockSize: 4096 });
    try {
      await device.write(0, Buffer.alloc(size, 0xff));
      await device.trim(4096, size - 8192);
      const back = await device.read(0, size);
      assert.deepEqual(back.subarray(0, 4096), Buffer.alloc(4096, 0xff));
      assert.equal(back.subarray(4096, size - 4096).findIndex((b) => b !== 0), -1, 'trimmed range is zero');
      assert.deepEqual(back.subarray(size - 4096), Buffer.alloc(4096, 0xff));
    } finally {
      await device.close();
    }
  });

  it('close waits for requests in flight: they complete and their data is in the file', async () => {
    const file = freshPath();
    const device = await FileBlockDevice.open(file, { size: 64 * 4096, blockSize: 4096 });
    const writes = Array.from({ length: 64 }, (_, i) => device.write(i * 4096, Buffer.alloc(4096, i + 1)));
    const reads = Array.from({ length: 8 }, (_, i) => device.read(i * 4096, 4096));
    const flushed = device.flush();
    const closed = device.close();
    await assert.rejects(device.write(0, Buffer.alloc(4096)), isCode('BM_ERR_CLOSED'));
    await Promise.all([...writes, ...reads, flushed, closed]);
    const content = fs.readFileSync(file);
    for (let i = 0; i < 64; i++) {
      assert.deepEqual(content.subarray(i * 4096, (i + 1) * 4096), Buffer.alloc(4096, i + 1), `block ${i}`);
    }
  });

  it('returns a read buffer that owns its memory (not a slice of a shared pool)', async () => {
    const device = await FileBlockDevice.open(freshPath(), { size: 8192 });
    try {
      const buffer = await device.read(0, 512);
      assert.equal(buffer.byteOffset, 0);
      assert.equal(buffer.buffer.byteLength, 512);
    } finally {
      await device.close();
    }
  });

  // A character special file is accepted with an explicit size; /dev/full fails every write with ENOSPC.
  if (process.platform === 'linux') {
    describe('on /dev/full (Linux)', () => {
      let device: FileBlockDevice;
      before(async () => {
        device = await FileBlockDevice.open('/dev/full', { size: 1024 * 1024, blockSize: 4096 });
      });
      after(() => device.close());

      it('maps ENOSPC from write to BM_ERR_NO_SPACE with the system error as cause', async () => {
        await assert.rejects(device.write(8192, Buffer.alloc(4096, 1)), (error: unknown) => {
          assert.ok(isBlockMirrorError(error, 'BM_ERR_NO_SPACE'), String(error));
          assert.equal((error.cause as NodeJS.ErrnoException).code, 'ENOSPC');
          assert.deepEqual(
            { op: error.details.op, offset: error.details.offset, length: error.details.length, path: error.details.path },
            { op: 'write', offset: 8192, length: 4096, path: '/dev/full' },
          );
          return true;
        });
      });

      it('reads zeroes', async () => {
        assert.deepEqual(await device.read(4096, 4096), Buffer.alloc(4096));
      });
    });
  }

  it('refuses a special file without an explicit size', async () => {
    await assert.rejects(FileBlockDevice.open(os.devNull, { readOnly: true }), isCode('BM_ERR_INVALID_ARGUMENT'));
  });
});
