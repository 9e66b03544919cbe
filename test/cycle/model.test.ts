/**
 * Model-based test of the whole cycle path (fast-check `commands`): random
 * writes and reads on a file-backed layered volume, interleaved with freezes,
 * copies to a cycle target over the in-memory network (some cut mid-way),
 * merges, and crashes of either side (the volume or the target reopened from
 * its files, also in the middle of a freeze or a merge), against a plain
 * in-memory reference.
 *
 * Checked after every command: the volume reads as the reference; the
 * target holds exactly the reference image of the freeze it reports — so it
 * never shows a state that was not a freeze image — and after each completed
 * copy that freeze is the last one taken.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import fc from 'fast-check';
import { FileBlockDevice } from '../../src/device/file-device.js';
import { CycleLink, cycleVolumeOffer } from '../../src/cycle/cycle-link.js';
import { createCycleTarget, type CycleTarget } from '../../src/cycle/cycle-target.js';
import { LayeredVolume } from '../../src/cycle/layered-volume.js';
import { DEFAULT_CODEC_LIMITS } from '../../src/codec/frame.js';
import { systemClock } from '../../src/clock.js';
import { MemoryNetwork } from '../../src/transport/memory.js';
import { openVolume, pattern, subDir, tempDir, waitFor } from './helpers.js';

const SIZE = 128 * 1024;
const CHUNK = 16 * 1024;
const GRANULE = 2048;
const TARGET = { host: 'target', port: 7000 };

const root = tempDir('model');
after(root.cleanup);
let runId = 0;

interface Model {
  current: Buffer;
  /** Reference image of each freeze (index = freeze number; 0 = the initial, all-zero volume). */
  freezes: Buffer[];
  /** Freeze the target holds (0: none yet). */
  targetFreeze: number;
}

interface Real {
  dir: string;
  net: MemoryNetwork;
  volume: LayeredVolume;
  /** Merge writes of the volume left before the injected crash (-1: none). */
  volumeCrashIn: number;
  target: CycleTarget;
  targetDevice: FileBlockDevice;
  /** Merge writes of the target left before the injected crash (-1: none). */
  targetCrashIn: number;
  link: CycleLink;
  log: string[];
}

async function openPrimary(r: Pick<Real, 'dir'> & { volumeCrashIn: number }): Promise<LayeredVolume> {
  return openVolume(r.dir, 'p.img', SIZE, {
    chunkSize: CHUNK,
    granularity: GRANULE,
    hooks: {
      beforeMergeWrite: () => {
        if (r.volumeCrashIn >= 0 && r.volumeCrashIn-- === 0) throw new Error('injected crash (volume merge)');
      },
    },
  });
}

async function startTarget(r: Real | (Omit<Real, 'target' | 'targetDevice' | 'link' | 'volume'> & Partial<Real>)): Promise<{ target: CycleTarget; device: FileBlockDevice }> {
  const device = await FileBlockDevice.open(join(r.dir, 't.img'), { size: SIZE });
  const target = await createCycleTarget({
    listen: TARGET,
    dir: subDir(r.dir, 'target'),
    volumes: [{ name: 'v', device }],
    transport: r.net.transport({ host: TARGET.host }),
    secret: 'model secret',
    hooks: {
      beforeMergeWrite: () => {
        if (r.targetCrashIn >= 0 && r.targetCrashIn-- === 0) throw new Error('injected crash (target merge)');
      },
    },
  });
  return { target, device };
}

async function setup(): Promise<Real> {
  const dir = subDir(root.dir, `run-${++runId}`);
  const net = new MemoryNetwork();
  const partial = { dir, net, volumeCrashIn: -1, targetCrashIn: -1, log: [] as string[] };
  const volume = await openPrimary(partial);
  const { target, device } = await startTarget(partial);
  const real = { ...partial, volume, target, targetDevice: device } as Real;
  real.link = new CycleLink({
    name: 'target',
    address: TARGET,
    transport: net.transport({ host: 'primary' }),
    nodeId: 'primary',
    secret: Buffer.from('model secret'), // the target has it as a string: same bytes
    clock: systemClock,
    limits: DEFAULT_CODEC_LIMITS,
    payloadChecksum: true,
    handshakeTimeout: 5000,
    retryDelay: { min: 1, max: 10 },
    offers: () => [cycleVolumeOffer('v', real.volume)],
  });
  real.link.start();
  return real;
}

async function teardown(r: Real): Promise<void> {
  r.link.close();
  await r.target.close();
  await r.targetDevice.close();
  await r.volume.close();
}

async function linkUp(r: Real): Promise<void> {
  if (r.link.state !== 'up') await waitFor(r.link, 'state', (s) => s === 'up');
}

