/**
 * An in-memory network with fault injection, for tests: {@link MemoryNetwork}
 * hands out {@link Transport}s that reach each other by `host:port`, and every
 * connection is a {@link MemoryLink} whose two directions can be delayed,
 * stalled, blackholed or cut. Datagrams can be dropped, duplicated, delayed and
 * reordered from a seeded random source; hosts can be partitioned.
 *
 * Semantics worth knowing:
 * - Delivery is always asynchronous (never inside `write()`), in order per
 *   direction, one `data` event per written chunk.
 * - Chunks are **copied** at `write()` (one copy per chunk): the receiver
 *   never aliases the sender's buffer, and a sender that (wrongly) modifies a
 *   buffer after `write()` does not change what is delivered. This is the one
 *   place where the memory transport differs from TCP, which sends the bytes
 *   as they are when the socket is flushed.
 * - Data without delay is delivered on a real `setImmediate`; delayed data
 *   goes through the network's {@link Clock}, so with a fake clock only
 *   delayed traffic needs virtual time to advance.
 * - `end()` sends a FIN after the queued data; the peer emits `close` when
 *   the FIN arrives (after all data before it) and answers with its own FIN,
 *   whose arrival closes the first side. `destroy()` discards everything still
 *   queued in both directions and sends a reset: the peer's `close` carries a
 *   `BM_ERR_CONNECTION_CLOSED` error. FIN and reset travel the link like data
 *   (delays, stalls and blackholes apply to them).
 *
 * @module
 */
import { createHmac, randomBytes } from 'node:crypto';
import debug from 'debug';
import { EventEmitter } from 'eventemitter3';
import { activeClock } from '../clock.js';
import type { Clock, TimerHandle } from '../clock.js';
import { BlockMirrorError, invalidArgument } from '../errors.js';
import type {
  ConnectOptions,
  DatagramChannel,
  DatagramChannelEvents,
  Transport,
  TransportAddress,
  TransportConnection,
  TransportConnectionEvents,
  TransportServer,
  TransportServerEvents,
  TransportSupports,
} from './transport.js';
import { checkAddress } from './address.js';

const log = debug('blockmirror:transport');

// Captured at load so that a globally installed fake timer does not freeze
// zero-delay delivery (delayed delivery goes through the injected Clock).
const realSetImmediate = globalThis.setImmediate;
const realClearImmediate = globalThis.clearImmediate;

/** Default per-direction high-water mark of a {@link MemoryNetwork} (1 MiB). */
export const DEFAULT_MEMORY_HIGH_WATER_MARK = 1024 * 1024;
/** Default reorder window of {@link DatagramFaults.reorderWindowMs}. */
export const DEFAULT_REORDER_WINDOW_MS = 10;
const FIRST_EPHEMERAL_PORT = 49152;
const EPHEMERAL_PORT_COUNT = 65536 - FIRST_EPHEMERAL_PORT;
const EMPTY = Buffer.alloc(0);

/**
 * One-way delay of a link direction in milliseconds: a constant, or a
 * function called once per written chunk (FIN/reset signals are passed an
 * empty buffer). Negative or non-finite results count as 0.
 */
export type MemoryDelay = number | ((chunk: Buffer) => number);

/** Which direction(s) of a {@link MemoryLink} an operation applies to (`a` is the connecting side). */
export type MemoryLinkDirectionName = 'aToB' | 'bToA' | 'both';

/** Options of {@link MemoryNetwork}. */
export interface MemoryNetworkOptions {
  /** Clock for delays (default {@link activeClock}: pending deliveries keep the process alive, as sockets do); inject a fake clock for virtual time. */
  clock?: Clock;
  /**
   * Per-direction send buffer limit in bytes (default 1 MiB): `write()`
   * returns false once more than this many bytes are queued undelivered in
   * that direction; `drain` follows when the queue falls to half of it.
   */
  highWaterMark?: number;
  /** Random source in [0, 1) for datagram faults (default `Math.random`); see {@link seededRandom}. */
  random?: () => number;
  /**
   * Emulates the keying material of TLS sessions (default false): every
   * connection gets `exportKeyingMaterial` (the same on both ends of a link,
   * from a random secret per link, different for every link) and the
   * transports declare `supports.sessionKeys`, so what depends on it (the
   * heartbeat keys of a link over TLS without a shared secret) can be tested
   * in memory. Nothing else of TLS (encryption, peer authentication) is
   * emulated.
   */
  sessionKeys?: boolean;
}

/** Options of {@link MemoryNetwork.transport}. */
export interface MemoryTransportOptions {
  /**
   * The host this transport connects from (default `'127.0.0.1'`): the local
   * address of its outgoing connections and the host that
   * {@link MemoryNetwork.partition} matches. Listening is allowed on any host.
   */
  host?: string;
}

