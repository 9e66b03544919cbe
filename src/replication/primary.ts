/**
 * The primary storage server side: owns the volumes, applies writes locally
 * and mirrors them to one target over n connections (the connection array).
 *
 * @module
 */
import { heartbeatKeyOf } from '../link/session-key.js';
import { randomBytes, randomUUID } from 'node:crypto';
import { mkdir } from 'node:fs/promises';
import { persistentNodeId } from '../storage/node-id.js';
import { join } from 'node:path';
import { EventEmitter } from 'eventemitter3';
import createDebug from 'debug';
import { BlockMirrorError, CONFIGURATION_REFUSALS, invalidArgument, isErrorCode, toBlockMirrorError } from '../errors.js';
import { systemClock, wallClockIso, type Clock, type TimerHandle } from '../clock.js';
import type { BlockDevice } from '../device/block-device.js';
import type { Transport, TransportAddress } from '../transport/transport.js';
import { TcpTransport } from '../transport/tcp.js';
import { checkAddress } from '../transport/address.js';
import { DEFAULT_CODEC_LIMITS, FrameFlag, MessageType, type CodecLimits, type Frame } from '../codec/frame.js';
import { parseAck, parseError, parseHashAck, type FlushHeader, type HashAckHeader, type VolumeOffer, type WriteHeader } from '../codec/messages.js';
import { ConnectionArray, type ConnectionSlot, type ConnectionSlotStatus } from '../link/connection-array.js';
import { FramedConnection } from '../link/framed-connection.js';
import { clientHandshake } from '../link/handshake.js';
import { LinkMonitor, type HeartbeatAuth } from '../link/link-monitor.js';
import { IdleWatch } from '../link/idle-watch.js';
import type { DatagramChannel } from '../transport/transport.js';
import type { MirrorRequest } from './mirror-request.js';
import { PrimaryVolume, type FailbackInfo, type InitialSyncMethod, type PrimaryVolumeStatus, type ReplicationLink, type ReplicationMode } from './primary-volume.js';
import { secretBytes, positiveInt, nonNegativeInt, checkVolumeName } from './options.js';
import { MemoryJournal } from '../journal/memory-journal.js';
import { FileJournal, DEFAULT_JOURNAL_CAPACITY } from '../journal/file-journal.js';
import type { JournalFsyncPolicy } from '../journal/file-journal.js';
import { FileStreamStore, newStreamId } from './stream-file.js';
import { FileDirtyBitmap } from '../resync/file-dirty-bitmap.js';
import { DEFAULT_REGION_SIZE } from '../resync/dirty-bitmap.js';
import type { ProgressSnapshot } from '../resync/progress.js';
import { newGenerationId } from './generation.js';
import { FilePairStateStore, type DiskState, type PairStateStore, type Resolution } from './pair-state.js';
import { runResync, runVerify, type ResyncOptions, type ResyncResult, type RunSettings, type VerifyResult } from './resync-runner.js';

const log = createDebug('blockmirror:primary');

/** Default {@link PrimaryOptions.maxBufferedBytes}. */
export const DEFAULT_MAX_BUFFERED = 16 * 1024 * 1024;

/** A volume the primary serves. */
export interface PrimaryVolumeConfig {
  /** Name, unique per primary; the target must host a volume of this name, size and block size. */
  name: string;
  device: BlockDevice;
  /** Replication mode (default `sync`). */
  mode?: ReplicationMode;
  /**
   * Where the volume's pairing state is kept: its lineage (generation ids),
   * what it knows of the target's image, when the pair was last in sync
   * (default: `<stateDir>/<volume>.state` with a state directory, else in
   * memory — a new lineage per run, which a target that remembers the old
   * one refuses as unrelated).
   */
  state?: PairStateStore;
  /**
   * The first sync with a target that holds none of this volume's lineage
   * (a blank target: first pairing), while the volume stays writable; the
   * target's image is `inconsistent` until it ends. `checksum` (default):
   * compare region digests, send only the regions that differ; `full`: send
   * every region; `none`: skip it — declare both images identical (two blank
   * images, or copied by other means).
   */
  initialSync?: InitialSyncMethod;
}

/** Options of {@link createPrimary}. */
export interface PrimaryOptions {
  /** Address of the mirror target. */
  peer: TransportAddress;
  volumes: PrimaryVolumeConfig[];
  /** Transport (default: a new {@link TcpTransport}). */
  transport?: Transport;
  /**
   * Number n of connections in the connection array (default 4, 1…64). The
   * requests queued in one tick travel together on one worker's connection;
   * the next tick's go to the next worker.
   */
  connections?: number;
  /** Shared secret (HMAC-SHA256 challenge–response on every connection). */
  secret?: string | Uint8Array;
  /**
   * Node id. Default: with a state directory (`stateDir`, or `journal.dir`),
   * the one kept there (`node-id`, created on the first start and shared
   * with a mirror target given the same directory: a mirror promoted to a
   * primary keeps its id, which its old primary's failback bitmap names);
   * else random.
   */
  nodeId?: string;
  clock?: Clock;
  /** Codec limits (default 64 KiB headers, 8 MiB payloads). */
  limits?: Partial<CodecLimits>;
  /** Send payload CRC-32s (default true). */
  payloadChecksum?: boolean;
  /** Requests in flight per connection before the next waits (default 64). */
  maxInFlightPerConnection?: number;
  /** Handshake timeout in ms (default 10000). */
  handshakeTimeout?: number;
  /** Sync mode: a write whose mirror acknowledgement takes longer resolves as `failed` and stays queued (default 30000 ms). */
  mirrorTimeout?: number;
  /** Retry backoff for failed mirror writes and reconnects, ms (default 100 … 5000). */
  retryDelay?: { min: number; max: number };
  /** `createPrimary` (or {@link Primary.connect}) resolves only once all n connections are up, and rejects if the first attempt fails (default true). */
  waitForConnection?: boolean;
  /**
   * Contact the mirror target as part of `createPrimary` (default true).
   * `false`: `createPrimary` does everything local (journals, bitmaps,
   * generations, binding the heartbeat socket) and contacts nobody; call
   * {@link Primary.connect} once the caller's own listeners (NBD, admin) are
   * bound, so that a start that fails on a port in use has claimed nothing
   * on the mirror. The volumes accept writes meanwhile (journaled as while
   * the link is down).
   */
  autoConnect?: boolean;
  /**
   * Directory (created if missing) of this node's durable state, per volume:
   * the pairing state (`<volume>.state`: lineage, the target's disk state,
   * last in sync) and — without a journal directory — the write-intent
   * bitmap (`<volume>.bitmap`), so that a restart (clean, or after a crash)
   * keeps its lineage and resyncs exactly the regions that may differ, and an
   * interrupted sync resumes where it stopped. Default: `journal.dir`; without
   * either, all of it lives in memory.
   */
  stateDir?: string;
  /**
   * Per-volume journal of requests acknowledged locally but not yet by the
   * target (async writes always; sync writes when the mirror could not confirm
   * them). With `dir`, a crash-safe ring file per volume (`<dir>/<volume>.journal`)
   * whose unacknowledged records are replayed after a restart; without, in memory.
   */
  journal?: {
    dir?: string;
    /** Ring size per volume in bytes (default 256 MiB). */
    capacityBytes?: number;
    /** File journal durability: `always` (fdatasync per append), `batch` (group commit, default) or `none`. */
    fsync?: JournalFsyncPolicy;
  };
  /**
   * Sync writes the mirror cannot confirm (link down, target error, timeout):
   * `degrade` (default) resolves them as `mirror: 'failed'` once journaled
   * (the volume is `lagging`); `suspend` holds them until the target
   * acknowledges or `mirrorTimeout` passes, then rejects with `BM_ERR_TIMEOUT`.
   * Either way the request stays queued until the target has it.
   */
  outagePolicy?: 'degrade' | 'suspend';
  /**
   * UDP heartbeats and the link state machine of seed 000 (default: on when
   * the transport has datagrams). Off: a broken connection is reopened with
   * backoff (`retryDelay`) instead of after a probation. Heartbeats are
   * signed with `secret` when given; over TLS without one, with a key derived
   * from the TLS session of connection 0, and none is sent or accepted
   * unsigned: while the heartbeats cannot be authenticated (no key yet, or
   * the target restarted and lost it), a down link is reopened by backoff
   * too, the TLS handshake authenticating the target.
   */
  heartbeats?: boolean;
  /**
   * Milliseconds between heartbeats (default 1500). The primary's interval and
   * `staleAfter` govern the session: they travel in the handshake and the
   * target uses them for this primary (a target that cannot refuses with
   * `BM_ERR_SETTINGS_MISMATCH`).
   */
  heartbeatInterval?: number;
  /** The link is down after this many milliseconds without a heartbeat (default 4000; must be longer than `heartbeatInterval`). */
  staleAfter?: number;
  /** Heartbeats must flow this long without a gap before the connections reopen (default 10000; 0 = at once). */
  probation?: number;
  /** A connection idle this long checks its slot and exits if it was closed (T3, default 5000). */
  idleTimeout?: number;
  /** Address to bind the heartbeat UDP socket to (default: any address, port 0). Its port travels in the handshake. */
  heartbeatBind?: TransportAddress;
  /** Bitmap resync, initial sync and verify settings. */
  resync?: ResyncOptions;
  /**
   * Milliseconds between durability flushes: while the target holds
   * acknowledged requests that it has not reported durable, the primary asks
   * it to flush (and record how far its image is durable) this often; only
   * then are their journal records and write-intent bits released. Default 1000.
   */
  durableInterval?: number;
  /**
   * Milliseconds a volume with nothing pending waits before it asks the
   * target for that flush (default 20): a volume is `in-sync` only once the
   * target reported everything durable, and the short wait lets a burst of
   * writes share one target flush.
   */
  durableDelay?: number;
  /**
   * The payload budget: bytes of write payloads that the primary's requests
   * may hold in RAM, queued and in flight, all volumes together (default
   * 16 MiB, {@link DEFAULT_MAX_BUFFERED}). Past it, a request the journal holds
   * drops its RAM copy (an async write past it is journaled from the caller's
   * buffer and not copied at all) and is read back from the journal when its
   * turn to be sent comes, as the budget has room again; a request the journal
   * cannot take becomes a region of the dirty bitmap, copied later by a
   * resync. Payloads in flight count: whatever the window, a write is not
   * sent while it would take the payloads in flight past the budget (a
   * resend, or a write a caller waits for, goes anyway). Beyond it, RAM
   * holds only what no budget can refuse: the buffers of callers still
   * waiting for their write (sync writes; an async write until its journal
   * append completed), resync copies, and one request per volume read back
   * to make progress.
   */
  maxBufferedBytes?: number;
  /**
   * Async volumes: when this many bytes wait for the target's acknowledgement
   * while the link is up, new writes wait (back-pressure), so the mirror lags
   * by a bounded amount instead of filling the journal. 0 = no limit. Default
   * 16 MiB, the default payload budget ({@link DEFAULT_MAX_BUFFERED}): with
   * the default limits what an async volume has waiting fits the budget, so
   * nothing goes to the journal only to be read back while the link is up.
   * While the link is down writes never wait.
   */
  maxAsyncLag?: number;
}

