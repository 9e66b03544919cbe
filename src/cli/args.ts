/**
 * Command-line parsing for `blockmirror` (`node:util` `parseArgs`, strict):
 * turns argv into a validated command, or throws a usage error.
 *
 * @module
 */
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { isBlockMirrorError } from '../errors.js';
import { parseSize } from '../device/size.js';
import { checkVolumeName } from '../replication/options.js';
import { DEFAULT_HEARTBEAT_INTERVAL, DEFAULT_STALE_AFTER } from '../link/link-monitor.js';
import { isNbdUri, parseNbdUri, type NbdTarget } from '../nbd/uri.js';
import { usageError } from './errors.js';

/** A host and a port. */
export interface HostPort {
  host: string;
  port: number;
}

/** One `--volume NAME=PATH[:SIZE]` or `--volume NAME=nbd://…`. */
export interface VolumeSpec {
  name: string;
  /** The file path, or the NBD URI as given. */
  path: string;
  /** Set when the volume is an export on an NBD server (`path` is its URI). */
  nbd?: NbdTarget;
  /** Bytes; required to create a missing file, checked against an existing one. */
  size?: number;
  /** Replication mode of this volume on a primary (default: the primary's `--mode`; not settable from the command line). */
  mode?: 'sync' | 'async';
}

/** Flags shared by `mirror` and `primary`. */
export interface ServerConfig {
  volumes: VolumeSpec[];
  nbd?: HostPort;
  admin?: HostPort;
  secretFile?: string;
  /** `--heartbeat-interval MS`. */
  heartbeatInterval?: number;
  /** `--stale-after MS`. */
  staleAfter?: number;
  /** `--probation MS`. */
  probation?: number;
  /**
   * `--state-dir DIR`: the node's state directory (its persistent node id and
   * each volume's pairing state; on a primary without a journal the
   * write-intent bitmaps; on a mirror the apply state and staged cycles).
   * Default: `<first volume file>.mirror-state` / `.primary-state`; required
   * when every volume is on an NBD server.
   */
  stateDir?: string;
  /** `--tls-cert FILE --tls-key FILE --tls-ca FILE [--tls-peer NAME|sha256:FP …]`: the replication link over mutual TLS. */
  tls?: TlsFiles;
  /** `--nbd-tls` (STARTTLS with the `--tls-*` certificate; clients need a certificate of `--tls-ca`) / `--nbd-tls-only` (refuse plaintext). */
  nbdTls?: 'optional' | 'only';
  /** `--nbd-max-connections N`. */
  nbdMaxConnections?: number;
  /** `--nbd-max-in-flight SIZE`: READ/WRITE bytes in flight over all NBD clients. */
  nbdMaxInFlight?: number;
  /** `--admin-token-file FILE` (else the environment variable `BLOCKMIRROR_ADMIN_TOKEN`). */
  adminTokenFile?: string;
  /** `--admin-tls`: the admin endpoint over HTTPS with the `--tls-*` certificate, clients need a certificate of `--tls-ca`. */
  adminTls?: boolean;
  /** `--metrics-open`: `/metrics` answers without the admin token. */
  metricsOpen?: boolean;
  /**
   * `--scan-zeros`: read the regions of each file volume that its allocation
   * map (in the state directory) does not know to be zero, once at start, and
   * mark the all-zero ones.
   */
  scanZeros?: boolean;
}

/** The certificate files of `--tls-cert`, `--tls-key`, `--tls-ca` and the allowed peers of `--tls-peer`. */
export interface TlsFiles {
  cert: string;
  key: string;
  ca: string;
  peers: string[];
}

/** `blockmirror mirror …` */
export interface MirrorConfig extends ServerConfig {
  listen: HostPort;
  /** `--max-sessions N`: primaries and cycle sources at once. */
  maxSessions?: number;
}

/** `blockmirror primary …` */
export interface PrimaryConfig extends ServerConfig {
  peer: HostPort;
  /** Replication mode of every volume. */
  mode: 'sync' | 'async' | 'cycle';
  /** `--cycle-interval MS` (cycle mode): milliseconds from one freeze to the next. */
  cycleInterval?: number;
  /** `--bandwidth SIZE` (cycle mode): bytes per second a cycle may send. */
  bandwidth?: number;
  /** Connections in the connection array (1…64; library default when absent). */
  connections?: number;
  /** `--journal DIR` (cycle mode: where the layer files are kept). */
  journalDir?: string;
  /** `--no-payload-checksum`: send mirrored data without CRC-32. */
  noPayloadChecksum?: boolean;
  /** `--drain-timeout MS`: how long shutdown waits for pending mirror requests (default 10000). */
  drainTimeout: number;
  /** `--initial-sync checksum|full|none` / `--assume-clean` (sync/async): how the first sync with a mirror that holds none of a volume's lineage is done (default checksum). */
  initialSync?: 'full' | 'checksum' | 'none';
  /** `--resync-rate SIZE` (sync/async): bytes per second an initial sync or resync may send. */
  resyncRate?: number;
}

/** `blockmirror status …` */
export interface StatusConfig {
  admin: HostPort;
  json: boolean;
}

