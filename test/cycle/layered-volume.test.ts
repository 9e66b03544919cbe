import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, openSync, readFileSync, readdirSync, closeSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { after, describe, it } from 'node:test';
import type { BlockDevice } from '../../src/device/block-device.js';
import { FileBlockDevice } from '../../src/device/file-device.js';
import { LayeredVolume } from '../../src/cycle/layered-volume.js';
import { MAP_HEADER_BYTES, MAP_RECORD_BYTES } from '../../src/cycle/layer-file.js';
import { isBlockMirrorError } from '../../src/errors.js';
import { blockDeviceSuite } from '../../src/testing/block-device-suite.js';
import { openVolume, pattern, tempDir } from './helpers.js';

const { dir, cleanup } = tempDir('lv');
after(cleanup);
let counter = 0;

blockDeviceSuite({
  name: 'LayeredVolume',
  create: async (size, blockSize) => openVolume(dir, `suite-${++counter}.img`, size, { blockSize, chunkSize: 65536, granularity: Math.max(4096, blockSize) }),
  reopen: async (device: BlockDevice) => {
    const v = device as LayeredVolume;
    const base = await FileBlockDevice.open(join(v.dir, v.name), { blockSize: v.blockSize });
    return LayeredVolume.open(base);
  },
  supports: { trim: true, flush: true, fua: true, reopen: true },
});

const MiB = 1024 * 1024;

async function reopen(v: LayeredVolume, hooks?: Parameters<typeof LayeredVolume.open>[1]): Promise<LayeredVolume> {
  await v.close();
  const base = await FileBlockDevice.open(join(v.dir, v.name), { blockSize: v.blockSize });
  return LayeredVolume.open(base, hooks);
}

