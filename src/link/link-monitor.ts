/**
 * Link health of one peer (seed 000, SPEC 1–8): UDP heartbeats both ways and
 * the link state machine
 *
 * ```
 *   connecting ──connected()──▶ up
 *       │  ▲                     │
 *  stale│  │reopen         stale │ connectionsFailed()
 *  or   │  │(clean probation)    ▼
 *  connectionsFailed()  ──────▶ down ◀──── gap ───┐
 *                                 │               │
 *                                 └─heartbeat──▶ probation
 * ```
 *
 * Rules, with interval I = `heartbeatInterval`, S = `staleAfter`,
 * P = `probation` and t_last = the time of the last valid heartbeat received
 * (or of `start()` while none was received; `start()` also refreshes the slots):
 *
 * - **Sending** (SPEC 1, 3, 5): nothing before `start()`; then one heartbeat at
 *   `start()` and one every I after it, in every state (also while down), to
 *   the current `peer` (skipped while no peer is set, and with `requireKey`
 *   while no key is known).
 * - **Receiving** (SPEC 3): a valid heartbeat (see `verifyHeartbeat`: MAC when a
 *   secret or key is set, node id, not replayed) sets t_last = now and refreshes every
 *   slot (`slots.refresh(now)`). Invalid ones change nothing and are counted.
 * - **Detection** (SPEC 4): right after each send (at times start + k·I), slots
 *   with `now − lastHeartbeat > S` are marked `closed`, and in `connecting` or
 *   `up` the link goes `down` when `now − t_last > S` (reason `stale`). So the
 *   link goes down at the first send time t with t > t_last + S, i.e. within
 *   (S, S + I] after the last heartbeat.
 * - **Down** (SPEC 5): entering `down` from `connecting`/`up` emits `down`; the
 *   owner closes all n connections. Heartbeats go on at the normal rate.
 * - **Probation** (SPEC 8): in `down`, the next valid heartbeat starts
 *   probation, ending at now + P. A gap — more than S without a valid heartbeat,
 *   seen at a send, at the arrival of the next heartbeat, or at the end of
 *   probation — sends the link back to `down` (reason `probation-gap`, no
 *   `down` event: the connections are already closed); the next heartbeat
 *   starts a new full probation (a gap seen at an arrival restarts it with that
 *   very heartbeat). When P elapses with no gap, the link goes `connecting`
 *   (reason `probation-complete`) and emits `reopen`: the owner reopens the n
 *   connections. P = 0: the first heartbeat in `down` goes to `connecting` and
 *   emits `reopen` at once.
 * - **Connections**: `connected()` → `up` (from `connecting`, or from `down` /
 *   `probation` when the peer re-established the connections itself);
 *   `connectionsFailed(error)` in `connecting`/`up` → `down` with the `down`
 *   event (reason `connections-failed`).
 * - **Authentication** (issue 14): with a `secret`, every heartbeat is signed
 *   and must carry a valid MAC. With `requireKey` and no secret (TLS without
 *   a secret: the key comes from the TLS session, see `useKey`), the same
 *   holds with the session key — and while no key is known, no heartbeat is
 *   sent and every received one is refused (`unauthenticated`), so nothing
 *   unauthenticated ever refreshes the slots, starts a probation or keeps the
 *   link up; and `connecting` does not go down as `stale` (nothing could be
 *   heard yet: the owner's connection attempts decide, `connectionsFailed`).
 *   The key is kept across an outage (a probation needs it) until `useKey`
 *   replaces it. Setting a key counts as a sign of life (t_last = now): it
 *   comes from a handshake that just authenticated the peer.
 * - **Rekey** (issue 14): with `requireKey`, in `down`, when heartbeats
 *   cannot be authenticated — no key at all, or no valid heartbeat for more
 *   than S while heartbeats that fail authentication arrive (the peer
 *   restarted and lost the key, or holds another one) — no probation can
 *   ever start: `rekeyNeeded` becomes true and `rekey` is emitted (once per
 *   such episode). The owner then reopens its connections by backoff without
 *   probation; the handshake authenticates the peer and gives the new key.
 *
 * Every transition emits `state` (new, previous, reason) before the `down` /
 * `reopen` event, and shows in `status()`.
 *
 * @module
 */
