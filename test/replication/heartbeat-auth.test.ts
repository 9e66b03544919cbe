/**
 * Heartbeats of a link over TLS without a shared secret (issue 14), in
 * memory: the MemoryNetwork emulates the TLS sessions' keying material
 * (`sessionKeys`), so primary and target key their heartbeats from slot 0's
 * session exactly as over TLS. The real-socket cases (restarts) are in
 * test/transport/tls.test.ts.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { MemoryBlockDevice } from '../../src/device/memory-device.js';
import { createMirrorTarget } from '../../src/replication/mirror-target.js';
import { createPrimary, type LinkState } from '../../src/replication/primary.js';
import { MemoryNetwork } from '../../src/transport/memory.js';
import { encodeHeartbeat } from '../../src/link/heartbeat.js';
import { linkReaches } from '../helpers/events.js';

/** Link timers at millisecond scale; the state machine's timing itself is tested in virtual time (test/link). */
const LINK = { heartbeatInterval: 20, staleAfter: 600, probation: 50 };
const SIZE = 1 << 20;


async function waitFor(condition: () => boolean): Promise<void> {
  while (!condition()) await new Promise<void>((resolve) => setImmediate(resolve));
}

test('SPEC 8, issue 14: over TLS without a secret (emulated session keys), a partition with both ends alive: the session key is kept, forged unsigned heartbeats during the outage start no probation, the probation runs on the kept key and the link comes back up', async () => {
  const network = new MemoryNetwork({ sessionKeys: true });
  const tdev = new MemoryBlockDevice(SIZE, { blockSize: 512 });
  const pdev = new MemoryBlockDevice(SIZE, { blockSize: 512 });
  const target = await createMirrorTarget({ transport: network.transport({ host: '10.3.0.2' }), listen: { host: '10.3.0.2', port: 7000 }, volumes: [{ name: 'v', device: tdev }], ...LINK });
  const primary = await createPrimary({
    transport: network.transport({ host: '10.3.0.1' }),
    peer: target.address,
    volumes: [{ name: 'v', device: pdev, mode: 'async', initialSync: 'none' }],
    ...LINK,
    // the forgeries make the primary want a rekey (reconnect by backoff): keep it out of this test's time,
    // so that the link can only come back by a probation
    retryDelay: { min: 60_000, max: 60_000 },
  });
  const states: LinkState[] = [];
  primary.on('link', (s) => states.push(s));
  const forger = await network.transport({ host: '10.3.0.3' }).bindDatagram!({ host: '10.3.0.3', port: 0 });
  let forge: NodeJS.Timeout | undefined;
  const heartbeats = () => primary.status().peers[0]!.heartbeats!;
  try {
    assert.equal(heartbeats().auth, 'session');
    await primary.volume('v').write(0, Buffer.alloc(4096, 1));
    network.partition('10.3.0.1', '10.3.0.2');
    await linkReaches(primary, 'down');
    assert.equal(heartbeats().auth, 'session', 'the key is kept while down');
    // an attacker on a third host sends unsigned heartbeats in the target's name
    let seq = 1;
    forge = setInterval(() => {
      forger.send(encodeHeartbeat({ node: target.nodeId, session: 'forged', seq: seq++, time: 0, status: 'up' }), primary.heartbeatAddress!);
    }, 3);
    const refused = heartbeats().rejectedByReason.auth!;
    // (or, were they accepted, until they started a probation)
    await waitFor(() => heartbeats().rejectedByReason.auth! > refused + 20 || primary.link !== 'down');
    assert.equal(primary.link, 'down');
    assert.deepEqual(states.slice(states.indexOf('down')), ['down'], 'no probation from forged heartbeats');
    clearInterval(forge);
    forge = undefined;
    await primary.volume('v').write(4096, Buffer.alloc(4096, 2));
    // the path heals: the target's heartbeats, signed with the kept key, run the probation
    network.heal('10.3.0.1', '10.3.0.2');
    await linkReaches(primary, 'up');
    const afterDown = states.slice(states.indexOf('down'));
    assert.deepEqual(afterDown.slice(0, 2), ['down', 'probation'], afterDown.join(' → '));
    assert.equal(afterDown.at(-1), 'up');
    assert.equal(heartbeats().auth, 'session');
    await primary.drain(10_000);
    assert.deepEqual(await tdev.read(0, SIZE), await pdev.read(0, SIZE));
  } finally {
    if (forge !== undefined) clearInterval(forge);
    await forger.close();
    await primary.close();
    await target.close();
  }
});

test('issue 14: over TLS without a secret (emulated session keys), a target that restarted (its session key lost) is reached again by a reconnect by backoff, not by a probation on heartbeats it cannot sign', async () => {
  const network = new MemoryNetwork({ sessionKeys: true });
  const tdev = new MemoryBlockDevice(SIZE, { blockSize: 512 });
  const pdev = new MemoryBlockDevice(SIZE, { blockSize: 512 });
  const listen = { host: '10.4.0.2', port: 7000 };
  let target = await createMirrorTarget({ transport: network.transport({ host: '10.4.0.2' }), listen, volumes: [{ name: 'v', device: tdev }], ...LINK });
  const primary = await createPrimary({
    transport: network.transport({ host: '10.4.0.1' }),
    peer: target.address,
    volumes: [{ name: 'v', device: pdev, mode: 'async', initialSync: 'none' }],
    ...LINK,
    retryDelay: { min: 20, max: 200 },
  });
  const states: LinkState[] = [];
  primary.on('link', (s) => states.push(s));
  try {
    await primary.volume('v').write(0, Buffer.alloc(4096, 1));
    await target.close();
    await linkReaches(primary, 'down');
    await primary.volume('v').write(4096, Buffer.alloc(4096, 2));
    target = await createMirrorTarget({ transport: network.transport({ host: '10.4.0.2' }), listen, volumes: [{ name: 'v', device: tdev }], ...LINK });
    await linkReaches(primary, 'up');
    const afterDown = states.slice(states.indexOf('down'));
    assert.ok(!afterDown.includes('probation'), afterDown.join(' → '));
    const hb = primary.status().peers[0]!.heartbeats!;
    // the new target's unsigned answers were refused, never counted as heartbeats
    assert.ok(hb.rejectedByReason.auth! > 0, JSON.stringify(hb.rejectedByReason));
    assert.equal(hb.auth, 'session');
    await primary.drain(10_000);
    assert.deepEqual(await tdev.read(0, SIZE), await pdev.read(0, SIZE));
  } finally {
    await primary.close();
    await target.close();
  }
});
