import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { MemoryBlockDevice } from '../../src/device/memory-device.js';
import { isBlockMirrorError } from '../../src/errors.js';
import { blockDeviceSuite } from '../../src/testing/block-device-suite.js';

blockDeviceSuite({
  name: 'MemoryBlockDevice',
  create: async (size, blockSize) => new MemoryBlockDevice(size, { blockSize }),
  supports: { trim: true, flush: false, fua: false, reopen: false, allocation: true },
  blockSizes: [1, 512, 4096, 65536],
});

describe('MemoryBlockDevice', () => {
  it('allocates nothing for a 1 GiB device until written, then only the touched 64 KiB pages', async () => {
    const device = new MemoryBlockDevice(2 ** 30);
    try {
      assert.equal(device.allocatedBytes, 0);
      assert.equal((await device.read(2 ** 29, 4096)).length, 4096);
      assert.equal(device.allocatedBytes, 0, 'reads allocate no pages');
      // 1 KiB straddling the page boundary at 64 KiB touches two pages.
      await device.write(65536 - 512, Buffer.alloc(1024, 1));
      assert.equal(device.allocatedBytes, 2 * 65536);
      await device.write(2 ** 30 - 512, Buffer.alloc(512, 2));
      assert.equal(device.allocatedBytes, 3 * 65536);
      assert.deepEqual([...(await device.read(2 ** 30 - 1024, 1024))].slice(510, 514), [0, 0, 2, 2]);
    } finally {
      await device.close();
    }
  });

  it('frees pages that a trim covers entirely and zeroes partly covered ones', async () => {
    const device = new MemoryBlockDevice(4 * 65536);
    try {
      await device.write(0, Buffer.alloc(4 * 65536, 7));
      assert.equal(device.allocatedBytes, 4 * 65536);
      await device.trim(65536 - 512, 65536 + 1024);
      assert.equal(device.allocatedBytes, 3 * 65536, 'the one fully covered page is freed');
      const back = await device.read(65536 - 1024, 65536 + 2048);
      assert.deepEqual([back[511], back[512], back[back.length - 513], back[back.length - 512]], [7, 0, 0, 7]);
    } finally {
      await device.close();
    }
  });

  it('handles a size that is not a multiple of the page size', async () => {
    const device = new MemoryBlockDevice(65536 + 1536);
    try {
      await device.write(65536, Buffer.alloc(1536, 9));
      assert.equal(device.allocatedBytes, 1536, 'the last page is only as large as the device');
      await device.trim(65536, 1536);
      assert.equal(device.allocatedBytes, 0, 'trimming the whole last page frees it');
    } finally {
      await device.close();
    }
  });

  it('refuses a bad geometry with BM_ERR_INVALID_ARGUMENT', () => {
    for (const [size, blockSize] of [[1000, 512], [-512, 512], [4096, 3], [4096, 0], [262144, 131072]] as const) {
      assert.throws(
        () => new MemoryBlockDevice(size, { blockSize }),
        (error: unknown) => isBlockMirrorError(error, 'BM_ERR_INVALID_ARGUMENT'),
        `${size}/${blockSize}`,
      );
    }
  });

  it('drops its pages on close', async () => {
    const device = new MemoryBlockDevice(65536);
    await device.write(0, Buffer.alloc(512, 1));
    await device.close();
    assert.equal(device.allocatedBytes, 0);
  });
});
