/**
 * Transfers on the wire: an interrupted copy, bytes sent per cycle, hostile
 * frames, authentication, the bandwidth cap.
 */
import assert from 'node:assert/strict';
import { randomInt } from 'node:crypto';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import FakeTimers from '@sinonjs/fake-timers';
import { clockFrom, systemClock } from '../../src/clock.js';
import { MessageType, type Frame } from '../../src/codec/frame.js';
import { FileBlockDevice } from '../../src/device/file-device.js';
import { createCycleSource } from '../../src/cycle/cycle-runner.js';
import { cycleVolumeOffer } from '../../src/cycle/cycle-link.js';
import { createCycleTarget } from '../../src/cycle/cycle-target.js';
import { parseCycleAck, parseCycleBegin, parseCycleData } from '../../src/cycle/messages.js';
import { RateLimiter } from '../../src/resync/rate-limiter.js';
import { isBlockMirrorError } from '../../src/errors.js';
import { FramedConnection } from '../../src/link/framed-connection.js';
import { clientHandshake } from '../../src/link/handshake.js';
import { CYCLE_FEATURE } from '../../src/cycle/cycle-host.js';
import { MemoryNetwork } from '../../src/transport/memory.js';
import { linksUp, openVolume, pattern, subDir, tempDir, waitFor } from './helpers.js';

const root = tempDir('transfer');
after(root.cleanup);
let seq = 0;
const KiB = 1024;
const MiB = 1024 * 1024;

async function targetOn(net: MemoryNetwork, dir: string, size: number, extra: { secret?: string } = {}) {
  const device = await FileBlockDevice.open(join(dir, 'v.mirror'), { size });
  const target = await createCycleTarget({ listen: { host: 't', port: 7000 }, dir: subDir(dir, 'state'), volumes: [{ name: 'v', device }], transport: net.transport({ host: 't' }), ...extra });
  return {
    target,
    device,
    close: async () => {
      await target.close();
      await device.close();
    },
  };
}

