/**
 * SPEC 22 / issue 12 (5): failback after a forced failover with the old
 * primary's write-intent bitmap. A (primary, state directory, no journal
 * directory) loses its mirror B with writes B never acknowledged; B is
 * promoted with force and written; A comes back as B's mirror on its own
 * device and state directory. B resyncs the union of A's bitmap and its own
 * changes — not the whole volume by checksum — and the images end identical,
 * also when A or B restarts in the middle of that resync.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MemoryNetwork } from '../../src/transport/memory.js';
import { MemoryBlockDevice } from '../../src/device/memory-device.js';
import { createMirrorTarget, type MirrorTarget } from '../../src/replication/mirror-target.js';
import { createPrimary, type Primary } from '../../src/replication/primary.js';
import { FilePairStateStore } from '../../src/replication/pair-state.js';
import { cutOff } from '../helpers/network.js';
import { onceEvent } from '../helpers/events.js';

const A = '10.12.5.1';
const B = '10.12.5.2';
const PORT = 7000;
const REGION = 64 * 1024;
const SIZE = 64 * REGION; // 4 MiB, 64 regions
const LINK = { heartbeats: false } as const;
// each node keeps one id in both roles (the CLI keeps it in the state directory): the failback bitmap names its peer by it

async function until(what: string, done: () => boolean | Promise<boolean>, timeout = 20_000): Promise<void> {
  const deadline = Date.now() + timeout;
  while (!(await done())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

function same(a: MemoryBlockDevice, b: MemoryBlockDevice): Promise<boolean> {
  return Promise.all([a.read(0, SIZE), b.read(0, SIZE)]).then(([x, y]) => x.equals(y));
}

interface Setup {
  network: MemoryNetwork;
  aDev: MemoryBlockDevice;
  bDev: MemoryBlockDevice;
  aDir: string;
  bDir: string;
  startB: (resync?: { rateBytesPerSecond?: number }) => Promise<Primary>;
  startA: () => Promise<MirrorTarget>;
  cleanup: () => Promise<void>;
}

/**
 * A mirrors to B (in sync); the link breaks while A writes `unacked` regions
 * (they never reach B); A stops; B is promoted with force and serves as the
 * primary (writing `bWrites` regions while A is away).
 */
async function forcedFailover(unacked: number[], bWrites: number[]): Promise<Setup> {
  const network = new MemoryNetwork();
  const aDev = new MemoryBlockDevice(SIZE, { blockSize: 512 });
  const bDev = new MemoryBlockDevice(SIZE, { blockSize: 512 });
  const aDir = await mkdtemp(join(tmpdir(), 'bm-failback-a-'));
  const bDir = await mkdtemp(join(tmpdir(), 'bm-failback-b-'));
  const target = await createMirrorTarget({ transport: network.transport({ host: B }), listen: { host: B, port: PORT }, volumes: [{ name: 'v', device: bDev }], stateDir: bDir, nodeId: 'node-b', ...LINK });
  const a = await createPrimary({ transport: network.transport({ host: A }), peer: { host: B, port: PORT }, stateDir: aDir, nodeId: 'node-a', volumes: [{ name: 'v', device: aDev, mode: 'async', initialSync: 'none' }], ...LINK });
  for (let r = 0; r < 64; r += 8) await a.volume('v').write(r * REGION, Buffer.alloc(4096, 0x11));
  await until('A in sync', () => a.volume('v').status().inSync);
  // the network breaks with writes in flight: they never reach B (A's connections are still open: same generation)
  network.partition(A, B);
  for (const r of unacked) await a.volume('v').write(r * REGION + 512, Buffer.alloc(8192, 0xaa));
  assert.ok(a.volume('v').status().bitmapDirtyRegions >= unacked.length, 'A marks them in its write-intent bitmap');
  cutOff(network, A, B);
  await a.close({ drain: false });
  // A is lost: B is promoted with force and serves the volume
  await target.promote('v', { force: true });
  await target.close();
  network.heal(A, B);
  const startB = (resync?: { rateBytesPerSecond?: number }): Promise<Primary> =>
    createPrimary({ transport: network.transport({ host: B }), peer: { host: A, port: PORT }, waitForConnection: false, stateDir: bDir, nodeId: 'node-b', volumes: [{ name: 'v', device: bDev, mode: 'async' }], retryDelay: { min: 20, max: 200 }, ...(resync === undefined ? {} : { resync }), ...LINK });
  const b = await startB();
  for (const r of bWrites) await b.volume('v').write(r * REGION, Buffer.alloc(4096, 0xbb));
  await b.close({ drain: false });
  const startA = (): Promise<MirrorTarget> => createMirrorTarget({ transport: network.transport({ host: A }), listen: { host: A, port: PORT }, volumes: [{ name: 'v', device: aDev }], stateDir: aDir, nodeId: 'node-a', ...LINK });
  return {
    network,
    aDev,
    bDev,
    aDir,
    bDir,
    startB,
    startA,
    cleanup: async () => {
      await rm(aDir, { recursive: true, force: true });
      await rm(bDir, { recursive: true, force: true });
    },
  };
}

