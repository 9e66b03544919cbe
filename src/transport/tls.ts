/**
 * {@link Transport} over TLS (`node:tls`) with mutual authentication:
 * both sides present a certificate signed by a CA the other trusts, and each
 * may restrict the peer further to a list of names or SHA-256 fingerprints
 * ({@link TlsTransportOptions.peers}). Heartbeat datagrams stay on UDP
 * (`node:dgram`), authenticated by the shared secret when one is set.
 *
 * Connections are {@link TcpConnection}s around the TLS sockets: the same
 * per-tick write batching and back-pressure as plain TCP.
 *
 * @module
 */
import net from 'node:net';
import tls from 'node:tls';
import debug from 'debug';
import { EventEmitter } from 'eventemitter3';
import { systemClock } from '../clock.js';
import type { Clock } from '../clock.js';
import { BlockMirrorError, toBlockMirrorError } from '../errors.js';
import type { ConnectOptions, Transport, TransportAddress, TransportServer, TransportServerEvents, TransportSupports } from './transport.js';
import { checkAddress } from './address.js';
import { connectAttempt } from './connect-attempt.js';
import { DEFAULT_TCP_CONNECT_TIMEOUT, DEFAULT_TCP_HIGH_WATER_MARK, TcpConnection, TcpTransport, type SocketSettings, type UdpChannel } from './tcp.js';
import { peerCertificateError } from './tls-verify.js';
import { describeCertificate, parsePeerPatterns, peerAllowed, type PeerPattern } from './peer-identity.js';

const log = debug('blockmirror:transport');

/** PEM text or bytes (one or several). */
export type Pem = string | Buffer | ReadonlyArray<string | Buffer>;

/** Options of {@link TlsTransport}. */
export interface TlsTransportOptions {
  /**
   * A ready `SecureContext` (from `tls.createSecureContext`) holding this
   * node's certificate, key and trusted CAs. Use it, or `cert` + `key` + `ca`.
   */
  secureContext?: tls.SecureContext;
  /** This node's certificate chain (PEM). */
  cert?: Pem;
  /** This node's private key (PEM). */
  key?: Pem;
  /** CA certificates that sign the peers' certificates (PEM). */
  ca?: Pem;
  /**
   * Who the peer may be: names (certificate CN or subjectAltName DNS/IP
   * entries) or `sha256:` fingerprints. Checked on both sides after the
   * certificate chain was verified. Empty or absent: any certificate the CA
   * signed — and, on the connecting side, whose names match the host
   * connected to (the usual hostname check).
   */
  peers?: readonly string[];
  /** Lowest TLS version accepted (default `TLSv1.3`). */
  minVersion?: tls.SecureVersion;
  /** Milliseconds a peer has to complete the TLS handshake on an accepted connection (default 10 000). */
  handshakeTimeout?: number;
  /** As for {@link TcpTransport}. */
  noDelay?: boolean;
  keepAlive?: boolean | number;
  highWaterMark?: number;
  connectTimeout?: number;
  clock?: Clock;
}

function pemList(value: Pem | undefined): Array<string | Buffer> | undefined {
  if (value === undefined) return undefined;
  return Array.isArray(value) ? [...(value as ReadonlyArray<string | Buffer>)] : [value as string | Buffer];
}

/** Counters of a {@link TlsServer}. */
export interface TlsServerStats {
  /** Connections whose TLS handshake failed (no or bad certificate, timeout, not TLS at all). */
  handshakeFailures: number;
  /** Connections with a valid certificate that is not in the allowed peer list. */
  refusedPeers: number;
}

/** What a {@link TlsServer} needs of its transport. */
interface TlsServerSettings {
  readonly socket: SocketSettings;
  readonly peers: readonly PeerPattern[];
  readonly context: tls.SecureContext;
  readonly handshakeTimeout: number;
  readonly clock: Clock;
}

/**
 * A listening TLS server as a {@link TransportServer}: emits `connection`
 * once a peer completed the TLS handshake with a certificate the CA signed
 * (and that is an allowed peer). Accepted TCP sockets are wrapped in server
 * `TLSSocket`s with the transport's `SecureContext`.
 */
