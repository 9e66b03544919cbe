/**
 * The mirror storage server side: accepts a primary's connections, checks the
 * handshake, writes the mirror requests to its devices in the primary's order
 * and answers each one with success or a coded failure.
 *
 * @module
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { EventEmitter } from 'eventemitter3';
import createDebug from 'debug';
import { BlockMirrorError, invalidArgument, toBlockMirrorError } from '../errors.js';
import { systemClock, wallClockIso, type Clock, type TimerHandle } from '../clock.js';
import type { BlockDevice } from '../device/block-device.js';
import { checkRange } from '../device/range.js';
import type { Transport, TransportAddress, TransportConnection, TransportServer } from '../transport/transport.js';
import { TcpTransport } from '../transport/tcp.js';
import { DEFAULT_CODEC_LIMITS, FrameFlag, MessageType, type CodecLimits, type Frame } from '../codec/frame.js';
import { parseFlush, parseHash, parseSkip, parseWrite, parseZero, type HelloHeader, type ReadyVolume, type VolumeOffer } from '../codec/messages.js';
import { FramedConnection } from '../link/framed-connection.js';
import { FEATURES, serverHandshake } from '../link/handshake.js';
import { CYCLE_FEATURE, CycleHost, type CycleVolumeStatus } from '../cycle/cycle-host.js';
import type { StagingStoreHooks } from '../cycle/staging-store.js';
import { ConnectionArray } from '../link/connection-array.js';
import { LinkMonitor, type LinkState, type LinkTransitionReason } from '../link/link-monitor.js';
import { agreeHeartbeats, type HeartbeatSettings } from '../link/heartbeat-settings.js';
import { persistentNodeId } from '../storage/node-id.js';
import { IdleWatch } from '../link/idle-watch.js';
import { preAuthLimits } from '../link/pre-auth.js';
import { heartbeatKeyOf } from '../link/session-key.js';
import { DatagramDemux } from '../link/datagram-demux.js';
import { HeartbeatReplayGuard, encodeHeartbeat, verifyHeartbeat } from '../link/heartbeat.js';
import { ApplyOrder } from './apply-order.js';
import { FileApplyStateStore, MemoryApplyStateStore, type ApplyStateStore } from './apply-state.js';
import { decideClaim, type ClaimDecision, type ClaimView } from './claim-decision.js';
import { advanceGeneration, type GenerationState } from './generation.js';
import { FilePairStateStore, MemoryPairStateStore, type BitmapOwner, type DiskState, type PairRole, type PairState, type PairStateStore, type Resolution } from './pair-state.js';
import type { FailbackBitmap } from './claim-decision.js';
import { MAX_FAILBACK_RANGES } from '../codec/messages.js';
import { dirtyRanges, readBitmapRanges } from '../resync/file-dirty-bitmap.js';
import type { DirtyBitmap } from '../resync/dirty-bitmap.js';
import { unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { hashRegion, type RegionHashAlgorithm } from '../resync/region-hash.js';
import { checkAddress } from '../transport/address.js';
import { checkVolumeName, nonNegativeInt, positiveInt, secretBytes } from './options.js';
import { zeroWhereData } from '../device/zero.js';

const log = createDebug('blockmirror:target');

/** A volume the target hosts. */
export interface TargetVolumeConfig {
  name: string;
  device: BlockDevice;
  /**
   * Where the volume's pairing state is kept: the lineage (generation ids) of
   * the data it holds, its disk state and when it was last in sync (default:
   * `<stateDir>/<name>.state` with the target's `stateDir`, else in memory —
   * the volume then counts as never paired at every start, and the first
   * primary gets an initial sync).
   */
  state?: PairStateStore;
  /**
   * Where the volume's durable apply state (stream and flushed watermark) is
   * kept (default: `<stateDir>/<name>.apply` with the target's `stateDir`,
   * else in memory). With a durable store a restarted target never applies an
   * older resent write over a newer one.
   */
  applyState?: ApplyStateStore;
  /**
   * The write-intent bitmap a primary kept for this image, for a failback
   * (this node was the volume's primary and rejoins as the mirror of the
   * node that took over): a file path (default `<stateDir>/<name>.bitmap`
   * with the target's `stateDir`) or a {@link DirtyBitmap}. Read at start
   * (a file without changing it) and offered to the claiming primary when
   * the pairing state says whose it is (`PairState.bitmapOf`: kept against
   * that node, of a generation in its lineage): the primary then resyncs
   * its regions plus its own changes instead of the whole volume. Removed
   * (a file) or cleared (a bitmap) once the image is up-to-date again.
   */
  bitmap?: string | DirtyBitmap;
}

/**
 * What a target does when a primary's generation does not descend from the
 * target volume's (split brain, or the target was written since):
 * - `refuse` (default): the connection is refused with `BM_ERR_SPLIT_BRAIN`; nothing is overwritten.
 * - `discard-target`: the target's own changes are discarded: the primary resyncs the whole volume.
 * - `discard-younger`: the side whose current generation was created later loses; when
 *   that is the primary, the connection is refused (resolve by hand: this library
 *   resyncs from primary to target only).
 */
export type SplitBrainPolicy = 'refuse' | 'discard-target' | 'discard-younger';

/** Options of {@link createMirrorTarget}. */
export interface MirrorTargetOptions {
  /** Where to listen (port 0: any free port; see `target.address`). */
  listen: TransportAddress;
  volumes: TargetVolumeConfig[];
  /** Transport (default: a new {@link TcpTransport}). */
  transport?: Transport;
  /** Shared secret: every connection must prove it (HMAC-SHA256 challenge–response). */
  secret?: string | Uint8Array;
  /**
   * Node id. Default: with `stateDir`, the id kept in `<stateDir>/node-id`
   * (generated once, the same after every restart); without, a random one.
   */
  nodeId?: string;
  clock?: Clock;
  limits?: Partial<CodecLimits>;
  /**
   * Handshake timeout in ms (default 10000): a connection that has not
   * authenticated and been accepted by then is closed
   * (`BM_ERR_HANDSHAKE_TIMEOUT`). Until it has, a connection may send frames
   * with headers of at most 64 KiB and no payload (bounded pre-auth
   * buffering: a larger frame closes it with `BM_ERR_FRAME_TOO_LARGE` or
   * `BM_ERR_HEADER_TOO_LARGE` before anything is buffered).
   */
  handshakeTimeout?: number;
  /**
   * Connections still in the handshake (not yet authenticated) at once
   * (default 64): one more is closed at once with
   * `BM_ERR_TOO_MANY_CONNECTIONS` (a `connection-error`), the others are
   * unaffected.
   */
  maxUnauthenticated?: number;
  /**
   * Primary sessions (and cycle sources) at once (default 64): the handshake
   * of a new session beyond it is refused with `BM_ERR_TOO_MANY_CONNECTIONS`
   * before anything is claimed.
   */
  maxSessions?: number;
  /** Requests applied concurrently per connection before reading pauses (default 128). */
  maxInFlightPerConnection?: number;
  /**
   * UDP heartbeats on the listening port number, towards each primary that
   * sends them (default: on when the transport has datagrams). Signed with
   * `secret` when given; over TLS without one, with a key derived from the
   * TLS session of the primary's connection 0 — kept across an outage,
   * replaced by its next handshake —, and none is sent or accepted unsigned
   * (before that handshake, nothing).
   */
  heartbeats?: boolean;
  /**
   * Milliseconds between heartbeats (default 1500), towards a primary that
   * does not announce its own: a primary that does (every primary of this
   * version) governs its session — the target sends at the primary's interval
   * and judges it by the primary's stale time.
   */
  heartbeatInterval?: number;
  /** A primary's link is down after this many milliseconds without its heartbeat (default 4000; a primary's announced stale time takes precedence, see `heartbeatInterval`). */
  staleAfter?: number;
  /** Heartbeats must flow this long without a gap before a primary's link counts as healthy again (default 10000). */
  probation?: number;
  /** A connection idle this long checks its slot and exits if it was closed (T3, default 5000). */
  idleTimeout?: number;
  /** See {@link SplitBrainPolicy} (default `refuse`). */
  splitBrain?: SplitBrainPolicy;
  /**
   * Directory (must exist) for each volume's durable state: pairing state
   * (`<name>.state`: generations, disk state) and apply state
   * (`<name>.apply`), unless a volume brings its own stores. Without it both
   * live in memory: a restarted target then counts its volumes as never
   * paired (blank).
   */
  stateDir?: string;
  /**
   * Also receive freeze/copy cycles (a cycle source, `blockmirror primary
   * --mode cycle`) on the same port. `dir` (must exist) holds the cycle
   * state, staging files and commit markers; at start an interrupted merge
   * is replayed there, so each volume holds one complete freeze image. A
   * volume is written by one kind of source at a time: while a primary
   * mirrors into it per write, a cycle source is refused with
   * `BM_ERR_VOLUME_BUSY`, and the other way round; a volume holding the
   * other kind's data (a cycle image, or a primary's generation) refuses the
   * newcomer with `BM_ERR_SPLIT_BRAIN` unless `splitBrain` is
   * `discard-target`. Without this option cycle sources are refused with
   * `BM_ERR_NOT_SUPPORTED`.
   */
  cycle?: { dir: string; maxInFlight?: number; maxPendingTransfers?: number; hooks?: StagingStoreHooks };
}

