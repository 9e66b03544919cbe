/**
 * The simulated processes: a node has a durable "disk" (devices, journal,
 * bitmap, pair state store — what survives a crash) and at most one running
 * incarnation of the real replication code, which holds revocable views of
 * that disk and of the network.
 *
 * @module
 */
import type { Clock } from '../../clock.js';
import { CrashableMemoryDevice, type DeviceSession } from '../../device/crashable-memory-device.js';
import { AllocationTrackingDevice } from '../../device/allocation-tracking-device.js';
import type { BlockDevice } from '../../device/block-device.js';
import { MemoryFileSystem } from './memory-fs.js';
import { MemoryJournal } from '../../journal/memory-journal.js';
import type { JournalEntry } from '../../journal/journal.js';
import { MemoryPairStateStore } from '../../replication/pair-state.js';
import { MemoryApplyStateStore, type ApplyState } from '../../replication/apply-state.js';
import { MemoryStreamStore, type StreamState } from '../../replication/stream-file.js';
import { Primary, type PrimaryOptions } from '../../replication/primary.js';
import { createMirrorTarget, type MirrorTarget, type MirrorTargetOptions } from '../../replication/mirror-target.js';
import { MemoryDirtyBitmap } from '../../resync/dirty-bitmap.js';
import type { MemoryNetwork } from '../../transport/memory.js';
import type { TransportAddress } from '../../transport/transport.js';
import { SPARSE_ABOVE, type SimConfig } from './config.js';
import { PairStateStoreView, JournalView, ProcessFences, StoreView, TransportView, bitmapView } from './fences.js';
import type { Rng } from './rng.js';

/** Host names of the simulated topology. */
export const PRIMARY_HOST = 'primary';
export const TARGET_HOST = 'target';
/** Port the target listens on (stable across its restarts). */
export const TARGET_PORT = 7000;

/** How a running incarnation ends. */
export type StopKind = 'clean' | 'kill' | 'power-loss';

/** The durable state of one volume on the primary. */
export interface PrimaryVolumeDisk {
  device: CrashableMemoryDevice;
  /** Where its allocation map lives (used with `config.allocationMaps`). */
  allocation: MemoryFileSystem;
  journal: MemoryJournal;
  bitmap: MemoryDirtyBitmap;
  pairState: MemoryPairStateStore;
  /** Replication stream and seq reservation kept beside the journal (as `<volume>.stream`). */
  stream: MemoryStreamStore;
}

/** Timer settings shared by both nodes (small, so schedules are short). */
export const SIM_TIMERS = {
  heartbeatInterval: 50,
  staleAfter: 200,
  probation: 300,
  idleTimeout: 1000,
  handshakeTimeout: 500,
} as const;

/** What both node kinds need from the simulation. */
export interface NodeContext {
  config: SimConfig;
  clock: Clock;
  network: MemoryNetwork;
  rng: Rng;
  /** Device latency in ms per operation. */
  latency: () => number;
}

/**
 * The primary node. {@link start} runs a new incarnation of the real
 * {@link Primary} on the node's disk; {@link stop} ends it cleanly or as a
 * crash.
 */
export class PrimaryNode {
  readonly ctx: NodeContext;
  readonly disks = new Map<string, PrimaryVolumeDisk>();
  primary: Primary | undefined;
  incarnation = 0;
  readonly #fences = new ProcessFences();
  /** Told of every journal append of a running incarnation, with its volume. */
  onJournalAppend: ((volume: string, entry: JournalEntry) => void) | undefined;

  constructor(ctx: NodeContext) {
    this.ctx = ctx;
    for (const v of ctx.config.volumes) {
      this.disks.set(v.name, {
        device: new CrashableMemoryDevice(v.size, { blockSize: ctx.config.blockSize, clock: ctx.clock, latency: ctx.latency, sparse: v.size > SPARSE_ABOVE }),
        allocation: new MemoryFileSystem(),
        journal: new MemoryJournal({ capacityBytes: ctx.config.journalCapacity }),
        bitmap: new MemoryDirtyBitmap({ volumeSize: v.size, regionSize: ctx.config.regionSize }),
        pairState: new MemoryPairStateStore(),
        stream: new MemoryStreamStore(),
      });
    }
  }

  get running(): boolean {
    return this.primary !== undefined;
  }

