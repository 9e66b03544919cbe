/**
 * The admin endpoint: a small HTTP server with `GET /status` (JSON) and
 * `GET /metrics` (Prometheus text), bound to loopback by default.
 *
 * @module
 */
import http from 'node:http';
import https from 'node:https';
import type net from 'node:net';
import { adminAccess, mayRead } from './access.js';
import createDebug from 'debug';
import { BlockMirrorError, toBlockMirrorError } from '../errors.js';
import { PROMETHEUS_CONTENT_TYPE, renderMetrics, type AdminMetrics } from './metrics.js';
import { normalizeStatus, type AdminStatus } from './status.js';

const log = createDebug('blockmirror:admin');

/** Anything with a `status()`: a `Primary`, a `MirrorTarget`, or a wrapper adding fields. */
export interface StatusSource {
  status(): object;
}

/** Options of {@link createAdminServer}. */
export interface AdminServerOptions {
  /** Address to bind (default `127.0.0.1`: loopback only). */
  host?: string;
  /** TCP port (0: any free port, see {@link AdminServer.address}). */
  port: number;
  /** Where `/status` and `/metrics` get the node's state (called per request). */
  source: StatusSource;
  /** Extra metrics (write latency, NBD counters). */
  metrics?: AdminMetrics;
  /** Reported as `version` in `/status` and `blockmirror_info`. */
  version?: string;
  /**
   * Bearer token (at least 16 characters) every request must carry as
   * `Authorization: Bearer TOKEN`; others get `401`. Required on a
   * non-loopback `host` unless `tls` is given.
   */
  token?: string;
  /**
   * Serve HTTPS and require a client certificate signed by `ca` (PEM).
   * Counts as authentication on a non-loopback `host`.
   */
  tls?: { cert: string | Buffer; key: string | Buffer; ca: string | Buffer };
  /** Answer `/metrics` without the token (for a Prometheus scraper without credentials). Default false. */
  openMetrics?: boolean;
}

/** A listening admin endpoint (see {@link createAdminServer}). */
export class AdminServer {
  readonly #server: http.Server;
  readonly #address: { host: string; port: number };
  #closing: Promise<void> | undefined;

  readonly #tls: boolean;

  /** @internal use {@link createAdminServer} */
  constructor(server: http.Server, tls = false) {
    this.#server = server;
    this.#tls = tls;
    const a = server.address() as net.AddressInfo;
    this.#address = { host: a.address, port: a.port };
  }

  /** The bound address (with the real port when 0 was asked). */
  get address(): { host: string; port: number } {
    return this.#address;
  }

  /** Base URL, e.g. `http://127.0.0.1:9100`. */
  get url(): string {
    const { host, port } = this.#address;
    return `${this.#tls ? 'https' : 'http'}://${host.includes(':') ? `[${host}]` : host}:${port}`;
  }

  /** Stops listening and closes open connections. Idempotent. */
  close(): Promise<void> {
    this.#closing ??= new Promise<void>((resolve) => {
      this.#server.close(() => resolve());
      this.#server.closeAllConnections();
    });
    return this.#closing;
  }
}

function send(res: http.ServerResponse, code: number, type: string, body: string, extra: Record<string, string> = {}): void {
  res.writeHead(code, { 'content-type': type, 'content-length': Buffer.byteLength(body), 'cache-control': 'no-store', ...extra });
  res.end(body);
}

function sendError(res: http.ServerResponse, code: number, error: string, message: string, extra: Record<string, string> = {}): void {
  send(res, code, 'application/json; charset=utf-8', `${JSON.stringify({ error: { code: error, message } })}\n`, extra);
}