/** `blockmirror resolve|promote|demote …`: an operator command sent to a running node's admin endpoint. */
export interface RoleCommandConfig {
  admin: HostPort;
  volume: string;
  /** resolve: which side's data is discarded. */
  discard?: 'local' | 'remote';
  /** promote: `--force` (the primary is lost: it did not hand the volume over). */
  force?: boolean;
  /** promote: `--peer HOST:PORT`, the mirror the promoted volume replicates to when the mirror serves it in place (its `--nbd`). */
  peer?: HostPort;
  /** demote: `--timeout MS` to drain the volume to the mirror (default 30000). */
  timeout?: number;
}

/** A parsed command line. */
export type Command =
  | { kind: 'help'; text: string }
  | { kind: 'version' }
  | { kind: 'mirror'; config: MirrorConfig }
  | { kind: 'primary'; config: PrimaryConfig }
  | { kind: 'status'; config: StatusConfig }
  | { kind: 'resolve' | 'promote' | 'demote'; config: RoleCommandConfig }
  | { kind: 'demo' };

/** Default `--drain-timeout`, ms. */
export const DEFAULT_DRAIN_TIMEOUT = 10_000;

export const MAIN_HELP = `Usage: blockmirror <command> [options]

Mirror block volumes between storage servers over IP.

Commands:
  mirror    run a mirror target: receive a primary's writes into local volume files
  primary   run a primary: serve volumes (NBD) and mirror every write to a mirror target
  status    show the status of a running node (via its --admin endpoint)
  resolve   resolve a split brain of a volume: --discard-local or --discard-remote
  promote   make a mirror's volume a primary's (failover; --force when the primary is lost;
            --peer to serve it in place on the mirror's --nbd)
  demote    hand a primary's volume over to its mirror (read-only here afterwards)
  demo      run a self-contained demonstration on loopback (no arguments)

Options:
  -h, --help       show help (also: blockmirror <command> --help)
  -V, --version    show the version

Errors go to stderr as one line "blockmirror: <code>: <message>"; exit status 2
for usage errors, 1 for runtime errors. DEBUG=blockmirror:* turns on logs (and
stack traces).
`;

const SECURITY_HELP = `  --tls-cert FILE --tls-key FILE --tls-ca FILE
                             the replication link over mutual TLS: this node's certificate
                             and key, and the CA that signs its peers' certificates (PEM)
  --tls-peer NAME|sha256:FP  allowed peer (repeatable): a certificate name (CN or
                             subjectAltName) or SHA-256 fingerprint; default: any the CA signed
  --nbd-tls / --nbd-tls-only offer NBD_OPT_STARTTLS with the --tls-* certificate (clients need
                             a certificate of --tls-ca) / also refuse plaintext clients
  --nbd-max-connections N    NBD clients at once (default 128)
  --nbd-max-in-flight SIZE   READ/WRITE bytes in flight over all NBD clients (default 128M);
                             beyond it requests wait (never dropped)
  --admin-token-file FILE    admin endpoint bearer token (first line; or the environment
                             variable BLOCKMIRROR_ADMIN_TOKEN); required off loopback
                             unless --admin-tls
  --admin-tls                the admin endpoint over HTTPS; clients need a certificate of --tls-ca
  --metrics-open             /metrics answers without the token (for a scraper)`;

const VOLUME_HELP = `  --volume NAME=PATH[:SIZE]  a volume backed by the file PATH (repeatable). SIZE
                             (e.g. 64M, 1G, 4096) creates a missing file sparse and
                             must match an existing one; without SIZE the file must exist.
  --volume NAME=nbd://HOST[:PORT]/EXPORT
  --volume NAME=nbd+unix:///EXPORT?socket=PATH
                             a volume on an export of an NBD server (qemu-nbd,
                             qemu-storage-daemon, rbd-nbd, nbdkit…); its size is the
                             export's. Reconnects by itself; while the server is
                             unreachable the volume's writes fail (local errors).
                             Each file volume has an allocation map (64 KiB regions) in
                             the state directory: <volume>.allocation (a file created
                             now starts all-zero; an existing image "may hold data")
  --scan-zeros               read the regions of each file volume its allocation map does
                             not know to be zero, once at start, and mark the all-zero
                             ones (progress on stdout): holes and zeros are then neither
                             read nor sent`;

