/**
 * {@link Transport} over real sockets: TCP connections (`node:net`) and UDP
 * datagrams (`node:dgram`).
 *
 * Writes are batched per tick: the first `write()` of a tick corks the socket
 * and a `process.nextTick` uncorks it, so every frame produced in one tick
 * leaves in one `writev` syscall. Chunks are handed to the socket as they are
 * (no copies).
 *
 * @module
 */
import dgram from 'node:dgram';
import net from 'node:net';
import tls from 'node:tls';
import debug from 'debug';
import { EventEmitter } from 'eventemitter3';
import { systemClock } from '../clock.js';
import type { Clock } from '../clock.js';
import { BlockMirrorError, toBlockMirrorError } from '../errors.js';
import type { ErrorCode } from '../errors.js';
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
import { connectAttempt } from './connect-attempt.js';

const log = debug('blockmirror:transport');

/** Default write high-water mark of {@link TcpTransport} (1 MiB). */
export const DEFAULT_TCP_HIGH_WATER_MARK = 1024 * 1024;
/** Default connect timeout of {@link TcpTransport} in milliseconds. */
export const DEFAULT_TCP_CONNECT_TIMEOUT = 10_000;

/** Options of {@link TcpTransport}. */
export interface TcpTransportOptions {
  /** Disable Nagle's algorithm on every socket (default `true`). */
  noDelay?: boolean;
  /**
   * TCP keep-alive: `false` (default) leaves it off, `true` turns it on with
   * the OS default idle time, a number turns it on with that initial delay in
   * milliseconds.
   */
  keepAlive?: boolean | number;
  /**
   * Send-side back-pressure threshold in bytes (default 1 MiB): `write()`
   * returns false once more than this many bytes wait in the socket's user
   * space buffer. Also used as the sockets' stream high-water marks.
   */
  highWaterMark?: number;
  /**
   * Default connect timeout in milliseconds (default 10 000); `0` disables it.
   * {@link ConnectOptions.timeout} overrides it per call.
   */
  connectTimeout?: number;
  /** Clock for the connect timeout (default {@link systemClock}). */
  clock?: Clock;
}

/** Options shared by the connections of one {@link TcpTransport}. */
export interface SocketSettings {
  readonly noDelay: boolean;
  readonly keepAlive: boolean | number;
  readonly highWaterMark: number;
}

function checkNonNegative(value: number | undefined, name: string): void {
  if (value !== undefined && (typeof value !== 'number' || !Number.isFinite(value) || value < 0)) {
    throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', `${name} must be a non-negative finite number`, {
      details: { [name]: value },
    });
  }
}

function systemCode(error: unknown): string | undefined {
  const code = (error as { code?: unknown } | null)?.code;
  return typeof code === 'string' ? code : undefined;
}

/**
 * One TCP connection as a {@link TransportConnection}.
 *
 * Attach the `data` listener right after `connect()` resolves (or in the
 * server's `connection` handler): the socket flows from the start, and data
 * emitted before a listener exists is lost.
 */
