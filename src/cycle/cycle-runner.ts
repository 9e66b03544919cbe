/**
 * {@link CycleSource}: the freeze/copy cycle engine of a primary (SPEC 28–35).
 *
 * One cycle: **freeze** every volume of the consistency group at one instant
 * (phase `frozen`) → **copy** the frozen layer's changed granules plus its
 * table to every target (`copying`; cycle 1, or a target without an image of
 * this volume, gets the whole image) → each target stages, commits and
 * acknowledges → **merge** into the base the frozen layers every target has
 * (`merging`) → `idle` until the next freeze.
 *
 * - The next freeze waits for the slowest connected target: cycles never
 *   overlap, so the effective interval is at least the copy time.
 * - A target that is down keeps its last complete image; the frozen layers it
 *   lacks are kept (up to `maxKeptLayers` freezes behind), and when it comes
 *   back it catches up with one transfer of their union. A target further
 *   behind gets a full copy.
 * - `break()` stops after the current cycle; `freezeNow()` starts one at once.
 *
 * @module
 */
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { EventEmitter } from 'eventemitter3';
import createDebug from 'debug';
import { BlockMirrorError, invalidArgument, toBlockMirrorError } from '../errors.js';
import { systemClock, type Clock, type TimerHandle } from '../clock.js';
import type { Transport, TransportAddress } from '../transport/transport.js';
import { TcpTransport } from '../transport/tcp.js';
import { DEFAULT_CODEC_LIMITS, type CodecLimits } from '../codec/frame.js';
import type { VolumeOffer } from '../codec/messages.js';
import { nodeFileSystem, type FileSystem } from '../storage/file-system.js';
import { nonNegativeInt, secretBytes } from '../replication/options.js';
import { ConsistencyGroup } from './consistency-group.js';
import { CycleLink, cycleVolumeOffer, type CycleLinkState } from './cycle-link.js';
import type { LayeredVolume, LayeredVolumeStatus } from './layered-volume.js';
import type { TransferStats } from './transfer.js';

const log = createDebug('blockmirror:cycle');
const TARGETS_FORMAT = 'blockmirror-cycle-targets';

/** Phase of a {@link CycleSource}. */
export type CyclePhase = 'idle' | 'frozen' | 'copying' | 'merging' | 'stopped';

/** A target of a cycle source. */
export interface CycleTargetConfig {
  address: TransportAddress;
  /** Name in status and events (default `host:port`); also the key of its saved progress. */
  name?: string;
}

/** Options of {@link createCycleSource}. */
export interface CycleSourceOptions {
  /** The volumes, frozen together as one consistency group (names as on the targets). */
  volumes: Array<{ name: string; volume: LayeredVolume }>;
  /** The targets; each gets every freeze. */
  targets: Array<TransportAddress | CycleTargetConfig>;
  /** Directory of the group's state files (default: the directory of the first volume). */
  stateDir?: string;
  /** Name of the group's state files `<group>.group` and `<group>.targets` (default `cycle-group`). */
  group?: string;
  /** Transport (default: a new {@link TcpTransport}). */
  transport?: Transport;
  /** File system of the group's state files (default: the real one; a simulation passes files in memory). */
  fs?: FileSystem;
  /** Shared secret (HMAC-SHA256 challenge–response on every connection). */
  secret?: string | Uint8Array;
  /** Node id (default: random). */
  nodeId?: string;
  clock?: Clock;
  limits?: Partial<CodecLimits>;
  /** Send payload CRC-32s (default true). */
  payloadChecksum?: boolean;
  /** Handshake timeout in ms (default 10000). */
  handshakeTimeout?: number;
  /**
   * A target connection silent this long (ms) while a transfer runs is probed
   * with a PING; silent twice as long, it is dropped and reconnected, and the
   * transfer is retried (default 5000).
   */
  idleTimeout?: number;
  /**
   * Milliseconds from one freeze to the next (default 60000); 0: freezes only
   * on {@link CycleSource.freezeNow}. A cycle that takes longer delays the next
   * freeze until it ends (minimum interval = copy time).
   */
  interval?: number;
  /** Bandwidth cap per target in bytes per second (default: none). */
  bandwidth?: number;
  /** Frozen layers kept for a lagging target, counted in freezes behind the last one (default 16). */
  maxKeptLayers?: number;
  /** Reconnect backoff in ms (default 100 … 5000). */
  retryDelay?: { min: number; max: number };
  /** Largest data payload per frame in bytes (default 1 MiB). */
  maxPayload?: number;
  /** Start cycling when created (default true); otherwise call {@link CycleSource.start}. */
  autoStart?: boolean;
  /**
   * `createCycleSource` resolves only once every target link made its first
   * connection attempt, so that a first `freezeNow()` finds the reachable
   * targets connected (default true). A target that could not be reached is
   * retried in the background either way.
   */
  waitForConnection?: boolean;
  /**
   * Contact the targets as part of `createCycleSource` (default true).
   * `false`: only the local state is opened; call {@link CycleSource.connect}
   * once the caller's own listeners are bound (then {@link CycleSource.start}
   * when `autoStart` is false too).
   */
  autoConnect?: boolean;
}

