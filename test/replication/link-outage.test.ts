import { test } from 'node:test';
import assert from 'node:assert/strict';
import { MemoryBlockDevice } from '../../src/device/memory-device.js';
import { createMirrorTarget, type MirrorTarget } from '../../src/replication/mirror-target.js';
import { createPrimary } from '../../src/replication/primary.js';
import type { LinkState } from '../../src/replication/primary.js';
import { MemoryNetwork } from '../../src/transport/memory.js';
import { encodeHeartbeat } from '../../src/link/heartbeat.js';
import { MemoryPairStateStore } from '../../src/replication/pair-state.js';
import { linkReaches } from '../helpers/events.js';

const SIZE = 4 << 20;
/** Link timers at millisecond scale; the state machine's timing itself is tested in virtual time (test/link). */
const LINK = { heartbeatInterval: 20, staleAfter: 600, probation: 50 }; // stale time well above an event-loop stall of a loaded machine


test('SPEC 4-9: the target stops under a write workload (real TCP + UDP on loopback): down, writes journaled, target back on the same port, probation, replay, identical images', async () => {
  const tdev = new MemoryBlockDevice(SIZE, { blockSize: 512 });
  const pdev = new MemoryBlockDevice(SIZE, { blockSize: 512 });
  let target: MirrorTarget = await createMirrorTarget({ listen: { host: '127.0.0.1', port: 0 }, volumes: [{ name: 'v', device: tdev }], ...LINK });
  const port = target.address.port;
  // two blank devices: identical images, no initial sync (as --assume-clean)
  const primary = await createPrimary({ peer: target.address, volumes: [{ name: 'v', device: pdev, mode: 'async', initialSync: 'none' }], ...LINK });
  const states: LinkState[] = [];
  primary.on('link', (s) => states.push(s));
  try {
    const v = primary.volume('v');
    let i = 0;
    const writeSome = async (n: number) => {
      for (const end = i + n; i < end; i++) await v.write((i % 1024) * 4096, Buffer.alloc(4096, (i % 250) + 1));
    };
    await writeSome(100);
    await target.close();
    await linkReaches(primary, 'down');
    await writeSome(200);
    assert.ok(v.status().journalEntries > 0, 'writes journaled while down');
    assert.equal(v.state, 'lagging');
    target = await createMirrorTarget({ listen: { host: '127.0.0.1', port }, volumes: [{ name: 'v', device: tdev }], ...LINK });
    await linkReaches(primary, 'up');
    await writeSome(100);
    await primary.drain(20000);
    assert.deepEqual(await tdev.read(0, SIZE), await pdev.read(0, SIZE));
    assert.equal(v.status().journalEntries, 0);
    // the path went through probation before reopening (SPEC 8)
    const down = states.indexOf('down');
    assert.ok(down >= 0 && states.indexOf('probation', down) > down && states.indexOf('up', down) > states.indexOf('probation', down), states.join(' → '));
  } finally {
    await primary.close();
    await target.close();
  }
});

test('SPEC 12: bi-directional mirroring: each node is primary for one volume and target for another; an outage and replay in both directions', async () => {
  const network = new MemoryNetwork();
  const A = '10.1.0.1';
  const B = '10.1.0.2';
  const dev = () => new MemoryBlockDevice(1 << 20, { blockSize: 512 });
  const aOwn = dev();
  const aCopyOfB = dev();
  const bOwn = dev();
  const bCopyOfA = dev();
  const targetOnA = await createMirrorTarget({ transport: network.transport({ host: A }), listen: { host: A, port: 7000 }, volumes: [{ name: 'b-vol', device: aCopyOfB }], ...LINK });
  const targetOnB = await createMirrorTarget({ transport: network.transport({ host: B }), listen: { host: B, port: 7000 }, volumes: [{ name: 'a-vol', device: bCopyOfA }], ...LINK });
  // four blank devices: each pair is identical, no initial sync (as --assume-clean)
  const primaryOnA = await createPrimary({ transport: network.transport({ host: A }), peer: { host: B, port: 7000 }, volumes: [{ name: 'a-vol', device: aOwn, mode: 'async', initialSync: 'none' }], ...LINK });
  const primaryOnB = await createPrimary({ transport: network.transport({ host: B }), peer: { host: A, port: 7000 }, volumes: [{ name: 'b-vol', device: bOwn, mode: 'sync', initialSync: 'none' }], ...LINK });
  try {
    await primaryOnA.volume('a-vol').write(0, Buffer.alloc(4096, 0xa1));
    assert.equal((await primaryOnB.volume('b-vol').write(0, Buffer.alloc(4096, 0xb1))).mirror, 'acknowledged');
    network.partition(A, B);
    for (const link of network.links) if (!link.closed) link.cut();
    await Promise.all([linkReaches(primaryOnA, 'down'), linkReaches(primaryOnB, 'down')]);
    for (let k = 1; k < 20; k++) {
      await primaryOnA.volume('a-vol').write(k * 4096, Buffer.alloc(4096, 0xa0 + k));
      assert.equal((await primaryOnB.volume('b-vol').write(k * 4096, Buffer.alloc(4096, 0xb0 + k))).mirror, 'failed');
    }
    assert.ok(primaryOnA.volume('a-vol').status().journalEntries > 0);
    assert.ok(primaryOnB.volume('b-vol').status().journalEntries > 0);
    network.heal(A, B);
    await Promise.all([primaryOnA.drain(20000), primaryOnB.drain(20000)]);
    assert.deepEqual(await bCopyOfA.read(0, 1 << 20), await aOwn.read(0, 1 << 20));
    assert.deepEqual(await aCopyOfB.read(0, 1 << 20), await bOwn.read(0, 1 << 20));
    assert.equal(primaryOnA.status().peers[0]!.link, 'up');
    assert.equal(primaryOnB.status().peers[0]!.link, 'up');
  } finally {
    await Promise.all([primaryOnA.close(), primaryOnB.close()]);
    await Promise.all([targetOnA.close(), targetOnB.close()]);
  }
});

