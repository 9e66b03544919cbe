/**
 * The security flags of the server commands put to work: certificate files
 * read into a {@link TlsTransport} for the replication link, the NBD front's
 * TLS and limits, the admin endpoint's token and HTTPS, and the one-line
 * exposure warnings for listeners reachable from the network without
 * authentication.
 *
 * @module
 */
import { readFile } from 'node:fs/promises';
import { BlockMirrorError } from '../errors.js';
import type { AdminServerOptions } from '../admin/server.js';
import type { NbdServerOptions } from '../nbd/server.js';
import { isLoopbackHost } from '../transport/loopback.js';
import { TlsTransport } from '../transport/tls.js';
import { formatHostPort, type HostPort, type ServerConfig, type TlsFiles } from './args.js';
import { warn, type CliIo } from './runtime.js';

/** Environment variable holding the admin token when `--admin-token-file` is not given. */
export const ADMIN_TOKEN_ENV = 'BLOCKMIRROR_ADMIN_TOKEN';

/** The certificate material of `--tls-*`, read. */
export interface TlsMaterial {
  cert: Buffer;
  key: Buffer;
  ca: Buffer;
  peers: string[];
}

async function readPem(path: string, flag: string): Promise<Buffer> {
  try {
    return await readFile(path);
  } catch (error) {
    throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', `cannot read ${flag} ${path}: ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}`, { cause: error });
  }
}

/** Reads the `--tls-*` files (undefined without them). @throws {BlockMirrorError} `BM_ERR_INVALID_ARGUMENT` for an unreadable file. */
export async function loadTls(files: TlsFiles | undefined): Promise<TlsMaterial | undefined> {
  if (files === undefined) return undefined;
  return { cert: await readPem(files.cert, '--tls-cert'), key: await readPem(files.key, '--tls-key'), ca: await readPem(files.ca, '--tls-ca'), peers: files.peers };
}

/** The replication link's transport: TLS with `material`, or the default (plain TCP) without. */
export function linkTransport(material: TlsMaterial | undefined): TlsTransport | undefined {
  if (material === undefined) return undefined;
  return new TlsTransport({ cert: material.cert, key: material.key, ca: material.ca, peers: material.peers });
}

/** The admin token: the first line of `--admin-token-file`, else `BLOCKMIRROR_ADMIN_TOKEN`, else none. */
export async function adminToken(config: ServerConfig, env: NodeJS.ProcessEnv = process.env): Promise<string | undefined> {
  if (config.adminTokenFile !== undefined) {
    const text = (await readPem(config.adminTokenFile, '--admin-token-file')).toString('utf8');
    const token = text.split(/\r?\n/)[0] ?? '';
    if (token === '') throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', `--admin-token-file ${config.adminTokenFile}: the first line is empty`);
    return token;
  }
  const fromEnv = env[ADMIN_TOKEN_ENV];
  return fromEnv === undefined || fromEnv === '' ? undefined : fromEnv;
}

/** Access options of the admin endpoint from the flags. */
export function adminAccessOptions(config: ServerConfig, material: TlsMaterial | undefined, token: string | undefined): Pick<AdminServerOptions, 'token' | 'tls' | 'openMetrics'> {
  const options: Pick<AdminServerOptions, 'token' | 'tls' | 'openMetrics'> = {};
  if (token !== undefined) options.token = token;
  if (config.adminTls === true && material !== undefined) options.tls = { cert: material.cert, key: material.key, ca: material.ca };
  if (config.metricsOpen === true) options.openMetrics = true;
  return options;
}

/** TLS and limit options of the NBD front from the flags. */
export function nbdFrontOptions(config: ServerConfig, material: TlsMaterial | undefined): Partial<NbdServerOptions> {
  const options: Partial<NbdServerOptions> = {};
  if (config.nbdTls !== undefined && material !== undefined) {
    options.tls = { cert: material.cert, key: material.key, ca: material.ca };
    if (config.nbdTls === 'only') options.tlsOnly = true;
  }
  if (config.nbdMaxConnections !== undefined) options.maxConnections = config.nbdMaxConnections;
  if (config.nbdMaxInFlight !== undefined) options.maxInFlightBytes = config.nbdMaxInFlight;
  return options;
}

/** One listener of a command, and whether it authenticates whoever connects. */
export interface Listener {
  /** `mirror`, `NBD`, `admin`. */
  what: string;
  at: HostPort;
  authenticated: boolean;
  /** What it would take to authenticate (named in the warning). */
  remedy: string;
}

/** The listeners of a primary (its NBD front; the admin endpoint refuses to start unauthenticated off loopback). */
export function primaryListeners(config: ServerConfig): Listener[] {
  return config.nbd === undefined ? [] : [{ what: 'NBD', at: config.nbd, authenticated: config.nbdTls === 'only', remedy: 'any host that reaches it can read and write the volumes; use --nbd-tls-only' }];
}

/**
 * Prints one warning line per listener bound beyond loopback without
 * authentication, and one for an admin `/metrics` open beyond loopback.
 * (Heartbeats need no warning under TLS without a secret: they are then
 * signed with a key of the TLS session, and none is sent or accepted
 * unsigned — issue 14.)
 */
export function exposureWarnings(io: CliIo, listeners: readonly Listener[], config: ServerConfig): void {
  for (const l of listeners) {
    if (l.authenticated || isLoopbackHost(l.at.host)) continue;
    warn(io, `${l.what} listener ${formatHostPort(l.at)} is reachable beyond this machine without authentication: ${l.remedy}`);
  }
  if (config.metricsOpen === true && config.admin !== undefined && !isLoopbackHost(config.admin.host)) {
    warn(io, `admin /metrics on ${formatHostPort(config.admin)} answers without authentication (--metrics-open)`);
  }
}
