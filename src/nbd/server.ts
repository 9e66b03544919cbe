/**
 * An NBD server (fixed-newstyle handshake, simple and structured replies)
 * that serves {@link NbdExport}s to any NBD client: qemu, libnbd tools
 * (nbdinfo, nbdcopy), fio's nbd engine, the Linux kernel client.
 *
 * Protocol: `NetworkBlockDevice/nbd` `doc/proto.md`.
 *
 * @module
 */
import { writeZeroes } from '../device/zero.js';
import net from 'node:net';
import tls from 'node:tls';
import type { Duplex } from 'node:stream';
import createDebug from 'debug';
import { EventEmitter } from 'eventemitter3';
import type { Clock, TimerHandle } from '../clock.js';
import { systemClock } from '../clock.js';
import { BlockMirrorError, invalidArgument, toBlockMirrorError } from '../errors.js';
import type { BlockExtent } from '../device/block-device.js';
import { ByteBudget, type BudgetWaiter } from '../limits/byte-budget.js';
import { ReadBuffers } from './read-buffers.js';
import { peerCertificateError } from '../transport/tls-verify.js';
import { nbdTls, type NbdTls, type NbdTlsOptions } from './tls-options.js';
import type { NbdBackend, NbdExport } from './export.js';
import { nbdErrorFor, validateNbdExport } from './export.js';
import {
  NBD_CMD_BLOCK_STATUS,
  NBD_CMD_CACHE,
  NBD_CMD_DISC,
  NBD_CMD_FLAG_DF,
  NBD_CMD_FLAG_FUA,
  NBD_CMD_FLAG_FAST_ZERO,
  NBD_CMD_FLAG_NO_HOLE,
  NBD_CMD_FLAG_REQ_ONE,
  NBD_CMD_FLUSH,
  NBD_CMD_READ,
  NBD_CMD_TRIM,
  NBD_CMD_WRITE,
  NBD_CMD_WRITE_ZEROES,
  NBD_DOS_PAYLOAD_THRESHOLD,
  NBD_EINVAL,
  NBD_EIO,
  NBD_ENOSPC,
  NBD_EPERM,
  NBD_FLAG_C_FIXED_NEWSTYLE,
  NBD_FLAG_C_NO_ZEROES,
  NBD_FLAG_CAN_MULTI_CONN,
  NBD_FLAG_FIXED_NEWSTYLE,
  NBD_FLAG_HAS_FLAGS,
  NBD_FLAG_NO_ZEROES,
  NBD_FLAG_READ_ONLY,
  NBD_FLAG_SEND_CACHE,
  NBD_FLAG_SEND_DF,
  NBD_FLAG_SEND_FAST_ZERO,
  NBD_FLAG_SEND_FLUSH,
  NBD_FLAG_SEND_FUA,
  NBD_FLAG_SEND_TRIM,
  NBD_FLAG_SEND_WRITE_ZEROES,
  NBD_INFO_BLOCK_SIZE,
  NBD_INFO_DESCRIPTION,
  NBD_INFO_EXPORT,
  NBD_INFO_NAME,
  NBD_INIT_MAGIC,
  NBD_META_BASE_ALLOCATION,
  NBD_OPT_ABORT,
  NBD_OPT_EXPORT_NAME,
  NBD_OPT_GO,
  NBD_OPT_INFO,
  NBD_OPT_LIST,
  NBD_OPT_LIST_META_CONTEXT,
  NBD_OPT_SET_META_CONTEXT,
  NBD_OPT_STARTTLS,
  NBD_OPT_STRUCTURED_REPLY,
  NBD_OPTION_HEADER_SIZE,
  NBD_OPTION_REPLY_HEADER_SIZE,
  NBD_OPTS_MAGIC,
  NBD_REP_ACK,
  NBD_REP_ERR_INVALID,
  NBD_REP_ERR_TLS_REQD,
  NBD_REP_ERR_UNKNOWN,
  NBD_REP_ERR_UNSUP,
  NBD_REP_INFO,
  NBD_REP_MAGIC,
  NBD_REP_META_CONTEXT,
  NBD_REP_SERVER,
  NBD_REPLY_FLAG_DONE,
  NBD_REPLY_TYPE_BLOCK_STATUS,
  NBD_REPLY_TYPE_ERROR,
  NBD_REPLY_TYPE_NONE,
  NBD_REPLY_TYPE_OFFSET_DATA,
  NBD_REQUEST_MAGIC,
  NBD_REQUEST_SIZE,
  NBD_SIMPLE_REPLY_MAGIC,
  NBD_SIMPLE_REPLY_SIZE,
  NBD_STRUCTURED_REPLY_HEADER_SIZE,
  NBD_STATE_HOLE,
  NBD_STATE_ZERO,
  NBD_STRUCTURED_REPLY_MAGIC,
  commandName,
  optionName,
} from './protocol.js';

const log = createDebug('blockmirror:nbd');

export type { NbdTlsOptions } from './tls-options.js';

/** Supplies the current exports; called for every `NBD_OPT_LIST`, `INFO`, `GO` and `EXPORT_NAME`. */
export type NbdExportLookup = () => readonly NbdExport[] | Promise<readonly NbdExport[]>;

/** Options of {@link NbdServer}. */
export interface NbdServerOptions {
  /**
   * The exports served: a fixed list (validated by the constructor; names
   * unique) or a function returning the current list (validated on use).
   */
  exports: readonly NbdExport[] | NbdExportLookup;
  /**
   * Name of the export a client gets when it asks for the empty name (the
   * NBD "default export"). Without it, the empty name selects the export
   * whose name is `''`, if any.
   */
  defaultExport?: string;
  /**
   * Largest READ or WRITE length accepted, in bytes (advertised as the
   * maximum block size, rounded down to a multiple of the export's block
   * size). Default 32 MiB; 64 KiB … 1 GiB. No request ever makes the server
   * hold more than this for its payload: lengths are checked before any
   * buffering. A longer READ gets `EINVAL`; a longer WRITE gets `EINVAL` with
   * its payload skipped unread when it is at most 32 MiB (the spec's
   * "not a denial of service" bound), and a hard disconnect otherwise.
   */
  maxPayload?: number;
  /** Longest option data accepted during the handshake; longer closes the connection. Default 64 KiB. */
  maxOptionLength?: number;
  /** Milliseconds a client has from connecting to entering transmission; then it is closed. Default 10 000. */
  handshakeTimeout?: number;
  /**
   * Requests processed at once per connection. While at the limit the server
   * stops reading that socket (TCP back-pressure). Default 64.
   */
  maxInFlightPerConnection?: number;
  /**
   * READ and WRITE bytes in flight per connection before the server stops
   * reading that socket (a single request is always admitted). A request's
   * bytes count from the moment its header is read until its reply has left
   * the process (a READ reply waiting in the socket's send buffer of a client
   * that does not read still counts). Default `max(8 MiB, maxPayload)`.
   */
  maxInFlightBytesPerConnection?: number;
  /**
   * READ and WRITE bytes in flight over all connections (counted as for
   * `maxInFlightBytesPerConnection`). When a request does not fit, the server
   * stops reading that client's socket until replies of others have left:
   * requests are delayed, never dropped. A connection that holds nothing may
   * always take one request, so a client that reads its replies keeps working
   * while others hold the whole budget: at most this many bytes plus one
   * request per connection are held (bounded by `maxConnections` ×
   * `maxPayload`). Default 128 MiB.
   */
  maxInFlightBytes?: number;
  /**
   * Client connections open at once (handshaking or in transmission). A
   * connection beyond it is closed at once, reported as an `error` event
   * with `BM_ERR_TOO_MANY_CONNECTIONS`. Default 128.
   */
  maxConnections?: number;
  /**
   * Offer TLS (`NBD_OPT_STARTTLS`): this server's certificate and key (PEM,
   * or a ready `SecureContext`). With `ca`, clients must present a
   * certificate that CA signed (mutual TLS). Without this option STARTTLS
   * is answered `NBD_REP_ERR_UNSUP`.
   */
  tls?: NbdTlsOptions;
  /**
   * Refuse plaintext (the spec's "forced TLS"): before STARTTLS every option
   * but `NBD_OPT_ABORT` gets `NBD_REP_ERR_TLS_REQD`, and `NBD_OPT_EXPORT_NAME`
   * closes the connection. Needs `tls`. Default false.
   */
  tlsOnly?: boolean;
  /**
   * Milliseconds `close()` lets a connection finish its in-flight requests
   * and flush its replies before destroying it. Default 5 000.
   */
  shutdownTimeout?: number;
  /** Time source for the timeouts. Default {@link systemClock}. */
  clock?: Clock;
}

/** Address given to and reported by {@link NbdServer.listen}. */
export interface NbdListenAddress {
  /** Host or IP to bind. Default `127.0.0.1`. */
  host?: string;
  /** TCP port; 0 picks a free port. */
  port: number;
}

/** Identity of one client connection, passed with the server's events. */
export interface NbdClientInfo {
  /** Connection number, unique within the server. */
  readonly id: number;
  /** Remote IP address. */
  readonly remoteAddress: string;
  /** Remote TCP port. */
  readonly remotePort: number;
}