export const MIRROR_HELP = `Usage: blockmirror mirror --listen HOST:PORT --volume NAME=PATH[:SIZE] [--volume …]
                          [--nbd HOST:PORT] [--admin HOST:PORT] [--secret-file FILE]
                          [--heartbeat-interval MS] [--stale-after MS] [--probation MS]
                          [--state-dir DIR] [--tls-cert FILE --tls-key FILE --tls-ca FILE]
                          [--tls-peer NAME|sha256:FP] [--nbd-tls | --nbd-tls-only]
                          [--admin-token-file FILE] [--admin-tls] [--metrics-open]
                          [--max-sessions N] [--nbd-max-connections N] [--nbd-max-in-flight SIZE]

Runs a mirror target. A primary connects to --listen (TCP; heartbeats use UDP
on the same port number) and mirrors its volumes into the volume files here;
the primary's volumes must have the same names and sizes. A primary in
--mode cycle sends freeze/copy cycles to the same port instead.

  --listen HOST:PORT         where primaries connect (PORT alone: 127.0.0.1:PORT)
${VOLUME_HELP}
${SECURITY_HELP}
  --max-sessions N           primaries and cycle sources at once (default 64)
  --nbd HOST:PORT            serve the volumes read-only over NBD (export name = volume name);
                             a volume promoted with --peer is served here read-write by its
                             new primary (see blockmirror promote --help)
  --admin HOST:PORT          HTTP status/metrics endpoint (GET /status, GET /metrics)
  --secret-file FILE         shared secret (first line of FILE); primaries must prove it
  --heartbeat-interval MS    heartbeat period (UDP, default 1500)
  --stale-after MS           a primary without heartbeats for MS is down (default 4000)
  --probation MS             a returning primary is on probation for MS (default 10000)
  --state-dir DIR            the mirror's state: its node id, each volume's pairing state
                             (lineage, disk state) and apply state, staged cycles (created
                             if missing; default: <first volume file>.mirror-state; required
                             when every volume is on an NBD server)

The primary's --heartbeat-interval and --stale-after govern its session: this
mirror follows them for that primary (its own values apply to primaries that
do not announce theirs).

Prints "listening mirror=HOST:PORT [nbd=HOST:PORT] [admin=HOST:PORT]" once ready.
SIGINT/SIGTERM: flush and close everything, exit 0.
`;

export const PRIMARY_HELP = `Usage: blockmirror primary --peer HOST:PORT --volume NAME=PATH[:SIZE] [--volume …]
                          [--mode sync|async|cycle] [--connections N] [--journal DIR]
                          [--nbd HOST:PORT] [--admin HOST:PORT] [--secret-file FILE]
                          [--heartbeat-interval MS] [--stale-after MS] [--probation MS]
                          [--drain-timeout MS] [--no-payload-checksum] [--state-dir DIR]
                          [--initial-sync checksum|full|none] [--assume-clean] [--resync-rate SIZE]
                          [--cycle-interval MS] [--bandwidth SIZE]
                          [--tls-cert FILE --tls-key FILE --tls-ca FILE] [--tls-peer NAME|sha256:FP]
                          [--nbd-tls | --nbd-tls-only] [--admin-token-file FILE] [--admin-tls]
                          [--metrics-open] [--nbd-max-connections N] [--nbd-max-in-flight SIZE]

Runs a primary: owns the volumes, serves them over NBD and mirrors every write
to the mirror target at --peer (which must host volumes of the same names and
sizes; a mismatch stops the primary with BM_ERR_VOLUME_MISMATCH). When the
mirror is unreachable, the primary keeps serving, journals what the mirror
has not acknowledged, and reconnects after a clean heartbeat probation.

  --peer HOST:PORT           the mirror target (its --listen address)
${VOLUME_HELP}
${SECURITY_HELP}
  --mode sync|async|cycle    sync (default): a write completes once the mirror has it;
                             async: once written locally, the mirror follows in order;
                             cycle: writes complete locally; every --cycle-interval the
                             volumes are frozen together and the changed blocks copied
                             (the mirror only ever holds a complete freeze image)
  --connections N            connections to the mirror (1-64, default 4)
  --journal DIR              keep each volume's journal of not-yet-mirrored writes in
                             DIR/<volume>.journal (survives a restart; default: memory);
                             cycle: the layer files (default: beside each volume file;
                             required for a volume on an NBD server)
  --nbd HOST:PORT            serve the volumes over NBD (export name = volume name)
  --admin HOST:PORT          HTTP status/metrics endpoint (GET /status, GET /metrics)
  --secret-file FILE         shared secret (first line of FILE)
  --heartbeat-interval MS    heartbeat period (UDP, to the peer's port number; default 1500)
  --stale-after MS           a link without heartbeats for MS is down (default 4000)
                             (the mirror follows both for this primary, or refuses it
                             with BM_ERR_SETTINGS_MISMATCH)
  --probation MS             a returning link is on probation for MS (default 10000)
  --state-dir DIR            the primary's state: its node id, each volume's pairing state
                             (lineage, what the mirror holds) and, without --journal, its
                             write-intent bitmap (created if missing; default: <first volume
                             file>.primary-state; required when every volume is on an NBD server)
  --drain-timeout MS         on shutdown, wait at most MS for pending mirror writes (default ${DEFAULT_DRAIN_TIMEOUT})
  --no-payload-checksum      do not compute CRC-32s of mirrored data (saves ~10 % CPU at 64 KiB;
                             TCP checksums still apply; headers keep their CRC)
  --initial-sync checksum|full|none
                             first pairing (the mirror holds none of a volume's data, e.g. a
                             blank mirror): copy the volume while serving it; checksum
                             (default) sends only the regions whose digests differ, full
                             sends every region, none skips it; the mirror is inconsistent
                             (not in sync) until it ends; progress on stderr
  --assume-clean             same as --initial-sync none: both images are known identical
                             (two blank volumes, or copied by other means)
  --resync-rate SIZE         cap on the bytes per second an initial sync or resync sends (64M)
  --cycle-interval MS        cycle mode: time from one freeze to the next (default 60000;
                             a cycle that takes longer delays the next freeze)
  --bandwidth SIZE           cycle mode: cap on the bytes per second a cycle sends (64M, 1G)

Binds --nbd and --admin before contacting the mirror (a port in use stops the
primary before it claims anything there). Prints "listening [nbd=HOST:PORT]
[admin=HOST:PORT] peer=HOST:PORT" once ready, "link up|down|… peer=HOST:PORT"
when the link changes, and "journal replay done volume=V …" once the writes
recovered from --journal reached the mirror.
SIGINT/SIGTERM: stop NBD, drain (bounded), flush and close, exit 0.
`;