/** Progress of one target. */
export interface CycleTargetProgress {
  name: string;
  address: string;
  node: string | undefined;
  link: CycleLinkState;
  /** Last complete freeze the target holds of every volume (0: none). */
  freeze: number;
  /** Recovery point: wall-clock time of that freeze (ISO 8601; undefined if unknown). */
  recoveryPointDate: string | undefined;
  /** Freezes taken that the target does not hold yet. */
  lagCycles: number;
  /** Bytes sent to it in the last cycle. */
  bytesSentLastCycle: number;
  /** Bytes sent to it since start. */
  bytesSentTotal: number;
  /** Transfers to it that failed since start (each is retried). */
  transferErrors: number;
  lastError?: { code: string; message: string };
}

/** Plain-object status of a {@link CycleSource}. */
export interface CycleSourceStatus {
  role: 'cycle-source';
  node: string;
  /** Cycle number = number of the last freeze. */
  cycle: number;
  phase: CyclePhase;
  /** Wall-clock time (ISO 8601) of the last freeze (undefined if unknown). */
  lastFreezeAt: string | undefined;
  /** Duration of the last completed cycle in ms. */
  lastCycleMs: number | undefined;
  /** Bytes sent to all targets in the last cycle. */
  bytesSentLastCycle: number;
  volumes: Record<string, LayeredVolumeStatus>;
  targets: CycleTargetProgress[];
}

/** Outcome of one target in a cycle. */
export interface CycleTargetResult {
  target: string;
  ok: boolean;
  /** The target holds this freeze now (its previous one if not ok). */
  freeze: number;
  stats?: TransferStats;
  error?: BlockMirrorError;
}

/** Outcome of a cycle (or of a catch-up pass without a freeze). */
export interface CycleResult {
  /** Freeze number the cycle copied. */
  cycle: number;
  /** True when this pass took a freeze (false: a catch-up of returning targets). */
  froze: boolean;
  frozenAt: number | undefined;
  durationMs: number;
  targets: CycleTargetResult[];
  /** Bytes sent to all targets. */
  bytesSent: number;
}

/** Events of a {@link CycleSource}. */
export interface CycleSourceEvents {
  phase: [phase: CyclePhase, cycle: number];
  /** The group was frozen. */
  frozen: [info: { cycle: number; at: number }];
  /** A target holds freeze `cycle` now. */
  'target-committed': [info: { target: string; cycle: number; stats: TransferStats; durationMs: number }];
  /** Granule bytes of a running transfer sent to a target so far, after each data frame (≤ 1 MiB by default). */
  'transfer-progress': [info: { target: string; cycle: number; done: number; total: number }];
  /** A transfer to a target failed (it keeps its previous image; retried later). */
  'target-error': [info: { target: string; cycle: number; error: BlockMirrorError }];
  /** A target's link changed state. */
  'target-link': [info: { target: string; state: CycleLinkState; error?: BlockMirrorError }];
  /** Frozen layers were merged into the bases (per volume: new base freeze). */
  merged: [info: Record<string, number>];
  /** A cycle (or catch-up pass) ended. */
  cycle: [result: CycleResult];
  /** A freeze or merge failed (the engine goes on with the next cycle). */
  error: [error: BlockMirrorError];
}