/** Events of an {@link NbdServer}. */
export interface NbdServerEvents {
  /** A client connected (the handshake starts). */
  connection: [client: NbdClientInfo];
  /** A client finished the handshake and entered transmission on `exportName`. */
  session: [client: NbdClientInfo, exportName: string];
  /** A client connection closed (for whatever reason). */
  disconnect: [client: NbdClientInfo];
  /**
   * Something went wrong: with `client`, that client broke the protocol,
   * timed out or its socket failed (only that connection is closed); without,
   * the listening socket failed. Never thrown.
   */
  error: [error: BlockMirrorError, client?: NbdClientInfo];
}

/** Counters of an {@link NbdServer} since it was created. */
export interface NbdServerStats {
  /** Connections open now. */
  connections: number;
  /** Connections accepted in total. */
  totalConnections: number;
  /** Transmission requests received (any command). */
  requests: number;
  /** Requests in flight now (being processed by a backend). */
  inFlight: number;
  /** Bytes returned to clients by READ. */
  bytesRead: number;
  /** Bytes written by WRITE. */
  bytesWritten: number;
  /** Bytes zeroed by WRITE_ZEROES. */
  bytesZeroed: number;
  /** Bytes discarded by TRIM. */
  bytesTrimmed: number;
  /** Requests answered with an error. */
  errors: number;
  /** Connections closed by the server because of a protocol violation, an over-limit request or a timeout. */
  protocolErrors: number;
  /** Connections refused because `maxConnections` were open. */
  refusedConnections: number;
  /** READ and WRITE bytes in flight now over all connections (see `maxInFlightBytes`). */
  inFlightBytes: number;
  /** Most READ and WRITE bytes in flight at once since creation. */
  peakInFlightBytes: number;
  /** Times a request had to wait for room in the global byte budget. */
  budgetWaits: number;
}

const DEFAULT_MAX_PAYLOAD = 32 * 1024 * 1024;
const MIN_MAX_PAYLOAD = 64 * 1024;
const MAX_MAX_PAYLOAD = 1024 * 1024 * 1024;
const DEFAULT_MAX_OPTION_LENGTH = 64 * 1024;
const DEFAULT_HANDSHAKE_TIMEOUT = 10_000;
const DEFAULT_MAX_IN_FLIGHT = 64;
const DEFAULT_IN_FLIGHT_BYTES = 8 * 1024 * 1024;
const DEFAULT_GLOBAL_IN_FLIGHT_BYTES = 128 * 1024 * 1024;
const DEFAULT_MAX_CONNECTIONS = 128;
const DEFAULT_SHUTDOWN_TIMEOUT = 5_000;
/** Context id of `base:allocation` in `NBD_OPT_SET_META_CONTEXT` replies (ids are per connection). */
const ALLOCATION_CONTEXT_ID = 1;
/** Most descriptors in one BLOCK_STATUS chunk (the spec's recommended bound). */
const MAX_STATUS_EXTENTS = 1 << 20;
/** Largest error message sent in a structured error chunk or option error reply. */
const MAX_MESSAGE = 1024;

const EMPTY = Buffer.alloc(0);

const utf8 = new TextDecoder('utf-8', { fatal: true });


function intOption(value: unknown, name: string, def: number, min: number, max: number): number {
  if (value === undefined) return def;
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max) {
    throw invalidArgument(`NbdServer: ${name} must be an integer from ${min} to ${max}, got ${String(value)}`, { [name]: value });
  }
  return value;
}

/** Encodes `s` as UTF-8, cut to at most `max` bytes (never inside a character). */
function message(s: string, max = MAX_MESSAGE): Buffer {
  let b = Buffer.from(s, 'utf8');
  if (b.length <= max) return b;
  let end = max;
  while (end > 0 && ((b[end] ?? 0) & 0xc0) === 0x80) end--;
  b = b.subarray(0, end);
  return b;
}

/** What a connection needs from its server: limits, counters and callbacks. */
interface ServerContext {
  readonly maxPayload: number;
  readonly maxOptionLength: number;
  readonly handshakeTimeout: number;
  readonly maxInFlight: number;
  readonly maxInFlightBytes: number;
  /** Bytes in flight over all connections. */
  readonly budget: ByteBudget;
  /** Buffers of READ replies, used again once written. */
  readonly readBuffers: ReadBuffers;
  /** STARTTLS settings (undefined: not offered). */
  readonly tls: NbdTls | undefined;
  /** Plaintext is refused (see {@link NbdServerOptions.tlsOnly}). */
  readonly tlsOnly: boolean;
  readonly shutdownTimeout: number;
  readonly clock: Clock;
  readonly counters: Omit<NbdServerStats, 'connections' | 'inFlight' | 'inFlightBytes' | 'peakInFlightBytes' | 'budgetWaits'>;
  listExports(): Promise<readonly NbdExport[]>;
  findExport(name: string): Promise<NbdExport | undefined>;
  /** A backend call started / settled (close() waits for all to settle). */
  opStarted(): void;
  opSettled(): void;
  /** Reports a client error (never throws). */
  clientError(error: BlockMirrorError, client: NbdClientInfo): void;
  /** A client entered transmission. */
  session(client: NbdClientInfo, exportName: string): void;
}

type ConnState =
  | 'flags' // waiting for the 32-bit client flags
  | 'optHeader' // waiting for an option header
  | 'optData' // waiting for option data
  | 'request' // transmission: waiting for a request header
  | 'payload' // transmission: collecting a WRITE payload
  | 'discard' // transmission: skipping a WRITE payload that will be refused
  | 'done'; // no more input is parsed

/** One parsed transmission request. */
interface Request {
  flags: number;
  type: number;
  handleHi: number;
  handleLo: number;
  /** Offset, or `Infinity` when above 2^53. */
  offset: number;
  length: number;
  /** Bytes taken from the per-connection and global budgets for this request (0: none). */
  cost: number;
  /** A READ's reply data from the server's {@link ReadBuffers}: given back once the socket wrote it. */
  pooled?: Buffer;
}

/**
 * An NBD server on `node:net`.
 *
 * - Handshake: fixed newstyle only (clients that do not set
 *   `NBD_FLAG_C_FIXED_NEWSTYLE` are disconnected), `NBD_FLAG_NO_ZEROES`;
 *   options `EXPORT_NAME`, `GO`, `INFO` (`NBD_INFO_EXPORT`, `NAME`,
 *   `DESCRIPTION`, `BLOCK_SIZE`), `LIST`, `ABORT`, `STRUCTURED_REPLY`,
 *   `LIST_META_CONTEXT` and `SET_META_CONTEXT` (the `base:allocation`
 *   context); every other option gets `NBD_REP_ERR_UNSUP`.
 * - Transmission: `READ`, `WRITE`, `FLUSH`, `TRIM` (when the backend has
 *   `trim`), `WRITE_ZEROES` (with `NO_HOLE`), `CACHE` (accepted, no effect),
 *   `DISC`; `FUA` on every command; `DF` on reads when structured replies
 *   were negotiated (a read is always answered with a single data chunk);
 *   `BLOCK_STATUS` (with `REQ_ONE`) when `base:allocation` was selected,
 *   answered from the backend's `blockStatus()` (`NBD_STATE_HOLE` and
 *   `NBD_STATE_ZERO` for known-zero ranges), or, for a backend without it,
 *   with one "allocated, content unknown" extent (always correct).
 *   Many requests are processed at once per connection and answered as they
 *   complete (possibly out of order); each reply is written as one unit.
 * - Hostile input never crashes the server and never touches bytes outside
 *   an export: requests are checked (flags, range, alignment to the export's
 *   block size, length limits, read-only) before the backend is called; a bad
 *   magic, bad client flags, an oversized option or an over-limit WRITE
 *   closes only that connection, with an `error` event.
 * - `NBD_FLAG_CAN_MULTI_CONN` is advertised (unless the export says
 *   `multiConn: false`): every connection to an export calls the same
 *   backend, a reply is sent only after the backend completed the
 *   operation, the server keeps no cache, and the backend's `flush()` makes
 *   durable every write completed before it — so a FLUSH (or FUA) answered
 *   on one connection covers writes completed on all of them.
 */
export class NbdServer extends EventEmitter<NbdServerEvents> {
  /** Limits, counters and callbacks shared with the connections (not public API). */
  readonly #ctx: ServerContext;

  readonly #exports: readonly NbdExport[] | NbdExportLookup;
  readonly #maxConnections: number;
  readonly #defaultExport: string | undefined;
  #server: net.Server | undefined;
  #address: { host: string; port: number } | undefined;
  readonly #connections = new Set<NbdConnection>();
  #nextId = 1;
  #closing: Promise<void> | undefined;
  #ops = 0;
  #opsIdle: (() => void)[] = [];