test('SPEC 22, issue 12 (5): forced failover, then the old primary (unacknowledged writes, persistent bitmap) rejoins as the mirror: a bitmap resync of the union of both sides\' changes, not the whole volume; in sync, images identical, the failback bitmap removed', async () => {
  const s = await forcedFailover([3, 4, 40], [10, 11, 12]);
  try {
    // A restarted as B's mirror on its own device and state directory (after B: the bitmap of a restart)
    const a = await s.startA();
    assert.deepEqual(a.status().volumes.v!.failback, { generation: a.status().volumes.v!.generation, peer: a.status().volumes.v!.failback!.peer, regions: 3, owed: false });
    const failbacks: unknown[] = [];
    a.on('failback', (info) => failbacks.push(info));
    const b = await s.startB();
    const done: Array<{ method: string; regions: number; regionsSent: number }> = [];
    b.on('resync-done', (info) => done.push(info));
    try {
      await until('B in sync with A', () => b.volume('v').status().inSync);
      assert.ok(await same(s.aDev, s.bDev), 'the images are identical');
      const fb = b.volume('v').status().failback;
      assert.equal(fb?.method, 'bitmap', `the failback used the bitmap: ${JSON.stringify(fb)}`);
      if (fb?.method === 'bitmap') {
        assert.equal(fb.peerRegions, 3, 'the 3 regions A wrote without B');
        // B restarted after its writes: they come from its own bitmap (its in-memory journal is gone)
        assert.equal(fb.regions, 6, `the union of A's 3 regions and B's own 3 since the promotion (${fb.regions})`);
      }
      const visited = done.reduce((n, d) => n + d.regions, 0);
      assert.equal(visited, 6, `the resync visited ${visited} regions, not the volume's 64`);
      assert.ok(done.every((d) => d.method === 'bitmap'), 'no checksum resync');
      assert.deepEqual(failbacks.map((f) => (f as { method: string }).method), ['bitmap']);
      // A is up-to-date: its failback bitmap has served
      await until('A up-to-date', () => a.status().volumes.v!.disk === 'up-to-date');
      await until('the failback bitmap forgotten', async () => (await new FilePairStateStore(join(s.aDir, 'v.state')).load())?.bitmapOf === undefined);
      await assert.rejects(stat(join(s.aDir, 'v.bitmap')), { code: 'ENOENT' });
      assert.equal(a.status().volumes.v!.failback, undefined);
    } finally {
      await b.close({ drain: false });
      await a.close();
    }
  } finally {
    await s.cleanup();
  }
});

test('SPEC 22, issue 12 (5): failback without a usable bitmap (torn file, or none) keeps the whole-volume checksum resync and says why; images identical', async () => {
  const s = await forcedFailover([3, 4], [10]);
  try {
    // a torn bitmap file: no valid header
    const { writeFile } = await import('node:fs/promises');
    await writeFile(join(s.aDir, 'v.bitmap'), Buffer.alloc(8192, 0x5a));
    const a = await s.startA();
    const reasons: string[] = [];
    a.on('failback', (info) => reasons.push(info.method === 'checksum' ? info.reason : 'bitmap'));
    const b = await s.startB();
    const done: Array<{ method: string; regions: number }> = [];
    b.on('resync-done', (info) => done.push(info));
    try {
      await until('B in sync with A', () => b.volume('v').status().inSync);
      assert.ok(await same(s.aDev, s.bDev), 'the images are identical');
      assert.equal(b.volume('v').status().failback?.method, 'checksum');
      assert.ok(done.some((d) => d.method === 'checksum' && d.regions === 64), `the whole volume is compared by checksum: ${JSON.stringify(done)}`);
      assert.equal(reasons.length, 1);
      assert.match(reasons[0]!, /no usable write-intent bitmap.*(header|torn)/);
    } finally {
      await b.close({ drain: false });
      await a.close();
    }
  } finally {
    await s.cleanup();
  }
});

