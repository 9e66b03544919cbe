/**
 * A deterministic simulation of one primary and one mirror target running the
 * real replication code in virtual time, with a seeded random workload and
 * seeded faults, checked against the replication invariants.
 *
 * @module
 */
import { createHash } from 'node:crypto';
import { BlockMirrorError } from '../../errors.js';
import { CrashableMemoryDevice } from '../../device/crashable-memory-device.js';
import { createPrimary, type Primary } from '../../replication/primary.js';
import type { PrimaryVolume, WriteResult } from '../../replication/primary-volume.js';
import { MemoryNetwork, type MemoryLink } from '../../transport/memory.js';
import { describeConfig, drawBigConfig, drawConfig, drawNbdConfig, SPARSE_ABOVE, type FaultKind, type SimConfig, type SimVolumeConfig } from './config.js';
import { NbdServer } from '../../nbd/server.js';
import { primaryVolumeBackend } from '../../nbd/volume-backend.js';
import * as NBD from '../../nbd/protocol.js';
import { SimNbdClient } from './nbd-client.js';
import { PRIMARY_HOST, PrimaryNode, TARGET_HOST, TargetNode, type StopKind } from './nodes.js';
import type { JournalEntry } from '../../journal/journal.js';
import { consistentCut, consistentCutSparse, prefixPoint, prefixPointSparse, type ObservedWrite } from './prefix-check.js';
import { Rng } from './rng.js';
import { frozen } from './fences.js';
import { runSchedule } from './schedule-run.js';
import { ScheduledActions, VirtualTime } from './virtual-time.js';

/** Invariants the simulator checks. */
export type InvariantId =
  | 'I1-sync-ack-on-target'
  | 'I2-acked-write-lost'
  | 'I3-in-sync-images-differ'
  | 'I4-async-consistency'
  | 'I5-refused-peer-changed-target'
  | 'I6-cycle-target-freeze'
  | 'I6-cycle-source-freeze'
  | 'I7-memory-budget'
  | 'I8-disk-state'
  | 'I9-seq-reused'
  | 'lineage-kept'
  | 'liveness'
  | 'unhandled-rejection';

/** One broken invariant. */
export interface Violation {
  invariant: InvariantId;
  /** Virtual time (ms) when it was seen. */
  time: number;
  message: string;
}

/**
 * A family of schedules: `pair` (the default: small volumes, every fault),
 * `big` (8 GiB sparse volumes, zero/TRIM above 4 GiB), `nbd` (requests
 * through the real NBD server, writes split into many parts), `cycle`
 * (freeze/copy cycles: see `CycleSimulation`).
 */
export type SimFamily = 'pair' | 'big' | 'nbd' | 'cycle';

/** Options of {@link Simulation}. */
export interface SimulationOptions {
  seed: number;
  /** The family of the schedule (default `pair`; `cycle` runs in `CycleSimulation`). */
  family?: Exclude<SimFamily, 'cycle'>;
  /** Overrides of the settings drawn from the seed. */
  config?: Partial<SimConfig>;
  /** Called with every trace line as it happens (e.g. `console.log` for `--verbose`). */
  onTrace?: (line: string) => void;
}

/** Outcome of one schedule. */
export interface SimulationResult {
  seed: number;
  ok: boolean;
  violations: Violation[];
  /** The schedule and what happened, one line per event (identical for identical seeds). */
  trace: string[];
  /** Fault kinds injected during the schedule. */
  faultsInjected: string[];
  /** Virtual milliseconds simulated. */
  virtualTime: number;
  /** User requests issued / completed. */
  requests: { issued: number; completed: number };
  /** Description of the drawn settings. */
  config: string;
  /** The command that replays this schedule. */
  replay: string;
}

interface OpRecord {
  id: number;
  volume: string;
  kind: 'write' | 'zero' | 'flush';
  offset: number;
  length: number;
  data: Buffer | undefined;
  fua: boolean;
  incarnation: number;
  /** Target power losses seen when it was issued. */
  targetLosses: number;
  /** Logical time (see `Simulation.#tick`) it was issued. */
  issued: number;
  /** Async: the seq each part took, as seen in the primary's journal appends (index = part). */
  seqs: number[];
  pv: PrimaryVolume;
  done: boolean;
  /** Through the NBD front: the volume's answer, seen by the backend. */
  result?: WriteResult;
  /** Through the NBD front: a backend call was bound to it. */
  bound?: boolean;
  /** Through the NBD front: whether the target held the data when the volume answered. */
  heldAtResult?: boolean;
}

interface Epoch {
  /** The target image when the epoch began (block → content for a sparse volume). */
  base: Buffer | Map<number, Buffer>;
  fromSeq: number;
  /** Async writes completed since the epoch began, with when the caller issued them and saw them complete. */
  history: ObservedWrite[];
  /** What the last I4 check of the epoch saw (target device counters, history length). */
  checked?: string;
}

/** The command line that replays `seed` (with non-default fault kinds, if any). */
export function replayCommand(seed: number, faults?: ReadonlySet<string>, family: SimFamily = 'pair'): string {
  const extra = faults === undefined ? '' : ` --faults ${[...faults].join(',') || 'none'}`;
  return `npm run sim -- ${family === 'pair' ? '' : `--family ${family} `}--seed ${seed}${extra}`;
}

/**
 * One schedule: builds the topology from the seed, runs the workload and the
 * faults in virtual time, heals everything, waits for in-sync (liveness) and
 * checks the invariants. Create one per seed and call {@link run} once.
 *
 * While it runs, the global `setTimeout`/`setInterval`/`Date.now` are routed
 * to the virtual clock (see {@link VirtualTime.installGlobals}): run one
 * simulation at a time per process.
 */
