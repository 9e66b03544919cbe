/**
 * Issue 12, item 6: heartbeat settings given to one side only. The primary's
 * interval and stale time govern its session — the target follows them for
 * that primary, over the handshake and on the UDP path of a restarted target
 * — or the handshake is refused with BM_ERR_SETTINGS_MISMATCH naming both
 * sides' values. In virtual time (fake clock, in-memory network with
 * datagrams).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import FakeTimers from '@sinonjs/fake-timers';
import { MemoryBlockDevice } from '../../src/device/memory-device.js';
import { MemoryNetwork } from '../../src/transport/memory.js';
import { clockFrom, systemClock } from '../../src/clock.js';
import { createMirrorTarget, type MirrorTarget, type MirrorTargetOptions, type RefusedPeerInfo } from '../../src/replication/mirror-target.js';
import { createPrimary, type LinkState, type Primary, type PrimaryOptions } from '../../src/replication/primary.js';
import { FramedConnection } from '../../src/link/framed-connection.js';
import { serverHandshake } from '../../src/link/handshake.js';
import { BlockMirrorError } from '../../src/errors.js';
import { turn } from '../helpers/pair.js';

const P = '10.12.0.1';
const T = '10.12.0.2';
const device = () => new MemoryBlockDevice(1 << 20, { blockSize: 512 });

interface Rig {
  fake: FakeTimers.Clock;
  network: MemoryNetwork;
  target: MirrorTarget;
  primary: Primary;
  /** The primary's link states, in order. */
  links: LinkState[];
  /** The target's link states for its primary, in order. */
  targetLinks: LinkState[];
  /** Runs `ms` of virtual time in 10 ms steps, letting deliveries happen between them. */
  run(ms: number): Promise<void>;
  close(): Promise<void>;
}

async function rig(primaryOptions: Partial<PrimaryOptions>, targetOptions: Partial<MirrorTargetOptions>): Promise<Rig> {
  const fake = FakeTimers.createClock(0);
  const clock = clockFrom(fake);
  const network = new MemoryNetwork();
  const target = await createMirrorTarget({ transport: network.transport({ host: T }), listen: { host: T, port: 7000 }, clock, volumes: [{ name: 'v', device: device() }], ...targetOptions });
  const targetLinks: LinkState[] = [];
  target.on('peer-link', (info) => targetLinks.push(info.state));
  const primary = await createPrimary({
    transport: network.transport({ host: P }),
    peer: target.address,
    clock,
    volumes: [{ name: 'v', device: device(), mode: 'async' }],
    ...primaryOptions,
  });
  const links: LinkState[] = [];
  primary.on('link', (s) => links.push(s));
  const run = async (ms: number): Promise<void> => {
    for (let t = 0; t < ms; t += 10) {
      fake.tick(10);
      await turn();
      await turn();
    }
  };
  return {
    fake,
    network,
    target,
    primary,
    links,
    targetLinks,
    run,
    async close() {
      await primary.close({ drain: false });
      await target.close();
    },
  };
}

test('issue 12: primary heartbeat-interval 100 / stale-after 400, target on defaults: the target follows, the link comes up and stays up', async () => {
  const r = await rig({ heartbeatInterval: 100, staleAfter: 400, probation: 1000 }, {});
  try {
    await r.run(10_000);
    assert.deepEqual(r.links, [], `the primary's link never left up: ${r.links.join(' → ')}`);
    assert.equal(r.primary.link, 'up');
    const hb = r.primary.status().peers[0]!.heartbeats!;
    assert.ok(hb.received >= 95, `the target sends at the primary's interval (${hb.received} heartbeats in 10 s)`);
    assert.deepEqual([hb.intervalMs, hb.staleAfterMs], [100, 400]);
    const peer = r.target.status().peers[0]!;
    assert.deepEqual([peer.link, peer.heartbeatIntervalMs, peer.staleAfterMs, peer.connections], ['up', 100, 400, 4]);
    assert.ok(!r.targetLinks.includes('down'), r.targetLinks.join(' → '));
    assert.equal((await r.primary.volume('v').write(0, Buffer.alloc(4096, 7))).mirror, 'queued');
    await r.run(100);
    assert.equal(r.primary.volume('v').status().pendingBytes, 0, 'writes still flow');
  } finally {
    await r.close();
  }
});

test('issue 12: target heartbeat-interval 100 / stale-after 400, primary on defaults: the target judges the primary by the primary\'s settings, no flapping', async () => {
  const r = await rig({}, { heartbeatInterval: 100, staleAfter: 400, probation: 1000 });
  try {
    await r.run(20_000);
    assert.deepEqual(r.links, [], r.links.join(' → '));
    const peer = r.target.status().peers[0]!;
    assert.deepEqual([peer.link, peer.heartbeatIntervalMs, peer.staleAfterMs, peer.connections], ['up', 1500, 4000, 4]);
    assert.deepEqual(r.targetLinks, ['up'], `the target's view of the primary: ${r.targetLinks.join(' → ')}`);
  } finally {
    await r.close();
  }
});

