import { test } from 'node:test';
import assert from 'node:assert/strict';
import { MemoryNetwork } from '../../src/transport/memory.js';
import { MemoryBlockDevice } from '../../src/device/memory-device.js';
import { createMirrorTarget, type SplitBrainPolicy } from '../../src/replication/mirror-target.js';
import { createPrimary, type Primary } from '../../src/replication/primary.js';
import { compareGenerations, advanceGeneration, freshGeneration } from '../../src/replication/generation.js';
import { MemoryPairStateStore } from '../../src/replication/pair-state.js';
import { onceEvent } from '../helpers/events.js';
import { cutOff } from '../helpers/network.js';

const A = '10.6.0.1';
const T = '10.6.0.2';
const SIZE = 1 << 20;
// a stale time well above an event-loop stall of a loaded machine (a cut is still found by heartbeats)
const LINK = { heartbeatInterval: 20, staleAfter: 600, probation: 40 };

test('generations: same, target behind, target ahead, split brain, blank', () => {
  const g0 = freshGeneration();
  const g1 = advanceGeneration(g0);
  const other = advanceGeneration(g0);
  assert.equal(compareGenerations(g0, g0), 'same');
  assert.equal(compareGenerations(g1, g0), 'target-behind');
  assert.equal(compareGenerations(g0, g1), 'target-ahead');
  assert.equal(compareGenerations(g1, other), 'split-brain');
  assert.equal(compareGenerations(g1, undefined), 'blank');
});

/**
 * A mirrors into the target; the link breaks; A keeps writing; the target's
 * node is promoted (`promote` with force, then a primary on the same device and pairing state, no peer)
 * and written; then the target comes back and A reconnects.
 */
async function scenario(policy: SplitBrainPolicy, promotedWritesFirst: boolean) {
  const network = new MemoryNetwork();
  const aDev = new MemoryBlockDevice(SIZE, { blockSize: 512 });
  const tDev = new MemoryBlockDevice(SIZE, { blockSize: 512 });
  const tStore = new MemoryPairStateStore();
  const startTarget = () =>
    createMirrorTarget({ transport: network.transport({ host: T }), listen: { host: T, port: 7000 }, volumes: [{ name: 'v', device: tDev, state: tStore }], splitBrain: policy, ...LINK });
  let target = await startTarget();
  const a: Primary = await createPrimary({ transport: network.transport({ host: A }), peer: { host: T, port: 7000 }, volumes: [{ name: 'v', device: aDev, mode: 'async', state: new MemoryPairStateStore(), initialSync: 'none' }], ...LINK });
  await a.volume('v').write(0, Buffer.alloc(4096, 1));
  await a.drain();
  const shared = (await tStore.load())!.generations!.current;
  assert.equal(shared, a.volume('v').generation, 'the target adopted the primary generation');

  cutOff(network, A, T);
  await onceEvent(a, 'link');
  // failover without the primary: the target's volume is promoted (a new generation, role primary)
  await target.promote('v', { force: true });
  await target.close();

  const writeOnA = async () => a.volume('v').write(4096, Buffer.alloc(4096, 0xaa));
  const writeOnPromoted = async () => {
    // role swap: the target's node becomes a primary of the volume (no peer reachable) and writes
    const promoted = await createPrimary({ transport: network.transport({ host: T }), peer: { host: '10.6.0.99', port: 1 }, waitForConnection: false, heartbeats: false, volumes: [{ name: 'v', device: tDev, mode: 'async', state: tStore }] });
    await promoted.volume('v').write(8192, Buffer.alloc(4096, 0xbb));
    await promoted.close({ drain: false });
  };
  if (promotedWritesFirst) {
    await writeOnPromoted();
    await new Promise((r) => setTimeout(r, 2)); // distinct creation times of the two generations
    await writeOnA();
  } else {
    await writeOnA();
    await new Promise((r) => setTimeout(r, 2));
    await writeOnPromoted();
  }
  assert.notEqual(a.volume('v').generation, shared, 'A started a new generation when it wrote while apart');
  assert.notEqual((await tStore.load())!.generations!.current, shared, 'so did the promoted node');

  target = await startTarget();
  const errors: string[] = [];
  a.on('connect-error', (e) => errors.push(e.code));
  network.heal(A, T);
  return { network, a, target, aDev, tDev, errors, close: async () => { await a.close({ drain: false }); await target.close(); } };
}