export class Simulation {
  readonly seed: number;
  readonly family: Exclude<SimFamily, 'cycle'>;
  readonly config: SimConfig;
  readonly vt = new VirtualTime();
  readonly network: MemoryNetwork;
  readonly primaryNode: PrimaryNode;
  readonly targetNode: TargetNode;
  readonly #sched: Rng;
  readonly #work: Rng;
  readonly #big: Rng;
  readonly #net: Rng;
  readonly #nbdClients = new Map<string, SimNbdClient>();
  readonly #onTrace: ((line: string) => void) | undefined;
  readonly #faultsOverridden: boolean;
  readonly trace: string[] = [];
  readonly violations: Violation[] = [];
  readonly #faultsInjected = new Set<FaultKind>();
  readonly #inflight = new Set<OpRecord>();
  readonly #seqs = new Set<string>();
  readonly #epochs = new Map<string, Epoch | undefined>();
  readonly #actions = new ScheduledActions(this.vt, (error: unknown) => this.#log(`timer action failed: ${String(error)}`));
  #nextOp = 1;
  /** Logical clock of the workload: +1 at every issue and every completion the simulator sees. */
  #tick = 0;
  #issued = 0;
  #completed = 0;
  #paused = false;
  #stopped = false;
  #targetLosses = 0;
  #partitioned = false;
  #stallNext = 0;
  #ran = false;

