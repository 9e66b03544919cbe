/**
 * The {@link Transport} interface: how blockmirror reaches peers. Implemented
 * over real sockets (`TcpTransport`) and in memory with fault injection
 * (`MemoryNetwork`).
 *
 * @module
 */
import type { EventEmitter } from 'eventemitter3';

/** A network address. `port: 0` in `listen()` asks for any free port. */
export interface TransportAddress {
  host: string;
  port: number;
}

/** Events of a {@link TransportConnection}. */
export interface TransportConnectionEvents {
  /** Bytes arrived. The buffer may be a view into a larger one; it belongs to the listener. */
  data: [chunk: Buffer];
  /** The send buffer drained after `write()` returned false. */
  drain: [];
  /** The connection is gone (either side closed it, or it failed). Emitted exactly once. */
  close: [error?: Error];
}

/**
 * One ordered, reliable byte stream to a peer (a TCP connection or an
 * in-memory link).
 */
export interface TransportConnection extends EventEmitter<TransportConnectionEvents> {
  /** Address of the remote end. */
  readonly remoteAddress: TransportAddress;
  /** Address of the local end. */
  readonly localAddress: TransportAddress;
  /** True once `close` was emitted or `destroy()`/`end()` called. */
  readonly closed: boolean;
  /**
   * Queues `chunks` to be sent back to back as one unit (cork + writes, or
   * writev). The chunks are not copied: do not modify them afterwards.
   * Returns false when the send buffer is above its high-water mark: wait
   * for `drain` before writing more. Writing after close is a silent no-op.
   */
  write(chunks: readonly Uint8Array[]): boolean;
  /** Bytes queued but not yet handed to the network. */
  readonly bufferedAmount: number;
  /** Stops emitting `data` (receive-side back-pressure). */
  pause(): void;
  /** Resumes emitting `data`. */
  resume(): void;
  /** Sends what is queued, then closes. */
  end(): void;
  /** Closes at once; queued data may be lost. `close` is emitted with `error` if given. */
  destroy(error?: Error): void;
  /**
   * Keying material derived from the connection's TLS session (RFC 5705),
   * the same on both ends; absent on connections without TLS.
   */
  exportKeyingMaterial?(length: number, label: string, context: Uint8Array): Buffer;
}

/** Events of a {@link TransportServer}. */
export interface TransportServerEvents {
  connection: [connection: TransportConnection];
  error: [error: Error];
}

/** A listening endpoint. */
export interface TransportServer extends EventEmitter<TransportServerEvents> {
  /** The bound address (with the real port when 0 was asked). */
  readonly address: TransportAddress;
  /** Stops listening and destroys every connection it accepted. */
  close(): Promise<void>;
}

/** Options of {@link Transport.connect}. */
export interface ConnectOptions {
  /** Give up after this many milliseconds (`BM_ERR_CONNECT_FAILED`). */
  timeout?: number;
  /** Abort the attempt. */
  signal?: AbortSignal;
}

/** Events of a {@link DatagramChannel}. */
export interface DatagramChannelEvents {
  message: [data: Buffer, from: TransportAddress];
  error: [error: Error];
}

/** An unreliable, unordered message channel (UDP), used for heartbeats. */
export interface DatagramChannel extends EventEmitter<DatagramChannelEvents> {
  readonly address: TransportAddress;
  /** Sends one datagram; loss is silent. */
  send(data: Uint8Array, to: TransportAddress): void;
  close(): Promise<void>;
}

/** Optional capabilities of a {@link Transport}. */
export interface TransportSupports {
  /** `bindDatagram()` is implemented. */
  readonly datagram: boolean;
  /** Faults can be injected (in-memory transport). */
  readonly faults: boolean;
  /**
   * Every connection is a TLS session with `exportKeyingMaterial`: without a
   * shared secret, heartbeats are keyed from the session and must be
   * authenticated (default false).
   */
  readonly sessionKeys?: boolean;
}

/**
 * A way to listen for and open connections, plus (optionally) datagrams.
 */
export interface Transport {
  readonly supports: TransportSupports;
  /** Starts listening. Rejects with `BM_ERR_ADDRESS_IN_USE` when the address is taken. */
  listen(address: TransportAddress): Promise<TransportServer>;
  /** Opens a connection. Rejects with `BM_ERR_CONNECT_FAILED` when nobody listens. */
  connect(address: TransportAddress, options?: ConnectOptions): Promise<TransportConnection>;
  /** Binds a datagram channel (UDP). Present when `supports.datagram`. */
  bindDatagram?(address: TransportAddress): Promise<DatagramChannel>;
}