/** Datagram faults of a {@link MemoryNetwork}, drawn from its random source. */
export interface DatagramFaults {
  /** Probability (0..1) that a datagram is lost. */
  dropRate?: number;
  /** Probability (0..1) that a datagram is delivered twice. */
  duplicateRate?: number;
  /** Fixed one-way delay in milliseconds. */
  delayMs?: number;
  /** Add a random extra delay in [0, reorderWindowMs) to each copy, so datagrams may overtake each other. */
  reorder?: boolean;
  /** Width of the reorder jitter in milliseconds (default 10). */
  reorderWindowMs?: number;
}

/** Events of a {@link MemoryNetwork}. */
export interface MemoryNetworkEvents {
  /** A connection was established (emitted before the server's `connection` event and before `connect()` resolves). */
  link: [link: MemoryLink];
}

/** One direction of a {@link MemoryLink}. */
export interface MemoryLinkDirection {
  /** Sender's address. */
  readonly from: TransportAddress;
  /** Receiver's address. */
  readonly to: TransportAddress;
  /** Bytes written into this direction (including bytes later dropped). */
  readonly bytesSent: number;
  /** Bytes handed to the receiver's `data` listeners. */
  readonly bytesDelivered: number;
  /** Bytes discarded (blackhole, cut, destroy, or written to a closed receiver). */
  readonly bytesDropped: number;
  /** Bytes queued, not yet delivered. */
  readonly queuedBytes: number;
  readonly stalled: boolean;
  readonly blackholed: boolean;
  /**
   * Sets the delay of chunks written from now on. Order is kept: a chunk is
   * delivered at max(write time + its delay, delivery of the previous chunk).
   */
  setDelay(delay: MemoryDelay): void;
  /** Holds all traffic (it stays queued and counts against the sender's high-water mark). */
  stall(): void;
  /** Releases held traffic, in order. */
  unstall(): void;
  /** Silently discards everything queued and everything written from now on. Irreversible. */
  blackhole(): void;
}

/**
 * The two directions of one in-memory connection. `a` is the connecting
 * side, `b` the accepting side. Get it from {@link MemoryNetwork.links},
 * the network's `link` event or {@link MemoryNetwork.linkOf}.
 */
export interface MemoryLink {
  /** Sequence number of the link within its network (1, 2, …). */
  readonly id: number;
  /** The connecting end (what `connect()` resolved with). */
  readonly a: TransportConnection;
  /** The accepting end (what the server emitted). */
  readonly b: TransportConnection;
  readonly aToB: MemoryLinkDirection;
  readonly bToA: MemoryLinkDirection;
  /** Bytes written by `a` (same as `aToB.bytesSent`). */
  readonly bytesAtoB: number;
  /** Bytes written by `b` (same as `bToA.bytesSent`). */
  readonly bytesBtoA: number;
  /** True when both directions are blackholed. */
  readonly blackholed: boolean;
  /** True once both ends emitted `close`. */
  readonly closed: boolean;
  /** {@link MemoryLinkDirection.setDelay} on one or both directions (default both). */
  setDelay(delay: MemoryDelay, direction?: MemoryLinkDirectionName): void;
  /** {@link MemoryLinkDirection.stall} on one or both directions (default both). */
  stall(direction?: MemoryLinkDirectionName): void;
  /** {@link MemoryLinkDirection.unstall} on one or both directions (default both). */
  unstall(direction?: MemoryLinkDirectionName): void;
  /**
   * A half-open partition: everything queued or written from now on, in one
   * or both directions (default both), is silently lost and neither end gets
   * `close` from the other (each still closes on its own `destroy()`).
   * Irreversible: callers must reconnect.
   */
  blackhole(direction?: MemoryLinkDirectionName): void;
  /**
   * Breaks the connection: queued data is lost and both ends emit `close`
   * with a `BM_ERR_CONNECTION_CLOSED` error (whose `cause` is `error`, if given).
   */
  cut(error?: Error): void;
}

/** A {@link Transport} of a {@link MemoryNetwork}. */
export interface MemoryTransport extends Transport {
  /** Host its outgoing connections come from. */
  readonly host: string;
  /** The network it belongs to. */
  readonly network: MemoryNetwork;
  bindDatagram(address: TransportAddress): Promise<DatagramChannel>;
}

/**
 * A small deterministic random source (mulberry32) in [0, 1), for
 * {@link MemoryNetworkOptions.random} and for delay functions in tests.
 */
export function seededRandom(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}


function checkRate(value: number | undefined, name: string): number {
  if (value === undefined) return 0;
  if (typeof value !== 'number' || !(value >= 0 && value <= 1)) throw invalidArgument(`${name} must be in 0..1`, { [name]: value });
  return value;
}

