/**
 * A deterministic simulation of a freeze/copy cycle topology — one cycle
 * source (a consistency group of layered volumes) and one or two cycle
 * targets — running the real cycle code (`CycleSource`, `CycleLink`,
 * `CycleTarget`, `StagingStore`, `LayeredVolume`) in virtual time, on files
 * in memory with crash semantics ({@link MemoryFileSystem}), with seeded
 * faults: cuts, partitions, delays, kills, power losses and clean restarts of
 * every node, device errors during the target's merge, in its staging files
 * and in the source's own merge.
 *
 * Invariant I6: whatever a cycle target serves — sample reads during the run,
 * whole images at checkpoints — is one complete freeze image of the source,
 * the one it claims to hold. The freeze images are kept in a model built
 * from the host's writes (each write belongs to the layer that was active
 * when it was issued); the source's own view of each kept freeze is checked
 * against the model too. Liveness: after the faults heal, every target
 * reaches the source's latest freeze.
 *
 * @module
 */
import { BlockMirrorError } from '../../errors.js';
import { CrashableMemoryDevice, type CrashableOp, type DeviceSession } from '../../device/crashable-memory-device.js';
import { LayeredVolume } from '../../cycle/layered-volume.js';
import { createCycleSource, type CycleSource } from '../../cycle/cycle-runner.js';
import { createCycleTarget, type CycleTarget } from '../../cycle/cycle-target.js';
import { MemoryNetwork, type MemoryLink } from '../../transport/memory.js';
import { ProcessFences } from './fences.js';
import { MemoryFileSystem } from './memory-fs.js';
import { Rng } from './rng.js';
import { runSchedule } from './schedule-run.js';
import { ScheduledActions, VirtualTime } from './virtual-time.js';
import type { InvariantId, SimulationResult, Violation } from './simulation.js';
import type { StopKind } from './nodes.js';

/** Fault kinds of a cycle schedule. */
export type CycleFaultKind =
  | 'cut'
  | 'partition'
  | 'delay'
  | 'source-kill'
  | 'source-power-loss'
  | 'source-restart'
  | 'target-kill'
  | 'target-power-loss'
  | 'target-restart'
  | 'merge-error'
  | 'staging-error'
  | 'source-merge-error'
  | 'freeze-now';

/** Every cycle fault kind. */
export const ALL_CYCLE_FAULTS: readonly CycleFaultKind[] = [
  'cut',
  'partition',
  'delay',
  'source-kill',
  'source-power-loss',
  'source-restart',
  'target-kill',
  'target-power-loss',
  'target-restart',
  'merge-error',
  'staging-error',
  'source-merge-error',
  'freeze-now',
];

/** Settings of one cycle schedule (drawn from the seed unless overridden). */
export interface CycleSimConfig {
  /** Volumes of the consistency group. */
  volumes: Array<{ name: string; size: number }>;
  /** Number of cycle targets (each gets every freeze). */
  targets: number;
  blockSize: number;
  chunkSize: number;
  granularity: number;
  /** Freeze interval of the source in ms. */
  interval: number;
  /** Largest data payload per cycle frame. */
  maxPayload: number;
  /** Target read timeout while a failed merge is retried. */
  readTimeout: number;
  /** Largest host write, in blocks. */
  maxWriteBlocks: number;
  /** Host requests in flight at most. */
  concurrency: number;
  steps: number;
  /** Virtual ms the targets get, after the faults heal, to reach the latest freeze. */
  livenessTimeout: number;
  faults: ReadonlySet<CycleFaultKind>;
}

/** Draws a {@link CycleSimConfig}. */
export function drawCycleConfig(rng: Rng, overrides: Partial<CycleSimConfig> = {}): CycleSimConfig {
  const size = rng.pick([128, 256]) * 1024;
  const chunkSize = rng.pick([16384, 65536]);
  const config: CycleSimConfig = {
    volumes: rng.chance(0.5) ? [{ name: 'c0', size }] : [{ name: 'c0', size }, { name: 'c1', size }],
    targets: rng.chance(0.7) ? 1 : 2,
    blockSize: 512,
    chunkSize,
    granularity: rng.pick([4096, 8192]),
    interval: rng.int(100, 800),
    maxPayload: rng.pick([4096, 16384, 1024 * 1024]),
    readTimeout: rng.pick([0, 300, 5000]),
    maxWriteBlocks: rng.pick([1, 8, 32]),
    concurrency: rng.int(1, 6),
    steps: rng.int(20, 50),
    livenessTimeout: 60_000,
    faults: new Set(ALL_CYCLE_FAULTS),
  };
  return { ...config, ...overrides };
}