async function reopenVolume(r: Real): Promise<void> {
  await r.volume.close();
  r.volumeCrashIn = -1;
  r.volume = await openPrimary(r);
}

async function restartTarget(r: Real): Promise<void> {
  await r.target.close();
  await r.targetDevice.close();
  r.targetCrashIn = -1;
  const { target, device } = await startTarget(r);
  r.target = target;
  r.targetDevice = device;
}

/** Sends freeze `k` (the last one) to the target. */
function copy(r: Real): Promise<unknown> {
  return r.link.sync([{ name: 'v', volume: r.volume }], r.volume.lastFreeze);
}

/** The invariants checked after every command. */
async function checkInvariants(m: Model, r: Real): Promise<void> {
  assert.ok((await r.volume.read(0, SIZE)).equals(m.current), 'the volume reads as the reference');
  const tv = r.target.volume('v');
  const img = await tv.read(0, SIZE); // waits for a commit in progress
  const state = tv.image();
  if (state.seeding) return; // the first full copy is being written: no image yet
  assert.equal(state.freeze, m.targetFreeze, 'the target holds the freeze the model expects');
  assert.ok(img.equals(m.freezes[state.freeze]!), `the target image is exactly freeze ${state.freeze}`);
}

type Cmd = fc.AsyncCommand<Model, Real>;

class Write implements Cmd {
  constructor(readonly off: number, readonly len: number, readonly seed: number) {}
  check = (): boolean => true;
  async run(m: Model, r: Real): Promise<void> {
    const data = pattern(this.len, this.seed);
    await r.volume.write(this.off, data);
    data.copy(m.current, this.off);
  }
  toString = (): string => `write(${this.off}, ${this.len})`;
}

class Read implements Cmd {
  constructor(readonly off: number, readonly len: number) {}
  check = (): boolean => true;
  async run(m: Model, r: Real): Promise<void> {
    assert.ok((await r.volume.read(this.off, this.len)).equals(m.current.subarray(this.off, this.off + this.len)));
  }
  toString = (): string => `read(${this.off}, ${this.len})`;
}

class Freeze implements Cmd {
  check = (): boolean => true;
  async run(m: Model, r: Real): Promise<void> {
    const k = await r.volume.freeze();
    assert.equal(k, m.freezes.length);
    m.freezes.push(Buffer.from(m.current));
  }
  toString = (): string => 'freeze';
}

class Copy implements Cmd {
  check = (m: Model): boolean => m.freezes.length - 1 > m.targetFreeze;
  async run(m: Model, r: Real): Promise<void> {
    await linkUp(r);
    await copy(r);
    m.targetFreeze = m.freezes.length - 1;
    // SPEC 31: after cycle k the target image is the image at freeze k
    assert.ok((await r.target.volume('v').read(0, SIZE)).equals(m.freezes[m.targetFreeze]!));
  }
  toString = (): string => 'copy';
}

class CutCopy implements Cmd {
  constructor(readonly cutAfter: number) {}
  check = (m: Model): boolean => m.freezes.length - 1 > m.targetFreeze;
  async run(m: Model, r: Real): Promise<void> {
    await linkUp(r);
    const link = r.net.links.find((l) => l.a.localAddress.host === 'primary' && !l.closed)!;
    let sent = 0;
    let cut = false;
    link.setDelay((chunk) => {
      sent += chunk.length;
      if (sent > this.cutAfter && !cut) {
        cut = true;
        setImmediate(() => link.cut());
      }
      return 0;
    }, 'aToB');
    const before = m.targetFreeze;
    const ok = await copy(r).then(
      () => true,
      () => false,
    );
    link.setDelay(0, 'aToB'); // disarm (the copy may have ended before the cut point)
    await r.target.volume('v').read(0, 512); // settles a commit that got through before the cut
    const held = r.target.volume('v').image();
    if (ok) {
      m.targetFreeze = m.freezes.length - 1;
    } else {
      // SPEC 33: a failed copy leaves the previous image (or the new one if its commit got through)
      assert.ok(held.seeding || held.freeze === before || held.freeze === m.freezes.length - 1, `target at ${held.freeze}`);
      if (!held.seeding) m.targetFreeze = held.freeze;
    }
  }
  toString = (): string => `cutCopy(${this.cutAfter})`;
}

class Merge implements Cmd {
  constructor(readonly all: boolean) {}
  check = (): boolean => true;
  async run(m: Model, r: Real): Promise<void> {
    // normally only what the target holds; `all` forces the next copy to be a full one
    await r.volume.mergeFrozenIntoBase(this.all ? Number.MAX_SAFE_INTEGER : m.targetFreeze);
  }
  toString = (): string => `merge(${this.all ? 'all' : 'held'})`;
}