describe('LayeredVolume', () => {
  it('SPEC 28: keeps a freeze table per layer — changed chunks get slots in write order, the others stay -1', async () => {
    const v = await openVolume(dir, 'table.img', 8 * MiB);
    try {
      await v.write(5 * MiB + 4096, Buffer.alloc(4096, 1));
      await v.write(2 * MiB, Buffer.alloc(8192, 2));
      await v.write(5 * MiB, Buffer.alloc(512, 3));
      const k = await v.freeze();
      const t = v.frozenTable(k);
      assert.deepEqual(
        Array.from({ length: 8 }, (_, c) => t.slotOf(c)),
        [-1, -1, 1, -1, -1, 0, -1, -1],
      );
      assert.equal(t.granules, 4, 'granules 0 and 1 of chunk 5, granules 0 and 1 of chunk 2');
      assert.equal(v.status().active.chunks, 0, 'the new layer starts empty');
    } finally {
      await v.close();
    }
  });

  it('SPEC 29: redirect-on-write — the base is untouched, the first write copies up only the rest of its granules, reads take the newest layer', async () => {
    const v = await openVolume(dir, 'row.img', 4 * MiB);
    const basePath = join(dir, 'row.img');
    try {
      const original = pattern(4 * MiB, 1);
      await v.base.write(0, original);
      await v.write(MiB + 1024, Buffer.alloc(512, 0xaa)); // inside granule 0 of chunk 1
      assert.ok(readFileSync(basePath).equals(original), 'the base device is not written');
      const st = v.status();
      assert.equal(st.active.granules, 1, 'one 4 KiB granule copied up, not the 1 MiB chunk');
      const expect = Buffer.from(original);
      expect.fill(0xaa, MiB + 1024, MiB + 1536);
      assert.ok((await v.read(0, 4 * MiB)).equals(expect));
      // later writes to that granule go straight to its slot
      await v.write(MiB, Buffer.alloc(512, 0xbb));
      expect.fill(0xbb, MiB, MiB + 512);
      assert.equal(v.status().active.granules, 1);
      const k = await v.freeze();
      await v.write(MiB + 512, Buffer.alloc(512, 0xcc));
      const now = Buffer.from(expect);
      now.fill(0xcc, MiB + 512, MiB + 1024);
      assert.ok((await v.read(0, 4 * MiB)).equals(now), 'newest layer wins');
      assert.ok((await v.readFrozen(k, 0, 4 * MiB)).equals(expect), 'the frozen image is unchanged');
      assert.ok((await v.readFrozen(0, 0, 4 * MiB)).equals(original), 'freeze 0 is the base');
    } finally {
      await v.close();
    }
  });

  it('SPEC 29: freeze opens the new layer first, then switches and seals — writes in flight land in the frozen layer', async () => {
    const v = await openVolume(dir, 'order.img', 2 * MiB, { chunkSize: 65536 });
    try {
      await v.prepareFreeze();
      assert.ok(existsSync(join(dir, 'order.img.L2.map')), 'the new layer exists before the switch');
      assert.equal(v.lastFreeze, 0);
      await v.write(0, Buffer.alloc(4096, 1)); // still the old layer
      const inFlight = v.write(65536, Buffer.alloc(65536, 2));
      const k = v.activatePrepared();
      const after1 = v.write(4096, Buffer.alloc(4096, 3)); // issued after the switch
      await v.seal(k);
      await Promise.all([inFlight, after1]);
      const frozen = await v.readFrozen(k, 0, 2 * 65536);
      assert.equal(frozen[0], 1);
      assert.equal(frozen[65536], 2, 'a write issued before the switch belongs to the freeze');
      assert.equal(frozen[4096], 0, 'a write issued after the switch does not');
      assert.equal((await v.read(4096, 512))[0], 3);
      await assert.rejects(v.freeze().then(() => v.prepareFreeze().then(() => v.prepareFreeze())), (e) => isBlockMirrorError(e, 'BM_ERR_VOLUME_BUSY'));
    } finally {
      await v.close();
    }
  });

  it('recovers base, frozen and active layers after a crash; a crash inside a freeze recovers with the freeze taken', async () => {
    let v = await openVolume(dir, 'crash.img', 2 * MiB, { chunkSize: 65536, granularity: 4096 });
    const model = Buffer.alloc(2 * MiB);
    const write = async (off: number, len: number, seed: number): Promise<void> => {
      const d = pattern(len, seed);
      await v.write(off, d);
      d.copy(model, off);
    };
    await write(0, 8192, 1);
    await v.freeze();
    const image1 = Buffer.from(model);
    await write(4096, 1024, 2);
    await write(MiB - 512, 1024, 3); // across two chunks
    // no flush: a closed process keeps what its writes put in the page cache
    v = await reopen(v);
    assert.equal(v.lastFreeze, 1);
    assert.deepEqual(v.frozenLayers, [1]);
    assert.ok((await v.read(0, 2 * MiB)).equals(model), 'acknowledged writes survive');
    assert.ok((await v.readFrozen(1, 0, 2 * MiB)).equals(image1));
    await v.prepareFreeze(); // crash between the manifest and the switch
    await write(16384, 4096, 4);
    v = await reopen(v);
    assert.equal(v.lastFreeze, 2, 'the recorded freeze holds');
    assert.ok((await v.readFrozen(2, 0, 2 * MiB)).equals(model), 'freeze 2 holds everything written before the crash');
    await v.close();
  });

  it('skips a torn map record and removes stale layer files when reopened', async () => {
    let v = await openVolume(dir, 'torn.img', MiB, { chunkSize: 65536 });
    await v.write(0, Buffer.alloc(4096, 1));
    await v.write(65536, Buffer.alloc(4096, 2));
    await v.close();
    const map = join(dir, 'torn.img.L1.map');
    const fd = openSync(map, 'r+');
    writeSync(fd, Buffer.from([0xff]), 0, 1, MAP_HEADER_BYTES + MAP_RECORD_BYTES + 13); // damage the 2nd record
    writeSync(fd, Buffer.alloc(7, 9), 0, 7, MAP_HEADER_BYTES + 2 * MAP_RECORD_BYTES); // a torn partial record at the end
    closeSync(fd);
    const stale = join(dir, 'torn.img.L5.map');
    closeSync(openSync(stale, 'w'));
    const base = await FileBlockDevice.open(join(dir, 'torn.img'));
    v = await LayeredVolume.open(base);
    try {
      assert.equal((await v.read(0, 512))[0], 1);
      assert.equal((await v.read(65536, 512))[0], 0, 'the damaged record is ignored: that granule reads from below');
      assert.ok(!existsSync(stale));
      await v.write(131072, Buffer.alloc(4096, 3)); // appends after the torn tail
      v = await reopen(v);
      assert.equal((await v.read(131072, 512))[0], 3);
    } finally {
      await v.close();
    }
  });

  it('SPEC 33: merging the frozen layer into the base is idempotent — an interrupted merge is done again', async () => {
    let failAfter = 2;
    const hooks = {
      beforeMergeWrite: (): void => {
        if (failAfter-- <= 0) throw new Error('simulated crash in the merge');
      },
    };
    let v = await openVolume(dir, 'merge.img', 4 * MiB, { chunkSize: 65536, hooks });
    const model = Buffer.alloc(4 * MiB);
    for (let i = 0; i < 12; i++) {
      const d = pattern(4096, 10 + i);
      await v.write(i * 300 * 1024 - ((i * 300 * 1024) % 4096), d);
      d.copy(model, i * 300 * 1024 - ((i * 300 * 1024) % 4096));
    }
    await v.freeze();
    await v.write(0, Buffer.alloc(4096, 0xee));
    const current = Buffer.from(model);
    current.fill(0xee, 0, 4096);
    await assert.rejects(v.mergeFrozenIntoBase(), /simulated crash/);
    assert.ok((await v.read(0, 4 * MiB)).equals(current), 'reads are right after a failed merge');
    v = await reopen(v);
    assert.deepEqual(v.frozenLayers, [1], 'the layer is still there');
    assert.equal(await v.mergeFrozenIntoBase(), 1);
    assert.equal(await v.mergeFrozenIntoBase(), 1, 'merging again is a no-op');
    assert.deepEqual(v.frozenLayers, []);
    assert.ok(readFileSync(join(dir, 'merge.img')).equals(model), 'the base equals freeze 1');
    assert.ok((await v.read(0, 4 * MiB)).equals(current));
    assert.ok(!readdirSync(dir).some((f) => f.startsWith('merge.img.L1.')), 'the merged layer files are gone');
    await v.close();
  });

  it('refuses to open files of another geometry', async () => {
    const v = await openVolume(dir, 'geo.img', MiB, { chunkSize: 65536 });
    await v.close();
    const base = await FileBlockDevice.open(join(dir, 'geo.img'));
    await assert.rejects(LayeredVolume.open(base, { chunkSize: 131072 }), (e) => isBlockMirrorError(e, 'BM_ERR_VOLUME_MISMATCH'));
    await base.close();
  });

  it('loses no acknowledged write when its process is killed with SIGKILL (real child process)', async () => {
    const fixture = new URL('./fixtures/volume-writer.ts', import.meta.url).pathname;
    const child = spawn(process.execPath, ['--import', 'tsx', fixture, dir, 'killed.img'], { stdio: ['ignore', 'pipe', 'inherit'] });
    const exited = new Promise<NodeJS.Signals | null>((resolve) => child.once('exit', (_code, signal) => resolve(signal)));
    const acked: number[] = [];
    let frozenAt = -1;
    for await (const line of createInterface({ input: child.stdout! })) {
      if (line.startsWith('ack ')) acked.push(Number(line.slice(4)));
      if (line.startsWith('frozen ')) frozenAt = Number(line.slice(7));
      if (acked.length >= 400 && frozenAt >= 2) {
        child.kill('SIGKILL');
        break;
      }
    }
    assert.equal(await exited, 'SIGKILL');
    assert.ok(frozenAt >= 2, 'freezes (and a merge) happened during the workload');
    const base = await FileBlockDevice.open(join(dir, 'killed.img'));
    const v = await LayeredVolume.open(base);
    try {
      assert.ok(v.lastFreeze >= frozenAt);
      // block j % 256 holds the 32-bit word j repeated; a later write to the block may have landed as well
      const last = new Map<number, number>();
      for (const j of acked) last.set(j % 256, Math.max(j, last.get(j % 256) ?? -1));
      for (const [block, j] of last) {
        const got = await v.read(block * 4096, 4096);
        const word = got.readUInt32BE(0);
        for (let o = 0; o < 4096; o += 4) assert.equal(got.readUInt32BE(o), word, `block ${block} is one whole write`);
        assert.ok(word >= j && word % 256 === block, `acknowledged write ${j} (block ${block}) is there (found ${word})`);
      }
    } finally {
      await v.close();
    }
  });
});
