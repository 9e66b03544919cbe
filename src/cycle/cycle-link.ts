/**
 * {@link CycleLink}: the source's connection to one cycle target. It keeps
 * itself connected (reconnecting with exponential backoff after a failure),
 * learns from the handshake which freeze the target holds of each volume,
 * and runs transfers one at a time.
 *
 * @module
 */
import { randomUUID } from 'node:crypto';
import { EventEmitter } from 'eventemitter3';
import createDebug from 'debug';
import { BlockMirrorError, CONFIGURATION_REFUSALS, isErrorCode, toBlockMirrorError } from '../errors.js';
import type { Clock, TimerHandle } from '../clock.js';
import type { Transport, TransportAddress } from '../transport/transport.js';
import { MessageType, type CodecLimits, type Frame } from '../codec/frame.js';
import { parseError, type VolumeOffer } from '../codec/messages.js';
import { FramedConnection } from '../link/framed-connection.js';
import { clientHandshake } from '../link/handshake.js';
import { parseCycleAck } from './messages.js';
import { CYCLE_FEATURE } from './cycle-host.js';
import { RateLimiter } from '../resync/rate-limiter.js';
import { planTransfer, sendTransfer, type PlannedVolume, type TransferPlan, type TransferStats } from './transfer.js';

const log = createDebug('blockmirror:cycle');

/**
 * The handshake offer of a layered volume: its lineage is the generation and
 * the stream id; `applied` in the target's answer is the freeze it holds.
 */
export function cycleVolumeOffer(name: string, volume: { size: number; blockSize: number; lineage: string }): VolumeOffer {
  // built as a variable so that it also fits VolumeOffer versions without `history`
  const offer = { name, size: volume.size, blockSize: volume.blockSize, generation: volume.lineage, history: [] as string[], stream: volume.lineage, base: 0 };
  return offer;
}

/** State of a `CycleLink` (one source-to-target connection of a cycle source). */
export type CycleLinkState = 'connecting' | 'up' | 'down' | 'closed';

/** Options of a {@link CycleLink}. */
export interface CycleLinkOptions {
  /** A name for status and events. */
  name: string;
  address: TransportAddress;
  transport: Transport;
  nodeId: string;
  secret: Uint8Array | undefined;
  clock: Clock;
  limits: CodecLimits;
  payloadChecksum: boolean;
  handshakeTimeout: number;
  retryDelay: { min: number; max: number };
  /** The volumes to offer in each handshake. */
  offers: () => VolumeOffer[];
  /** Bytes per second (undefined: no cap). */
  bandwidth?: number | undefined;
  /** Largest payload per frame. */
  maxPayload?: number;
  /**
   * T3 in ms: a connection that stays silent this long while a transfer runs
   * (no frame received, no drain of what was sent) is probed with a PING;
   * silent for twice as long, it is dropped (a black-holed path or a peer
   * that lost power never closes by itself). Default 5000.
   */
  idleTimeout?: number;
}

/** Events of a {@link CycleLink}. */
export interface CycleLinkEvents {
  state: [state: CycleLinkState, error?: BlockMirrorError];
}

/** One target of a cycle source: see the module notes. */
export class CycleLink extends EventEmitter<CycleLinkEvents> {
  readonly name: string;
  readonly address: TransportAddress;
  readonly #o: CycleLinkOptions;
  readonly #session = randomUUID();
  readonly #limiter: RateLimiter | undefined;
  /** Aborted (and replaced) when the connection goes: bandwidth waits of the dead transfer end. */
  #waits = new AbortController();
  #conn: FramedConnection | undefined;
  #state: CycleLinkState = 'connecting';
  #attempt = 0;
  #timer: TimerHandle | undefined;
  #nextId = 0;
  #busy = false;
  /** `clock.now()` of the last sign of life of the connection (a frame received, a drain). */
  #lastHeard = 0;
  #watch: TimerHandle | undefined;
  readonly #idleTimeout: number;
  readonly #pending = new Map<number, { to: number; volumes: string[]; resolve: () => void; reject: (e: BlockMirrorError) => void }>();
  /** Freeze held by the target per volume name (from the handshake, then from acknowledged transfers). */
  readonly images = new Map<string, number>();
  /** Node id of the target (after a handshake). */
  peerNode: string | undefined;
  lastError: BlockMirrorError | undefined;

  constructor(options: CycleLinkOptions) {
    super();
    this.#o = options;
    this.name = options.name;
    this.address = options.address;
    this.#idleTimeout = options.idleTimeout ?? 5000;
    this.#limiter =
      options.bandwidth === undefined
        ? undefined
        : new RateLimiter({ bytesPerSecond: options.bandwidth, burst: Math.max(64 * 1024, options.bandwidth / 10), clock: options.clock });
  }

  get state(): CycleLinkState {
    return this.#state;
  }