const RESTART_POINTS = {
  'in the middle of the failback resync': 'resync',
  'at once after the failback claim (before its resync copied anything; a reply of the claim may be lost)': 'claim',
} as const;
for (const who of ['B (the new primary)', 'A (the old primary, now the mirror)'] as const) for (const [when, point] of Object.entries(RESTART_POINTS)) {
  test(`SPEC 22, issue 12 (5): ${who} restarted ${when}: it resumes (bitmap, or checksum) and the images end identical`, async () => {
    const dirty = Array.from({ length: 24 }, (_, i) => 20 + i);
    const s = await forcedFailover(dirty, [2, 5]);
    try {
      let a = await s.startA();
      const claimed = onceEvent(a, 'failback');
      // slow enough to be cut in the middle: 64 KiB regions at 256 KiB/s
      let b = await s.startB({ rateBytesPerSecond: 256 * 1024 });
      try {
        if (point === 'claim') await claimed;
        else
          await until('the resync under way', () => {
            const p = b.status().volumes.v?.progress;
            return p !== undefined && p.done > 0 && p.done < p.total;
          });
        if (who.startsWith('B')) {
          await b.close({ drain: false });
          b = await s.startB();
        } else {
          await a.close();
          a = await s.startA();
          assert.equal(a.status().volumes.v!.failback?.owed, true, 'the failback bitmap stays owed until A is up-to-date');
        }
        const after: number[] = [];
        b.on('resync-done', (info) => after.push(info.regions));
        await until('B in sync with A', () => b.volume('v').status().inSync, 30_000);
        assert.ok(await same(s.aDev, s.bDev), 'the images are identical');
        assert.equal(b.volume('v').status().failback?.method ?? 'bitmap', 'bitmap', 'the resumed failback is still a bitmap one');
        assert.ok(after.every((n) => n < 64), `only what is left is resynced after the restart, not the volume (${after.join(', ')})`);
        await until('A up-to-date', () => a.status().volumes.v!.disk === 'up-to-date');
        assert.equal(a.status().volumes.v!.failback, undefined);
      } finally {
        await b.close({ drain: false });
        await a.close();
      }
    } finally {
      await s.cleanup();
    }
  });
}

test('SPEC 22, issue 12 (5): a primary whose bitmap lives in its state directory (no journal directory) keeps a bit until the mirror holds the write durably: the in-memory journal does not cover it (a crash would lose it), so the failback bitmap names every region the mirror may lack', async () => {
  const network = new MemoryNetwork();
  const aDev = new MemoryBlockDevice(SIZE, { blockSize: 512 });
  const bDev = new MemoryBlockDevice(SIZE, { blockSize: 512 });
  const aDir = await mkdtemp(join(tmpdir(), 'bm-failback-a-'));
  const target = await createMirrorTarget({ transport: network.transport({ host: B }), listen: { host: B, port: PORT }, volumes: [{ name: 'v', device: bDev }], nodeId: 'node-b', ...LINK });
  const a = await createPrimary({ transport: network.transport({ host: A }), peer: { host: B, port: PORT }, stateDir: aDir, nodeId: 'node-a', volumes: [{ name: 'v', device: aDev, mode: 'async', initialSync: 'none' }], ...LINK });
  try {
    await a.volume('v').write(0, Buffer.alloc(4096, 1));
    await until('A in sync', () => a.volume('v').status().inSync);
    network.partition(A, B);
    await a.volume('v').write(5 * REGION, Buffer.alloc(4096, 2));
    // the local write is flushed and the request sits in the (memory) journal; a region not written for a while is swept
    await a.volume('v').flush();
    await new Promise((r) => setTimeout(r, 2200));
    await Promise.race([a.volume('v').makeDurable(), new Promise((r) => setTimeout(r, 100))]);
    assert.equal(a.volume('v').bitmap.isDirty(5), true, 'the region stays marked while the mirror lacks the write');
    assert.equal((await new FilePairStateStore(join(aDir, 'v.state')).load())?.bitmapOf?.peer, 'node-b', 'the pairing state says whose the bitmap is');
  } finally {
    cutOff(network, A, B);
    await a.close({ drain: false });
    await target.close();
    await rm(aDir, { recursive: true, force: true });
  }
});

test('SPEC 22, issue 12 (5): a primary with a journal directory (its records also clear bits) records no failback bitmap, and drops one an earlier run recorded before it writes; its old primary\'s image then fails back by checksum', async () => {
  const network = new MemoryNetwork();
  const aDev = new MemoryBlockDevice(SIZE, { blockSize: 512 });
  const aDir = await mkdtemp(join(tmpdir(), 'bm-failback-a-'));
  try {
    const store = new FilePairStateStore(join(aDir, 'v.state'));
    await store.save({ generations: { current: '0000000f4240-00000001', history: [] }, disk: 'up-to-date', peer: 'up-to-date', role: 'primary', bitmapOf: { generation: '0000000f4240-00000001', peer: 'node-b' } });
    const a = await createPrimary({ transport: network.transport({ host: A }), peer: { host: B, port: PORT }, waitForConnection: false, stateDir: aDir, journal: { dir: aDir }, nodeId: 'node-a', volumes: [{ name: 'v', device: aDev, mode: 'async' }], ...LINK });
    try {
      assert.equal((await store.load())?.bitmapOf, undefined, "dropped at start, before any write");
      await a.volume('v').write(0, Buffer.alloc(4096, 1));
      assert.equal((await store.load())?.bitmapOf, undefined);
    } finally {
      await a.close({ drain: false });
    }
    assert.equal((await store.load())?.bitmapOf, undefined);
  } finally {
    await rm(aDir, { recursive: true, force: true });
  }
});