export const STATUS_HELP = `Usage: blockmirror status --admin HOST:PORT [--json]

Fetches GET /status from a node's admin endpoint and prints it as a table
(or as JSON with --json).
`;

export const RESOLVE_HELP = `Usage: blockmirror resolve --admin HOST:PORT --volume NAME (--discard-local | --discard-remote)

Resolves a split brain (or an unrelated lineage) of a volume, on the running
node whose admin endpoint is --admin. Nothing else resolves it: by default a
mirror refuses a primary whose data it cannot prove to descend from its own.

On the mirror:
  --discard-local    give this mirror's data up: the refused primary is accepted at
                     its next attempt and resyncs the volume by checksum
  --discard-remote   keep this mirror's data: the volume is promoted (forced); serve it
                     here with promote --force --peer (a mirror with --nbd) or restart
                     this node as its primary; restart the other as its mirror, then
                     resolve there with --discard-local
On the primary:
  --discard-remote   give the mirror's data up: offered at the next handshake, the
                     mirror accepts and is resynced by checksum
  --discard-local    refused (BM_ERR_NOT_SUPPORTED): a primary's data is given up by a
                     role swap (promote the mirror, in place with promote --force
                     --peer, and restart this node as its mirror)
`;

export const PROMOTE_HELP = `Usage: blockmirror promote --admin HOST:PORT --volume NAME [--force] [--peer HOST:PORT]

On a running mirror: makes its copy of the volume the primary's (failover). A
new generation is recorded whose history holds the old one; the old primary is
refused from then on (fenced by lineage).

  --peer HOST:PORT   serve the volume in place (the mirror needs --nbd): the mirror
                     process starts the volume's primary on the same volume file and
                     --state-dir, serves it read-write on its --nbd (export name = volume
                     name) and mirrors it (sync) to the mirror at HOST:PORT, typically
                     the old primary's node restarted as blockmirror mirror (until it
                     is reachable the primary journals and retries). Link settings
                     (--heartbeat-interval, --stale-after, --probation, --secret-file,
                     --tls-*) are the mirror's own. Prints "volume NAME promoted
                     generation=… serving nbd://HOST:PORT/NAME peer=HOST:PORT". If the
                     primary cannot start, the promotion stays recorded, the mirror keeps
                     the volume read-only and the error says why: promote --peer again.
  without --peer     only the promotion is recorded: stop this mirror and start it as
                     the volume's primary on the same volume file and --state-dir.

Without --force the primary must have handed the volume over (blockmirror
demote); --force when the primary is lost (its writes not yet mirrored are lost
with it). The mirror's image must be up-to-date either way.
`;

export const DEMOTE_HELP = `Usage: blockmirror demote --admin HOST:PORT --volume NAME [--timeout MS]

On a running primary: stops writes to the volume (its NBD export answers EPERM),
drains everything to the mirror (at most --timeout MS, default 30000; if that
fails the volume is writable again) and hands the volume over. Then promote the
mirror, and restart this node as the mirror of the new primary (failback).
`;

export const DEMO_HELP = `Usage: blockmirror demo

Starts a mirror target and a primary in this process on loopback, with file
volumes in a temporary directory and an NBD export; writes through NBD, cuts
the replication link, keeps writing, heals it, waits for in-sync, compares
both images by SHA-256, prints a status table, cleans up and exits 0.
`;

type Values = Record<string, string | boolean | string[] | boolean[] | undefined>;

/** Runs parseArgs (strict) and turns its errors into usage errors; refuses repeated single-value flags. */
function parse(command: string, argv: string[], options: NonNullable<ParseArgsConfig['options']>): Values {
  let result;
  try {
    result = parseArgs({ args: argv, options, strict: true, allowPositionals: false, tokens: true });
  } catch (error) {
    const code = (error as { code?: unknown }).code;
    const message = error instanceof Error ? error.message : String(error);
    const first = message.split('. ')[0]!.replace(/\.$/, '');
    let text: string;
    if (code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION') {
      const m = /'([^']+)'/.exec(message);
      text = `unknown option ${m?.[1] ?? first}`;
    } else if (code === 'ERR_PARSE_ARGS_UNEXPECTED_POSITIONAL') {
      const m = /'([^']+)'/.exec(message);
      text = `unexpected argument ${m === null ? '' : JSON.stringify(m[1])}`.trim();
    } else {
      text = first;
    }
    throw usageError(`${text} (see: blockmirror ${command} --help)`);
  }
  const seen = new Set<string>();
  for (const token of result.tokens ?? []) {
    if (token.kind !== 'option') continue;
    const spec = options[token.name];
    if (spec?.multiple === true) continue;
    if (seen.has(token.name)) throw usageError(`--${token.name} given more than once`);
    seen.add(token.name);
  }
  return result.values as Values;
}

