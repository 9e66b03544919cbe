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
import type { Resolution } from '../replication/pair-state.js';

const log = createDebug('blockmirror:admin');

/** Anything with a `status()`: a `Primary`, a `MirrorTarget`, or a wrapper adding fields. */
export interface StatusSource {
  status(): object;
}

/**
 * Operator commands the admin endpoint accepts (`POST`), each optional: a
 * node offers those its role has (a primary: `resolve`, `demote`; a mirror
 * target: `resolve`, `promote` — the CLI's mirror also `demote`, for a
 * volume it serves in place after a promotion). Each resolves with a
 * JSON-serialisable result or rejects with a coded error.
 */
export interface AdminActions {
  /** `POST /volumes/NAME/resolve?discard=local|remote`: see `Primary.resolve` / `MirrorTarget.resolve`. */
  resolve?(volume: string, discard: Resolution): Promise<object>;
  /**
   * `POST /volumes/NAME/promote[?force=1][&peer=HOST:PORT]`: see
   * `MirrorTarget.promote`. `peer` (`HOST:PORT` or `[IPv6]:PORT`, checked
   * before the action runs): the mirror the promoted volume is to replicate
   * to when the node serves it in place (the CLI's mirror with `--nbd`).
   */
  promote?(volume: string, options: { force: boolean; peer?: { host: string; port: number } }): Promise<object>;
  /** `POST /volumes/NAME/demote[?timeout=MS]`: see `Primary.demote`. */
  demote?(volume: string, options: { timeout?: number }): Promise<object>;
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
  /** Operator commands (`POST /volumes/NAME/ACTION`, authenticated like the rest); absent: none (405). */
  actions?: AdminActions;
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

/** `HOST:PORT` or `[IPv6]:PORT` (port 1…65535) of a promote's `peer`; else `BM_ERR_INVALID_ARGUMENT`. */
function parsePeer(text: string): { host: string; port: number } {
  const m = /^(?:\[([^\]\s]+)\]|([^:\s[\]]+)):(\d{1,5})$/.exec(text);
  const port = m === null ? NaN : Number(m[3]);
  if (m === null || port < 1 || port > 65535) throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', `promote peer must be HOST:PORT or [IPv6]:PORT with a port from 1 to 65535, got ${JSON.stringify(text)}`);
  return { host: m[1] ?? m[2]!, port };
}

/** Runs one operator command and answers it. */
async function runAction(req: http.IncomingMessage, res: http.ServerResponse, actions: AdminActions, volume: string, name: keyof AdminActions, query: URLSearchParams): Promise<void> {
  // the body is not used: drain it
  req.resume();
  if (req.method !== 'POST') {
    sendError(res, 405, 'method_not_allowed', `${req.method ?? '?'} is not allowed on ${name}: use POST`, { allow: 'POST' });
    return;
  }
  if (actions[name] === undefined) {
    sendError(res, 405, 'not_available', `this node does not offer ${name} (${name === 'promote' ? 'promote a mirror target' : name === 'demote' ? 'demote a primary' : 'resolve on a primary or a mirror target'})`);
    return;
  }
  try {
    let result: object;
    if (name === 'resolve') {
      const discard = query.get('discard');
      if (discard !== 'local' && discard !== 'remote') throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', 'resolve needs discard=local or discard=remote');
      result = await actions.resolve!(volume, discard === 'local' ? 'discard-local' : 'discard-remote');
    } else if (name === 'promote') {
      const force = query.get('force') === '1' || query.get('force') === 'true';
      const peer = query.get('peer');
      result = await actions.promote!(volume, peer === null ? { force } : { force, peer: parsePeer(peer) });
    } else {
      const t = query.get('timeout');
      const timeout = t === null ? undefined : Number(t);
      if (timeout !== undefined && (!Number.isSafeInteger(timeout) || timeout < 1)) throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', 'demote timeout must be a positive number of milliseconds');
      result = await actions.demote!(volume, timeout === undefined ? {} : { timeout });
    }
    send(res, 200, 'application/json; charset=utf-8', `${JSON.stringify(result)}\n`);
  } catch (error) {
    const err = toBlockMirrorError(error, 'BM_ERR_INVALID_ARGUMENT');
    log('%s %s failed: %s', name, volume, err.message);
    const status = err.code === 'BM_ERR_UNKNOWN_VOLUME' ? 404 : err.code === 'BM_ERR_INVALID_ARGUMENT' ? 400 : 409;
    sendError(res, status, err.code, err.message);
  }
}

/**
 * Starts the admin endpoint.
 *
 * - `GET /status` → `200 application/json`: the source's status mapped to
 *   the {@link AdminStatus} shape (`role`, `peers[].address`,
 *   `peers[].link`, `volumes.NAME.{mode,inSync,pendingBytes,state,…}`),
 *   plus `version`.
 * - `GET /metrics` → `200 text/plain; version=0.0.4`: see {@link renderMetrics}.
 * - `POST /volumes/NAME/resolve?discard=local|remote`,
 *   `POST /volumes/NAME/promote[?force=1][&peer=HOST:PORT]`, `POST /volumes/NAME/demote[?timeout=MS]`
 *   → `200` with the action's JSON result; a coded error → `{"error":{"code","message"}}`
 *   with `404` (`BM_ERR_UNKNOWN_VOLUME`), `400` (`BM_ERR_INVALID_ARGUMENT`) or `409`
 *   (any other: the node's state does not allow it); an action this node does
 *   not offer → `405`. See {@link AdminActions}.
 * - other paths → `404` with `{"error":{"code":"not_found",…}}`; methods other
 *   than GET (POST for actions) → `405`; a failing `status()` → `500`.
 *   The query string of GET requests is ignored.
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
  const actions = options.actions ?? {};
  const handler = (req: http.IncomingMessage, res: http.ServerResponse): void => {
    const url = new URL(req.url ?? '/', 'http://admin');
    const path = url.pathname;
    if (!mayRead(access, req, path)) {
      sendError(res, 401, 'unauthorized', 'this endpoint needs Authorization: Bearer TOKEN', { 'www-authenticate': 'Bearer' });
      return;
    }
    const action = /^\/volumes\/([^/]+)\/(resolve|promote|demote)$/.exec(path);
    if (action !== null) {
      void runAction(req, res, actions, decodeURIComponent(action[1]!), action[2] as keyof AdminActions, url.searchParams);
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