/**
 * Link state of the primary towards its target: `connecting` (opening the n
 * connections), `up`, `down` (no heartbeat for `staleAfter`, or the
 * connections failed; writes are journaled), `probation` (heartbeats are back;
 * the connections reopen after `probation` ms without a gap).
 */
export type LinkState = 'connecting' | 'up' | 'down' | 'probation';

/** Plain-object status of a {@link Primary}. */
export interface PrimaryStatus {
  role: 'primary';
  node: string;
  peers: Array<{
    address: string;
    node: string | undefined;
    link: LinkState;
    connections: ConnectionSlotStatus[];
    /**
     * Heartbeat counters and settings (absent without heartbeats): times are
     * wall-clock ISO 8601 strings (absent when there is none); the interval
     * and stale time are the ones the target agreed to.
     */
    heartbeats?: {
      sent: number;
      received: number;
      rejected: number;
      /** Refused heartbeats by reason (`unexpected-node`: a correctly formed heartbeat of another node than the target's, ignored). */
      rejectedByReason: Record<string, number>;
      /**
       * How heartbeats are authenticated: `secret`, `session` (a key from the
       * TLS session of connection 0), `pending` (over TLS without a secret,
       * before the first handshake of connection 0: no heartbeat is sent or
       * accepted) or `none` (no TLS, no secret: unsigned).
       */
      auth: HeartbeatAuth;
      lastReceivedAt?: string;
      probationEndsAt?: string;
      intervalMs: number;
      staleAfterMs: number;
    };
    lastError?: { code: string; message: string };
  }>;
  volumes: Record<string, PrimaryVolumeStatus>;
}

/** Events of a {@link Primary}. */
export interface PrimaryEvents {
  /** The link state changed. */
  link: [state: LinkState];
  /** A slot of the connection array opened or closed. */
  slot: [info: { index: number; status: ConnectionSlot['status']; error?: BlockMirrorError }];
  /** A mirror request failed on the target (it is retried). */
  'mirror-error': [info: { volume: string; seq: number; offset: number; length: number; error: BlockMirrorError }];
  /** A volume's replication state changed. */
  'volume-state': [info: { volume: string; state: PrimaryVolumeStatus['state'] }];
  /** A connection attempt failed (it is retried). */
  'connect-error': [error: BlockMirrorError];
  /** A volume's journal could not take a request (full or failed); later writes go to the bitmap and a resync (state `needs-resync`). */
  'journal-full': [info: { volume: string; seq: number; error: BlockMirrorError }];
  /** Progress of a resync or verify (at most every second). */
  progress: [info: { volume: string; operation: 'resync' | 'verify' } & ProgressSnapshot];
  /** Journal replay finished: the target acknowledged every request recovered from the volume's journal at start. */
  'journal-replayed': [info: { volume: string; records: number; bytes: number; durationMs: number }];
  /** A resync finished: the target holds every region again. */
  /** A resync ended: `method` `checksum` (digests compared first, only differing regions sent) or `bitmap` (the marked regions copied). */
  'resync-done': [info: { volume: string; method: 'bitmap' | 'checksum' } & ResyncResult];
  /** A target that may hold writes the volume lacks was claimed (failback): how it is resynced (see `PrimaryVolumeStatus.failback`). */
  failback: [info: { volume: string } & FailbackInfo];
  /** What the primary knows of a volume's image on the target changed (`peerDisk` in the status); recorded in its pair state. */
  'peer-disk': [info: { volume: string; disk: DiskState; previous: DiskState }];
  /** A sync or resync that an earlier run left unfinished resumes (from the persistent bitmap: only what is left). */
  'resync-resumed': [info: { volume: string; bytes: number }];
  /** A resync stopped on an error (it resumes when the link is up again). */
  'resync-error': [info: { volume: string; error: BlockMirrorError }];
  /** Verify found a range that differs between the primary and the target. */
  'verify-mismatch': [info: { volume: string; offset: number; length: number }];
}

interface Sent {
  volume: PrimaryVolume;
  req: MirrorRequest;
}

/**
 * A primary: see {@link createPrimary}.
 */
