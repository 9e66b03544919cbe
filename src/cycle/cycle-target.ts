/**
 * {@link CycleTarget}: a listener that receives freeze/copy cycles into its
 * volumes (SPEC 30, 31, 33). Create it with {@link createCycleTarget}.
 *
 * @module
 */
import { randomBytes } from 'node:crypto';
import { EventEmitter } from 'eventemitter3';
import createDebug from 'debug';
import { BlockMirrorError, invalidArgument, toBlockMirrorError } from '../errors.js';
import { systemClock, type Clock } from '../clock.js';
import type { BlockDevice } from '../device/block-device.js';
import { checkRange } from '../device/range.js';
import type { Transport, TransportAddress, TransportConnection, TransportServer } from '../transport/transport.js';
import { TcpTransport } from '../transport/tcp.js';
import { DEFAULT_CODEC_LIMITS, type CodecLimits } from '../codec/frame.js';
import { preAuthLimits } from '../link/pre-auth.js';
import { FramedConnection } from '../link/framed-connection.js';
import { serverHandshake } from '../link/handshake.js';
import { checkVolumeName, secretBytes } from '../replication/options.js';
import { CYCLE_FEATURE, CycleHost, type CycleVolumeStatus } from './cycle-host.js';
import type { FileSystem } from '../storage/file-system.js';
import type { StagingStoreHooks, TargetImageState } from './staging-store.js';

const log = createDebug('blockmirror:cycle');

/** Options of {@link createCycleTarget}. */
export interface CycleTargetOptions {
  /** Where to listen (port 0: any free port; see `target.address`). */
  listen: TransportAddress;
  /** Directory of the target's state, staging files and commit markers (must exist). */
  dir: string;
  /** Hosted volumes: name and image device (the device is not closed by the target). */
  volumes: Array<{ name: string; device: BlockDevice }>;
  /** Transport (default: a new {@link TcpTransport}). */
  transport?: Transport;
  /** Shared secret: every connection must prove it (HMAC-SHA256 challenge–response). */
  secret?: string | Uint8Array;
  /** Node id (default: random). */
  nodeId?: string;
  clock?: Clock;
  limits?: Partial<CodecLimits>;
  /** Handshake timeout in ms (default 10000). */
  handshakeTimeout?: number;
  /** Staged writes in flight per connection before reading pauses (default 64). */
  maxInFlight?: number;
  /** Test hooks of the staging store (crash injection). */
  hooks?: StagingStoreHooks;
  /** Backoff between attempts of a merge that failed after its commit marker, in ms (default 500–30000). */
  mergeRetry?: { min: number; max: number };
  /** How long a read waits for a failed merge to be retried to completion before failing with `BM_ERR_IO`, in ms (default 30000). */
  readTimeout?: number;
  /** File system of the state, staging files and markers (default: the real one; a simulation passes files in memory). */
  fs?: FileSystem;
}

/** Plain-object status of a target volume. */
export interface CycleTargetVolumeStatus extends CycleVolumeStatus {
  name: string;
  size: number;
}

/** Plain-object status of a {@link CycleTarget}. */
export interface CycleTargetStatus {
  role: 'cycle-target';
  node: string;
  address: string;
  volumes: Record<string, CycleTargetVolumeStatus>;
}

/** Events of a {@link CycleTarget}. */
export interface CycleTargetEvents {
  /** A source completed the handshake. */
  connection: [info: { node: string; address: TransportAddress; volumes: string[] }];
  /** A connection failed the handshake or was closed for a protocol error. */
  'connection-error': [error: BlockMirrorError, address: TransportAddress];
  /** A transfer began (its staging is ready). */
  begin: [info: { source: string; to: number; volumes: string[] }];
  /** The commit marker of a transfer is durable; the merge into the images starts. */
  'merge-start': [info: { to: number; volumes: string[] }];
  /** The images hold freeze `to` (durably). */
  committed: [info: { source: string; to: number; volumes: string[]; bytes: number }];
  /** A transfer was refused or failed; the images kept their freeze (or, after a `merge-error`, move to `to` once a retry completes the merge). */
  'transfer-error': [info: { source: string; to: number; error: BlockMirrorError }];
  /** A merge failed after its commit marker: reads wait, the merge is retried in `retryInMs`. */
  'merge-error': [info: { to: number; volumes: string[]; error: BlockMirrorError; attempts: number; retryInMs: number | undefined }];
  /** A retry completed a failed merge: the images hold freeze `to` (durably). */
  'merge-recovered': [info: { to: number; volumes: string[]; attempts: number }];
}

