/**
 * {@link CycleHost}: the receiving side of freeze/copy cycles behind any
 * listener — the staging store of the hosted volumes, which source owns
 * which volume, and one {@link CycleReceiver} per handshaken connection.
 * {@link CycleTarget} puts it behind its own port; a `MirrorTarget` with a
 * `cycle` option puts it behind the mirror port, next to per-write mirroring.
 *
 * @module
 */
import { EventEmitter } from 'eventemitter3';
import { BlockMirrorError, toBlockMirrorError } from '../errors.js';
import type { Clock } from '../clock.js';
import type { BlockDevice } from '../device/block-device.js';
import { MessageType } from '../codec/frame.js';
import type { HelloHeader, ReadyVolume, VolumeOffer } from '../codec/messages.js';
import type { FramedConnection } from '../link/framed-connection.js';
import { CycleReceiver } from './cycle-receiver.js';
import type { FileSystem } from '../storage/file-system.js';
import { StagingStore, type StagingStoreHooks, type StagingStoreOptions, type TargetImageState } from './staging-store.js';

/** Handshake feature a cycle source announces: its connection carries cycles, not mirror requests. */
export const CYCLE_FEATURE = 'cycle-v1';

/** Options of {@link CycleHost.open}. */
export interface CycleHostOptions {
  /** Directory of the state, staging files and commit markers (must exist). */
  dir: string;
  /** Hosted volumes (devices are not closed by the host). */
  volumes: Array<{ name: string; device: BlockDevice }>;
  /** Staged writes in flight per connection before reading pauses (default 64). */
  maxInFlight?: number;
  /** Test hooks of the staging store (crash injection). */
  hooks?: StagingStoreHooks;
  /** Clock of merge retries and read timeouts (default: the system clock). */
  clock?: Clock;
  /** Backoff between attempts of a merge that failed after its commit marker, in ms (default 500–30000; see `StagingStoreOptions`). */
  mergeRetry?: { min: number; max: number };
  /** How long a read waits for a failed merge to be retried to completion before failing with `BM_ERR_IO`, in ms (default 30000). */
  readTimeout?: number;
  /**
   * Asked for each offered volume: the node id of another writer that holds
   * it (a mirroring primary), or undefined. A held volume is refused with
   * `BM_ERR_VOLUME_BUSY`.
   */
  heldBy?: (name: string) => string | undefined;
  /** File system of the state, staging files and markers (default: the real one). */
  fs?: FileSystem;
  /** Transfers whose BEGIN waits to be handled, at once (default 16; more are refused with `BM_ERR_BUSY`; see `StagingStoreOptions`). */
  maxPendingTransfers?: number;
}

/** What a hosted volume's status adds about cycles. */
export interface CycleVolumeStatus extends TargetImageState {
  /** Node id of the source sending into it, if connected. */
  source: string | undefined;
  /** Transfers committed since the host started. */
  committed: number;
  /** Bytes of data received by the last committed transfer. */
  lastTransferBytes: number;
  /** Bytes of data received by all committed transfers since the host started. */
  bytesReceived: number;
  /**
   * A merge into the image failed after its commit marker: the image is
   * between two freezes, reads wait (then fail with `BM_ERR_IO`) and the
   * merge is retried until it completes. Undefined when no merge failed.
   */
  mergeError: { to: number; attempts: number; code: string; message: string; nextRetryInMs: number | undefined } | undefined;
}

/** A connected cycle source. */
export interface CycleSourcePeer {
  node: string;
  session: string;
  /** Host it connected from. */
  address: string;
  volumes: string[];
}

/** Events of a {@link CycleHost}. */
export interface CycleHostEvents {
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

/** See the module notes. Open with {@link CycleHost.open}. */
export class CycleHost extends EventEmitter<CycleHostEvents> {
  readonly #store: StagingStore;
  readonly #options: CycleHostOptions;
  readonly #owners = new Map<string, { node: string; session: string; conn: FramedConnection }>();
  readonly #counters = new Map<string, { committed: number; lastBytes: number; totalBytes: number }>();

  private constructor(store: StagingStore, options: CycleHostOptions) {
    super();
    this.#store = store;
    this.#options = options;
    for (const name of store.names) this.#counters.set(name, { committed: 0, lastBytes: 0, totalBytes: 0 });
  }

  /**
   * Opens the staging store in `dir`, replaying a merge that a crash
   * interrupted, so that each volume holds exactly one complete freeze image.
   *
   * @throws {BlockMirrorError} `BM_ERR_JOURNAL_CORRUPT` for damaged state files.
   */
  static async open(options: CycleHostOptions): Promise<CycleHost> {
    // the store replays an interrupted merge before the host exists: no one listens to that one
    const opened: { host?: CycleHost } = {};
    const hooks = options.hooks ?? {};
    const storeOptions: StagingStoreOptions = {
      hooks: {
        beforeMergeWrite: hooks.beforeMergeWrite,
        mergeStart: async (info) => {
          opened.host?.emit('merge-start', info);
          await hooks.mergeStart?.(info);
        },
      },
      events: {
        mergeError: (info) => opened.host?.emit('merge-error', info),
        mergeRecovered: (info) => opened.host?.emit('merge-recovered', info),
      },
      ...(options.clock === undefined ? {} : { clock: options.clock }),
      ...(options.mergeRetry === undefined ? {} : { mergeRetry: options.mergeRetry }),
      ...(options.readTimeout === undefined ? {} : { readTimeout: options.readTimeout }),
      ...(options.fs === undefined ? {} : { fs: options.fs }),
      ...(options.maxPendingTransfers === undefined ? {} : { maxPendingTransfers: options.maxPendingTransfers }),
    };
    const store = await StagingStore.open(options.dir, options.volumes, storeOptions);
    opened.host = new CycleHost(store, options);
    return opened.host;
  }