/** Plain-object status of a target volume. */
export interface TargetVolumeStatus {
  name: string;
  size: number;
  blockSize: number;
  /** Node id of the primary mirroring into it, if any. */
  primary: string | undefined;
  /** Open connections of that primary. */
  connections: number;
  /** Every seq ≤ appliedSeq of the current session is applied. */
  appliedSeq: number;
  /** Generation id of the data the volume holds (undefined: blank). */
  generation: string | undefined;
  /** Disk state of this image (`unknown`: never paired; `inconsistent`: a sync into it runs or was interrupted). */
  disk: DiskState;
  /** Disk state of the primary's image as far as this target knows (`up-to-date` while one is connected, `diverged` after a split-brain refusal, else `unknown`). */
  peerDisk: DiskState;
  /** The image is up-to-date and its primary connected. */
  inSync: boolean;
  /** When the pair was last known in sync (ISO 8601 wall-clock time; now while in sync; absent: never). */
  lastInSyncAt?: string;
  /** Progress of a sync into this image, as the primary last reported it (absent: none running). */
  sync?: { done: number; total: number; percent: number };
  appliedWrites: number;
  bytesWritten: number;
  errors: number;
  /** With the `cycle` option: the freeze image the volume holds and its cycle source. */
  cycle?: CycleVolumeStatus;
  /** `target`, or `promoted` once {@link MirrorTarget.promote} made it a primary's image (restart the node as a primary to serve it, or serve it in place after {@link MirrorTarget.release}). */
  role: 'target' | 'promoted';
  /** Set once {@link MirrorTarget.release} handed the promoted volume's device over: this target no longer writes it or its pairing state. */
  released?: boolean;
  /** An owed split-brain decision (`discard-local`) the next claim applies. */
  resolution?: Resolution;
  /** Its primary handed the volume over (demoted): it may be promoted without force. */
  handedOver?: boolean;
  /**
   * Failback (this image was a primary's): the write-intent bitmap it kept
   * as a primary and offers to the claiming primary — `regions` dirty
   * regions, of `generation`, kept against node `peer`; `owed` once a claim
   * accepted it (kept until the image is up-to-date again). Absent: none.
   */
  failback?: { generation: string; peer: string; regions: number; owed: boolean };
}

/** One peer in {@link MirrorTargetStatus.peers}. */
export interface MirrorTargetPeerStatus {
  /** Host of the primary (cycle source: `host:port`). */
  address: string;
  node: string;
  session: string;
  /** Follows the primary's heartbeats; without heartbeats `up` while a connection is open, else `down`. */
  link: LinkState;
  /** Open connections. */
  connections: number;
  /** Wall-clock time (ISO 8601) the primary was last heard from: a heartbeat, a handshake or a closing connection. */
  lastSeenAt?: string;
  /** The heartbeat interval used towards this primary, agreed in the handshake (its own). */
  heartbeatIntervalMs?: number;
  /** The stale time this primary's heartbeats are judged by, agreed in the handshake (its own). */
  staleAfterMs?: number;
  mode?: 'cycle';
}

/** Plain-object status of a {@link MirrorTarget}. */
export interface MirrorTargetStatus {
  role: 'target';
  node: string;
  address: string;
  /**
   * One entry per primary session that is connected, still heard from (its
   * heartbeats arrive) or the owner of a volume; a session that is gone
   * (no connection, no heartbeat for its stale time) and owns nothing is
   * forgotten. Plus one per connected cycle source (`mode: 'cycle'`).
   */
  peers: MirrorTargetPeerStatus[];
  volumes: Record<string, TargetVolumeStatus>;
}

/** Why a primary's handshake was refused (see {@link MirrorTargetEvents.refused}). */
export interface RefusedPeerInfo {
  /** Where the connection came from. */
  address: TransportAddress;
  /** The node id the peer announced (undefined when it sent no valid HELLO; before authentication it is only a claim). */
  node: string | undefined;
  /** The refusal: `BM_ERR_VOLUME_BUSY`, `BM_ERR_VOLUME_MISMATCH`, `BM_ERR_SPLIT_BRAIN`, `BM_ERR_AUTH_FAILED`, `BM_ERR_SETTINGS_MISMATCH`, … */
  error: BlockMirrorError;
}

/** Events of a {@link MirrorTarget}. */
export interface MirrorTargetEvents {
  /** A primary's connection completed the handshake. */
  connection: [info: { node: string; session: string; slot: number; address: TransportAddress }];
  /**
   * A primary claimed a volume whose image may hold writes it lacks (a
   * former primary's image, failback): `bitmap` when this image's
   * write-intent bitmap was offered (`regions` dirty regions: the primary
   * resyncs those plus its own changes), else `checksum` and why (the
   * primary compares the whole volume).
   */
  failback: [info: { volume: string; node: string; method: 'bitmap'; regions: number } | { volume: string; node: string; method: 'checksum'; reason: string }];
  /** A volume's disk state changed (recorded in its pair state before this is emitted). */
  'disk-state': [info: { volume: string; disk: DiskState; previous: DiskState }];
  /** A connection failed the handshake or was closed for a protocol error. */
  'connection-error': [error: BlockMirrorError, address: TransportAddress];
  /** A primary's (or cycle source's) handshake failed or was refused; nothing was claimed. */
  refused: [info: RefusedPeerInfo];
  /** A primary session's link state changed (its heartbeats, or its connections). */
  'peer-link': [info: { node: string; session: string; address: string; state: LinkState; previous: LinkState; reason: LinkTransitionReason }];
  /** The last open connection of a primary session closed (`error`: why, when it was not a clean close). */
  'peer-disconnected': [info: { node: string; session: string; address: string; error?: BlockMirrorError }];
  /** A primary session that is gone and owns no volume was dropped from the peer list. */
  'peer-forgotten': [info: { node: string; session: string; address: string }];
  /** Writing a mirror request to the device failed (the primary is told and retries). */
  'write-error': [info: { volume: string; seq: number; error: BlockMirrorError }];
  /** With the `cycle` option: the volumes hold freeze `to` of a cycle source (durably). */
  'cycle-committed': [info: { source: string; to: number; volumes: string[]; bytes: number }];
  /** With the `cycle` option: a cycle transfer was refused or failed; the images kept their freeze. */
  'cycle-error': [info: { source: string; to: number; error: BlockMirrorError }];
}

/** A volume hosted by a target; read-only for everyone but its primary. */
export class TargetVolume {
  readonly name: string;
  readonly device: BlockDevice;
  /** @internal */ owner: { node: string; session: string } | undefined;
  /** Replication stream the ordering state belongs to. @internal */ stream: string | undefined;
  /** @internal */ connections = 0;
  /** @internal */ order = new ApplyOrder();
  /** @internal */ appliedWrites = 0;
  /** @internal */ bytesWritten = 0;
  /** @internal */ errors = 0;
  /** @internal */ generations: GenerationState | undefined;
  /** Disk state of the image. @internal */ disk: DiskState = 'unknown';
  /** Epoch ms when the pair was last known in sync. @internal */ lastInSync: number | undefined;
  /** Highest seq of the stream whose resync write started applying (a later `up-to-date` flush below it is void). @internal */ resyncSeq = 0;
  /** Sync progress last reported by the primary. @internal */ syncProgress: { done: number; total: number } | undefined;
  /** The last primary refused as split brain (until one is accepted). @internal */ diverged = false;
  /** Role that last served the image, as stored (see {@link PairState.role}). @internal */ role: PairRole | undefined;
  /** The operator's owed split-brain decision (`discard-local`), applied at the next claim. @internal */ resolution: Resolution | undefined;
  /** The primary handed the volume over (demoted, up-to-date). @internal */ handedOver = false;
  /** Promoted in this run: no primary may claim it any more. @internal */ promoted = false;
  /** Released after its promotion (see {@link MirrorTarget.release}): its device and pairing state are someone else's now. @internal */ released = false;
  /** @internal */ readonly store: PairStateStore;
  /** @internal */ readonly applyStore: ApplyStateStore;
  /** @internal */ onDisk: ((disk: DiskState, previous: DiskState) => void) | undefined;
  #saving: Promise<void> = Promise.resolve();
  /** Watermark of `stream` that is flushed and recorded in `applyStore`. @internal */ durable = 0;
  #persisting: Promise<void> = Promise.resolve();
  /** Receives cycles into this volume (the target's `cycle` option). @internal */ cycle: CycleHost | undefined;
  /** Whose write-intent bitmap beside the pairing state is, as stored (see {@link PairState.bitmapOf}). @internal */ bitmapOf: BitmapOwner | undefined;
  /** The failback bitmap read at start (undefined: none usable). @internal */ failback: FailbackBitmap | undefined;
  /** Why no failback bitmap could be read (logs). @internal */ failbackMissing: string | undefined;
  /** Where the failback bitmap is (see {@link TargetVolumeConfig.bitmap}; undefined: nowhere). @internal */ bitmapSource: string | DirtyBitmap | undefined;

  /** @internal */
  constructor(name: string, device: BlockDevice, store: PairStateStore, applyStore: ApplyStateStore) {
    this.name = name;
    this.device = device;
    this.store = store;
    this.applyStore = applyStore;
  }