function checkMs(value: number | undefined, name: string, fallback: number): number {
  if (value === undefined) return fallback;
  if (typeof value !== 'number' || !Number.isFinite(value) || value < 0) {
    throw invalidArgument(`${name} must be a non-negative finite number`, { [name]: value });
  }
  return value;
}

function checkDelay(delay: MemoryDelay): void {
  if (typeof delay === 'function') return;
  if (typeof delay !== 'number' || !Number.isFinite(delay) || delay < 0) {
    throw invalidArgument('delay must be a non-negative finite number or a function', { delay });
  }
}

function isAborted(signal: AbortSignal | undefined): boolean {
  return signal?.aborted === true;
}

function hostPort(host: string, port: number): string {
  return `${host}\u0000${port}`;
}

function hostPair(a: string, b: string): string {
  return a < b ? `${a}\u0000${b}` : `${b}\u0000${a}`;
}

function connectFailed(address: TransportAddress, reason: string, message: string, cause?: unknown): BlockMirrorError {
  return new BlockMirrorError('BM_ERR_CONNECT_FAILED', `cannot connect to ${address.host}:${address.port}: ${message}`, {
    cause,
    details: { host: address.host, port: address.port, reason },
  });
}

const DATA = 0;
const FIN = 1;
const RESET = 2;

interface QueueItem {
  kind: typeof DATA | typeof FIN | typeof RESET;
  chunk: Buffer;
  due: number;
}

interface NormalizedFaults {
  dropRate: number;
  duplicateRate: number;
  delayMs: number;
  reorder: boolean;
  reorderWindowMs: number;
}

const NO_FAULTS: NormalizedFaults = { dropRate: 0, duplicateRate: 0, delayMs: 0, reorder: false, reorderWindowMs: DEFAULT_REORDER_WINDOW_MS };

/** Shared state of one network; the public {@link MemoryNetwork} delegates here. */
class Core {
  readonly clock: Clock;
  readonly highWaterMark: number;
  readonly lowWaterMark: number;
  readonly random: () => number;
  readonly sessionKeys: boolean;
  readonly onLink: (link: Link) => void;
  readonly listeners = new Map<string, MemoryServer>();
  readonly tcpPorts = new Set<string>();
  readonly datagramChannels = new Map<string, MemoryDatagramChannel>();
  readonly partitions = new Set<string>();
  readonly links = new Set<Link>();
  readonly linkByConnection = new WeakMap<TransportConnection, Link>();
  faults: NormalizedFaults = NO_FAULTS;
  nextPort = FIRST_EPHEMERAL_PORT;
  nextLinkId = 1;
  streamBytesSent = 0;
  datagramBytesSent = 0;
  datagramsSent = 0;
  datagramsDelivered = 0;
  datagramsDropped = 0;
  connectionsOpened = 0;

  constructor(options: MemoryNetworkOptions, onLink: (link: Link) => void) {
    this.clock = options.clock ?? activeClock;
    this.highWaterMark = checkMs(options.highWaterMark, 'highWaterMark', DEFAULT_MEMORY_HIGH_WATER_MARK);
    this.lowWaterMark = Math.floor(this.highWaterMark / 2);
    this.random = options.random ?? Math.random;
    this.sessionKeys = options.sessionKeys === true;
    this.onLink = onLink;
  }

  allocatePort(host: string, used: { has(key: string): boolean }): number {
    for (let i = 0; i < EPHEMERAL_PORT_COUNT; i++) {
      const port = this.nextPort;
      this.nextPort = port === 65535 ? FIRST_EPHEMERAL_PORT : port + 1;
      if (!used.has(hostPort(host, port))) return port;
    }
    throw new BlockMirrorError('BM_ERR_ADDRESS_IN_USE', `no free port left on ${host}`, { details: { host } });
  }

  isPartitioned(a: string, b: string): boolean {
    return this.partitions.size > 0 && this.partitions.has(hostPair(a, b));
  }

  listen(address: TransportAddress): MemoryServer {
    checkAddress(address, 'listen');
    const port = address.port === 0 ? this.allocatePort(address.host, this.tcpPorts) : address.port;
    const key = hostPort(address.host, port);
    if (this.tcpPorts.has(key)) {
      throw new BlockMirrorError('BM_ERR_ADDRESS_IN_USE', `${address.host}:${port} is already in use`, {
        details: { host: address.host, port },
      });
    }
    const server = new MemoryServer(this, { host: address.host, port });
    this.tcpPorts.add(key);
    this.listeners.set(key, server);
    return server;
  }

  unlisten(server: MemoryServer): void {
    const key = hostPort(server.address.host, server.address.port);
    if (this.listeners.get(key) === server) {
      this.listeners.delete(key);
      this.tcpPorts.delete(key);
    }
  }