function describe(c: CycleSimConfig): string {
  return [
    `volumes=${c.volumes.map((v) => `${v.name}:${v.size / 1024}K`).join(',')}`,
    `targets=${c.targets}`,
    `block=${c.blockSize}`,
    `chunk=${c.chunkSize}`,
    `granule=${c.granularity}`,
    `interval=${c.interval}`,
    `maxPayload=${c.maxPayload}`,
    `readTimeout=${c.readTimeout}`,
    `maxWrite=${c.maxWriteBlocks}`,
    `concurrency=${c.concurrency}`,
    `steps=${c.steps}`,
    `faults=${[...c.faults].join(',')}`,
  ].join(' ');
}

const SOURCE_HOST = 'source';
const SOURCE_DIR = '/source';
const TARGET_DIR = '/target';
const TARGET_PORT = 7100;

/** A freeze image of one volume in the model: content, and blocks whose content is unknown (a failed write). */
interface ImageModel {
  data: Buffer;
  unknown: Set<number>;
}

interface HostWrite {
  id: number;
  volume: string;
  offset: number;
  length: number;
  /** Undefined: zeroes (trim). */
  data: Buffer | undefined;
  /** The layer it went to (= the freeze that holds it). */
  layer: number;
  status: 'pending' | 'ok' | 'failed';
  incarnation: number;
}

/** Options of {@link CycleSimulation}. */
export interface CycleSimulationOptions {
  seed: number;
  config?: Partial<CycleSimConfig>;
  onTrace?: (line: string) => void;
}

/** The command that replays a cycle schedule. */
export function cycleReplayCommand(seed: number, faults?: ReadonlySet<CycleFaultKind>): string {
  const extra = faults === undefined ? '' : ` --faults ${[...faults].join(',') || 'none'}`;
  return `npm run sim -- --family cycle --seed ${seed}${extra}`;
}

class SourceNode {
  readonly fs: MemoryFileSystem;
  readonly bases = new Map<string, CrashableMemoryDevice>();
  source: CycleSource | undefined;
  volumes = new Map<string, LayeredVolume>();
  incarnation = 0;
  readonly #fences = new ProcessFences();

  constructor(
    readonly sim: CycleSimulation,
    readonly latency: () => number,
  ) {
    this.fs = new MemoryFileSystem({ clock: sim.vt, latency });
    for (const v of sim.config.volumes) {
      this.bases.set(v.name, new CrashableMemoryDevice(v.size, { blockSize: sim.config.blockSize, clock: sim.vt, latency }));
    }
  }

  get running(): boolean {
    return this.source !== undefined;
  }

  /** Revokes what a start that failed opened (its process is gone). */
  abortStart(): void {
    this.#fences.revoke();
  }

  async start(): Promise<CycleSource> {
    this.incarnation++;
    const c = this.sim.config;
    const transport = this.#fences.transport(this.sim.network.transport({ host: SOURCE_HOST }));
    const fsView = this.fs.view();
    this.#fences.hold(fsView);
    const members: Array<{ name: string; volume: LayeredVolume }> = [];
    const opened = new Map<string, LayeredVolume>();
    for (const v of c.volumes) {
      const session: DeviceSession = this.bases.get(v.name)!.session();
      this.#fences.hold(session);
      const volume = await LayeredVolume.open(session, { dir: SOURCE_DIR, name: v.name, fs: fsView, chunkSize: c.chunkSize, granularity: c.granularity });
      opened.set(v.name, volume);
      members.push({ name: v.name, volume });
    }
    const source = await createCycleSource({
      volumes: members,
      targets: Array.from({ length: c.targets }, (_, i) => ({ address: { host: `target${i}`, port: TARGET_PORT }, name: `t${i}` })),
      stateDir: SOURCE_DIR,
      fs: fsView,
      transport,
      clock: this.sim.vt,
      nodeId: 'source',
      interval: c.interval,
      maxPayload: c.maxPayload,
      handshakeTimeout: 500,
      idleTimeout: 1000,
      retryDelay: { min: 10, max: 200 },
      waitForConnection: false,
      autoStart: false,
    });
    this.volumes = opened;
    // before it cycles: what a crash left is read into the model, the events are wired
    await this.sim._sourceOpened(this, source);
    source.start();
    this.source = source;
    return source;
  }

  async stop(kind: StopKind): Promise<void> {
    const source = this.source;
    if (source === undefined) return;
    this.source = undefined;
    const volumes = [...this.volumes.values()];
    this.volumes = new Map();
    if (kind === 'clean') {
      await source.close();
      for (const v of volumes) await v.close();
      this.#fences.revoke();
      return;
    }
    this.#fences.revoke(kind === 'power-loss' ? (conn) => this.sim.network.linkOf(conn)?.blackhole() : undefined);
    if (kind === 'power-loss') {
      this.fs.crash(this.sim.deviceRng.random);
      for (const b of this.bases.values()) b.crash(this.sim.deviceRng.random);
    }
    // releases the dead incarnation's timers; everything it could touch is revoked
    void source.close();
  }
}

class TargetNodeC {
  readonly fs: MemoryFileSystem;
  readonly images = new Map<string, CrashableMemoryDevice>();
  target: CycleTarget | undefined;
  incarnation = 0;
  readonly #fences = new ProcessFences();

