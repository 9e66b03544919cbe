/**
 * {@link CycleTarget}: a listener that receives freeze/copy cycles into its
 * volumes (SPEC 30, 31, 33). Create it with {@link createCycleTarget}.
 *
 * @module
 */
import { randomBytes } from 'node:crypto';
import { EventEmitter } from 'eventemitter3';
import createDebug from 'debug';
import { BlockMirrorError, toBlockMirrorError } from '../errors.js';
import { systemClock, type Clock } from '../clock.js';
import type { BlockDevice } from '../device/block-device.js';
import { checkRange } from '../device/range.js';
import type { Transport, TransportAddress, TransportConnection, TransportServer } from '../transport/transport.js';
import { TcpTransport } from '../transport/tcp.js';
import { DEFAULT_CODEC_LIMITS, MessageType, type CodecLimits } from '../codec/frame.js';
import type { ReadyVolume, VolumeOffer } from '../codec/messages.js';
import { FramedConnection } from '../link/framed-connection.js';
import { serverHandshake } from '../link/handshake.js';
import { CycleReceiver } from './cycle-receiver.js';
import { StagingStore, type StagingStoreHooks, type TargetImageState } from './staging-store.js';

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
}

/** Plain-object status of a target volume. */
export interface CycleTargetVolumeStatus extends TargetImageState {
  name: string;
  size: number;
  /** Node id of the source sending into it, if connected. */
  source: string | undefined;
  /** Transfers committed since the target started. */
  committed: number;
  /** Bytes of data received by the last committed transfer. */
  lastTransferBytes: number;
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
  /** A transfer was refused or failed; the images kept their freeze. */
  'transfer-error': [info: { source: string; to: number; error: BlockMirrorError }];
}

/** A hosted volume, read-only (only cycles write it). */
export class CycleTargetVolume {
  readonly name: string;
  readonly #target: CycleTarget;
  readonly #store: StagingStore;

  /** @internal */
  constructor(name: string, target: CycleTarget, store: StagingStore) {
    this.name = name;
    this.#target = target;
    this.#store = store;
  }

  get device(): BlockDevice {
    return this.#store.device(this.name);
  }

  get size(): number {
    return this.device.size;
  }

  get blockSize(): number {
    return this.device.blockSize;
  }

  /** What the image holds: lineage, freeze number, seeding. */
  image(): TargetImageState {
    return this.#store.image(this.name);
  }