export class Primary extends EventEmitter<PrimaryEvents> {
  /** This node's id. */
  readonly nodeId: string;
  /** Session id of this run (shared by the n connections). */
  readonly session: string;
  readonly peer: TransportAddress;
  readonly #transport: Transport;
  readonly #clock: Clock;
  readonly #secret: Uint8Array | undefined;
  readonly #limits: CodecLimits;
  readonly #payloadChecksum: boolean;
  readonly #maxInFlight: number;
  readonly #handshakeTimeout: number;
  readonly #mirrorTimeout: number;
  readonly #retry: { min: number; max: number };
  readonly #journalOptions: NonNullable<PrimaryOptions['journal']>;
  readonly #heartbeats: boolean;
  readonly #monitorOptions: { heartbeatInterval: number; staleAfter: number; probation: number };
  readonly #idleTimeout: number;
  readonly #heartbeatBind: TransportAddress | undefined;
  #channel: DatagramChannel | undefined;
  #monitor: LinkMonitor | undefined;
  /** Pending reconnect of a key-required link whose heartbeats cannot be authenticated (see `#rekey`). */
  #rekeyTimer: TimerHandle | undefined;
  #rekeyAttempt = 0;
  readonly #idle = new Set<IdleWatch>();
  readonly #resyncOptions: Required<ResyncOptions>;
  readonly #checksumSync = new Set<PrimaryVolume>();
  readonly #pairStores = new Map<PrimaryVolume, PairStateStore>();
  readonly #stateDir: string | undefined;
  /** Volumes whose resync, when it starts, resumes one an earlier run left unfinished. */
  readonly #resuming = new Set<PrimaryVolume>();
  readonly #resyncs = new Map<PrimaryVolume, Promise<void>>();
  readonly #resyncAttempts = new Map<PrimaryVolume, number>();
  readonly #progress = new Map<PrimaryVolume, { operation: 'resync' | 'verify'; snapshot: ProgressSnapshot }>();
  readonly #slots: ConnectionArray;
  /** Requests in flight per slot, by request id. */
  readonly #inFlight: Map<number, Sent>[];
  readonly #volumes = new Map<string, PrimaryVolume>();
  readonly #mirrored: PrimaryVolume[] = [];
  readonly #reconnectTimers = new Set<TimerHandle>();
  readonly #sweep: TimerHandle;
  readonly #durableTimer: TimerHandle;
  readonly #keepAlive: NodeJS.Timeout;
  #attempts: number[];
  /** Slots whose connect (and handshake) is running. */
  readonly #connecting: boolean[] = [];
  /** The connection of each slot whose handshake is running. */
  readonly #handshaking: Array<FramedConnection | undefined> = [];
  #nextId = 0;
  #worker = 0;
  /** Requests sent in this tick go on the same worker's connection (one write per tick). */
  #batchOpen = false;
  readonly #closeBatch = (): void => {
    this.#batchOpen = false;
  };
  #pumping = false;
  #link: LinkState = 'connecting';
  readonly #autoConnect: boolean;
  /** `waitForConnection` of the start: {@link connect} waits for the n connections. */
  #wait = true;
  #connectStarted = false;
  #peerNode: string | undefined;
  #lastError: BlockMirrorError | undefined;
  #closed = false;
  readonly #link_: ReplicationLink;

  /** @internal use {@link createPrimary} */
  constructor(options: PrimaryOptions) {
    super();
    if (options === null || typeof options !== 'object') throw invalidArgument('options must be an object');
    this.peer = checkAddress(options.peer, 'peer');
    this.#transport = options.transport ?? new TcpTransport();
    this.#clock = options.clock ?? systemClock;
    this.#secret = secretBytes(options.secret);
    this.#limits = { ...DEFAULT_CODEC_LIMITS, ...options.limits };
    this.#payloadChecksum = options.payloadChecksum ?? true;
    const n = positiveInt(options.connections ?? 4, 'connections', 64);
    this.#maxInFlight = positiveInt(options.maxInFlightPerConnection ?? 64, 'maxInFlightPerConnection', 65536);
    this.#handshakeTimeout = positiveInt(options.handshakeTimeout ?? 10000, 'handshakeTimeout');
    this.#mirrorTimeout = positiveInt(options.mirrorTimeout ?? 30000, 'mirrorTimeout');
    const retry = options.retryDelay ?? { min: 100, max: 5000 };
    this.#retry = { min: positiveInt(retry.min, 'retryDelay.min'), max: positiveInt(retry.max, 'retryDelay.max') };
    if (options.stateDir !== undefined && (typeof options.stateDir !== 'string' || options.stateDir === '')) throw invalidArgument('stateDir must be a non-empty string');
    const journal = options.journal ?? {};
    if (journal === null || typeof journal !== 'object') throw invalidArgument('journal must be an object');
    if (journal.dir !== undefined && (typeof journal.dir !== 'string' || journal.dir === '')) throw invalidArgument('journal.dir must be a non-empty string');
    if (journal.fsync !== undefined && !['always', 'batch', 'none'].includes(journal.fsync)) throw invalidArgument('journal.fsync must be always, batch or none');
    this.#journalOptions = { ...journal, capacityBytes: positiveInt(journal.capacityBytes ?? DEFAULT_JOURNAL_CAPACITY, 'journal.capacityBytes') };
    this.#stateDir = options.stateDir ?? journal.dir;
    this.#heartbeats = options.heartbeats ?? (this.#transport.supports.datagram && this.#transport.bindDatagram !== undefined);
    if (this.#heartbeats && this.#transport.bindDatagram === undefined) throw invalidArgument('heartbeats need a transport with datagrams');
    this.#monitorOptions = {
      heartbeatInterval: positiveInt(options.heartbeatInterval ?? 1500, 'heartbeatInterval'),
      staleAfter: positiveInt(options.staleAfter ?? 4000, 'staleAfter'),
      probation: nonNegativeInt(options.probation ?? 10000, 'probation'),
    };
    if (this.#heartbeats && this.#monitorOptions.staleAfter <= this.#monitorOptions.heartbeatInterval) {
      throw invalidArgument(`staleAfter (${this.#monitorOptions.staleAfter} ms) must be longer than heartbeatInterval (${this.#monitorOptions.heartbeatInterval} ms)`);
    }
    this.#autoConnect = options.autoConnect ?? true;
    this.#idleTimeout = positiveInt(options.idleTimeout ?? 5000, 'idleTimeout');
    this.#heartbeatBind = options.heartbeatBind === undefined ? undefined : checkAddress(options.heartbeatBind, 'heartbeatBind');
    const rs = options.resync ?? {};
    if (rs === null || typeof rs !== 'object') throw invalidArgument('resync must be an object');
    const regionSize = rs.regionSize ?? DEFAULT_REGION_SIZE;
    if (!Number.isSafeInteger(regionSize) || regionSize < 4096 || (regionSize & (regionSize - 1)) !== 0) {
      throw invalidArgument('resync.regionSize must be a power of two ≥ 4096');
    }
    if (regionSize > this.#limits.maxPayloadLength) throw invalidArgument('resync.regionSize must not exceed limits.maxPayloadLength (one resync write is one mirror request)');
    const rate = rs.rateBytesPerSecond ?? 0;
    if (typeof rate !== 'number' || !(rate >= 0)) throw invalidArgument('resync.rateBytesPerSecond must be a number ≥ 0 (0: unlimited)');
    const hash = rs.hash ?? 'sha1';
    if (!['sha1', 'sha256', 'md5'].includes(hash)) throw invalidArgument('resync.hash must be sha1, sha256 or md5');
    this.#resyncOptions = {
      regionSize,
      concurrency: positiveInt(rs.concurrency ?? 4, 'resync.concurrency', 256),
      rateBytesPerSecond: rate,
      checksum: rs.checksum === true,
      hash,
    };
    const outagePolicy = options.outagePolicy ?? 'degrade';
    if (outagePolicy !== 'degrade' && outagePolicy !== 'suspend') throw invalidArgument('outagePolicy must be degrade or suspend');
    this.nodeId = options.nodeId ?? `primary-${randomBytes(4).toString('hex')}`;
    this.session = randomUUID();
    this.#slots = new ConnectionArray(n);
    this.#inFlight = Array.from({ length: n }, () => new Map<number, Sent>());
    this.#attempts = new Array<number>(n).fill(0);

    const slots = this.#slots;
    const isUp = (): boolean => (this.#monitor !== undefined ? this.#link === 'up' && this.#slots.openCount > 0 : this.#slots.openCount > 0);
    this.#link_ = {
      clock: this.#clock,
      get up() {
        return isUp();
      },
      get connected() {
        return slots.openCount > 0;
      },
      pump: () => this.#pump(),
      retryDelay: (attempt) => this.#backoff(attempt),
      outagePolicy,
      maxAsyncLag: nonNegativeInt(options.maxAsyncLag ?? DEFAULT_MAX_BUFFERED, 'maxAsyncLag'),
      durableDelay: nonNegativeInt(options.durableDelay ?? 20, 'durableDelay'),
      payloadBudget: { used: 0, limit: positiveInt(options.maxBufferedBytes ?? DEFAULT_MAX_BUFFERED, 'maxBufferedBytes'), inFlight: 0 },
      maxPayload: this.#limits.maxPayloadLength,
    };

    if (!Array.isArray(options.volumes) || options.volumes.length === 0) throw invalidArgument('volumes must be a non-empty array');
    for (const cfg of options.volumes) {
      if (cfg === null || typeof cfg !== 'object') throw invalidArgument('each volume must be an object');
      checkVolumeName(cfg.name);
      if (this.#volumes.has(cfg.name)) throw invalidArgument(`volume ${cfg.name} is listed twice`);
      const mode = cfg.mode ?? 'sync';
      if (mode !== 'sync' && mode !== 'async' && mode !== 'local') throw invalidArgument(`volume ${cfg.name}: mode must be sync, async or local`);
      if (cfg.device === null || typeof cfg.device !== 'object' || typeof cfg.device.write !== 'function') {
        throw invalidArgument(`volume ${cfg.name}: device must be a BlockDevice`);
      }
      const volume = new PrimaryVolume(
        cfg.name,
        cfg.device,
        mode,
        newGenerationId(),
        this.#link_,
        new MemoryJournal({ capacityBytes: this.#journalOptions.capacityBytes! }),
        this.#resyncOptions.regionSize,
      );
      if (cfg.initialSync !== undefined && cfg.initialSync !== 'full' && cfg.initialSync !== 'checksum' && cfg.initialSync !== 'none') {
        throw invalidArgument(`volume ${cfg.name}: initialSync must be checksum, full or none`);
      }
      volume.initialSync = cfg.initialSync ?? 'checksum';
      volume.on('mirror-error', (info) => this.emit('mirror-error', { volume: volume.name, ...info }));
      volume.on('state', (state) => {
        this.emit('volume-state', { volume: volume.name, state });
        if (state === 'needs-resync') this.#startResync(volume);
      });
      volume.on('journal-full', (info) => this.emit('journal-full', { volume: volume.name, ...info }));
      volume.on('failback', (info) => this.emit('failback', { volume: volume.name, ...info }));
      volume.on('replayed', (info) => {
        log('volume %s: journal replay done, %d requests (%d bytes) in %d ms', volume.name, info.records, info.bytes, Math.round(info.durationMs));
        this.emit('journal-replayed', { volume: volume.name, ...info });
      });
      volume.on('peer-disk', (disk, previous) => this.emit('peer-disk', { volume: volume.name, disk, previous }));
      if (mode !== 'local') {
        volume.index = this.#mirrored.length;
        this.#mirrored.push(volume);
        if (cfg.state !== undefined) this.#pairStores.set(volume, cfg.state);
      }
      this.#volumes.set(cfg.name, volume);
    }
    this.#sweep = this.#clock.setInterval(() => this.#expire(), Math.max(10, Math.floor(this.#mirrorTimeout / 4)));
    this.#durableTimer = this.#clock.setInterval(() => this.#askDurable(), positiveInt(options.durableInterval ?? 1000, 'durableInterval'));
    // A running primary keeps the process alive, like a listening server, until close().
    this.#keepAlive = setInterval(() => {}, 1 << 30);
  }

  /** The volume called `name`; throws `BM_ERR_UNKNOWN_VOLUME`. */
  volume(name: string): PrimaryVolume {
    const v = this.#volumes.get(name);
    if (v === undefined) throw new BlockMirrorError('BM_ERR_UNKNOWN_VOLUME', `no volume named ${JSON.stringify(name)}`);
    return v;
  }

  /** All volumes, in configuration order. */
  get volumes(): PrimaryVolume[] {
    return [...this.#volumes.values()];
  }

  /** Address of the heartbeat UDP socket (undefined without heartbeats or before start). */
  get heartbeatAddress(): TransportAddress | undefined {
    return this.#channel?.address;
  }

  /** Current link state. */
  get link(): LinkState {
    return this.#link;
  }

  /**
   * Prepares everything local (journals, bitmaps, generations, the heartbeat
   * socket), then — unless `autoConnect` is false — {@link connect}s.
   * @internal called by {@link createPrimary}
   */
  async start(wait: boolean): Promise<void> {
    this.#wait = wait;
    const dir = this.#journalOptions.dir;
    if (dir !== undefined) {
      try {
        await mkdir(dir, { recursive: true });
        for (const v of this.#mirrored) {
          const journal = await FileJournal.open(join(dir, `${v.name}.journal`), {
            capacityBytes: this.#journalOptions.capacityBytes!,
            fsync: this.#journalOptions.fsync ?? 'batch',
          });
          const streamStore = new FileStreamStore(join(dir, `${v.name}.stream`));
          const loaded = await streamStore.load();
          const stream = loaded === undefined ? { id: newStreamId(), reserved: 0, continued: false } : { id: loaded.stream, reserved: loaded.reserved, continued: true };
          const recovered = await v.useJournal(journal, stream, (through) => streamStore.save({ stream: stream.id, reserved: through }), this.#journalOptions.fsync !== 'none');
          if (recovered > 0) log('volume %s: %d journaled requests recovered (stream %s)', v.name, recovered, stream.id);
          const bitmap = await FileDirtyBitmap.open(join(dir, `${v.name}.bitmap`), {
            volumeSize: v.size,
            regionSize: this.#resyncOptions.regionSize,
            flush: this.#journalOptions.fsync === 'none' ? 'none' : 'batch',
          });
          const dirty = v.useBitmap(bitmap);
          if (dirty > 0) log('volume %s: %d regions were dirty at the last stop: they will be resynced', v.name, dirty);
        }
      } catch (error) {
        await this.close({ drain: false });
        throw toBlockMirrorError(error);
      }
    }
    if (this.#mirrored.length === 0) {
      this.#setLink('up');
      return;
    }
    try {
      await this.#loadState(dir);
    } catch (error) {
      await this.close({ drain: false });
      throw toBlockMirrorError(error);
    }
    if (this.#heartbeats) {
      // every listener is bound before the peer is contacted
      try {
        const bind = this.#heartbeatBind ?? { host: (this.#transport as { host?: unknown }).host === undefined ? '0.0.0.0' : String((this.#transport as { host?: unknown }).host), port: 0 };
        this.#channel = await this.#transport.bindDatagram!(bind);
        this.#channel.on('error', (error) => log('heartbeat socket error: %s', error.message));
      } catch (error) {
        await this.close({ drain: false });
        throw toBlockMirrorError(error);
      }
    }
    if (this.#autoConnect) await this.connect();
  }

  /**
   * Contacts the mirror target: starts the heartbeats and opens the n
   * connections (once; later calls do nothing). With `waitForConnection`
   * (default), resolves when all are up and rejects (closing everything) if
   * any first attempt fails; otherwise resolves at once and keeps trying in
   * the background. `createPrimary` calls it unless `autoConnect` is false.
   *
   * @throws {@link BlockMirrorError} `BM_ERR_CLOSED` after {@link close}; a connection or
   *   handshake error (e.g. `BM_ERR_VOLUME_MISMATCH`, `BM_ERR_SETTINGS_MISMATCH`) with `waitForConnection`.
   */
  async connect(): Promise<void> {
    if (this.#closed) throw new BlockMirrorError('BM_ERR_CLOSED', 'the primary is closed');
    if (this.#connectStarted || this.#mirrored.length === 0) return;
    this.#connectStarted = true;
    if (this.#channel !== undefined) this.#startMonitor(this.#channel);
    const opening = this.#openAll(!this.#wait);
    if (!this.#wait) return;
    const errors = await opening;
    if (errors.length > 0) {
      await this.close({ drain: false });
      throw errors.find((e) => CONFIGURATION_REFUSALS.has(e.code)) ?? errors[0];
    }
  }

  /**
   * Loads each mirrored volume's pairing state (and, with a state directory
   * but no journal directory, its persistent write-intent bitmap), and notes
   * the syncs an earlier run left unfinished.
   */
  async #loadState(journalDir: string | undefined): Promise<void> {
    const dir = this.#stateDir;
    if (dir !== undefined) await mkdir(dir, { recursive: true });
    for (const v of this.#mirrored) {
      if (dir !== undefined && journalDir === undefined) {
        const bitmap = await FileDirtyBitmap.open(join(dir, `${v.name}.bitmap`), { volumeSize: v.size, regionSize: this.#resyncOptions.regionSize });
        // the bitmap alone says what the target may lack: recorded as the failback bitmap (PairState.bitmapOf)
        const dirty = v.useBitmap(bitmap, true);
        if (dirty > 0) log('volume %s: %d regions were dirty at the last stop: they will be resynced', v.name, dirty);
      }
      const store = this.#pairStores.get(v) ?? (dir === undefined ? undefined : new FilePairStateStore(join(dir, `${v.name}.state`)));
      if (store !== undefined) await v.usePairStateStore(store);
      if (v.resuming) this.#resuming.add(v);
    }
  }

  /** Starts the link monitor on the bound heartbeat socket (SPEC 1: heartbeats start when the mirror is engaged). */
  #startMonitor(channel: DatagramChannel): void {
    const monitor = new LinkMonitor({
      clock: this.#clock,
      channel,
      peer: this.peer,
      nodeId: this.nodeId,
      session: this.session,
      secret: this.#secret,
      // over TLS without a secret, heartbeats are keyed from the TLS session of slot 0, and only authenticated ones count
      requireKey: this.#transport.supports.sessionKeys === true,
      slots: this.#slots,
      ...this.#monitorOptions,
    });
    this.#monitor = monitor;
    monitor.on('state', (state) => {
      this.#setLink(state);
      if (state === 'down') for (const v of this.#mirrored) v.linkDown(this.#lastError ?? new BlockMirrorError('BM_ERR_CONNECTION_CLOSED', 'the link to the mirror target is down'));
      else for (const v of this.#mirrored) v.linkChanged();
    });
    monitor.on('down', (reason, error) => {
      // a restarted target may come back under another node id: its handshake binds the monitor again
      monitor.expectNode(undefined);
      // the session key is kept (the probation's heartbeats need it); the next slot-0 handshake replaces it
      if (error !== undefined) this.#lastError = toBlockMirrorError(error);
      else if (reason === 'stale') this.#lastError = new BlockMirrorError('BM_ERR_TIMEOUT', `no heartbeat from the mirror target for ${this.#monitorOptions.staleAfter} ms`);
      // SPEC 5: close all n connections; their in-flight requests are requeued
      for (const slot of this.#slots.slots) slot.connection?.destroy(this.#lastError);
      // handshakes still running on the dead path are as dead: the reopen after probation starts afresh
      for (const pending of this.#handshaking) pending?.destroy(this.#lastError);
    });
    monitor.on('reopen', () => void this.#openAll(true));
    monitor.on('rekey', () => this.#scheduleRekey());
    monitor.start();
  }

  /**
   * Over TLS without a secret, a down link whose heartbeats cannot be
   * authenticated (no session key yet, or the target restarted and lost it:
   * see `LinkMonitor.rekeyNeeded`) can never run a probation: its
   * connections are reopened by backoff (`retryDelay`), as without
   * heartbeats, while that lasts. The TLS handshake authenticates the target
   * and slot 0's gives the new key; the link is up once all n are open.
   */
  #scheduleRekey(): void {
    if (this.#closed || this.#rekeyTimer !== undefined) return;
    const delay = this.#backoff(++this.#rekeyAttempt);
    const timer = this.#clock.setTimeout(() => {
      this.#reconnectTimers.delete(timer);
      this.#rekeyTimer = undefined;
      void this.#rekey();
    }, delay);
    this.#rekeyTimer = timer;
    this.#reconnectTimers.add(timer);
  }

  async #rekey(): Promise<void> {
    if (this.#closed || this.#monitor?.rekeyNeeded !== true) {
      this.#rekeyAttempt = 0;
      return;
    }
    log('link down and heartbeats cannot be authenticated: reconnecting (attempt %d)', this.#rekeyAttempt);
    const errors = await this.#openAll(false);
    for (const error of errors) this.emit('connect-error', error);
    if (this.#closed) return;
    if (this.#monitor.rekeyNeeded) this.#scheduleRekey();
    else this.#rekeyAttempt = 0;
  }

  /** Opens every closed slot; resolves with the errors of the attempts that failed. */
  async #openAll(retry: boolean): Promise<BlockMirrorError[]> {
    const attempts = this.#slots.slots.filter((s) => s.connection === undefined && this.#connecting[s.index] !== true).map((slot) => this.#connect(slot, retry));
    return (await Promise.all(attempts)).filter((e): e is BlockMirrorError => e !== undefined);
  }

  /**
   * Opens slot `slot` (handshake included). Resolves with the error when it
   * failed; with `retry`, a failure also takes the link down (heartbeats) or
   * schedules a reconnect (backoff).
   */
  async #connect(slot: ConnectionSlot, retry: boolean): Promise<BlockMirrorError | undefined> {
    // one connection per slot: a reopen while this slot's handshake still runs does nothing
    // (our own flag: the link monitor may mark a connecting slot closed meanwhile)
    if (this.#closed || this.#connecting[slot.index] === true || slot.connection !== undefined) return undefined;
    this.#connecting[slot.index] = true;
    try {
      return await this.#connectOnce(slot, retry);
    } finally {
      this.#connecting[slot.index] = false;
      this.#handshaking[slot.index] = undefined;
    }
  }

  async #connectOnce(slot: ConnectionSlot, retry: boolean): Promise<BlockMirrorError | undefined> {
    slot.status = 'connecting';
    let conn: FramedConnection | undefined;
    // the generations this handshake offers (they may change while it runs)
    const offered = this.#mirrored.map((v): [PrimaryVolume, string] => [v, v.generation]);
    try {
      const raw = await this.#transport.connect(this.peer, { timeout: this.#handshakeTimeout });
      conn = new FramedConnection(raw, { limits: this.#limits, payloadChecksum: this.#payloadChecksum });
      this.#handshaking[slot.index] = conn;
      const offers: VolumeOffer[] = this.#mirrored.map((v) => ({
        name: v.name,
        size: v.size,
        blockSize: v.blockSize,
        generation: v.generation,
        history: v.generations.history,
        stream: v.stream,
        base: v.ackedSeq,
        ...(v.initialSync === 'none' ? { clean: 1 as const } : {}),
        ...(v.resolution === 'discard-remote' ? { discard: 1 as const } : {}),
        ...(v.demoted ? { ho: 1 as const } : {}),
      }));
      const result = await clientHandshake(conn, {
        nodeId: this.nodeId,
        session: this.session,
        slot: slot.index,
        slots: this.#slots.size,
        secret: this.#secret,
        volumes: offers,
        timeout: this.#handshakeTimeout,
        clock: this.#clock,
        heartbeatPort: this.#monitor === undefined ? undefined : this.#channel?.address.port,
        heartbeats: this.#monitor === undefined ? undefined : { interval: this.#monitorOptions.heartbeatInterval, staleAfter: this.#monitorOptions.staleAfter },
      });
      if (this.#closed) {
        conn.close();
        return undefined;
      }
      // over TLS without a secret, slot 0's TLS session keys the heartbeats: the target derived the
      // same key as it accepted this handshake, so take it now, even if this connection is given up below
      if (slot.index === 0) {
        const key = heartbeatKeyOf(raw, this.session);
        if (key !== undefined) this.#monitor?.useKey(key);
      }
      // A write while no connection was open started a new generation after
      // this handshake offered the old one: the target holds the old one and
      // would never learn the new one (a later promotion of it would then
      // look like a split brain). Reconnect offering the current one.
      if (offered.some(([v, g]) => v.generation !== g)) {
        throw new BlockMirrorError('BM_ERR_CONNECT_FAILED', 'the handshake offered a generation the primary has left meanwhile; reconnecting with the current one');
      }
      this.#peerNode = result.peerNode;
      // heartbeats are accepted from the node this handshake proved only (until the link goes down)
      this.#monitor?.expectNode(result.peerNode);
      this.#attempts[slot.index] = 0;
      // what the target holds decides what is (re)sent, before anything is sent on this connection
      for (const rv of result.volumes) {
        const v = this.#volumes.get(rv.name);
        if (v === undefined) continue;
        // what the target lacks is recorded (durably) before anything is sent
        const method = await v.peerReady(rv, result.peerNode);
        if (method === 'checksum') this.#checksumSync.add(v);
        else if (method === 'full' || method === 'bitmap') this.#checksumSync.delete(v);
        v.targetReady(rv.applied, rv.inc, rv.durable);
      }
      if (this.#closed) {
        conn.close();
        return undefined;
      }
      if (conn.closed) throw new BlockMirrorError('BM_ERR_CONNECTION_CLOSED', 'the connection to the mirror target closed during the handshake');
      this.#open(slot, conn);
      return undefined;
    } catch (error) {
      let err = toBlockMirrorError(error, 'BM_ERR_CONNECT_FAILED');
      conn?.destroy();
      // A handshake that took long may offer a generation we left meanwhile
      // (a write while no connection was up): the target, which adopted the
      // newer one from another connection, refuses the old one. Not a split
      // brain: the next attempt offers the current generation.
      if (err.code === 'BM_ERR_SPLIT_BRAIN' && offered.some(([v, g]) => v.generation !== g)) {
        err = new BlockMirrorError('BM_ERR_CONNECT_FAILED', `the handshake offered a generation the primary has left meanwhile; retrying with the current one (${err.message})`, { cause: err });
      }
      if (err.code === 'BM_ERR_SPLIT_BRAIN') {
        const name = err.details.volume;
        const v = typeof name === 'string' ? this.#volumes.get(name) : undefined;
        if (v !== undefined) v.splitBrainDetected();
        else for (const m of this.#mirrored) m.splitBrainDetected();
      }
      slot.status = 'closed';
      this.#lastError = err;
      log('slot %d: connect failed: %s', slot.index, err.message);
      if (!retry) return err;
      this.emit('connect-error', err);
      if (this.#monitor !== undefined) {
        // the link goes down; the connections reopen after the next clean probation
        for (const other of this.#slots.slots) other.connection?.destroy(err);
        this.#monitor.connectionsFailed(err);
      } else this.#scheduleReconnect(slot, CONFIGURATION_REFUSALS.has(err.code));
      return err;
    }
  }

  #open(slot: ConnectionSlot, conn: FramedConnection): void {
    slot.connection = conn;
    slot.status = 'open';
    slot.lastHeartbeat = this.#clock.now();
    slot.inFlight = 0;
    // SPEC 6: an idle handler checks its slot every T3 and exits if the slot was closed
    // A connection that stays silent for T3 is probed with a PING; silent for
    // another T3, it is given up (a black-holed path never closes by itself)
    // and its requests go out again on the others. Idle ones too: a target
    // that lost power and restarted still answers heartbeats, and only the
    // dead connection tells the primary that the pair is not in sync any more.
    const idle = new IdleWatch({
      clock: this.#clock,
      idleTimeout: this.#idleTimeout,
      slot,
      connection: conn,
      onExpire: () => conn.destroy(),
      onIdle: (idleFor) => {
        if (slot.connection !== conn) return;
        if (idleFor >= 2 * this.#idleTimeout) conn.destroy(new BlockMirrorError('BM_ERR_TIMEOUT', `no answer from the mirror target on connection ${slot.index} for ${idleFor} ms`));
        else conn.send(MessageType.PING, { t: this.#clock.now() });
      },
    });
    this.#idle.add(idle);
    conn.on('frame', (frame) => {
      idle.touch();
      this.#onFrame(slot, frame);
    });
    conn.on('drain', () => this.#pump());
    conn.once('close', (error) => {
      idle.stop();
      this.#idle.delete(idle);
      this.#onClose(slot, conn, error);
    });
    log('slot %d open', slot.index);
    this.emit('slot', { index: slot.index, status: 'open' });
    if (this.#monitor === undefined) this.#updateLink();
    else if (this.#slots.openCount === this.#slots.size) this.#monitor.connected();
    this.#pump();
  }

  #onClose(slot: ConnectionSlot, conn: FramedConnection, error: BlockMirrorError | undefined): void {
    if (slot.connection !== conn) return;
    slot.connection = undefined;
    slot.status = 'closed';
    slot.inFlight = 0;
    const sent = this.#inFlight[slot.index]!;
    const requeued = [...sent.values()];
    sent.clear();
    for (const { volume, req } of requeued) volume.requeue(req);
    const err = error ?? new BlockMirrorError('BM_ERR_CONNECTION_CLOSED', 'connection to the mirror target closed');
    if (error !== undefined) this.#lastError = error;
    log('slot %d closed (%d requests requeued): %s', slot.index, requeued.length, err.message);
    this.emit('slot', { index: slot.index, status: 'closed', error: err });
    if (this.#monitor !== undefined) {
      if (!this.#closed && this.#monitor.connectionsFailed(err)) this.#lastError = err;
      return;
    }
    this.#updateLink(err);
    if (!this.#closed) {
      this.#pump();
      this.#scheduleReconnect(slot, error !== undefined && CONFIGURATION_REFUSALS.has(error.code));
    }
  }

  #scheduleReconnect(slot: ConnectionSlot, fatal: boolean): void {
    if (this.#closed) return;
    const attempt = ++this.#attempts[slot.index]!;
    const delay = fatal ? this.#retry.max : this.#backoff(attempt);
    const timer = this.#clock.setTimeout(() => {
      this.#reconnectTimers.delete(timer);
      void this.#connect(slot, true);
    }, delay);
    this.#reconnectTimers.add(timer);
  }

  #backoff(attempt: number): number {
    return Math.min(this.#retry.max, this.#retry.min * 2 ** Math.min(attempt - 1, 20));
  }

  #updateLink(error?: BlockMirrorError): void {
    const open = this.#slots.openCount;
    const next: LinkState = open > 0 ? 'up' : this.#link === 'connecting' ? 'connecting' : 'down';
    if (next === this.#link) return;
    this.#setLink(next);
    if (next !== 'up') {
      const err = error ?? new BlockMirrorError('BM_ERR_CONNECTION_CLOSED', 'the link to the mirror target is down');
      for (const v of this.#mirrored) v.linkDown(err);
    } else {
      for (const v of this.#mirrored) v.linkChanged();
    }
  }

  #setLink(state: LinkState): void {
    this.#link = state;
    log('link %s', state);
    this.emit('link', state);
    if (state === 'up') for (const v of this.#mirrored) if (v.resyncBytes > 0) this.#startResync(v);
  }

  #settings(volume: PrimaryVolume, operation: 'resync' | 'verify', checksum: boolean): RunSettings {
    return {
      clock: this.#clock,
      concurrency: this.#resyncOptions.concurrency,
      rateBytesPerSecond: this.#resyncOptions.rateBytesPerSecond,
      checksum,
      hash: this.#resyncOptions.hash,
      onProgress: (snapshot) => {
        this.#progress.set(volume, { operation, snapshot });
        this.emit('progress', { volume: volume.name, operation, ...snapshot });
      },
    };
  }

  /** Starts a resync of `volume` when the link is up and none runs. */
  #startResync(volume: PrimaryVolume): void {
    if (this.#closed || this.#resyncs.has(volume) || this.#link !== 'up' || volume.resyncBytes === 0) return;
    // checksumOwed: a handshake still recording that the target must be compared (see PrimaryVolume.checksumOwed)
    const checksum = this.#resyncOptions.checksum || this.#checksumSync.has(volume) || volume.checksumOwed;
    if (this.#resuming.delete(volume)) {
      log('volume %s: resuming an interrupted resync, %d bytes left', volume.name, volume.resyncBytes);
      this.emit('resync-resumed', { volume: volume.name, bytes: volume.resyncBytes });
    }
    const run = runResync(volume, this.#settings(volume, 'resync', checksum)).then(
      (result) => {
        this.#resyncs.delete(volume);
        // the last progress report may predate the end: no stale progress in the status
        this.#progress.delete(volume);
        this.#resyncAttempts.delete(volume);
        this.#checksumSync.delete(volume);
        if (checksum) volume.checksumOwed = false;
        log('volume %s: resync done, %d of %d regions sent (%d bytes)', volume.name, result.regionsSent, result.regions, result.bytesSent);
        this.emit('resync-done', { volume: volume.name, method: checksum ? 'checksum' : 'bitmap', ...result });
        if (volume.resyncBytes > 0) this.#startResync(volume);
      },
      (error: unknown) => {
        this.#resyncs.delete(volume);
        this.#progress.delete(volume);
        const err = toBlockMirrorError(error);
        log('volume %s: resync stopped: %s', volume.name, err.message);
        if (this.#closed) return;
        this.emit('resync-error', { volume: volume.name, error: err });
        // a failed read or write (not only a link loss) stops a resync: it is retried with backoff
        const attempt = (this.#resyncAttempts.get(volume) ?? 0) + 1;
        this.#resyncAttempts.set(volume, attempt);
        const timer = this.#clock.setTimeout(() => {
          this.#reconnectTimers.delete(timer);
          this.#startResync(volume);
        }, this.#backoff(attempt));
        this.#reconnectTimers.add(timer);
      },
    );
    this.#resyncs.set(volume, run);
  }

  /**
   * Resyncs `name` now (regions marked dirty, or the whole volume with
   * `all`), and resolves when it is done. Waits for a resync already running.
   */
  async resync(name: string, options: { all?: boolean } = {}): Promise<void> {
    const volume = this.#mirroredVolume(name);
    if (options.all === true) volume.markForResync();
    for (;;) {
      const running = this.#resyncs.get(volume);
      if (running !== undefined) await running;
      // closed meanwhile: #startResync would start nothing and this loop would spin for good
      else if (this.#closed) throw new BlockMirrorError('BM_ERR_CLOSED', 'the primary is closed');
      else if (volume.resyncBytes === 0) return;
      else if (this.#link !== 'up') throw new BlockMirrorError('BM_ERR_CONNECTION_CLOSED', 'the link to the mirror target is not up');
      else this.#startResync(volume);
    }
  }

  /**
   * Applies an operator's decision to the split brain of volume `name` (the
   * target refused it with `BM_ERR_SPLIT_BRAIN`: state `split-brain`):
   *
   * - `discard-remote`: the target's data is given up. The decision is
   *   recorded durably and offered at the next handshake (retried as usual);
   *   the target then accepts the volume, drops its own data and is resynced
   *   by checksum (only regions that differ are sent). Cleared once applied.
   * - `discard-local`: not done in place (data only flows from a primary to
   *   its targets): refused with `BM_ERR_NOT_SUPPORTED`. Give this node's
   *   writes up by a role swap instead: promote the target (`promote` with
   *   force), restart this node as its mirror, and resolve there with
   *   `discard-local`.
   *
   * @throws {BlockMirrorError} `BM_ERR_UNKNOWN_VOLUME`, `BM_ERR_INVALID_ARGUMENT`,
   *   `BM_ERR_NOT_DIVERGED` (the volume is not in split brain), `BM_ERR_NOT_SUPPORTED`.
   */
  async resolve(name: string, discard: Resolution): Promise<{ volume: string; resolution: Resolution }> {
    const volume = this.#mirroredVolume(name);
    if (discard === 'discard-local') {
      throw new BlockMirrorError(
        'BM_ERR_NOT_SUPPORTED',
        `volume ${name}: a primary cannot discard its own data in place; promote the mirror (blockmirror promote --force), restart this node as its mirror and resolve there with --discard-local`,
        { details: { volume: name } },
      );
    }
    if (discard !== 'discard-remote') throw invalidArgument('resolve takes discard-local or discard-remote');
    await volume.resolveDiscardRemote();
    return { volume: name, resolution: discard };
  }

  /**
   * Demotes volume `name` (the first half of a planned failover): writes are
   * refused from now on (`BM_ERR_READ_ONLY`; an NBD export answers `EPERM`),
   * every write already accepted is drained to the target, which is told its
   * image is up-to-date and handed over; then the volume's pairing state says
   * `target` (a restart as a primary is refused with `BM_ERR_DEMOTED`) and its
   * state is `demoted`. Promote the target next (`promote` without force),
   * then restart this node as its mirror (failback).
   *
   * A demotion that cannot drain within `timeout` ms (default 30000) is
   * undone: the volume is writable again and the error is thrown.
   *
   * @throws {BlockMirrorError} `BM_ERR_UNKNOWN_VOLUME`, `BM_ERR_CONNECTION_CLOSED`
   *   (the target is not connected: promote it with force instead),
   *   `BM_ERR_TIMEOUT`, `BM_ERR_CLOSED`.
   */
  async demote(name: string, options: { timeout?: number } = {}): Promise<{ volume: string; generation: string }> {
    const volume = this.#mirroredVolume(name);
    if (volume.demoted) return { volume: name, generation: volume.generation };
    if (this.#closed) throw new BlockMirrorError('BM_ERR_CLOSED', 'the primary is closed');
    if (this.#link !== 'up') throw new BlockMirrorError('BM_ERR_CONNECTION_CLOSED', `volume ${name} cannot be handed over: the link to the mirror target is not up (promote the mirror with force instead)`);
    await volume.stopWrites();
    try {
      await this.drain(options.timeout ?? 30000);
      if (this.#link !== 'up') throw new BlockMirrorError('BM_ERR_CONNECTION_CLOSED', `volume ${name} cannot be handed over: the link to the mirror target went down`);
    } catch (error) {
      await volume.stopWrites(false);
      throw error;
    }
    await volume.handOver();
    log('volume %s demoted (generation %s handed over)', name, volume.generation);
    return { volume: name, generation: volume.generation };
  }

  /**
   * Online verify: compares the digests of every region (or of `offset`/`length`)
   * on both sides while writes continue. Mismatches are reported (event
   * `verify-mismatch` and the result); with `repair` they are marked for resync.
   */
  async verify(name: string, options: { offset?: number; length?: number; repair?: boolean } = {}): Promise<VerifyResult> {
    const volume = this.#mirroredVolume(name);
    if (this.#link !== 'up') throw new BlockMirrorError('BM_ERR_CONNECTION_CLOSED', 'the link to the mirror target is not up');
    const offset = options.offset ?? 0;
    const length = options.length ?? volume.size - offset;
    const bitmap = volume.bitmap;
    const first = bitmap.regionIndex(offset);
    const last = bitmap.regionIndex(Math.max(offset, offset + length - 1));
    const regions = [];
    for (let i = first; i <= last; i++) regions.push(bitmap.region(i));
    let result: VerifyResult;
    try {
      result = await runVerify(volume, regions, this.#settings(volume, 'verify', false));
    } finally {
      if (this.#progress.get(volume)?.operation === 'verify') this.#progress.delete(volume);
    }
    for (const m of result.mismatches) {
      this.emit('verify-mismatch', { volume: name, ...m });
      if (options.repair === true) volume.markForResync(m.offset, m.length);
    }
    return result;
  }

  #mirroredVolume(name: string): PrimaryVolume {
    const volume = this.volume(name);
    if (volume.mode === 'local') throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', `volume ${name} is not mirrored`);
    return volume;
  }

  /**
   * Sends queued requests while some slot has room. The requests of one tick
   * go to one worker's connection (the next worker's in the next tick), so
   * that the transport writes them with one system call and wakes the target
   * once, instead of once per connection (measured on loopback with four
   * connections, fio 4 KiB × 32 sync over NBD: 153–162 → 165–171 MB/s, level
   * with a single connection, against one request per worker in turn).
   */
  #pump(): void {
    if (this.#pumping || this.#closed) return;
    this.#pumping = true;
    try {
      const volumes = this.#mirrored;
      const budget = this.#link_.payloadBudget;
      for (;;) {
        let sent = false;
        for (const volume of volumes) {
          const req = volume.nextToSend();
          if (req === undefined) continue;
          // Everything of the volume in flight comes after this request: the target may hold all of it until
          // this one arrives, so it must not wait for room that only their answers could make (in the window
          // or in the budget). One such request at a time: once it is in flight, the next one waits for it.
          // (asked only when the request would wait: it walks the volume's requests in flight)
          let awaited: boolean | undefined;
          const isAwaited = (): boolean => (awaited ??= volume.awaitedInFlight(req));
          // payloads in flight stay within the payload budget; a write a caller waits for goes anyway (its
          // bytes are in RAM whether it is sent or not)
          if (req.kind === 'write' && req.onDone === undefined && budget.inFlight > 0 && budget.inFlight + req.length > budget.limit && !isAwaited()) continue;
          if (!this.#batchOpen) {
            this.#batchOpen = true;
            this.#worker = (this.#worker + 1) % this.#slots.size;
            process.nextTick(this.#closeBatch);
          }
          // a resend (its connection closed, or the target failed it) goes ahead of the window: newer
          // requests in flight may be waiting for it on the target; so does an awaited one (above)
          const slot = this.#slots.pick(this.#worker, req.resend ? Number.MAX_SAFE_INTEGER : this.#maxInFlight) ?? (isAwaited() ? this.#slots.pick(this.#worker, Number.MAX_SAFE_INTEGER) : undefined);
          if (slot === undefined) continue; // another volume's resend may still go
          volume.queue.shift();
          this.#send(slot, volume, req);
          sent = true;
        }
        if (!sent) return;
      }
    } finally {
      this.#pumping = false;
    }
  }

  #send(slot: ConnectionSlot, volume: PrimaryVolume, req: MirrorRequest): void {
    const id = ++this.#nextId;
    const conn = slot.connection!;
    volume.sending(req, slot.index);
    req.resend = false;
    slot.inFlight++;
    slot.sent++;
    this.#inFlight[slot.index]!.set(id, { volume, req });
    const vol = volume.index;
    if (req.kind === 'write' || req.kind === 'zero') {
      const h: WriteHeader = { id, vol, off: req.offset, seq: req.seq, bar: req.barrier };
      if (req.resync) {
        h.rs = 1;
        const p = volume.resyncProgress;
        if (p !== undefined) h.sync = [p.done, p.total];
      }
      // a zero range (written zeroes, a trim, or a resync copy of a range that reads as zeroes) is a record without payload
      if (req.kind === 'zero') conn.send(MessageType.ZERO, { ...h, len: req.length }, undefined, req.fua ? FrameFlag.FUA : 0);
      else conn.send(MessageType.WRITE, h, req.data, req.fua ? FrameFlag.FUA : 0);
    } else if (req.kind === 'skip') {
      conn.send(MessageType.SKIP, req.owed === true ? { id, vol, seq: req.seq, end: req.end, rs: 1 } : { id, vol, seq: req.seq, end: req.end });
    } else if (req.kind === 'hash') {
      conn.send(MessageType.HASH, { id, vol, off: req.offset, len: req.length, bar: req.barrier, alg: req.alg });
    } else {
      const h: FlushHeader = { id, vol, bar: req.barrier };
      if (req.upToDate === true) h.disk = 'up-to-date';
      if (req.handover === true) h.ho = 1;
      const p = volume.resyncProgress;
      if (p !== undefined) h.sync = [p.done, p.total];
      conn.send(MessageType.FLUSH, h);
    }
  }

  #onFrame(slot: ConnectionSlot, frame: Frame): void {
    const conn = slot.connection;
    if (conn === undefined) return;
    try {
      if (frame.type === MessageType.WRITE_ACK || frame.type === MessageType.FLUSH_ACK || frame.type === MessageType.HASH_ACK) {
        const ack = frame.type === MessageType.HASH_ACK ? parseHashAck(frame.header) : parseAck(frame.type, frame.header);
        const sent = this.#inFlight[slot.index]!.get(ack.id);
        if (sent === undefined) throw new BlockMirrorError('BM_ERR_PROTOCOL', `acknowledgement for unknown request ${ack.id}`);
        this.#inFlight[slot.index]!.delete(ack.id);
        slot.inFlight--;
        if (ack.code === undefined) {
          const digest = (ack as HashAckHeader).digest;
          sent.volume.acknowledged(sent.req, digest === undefined ? undefined : Buffer.from(digest), ack.durable, ack.disk);
        }
        else {
          const code = isErrorCode(ack.code) ? ack.code : 'BM_ERR_MIRROR_WRITE_FAILED';
          sent.volume.failed(sent.req, new BlockMirrorError(code, `mirror target: ${ack.message ?? ack.code}`, { details: { peerCode: ack.code } }));
        }
        this.#pump();
      } else if (frame.type === MessageType.ERROR) {
        const e = parseError(frame.header);
        conn.destroy(new BlockMirrorError(isErrorCode(e.code) ? e.code : 'BM_ERR_PROTOCOL', `mirror target: ${e.message}`));
      } else if (frame.type === MessageType.PING) {
        conn.send(MessageType.PONG, frame.header);
      } else if (frame.type !== MessageType.PONG) {
        throw new BlockMirrorError('BM_ERR_PROTOCOL', `unexpected message type ${frame.type} from the mirror target`);
      }
    } catch (error) {
      conn.fail(toBlockMirrorError(error, 'BM_ERR_PROTOCOL'));
    }
  }

  /** Asks the target to make acknowledged requests durable (see `durableInterval`). */
  #askDurable(): void {
    if (this.#closed || this.#link !== 'up') return;
    for (const v of this.#mirrored) void v.makeDurable();
  }

  #expire(): void {
    const now = this.#clock.now();
    for (const v of this.#mirrored) if (v.mode === 'sync') v.expireWaiters(now, this.#mirrorTimeout);
  }

  /**
   * Resolves when every mirrored volume has nothing pending, no region left
   * to resync (an initial sync included), and the target reported everything
   * durable (and its image up-to-date), or rejects with `BM_ERR_TIMEOUT`.
   */
  async drain(timeout = 30000): Promise<void> {
    await this.#drainAcked(timeout, true);
    if (this.#link === 'up') await Promise.all(this.#mirrored.map((v) => v.makeDurable()));
  }

  /** Waits until nothing is pending (and, with `resyncs`, no region is left to resync). */
  async #drainAcked(timeout: number, resyncs: boolean): Promise<void> {
    const idle = (): boolean => this.#mirrored.every((v) => v.idle && (!resyncs || (!v.resyncing && v.resyncBytes === 0)));
    if (idle()) return;
    await new Promise<void>((resolve, reject) => {
      const check = (): void => {
        if (!idle()) return;
        cleanup();
        resolve();
      };
      const timer = this.#clock.setTimeout(() => {
        cleanup();
        reject(new BlockMirrorError('BM_ERR_TIMEOUT', `volumes still had pending mirror requests after ${timeout} ms`));
      }, timeout);
      const cleanup = (): void => {
        this.#clock.clearTimeout(timer);
        this.off('volume-state', check);
        for (const v of this.#mirrored) v.off('idle', check);
      };
      this.on('volume-state', check);
      for (const v of this.#mirrored) v.on('idle', check);
    });
  }

  /** Plain-object status (JSON-serialisable). */
  status(): PrimaryStatus {
    const volumes: Record<string, PrimaryVolumeStatus> = {};
    for (const v of this.#volumes.values()) {
      volumes[v.name] = v.status();
      const p = this.#progress.get(v);
      if (p !== undefined && !p.snapshot.finished) volumes[v.name]!.progress = { operation: p.operation, ...p.snapshot };
    }
    const peer: PrimaryStatus['peers'][number] = {
      address: `${this.peer.host}:${this.peer.port}`,
      node: this.#peerNode,
      link: this.#link,
      connections: this.#slots.snapshot(this.#clock),
    };
    if (this.#monitor !== undefined) {
      const m = this.#monitor.status();
      peer.heartbeats = {
        sent: m.heartbeatsSent,
        received: m.heartbeatsReceived,
        rejected: Object.values(m.heartbeatsRejected).reduce((a, b) => a + b, 0),
        rejectedByReason: { ...m.heartbeatsRejected },
        auth: this.#monitor.heartbeatAuth,
        intervalMs: this.#monitorOptions.heartbeatInterval,
        staleAfterMs: this.#monitorOptions.staleAfter,
      };
      if (m.lastHeartbeatReceived !== undefined) peer.heartbeats.lastReceivedAt = wallClockIso(this.#clock, m.lastHeartbeatReceived);
      if (m.probationEndsAt !== undefined) peer.heartbeats.probationEndsAt = wallClockIso(this.#clock, m.probationEndsAt);
    }
    if (this.#lastError !== undefined) peer.lastError = { code: this.#lastError.code, message: this.#lastError.message };
    return { role: 'primary', node: this.nodeId, peers: [peer], volumes };
  }

  /**
   * Stops: with `drain` (default true) first waits up to `timeout` ms for
   * pending mirror requests while the link is up (not for a running resync:
   * it resumes at the next start, from the persistent bitmap of a state or
   * journal directory); then closes the connections. Devices are not closed
   * (they belong to the caller).
   */
  async close(options: { drain?: boolean; timeout?: number } = {}): Promise<void> {
    if (this.#closed) return;
    if ((options.drain ?? true) && this.#link === 'up') {
      try {
        await this.#drainAcked(options.timeout ?? 30000, false);
        if (this.#link === 'up') await Promise.all(this.#mirrored.map((v) => v.makeDurable()));
      } catch {
        // close anyway; status told what is pending
      }
    }
    this.#closed = true;
    // a clean stop records what the target holds and when the pair was last in sync
    for (const v of this.#mirrored) await v.savePairState().catch((error: unknown) => log('volume %s: pair state not recorded: %s', v.name, (error as Error).message));
    this.#clock.clearInterval(this.#sweep);
    this.#clock.clearInterval(this.#durableTimer);
    clearInterval(this.#keepAlive);
    this.#monitor?.stop();
    for (const idle of this.#idle) idle.stop();
    this.#idle.clear();
    await this.#channel?.close();
    for (const t of this.#reconnectTimers) this.#clock.clearTimeout(t);
    this.#reconnectTimers.clear();
    for (const v of this.#volumes.values()) v.shutdown();
    const closing: Promise<void>[] = [];
    for (const slot of this.#slots.slots) {
      const conn = slot.connection;
      if (conn !== undefined && !conn.connection.closed) {
        closing.push(new Promise<void>((resolve) => conn.connection.once('close', () => resolve())));
        // drained (or not asked to): nothing in flight is worth a graceful end that a dead peer would never finish
        conn.destroy();
      }
    }
    await Promise.all(closing);
    for (const v of this.#volumes.values()) {
      await v.journal.close();
      await v.bitmap.close();
    }
  }
}

/**
 * Creates a primary and opens its connection array to `options.peer`.
 *
 * ```ts
 * const primary = await createPrimary({
 *   peer: { host: '127.0.0.1', port: 7000 },
 *   volumes: [{ name: 'vol0', device: await FileBlockDevice.open('vol0.img', { size: 64 << 20 }), mode: 'sync' }],
 * });
 * await primary.volume('vol0').write(0, Buffer.alloc(4096, 1));
 * ```
 */
export async function createPrimary(options: PrimaryOptions): Promise<Primary> {
  const dir = options.stateDir ?? (options.journal !== null && typeof options.journal === 'object' ? options.journal.dir : undefined);
  if (options.nodeId === undefined && typeof dir === 'string' && dir !== '') {
    // the node id kept in the state directory (see PrimaryOptions.nodeId)
    await mkdir(dir, { recursive: true });
    options = { ...options, nodeId: await persistentNodeId(dir, 'primary') };
  }
  const primary = new Primary(options);
  await primary.start(options.waitForConnection ?? true);
  return primary;
}

