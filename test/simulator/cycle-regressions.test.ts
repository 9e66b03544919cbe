/**
 * Regressions the simulator's cycle family found (test/simulator/FINDINGS.md),
 * and the memory file system the family runs on.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CrashableMemoryDevice } from '../../src/device/crashable-memory-device.js';
import { LayeredVolume } from '../../src/cycle/layered-volume.js';
import { MemoryFileSystem } from '../../src/testing/simulator/memory-fs.js';
import { simulateCycle } from '../../src/testing/simulator/cycle-simulation.js';

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

test('cycle family seeds 89 and 1386 (a silent target stalled the source; a reopened layer skipped its fsync) keep I6 and liveness', async () => {
  for (const seed of [89, 1386]) {
    const r = await simulateCycle({ seed });
    assert.equal(r.ok, true, `seed ${seed}: ${r.violations.map((v) => `${v.invariant}: ${v.message}`).join('; ')}`);
  }
});
