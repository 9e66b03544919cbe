/**
 * The target's staging store directly: commit, crash in the merge (replayed
 * on open, idempotently), staging without a marker (discarded), a staged
 * full copy, refusals.
 */
import assert from 'node:assert/strict';
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import FakeTimers from '@sinonjs/fake-timers';
import { clockFrom } from '../../src/clock.js';
import { FileBlockDevice } from '../../src/device/file-device.js';
import { FreezeTable } from '../../src/cycle/freeze-table.js';
import { cycleGeometry } from '../../src/cycle/geometry.js';
import { StagingStore, type StagePlan, type StagingStoreHooks } from '../../src/cycle/staging-store.js';
import { isBlockMirrorError } from '../../src/errors.js';
import { pattern, subDir, tempDir } from './helpers.js';

const root = tempDir('staging');
after(root.cleanup);
let seq = 0;
const SIZE = 256 * 1024;
const CHUNK = 65536;
const GRAN = 4096;
const LINEAGE = 'ab'.repeat(16);
const geometry = cycleGeometry(SIZE, 512, CHUNK, GRAN);
/** Virtual time that never advances: a failed merge is not retried behind a test's back (merge-failure.test.ts covers the retries). */
const clock = clockFrom(FakeTimers.createClock(0));

interface Fixture {
  dir: string;
  device: FileBlockDevice;
  store: StagingStore;
  reopen(hooks?: StagingStoreHooks): Promise<void>;
  close(): Promise<void>;
}

async function fixture(hooks: StagingStoreHooks = {}): Promise<Fixture> {
  const dir = subDir(root.dir, `s-${++seq}`);
  const f = {
    dir,
    device: await FileBlockDevice.open(join(dir, 'img'), { size: SIZE }),
    store: undefined as unknown as StagingStore,
    reopen: async (h: StagingStoreHooks = {}) => {
      await f.store.close();
      await f.device.close();
      f.device = await FileBlockDevice.open(join(dir, 'img'));
      f.store = await StagingStore.open(dir, [{ name: 'v', device: f.device }], { hooks: h, clock });
    },
    close: async () => {
      await f.store.close();
      await f.device.close();
    },
  };
  f.store = await StagingStore.open(dir, [{ name: 'v', device: f.device }], { hooks, clock });
  return f;
}

function plan(p: Partial<StagePlan>): StagePlan {
  return { name: 'v', lineage: LINEAGE, from: 0, full: false, chunkSize: CHUNK, granularity: GRAN, tableBytes: 0, granules: 0, ...p };
}

/** Sends a whole image as a full copy to freeze `to`. */
async function fullCopy(store: StagingStore, to: number, image: Buffer): Promise<void> {
  const t = await store.begin('src', to, [plan({ full: true, granules: geometry.chunkCount * geometry.granulesPerChunk })]);
  for (let c = 0; c < geometry.chunkCount; c++) await t.data(0, c, 0, 16, image.subarray(c * CHUNK, (c + 1) * CHUNK));
  await t.commit();
}

/** Sends the granules of `table` from `image` as a delta from `from` to `to`. */
async function delta(store: StagingStore, from: number, to: number, table: FreezeTable, image: Buffer): Promise<void> {
  const bytes = table.encode();
  const t = await store.begin('src', to, [plan({ from, tableBytes: bytes.length, granules: table.granules })]);
  t.table(0, 0, bytes);
  for (const run of table.runs()) await t.data(0, run.slot, run.granule, run.count, image.subarray(run.offset, run.offset + run.length));
  await t.commit();
}

function changes(image: Buffer, granules: number[], seed: number): { table: FreezeTable; next: Buffer } {
  const next = Buffer.from(image);
  const table = new FreezeTable(geometry);
  granules.forEach((g, i) => {
    const chunk = Math.floor((g * GRAN) / CHUNK);
    table.allocate(chunk);
    table.mark(chunk, g % (CHUNK / GRAN), 1);
    pattern(GRAN, seed + i).copy(next, g * GRAN);
  });
  return { table, next };
}

/** Hooks whose merge throws 'injected crash' before image write number `crash.after` (0 = the next one; -1 = never). */
function mergeCrash(): { hooks: StagingStoreHooks; crash: { after: number } } {
  const crash = { after: -1 };
  const hooks: StagingStoreHooks = {
    beforeMergeWrite: () => {
      if (crash.after >= 0 && crash.after-- === 0) throw new Error('injected crash');
    },
  };
  return { hooks, crash };
}