  constructor(
    readonly sim: CycleSimulation,
    readonly host: string,
    latency: () => number,
  ) {
    this.fs = new MemoryFileSystem({ clock: sim.vt, latency });
    for (const v of sim.config.volumes) {
      this.images.set(v.name, new CrashableMemoryDevice(v.size, { blockSize: sim.config.blockSize, clock: sim.vt, latency }));
    }
  }

  get running(): boolean {
    return this.target !== undefined;
  }

  /** Revokes what a start that failed opened. */
  abortStart(): void {
    this.#fences.revoke();
  }

  async start(): Promise<CycleTarget> {
    this.incarnation++;
    const transport = this.#fences.transport(this.sim.network.transport({ host: this.host }));
    const fsView = this.fs.view();
    this.#fences.hold(fsView);
    const volumes = this.sim.config.volumes.map((v) => {
      const session = this.images.get(v.name)!.session();
      this.#fences.hold(session);
      return { name: v.name, device: session };
    });
    const target = await createCycleTarget({
      listen: { host: this.host, port: TARGET_PORT },
      dir: TARGET_DIR,
      volumes,
      fs: fsView,
      transport,
      clock: this.sim.vt,
      nodeId: this.host,
      handshakeTimeout: 500,
      mergeRetry: { min: 20, max: 300 },
      readTimeout: this.sim.config.readTimeout,
    });
    this.target = target;
    return target;
  }

  async stop(kind: StopKind): Promise<void> {
    const target = this.target;
    if (target === undefined) return;
    this.target = undefined;
    if (kind === 'clean') {
      await target.close();
      this.#fences.revoke();
      return;
    }
    this.#fences.revoke(kind === 'power-loss' ? (conn) => this.sim.network.linkOf(conn)?.blackhole() : undefined);
    if (kind === 'power-loss') {
      this.fs.crash(this.sim.deviceRng.random);
      for (const d of this.images.values()) d.crash(this.sim.deviceRng.random);
    }
    void target.close();
  }
}

/**
 * One cycle schedule: see the module notes. Create one per seed and call
 * {@link run} once; one simulation at a time per process (the global timers
 * are routed to the virtual clock while it runs).
 */
export class CycleSimulation {
  readonly seed: number;
  readonly config: CycleSimConfig;
  readonly vt = new VirtualTime();
  readonly network: MemoryNetwork;
  readonly deviceRng: Rng;
  readonly trace: string[] = [];
  readonly violations: Violation[] = [];
  readonly #source: SourceNode;
  readonly #targets: TargetNodeC[];
  readonly #sched: Rng;
  readonly #work: Rng;
  readonly #net: Rng;
  readonly #onTrace: ((line: string) => void) | undefined;
  readonly #faultsOverridden: boolean;
  readonly #faultsInjected = new Set<CycleFaultKind>();
  readonly #actions = new ScheduledActions(this.vt, (error: unknown) => this.#log(`timer action failed: ${String(error)}`));
  /** Freeze images of the source by freeze number, per volume (0: the initial, zeroed image). */
  readonly #freezes = new Map<number, Map<string, ImageModel>>();
  /** Per volume: what the next freeze builds on (the previous freeze, or what a restart found in the active layer). */
  readonly #next = new Map<string, { after: number; image: ImageModel }>();
  readonly #writes: HostWrite[] = [];
  readonly #inflight = new Set<HostWrite>();
  #nextOp = 1;
  #issued = 0;
  #completed = 0;
  #reads = 0;
  #partitioned = new Set<string>();
  #stopped = false;
  #finishing = false;
  #paused = false;
  #ran = false;