export class TlsServer extends EventEmitter<TransportServerEvents> implements TransportServer {
  /** The wrapped TCP server. */
  readonly server: net.Server;
  readonly address: TransportAddress;
  readonly stats: TlsServerStats = { handshakeFailures: 0, refusedPeers: 0 };
  readonly #connections = new Set<TcpConnection>();
  readonly #handshaking = new Set<tls.TLSSocket>();
  readonly #settings: TlsServerSettings;
  #closing: Promise<void> | undefined;

  /** @internal created by {@link TlsTransport.listen} */
  constructor(server: net.Server, settings: TlsServerSettings) {
    super();
    this.server = server;
    this.#settings = settings;
    const bound = server.address();
    if (bound === null || typeof bound === 'string') throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', 'TlsServer needs a server listening on an IP address');
    this.address = { host: bound.address, port: bound.port };
    server.on('connection', (raw: net.Socket) => this.#handshake(raw));
    server.on('error', (error: Error) => this.emit('error', toBlockMirrorError(error, 'BM_ERR_IO')));
  }

  #handshake(raw: net.Socket): void {
    if (this.#closing !== undefined) {
      raw.destroy();
      return;
    }
    const { clock } = this.#settings;
    const socket = new tls.TLSSocket(raw, { isServer: true, secureContext: this.#settings.context, requestCert: true, rejectUnauthorized: true });
    this.#handshaking.add(socket);
    const failed = (why: string): void => {
      if (!this.#handshaking.delete(socket)) return;
      clock.clearTimeout(timer);
      this.stats.handshakeFailures++;
      log('tls handshake with %s failed: %s', raw.remoteAddress, why);
      socket.destroy();
      raw.destroy();
    };
    const timer = clock.setTimeout(() => failed('timeout'), this.#settings.handshakeTimeout);
    socket.on('error', (error: Error) => failed(error.message));
    socket.once('close', () => failed('closed during the handshake'));
    socket.once('secure', () => {
      if (!this.#handshaking.delete(socket)) return;
      clock.clearTimeout(timer);
      const verifyError = peerCertificateError(socket);
      if (verifyError !== undefined) {
        this.stats.handshakeFailures++;
        log('tls peer %s not authorised: %s', raw.remoteAddress, verifyError);
        socket.destroy();
        return;
      }
      this.#accept(socket);
    });
  }

  #accept(socket: tls.TLSSocket): void {
    if (this.#closing !== undefined) {
      socket.destroy();
      return;
    }
    const cert = socket.getPeerCertificate();
    const { peers } = this.#settings;
    if (peers.length > 0 && !peerAllowed(cert, peers)) {
      this.stats.refusedPeers++;
      log('tls peer %s refused: %s is not an allowed peer', socket.remoteAddress, describeCertificate(cert));
      socket.destroy();
      return;
    }
    const connection = new TcpConnection(socket, this.#settings.socket);
    this.#connections.add(connection);
    connection.once('close', () => this.#connections.delete(connection));
    this.emit('connection', connection);
  }

  /** Stops listening and destroys every accepted connection. */
  close(): Promise<void> {
    this.#closing ??= (async () => {
      const serverClosed = new Promise<void>((resolve) => this.server.close(() => resolve()));
      for (const s of this.#handshaking) s.destroy();
      const pending = [...this.#connections].map(
        (c) =>
          new Promise<void>((resolve) => {
            c.once('close', () => resolve());
            c.destroy();
          }),
      );
      await Promise.all([serverClosed, ...pending]);
    })();
    return this.#closing;
  }
}

/**
 * {@link Transport} over mutually authenticated TLS, with UDP datagrams.
 *
 * - `listen()` accepts only peers whose certificate chains to `ca` (and
 *   matches `peers` when given); others are closed during or right after
 *   the TLS handshake, counted in `server.stats`, never reported as a
 *   connection.
 * - `connect()` rejects with `BM_ERR_CONNECT_FAILED` (`details.reason`:
 *   a system code, `'timeout'`, `'aborted'`, `'tls'` for a failed
 *   handshake or `'peer'` for a certificate outside `peers`).
 *
 * @throws {BlockMirrorError} `BM_ERR_INVALID_ARGUMENT` from the constructor when neither a `secureContext` nor `cert`, `key` and `ca` are given, or the PEM data is not usable.
 */
export class TlsTransport implements Transport {
  readonly supports: TransportSupports = { datagram: true, faults: false, sessionKeys: true };
  readonly #context: tls.SecureContext;
  readonly #peers: readonly PeerPattern[];
  readonly #settings: SocketSettings;
  readonly #udp: TcpTransport;
  readonly #connectTimeout: number;
  readonly #handshakeTimeout: number;
  readonly #clock: Clock;
  readonly #minVersion: tls.SecureVersion;

  constructor(options: TlsTransportOptions) {
    if (options === null || typeof options !== 'object') throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', 'TlsTransport options must be an object');
    this.#minVersion = options.minVersion ?? 'TLSv1.3';
    if (options.secureContext !== undefined) {
      this.#context = options.secureContext;
    } else {
      if (options.cert === undefined || options.key === undefined || options.ca === undefined) {
        throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', 'TlsTransport needs a secureContext, or cert, key and ca (mutual authentication)');
      }
      try {
        this.#context = tls.createSecureContext({ cert: pemList(options.cert), key: pemList(options.key), ca: pemList(options.ca), minVersion: this.#minVersion });
      } catch (error) {
        throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', `TlsTransport: unusable certificate, key or CA: ${(error as Error).message}`, { cause: error });
      }
    }
    this.#peers = parsePeerPatterns(options.peers ?? []);
    this.#udp = new TcpTransport(options);
    this.#settings = {
      noDelay: options.noDelay ?? true,
      keepAlive: options.keepAlive ?? false,
      highWaterMark: options.highWaterMark ?? DEFAULT_TCP_HIGH_WATER_MARK,
    };
    this.#connectTimeout = options.connectTimeout ?? DEFAULT_TCP_CONNECT_TIMEOUT;
    this.#handshakeTimeout = options.handshakeTimeout ?? 10_000;
    this.#clock = options.clock ?? systemClock;
  }

  listen(address: TransportAddress): Promise<TlsServer> {
    checkAddress(address, 'listen');
    return new Promise<TlsServer>((resolve, reject) => {
      const server = net.createServer({ highWaterMark: this.#settings.highWaterMark });
      const onError = (error: Error): void => {
        server.close();
        const mapped = toBlockMirrorError(error, 'BM_ERR_INVALID_ARGUMENT');
        reject(new BlockMirrorError(mapped.code, `cannot listen on ${address.host}:${address.port}: ${error.message}`, { cause: error, details: { host: address.host, port: address.port } }));
      };
      server.once('error', onError);
      server.listen({ host: address.host, port: address.port, exclusive: true }, () => {
        server.off('error', onError);
        const s = new TlsServer(server, {
          socket: this.#settings,
          peers: this.#peers,
          context: this.#context,
          handshakeTimeout: this.#handshakeTimeout,
          clock: this.#clock,
        });
        log('tls listening on %s:%d', s.address.host, s.address.port);
        resolve(s);
      });
    });
  }

  connect(address: TransportAddress, options: ConnectOptions = {}): Promise<TcpConnection> {
    checkAddress(address, 'connect');
    const peers = this.#peers;
    return connectAttempt({
      address,
      timeout: options.timeout ?? this.#connectTimeout,
      signal: options.signal,
      clock: this.#clock,
      kind: 'tls',
      open: () =>
        tls.connect({
          host: address.host,
          port: address.port,
          secureContext: this.#context,
          minVersion: this.#minVersion,
          rejectUnauthorized: true,
          // with an allowed-peer list, it decides who the server may be (checked below)
          ...(peers.length > 0 ? { checkServerIdentity: () => undefined } : {}),
          ...(/^[\d.]+$|:/.test(address.host) ? {} : { servername: address.host }),
          highWaterMark: this.#settings.highWaterMark,
        } as tls.ConnectionOptions),
      ready: 'secureConnect',
      accept: (socket, fail) => {
        const cert = (socket as tls.TLSSocket).getPeerCertificate();
        if (peers.length > 0 && !peerAllowed(cert, peers)) return fail('peer', `the peer's certificate (${describeCertificate(cert)}) is not an allowed peer`);
        return new TcpConnection(socket, this.#settings);
      },
      reasonOf: (error) => {
        const code = typeof error.code === 'string' ? error.code : 'error';
        return /^ERR_SSL|^ERR_TLS|CERT|SELF_SIGNED|UNABLE_TO/.test(code) ? 'tls' : code;
      },
    });
  }

  bindDatagram(address: TransportAddress): Promise<UdpChannel> {
    return this.#udp.bindDatagram(address);
  }
}