  async connect(fromHost: string, address: TransportAddress, options: ConnectOptions): Promise<MemoryConnection> {
    checkAddress(address, 'connect');
    const { signal } = options;
    if (isAborted(signal)) throw connectFailed(address, 'aborted', 'aborted', signal?.reason);
    await Promise.resolve();
    if (isAborted(signal)) throw connectFailed(address, 'aborted', 'aborted', signal?.reason);
    if (this.isPartitioned(fromHost, address.host)) {
      throw connectFailed(address, 'partitioned', `${fromHost} is partitioned from ${address.host}`);
    }
    const server = this.listeners.get(hostPort(address.host, address.port));
    if (server === undefined || server.closing) throw connectFailed(address, 'refused', 'nobody listens there');
    const localPort = this.allocatePort(fromHost, this.tcpPorts);
    const localKey = hostPort(fromHost, localPort);
    this.tcpPorts.add(localKey);
    const local: TransportAddress = { host: fromHost, port: localPort };
    const link = new Link(this, this.nextLinkId++, local, server.address, () => {
      this.links.delete(link);
      this.tcpPorts.delete(localKey);
    });
    this.links.add(link);
    this.linkByConnection.set(link.a, link);
    this.linkByConnection.set(link.b, link);
    this.connectionsOpened++;
    log('memory link %d %s:%d -> %s:%d', link.id, local.host, local.port, address.host, address.port);
    this.onLink(link);
    server.accept(link.b);
    return link.a;
  }

  bind(address: TransportAddress): MemoryDatagramChannel {
    checkAddress(address, 'bindDatagram');
    const port = address.port === 0 ? this.allocatePort(address.host, this.datagramChannels) : address.port;
    const key = hostPort(address.host, port);
    if (this.datagramChannels.has(key)) {
      throw new BlockMirrorError('BM_ERR_ADDRESS_IN_USE', `${address.host}:${port} (datagram) is already in use`, {
        details: { host: address.host, port },
      });
    }
    const channel = new MemoryDatagramChannel(this, { host: address.host, port });
    this.datagramChannels.set(key, channel);
    return channel;
  }

  unbind(channel: MemoryDatagramChannel): void {
    const key = hostPort(channel.address.host, channel.address.port);
    if (this.datagramChannels.get(key) === channel) this.datagramChannels.delete(key);
  }

  sendDatagram(from: TransportAddress, data: Uint8Array, to: TransportAddress): void {
    this.datagramsSent++;
    this.datagramBytesSent += data.byteLength;
    if (this.isPartitioned(from.host, to.host)) {
      this.datagramsDropped++;
      return;
    }
    const faults = this.faults;
    if (faults.dropRate > 0 && this.random() < faults.dropRate) {
      this.datagramsDropped++;
      return;
    }
    const copies = faults.duplicateRate > 0 && this.random() < faults.duplicateRate ? 2 : 1;
    for (let i = 0; i < copies; i++) {
      const jitter = faults.reorder ? Math.floor(this.random() * faults.reorderWindowMs) : 0;
      const delay = faults.delayMs + jitter;
      const copy = Buffer.from(data);
      const deliver = (): void => this.deliverDatagram(from, copy, to);
      if (delay > 0) this.clock.setTimeout(deliver, delay);
      else realSetImmediate(deliver);
    }
  }

  deliverDatagram(from: TransportAddress, data: Buffer, to: TransportAddress): void {
    const target = this.datagramChannels.get(hostPort(to.host, to.port));
    if (target === undefined || target.isClosed || this.isPartitioned(from.host, to.host)) {
      this.datagramsDropped++;
      return;
    }
    this.datagramsDelivered++;
    target.emit('message', data, { host: from.host, port: from.port });
  }
}

/** One direction of a link: a timed FIFO from `sender` to `receiver`. */
class Pipe implements MemoryLinkDirection {
  readonly from: TransportAddress;
  readonly to: TransportAddress;
  bytesSent = 0;
  bytesDelivered = 0;
  bytesDropped = 0;
  // Set right after construction by Link (the ends and the pipes refer to each other).
  sender!: MemoryConnection;
  receiver!: MemoryConnection;
  readonly #core: Core;
  #items: (QueueItem | undefined)[] = [];
  #head = 0;
  #queuedBytes = 0;
  #delay: MemoryDelay = 0;
  #stalled = false;
  #blackholed = false;
  #lastDue = Number.NEGATIVE_INFINITY;
  #timer: TimerHandle | undefined;
  #timerDue = 0;
  #immediate: NodeJS.Immediate | undefined;
  #drainCheck: NodeJS.Immediate | undefined;
  #pumping = false;

  constructor(core: Core, from: TransportAddress, to: TransportAddress) {
    this.#core = core;
    this.from = from;
    this.to = to;
  }

  get queuedBytes(): number {
    return this.#queuedBytes;
  }

  get stalled(): boolean {
    return this.#stalled;
  }

  get blackholed(): boolean {
    return this.#blackholed;
  }

  setDelay(delay: MemoryDelay): void {
    checkDelay(delay);
    this.#delay = delay;
  }