  constructor(options: CycleSimulationOptions) {
    this.seed = options.seed >>> 0;
    const rng = new Rng(this.seed);
    this.config = drawCycleConfig(rng.fork('cycle-config'), options.config);
    this.#faultsOverridden = options.config?.faults !== undefined;
    this.#sched = rng.fork('schedule');
    this.#work = rng.fork('workload');
    this.#net = rng.fork('network');
    this.deviceRng = rng.fork('crash');
    const dev = rng.fork('devices');
    this.#onTrace = options.onTrace;
    this.network = new MemoryNetwork({ clock: this.vt, random: this.#net.random, highWaterMark: 256 * 1024 });
    this.network.on('link', (link) => link.setDelay(() => this.#linkDelay(), 'both'));
    const latency = (): number => dev.int(0, 2);
    this.#source = new SourceNode(this, latency);
    this.#targets = Array.from({ length: this.config.targets }, (_, i) => new TargetNodeC(this, `target${i}`, latency));
    const zero = new Map<string, ImageModel>();
    for (const v of this.config.volumes) {
      zero.set(v.name, { data: Buffer.alloc(v.size), unknown: new Set() });
      this.#next.set(v.name, { after: 0, image: { data: Buffer.alloc(v.size), unknown: new Set() } });
    }
    this.#freezes.set(0, zero);
  }

  async run(): Promise<SimulationResult> {
    if (this.#ran) throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', 'a CycleSimulation runs once');
    this.#ran = true;
    await runSchedule(
      this.vt,
      (message) => this.#violate('unhandled-rejection', message),
      async () => {
        this.#log(`config ${describe(this.config)}`);
        for (const t of this.#targets) await this.#startTarget(t);
        await this.#startSource();
        this.#scheduleWorkload();
        for (let step = 0; step < this.config.steps; step++) {
          await this.#step(step);
          await this.vt.runFor(this.#sched.int(1, 200));
        }
        await this.#finish();
      },
      () => this.#teardown(),
    );
    return {
      seed: this.seed,
      ok: this.violations.length === 0,
      violations: this.violations,
      trace: this.trace,
      faultsInjected: [...this.#faultsInjected],
      virtualTime: this.vt.now(),
      requests: { issued: this.#issued, completed: this.#completed },
      config: describe(this.config),
      replay: cycleReplayCommand(this.seed, this.#faultsOverridden ? this.config.faults : undefined),
    };
  }

  // ---- trace -----------------------------------------------------------------

  #log(line: string): void {
    const text = `t=${this.vt.now()} ${line}`;
    this.trace.push(text);
    this.#onTrace?.(text);
  }

  #violate(invariant: InvariantId, message: string): void {
    if (this.violations.some((v) => v.invariant === invariant)) return;
    this.violations.push({ invariant, time: this.vt.now(), message });
    this.#log(`VIOLATION ${invariant}: ${message}`);
  }


  #linkDelay = (): number => 1 + this.#net.int(0, 2);

  // ---- nodes -----------------------------------------------------------------

  /** Starts in progress, per node (see {@link #oneStart}). */
  readonly #starting = new Map<object, Promise<void>>();

  /**
   * Runs `start` for `node` unless the node runs, after any start of it still
   * in progress: two starts of one node at once share its fences, and the
   * failure of the first revokes what the second opened (a restart scheduled
   * just before the heal, and the heal's own start: cycle seed 6559).
   */
  async #oneStart(node: { readonly running: boolean }, start: () => Promise<void>): Promise<void> {
    for (let pending = this.#starting.get(node); pending !== undefined; pending = this.#starting.get(node)) await pending;
    if (node.running) return;
    const p = start();
    this.#starting.set(node, p);
    try {
      await p;
    } finally {
      this.#starting.delete(node);
    }
  }

  #startSource(): Promise<void> {
    return this.#oneStart(this.#source, () => this.#startSourceOnce());
  }

  async #startSourceOnce(): Promise<void> {
    const node = this.#source;
    const r = await this.vt.drive(node.start());
    if (!r.done || r.error !== undefined || r.value === undefined) {
      this.#log(`source start failed: ${r.error instanceof BlockMirrorError ? r.error.code : String(r.error)}`);
      node.abortStart();
      if (r.value !== undefined) void r.value.close();
      node.source = undefined;
      if (!this.#finishing) this.#actions.later(200, () => this.#startSource());
      return;
    }
    const source = r.value;
    this.#log(`source started (incarnation ${node.incarnation}, freeze ${source.cycle})`);
  }

  /** @internal called by the source node once its volumes and cycle source are open, before it cycles. */
  async _sourceOpened(node: SourceNode, source: CycleSource): Promise<void> {
    const inc = node.incarnation;
    // freezes taken before a crash whose images the model did not see sealed: the recovered content is the truth
    for (const [name, volume] of node.volumes) {
      for (let k = volume.baseFreeze; k <= volume.lastFreeze; k++) {
        if (this.#freezes.get(k)?.has(name) === true) continue;
        const data = await volume.readFrozen(k, 0, volume.size);
        let images = this.#freezes.get(k);
        if (images === undefined) this.#freezes.set(k, (images = new Map()));
        images.set(name, { data, unknown: new Set() });
        this.#log(`freeze ${k} of ${name} recovered after a crash`);
      }
      // the active layer as the restart found it: the next freeze builds on it
      const now = await volume.read(0, volume.size);
      this.#next.set(name, { after: volume.lastFreeze, image: { data: now, unknown: new Set() } });
    }
    // writes of a dead incarnation are in that content (or lost with it)
    for (let i = this.#writes.length - 1; i >= 0; i--) if (this.#writes[i]!.incarnation < inc) this.#writes.splice(i, 1);
    // `node.source` is set once started; until then this incarnation is the current one
    const current = (): boolean => node.incarnation === inc;
    source.on('frozen', ({ cycle }) => {
      if (current()) this.#onFrozen(cycle);
    });
    source.on('target-committed', ({ target, cycle }) => {
      if (current()) this.#log(`target ${target} committed freeze ${cycle}`);
    });
    source.on('target-error', ({ target, cycle, error }) => {
      if (current()) this.#log(`transfer of freeze ${cycle} to ${target} failed: ${error.code}`);
    });
    source.on('error', (error) => {
      if (current()) this.#log(`source error: ${error.code}`);
    });
  }

  #startTarget(t: TargetNodeC): Promise<void> {
    return this.#oneStart(t, () => this.#startTargetOnce(t));
  }

  async #startTargetOnce(t: TargetNodeC): Promise<void> {
    const r = await this.vt.drive(t.start());
    if (!r.done || r.error !== undefined || r.value === undefined) {
      this.#log(`${t.host} start failed: ${r.error instanceof BlockMirrorError ? r.error.code : String(r.error)}`);
      t.abortStart();
      t.target = undefined;
      if (!this.#finishing) this.#actions.later(200, () => this.#startTarget(t));
      return;
    }
    const target = r.value;
    this.#log(`${t.host} started (incarnation ${t.incarnation}: ${this.#describeTarget(target)})`);
    target.on('committed', ({ to, volumes }) => {
      if (t.target === target) this.#log(`${t.host} holds freeze ${to} of ${volumes.join(',')}`);
    });
    target.on('merge-error', ({ to, attempts }) => {
      if (t.target === target) this.#log(`${t.host} merge of freeze ${to} failed (attempt ${attempts})`);
    });
    target.on('merge-recovered', ({ to }) => {
      if (t.target === target) this.#log(`${t.host} merge of freeze ${to} recovered`);
    });
  }

  #describeTarget(target: CycleTarget): string {
    return this.config.volumes
      .map((v) => {
        const img = target.volume(v.name).image();
        return `${v.name}@${img.seeding ? 'seeding' : img.freeze}`;
      })
      .join(' ');
  }

  async #stopSource(kind: StopKind): Promise<void> {
    if (!this.#source.running) return;
    for (const w of this.#inflight) {
      // never completes: its content is whatever the crash left (the restart re-reads the active layer)
      w.status = 'failed';
      this.#inflight.delete(w);
    }
    await this.vt.drive(this.#source.stop(kind), 3000);
    this.#log(`source stopped (${kind})`);
  }

  async #stopTarget(t: TargetNodeC, kind: StopKind): Promise<void> {
    if (!t.running) return;
    await this.vt.drive(t.stop(kind), 3000);
    this.#log(`${t.host} stopped (${kind})`);
  }

  // ---- model -------------------------------------------------------------------

  /** Freeze `k` was taken and sealed: its image is the previous one plus the writes that went to layer `k`. */
  #onFrozen(k: number): void {
    const images = new Map<string, ImageModel>();
    for (const v of this.config.volumes) {
      const next = this.#next.get(v.name)!;
      const image: ImageModel = { data: Buffer.from(next.image.data), unknown: new Set(next.image.unknown) };
      for (const w of this.#writes) {
        if (w.volume !== v.name || w.layer !== k) continue;
        this.#apply(image, w);
      }
      images.set(v.name, image);
      this.#next.set(v.name, { after: k, image: { data: Buffer.from(image.data), unknown: new Set(image.unknown) } });
    }
    this.#freezes.set(k, images);
    // writes of older layers are no longer needed
    for (let i = this.#writes.length - 1; i >= 0; i--) if (this.#writes[i]!.layer <= k && this.#writes[i]!.status !== 'pending') this.#writes.splice(i, 1);
    this.#log(`freeze ${k} taken`);
  }

  #apply(image: ImageModel, w: HostWrite): void {
    const bs = this.config.blockSize;
    const first = w.offset / bs;
    const count = w.length / bs;
    if (w.status === 'ok') {
      if (w.data === undefined) image.data.fill(0, w.offset, w.offset + w.length);
      else w.data.copy(image.data, w.offset);
      for (let b = first; b < first + count; b++) image.unknown.delete(b);
    } else {
      for (let b = first; b < first + count; b++) image.unknown.add(b);
    }
  }

  /** The first block where `got` (read at `offset`) differs from `image`, ignoring unknown blocks. */
  #differs(image: ImageModel, offset: number, got: Buffer): number | undefined {
    const bs = this.config.blockSize;
    for (let at = 0; at < got.length; at += bs) {
      const block = (offset + at) / bs;
      if (image.unknown.has(block)) continue;
      if (!got.subarray(at, at + bs).equals(image.data.subarray(offset + at, offset + at + bs))) return block;
    }
    return undefined;
  }

  // ---- workload -----------------------------------------------------------------

  #scheduleWorkload(): void {
    const tick = (): void => {
      if (this.#stopped) return;
      this.#issue();
      if (this.#work.chance(0.15)) this.#sampleRead();
      this.vt.setTimeout(tick, this.#work.int(1, 30));
    };
    this.vt.setTimeout(tick, 1);
  }

  #issue(): void {
    const node = this.#source;
    if (this.#paused || this.#stopped || !node.running || this.#inflight.size >= this.config.concurrency) return;
    const vcfg = this.#work.pick(this.config.volumes);
    const volume = node.volumes.get(vcfg.name)!;
    const kind = this.#work.weighted({ write: 10, trim: 1, flush: 1 });
    const bs = this.config.blockSize;
    if (kind === 'flush') {
      volume.flush().catch(() => undefined);
      return;
    }
    const n = this.#work.int(1, this.config.maxWriteBlocks);
    const first = this.#work.int(0, vcfg.size / bs - n);
    const offset = first * bs;
    const length = n * bs;
    // the host never has two overlapping writes in flight (their order would be undefined)
    for (const w of this.#inflight) if (w.volume === vcfg.name && w.offset < offset + length && offset < w.offset + w.length) return;
    const id = this.#nextOp++;
    const w: HostWrite = {
      id,
      volume: vcfg.name,
      offset,
      length,
      data: kind === 'write' ? pattern(id, length) : undefined,
      layer: volume.lastFreeze + 1,
      status: 'pending',
      incarnation: node.incarnation,
    };
    this.#writes.push(w);
    this.#inflight.add(w);
    this.#issued++;
    const fua = this.#work.chance(0.1);
    const p = w.data === undefined ? volume.trim(offset, length) : volume.write(offset, w.data, { fua });
    p.then(
      () => this.#onWriteDone(w, true),
      (error: unknown) => this.#onWriteDone(w, false, error),
    );
  }

  #onWriteDone(w: HostWrite, ok: boolean, error?: unknown): void {
    if (!this.#inflight.has(w)) return;
    this.#inflight.delete(w);
    this.#completed++;
    w.status = ok ? 'ok' : 'failed';
    if (!ok) this.#log(`host op#${w.id} ${w.volume} @${w.offset}+${w.length} failed: ${error instanceof BlockMirrorError ? error.code : String(error)}`);
  }

  /** A read of a target volume while everything runs: it must be one freeze image, the one claimed. */
  #sampleRead(): void {
    const running = this.#targets.filter((t) => t.running);
    if (running.length === 0) return;
    const node = this.#work.pick(running);
    const target = node.target!;
    const vcfg = this.#work.pick(this.config.volumes);
    const bs = this.config.blockSize;
    const whole = this.#work.chance(0.2);
    const n = whole ? vcfg.size / bs : this.#work.int(1, 64);
    const first = whole ? 0 : this.#work.int(0, vcfg.size / bs - n);
    const vol = target.volume(vcfg.name);
    const before = vol.image();
    const id = ++this.#reads;
    vol.read(first * bs, n * bs).then(
      (got) => {
        if (node.target !== target) return;
        const after = vol.image();
        this.#checkRead(`${node.host} read#${id} ${vcfg.name} @${first * bs}+${n * bs}`, vcfg.name, before, after, first * bs, got);
      },
      (error: unknown) => {
        if (node.target === target) this.#log(`${node.host} read#${id} ${vcfg.name} failed: ${error instanceof BlockMirrorError ? error.code : String(error)}`);
      },
    );
  }

  #checkRead(what: string, volume: string, before: { freeze: number; seeding: boolean; lineage: string | undefined }, after: { freeze: number; seeding: boolean }, offset: number, got: Buffer): void {
    // no image claimed (nothing received yet, or a first full copy going straight into the image)
    if (before.seeding || after.seeding || before.freeze === 0 || after.freeze === 0) return;
    const lo = Math.min(before.freeze, after.freeze);
    const hi = Math.max(before.freeze, after.freeze);
    const tried: string[] = [];
    for (let k = lo; k <= hi; k++) {
      const image = this.#freezes.get(k)?.get(volume);
      if (image === undefined) continue;
      const block = this.#differs(image, offset, got);
      if (block === undefined) return;
      tried.push(`freeze ${k}: block ${block} is op#${got.readUInt32LE(block * this.config.blockSize - offset)}, expected op#${image.data.readUInt32LE(block * this.config.blockSize)}`);
    }
    if (tried.length === 0) return;
    this.#violate('I6-cycle-target-freeze', `${what} returned no complete freeze image (claimed ${lo}${hi === lo ? '' : `…${hi}`}): ${tried.join('; ')}`);
  }

  // ---- steps ---------------------------------------------------------------------

  async #step(step: number): Promise<void> {
    const weights: Record<string, number> = { none: 5, check: 2 };
    const base: Record<CycleFaultKind, number> = {
      cut: 3,
      partition: 2,
      delay: 1,
      'source-kill': 1,
      'source-power-loss': 1,
      'source-restart': 1,
      'target-kill': 1,
      'target-power-loss': 1,
      'target-restart': 1,
      'merge-error': 2,
      'staging-error': 1,
      'source-merge-error': 1,
      'freeze-now': 2,
    };
    for (const [k, w] of Object.entries(base) as [CycleFaultKind, number][]) if (this.config.faults.has(k)) weights[k] = w;
    const action = this.#sched.weighted(weights);
    if (action !== 'none' && action !== 'check') this.#faultsInjected.add(action as CycleFaultKind);
    const target = this.#sched.pick(this.#targets);
    switch (action as CycleFaultKind | 'none' | 'check') {
      case 'none':
        return;
      case 'check':
        this.#log(`step ${step}: checkpoint`);
        await this.#checkpoint(false);
        return;
      case 'cut': {
        const links = this.#links();
        if (links.length === 0) return;
        const link = this.#sched.pick(links);
        this.#log(`step ${step}: cut link ${link.id}`);
        link.cut();
        return;
      }
      case 'partition': {
        if (this.#partitioned.has(target.host)) return;
        const ms = this.#sched.int(20, 1500);
        const hard = this.#sched.chance(0.5);
        this.#log(`step ${step}: partition source/${target.host} for ${ms} ms${hard ? ' (links cut)' : ' (half-open)'}`);
        this.network.partition(SOURCE_HOST, target.host);
        this.#partitioned.add(target.host);
        if (hard) for (const l of this.#links(target.host)) l.cut();
        this.#actions.later(ms, () => this.#heal(target.host));
        return;
      }
      case 'delay': {
        const links = this.#links();
        if (links.length === 0) return;
        const link = this.#sched.pick(links);
        const max = this.#sched.int(5, 80);
        this.#log(`step ${step}: link ${link.id} delay 1..${max} ms`);
        link.setDelay(() => 1 + this.#net.int(0, max), 'both');
        return;
      }
      case 'source-kill':
      case 'source-power-loss': {
        if (!this.#source.running) return;
        const ms = this.#sched.int(0, 800);
        this.#log(`step ${step}: ${action}, restart in ${ms} ms`);
        await this.#stopSource(action === 'source-kill' ? 'kill' : 'power-loss');
        this.#actions.later(ms, () => this.#startSource());
        return;
      }
      case 'source-restart':
        if (!this.#source.running) return;
        this.#log(`step ${step}: clean source restart`);
        await this.#stopSource('clean');
        await this.#startSource();
        return;
      case 'target-kill':
      case 'target-power-loss': {
        if (!target.running) return;
        const ms = this.#sched.int(0, 800);
        this.#log(`step ${step}: ${target.host} ${action === 'target-kill' ? 'kill' : 'power loss'}, restart in ${ms} ms`);
        await this.#stopTarget(target, action === 'target-kill' ? 'kill' : 'power-loss');
        this.#actions.later(ms, () => this.#startTarget(target));
        return;
      }
      case 'target-restart':
        if (!target.running) return;
        this.#log(`step ${step}: clean ${target.host} restart`);
        await this.#stopTarget(target, 'clean');
        await this.#startTarget(target);
        return;
      case 'merge-error': {
        const vol = this.#sched.pick(this.config.volumes).name;
        const op: CrashableOp = this.#sched.pick(['write', 'write', 'flush'] as const);
        const times = this.#sched.int(1, 4);
        this.#log(`step ${step}: ${times} ${op} error(s) on the image device of ${vol} at ${target.host}`);
        target.images.get(vol)!.injectError(op, times);
        return;
      }
      case 'staging-error': {
        const op: CrashableOp = this.#sched.pick(['write', 'read', 'flush'] as const);
        const times = this.#sched.int(1, 3);
        this.#log(`step ${step}: ${times} ${op} error(s) on the staging files of ${target.host}`);
        target.fs.injectDeviceError((p) => p.endsWith('.stage.data'), op, times);
        return;
      }
      case 'source-merge-error': {
        const vol = this.#sched.pick(this.config.volumes).name;
        const op: CrashableOp = this.#sched.pick(['write', 'flush'] as const);
        const times = this.#sched.int(1, 3);
        this.#log(`step ${step}: ${times} ${op} error(s) on the source base of ${vol}`);
        this.#source.bases.get(vol)!.injectError(op, times);
        return;
      }
      case 'freeze-now': {
        const source = this.#source.source;
        if (source === undefined) return;
        this.#log(`step ${step}: freeze now`);
        source.freezeNow().catch(() => undefined);
        return;
      }
    }
  }

  #links(host?: string): MemoryLink[] {
    return this.network.links.filter((l) => {
      if (l.closed) return false;
      const hosts = [l.a.localAddress.host, l.b.localAddress.host];
      return hosts.includes(SOURCE_HOST) && (host === undefined || hosts.includes(host));
    });
  }

  #heal(host: string): void {
    if (!this.#partitioned.delete(host)) return;
    this.network.heal(SOURCE_HOST, host);
    this.#log(`partition source/${host} healed`);
  }

  // ---- checks ----------------------------------------------------------------------

  /** Whole images of every running target (through its reads) and every freeze the source keeps, against the model. */
  async #checkpoint(final: boolean): Promise<void> {
    const source = this.#source;
    for (const [name, volume] of source.volumes) {
      if (!source.running) break;
      // the base alone is freeze baseFreeze only while no merge is pending (a failed merge leaves part of the next layer in it)
      const first = volume.frozenLayers.length === 0 ? volume.baseFreeze : volume.baseFreeze + 1;
      for (let k = first; k <= volume.lastFreeze; k++) {
        const image = this.#freezes.get(k)?.get(name);
        if (image === undefined) continue;
        const r = await this.vt.drive(volume.readFrozen(k, 0, volume.size), 5000);
        if (r.value === undefined) continue;
        // a merge that began meanwhile may have written the next layer into the base under the read
        if (k < volume.baseFreeze || (k === volume.baseFreeze && volume.frozenLayers.length > 0)) continue;
        const block = this.#differs(image, 0, r.value);
        if (block !== undefined) {
          this.#violate('I6-cycle-source-freeze', `the source's freeze ${k} of ${name} differs from the writes it holds at block ${block} (op#${r.value.readUInt32LE(block * this.config.blockSize)}, expected op#${image.data.readUInt32LE(block * this.config.blockSize)})`);
        }
      }
    }
    for (const t of this.#targets) {
      const target = t.target;
      if (target === undefined) continue;
      // the volumes of a group move from freeze to freeze together (one commit marker): look at one instant
      const claimed = new Set<number>();
      for (const v of this.config.volumes) {
        const img = target.volume(v.name).image();
        if (!img.seeding && img.freeze > 0) claimed.add(img.freeze);
      }
      if (claimed.size > 1) this.#violate('I6-cycle-target-freeze', `${t.host} holds different freezes of the volumes of one consistency group: ${this.#describeTarget(target)}`);
      for (const v of this.config.volumes) {
        const vol = target.volume(v.name);
        const before = vol.image();
        const r = await this.vt.drive(vol.read(0, v.size), 5000);
        if (t.target !== target) break;
        if (r.value === undefined) {
          if (final) this.#violate('liveness', `${t.host} could not read ${v.name} after the heal: ${r.error instanceof BlockMirrorError ? r.error.code : String(r.error)}`);
          continue;
        }
        this.#checkRead(`${t.host} checkpoint ${v.name}`, v.name, before, vol.image(), 0, r.value);
      }
    }
  }

  async #finish(): Promise<void> {
    this.#log('healing: faults off, nodes up');
    this.#finishing = true;
    this.#actions.cancelAll();
    for (const host of [...this.#partitioned]) this.#heal(host);
    this.#linkDelay = () => 1;
    for (const l of this.network.links) {
      l.unstall();
      l.setDelay(1);
    }
    this.#source.fs.clearErrors();
    for (const b of this.#source.bases.values()) b.clearErrors();
    for (const t of this.#targets) {
      t.fs.clearErrors();
      for (const d of t.images.values()) d.clearErrors();
    }
    for (const t of this.#targets) await this.#startTarget(t);
    await this.#startSource();
    this.#paused = true;
    await this.vt.runUntilTrue(() => this.#inflight.size === 0, 10_000);
    const source = this.#source.source;
    if (source === undefined) {
      this.#violate('liveness', 'the source does not start after the heal');
      return;
    }
    // one more freeze after the heal: every target must reach it
    const froze = await this.vt.drive(source.freezeNow(), this.config.livenessTimeout);
    if (!froze.done || froze.error !== undefined) this.#log(`final freeze: ${froze.done ? String(froze.error) : 'not done'}`);
    const latest = source.cycle;
    const reached = (): boolean =>
      this.#targets.every((t) => t.target !== undefined && this.config.volumes.every((v) => {
        const img = t.target!.volume(v.name).image();
        return !img.seeding && img.freeze >= latest && t.target!.status().volumes[v.name]!.mergeError === undefined;
      }));
    const ok = await this.vt.runUntilTrue(reached, this.config.livenessTimeout);
    if (!ok) {
      const where = this.#targets.map((t) => `${t.host}: ${t.target === undefined ? 'down' : this.#describeTarget(t.target)}`).join(', ');
      const links = source.status().targets.map((t) => `${t.name} ${t.link} freeze ${t.freeze}${t.lastError === undefined ? '' : ` (${t.lastError.code})`}`).join(', ');
      this.#violate('liveness', `targets not at the latest freeze ${latest} ${this.config.livenessTimeout} ms after the heal: ${where}; source phase ${source.phase}, ${links}`);
    }
    await this.#checkpoint(true);
  }

  async #teardown(): Promise<void> {
    this.#stopped = true;
    this.#actions.stop();
    try {
      await this.vt.drive(this.#source.stop('kill'), 1000);
      for (const t of this.#targets) await this.vt.drive(t.stop('kill'), 1000);
      await this.vt.runFor(100);
    } finally {
      this.vt.clearAll();
    }
  }
}

/** Runs one cycle schedule. */
export function simulateCycle(options: CycleSimulationOptions): Promise<SimulationResult> {
  return new CycleSimulation(options).run();
}

/** Host payload of op `id`: every 512-byte sector starts with the id. */
function pattern(id: number, length: number): Buffer {
  const b = Buffer.alloc(length, ((id * 37) % 251) + 1);
  for (let i = 0; i + 4 <= length; i += 512) b.writeUInt32LE(id, i);
  return b;
}