test('split brain: both sides wrote while partitioned: detected on reconnect, nothing overwritten, clear status (policy refuse)', async () => {
  const s = await scenario('refuse', false);
  try {
    while (s.a.volume('v').state !== 'split-brain') await onceEvent(s.a, 'volume-state');
    assert.ok(s.errors.includes('BM_ERR_SPLIT_BRAIN'));
    const status = s.a.status();
    assert.equal(status.volumes.v!.state, 'split-brain');
    assert.equal(status.peers[0]!.lastError?.code, 'BM_ERR_SPLIT_BRAIN');
    assert.match(status.peers[0]!.lastError!.message, /primary generation [0-9a-f-]+, target generation [0-9a-f-]+/);
    // the promoted node's write is still on the target, A's is not
    assert.equal((await s.tDev.read(8192, 512))[0], 0xbb);
    assert.equal((await s.tDev.read(4096, 512))[0], 0);
  } finally {
    await s.close();
  }
});

test('split brain policy discard-target: the target drops its own changes and receives the whole volume', async () => {
  const s = await scenario('discard-target', false);
  try {
    await onceEvent(s.a, 'resync-done');
    await s.a.drain(20000);
    assert.deepEqual(await s.tDev.read(0, SIZE), await s.aDev.read(0, SIZE));
    assert.equal(s.a.volume('v').state, 'in-sync');
  } finally {
    await s.close();
  }
});

test('split brain policy discard-younger: the side that wrote later loses; when that is the primary, the target refuses', async () => {
  const targetYounger = await scenario('discard-younger', false);
  try {
    await onceEvent(targetYounger.a, 'resync-done');
    await targetYounger.a.drain(20000);
    assert.deepEqual(await targetYounger.tDev.read(0, SIZE), await targetYounger.aDev.read(0, SIZE));
  } finally {
    await targetYounger.close();
  }
  const primaryYounger = await scenario('discard-younger', true);
  try {
    while (primaryYounger.a.volume('v').state !== 'split-brain') await onceEvent(primaryYounger.a, 'volume-state');
    assert.equal((await primaryYounger.tDev.read(8192, 512))[0], 0xbb, 'the target kept its data');
  } finally {
    await primaryYounger.close();
  }
});

test('resolve on the target (API): nothing to resolve before a refusal (BM_ERR_NOT_DIVERGED); discard-local is owed and applied at the next handshake (the target drops its writes, checksum resync); the primary refuses discard-local with BM_ERR_NOT_SUPPORTED', async () => {
  const s = await scenario('refuse', false);
  try {
    await assert.rejects(s.target.resolve('v', 'discard-local'), { code: 'BM_ERR_NOT_DIVERGED' });
    await assert.rejects(s.a.resolve('v', 'discard-local'), { code: 'BM_ERR_NOT_SUPPORTED' });
    while (s.a.volume('v').state !== 'split-brain') await onceEvent(s.a, 'volume-state');
    const kept = await s.tDev.read(0, SIZE);
    const owed = await s.target.resolve('v', 'discard-local');
    assert.deepEqual(owed, { volume: 'v', resolution: 'discard-local' });
    assert.equal(s.target.status().volumes.v!.resolution, 'discard-local');
    assert.deepEqual(await s.tDev.read(0, SIZE), kept, 'nothing changes before the primary comes back');
    await onceEvent(s.a, 'resync-done');
    await s.a.drain(20000);
    assert.deepEqual(await s.tDev.read(0, SIZE), await s.aDev.read(0, SIZE));
    assert.equal(s.target.status().volumes.v!.resolution, undefined, 'applied once, then cleared');
  } finally {
    await s.close();
  }
});

test('resolve on the target with discard-remote keeps its data: the volume is promoted (forced) and its primary fenced', async () => {
  const s = await scenario('refuse', false);
  try {
    while (s.a.volume('v').state !== 'split-brain') await onceEvent(s.a, 'volume-state');
    const r = await s.target.resolve('v', 'discard-remote');
    assert.equal(typeof r.generation, 'string');
    assert.equal(s.target.status().volumes.v!.role, 'promoted');
    assert.equal((await s.tDev.read(8192, 512))[0], 0xbb, 'the target kept its data');
    await assert.rejects(s.target.promote('v'), { code: 'BM_ERR_PROMOTE_REFUSED' });
  } finally {
    await s.close();
  }
});