interface Deferred<T> {
  resolve(value: T): void;
  reject(error: BlockMirrorError): void;
}

interface SavedTargets {
  format: string;
  version: number;
  targets: Record<string, { images: Record<string, number>; date?: string }>;
  freezeDates: Record<string, string>;
}

interface TargetEntry {
  config: Required<CycleTargetConfig>;
  link: CycleLink;
  /** Last known freeze per volume (from the handshake, a transfer, or the saved state). */
  known: Map<string, number>;
  lastBytes: number;
  totalBytes: number;
  errors: number;
  lastError: BlockMirrorError | undefined;
  retryTimer: TimerHandle | undefined;
}


/** The cycle engine of a primary: see the module notes. */
export class CycleSource extends EventEmitter<CycleSourceEvents> {
  readonly nodeId: string;
  readonly #volumes: Array<{ name: string; volume: LayeredVolume }>;
  readonly #clock: Clock;
  readonly #interval: number;
  readonly #maxKept: number;
  readonly #retry: { min: number; max: number };
  readonly #targets: TargetEntry[] = [];
  readonly #targetsFile: string;
  readonly #groupFile: string;
  readonly #fs: FileSystem;
  #group: ConsistencyGroup | undefined;
  #phase: CyclePhase = 'stopped';
  readonly #freezeTimes = new Map<number, { at: number; date: string }>();
  #lastFreezeAt: number | undefined;
  #lastCycleMs: number | undefined;
  #lastBytes = 0;
  #timer: TimerHandle | undefined;
  #timerDue = false;
  #catchUp = false;
  #waiters: Array<Deferred<CycleResult>> = [];
  #wake: (() => void) | undefined;
  #loop: Promise<void> | undefined;
  #breaking = false;
  #connected = false;
  #closed = false;
  /** A running source keeps the process alive, like a listening server (the clock's timers do not). */
  #keepAlive: NodeJS.Timeout | undefined;

