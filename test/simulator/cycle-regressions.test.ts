/**
 * Regressions the simulator's cycle family found (test/simulator/FINDINGS.md),
 * and the memory file system the family runs on.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CrashableMemoryDevice } from '../../src/device/crashable-memory-device.js';
import { MemoryBlockDevice } from '../../src/device/memory-device.js';
import { FreezeTable } from '../../src/cycle/freeze-table.js';
import { cycleGeometry } from '../../src/cycle/geometry.js';
import { LayeredVolume } from '../../src/cycle/layered-volume.js';
import { StagingStore } from '../../src/cycle/staging-store.js';
import { MemoryFileSystem } from '../../src/testing/simulator/memory-fs.js';
import { simulateCycle } from '../../src/testing/simulator/cycle-simulation.js';
import { collectGarbage, retainedBytes } from '../helpers/gc.js';

const SIZE = 64 * 1024;
const lose = (): number => 0.99; // a crash keeps no write that was not synced

async function open(fs: MemoryFileSystem, base: CrashableMemoryDevice): Promise<{ volume: LayeredVolume; revoke: () => void }> {
  const view = fs.view();
  const session = base.session();
  const volume = await LayeredVolume.open(session, { dir: '/v', name: 'v', fs: view, chunkSize: 16384, granularity: 4096 });
  return {
    volume,
    revoke: () => {
      view.revoke();
      session.revoke();
    },
  };
}

test('SPEC 29/33: a layer reopened after a process crash is synced by its seal, so a later power loss keeps the freeze', async () => {
  const fs = new MemoryFileSystem();
  const base = new CrashableMemoryDevice(SIZE, { blockSize: 512 });
  const first = await open(fs, base);
  await first.volume.write(4096, Buffer.alloc(4096, 7));
  first.revoke(); // the process dies: its write is in the page cache, not synced
  const second = await open(fs, base);
  assert.equal(await second.volume.freeze(), 1);
  second.revoke();
  fs.crash(lose);
  base.crash(lose);
  const third = await open(fs, base);
  assert.deepEqual(await third.volume.readFrozen(1, 4096, 4096), Buffer.alloc(4096, 7), 'freeze 1 holds the write after the power loss');
});

test('MemoryFileSystem: state files and synced writes survive a crash; unsynced file writes do not; a revoked view never settles', async () => {
  const fs = new MemoryFileSystem();
  const view = fs.view();
  await view.writeState('/d/s', { a: 1 });
  const f = await view.openFile('/d/f', 'create');
  await f.write(0, Buffer.from('synced'));
  await f.sync();
  await f.write(6, Buffer.from('-lost'));
  assert.deepEqual(await view.list('/d'), ['f', 's']);
  fs.crash(lose);
  assert.deepEqual(await view.readState('/d/s'), { a: 1 });
  assert.equal((await view.readFile('/d/f')).toString(), 'synced');
  view.revoke();
  let settled = false;
  void view.exists('/d/s').then(() => (settled = true));
  await new Promise((resolve) => setImmediate(resolve));
  assert.equal(settled, false);
});

test('issue 14: MemoryFileSystem: a device closed and removed is no longer held by the view that opened it; revoking the view still freezes the devices it has open', async () => {
  const fs = new MemoryFileSystem();
  const view = fs.view();
  // a staging file's life, as the staging store leads it (this test keeps no reference to the device)
  const stage = async (): Promise<WeakRef<object>> => {
    const staging = await view.openDevice('/d/stage', { size: 256 * 1024, blockSize: 512 });
    await staging.write(0, Buffer.alloc(256 * 1024, 1));
    await staging.close();
    await view.remove('/d/stage');
    return new WeakRef(staging);
  };
  const stored = await stage();
  await collectGarbage();
  assert.equal(stored.deref(), undefined, 'the closed session of the removed device (and with it the device and its 256 KiB image) was collected');

  const open = await view.openDevice('/d/image', { size: 4096, blockSize: 512 });
  view.revoke();
  let settled = false;
  void open.write(0, Buffer.alloc(512, 2)).finally(() => (settled = true));
  await new Promise((resolve) => setImmediate(resolve));
  assert.equal(settled, false, "a revoked view's device never settles");
  assert.equal(fs.device('/d/image')!.peek(0, 1)[0], 0, 'and changed nothing');
});

test('issue 14: SPEC 31: a long-lived staging store on the memory file system keeps no memory per transfer (60 staged deltas: every staging device freed)', async () => {
  const SIZE = 256 * 1024;
  const CHUNK = 64 * 1024;
  const GRAN = 4096;
  const LINEAGE = 'cd'.repeat(16);
  const geometry = cycleGeometry(SIZE, 512, CHUNK, GRAN);
  const fs = new MemoryFileSystem();
  const store = await StagingStore.open('/t', [{ name: 'v', device: new MemoryBlockDevice(SIZE, { blockSize: 512 }) }], { fs: fs.view() });
  const plan = { name: 'v', lineage: LINEAGE, chunkSize: CHUNK, granularity: GRAN };
  const first = await store.begin('src', 1, [{ ...plan, from: 0, full: true, tableBytes: 0, granules: geometry.chunkCount * geometry.granulesPerChunk }]);
  for (let c = 0; c < geometry.chunkCount; c++) await first.data(0, c, 0, geometry.granulesPerChunk, Buffer.alloc(CHUNK, 1));
  await first.commit();
  const stagings: Array<WeakRef<object>> = [];
  const delta = async (to: number): Promise<void> => {
    const table = new FreezeTable(geometry);
    // one granule in every chunk: the staging device is written across its whole size
    for (let c = 0; c < geometry.chunkCount; c++) {
      table.allocate(c);
      table.mark(c, to % geometry.granulesPerChunk, 1);
    }
    const bytes = table.encode();
    const t = await store.begin('src', to, [{ ...plan, from: to - 1, full: false, tableBytes: bytes.length, granules: table.granules }]);
    stagings.push(new WeakRef(fs.device('/t/v.stage.data')!));
    t.table(0, 0, bytes);
    for (const run of table.runs()) await t.data(0, run.slot, run.granule, run.count, Buffer.alloc(run.length, to));
    await t.commit();
  };
  await delta(2); // warm-up: code and caches allocated once
  const before = await retainedBytes();
  for (let to = 3; to <= 62; to++) await delta(to);
  const grown = (await retainedBytes()) - before;
  assert.equal(store.image('v').freeze, 62);
  assert.deepEqual(fs.paths(), ['/t/cycle-target.state'], 'no staging file is left');
  assert.equal(stagings.filter((r) => r.deref() !== undefined).length, 0, 'every staging device was freed');
  // each staging device held 2 × 256 KiB (current and durable images): 30 MiB for 60 transfers before the fix
  assert.ok(grown < 2 * 2 ** 20, `heap and buffers grew by ${(grown / 2 ** 20).toFixed(1)} MiB over 60 transfers`);
  await store.close();
});

test('cycle family seeds 89 and 1386 (a silent target stalled the source; a reopened layer skipped its fsync) keep I6 and liveness', async () => {
  for (const seed of [89, 1386]) {
    const r = await simulateCycle({ seed });
    assert.equal(r.ok, true, `seed ${seed}: ${r.violations.map((v) => `${v.invariant}: ${v.message}`).join('; ')}`);
  }
});

test('cycle family seed 6559 (liveness, in the harness: a restart scheduled just before the heal and the heal\'s own start ran at once on one target; the failure of the first revoked what the second opened) reaches the latest freeze', async () => {
  const r = await simulateCycle({ seed: 6559 });
  assert.equal(r.ok, true, r.violations.map((v) => `${v.invariant}: ${v.message}`).join('; '));
});

test('cycle family seeds 7579 and 7959 (I6: a freeze during the first write of a granule; the next write of that granule into the new layer copied up the older block before the first write reached the old layer) keep I6 and liveness', async () => {
  for (const seed of [7579, 7959]) {
    const r = await simulateCycle({ seed });
    assert.equal(r.ok, true, `seed ${seed}: ${r.violations.map((v) => `${v.invariant}: ${v.message}`).join('; ')}`);
  }
});