class CrashVolume implements Cmd {
  constructor(readonly when: 'idle' | 'merge' | 'freeze', readonly n: number) {}
  check = (): boolean => true;
  async run(m: Model, r: Real): Promise<void> {
    if (this.when === 'merge') {
      r.volumeCrashIn = this.n;
      await r.volume.mergeFrozenIntoBase().catch(() => undefined);
    } else if (this.when === 'freeze') {
      await r.volume.prepareFreeze(); // the freeze is recorded, the switch never happens
      m.freezes.push(Buffer.from(m.current));
    }
    await reopenVolume(r);
    assert.equal(r.volume.lastFreeze, m.freezes.length - 1);
  }
  toString = (): string => `crashVolume(${this.when}, ${this.n})`;
}

class CrashTarget implements Cmd {
  constructor(readonly inMerge: boolean, readonly n: number) {}
  check = (m: Model): boolean => !this.inMerge || m.freezes.length - 1 > m.targetFreeze;
  async run(m: Model, r: Real): Promise<void> {
    if (this.inMerge) {
      await linkUp(r);
      r.targetCrashIn = this.n;
      await copy(r).catch(() => undefined);
      // the commit marker was durable before the merge began: the restarted target replays it
      m.targetFreeze = m.freezes.length - 1;
    }
    await restartTarget(r);
    if (this.inMerge) assert.equal(r.target.volume('v').image().freeze, m.targetFreeze, 'the interrupted merge was replayed');
  }
  toString = (): string => `crashTarget(${this.inMerge ? `merge, ${this.n}` : 'idle'})`;
}

const blocks = SIZE / 512;
const commands = [
  fc
    .record({ b: fc.nat(blocks - 1), n: fc.integer({ min: 1, max: 24 }), seed: fc.nat() })
    .map(({ b, n, seed }) => new Write(b * 512, Math.min(n, blocks - b) * 512, seed) as Cmd),
  fc
    .record({ b: fc.nat(blocks - 1), n: fc.integer({ min: 1, max: 64 }) })
    .map(({ b, n }) => new Read(b * 512, Math.min(n, blocks - b) * 512) as Cmd),
  fc.constant(new Freeze() as Cmd),
  fc.constant(new Freeze() as Cmd),
  fc.constant(new Copy() as Cmd),
  fc.constant(new Copy() as Cmd),
  fc.integer({ min: 0, max: 40000 }).map((n) => new CutCopy(n) as Cmd),
  fc.boolean().map((all) => new Merge(all) as Cmd),
  fc.record({ when: fc.constantFrom('idle' as const, 'merge' as const, 'freeze' as const), n: fc.nat(3) }).map(({ when, n }) => new CrashVolume(when, n) as Cmd),
  fc.record({ inMerge: fc.boolean(), n: fc.nat(3) }).map(({ inMerge, n }) => new CrashTarget(inMerge, n) as Cmd),
];

describe('cycle model', () => {
  it('SPEC 28/29/30/31/33: reads match the reference; after cycle k the target is the image of freeze k; it never holds anything but a freeze image — through cut copies and crashes of both sides', async () => {
    await fc.assert(
      fc.asyncProperty(fc.commands(commands, { maxCommands: 40, size: 'large' }), async (cmds) => {
        const real = await setup();
        const model: Model = { current: Buffer.alloc(SIZE), freezes: [Buffer.alloc(SIZE)], targetFreeze: 0 };
        try {
          await fc.asyncModelRun(() => ({ model, real }), [...cmds].map((c) => withInvariants(c))).catch((e: unknown) => {
            if (process.env.CYCLE_MODEL_DEBUG !== undefined) console.error('FAILED', String(cmds), e);
            throw e;
          });
        } finally {
          await teardown(real);
        }
      }),
      {
        numRuns: Number(process.env.CYCLE_MODEL_RUNS ?? 25),
        endOnFailure: true,
        verbose: 2,
        ...(process.env.CYCLE_MODEL_SEED === undefined ? {} : { seed: Number(process.env.CYCLE_MODEL_SEED), path: process.env.CYCLE_MODEL_PATH }),
      },
    );
  });
});

/** Wraps a command so that the invariants are checked after it. */
const tally = new Map<string, number>();
after(() => {
  if (process.env.CYCLE_MODEL_DEBUG !== undefined) console.error('commands run:', Object.fromEntries(tally));
});

function withInvariants(c: Cmd): Cmd {
  return {
    check: (m) => c.check(m),
    run: async (m, r) => {
      const kind = c.toString().replace(/\(.*$/, '');
      tally.set(kind, (tally.get(kind) ?? 0) + 1);
      await c.run(m, r);
      await checkInvariants(m, r);
    },
    toString: () => c.toString(),
  };
}