  /** @internal use {@link createCycleSource} */
  constructor(options: CycleSourceOptions) {
    super();
    if (options === null || typeof options !== 'object') throw invalidArgument('options must be an object');
    if (!Array.isArray(options.volumes) || options.volumes.length === 0) throw invalidArgument('volumes must be a non-empty array');
    if (!Array.isArray(options.targets) || options.targets.length === 0) throw invalidArgument('targets must be a non-empty array');
    for (const v of options.volumes) {
      if (v === null || typeof v !== 'object' || typeof v.name !== 'string' || v.name === '' || v.name.length > 255) throw invalidArgument('each volume needs a name');
      if (v.volume === null || typeof v.volume !== 'object' || typeof v.volume.freeze !== 'function') throw invalidArgument(`volume ${v.name}: volume must be a LayeredVolume`);
    }
    this.#volumes = options.volumes.map((v) => ({ name: v.name, volume: v.volume }));
    this.#clock = options.clock ?? systemClock;
    this.#interval = nonNegativeInt(options.interval ?? 60000, 'interval');
    this.#maxKept = nonNegativeInt(options.maxKeptLayers ?? 16, 'maxKeptLayers');
    const retry = options.retryDelay ?? { min: 100, max: 5000 };
    this.#retry = { min: Math.max(1, nonNegativeInt(retry.min, 'retryDelay.min')), max: Math.max(1, nonNegativeInt(retry.max, 'retryDelay.max')) };
    this.nodeId = options.nodeId ?? `cycle-source-${randomBytes(4).toString('hex')}`;
    const stateDir = options.stateDir ?? this.#volumes[0]!.volume.dir;
    const group = options.group ?? 'cycle-group';
    if (!/^[A-Za-z0-9._-]{1,128}$/.test(group)) throw invalidArgument('group must be 1–128 characters of A-Z a-z 0-9 . _ -');
    this.#groupFile = join(stateDir, `${group}.group`);
    this.#targetsFile = join(stateDir, `${group}.targets`);
    this.#fs = options.fs ?? nodeFileSystem;
    const secret = secretBytes(options.secret);
    if (options.bandwidth !== undefined && !(typeof options.bandwidth === 'number' && options.bandwidth > 0)) throw invalidArgument('bandwidth must be a positive number');
    const transport = options.transport ?? new TcpTransport();
    const limits = { ...DEFAULT_CODEC_LIMITS, ...options.limits };
    const names = new Set<string>();
    for (const t of options.targets) {
      const cfg = 'address' in t ? t : { address: t };
      const a = cfg.address;
      if (a === null || typeof a !== 'object' || typeof a.host !== 'string' || !Number.isInteger(a.port) || a.port < 1 || a.port > 65535) {
        throw invalidArgument('each target needs an address { host, port: 1…65535 }');
      }
      const name = cfg.name ?? `${a.host}:${a.port}`;
      if (names.has(name)) throw invalidArgument(`target ${name} is listed twice`);
      names.add(name);
      const link = new CycleLink({
        name,
        address: { host: a.host, port: a.port },
        transport,
        nodeId: this.nodeId,
        secret,
        clock: this.#clock,
        limits,
        payloadChecksum: options.payloadChecksum ?? true,
        handshakeTimeout: options.handshakeTimeout ?? 10000,
        ...(options.idleTimeout === undefined ? {} : { idleTimeout: positiveTimeout(options.idleTimeout, 'idleTimeout') }),
        retryDelay: this.#retry,
        offers: () => this.#offers(),
        bandwidth: options.bandwidth,
        ...(options.maxPayload === undefined ? {} : { maxPayload: options.maxPayload }),
      });
      const entry: TargetEntry = { config: { address: link.address, name }, link, known: new Map(), lastBytes: 0, totalBytes: 0, errors: 0, lastError: undefined, retryTimer: undefined };
      link.on('state', (state, error) => this.#onLinkState(entry, state, error));
      this.#targets.push(entry);
    }
  }

  /**
   * @internal called by {@link createCycleSource}: opens the group (completing
   * an interrupted freeze) and connects; with `waitForConnection`, resolves
   * once every link's first attempt settled (up or down).
   */
  async init(waitForConnection = true, connect = true): Promise<void> {
    this.#group = await ConsistencyGroup.open(this.#volumes, { stateFile: this.#groupFile, clock: this.#clock, fs: this.#fs });
    const saved = (await this.#fs.readState(this.#targetsFile)) as SavedTargets | undefined;
    if (saved !== undefined && saved.format === TARGETS_FORMAT && typeof saved.targets === 'object') {
      for (const t of this.#targets) {
        const s = saved.targets[t.config.name];
        if (s !== undefined) for (const [vol, k] of Object.entries(s.images)) t.known.set(vol, k);
      }
      for (const [k, date] of Object.entries(saved.freezeDates ?? {})) this.#freezeTimes.set(Number(k), { at: Number.NaN, date });
    }
    if (connect) await this.connect(waitForConnection);
  }

  /**
   * Opens the links to the targets (once; later calls do nothing). With
   * `waitForConnection` (default true), resolves once every link made its
   * first connection attempt.
   */
  async connect(waitForConnection = true): Promise<void> {
    if (this.#connected || this.#closed) return;
    this.#connected = true;
    const settled = this.#targets.map(
      (t) =>
        new Promise<void>((resolve) => {
          const onState = (state: CycleLinkState): void => {
            if (state === 'connecting') return;
            t.link.off('state', onState);
            resolve();
          };
          t.link.on('state', onState);
        }),
    );
    for (const t of this.#targets) t.link.start();
    if (waitForConnection) await Promise.all(settled);
  }

  /** Last freeze (= cycle number). */
  get cycle(): number {
    return this.#group?.lastFreeze ?? 0;
  }

  get phase(): CyclePhase {
    return this.#phase;
  }

  /** Starts (or resumes after {@link break}) the cycle loop. */
  start(): void {
    if (this.#closed || this.#loop !== undefined) return;
    this.#breaking = false;
    this.#keepAlive ??= setInterval(() => {}, 1 << 30);
    this.#setPhase('idle');
    this.#scheduleTimer(this.#lastFreezeAt ?? this.#clock.now());
    this.#loop = this.#run().finally(() => {
      this.#loop = undefined;
    });
  }

  /**
   * Freezes now and runs a cycle (after the one running, if any). Resolves
   * with the result of the first cycle whose freeze was taken after this call.
   *
   * @throws {BlockMirrorError} `BM_ERR_CLOSED` when the source is stopped or closed before that cycle.
   */
  freezeNow(): Promise<CycleResult> {
    if (this.#closed || this.#loop === undefined || this.#breaking) {
      return Promise.reject(new BlockMirrorError('BM_ERR_CLOSED', 'the cycle source is not running'));
    }
    return new Promise<CycleResult>((resolve, reject) => {
      this.#waiters.push({ resolve, reject });
      this.#wake?.();
    });
  }

  /** Stops after the current cycle (at once when idle). Resolves once stopped. */
  async break(): Promise<void> {
    this.#breaking = true;
    this.#wake?.();
    await this.#loop;
  }

  async #run(): Promise<void> {
    while (!this.#closed && !this.#breaking) {
      const freeze = this.#waiters.length > 0 || this.#timerDue;
      if (!freeze && !this.#catchUp) {
        await new Promise<void>((resolve) => (this.#wake = resolve));
        this.#wake = undefined;
        continue;
      }
      this.#catchUp = false;
      await this.#cycle(freeze);
    }
    this.#clearTimer();
    clearInterval(this.#keepAlive);
    this.#keepAlive = undefined;
    const err = new BlockMirrorError('BM_ERR_CLOSED', 'the cycle source stopped before the requested cycle');
    for (const w of this.#waiters.splice(0)) w.reject(err);
    this.#setPhase('stopped');
  }

  async #cycle(freeze: boolean): Promise<void> {
    const group = this.#group!;
    const started = this.#clock.now();
    const waiters = freeze ? this.#waiters.splice(0) : [];
    let frozenAt: number | undefined;
    if (freeze) {
      this.#timerDue = false;
      try {
        const f = await group.freeze();
        frozenAt = f.at;
        this.#lastFreezeAt = f.at;
        this.#freezeTimes.set(f.freeze, { at: f.at, date: new Date().toISOString() });
        this.#scheduleTimer(f.at);
        this.#setPhase('frozen');
        this.emit('frozen', { cycle: f.freeze, at: f.at });
      } catch (error) {
        const err = toBlockMirrorError(error);
        log('freeze failed: %s', err.message);
        this.emit('error', err);
        for (const w of waiters) w.reject(err);
        this.#scheduleTimer(this.#clock.now());
        this.#setPhase('idle');
        return;
      }
    }
    const k = group.lastFreeze;
    this.#setPhase('copying');
    const results = await Promise.all(this.#targets.map((t) => this.#copy(t, k)));
    if (!this.#closed) {
      this.#setPhase('merging');
      await this.#merge().catch((error: unknown) => this.emit('error', toBlockMirrorError(error)));
      await this.#saveTargets().catch((error: unknown) => this.emit('error', toBlockMirrorError(error)));
    }
    const bytes = results.reduce((n, r) => n + (r.stats?.wireBytes ?? 0), 0);
    this.#lastBytes = bytes;
    this.#lastCycleMs = this.#clock.now() - started;
    const result: CycleResult = { cycle: k, froze: freeze, frozenAt, durationMs: this.#lastCycleMs, targets: results, bytesSent: bytes };
    if (!this.#closed) this.#setPhase('idle');
    this.emit('cycle', result);
    for (const w of waiters) w.resolve(result);
  }

  /** Brings one target to freeze `k` (if it is connected and behind). Never rejects. */
  async #copy(t: TargetEntry, k: number): Promise<CycleTargetResult> {
    const name = t.config.name;
    const held = (): number => Math.min(...this.#volumes.map((v) => t.known.get(v.name) ?? 0));
    if (t.link.state !== 'up') {
      t.lastBytes = 0;
      return { target: name, ok: false, freeze: held(), error: t.link.lastError };
    }
    for (const v of this.#volumes) t.known.set(v.name, t.link.images.get(v.name) ?? 0);
    const began = this.#clock.now();
    try {
      const stats = await t.link.sync(this.#volumes, k, (done, total) => this.emit('transfer-progress', { target: name, cycle: k, done, total }));
      for (const v of this.#volumes) t.known.set(v.name, t.link.images.get(v.name) ?? 0);
      if (stats === undefined) {
        t.lastBytes = 0;
        return { target: name, ok: true, freeze: k };
      }
      t.lastBytes = stats.wireBytes;
      t.totalBytes += stats.wireBytes;
      t.lastError = undefined;
      const durationMs = this.#clock.now() - began;
      log('target %s holds freeze %d (%d bytes, %d ms)', name, k, stats.wireBytes, durationMs);
      this.emit('target-committed', { target: name, cycle: k, stats, durationMs });
      return { target: name, ok: true, freeze: k, stats };
    } catch (error) {
      const err = toBlockMirrorError(error);
      t.lastError = err;
      t.lastBytes = 0;
      t.errors++;
      if (t.link.state === 'up') for (const v of this.#volumes) t.known.set(v.name, t.link.images.get(v.name) ?? 0);
      log('transfer of freeze %d to %s failed: %s', k, name, err.message);
      this.emit('target-error', { target: name, cycle: k, error: err });
      // a refusal on a live connection: retry later (a dead connection retries when it reconnects)
      if (t.link.state === 'up' && t.retryTimer === undefined && !this.#closed) {
        t.retryTimer = this.#clock.setTimeout(() => {
          t.retryTimer = undefined;
          this.#kick();
        }, this.#retry.max);
      }
      return { target: name, ok: false, freeze: held(), error: err };
    }
  }

  /**
   * Merges into each base the frozen layers that every tracked target holds.
   * A target counts while it is within `maxKeptLayers` freezes of the last
   * one and its image can still be reached by a delta.
   */
  async #merge(): Promise<void> {
    const k = this.#group!.lastFreeze;
    const merged: Record<string, number> = {};
    for (const v of this.#volumes) {
      let upTo = k;
      for (const t of this.#targets) {
        const held = t.known.get(v.name);
        if (held === undefined || held === 0 || held < v.volume.baseFreeze || k - held > this.#maxKept) continue;
        upTo = Math.min(upTo, held);
      }
      if (v.volume.frozenLayers.length > 0 && v.volume.frozenLayers[0]! <= upTo) {
        merged[v.name] = await v.volume.mergeFrozenIntoBase(upTo);
      }
    }
    if (Object.keys(merged).length > 0) this.emit('merged', merged);
  }

  async #saveTargets(): Promise<void> {
    const body: SavedTargets = { format: TARGETS_FORMAT, version: 1, targets: {}, freezeDates: {} };
    const needed = new Set<number>();
    for (const t of this.#targets) {
      body.targets[t.config.name] = { images: Object.fromEntries(t.known) };
      for (const k of t.known.values()) needed.add(k);
    }
    for (const k of needed) {
      const time = this.#freezeTimes.get(k);
      if (time !== undefined) body.freezeDates[String(k)] = time.date;
    }
    for (const k of [...this.#freezeTimes.keys()]) if (!needed.has(k) && k !== this.cycle) this.#freezeTimes.delete(k);
    await this.#fs.writeState(this.#targetsFile, body);
  }

  #onLinkState(t: TargetEntry, state: CycleLinkState, error: BlockMirrorError | undefined): void {
    if (error !== undefined) t.lastError = error;
    this.emit('target-link', { target: t.config.name, state, ...(error === undefined ? {} : { error }) });
    if (state === 'up') {
      for (const v of this.#volumes) t.known.set(v.name, t.link.images.get(v.name) ?? 0);
      // a returning target catches up at once from the kept frozen layers
      if (this.cycle > 0 && this.#volumes.some((v) => (t.known.get(v.name) ?? 0) < this.cycle)) this.#kick();
    }
  }

  #kick(): void {
    this.#catchUp = true;
    this.#wake?.();
  }

  #scheduleTimer(from: number): void {
    this.#clearTimer();
    if (this.#interval === 0 || this.#closed) return;
    this.#timer = this.#clock.setTimeout(
      () => {
        this.#timer = undefined;
        this.#timerDue = true;
        this.#wake?.();
      },
      Math.max(0, from + this.#interval - this.#clock.now()),
    );
  }

  #clearTimer(): void {
    if (this.#timer !== undefined) this.#clock.clearTimeout(this.#timer);
    this.#timer = undefined;
  }

  #setPhase(phase: CyclePhase): void {
    if (this.#phase === phase) return;
    this.#phase = phase;
    this.emit('phase', phase, this.cycle);
  }

  #offers(): VolumeOffer[] {
    return this.#volumes.map((v) => cycleVolumeOffer(v.name, v.volume));
  }

  /** Plain-object status (JSON-serialisable). */
  status(): CycleSourceStatus {
    const k = this.cycle;
    const volumes: Record<string, LayeredVolumeStatus> = {};
    for (const v of this.#volumes) volumes[v.name] = v.volume.status();
    const targets = this.#targets.map((t): CycleTargetProgress => {
      const freeze = Math.min(...this.#volumes.map((v) => t.known.get(v.name) ?? 0));
      const time = this.#freezeTimes.get(freeze);
      const p: CycleTargetProgress = {
        name: t.config.name,
        address: `${t.config.address.host}:${t.config.address.port}`,
        node: t.link.peerNode,
        link: t.link.state,
        freeze,
        recoveryPointDate: time?.date,
        lagCycles: Math.max(0, k - freeze),
        bytesSentLastCycle: t.lastBytes,
        bytesSentTotal: t.totalBytes,
        transferErrors: t.errors,
      };
      if (t.lastError !== undefined) p.lastError = { code: t.lastError.code, message: t.lastError.message };
      return p;
    });
    return {
      role: 'cycle-source',
      node: this.nodeId,
      cycle: k,
      phase: this.#phase,
      lastFreezeAt: this.#freezeTimes.get(k)?.date,
      lastCycleMs: this.#lastCycleMs,
      bytesSentLastCycle: this.#lastBytes,
      volumes,
      targets,
    };
  }

  /**
   * Stops: a cycle in progress is abandoned (transfers in flight fail; the
   * targets keep their previous image), the connections are closed. The
   * volumes are not closed (they belong to the caller).
   */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#breaking = true;
    this.#clearTimer();
    for (const t of this.#targets) {
      if (t.retryTimer !== undefined) this.#clock.clearTimeout(t.retryTimer);
      t.link.close();
    }
    this.#wake?.();
    await this.#loop;
    clearInterval(this.#keepAlive);
    this.#keepAlive = undefined;
    this.#setPhase('stopped');
  }
}

function positiveTimeout(value: unknown, name: string): number {
  if (typeof value !== 'number' || !Number.isFinite(value) || value <= 0) throw invalidArgument(`${name} must be a positive number of ms`);
  return value;
}

/**
 * Creates a cycle source over a consistency group of layered volumes, opens
 * the links to its targets and (unless `autoStart: false`) starts cycling.
 *
 * ```ts
 * const volume = await LayeredVolume.open(await FileBlockDevice.open('/srv/vol0.img'));
 * const source = await createCycleSource({
 *   volumes: [{ name: 'vol0', volume }],
 *   targets: [{ host: 'mirror.example', port: 7100 }],
 *   interval: 30_000,
 *   bandwidth: 50e6,
 *   secret: process.env.BM_SECRET,
 * });
 * await volume.write(0, data);               // the host keeps writing to the volume
 * const result = await source.freezeNow();   // or wait for the interval
 * ```
 *
 * @throws {BlockMirrorError} `BM_ERR_INVALID_ARGUMENT` for bad options or
 *   volumes at different freeze numbers; `BM_ERR_JOURNAL_CORRUPT` for damaged state files.
 */
export async function createCycleSource(options: CycleSourceOptions): Promise<CycleSource> {
  const source = new CycleSource(options);
  await source.init(options.waitForConnection ?? true, options.autoConnect ?? true);
  if (options.autoStart ?? true) source.start();
  return source;
}
