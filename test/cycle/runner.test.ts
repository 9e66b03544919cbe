/**
 * The cycle engine end to end over the in-memory network: consistency group
 * ordering, N targets with a slow and a down one, cross-mirroring, break /
 * freezeNow, the interval in virtual time, status.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import FakeTimers from '@sinonjs/fake-timers';
import fc from 'fast-check';
import { clockFrom } from '../../src/clock.js';
import { FileBlockDevice } from '../../src/device/file-device.js';
import { createCycleSource, type CycleSource, type CycleSourceOptions } from '../../src/cycle/cycle-runner.js';
import { createCycleTarget, type CycleTarget } from '../../src/cycle/cycle-target.js';
import type { LayeredVolume } from '../../src/cycle/layered-volume.js';
import type { TransferStats } from '../../src/cycle/transfer.js';
import { isBlockMirrorError } from '../../src/errors.js';
import { MemoryNetwork } from '../../src/transport/memory.js';
import { linksUp, openVolume, pattern, subDir, tempDir, waitFor } from './helpers.js';

const root = tempDir('runner');
after(root.cleanup);
let seq = 0;
const KiB = 1024;
const MiB = 1024 * 1024;

interface TargetNode {
  target: CycleTarget;
  devices: FileBlockDevice[];
  close(): Promise<void>;
}

/** A cycle target on `host:port` hosting `names`, with image files in `dir`. */
async function startTarget(net: MemoryNetwork, host: string, port: number, dir: string, names: string[], size: number): Promise<TargetNode> {
  const devices = await Promise.all(names.map((n) => FileBlockDevice.open(join(dir, `${n}.mirror`), { size })));
  const target = await createCycleTarget({
    listen: { host, port },
    dir: subDir(dir, 'state'),
    volumes: names.map((name, i) => ({ name, device: devices[i]! })),
    transport: net.transport({ host }),
    nodeId: `target-${host}`,
  });
  return {
    target,
    devices,
    close: async () => {
      await target.close();
      for (const d of devices) await d.close();
    },
  };
}

async function startSource(net: MemoryNetwork, host: string, volumes: Array<{ name: string; volume: LayeredVolume }>, targets: CycleSourceOptions['targets'], extra: Partial<CycleSourceOptions> = {}): Promise<CycleSource> {
  return createCycleSource({
    volumes,
    targets,
    transport: net.transport({ host }),
    nodeId: `source-${host}`,
    interval: 0,
    retryDelay: { min: 5, max: 50 },
    ...extra,
  });
}