  /** Reads the image; waits while a merge runs, so it never returns a half-merged image. */
  async read(offset: number, length: number): Promise<Buffer> {
    checkRange(this.device, offset, length);
    await this.#store.whenStable(this.name);
    return this.device.read(offset, length);
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
  readonly #owners = new Map<string, { node: string; conn: FramedConnection }>();
  readonly #counters = new Map<string, { committed: number; lastBytes: number }>();
  #store: StagingStore | undefined;
  #server: TransportServer | undefined;
  #closed = false;

  /** @internal use {@link createCycleTarget} */
  constructor(options: CycleTargetOptions) {
    super();
    if (options === null || typeof options !== 'object') throw invalid('options must be an object');
    if (typeof options.dir !== 'string' || options.dir === '') throw invalid('dir must be a non-empty string');
    if (!Array.isArray(options.volumes) || options.volumes.length === 0) throw invalid('volumes must be a non-empty array');
    const names = new Set<string>();
    for (const v of options.volumes) {
      // eslint-disable-next-line no-control-regex
      if (v === null || typeof v !== 'object' || typeof v.name !== 'string' || v.name === '' || /[\u0000-\u001f\u007f/]/.test(v.name) || v.name.length > 255) {
        throw invalid('each volume needs a name (1–255 characters, no "/" or control characters)');
      }
      if (names.has(v.name)) throw invalid(`volume ${v.name} is listed twice`);
      if (v.device === null || typeof v.device !== 'object' || typeof v.device.write !== 'function') throw invalid(`volume ${v.name}: device must be a BlockDevice`);
      names.add(v.name);
      this.#counters.set(v.name, { committed: 0, lastBytes: 0 });
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
    const store = this.#requireStore();
    store.image(name);
    return new CycleTargetVolume(name, this, store);
  }

  /** @internal called by {@link createCycleTarget}: recovers the store (replaying interrupted merges), then listens. */
  async start(): Promise<void> {
    const hooks = this.#options.hooks ?? {};
    this.#store = await StagingStore.open(this.#options.dir, this.#options.volumes, {
      beforeMergeWrite: hooks.beforeMergeWrite,
      mergeStart: async (info) => {
        this.emit('merge-start', info);
        await hooks.mergeStart?.(info);
      },
    });
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
    const store = this.#requireStore();
    const conn = new FramedConnection(raw, { limits: this.#limits });
    this.#connections.add(conn);
    let claimed: string[] = [];
    conn.once('close', () => {
      this.#connections.delete(conn);
      for (const name of claimed) if (this.#owners.get(name)?.conn === conn) this.#owners.delete(name);
    });
    try {
      const result = await serverHandshake(conn, {
        nodeId: this.nodeId,
        secret: this.#secret,
        timeout: this.#handshakeTimeout,
        clock: this.#clock,
        accept: (hello, offers) => {
          const answer = offers.map((offer) => this.#check(hello.node, offer));
          claimed = offers.map((o) => o.name);
          for (const name of claimed) {
            const previous = this.#owners.get(name);
            // the same source reconnecting replaces its old connection
            if (previous !== undefined && previous.conn !== conn) previous.conn.destroy();
            this.#owners.set(name, { node: hello.node, conn });
          }
          return answer;
        },
      });
      if (conn.closed) return;
      const receiver = new CycleReceiver({
        conn,
        store,
        source: result.hello.node,
        offers: result.volumes,
        events: {
          begin: (info) => this.emit('begin', info),
          committed: (info) => {
            for (const name of info.volumes) this.#counters.set(name, { committed: (this.#counters.get(name)?.committed ?? 0) + 1, lastBytes: info.bytes });
            this.emit('committed', info);
          },
          transferError: (info) => this.emit('transfer-error', info),
        },
        ...(this.#options.maxInFlight === undefined ? {} : { maxInFlight: this.#options.maxInFlight }),
      });
      conn.on('frame', (frame) => {
        try {
          if (CycleReceiver.handles(frame.type)) receiver.onFrame(frame);
          else if (frame.type === MessageType.PING) conn.send(MessageType.PONG, frame.header);
          else if (frame.type !== MessageType.PONG && frame.type !== MessageType.ERROR) {
            throw new BlockMirrorError('BM_ERR_PROTOCOL', `unexpected message type ${frame.type} on a cycle connection`);
          }
        } catch (error) {
          conn.fail(toBlockMirrorError(error, 'BM_ERR_PROTOCOL'));
        }
      });
      conn.once('close', (error) => {
        if (error !== undefined) this.emit('connection-error', error, raw.remoteAddress);
      });
      this.emit('connection', { node: result.hello.node, address: raw.remoteAddress, volumes: claimed });
    } catch (error) {
      const err = toBlockMirrorError(error, 'BM_ERR_PROTOCOL');
      log('handshake with %o failed: %s', raw.remoteAddress, err.message);
      this.emit('connection-error', err, raw.remoteAddress);
    }
  }

  /** Checks an offered volume; the answer's `applied` is the freeze the image holds of the offered lineage (0: none). */
  #check(node: string, offer: VolumeOffer): ReadyVolume {
    const store = this.#requireStore();
    if (!store.names.includes(offer.name)) {
      throw new BlockMirrorError('BM_ERR_UNKNOWN_VOLUME', `this target hosts no volume named ${JSON.stringify(offer.name)}`);
    }
    const device = store.device(offer.name);
    if (device.size !== offer.size || device.blockSize !== offer.blockSize) {
      throw new BlockMirrorError('BM_ERR_VOLUME_MISMATCH', `volume ${offer.name}: source has ${offer.size} bytes / block ${offer.blockSize}, target has ${device.size} / ${device.blockSize}`, {
        details: { volume: offer.name, sourceSize: offer.size, targetSize: device.size },
      });
    }
    const owner = this.#owners.get(offer.name);
    if (owner !== undefined && owner.node !== node && !owner.conn.closed) {
      throw new BlockMirrorError('BM_ERR_VOLUME_BUSY', `volume ${offer.name} is already mirrored from ${owner.node}`);
    }
    const image = store.image(offer.name);
    const applied = image.lineage === offer.generation && !image.seeding ? image.freeze : 0;
    return { name: offer.name, applied };
  }

  /** @internal */
  _volumeStatus(name: string): CycleTargetVolumeStatus {
    const store = this.#requireStore();
    const device = store.device(name);
    const counters = this.#counters.get(name) ?? { committed: 0, lastBytes: 0 };
    const owner = this.#owners.get(name);
    return {
      name,
      size: device.size,
      ...store.image(name),
      source: owner !== undefined && !owner.conn.closed ? owner.node : undefined,
      committed: counters.committed,
      lastTransferBytes: counters.lastBytes,
    };
  }

  /** Plain-object status (JSON-serialisable). */
  status(): CycleTargetStatus {
    const store = this.#requireStore();
    const volumes: Record<string, CycleTargetVolumeStatus> = {};
    for (const name of store.names) volumes[name] = this._volumeStatus(name);
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
    await this.#store?.close();
  }

  #requireStore(): StagingStore {
    if (this.#store === undefined) throw new BlockMirrorError('BM_ERR_CLOSED', 'the target is not started');
    return this.#store;
  }
}

function invalid(message: string): BlockMirrorError {
  return new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', message);
}

function secretBytes(secret: unknown): Uint8Array | undefined {
  if (secret === undefined) return undefined;
  if (typeof secret === 'string' && secret.length > 0) return Buffer.from(secret, 'utf8');
  if (secret instanceof Uint8Array && secret.length > 0) return secret;
  throw invalid('secret must be a non-empty string or Uint8Array');
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