  /** Options of the next incarnation (extend here when the core gains injection points). */
  options(transport: TransportView, devices: Map<string, BlockDevice>, stores: Map<string, PairStateStoreView>): PrimaryOptions {
    const c = this.ctx.config;
    return {
      peer: { host: TARGET_HOST, port: TARGET_PORT },
      nodeId: 'primary',
      transport,
      clock: this.ctx.clock,
      connections: c.connections,
      heartbeats: c.heartbeats,
      heartbeatBind: { host: PRIMARY_HOST, port: 0 },
      ...SIM_TIMERS,
      mirrorTimeout: 1000,
      // a CRC-32 of every resync payload of multi-GiB volumes costs seconds per schedule
      ...(c.volumes.some((v) => v.size > SPARSE_ABOVE) ? { payloadChecksum: false } : {}),
      retryDelay: { min: 10, max: 200 },
      maxInFlightPerConnection: c.maxInFlightPerConnection,
      outagePolicy: c.outagePolicy,
      maxAsyncLag: c.maxAsyncLag,
      maxBufferedBytes: c.maxBufferedBytes,
      limits: { maxPayloadLength: c.maxPayload },
      journal: { capacityBytes: c.journalCapacity },
      resync: { regionSize: c.regionSize, concurrency: c.resyncConcurrency },
      waitForConnection: false,
      volumes: c.volumes.map((v) => ({ name: v.name, mode: v.mode, device: devices.get(v.name)!, state: stores.get(v.name)!, initialSync: c.initialSync })),
    };
  }