  /**
   * Loads the durable state (at start); with `maxRanges`, the failback
   * bitmap too (read only, see {@link PairState.bitmapOf}). @internal
   */
  async load(maxRanges = 0): Promise<void> {
    const pair = await this.store.load();
    if (pair !== undefined) {
      this.generations = pair.generations;
      this.disk = pair.disk;
      this.lastInSync = pair.lastInSync;
      this.role = pair.role;
      this.resolution = pair.resolution;
      this.handedOver = pair.handedOver === true;
      this.bitmapOf = pair.bitmapOf;
    }
    const source = this.bitmapSource;
    if (this.bitmapOf !== undefined && source !== undefined && maxRanges > 0) {
      const read =
        typeof source === 'string'
          ? await readBitmapRanges(source, { volumeSize: this.device.size, maxRanges })
          : source.volumeSize === this.device.size
            ? { ok: true as const, regions: source.dirtyCount, ranges: dirtyRanges(source, maxRanges) }
            : { ok: false as const, reason: `the bitmap is for ${source.volumeSize} bytes, not ${this.device.size}` };
      if (read.ok) this.failback = { generation: this.bitmapOf.generation, peer: this.bitmapOf.peer, ranges: read.ranges, regions: read.regions, owed: this.role === 'target' };
      else this.failbackMissing = read.reason;
    } else if (this.role === 'primary') {
      this.failbackMissing = source === undefined ? 'no state directory' : 'no write-intent bitmap recorded (a journal directory, or a primary of an older version)';
    }
    const applied = await this.applyStore.load();
    if (applied !== undefined) {
      this.stream = applied.stream;
      this.order = new ApplyOrder(applied.applied);
      this.durable = applied.applied;
    }
  }

  /**
   * Flushes the device and records the stream's watermark as durable: every
   * request ≤ the returned watermark is on stable storage. @internal
   */
  flushDurable(): Promise<number> {
    const stream = this.stream;
    const order = this.order;
    const watermark = order.watermark;
    const run = this.#persisting.then(async () => {
      await this.device.flush();
      if (stream === undefined || stream !== this.stream || order !== this.order || watermark <= this.durable) return;
      await this.applyStore.save({ stream, applied: watermark });
      this.durable = watermark;
    });
    this.#persisting = run.catch(() => undefined);
    return run.then(() => (order === this.order ? this.durable : watermark));
  }

  /**
   * Records the pairing state (after `change` updated the fields in memory);
   * saves run one at a time, each writing the latest state. @internal
   */
  savePair(change?: () => void): Promise<void> {
    // released: the pairing state belongs to the volume's new primary, which may be writing it
    if (this.released) return Promise.resolve();
    const previous = this.disk;
    change?.();
    if (this.disk !== previous && previous === 'up-to-date' && this.connections > 0) this.lastInSync = Date.now();
    if (this.disk === 'up-to-date') this.syncProgress = undefined;
    const run = this.#saving.then(() => this.store.save(this.#pairState()));
    this.#saving = run.catch(() => undefined);
    if (this.disk !== previous) {
      const disk = this.disk;
      void run.then(() => this.onDisk?.(disk, previous), () => undefined);
    }
    return run;
  }

  /** Resolves once every pairing-state save started so far has ended. @internal */
  pairSaved(): Promise<void> {
    return this.#saving;
  }

  #pairState(): PairState {
    const s: PairState = { disk: this.disk, peer: this.connections > 0 ? 'up-to-date' : 'unknown' };
    if (this.generations !== undefined) s.generations = this.generations;
    if (this.lastInSync !== undefined) s.lastInSync = this.lastInSync;
    if (this.role !== undefined) s.role = this.role;
    if (this.resolution !== undefined) s.resolution = this.resolution;
    if (this.handedOver) s.handedOver = true;
    if (this.bitmapOf !== undefined) s.bitmapOf = this.bitmapOf;
    return s;
  }

  /**
   * The failback bitmap is no longer needed (the image is up-to-date, or a
   * claim made it meaningless; forgotten in the pairing state before): the
   * file is removed, a bitmap cleared. @internal
   */
  async removeFailbackBitmap(): Promise<void> {
    const source = this.bitmapSource;
    if (source === undefined || this.released) return;
    try {
      if (typeof source === 'string') await unlink(source);
      else source.clearAll();
    } catch (error) {
      // harmless: the pairing state no longer names it, so it is never offered again
      log('volume %s: failback bitmap not removed: %s', this.name, (error as Error).message);
    }
  }

  /** The image becomes `inconsistent` (durably) before a resync write changes it. @internal */
  beforeResyncWrite(seq: number): Promise<void> | undefined {
    if (seq > this.resyncSeq) this.resyncSeq = seq;
    if (this.disk === 'inconsistent') return this.#inconsistent;
    this.#inconsistent = this.savePair(() => {
      this.disk = 'inconsistent';
    });
    return this.#inconsistent;
  }

  #inconsistent: Promise<void> | undefined;

  /**
   * A flush ordered after every seq ≤ `bar` said the image is up-to-date:
   * recorded unless a resync write above `bar` started meanwhile. @internal
   */
  async upToDate(bar: number, handover = false): Promise<void> {
    if (this.resyncSeq > bar) return;
    if (this.disk === 'up-to-date' && (!handover || this.handedOver)) return;
    const failback = this.bitmapOf !== undefined;
    await this.savePair(() => {
      this.disk = 'up-to-date';
      this.lastInSync = Date.now();
      if (handover) this.handedOver = true;
      // the image is the primary's again: the failback bitmap has served
      this.bitmapOf = undefined;
      this.failback = undefined;
    });
    if (failback) await this.removeFailbackBitmap();
  }

  /** The primary's last connection of this volume closed: the time of the last sync is now. @internal */
  disconnected(): void {
    if (this.connections > 0 || this.disk !== 'up-to-date') return;
    void this.savePair(() => {
      this.lastInSync = Date.now();
    }).catch((error: unknown) => log('volume %s: pair state not recorded: %s', this.name, (error as Error).message));
  }

  get size(): number {
    return this.device.size;
  }

  get blockSize(): number {
    return this.device.blockSize;
  }

  /** Reads the mirror image (while a cycle merges into it, after the merge: never a half-merged image). */
  async read(offset: number, length: number): Promise<Buffer> {
    if (this.cycle !== undefined) {
      checkRange(this.device, offset, length);
      // one complete freeze image: waits for a running or failed merge, and a merge waits for reads in flight
      return this.cycle.read(this.name, offset, length);
    }
    return this.device.read(offset, length);
  }

  /** Always refused: a target volume is written only by its primary. */
  async write(): Promise<never> {
    throw new BlockMirrorError('BM_ERR_READ_ONLY', `volume ${this.name} is a mirror target: only its primary writes it`);
  }

  status(): TargetVolumeStatus {
    const inSync = this.disk === 'up-to-date' && this.connections > 0;
    const s: TargetVolumeStatus = {
      name: this.name,
      size: this.device.size,
      blockSize: this.device.blockSize,
      primary: this.owner?.node,
      connections: this.connections,
      appliedSeq: this.order.watermark,
      generation: this.generations?.current,
      disk: this.disk,
      peerDisk: this.connections > 0 ? 'up-to-date' : this.diverged ? 'diverged' : 'unknown',
      role: this.promoted ? 'promoted' : 'target',
      ...(this.released ? { released: true } : {}),
      inSync,
      appliedWrites: this.appliedWrites,
      bytesWritten: this.bytesWritten,
      errors: this.errors,
      ...(this.cycle === undefined ? {} : { cycle: this.cycle.volumeStatus(this.name) }),
    };
    const last = inSync ? Date.now() : this.lastInSync;
    if (last !== undefined) s.lastInSyncAt = new Date(last).toISOString();
    if (this.resolution !== undefined) s.resolution = this.resolution;
    if (this.handedOver) s.handedOver = true;
    if (this.failback !== undefined) s.failback = { generation: this.failback.generation, peer: this.failback.peer, regions: this.failback.regions, owed: this.failback.owed };
    const p = this.syncProgress;
    if (p !== undefined && this.disk !== 'up-to-date') s.sync = { done: p.done, total: p.total, percent: p.total === 0 ? 100 : Math.min(100, Math.floor((p.done * 1000) / p.total) / 10) };
    return s;
  }
}

/** One connection of a primary, after its handshake. */
interface Handler {
  conn: FramedConnection;
  hello: HelloHeader;
  volumes: TargetVolume[];
  pending: number;
  /** Requests waiting for older ones (not counted in `pending`). */
  waiting: number;
  paused: boolean;
}

/** A primary session: its connection array and link monitor. */
interface PeerLink {
  node: string;
  session: string;
  host: string;
  slots: ConnectionArray;
  monitor: LinkMonitor | undefined;
  view: { close(): Promise<void> } | undefined;
  /** The heartbeat settings agreed for this session (undefined: it sends no heartbeats). */
  heartbeats: HeartbeatSettings | undefined;
  /** Clock time the primary was last heard from on a connection (handshake, close); heartbeats count through the monitor. */
  lastSeen: number;
  /** Pending check whether the session is gone (see `#forgetLater`). */
  forgetTimer: TimerHandle | undefined;
}