function str(values: Values, name: string): string | undefined {
  const v = values[name];
  return typeof v === 'string' ? v : undefined;
}

function required(values: Values, name: string, command: string): string {
  const v = str(values, name);
  if (v === undefined) throw usageError(`missing --${name} (see: blockmirror ${command} --help)`);
  return v;
}

/**
 * Parses `HOST:PORT`, `[IPv6]:PORT` or `PORT` (host `defaultHost`).
 * `allowZero`: port 0 means "any free port" (for listening addresses).
 */
export function parseHostPort(value: string, flag: string, allowZero: boolean, defaultHost = '127.0.0.1'): HostPort {
  let host: string;
  let portText: string;
  const v6 = /^\[([^\]]+)\]:(\d+)$/.exec(value);
  if (v6 !== null) {
    host = v6[1]!;
    portText = v6[2]!;
  } else if (/^\d+$/.test(value)) {
    host = defaultHost;
    portText = value;
  } else {
    const i = value.lastIndexOf(':');
    if (i <= 0 || value.indexOf(':') !== i) throw usageError(`${flag}: expected HOST:PORT, [IPv6]:PORT or PORT, got ${JSON.stringify(value)}`);
    host = value.slice(0, i);
    portText = value.slice(i + 1);
  }
  if (!/^\d{1,5}$/.test(portText)) throw usageError(`${flag}: invalid port in ${JSON.stringify(value)}`);
  const port = Number(portText);
  const min = allowZero ? 0 : 1;
  if (port < min || port > 65535) throw usageError(`${flag}: port must be from ${min} to 65535, got ${port}`);
  if (host.length === 0 || /\s/.test(host)) throw usageError(`${flag}: invalid host in ${JSON.stringify(value)}`);
  return { host, port };
}

/** `host:port`, with brackets around IPv6 hosts. */
export function formatHostPort(a: HostPort): string {
  return a.host.includes(':') ? `[${a.host}]:${a.port}` : `${a.host}:${a.port}`;
}

/** Block size of CLI volume files. */
export const CLI_BLOCK_SIZE = 512;

/**
 * Parses `NAME=PATH[:SIZE]` or `NAME=NBD-URI`. The text after the last `:` of
 * PATH[:SIZE] is the SIZE (so a path must not contain `:`); an NBD URI
 * (`nbd://…`, `nbd+unix://…`) is taken whole (its size is the export's).
 */
export function parseVolumeSpec(value: string): VolumeSpec {
  const eq = value.indexOf('=');
  if (eq <= 0) throw usageError(`--volume: expected NAME=PATH[:SIZE] or NAME=nbd://HOST:PORT/EXPORT, got ${JSON.stringify(value)}`);
  const name = value.slice(0, eq);
  try {
    checkVolumeName(name);
  } catch (error) {
    throw usageError(`--volume: ${isBlockMirrorError(error) ? error.message : String(error)}`);
  }
  let rest = value.slice(eq + 1);
  if (isNbdUri(rest)) {
    try {
      return { name, path: rest, nbd: parseNbdUri(rest) };
    } catch (error) {
      throw usageError(`--volume ${name}: ${isBlockMirrorError(error) ? error.message : String(error)}`);
    }
  }
  let size: number | undefined;
  const colon = rest.lastIndexOf(':');
  if (colon >= 0) {
    const sizeText = rest.slice(colon + 1);
    rest = rest.slice(0, colon);
    try {
      size = parseSize(sizeText);
    } catch (error) {
      throw usageError(`--volume ${name}: ${isBlockMirrorError(error) ? error.message : String(error)}`);
    }
    if (size === 0) throw usageError(`--volume ${name}: size must be greater than 0`);
    if (size % CLI_BLOCK_SIZE !== 0) throw usageError(`--volume ${name}: size ${size} is not a multiple of ${CLI_BLOCK_SIZE} bytes`);
  }
  if (rest.length === 0) throw usageError(`--volume ${name}: missing PATH (expected NAME=PATH[:SIZE])`);
  const spec: VolumeSpec = { name, path: rest };
  if (size !== undefined) spec.size = size;
  return spec;
}

function volumes(values: Values, command: string): VolumeSpec[] {
  const raw = values.volume;
  const list = Array.isArray(raw) ? raw.filter((v): v is string => typeof v === 'string') : [];
  if (list.length === 0) throw usageError(`at least one --volume NAME=PATH[:SIZE] is required (see: blockmirror ${command} --help)`);
  const out = list.map(parseVolumeSpec);
  const names = new Set<string>();
  const paths = new Set<string>();
  for (const v of out) {
    if (names.has(v.name)) throw usageError(`--volume ${v.name} given more than once`);
    if (paths.has(v.path)) throw usageError(`--volume ${v.name}: path ${v.path} is used by another volume`);
    names.add(v.name);
    paths.add(v.path);
  }
  return out;
}