  /**
   * Starts an incarnation. The journal, bitmap and stream are attached the way
   * `Primary.start()` attaches its file journal when `journal.dir` is set
   * (`useJournal`, `useBitmap`), because `PrimaryOptions` cannot inject them:
   * when it can, pass them in {@link options} instead.
   */
  async start(): Promise<Primary> {
    this.incarnation++;
    const transport = this.#fences.transport(this.ctx.network.transport({ host: PRIMARY_HOST }));
    const devices = new Map<string, BlockDevice>();
    const stores = new Map<string, PairStateStoreView>();
    for (const [name, disk] of this.disks) {
      const session = disk.device.session();
      const store = new PairStateStoreView(disk.pairState);
      this.#fences.hold(session, store);
      // a preloaded image was written without a map: "may hold data"
      devices.set(name, await tracked(this.ctx, this.#fences, session, disk.allocation, this.incarnation === 1 && !this.ctx.config.preloaded));
      stores.set(name, store);
    }
    const primary = new Primary(this.options(transport, devices, stores));
    for (const [name, disk] of this.disks) {
      const volume = primary.volume(name);
      const journal = new JournalView(disk.journal);
      journal.onAppend = (entry) => this.onJournalAppend?.(name, entry);
      const bitmap = bitmapView(disk.bitmap);
      this.#fences.hold(journal, bitmap);
      const streamStore = new StoreView<StreamState>(disk.stream);
      this.#fences.hold(streamStore);
      // as Primary.start() with a journal directory: continue the stored stream above its reservation
      const loaded = await streamStore.load();
      const stream = loaded === undefined ? { id: hexId(this.ctx.rng), reserved: 0, continued: false } : { id: loaded.stream, reserved: loaded.reserved, continued: true };
      await volume.useJournal(journal, stream, (through) => streamStore.save({ stream: stream.id, reserved: through }), true);
      volume.useBitmap(bitmap);
    }
    await primary.start(false);
    this.primary = primary;
    return primary;
  }

  /** Ends the running incarnation: `clean` closes it; `kill`/`power-loss` freeze it first (power loss also crashes the devices). */
  async stop(kind: StopKind): Promise<void> {
    const primary = this.primary;
    if (primary === undefined) return;
    this.primary = undefined;
    if (kind === 'clean') {
      await primary.close({ drain: true, timeout: 2000 });
      this.#fences.revoke();
      return;
    }
    this.#fences.revoke(kind === 'power-loss' ? (c) => this.ctx.network.linkOf(c)?.blackhole() : undefined);
    if (kind === 'power-loss') for (const disk of this.disks.values()) crashDisk(this.ctx, disk);
    // releases the dead incarnation's timers; everything it could touch is revoked
    void primary.close({ drain: false });
  }
}

/** The durable state of one volume on the target. */
export interface TargetVolumeDisk {
  device: CrashableMemoryDevice;
  /** Where its allocation map lives (used with `config.allocationMaps`). */
  allocation: MemoryFileSystem;
  pairState: MemoryPairStateStore;
  /** Durable apply state (stream, flushed watermark). */
  applyState: MemoryApplyStateStore;
}

/** The target node (see {@link PrimaryNode}). */
export class TargetNode {
  readonly ctx: NodeContext;
  readonly disks = new Map<string, TargetVolumeDisk>();
  target: MirrorTarget | undefined;
  incarnation = 0;
  readonly #fences = new ProcessFences();

  constructor(ctx: NodeContext) {
    this.ctx = ctx;
    for (const v of ctx.config.volumes) {
      this.disks.set(v.name, {
        device: new CrashableMemoryDevice(v.size, { blockSize: ctx.config.blockSize, clock: ctx.clock, latency: ctx.latency, sparse: v.size > SPARSE_ABOVE }),
        allocation: new MemoryFileSystem(),
        pairState: new MemoryPairStateStore(),
        applyState: new MemoryApplyStateStore(),
      });
    }
  }

  get address(): TransportAddress {
    return { host: TARGET_HOST, port: TARGET_PORT };
  }

  get running(): boolean {
    return this.target !== undefined;
  }

  /** Options of the next incarnation. */
  options(transport: TransportView, devices: Map<string, BlockDevice>, stores: Map<string, PairStateStoreView>, applied: Map<string, StoreView<ApplyState>>): MirrorTargetOptions {
    return {
      listen: this.address,
      nodeId: 'target',
      transport,
      clock: this.ctx.clock,
      heartbeats: this.ctx.config.heartbeats,
      ...SIM_TIMERS,
      volumes: this.ctx.config.volumes.map((v) => ({ name: v.name, device: devices.get(v.name)!, state: stores.get(v.name)!, applyState: applied.get(v.name)! })),
    };
  }

  async start(): Promise<MirrorTarget> {
    this.incarnation++;
    const transport = this.#fences.transport(this.ctx.network.transport({ host: TARGET_HOST }));
    const devices = new Map<string, BlockDevice>();
    const stores = new Map<string, PairStateStoreView>();
    for (const [name, disk] of this.disks) {
      const session = disk.device.session();
      const store = new PairStateStoreView(disk.pairState);
      this.#fences.hold(session, store);
      devices.set(name, await tracked(this.ctx, this.#fences, session, disk.allocation, this.incarnation === 1));
      stores.set(name, store);
    }
    const applied = new Map<string, StoreView<ApplyState>>();
    for (const [name, disk] of this.disks) {
      const view = new StoreView<ApplyState>(disk.applyState);
      this.#fences.hold(view);
      applied.set(name, view);
    }
    const target = await createMirrorTarget(this.options(transport, devices, stores, applied));
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
    this.#fences.revoke(kind === 'power-loss' ? (c) => this.ctx.network.linkOf(c)?.blackhole() : undefined);
    if (kind === 'power-loss') for (const disk of this.disks.values()) crashDisk(this.ctx, disk);
    void target.close();
  }
}

/**
 * The device an incarnation uses: the session itself, or (with
 * `config.allocationMaps`) the session behind its allocation map, kept on the
 * disk's own memory file system (`blank`: a first start on a never-written
 * device, whose map starts all-zero).
 */
async function tracked(ctx: NodeContext, fences: ProcessFences, session: DeviceSession, fs: MemoryFileSystem, blank: boolean): Promise<BlockDevice> {
  if (!ctx.config.allocationMaps) return session;
  const view = fs.view();
  fences.hold(view);
  return AllocationTrackingDevice.open(session, '/volume.allocation', { initial: blank ? 'zero' : 'data', fs: view });
}

/** A power loss of a volume's disk: its device and its allocation map file. */
function crashDisk(ctx: NodeContext, disk: { device: CrashableMemoryDevice; allocation: MemoryFileSystem }): void {
  disk.device.crash(ctx.rng.random);
  if (ctx.config.allocationMaps) disk.allocation.crash(ctx.rng.random);
}

function hexId(rng: Rng): string {
  let s = '';
  for (let i = 0; i < 16; i++) s += rng.int(0, 15).toString(16);
  return s;
}