export class TcpConnection extends EventEmitter<TransportConnectionEvents> implements TransportConnection {
  /** The wrapped socket (exposed for diagnostics and tests; do not write to it directly). */
  readonly socket: net.Socket;
  readonly localAddress: TransportAddress;
  readonly remoteAddress: TransportAddress;
  readonly #highWaterMark: number;
  #corked = false;
  /** Ends the per-tick cork (one closure per connection, none per write). */
  readonly #uncork = (): void => {
    this.#corked = false;
    if (this.socket.writableCorked > 0) this.socket.uncork();
  };
  #needDrain = false;
  #closing = false;
  #closeEmitted = false;
  #error: Error | undefined;

  /** Wraps a connected socket. Usually created by {@link TcpTransport}. */
  constructor(socket: net.Socket, settings: SocketSettings) {
    super();
    this.socket = socket;
    this.#highWaterMark = settings.highWaterMark;
    this.localAddress = { host: socket.localAddress ?? '', port: socket.localPort ?? 0 };
    this.remoteAddress = { host: socket.remoteAddress ?? '', port: socket.remotePort ?? 0 };
    socket.setNoDelay(settings.noDelay);
    if (settings.keepAlive !== false) {
      socket.setKeepAlive(true, settings.keepAlive === true ? 0 : settings.keepAlive);
    }
    socket.on('data', (chunk: Buffer) => this.emit('data', chunk));
    socket.on('drain', () => {
      if (!this.#needDrain || this.#closeEmitted) return;
      this.#needDrain = false;
      this.emit('drain');
    });
    socket.on('error', (error: Error) => {
      log('tcp %s:%d error %s', this.remoteAddress.host, this.remoteAddress.port, error.message);
      this.#error ??= toBlockMirrorError(error, 'BM_ERR_CONNECTION_CLOSED');
    });
    socket.on('close', () => {
      if (this.#closeEmitted) return;
      this.#closeEmitted = true;
      this.#closing = true;
      this.emit('close', this.#error);
    });
  }

  get closed(): boolean {
    return this.#closing || this.#closeEmitted;
  }

  /** Keying material of the TLS session (RFC 5705); undefined on a plain TCP socket. */
  get exportKeyingMaterial(): ((length: number, label: string, context: Uint8Array) => Buffer) | undefined {
    const socket = this.socket;
    if (!(socket instanceof tls.TLSSocket)) return undefined;
    return (length, label, context) => socket.exportKeyingMaterial(length, label, Buffer.from(context.buffer, context.byteOffset, context.byteLength));
  }

  get bufferedAmount(): number {
    return this.socket.writableLength;
  }

  /**
   * Queues `chunks` back to back. The socket is corked on the first write of
   * a tick and uncorked on `process.nextTick`, so all chunks written in one
   * tick leave together. Chunks are not copied.
   */
  write(chunks: readonly Uint8Array[]): boolean {
    const socket = this.socket;
    if (this.closed || socket.destroyed || !socket.writable) return false;
    if (!this.#corked) {
      this.#corked = true;
      socket.cork();
      process.nextTick(this.#uncork);
    }
    for (const chunk of chunks) {
      if (chunk.byteLength > 0) socket.write(chunk);
    }
    if (socket.writableLength > this.#highWaterMark) {
      this.#needDrain = true;
      return false;
    }
    return true;
  }

  pause(): void {
    this.socket.pause();
  }

  resume(): void {
    this.socket.resume();
  }

  /**
   * Flushes what is queued, then half-closes; `close` follows when the peer
   * closes its side too (on a paused connection, after `resume()`).
   */
  end(): void {
    if (this.closed) return;
    this.#closing = true;
    this.socket.end();
  }

  destroy(error?: Error): void {
    if (this.#closeEmitted) return;
    this.#closing = true;
    if (error !== undefined) this.#error = error;
    this.socket.destroy();
  }
}

/** A listening TCP socket as a {@link TransportServer}. */
export class TcpServer extends EventEmitter<TransportServerEvents> implements TransportServer {
  /** The wrapped server (exposed for diagnostics and tests). */
  readonly server: net.Server;
  readonly address: TransportAddress;
  readonly #connections = new Set<TcpConnection>();
  readonly #settings: SocketSettings;
  #closing: Promise<void> | undefined;

  /** Wraps a listening server. Usually created by {@link TcpTransport.listen}. */
  constructor(server: net.Server, settings: SocketSettings) {
    super();
    this.server = server;
    this.#settings = settings;
    const bound = server.address();
    if (bound === null || typeof bound === 'string') {
      throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', 'TcpServer needs a server listening on an IP address');
    }
    this.address = { host: bound.address, port: bound.port };
    server.on('connection', (socket: net.Socket) => this.#accept(socket));
    server.on('error', (error: Error) => {
      log('tcp server %s:%d error %s', this.address.host, this.address.port, error.message);
      this.emit('error', toBlockMirrorError(error, 'BM_ERR_IO'));
    });
  }

  #accept(socket: net.Socket): void {
    if (this.#closing !== undefined) {
      socket.destroy();
      return;
    }
    const connection = new TcpConnection(socket, this.#settings);
    this.#connections.add(connection);
    connection.once('close', () => this.#connections.delete(connection));
    log('tcp accepted %s:%d', connection.remoteAddress.host, connection.remoteAddress.port);
    this.emit('connection', connection);
  }

  /**
   * Stops listening and destroys every accepted connection. Resolves once
   * the server is closed and every accepted connection emitted `close`.
   */
  close(): Promise<void> {
    this.#closing ??= (async () => {
      const serverClosed = new Promise<void>((resolve) => this.server.close(() => resolve()));
      const pending = [...this.#connections].map(
        (connection) =>
          new Promise<void>((resolve) => {
            connection.once('close', () => resolve());
            connection.destroy();
          }),
      );
      await Promise.all([serverClosed, ...pending]);
    })();
    return this.#closing;
  }
}

/** A bound UDP socket as a {@link DatagramChannel}. */
export class UdpChannel extends EventEmitter<DatagramChannelEvents> implements DatagramChannel {
  /** The wrapped socket (exposed for diagnostics and tests). */
  readonly socket: dgram.Socket;
  readonly address: TransportAddress;
  #closing: Promise<void> | undefined;

  /** Wraps a bound socket. Usually created by {@link TcpTransport.bindDatagram}. */
  constructor(socket: dgram.Socket) {
    super();
    this.socket = socket;
    const bound = socket.address();
    this.address = { host: bound.address, port: bound.port };
    socket.on('message', (data: Buffer, rinfo: dgram.RemoteInfo) => {
      this.emit('message', data, { host: rinfo.address, port: rinfo.port });
    });
    socket.on('error', (error: Error) => this.#fail(error));
  }

  #fail(error: Error): void {
    log('udp %s:%d error %s', this.address.host, this.address.port, error.message);
    const code: ErrorCode = systemCode(error) === 'EMSGSIZE' ? 'BM_ERR_INVALID_ARGUMENT' : 'BM_ERR_CONNECT_FAILED';
    this.emit('error', toBlockMirrorError(error, code));
  }

  /** Sends one datagram. Failures are reported as `error` events, never thrown; a no-op after `close()`. */
  send(data: Uint8Array, to: TransportAddress): void {
    if (this.#closing !== undefined) return;
    this.socket.send(data, to.port, to.host, (error) => {
      if (error !== null && error !== undefined && this.#closing === undefined) this.#fail(error);
    });
  }

  /** Closes the socket. Idempotent. */
  close(): Promise<void> {
    this.#closing ??= new Promise<void>((resolve) => {
      this.socket.close(() => resolve());
    });
    return this.#closing;
  }
}

/**
 * {@link Transport} over TCP (`node:net`) with UDP datagrams (`node:dgram`).
 *
 * - `listen()` rejects with `BM_ERR_ADDRESS_IN_USE` when the port is taken.
 * - `connect()` rejects with `BM_ERR_CONNECT_FAILED` when refused, timed out
 *   or aborted; `details.reason` is the system error code (`ECONNREFUSED`, …),
 *   `'timeout'` or `'aborted'`.
 * - A connection's `close` error is mapped with `toBlockMirrorError`
 *   (ECONNRESET/EPIPE → `BM_ERR_CONNECTION_CLOSED`); an error given to
 *   `destroy(error)` is passed through unchanged.
 */
export class TcpTransport implements Transport {
  readonly supports: TransportSupports = { datagram: true, faults: false };
  readonly #settings: SocketSettings;
  readonly #connectTimeout: number;
  readonly #clock: Clock;

  constructor(options: TcpTransportOptions = {}) {
    checkNonNegative(options.highWaterMark, 'highWaterMark');
    checkNonNegative(options.connectTimeout, 'connectTimeout');
    if (typeof options.keepAlive === 'number') checkNonNegative(options.keepAlive, 'keepAlive');
    this.#settings = {
      noDelay: options.noDelay ?? true,
      keepAlive: options.keepAlive ?? false,
      highWaterMark: options.highWaterMark ?? DEFAULT_TCP_HIGH_WATER_MARK,
    };
    this.#connectTimeout = options.connectTimeout ?? DEFAULT_TCP_CONNECT_TIMEOUT;
    this.#clock = options.clock ?? systemClock;
  }

  listen(address: TransportAddress): Promise<TcpServer> {
    checkAddress(address, 'listen');
    return new Promise<TcpServer>((resolve, reject) => {
      const server = net.createServer({ highWaterMark: this.#settings.highWaterMark });
      const onError = (error: Error): void => {
        server.close();
        const fallback: ErrorCode = 'BM_ERR_INVALID_ARGUMENT';
        const mapped = toBlockMirrorError(error, fallback);
        reject(
          new BlockMirrorError(mapped.code, `cannot listen on ${address.host}:${address.port}: ${error.message}`, {
            cause: error,
            details: { host: address.host, port: address.port, reason: systemCode(error) },
          }),
        );
      };
      server.once('error', onError);
      server.listen({ host: address.host, port: address.port, exclusive: true }, () => {
        server.off('error', onError);
        const tcpServer = new TcpServer(server, this.#settings);
        log('tcp listening on %s:%d', tcpServer.address.host, tcpServer.address.port);
        resolve(tcpServer);
      });
    });
  }

  connect(address: TransportAddress, options: ConnectOptions = {}): Promise<TcpConnection> {
    checkAddress(address, 'connect');
    checkNonNegative(options.timeout, 'timeout');
    // `highWaterMark` reaches the socket's Duplex constructor (both directions);
    // @types/node does not list it for net.connect.
    const connectOptions: net.TcpNetConnectOpts & { highWaterMark: number } = {
      host: address.host,
      port: address.port,
      highWaterMark: this.#settings.highWaterMark,
    };
    return connectAttempt({
      address,
      timeout: options.timeout ?? this.#connectTimeout,
      signal: options.signal,
      clock: this.#clock,
      kind: 'tcp',
      open: () => net.connect(connectOptions),
      ready: 'connect',
      accept: (socket) => new TcpConnection(socket, this.#settings),
      reasonOf: (error) => systemCode(error) ?? 'error',
    });
  }

  bindDatagram(address: TransportAddress): Promise<UdpChannel> {
    checkAddress(address, 'bindDatagram');
    return new Promise<UdpChannel>((resolve, reject) => {
      const socket = dgram.createSocket({ type: address.host.includes(':') ? 'udp6' : 'udp4' });
      const onError = (error: Error): void => {
        socket.close();
        const mapped = toBlockMirrorError(error, 'BM_ERR_INVALID_ARGUMENT');
        reject(
          new BlockMirrorError(mapped.code, `cannot bind ${address.host}:${address.port}: ${error.message}`, {
            cause: error,
            details: { host: address.host, port: address.port, reason: systemCode(error) },
          }),
        );
      };
      socket.once('error', onError);
      socket.bind({ address: address.host, port: address.port, exclusive: true }, () => {
        socket.off('error', onError);
        resolve(new UdpChannel(socket));
      });
    });
  }
}