import { randomUUID } from 'node:crypto';
import debug from 'debug';
import { EventEmitter } from 'eventemitter3';
import type { Clock, TimerHandle } from '../clock.js';
import { BlockMirrorError, isBlockMirrorError, toBlockMirrorError } from '../errors.js';
import type { DatagramChannel, TransportAddress } from '../transport/transport.js';
import type { ConnectionArray } from './connection-array.js';
import { HEARTBEAT_REJECT_REASONS, HeartbeatReplayGuard, encodeHeartbeat, verifyHeartbeat } from './heartbeat.js';
import type { Heartbeat, HeartbeatRejectReason, HeartbeatStatus } from './heartbeat.js';

const log = debug('blockmirror:link');

/** State of a link. */
export type LinkState = HeartbeatStatus;

/** Why a link changed state. */
export type LinkTransitionReason =
  /** No valid heartbeat for more than `staleAfter` (checked after a send). */
  | 'stale'
  /** The owner reported that the connections failed or closed on their own. */
  | 'connections-failed'
  /** The first valid heartbeat after an outage (down → probation). */
  | 'heartbeat'
  /** A gap of more than `staleAfter` without heartbeat during probation. */
  | 'probation-gap'
  /** Probation passed with no gap (→ connecting, `reopen`). */
  | 'probation-complete'
  /** The owner reported that the connections are up. */
  | 'connected';

/** Default {@link LinkMonitorOptions.heartbeatInterval} (SPEC 3). */
export const DEFAULT_HEARTBEAT_INTERVAL = 1500;
/** Default {@link LinkMonitorOptions.staleAfter} (SPEC 4). */
export const DEFAULT_STALE_AFTER = 4000;
/** Default {@link LinkMonitorOptions.probation} (SPEC 8). */
export const DEFAULT_PROBATION = 10000;

/** Options of {@link LinkMonitor}. */
export interface LinkMonitorOptions {
  /** Time source for every timer and timestamp. */
  clock: Clock;
  /**
   * Where heartbeats are sent and received. The monitor listens to every
   * datagram of the channel (so give each monitor its own channel); it never
   * closes the channel.
   */
  channel: DatagramChannel;
  /** Where to send heartbeats; may be set later with {@link LinkMonitor.setPeer}. */
  peer?: TransportAddress | undefined;
  /** Our node id (sent in heartbeats; heartbeats carrying it are refused as reflections). */
  nodeId: string;
  /** Our session id (default: a random UUID). A restart must use a new one. */
  session?: string | undefined;
  /** Shared secret: heartbeats carry a MAC and received ones must carry a valid one. */
  secret?: Uint8Array | undefined;
  /**
   * Heartbeats must be authenticated even without `secret`, with the key
   * given by {@link LinkMonitor.useKey} (the link runs over TLS): while no key
   * is known, none are sent and every received one is refused
   * (`unauthenticated`). Ignored when `secret` is set. Default false (no
   * secret, no key: unsigned heartbeats, for links without TLS).
   */
  requireKey?: boolean | undefined;
  /** The connection array whose slots heartbeats refresh and detection marks closed. */
  slots: ConnectionArray;
  /** Milliseconds between heartbeats (default 1500). */
  heartbeatInterval?: number;
  /** A slot / the link is stale after this many milliseconds without heartbeat (default 4000). */
  staleAfter?: number;
  /** Probation in milliseconds (default 10000; 0 = reopen on the first heartbeat after an outage). */
  probation?: number;
  /** Accept heartbeats from this node id only. */
  expectedNode?: string | undefined;
}

/** Counters of refused heartbeats, by reason. */
export type HeartbeatRejections = Record<HeartbeatRejectReason, number>;