  stall(): void {
    this.#stalled = true;
    this.#cancel();
  }

  unstall(): void {
    this.#stalled = false;
    this.schedule();
  }

  blackhole(): void {
    this.#blackholed = true;
    this.clear();
  }

  /** Queues a copy of a written chunk. */
  enqueueData(chunk: Buffer): void {
    const length = chunk.length;
    this.bytesSent += length;
    this.#core.streamBytesSent += length;
    if (this.#blackholed) {
      this.bytesDropped += length;
      return;
    }
    this.#push(DATA, chunk);
  }

  /** Queues a FIN or reset signal behind the data. */
  enqueueSignal(kind: typeof FIN | typeof RESET): void {
    if (this.#blackholed) return;
    this.#push(kind, EMPTY);
    this.schedule();
  }

  #push(kind: QueueItem['kind'], chunk: Buffer): void {
    const delay = this.#delay;
    let ms = typeof delay === 'number' ? delay : delay(chunk);
    if (!(ms > 0) || !Number.isFinite(ms)) ms = 0;
    const due = Math.max(this.#core.clock.now() + ms, this.#lastDue);
    this.#lastDue = due;
    this.#items.push({ kind, chunk, due });
    this.#queuedBytes += chunk.length;
  }

  /**
   * Discards everything queued (counted as dropped). With `wakeWriter`, a
   * writer waiting for `drain` gets it (its data is gone, not stuck).
   */
  clear(wakeWriter = true): void {
    for (let i = this.#head; i < this.#items.length; i++) this.bytesDropped += this.#items[i]?.chunk.length ?? 0;
    this.#items = [];
    this.#head = 0;
    this.#queuedBytes = 0;
    this.#cancel();
    if (wakeWriter && this.sender.needDrain && this.#drainCheck === undefined) {
      this.#drainCheck = realSetImmediate(this.#checkDrain);
    }
  }

  #cancel(): void {
    if (this.#immediate !== undefined) {
      realClearImmediate(this.#immediate);
      this.#immediate = undefined;
    }
    if (this.#timer !== undefined) {
      this.#core.clock.clearTimeout(this.#timer);
      this.#timer = undefined;
    }
  }

  /** Arms an immediate (head due) or a clock timer (head in the future), if delivery is possible. */
  schedule(): void {
    if (this.#pumping) return;
    const head = this.#items[this.#head];
    const receiver = this.receiver;
    if (
      head === undefined ||
      this.#stalled ||
      this.#blackholed ||
      (head.kind !== RESET && receiver.paused && receiver.alive)
    ) {
      this.#cancel();
      return;
    }
    const now = this.#core.clock.now();
    if (head.due <= now) {
      if (this.#timer !== undefined) {
        this.#core.clock.clearTimeout(this.#timer);
        this.#timer = undefined;
      }
      this.#immediate ??= realSetImmediate(this.#pump);
      return;
    }
    if (this.#immediate !== undefined) {
      realClearImmediate(this.#immediate);
      this.#immediate = undefined;
    }
    if (this.#timer !== undefined) {
      if (this.#timerDue === head.due) return;
      this.#core.clock.clearTimeout(this.#timer);
    }
    this.#timerDue = head.due;
    this.#timer = this.#core.clock.setTimeout(this.#pump, Math.max(1, Math.ceil(head.due - now)));
  }

  readonly #pump = (): void => {
    this.#immediate = undefined;
    this.#timer = undefined;
    this.#pumping = true;
    try {
      const clock = this.#core.clock;
      while (this.#head < this.#items.length && !this.#stalled && !this.#blackholed) {
        const item = this.#items[this.#head]!;
        if (item.due > clock.now()) break;
        const receiver = this.receiver;
        const alive = receiver.alive;
        if (item.kind !== RESET && alive && receiver.paused) break;
        this.#shift();
        if (item.kind === DATA) {
          const length = item.chunk.length;
          this.#queuedBytes -= length;
          if (!alive) {
            this.bytesDropped += length;
            continue;
          }
          this.bytesDelivered += length;
          receiver.deliver(item.chunk);
        } else if (item.kind === FIN) {
          receiver.onFin();
        } else {
          receiver.onReset();
        }
      }
    } finally {
      this.#pumping = false;
    }
    this.#checkDrain();
    this.schedule();
  };

  #shift(): void {
    this.#items[this.#head] = undefined;
    this.#head++;
    if (this.#head === this.#items.length) {
      this.#items = [];
      this.#head = 0;
    } else if (this.#head >= 1024 && this.#head * 2 >= this.#items.length) {
      this.#items = this.#items.slice(this.#head);
      this.#head = 0;
    }
  }

  readonly #checkDrain = (): void => {
    this.#drainCheck = undefined;
    const sender = this.sender;
    if (sender.needDrain && this.#queuedBytes <= this.#core.lowWaterMark) {
      sender.needDrain = false;
      if (!sender.closed) sender.emit('drain');
    }
  };
}

/** One end of an in-memory connection. */
class MemoryConnection extends EventEmitter<TransportConnectionEvents> implements TransportConnection {
  readonly localAddress: TransportAddress;
  readonly remoteAddress: TransportAddress;
  paused = false;
  needDrain = false;
  server: MemoryServer | undefined;
  /** Emulated TLS keying material (only with `MemoryNetworkOptions.sessionKeys`). */
  exportKeyingMaterial?: (length: number, label: string, context: Uint8Array) => Buffer;
  readonly #core: Core;
  readonly #out: Pipe;
  readonly #in: Pipe;
  readonly #onClosed: () => void;
  #finSent = false;
  #destroyed = false;
  #closeEmitted = false;

  constructor(core: Core, local: TransportAddress, remote: TransportAddress, out: Pipe, incoming: Pipe, onClosed: () => void) {
    super();
    this.#core = core;
    this.localAddress = local;
    this.remoteAddress = remote;
    this.#out = out;
    this.#in = incoming;
    this.#onClosed = onClosed;
  }

  get closed(): boolean {
    return this.#finSent || this.#destroyed || this.#closeEmitted;
  }

  /** Still able to receive (not destroyed, `close` not emitted). */
  get alive(): boolean {
    return !this.#destroyed && !this.#closeEmitted;
  }

  get bufferedAmount(): number {
    return this.#out.queuedBytes;
  }

  /** Copies each chunk and queues it; delivery happens later, never inside this call. */
  write(chunks: readonly Uint8Array[]): boolean {
    if (this.closed) return false;
    const out = this.#out;
    for (const chunk of chunks) {
      const length = chunk.byteLength;
      if (length === 0) continue;
      const copy = Buffer.allocUnsafe(length);
      copy.set(chunk);
      out.enqueueData(copy);
    }
    out.schedule();
    if (out.queuedBytes > this.#core.highWaterMark) {
      this.needDrain = true;
      return false;
    }
    return true;
  }

  pause(): void {
    this.paused = true;
  }

  resume(): void {
    if (!this.paused) return;
    this.paused = false;
    this.#in.schedule();
  }

  end(): void {
    if (this.closed) return;
    this.#finSent = true;
    this.#out.enqueueSignal(FIN);
  }

  destroy(error?: Error): void {
    if (!this.alive) return;
    this.#destroyed = true;
    this.#out.clear();
    this.#in.clear(false);
    this.#out.enqueueSignal(RESET);
    realSetImmediate(() => this.finish(error));
  }

  /** Kills this end without telling the peer (used by `cut`). */
  sever(error: Error): void {
    if (!this.alive) return;
    this.#destroyed = true;
    this.#out.clear();
    this.#in.clear();
    realSetImmediate(() => this.finish(error));
  }

  deliver(chunk: Buffer): void {
    this.emit('data', chunk);
  }

  /** The peer's FIN arrived after all its data: answer with ours and close. */
  onFin(): void {
    if (!this.alive) return;
    if (!this.#finSent) {
      this.#finSent = true;
      this.#out.enqueueSignal(FIN);
    }
    this.finish(undefined);
  }

  /** The peer reset the connection. */
  onReset(): void {
    if (!this.alive) return;
    this.#destroyed = true;
    this.#out.clear();
    this.#in.clear();
    this.finish(new BlockMirrorError('BM_ERR_CONNECTION_CLOSED', 'connection reset by peer', {
      details: { host: this.remoteAddress.host, port: this.remoteAddress.port },
    }));
  }

  finish(error: Error | undefined): void {
    if (this.#closeEmitted) return;
    this.#closeEmitted = true;
    this.needDrain = false;
    this.#onClosed();
    this.emit('close', error);
  }
}

class Link implements MemoryLink {
  readonly id: number;
  readonly a: MemoryConnection;
  readonly b: MemoryConnection;
  readonly aToB: Pipe;
  readonly bToA: Pipe;
  #closedEnds = 0;

  constructor(core: Core, id: number, addressA: TransportAddress, addressB: TransportAddress, onClosed: () => void) {
    this.id = id;
    this.aToB = new Pipe(core, addressA, addressB);
    this.bToA = new Pipe(core, addressB, addressA);
    const endClosed = (): void => {
      this.#closedEnds++;
      if (this.#closedEnds === 2) onClosed();
    };
    this.a = new MemoryConnection(core, addressA, addressB, this.aToB, this.bToA, endClosed);
    this.b = new MemoryConnection(core, addressB, addressA, this.bToA, this.aToB, endClosed);
    if (core.sessionKeys) {
      // emulated TLS keying material (RFC 5705 shape): the same on both ends, a new secret per link
      const secret = randomBytes(32);
      const derive = (length: number, label: string, context: Uint8Array): Buffer => {
        const out: Buffer[] = [];
        for (let i = 0, n = 0; n < length; i++) {
          const block = createHmac('sha256', secret).update(Buffer.from([i])).update(label).update(Buffer.from([0])).update(context).digest();
          out.push(block);
          n += block.length;
        }
        return Buffer.concat(out).subarray(0, length);
      };
      this.a.exportKeyingMaterial = derive;
      this.b.exportKeyingMaterial = derive;
    }
    this.aToB.sender = this.a;
    this.aToB.receiver = this.b;
    this.bToA.sender = this.b;
    this.bToA.receiver = this.a;
  }

  get bytesAtoB(): number {
    return this.aToB.bytesSent;
  }

  get bytesBtoA(): number {
    return this.bToA.bytesSent;
  }

  get blackholed(): boolean {
    return this.aToB.blackholed && this.bToA.blackholed;
  }

  get closed(): boolean {
    return this.#closedEnds === 2;
  }

  #each(direction: MemoryLinkDirectionName, action: (pipe: Pipe) => void): void {
    if (direction !== 'aToB' && direction !== 'bToA' && direction !== 'both') {
      throw invalidArgument(`direction must be 'aToB', 'bToA' or 'both'`, { direction });
    }
    if (direction !== 'bToA') action(this.aToB);
    if (direction !== 'aToB') action(this.bToA);
  }

  setDelay(delay: MemoryDelay, direction: MemoryLinkDirectionName = 'both'): void {
    checkDelay(delay);
    this.#each(direction, (pipe) => pipe.setDelay(delay));
  }

  stall(direction: MemoryLinkDirectionName = 'both'): void {
    this.#each(direction, (pipe) => pipe.stall());
  }

  unstall(direction: MemoryLinkDirectionName = 'both'): void {
    this.#each(direction, (pipe) => pipe.unstall());
  }

  blackhole(direction: MemoryLinkDirectionName = 'both'): void {
    this.#each(direction, (pipe) => pipe.blackhole());
  }

  cut(error?: Error): void {
    const closeError =
      error instanceof BlockMirrorError && error.code === 'BM_ERR_CONNECTION_CLOSED'
        ? error
        : new BlockMirrorError('BM_ERR_CONNECTION_CLOSED', error === undefined ? 'link cut' : `link cut: ${error.message}`, {
            cause: error,
            details: { link: this.id },
          });
    this.a.sever(closeError);
    this.b.sever(closeError);
  }
}

class MemoryServer extends EventEmitter<TransportServerEvents> implements TransportServer {
  readonly address: TransportAddress;
  readonly #core: Core;
  readonly #connections = new Set<MemoryConnection>();
  #closing: Promise<void> | undefined;

  constructor(core: Core, address: TransportAddress) {
    super();
    this.#core = core;
    this.address = address;
  }

  get closing(): boolean {
    return this.#closing !== undefined;
  }

  accept(connection: MemoryConnection): void {
    this.#connections.add(connection);
    connection.once('close', () => this.#connections.delete(connection));
    this.emit('connection', connection);
  }

  close(): Promise<void> {
    this.#closing ??= (async () => {
      this.#core.unlisten(this);
      await Promise.all(
        [...this.#connections].map(
          (connection) =>
            new Promise<void>((resolve) => {
              connection.once('close', () => resolve());
              connection.destroy();
            }),
        ),
      );
    })();
    return this.#closing;
  }
}

class MemoryDatagramChannel extends EventEmitter<DatagramChannelEvents> implements DatagramChannel {
  readonly address: TransportAddress;
  readonly #core: Core;
  #closed = false;

  constructor(core: Core, address: TransportAddress) {
    super();
    this.#core = core;
    this.address = address;
  }

  get isClosed(): boolean {
    return this.#closed;
  }

  send(data: Uint8Array, to: TransportAddress): void {
    if (this.#closed) return;
    this.#core.sendDatagram(this.address, data, to);
  }

  close(): Promise<void> {
    if (!this.#closed) {
      this.#closed = true;
      this.#core.unbind(this);
    }
    return Promise.resolve();
  }
}

class MemoryTransportImpl implements MemoryTransport {
  readonly supports: TransportSupports;
  readonly host: string;
  readonly network: MemoryNetwork;
  readonly #core: Core;

  constructor(network: MemoryNetwork, core: Core, host: string) {
    this.network = network;
    this.#core = core;
    this.host = host;
    this.supports = { datagram: true, faults: true, ...(core.sessionKeys ? { sessionKeys: true } : {}) };
  }

  async listen(address: TransportAddress): Promise<TransportServer> {
    return this.#core.listen(address);
  }

  connect(address: TransportAddress, options: ConnectOptions = {}): Promise<TransportConnection> {
    return this.#core.connect(this.host, address, options);
  }

  async bindDatagram(address: TransportAddress): Promise<DatagramChannel> {
    return this.#core.bind(address);
  }
}

/**
 * An in-memory network. Transports from {@link MemoryNetwork.transport}
 * reach each other by `host:port`; `listen` on port 0 assigns a free port,
 * a taken port gives `BM_ERR_ADDRESS_IN_USE`, connecting where nobody listens
 * (or across a partition) gives `BM_ERR_CONNECT_FAILED` with
 * `details.reason` `'refused'` / `'partitioned'` / `'aborted'`. Connects
 * complete within microtasks, so `ConnectOptions.timeout` never fires.
 *
 * ```ts
 * const network = new MemoryNetwork({ clock: clockFrom(fakeClock) });
 * network.on('link', (link) => link.setDelay(5));
 * const a = network.transport({ host: 'a' });
 * const b = network.transport({ host: 'b' });
 * ```
 */
export class MemoryNetwork extends EventEmitter<MemoryNetworkEvents> {
  readonly #core: Core;

  constructor(options: MemoryNetworkOptions = {}) {
    super();
    this.#core = new Core(options, (link) => this.emit('link', link));
  }

  /** A transport whose outgoing connections come from `options.host` (default `'127.0.0.1'`). */
  transport(options: MemoryTransportOptions = {}): MemoryTransport {
    const host = options.host ?? '127.0.0.1';
    if (typeof host !== 'string' || host === '') throw invalidArgument('host must be a non-empty string');
    return new MemoryTransportImpl(this, this.#core, host);
  }

  /** Links not yet closed on both ends, oldest first. */
  get links(): readonly MemoryLink[] {
    return [...this.#core.links];
  }

  /** The link a connection of this network belongs to (also after it closed). */
  linkOf(connection: TransportConnection): MemoryLink | undefined {
    return this.#core.linkByConnection.get(connection);
  }

  /**
   * Partitions two hosts (in both directions): new connects between them fail
   * with `BM_ERR_CONNECT_FAILED`, datagrams between them are dropped, and
   * existing links between them are blackholed. Blackholed data is lost:
   * after {@link heal} those links stay silent (neither end gets `close`)
   * and callers must reconnect, as after a real half-open partition.
   */
  partition(hostA: string, hostB: string): void {
    this.#core.partitions.add(hostPair(hostA, hostB));
    for (const link of this.#core.links) {
      const x = link.a.localAddress.host;
      const y = link.b.localAddress.host;
      if ((x === hostA && y === hostB) || (x === hostB && y === hostA)) link.blackhole();
    }
    log('memory partition %s <-> %s', hostA, hostB);
  }

  /** Ends a partition: new connects and datagrams pass again (existing blackholed links stay dead). */
  heal(hostA: string, hostB: string): void {
    this.#core.partitions.delete(hostPair(hostA, hostB));
    log('memory heal %s <-> %s', hostA, hostB);
  }

  /** True while the two hosts are partitioned. */
  isPartitioned(hostA: string, hostB: string): boolean {
    return this.#core.isPartitioned(hostA, hostB);
  }

  /** Replaces the datagram faults (omit or pass `{}` for a perfect network). */
  setDatagramFaults(faults: DatagramFaults = {}): void {
    this.#core.faults = {
      dropRate: checkRate(faults.dropRate, 'dropRate'),
      duplicateRate: checkRate(faults.duplicateRate, 'duplicateRate'),
      delayMs: checkMs(faults.delayMs, 'delayMs', 0),
      reorder: faults.reorder === true,
      reorderWindowMs: checkMs(faults.reorderWindowMs, 'reorderWindowMs', DEFAULT_REORDER_WINDOW_MS),
    };
  }

  /** The current datagram faults. */
  get datagramFaults(): Readonly<Required<DatagramFaults>> {
    return { ...this.#core.faults };
  }

  /** Every byte written on connections plus every datagram byte sent (including bytes later dropped). */
  get bytesSent(): number {
    return this.#core.streamBytesSent + this.#core.datagramBytesSent;
  }

  /** Bytes written on connections. */
  get streamBytesSent(): number {
    return this.#core.streamBytesSent;
  }

  /** Bytes of datagrams sent. */
  get datagramBytesSent(): number {
    return this.#core.datagramBytesSent;
  }

  /** Datagrams sent (before faults). */
  get datagramsSent(): number {
    return this.#core.datagramsSent;
  }

  /** Datagram copies delivered to a bound channel. */
  get datagramsDelivered(): number {
    return this.#core.datagramsDelivered;
  }

  /** Datagrams lost (faults, partitions, nobody bound). */
  get datagramsDropped(): number {
    return this.#core.datagramsDropped;
  }

  /** Connections established so far. */
  get connectionsOpened(): number {
    return this.#core.connectionsOpened;
  }
}