/** A positive integer of milliseconds (1 … 2^31−1). */
export function parseMs(value: string, flag: string): number {
  if (!/^\d+$/.test(value)) throw usageError(`${flag}: expected a whole number of milliseconds, got ${JSON.stringify(value)}`);
  const n = Number(value);
  if (n < 1 || n > 2 ** 31 - 1) throw usageError(`${flag}: must be from 1 to ${2 ** 31 - 1} ms, got ${value}`);
  return n;
}

function serverConfig(values: Values, command: string): ServerConfig {
  const config: ServerConfig = { volumes: volumes(values, command) };
  const nbd = str(values, 'nbd');
  if (nbd !== undefined) config.nbd = parseHostPort(nbd, '--nbd', true);
  const admin = str(values, 'admin');
  if (admin !== undefined) config.admin = parseHostPort(admin, '--admin', true);
  const secretFile = str(values, 'secret-file');
  if (secretFile !== undefined) {
    if (secretFile.length === 0) throw usageError('--secret-file: empty path');
    config.secretFile = secretFile;
  }
  const hb = str(values, 'heartbeat-interval');
  if (hb !== undefined) config.heartbeatInterval = parseMs(hb, '--heartbeat-interval');
  const stale = str(values, 'stale-after');
  if (stale !== undefined) config.staleAfter = parseMs(stale, '--stale-after');
  const probation = str(values, 'probation');
  if (probation !== undefined) config.probation = parseMs(probation, '--probation');
  if ((config.heartbeatInterval !== undefined || config.staleAfter !== undefined) && (config.staleAfter ?? DEFAULT_STALE_AFTER) <= (config.heartbeatInterval ?? DEFAULT_HEARTBEAT_INTERVAL)) {
    throw usageError(
      `--stale-after (${config.staleAfter ?? `default ${DEFAULT_STALE_AFTER}`} ms) must be longer than --heartbeat-interval (${config.heartbeatInterval ?? `default ${DEFAULT_HEARTBEAT_INTERVAL}`} ms)`,
    );
  }
  const stateDir = str(values, 'state-dir');
  if (stateDir !== undefined) {
    if (stateDir.length === 0) throw usageError('--state-dir: empty directory path');
    config.stateDir = stateDir;
  }
  securityFlags(values, config);
  if (values['scan-zeros'] === true) config.scanZeros = true;
  if (config.stateDir === undefined && config.volumes.every((v) => v.nbd !== undefined)) {
    throw usageError('--state-dir DIR is required when every volume is on an NBD server (its default lies beside the first volume file)');
  }
  return config;
}

function count(value: string, flag: string, max: number): number {
  if (!/^\d+$/.test(value) || Number(value) < 1 || Number(value) > max) throw usageError(`${flag} must be a whole number from 1 to ${max}, got ${JSON.stringify(value)}`);
  return Number(value);
}

/** The TLS, admin-access and limit flags shared by both commands. */
function securityFlags(values: Values, config: ServerConfig): void {
  const cert = str(values, 'tls-cert');
  const key = str(values, 'tls-key');
  const ca = str(values, 'tls-ca');
  const peers = (values['tls-peer'] as string[] | undefined) ?? [];
  const given = [cert, key, ca].filter((v) => v !== undefined).length;
  if (given > 0 && given < 3) throw usageError('--tls-cert, --tls-key and --tls-ca go together (mutual TLS needs all three)');
  for (const p of peers) if (p.trim() === '') throw usageError('--tls-peer: empty name');
  if (cert !== undefined && key !== undefined && ca !== undefined) {
    if (cert === '' || key === '' || ca === '') throw usageError('--tls-cert, --tls-key, --tls-ca: empty path');
    config.tls = { cert, key, ca, peers };
  } else if (peers.length > 0) {
    throw usageError('--tls-peer needs --tls-cert, --tls-key and --tls-ca');
  }
  if (values['nbd-tls-only'] === true) config.nbdTls = 'only';
  else if (values['nbd-tls'] === true) config.nbdTls = 'optional';
  if (config.nbdTls !== undefined && config.tls === undefined) throw usageError('--nbd-tls and --nbd-tls-only need --tls-cert, --tls-key and --tls-ca');
  if (config.nbdTls !== undefined && config.nbd === undefined) throw usageError('--nbd-tls and --nbd-tls-only need --nbd');
  const maxConn = str(values, 'nbd-max-connections');
  if (maxConn !== undefined) config.nbdMaxConnections = count(maxConn, '--nbd-max-connections', 100_000);
  const inFlight = str(values, 'nbd-max-in-flight');
  if (inFlight !== undefined) config.nbdMaxInFlight = positiveSize(inFlight, '--nbd-max-in-flight');
  const tokenFile = str(values, 'admin-token-file');
  if (tokenFile !== undefined) {
    if (tokenFile === '') throw usageError('--admin-token-file: empty path');
    config.adminTokenFile = tokenFile;
  }
  if (values['admin-tls'] === true) {
    if (config.tls === undefined) throw usageError('--admin-tls needs --tls-cert, --tls-key and --tls-ca');
    config.adminTls = true;
  }
  if (values['metrics-open'] === true) config.metricsOpen = true;
  if ((config.adminTokenFile !== undefined || config.adminTls === true || config.metricsOpen === true) && config.admin === undefined) {
    throw usageError('--admin-token-file, --admin-tls and --metrics-open need --admin');
  }
}