/** Snapshot returned by {@link LinkMonitor.status}. */
export interface LinkMonitorStatus {
  state: LinkState;
  /** Clock time of the last transition (or of construction). */
  since: number;
  /** Why the link entered `state` (undefined before the first transition). */
  reason: LinkTransitionReason | undefined;
  /** True between `start()` and `stop()`. */
  running: boolean;
  /** Where heartbeats go. */
  peer: TransportAddress | undefined;
  nodeId: string;
  session: string;
  /** Clock time of the last valid heartbeat received (undefined before the first). */
  lastHeartbeatReceived: number | undefined;
  /** The peer's node id, session and announced status from its last valid heartbeat. */
  peerNode: string | undefined;
  peerSession: string | undefined;
  peerStatus: HeartbeatStatus | undefined;
  /** Sequence number of the last heartbeat sent (0 before the first). */
  seq: number;
  heartbeatsSent: number;
  heartbeatsReceived: number;
  /** Refused heartbeats by reason. */
  heartbeatsRejected: HeartbeatRejections;
  /** Clock time at which the running probation ends (only in `probation`). */
  probationEndsAt: number | undefined;
  /** Number of state transitions so far. */
  transitions: number;
  /** Outages so far (entries into `down` from `connecting`/`up`). */
  outages: number;
  /** How heartbeats are authenticated now (see {@link LinkMonitor.heartbeatAuth}). */
  auth: HeartbeatAuth;
  /** See {@link LinkMonitor.rekeyNeeded}. */
  rekeyNeeded: boolean;
}

/**
 * How a monitor authenticates heartbeats: `secret` (the configured one),
 * `session` (a key derived from the TLS session), `pending` (a key is
 * required but none is known yet: no heartbeat is sent or accepted) or
 * `none` (unsigned heartbeats, links without TLS and secret).
 */
export type HeartbeatAuth = 'secret' | 'session' | 'pending' | 'none';

/** Events of a {@link LinkMonitor}. */
export interface LinkMonitorEvents {
  /** Every transition. */
  state: [state: LinkState, previous: LinkState, reason: LinkTransitionReason];
  /**
   * The link went down from `connecting`/`up` (after `state`): close all n
   * connections. `error` is the one passed to `connectionsFailed()`.
   */
  down: [reason: LinkTransitionReason, error?: Error];
  /** Probation passed (after `state` → `connecting`): reopen the n connections. */
  reopen: [];
  /** A valid heartbeat arrived (after the slots were refreshed and any transition). */
  heartbeat: [heartbeat: Heartbeat, from: TransportAddress];
  /** A heartbeat was refused (and counted). */
  rejected: [reason: HeartbeatRejectReason, error: BlockMirrorError, from: TransportAddress];
  /**
   * `rekeyNeeded` became true (`requireKey` only): the link is down and its
   * heartbeats cannot be authenticated, so no probation can start. Reopen the
   * connections by backoff; their handshake gives the key (`useKey`).
   */
  rekey: [];
}

function positive(value: number | undefined, fallback: number, name: string, allowZero = false): number {
  if (value === undefined) return fallback;
  if (typeof value !== 'number' || !Number.isFinite(value) || value < 0 || (!allowZero && value === 0)) {
    throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', `${name} must be a ${allowZero ? 'non-negative' : 'positive'} finite number`, {
      details: { [name]: value },
    });
  }
  return value;
}

/**
 * Heartbeats and the link state machine for one peer (see the module notes
 * for the exact rules). The owner (primary or mirror target) reacts to `down`
 * (close the n connections) and `reopen` (open them again), and reports
 * `connected()` / `connectionsFailed()`.
 */
export class LinkMonitor extends EventEmitter<LinkMonitorEvents> {
  /** Heartbeat interval in milliseconds. */
  readonly heartbeatInterval: number;
  /** Staleness threshold in milliseconds. */
  readonly staleAfter: number;
  /** Probation length in milliseconds. */
  readonly probation: number;
  readonly nodeId: string;
  readonly session: string;

