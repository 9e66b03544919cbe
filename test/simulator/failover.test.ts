/**
 * Dedicated simulator schedules for issue 12 items 4 and 5: failover (a
 * planned demote + promote, or a forced promote after the link was cut, the
 * old primary possibly writing on its own), failback (the old primary's
 * device and pairing state rejoin as the mirror of the promoted one, a split
 * brain resolved with `discard-local` on it) — the real code in virtual time
 * on an in-memory network, with the simulator's invariants checked per seed:
 *
 * - I3 no acknowledged write lost: every sync write the surviving lineage
 *   acknowledged is in the final images;
 * - I8 in-sync ⇒ identical, and a refused peer changes nothing on the target;
 * - I11 liveness: the pair reaches in-sync within bounded virtual time.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { MemoryBlockDevice } from '../../src/device/memory-device.js';
import { MemoryNetwork } from '../../src/transport/memory.js';
import { createMirrorTarget, type MirrorTarget } from '../../src/replication/mirror-target.js';
import { Primary, type PrimaryOptions } from '../../src/replication/primary.js';
import { MemoryPairStateStore } from '../../src/replication/pair-state.js';
import { MemoryDirtyBitmap } from '../../src/resync/dirty-bitmap.js';
import { Rng, VirtualTime } from '../../src/testing/simulator/index.js';

const A = '10.9.0.1';
const B = '10.9.0.2';
const PORT = 7000;
const BLOCK = 4096;
const BLOCKS = 64;
const SIZE = BLOCK * BLOCKS;
const LINK = { heartbeats: false, retryDelay: { min: 10, max: 100 }, mirrorTimeout: 1000 } as const;

interface Outcome {
  kind: 'planned' | 'forced';
  splitBrain: boolean;
  /** The failback used the old primary's write-intent bitmap. */
  bitmap: boolean;
}

