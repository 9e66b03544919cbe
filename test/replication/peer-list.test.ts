/**
 * Issue 12, item 8: a target's peer list forgets primary sessions that are
 * gone (no connection, no heartbeat for their stale time) and own no volume,
 * instead of keeping one entry per session forever. Virtual time (fake
 * clock, in-memory network with datagrams).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import FakeTimers from '@sinonjs/fake-timers';
import { MemoryBlockDevice } from '../../src/device/memory-device.js';
import { MemoryNetwork } from '../../src/transport/memory.js';
import { clockFrom } from '../../src/clock.js';
import { createMirrorTarget } from '../../src/replication/mirror-target.js';
import { createPrimary, type PrimaryOptions } from '../../src/replication/primary.js';
import { MemoryPairStateStore } from '../../src/replication/pair-state.js';
import { turn } from '../helpers/pair.js';

const P = '10.13.0.1';
const T = '10.13.0.2';
const LINK = { heartbeatInterval: 100, staleAfter: 400, probation: 0 };

async function run(fake: FakeTimers.Clock, ms: number): Promise<void> {
  for (let t = 0; t < ms; t += 10) {
    fake.tick(10);
    await turn();
    await turn();
  }
}

for (const heartbeats of [true, false]) {
  test(`issue 12: primaries with random node ids one after another (heartbeats ${heartbeats ? 'on' : 'off'}): the target lists the current owner only, not one entry per session`, async () => {
    const fake = FakeTimers.createClock(0);
    const clock = clockFrom(fake);
    const network = new MemoryNetwork();
    const target = await createMirrorTarget({ transport: network.transport({ host: T }), listen: { host: T, port: 7000 }, clock, heartbeats, volumes: [{ name: 'v', device: new MemoryBlockDevice(1 << 20, { blockSize: 512 }) }], ...LINK });
    const forgotten: string[] = [];
    target.on('peer-forgotten', (info) => forgotten.push(info.node));
    // the same volume (its generations survive, as a file would), a new random node id per run
    const pdev = new MemoryBlockDevice(1 << 20, { blockSize: 512 });
    const generations = new MemoryPairStateStore();
    const options: PrimaryOptions = { transport: network.transport({ host: P }), peer: target.address, clock, heartbeats, connections: 2, volumes: [{ name: 'v', device: pdev, mode: 'async', state: generations, initialSync: 'none' }], ...LINK };
    const nodes: string[] = [];
    try {
      for (let i = 0; i < 5; i++) {
        const primary = await createPrimary(options);
        nodes.push(primary.nodeId);
        await primary.volume('v').write(i * 4096, Buffer.alloc(4096, i + 1));
        await run(fake, 200);
        assert.equal(target.status().volumes.v!.primary, primary.nodeId);
        await primary.close();
        await run(fake, 1000);
        // the session that owns the volume stays listed while it is gone; its predecessors are forgotten
        assert.deepEqual(target.status().peers.map((p) => [p.node, p.link, p.connections]), [[primary.nodeId, 'down', 0]], `after run ${i + 1}`);
      }
      assert.equal(new Set(nodes).size, 5, 'five different node ids');
      assert.deepEqual(forgotten, nodes.slice(0, 4));
    } finally {
      await target.close();
    }
  });
}

test('issue 12: a session that owns nothing but is still heard from (heartbeats) stays listed until it is gone', async () => {
  const fake = FakeTimers.createClock(0);
  const clock = clockFrom(fake);
  const network = new MemoryNetwork();
  const target = await createMirrorTarget({ transport: network.transport({ host: T }), listen: { host: T, port: 7000 }, clock, volumes: [{ name: 'v', device: new MemoryBlockDevice(1 << 20, { blockSize: 512 }) }], ...LINK });
  const generations = new MemoryPairStateStore();
  const volume = (): PrimaryOptions['volumes'][number] => ({ name: 'v', device: new MemoryBlockDevice(1 << 20, { blockSize: 512 }), mode: 'async', state: generations, initialSync: 'none' });
  // a long probation: once its connections break, the first primary heartbeats on without reconnecting
  const first = await createPrimary({ transport: network.transport({ host: P }), peer: target.address, clock, nodeId: 'first', volumes: [volume()], ...LINK, probation: 600_000 });
  let second;
  try {
    await run(fake, 200);
    for (const link of network.links) if (!link.closed) link.cut();
    await run(fake, 200);
    assert.equal(first.link, 'probation');
    // another primary takes the volume over: the first owns nothing now
    second = await createPrimary({ transport: network.transport({ host: '10.13.0.3' }), peer: target.address, clock, nodeId: 'second', volumes: [volume()], ...LINK });
    await run(fake, 2000);
    assert.deepEqual(target.status().peers.map((p) => [p.node, p.connections]), [['first', 0], ['second', 4]], 'the first is still heard from: listed');
    await first.close({ drain: false });
    await run(fake, 1000);
    assert.deepEqual(target.status().peers.map((p) => p.node), ['second'], 'gone and owning nothing: forgotten');
  } finally {
    await second?.close({ drain: false });
    await first.close({ drain: false });
    await target.close();
  }
});