  /** Names of the hosted volumes. */
  get names(): string[] {
    return this.#store.names;
  }

  /** The image device of `name` (written only by merges). */
  device(name: string): BlockDevice {
    return this.#store.device(name);
  }

  /** What the image of `name` holds: lineage, freeze number, seeding. */
  image(name: string): TargetImageState {
    return this.#store.image(name);
  }

  /**
   * Resolves when no merge into `name` runs and the image is one complete
   * freeze (reads then see it). Rejects with `BM_ERR_IO` when a failed merge
   * was not retried to completion within `readTimeout`.
   */
  whenStable(name: string): Promise<void> {
    return this.#store.whenStable(name);
  }

  /**
   * Reads the image of `name` once it is one complete freeze; a merge that
   * starts meanwhile waits for the read (see `StagingStore.read`).
   *
   * @throws {BlockMirrorError} as {@link whenStable}.
   */
  read(name: string, offset: number, length: number): Promise<Buffer> {
    return this.#store.read(name, offset, length);
  }

  /** Node id of the source connected to `name`, if any. */
  sourceOf(name: string): string | undefined {
    const owner = this.#owners.get(name);
    return owner !== undefined && !owner.conn.closed ? owner.node : undefined;
  }

  /**
   * The handshake decision for a cycle source's offers: checks each volume
   * and claims it for `conn` (a source reconnecting replaces its old
   * connection). The answer's `applied` is the freeze the image holds of the
   * offered lineage (0: none).
   *
   * @throws {BlockMirrorError} `BM_ERR_UNKNOWN_VOLUME`, `BM_ERR_VOLUME_MISMATCH`, `BM_ERR_VOLUME_BUSY`.
   */
  accept(hello: HelloHeader, offers: readonly VolumeOffer[], conn: FramedConnection): ReadyVolume[] {
    const answer = offers.map((offer) => this.#check(hello.node, offer));
    const names = offers.map((o) => o.name);
    for (const name of names) {
      const previous = this.#owners.get(name);
      if (previous !== undefined && previous.conn !== conn) previous.conn.destroy();
      this.#owners.set(name, { node: hello.node, session: hello.session, conn });
    }
    conn.once('close', () => {
      for (const name of names) if (this.#owners.get(name)?.conn === conn) this.#owners.delete(name);
    });
    return answer;
  }

  /** Receives the cycles of a connection whose handshake {@link accept} answered. */
  serve(conn: FramedConnection, source: string, offers: VolumeOffer[]): void {
    const receiver = new CycleReceiver({
      conn,
      store: this.#store,
      source,
      offers,
      events: {
        begin: (info) => this.emit('begin', info),
        committed: (info) => {
          for (const name of info.volumes) {
            const c = this.#counters.get(name)!;
            this.#counters.set(name, { committed: c.committed + 1, lastBytes: info.bytes, totalBytes: c.totalBytes + info.bytes });
          }
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
  }

  #check(node: string, offer: VolumeOffer): ReadyVolume {
    if (!this.#store.names.includes(offer.name)) {
      throw new BlockMirrorError('BM_ERR_UNKNOWN_VOLUME', `this target hosts no volume named ${JSON.stringify(offer.name)}`);
    }
    const device = this.#store.device(offer.name);
    if (device.size !== offer.size || device.blockSize !== offer.blockSize) {
      throw new BlockMirrorError('BM_ERR_VOLUME_MISMATCH', `volume ${offer.name}: source has ${offer.size} bytes / block ${offer.blockSize}, target has ${device.size} / ${device.blockSize}`, {
        details: { volume: offer.name, sourceSize: offer.size, targetSize: device.size },
      });
    }
    const owner = this.sourceOf(offer.name);
    if (owner !== undefined && owner !== node) throw new BlockMirrorError('BM_ERR_VOLUME_BUSY', `volume ${offer.name} is already mirrored from ${owner}`);
    const writer = this.#options.heldBy?.(offer.name);
    if (writer !== undefined) throw new BlockMirrorError('BM_ERR_VOLUME_BUSY', `volume ${offer.name} is mirrored per write from ${writer}`);
    const image = this.#store.image(offer.name);
    const applied = image.lineage === offer.generation && !image.seeding ? image.freeze : 0;
    return { name: offer.name, applied };
  }

  /** Cycle status of a hosted volume. */
  volumeStatus(name: string): CycleVolumeStatus {
    const counters = this.#counters.get(name) ?? { committed: 0, lastBytes: 0, totalBytes: 0 };
    const failure = this.#store.mergeFailure(name);
    return {
      ...this.#store.image(name),
      source: this.sourceOf(name),
      committed: counters.committed,
      lastTransferBytes: counters.lastBytes,
      bytesReceived: counters.totalBytes,
      mergeError:
        failure === undefined
          ? undefined
          : { to: failure.to, attempts: failure.attempts, code: failure.error.code, message: failure.error.message, nextRetryInMs: failure.nextRetryInMs },
    };
  }

  /** The connected cycle sources. */
  sources(): CycleSourcePeer[] {
    const byConn = new Map<FramedConnection, CycleSourcePeer>();
    for (const [name, owner] of this.#owners) {
      if (owner.conn.closed) continue;
      let peer = byConn.get(owner.conn);
      if (peer === undefined) {
        peer = { node: owner.node, session: owner.session, address: owner.conn.connection.remoteAddress.host, volumes: [] };
        byConn.set(owner.conn, peer);
      }
      peer.volumes.push(name);
    }
    return [...byConn.values()];
  }

  /** Closes the store (a running merge completes; a failed one is no longer retried: the next open replays it). Connections are the listener's to close. */
  async close(): Promise<void> {
    await this.#store.close();
  }
}