async function schedule(seed: number): Promise<Outcome> {
  const rng = new Rng(seed);
  const vt = new VirtualTime();
  const restore = vt.installGlobals();
  const network = new MemoryNetwork({ clock: vt, random: rng.fork('net').random });
  const aDev = new MemoryBlockDevice(SIZE, { blockSize: BLOCK });
  const bDev = new MemoryBlockDevice(SIZE, { blockSize: BLOCK });
  const aPair = new MemoryPairStateStore();
  const bPair = new MemoryPairStateStore();
  // issue 12 (5): in some schedules A keeps a write-intent bitmap that survives its restarts (as in a state
  // directory), which its failback as B's mirror offers; drawn from its own stream (the other choices unchanged)
  const aBitmap = new Rng(seed).fork('failback-bitmap').chance(0.5) ? new MemoryDirtyBitmap({ volumeSize: SIZE, regionSize: BLOCK }) : undefined;
  /** Content each block must hold: the last write the surviving lineage acknowledged. */
  const model = new Map<number, number>();
  const closers: Array<() => Promise<void>> = [];
  const drive = async <T>(p: Promise<T>, what: string, ms = 30_000): Promise<T> => {
    const r = await vt.drive(p, ms);
    if (!r.done) throw new Error(`seed ${seed}: ${what} still pending after ${ms} virtual ms`);
    if (r.error !== undefined) throw r.error;
    return r.value as T;
  };
  // one node id per node in both roles: the failback bitmap names its peer by it
  const bitmapOf = (host: string) => (host === A ? aBitmap : undefined);
  /** The bitmap A's mirror process reads (what A's primary left: a copy, as a file reopened by the next process). */
  let aTargetBitmap: MemoryDirtyBitmap | undefined;
  const startTarget = (host: string, device: MemoryBlockDevice, state: MemoryPairStateStore): Promise<MirrorTarget> => {
    const bitmap = bitmapOf(host)?.snapshot();
    if (host === A) aTargetBitmap = bitmap;
    return drive(
      createMirrorTarget({ transport: network.transport({ host }), clock: vt, nodeId: `node-${host}`, listen: { host, port: PORT }, volumes: [{ name: 'v', device, state, ...(bitmap === undefined ? {} : { bitmap }) }], heartbeats: false }),
      'target start',
    );
  };
  const startPrimary = async (host: string, peer: string, device: MemoryBlockDevice, state: MemoryPairStateStore): Promise<Primary> => {
    // with A's bitmap: A in 4 KiB regions, B in 16 KiB ones (A's regions map onto B's conservatively)
    const resync = aBitmap === undefined ? {} : { resync: { regionSize: host === A ? BLOCK : 4 * BLOCK } };
    const options: PrimaryOptions = { transport: network.transport({ host }), clock: vt, nodeId: `node-${host}`, peer: { host: peer, port: PORT }, waitForConnection: false, ...LINK, ...resync, volumes: [{ name: 'v', device, mode: 'sync', state, initialSync: 'checksum' }] };
    const p = new Primary(options);
    const bitmap = bitmapOf(host);
    // a bitmap that alone says what the mirror may lack (as with a state directory and no journal directory)
    if (bitmap !== undefined) p.volume('v').useBitmap(bitmap, true);
    await drive(p.start(false), 'primary start');
    return p;
  };
  /** Random one-block writes with a pattern byte; acknowledged ones (mirror acknowledged) go to the model when `counted`. */
  const writes = async (p: Primary, n: number, counted: boolean): Promise<void> => {
    for (let i = 0; i < n; i++) {
      const block = rng.int(0, BLOCKS - 1);
      const value = rng.int(1, 255);
      const r = await drive(p.volume('v').write(block * BLOCK, Buffer.alloc(BLOCK, value)), 'write');
      if (counted) {
        assert.equal(r.mirror, 'acknowledged', `seed ${seed}: a sync write while the pair is up is acknowledged by the mirror`);
        model.set(block, value);
      }
    }
  };
  const inSync = async (p: Primary): Promise<void> => {
    await vt.runUntilTrue(() => p.volume('v').status().inSync, 60_000);
    assert.equal(p.volume('v').status().inSync, true, `seed ${seed}: I11 liveness: in-sync within 60 s of virtual time (${JSON.stringify(p.volume('v').status())})`);
  };
  const identical = async (what: string): Promise<void> => {
    const a = await aDev.read(0, SIZE);
    const b = await bDev.read(0, SIZE);
    assert.ok(a.equals(b), `seed ${seed}: I8 in-sync ⇒ identical (${what})`);
    for (const [block, value] of model) assert.equal(b[block * BLOCK], value, `seed ${seed}: I3 acknowledged write to block ${block} lost (${what})`);
  };
  try {
    // A is the primary, B its mirror
    let target = await startTarget(B, bDev, bPair);
    let primary = await startPrimary(A, B, aDev, aPair);
    closers.push(() => primary.close({ drain: false }), () => target.close());
    await inSync(primary);
    await writes(primary, rng.int(5, 30), true);
    await inSync(primary);
    await identical('before the failover');

    const kind = rng.chance(0.5) ? 'planned' : 'forced';
    let aWroteAlone = false;
    if (kind === 'planned') {
      await drive(primary.demote('v'), 'demote');
      await assert.rejects(drive(primary.volume('v').write(0, Buffer.alloc(BLOCK, 1)), 'write after demote'), { code: 'BM_ERR_READ_ONLY' });
      await drive(target.promote('v'), 'promote');
    } else {
      network.partition(A, B);
      if (aBitmap !== undefined) {
        // writes in flight when the network broke (A's connections still open): B never acknowledges them,
        // they fail after mirrorTimeout and stay marked in A's bitmap (A's generation unchanged)
        const n = rng.fork('in-flight').int(1, 3);
        for (let i = 0; i < n; i++) {
          const r = await drive(primary.volume('v').write(rng.fork(`in-flight-${i}`).int(0, BLOCKS - 1) * BLOCK, Buffer.alloc(BLOCK, 0xee)), 'write in flight');
          assert.notEqual(r.mirror, 'acknowledged', `seed ${seed}: the mirror cannot acknowledge across the partition`);
        }
      }
      for (const l of network.links) if (!l.closed) l.cut();
      await assert.rejects(drive(target.promote('v'), 'promote without a hand-over'), { code: 'BM_ERR_PROMOTE_REFUSED' });
      await drive(target.promote('v', { force: true }), 'forced promote');
      // the old primary may go on writing on its own: those writes belong to a fenced lineage
      if (rng.chance(0.6)) {
        await writes(primary, rng.int(1, 5), false);
        aWroteAlone = true;
      }
      network.heal(A, B);
      // the old primary reconnecting to the promoted node is refused: it never overwrites
      const before = await bDev.read(0, SIZE);
      await vt.runFor(500);
      await vt.runUntilTrue(() => primary.volume('v').status().state === 'split-brain', 5000);
      assert.equal(primary.volume('v').status().state, 'split-brain', `seed ${seed}: the fenced old primary says split-brain`);
      assert.ok((await bDev.read(0, SIZE)).equals(before), `seed ${seed}: I8 a refused peer changes nothing`);
    }
    await drive(primary.close({ drain: false }), 'old primary close');
    await drive(target.close(), 'promoted target close');
    closers.length = 0;

    // failback: B serves as the primary, A is its mirror
    target = await startTarget(A, aDev, aPair);
    primary = await startPrimary(B, A, bDev, bPair);
    closers.push(() => primary.close({ drain: false }), () => target.close());
    await writes(primary, rng.int(0, 10), false);
    let splitBrain = false;
    if (aWroteAlone) {
      // A's writes after the split: refused as a split brain until the operator discards them on A
      const before = await aDev.read(0, SIZE);
      await vt.runUntilTrue(() => primary.volume('v').status().state === 'split-brain', 10_000);
      assert.equal(primary.volume('v').status().state, 'split-brain', `seed ${seed}: the old primary's own writes are not overwritten silently`);
      assert.ok((await aDev.read(0, SIZE)).equals(before), `seed ${seed}: I8 a refused peer changes nothing`);
      await drive(target.resolve('v', 'discard-local'), 'resolve');
      splitBrain = true;
    }
    await inSync(primary);
    const failback = primary.volume('v').status().failback;
    const bitmap = failback?.method === 'bitmap';
    if (kind === 'forced' && aBitmap !== undefined) {
      // the old primary's bitmap said where it may differ: no whole-volume checksum
      assert.equal(failback?.method, 'bitmap', `seed ${seed}: the failback used A's write-intent bitmap (${JSON.stringify(failback)})`);
      if (failback?.method === 'bitmap') assert.ok(failback.regions < failback.regionsTotal, `seed ${seed}: the union is not the whole volume (${JSON.stringify(failback)})`);
    }
    // writes of phase 2 done before in-sync were acknowledged locally only (link down): count them from now on
    for (let i = 0; i < BLOCKS; i++) model.set(i, (await bDev.read(i * BLOCK, BLOCK))[0]!);
    await writes(primary, rng.int(1, 20), true);
    await inSync(primary);
    await identical('after the failback');
    if (bitmap) assert.equal(aTargetBitmap!.dirtyCount, 0, `seed ${seed}: the failback bitmap is cleared once A is up-to-date`);
    return { kind, splitBrain, bitmap };
  } finally {
    for (const close of closers) await vt.drive(close(), 10_000).catch(() => undefined);
    restore();
  }
}

test('SPEC 22, issue 12 (5): simulator schedules of failover and failback (planned demote + promote, forced promote with the old primary writing alone, resolve on the old primary, failback with the old primary\'s write-intent bitmap): no acknowledged write lost, in-sync ⇒ identical, refused peers change nothing', async () => {
  const seen = { planned: 0, forced: 0, splitBrain: 0, bitmap: 0, bitmapSplitBrain: 0 };
  for (let seed = 1; seed <= 60; seed++) {
    const o = await schedule(seed);
    seen[o.kind]++;
    if (o.splitBrain) seen.splitBrain++;
    if (o.bitmap) seen.bitmap++;
    if (o.bitmap && o.splitBrain) seen.bitmapSplitBrain++;
  }
  assert.ok(seen.planned > 0 && seen.forced > 0 && seen.splitBrain > 0 && seen.bitmap > 0 && seen.bitmapSplitBrain > 0, `every path ran: ${JSON.stringify(seen)}`);
});