/** A hosted volume, read-only (only cycles write it). */
export class CycleTargetVolume {
  readonly name: string;
  readonly #target: CycleTarget;
  readonly #host: CycleHost;

  /** @internal */
  constructor(name: string, target: CycleTarget, host: CycleHost) {
    this.name = name;
    this.#target = target;
    this.#host = host;
  }

  get device(): BlockDevice {
    return this.#host.device(this.name);
  }

  get size(): number {
    return this.device.size;
  }

  get blockSize(): number {
    return this.device.blockSize;
  }

  /** What the image holds: lineage, freeze number, seeding. */
  image(): TargetImageState {
    return this.#host.image(this.name);
  }

  /**
   * Reads the image; waits while a merge runs, so it never returns a
   * half-merged image.
   *
   * @throws {BlockMirrorError} `BM_ERR_IO` when a merge failed and was not
   *   retried to completion within the target's `readTimeout`.
   */
  async read(offset: number, length: number): Promise<Buffer> {
    checkRange(this.device, offset, length);
    return this.#host.read(this.name, offset, length);
  }

  /** Always refused: only cycles write a target volume. */
  async write(): Promise<never> {
    throw new BlockMirrorError('BM_ERR_READ_ONLY', `volume ${this.name} is a cycle target: only its source writes it`);
  }

  status(): CycleTargetVolumeStatus {
    return this.#target._volumeStatus(this.name);
  }
}

/** A cycle target: see {@link createCycleTarget}. */
export class CycleTarget extends EventEmitter<CycleTargetEvents> {
  readonly nodeId: string;
  readonly #options: CycleTargetOptions;
  readonly #transport: Transport;
  readonly #clock: Clock;
  readonly #secret: Uint8Array | undefined;
  readonly #limits: CodecLimits;
  readonly #handshakeTimeout: number;
  readonly #connections = new Set<FramedConnection>();
  #host: CycleHost | undefined;
  #server: TransportServer | undefined;
  #closed = false;

  /** @internal use {@link createCycleTarget} */
  constructor(options: CycleTargetOptions) {
    super();
    if (options === null || typeof options !== 'object') throw invalidArgument('options must be an object');
    if (typeof options.dir !== 'string' || options.dir === '') throw invalidArgument('dir must be a non-empty string');
    if (!Array.isArray(options.volumes) || options.volumes.length === 0) throw invalidArgument('volumes must be a non-empty array');
    const names = new Set<string>();
    for (const v of options.volumes) {
      if (v === null || typeof v !== 'object') throw invalidArgument('each volume must be an object');
      checkVolumeName(v.name);
      if (names.has(v.name)) throw invalidArgument(`volume ${v.name} is listed twice`);
      if (v.device === null || typeof v.device !== 'object' || typeof v.device.write !== 'function') throw invalidArgument(`volume ${v.name}: device must be a BlockDevice`);
      names.add(v.name);
    }
    this.#options = options;
    this.#transport = options.transport ?? new TcpTransport();
    this.#clock = options.clock ?? systemClock;
    this.#secret = secretBytes(options.secret);
    this.#limits = { ...DEFAULT_CODEC_LIMITS, ...options.limits };
    this.#handshakeTimeout = options.handshakeTimeout ?? 10000;
    this.nodeId = options.nodeId ?? `cycle-target-${randomBytes(4).toString('hex')}`;
  }