/**
 * Starts the admin endpoint.
 *
 * - `GET /status` → `200 application/json`: the source's status mapped to
 *   the {@link AdminStatus} shape (`role`, `peers[].address`,
 *   `peers[].link`, `volumes.NAME.{mode,inSync,pendingBytes,state,…}`),
 *   plus `version`.
 * - `GET /metrics` → `200 text/plain; version=0.0.4`: see {@link renderMetrics}.
 * - other paths → `404` with `{"error":{"code":"not_found",…}}`; methods other
 *   than GET → `405` (`Allow: GET`); a failing `status()` → `500`.
 *   The query string is ignored.
 * - With `token`: a request without `Authorization: Bearer TOKEN` gets
 *   `401` (`/metrics` too unless `openMetrics`). With `tls`: HTTPS, and a
 *   client without a certificate the CA signed is refused in the handshake.
 *
 * @throws {BlockMirrorError} `BM_ERR_ADDRESS_IN_USE` when the port is taken, `BM_ERR_INVALID_ARGUMENT` for bad options
 *   (among them a non-loopback `host` without `token` or `tls`).
 */
export async function createAdminServer(options: AdminServerOptions): Promise<AdminServer> {
  if (options === null || typeof options !== 'object') throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', 'admin options are required');
  const host = options.host ?? '127.0.0.1';
  const { port, source, metrics = {}, version = '' } = options;
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', `admin port must be an integer from 0 to 65535, got ${String(port)}`);
  }
  if (source === null || typeof source !== 'object' || typeof source.status !== 'function') {
    throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', 'admin source must have a status() method');
  }

  const access = adminAccess(host, options.token, options.tls !== undefined, options.openMetrics === true);
  const handler = (req: http.IncomingMessage, res: http.ServerResponse): void => {
    const path = new URL(req.url ?? '/', 'http://admin').pathname;
    if (!mayRead(access, req, path)) {
      sendError(res, 401, 'unauthorized', 'this endpoint needs Authorization: Bearer TOKEN', { 'www-authenticate': 'Bearer' });
      return;
    }
    const known = path === '/status' || path === '/metrics';
    if (!known) {
      sendError(res, 404, 'not_found', `no such endpoint ${JSON.stringify(path)} (try /status or /metrics)`);
      return;
    }
    if (req.method !== 'GET') {
      sendError(res, 405, 'method_not_allowed', `${req.method ?? '?'} is not allowed on ${path}: use GET`, { allow: 'GET' });
      return;
    }
    let status: AdminStatus;
    try {
      status = normalizeStatus(source.status());
    } catch (error) {
      const err = toBlockMirrorError(error, 'BM_ERR_INVALID_ARGUMENT');
      log('status() failed: %O', error);
      sendError(res, 500, err.code, err.message);
      return;
    }
    if (path === '/status') {
      send(res, 200, 'application/json; charset=utf-8', `${JSON.stringify({ ...status, version })}\n`);
    } else {
      send(res, 200, PROMETHEUS_CONTENT_TYPE, renderMetrics(status, metrics, version));
    }
  };
  const server: http.Server =
    options.tls === undefined
      ? http.createServer(handler)
      : (https.createServer({ cert: options.tls.cert, key: options.tls.key, ca: options.tls.ca, requestCert: true, rejectUnauthorized: true, minVersion: 'TLSv1.2' }, handler) as unknown as http.Server);
  server.keepAliveTimeout = 5000;
  server.headersTimeout = 10000;
  server.requestTimeout = 10000;

  await new Promise<void>((resolve, reject) => {
    const onError = (err: Error): void => {
      server.off('listening', onListening);
      const mapped = toBlockMirrorError(err, 'BM_ERR_CONNECT_FAILED');
      reject(new BlockMirrorError(mapped.code, `cannot listen on ${host}:${port} (admin): ${err.message}`, { cause: err }));
    };
    const onListening = (): void => {
      server.off('error', onError);
      resolve();
    };
    server.once('error', onError);
    server.once('listening', onListening);
    server.listen({ host, port, exclusive: true });
  });
  server.on('error', (err) => log('admin server error: %s', err.message));
  const admin = new AdminServer(server, options.tls !== undefined);
  log('admin endpoint on %s', admin.url);
  return admin;
}