const SERVER_OPTIONS = {
  'tls-cert': { type: 'string' },
  'tls-key': { type: 'string' },
  'tls-ca': { type: 'string' },
  'tls-peer': { type: 'string', multiple: true },
  'nbd-tls': { type: 'boolean' },
  'nbd-tls-only': { type: 'boolean' },
  'nbd-max-connections': { type: 'string' },
  'nbd-max-in-flight': { type: 'string' },
  'admin-token-file': { type: 'string' },
  'admin-tls': { type: 'boolean' },
  'metrics-open': { type: 'boolean' },
  volume: { type: 'string', multiple: true },
  nbd: { type: 'string' },
  admin: { type: 'string' },
  'secret-file': { type: 'string' },
  'heartbeat-interval': { type: 'string' },
  'stale-after': { type: 'string' },
  probation: { type: 'string' },
  'state-dir': { type: 'string' },
  'scan-zeros': { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
} as const;

function parseMirror(argv: string[]): Command {
  const values = parse('mirror', argv, { ...SERVER_OPTIONS, listen: { type: 'string' }, 'max-sessions': { type: 'string' } });
  if (values.help === true) return { kind: 'help', text: MIRROR_HELP };
  const listen = parseHostPort(required(values, 'listen', 'mirror'), '--listen', true);
  const config: MirrorConfig = { ...serverConfig(values, 'mirror'), listen };
  const sessions = str(values, 'max-sessions');
  if (sessions !== undefined) config.maxSessions = count(sessions, '--max-sessions', 100_000);
  return { kind: 'mirror', config };
}

function parsePrimary(argv: string[]): Command {
  const values = parse('primary', argv, {
    ...SERVER_OPTIONS,
    peer: { type: 'string' },
    mode: { type: 'string' },
    connections: { type: 'string' },
    journal: { type: 'string' },
    'drain-timeout': { type: 'string' },
    'no-payload-checksum': { type: 'boolean' },
    'cycle-interval': { type: 'string' },
    bandwidth: { type: 'string' },
    'initial-sync': { type: 'string' },
    'assume-clean': { type: 'boolean' },
    'resync-rate': { type: 'string' },
  });
  if (values.help === true) return { kind: 'help', text: PRIMARY_HELP };
  const peer = parseHostPort(required(values, 'peer', 'primary'), '--peer', false);
  const modeText = str(values, 'mode') ?? 'sync';
  if (modeText !== 'sync' && modeText !== 'async' && modeText !== 'cycle') throw usageError(`--mode must be sync, async or cycle, got ${JSON.stringify(modeText)}`);
  const config: PrimaryConfig = {
    ...serverConfig(values, 'primary'),
    peer,
    mode: modeText,
    drainTimeout: DEFAULT_DRAIN_TIMEOUT,
  };
  const connections = str(values, 'connections');
  if (connections !== undefined) {
    if (!/^\d+$/.test(connections) || Number(connections) < 1 || Number(connections) > 64) {
      throw usageError(`--connections must be a whole number from 1 to 64, got ${JSON.stringify(connections)}`);
    }
    config.connections = Number(connections);
  }
  const journal = str(values, 'journal');
  if (journal !== undefined) {
    if (journal.length === 0) throw usageError('--journal: empty directory path');
    config.journalDir = journal;
  }
  if (values['no-payload-checksum'] === true) config.noPayloadChecksum = true;
  const drain = str(values, 'drain-timeout');
  if (drain !== undefined) config.drainTimeout = parseMs(drain, '--drain-timeout');
  const initialSync = str(values, 'initial-sync');
  if (initialSync !== undefined) {
    if (initialSync !== 'full' && initialSync !== 'checksum' && initialSync !== 'none') throw usageError(`--initial-sync must be checksum, full or none, got ${JSON.stringify(initialSync)}`);
    if (config.mode === 'cycle') throw usageError('--initial-sync applies to --mode sync and async only (the first cycle copies the whole volume)');
    config.initialSync = initialSync;
  }
  if (values['assume-clean'] === true) {
    if (config.mode === 'cycle') throw usageError('--assume-clean applies to --mode sync and async only (the first cycle copies the whole volume)');
    if (initialSync !== undefined && initialSync !== 'none') throw usageError(`--assume-clean contradicts --initial-sync ${initialSync}`);
    config.initialSync = 'none';
  }
  const rate = str(values, 'resync-rate');
  if (rate !== undefined) {
    if (config.mode === 'cycle') throw usageError('--resync-rate applies to --mode sync and async only (cycle mode: --bandwidth)');
    config.resyncRate = positiveSize(rate, '--resync-rate');
  }
  cycleFlags(values, config);
  return { kind: 'primary', config };
}

/** `--cycle-interval` and `--bandwidth` (cycle mode only); refuses the per-write flags in cycle mode. */
function cycleFlags(values: Values, config: PrimaryConfig): void {
  const interval = str(values, 'cycle-interval');
  const bandwidth = str(values, 'bandwidth');
  if (config.mode !== 'cycle') {
    const stray = interval !== undefined ? '--cycle-interval' : bandwidth !== undefined ? '--bandwidth' : undefined;
    if (stray !== undefined) throw usageError(`${stray} applies to --mode cycle only`);
    return;
  }
  const perWrite = (['connections', 'heartbeat-interval', 'stale-after', 'probation'] as const).find((f) => values[f] !== undefined);
  if (perWrite !== undefined) throw usageError(`--${perWrite} applies to --mode sync and async only (a cycle source uses one connection and reconnects by itself)`);
  if (config.journalDir === undefined) {
    const remote = config.volumes.find((v) => v.nbd !== undefined);
    if (remote !== undefined) throw usageError(`--mode cycle with volume ${remote.name} on an NBD server needs --journal DIR (where its layer files live)`);
  }
  if (interval !== undefined) config.cycleInterval = parseMs(interval, '--cycle-interval');
  if (bandwidth !== undefined) config.bandwidth = positiveSize(bandwidth, '--bandwidth');
}

/** A rate in bytes per second (`64M`, `1G`, `4096`), at least 1. */
function positiveSize(value: string, flag: string): number {
  let bytes: number;
  try {
    bytes = parseSize(value);
  } catch (error) {
    throw usageError(`${flag}: ${error instanceof Error ? error.message : String(error)}`);
  }
  if (bytes < 1) throw usageError(`${flag} must be at least 1 byte per second`);
  return bytes;
}

function parseStatus(argv: string[]): Command {
  const values = parse('status', argv, {
    admin: { type: 'string' },
    json: { type: 'boolean' },
    help: { type: 'boolean', short: 'h' },
  });
  if (values.help === true) return { kind: 'help', text: STATUS_HELP };
  const admin = parseHostPort(required(values, 'admin', 'status'), '--admin', false);
  return { kind: 'status', config: { admin, json: values.json === true } };
}

function parseRoleCommand(kind: 'resolve' | 'promote' | 'demote', argv: string[]): Command {
  const help = kind === 'resolve' ? RESOLVE_HELP : kind === 'promote' ? PROMOTE_HELP : DEMOTE_HELP;
  const options: NonNullable<ParseArgsConfig['options']> = { admin: { type: 'string' }, volume: { type: 'string' }, help: { type: 'boolean', short: 'h' } };
  if (kind === 'resolve') {
    options['discard-local'] = { type: 'boolean' };
    options['discard-remote'] = { type: 'boolean' };
  } else if (kind === 'promote') {
    options.force = { type: 'boolean' };
    options.peer = { type: 'string' };
  } else options.timeout = { type: 'string' };
  const values = parse(kind, argv, options);
  if (values.help === true) return { kind: 'help', text: help };
  const admin = parseHostPort(required(values, 'admin', kind), '--admin', false);
  const volume = required(values, 'volume', kind);
  const config: RoleCommandConfig = { admin, volume };
  if (kind === 'resolve') {
    const local = values['discard-local'] === true;
    const remote = values['discard-remote'] === true;
    if (local === remote) throw usageError('resolve needs exactly one of --discard-local and --discard-remote');
    config.discard = local ? 'local' : 'remote';
  } else if (kind === 'promote') {
    config.force = values.force === true;
    const peer = str(values, 'peer');
    if (peer !== undefined) config.peer = parseHostPort(peer, '--peer', false);
  } else {
    const timeout = str(values, 'timeout');
    if (timeout !== undefined) config.timeout = parseMs(timeout, '--timeout');
  }
  return { kind, config };
}

function parseDemo(argv: string[]): Command {
  const values = parse('demo', argv, { help: { type: 'boolean', short: 'h' } });
  if (values.help === true) return { kind: 'help', text: DEMO_HELP };
  return { kind: 'demo' };
}

/**
 * Parses the arguments after `blockmirror`.
 * @throws {BlockMirrorError} a usage error (`details.usage`), code `BM_ERR_INVALID_ARGUMENT`.
 */
export function parseCommandLine(argv: readonly string[]): Command {
  const [first, ...rest] = argv;
  switch (first) {
    case undefined:
      throw usageError('missing command: mirror, primary, status, resolve, promote, demote or demo (see: blockmirror --help)');
    case '-h':
    case '--help':
    case 'help':
      if (argv.length > 1 && first !== 'help') throw usageError('--help takes no arguments');
      if (first === 'help' && rest.length > 0) return parseCommandLine([rest[0]!, '--help']);
      return { kind: 'help', text: MAIN_HELP };
    case '-V':
    case '--version':
      if (argv.length > 1) throw usageError('--version takes no arguments');
      return { kind: 'version' };
    case 'mirror':
      return parseMirror(rest);
    case 'primary':
      return parsePrimary(rest);
    case 'status':
      return parseStatus(rest);
    case 'resolve':
    case 'promote':
    case 'demote':
      return parseRoleCommand(first, rest);
    case 'demo':
      return parseDemo(rest);
    default:
      if (first.startsWith('-')) throw usageError(`unknown option ${first} before the command (see: blockmirror --help)`);
      throw usageError(`unknown command ${JSON.stringify(first)}: use mirror, primary, status, resolve, promote, demote or demo (see: blockmirror --help)`);
  }
}