  /** @throws {BlockMirrorError} `BM_ERR_INVALID_ARGUMENT` for bad options or exports. */
  constructor(options: NbdServerOptions) {
    super();
    if (options === null || typeof options !== 'object') throw invalidArgument('NbdServer: options are required');
    const { exports } = options;
    if (Array.isArray(exports)) {
      const names = new Set<string>();
      for (const exp of exports as readonly NbdExport[]) {
        validateNbdExport(exp);
        if (names.has(exp.name)) throw invalidArgument(`NbdServer: duplicate export name ${JSON.stringify(exp.name)}`);
        names.add(exp.name);
      }
      this.#exports = [...(exports as readonly NbdExport[])];
    } else if (typeof exports === 'function') {
      this.#exports = exports;
    } else {
      throw invalidArgument('NbdServer: exports must be an array or a function');
    }
    if (options.defaultExport !== undefined && typeof options.defaultExport !== 'string') {
      throw invalidArgument('NbdServer: defaultExport must be a string');
    }
    this.#defaultExport = options.defaultExport;
    if (options.tlsOnly === true && options.tls === undefined) throw invalidArgument('NbdServer: tlsOnly needs tls');
    this.#maxConnections = intOption(options.maxConnections, 'maxConnections', DEFAULT_MAX_CONNECTIONS, 1, 1_000_000);
    const maxPayload = intOption(options.maxPayload, 'maxPayload', DEFAULT_MAX_PAYLOAD, MIN_MAX_PAYLOAD, MAX_MAX_PAYLOAD);
    this.#ctx = {
      maxPayload,
      maxOptionLength: intOption(options.maxOptionLength, 'maxOptionLength', DEFAULT_MAX_OPTION_LENGTH, 8192, 16 * 1024 * 1024),
      handshakeTimeout: intOption(options.handshakeTimeout, 'handshakeTimeout', DEFAULT_HANDSHAKE_TIMEOUT, 1, 2 ** 31 - 1),
      maxInFlight: intOption(options.maxInFlightPerConnection, 'maxInFlightPerConnection', DEFAULT_MAX_IN_FLIGHT, 1, 65536),
      maxInFlightBytes: intOption(
        options.maxInFlightBytesPerConnection,
        'maxInFlightBytesPerConnection',
        Math.max(DEFAULT_IN_FLIGHT_BYTES, maxPayload),
        1,
        Number.MAX_SAFE_INTEGER,
      ),
      tls: nbdTls(options.tls),
      tlsOnly: options.tlsOnly === true,
      budget: new ByteBudget(
        intOption(options.maxInFlightBytes, 'maxInFlightBytes', DEFAULT_GLOBAL_IN_FLIGHT_BYTES, 1, Number.MAX_SAFE_INTEGER),
      ),
      readBuffers: new ReadBuffers(),
      shutdownTimeout: intOption(options.shutdownTimeout, 'shutdownTimeout', DEFAULT_SHUTDOWN_TIMEOUT, 0, 2 ** 31 - 1),
      clock: options.clock ?? systemClock,
      counters: {
        totalConnections: 0,
        requests: 0,
        bytesRead: 0,
        bytesWritten: 0,
        bytesZeroed: 0,
        bytesTrimmed: 0,
        errors: 0,
        protocolErrors: 0,
        refusedConnections: 0,
      },
      listExports: () => this.#listExports(),
      findExport: (name) => this.#findExport(name),
      opStarted: () => {
        this.#ops++;
      },
      opSettled: () => this.#opSettled(),
      clientError: (error, client) => this.#emitSafely('error', error, client),
      session: (client, name) => this.#emitSafely('session', client, name),
    };
  }

  /** The bound address (with the real port when 0 was asked). Throws before `listen()` resolved. */
  get address(): { host: string; port: number } {
    if (this.#address === undefined) throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', 'NbdServer is not listening');
    return this.#address;
  }

  /**
   * Starts listening on TCP.
   *
   * @throws {BlockMirrorError} `BM_ERR_ADDRESS_IN_USE` and other listen failures; `BM_ERR_CLOSED` after `close()`.
   */
  async listen(address: NbdListenAddress): Promise<{ host: string; port: number }> {
    if (this.#closing !== undefined) throw new BlockMirrorError('BM_ERR_CLOSED', 'NbdServer is closed');
    if (this.#server !== undefined) throw invalidArgument('NbdServer: listen() was already called');
    const host = address?.host ?? '127.0.0.1';
    const port = address?.port;
    if (typeof port !== 'number' || !Number.isInteger(port) || port < 0 || port > 65535) {
      throw invalidArgument(`NbdServer: port must be an integer from 0 to 65535, got ${String(port)}`);
    }
    const server = net.createServer({ allowHalfOpen: true, pauseOnConnect: false });
    this.#server = server;
    server.on('connection', (socket) => this.#accept(socket));
    await new Promise<void>((resolve, reject) => {
      const onError = (err: Error): void => {
        server.off('listening', onListening);
        reject(toBlockMirrorError(err, 'BM_ERR_CONNECT_FAILED'));
      };
      const onListening = (): void => {
        server.off('error', onError);
        resolve();
      };
      server.once('error', onError);
      server.once('listening', onListening);
      server.listen({ host, port });
    }).catch((err: unknown) => {
      this.#server = undefined;
      throw err;
    });
    server.on('error', (err) => this.emit('error', toBlockMirrorError(err)));
    const bound = server.address() as net.AddressInfo;
    this.#address = { host: bound.address, port: bound.port };
    log('listening on %s:%d', bound.address, bound.port);
    return this.#address;
  }

  /** Counters since creation. */
  stats(): NbdServerStats {
    let inFlight = 0;
    for (const c of this.#connections) inFlight += c.inFlight;
    const { budget } = this.#ctx;
    return {
      connections: this.#connections.size,
      inFlight,
      ...this.#ctx.counters,
      inFlightBytes: budget.used,
      peakInFlightBytes: budget.peak,
      budgetWaits: budget.waits,
    };
  }

  /**
   * Stops listening and closes every client: connections still in the
   * handshake are closed at once; connections in transmission stop reading,
   * finish their in-flight requests, send the replies and close (destroyed
   * after `shutdownTimeout`). Resolves when the listener and all connections
   * are closed and every backend call the server started has settled (so the
   * backends may be closed afterwards). Idempotent.
   */
  close(): Promise<void> {
    this.#closing ??= this.#close();
    return this.#closing;
  }

  async #close(): Promise<void> {
    const server = this.#server;
    const serverClosed =
      server === undefined
        ? Promise.resolve()
        : new Promise<void>((resolve) => {
            server.close(() => resolve());
          });
    const closed: Promise<void>[] = [];
    for (const conn of this.#connections) {
      closed.push(conn.closed);
      conn.shutdown();
    }
    await Promise.all(closed);
    await serverClosed;
    if (this.#ops > 0) await new Promise<void>((resolve) => this.#opsIdle.push(resolve));
    log('closed');
  }

  /**
   * Serves one client over an already connected byte stream instead of a
   * socket accepted by {@link listen} (an in-memory pipe in a simulation, a
   * socket accepted elsewhere). The connection counts in {@link stats} and
   * is closed by {@link close} like the others.
   */
  serve(stream: Duplex, remote: { address?: string; port?: number } = {}): void {
    this.#accept(stream as NbdSocket, remote);
  }

  #accept(socket: NbdSocket, remote?: { address?: string; port?: number }): void {
    if (this.#closing !== undefined) {
      socket.destroy();
      return;
    }
    const info: NbdClientInfo = Object.freeze({
      id: this.#nextId++,
      remoteAddress: remote?.address ?? socket.remoteAddress ?? '',
      remotePort: remote?.port ?? socket.remotePort ?? 0,
    });
    if (this.#connections.size >= this.#maxConnections) {
      this.#ctx.counters.refusedConnections++;
      socket.on('error', () => {});
      socket.destroy();
      this.#emitSafely(
        'error',
        new BlockMirrorError('BM_ERR_TOO_MANY_CONNECTIONS', `NBD client refused: ${this.#maxConnections} connections are open`, {
          details: { limit: this.#maxConnections, remoteAddress: info.remoteAddress },
        }),
        info,
      );
      return;
    }
    this.#ctx.counters.totalConnections++;
    const conn = new NbdConnection(this.#ctx, socket, info);
    this.#connections.add(conn);
    void conn.closed.then(() => {
      this.#connections.delete(conn);
      this.emit('disconnect', info);
    });
    conn.start();
    this.emit('connection', info);
  }

  /** Current exports (validated when they come from a lookup function). */
  async #listExports(): Promise<readonly NbdExport[]> {
    if (typeof this.#exports !== 'function') return this.#exports;
    const list = await this.#exports();
    if (!Array.isArray(list)) throw invalidArgument('NbdServer: the exports lookup did not return an array');
    for (const exp of list as readonly NbdExport[]) validateNbdExport(exp);
    return list as readonly NbdExport[];
  }

  /** The export a client names (the default export for ''), or undefined. */
  async #findExport(name: string): Promise<NbdExport | undefined> {
    const list = await this.#listExports();
    const found = list.find((e) => e.name === name);
    if (found !== undefined || name !== '' || this.#defaultExport === undefined) return found;
    return list.find((e) => e.name === this.#defaultExport);
  }

  /** A backend call settled. */
  #opSettled(): void {
    this.#ops--;
    if (this.#ops === 0 && this.#opsIdle.length > 0) {
      const waiters = this.#opsIdle;
      this.#opsIdle = [];
      for (const w of waiters) w();
    }
  }

  /** Emits an event for a connection; a throwing listener is logged, never propagated into socket handlers. */
  #emitSafely<E extends 'error' | 'session'>(event: E, ...args: NbdServerEvents[E]): void {
    try {
      (this.emit as (e: E, ...a: NbdServerEvents[E]) => boolean)(event, ...args);
    } catch (err) {
      log('%s listener threw: %O', event, err);
    }
  }
}

/** What a connection needs of its byte stream: a socket, or any duplex stream. */
type NbdSocket = Duplex & { setNoDelay?(noDelay: boolean): unknown; remoteAddress?: string | undefined; remotePort?: number | undefined };

/** One client connection: handshake state machine, then the transmission loop. */
class NbdConnection implements BudgetWaiter {
  readonly closed: Promise<void>;
  inFlight = 0;

  readonly #server: ServerContext;
  #socket: NbdSocket;
  readonly #info: NbdClientInfo;
  /** TLS was negotiated (NBD_OPT_STARTTLS). */
  #secure = false;
  /** The TLS handshake after STARTTLS is running. */
  #tlsPending = false;
  #resolveClosed!: () => void;

  #state: ConnState = 'flags';
  /** Unparsed input. */
  #buf: Buffer = EMPTY;
  /** Guards `#process()` against re-entry. */
  #processing = false;
  /** An option is being handled asynchronously; input is not parsed meanwhile. */
  #busy = false;
  #noZeroes = false;
  #structured = false;
  /** Name of the export `base:allocation` was selected for by the last `NBD_OPT_SET_META_CONTEXT`. */
  #metaExport: string | undefined;
  /** `base:allocation` is usable in transmission (selected for the export entered). */
  #allocation = false;
  #export: NbdExport | undefined;
  #handshakeTimer: TimerHandle | undefined;
  #shutdownTimer: TimerHandle | undefined;

  // Option being received.
  #option = 0;
  #optionLength = 0;

  // WRITE payload being received or skipped.
  #request: Request | undefined;
  #payload: Buffer | undefined;
  #payloadFilled = 0;
  #remaining = 0;
  #discardError = 0;
  #discardMessage = '';

  /** Bytes this connection holds in the budgets (requests admitted whose replies have not left yet). */
  #reserved = 0;
  /** Bytes taken by `#admit` for the request header being parsed. */
  #admitted = 0;
  /** The request at the head of the input waits for room in a budget (input paused). */
  #awaitingBudget = false;
  /** The socket's send buffer is above its high-water mark (waiting for `drain`). */
  #writeBlocked = false;
  #inputPaused = false;
  /** The socket is corked until the end of this tick (see `#send`). */
  #corked = false;
  /** The client half-closed its side. */
  #inputEnded = false;
  /** NBD_CMD_DISC received or server shutting down: finish in-flight work, then close. */
  #finishing = false;
  #ending = false;
  #isClosed = false;

  constructor(server: ServerContext, socket: NbdSocket, info: NbdClientInfo) {
    this.#server = server;
    this.#socket = socket;
    this.#info = info;
    this.closed = new Promise<void>((resolve) => {
      this.#resolveClosed = resolve;
    });
  }

  readonly #onDataL = (chunk: Buffer): void => this.#onData(chunk);
  readonly #onEndL = (): void => this.#onEnd();
  readonly #onDrainL = (): void => {
    this.#writeBlocked = false;
    this.#process();
  };
  readonly #onErrorL = (err: NodeJS.ErrnoException): void => {
    if (err.code === 'ECONNRESET' || err.code === 'EPIPE') {
      log('client %d: %s', this.#info.id, err.code);
      return;
    }
    if (this.#tlsPending) {
      this.#server.clientError(new BlockMirrorError('BM_ERR_AUTH_FAILED', `NBD client failed the TLS handshake: ${err.message}`, { cause: err }), this.#info);
      return;
    }
    this.#server.clientError(toBlockMirrorError(err, 'BM_ERR_CONNECTION_CLOSED'), this.#info);
  };
  readonly #onCloseL = (): void => this.#onClose();

  #wire(socket: NbdSocket): void {
    socket.on('data', this.#onDataL);
    socket.on('end', this.#onEndL);
    socket.on('drain', this.#onDrainL);
    socket.on('error', this.#onErrorL);
    socket.on('close', this.#onCloseL);
  }

  #unwire(socket: NbdSocket): void {
    socket.off('data', this.#onDataL);
    socket.off('end', this.#onEndL);
    socket.off('drain', this.#onDrainL);
    socket.off('error', this.#onErrorL);
    socket.off('close', this.#onCloseL);
  }

  start(): void {
    const socket = this.#socket;
    socket.setNoDelay?.(true);
    this.#wire(socket);
    const clock = this.#server.clock;
    this.#handshakeTimer = clock.setTimeout(() => {
      this.#handshakeTimer = undefined;
      if (this.#export !== undefined || this.#isClosed) return;
      this.#fail(
        new BlockMirrorError(
          'BM_ERR_HANDSHAKE_TIMEOUT',
          `NBD client did not finish the handshake within ${this.#server.handshakeTimeout} ms`,
          { details: { timeout: this.#server.handshakeTimeout } },
        ),
      );
    }, this.#server.handshakeTimeout);
    // Greeting: NBDMAGIC, IHAVEOPT, handshake flags.
    const hello = Buffer.alloc(18);
    hello.writeBigUInt64BE(NBD_INIT_MAGIC, 0);
    hello.writeBigUInt64BE(NBD_OPTS_MAGIC, 8);
    hello.writeUInt16BE(NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES, 16);
    this.#send([hello]);
    log('client %d connected from %s:%d', this.#info.id, this.#info.remoteAddress, this.#info.remotePort);
  }

  /** Server shutdown: close handshaking clients now; let transmission clients finish in-flight requests. */
  shutdown(): void {
    if (this.#isClosed) return;
    if (this.#export === undefined) {
      this.#socket.destroy();
      return;
    }
    this.#finishing = true;
    this.#state = 'done';
    this.#buf = EMPTY;
    this.#setInputPaused(true);
    this.#shutdownTimer = this.#server.clock.setTimeout(() => {
      this.#shutdownTimer = undefined;
      this.#socket.destroy();
    }, this.#server.shutdownTimeout);
    this.#checkFinish();
  }

  // ---------------------------------------------------------------- input

  #onData(chunk: Buffer): void {
    if (this.#state === 'done' || this.#isClosed) return;
    this.#buf = this.#buf.length === 0 ? chunk : Buffer.concat([this.#buf, chunk]);
    this.#process();
  }

  #onEnd(): void {
    this.#inputEnded = true;
    if (this.#export === undefined) {
      // Gone during the handshake: nothing to finish.
      this.#state = 'done';
      this.#end();
      return;
    }
    this.#process();
  }

  /** Parses as much buffered input as the state allows. */
  #process(): void {
    if (this.#processing || this.#isClosed) return;
    this.#processing = true;
    try {
      this.#parse();
    } catch (err) {
      // A bug, not client input: never let it escape into the socket's event loop.
      this.#fail(
        new BlockMirrorError('BM_ERR_PROTOCOL', `NBD server internal error: ${(err as Error)?.message ?? String(err)}`, {
          cause: err,
        }),
      );
    } finally {
      this.#processing = false;
    }
    this.#updateInputFlow();
    this.#checkFinish();
  }

  #parse(): void {
    while (!this.#busy && !this.#isClosed) {
      const b = this.#buf;
      switch (this.#state) {
        case 'done':
          this.#buf = EMPTY;
          return;
        case 'flags': {
          if (b.length < 4) return;
          const flags = b.readUInt32BE(0);
          this.#buf = b.subarray(4);
          this.#onClientFlags(flags);
          break;
        }
        case 'optHeader': {
          if (b.length < NBD_OPTION_HEADER_SIZE) return;
          if (b.readBigUInt64BE(0) !== NBD_OPTS_MAGIC) {
            this.#fail(new BlockMirrorError('BM_ERR_BAD_MAGIC', 'NBD option does not start with IHAVEOPT'));
            return;
          }
          this.#option = b.readUInt32BE(8);
          this.#optionLength = b.readUInt32BE(12);
          this.#buf = b.subarray(NBD_OPTION_HEADER_SIZE);
          if (this.#optionLength > this.#server.maxOptionLength) {
            this.#fail(
              new BlockMirrorError(
                'BM_ERR_FRAME_TOO_LARGE',
                `NBD ${optionName(this.#option)} data of ${this.#optionLength} bytes exceeds the limit of ${this.#server.maxOptionLength}`,
                { details: { option: this.#option, length: this.#optionLength, limit: this.#server.maxOptionLength } },
              ),
            );
            return;
          }
          this.#state = 'optData';
          break;
        }
        case 'optData': {
          const len = this.#optionLength;
          if (b.length < len) return;
          const data = b.subarray(0, len);
          this.#buf = b.subarray(len);
          this.#state = 'optHeader';
          this.#busy = true;
          this.#onOption(this.#option, data).then(
            () => {
              this.#busy = false;
              this.#process();
            },
            (err: unknown) => {
              this.#busy = false;
              this.#fail(toBlockMirrorError(err, 'BM_ERR_PROTOCOL'));
            },
          );
          return;
        }
        case 'request': {
          if (this.#finishing) {
            this.#state = 'done';
            break;
          }
          if (!this.#canAccept()) {
            this.#setInputPaused(true);
            return;
          }
          if (b.length < NBD_REQUEST_SIZE) return;
          if (b.readUInt32BE(0) === NBD_REQUEST_MAGIC && !this.#admit(b)) {
            this.#setInputPaused(true);
            return;
          }
          if (b.readUInt32BE(0) !== NBD_REQUEST_MAGIC) {
            this.#fail(
              new BlockMirrorError('BM_ERR_BAD_MAGIC', `NBD request magic 0x${b.readUInt32BE(0).toString(16)} is wrong`),
            );
            return;
          }
          const hi = b.readUInt32BE(16);
          const req: Request = {
            flags: b.readUInt16BE(4),
            type: b.readUInt16BE(6),
            handleHi: b.readUInt32BE(8),
            handleLo: b.readUInt32BE(12),
            offset: hi > 0x1fffff ? Infinity : hi * 0x100000000 + b.readUInt32BE(20),
            length: b.readUInt32BE(24),
            cost: this.#admitted,
          };
          this.#admitted = 0;
          this.#buf = b.subarray(NBD_REQUEST_SIZE);
          this.#onRequest(req);
          break;
        }
        case 'payload': {
          const req = this.#request!;
          const need = req.length - this.#payloadFilled;
          if (this.#payload === undefined && b.length >= need) {
            // Whole payload already here: serve it as a view, no copy.
            this.#buf = b.subarray(need);
            this.#state = 'request';
            this.#request = undefined;
            this.#dispatch(req, b.subarray(0, need));
            break;
          }
          this.#payload ??= Buffer.allocUnsafe(req.length);
          const n = Math.min(need, b.length);
          b.copy(this.#payload, this.#payloadFilled, 0, n);
          this.#payloadFilled += n;
          this.#buf = b.subarray(n);
          if (this.#payloadFilled < req.length) return;
          const payload = this.#payload;
          this.#payload = undefined;
          this.#payloadFilled = 0;
          this.#request = undefined;
          this.#state = 'request';
          this.#dispatch(req, payload);
          break;
        }
        case 'discard': {
          const n = Math.min(this.#remaining, b.length);
          this.#remaining -= n;
          this.#buf = b.subarray(n);
          if (this.#remaining > 0) return;
          const req = this.#request!;
          this.#request = undefined;
          this.#state = 'request';
          this.#replyError(req, this.#discardError, this.#discardMessage);
          break;
        }
      }
    }
  }

  // ------------------------------------------------------------- budgets

  /**
   * Takes the bytes the request at the start of `b` will hold (its READ or
   * WRITE length when within the limits; refused requests hold nothing) from
   * this connection's and the server's budgets. False: no room now (this
   * connection waits for its own replies to leave, or is woken by the global
   * budget).
   */
  #admit(b: Buffer): boolean {
    const type = b.readUInt16BE(6);
    const length = b.readUInt32BE(24);
    const exp = this.#export;
    let cost = 0;
    if ((type === NBD_CMD_READ || type === NBD_CMD_WRITE) && exp !== undefined && length <= this.#maxLength(exp.backend)) cost = length;
    this.#awaitingBudget = true;
    if (cost === 0) return (this.#awaitingBudget = false), true;
    if (this.#reserved > 0 && this.#reserved + cost > this.#server.maxInFlightBytes) return false;
    if (!this.#server.budget.tryTake(cost, this, this.#reserved)) return false;
    this.#awaitingBudget = false;
    this.#reserved += cost;
    this.#admitted = cost;
    return true;
  }

  /** Gives back what a request held (its reply left the process, or it was refused). */
  #release(req: Request): void {
    const cost = req.cost;
    if (cost === 0) return;
    req.cost = 0;
    if (this.#isClosed) return; // everything was given back at close
    this.#reserved -= cost;
    this.#server.budget.release(cost);
    this.#process();
  }

  /** The global budget has room again: retry the request waiting at the head of the input. */
  wake(): void {
    if (this.#isClosed) return;
    queueMicrotask(() => this.#process());
  }

  // ------------------------------------------------------------ handshake

  #onClientFlags(flags: number): void {
    if ((flags & ~(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES)) !== 0) {
      this.#fail(
        new BlockMirrorError('BM_ERR_PROTOCOL', `NBD client sent unknown client flags 0x${flags.toString(16)}`, {
          details: { flags },
        }),
      );
      return;
    }
    if ((flags & NBD_FLAG_C_FIXED_NEWSTYLE) === 0) {
      this.#fail(
        new BlockMirrorError('BM_ERR_PROTOCOL', 'NBD client does not support the fixed newstyle handshake', {
          details: { flags },
        }),
      );
      return;
    }
    this.#noZeroes = (flags & NBD_FLAG_C_NO_ZEROES) !== 0;
    this.#state = 'optHeader';
  }

  async #onOption(option: number, data: Buffer): Promise<void> {
    log('client %d: %s (%d bytes)', this.#info.id, optionName(option), data.length);
    if (this.#server.tlsOnly && !this.#secure && option !== NBD_OPT_STARTTLS && option !== NBD_OPT_ABORT) {
      if (option === NBD_OPT_EXPORT_NAME) {
        // no error reply is possible: the spec has the server close the connection
        this.#fail(new BlockMirrorError('BM_ERR_AUTH_FAILED', 'NBD client asked for an export without TLS on a TLS-only server'));
        return;
      }
      this.#sendOptionReply(option, NBD_REP_ERR_TLS_REQD, message('this server requires TLS: use NBD_OPT_STARTTLS first'));
      return;
    }
    switch (option) {
      case NBD_OPT_EXPORT_NAME: {
        const name = decodeName(data);
        const exp = name === undefined ? undefined : await this.#server.findExport(name);
        if (exp === undefined) {
          // EXPORT_NAME cannot return an error: the spec mandates terminating the session.
          this.#fail(
            new BlockMirrorError('BM_ERR_UNKNOWN_VOLUME', `NBD client asked for unknown export ${JSON.stringify(name)}`, {
              details: { export: name },
            }),
          );
          return;
        }
        const reply = Buffer.alloc(this.#noZeroes ? 10 : 134);
        reply.writeBigUInt64BE(BigInt(exp.backend.size), 0);
        reply.writeUInt16BE(this.#transmissionFlags(exp), 8);
        this.#send([reply]);
        this.#enterTransmission(exp);
        return;
      }
      case NBD_OPT_ABORT:
        this.#sendOptionReply(option, NBD_REP_ACK);
        this.#state = 'done';
        this.#end();
        return;
      case NBD_OPT_LIST: {
        if (data.length !== 0) {
          this.#sendOptionReply(option, NBD_REP_ERR_INVALID, message('NBD_OPT_LIST takes no data'));
          return;
        }
        const list = await this.#server.listExports();
        const chunks: Buffer[] = [];
        for (const exp of list) {
          const name = Buffer.from(exp.name, 'utf8');
          const desc = Buffer.from(exp.description ?? '', 'utf8');
          const body = Buffer.alloc(4 + name.length + desc.length);
          body.writeUInt32BE(name.length, 0);
          name.copy(body, 4);
          desc.copy(body, 4 + name.length);
          chunks.push(optionReplyHeader(option, NBD_REP_SERVER, body.length), body);
        }
        chunks.push(optionReplyHeader(option, NBD_REP_ACK, 0));
        this.#send(chunks);
        return;
      }
      case NBD_OPT_STARTTLS:
        this.#startTls(data);
        return;
      case NBD_OPT_INFO:
      case NBD_OPT_GO:
        await this.#onInfoOrGo(option, data);
        return;
      case NBD_OPT_STRUCTURED_REPLY:
        if (data.length !== 0) {
          this.#sendOptionReply(option, NBD_REP_ERR_INVALID, message('NBD_OPT_STRUCTURED_REPLY takes no data'));
          return;
        }
        this.#structured = true;
        this.#sendOptionReply(option, NBD_REP_ACK);
        return;
      case NBD_OPT_LIST_META_CONTEXT:
      case NBD_OPT_SET_META_CONTEXT:
        await this.#onMetaContext(option, data);
        return;
      default:
        this.#sendOptionReply(option, NBD_REP_ERR_UNSUP, message(`${optionName(option)} is not supported`));
    }
  }

  async #onInfoOrGo(option: number, data: Buffer): Promise<void> {
    // 32-bit name length, name, 16-bit count, count × 16-bit info requests.
    if (data.length < 6) {
      this.#sendOptionReply(option, NBD_REP_ERR_INVALID, message(`${optionName(option)} data too short`));
      return;
    }
    const nameLength = data.readUInt32BE(0);
    if (nameLength > data.length - 6) {
      this.#sendOptionReply(option, NBD_REP_ERR_INVALID, message(`${optionName(option)} name length too large`));
      return;
    }
    const count = data.readUInt16BE(4 + nameLength);
    if (data.length !== 6 + nameLength + 2 * count) {
      this.#sendOptionReply(option, NBD_REP_ERR_INVALID, message(`${optionName(option)} data length is inconsistent`));
      return;
    }
    const requested = new Set<number>();
    for (let i = 0; i < count; i++) requested.add(data.readUInt16BE(6 + nameLength + 2 * i));
    const name = decodeName(data.subarray(4, 4 + nameLength));
    const exp = name === undefined ? undefined : await this.#server.findExport(name);
    if (exp === undefined) {
      this.#sendOptionReply(option, NBD_REP_ERR_UNKNOWN, message(`unknown export ${JSON.stringify(name ?? '')}`));
      return;
    }
    const chunks: Buffer[] = [];
    const info = (body: Buffer): void => {
      chunks.push(optionReplyHeader(option, NBD_REP_INFO, body.length), body);
    };
    const exportInfo = Buffer.alloc(12);
    exportInfo.writeUInt16BE(NBD_INFO_EXPORT, 0);
    exportInfo.writeBigUInt64BE(BigInt(exp.backend.size), 2);
    exportInfo.writeUInt16BE(this.#transmissionFlags(exp), 10);
    info(exportInfo);
    if (requested.has(NBD_INFO_NAME)) {
      const n = Buffer.from(exp.name, 'utf8');
      const body = Buffer.alloc(2 + n.length);
      body.writeUInt16BE(NBD_INFO_NAME, 0);
      n.copy(body, 2);
      info(body);
    }
    if (requested.has(NBD_INFO_DESCRIPTION) && exp.description !== undefined) {
      const d = Buffer.from(exp.description, 'utf8');
      const body = Buffer.alloc(2 + d.length);
      body.writeUInt16BE(NBD_INFO_DESCRIPTION, 0);
      d.copy(body, 2);
      info(body);
    }
    // Always sent (clients ignore what they did not ask for): we enforce a minimum block size.
    const bs = exp.backend.blockSize;
    const sizes = Buffer.alloc(14);
    sizes.writeUInt16BE(NBD_INFO_BLOCK_SIZE, 0);
    sizes.writeUInt32BE(bs, 2);
    sizes.writeUInt32BE(Math.max(4096, bs), 6);
    sizes.writeUInt32BE(this.#maxLength(exp.backend), 10);
    info(sizes);
    chunks.push(optionReplyHeader(option, NBD_REP_ACK, 0));
    this.#send(chunks);
    if (option === NBD_OPT_GO) this.#enterTransmission(exp);
  }

  /**
   * `NBD_OPT_LIST_META_CONTEXT` / `NBD_OPT_SET_META_CONTEXT`. The one context
   * is `base:allocation`: listed for no query, `base:` or `base:allocation`;
   * selected by `base:allocation`. Queries of other namespaces are ignored.
   */
  async #onMetaContext(option: number, data: Buffer): Promise<void> {
    const set = option === NBD_OPT_SET_META_CONTEXT;
    // SET replaces the selection, even when it fails
    if (set) this.#metaExport = undefined;
    if (set && !this.#structured) {
      this.#sendOptionReply(option, NBD_REP_ERR_INVALID, message('NBD_OPT_SET_META_CONTEXT needs structured replies first'));
      return;
    }
    const invalid = (why: string): void => this.#sendOptionReply(option, NBD_REP_ERR_INVALID, message(`${optionName(option)}: ${why}`));
    // 32-bit name length, name, 32-bit query count, queries (32-bit length, string)
    if (data.length < 8) return invalid('data too short');
    const nameLength = data.readUInt32BE(0);
    if (nameLength > data.length - 8) return invalid('name length too large');
    const name = decodeName(data.subarray(4, 4 + nameLength));
    let at = 4 + nameLength;
    const count = data.readUInt32BE(at);
    at += 4;
    const queries: string[] = [];
    for (let i = 0; i < count; i++) {
      if (at + 4 > data.length) return invalid('query count larger than the data');
      const length = data.readUInt32BE(at);
      at += 4;
      if (length > data.length - at) return invalid('query length larger than the data');
      const query = decodeName(data.subarray(at, at + length));
      at += length;
      if (query === undefined || !query.includes(':')) return invalid('a query must be a UTF-8 string "namespace:leaf"');
      queries.push(query);
    }
    if (at !== data.length) return invalid('data longer than its queries');
    const exp = name === undefined ? undefined : await this.#server.findExport(name);
    if (exp === undefined) {
      this.#sendOptionReply(option, NBD_REP_ERR_UNKNOWN, message(`unknown export ${JSON.stringify(name ?? '')}`));
      return;
    }
    const matches = set
      ? queries.some((q) => q === NBD_META_BASE_ALLOCATION)
      : queries.length === 0 || queries.some((q) => q === 'base:' || q === NBD_META_BASE_ALLOCATION);
    const chunks: Buffer[] = [];
    if (matches) {
      const contextName = Buffer.from(NBD_META_BASE_ALLOCATION, 'utf8');
      const body = Buffer.alloc(4 + contextName.length);
      // LIST: the id is reserved (zero); SET: the id used in BLOCK_STATUS replies
      body.writeUInt32BE(set ? ALLOCATION_CONTEXT_ID : 0, 0);
      contextName.copy(body, 4);
      chunks.push(optionReplyHeader(option, NBD_REP_META_CONTEXT, body.length), body);
      if (set) this.#metaExport = exp.name;
    }
    chunks.push(optionReplyHeader(option, NBD_REP_ACK, 0));
    this.#send(chunks);
  }

  /** NBD_OPT_STARTTLS: acknowledge, then run the TLS handshake on the same stream; negotiated state starts afresh. */
  #startTls(data: Buffer): void {
    const settings = this.#server.tls;
    if (settings === undefined) {
      this.#sendOptionReply(NBD_OPT_STARTTLS, NBD_REP_ERR_UNSUP, message('TLS is not configured on this server'));
      return;
    }
    if (this.#secure) {
      this.#sendOptionReply(NBD_OPT_STARTTLS, NBD_REP_ERR_INVALID, message('TLS is already negotiated'));
      return;
    }
    if (data.length !== 0) {
      this.#sendOptionReply(NBD_OPT_STARTTLS, NBD_REP_ERR_INVALID, message('NBD_OPT_STARTTLS takes no data'));
      return;
    }
    if (this.#buf.length > 0) {
      // bytes after STARTTLS before the TLS handshake: an injection attempt, never parsed as options
      this.#fail(new BlockMirrorError('BM_ERR_PROTOCOL', 'NBD client sent data after NBD_OPT_STARTTLS before the TLS handshake'));
      return;
    }
    this.#sendOptionReply(NBD_OPT_STARTTLS, NBD_REP_ACK);
    const raw = this.#socket;
    if (this.#corked) {
      this.#corked = false;
      raw.uncork();
    }
    this.#unwire(raw);
    const secure = new tls.TLSSocket(raw, {
      isServer: true,
      secureContext: settings.context,
      requestCert: settings.requireClientCertificate,
      rejectUnauthorized: settings.requireClientCertificate,
    });
    this.#socket = secure as unknown as NbdSocket;
    this.#tlsPending = true;
    this.#inputPaused = false;
    this.#wire(this.#socket);
    secure.once('secure', () => {
      this.#tlsPending = false;
      if (settings.requireClientCertificate) {
        const why = peerCertificateError(secure);
        if (why !== undefined) {
          this.#fail(new BlockMirrorError('BM_ERR_AUTH_FAILED', `NBD client certificate refused: ${why}`));
          return;
        }
      }
      log('client %d: TLS established', this.#info.id);
    });
    this.#secure = true;
    // the spec: whatever was negotiated before TLS does not carry over
    this.#structured = false;
    this.#metaExport = undefined;
    this.#allocation = false;
  }

  #sendOptionReply(option: number, type: number, data: Buffer = EMPTY): void {
    this.#send(data.length === 0 ? [optionReplyHeader(option, type, 0)] : [optionReplyHeader(option, type, data.length), data]);
  }

  #enterTransmission(exp: NbdExport): void {
    this.#export = exp;
    // BLOCK_STATUS only for the export the context was selected on
    this.#allocation = this.#structured && this.#metaExport === exp.name;
    this.#state = 'request';
    if (this.#handshakeTimer !== undefined) {
      this.#server.clock.clearTimeout(this.#handshakeTimer);
      this.#handshakeTimer = undefined;
    }
    log('client %d: transmission on export %j (structured replies: %s)', this.#info.id, exp.name, this.#structured);
    this.#server.session(this.#info, exp.name);
  }

  #transmissionFlags(exp: NbdExport): number {
    let flags = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_CACHE;
    if (exp.multiConn !== false) flags |= NBD_FLAG_CAN_MULTI_CONN;
    if (this.#structured) flags |= NBD_FLAG_SEND_DF;
    if (exp.readOnly) {
      flags |= NBD_FLAG_READ_ONLY;
    } else {
      flags |= NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_FUA | NBD_FLAG_SEND_WRITE_ZEROES;
      if (typeof exp.backend.trim === 'function') flags |= NBD_FLAG_SEND_TRIM;
      // a backend that knows its allocation can tell a cheap zero (the range is zero already) from one that writes
      if (fastZero(exp.backend)) flags |= NBD_FLAG_SEND_FAST_ZERO;
    }
    return flags;
  }

  /** Largest READ/WRITE length for this backend: `maxPayload` rounded down to the block size. */
  #maxLength(backend: NbdBackend): number {
    const bs = backend.blockSize;
    return Math.floor(this.#server.maxPayload / bs) * bs;
  }

  // --------------------------------------------------------- transmission

  #onRequest(req: Request): void {
    const counters = this.#server.counters;
    counters.requests++;
    if (req.type === NBD_CMD_DISC) {
      log('client %d: NBD_CMD_DISC', this.#info.id);
      this.#finishing = true;
      this.#state = 'done';
      this.#buf = EMPTY;
      return;
    }
    if (req.type === NBD_CMD_WRITE) {
      const max = this.#maxLength(this.#export!.backend);
      if (req.length > max) {
        if (req.length > NBD_DOS_PAYLOAD_THRESHOLD) {
          this.#fail(
            new BlockMirrorError(
              'BM_ERR_FRAME_TOO_LARGE',
              `NBD write of ${req.length} bytes exceeds the limit of ${max}; closing the connection`,
              { details: { length: req.length, limit: max } },
            ),
          );
          return;
        }
        this.#startDiscard(req, NBD_EINVAL, `write length ${req.length} exceeds the maximum of ${max}`);
        return;
      }
      const [error, text] = this.#check(req);
      if (error !== 0) {
        this.#release(req);
        this.#startDiscard(req, error, text);
        return;
      }
      if (req.length === 0) {
        this.#dispatch(req, EMPTY);
        return;
      }
      this.#request = req;
      this.#payload = undefined;
      this.#payloadFilled = 0;
      this.#state = 'payload';
      return;
    }
    const [error, text] = this.#check(req);
    if (error !== 0) {
      this.#release(req);
      this.#replyError(req, error, text);
      return;
    }
    this.#dispatch(req, undefined);
  }

  #startDiscard(req: Request, error: number, text: string): void {
    if (req.length === 0) {
      this.#replyError(req, error, text);
      return;
    }
    this.#request = req;
    this.#remaining = req.length;
    this.#discardError = error;
    this.#discardMessage = text;
    this.#state = 'discard';
  }

  /** Validates a request against the export: `[0, '']` when it may go to the backend, else `[errno, message]`. */
  #check(req: Request): [number, string] {
    const exp = this.#export!;
    const { backend } = exp;
    const name = commandName(req.type);
    let allowed = NBD_CMD_FLAG_FUA;
    let writes = false;
    switch (req.type) {
      case NBD_CMD_READ:
        if (this.#structured) allowed |= NBD_CMD_FLAG_DF;
        break;
      case NBD_CMD_WRITE:
        writes = true;
        break;
      case NBD_CMD_WRITE_ZEROES:
        writes = true;
        allowed |= NBD_CMD_FLAG_NO_HOLE;
        if (fastZero(backend)) allowed |= NBD_CMD_FLAG_FAST_ZERO;
        break;
      case NBD_CMD_TRIM:
        writes = true;
        if (!exp.readOnly && typeof backend.trim !== 'function') return [NBD_EINVAL, 'trim is not supported by this export'];
        break;
      case NBD_CMD_FLUSH:
        return (req.flags & ~allowed) !== 0 ? [NBD_EINVAL, `unsupported flags 0x${req.flags.toString(16)} for ${name}`] : [0, ''];
      case NBD_CMD_CACHE:
        break;
      case NBD_CMD_BLOCK_STATUS:
        if (!this.#allocation) return [NBD_EINVAL, 'NBD_CMD_BLOCK_STATUS without a metadata context (select base:allocation first)'];
        if (req.length === 0) return [NBD_EINVAL, 'NBD_CMD_BLOCK_STATUS of length 0'];
        allowed |= NBD_CMD_FLAG_REQ_ONE;
        break;
      default:
        return [NBD_EINVAL, `unknown or unsupported command ${req.type}`];
    }
    if ((req.flags & ~allowed) !== 0) return [NBD_EINVAL, `unsupported flags 0x${req.flags.toString(16)} for ${name}`];
    if (writes && exp.readOnly) return [NBD_EPERM, 'the export is read-only'];
    if (req.offset + req.length > backend.size) {
      // The spec asks for ENOSPC on writes beyond the end, EINVAL on reads and trims.
      const errno = req.type === NBD_CMD_WRITE || req.type === NBD_CMD_WRITE_ZEROES ? NBD_ENOSPC : NBD_EINVAL;
      return [errno, `${name} beyond the end of the export (size ${backend.size})`];
    }
    const bs = backend.blockSize;
    if (req.offset % bs !== 0 || req.length % bs !== 0) {
      return [NBD_EINVAL, `${name} not aligned to the export's block size ${bs}`];
    }
    if (req.type === NBD_CMD_READ && req.length > this.#maxLength(backend)) {
      return [NBD_EINVAL, `read length ${req.length} exceeds the maximum of ${this.#maxLength(backend)}`];
    }
    return [0, ''];
  }

  #dispatch(req: Request, payload: Buffer | undefined): void {
    this.inFlight++;
    this.#server.opStarted();
    // #execute is async: a backend that throws synchronously still yields a rejection.
    this.#execute(req, payload).then(
      (data) => this.#replyOk(req, data),
      (err: unknown) => {
        log('client %d: %s at %d+%d failed: %O', this.#info.id, commandName(req.type), req.offset, req.length, err);
        const code = (err as { code?: unknown } | null)?.code;
        this.#replyError(req, nbdErrorFor(err), typeof code === 'string' ? `${commandName(req.type)} failed: ${code}` : `${commandName(req.type)} failed`);
      },
    )
      .catch((err: unknown) => {
        // Only a bug in reply encoding gets here: drop this connection, never the process.
        this.#release(req);
        this.#fail(new BlockMirrorError('BM_ERR_PROTOCOL', 'NBD server internal error while replying', { cause: err }));
      })
      .finally(() => {
        this.inFlight--;
        this.#server.opSettled();
        this.#process();
      });
  }

  async #execute(req: Request, payload: Buffer | undefined): Promise<Buffer | BlockExtent[] | undefined> {
    const exp = this.#export!;
    const { backend } = exp;
    const fua = (req.flags & NBD_CMD_FLAG_FUA) !== 0;
    const counters = this.#server.counters;
    switch (req.type) {
      case NBD_CMD_READ: {
        if (req.length === 0) return EMPTY;
        const buffers = this.#server.readBuffers;
        if (backend.readInto !== undefined && buffers.pooled(req.length)) {
          const buffer = buffers.take(req.length);
          // (not given back after a failure: a part of the read may still be landing in it)
          await backend.readInto(req.offset, buffer);
          req.pooled = buffer;
          counters.bytesRead += req.length;
          return buffer;
        }
        // Typed as Buffer, but checked: a wrong length would desynchronise the client's stream.
        const data: unknown = await backend.read(req.offset, req.length);
        if (!(data instanceof Uint8Array) || data.byteLength !== req.length) {
          throw new BlockMirrorError(
            'BM_ERR_IO',
            `backend read returned ${data instanceof Uint8Array ? data.byteLength : typeof data} bytes, expected ${req.length}`,
          );
        }
        counters.bytesRead += req.length;
        return Buffer.isBuffer(data) ? data : Buffer.from(data.buffer, data.byteOffset, data.byteLength);
      }
      case NBD_CMD_WRITE: {
        if (req.length === 0) return undefined;
        await backend.write(req.offset, payload!, fua ? { fua: true } : undefined);
        if (fua && backend.supports?.fua === false) await backend.flush();
        counters.bytesWritten += req.length;
        return undefined;
      }
      case NBD_CMD_FLUSH:
        if (!exp.readOnly) await backend.flush();
        return undefined;
      case NBD_CMD_TRIM:
        if (req.length > 0) await backend.trim!(req.offset, req.length);
        if (fua) await backend.flush();
        counters.bytesTrimmed += req.length;
        return undefined;
      case NBD_CMD_WRITE_ZEROES: {
        if (req.length === 0) return undefined;
        const noHole = (req.flags & NBD_CMD_FLAG_NO_HOLE) !== 0;
        if ((req.flags & NBD_CMD_FLAG_FAST_ZERO) !== 0 && !(await knownZeroRange(backend, req.offset, req.length))) {
          // the client prefers its own writes to a zero that is not faster than writing (NBD: fail fast with ENOTSUP)
          throw new BlockMirrorError('BM_ERR_NOT_SUPPORTED', 'fast zero: part of the range may hold data (zeroing it writes)');
        }
        if (typeof backend.writeZeroes === 'function') {
          await backend.writeZeroes(req.offset, req.length, { fua, noHole });
          if (fua && backend.supports?.fua === false) await backend.flush();
        } else if (!noHole && typeof backend.trim === 'function' && backend.supports?.trim !== false) {
          // a trimmed range reads as zeroes and may become a hole: the cheap way when a hole is allowed
          await backend.trim(req.offset, req.length);
          if (fua) await backend.flush();
        } else {
          await writeZeroes(backend, req.offset, req.length, fua);
        }
        counters.bytesZeroed += req.length;
        return undefined;
      }
      case NBD_CMD_CACHE:
        return undefined;
      case NBD_CMD_BLOCK_STATUS: {
        if (typeof backend.blockStatus !== 'function') return [{ offset: req.offset, length: req.length, zero: false, hole: false }];
        const extents = await backend.blockStatus(req.offset, req.length);
        checkExtents(extents, req);
        return extents;
      }
      default:
        throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', `unexpected command ${req.type}`);
    }
  }

  #replyOk(req: Request, result: Buffer | BlockExtent[] | undefined): void {
    if (Array.isArray(result)) {
      this.#replyBlockStatus(req, result);
      return;
    }
    const data = result;
    if (req.type === NBD_CMD_READ && this.#structured) {
      const header = Buffer.allocUnsafe(NBD_STRUCTURED_REPLY_HEADER_SIZE + (req.length > 0 ? 8 : 0));
      header.writeUInt32BE(NBD_STRUCTURED_REPLY_MAGIC, 0);
      header.writeUInt16BE(NBD_REPLY_FLAG_DONE, 4);
      header.writeUInt32BE(req.handleHi, 8);
      header.writeUInt32BE(req.handleLo, 12);
      if (req.length === 0) {
        // OFFSET_DATA must carry at least one byte: an empty read ends with a NONE chunk.
        header.writeUInt16BE(NBD_REPLY_TYPE_NONE, 6);
        header.writeUInt32BE(0, 16);
        this.#send([header], req);
        return;
      }
      header.writeUInt16BE(NBD_REPLY_TYPE_OFFSET_DATA, 6);
      header.writeUInt32BE(8 + req.length, 16);
      header.writeUInt32BE(Math.floor(req.offset / 0x100000000), 20);
      header.writeUInt32BE(req.offset >>> 0, 24);
      this.#send([header, data!], req);
      return;
    }
    const header = simpleReply(0, req);
    this.#send(req.type === NBD_CMD_READ && data !== undefined && data.length > 0 ? [header, data] : [header], req);
  }

  /** One BLOCK_STATUS chunk for `base:allocation` (one extent with `REQ_ONE`, at most 2^20). */
  #replyBlockStatus(req: Request, extents: readonly BlockExtent[]): void {
    const one = (req.flags & NBD_CMD_FLAG_REQ_ONE) !== 0;
    const count = Math.min(extents.length, one ? 1 : MAX_STATUS_EXTENTS);
    const chunk = Buffer.allocUnsafe(NBD_STRUCTURED_REPLY_HEADER_SIZE + 4 + 8 * count);
    chunk.writeUInt32BE(NBD_STRUCTURED_REPLY_MAGIC, 0);
    chunk.writeUInt16BE(NBD_REPLY_FLAG_DONE, 4);
    chunk.writeUInt16BE(NBD_REPLY_TYPE_BLOCK_STATUS, 6);
    chunk.writeUInt32BE(req.handleHi, 8);
    chunk.writeUInt32BE(req.handleLo, 12);
    chunk.writeUInt32BE(4 + 8 * count, 16);
    chunk.writeUInt32BE(ALLOCATION_CONTEXT_ID, 20);
    let at = 24;
    for (let i = 0; i < count; i++) {
      const e = extents[i]!;
      chunk.writeUInt32BE(e.length, at);
      chunk.writeUInt32BE((e.hole ? NBD_STATE_HOLE : 0) | (e.zero ? NBD_STATE_ZERO : 0), at + 4);
      at += 8;
    }
    this.#send([chunk], req);
  }

  #replyError(req: Request, error: number, text: string): void {
    this.#server.counters.errors++;
    if (this.#structured) {
      const msg = message(text);
      const chunk = Buffer.allocUnsafe(NBD_STRUCTURED_REPLY_HEADER_SIZE + 6 + msg.length);
      chunk.writeUInt32BE(NBD_STRUCTURED_REPLY_MAGIC, 0);
      chunk.writeUInt16BE(NBD_REPLY_FLAG_DONE, 4);
      chunk.writeUInt16BE(NBD_REPLY_TYPE_ERROR, 6);
      chunk.writeUInt32BE(req.handleHi, 8);
      chunk.writeUInt32BE(req.handleLo, 12);
      chunk.writeUInt32BE(6 + msg.length, 16);
      chunk.writeUInt32BE(error === 0 ? NBD_EIO : error, 20);
      chunk.writeUInt16BE(msg.length, 24);
      msg.copy(chunk, 26);
      this.#send([chunk], req);
      return;
    }
    this.#send([simpleReply(error === 0 ? NBD_EIO : error, req)], req);
  }

  // ---------------------------------------------------------- flow control

  /** More requests may be started now. */
  #canAccept(): boolean {
    if (this.#writeBlocked) return false;
    if (this.inFlight === 0) return true;
    return this.inFlight < this.#server.maxInFlight;
  }

  /** Pauses the socket while nothing more can be parsed usefully (option pending, done, or at the in-flight limits). */
  #updateInputFlow(): void {
    const shouldPause =
      this.#busy || this.#state === 'done' || (this.#state === 'request' && (this.#awaitingBudget || !this.#canAccept()));
    this.#setInputPaused(shouldPause);
  }

  #setInputPaused(paused: boolean): void {
    if (this.#isClosed || paused === this.#inputPaused) return;
    this.#inputPaused = paused;
    if (paused) this.#socket.pause();
    else this.#socket.resume();
  }

  /**
   * Writes one reply (or greeting, or option reply) as one unit: its chunks
   * are queued back to back in one synchronous step, so nothing can come
   * between them. The socket stays corked until the end of the current tick,
   * so every reply produced in this tick leaves in one `writev`. Dropped when
   * the socket is gone. With `req`, the bytes the request holds in the
   * budgets are given back once the reply's last chunk left the process.
   */
  #send(chunks: readonly Buffer[], req?: Request): void {
    const socket = this.#socket;
    if (this.#isClosed || socket.destroyed || !socket.writable) {
      if (req !== undefined) this.#written(req);
      return;
    }
    if (!this.#corked) {
      this.#corked = true;
      socket.cork();
      process.nextTick(this.#uncork);
    }
    const last = chunks.length - 1;
    for (let i = 0; i < last; i++) socket.write(chunks[i]);
    const ok = req === undefined || (req.cost === 0 && req.pooled === undefined) ? socket.write(chunks[last]) : socket.write(chunks[last], () => this.#written(req));
    if (!ok) this.#writeBlocked = true;
  }

  /** The reply to `req` is written (or never will be): its budget and its pooled buffer go back. */
  #written(req: Request): void {
    const pooled = req.pooled;
    if (pooled !== undefined) {
      req.pooled = undefined;
      this.#server.readBuffers.give(pooled);
    }
    this.#release(req);
  }

  readonly #uncork = (): void => {
    this.#corked = false;
    this.#socket.uncork();
  };

  /** Ends the connection gracefully once nothing is in flight and no more input will be parsed. */
  #checkFinish(): void {
    if (this.#isClosed || this.#ending || this.inFlight > 0 || this.#busy) return;
    if (this.#finishing || (this.#inputEnded && this.#export !== undefined && !this.#writeBlocked)) {
      this.#state = 'done';
      this.#end();
    }
  }

  /** Sends what is queued, then closes; destroyed as soon as the replies are flushed. */
  #end(): void {
    if (this.#ending || this.#isClosed) return;
    this.#ending = true;
    const socket = this.#socket;
    // Destroyed once our replies are flushed: 'close' does not depend on the client's FIN.
    socket.once('finish', () => socket.destroy());
    socket.end();
  }

  /** Hard disconnect after a protocol violation (reported as an `error` event). */
  #fail(error: BlockMirrorError): void {
    if (this.#isClosed) return;
    log('client %d: %s', this.#info.id, error.message);
    this.#server.counters.protocolErrors++;
    this.#state = 'done';
    this.#buf = EMPTY;
    this.#payload = undefined;
    this.#server.clientError(error, this.#info);
    this.#socket.destroy();
  }

  #onClose(): void {
    if (this.#isClosed) return;
    this.#isClosed = true;
    this.#state = 'done';
    this.#buf = EMPTY;
    this.#payload = undefined;
    // Give back all this connection holds; releases of its requests that settle later are no-ops.
    this.#server.budget.cancel(this);
    this.#server.budget.release(this.#reserved + this.#admitted);
    this.#reserved = 0;
    this.#admitted = 0;
    const clock = this.#server.clock;
    if (this.#handshakeTimer !== undefined) clock.clearTimeout(this.#handshakeTimer);
    if (this.#shutdownTimer !== undefined) clock.clearTimeout(this.#shutdownTimer);
    this.#handshakeTimer = undefined;
    this.#shutdownTimer = undefined;
    log('client %d closed', this.#info.id);
    // Requests still in flight settle later; the server's close() waits for them separately.
    this.#resolveClosed();
  }
}

/** A backend's allocation map must describe exactly the range asked: anything else would mislead the client. */
function checkExtents(extents: unknown, req: Request): asserts extents is BlockExtent[] {
  let pos = req.offset;
  const ok =
    Array.isArray(extents) &&
    extents.length > 0 &&
    extents.every((e: Partial<BlockExtent> | null) => {
      if (e === null || typeof e !== 'object' || e.offset !== pos || typeof e.length !== 'number' || !(e.length > 0)) return false;
      pos += e.length;
      return true;
    }) &&
    pos === req.offset + req.length;
  if (!ok) throw new BlockMirrorError('BM_ERR_IO', `backend blockStatus did not describe exactly [${req.offset}, +${req.length})`);
}

function optionReplyHeader(option: number, type: number, length: number): Buffer {
  const b = Buffer.allocUnsafe(NBD_OPTION_REPLY_HEADER_SIZE);
  b.writeBigUInt64BE(NBD_REP_MAGIC, 0);
  b.writeUInt32BE(option, 8);
  b.writeUInt32BE(type, 12);
  b.writeUInt32BE(length, 16);
  return b;
}

function simpleReply(error: number, req: Request): Buffer {
  const b = Buffer.allocUnsafe(NBD_SIMPLE_REPLY_SIZE);
  b.writeUInt32BE(NBD_SIMPLE_REPLY_MAGIC, 0);
  b.writeUInt32BE(error, 4);
  b.writeUInt32BE(req.handleHi, 8);
  b.writeUInt32BE(req.handleLo, 12);
  return b;
}

/** Decodes an export name; undefined when it is not valid UTF-8, contains NUL or is too long. */
function decodeName(bytes: Uint8Array): string | undefined {
  if (bytes.length > 4096) return undefined;
  try {
    const s = utf8.decode(bytes);
    return s.includes('\0') ? undefined : s;
  } catch {
    return undefined;
  }
}

/** The export can answer `NBD_CMD_FLAG_FAST_ZERO`: its backend knows its allocation (`blockStatus`). */
function fastZero(backend: NbdBackend): boolean {
  return typeof backend.blockStatus === 'function';
}

/** True when the backend reports the whole range as reading zeroes (a zero there writes nothing). */
async function knownZeroRange(backend: NbdBackend, offset: number, length: number): Promise<boolean> {
  if (typeof backend.blockStatus !== 'function') return false;
  const extents = await backend.blockStatus(offset, length);
  let covered = 0;
  for (const e of extents) {
    if (!e.zero) return false;
    covered += e.length;
  }
  return covered >= length;
}