  readonly #clock: Clock;
  readonly #channel: DatagramChannel;
  readonly #slots: ConnectionArray;
  /** The configured secret (fixed), or the key derived from the TLS session (see {@link useKey}). */
  #secret: Uint8Array | undefined;
  readonly #fixedSecret: boolean;
  /** `requireKey` without a secret: nothing unauthenticated is sent or accepted. */
  readonly #keyRequired: boolean;
  /** Heartbeats refused as `auth`/`unauthenticated` since the last valid one (or the last key). */
  #unverified = 0;
  /** `rekey` was emitted and `rekeyNeeded` has not been false since. */
  #rekeySignalled = false;
  #expectedNode: string | undefined;
  readonly #guard = new HeartbeatReplayGuard();
  #peer: TransportAddress | undefined;
  #state: LinkState = 'connecting';
  #since: number;
  #reason: LinkTransitionReason | undefined;
  #running = false;
  #stopped = false;
  #interval: TimerHandle | undefined;
  #probationTimer: TimerHandle | undefined;
  #probationEndsAt: number | undefined;
  /** t_last: time of the last valid heartbeat, or of start() before any. */
  #lastSeen = 0;
  #lastReceived: number | undefined;
  #last: Heartbeat | undefined;
  #seq = 0;
  #sent = 0;
  #received = 0;
  #transitions = 0;
  #outages = 0;
  readonly #rejected: HeartbeatRejections = { malformed: 0, auth: 0, unauthenticated: 0, 'unexpected-node': 0, replayed: 0 };
  readonly #onMessage = (data: Buffer, from: TransportAddress): void => this.#receive(data, from);

  constructor(options: LinkMonitorOptions) {
    super();
    const o = options;
    if (o === null || typeof o !== 'object') throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', 'LinkMonitor options are required');
    if (o.clock === undefined || o.channel === undefined || o.slots === undefined) {
      throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', 'LinkMonitor needs clock, channel and slots');
    }
    if (typeof o.nodeId !== 'string' || o.nodeId.length === 0 || o.nodeId.length > 256) {
      throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', 'nodeId must be a string of 1..256 characters');
    }
    if (o.session !== undefined && (typeof o.session !== 'string' || o.session.length === 0 || o.session.length > 256)) {
      throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', 'session must be a string of 1..256 characters');
    }
    if (o.secret !== undefined && !(o.secret instanceof Uint8Array && o.secret.length > 0)) {
      throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', 'secret must be a non-empty Uint8Array');
    }
    this.heartbeatInterval = positive(o.heartbeatInterval, DEFAULT_HEARTBEAT_INTERVAL, 'heartbeatInterval');
    this.staleAfter = positive(o.staleAfter, DEFAULT_STALE_AFTER, 'staleAfter');
    this.probation = positive(o.probation, DEFAULT_PROBATION, 'probation', true);
    this.#clock = o.clock;
    this.#channel = o.channel;
    this.#slots = o.slots;
    this.#secret = o.secret;
    this.#fixedSecret = o.secret !== undefined;
    this.#keyRequired = !this.#fixedSecret && o.requireKey === true;
    this.#expectedNode = o.expectedNode;
    this.nodeId = o.nodeId;
    this.session = o.session ?? randomUUID();
    if (o.peer !== undefined) this.setPeer(o.peer);
    this.#since = this.#clock.now();
  }

  /**
   * Accept heartbeats from this node id only from now on (undefined: from
   * any node but this one). A primary binds its monitor to the target node
   * its handshake proved, so a correctly signed heartbeat of another node
   * (reflected from another primary sharing the secret) is ignored and
   * counted as `unexpected-node` instead of keeping a dead link up.
   */
  expectNode(node: string | undefined): void {
    this.#expectedNode = node;
  }