describe('StagingStore', () => {
  it('SPEC 30/31: a first full copy goes straight into the image; a delta is staged, then merged under a commit marker', async () => {
    const f = await fixture();
    try {
      const image1 = pattern(SIZE, 1);
      await fullCopy(f.store, 1, image1);
      assert.deepEqual(f.store.image('v'), { lineage: LINEAGE, freeze: 1, seeding: false });
      assert.ok((await f.device.read(0, SIZE)).equals(image1));
      const { table, next } = changes(image1, [0, 3, 17, 40, 63], 10);
      await delta(f.store, 1, 2, table, next);
      assert.equal(f.store.image('v').freeze, 2);
      assert.ok((await f.device.read(0, SIZE)).equals(next));
      assert.deepEqual(readdirSync(f.dir).filter((n) => /stage|marker/.test(n)), [], 'staging and marker are gone');
    } finally {
      await f.close();
    }
  });

  it('SPEC 33: a crash in the merge is replayed on open (twice is harmless); staging without a marker is discarded', async () => {
    const { hooks, crash } = mergeCrash();
    const f = await fixture(hooks);
    try {
      const image1 = pattern(SIZE, 2);
      await fullCopy(f.store, 1, image1);
      const { table, next } = changes(image1, [1, 5, 9, 30, 50, 61], 20);
      crash.after = 2;
      await assert.rejects(delta(f.store, 1, 2, table, next), /injected crash/);
      await assert.rejects(f.store.begin('src', 3, [plan({ from: 2 })]), (e) => isBlockMirrorError(e, 'BM_ERR_IO'), 'no transfer while the merge is pending');
      // the replay crashes too, then succeeds
      crash.after = 1;
      await assert.rejects(f.reopen(hooks), /injected crash/);
      f.store = await StagingStore.open(f.dir, [{ name: 'v', device: f.device }], { clock });
      assert.equal(f.store.image('v').freeze, 2);
      assert.ok((await f.device.read(0, SIZE)).equals(next));
      // a transfer that never committed leaves staging files: discarded on open, image unchanged
      const more = changes(next, [2], 30);
      const bytes = more.table.encode();
      const t = await f.store.begin('src', 3, [plan({ from: 2, tableBytes: bytes.length, granules: 1 })]);
      t.table(0, 0, bytes);
      await t.data(0, 0, 2, 1, more.next.subarray(2 * GRAN, 3 * GRAN));
      assert.ok(existsSync(join(f.dir, 'v.stage.data')));
      await f.reopen();
      assert.ok(!existsSync(join(f.dir, 'v.stage.data')));
      assert.equal(f.store.image('v').freeze, 2);
      assert.ok((await f.device.read(0, SIZE)).equals(next));
    } finally {
      await f.close();
    }
  });

  it('replays a staged full copy (a target that fell behind the merged base) with every granule', async () => {
    const { hooks, crash } = mergeCrash();
    const f = await fixture(hooks);
    try {
      await fullCopy(f.store, 1, pattern(SIZE, 3));
      const image5 = pattern(SIZE, 4);
      crash.after = 1;
      // the image holds freeze 1 of this lineage: the full copy to 5 is staged, not written in place
      await assert.rejects(fullCopy(f.store, 5, image5), /injected crash/);
      await f.reopen();
      assert.equal(f.store.image('v').freeze, 5);
      assert.ok((await f.device.read(0, SIZE)).equals(image5));
    } finally {
      await f.close();
    }
  });

  it('refuses a delta that does not start at the freeze held, transfers of two sources at once, and incomplete commits', async () => {
    const f = await fixture();
    try {
      await fullCopy(f.store, 1, pattern(SIZE, 5));
      await assert.rejects(f.store.begin('src', 3, [plan({ from: 2 })]), (e) => isBlockMirrorError(e, 'BM_ERR_PROTOCOL'));
      await assert.rejects(f.store.begin('src', 2, [plan({ from: 1, lineage: 'cd'.repeat(16) })]), (e) => isBlockMirrorError(e, 'BM_ERR_PROTOCOL'));
      const t = await f.store.begin('a', 2, [plan({ from: 1 })]);
      await assert.rejects(f.store.begin('b', 2, [plan({ from: 1 })]), (e) => isBlockMirrorError(e, 'BM_ERR_VOLUME_BUSY'));
      await t.abort();
      const { table } = changes(pattern(SIZE, 5), [4], 1);
      const bytes = table.encode();
      const u = await f.store.begin('b', 2, [plan({ from: 1, tableBytes: bytes.length, granules: 1 })]);
      u.table(0, 0, bytes);
      assert.throws(() => u.data(0, 0, 5, 1, Buffer.alloc(GRAN)), (e) => isBlockMirrorError(e, 'BM_ERR_PROTOCOL'), 'a granule not in the table');
      await assert.rejects(u.commit(), (e) => isBlockMirrorError(e, 'BM_ERR_PROTOCOL'), 'a granule is missing');
      assert.equal(f.store.image('v').freeze, 1);
    } finally {
      await f.close();
    }
  });
});

describe('StagingStore staging space', () => {
  it('refuses with BM_ERR_NO_SPACE, before anything changes, a delta whose granules and table do not fit in the free space', async () => {
    const dir = subDir(root.dir, `space-${++seq}`);
    const device = await FileBlockDevice.open(join(dir, 'img'), { size: SIZE });
    let free = 1024 * 1024 * 1024;
    const { nodeFileSystem } = await import('../../src/storage/file-system.js');
    const fs = { ...nodeFileSystem, freeBytes: async () => free };
    const store = await StagingStore.open(dir, [{ name: 'v', device }], { clock, fs });
    try {
      const image1 = pattern(SIZE, 5);
      await fullCopy(store, 1, image1);
      const { table, next } = changes(image1, [0, 1, 2, 3, 20], 50);
      const bytes = table.encode();
      free = 5 * GRAN + bytes.length - 1;
      await assert.rejects(store.begin('src', 2, [plan({ from: 1, tableBytes: bytes.length, granules: 5 })]), (e) => {
        assert.ok(isBlockMirrorError(e, 'BM_ERR_NO_SPACE'));
        assert.equal(e.details.needed, 5 * GRAN + bytes.length);
        return true;
      });
      assert.deepEqual(readdirSync(dir).filter((n) => /stage|marker/.test(n)), [], 'nothing was staged');
      assert.equal(store.image('v').freeze, 1);
      // with room, the same delta goes through
      free += 1;
      await delta(store, 1, 2, table, next);
      assert.ok((await device.read(0, SIZE)).equals(next));
    } finally {
      await store.close();
      await device.close();
    }
  });
});
