import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { MemoryNetwork, seededRandom } from '../../src/transport/memory.js';
import { imagesEqual, startPair } from '../helpers/pair.js';
import type { ReplicationMode } from '../../src/replication/primary-volume.js';

const SIZE = 64 * 1024;
const BS = 512;

const writeArb = fc.record({
  block: fc.integer({ min: 0, max: SIZE / BS - 1 }),
  blocks: fc.integer({ min: 1, max: 16 }),
  fill: fc.integer({ min: 1, max: 255 }),
  // writes issued together (true) or after the previous completed (false)
  concurrent: fc.boolean(),
  zero: fc.boolean(),
});

type WriteStep = typeof writeArb extends fc.Arbitrary<infer T> ? T : never;

async function runScenario(mode: ReplicationMode, writes: WriteStep[], seed: number, cutAt: number | undefined) {
  // heartbeats are on, but a loaded machine must not turn an event-loop stall into a link flap: this test is about order, not liveness
  const random = seededRandom(seed);
  const network = new MemoryNetwork();
  network.on('link', (link) => link.setDelay(() => Math.floor(random() * 4)));
  const pair = await startPair([{ name: 'v', mode, size: SIZE }], {
    target: { transport: network.transport({ host: '10.0.0.2' }), listen: { host: '10.0.0.2', port: 0 }, heartbeatInterval: 20, staleAfter: 5000, probation: 0 },
    primary: { transport: network.transport({ host: '10.0.0.1' }), connections: 4, retryDelay: { min: 1, max: 4 }, heartbeatInterval: 20, staleAfter: 5000, probation: 0 },
  });
  try {
    const v = pair.primary.volume('v');
    let batch: Promise<unknown>[] = [];
    let i = 0;
    for (const w of writes) {
      const offset = w.block * BS;
      const length = Math.min(w.blocks * BS, SIZE - offset);
      if (!w.concurrent) {
        await Promise.all(batch);
        batch = [];
      }
      batch.push(w.zero ? v.zero(offset, length) : v.write(offset, Buffer.alloc(length, w.fill)));
      if (cutAt !== undefined && i++ === cutAt) {
        const live = network.links.filter((l) => !l.closed);
        live[seed % Math.max(1, live.length)]?.cut();
      }
    }
    await Promise.all(batch);
    await pair.primary.drain(20000);
    assert.equal(await imagesEqual(pair, 'v'), true, 'target image == primary image');
    const t = pair.target.status().volumes.v!;
    const p = pair.primary.status().volumes.v!;
    // at most once: each seq applied exactly once even when resent after a cut
    assert.equal(t.appliedWrites, p.lastSeq);
    assert.equal(t.appliedSeq, p.lastSeq);
  } finally {
    await pair.close();
  }
}

test('overlapping writes are applied on the target in the primary order, whatever connection carried them (async, random link delays)', async () => {
  await fc.assert(
    fc.asyncProperty(fc.array(writeArb, { minLength: 1, maxLength: 60 }), fc.integer({ min: 1, max: 1 << 30 }), (writes, seed) =>
      runScenario('async', writes, seed, undefined),
    ),
    { numRuns: 40, seed: 20261127 },
  );
});

test('overlapping writes are applied on the target in the primary order (sync, random link delays)', async () => {
  await fc.assert(
    fc.asyncProperty(fc.array(writeArb, { minLength: 1, maxLength: 60 }), fc.integer({ min: 1, max: 1 << 30 }), (writes, seed) =>
      runScenario('sync', writes, seed, undefined),
    ),
    { numRuns: 40, seed: 20261128 },
  );
});

test('SPEC 13: requests in flight on a connection that breaks are resent and applied at most once, in order', async () => {
  await fc.assert(
    fc.asyncProperty(
      fc.array(writeArb, { minLength: 4, maxLength: 60 }),
      fc.integer({ min: 1, max: 1 << 30 }),
      fc.constantFrom<ReplicationMode>('sync', 'async'),
      (writes, seed, mode) => runScenario(mode, writes, seed, seed % writes.length),
    ),
    { numRuns: 30, seed: 20261129 },
  );
});