test('issue 12: a restarted target (defaults) answers the primary\'s heartbeats on UDP at the primary\'s pace, and follows it once reconnected', async () => {
  const r = await rig({ heartbeatInterval: 100, staleAfter: 400, probation: 500 }, {});
  let second: MirrorTarget | undefined;
  try {
    await r.run(1000);
    await r.target.close();
    await r.run(1000);
    assert.equal(r.primary.link, 'down');
    second = await createMirrorTarget({ transport: r.network.transport({ host: T }), listen: { host: T, port: 7000 }, clock: clockFrom(r.fake), volumes: [{ name: 'v', device: device() }] });
    const states: LinkState[] = [];
    second.on('peer-link', (info) => states.push(info.state));
    const from = r.links.length;
    await r.run(2000);
    assert.deepEqual(r.links.slice(from), ['probation', 'connecting', 'up'], 'answered heartbeats carry the primary through probation');
    await r.run(10_000);
    assert.deepEqual(r.links.slice(from), ['probation', 'connecting', 'up'], `no flapping after the reconnect: ${r.links.slice(from).join(' → ')}`);
    assert.ok(!states.includes('down'), states.join(' → '));
    assert.deepEqual([second.status().peers[0]!.heartbeatIntervalMs, second.status().peers[0]!.staleAfterMs], [100, 400]);
  } finally {
    await r.primary.close({ drain: false });
    await second?.close();
    await r.target.close();
  }
});

test('issue 12: a target with heartbeats off refuses a primary that sends them, with one line naming both sides, and claims nothing', async () => {
  const network = new MemoryNetwork();
  const target = await createMirrorTarget({ transport: network.transport({ host: T }), listen: { host: T, port: 7000 }, heartbeats: false, volumes: [{ name: 'v', device: device() }] });
  const refused: RefusedPeerInfo[] = [];
  target.on('refused', (info) => refused.push(info));
  try {
    await assert.rejects(
      createPrimary({ transport: network.transport({ host: P }), peer: target.address, nodeId: 'fast-primary', heartbeatInterval: 100, staleAfter: 400, connections: 1, volumes: [{ name: 'v', device: device() }] }),
      (error: unknown) => {
        assert.ok(error instanceof BlockMirrorError);
        assert.equal(error.code, 'BM_ERR_SETTINGS_MISMATCH');
        assert.match(error.message, /primary heartbeat interval 100 ms, stale after 400 ms; mirror heartbeats off/);
        assert.doesNotMatch(error.message, /\n/);
        return true;
      },
    );
    assert.deepEqual(
      refused.map((r) => [r.node, r.error.code, r.address.host]),
      [['fast-primary', 'BM_ERR_SETTINGS_MISMATCH', P]],
    );
    const s = target.status();
    assert.deepEqual(s.peers, []);
    assert.equal(s.volumes.v!.primary, undefined, 'nothing claimed');
    assert.equal(s.volumes.v!.generation, undefined, 'no generation adopted');
  } finally {
    await target.close();
  }
});

test('issue 12: a target that does not confirm the primary\'s settings in READY is refused by the primary', async () => {
  const network = new MemoryNetwork();
  const server = await network.transport({ host: T }).listen({ host: T, port: 7000 });
  // an older target: completes the handshake, ignores hbi/hbs, confirms nothing
  server.on('connection', (raw) => {
    void serverHandshake(new FramedConnection(raw), {
      nodeId: 'old-target',
      timeout: 5000,
      clock: systemClock,
      accept: (_hello, offers) => offers.map((o) => ({ name: o.name, applied: 0 })),
    }).catch(() => undefined);
  });
  try {
    await assert.rejects(
      createPrimary({ transport: network.transport({ host: P }), peer: { host: T, port: 7000 }, heartbeatInterval: 100, staleAfter: 400, connections: 1, volumes: [{ name: 'v', device: device() }] }),
      { code: 'BM_ERR_SETTINGS_MISMATCH', message: /primary heartbeat interval 100 ms, stale after 400 ms.*did not confirm/ },
    );
  } finally {
    await server.close();
  }
});

test('a primary whose stale time is not longer than its heartbeat interval is refused at creation', async () => {
  await assert.rejects(
    createPrimary({ peer: { host: '127.0.0.1', port: 1 }, heartbeatInterval: 500, staleAfter: 500, waitForConnection: false, volumes: [{ name: 'v', device: device() }] }),
    { code: 'BM_ERR_INVALID_ARGUMENT', message: /staleAfter \(500 ms\) must be longer than heartbeatInterval \(500 ms\)/ },
  );
});