test('a forged heartbeat does not keep a dead link alive (integration)', async () => {
  const network = new MemoryNetwork();
  const tdev = new MemoryBlockDevice(1 << 20, { blockSize: 512 });
  const target = await createMirrorTarget({ transport: network.transport({ host: '10.2.0.2' }), listen: { host: '10.2.0.2', port: 0 }, secret: 'right', volumes: [{ name: 'v', device: tdev }], ...LINK });
  const primary = await createPrimary({ transport: network.transport({ host: '10.2.0.1' }), peer: target.address, secret: 'right', volumes: [{ name: 'v', device: new MemoryBlockDevice(1 << 20, { blockSize: 512 }), mode: 'async' }], ...LINK });
  // an attacker on a third host sends heartbeats in the target's name, with a wrong MAC
  const forger = await network.transport({ host: '10.2.0.3' }).bindDatagram!({ host: '10.2.0.3', port: 0 });
  let seq = 1;
  const forge = setInterval(() => {
    const hb = encodeHeartbeat({ node: target.nodeId, session: 'forged', seq: seq++, time: 0, status: 'up' }, Buffer.from('wrong'));
    forger.send(hb, primary.heartbeatAddress!);
  }, 3);
  try {
    network.partition('10.2.0.1', '10.2.0.2');
    await linkReaches(primary, 'down');
    const hb = primary.status().peers[0]!.heartbeats!;
    assert.ok(hb.rejected > 0, 'forged heartbeats were seen and refused');
    await new Promise<void>((resolve) => {
      // stays down while forgeries keep coming
      const check = (): void => {
        if (primary.status().peers[0]!.heartbeats!.rejected > hb.rejected + 20) resolve();
        else setImmediate(check);
      };
      check();
    });
    assert.equal(primary.link, 'down');
  } finally {
    clearInterval(forge);
    await forger.close();
    await primary.close();
    await target.close();
  }
});

test('a restarted primary (same node id) takes over its volumes at once, even while its old connections are half-open', async () => {
  const network = new MemoryNetwork();
  const tdev = new MemoryBlockDevice(1 << 20, { blockSize: 512 });
  const pdev = new MemoryBlockDevice(1 << 20, { blockSize: 512 });
  const slow = { heartbeatInterval: 1000, staleAfter: 60000, probation: 0, idleTimeout: 60000 };
  const target = await createMirrorTarget({ transport: network.transport({ host: '10.3.0.2' }), listen: { host: '10.3.0.2', port: 0 }, volumes: [{ name: 'v', device: tdev }], ...slow });
  // the primary's metadata (generations) survives its restart, as a file would
  const generations = new MemoryPairStateStore();
  const first = await createPrimary({ transport: network.transport({ host: '10.3.0.1' }), peer: target.address, nodeId: 'db-primary', volumes: [{ name: 'v', device: pdev, mode: 'sync', state: generations }], ...slow });
  try {
    await first.volume('v').write(0, Buffer.alloc(4096, 1));
    // the first process vanishes without closing anything: its connections go silent
    for (const link of network.links) link.blackhole();
    const second = await createPrimary({ transport: network.transport({ host: '10.3.0.1' }), peer: target.address, nodeId: 'db-primary', volumes: [{ name: 'v', device: pdev, mode: 'sync', state: generations }], ...slow });
    try {
      assert.equal((await second.volume('v').write(4096, Buffer.alloc(4096, 2))).mirror, 'acknowledged');
      assert.equal(target.status().peers.length, 1, 'the old session is gone');
    } finally {
      await second.close();
    }
    // a different node is still refused while the volume is owned
  } finally {
    await first.close({ drain: false });
    await target.close();
  }
});

test('a target keeps answering a restarted primary after a late heartbeat of its previous run (UDP reordering)', async () => {
  const network = new MemoryNetwork();
  const target = await createMirrorTarget({ transport: network.transport({ host: '10.3.0.2' }), listen: { host: '10.3.0.2', port: 0 }, secret: 's', volumes: [{ name: 'v', device: new MemoryBlockDevice(1 << 20, { blockSize: 512 }) }], ...LINK });
  // a primary with no connection to the target (the target restarted): only its heartbeats reach it
  const channel = await network.transport({ host: '10.3.0.1' }).bindDatagram!({ host: '10.3.0.1', port: 0 });
  let answers = 0;
  channel.on('message', () => answers++);
  const send = async (session: string, seq: number): Promise<number> => {
    const before = answers;
    channel.send(encodeHeartbeat({ node: 'p', session, seq, time: 0, status: 'down' }, Buffer.from('s')), target.address);
    // an answer, if any, comes back within a few turns of the memory network
    for (let i = 0; i < 50 && answers === before; i++) await new Promise<void>((resolve) => setImmediate(resolve));
    return answers - before;
  };
  try {
    assert.equal(await send('new-run', 1), 1);
    // a datagram of the previous run (sent before this target started), delayed in the network, arrives after the new run's first one
    await send('old-run', 8);
    assert.equal(await send('new-run', 2), 1, 'the new run is still answered');
    assert.equal(await send('new-run', 3), 1);
    assert.equal(await send('new-run', 2), 0, 'a replay of the current run is not');
  } finally {
    await channel.close();
    await target.close();
  }
});
