/**
 * Issue 12 in the API (in-process, memory network): first pairing, disk
 * states on both sides, an interrupted sync, and lineage across restarts.
 * The same scenarios run with real processes in test/cli/pairing.test.ts.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { MemoryBlockDevice } from '../../src/device/memory-device.js';
import { createMirrorTarget, type MirrorTarget } from '../../src/replication/mirror-target.js';
import { createPrimary, type Primary, type PrimaryOptions } from '../../src/replication/primary.js';
import { MemoryPairStateStore } from '../../src/replication/pair-state.js';
import { MemoryNetwork } from '../../src/transport/memory.js';
import { onceEvent } from '../helpers/events.js';
import type { BlockMirrorError } from '../../src/errors.js';

const MiB = 1 << 20;
const P = '10.12.0.1';
const T = '10.12.0.2';
const LINK = { heartbeatInterval: 10, staleAfter: 60, probation: 20 };
const BOUNDED = { timeout: 30_000 };

async function filled(size: number): Promise<MemoryBlockDevice> {
  const d = new MemoryBlockDevice(size, { blockSize: 512 });
  await d.write(0, randomBytes(size));
  return d;
}

function target(network: MemoryNetwork, device: MemoryBlockDevice, state: MemoryPairStateStore, port = 0): Promise<MirrorTarget> {
  return createMirrorTarget({ transport: network.transport({ host: T }), listen: { host: T, port }, volumes: [{ name: 'v', device, state }], ...LINK });
}

function primary(network: MemoryNetwork, t: MirrorTarget, device: MemoryBlockDevice, extra: Partial<PrimaryOptions> & { state?: MemoryPairStateStore; initialSync?: 'checksum' | 'full' | 'none' } = {}): Promise<Primary> {
  const { state, initialSync, ...rest } = extra;
  return createPrimary({
    transport: network.transport({ host: P }),
    peer: t.address,
    nodeId: 'p',
    volumes: [{ name: 'v', device, mode: 'async', ...(state === undefined ? {} : { state }), ...(initialSync === undefined ? {} : { initialSync }) }],
    ...LINK,
    ...rest,
  });
}

async function until(p: Primary, cond: () => boolean): Promise<void> {
  while (!cond()) await Promise.race([onceEvent(p, 'volume-state'), onceEvent(p, 'peer-disk'), onceEvent(p, 'link')]);
}

test('issue 12 (2): a blank target is inconsistent from its claim until the flush after the initial sync; its disk state survives its restart; the images end identical', BOUNDED, async () => {
  const network = new MemoryNetwork();
  const pdev = await filled(MiB);
  const tdev = new MemoryBlockDevice(MiB, { blockSize: 512 });
  const tState = new MemoryPairStateStore();
  let t = await target(network, tdev, tState);
  const disks: string[] = [];
  t.on('disk-state', ({ disk }) => disks.push(disk));
  const p = await primary(network, t, pdev, { resync: { rateBytesPerSecond: 256 * 1024 } });
  try {
    const v = p.volume('v');
    assert.equal(t.volume('v').status().disk, 'inconsistent', 'adopted as inconsistent: a sync is owed');
    assert.deepEqual((await tState.load())?.disk, 'inconsistent', 'durably');
    assert.equal(v.status().inSync, false);
    assert.equal(v.status().peerDisk, 'inconsistent');
    // a restart of the target in the middle of it: still inconsistent
    await onceEvent(p, 'progress');
    const port = t.address.port;
    await t.close();
    t = await target(network, tdev, tState, port);
    t.on('disk-state', ({ disk }) => disks.push(disk));
    assert.equal(t.volume('v').status().disk, 'inconsistent');
    assert.equal(t.volume('v').status().inSync, false);
    await until(p, () => v.state === 'in-sync');
    assert.equal(t.volume('v').status().disk, 'up-to-date');
    assert.equal(t.volume('v').status().inSync, true);
    assert.equal((await tState.load())?.disk, 'up-to-date');
    assert.ok((await pdev.read(0, MiB)).equals(await tdev.read(0, MiB)), 'identical images');
    assert.deepEqual(disks, ['inconsistent', 'up-to-date'], 'recorded at the claim, then once the sync ended');
  } finally {
    await p.close({ drain: false });
    await t.close();
  }
});

test('issue 12 (2): a primary restarted without a persistent bitmap, facing a target whose sync it left unfinished, compares everything (checksum) instead of trusting nothing', BOUNDED, async () => {
  const network = new MemoryNetwork();
  const pdev = await filled(MiB);
  const tdev = new MemoryBlockDevice(MiB, { blockSize: 512 });
  const t = await target(network, tdev, new MemoryPairStateStore());
  const pState = new MemoryPairStateStore();
  const first = await primary(network, t, pdev, { state: pState, initialSync: 'full', resync: { rateBytesPerSecond: 256 * 1024 } });
  await onceEvent(first, 'progress');
  await first.close({ drain: false });
  assert.equal((await pState.load())?.peer, 'inconsistent', 'the primary recorded the unfinished sync');
  assert.equal(t.volume('v').status().disk, 'inconsistent');
  // same lineage (its pair state), but no bitmap that says what is left
  const second = await primary(network, t, pdev, { state: pState, resync: { rateBytesPerSecond: 256 * 1024 } });
  try {
    const v = second.volume('v');
    assert.equal(v.status().peerDisk, 'inconsistent');
    // the first region waits for the rate limiter (its burst is 100 ms worth): nothing compared yet
    assert.equal(v.status().resyncBytes, MiB, 'the whole volume is to be compared');
    await until(second, () => v.state === 'in-sync');
    assert.ok((await pdev.read(0, MiB)).equals(await tdev.read(0, MiB)));
    assert.equal(t.volume('v').status().disk, 'up-to-date');
  } finally {
    await second.close({ drain: false });
    await t.close();
  }
});

test('issue 12 (2): initialSync none (--assume-clean) makes a blank target up-to-date at once; a target of another lineage refuses such a primary all the same', BOUNDED, async () => {
  const network = new MemoryNetwork();
  const pdev = new MemoryBlockDevice(MiB, { blockSize: 512 });
  const tdev = new MemoryBlockDevice(MiB, { blockSize: 512 });
  const tState = new MemoryPairStateStore();
  const t = await target(network, tdev, tState);
  const first = await primary(network, t, pdev, { initialSync: 'none' });
  try {
    assert.equal(first.volume('v').state, 'in-sync', 'no sync, in sync at once');
    assert.equal(t.volume('v').status().disk, 'up-to-date');
    await first.volume('v').write(0, Buffer.alloc(4096, 1));
    await first.drain();
  } finally {
    await first.close();
  }
  // another primary (a fresh lineage), declaring its image identical
  const other = await createPrimary({
    transport: network.transport({ host: '10.12.0.3' }),
    peer: t.address,
    nodeId: 'other',
    waitForConnection: false,
    volumes: [{ name: 'v', device: new MemoryBlockDevice(MiB, { blockSize: 512 }), mode: 'sync', initialSync: 'none' }],
    ...LINK,
  });
  try {
    const [error] = await onceEvent<[BlockMirrorError]>(other, 'connect-error');
    assert.equal(error.code, 'BM_ERR_SPLIT_BRAIN');
    assert.match(error.message, /another lineage/);
    await until(other, () => other.volume('v').state === 'split-brain');
    assert.equal(other.volume('v').status().peerDisk, 'diverged');
    assert.equal(t.volume('v').status().peerDisk, 'diverged');
    assert.equal(t.volume('v').status().disk, 'up-to-date', 'the target keeps its own state');
    assert.equal((await tdev.read(0, 512))[0], 1, 'and its data');
  } finally {
    await other.close({ drain: false });
    await t.close();
  }
});

test('issue 12 (3): a primary stopped cleanly, without a journal but with its pair state, restarts in its lineage: accepted, in sync, no resync', BOUNDED, async () => {
  const network = new MemoryNetwork();
  const pdev = new MemoryBlockDevice(MiB, { blockSize: 512 });
  const tdev = new MemoryBlockDevice(MiB, { blockSize: 512 });
  const t = await target(network, tdev, new MemoryPairStateStore());
  const pState = new MemoryPairStateStore();
  const first = await primary(network, t, pdev, { state: pState, initialSync: 'none' });
  await first.volume('v').write(8192, Buffer.alloc(4096, 7));
  await first.close();
  const generation = (await pState.load())?.generations?.current;
  assert.equal(generation, t.volume('v').status().generation);
  const second = await primary(network, t, pdev, { state: pState });
  try {
    const v = second.volume('v');
    assert.equal(v.generation, generation, 'same lineage');
    assert.equal(v.state, 'in-sync');
    assert.equal(v.status().resyncBytes, 0);
    // writing while disconnected starts a new generation that descends from it: accepted later
    const port = t.address.port;
    await t.close();
    await until(second, () => second.link === 'down');
    await v.write(0, Buffer.alloc(4096, 9));
    assert.notEqual(v.generation, generation);
    assert.equal((await pState.load())?.generations?.history[0], generation, 'the new generation is recorded with its ancestor');
    const again = await target(network, tdev, new MemoryPairStateStore({ generations: { current: generation!, history: [] }, disk: 'up-to-date', peer: 'up-to-date' }), port);
    try {
      await until(second, () => v.state === 'in-sync');
      assert.equal(again.volume('v').status().generation, v.generation);
      assert.ok((await pdev.read(0, MiB)).equals(await tdev.read(0, MiB)));
    } finally {
      await second.close();
      await again.close();
    }
  } finally {
    await second.close({ drain: false });
  }
});