/** A mirror target: see {@link createMirrorTarget}. */
export class MirrorTarget extends EventEmitter<MirrorTargetEvents> {
  #nodeId: string;
  readonly #nodeIdGiven: boolean;
  readonly #stateDir: string | undefined;
  readonly #transport: Transport;
  readonly #listen: TransportAddress;
  readonly #clock: Clock;
  readonly #secret: Uint8Array | undefined;
  readonly #limits: CodecLimits;
  readonly #handshakeTimeout: number;
  readonly #maxUnauthenticated: number;
  readonly #maxSessions: number;
  #unauthenticated = 0;
  /** Connections refused by `maxUnauthenticated`, since creation. */
  refusedConnections = 0;
  readonly #maxInFlight: number;
  readonly #volumes = new Map<string, TargetVolume>();
  readonly #handlers = new Set<Handler>();
  readonly #peers = new Map<string, PeerLink>();
  readonly #heartbeats: boolean;
  readonly #monitorOptions: { heartbeatInterval: number; staleAfter: number; probation: number };
  readonly #idleTimeout: number;
  #demux: DatagramDemux | undefined;
  readonly #splitBrain: SplitBrainPolicy;
  /**
   * Replays of the current session of a primary are refused, but no session
   * is retired for good: a late datagram of a primary's previous run (UDP
   * reorders) arriving after its new run's first heartbeat must not silence
   * the new run forever (it would never be answered, and a primary with
   * heartbeats waits for ours before it reconnects).
   */
  readonly #answerGuard = new HeartbeatReplayGuard({ maxRetiredSessions: 0 });
  readonly #answerSession = randomUUID();
  #answerSeq = 0;
  readonly #connections = new Set<FramedConnection>();
  /** Connections of cycle sources (each counts as a session, see `maxSessions`). */
  readonly #cycleConnections = new Set<FramedConnection>();
  readonly #cycleOptions: MirrorTargetOptions['cycle'];
  #cycle: CycleHost | undefined;
  #server: TransportServer | undefined;
  #claiming: Promise<void> = Promise.resolve();
  #closed = false;

  /** @internal use {@link createMirrorTarget} */
  constructor(options: MirrorTargetOptions) {
    super();
    if (options === null || typeof options !== 'object') throw invalidArgument('options must be an object');
    this.#listen = checkAddress(options.listen, 'listen');
    this.#transport = options.transport ?? new TcpTransport();
    this.#clock = options.clock ?? systemClock;
    this.#secret = secretBytes(options.secret);
    this.#limits = { ...DEFAULT_CODEC_LIMITS, ...options.limits };
    this.#handshakeTimeout = positiveInt(options.handshakeTimeout ?? 10000, 'handshakeTimeout');
    this.#maxInFlight = positiveInt(options.maxInFlightPerConnection ?? 128, 'maxInFlightPerConnection', 65536);
    this.#maxUnauthenticated = positiveInt(options.maxUnauthenticated ?? 64, 'maxUnauthenticated', 1_000_000);
    this.#maxSessions = positiveInt(options.maxSessions ?? 64, 'maxSessions', 1_000_000);
    if (options.nodeId !== undefined && (typeof options.nodeId !== 'string' || options.nodeId === '' || options.nodeId.length > 256)) {
      throw invalidArgument('nodeId must be a string of 1..256 characters');
    }
    this.#nodeIdGiven = options.nodeId !== undefined;
    this.#nodeId = options.nodeId ?? `target-${randomBytes(4).toString('hex')}`;
    this.#heartbeats = options.heartbeats ?? (this.#transport.supports.datagram && this.#transport.bindDatagram !== undefined);
    if (this.#heartbeats && this.#transport.bindDatagram === undefined) throw invalidArgument('heartbeats need a transport with datagrams');
    this.#monitorOptions = {
      heartbeatInterval: positiveInt(options.heartbeatInterval ?? 1500, 'heartbeatInterval'),
      staleAfter: positiveInt(options.staleAfter ?? 4000, 'staleAfter'),
      probation: nonNegativeInt(options.probation ?? 10000, 'probation'),
    };
    this.#idleTimeout = positiveInt(options.idleTimeout ?? 5000, 'idleTimeout');
    const policy = options.splitBrain ?? 'refuse';
    if (!['refuse', 'discard-target', 'discard-younger'].includes(policy)) throw invalidArgument('splitBrain must be refuse, discard-target or discard-younger');
    this.#splitBrain = policy;
    if (options.stateDir !== undefined && (typeof options.stateDir !== 'string' || options.stateDir === '')) throw invalidArgument('stateDir must be a non-empty string');
    this.#stateDir = options.stateDir;
    if (options.cycle !== undefined && (options.cycle === null || typeof options.cycle !== 'object' || typeof options.cycle.dir !== 'string' || options.cycle.dir === '')) {
      throw invalidArgument('cycle.dir must be a non-empty string');
    }
    this.#cycleOptions = options.cycle;
    if (!Array.isArray(options.volumes)) throw invalidArgument('volumes must be an array');
    for (const cfg of options.volumes) {
      if (cfg === null || typeof cfg !== 'object') throw invalidArgument('each volume must be an object');
      checkVolumeName(cfg.name);
      if (this.#volumes.has(cfg.name)) throw invalidArgument(`volume ${cfg.name} is listed twice`);
      if (cfg.device === null || typeof cfg.device !== 'object' || typeof cfg.device.write !== 'function') {
        throw invalidArgument(`volume ${cfg.name}: device must be a BlockDevice`);
      }
      const dir = options.stateDir;
      this.#volumes.set(
        cfg.name,
        new TargetVolume(
          cfg.name,
          cfg.device,
          cfg.state ?? (dir === undefined ? new MemoryPairStateStore() : new FilePairStateStore(join(dir, `${cfg.name}.state`))),
          cfg.applyState ?? (dir === undefined ? new MemoryApplyStateStore() : new FileApplyStateStore(join(dir, `${cfg.name}.apply`))),
        ),
      );
    }
    for (const v of this.#volumes.values()) {
      v.onDisk = (disk, previous) => this.emit('disk-state', { volume: v.name, disk, previous });
      // the write-intent bitmap a primary kept in this state directory (failback: see PairState.bitmapOf)
      const cfg = options.volumes.find((c) => c.name === v.name)!;
      if (cfg.bitmap !== undefined) {
        if (typeof cfg.bitmap !== 'string' && (cfg.bitmap === null || typeof cfg.bitmap !== 'object' || typeof cfg.bitmap.nextDirty !== 'function')) {
          throw invalidArgument(`volume ${v.name}: bitmap must be a file path or a DirtyBitmap`);
        }
        if (cfg.bitmap === '') throw invalidArgument(`volume ${v.name}: bitmap must be a non-empty path`);
        v.bitmapSource = cfg.bitmap;
      } else if (options.stateDir !== undefined) v.bitmapSource = join(options.stateDir, `${v.name}.bitmap`);
    }
  }

  /** This node's id (with `stateDir` and no `nodeId` option: the persistent one, once `createMirrorTarget` resolved). */
  get nodeId(): string {
    return this.#nodeId;
  }