  constructor(options: SimulationOptions) {
    this.seed = options.seed >>> 0;
    const rng = new Rng(this.seed);
    this.family = options.family ?? 'pair';
    const draw = this.family === 'big' ? drawBigConfig : this.family === 'nbd' ? drawNbdConfig : drawConfig;
    this.config = draw(rng.fork('config'), options.config);
    this.#faultsOverridden = options.config?.faults !== undefined;
    this.#sched = rng.fork('schedule');
    this.#work = rng.fork('workload');
    this.#big = rng.fork('big-zero');
    this.#net = rng.fork('network');
    const dev = rng.fork('devices');
    this.#onTrace = options.onTrace;
    this.network = new MemoryNetwork({ clock: this.vt, random: this.#net.random, highWaterMark: 256 * 1024 });
    this.network.setDatagramFaults({ delayMs: 1, reorder: true, reorderWindowMs: 3 });
    this.network.on('link', (link) => this.#onLink(link));
    const ctx = { config: this.config, clock: this.vt, network: this.network, rng: rng.fork('nodes'), latency: () => dev.int(0, 2) };
    this.primaryNode = new PrimaryNode(ctx);
    this.primaryNode.onJournalAppend = (volume, entry) => this.#onAppend(volume, entry);
    this.targetNode = new TargetNode(ctx);
  }

  /** Runs the schedule (once) and checks the invariants. */
  async run(): Promise<SimulationResult> {
    if (this.#ran) throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', 'a Simulation runs once');
    this.#ran = true;
    await runSchedule(
      this.vt,
      (message) => this.#violate('unhandled-rejection', message),
      async () => {
        this.#log(`config ${describeConfig(this.config)}`);
        if (this.config.preloaded) await this.vt.drive(this.#preload());
        await this.#startTarget();
        await this.#startPrimary();
        this.#scheduleWorkload();
        for (let step = 0; step < this.config.steps; step++) {
          await this.#step(step);
          await this.vt.runFor(this.#sched.int(1, 150));
          this.#checkDuring();
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
      config: describeConfig(this.config),
      replay: replayCommand(this.seed, this.#faultsOverridden ? this.config.faults : undefined, this.family),
    };
  }

  // ---- trace and violations ----------------------------------------------

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

  readonly #labels = new Map<string, string>();

  /** A stable label for a random id (stream, generation), so that traces do not depend on it. */
  #label(id: string | undefined): string {
    if (id === undefined) return 'none';
    let l = this.#labels.get(id);
    if (l === undefined) this.#labels.set(id, (l = `#${this.#labels.size + 1}`));
    return l;
  }

  // ---- virtual time helpers ------------------------------------------------


  // ---- nodes ---------------------------------------------------------------

  /**
   * First pairing with data: before the pair ever meets, about half of each
   * primary volume's regions hold data (durably) that the blank target lacks.
   */
  async #preload(): Promise<void> {
    const rng = new Rng(this.seed).fork('preload');
    const region = this.config.regionSize;
    for (const [name, disk] of this.primaryNode.disks) {
      let regions = 0;
      for (let offset = 0; offset < disk.device.size; offset += region) {
        if (!rng.chance(0.5)) continue;
        await disk.device.write(offset, pattern(PRELOAD_ID, Math.min(region, disk.device.size - offset)), { fua: true });
        regions++;
      }
      this.#log(`preloaded ${regions} regions of ${name} on the primary (the target is blank)`);
    }
  }

  async #startTarget(): Promise<void> {
    if (this.targetNode.running) return;
    const r = await this.vt.drive(this.targetNode.start());
    if (r.error !== undefined || !r.done) {
      this.#log(`target start failed: ${String(r.error)}`);
      return;
    }
    this.#log(`target started (incarnation ${this.targetNode.incarnation})`);
  }

  async #startPrimary(): Promise<void> {
    if (this.primaryNode.running) return;
    const r = await this.vt.drive(this.primaryNode.start());
    if (r.error !== undefined || !r.done || r.value === undefined) {
      this.#log(`primary start failed: ${String(r.error)}`);
      return;
    }
    const primary = r.value;
    const inc = this.primaryNode.incarnation;
    this.#log(`primary started (incarnation ${inc})`);
    if (this.config.front === 'nbd') await this.#startNbd(primary, inc);
    primary.on('link', (state) => {
      if (this.primaryNode.primary === primary) this.#log(`primary link ${state}`);
    });
    primary.on('volume-state', ({ volume, state }) => {
      if (this.primaryNode.primary !== primary) return;
      this.#log(`volume ${volume} ${state}`);
      if (state === 'needs-resync' || state === 'inconsistent' || state === 'split-brain') this.#invalidate(volume, state);
    });
    primary.on('verify-mismatch', ({ volume, offset, length }) => this.#log(`verify mismatch ${volume} @${offset}+${length}`));
    // the real primary keeps its lineage through every stop, crash and restart: the target never refuses it
    primary.on('connect-error', (error) => {
      if (this.primaryNode.primary === primary && error.code === 'BM_ERR_SPLIT_BRAIN') this.#violate('lineage-kept', `the target refused the real primary: ${error.message}`);
    });
    primary.on('peer-disk', ({ volume, disk, previous }) => {
      if (this.primaryNode.primary === primary) this.#log(`volume ${volume} peer disk ${disk} (was ${previous})`);
    });
    for (const v of primary.volumes) {
      if (v.state === 'needs-resync' || v.state === 'inconsistent') this.#invalidate(v.name, v.state);
    }
  }

  async #stopPrimary(kind: StopKind): Promise<void> {
    if (!this.primaryNode.running) return;
    this.#abandon(this.primaryNode.incarnation);
    this.#stopNbd();
    await this.vt.drive(this.primaryNode.stop(kind));
    if (kind !== 'clean') for (const v of this.config.volumes) this.#invalidate(v.name, `primary ${kind}`);
    this.#log(`primary stopped (${kind})`);
  }

  async #stopTarget(kind: StopKind): Promise<void> {
    if (!this.targetNode.running) return;
    if (kind === 'power-loss') {
      this.#targetLosses++;
      for (const v of this.config.volumes) this.#invalidate(v.name, 'target power loss');
    }
    await this.vt.drive(this.targetNode.stop(kind));
    this.#log(`target stopped (${kind})`);
  }

  /** Requests of a dead incarnation never complete: stop counting them. */
  #abandon(incarnation: number): void {
    for (const op of this.#inflight) {
      if (op.incarnation === incarnation) {
        op.done = true;
        this.#inflight.delete(op);
        // it may have reached the primary's device (and later the target by a resync) or not: no history can say
        if (op.kind !== 'flush') this.#invalidate(op.volume, `op#${op.id} abandoned by a stop of the primary`);
      }
    }
  }

  // ---- network ---------------------------------------------------------------

  #linkDelay = (): number => 1 + this.#net.int(0, 2);

  #onLink(link: MemoryLink): void {
    link.setDelay(() => this.#linkDelay(), 'both');
    if (this.#stallNext > 0) {
      this.#stallNext--;
      const direction = this.#net.pick(['aToB', 'bToA', 'both'] as const);
      const ms = this.#net.int(50, 1500);
      link.stall(direction);
      this.#log(`link ${link.id} handshake stalled ${direction} for ${ms} ms`);
      this.#actions.later(ms, () => link.unstall(direction));
    }
  }

  #pairLinks(): MemoryLink[] {
    return this.network.links.filter((l) => {
      const hosts = [l.a.localAddress.host, l.b.localAddress.host];
      return !l.closed && hosts.includes(PRIMARY_HOST) && hosts.includes(TARGET_HOST);
    });
  }

  #heal(): void {
    if (this.#partitioned) {
      this.network.heal(PRIMARY_HOST, TARGET_HOST);
      this.#partitioned = false;
      this.#log('partition healed');
    }
  }

  // ---- workload --------------------------------------------------------------

  #scheduleWorkload(): void {
    const tick = (): void => {
      if (this.#stopped) return;
      // I4 between steps too: transient target images (concurrent applies) are seen
      for (const v of this.config.volumes) if (v.mode === 'async') this.#checkAsyncOrder(v.name, this.primaryNode.primary?.volume(v.name).state);
      this.#issue();
      if (this.config.burst) while (this.#issue());
      this.vt.setTimeout(tick, this.#work.int(1, 25));
    };
    this.vt.setTimeout(tick, 1);
  }

  /** Issues one request; false when none may be issued now. */
  #issue(): boolean {
    const primary = this.primaryNode.primary;
    if (this.#paused || this.#stopped || primary === undefined || this.#inflight.size >= this.config.concurrency) return false;
    const vcfg = this.#work.pick(this.config.volumes);
    const pv = primary.volume(vcfg.name);
    // through the NBD front: only once its connection to this incarnation is up
    if (this.config.front === 'nbd' && this.#nbdClients.get(vcfg.name)?.closed !== false) return false;
    const kind = this.#work.weighted({ write: 10, zero: 1, flush: 1 });
    const bs = this.config.blockSize;
    const blocks = vcfg.size / bs;
    let n = this.#work.int(1, this.config.maxWriteBlocks);
    let first = this.#work.int(0, blocks - n);
    // scenario 5: a zero/TRIM of more than 4 GiB (drawn from a stream of its own)
    if (kind === 'zero' && this.config.bigZero > 0 && this.#big.chance(this.config.bigZero)) {
      n = (4 * 2 ** 30 + this.#big.int(1, 1024) * this.config.regionSize) / bs;
      first = this.#big.int(0, blocks - n);
    }
    const fua = this.#work.chance(0.1);
    const id = this.#nextOp++;
    const op: OpRecord = {
      id,
      volume: vcfg.name,
      kind,
      offset: kind === 'flush' ? 0 : first * bs,
      length: kind === 'flush' ? 0 : n * bs,
      data: kind === 'write' ? pattern(id, n * bs) : undefined,
      fua,
      incarnation: this.primaryNode.incarnation,
      targetLosses: this.#targetLosses,
      issued: ++this.#tick,
      seqs: [],
      pv,
      done: false,
    };
    this.#inflight.add(op);
    this.#issued++;
    const p: Promise<WriteResult> =
      this.config.front === 'nbd'
        ? this.#viaNbd(op)
        : kind === 'write'
          ? pv.write(op.offset, op.data!, { fua })
          : kind === 'zero'
            ? pv.zero(op.offset, op.length, { fua })
            : pv.flush();
    p.then(
      (r) => this.#onResult(op, r),
      (error: unknown) => this.#onResult(op, undefined, error),
    );
    return true;
  }

  /**
   * Sends `op` through the NBD front (scenario 12): the reply says success or
   * an NBD error; the volume's own answer (seq, mirror state) is what the
   * backend saw (see {@link #nbdVolume}).
   */
  async #viaNbd(op: OpRecord): Promise<WriteResult> {
    const client = this.#nbdClients.get(op.volume);
    if (client === undefined) return frozen();
    const flags = op.fua && op.kind !== 'flush' ? NBD.NBD_CMD_FLAG_FUA : 0;
    const type = op.kind === 'write' ? NBD.NBD_CMD_WRITE : op.kind === 'flush' ? NBD.NBD_CMD_FLUSH : this.#work.chance(0.5) ? NBD.NBD_CMD_TRIM : NBD.NBD_CMD_WRITE_ZEROES;
    const error = await client.request(type, op.offset, op.length, flags, op.data);
    if (error !== 0) throw new BlockMirrorError('BM_ERR_IO', `NBD error ${error}`);
    if (op.result === undefined) throw new BlockMirrorError('BM_ERR_PROTOCOL', 'NBD success without a volume answer');
    return op.result;
  }

  /** The volume as the NBD backend sees it: each call is bound to the oldest matching request in flight, whose answer it records. */
  #nbdVolume(pv: PrimaryVolume, incarnation: number): PrimaryVolume {
    const bind = (kind: OpRecord['kind'], offset: number, length: number, p: Promise<WriteResult>): Promise<WriteResult> => {
      const op = [...this.#inflight].find((o) => !o.bound && o.incarnation === incarnation && o.volume === pv.name && o.kind === kind && (kind === 'flush' || (o.offset === offset && o.length === length)));
      if (op !== undefined) op.bound = true;
      return p.then((r) => {
        if (op !== undefined) {
          op.result = r;
          // I1 is about the moment the volume answered (the NBD reply comes later, when an overlapping write may have followed)
          if (op.kind !== 'flush' && r.mirror === 'acknowledged') op.heldAtResult = this.#targetHolds(op);
        }
        return r;
      });
    };
    return new Proxy(pv, {
      get: (target, prop, receiver) => {
        if (prop === 'write') return (offset: number, data: Buffer, o?: { fua?: boolean }) => bind('write', offset, data.length, target.write(offset, data, o));
        if (prop === 'zero') return (offset: number, length: number, o?: { fua?: boolean }) => bind('zero', offset, length, target.zero(offset, length, o));
        if (prop === 'flush') return () => bind('flush', 0, 0, target.flush());
        const value: unknown = Reflect.get(target, prop, receiver);
        return typeof value === 'function' ? (value as (...a: unknown[]) => unknown).bind(target) : value;
      },
    });
  }

  async #startNbd(primary: Primary, incarnation: number): Promise<void> {
    const server = new NbdServer({
      clock: this.vt,
      exports: primary.volumes.map((pv) => ({ name: pv.name, readOnly: false, backend: primaryVolumeBackend(this.#nbdVolume(pv, incarnation), { clock: this.vt }) })),
    });
    for (const pv of primary.volumes) {
      const r = await this.vt.drive(SimNbdClient.connect(server, pv.name), 2000);
      if (r.value === undefined) {
        this.#log(`NBD client of ${pv.name} could not connect: ${String(r.error)}`);
        continue;
      }
      // the primary may have died while the client connected (virtual time ran): a client of a dead
      // incarnation would take requests nobody ever answers
      if (this.primaryNode.primary !== primary || this.primaryNode.incarnation !== incarnation) {
        r.value.destroy();
        return;
      }
      this.#nbdClients.set(pv.name, r.value);
    }
  }

  /** The NBD front dies with the primary process: its connections are dropped. */
  #stopNbd(): void {
    for (const c of this.#nbdClients.values()) c.destroy();
    this.#nbdClients.clear();
  }

  #onResult(op: OpRecord, r: WriteResult | undefined, error?: unknown): void {
    if (op.done) return;
    op.done = true;
    const completed = ++this.#tick;
    this.#inflight.delete(op);
    this.#completed++;
    const what = `op#${op.id} ${op.volume} ${op.kind}${op.fua ? '+fua' : ''} @${op.offset}+${op.length}`;
    if (r === undefined) {
      const code = error instanceof BlockMirrorError ? error.code : String(error);
      this.#log(`${what} -> error ${code}`);
      if (op.kind !== 'flush') this.#invalidate(op.volume, 'a request failed');
      return;
    }
    this.#log(`${what} -> ${r.mirror}${r.seq === undefined ? '' : ` seq ${r.seq}`}`);
    if (op.kind === 'flush') return;
    const mode = this.#mode(op.volume);
    for (const seq of r.partSeqs ?? (r.seq === undefined ? [] : [r.seq])) {
      const key = `${op.volume}:${op.pv.stream}:${seq}`;
      if (this.#seqs.has(key)) this.#violate('I9-seq-reused', `${what} got seq ${seq}, already used in stream ${this.#label(op.pv.stream)} of volume ${op.volume}`);
      this.#seqs.add(key);
    }
    if (mode === 'sync' && r.mirror === 'acknowledged' && op.targetLosses === this.#targetLosses) {
      const held = op.heldAtResult ?? this.#targetHolds(op);
      if (!held) this.#violate('I1-sync-ack-on-target', `${what} resolved acknowledged but the target does not hold it${this.#whereMissing(op)}`);
    }
    if (mode === 'async') {
      if (r.mirror !== 'queued' || r.seq === undefined) this.#invalidate(op.volume, `async request not queued with a seq (${r.mirror})`);
      else {
        const seqs = r.partSeqs ?? [r.seq];
        if (seqs.length !== Math.ceil(op.length / this.#partLength(op))) this.#invalidate(op.volume, 'a part of a split write took no seq');
        else this.#epochs.get(op.volume)?.history.push(...this.#parts(op, seqs, completed));
      }
    }
  }

  /** Length of each part of a write of `op` (the payload limit, whole blocks); a zero is one request. */
  #partLength(op: OpRecord): number {
    return op.data === undefined ? op.length : Math.floor(this.config.maxPayload / this.config.blockSize) * this.config.blockSize;
  }

  /**
   * An async request took its seq: the primary journals it at once, before it
   * can reach the target. A write part is known by the op id at the start of
   * its payload (see {@link pattern}), a zero by its range (the oldest op of
   * that range without a seq: zeroes of one range are serialised in issue
   * order). This is how the check knows the seqs of a write still in progress.
   */
  #onAppend(volume: string, entry: JournalEntry): void {
    if (this.#mode(volume) !== 'async') return;
    let op: OpRecord | undefined;
    for (const o of this.#inflight) {
      if (o.volume !== volume) continue;
      if (entry.kind === 'zero' ? o.kind === 'zero' && o.offset === entry.offset && o.length === entry.length && o.seqs.length === 0 : o.kind === 'write' && o.id === entry.data.readUInt32LE(0)) {
        op = o;
        break;
      }
    }
    if (op === undefined) return;
    const part = (entry.offset - op.offset) / this.#partLength(op);
    if (Number.isInteger(part)) op.seqs[part] = entry.seq;
  }

  /**
   * The requests one write went as: parts of at most the payload limit, in
   * order (`part`), part i numbered `seqs[i]` (not consecutive: concurrent
   * writes take seqs between two parts); a part without a seq never left the
   * primary and is left out.
   */
  #parts(op: OpRecord, seqs: readonly (number | undefined)[], completed: number): ObservedWrite[] {
    const part = this.#partLength(op);
    const count = Math.ceil(op.length / part);
    const out: ObservedWrite[] = [];
    for (let i = 0; i < count; i++) {
      const seq = seqs[i];
      if (seq === undefined) continue;
      const at = i * part;
      const length = Math.min(part, op.length - at);
      out.push({ seq, op: op.id, part: i, offset: op.offset + at, length, data: op.data?.subarray(at, at + length), issued: op.issued, completed });
    }
    return out;
  }

  /** Where the target's image differs from what `op` wrote (for reports). */
  #whereMissing(op: OpRecord): string {
    if (op.data === undefined) return '';
    const bs = this.config.blockSize;
    const got = this.targetNode.disks.get(op.volume)!.device.peek(op.offset, op.length);
    for (let at = 0; at < op.length; at += bs) {
      if (!got.subarray(at, at + bs).equals(op.data.subarray(at, at + bs))) return ` (block ${(op.offset + at) / bs} holds op#${got.readUInt32LE(at)})`;
    }
    return ' (it does now)';
  }

  /** True when the target's image holds what `op` wrote (I1). */
  #targetHolds(op: OpRecord): boolean {
    const device = this.targetNode.disks.get(op.volume)!.device;
    return op.data === undefined ? device.isZero(op.offset, op.length) : device.peek(op.offset, op.length).equals(op.data);
  }

  #mode(volume: string): SimVolumeConfig['mode'] {
    return this.config.volumes.find((v) => v.name === volume)!.mode;
  }

  #invalidate(volume: string, why: string): void {
    if (this.#epochs.get(volume) !== undefined) this.#log(`prefix check of ${volume} suspended (${why})`);
    this.#epochs.set(volume, undefined);
  }

  // ---- steps -------------------------------------------------------------

  #enabled(kind: FaultKind): boolean {
    return this.config.faults.has(kind);
  }

  async #step(step: number): Promise<void> {
    const weights: Partial<Record<FaultKind | 'none' | 'check', number>> = { none: 6, check: 2 };
    const base: Record<FaultKind, number> = {
      cut: 3,
      partition: 2,
      delay: 2,
      'stall-handshake': 1,
      'primary-kill': 1,
      'primary-power-loss': 1,
      'primary-restart': 1,
      'target-kill': 1,
      'target-power-loss': 1,
      'target-restart': 1,
      'device-error': 1,
      resync: 1,
      verify: 1,
      'rogue-primary': 1,
    };
    for (const [k, w] of Object.entries(base) as [FaultKind, number][]) if (this.#enabled(k)) weights[k] = w;
    const action = this.#sched.weighted(weights as Record<string, number>);
    if (action !== 'none' && action !== 'check') this.#faultsInjected.add(action as FaultKind);
    const primary = this.primaryNode.primary;
    switch (action) {
      case 'none':
        return;
      case 'check':
        this.#log(`step ${step}: quiescent check`);
        await this.#quiescentCheck();
        return;
      case 'cut': {
        const links = this.#pairLinks();
        if (links.length === 0) return;
        const link = this.#sched.pick(links);
        this.#log(`step ${step}: cut link ${link.id}`);
        link.cut();
        return;
      }
      case 'partition': {
        if (this.#partitioned) return;
        const hard = this.#sched.chance(0.5);
        const ms = this.#sched.int(20, 1500);
        this.#log(`step ${step}: partition primary/target for ${ms} ms${hard ? ' (links cut)' : ' (half-open)'}`);
        this.network.partition(PRIMARY_HOST, TARGET_HOST);
        this.#partitioned = true;
        if (hard) for (const l of this.#pairLinks()) l.cut();
        this.#actions.later(ms, () => this.#heal());
        return;
      }
      case 'delay': {
        const links = this.#pairLinks();
        if (links.length === 0) return;
        const link = this.#sched.pick(links);
        const max = this.#sched.int(5, 80);
        this.#log(`step ${step}: link ${link.id} delay 1..${max} ms (reordering across connections)`);
        link.setDelay(() => 1 + this.#net.int(0, max), 'both');
        return;
      }
      case 'stall-handshake': {
        this.#stallNext = this.#sched.int(1, 3);
        this.#log(`step ${step}: the next ${this.#stallNext} connection(s) stall`);
        const links = this.#pairLinks();
        if (links.length > 0 && this.#sched.chance(0.5)) this.#sched.pick(links).cut();
        return;
      }
      case 'primary-kill':
      case 'primary-power-loss': {
        if (!this.primaryNode.running) return;
        const ms = this.#sched.int(0, 800);
        this.#log(`step ${step}: ${action}, restart in ${ms} ms`);
        await this.#stopPrimary(action === 'primary-kill' ? 'kill' : 'power-loss');
        this.#actions.later(ms, () => this.#startPrimary());
        return;
      }
      case 'primary-restart':
        if (!this.primaryNode.running) return;
        this.#log(`step ${step}: clean primary restart`);
        await this.#stopPrimary('clean');
        await this.#startPrimary();
        return;
      case 'target-kill':
      case 'target-power-loss': {
        if (!this.targetNode.running) return;
        const ms = this.#sched.int(0, 800);
        this.#log(`step ${step}: ${action}, restart in ${ms} ms`);
        await this.#stopTarget(action === 'target-kill' ? 'kill' : 'power-loss');
        this.#actions.later(ms, () => this.#startTarget());
        return;
      }
      case 'target-restart':
        if (!this.targetNode.running) return;
        this.#log(`step ${step}: clean target restart`);
        await this.#stopTarget('clean');
        await this.#startTarget();
        return;
      case 'device-error': {
        const side = this.#sched.pick(['primary', 'target'] as const);
        const vol = this.#sched.pick(this.config.volumes).name;
        const op = this.#sched.pick(['write', 'write', 'read', 'flush'] as const);
        const times = this.#sched.int(1, 3);
        this.#log(`step ${step}: ${times} ${op} error(s) on the ${side} device of ${vol}`);
        const disk = side === 'primary' ? this.primaryNode.disks.get(vol)! : this.targetNode.disks.get(vol)!;
        disk.device.injectError(op, times);
        return;
      }
      case 'resync':
      case 'verify': {
        if (primary === undefined) return;
        const vol = this.#sched.pick(this.config.volumes).name;
        if (action === 'resync') {
          // a full resync of a multi-GiB sparse volume would read every byte of it: dirty regions only there
          const all = this.#sched.chance(0.5) && this.config.volumes.every((v) => v.size <= SPARSE_ABOVE);
          this.#log(`step ${step}: resync ${vol}${all ? ' (all)' : ''}`);
          primary.resync(vol, { all }).then(
            () => this.#log(`resync ${vol} done`),
            (e: unknown) => this.#log(`resync ${vol} failed: ${e instanceof BlockMirrorError ? e.code : String(e)}`),
          );
        } else {
          this.#log(`step ${step}: verify ${vol}`);
          primary.verify(vol).then(
            (r) => this.#log(`verify ${vol}: ${r.mismatches.length} mismatch(es)`),
            (e: unknown) => this.#log(`verify ${vol} failed: ${e instanceof BlockMirrorError ? e.code : String(e)}`),
          );
        }
        return;
      }
      case 'rogue-primary':
        await this.#rogue(step);
        return;
    }
  }

  /** The pair's replication state, for a liveness report: link, slots, the target's ordering, each volume's requests. */
  #describePair(): string {
    const primary = this.primaryNode.primary;
    if (primary === undefined) return 'primary down';
    const slots = primary.status().peers[0]?.connections.map((c) => `${c.status}/${c.inFlight}`).join(',') ?? 'none';
    const tgt = this.targetNode.target;
    const targetLine = tgt === undefined ? 'target down' : tgt.volumes.map((v) => `${v.name}@target applied=${v.status().appliedSeq} waiting=${v.order.waitingCount} conns=${v.status().connections}`).join(' ');
    const states = [`slots=${slots}`, targetLine, ...primary.volumes.map((v) => {
      const s = v.status();
      const next = v.nextToSend();
      return `${v.name}:${s.state} pending=${s.pendingRequests} acked=${s.ackedSeq}/${s.lastSeq} resync=${s.resyncBytes} queue=${v.queue.length} next=${next === undefined ? '-' : `${next.kind}#${next.seq}`} [${v.describePending().join(' ')}]`;
    })];
    return `link ${primary.link}, ${states.join(', ')}`;
  }

  // ---- checks ----------------------------------------------------------------

  /** Checks that need no quiescence: I4 (async: writes closed under happens-before) and I7 (memory). */
  #checkDuring(): void {
    const primary = this.primaryNode.primary;
    for (const v of this.config.volumes) {
      const state = primary?.volume(v.name).state;
      if (state === 'needs-resync' || state === 'inconsistent' || state === 'split-brain') this.#invalidate(v.name, state);
      if (v.mode === 'async') this.#checkAsyncOrder(v.name, state);
    }
    if (primary !== undefined) {
      const c = this.config;
      // The payload budget (requests in flight included), plus what it cannot refuse: the writes of callers
      // still waiting (a sync write's buffer, an async write until its journal append completed), resync
      // copies, and per volume one request read back to make progress.
      const write = c.maxWriteBlocks * c.blockSize;
      const budget = c.maxBufferedBytes + c.concurrency * write + c.regionSize * c.resyncConcurrency * c.volumes.length + c.volumes.length * Math.max(write, c.regionSize);
      const held = primary.volumes.reduce((sum, v) => sum + v.status().bufferedBytes, 0);
      if (held > budget) {
        this.#violate('I7-memory-budget', `${held} payload bytes held in RAM with the link ${primary.link} (budget ${budget}: maxBufferedBytes ${c.maxBufferedBytes} + callers' writes, resync copies, one read-back per volume) ${JSON.stringify(primary.volumes.map((v) => v.describeHeld()))}`);
      }
    }
  }

  /**
   * I4 for an async volume: the target image is the epoch's base with a set
   * of the primary's writes closed under happens-before. Writes still in
   * progress count with the parts that took a seq (they may be on the target
   * already), as never completed.
   */
  #checkAsyncOrder(volume: string, state: string | undefined): void {
    const epoch = this.#epochs.get(volume);
    if (epoch === undefined) return;
    const history = [...epoch.history];
    for (const op of this.#inflight) if (op.volume === volume && op.kind !== 'flush') history.push(...this.#parts(op, op.seqs, Number.POSITIVE_INFINITY));
    const device = this.targetNode.disks.get(volume)!.device;
    // nothing changed since the last check of this epoch: same answer
    const key = `${device.stats.writes}/${device.stats.trims}/${device.stats.crashes}/${history.length}`;
    if (epoch.checked === key) return;
    epoch.checked = key;
    const image = snapshot(device);
    const bs = this.config.blockSize;
    const sparse = image instanceof Map && epoch.base instanceof Map;
    const r0 = sparse ? consistentCutSparse(epoch.base as Map<number, Buffer>, image, history, bs) : consistentCut(epoch.base as Buffer, image as Buffer, history, bs);
    const strict = sparse ? prefixPointSparse(epoch.base as Map<number, Buffer>, image, history, bs, epoch.fromSeq) : prefixPoint(epoch.base as Buffer, image as Buffer, history, bs, epoch.fromSeq);
    if (r0.ok && !strict.ok) this.#log('RELAXED: image is no strict prefix but a consistent cut');
    const r = r0;
    if (r.ok) return;
    const at = (img: Buffer | Map<number, Buffer>): string => `op#${blockOf(img, r.block!, bs).readUInt32LE(0)}`;
    const missing = r.missing === undefined ? '' : `, op#${history[r.missing]!.op} must be there by happens-before and is not`;
    this.#violate(
      'I4-async-consistency',
      `target image of ${volume} is not the primary's writes since seq ${epoch.fromSeq} closed under happens-before (block ${r.block}: target ${at(image)}, base ${at(epoch.base)}${missing}; state ${state ?? 'primary down'})`,
    );
    this.#invalidate(volume, 'I4 broken');
  }

  /** Pauses the workload until no request is in flight, then checks I3 and restarts the async prefix check. */
  async #quiescentCheck(): Promise<void> {
    this.#paused = true;
    await this.vt.runUntilTrue(() => this.#inflight.size === 0, 5000);
    this.#compareIfInSync(false);
    this.#paused = false;
  }

  #compareIfInSync(final: boolean): boolean {
    const primary = this.primaryNode.primary;
    if (primary === undefined || this.#inflight.size > 0) return true;
    let equal = true;
    for (const v of this.config.volumes) {
      const st = primary.volume(v.name).status();
      if (!st.inSync || st.state !== 'in-sync') continue;
      const a = this.primaryNode.disks.get(v.name)!.device;
      const b = this.targetNode.disks.get(v.name)!.device;
      const diff = firstDiffOf(a, b);
      if (diff === undefined) {
        if (v.mode === 'async') this.#epochs.set(v.name, { base: snapshot(b), fromSeq: st.lastSeq, history: [] });
        continue;
      }
      equal = false;
      const offset = diff * this.config.blockSize;
      const last = this.#lastAckedWriter(v.name, offset);
      const acked = last !== undefined && last.onPrimary;
      const inv: InvariantId = final && acked ? 'I2-acked-write-lost' : 'I3-in-sync-images-differ';
      this.#violate(
        inv,
        `volume ${v.name} (${v.mode}) is in-sync but the images differ at block ${diff} (offset ${offset}: primary ${contentOf(a, offset, this.config.blockSize)}, target ${contentOf(b, offset, this.config.blockSize)})` +
          (last === undefined ? '' : `; last request there: op#${last.id}${acked ? ', acknowledged, held by the primary, missing on the target' : ''}`),
      );
    }
    return equal;
  }

  /** The last completed request that wrote `offset` of `volume`, and whether the primary holds its data there. */
  #lastAckedWriter(volume: string, offset: number): { id: number; onPrimary: boolean } | undefined {
    const line = [...this.trace].reverse().find((l) => l.includes(` ${volume} write`) && coversOffset(l, offset) && /-> (acknowledged|queued)/.test(l));
    if (line === undefined) return undefined;
    const id = Number(/op#(\d+)/.exec(line)![1]);
    const onPrimary = this.primaryNode.disks.get(volume)!.device.peek(offset, 512).equals(pattern(id, this.config.blockSize).subarray(offset % this.config.blockSize, (offset % this.config.blockSize) + 512));
    return { id, onPrimary };
  }

  async #rogue(step: number): Promise<void> {
    const target = this.targetNode.target;
    if (target === undefined || target.volumes.every((v) => v.status().generation === undefined)) return;
    this.#log(`step ${step}: a second primary with another lineage connects (the real one is cut off)`);
    if (!this.#partitioned) {
      this.network.partition(PRIMARY_HOST, TARGET_HOST);
      this.#partitioned = true;
      this.#actions.later(this.#sched.int(50, 1000), () => this.#heal());
    }
    for (const l of this.#pairLinks()) l.cut();
    await this.vt.runUntilTrue(() => target.volumes.every((v) => v.status().connections === 0), 2000);
    if (this.targetNode.target !== target) return;
    const snapshot = (): string[] =>
      target.volumes.map((v) => {
        const st = v.status();
        const image = this.targetNode.disks.get(v.name)!.device.peek();
        return `${v.name} applied=${st.appliedSeq} stream=${this.#label(v.stream)} gen=${this.#label(st.generation)} primary=${st.primary} image=${hash(image)}`;
      });
    // the real primary may reconnect meanwhile (a heal timer): then the comparison proves nothing
    let realPrimaryBack = false;
    const onConnection = (info: { node: string }): void => {
      if (info.node !== 'rogue') realPrimaryBack = true;
    };
    target.on('connection', onConnection);
    // requests the real primary sent before the cut may still be applying: wait until the target is still
    let before = snapshot();
    for (let i = 0; i < 20; i++) {
      await this.vt.runFor(100);
      const again = snapshot();
      if (again.every((line, k) => line === before[k])) break;
      before = again;
    }
    if (this.targetNode.target !== target) {
      target.off('connection', onConnection);
      return;
    }
    const rogue = createPrimary({
      peer: this.targetNode.address,
      nodeId: 'rogue',
      transport: this.network.transport({ host: 'rogue' }),
      clock: this.vt,
      connections: 1,
      heartbeats: false,
      handshakeTimeout: 500,
      volumes: this.config.volumes.map((v) => ({
        name: v.name,
        mode: v.mode,
        device: new CrashableMemoryDevice(v.size, { blockSize: this.config.blockSize, sparse: v.size > SPARSE_ABOVE }),
      })),
    });
    const r = await this.vt.drive(rogue, 3000);
    if (r.value !== undefined) {
      target.off('connection', onConnection);
      const accepted: Primary = r.value;
      this.#log('rogue primary accepted');
      await this.vt.drive(accepted.close({ drain: false }));
      this.#violate('I5-refused-peer-changed-target', 'a primary of an unrelated lineage was accepted by a target holding another lineage');
      return;
    }
    this.#log(`rogue primary refused: ${r.error instanceof BlockMirrorError ? r.error.code : String(r.error)}`);
    await this.vt.runFor(10);
    target.off('connection', onConnection);
    if (this.targetNode.target !== target) return;
    if (realPrimaryBack) {
      this.#log('the real primary reconnected during the attempt: no comparison');
      return;
    }
    const after = snapshot();
    for (let i = 0; i < before.length; i++) {
      if (before[i] !== after[i]) this.#violate('I5-refused-peer-changed-target', `refused peer changed the target: ${before[i]} -> ${after[i]}`);
    }
  }

  async #finish(): Promise<void> {
    this.#log('healing: faults off, nodes up');
    this.#actions.cancelAll();
    this.#heal();
    this.#linkDelay = () => 1;
    for (const l of this.network.links) {
      l.unstall();
      l.setDelay(1);
    }
    for (const node of [this.primaryNode, this.targetNode]) for (const d of node.disks.values()) d.device.clearErrors();
    this.#stallNext = 0;
    await this.#startTarget();
    await this.#startPrimary();
    this.#paused = true;
    const settled = await this.vt.runUntilTrue(() => this.#inflight.size === 0, 30_000);
    if (!settled) {
      const ops = [...this.#inflight].map((op) => `op#${op.id} ${op.volume} ${op.kind}`).join(', ');
      this.#violate('liveness', `${this.#inflight.size} user request(s) still pending 30 s after the faults healed: ${ops} | ${this.#describePair()}`);
    }
    const primary = this.primaryNode.primary;
    if (primary === undefined) return;
    // in sync with the target that runs now: right after a restart of the target the primary may not have
    // noticed yet (its view is that of the previous incarnation), so a session with this one is required
    const target = this.targetNode.target;
    const inSync = (): boolean =>
      primary.link === 'up' &&
      primary.volumes.every((v) => v.status().inSync && v.state === 'in-sync') &&
      (target === undefined || target.volumes.every((tv) => tv.status().connections > 0));
    const ok = await this.vt.runUntilTrue(inSync, this.config.livenessTimeout);
    if (!ok) this.#violate('liveness', `not in-sync ${this.config.livenessTimeout} ms after the faults healed: ${this.#describePair()}`);
    this.#compareIfInSync(true);
    // both sides agree: a pair in sync has an up-to-date target image
    if (ok && target !== undefined) {
      for (const v of primary.volumes) {
        const t = target.volume(v.name).status();
        const p = v.status();
        if (t.disk !== 'up-to-date' || p.peerDisk !== 'up-to-date' || !t.inSync) {
          this.#violate('I8-disk-state', `volume ${v.name} is in-sync on the primary (peer disk ${p.peerDisk}) but the target says disk ${t.disk}, inSync ${t.inSync}`);
        }
      }
    }
  }

  async #teardown(): Promise<void> {
    this.#stopped = true;
    this.#actions.stop();
    try {
      await this.vt.drive(this.primaryNode.stop('kill'), 1000);
      await this.vt.drive(this.targetNode.stop('kill'), 1000);
      await this.vt.runFor(100);
    } finally {
      this.vt.clearAll();
    }
  }
}

/** Runs one schedule: `new Simulation(options).run()`. */
export function simulate(options: SimulationOptions): Promise<SimulationResult> {
  return new Simulation(options).run();
}

/** Request id of the data a preloaded primary holds before the first pairing (no request has it). */
const PRELOAD_ID = 0x7fffffff;

/** Payload of request `id`: every 512-byte sector starts with the id, the rest is a byte derived from it. */
function pattern(id: number, length: number): Buffer {
  const b = Buffer.alloc(length, (id * 37) % 251 + 1);
  for (let i = 0; i + 4 <= length; i += 512) b.writeUInt32LE(id, i);
  return b;
}

/** The content of a device for the checks: the whole image, or its non-zero blocks when sparse. */
function snapshot(device: CrashableMemoryDevice): Buffer | Map<number, Buffer> {
  if (!device.sparse) return device.peek();
  const bs = device.blockSize;
  const out = new Map<number, Buffer>();
  for (const b of device.nonZeroBlocks()) out.set(b, device.peek(b * bs, bs));
  return out;
}

function blockOf(image: Buffer | Map<number, Buffer>, block: number, bs: number): Buffer {
  return image instanceof Map ? (image.get(block) ?? Buffer.alloc(bs)) : image.subarray(block * bs, (block + 1) * bs);
}

/** The first block where two devices differ (sparse devices: only their non-zero blocks are compared). */
function firstDiffOf(a: CrashableMemoryDevice, b: CrashableMemoryDevice): number | undefined {
  if (!a.sparse || !b.sparse) return firstDiff(a.peek(), b.peek(), a.blockSize);
  const bs = a.blockSize;
  const blocks = [...new Set([...a.nonZeroBlocks(), ...b.nonZeroBlocks()])].sort((x, y) => x - y);
  for (const block of blocks) if (!a.peek(block * bs, bs).equals(b.peek(block * bs, bs))) return block;
  return undefined;
}

function firstDiff(a: Buffer, b: Buffer, blockSize: number): number | undefined {
  if (a.equals(b)) return undefined;
  for (let i = 0; i < a.length; i += blockSize) if (!a.subarray(i, i + blockSize).equals(b.subarray(i, i + blockSize))) return i / blockSize;
  return undefined;
}

function coversOffset(line: string, offset: number): boolean {
  const m = /@(\d+)\+(\d+)/.exec(line);
  if (m === null) return false;
  const start = Number(m[1]);
  return offset >= start && offset < start + Number(m[2]);
}

function hash(buf: Buffer): string {
  return createHash('sha1').update(buf).digest('hex').slice(0, 12);
}

/** What a block holds, for a message: the request id a pattern starts with, or zeroes. */
function contentOf(device: CrashableMemoryDevice, offset: number, blockSize: number): string {
  const block = device.peek(offset, blockSize);
  return block.every((b) => b === 0) ? 'zeroes' : `op#${block.readUInt32LE(0)}`;
}