  /** Starts connecting (and keeps reconnecting until {@link close}). */
  start(): void {
    if (this.#state === 'closed') return;
    void this.#connect();
  }

  async #connect(): Promise<void> {
    if (this.#state === 'closed') return;
    let conn: FramedConnection | undefined;
    try {
      const raw = await this.#o.transport.connect(this.address, { timeout: this.#o.handshakeTimeout });
      conn = new FramedConnection(raw, { limits: this.#o.limits, payloadChecksum: this.#o.payloadChecksum });
      if (this.#isClosed()) {
        conn.destroy();
        return;
      }
      const result = await clientHandshake(conn, {
        nodeId: this.#o.nodeId,
        session: this.#session,
        slot: 0,
        slots: 1,
        secret: this.#o.secret,
        volumes: this.#o.offers(),
        timeout: this.#o.handshakeTimeout,
        clock: this.#o.clock,
        features: [CYCLE_FEATURE],
      });
      if (this.#isClosed()) {
        conn.destroy();
        return;
      }
      this.peerNode = result.peerNode;
      this.images.clear();
      for (const v of result.volumes) this.images.set(v.name, v.applied);
      this.#attempt = 0;
      this.lastError = undefined;
      this.#conn = conn;
      const c = conn;
      this.#lastHeard = this.#o.clock.now();
      c.on('drain', () => (this.#lastHeard = this.#o.clock.now()));
      c.on('frame', (frame) => {
        this.#lastHeard = this.#o.clock.now();
        this.#onFrame(c, frame);
      });
      c.once('close', (error) => this.#onClose(c, error));
      log('link %s up (%s): %o', this.name, result.peerNode, Object.fromEntries(this.images));
      this.#setState('up');
    } catch (error) {
      const err = toBlockMirrorError(error, 'BM_ERR_CONNECT_FAILED');
      conn?.destroy();
      this.lastError = err;
      log('link %s: connect failed: %s', this.name, err.message);
      this.#setState('down', err);
      this.#scheduleReconnect(CONFIGURATION_REFUSALS.has(err.code));
    }
  }

  #isClosed(): boolean {
    return this.#state === 'closed';
  }

  #scheduleReconnect(fatal: boolean): void {
    if (this.#state === 'closed' || this.#timer !== undefined) return;
    const attempt = ++this.#attempt;
    const { min, max } = this.#o.retryDelay;
    const delay = fatal ? max : Math.min(max, min * 2 ** Math.min(attempt - 1, 20));
    this.#timer = this.#o.clock.setTimeout(() => {
      this.#timer = undefined;
      void this.#connect();
    }, delay);
  }

  #onClose(conn: FramedConnection, error: BlockMirrorError | undefined): void {
    if (this.#conn !== conn) return;
    this.#conn = undefined;
    const err = error ?? new BlockMirrorError('BM_ERR_CONNECTION_CLOSED', `the connection to cycle target ${this.name} closed`);
    for (const p of this.#pending.values()) p.reject(err);
    this.#pending.clear();
    this.#cancelWaits(err);
    if (this.#state === 'closed') return;
    this.lastError = err;
    this.#setState('down', err);
    this.#scheduleReconnect(CONFIGURATION_REFUSALS.has(err.code));
  }

  #onFrame(conn: FramedConnection, frame: Frame): void {
    try {
      if (frame.type === MessageType.CYCLE_ACK) {
        const ack = parseCycleAck(frame.header);
        const p = this.#pending.get(ack.id);
        if (p === undefined) throw new BlockMirrorError('BM_ERR_PROTOCOL', `acknowledgement for unknown transfer ${ack.id}`);
        this.#pending.delete(ack.id);
        if (ack.code === undefined) p.resolve();
        else {
          const code = isErrorCode(ack.code) ? ack.code : 'BM_ERR_MIRROR_WRITE_FAILED';
          let changed = false;
          ack.held?.forEach((k, i) => {
            const name = p.volumes[i];
            if (name !== undefined && this.images.get(name) !== k) {
              this.images.set(name, k);
              changed = true;
            }
          });
          p.reject(new BlockMirrorError(code, `cycle target ${this.name}: ${ack.message ?? ack.code}`, { details: { peerCode: ack.code, to: ack.to, replan: changed } }));
        }
      } else if (frame.type === MessageType.ERROR) {
        const e = parseError(frame.header);
        conn.destroy(new BlockMirrorError(isErrorCode(e.code) ? e.code : 'BM_ERR_PROTOCOL', `cycle target ${this.name}: ${e.message}`));
      } else if (frame.type === MessageType.PING) {
        conn.send(MessageType.PONG, frame.header);
      } else if (frame.type !== MessageType.PONG) {
        throw new BlockMirrorError('BM_ERR_PROTOCOL', `unexpected message type ${frame.type} from a cycle target`);
      }
    } catch (error) {
      conn.fail(toBlockMirrorError(error, 'BM_ERR_PROTOCOL'));
    }
  }

  #setState(state: CycleLinkState, error?: BlockMirrorError): void {
    if (this.#state === state) return;
    this.#state = state;
    this.emit('state', state, error);
  }

  /**
   * Sends a transfer and waits for the target's acknowledgement (the target
   * then holds freeze `plan.to` durably). The plan's `id` is assigned here.
   *
   * @throws {BlockMirrorError} `BM_ERR_CONNECTION_CLOSED` when the link is not
   *   up or dies during the transfer; the target's coded refusal or failure.
   */
  async transfer(plan: Omit<TransferPlan, 'id'>, onProgress?: (done: number, total: number) => void): Promise<TransferStats> {
    const conn = this.#conn;
    if (this.#state !== 'up' || conn === undefined) {
      throw new BlockMirrorError('BM_ERR_CONNECTION_CLOSED', `cycle target ${this.name} is not connected`);
    }
    if (this.#busy) throw new BlockMirrorError('BM_ERR_VOLUME_BUSY', `a transfer to ${this.name} is running`);
    this.#busy = true;
    this.#lastHeard = this.#o.clock.now();
    this.#armWatch(conn);
    try {
      const id = ++this.#nextId;
      const acked = new Promise<void>((resolve, reject) => this.#pending.set(id, { to: plan.to, volumes: plan.volumes.map((v) => v.name), resolve, reject }));
      acked.catch(() => undefined);
      const stats = await sendTransfer(conn, { ...plan, id }, {
        limits: this.#o.limits,
        payloadChecksum: this.#o.payloadChecksum,
        maxPayload: this.#o.maxPayload,
        limiter: this.#limiter === undefined ? undefined : { take: (bytes: number) => this.#limiter!.take(bytes, { signal: this.#waits.signal }) },
        onProgress,
      }).catch((error: unknown) => {
        this.#pending.delete(id);
        const err = toBlockMirrorError(error);
        // the reason the connection closed says more than "closed during the transfer"
        throw err.code === 'BM_ERR_CONNECTION_CLOSED' && this.lastError !== undefined ? this.lastError : err;
      });
      await acked;
      for (const v of plan.volumes) this.images.set(v.name, plan.to);
      return stats;
    } finally {
      this.#busy = false;
      if (this.#watch !== undefined) this.#o.clock.clearTimeout(this.#watch);
      this.#watch = undefined;
    }
  }

  /** While a transfer runs: every T3, PING a silent connection; drop it once silent for 2×T3. */
  #armWatch(conn: FramedConnection): void {
    const t = this.#idleTimeout;
    this.#watch = this.#o.clock.setTimeout(() => {
      this.#watch = undefined;
      if (!this.#busy || this.#conn !== conn || conn.closed) return;
      const idleFor = this.#o.clock.now() - this.#lastHeard;
      if (idleFor >= 2 * t) {
        log('link %s: silent for %d ms during a transfer: dropping the connection', this.name, idleFor);
        conn.destroy(new BlockMirrorError('BM_ERR_TIMEOUT', `no answer from cycle target ${this.name} for ${idleFor} ms`));
        return;
      }
      if (idleFor >= t) conn.send(MessageType.PING, { t: this.#o.clock.now() });
      this.#armWatch(conn);
    }, t);
  }

  /**
   * Brings the target to freeze `to` of `volumes` (a consistency group, in
   * handshake order): plans the transfer from what the target holds
   * ({@link planTransfer}) and sends it. When the target refuses because it
   * holds other freezes than this link believed (a commit that got through
   * just before a connection died), it plans again once from what it reported.
   * Resolves with the stats, or undefined when the target already held `to`.
   */
  async sync(volumes: readonly PlannedVolume[], to: number, onProgress?: (done: number, total: number) => void): Promise<TransferStats | undefined> {
    for (let attempt = 0; ; attempt++) {
      const plan = planTransfer(volumes, (name) => this.images.get(name) ?? 0, to);
      if (plan.length === 0) return undefined;
      try {
        return await this.transfer({ to, volumes: plan }, onProgress);
      } catch (error) {
        const err = toBlockMirrorError(error);
        if (attempt > 0 || err.details.replan !== true) throw err;
        log('link %s: target held other freezes, planning again', this.name);
      }
    }
  }

  /** Stops reconnecting and closes the connection (a transfer in flight fails). */
  close(): void {
    if (this.#state === 'closed') return;
    this.#setState('closed');
    if (this.#timer !== undefined) this.#o.clock.clearTimeout(this.#timer);
    this.#timer = undefined;
    const conn = this.#conn;
    this.#conn = undefined;
    const err = new BlockMirrorError('BM_ERR_CLOSED', 'the cycle source is closed');
    for (const p of this.#pending.values()) p.reject(err);
    this.#pending.clear();
    this.#cancelWaits(err);
    this.#limiter?.close();
    conn?.destroy(err);
  }

  /** Ends every bandwidth wait of the current transfer with `error`. */
  #cancelWaits(error: BlockMirrorError): void {
    this.#waits.abort(error);
    this.#waits = new AbortController();
  }
}