  /** The bound address (after `createMirrorTarget` resolved). */
  get address(): TransportAddress {
    if (this.#server === undefined) throw new BlockMirrorError('BM_ERR_CLOSED', 'the target is not listening');
    return this.#server.address;
  }

  /** The hosted volume called `name`; throws `BM_ERR_UNKNOWN_VOLUME`. */
  volume(name: string): TargetVolume {
    const v = this.#volumes.get(name);
    if (v === undefined) throw new BlockMirrorError('BM_ERR_UNKNOWN_VOLUME', `no volume named ${JSON.stringify(name)}`);
    return v;
  }

  /** All hosted volumes. */
  get volumes(): TargetVolume[] {
    return [...this.#volumes.values()];
  }

  /** @internal called by {@link createMirrorTarget} */
  async start(): Promise<void> {
    if (!this.#nodeIdGiven && this.#stateDir !== undefined) this.#nodeId = await persistentNodeId(this.#stateDir, 'target');
    // every READY stays within its header limit: the failback ranges of all volumes share one budget
    const perVolume = this.#volumes.size > MAX_FAILBACK_RANGES ? 0 : Math.floor(MAX_FAILBACK_RANGES / this.#volumes.size);
    for (const v of this.#volumes.values()) await v.load(perVolume);
    if (this.#cycleOptions !== undefined) await this.#openCycleHost(this.#cycleOptions);
    try {
      this.#server = await this.#transport.listen(this.#listen);
    } catch (error) {
      await this.#cycle?.close();
      throw error;
    }
    this.#server.on('connection', (raw) => void this.#accept(raw));
    this.#server.on('error', (error) => log('listener error: %s', error.message));
    if (this.#heartbeats) {
      try {
        const channel = await this.#transport.bindDatagram!({ host: this.#listen.host, port: this.#server.address.port });
        channel.on('error', (error) => log('heartbeat socket error: %s', error.message));
        this.#demux = new DatagramDemux(channel, (data, from) => this.#answerUnknown(data, from));
      } catch (error) {
        await this.#server.close();
        await this.#cycle?.close();
        throw toBlockMirrorError(error);
      }
    }
    log('listening on %o', this.#server.address);
  }

  async #accept(raw: TransportConnection): Promise<void> {
    if (this.#closed) {
      raw.destroy();
      return;
    }
    if (this.#unauthenticated >= this.#maxUnauthenticated) {
      this.refusedConnections++;
      raw.destroy();
      this.emit(
        'connection-error',
        new BlockMirrorError('BM_ERR_TOO_MANY_CONNECTIONS', `${this.#maxUnauthenticated} connections are in the handshake; refused`, {
          details: { limit: this.#maxUnauthenticated },
        }),
        raw.remoteAddress,
      );
      return;
    }
    // bounded pre-auth buffering: handshake frames carry no payload
    const conn = new FramedConnection(raw, { limits: preAuthLimits(this.#limits) });
    this.#connections.add(conn);
    conn.once('close', () => this.#connections.delete(conn));
    this.#unauthenticated++;
    let counted = true;
    const authenticated = (): void => {
      if (!counted) return;
      counted = false;
      this.#unauthenticated--;
    };
    let claimed: TargetVolume[] = [];
    let cycleSource = false;
    let announced: string | undefined;
    try {
      const result = await serverHandshake(conn, {
        nodeId: this.nodeId,
        secret: this.#secret,
        timeout: this.#handshakeTimeout,
        clock: this.#clock,
        features: this.#cycle === undefined ? FEATURES : [...FEATURES, CYCLE_FEATURE],
        onHello: (hello) => {
          announced = hello.node;
        },
        heartbeats: (hello) =>
          agreeHeartbeats(
            hello.hbi === undefined || hello.hbs === undefined ? undefined : { interval: hello.hbi, staleAfter: hello.hbs },
            this.#demux === undefined ? undefined : { interval: this.#monitorOptions.heartbeatInterval, staleAfter: this.#monitorOptions.staleAfter },
          ),
        accept: async (hello, offers) => {
          if (!this.#peers.has(hello.session) && this.#sessionCount(hello.node) >= this.#maxSessions) {
            throw new BlockMirrorError('BM_ERR_TOO_MANY_CONNECTIONS', `${this.#maxSessions} peer sessions are open; refused`, {
              details: { limit: this.#maxSessions },
            });
          }
          if (hello.features.includes(CYCLE_FEATURE)) {
            cycleSource = true;
            return this.#acceptCycleSource(hello, offers, conn);
          }
          const ready = await this.#serialized(() => this.#claim(hello, offers));
          claimed = ready.map((r) => this.#volumes.get(r.name)!);
          return ready;
        },
      });
      authenticated();
      conn.setLimits(this.#limits);
      if (cycleSource) {
        if (conn.closed) return;
        this.#cycleConnections.add(conn);
        conn.once('close', () => this.#cycleConnections.delete(conn));
        this.#cycle!.serve(conn, result.hello.node, result.volumes);
        conn.once('close', (error) => {
          if (error !== undefined) this.emit('connection-error', error, raw.remoteAddress);
        });
        this.emit('connection', { node: result.hello.node, session: result.hello.session, slot: 0, address: raw.remoteAddress });
        return;
      }
      const handler: Handler = { conn, hello: result.hello, volumes: claimed, pending: 0, waiting: 0, paused: false };
      if (conn.closed) {
        this.#release(claimed);
        return;
      }
      this.#handlers.add(handler);
      const slot = this.#attach(result.hello, result.heartbeats, raw.remoteAddress.host, conn);
      const peer = this.#peers.get(result.hello.session)!;
      // over TLS without a secret, slot 0's TLS session keys the session's heartbeats (the primary derives the same key)
      if (result.hello.slot === 0) {
        const key = heartbeatKeyOf(raw, result.hello.session);
        if (key !== undefined) peer.monitor?.useKey(key);
      }
      // SPEC 6: an idle handler checks its slot every T3 and exits if the slot was closed
      const idle = new IdleWatch({ clock: this.#clock, idleTimeout: this.#idleTimeout, slot, connection: conn, onExpire: () => conn.destroy() });
      conn.on('frame', (frame) => {
        idle.touch();
        this.#onFrame(handler, frame);
      });
      conn.once('close', (error) => {
        idle.stop();
        this.#handlers.delete(handler);
        this.#release(claimed);
        if (slot.connection === conn) {
          slot.connection = undefined;
          slot.status = 'closed';
          peer.lastSeen = this.#clock.now();
          peer.monitor?.connectionsFailed(error);
          if (peer.slots.openCount === 0 && this.#peers.get(peer.session) === peer) {
            this.emit('peer-disconnected', { node: peer.node, session: peer.session, address: peer.host, ...(error === undefined ? {} : { error }) });
            this.#forgetLater(peer);
          }
        }
        if (error !== undefined) this.emit('connection-error', error, raw.remoteAddress);
      });
      this.emit('connection', { node: result.hello.node, session: result.hello.session, slot: result.hello.slot, address: raw.remoteAddress });
    } catch (error) {
      authenticated();
      this.#release(claimed);
      const err = toBlockMirrorError(error, 'BM_ERR_PROTOCOL');
      log('handshake with %o failed: %s', raw.remoteAddress, err.message);
      this.emit('connection-error', err, raw.remoteAddress);
      if (!this.#closed) this.emit('refused', { address: raw.remoteAddress, node: announced, error: err });
    }
  }

  /**
   * Primary sessions plus cycle-source connections open now (see
   * `maxSessions`), not counting those of `node` (a new session of a node
   * replaces its old one).
   */
  #sessionCount(node: string): number {
    let n = this.#cycleConnections.size;
    for (const p of this.#peers.values()) if (p.node !== node) n++;
    return n;
  }

  /**
   * Puts a handshaken connection into its session's connection array (making
   * the session, and its link monitor, on its first connection).
   */
  #attach(hello: HelloHeader, heartbeats: HeartbeatSettings | undefined, host: string, conn: FramedConnection) {
    let peer = this.#peers.get(hello.session);
    if (peer !== undefined && peer.slots.size !== hello.slots) {
      this.#dropPeer(peer);
      peer = undefined;
    }
    if (peer === undefined) {
      // a new session of a node is a restart: its old session is gone
      for (const old of this.#peers.values()) if (old.node === hello.node) this.#dropPeer(old);
      peer = {
        node: hello.node,
        session: hello.session,
        host,
        slots: new ConnectionArray(hello.slots),
        monitor: undefined,
        view: undefined,
        heartbeats: undefined,
        lastSeen: this.#clock.now(),
        forgetTimer: undefined,
      };
      this.#peers.set(hello.session, peer);
      if (this.#demux !== undefined && heartbeats !== undefined) {
        // Heartbeats go back along the path the primary's heartbeats take
        // (NAT, relays): the monitor learns its peer from the first one.
        // The primary's interval and stale time govern the session (agreed in the handshake).
        const view = this.#demux.view(hello.node);
        const monitor = new LinkMonitor({
          clock: this.#clock,
          channel: view,
          nodeId: this.nodeId,
          secret: this.#secret,
          // over TLS without a secret: keyed from the session's slot-0 TLS session, nothing unauthenticated counts
          requireKey: this.#transport.supports.sessionKeys === true,
          slots: peer.slots,
          expectedNode: hello.node,
          heartbeatInterval: heartbeats.interval,
          staleAfter: heartbeats.staleAfter,
          probation: this.#monitorOptions.probation,
        });
        const owner = peer;
        monitor.on('heartbeat', (_hb, from) => {
          const current = monitor.peer;
          if (current === undefined || current.host !== from.host || current.port !== from.port) monitor.setPeer(from);
        });
        monitor.on('down', (_reason, error) => {
          // the session key is kept (the probation's heartbeats need it); the next slot-0 handshake replaces it
          // SPEC 5: close all of this primary's connections
          for (const slot of owner.slots.slots) slot.connection?.destroy(error === undefined ? undefined : toBlockMirrorError(error));
        });
        monitor.on('state', (state, previous, reason) => {
          this.emit('peer-link', { node: owner.node, session: owner.session, address: owner.host, state, previous, reason });
          if (state === 'down') this.#forgetLater(owner);
        });
        peer.monitor = monitor;
        peer.view = view;
        peer.heartbeats = { ...heartbeats };
        monitor.start();
      }
    }
    if (peer.forgetTimer !== undefined) {
      this.#clock.clearTimeout(peer.forgetTimer);
      peer.forgetTimer = undefined;
    }
    peer.lastSeen = this.#clock.now();
    const slot = peer.slots.slots[hello.slot]!;
    const previous = slot.connection;
    slot.connection = conn;
    slot.status = 'open';
    slot.lastHeartbeat = this.#clock.now();
    previous?.destroy();
    if (peer.slots.openCount === peer.slots.size) peer.monitor?.connected();
    return slot;
  }

  /**
   * A valid heartbeat from a primary that has no connection here (typically:
   * this target restarted while the primary was down) is answered with one of
   * ours, so that the primary sees the link come back, runs its probation and
   * reconnects — it is the primary's handshake that tells us where to send
   * heartbeats afterwards.
   *
   * Over TLS without a secret, no key is known for such a primary (its key
   * came from a TLS session of an earlier run, or of a session we dropped):
   * its heartbeat cannot be checked and the answer goes unsigned. The primary
   * refuses it — it never counts as a heartbeat there — but refused
   * heartbeats while no valid one comes tell it that the key is lost, and it
   * reconnects by backoff (`LinkMonitor.rekeyNeeded`); the TLS handshake then
   * authenticates both ends and gives a new key. No replay guard then: it
   * would record heartbeats nobody authenticated, and a forged one with a
   * high `seq` could silence the primary's genuine ones.
   */
  #answerUnknown(data: Buffer, from: TransportAddress): void {
    if (this.#closed || this.#demux === undefined) return;
    try {
      const unkeyed = this.#secret === undefined && this.#transport.supports.sessionKeys === true;
      const hb = verifyHeartbeat(data, { secret: this.#secret, rejectNode: this.nodeId, guard: unkeyed ? undefined : this.#answerGuard });
      // a primary with a session here gets heartbeats from its link monitor
      for (const p of this.#peers.values()) if (p.node === hb.node && p.monitor !== undefined) return;
      const answer = encodeHeartbeat({ node: this.nodeId, session: this.#answerSession, seq: ++this.#answerSeq, time: this.#clock.now(), status: 'down' }, this.#secret);
      this.#demux.channel.send(answer, from);
      log('answered a heartbeat of %s from %s:%d%s', hb.node, from.host, from.port, unkeyed ? ' (unsigned: no key for it)' : '');
    } catch {
      // not a valid heartbeat: ignored
    }
  }

  /** Clock time `peer` was last heard from (a heartbeat, or a connection event). */
  #lastSeen(peer: PeerLink): number {
    return Math.max(peer.lastSeen, peer.monitor?.status().lastHeartbeatReceived ?? Number.NEGATIVE_INFINITY);
  }

  /** True while some volume's owner is this session (it is the last primary that mirrored into it). */
  #owns(peer: PeerLink): boolean {
    for (const v of this.#volumes.values()) if (v.owner?.session === peer.session) return true;
    return false;
  }

  /**
   * Drops `peer` from the peer list once it is gone — no open connection,
   * nothing heard from it for its stale time (at once without heartbeats) —
   * and owns no volume; while it has no connection, checks again when it
   * could next be gone. A session that owns a volume stays listed (at most
   * one per volume) until another primary claims the volume.
   */
  #forgetLater(peer: PeerLink): void {
    if (this.#closed || this.#peers.get(peer.session) !== peer || peer.forgetTimer !== undefined || peer.slots.openCount > 0) return;
    const quiet = peer.heartbeats === undefined ? 0 : peer.heartbeats.staleAfter;
    const wait = Math.max(0, this.#lastSeen(peer) + quiet - this.#clock.now());
    if (wait === 0 && peer.monitor === undefined) {
      if (!this.#owns(peer)) this.#forget(peer);
      return;
    }
    peer.forgetTimer = this.#clock.setTimeout(() => {
      peer.forgetTimer = undefined;
      if (this.#closed || this.#peers.get(peer.session) !== peer || peer.slots.openCount > 0) return;
      if (this.#clock.now() - this.#lastSeen(peer) > quiet) {
        if (!this.#owns(peer)) this.#forget(peer);
        return;
      }
      this.#forgetLater(peer);
    }, wait + 1);
  }

  #forget(peer: PeerLink): void {
    log('forgetting primary %s (session %s): gone and owns nothing', peer.node, peer.session);
    this.#dropPeer(peer);
    this.emit('peer-forgotten', { node: peer.node, session: peer.session, address: peer.host });
  }

  #dropPeer(peer: PeerLink): void {
    if (peer.forgetTimer !== undefined) this.#clock.clearTimeout(peer.forgetTimer);
    peer.forgetTimer = undefined;
    this.#peers.delete(peer.session);
    for (const slot of peer.slots.slots) slot.connection?.destroy();
    peer.monitor?.stop();
    void peer.view?.close();
  }

  /** Runs `fn` after every earlier claim finished (one handshake decision at a time). */
  #serialized<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.#claiming.then(fn);
    this.#claiming = run.then(
      () => undefined,
      () => undefined,
    );
    return run;
  }

  /**
   * Decides about a primary's offered volumes (a pure function of both
   * sides' state, see `claim-decision.ts`), and only then changes anything:
   * stores adopted generations, ends a previous session's requests, starts a
   * new ordering state for a new stream, and claims the volumes. A refusal
   * changes nothing.
   */
  async #claim(hello: HelloHeader, offers: VolumeOffer[]): Promise<ReadyVolume[]> {
    let decisions: ClaimDecision[];
    try {
      decisions = decideClaim(hello, offers, (name) => this.#claimView(name), this.#splitBrain);
    } catch (error) {
      // nothing changes but what the status says about the refused peer
      const volume = this.#volumes.get(String((error as BlockMirrorError).details?.volume));
      if (volume !== undefined && (error as BlockMirrorError).code === 'BM_ERR_SPLIT_BRAIN') volume.diverged = true;
      throw error;
    }
    const volumes = decisions.map((d) => this.#volumes.get(d.name)!);
    for (const [i, d] of decisions.entries()) {
      const v = volumes[i]!;
      v.diverged = false;
      // the failback bitmap stays (owed) while a claim uses it; any other claim makes it meaningless
      const bitmapOf = d.failback === undefined ? undefined : { generation: d.failback.generation, peer: d.failback.peer };
      const dropBitmap = bitmapOf === undefined && (v.bitmapOf !== undefined || v.failback !== undefined);
      if (d.failback !== undefined) v.failback = { ...d.failback, owed: true };
      else if (dropBitmap) v.failback = undefined;
      if (d.adopt === undefined && d.disk === v.disk && v.role === 'target' && v.resolution === undefined && v.handedOver === d.handedOver && v.bitmapOf?.generation === bitmapOf?.generation && v.bitmapOf?.peer === bitmapOf?.peer) continue;
      // lineage, disk state, role and the failback bitmap's owner change together, in one atomic write
      await v.savePair(() => {
        if (d.adopt !== undefined) v.generations = d.adopt;
        v.disk = d.disk;
        v.role = 'target';
        v.resolution = undefined;
        v.handedOver = d.handedOver;
        v.bitmapOf = bitmapOf;
      });
      if (dropBitmap) await v.removeFailbackBitmap();
    }
    const ready: ReadyVolume[] = [];
    for (const [i, d] of decisions.entries()) {
      const v = volumes[i]!;
      const offer = offers[i]!;
      // said once per session (each of its n connections claims)
      const fresh = v.owner?.session !== hello.session || v.connections === 0;
      if (v.owner?.session !== hello.session) {
        // a new session of the volume: requests of an earlier one must not race it
        await v.order.settle();
      }
      if (d.newStream || v.stream !== offer.stream) {
        v.stream = offer.stream;
        v.order = new ApplyOrder(0);
        v.durable = 0;
        v.resyncSeq = 0;
      }
      v.owner = { node: hello.node, session: hello.session };
      v.connections++;
      const r: ReadyVolume = { name: v.name, applied: v.order.watermark, inc: v.order.incarnation, durable: v.durable, lineage: d.lineage, disk: v.disk };
      if (d.full) r.full = true;
      if (d.failback !== undefined) r.fb = [...d.failback.ranges];
      if (fresh && d.failback !== undefined) {
        log('volume %s: failback: the bitmap of generation %s (%d regions) is offered to %s', v.name, d.failback.generation, d.failback.regions, hello.node);
        this.emit('failback', { volume: v.name, node: hello.node, method: 'bitmap', regions: d.failback.regions });
      } else if (fresh && d.checksumReason !== undefined) {
        log('volume %s: failback by checksum: %s', v.name, d.checksumReason);
        this.emit('failback', { volume: v.name, node: hello.node, method: 'checksum', reason: d.checksumReason });
      }
      ready.push(r);
    }
    // sessions that owned these volumes before may now be gone and own nothing
    for (const p of [...this.#peers.values()]) if (p.session !== hello.session) this.#forgetLater(p);
    return ready;
  }

  #claimView(name: string): ClaimView | undefined {
    const v = this.#volumes.get(name);
    if (v === undefined) return undefined;
    const image = this.#cycle?.image(name);
    return {
      name,
      size: v.size,
      blockSize: v.blockSize,
      owner: v.owner,
      connections: v.connections,
      generations: v.generations,
      disk: v.disk,
      stream: v.stream,
      cycleSource: this.#cycle?.sourceOf(name),
      cycleImage: image?.lineage === undefined ? undefined : { lineage: image.lineage, freeze: image.freeze },
      discardLocal: v.resolution === 'discard-local',
      wasPrimary: v.role === 'primary',
      promoted: v.promoted,
      handedOver: v.handedOver,
      ...(v.failback === undefined ? {} : { failback: v.failback }),
      ...(v.failbackMissing === undefined ? {} : { failbackMissing: v.failbackMissing }),
    };
  }

  #release(volumes: TargetVolume[]): void {
    for (const v of volumes) {
      v.connections--;
      v.disconnected();
    }
    volumes.length = 0;
  }

  #onFrame(session: Handler, frame: Frame): void {
    const conn = session.conn;
    try {
      switch (frame.type) {
        case MessageType.WRITE: {
          const h = parseWrite(frame.header);
          const data = frame.payload;
          this.#track(session, h.id, h.seq, this.#volumeOf(session, h.vol), (v) => {
            checkRange(v.device, h.off, data.length);
            if (data.length === 0) throw new BlockMirrorError('BM_ERR_BAD_HEADER', `write seq ${h.seq} carries no data`);
            if (h.sync !== undefined && h.rs === 1) v.syncProgress = { done: h.sync[0], total: h.sync[1] };
            return v.order.submit(h.seq, h.bar, async () => {
              // a resync write: the image is inconsistent (durably) before it changes
              if (h.rs === 1) await v.beforeResyncWrite(h.seq);
              await v.device.write(h.off, data, { fua: (frame.flags & FrameFlag.FUA) !== 0 });
              v.appliedWrites++;
              v.bytesWritten += data.length;
            });
          }, MessageType.WRITE_ACK, h.bar);
          return;
        }
        case MessageType.ZERO: {
          const h = parseZero(frame.header);
          this.#track(session, h.id, h.seq, this.#volumeOf(session, h.vol), (v) => {
            checkRange(v.device, h.off, h.len);
            if (h.sync !== undefined && h.rs === 1) v.syncProgress = { done: h.sync[0], total: h.sync[1] };
            return v.order.submit(h.seq, h.bar, async () => {
              if (h.rs === 1) await v.beforeResyncWrite(h.seq);
              // parts already reading as zeroes are not written (the image stays sparse)
              await zeroWhereData(v.device, h.off, h.len, (frame.flags & FrameFlag.FUA) !== 0);
              v.appliedWrites++;
            });
          }, MessageType.WRITE_ACK, h.bar);
          return;
        }
        case MessageType.HASH: {
          const h = parseHash(frame.header);
          const digest = (v: TargetVolume): Promise<Record<string, unknown>> => {
            checkRange(v.device, h.off, h.len);
            return new Promise((resolve, reject) =>
              v.order.whenApplied(h.bar, () =>
                hashRegion(v.device, h.off, h.len, h.alg as RegionHashAlgorithm).then((d) => resolve({ digest: d }), reject),
              ),
            );
          };
          this.#track(session, h.id, 0, this.#volumeOf(session, h.vol), digest, MessageType.HASH_ACK, h.bar);
          return;
        }
        case MessageType.SKIP: {
          const h = parseSkip(frame.header);
          // a skip of data a resync brings instead (`rs`): the image is inconsistent (durably) before anything above it applies
          const skip = (v: TargetVolume): Promise<void> =>
            h.rs === 1 ? v.order.submit(h.seq, h.seq - 1, async () => v.beforeResyncWrite(h.end), h.end) : v.order.skip(h.seq, h.end);
          this.#track(session, h.id, h.seq, this.#volumeOf(session, h.vol), skip, MessageType.WRITE_ACK, h.seq - 1);
          return;
        }
        case MessageType.FLUSH: {
          const h = parseFlush(frame.header);
          // the flush makes every applied request durable and records the
          // stream's watermark: the primary may then forget what it covers
          // with `disk`, it also records the image as up-to-date (see FlushHeader)
          const flush = (v: TargetVolume): Promise<Record<string, unknown>> => {
            if (h.sync !== undefined && v.disk !== 'up-to-date') v.syncProgress = { done: h.sync[0], total: h.sync[1] };
            return new Promise((resolve, reject) =>
              v.order.whenApplied(h.bar, () =>
                v
                  .flushDurable()
                  .then(async (durable) => {
                    if (h.disk === 'up-to-date') await v.upToDate(h.bar, h.ho === 1);
                    resolve({ durable, disk: v.disk });
                  })
                  .catch(reject),
              ),
            );
          };
          this.#track(session, h.id, 0, this.#volumeOf(session, h.vol), flush, MessageType.FLUSH_ACK, h.bar);
          return;
        }
        case MessageType.PING:
          conn.send(MessageType.PONG, frame.header);
          return;
        case MessageType.PONG:
        case MessageType.ERROR:
          return;
        default:
          throw new BlockMirrorError('BM_ERR_PROTOCOL', `unexpected message type ${frame.type} after the handshake`);
      }
    } catch (error) {
      conn.fail(toBlockMirrorError(error, 'BM_ERR_PROTOCOL'));
    }
  }

  #volumeOf(session: Handler, index: number): TargetVolume {
    const v = session.volumes[index];
    if (v === undefined) throw new BlockMirrorError('BM_ERR_PROTOCOL', `request for volume index ${index}, not offered in the handshake`);
    // a newer session of the primary took the volume over: this one's requests are stale
    if (v.owner?.session !== session.hello.session) throw new BlockMirrorError('BM_ERR_VOLUME_BUSY', `volume ${v.name} was taken over by a newer session`);
    if (v.promoted) throw new BlockMirrorError('BM_ERR_VOLUME_BUSY', `volume ${v.name} was promoted on this node`);
    return v;
  }

  /** Runs a request, answers it, and applies read back-pressure to the connection. */
  #track(
    session: Handler,
    id: number,
    seq: number,
    volume: TargetVolume,
    run: (v: TargetVolume) => Promise<void | Record<string, unknown>>,
    ackType: number = MessageType.WRITE_ACK,
    barrier: number = Math.max(0, seq - 1),
  ): void {
    // A request waiting for an older one does not count against the read
    // window: the one it waits for may be behind it on this connection (a
    // resend), and pausing would wait forever. Such waiters are bounded by a
    // hard limit instead; past it the connection fails and the primary
    // resends in sequence order.
    const waiting = volume.order.wouldWait(barrier);
    if (waiting) {
      session.waiting++;
      if (session.waiting > this.#maxInFlight * 8) {
        session.conn.fail(new BlockMirrorError('BM_ERR_PROTOCOL', `more than ${this.#maxInFlight * 8} requests wait for older ones on one connection`));
        return;
      }
    } else session.pending++;
    if (session.pending >= this.#maxInFlight && !session.paused) {
      session.paused = true;
      session.conn.connection.pause();
    }
    let p: Promise<void | Record<string, unknown>>;
    try {
      p = run(volume);
    } catch (error) {
      p = Promise.reject(error);
    }
    p.then(
      (extra) => {
        session.conn.send(ackType, extra === undefined ? { id } : { id, ...extra });
      },
      (error: unknown) => {
        const err = toBlockMirrorError(error);
        volume.errors++;
        log('volume %s seq %d failed: %s', volume.name, seq, err.message);
        this.emit('write-error', { volume: volume.name, seq, error: err });
        session.conn.send(ackType, { id, code: err.code, message: err.message });
      },
    ).finally(() => {
      if (waiting) session.waiting--;
      else session.pending--;
      if (session.paused && session.pending < this.#maxInFlight / 2) {
        session.paused = false;
        session.conn.connection.resume();
      }
    });
  }

  async #openCycleHost(options: NonNullable<MirrorTargetOptions['cycle']>): Promise<void> {
    const host = await CycleHost.open({
      dir: options.dir,
      volumes: [...this.#volumes.values()].map((v) => ({ name: v.name, device: v.device })),
      ...(options.maxInFlight === undefined ? {} : { maxInFlight: options.maxInFlight }),
      ...(options.maxPendingTransfers === undefined ? {} : { maxPendingTransfers: options.maxPendingTransfers }),
      ...(options.hooks === undefined ? {} : { hooks: options.hooks }),
      heldBy: (name) => {
        const v = this.#volumes.get(name);
        return v !== undefined && v.connections > 0 ? v.owner?.node : undefined;
      },
    });
    host.on('committed', (info) => this.emit('cycle-committed', info));
    host.on('transfer-error', (info) => this.emit('cycle-error', info));
    for (const v of this.#volumes.values()) v.cycle = host;
    this.#cycle = host;
  }

  /** The handshake answer to a cycle source (see the `cycle` option). */
  #acceptCycleSource(hello: HelloHeader, offers: VolumeOffer[], conn: FramedConnection): ReadyVolume[] {
    if (this.#cycle === undefined) {
      throw new BlockMirrorError('BM_ERR_NOT_SUPPORTED', 'this mirror target does not receive freeze/copy cycles (start it with a cycle state directory)');
    }
    for (const offer of offers) {
      const v = this.#volumes.get(offer.name);
      // a promoted image is a primary's now: nothing but its primary writes it
      if (v?.promoted === true) throw new BlockMirrorError('BM_ERR_VOLUME_BUSY', `volume ${offer.name} was promoted on this node`, { details: { volume: offer.name } });
      if (v?.generations !== undefined && this.#splitBrain !== 'discard-target' && this.#cycle.image(v.name).lineage !== offer.generation) {
        throw new BlockMirrorError(
          'BM_ERR_SPLIT_BRAIN',
          `volume ${offer.name} holds data of primary generation ${v.generations.current}, not of cycle lineage ${offer.generation}; nothing was overwritten (splitBrain: 'discard-target' lets the cycle source copy it whole)`,
          { details: { volume: offer.name, targetGeneration: v.generations.current, policy: this.#splitBrain } },
        );
      }
    }
    return this.#cycle.accept(hello, offers, conn);
  }

  /** Plain-object status (JSON-serialisable). */
  status(): MirrorTargetStatus {
    const volumes: Record<string, TargetVolumeStatus> = {};
    for (const v of this.#volumes.values()) volumes[v.name] = v.status();
    const peers: MirrorTargetStatus['peers'] = [];
    for (const p of this.#peers.values()) {
      const open = p.slots.openCount;
      const peer: MirrorTargetPeerStatus = {
        address: p.host,
        node: p.node,
        session: p.session,
        link: p.monitor?.state ?? (open > 0 ? 'up' : 'down'),
        connections: open,
        lastSeenAt: wallClockIso(this.#clock, this.#lastSeen(p)),
      };
      if (p.heartbeats !== undefined) {
        peer.heartbeatIntervalMs = p.heartbeats.interval;
        peer.staleAfterMs = p.heartbeats.staleAfter;
      }
      peers.push(peer);
    }
    for (const c of this.#cycle?.sources() ?? []) peers.push({ address: c.address, node: c.node, session: c.session, link: 'up', connections: 1, mode: 'cycle' });
    const addr = this.#server?.address;
    return {
      role: 'target',
      node: this.nodeId,
      address: addr === undefined ? '' : `${addr.host}:${addr.port}`,
      peers,
      volumes,
    };
  }

  /**
   * Applies an operator's decision to a split brain or an unrelated lineage
   * of volume `name` — a primary was refused with `BM_ERR_SPLIT_BRAIN`:
   *
   * - `discard-local`: this image's own data is given up. The decision is
   *   recorded durably (owed) and applied at the refused primary's next
   *   handshake, which it then accepts: the image becomes `inconsistent` and
   *   the primary resyncs it by checksum (only regions that differ move).
   *   Nothing changes on the device before that.
   * - `discard-remote`: the primary's data is given up and this image kept.
   *   Data only flows from a primary to its targets, so this is a role swap:
   *   the volume is promoted with force (see {@link promote}); then restart
   *   this node as the volume's primary and the other node as its mirror
   *   (where `discard-local` applies its own decision).
   *
   * @throws {BlockMirrorError} `BM_ERR_UNKNOWN_VOLUME`, `BM_ERR_INVALID_ARGUMENT`,
   *   `BM_ERR_VOLUME_BUSY` (the volume was {@link release}d: its primary resolves),
   *   `BM_ERR_NOT_DIVERGED` (no primary was refused for the volume since this
   *   target started), `BM_ERR_PROMOTE_REFUSED` (discard-remote: see {@link promote}).
   */
  async resolve(name: string, discard: Resolution): Promise<{ volume: string; resolution: Resolution; generation?: string }> {
    const v = this.volume(name);
    if (discard !== 'discard-local' && discard !== 'discard-remote') throw invalidArgument('resolve takes discard-local or discard-remote');
    if (v.released) throw new BlockMirrorError('BM_ERR_VOLUME_BUSY', `volume ${name} was promoted and released by this target (a primary serves it): resolve on that primary`, { details: { volume: name } });
    if (!v.diverged) {
      throw new BlockMirrorError('BM_ERR_NOT_DIVERGED', `volume ${name}: no primary was refused for a split brain or another lineage; nothing to resolve`, { details: { volume: name } });
    }
    if (discard === 'discard-remote') {
      const promoted = await this.promote(name, { force: true });
      return { volume: name, resolution: discard, generation: promoted.generation };
    }
    await this.#serialized(() =>
      v.savePair(() => {
        v.resolution = 'discard-local';
      }),
    );
    log('volume %s: split brain resolved here by discarding the local data (applied at the next handshake)', name);
    return { volume: name, resolution: discard };
  }

  /**
   * Promotes volume `name` (failover): this node's image becomes the
   * primary's. A new generation is recorded whose history holds the current
   * one, with the role `primary`, before anything else; the volume's primary
   * session is ended and no primary may claim the volume any more (an old
   * primary that comes back is refused with `BM_ERR_SPLIT_BRAIN`: it is
   * fenced by lineage). Restart the node as the volume's
   * primary on the same volume and state directory to serve it, or
   * {@link release} the volume and start a primary on its device and this
   * target's state directory in the same process.
   *
   * Without `force` the volume's primary must have handed it over (demoted:
   * drained and read-only there); with `force` (the primary is lost) the
   * image must still be a consistent copy: `up-to-date` — writes the old
   * primary acknowledged but had not sent are lost with it, and if it comes
   * back it is refused until it rejoins as this node's mirror.
   *
   * @throws {BlockMirrorError} `BM_ERR_UNKNOWN_VOLUME`, `BM_ERR_PROMOTE_REFUSED`.
   */
  async promote(name: string, options: { force?: boolean } = {}): Promise<{ volume: string; generation: string; history: string[] }> {
    const v = this.volume(name);
    const refuse = (why: string): BlockMirrorError => new BlockMirrorError('BM_ERR_PROMOTE_REFUSED', `volume ${name} cannot be promoted: ${why}; nothing was changed`, { details: { volume: name } });
    return this.#serialized(async () => {
      if (v.promoted) throw refuse('it is promoted already');
      if (v.cycle !== undefined && this.#cycle?.image(name).lineage !== undefined) throw refuse('it receives freeze/copy cycles (promotion is for per-write mirroring)');
      if (v.generations === undefined || v.disk !== 'up-to-date') throw refuse(`its image is ${v.disk}, not an up-to-date copy`);
      if (options.force !== true && !v.handedOver) throw refuse('its primary did not hand it over (demote the primary first, or use force when it is lost)');
      const generations = advanceGeneration(v.generations);
      // fenced first: no request of the old primary applies from here on
      v.promoted = true;
      const owner = v.owner;
      if (owner !== undefined) {
        const peer = this.#peers.get(owner.session);
        const error = new BlockMirrorError('BM_ERR_VOLUME_BUSY', `volume ${name} was promoted on this node`);
        // a session that mirrors other volumes too keeps its connections: its requests for this one are refused
        if (peer !== undefined && [...this.#volumes.values()].every((o) => o === v || o.owner?.session !== owner.session)) {
          for (const slot of peer.slots.slots) slot.connection?.destroy(error);
        }
      }
      await v.order.settle();
      await v.flushDurable();
      await v.savePair(() => {
        v.generations = generations;
        v.role = 'primary';
        v.resolution = undefined;
        v.handedOver = false;
      });
      log('volume %s promoted: generation %s', name, generations.current);
      return { volume: name, generation: generations.current, history: [...generations.history] };
    });
  }

  /**
   * Hands the device of promoted volume `name` over, so that a primary can
   * serve it in this process (in place, without a restart): after
   * {@link promote}, start a primary on `device` with this target's
   * `stateDir`; it loads the promoted pairing state as a restarted primary
   * would. Waits for the requests and pairing-state saves in flight and
   * records the apply state (flushed); from then on the target never writes
   * the device, the volume's pairing state or its apply state again (not at
   * {@link close} either), {@link resolve} and cycle sources are refused for
   * it, and its status says `released: true`. The volume stays listed in
   * {@link volumes} (its `read` still reads the device). Not undone: stop
   * the process to host the volume as a mirror again.
   *
   * @throws {BlockMirrorError} `BM_ERR_UNKNOWN_VOLUME`; `BM_ERR_INVALID_ARGUMENT`
   *   when the volume was not promoted in this run or is released already;
   *   `BM_ERR_CLOSED` after {@link close}; the device's error when its flush
   *   fails — in every case nothing changed and the target keeps the volume.
   */
  async release(name: string): Promise<{ volume: string; device: BlockDevice }> {
    const v = this.volume(name);
    return this.#serialized(async () => {
      if (this.#closed) throw new BlockMirrorError('BM_ERR_CLOSED', 'the target is closed', { details: { volume: name } });
      if (!v.promoted) throw invalidArgument(`volume ${name} is not promoted on this node: only a promoted volume is released`, { volume: name });
      if (v.released) throw invalidArgument(`volume ${name} is released already`, { volume: name });
      await v.order.settle();
      await v.flushDurable();
      v.released = true;
      // saves started before are over once this resolves; later ones do nothing
      await v.pairSaved();
      log('volume %s released: its device and pairing state are its primary\'s now', name);
      return { volume: name, device: v.device };
    });
  }

  /** Stops listening and closes every connection. Devices are not closed (they belong to the caller). */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    for (const p of [...this.#peers.values()]) this.#dropPeer(p);
    for (const c of this.#connections) c.destroy();
    // released volumes are their primary's: not a byte of them is written here any more
    const kept = [...this.#volumes.values()].filter((v) => !v.released);
    // a clean stop records exactly how far each volume is applied (and flushed), and its pairing state
    await Promise.all(kept.map((v) => v.flushDurable().catch(() => undefined)));
    await Promise.all(
      kept.map((v) => {
        if (v.generations === undefined) return undefined;
        return v
          .savePair(() => {
            if (v.disk === 'up-to-date' && v.connections > 0) v.lastInSync = Date.now();
          })
          .catch(() => undefined);
      }),
    );
    await this.#server?.close();
    await this.#demux?.channel.close();
    await this.#cycle?.close();
  }
}


/**
 * Creates a mirror target and starts listening.
 *
 * ```ts
 * const target = await createMirrorTarget({
 *   listen: { host: '127.0.0.1', port: 0 },
 *   volumes: [{ name: 'vol0', device: await FileBlockDevice.open('mirror0.img', { size: 64 << 20 }) }],
 * });
 * console.log(target.address.port);
 * ```
 */
export async function createMirrorTarget(options: MirrorTargetOptions): Promise<MirrorTarget> {
  const target = new MirrorTarget(options);
  await target.start();
  return target;
}