describe('cycle source and targets', () => {
  it('SPEC 32: consistency group — a write to B issued after a write to A completed is never on a target without it', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.record({
          chains: fc.integer({ min: 1, max: 4 }),
          freezesAfter: fc.array(fc.integer({ min: 1, max: 30 }), { minLength: 2, maxLength: 5 }),
        }),
        async ({ chains, freezesAfter }) => {
          const dir = subDir(root.dir, `group-${++seq}`);
          const net = new MemoryNetwork();
          const size = 256 * KiB;
          const a = await openVolume(dir, 'a.img', size, { chunkSize: 64 * KiB });
          const b = await openVolume(dir, 'b.img', size, { chunkSize: 64 * KiB });
          const node = await startTarget(net, 'y', 7000, dir, ['a', 'b'], size);
          const source = await startSource(net, 'x', [
            { name: 'a', volume: a },
            { name: 'b', volume: b },
          ], [{ host: 'y', port: 7000 }]);
          const BLOCKS = 64;
          try {
            await linksUp(source);
            // after each completed cycle, every block of B must hold a value ≤ the same block of A
            const check = async (): Promise<void> => {
              const ia = await node.target.volume('a').read(0, size);
              const ib = await node.target.volume('b').read(0, size);
              assert.equal(node.target.volume('a').image().freeze, node.target.volume('b').image().freeze, 'the group moves together');
              for (let blk = 0; blk < BLOCKS; blk++) {
                const va = ia.readUInt32BE(blk * 4096);
                const vb = ib.readUInt32BE(blk * 4096);
                assert.ok(vb <= va, `block ${blk}: B has write ${vb} but A only ${va}`);
              }
            };
            source.on('cycle', () => void 0);
            let issued = 0;
            let stop = false;
            const freezes: Promise<unknown>[] = [];
            let nextFreeze = 0;
            let untilFreeze = freezesAfter[0]!;
            const chain = async (): Promise<void> => {
              while (!stop) {
                const i = ++issued;
                const block = i % BLOCKS;
                const data = Buffer.alloc(4096);
                data.writeUInt32BE(i, 0);
                await a.write(block * 4096, data);
                if (--untilFreeze === 0 && nextFreeze < freezesAfter.length) {
                  // freeze while other chains have writes in flight
                  freezes.push(source.freezeNow().then(check));
                  untilFreeze = freezesAfter[++nextFreeze] ?? -1;
                }
                await b.write(block * 4096, data);
                if (nextFreeze >= freezesAfter.length && issued > 200) stop = true;
              }
            };
            await Promise.all(Array.from({ length: chains }, chain));
            await Promise.all(freezes);
            await source.freezeNow();
            await check();
          } finally {
            await source.close();
            await node.close();
            await a.close();
            await b.close();
          }
        },
      ),
      { numRuns: 8 },
    );
  });

  it('SPEC 32: N = 3 targets — one freeze goes to each, the next freeze waits for the slowest, all hold the same image', async () => {
    const dir = subDir(root.dir, `three-${++seq}`);
    const net = new MemoryNetwork();
    const size = 4 * MiB;
    const v = await openVolume(dir, 'p.img', size);
    const nodes = await Promise.all([1, 2, 3].map((i) => startTarget(net, `t${i}`, 7000, subDir(dir, `t${i}`), ['v'], size)));
    // the link to t3 is slow
    net.on('link', (link) => {
      if (link.b.localAddress.host === 't3') link.setDelay(2);
    });
    const source = await startSource(net, 'p', [{ name: 'v', volume: v }], [1, 2, 3].map((i) => ({ address: { host: `t${i}`, port: 7000 }, name: `t${i}` })));
    const events: string[] = [];
    source.on('frozen', ({ cycle }) => events.push(`frozen ${cycle}`));
    source.on('target-committed', ({ target, cycle }) => events.push(`${target} ${cycle}`));
    try {
      await linksUp(source);
      const images: Buffer[] = [];
      for (let k = 1; k <= 3; k++) {
        for (let i = 0; i < 20; i++) await v.write(((k * 37 + i * 13) % 1024) * 4096, pattern(4096, k * 100 + i));
        // ask for the next freeze before this cycle is over: it must still wait for t3
        const result = await source.freezeNow();
        assert.equal(result.cycle, k);
        assert.deepEqual(result.targets.map((t) => t.ok), [true, true, true]);
        images.push(await v.readFrozen(k, 0, size).catch(() => v.read(0, size)));
      }
      for (const n of nodes) assert.ok((await n.target.volume('v').read(0, size)).equals(await v.read(0, size)));
      for (let k = 2; k <= 3; k++) {
        assert.ok(events.indexOf(`frozen ${k}`) > events.indexOf(`t3 ${k - 1}`), `freeze ${k} came after the slow target held ${k - 1}: ${events.join(', ')}`);
      }
      const st = source.status();
      assert.deepEqual(st.targets.map((t) => [t.name, t.freeze, t.lagCycles]), [
        ['t1', 3, 0],
        ['t2', 3, 0],
        ['t3', 3, 0],
      ]);
      assert.deepEqual(st.volumes.v!.frozen, [], 'every frozen layer was merged once all targets had it');
    } finally {
      await source.close();
      for (const n of nodes) await n.close();
      await v.close();
    }
  });

  it('SPEC 32/33: a target that is down keeps its last complete image; layers are kept for it and it catches up when it returns', async () => {
    const dir = subDir(root.dir, `down-${++seq}`);
    const net = new MemoryNetwork();
    const size = 4 * MiB;
    const v = await openVolume(dir, 'p.img', size);
    const dirs = [1, 2].map((i) => subDir(dir, `t${i}`));
    const t1 = await startTarget(net, 't1', 7000, dirs[0]!, ['v'], size);
    let t2 = await startTarget(net, 't2', 7000, dirs[1]!, ['v'], size);
    const source = await startSource(net, 'p', [{ name: 'v', volume: v }], [
      { address: { host: 't1', port: 7000 }, name: 't1' },
      { address: { host: 't2', port: 7000 }, name: 't2' },
    ]);
    try {
      await linksUp(source);
      await v.write(0, pattern(64 * KiB, 1));
      await source.freezeNow();
      const image1 = await v.read(0, size);
      const down = waitFor(source, 'target-link', (info: { target: string; state: string }) => info.target === 't2' && info.state === 'down');
      await t2.close(); // t2 goes down
      await down;
      let changed = 0;
      for (let k = 2; k <= 3; k++) {
        await v.write(k * MiB, pattern(8 * KiB, k));
        changed += 8 * KiB;
        const r = await source.freezeNow();
        assert.deepEqual(r.targets.map((t) => [t.target, t.ok]), [
          ['t1', true],
          ['t2', false],
        ]);
      }
      assert.deepEqual(v.frozenLayers, [2, 3], 'the layers t2 lacks are kept');
      const st = source.status().targets[1]!;
      assert.equal(st.freeze, 1);
      assert.equal(st.lagCycles, 2);
      assert.equal(typeof st.recoveryPointDate, 'string', 'the recovery point of t2 is the time of freeze 1');
      assert.ok(st.recoveryPointDate! <= source.status().lastFreezeAt!, 'not after the last freeze');
      // while down, t2's files still hold exactly freeze 1
      const devOnDisk = await FileBlockDevice.open(join(dirs[1]!, 'v.mirror'));
      assert.ok((await devOnDisk.read(0, size)).equals(image1));
      await devOnDisk.close();
      const caughtUp = waitFor<[{ target: string; cycle: number; stats: TransferStats }]>(source, 'target-committed', (info) => info.target === 't2');
      t2 = await startTarget(net, 't2', 7000, dirs[1]!, ['v'], size);
      const [info] = await caughtUp;
      assert.equal(info.cycle, 3);
      assert.equal(info.stats.dataBytes, changed, 'one delta with the union of the kept layers, not a full copy');
      assert.ok((await t2.target.volume('v').read(0, size)).equals(await v.read(0, size)));
      await waitFor(source, 'phase', (phase: string) => phase === 'idle');
      assert.deepEqual(v.frozenLayers, [], 'merged once t2 has them');
    } finally {
      await source.close();
      await t1.close();
      await t2.close();
      await v.close();
    }
  });

  it('gives a target that fell more than maxKeptLayers behind a full copy (its layers are not kept forever)', async () => {
    const dir = subDir(root.dir, `kept-${++seq}`);
    const net = new MemoryNetwork();
    const size = MiB;
    const v = await openVolume(dir, 'p.img', size, { chunkSize: 64 * KiB });
    const tdir = subDir(dir, 't');
    let t = await startTarget(net, 't', 7000, tdir, ['v'], size);
    const source = await startSource(net, 'p', [{ name: 'v', volume: v }], [{ host: 't', port: 7000 }], { maxKeptLayers: 2 });
    try {
      await linksUp(source);
      await source.freezeNow();
      await t.close();
      for (let k = 2; k <= 5; k++) {
        await v.write(k * 4096, pattern(4096, k));
        await source.freezeNow();
      }
      assert.ok(v.frozenLayers.length <= 2, `at most 2 layers kept, got ${v.frozenLayers.join(',')}`);
      const back = waitFor<[{ stats: TransferStats }]>(source, 'target-committed');
      t = await startTarget(net, 't', 7000, tdir, ['v'], size);
      const [info] = await back;
      assert.equal(info.stats.dataBytes, size, 'a full copy');
      assert.ok((await t.target.volume('v').read(0, size)).equals(await v.read(0, size)));
    } finally {
      await source.close();
      await t.close();
      await v.close();
    }
  });

  it('SPEC 34: cross-mirroring — X cycles P to Y while Y cycles Q to X, with independent counters', async () => {
    const dir = subDir(root.dir, `cross-${++seq}`);
    const net = new MemoryNetwork();
    const size = 2 * MiB;
    const p = await openVolume(subDir(dir, 'x'), 'P.img', size);
    const q = await openVolume(subDir(dir, 'y'), 'Q.img', size);
    const tx = await startTarget(net, 'x', 7100, subDir(dir, 'x-target'), ['Q'], size);
    const ty = await startTarget(net, 'y', 7100, subDir(dir, 'y-target'), ['P'], size);
    const sx = await startSource(net, 'x', [{ name: 'P', volume: p }], [{ host: 'y', port: 7100 }]);
    const sy = await startSource(net, 'y', [{ name: 'Q', volume: q }], [{ host: 'x', port: 7100 }]);
    try {
      await Promise.all([linksUp(sx), linksUp(sy)]);
      for (let round = 0; round < 3; round++) {
        const writes = [p.write(round * 65536, pattern(65536, round)), q.write(size - (round + 1) * 65536, pattern(65536, 50 + round))];
        await Promise.all(writes);
        // both directions at the same time; Q cycles only every other round
        const cycles: Promise<unknown>[] = [sx.freezeNow()];
        if (round !== 1) cycles.push(sy.freezeNow());
        await Promise.all(cycles);
      }
      assert.equal(sx.cycle, 3);
      assert.equal(sy.cycle, 2);
      assert.ok((await ty.target.volume('P').read(0, size)).equals(await p.read(0, size)));
      assert.ok((await tx.target.volume('Q').read(0, size)).equals(await q.read(0, size)));
      assert.equal(ty.target.volume('P').image().freeze, 3);
      assert.equal(tx.target.volume('Q').image().freeze, 2);
    } finally {
      await sx.close();
      await sy.close();
      await tx.close();
      await ty.close();
      await p.close();
      await q.close();
    }
  });

  it('SPEC 34: break() stops after the current cycle; freezeNow() is refused until start()', async () => {
    const dir = subDir(root.dir, `break-${++seq}`);
    const net = new MemoryNetwork();
    const size = MiB;
    const v = await openVolume(dir, 'p.img', size, { chunkSize: 64 * KiB });
    const t = await startTarget(net, 't', 7000, dir, ['v'], size);
    const source = await startSource(net, 'p', [{ name: 'v', volume: v }], [{ host: 't', port: 7000 }]);
    try {
      await linksUp(source);
      await v.write(0, pattern(4096, 1));
      const copying = waitFor(source, 'phase', (phase: string) => phase === 'copying');
      const cycle = source.freezeNow();
      await copying;
      const phases: string[] = [];
      source.on('phase', (phase) => phases.push(phase));
      await source.break();
      const r = await cycle;
      assert.equal(r.targets[0]!.ok, true, 'the current cycle completed');
      assert.deepEqual(phases, ['merging', 'idle', 'stopped']);
      assert.equal(source.phase, 'stopped');
      await assert.rejects(source.freezeNow(), (e) => isBlockMirrorError(e, 'BM_ERR_CLOSED'));
      assert.equal(t.target.volume('v').image().freeze, 1);
      source.start();
      await v.write(4096, pattern(4096, 2));
      assert.equal((await source.freezeNow()).cycle, 2);
      assert.ok((await t.target.volume('v').read(0, size)).equals(await v.read(0, size)));
    } finally {
      await source.close();
      await t.close();
      await v.close();
    }
  });

  it('freezes every interval in virtual time; a copy longer than the interval delays the next freeze (minimum interval = copy time)', async () => {
    const timers = FakeTimers.createClock(0);
    const clock = clockFrom(timers);
    const dir = subDir(root.dir, `interval-${++seq}`);
    const net = new MemoryNetwork();
    const size = MiB;
    const v = await openVolume(dir, 'p.img', size, { chunkSize: 64 * KiB });
    const t = await startTarget(net, 't', 7000, dir, ['v'], size);
    const source = await startSource(net, 'p', [{ name: 'v', volume: v }], [{ host: 't', port: 7000 }], { interval: 1000, clock });
    const frozen: Array<[number, number]> = [];
    source.on('frozen', ({ cycle, at }) => frozen.push([cycle, at]));
    try {
      await linksUp(source);
      let done = waitFor(source, 'cycle');
      timers.tick(999);
      assert.equal(frozen.length, 0);
      timers.tick(1);
      await done;
      assert.deepEqual(frozen, [[1, 1000]]);
      // stall the link: cycle 2 cannot finish its copy
      const link = net.links.find((l) => l.b.localAddress.host === 't' && !l.closed)!;
      link.stall('aToB');
      await v.write(0, pattern(4096, 2));
      const copying = waitFor(source, 'phase', (phase: string) => phase === 'copying');
      timers.tick(1000);
      await copying;
      assert.deepEqual(frozen.at(-1), [2, 2000]);
      timers.tick(1500); // the next freeze is due at 3000, but cycle 2 still copies
      assert.equal(frozen.length, 2, 'no freeze while a copy runs');
      done = waitFor(source, 'frozen');
      link.unstall('aToB');
      await done;
      assert.deepEqual(frozen.at(-1), [3, 3500], 'the overdue freeze follows right after the copy');
    } finally {
      await source.close();
      await t.close();
      await v.close();
    }
  });

  it('SPEC 30: cycle 1 copies the whole volume (its zero runs as records), the next one only the changed granule; status and events report phases, bytes, lag and recovery point', async () => {
    const dir = subDir(root.dir, `status-${++seq}`);
    const net = new MemoryNetwork();
    const size = MiB;
    const v = await openVolume(dir, 'p.img', size, { chunkSize: 64 * KiB });
    const t = await startTarget(net, 't', 7000, dir, ['v'], size);
    const source = await startSource(net, 'p', [{ name: 'v', volume: v }], [{ address: { host: 't', port: 7000 }, name: 'mirror' }]);
    const phases: string[] = [];
    source.on('phase', (phase, cycle) => phases.push(`${phase}:${cycle}`));
    try {
      await linksUp(source);
      await v.write(0, pattern(size / 2, 1));
      const r1 = await source.freezeNow();
      await v.write(8192, pattern(4096, 3));
      const r2 = await source.freezeNow();
      assert.deepEqual(phases, ['frozen:1', 'copying:1', 'merging:1', 'idle:1', 'frozen:2', 'copying:2', 'merging:2', 'idle:2']);
      assert.ok(r1.bytesSent > size / 2 && r1.bytesSent < size / 2 + 16 * KiB, `cycle 1 copies the data half, the zero half as zero runs (${r1.bytesSent} bytes)`);
      assert.ok(r2.bytesSent > 4096 && r2.bytesSent < 4096 + 1024, `cycle 2 copies one granule (${r2.bytesSent} bytes)`);
      const st = source.status();
      assert.equal(st.cycle, 2);
      assert.equal(st.phase, 'idle');
      assert.equal(st.bytesSentLastCycle, r2.bytesSent);
      const target = st.targets[0]!;
      assert.equal(target.name, 'mirror');
      assert.equal(target.node, 'target-t');
      assert.equal(target.link, 'up');
      assert.equal(target.freeze, 2);
      assert.equal(target.lagCycles, 0);
      assert.equal(target.recoveryPointDate, st.lastFreezeAt, 'the recovery point is the wall-clock time of freeze 2');
      assert.equal(target.bytesSentLastCycle, r2.bytesSent);
      assert.equal(target.bytesSentTotal, r1.bytesSent + r2.bytesSent);
      assert.match(target.recoveryPointDate!, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
      const ts = t.target.status().volumes.v!;
      assert.equal(ts.freeze, 2);
      assert.equal(ts.source, 'source-p');
      JSON.stringify(st);
    } finally {
      await source.close();
      await t.close();
      await v.close();
    }
  });
});