describe('cycle transfers', () => {
  it('SPEC 33: a copy interrupted by a cut link leaves the target at the previous freeze image; the retry completes', async () => {
    const dir = subDir(root.dir, `cut-${++seq}`);
    const net = new MemoryNetwork();
    const size = 8 * MiB;
    const v = await openVolume(dir, 'p.img', size);
    const t = await targetOn(net, dir, size);
    const source = await createCycleSource({ volumes: [{ name: 'v', volume: v }], targets: [{ host: 't', port: 7000 }], transport: net.transport({ host: 'p' }), interval: 0, retryDelay: { min: 5, max: 50 } });
    try {
      await linksUp(source);
      await v.write(0, pattern(size, 1));
      await source.freezeNow();
      const image1 = await v.read(0, size);
      for (let i = 0; i < 64; i++) await v.write(randomInt(size / 4096) * 4096, pattern(4096, 100 + i));
      // cut the link once half of the next cycle's bytes went out
      const link = net.links.find((l) => l.b.localAddress.host === 't' && !l.closed)!;
      const expected = (await v.status()).active.bytes;
      let sent = 0;
      let cutting = false;
      link.setDelay((chunk) => {
        sent += chunk.length;
        if (sent <= expected / 2) return 0;
        // Past the half-way mark nothing is delivered: held back, then discarded by the cut.
        if (!cutting) {
          cutting = true;
          setImmediate(() => link.cut());
        }
        return 3_600_000;
      }, 'aToB');
      const retried = waitFor(source, 'target-committed', (info: { cycle: number }) => info.cycle === 2);
      const r = await source.freezeNow();
      assert.equal(r.targets[0]!.ok, false, 'the copy failed');
      assert.equal(r.targets[0]!.error?.code, 'BM_ERR_CONNECTION_CLOSED');
      const tv = t.target.volume('v');
      assert.equal(tv.image().freeze, 1, 'the target still holds freeze 1');
      assert.ok((await tv.read(0, size)).equals(image1), 'and exactly its image');
      assert.deepEqual(v.frozenLayers, [2], 'the frozen layer is kept for the retry');
      await retried; // reconnect → catch-up from the kept layer
      assert.equal(tv.image().freeze, 2);
      assert.ok((await tv.read(0, size)).equals(await v.readFrozen(2, 0, size).catch(() => v.read(0, size))));
      await waitFor(source, 'phase', (p: string) => p === 'idle');
      assert.deepEqual(v.frozenLayers, []);
    } finally {
      await source.close();
      await t.close();
      await v.close();
    }
  });

  it('SPEC 35: a cycle sends at most 1.1 × the changed bytes (4 KiB granularity) plus the table', async () => {
    const dir = subDir(root.dir, `bytes-${++seq}`);
    const net = new MemoryNetwork();
    const size = 64 * MiB;
    const v = await openVolume(dir, 'p.img', size); // 1 MiB chunks, 4 KiB granules
    const t = await targetOn(net, dir, size);
    const source = await createCycleSource({ volumes: [{ name: 'v', volume: v }], targets: [{ host: 't', port: 7000 }], transport: net.transport({ host: 'p' }), interval: 0 });
    try {
      await linksUp(source);
      await source.freezeNow(); // cycle 1: the whole volume
      const link = net.links.find((l) => l.b.localAddress.host === 't' && !l.closed)!;
      // 1 % of the 4 KiB blocks, random, plus some small writes (a 512-byte write dirties its whole granule)
      const granules = new Set<number>();
      for (let i = 0; i < size / 4096 / 100; i++) {
        const g = randomInt(size / 4096);
        granules.add(g);
        await v.write(g * 4096, pattern(4096, i));
      }
      for (let i = 0; i < 20; i++) {
        const sector = randomInt(size / 512);
        granules.add(Math.floor(sector / 8));
        await v.write(sector * 512, pattern(512, 1000 + i));
      }
      const changed = granules.size * 4096;
      const chunks = new Set([...granules].map((g) => Math.floor((g * 4096) / MiB))).size;
      const tableBytes = chunks * (8 + 32);
      const before = link.bytesAtoB;
      const r = await source.freezeNow();
      const wire = link.bytesAtoB - before;
      assert.equal(r.targets[0]!.ok, true);
      assert.equal(r.targets[0]!.stats!.dataBytes, changed, 'exactly the changed granules');
      assert.equal(r.targets[0]!.stats!.tableBytes, tableBytes);
      assert.equal(wire, r.bytesSent, 'what the source counts is what went on the wire');
      assert.ok(wire <= 1.1 * changed + tableBytes, `${wire} bytes on the wire for ${changed} changed bytes (+${tableBytes} table)`);
      assert.ok(wire < (chunks * MiB) / 50, 'far less than whole chunks');
      assert.ok((await t.target.volume('v').read(0, size)).equals(await v.read(0, size)));
    } finally {
      await source.close();
      await t.close();
      await v.close();
    }
  });

  it('closes a connection that sends data for granules not in the table, and refuses a delta from the wrong freeze (with what it holds)', async () => {
    const dir = subDir(root.dir, `hostile-${++seq}`);
    const net = new MemoryNetwork();
    const size = MiB;
    const v = await openVolume(dir, 'p.img', size, { chunkSize: 64 * KiB });
    const t = await targetOn(net, dir, size);
    const open = async (): Promise<{ conn: FramedConnection; frames: Frame[] }> => {
      const raw = await net.transport({ host: 'evil' }).connect({ host: 't', port: 7000 });
      const conn = new FramedConnection(raw);
      await clientHandshake(conn, { nodeId: 'evil', session: 's', slot: 0, slots: 1, volumes: [cycleVolumeOffer('v', v)], timeout: 5000, clock: systemClock, features: [CYCLE_FEATURE] });
      const frames: Frame[] = [];
      conn.on('frame', (f) => frames.push(f));
      return { conn, frames };
    };
    try {
      // a delta from freeze 3 to a target that holds nothing
      let { conn, frames } = await open();
      conn.send(MessageType.CYCLE_BEGIN, { id: 1, to: 4, vols: [{ v: 0, from: 3, full: false, chunk: 65536, gran: 4096, tbl: 0, n: 0 }] });
      await waitFor(conn, 'frame');
      const ack = parseCycleAck(frames[0]!.header);
      assert.equal(ack.code, 'BM_ERR_PROTOCOL');
      assert.deepEqual(ack.held, [0]);
      // data for a granule the (full) table has, but with a wrong length: protocol error, connection closed
      conn.send(MessageType.CYCLE_BEGIN, { id: 2, to: 1, vols: [{ v: 0, from: 0, full: true, chunk: 65536, gran: 4096, tbl: 0, n: 256 }] });
      const closed = waitFor(conn, 'close');
      conn.send(MessageType.CYCLE_DATA, { id: 2, v: 0, s: 0, g: 0, n: 2 }, Buffer.alloc(4096));
      await closed;
      const why = frames.find((f) => f.type === MessageType.ERROR);
      assert.equal((why?.header as { code?: string } | undefined)?.code, 'BM_ERR_PROTOCOL', 'the target said why, then closed');
      // a malformed header is refused by the validators
      assert.throws(() => parseCycleBegin({ id: 1, to: 2, vols: [{ v: 0, from: 5, full: false, chunk: 1, gran: 1, tbl: 0, n: 0 }] }), (e) => isBlockMirrorError(e, 'BM_ERR_BAD_HEADER'));
      assert.throws(() => parseCycleData({ id: 1, v: 0, s: -1, g: 0, n: 1 }), (e) => isBlockMirrorError(e, 'BM_ERR_BAD_HEADER'));
      // commit before every granule arrived: refused, the image is untouched
      ({ conn, frames } = await open());
      conn.send(MessageType.CYCLE_BEGIN, { id: 3, to: 1, vols: [{ v: 0, from: 0, full: true, chunk: 65536, gran: 4096, tbl: 0, n: 256 }] });
      conn.send(MessageType.CYCLE_DATA, { id: 3, v: 0, s: 0, g: 0, n: 1 }, Buffer.alloc(4096, 7));
      conn.send(MessageType.CYCLE_COMMIT, { id: 3, to: 1 });
      await waitFor(conn, 'frame');
      assert.equal(parseCycleAck(frames[0]!.header).code, 'BM_ERR_PROTOCOL');
      assert.equal(t.target.volume('v').image().freeze, 0);
      assert.equal(t.target.volume('v').image().seeding, true, 'an incomplete first copy leaves no image');
      conn.close();
    } finally {
      await t.close();
      await v.close();
    }
  });

  it('a cycle target refuses a per-write primary (no cycle feature in its HELLO) with BM_ERR_NOT_SUPPORTED', async () => {
    const dir = subDir(root.dir, `per-write-${++seq}`);
    const net = new MemoryNetwork();
    const v = await openVolume(dir, 'p.img', MiB, { chunkSize: 64 * KiB });
    const t = await targetOn(net, dir, MiB);
    try {
      const conn = new FramedConnection(await net.transport({ host: 'p' }).connect({ host: 't', port: 7000 }));
      await assert.rejects(
        clientHandshake(conn, { nodeId: 'p', session: 's', slot: 0, slots: 1, volumes: [cycleVolumeOffer('v', v)], timeout: 5000, clock: systemClock }),
        (e) => isBlockMirrorError(e, 'BM_ERR_NOT_SUPPORTED'),
      );
      conn.destroy();
      assert.equal(t.target.status().volumes.v!.source, undefined, 'the volume was not claimed');
    } finally {
      await t.close();
      await v.close();
    }
  });

  it('with a secret, a source that cannot prove it is refused and writes nothing', async () => {
    const dir = subDir(root.dir, `auth-${++seq}`);
    const net = new MemoryNetwork();
    const size = MiB;
    const v = await openVolume(dir, 'p.img', size, { chunkSize: 64 * KiB });
    await v.write(0, Buffer.alloc(4096, 9));
    const t = await targetOn(net, dir, size, { secret: 'right' });
    const source = await createCycleSource({ volumes: [{ name: 'v', volume: v }], targets: [{ host: 't', port: 7000 }], transport: net.transport({ host: 'p' }), interval: 0, secret: 'wrong', retryDelay: { min: 1000, max: 1000 } });
    try {
      // createCycleSource waited for the first attempt: it failed
      const st = source.status().targets[0]!;
      assert.equal(st.link, 'down');
      assert.equal(st.lastError?.code, 'BM_ERR_AUTH_FAILED');
      const r = await source.freezeNow();
      assert.equal(r.targets[0]!.ok, false);
      assert.equal(t.target.volume('v').image().freeze, 0);
      assert.ok((await t.device.read(0, 4096)).every((b) => b === 0));
    } finally {
      await source.close();
      await t.close();
      await v.close();
    }
  });

  it('the bandwidth cap holds a transfer to the configured rate (virtual time)', async () => {
    const timers = FakeTimers.createClock(0);
    const limiter = new RateLimiter({ bytesPerSecond: MiB, clock: clockFrom(timers), burst: 64 * KiB });
    const done: number[] = [];
    const all: Promise<void>[] = [];
    for (let i = 0; i < 17; i++) all.push(limiter.take(64 * KiB).then(() => void done.push(timers.now)));
    await timers.tickAsync(2000);
    await Promise.all(all);
    assert.equal(done[0], 0, 'the burst goes at once');
    assert.equal(done[16], 1000, '1 MiB beyond the burst takes 1 s at 1 MiB/s');

  });

  it('a cycle with a bandwidth cap takes at least bytes / rate', async () => {
    const dir = subDir(root.dir, `cap-${++seq}`);
    const net = new MemoryNetwork();
    const size = 2 * MiB;
    const v = await openVolume(dir, 'p.img', size, { chunkSize: 64 * KiB });
    const t = await targetOn(net, dir, size);
    const rate = 8 * MiB;
    const source = await createCycleSource({ volumes: [{ name: 'v', volume: v }], targets: [{ host: 't', port: 7000 }], transport: net.transport({ host: 'p' }), interval: 0, bandwidth: rate, maxPayload: 64 * KiB });
    try {
      await linksUp(source);
      const started = performance.now();
      const r = await source.freezeNow();
      const elapsed = performance.now() - started;
      const burst = Math.max(64 * KiB, rate / 10);
      assert.ok(elapsed >= ((r.bytesSent - burst) / rate) * 1000 - 5, `${r.bytesSent} bytes in ${elapsed.toFixed(0)} ms at ${rate} B/s`);
      assert.ok((await t.target.volume('v').read(0, size)).equals(await v.read(0, size)));
    } finally {
      await source.close();
      await t.close();
      await v.close();
    }
  });
});