  /** The bound address. */
  get address(): TransportAddress {
    if (this.#server === undefined) throw new BlockMirrorError('BM_ERR_CLOSED', 'the target is not listening');
    return this.#server.address;
  }

  /** The hosted volume called `name`; throws `BM_ERR_UNKNOWN_VOLUME`. */
  volume(name: string): CycleTargetVolume {
    const host = this.#requireHost();
    host.image(name);
    return new CycleTargetVolume(name, this, host);
  }

  /** @internal called by {@link createCycleTarget}: recovers the store (replaying interrupted merges), then listens. */
  async start(): Promise<void> {
    const host = await CycleHost.open({
      dir: this.#options.dir,
      volumes: this.#options.volumes,
      ...(this.#options.maxInFlight === undefined ? {} : { maxInFlight: this.#options.maxInFlight }),
      ...(this.#options.hooks === undefined ? {} : { hooks: this.#options.hooks }),
      ...(this.#options.mergeRetry === undefined ? {} : { mergeRetry: this.#options.mergeRetry }),
      ...(this.#options.readTimeout === undefined ? {} : { readTimeout: this.#options.readTimeout }),
      ...(this.#options.fs === undefined ? {} : { fs: this.#options.fs }),
      clock: this.#clock,
    });
    host.on('begin', (info) => this.emit('begin', info));
    host.on('merge-start', (info) => this.emit('merge-start', info));
    host.on('committed', (info) => this.emit('committed', info));
    host.on('transfer-error', (info) => this.emit('transfer-error', info));
    host.on('merge-error', (info) => this.emit('merge-error', info));
    host.on('merge-recovered', (info) => this.emit('merge-recovered', info));
    this.#host = host;
    this.#server = await this.#transport.listen(this.#options.listen);
    this.#server.on('connection', (raw) => void this.#accept(raw));
    this.#server.on('error', (error) => log('listener error: %s', error.message));
    log('cycle target %s listening on %o', this.nodeId, this.#server.address);
  }

  async #accept(raw: TransportConnection): Promise<void> {
    if (this.#closed) {
      raw.destroy();
      return;
    }
    const host = this.#requireHost();
    // bounded pre-auth buffering: handshake frames carry no payload
    const conn = new FramedConnection(raw, { limits: preAuthLimits(this.#limits) });
    this.#connections.add(conn);
    conn.once('close', () => this.#connections.delete(conn));
    try {
      const result = await serverHandshake(conn, {
        nodeId: this.nodeId,
        secret: this.#secret,
        timeout: this.#handshakeTimeout,
        clock: this.#clock,
        features: [CYCLE_FEATURE],
        accept: (hello, offers) => {
          if (!hello.features.includes(CYCLE_FEATURE)) {
            throw new BlockMirrorError('BM_ERR_NOT_SUPPORTED', 'this is a cycle target: it accepts freeze/copy cycles only, not per-write mirroring');
          }
          return host.accept(hello, offers, conn);
        },
      });
      if (conn.closed) return;
      conn.setLimits(this.#limits);
      host.serve(conn, result.hello.node, result.volumes);
      conn.once('close', (error) => {
        if (error !== undefined) this.emit('connection-error', error, raw.remoteAddress);
      });
      this.emit('connection', { node: result.hello.node, address: raw.remoteAddress, volumes: result.volumes.map((v) => v.name) });
    } catch (error) {
      const err = toBlockMirrorError(error, 'BM_ERR_PROTOCOL');
      log('handshake with %o failed: %s', raw.remoteAddress, err.message);
      this.emit('connection-error', err, raw.remoteAddress);
    }
  }

  /** @internal */
  _volumeStatus(name: string): CycleTargetVolumeStatus {
    const host = this.#requireHost();
    return { name, size: host.device(name).size, ...host.volumeStatus(name) };
  }

  /** Plain-object status (JSON-serialisable). */
  status(): CycleTargetStatus {
    const host = this.#requireHost();
    const volumes: Record<string, CycleTargetVolumeStatus> = {};
    for (const name of host.names) volumes[name] = this._volumeStatus(name);
    const addr = this.#server?.address;
    return { role: 'cycle-target', node: this.nodeId, address: addr === undefined ? '' : `${addr.host}:${addr.port}`, volumes };
  }

  /**
   * Stops listening, closes every connection (transfers being received are
   * dropped; a running merge completes). Devices are not closed.
   */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    for (const c of this.#connections) c.destroy();
    await this.#server?.close();
    await this.#host?.close();
  }

  #requireHost(): CycleHost {
    if (this.#host === undefined) throw new BlockMirrorError('BM_ERR_CLOSED', 'the target is not started');
    return this.#host;
  }
}


/**
 * Creates a cycle target: opens its store in `dir` (replaying a merge that a
 * crash interrupted, so each volume holds exactly one complete freeze image),
 * then listens for cycle sources.
 *
 * ```ts
 * const target = await createCycleTarget({
 *   listen: { host: '0.0.0.0', port: 7100 },
 *   dir: '/var/lib/blockmirror/cycle',
 *   volumes: [{ name: 'vol0', device: await FileBlockDevice.open('/srv/mirror/vol0.img', { size: 64 << 30 }) }],
 *   secret: process.env.BM_SECRET,
 * });
 * target.on('committed', ({ to, volumes }) => console.log(`${volumes} now hold freeze ${to}`));
 * ```
 *
 * @throws {BlockMirrorError} `BM_ERR_INVALID_ARGUMENT` for bad options;
 *   `BM_ERR_JOURNAL_CORRUPT` for damaged state files; `BM_ERR_ADDRESS_IN_USE`.
 */
export async function createCycleTarget(options: CycleTargetOptions): Promise<CycleTarget> {
  const target = new CycleTarget(options);
  await target.start();
  return target;
}