  /**
   * Signs and checks heartbeats with `key` from now on: a key derived from
   * the link's TLS session by a handshake that just authenticated the peer,
   * so it also counts as a sign of life (t_last = now). It stays in use,
   * across outages too, until the next call replaces it. Undefined: no key
   * (with `requireKey`, nothing is sent or accepted any more; without,
   * unsigned heartbeats). Ignored when a secret was configured: the secret
   * always wins.
   *
   * @throws {@link BlockMirrorError} `BM_ERR_INVALID_ARGUMENT` for an empty key.
   */
  useKey(key: Uint8Array | undefined): void {
    if (this.#fixedSecret) return;
    if (key !== undefined && !(key instanceof Uint8Array && key.length > 0)) {
      throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', 'a heartbeat key must be a non-empty Uint8Array');
    }
    this.#secret = key;
    if (key !== undefined) {
      this.#unverified = 0;
      if (this.#running) this.#lastSeen = Math.max(this.#lastSeen, this.#clock.now());
    }
    this.#checkRekey();
  }

  /** How heartbeats are authenticated now (see {@link HeartbeatAuth}). */
  get heartbeatAuth(): HeartbeatAuth {
    if (this.#fixedSecret) return 'secret';
    if (this.#secret !== undefined) return 'session';
    return this.#keyRequired ? 'pending' : 'none';
  }

  /** True when heartbeats must be authenticated (a secret, or `requireKey`). */
  get keyRequired(): boolean {
    return this.#fixedSecret || this.#keyRequired;
  }

  /**
   * With `requireKey` (and no secret), in `down`: no key is known, or no
   * valid heartbeat came for more than `staleAfter` while heartbeats that
   * fail authentication (`auth`, `unauthenticated`) did — the peer lost the
   * key (restart) or holds another one. No probation can start then: the
   * owner should reopen its connections by backoff (see the `rekey` event).
   * Always false with a secret or without `requireKey`.
   */
  get rekeyNeeded(): boolean {
    if (!this.#keyRequired || !this.#running || this.#state !== 'down') return false;
    if (this.#secret === undefined) return true;
    return this.#unverified > 0 && this.#clock.now() - this.#lastSeen > this.staleAfter;
  }

  /** The node id heartbeats are accepted from (undefined: any but this one). */
  get expectedNode(): string | undefined {
    return this.#expectedNode;
  }

  /** Current state. */
  get state(): LinkState {
    return this.#state;
  }

  /** Where heartbeats go. */
  get peer(): TransportAddress | undefined {
    return this.#peer;
  }

  /** Sets (or changes) where heartbeats are sent, e.g. once the handshake told the peer's heartbeat port. */
  setPeer(peer: TransportAddress): void {
    if (peer === null || typeof peer !== 'object' || typeof peer.host !== 'string' || peer.host === '' || !Number.isInteger(peer.port) || peer.port < 1 || peer.port > 65535) {
      throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', 'peer must be { host, port } with a port in 1..65535', { details: { peer } });
    }
    this.#peer = { host: peer.host, port: peer.port };
  }

  /**
   * Starts listening and sending: one heartbeat now, then one every
   * `heartbeatInterval`. The detection clock starts now, as if a heartbeat had
   * just been received (t_last = now, and every slot is refreshed so that slots
   * opened before the first heartbeat are not stale at once). Idempotent while
   * running.
   *
   * @throws {@link BlockMirrorError} `BM_ERR_CLOSED` after `stop()`.
   */
  start(): void {
    if (this.#stopped) throw new BlockMirrorError('BM_ERR_CLOSED', 'LinkMonitor was stopped');
    if (this.#running) return;
    this.#running = true;
    this.#lastSeen = this.#clock.now();
    this.#slots.refresh(this.#lastSeen);
    this.#channel.on('message', this.#onMessage);
    this.#interval = this.#clock.setInterval(() => this.#tick(), this.heartbeatInterval);
    log('%s: link monitor started (interval %d, staleAfter %d, probation %d)', this.nodeId, this.heartbeatInterval, this.staleAfter, this.probation);
    this.#tick();
  }

  /** Stops sending and listening and clears every timer. Final; the channel stays open. */
  stop(): void {
    if (this.#stopped) return;
    this.#stopped = true;
    this.#running = false;
    if (this.#interval !== undefined) this.#clock.clearInterval(this.#interval);
    this.#interval = undefined;
    this.#clearProbation();
    this.#channel.off('message', this.#onMessage);
    log('%s: link monitor stopped', this.nodeId);
  }

  /**
   * The owner's n connections are up: → `up` (from `connecting`, `down` or
   * `probation`). Returns true when the state changed.
   */
  connected(): boolean {
    if (this.#stopped || this.#state === 'up') return false;
    this.#clearProbation();
    this.#transition('up', 'connected');
    return true;
  }

  /**
   * The owner's connections failed to open or closed on their own: in
   * `connecting`/`up` → `down` and the `down` event. Ignored (false) in
   * `down`/`probation`, where the connections are already closed.
   */
  connectionsFailed(error?: unknown): boolean {
    if (this.#stopped || (this.#state !== 'connecting' && this.#state !== 'up')) return false;
    this.#goDown('connections-failed', error === undefined ? undefined : toBlockMirrorError(error, 'BM_ERR_CONNECTION_CLOSED'));
    return true;
  }

  /** Snapshot of the monitor. */
  status(): LinkMonitorStatus {
    return {
      state: this.#state,
      since: this.#since,
      reason: this.#reason,
      running: this.#running,
      peer: this.#peer === undefined ? undefined : { ...this.#peer },
      nodeId: this.nodeId,
      session: this.session,
      lastHeartbeatReceived: this.#lastReceived,
      peerNode: this.#last?.node,
      peerSession: this.#last?.session,
      peerStatus: this.#last?.status,
      seq: this.#seq,
      heartbeatsSent: this.#sent,
      heartbeatsReceived: this.#received,
      heartbeatsRejected: { ...this.#rejected },
      probationEndsAt: this.#state === 'probation' ? this.#probationEndsAt : undefined,
      transitions: this.#transitions,
      outages: this.#outages,
      auth: this.heartbeatAuth,
      rekeyNeeded: this.rekeyNeeded,
    };
  }

  /** Sends one heartbeat, then runs the detection rules. */
  #tick(): void {
    if (!this.#running) return;
    const peer = this.#peer;
    // with a key required, nothing unauthenticated is sent
    if (peer !== undefined && !(this.#keyRequired && this.#secret === undefined)) {
      this.#seq++;
      const datagram = encodeHeartbeat(
        { node: this.nodeId, session: this.session, seq: this.#seq, time: this.#clock.now(), status: this.#state },
        this.#secret,
      );
      this.#channel.send(datagram, peer);
      this.#sent++;
    }
    const now = this.#clock.now();
    for (const slot of this.#slots.stale(now, this.staleAfter)) slot.status = 'closed';
    const stale = now - this.#lastSeen > this.staleAfter;
    // in `connecting` without the key it requires, nothing could be heard yet:
    // the connection attempts decide (a failure takes the link down)
    const unheard = this.#keyRequired && this.#secret === undefined && this.#state === 'connecting';
    if (stale && !unheard) {
      if (this.#state === 'connecting' || this.#state === 'up') {
        log('%s: no heartbeat for %d ms: down', this.nodeId, now - this.#lastSeen);
        this.#goDown('stale', undefined);
      } else if (this.#state === 'probation') {
        this.#probationGap();
      }
    }
    this.#checkRekey();
  }

  #receive(data: Buffer, from: TransportAddress): void {
    if (!this.#running) return;
    let hb: Heartbeat;
    try {
      hb = verifyHeartbeat(data, { secret: this.#secret, requireAuth: this.#keyRequired, expectedNode: this.#expectedNode, rejectNode: this.nodeId, guard: this.#guard });
    } catch (error) {
      const coded = isBlockMirrorError(error) ? error : toBlockMirrorError(error, 'BM_ERR_BAD_HEADER');
      const r = coded.details.reason;
      const reason: HeartbeatRejectReason = (HEARTBEAT_REJECT_REASONS as readonly unknown[]).includes(r) ? (r as HeartbeatRejectReason) : 'malformed';
      this.#rejected[reason]++;
      log('%s: heartbeat from %s:%d refused (%s): %s', this.nodeId, from.host, from.port, reason, coded.message);
      this.emit('rejected', reason, coded, from);
      if (reason === 'auth' || reason === 'unauthenticated') {
        this.#unverified++;
        this.#checkRekey();
      }
      return;
    }
    const now = this.#clock.now();
    const previous = this.#lastSeen;
    this.#lastSeen = now;
    this.#lastReceived = now;
    this.#last = hb;
    this.#received++;
    this.#unverified = 0;
    this.#slots.refresh(now);
    if (this.#state === 'down') {
      this.#startProbation();
    } else if (this.#state === 'probation' && now - previous > this.staleAfter) {
      // A gap the sends did not see yet: fall back, and this heartbeat starts a new probation.
      this.#probationGap();
      if (this.#running && this.state === 'down') this.#startProbation();
    }
    if (this.#running) this.emit('heartbeat', hb, from);
  }

  #startProbation(): void {
    if (this.probation === 0) {
      this.#reopen();
      return;
    }
    const endsAt = this.#clock.now() + this.probation;
    this.#probationEndsAt = endsAt;
    this.#probationTimer = this.#clock.setTimeout(() => {
      this.#probationTimer = undefined;
      this.#endProbation();
    }, this.probation);
    this.#transition('probation', 'heartbeat');
  }

  #endProbation(): void {
    if (!this.#running || this.#state !== 'probation') return;
    if (this.#clock.now() - this.#lastSeen > this.staleAfter) {
      this.#probationGap();
      return;
    }
    this.#reopen();
  }

  #reopen(): void {
    this.#clearProbation();
    this.#transition('connecting', 'probation-complete');
    if (this.#running && this.state === 'connecting') this.emit('reopen');
  }

  #probationGap(): void {
    this.#clearProbation();
    log('%s: gap of %d ms during probation', this.nodeId, this.#clock.now() - this.#lastSeen);
    this.#transition('down', 'probation-gap');
    this.#checkRekey();
  }

  #goDown(reason: LinkTransitionReason, error: Error | undefined): void {
    this.#clearProbation();
    this.#outages++;
    this.#transition('down', reason);
    if (this.#stopped || this.state !== 'down') return;
    if (error === undefined) this.emit('down', reason);
    else this.emit('down', reason, error);
    this.#checkRekey();
  }

  /** Emits `rekey` when {@link rekeyNeeded} became true (once until it is false again). */
  #checkRekey(): void {
    if (!this.#keyRequired) return;
    if (!this.rekeyNeeded) {
      this.#rekeySignalled = false;
      return;
    }
    if (this.#rekeySignalled) return;
    this.#rekeySignalled = true;
    log('%s: link down and heartbeats cannot be authenticated (%s): rekey by reconnecting', this.nodeId, this.#secret === undefined ? 'no key' : 'unverifiable heartbeats');
    this.emit('rekey');
  }

  #clearProbation(): void {
    if (this.#probationTimer !== undefined) this.#clock.clearTimeout(this.#probationTimer);
    this.#probationTimer = undefined;
    this.#probationEndsAt = undefined;
  }

  #transition(next: LinkState, reason: LinkTransitionReason): void {
    const previous = this.#state;
    if (previous === next) return;
    this.#state = next;
    this.#since = this.#clock.now();
    this.#reason = reason;
    this.#transitions++;
    if (next !== 'down') this.#rekeySignalled = false;
    log('%s: link %s -> %s (%s)', this.nodeId, previous, next, reason);
    this.emit('state', next, previous, reason);
  }
}
