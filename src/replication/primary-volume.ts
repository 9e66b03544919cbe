/**
 * One volume on the primary: applies writes to the local device and feeds
 * the mirror requests of its replication stream, in the order it applied them.
 *
 * @module
 */
import { randomBytes } from 'node:crypto';
import { EventEmitter } from 'eventemitter3';
import { BlockMirrorError, toBlockMirrorError } from '../errors.js';
import type { Clock, TimerHandle } from '../clock.js';
import type { BlockDevice } from '../device/block-device.js';
import { checkRange } from '../device/range.js';
import { isAllZero, knownZero, zeroDevice } from '../device/zero.js';
import { readInto } from '../device/read-into.js';
import type { Journal, JournalEntry, PendingJournalEntry } from '../journal/journal.js';
import { MemoryDirtyBitmap, type BitmapRegion, type DirtyBitmap } from '../resync/dirty-bitmap.js';
import { hashRegion, zeroDigest, type RegionHashAlgorithm } from '../resync/region-hash.js';
import { createHash } from 'node:crypto';
import type { ProgressSnapshot } from '../resync/progress.js';
import { advanceGeneration, type GenerationState, type Lineage } from './generation.js';
import { MemoryPairStateStore, type DiskState, type PairState, type PairStateStore, type Resolution } from './pair-state.js';
import type { MirrorOutcome, MirrorRequest } from './mirror-request.js';
import { BACKLOG_LAGGED, BACKLOG_ZERO, JournalBacklog } from './journal-backlog.js';
import { RangeLock } from './range-lock.js';
import { SendQueue, sendOrder } from './send-queue.js';
import { SEQ_RESERVATION } from './stream-file.js';
import createDebug from 'debug';

const log = createDebug('blockmirror:volume');

/** A covered region keeps its write-intent bit until it was not written for this long (ms), unless the volume goes idle. */
const REGION_HOLD_MS = 2000;
/**
 * The volume asks the target for durability at once (rather than at the next
 * `durableInterval`) when this many acknowledged requests wait for it, or
 * when {@link ACKED_FLUSH_BYTES} were acknowledged since it last asked. Each
 * request is metadata only once acknowledged (its payload is dropped), so
 * the count bounds RAM (a few MiB per volume), and the bytes bound what the
 * journal holds for the target; every durability flush costs a device
 * flush on both sides, so small writes are not made to pay one per 1,024.
 */
const ACKED_FLUSH_COUNT = 16384;
/** See {@link ACKED_FLUSH_COUNT}. */
const ACKED_FLUSH_BYTES = 64 * 2 ** 20;
/** At most this many requests are read back from the journal at a time (whatever their payload). */
const READ_BACK_MAX_REQUESTS = 4096;
/**
 * Regions whose writes wait for a local flush in `#unflushed` (the requests
 * left RAM for the journal-only backlog): past this many, the volume flushes
 * its device, so that this bookkeeping stays bounded in a long outage.
 */
const UNFLUSHED_REGIONS_MAX = 4096;

/**
 * How a volume is replicated.
 * - `sync`: a write resolves after the local write AND the target's acknowledgement.
 * - `async`: a write resolves after the local write; the mirror follows in happens-before order (a write after every write that completed before it was issued, and after every overlapping earlier one).
 * - `local`: not mirrored; nothing is sent.
 */
export type ReplicationMode = 'sync' | 'async' | 'local';

/**
 * How a primary volume's first sync with a target that holds none of its
 * lineage (a blank target: first pairing) is done: `checksum` (default)
 * compares region digests and sends only the regions that differ; `full`
 * sends every region; `none` skips it — the primary declares both images
 * identical (two blank images, or copied by other means: `--assume-clean`).
 */
export type InitialSyncMethod = 'checksum' | 'full' | 'none';

/**
 * Replication state of a volume.
 * - `in-sync`: nothing pending; the target holds every write on stable storage
 *   (it reported them durable) and its image is `up-to-date` (it said so).
 * - `replicating`: writes are on their way; the link is healthy.
 * - `lagging`: writes are pending and the link is down or a mirror write failed
 *   (they are retried), or the link is down and the target's image is not
 *   known to be up-to-date (before the first handshake of a never-paired volume).
 * - `needs-resync`: regions of the volume must be copied to the target (the
 *   journal overflowed, the primary restarted after a crash, or an initial sync
 *   was asked); the copy starts when the link is up.
 * - `inconsistent`: that copy (a bitmap resync) is running: until it ends the
 *   target image is not an image the primary ever had.
 * - `split-brain`: the target refused the volume because it was written on its
 *   own since it had our data (`BM_ERR_SPLIT_BRAIN`); nothing is sent until
 *   resolved (a split-brain policy on the target, or by hand).
 * - `demoted`: the volume was handed over to its target (`demote`): it is
 *   read-only here (writes fail with `BM_ERR_READ_ONLY`) and its pairing
 *   state says `target`: restart this node as the volume's mirror (failback).
 * - `local`: the volume is not mirrored.
 */
export type VolumeState = 'in-sync' | 'replicating' | 'lagging' | 'needs-resync' | 'inconsistent' | 'split-brain' | 'demoted' | 'local';

/** Result of a write, zero or flush through a primary volume. */
export interface WriteResult {
  /**
   * - `acknowledged`: the target has it (sync mode).
   * - `queued`: it will follow (async mode).
   * - `failed`: sync mode, but the mirror could not confirm it; it stays queued and is retried.
   * - `not-mirrored`: local volume.
   */
  mirror: 'acknowledged' | 'queued' | 'failed' | 'not-mirrored';
  /** Sequence number in the volume's replication stream (absent for flush and local volumes; a split write: its last part's). */
  seq?: number;
  /**
   * A write split into parts at the link's payload limit: the seq of each
   * part that took one, in order (other writes may take seqs between them).
   */
  partSeqs?: number[];
  /** Why the mirror failed (`mirror: 'failed'`). */
  error?: BlockMirrorError;
}

/** Plain-object status of a primary volume. */
export interface PrimaryVolumeStatus {
  name: string;
  mode: ReplicationMode;
  state: VolumeState;
  /** True when the target is identical as far as the primary knows (nothing pending, the target reported everything durable, and both images are `up-to-date`). */
  inSync: boolean;
  /** Current generation id of the volume's data. */
  generation?: string;
  /** An owed split-brain decision (`discard-remote`), offered at the next handshake. */
  resolution?: Resolution;
  /**
   * The last failback this run did (a target that was a primary, or whose
   * data was discarded, rejoined — see {@link PrimaryVolumeEvents.failback}):
   * `bitmap` with the regions the target's write-intent bitmap named
   * (`peerRegions`, in this volume's regions) and all the regions it owed
   * then (`regions`: those plus this volume's own changes), or `checksum`
   * (the whole volume compared).
   */
  failback?: FailbackInfo;
  /** Disk state of the primary's own image (a primary's image is the reference: `up-to-date`). */
  disk: DiskState;
  /**
   * Disk state of the target's image as far as the primary knows: `unknown`
   * (never paired), `inconsistent` (a sync into it runs or was interrupted),
   * `outdated` (consistent, behind: link down with writes pending),
   * `diverged` (split brain), `up-to-date`.
   */
  peerDisk: DiskState;
  /** When the pair was last known in sync (ISO 8601 wall-clock time; now while in sync; absent: never). */
  lastInSyncAt?: string;
  size: number;
  blockSize: number;
  /** Highest sequence number assigned. */
  lastSeq: number;
  /** Every seq ≤ this is acknowledged by the target. */
  ackedSeq: number;
  pendingRequests: number;
  pendingBytes: number;
  /** Payload bytes held in RAM for requests not yet acknowledged (see `maxBufferedBytes`); the rest of `pendingBytes` waits in the journal. */
  bufferedBytes: number;
  /** Bytes the target acknowledged. */
  replicatedBytes: number;
  /** Mirror failures seen (each is retried). */
  mirrorErrors: number;
  /** Requests held in the journal (durable when the journal is a file). */
  journalEntries: number;
  /** Bytes of journal space in use and in all. */
  journalBytes: number;
  journalCapacity: number;
  /** Regions (and their bytes) that must be copied to the target by a resync. */
  resyncRegions: number;
  resyncBytes: number;
  /** Regions marked in the write-intent bitmap. */
  bitmapDirtyRegions: number;
  lastError?: { code: string; message: string };
  /** A resync or verify in progress (bytes done, total, rate, ETA). */
  progress?: { operation: 'resync' | 'verify' } & ProgressSnapshot;
}

/** Events of a {@link PrimaryVolume}. */
export interface PrimaryVolumeEvents {
  state: [state: VolumeState];
  'mirror-error': [info: { seq: number; kind: MirrorRequest['kind']; offset: number; length: number; error: BlockMirrorError }];
  /** The journal could not take a request (full or failed): later writes are tracked in the bitmap and resynced (state `needs-resync`). */
  'journal-full': [info: { seq: number; error: BlockMirrorError }];
  /** Nothing is pending any more: the target acknowledged every request (durability follows; see state `in-sync`). */
  idle: [];
  /**
   * Journal replay done: the target acknowledged every request recovered from
   * the journal at start (`records` of them, `bytes` of write data) —
   * `durationMs` after the recovery.
   */
  replayed: [info: { records: number; bytes: number; durationMs: number }];
  /** What the primary knows of the target's image changed (see {@link PrimaryVolumeStatus.peerDisk}). */
  'peer-disk': [disk: DiskState, previous: DiskState];
  /** A target that may hold writes this volume lacks was claimed: how it is resynced (see {@link PrimaryVolumeStatus.failback}). */
  failback: [info: FailbackInfo];
}

/** How a failback resynced the target (see {@link PrimaryVolumeStatus.failback}). */
export type FailbackInfo =
  | { method: 'bitmap'; peerRegions: number; regions: number; regionsTotal: number }
  | { method: 'checksum'; regionsTotal: number };

/** What a volume needs from its primary. @internal */
export interface ReplicationLink {
  readonly clock: Clock;
  /** True while at least one connection can carry requests. */
  readonly up: boolean;
  /**
   * True while a connection that completed its handshake is open (with
   * heartbeats this may precede `up`): the target holds our generation and
   * requests sent now reach it in that generation.
   */
  readonly connected?: boolean;
  /** A request was queued: try to send. */
  pump(): void;
  /** Delay before retry number `attempt` (1-based). */
  retryDelay(attempt: number): number;
  /** Sync writes while the link is down: `degrade` (complete locally) or `suspend` (hold until the link is back or the timeout). */
  readonly outagePolicy: 'degrade' | 'suspend';
  /** Async mode: bytes written locally and not yet acknowledged by the target before new writes wait (0: no limit). */
  readonly maxAsyncLag: number;
  /** Milliseconds an idle volume waits before it asks the target to make everything durable. */
  readonly durableDelay: number;
  /**
   * Payload bytes the primary's requests hold in RAM (`used`: queued and in
   * flight; `inFlight`: the part in flight) and may hold (`limit`), shared by
   * its volumes.
   */
  readonly payloadBudget: { used: number; limit: number; inFlight: number };
  /** Largest payload one mirror request can carry (the codec's `maxPayloadLength`): {@link PrimaryVolume.write} splits longer writes. */
  readonly maxPayload: number;
}

/** Options of write/zero. */
export interface VolumeWriteOptions {
  /** Durable on the primary, and (sync mode) on the target, when it resolves. */
  fua?: boolean;
  /**
   * Hands `data` over: the caller never modifies it afterwards, so the volume
   * may keep it (async mode then queues it without a copy, and a sync write
   * whose mirror fails keeps it instead of copying). Default false.
   */
  transfer?: boolean;
}

/**
 * A volume of a {@link Primary}. Get it with `primary.volume(name)`.
 */
export class PrimaryVolume extends EventEmitter<PrimaryVolumeEvents> {
  readonly name: string;
  readonly mode: ReplicationMode;
  readonly device: BlockDevice;
  #gen: GenerationState;
  #pairStore: PairStateStore;
  #pairSaving: Promise<void> = Promise.resolve();
  /** Disk state of the target's image as far as we know (see {@link PrimaryVolumeStatus.peerDisk}). */
  #peerDisk: DiskState = 'unknown';
  /** The peer disk state the previous run recorded (a sync it left unfinished: `inconsistent`). */
  #storedPeer: DiskState = 'unknown';
  /** Epoch ms when the pair was last known in sync. */
  #lastInSync: number | undefined;
  /**
   * The write-intent bitmap survives a restart (a resync left unfinished
   * resumes from it). Only then must a region's bit wait until the primary's
   * own write is on stable storage; with the default in-memory bitmap nothing
   * survives a crash, so a completed local write counts as durable (no local
   * flush just to clear bits).
   */
  #persistentBitmap = false;
  /** This run started a sync into the target: the resync set tracks what it still lacks. */
  #syncKnown = false;
  /**
   * The persistent write-intent bitmap lives in the state directory without
   * a durable journal: only the target's durable acknowledgements clear its
   * bits, so it names every region the target may lack (the pairing state
   * records whose it is: {@link PairState.bitmapOf}).
   */
  #bitmapAlone = false;
  /** Node id of the target the bitmap is kept against (see `#bitmapAlone`). */
  #bitmapPeer: string | undefined;
  /** The last failback of this run. */
  #failback: FailbackInfo | undefined;
  /**
   * A handshake decided that the target must be compared by checksum: set
   * before the regions are marked, so that a resync another connection's
   * handshake starts meanwhile compares too. Cleared by the primary when a
   * resync ends. @internal
   */
  checksumOwed = false;
  /** How the first sync with a blank target is done. @internal */
  initialSync: InitialSyncMethod = 'checksum';
  /**
   * The target may hold our current generation (it accepted it in a
   * handshake, or we do not know better): the next write while it is not
   * connected starts a new generation.
   */
  #genShared = true;
  #advancing: Promise<void> | undefined;
  #splitBrain = false;
  /** The operator's owed split-brain decision (`discard-remote`): offered at the next handshake, cleared once the target accepted. */
  #resolution: Resolution | undefined;
  /** Writes are refused from here on (a demotion runs or ran). */
  #readOnly = false;
  /** The volume was handed over (its pairing state says `target`). */
  #demoted = false;
  /** Writes and zeroes past the read-only check, not finished. */
  #writing = 0;
  #writesDone: (() => void) | undefined;
  /** Id of this volume's replication stream (see {@link VolumeOffer.stream}). */
  stream: string = randomBytes(8).toString('hex');
  /** Position in the handshake's volume list (-1 for local volumes). @internal */
  index = -1;

  readonly #link: ReplicationLink;
  #journal: Journal;
  /** Write-intent bitmap: a region is marked before a write to it starts and cleared once nothing of it is pending. */
  #bitmap: DirtyBitmap;
  /** Regions to copy to the target by a resync. */
  readonly #needs: MemoryDirtyBitmap;
  /**
   * Regions written lately: per region, the writes to it that are not covered
   * yet — between the point where the region was marked and the point where
   * the journal holds the write or the target holds it durably — and when it
   * was last written. The region's write-intent bit is cleared only when none
   * is left (and no resync needs the region); a region with none left stays
   * here until {@link #sweepRegions} clears its bit (one entry per region, no
   * churn per write).
   */
  readonly #regions = new Map<number, RegionUse>();
  /** Async bytes admitted and not yet acknowledged (back-pressure budget). */
  #lagBytes = 0;
  /** Writes waiting for room in the lag budget, first come first served. */
  #lagWaiters: Array<{ bytes: number; admit: () => void }> = [];
  /** Seq of the latest resync write (sync-mode writes are ordered after it). */
  #lastResyncSeq = 0;
  /** Seq of the latest write that is not a resync write (resync writes are ordered after it). */
  #lastWriteSeq = 0;
  /**
   * The latest resync copy of each region the target does not hold durably
   * yet (by region index). A region copied again — its write went to the
   * bitmap while the journal was full, or the target lost an acknowledged
   * copy — is ordered after the earlier copy, which may still be sent again.
   */
  readonly #resyncCopies = new Map<number, MirrorRequest>();
  /** Times a range was marked to resync (a checksum comparison that saw one happen while it ran does not count). */
  #needsMarked = 0;
  /** True while a resync copies `#needs`. @internal */
  resyncing = false;
  /** Bytes done and in total of the running resync (its writes tell the target). @internal */
  resyncProgress: { readonly done: number; readonly total: number } | undefined;
  readonly #lock = new RangeLock();
  /** @internal */
  readonly queue = new SendQueue();
  /**
   * Every request with a seq, in seq order, from the moment it takes its seq
   * until the target reports it durable: the one owner of a request's state
   * (queued, in flight, acknowledged) — except the requests of `#backlog`.
   * Counters derive from both.
   */
  #requests = new Map<number, MirrorRequest>();
  /** Highest seq set in `#requests`. */
  #requestsTop = 0;
  /** A request was set in `#requests` below `#requestsTop`: the map is sorted again before a walk in seq order (`#inOrder`). */
  #unordered = false;
  /**
   * Queued requests that live in the journal only (no payload, no object):
   * their seqs are in no `#requests` entry; they become requests again when
   * read back (`#readBack`).
   */
  readonly #backlog = new JournalBacklog();
  /** Requests of `#requests` left in the send queue after they moved to `#backlog` (pruned in bulk). */
  #queueStale = 0;
  /** Highest seq sent so far. */
  #sentTop = 0;
  /** This volume's requests in flight, any kind (sent, not answered, connection open). */
  readonly #inFlight = new Set<MirrorRequest>();
  /**
   * The journal replay after a restart (see `useJournal`): the recovered
   * requests (up to seq `through`) the target has not acknowledged yet, and
   * what the `replayed` event reports once none is left.
   */
  #replay: { through: number; left: number; records: number; bytes: number; started: number } | undefined;
  /** The target acknowledged a recovered request (its `onAck`). */
  readonly #replayedOne = (): void => this.#replayed(1);
  /** Requests (of `#requests` and `#backlog`) that the target has not acknowledged. */
  #unacked = 0;
  /** Every seq ≤ this is acknowledged by the target (exact: computed from `#requests`). */
  #ackedThrough = 0;
  /** Every seq ≤ this is on the target's stable storage (its FLUSH_ACK said so). */
  #durableSeq = 0;
  /** Incarnation of the target's ordering state seen in the last handshake. */
  #targetInc: string | undefined;
  /** Seqs up to this may be used (the stream file reserved them durably). */
  #reserved = Number.MAX_SAFE_INTEGER;
  #reserving: Promise<void> | undefined;
  /** Appends to the journal survive a crash (its fsync policy is not `none`): a journaled write is covered. */
  #journalDurable = true;
  #durableTimer: TimerHandle | undefined;
  /** Requests whose local write completed and is not yet known durable (a local flush releases them). */
  #localPending: MirrorRequest[] = [];
  /** Entries of `#localPending` that moved to the journal-only backlog (dropped in bulk). */
  #localPendingStale = 0;
  /** A durability flush in progress (see `makeDurable`). */
  #durabilityFlush: Promise<void> | undefined;
  /** The barrier of `#durabilityFlush`. */
  #durabilityBarrier = 0;
  /** Persists a new reservation (a restarted primary continues above it). */
  #reserve: ((through: number) => Promise<void>) | undefined;
  /** Flushes sent or queued (no seq). */
  readonly #flushes = new Set<MirrorRequest>();
  #lastSeq = 0;
  #completedSeq = 0;
  #pendingBytes = 0;
  #replicatedBytes = 0;
  #mirrorErrors = 0;
  #failing = false;
  /** Highest seq appended to the journal. */
  #journaledSeq = 0;
  /** Set when the journal overflowed: nothing more is journaled until every pending request is acknowledged. */
  #journalSuspended = false;
  #lastError: BlockMirrorError | undefined;
  #state: VolumeState;
  #closed = false;
  readonly #retryTimers = new Set<TimerHandle>();

  /** @internal */
  constructor(
    name: string,
    device: BlockDevice,
    mode: ReplicationMode,
    generation: string,
    link: ReplicationLink,
    journal: Journal,
    regionSize: number,
  ) {
    super();
    this.#journal = journal;
    this.#bitmap = new MemoryDirtyBitmap({ volumeSize: device.size, regionSize });
    this.#needs = new MemoryDirtyBitmap({ volumeSize: device.size, regionSize });
    this.name = name;
    this.device = device;
    this.mode = mode;
    this.#gen = { current: generation, history: [] };
    this.#pairStore = new MemoryPairStateStore();
    this.#link = link;
    // in-sync only once the target's image is known up-to-date
    this.#state = mode === 'local' ? 'local' : 'lagging';
  }

  /** Current generation id (see {@link GenerationState}). */
  get generation(): string {
    return this.#gen.current;
  }

  /** Current generation and its history. */
  get generations(): GenerationState {
    return { current: this.#gen.current, history: [...this.#gen.history] };
  }

  /**
   * Loads (or creates) the volume's pairing state from `store` (before the
   * first write): its lineage, and what the previous run knew of the
   * target's image. @internal
   */
  async usePairStateStore(store: PairStateStore): Promise<void> {
    const loaded = await store.load();
    if (loaded?.role === 'target') {
      // refused before the store is ours: a failed start's clean-up must not overwrite the demoted state
      throw new BlockMirrorError(
        'BM_ERR_DEMOTED',
        `volume ${this.name}: its pairing state says it is a mirror's image (it was demoted, or this is a mirror's state directory): promote it first (blockmirror promote on the running mirror); nothing was written`,
        { details: { volume: this.name } },
      );
    }
    if (loaded?.generations !== undefined) this.#gen = loaded.generations;
    this.#pairStore = store;
    this.#resolution = loaded?.resolution === 'discard-remote' ? 'discard-remote' : undefined;
    if (loaded !== undefined) {
      this.#peerDisk = loaded.peer;
      this.#storedPeer = loaded.peer;
      this.#lastInSync = loaded.lastInSync;
      this.#bitmapPeer = loaded.bitmapOf?.peer;
    }
    // a bitmap that is not alone any more (a journal directory now clears bits too) no longer names what the mirror lacks
    if (loaded?.generations === undefined || (loaded.bitmapOf !== undefined && !this.#bitmapAlone)) await this.#savePair();
    this.#updateState();
  }

  /** The pairing state as it is now. */
  #pairState(): PairState {
    const s: PairState = { generations: { current: this.#gen.current, history: [...this.#gen.history] }, disk: 'up-to-date', peer: this.peerDisk, role: this.#demoted ? 'target' : 'primary' };
    if (this.#lastInSync !== undefined) s.lastInSync = this.#lastInSync;
    if (this.#resolution !== undefined) s.resolution = this.#resolution;
    if (this.#bitmapAlone && this.#bitmapPeer !== undefined && !this.#demoted) s.bitmapOf = { generation: this.#gen.current, peer: this.#bitmapPeer };
    return s;
  }

  /** Records the pairing state (saves run one at a time, each writes the latest state). */
  #savePair(): Promise<void> {
    const run = this.#pairSaving.then(() => this.#pairStore.save(this.#pairState()));
    this.#pairSaving = run.catch(() => undefined);
    return run;
  }

  /** Records the pairing state (at a clean stop: when the pair was last in sync, and what the target lacks). @internal */
  savePairState(): Promise<void> {
    if (this.#state === 'in-sync') this.#lastInSync = Date.now();
    return this.#savePair();
  }

  /**
   * The target accepted our generation in a handshake (READY): `lineage` of
   * its data relative to ours, the disk state of its image, `full` when it
   * discarded divergent data and needs the whole volume, and `fb` when it
   * offers its failback bitmap (byte ranges: only those, plus what this
   * volume changed itself, are resynced — a bitmap resync, no checksum).
   * `peerNode` is the target's node id (the failback bitmap of this volume
   * is kept against it). Decides what the target must receive, durably
   * before anything is sent: resolves with the method of the sync it starts
   * (`checksum`, `full` or `bitmap`), or undefined.
   * @internal
   */
  async peerReady(ready: { lineage?: Lineage; disk?: DiskState; full?: boolean; fb?: number[] }, peerNode?: string): Promise<'checksum' | 'full' | 'bitmap' | undefined> {
    // checked before anything changes: a bad answer closes the connection (it is the target's input)
    const fb = ready.fb === undefined ? undefined : failbackRanges(ready.fb, this.device.size, this.device.blockSize, this.name);
    this.#genShared = true;
    this.#splitBrain = false;
    let save = false;
    if (this.#resolution !== undefined) {
      // the operator's decision was applied by the target
      this.#resolution = undefined;
      save = true;
    }
    if (this.#bitmapAlone && peerNode !== undefined && peerNode !== this.#bitmapPeer) {
      // from here on this target's acknowledgements clear the bitmap: recorded before any can
      this.#bitmapPeer = peerNode;
      save = true;
    }
    if (save) await this.#savePair();
    // a target from before disk states counts as up-to-date, as it did then
    const disk = ready.disk ?? 'up-to-date';
    if (fb !== undefined) {
      // failback with the target's bitmap: its regions (mapped onto ours), plus what we changed ourselves
      // (our bitmap, journal and requests) — not the whole volume
      const peerRegions = this.#coveredRegions(fb);
      this.checksumOwed = false;
      for (let k = 0; k < fb.length; k += 2) this.markForResync(fb[k]!, fb[k + 1]!);
      await this.#recordInconsistent();
      this.#noteFailback({ method: 'bitmap', peerRegions, regions: this.#needs.dirtyCount, regionsTotal: this.#needs.regionCount });
      this.#updateState();
      return 'bitmap';
    }
    let method: 'checksum' | 'full' | undefined;
    // the target discarded its data: digests tell which regions differ (a blind full copy only when asked for)
    if (ready.full === true) method = this.initialSync === 'full' ? 'full' : 'checksum';
    else if (ready.lineage === 'blank' && disk !== 'up-to-date') {
      // first pairing: the target holds none of our data
      if (this.initialSync !== 'none') method = this.initialSync;
    } else if (disk === 'inconsistent' && !this.#syncKnown && !(this.#persistentBitmap && this.#storedPeer === 'inconsistent')) {
      // a sync into it was interrupted, and nothing here says what it still lacks: compare everything
      method = 'checksum';
    }
    if (method !== undefined) {
      if (method === 'checksum') this.checksumOwed = true;
      await this.#owe(0, this.device.size);
      // a former primary's image without a usable bitmap (or discarded data): the whole volume is compared
      if (method === 'checksum' && ready.lineage !== 'blank') this.#noteFailback({ method: 'checksum', regionsTotal: this.#needs.regionCount });
      this.#updateState();
      return method;
    }
    if (this.#peerDisk !== 'inconsistent' || !this.#syncKnown) this.#setPeer(disk);
    this.#updateState();
    return undefined;
  }

  /** Regions of this volume that the byte ranges `[offset, length, …]` (sorted, disjoint) touch. */
  #coveredRegions(ranges: readonly number[]): number {
    const size = this.#needs.regionSize;
    let n = 0;
    let last = -1;
    for (let k = 0; k < ranges.length; k += 2) {
      const first = Math.max(Math.floor(ranges[k]! / size), last + 1);
      const end = Math.floor((ranges[k]! + ranges[k + 1]! - 1) / size);
      if (end >= first) n += end - first + 1;
      last = Math.max(last, end);
    }
    return n;
  }

  #noteFailback(info: FailbackInfo): void {
    this.#failback = info;
    // told once per session: its other connections' handshakes (once one is open) say the same
    if (this.#link.connected === true) return;
    log('volume %s: failback by %s: %o', this.name, info.method, info);
    this.emit('failback', info);
  }

  /**
   * Marks `[offset, offset + length)` to be copied to the target, durably in
   * the write-intent bitmap, then records the target as `inconsistent`: a
   * restart resumes from the bitmap.
   */
  #owe(offset: number, length: number): Promise<void> {
    this.markForResync(offset, length);
    return this.#recordInconsistent();
  }

  /**
   * The target is (or is about to be) `inconsistent`: recorded once per such
   * period, after the bitmap's marks are durable. Synchronous up to the
   * first await, so that the handshakes of the other connections see it.
   */
  #recordInconsistent(): Promise<void> {
    this.#setPeer('inconsistent');
    this.#syncKnown = true;
    this.#inconsistent ??= (async () => {
      await this.#bitmap.flush();
      await this.#savePair();
    })().catch((error: unknown) => {
      this.#inconsistent = undefined;
      throw error;
    });
    return this.#inconsistent;
  }

  #inconsistent: Promise<void> | undefined;

  /**
   * Before a resync sends anything: the regions it copies are durably marked
   * and the target is recorded as `inconsistent` (its image will be, from
   * the first resync write until the resync ends). @internal
   */
  async beginResync(): Promise<void> {
    await this.#recordInconsistent();
    await this.#bitmap.flush();
  }

  /** A resync left unfinished by the previous run resumes (its regions come from the persistent bitmap). @internal */
  get resuming(): boolean {
    return this.#persistentBitmap && this.#storedPeer === 'inconsistent' && this.#needs.dirtyCount > 0;
  }

  /**
   * Before the first write while the target is not connected: a new
   * generation, durable before the write (the target's data no longer is
   * ours, it is `outdated`).
   */
  #beforeDisconnectedWrite(): Promise<void> | undefined {
    if (this.#link.up || this.#link.connected === true || !this.#genShared) return this.#advancing;
    this.#genShared = false;
    this.#gen = advanceGeneration(this.#gen);
    if (this.#peerDisk === 'up-to-date') this.#setPeer('outdated');
    this.#advancing = this.#savePair().finally(() => {
      this.#advancing = undefined;
    });
    return this.#advancing;
  }

  /** Changes what we know of the target's image (event `peer-disk`). */
  #setPeer(disk: DiskState): void {
    const previous = this.#peerDisk;
    if (disk === previous) return;
    this.#peerDisk = disk;
    this.emit('peer-disk', disk, previous);
  }

  /** Disk state of the target's image as far as this primary knows. */
  get peerDisk(): DiskState {
    if (this.#peerDisk === 'up-to-date' && !this.#link.up && !this.idle) return 'outdated';
    return this.#peerDisk;
  }

  /** Size of the volume in bytes. */
  get size(): number {
    return this.device.size;
  }

  /** Block size (alignment unit) in bytes. */
  get blockSize(): number {
    return this.device.blockSize;
  }

  /** Current replication state. */
  get state(): VolumeState {
    return this.#state;
  }

  /** Reads from the local device. */
  read(offset: number, length: number): Promise<Buffer> {
    if (this.#closed) return Promise.reject(closedError(this.name));
    return this.device.read(offset, length);
  }

  /** Reads from the local device into `target` (see {@link BlockDevice.readInto}). */
  readInto(offset: number, target: Uint8Array): Promise<void> {
    if (this.#closed) return Promise.reject(closedError(this.name));
    return readInto(this.device, offset, target);
  }

  /**
   * Writes `data` at `offset` on the local device and mirrors it according to
   * the volume's mode. In async mode the data is copied (you may reuse your
   * buffer once the promise resolves); in sync mode do not modify it until the
   * promise resolves.
   *
   * A write longer than one mirror request can carry (the link's payload
   * limit, `limits.maxPayloadLength` of the primary) is applied and mirrored
   * as consecutive parts of at most that size, each with its own seq, in
   * order; it resolves once every part did, with one result: `failed` if any
   * part failed (sync: `acknowledged` only if every part is), `seq` the last
   * part's.
   */
  write(offset: number, data: Uint8Array, options: VolumeWriteOptions = {}): Promise<WriteResult> {
    try {
      checkRange(this.device, offset, data.length);
    } catch (error) {
      return Promise.reject(error as Error);
    }
    const fua = options.fua === true;
    const transfer = options.transfer === true;
    // one request (the common case) without the parts' extra promise
    if (this.mode === 'local' || data.length <= this.#partLength) return this.#apply('write', offset, data.length, data, fua, transfer);
    return this.#inParts(offset, data, fua, transfer);
  }

  /** The longest part one mirror request carries: the link's payload limit, rounded down to the block size. */
  get #partLength(): number {
    return this.#link.maxPayload - (this.#link.maxPayload % this.device.blockSize);
  }

  /**
   * Zeroes a range (trim / write-zeroes) locally and on the mirror, ordered
   * like a write. A zero is a range record end to end (journal, queue, wire):
   * any length the device accepts, and nothing of its length in memory.
   */
  async zero(offset: number, length: number, options: VolumeWriteOptions = {}): Promise<WriteResult> {
    checkRange(this.device, offset, length);
    return this.#apply('zero', offset, length, undefined, options.fua === true);
  }

  /**
   * {@link write}: one request, or consecutive parts of at most the link's
   * payload limit (rounded down to the block size). The parts are one
   * operation: the whole range is locked while they go, so an overlapping
   * write comes before or after all of them, never between two.
   */
  async #inParts(offset: number, data: Uint8Array, fua: boolean, transfer: boolean): Promise<WriteResult> {
    const length = data.length;
    const part = this.#partLength;
    if (part === 0) throw tooLarge(this.name, length, this.#link.maxPayload);
    const issued = this.#completedSeq;
    const held = this.#lock.tryAcquire(offset, length);
    const release = typeof held === 'function' ? held : await held;
    try {
      let barrier = typeof held === 'function' ? issued : this.#completedSeq;
      let result: WriteResult | undefined;
      const split = { partLost: false };
      for (let pos = 0; pos < length; pos += part) {
        const n = Math.min(part, length - pos);
        const r = await this.#apply('write', offset + pos, n, data.subarray(pos, pos + n), fua, transfer, barrier, split);
        // the next part is applied after this one
        if (r.seq !== undefined && r.seq > barrier) barrier = r.seq;
        result = combineResults(result, r);
      }
      // an acknowledged part the target lost (it restarted) before the last one was answered: the target
      // holds the write only once a resync brings that part, so the write is not acknowledged as a whole
      if (split.partLost && result!.mirror === 'acknowledged') {
        const error = new BlockMirrorError('BM_ERR_MIRROR_WRITE_FAILED', `volume ${this.name}: part of the write at ${offset}+${length} was lost by the target before the write completed; a resync copies it`);
        return { ...result!, mirror: 'failed', error };
      }
      return result!;
    } finally {
      release();
    }
  }

  /**
   * Makes every write that completed before this call durable locally and
   * (sync mode) on the target. In async mode the target's flush is queued
   * behind the writes it covers and not awaited.
   */
  async flush(): Promise<WriteResult> {
    if (this.#closed) throw closedError(this.name);
    if (this.mode === 'local') {
      await this.device.flush();
      return { mirror: 'not-mirrored' };
    }
    const barrier = this.mode === 'async' ? this.#lastSeq : this.#completedSeq;
    const req = this.#request('flush', 0, 0, 0, undefined, false, barrier);
    if (this.mode === 'async') {
      this.#enqueue(req);
      await this.#flushLocal();
      return { mirror: 'queued' };
    }
    const outcome = this.#waitFor(req);
    await this.#flushLocal();
    return toResult(await outcome, undefined);
  }

  /**
   * One mirrored write or zero. Its barrier (what the target applies before
   * it) is the happens-before order: every write that had completed to its
   * caller when this one was issued (`#completedSeq`, a write records its seq
   * there before it releases its range and resolves), and every overlapping
   * earlier write (it held the range lock, so it completed before this one
   * got the range). Concurrent writes are left unordered, so the target
   * applies them in parallel. `partOf`: the barrier of a part of a larger
   * write whose caller holds the lock of the whole range.
   */
  #apply(kind: 'write' | 'zero', offset: number, length: number, data: Uint8Array | undefined, fua: boolean, transfer = false, partOf?: number, split?: { partLost: boolean }): Promise<WriteResult> {
    if (this.#closed) return Promise.reject(closedError(this.name));
    if (this.#readOnly) return Promise.reject(new BlockMirrorError('BM_ERR_READ_ONLY', `volume ${this.name} was demoted: it is read-only on this node`, { details: { volume: this.name } }));
    this.#writing++;
    const applied = this.#applyWritable(kind, offset, length, data, fua, transfer, partOf, split);
    // (counted without a promise layer on the caller's path: a demote waits for the count to reach 0)
    applied.then(this.#writeEnded, this.#writeEnded);
    return applied;
  }

  /** A write or zero counted by `#apply` ended (whatever its outcome). */
  readonly #writeEnded = (): void => {
    if (--this.#writing === 0) {
      const done = this.#writesDone;
      this.#writesDone = undefined;
      done?.();
    }
  };

  async #applyWritable(kind: 'write' | 'zero', offset: number, length: number, data: Uint8Array | undefined, fua: boolean, transfer: boolean, partOf: number | undefined, split: { partLost: boolean } | undefined): Promise<WriteResult> {
    if (this.mode === 'local') {
      await this.#local(kind, offset, length, data, fua);
      return { mirror: 'not-mirrored' };
    }
    if (kind === 'write' && length > this.#link.maxPayload) throw tooLarge(this.name, length, this.#link.maxPayload);
    let lag = 0;
    if (this.mode === 'async' && kind === 'write') {
      const waiting = this.#lagGate(length);
      if (waiting !== undefined) await waiting;
      // admitted: counted in #lagBytes until the target acknowledges it
      lag = length;
    }
    let enqueued = false;
    let covering = false;
    const issued = partOf ?? this.#completedSeq;
    const held = partOf !== undefined ? noRelease : this.#lock.tryAcquire(offset, length);
    const release = typeof held === 'function' ? held : await held;
    // waited for an overlapping write: it recorded its completion before it let go of the range
    const barrier = typeof held === 'function' ? issued : this.#completedSeq;
    try {
      if (this.#lastSeq >= this.#reserved) await this.#extendReservation();
      // write intent: the region is durably dirty before the data can change
      this.#cover(offset, length);
      covering = true;
      await this.#bitmap.markDurable(offset, length);
      const advancing = this.#beforeDisconnectedWrite();
      if (advancing !== undefined) await advancing;
      if (this.mode === 'async') {
        try {
          await this.#local(kind, offset, length, data, fua);
        } catch (error) {
          // a failed local write may have changed part of the range: resync it from what we hold
          this.#resyncLater(offset, length);
          this.#updateState();
          throw error;
        }
        if (this.#journalSuspended || this.#closed) {
          // the journal is full: the bitmap tracks this write; a resync sends it
          this.#resyncLater(offset, length);
          this.#updateState();
          return { mirror: 'queued' };
        }
        const seq = this.#takeSeq();
        this.#lastWriteSeq = seq;
        // No room in the payload budget (or no link): the journal writes the caller's bytes and the request
        // copies them only if there is room once they are durable; else they are read back when sent.
        const budget = this.#link.payloadBudget;
        const borrow = data !== undefined && !transfer && (!this.#link.up || budget.used + length > budget.limit);
        const kept = data === undefined ? undefined : transfer || borrow ? Buffer.from(data.buffer, data.byteOffset, data.byteLength) : Buffer.from(data);
        // after what happened before it (see above): the target image is always our writes closed under happens-before (invariant 2)
        const req = this.#request(kind, seq, offset, length, kept, fua, Math.max(barrier, this.#lastResyncSeq));
        req.owned = !borrow;
        req.borrowed = borrow;
        req.lag = lag;
        req.uncovered = true;
        this.#localDone(req, fua);
        covering = false;
        enqueued = true;
        try {
          // queued before its journal append completes: sent in seq order, never behind a later request
          this.#enqueue(req);
          const journaled = this.#journalOne(req);
          // not journaled after all: it needs its copy now
          if (journaled === undefined) this.#own(req);
          if (journaled !== undefined) {
            try {
              await journaled;
            } catch (error) {
              return { mirror: 'failed', seq, error: toBlockMirrorError(error) };
            }
          }
          return { mirror: 'queued', seq };
        } finally {
          // completed: writes issued from now on are applied after it
          if (seq > this.#completedSeq) this.#completedSeq = seq;
        }
      }
      const seq = this.#takeSeq();
      this.#lastWriteSeq = seq;
      const req = this.#request(kind, seq, offset, length, data, fua, Math.max(barrier, this.#lastResyncSeq));
      if (split !== undefined) req.split = split;
      req.owned = transfer;
      req.uncovered = true;
      covering = false;
      const outcome = this.#waitFor(req);
      // The transport sends what was queued in this tick on the next one: let
      // the request leave before the local write, so that the round trip to
      // the target overlaps it (−11 % p50 at 4 KiB × 1).
      await new Promise<void>((resolve) => process.nextTick(resolve));
      try {
        await this.#local(kind, offset, length, data, fua);
        this.#localDone(req, fua);
      } catch (error) {
        req.localDurable = true;
        // The target may get a write the local device refused: the request
        // stays (ordering: later overlapping writes come after it), the range
        // is resynced from what the primary really holds, and the caller
        // learns the local failure.
        req.onDone = undefined;
        this.#own(req);
        if (seq > this.#completedSeq) this.#completedSeq = seq;
        this.#resyncLater(offset, length);
        this.#updateState();
        throw error;
      }
      try {
        return toResult(await outcome, seq);
      } finally {
        // later overlapping writes are ordered after this one on the target, whatever its outcome
        if (seq > this.#completedSeq) this.#completedSeq = seq;
      }
    } finally {
      release();
      if (covering) this.#uncover(offset, length);
      if (lag > 0 && !enqueued) this.#returnLag(lag);
    }
  }

  /** The next seq of the stream (within the durable reservation). */
  #takeSeq(): number {
    const seq = ++this.#lastSeq;
    if (this.#reserve !== undefined && this.#reserving === undefined && this.#reserved - seq < SEQ_RESERVATION / 2) void this.#extendReservation();
    return seq;
  }

  /** Reserves the next block of seqs durably (a restarted primary continues above it). */
  #extendReservation(): Promise<void> {
    if (this.#reserve === undefined) return Promise.resolve();
    this.#reserving ??= (async () => {
      const through = this.#lastSeq + SEQ_RESERVATION;
      try {
        await this.#reserve!(through);
        this.#reserved = through;
      } finally {
        this.#reserving = undefined;
      }
    })();
    return this.#reserving;
  }

  /** Counts a write to `[offset, offset + length)` as not yet covered. */
  #cover(offset: number, length: number): void {
    if (length === 0) return;
    const last = this.#bitmap.regionIndex(offset + length - 1);
    const now = this.#link.clock.now();
    for (let i = this.#bitmap.regionIndex(offset); i <= last; i++) {
      const r = this.#regions.get(i);
      if (r === undefined) this.#regions.set(i, { uncovered: 1, lastWritten: now });
      else {
        r.uncovered++;
        r.lastWritten = now;
      }
    }
  }

  /** The write to `[offset, offset + length)` is covered: regions nothing else keeps dirty lose their write-intent bit. */
  #uncover(offset: number, length: number): void {
    if (length === 0) return;
    const last = this.#bitmap.regionIndex(offset + length - 1);
    for (let i = this.#bitmap.regionIndex(offset); i <= last; i++) this.#uncoverRegion(i, 1);
  }

  /** `writes` writes to region `i` are covered. */
  #uncoverRegion(i: number, writes: number): void {
    const r = this.#regions.get(i);
    if (r === undefined) return;
    r.uncovered = Math.max(0, r.uncovered - writes);
    if (r.uncovered > 0) return;
    // a hot region keeps its bit (no bitmap write for its next write); see #sweepRegions
    if (this.#unacked === 0) {
      this.#regions.delete(i);
      this.#cleanRegion(i);
    }
  }

  /**
   * Per region, writes that left RAM for the journal-only backlog before
   * their local write was known durable: the next local flush covers them
   * (their write-intent bits stay until then), without their requests.
   */
  #unflushed = new Map<number, number>();

  /**
   * Clears the bits of covered regions not written for `hold` ms (like DRBD's
   * activity log: regions under constant writing stay marked, so a write to
   * them does not wait for a bitmap write each time they were cleaned).
   */
  #sweepRegions(hold: number): void {
    if (this.#regions.size === 0) return;
    const now = this.#link.clock.now();
    for (const [i, r] of this.#regions) {
      if (r.uncovered > 0 || now - r.lastWritten < hold) continue;
      this.#regions.delete(i);
      this.#cleanRegion(i);
    }
  }

  /** Clears region `index`'s write-intent bit when no write to it is uncovered and no resync needs it. */
  #cleanRegion(index: number): void {
    if (this.#closed || (this.#regions.get(index)?.uncovered ?? 0) > 0 || this.#needs.isDirty(index)) return;
    this.#bitmap.clearRegion(index);
  }

  /**
   * Releases a request's write-intent bits once they are no longer needed:
   * its own local write is on stable storage AND either the target holds it
   * durably or the journal does (a crash then replays it). Until then a crash
   * of either side may leave the region different, and the bit says so.
   * A queued request so covered whose payload is not in RAM moves to the
   * journal-only backlog.
   */
  #covered(req: MirrorRequest): void {
    if (!req.uncovered || !req.localDurable) return;
    if (!req.targetDurable && !(req.journalDurable && this.#journalDurable)) return;
    req.uncovered = false;
    this.#uncover(req.offset, req.length);
    if (req.spilled || req.kind === 'zero') this.#toBacklog(req);
  }

  /** The local write of `req` completed (with `fua`: durably). */
  #localDone(req: MirrorRequest, fua: boolean): void {
    req.localWritten = true;
    if (fua || !this.#persistentBitmap) req.localDurable = true;
    else if (!req.localDurable) this.#localPending.push(req);
  }

  /** Counts a covered write to the range in `#unflushed`: its regions' bits wait for the next local flush. */
  #unflushedRange(offset: number, length: number): void {
    const last = this.#bitmap.regionIndex(offset + length - 1);
    for (let i = this.#bitmap.regionIndex(offset); i <= last; i++) this.#unflushed.set(i, (this.#unflushed.get(i) ?? 0) + 1);
    if (this.#unflushed.size >= UNFLUSHED_REGIONS_MAX) this.#flushLocalSoon();
  }

  /**
   * The target holds what the primary holds in the range (equal digests), but
   * the primary's copy may still be in its page cache only (a write of an
   * earlier run that no flush covered): a power loss could still change it,
   * so the range's bits stay until the next local flush.
   */
  #awaitLocalFlush(offset: number, length: number): void {
    this.#cover(offset, length);
    this.#unflushedRange(offset, length);
  }

  /**
   * Flushes the local device in the background, one flush at a time (see
   * `UNFLUSHED_REGIONS_MAX`); then the bits of regions not written for a
   * while are cleared.
   */
  #flushLocalSoon(): void {
    if (this.#backgroundFlush !== undefined || this.#closed) return;
    this.#backgroundFlush = this.#flushLocal()
      .then(
        () => this.#sweepRegions(REGION_HOLD_MS),
        (error: unknown) => {
          this.#lastError = toBlockMirrorError(error);
        },
      )
      .finally(() => {
        this.#backgroundFlush = undefined;
      });
  }

  #backgroundFlush: Promise<void> | undefined;
  /** Bytes of writes acknowledged since the volume last asked the target for durability (see `ACKED_FLUSH_BYTES`). */
  #ackedBytesSinceDurable = 0;

  /**
   * Flushes the local device; requests whose local write completed before
   * are then locally durable (and so are the writes of `#unflushed`).
   */
  async #flushLocal(): Promise<void> {
    const batch = this.#localPending;
    this.#localPending = [];
    this.#localPendingStale = 0;
    const regions = this.#unflushed;
    this.#unflushed = new Map();
    try {
      await this.device.flush();
    } catch (error) {
      // not durable after all: the next flush tries again
      this.#localPending = batch.concat(this.#localPending);
      for (const [i, n] of regions) this.#unflushed.set(i, (this.#unflushed.get(i) ?? 0) + n);
      throw error;
    }
    for (const [i, n] of regions) this.#uncoverRegion(i, n);
    for (const req of batch) {
      req.localDurable = true;
      this.#covered(req);
    }
  }

  #local(kind: 'write' | 'zero', offset: number, length: number, data: Uint8Array | undefined, fua: boolean): Promise<void> {
    if (kind === 'write') return this.device.write(offset, data!, { fua });
    return zeroDevice(this.device, offset, length, fua);
  }

  #request(
    kind: MirrorRequest['kind'],
    seq: number,
    offset: number,
    length: number,
    data: Uint8Array | undefined,
    fua: boolean,
    barrier: number,
  ): MirrorRequest {
    return {
      kind,
      seq,
      end: seq,
      state: 'queued',
      uncovered: false,
      localDurable: kind === 'skip' || kind === 'flush' || kind === 'hash',
      localWritten: false,
      journalDurable: false,
      targetDurable: false,
      held: 0,
      spilled: false,
      offset,
      length,
      data,
      owned: false,
      borrowed: false,
      fua,
      barrier,
      createdAt: this.#link.clock.now(),
      attempts: 0,
      slot: -1,
      journaled: false,
      resend: false,
      onDone: undefined,
      resync: false,
    };
  }

  /** Queues `req` with a waiting caller; degrades it at once when the link is down (degrade policy). */
  #waitFor(req: MirrorRequest): Promise<MirrorOutcome> {
    const outcome = new Promise<MirrorOutcome>((resolve) => {
      req.onDone = resolve;
    });
    this.#enqueue(req);
    if (!this.#link.up && this.#link.outagePolicy === 'degrade') {
      this.#degrade(req, new BlockMirrorError('BM_ERR_CONNECTION_CLOSED', 'no connection to the mirror target is up'));
    }
    return outcome;
  }

  #enqueue(req: MirrorRequest): void {
    if (req.kind === 'flush' || req.kind === 'hash') this.#flushes.add(req);
    else {
      this.#adopt(req);
      this.#unacked++;
      this.#pendingBytes += req.kind === 'write' ? req.length : 0;
      this.#hold(req);
    }
    this.queue.push(req);
    if (this.#state === 'in-sync') this.#updateState();
    this.#link.pump();
  }

  /** Takes ownership of a request's data (copies it) so the caller may reuse its buffer. */
  #own(req: MirrorRequest): void {
    if (!req.owned && req.data !== undefined) {
      req.data = Buffer.from(req.data);
      req.owned = true;
    }
    if (req.borrowed) {
      req.borrowed = false;
      this.#hold(req);
      this.#link.pump();
    }
  }

  /**
   * Tells a waiting caller the mirror failed; the request stays queued. The
   * caller is told only once the request (and every older pending one) is in
   * the journal: the write is then acknowledged locally but not by the target.
   */
  #degrade(req: MirrorRequest, error: BlockMirrorError, reject = false): void {
    const done = req.onDone;
    if (done === undefined) return;
    req.onDone = undefined;
    this.#own(req);
    const journaled = req.kind === 'flush' || req.kind === 'hash' ? undefined : this.#journalThrough(req.seq);
    if (journaled === undefined && (this.#journalSuspended || this.#link.payloadBudget.used > this.#link.payloadBudget.limit)) this.#spillToBitmap(req.seq);
    if (journaled === undefined) done({ ok: false, error, reject });
    else
      journaled.then(
        () => done({ ok: false, error, reject }),
        (jerr: unknown) => done({ ok: false, error: toBlockMirrorError(jerr), reject }),
      );
  }

  /**
   * Appends `req` to the journal (sync registration, in seq order). Returns
   * undefined when the journal is suspended after an overflow (the request
   * then lives in memory only), else the append's completion, which rejects
   * (after the volume was marked `needs-full-resync`) if it did not fit.
   */
  #journalOne(req: MirrorRequest): Promise<void> | undefined {
    if (this.#journalSuspended || req.resync || req.kind === 'skip' || req.journaled || req.seq <= this.#journaledSeq) return undefined;
    this.#journaledSeq = req.seq;
    req.journaled = true;
    const borrowed = req.borrowed;
    const entry: JournalEntry =
      req.kind === 'write'
        ? { seq: req.seq, offset: req.offset, data: req.data as Buffer, fua: req.fua, timestamp: Date.now() }
        : { kind: 'zero', seq: req.seq, offset: req.offset, length: req.length, fua: req.fua, timestamp: Date.now() };
    return this.#journal.append(entry).then(
      () => {
        // the journal covers it now (or the target already holds it durably)
        if (!this.#requests.has(req.seq)) this.#journal.release(req.seq);
        req.journalDurable = true;
        if (borrowed) this.#unborrow(req);
        this.#covered(req);
        // the journal holds it: over the payload budget its RAM copy can go (read back when its turn comes)
        if (req.state === 'queued' && req.kind === 'write' && req.held > 0) {
          this.#spillable.add(req);
          this.#enforceBudget();
        }
        this.#toBacklog(req);
      },
      (error: unknown) => {
        req.journaled = false;
        // kept in RAM for now (the journal is full): copied while the caller still waits
        if (borrowed) this.#own(req);
        this.#overflow(req.seq, toBlockMirrorError(error));
        throw error;
      },
    );
  }

  /**
   * The journal append of a borrowed request completed (the caller may reuse
   * its buffer as soon as we return): the request copies the bytes if the
   * budget has room, else it drops them (read back from the journal when its
   * turn comes).
   */
  #unborrow(req: MirrorRequest): void {
    const budget = this.#link.payloadBudget;
    if (req.state === 'queued' && req.kind === 'write' && req.data !== undefined && budget.used + req.length > budget.limit) {
      req.borrowed = false;
      req.owned = true;
      req.data = undefined;
      this.#setSpilled(req, true);
      this.#link.pump();
      return;
    }
    this.#own(req);
  }

  /** Journals every pending request with seq ≤ `seq` not journaled yet; resolves when all are in. */
  #journalThrough(seq: number): Promise<void> | undefined {
    const appends: Promise<void>[] = [];
    for (const req of this.#inOrder().values()) {
      if (req.seq > seq) break;
      if (req.state === 'acked') continue;
      const p = this.#journalOne(req);
      if (p !== undefined) appends.push(p);
    }
    if (appends.length === 0) return undefined;
    return Promise.all(appends).then(() => undefined);
  }

  #overflow(seq: number, error: BlockMirrorError): void {
    if (this.#journalSuspended) return;
    this.#journalSuspended = true;
    this.#lastError = error;
    this.emit('journal-full', { seq, error });
    this.#updateState();
  }

  /**
   * The journal cannot hold more: every request with seq ≤ `through` that was
   * not sent yet becomes a skip record and its range is resynced instead, so
   * RAM does not fill with payloads while the link is down.
   */
  #spillToBitmap(through: number): void {
    for (const req of this.#inOrder().values()) {
      if (req.seq > through) break;
      if (req.journaled || (req.kind !== 'write' && req.kind !== 'zero')) continue;
      if (req.state === 'queued') this.#toSkip(req);
      // in flight, no caller waits: its copy goes too; sent again only as a skip (see #resendable)
      else if (req.state === 'inflight' && req.onDone === undefined && req.kind === 'write') this.#dropPayload(req);
    }
  }

  /**
   * `req` is queued again (its connection closed, or the target refused it):
   * a write whose copy was dropped in flight (see `#spillToBitmap`) and that
   * no journal holds becomes a skip record — a resync copies its range.
   */
  #resendable(req: MirrorRequest): void {
    if (req.kind === 'write' && req.data === undefined && !req.journaled && !req.spilled) this.#toSkip(req);
  }

  /** Turns a write/zero into a skip record whose range a resync copies instead. */
  #toSkip(req: MirrorRequest): void {
    if (req.kind === 'skip') return;
    log('volume %s: %s seq %d (%s) becomes a skip record', this.name, req.kind, req.seq, req.state);
    // a request known by its journal record only (its range unknown): the whole volume is resynced
    const offset = req.offset < 0 ? 0 : req.offset;
    const length = req.offset < 0 ? this.device.size : req.length;
    this.#bitmap.mark(offset, length);
    this.#resyncLater(offset, length);
    if (req.kind === 'write' && req.state !== 'acked') this.#pendingBytes -= req.length;
    req.kind = 'skip';
    req.owed = true;
    if (req.split !== undefined) req.split.partLost = true;
    this.#dropPayload(req);
    this.#setSpilled(req, false);
    req.owned = true;
    if (req.lag !== undefined && req.lag > 0) {
      this.#returnLag(req.lag);
      req.lag = 0;
    }
  }

  /** The target acknowledged `req` (a FLUSH_ACK with the target's `disk` state). @internal */
  acknowledged(req: MirrorRequest, digest?: Buffer, durable?: number, disk?: DiskState): void {
    req.slot = -1;
    if (req.state === 'inflight') this.#landed(req);
    if (req.kind === 'flush' || req.kind === 'hash') {
      if (!this.#flushes.delete(req)) return;
      req.state = 'acked';
      const onAck = req.onAck;
      req.onAck = undefined;
      onAck?.(digest);
      const done = req.onDone;
      req.onDone = undefined;
      done?.({ ok: true });
      if (durable !== undefined) this.#markDurable(durable);
      if (disk !== undefined) this.#peerSaid(disk, req.upToDate === true);
      this.#updateState();
      if (this.idle) this.emit('idle');
      return;
    }
    if (req.state === 'acked' || this.#requests.get(req.seq) !== req) return;
    req.state = 'acked';
    this.#unacked--;
    if (req.kind === 'write') {
      this.#pendingBytes -= req.length;
      this.#replicatedBytes += req.length;
    }
    // the payload is not needed any more: a target that loses it before it is durable gets the range by a resync
    this.#dropPayload(req);
    this.#setSpilled(req, false);
    this.#readAhead();
    const onAck = req.onAck;
    req.onAck = undefined;
    onAck?.(digest);
    if (req.lag !== undefined && req.lag > 0) {
      this.#returnLag(req.lag);
      req.lag = 0;
    }
    this.#advanceAcked();
    // many acknowledged requests wait for the target's durability (a backlog replayed fast): ask for it
    // now rather than at the next `durableInterval`, so that they are forgotten sooner
    if (req.kind === 'write') this.#ackedBytesSinceDurable += req.length;
    if (
      this.#durabilityFlush === undefined &&
      this.#link.up &&
      (this.#ackedBytesSinceDurable >= ACKED_FLUSH_BYTES || this.#requests.size - (this.#unacked - this.#backlog.count) >= ACKED_FLUSH_COUNT)
    ) {
      void this.makeDurable();
    }
    const done = req.onDone;
    req.onDone = undefined;
    if (done !== undefined) done({ ok: true });
    if (this.#failing && req.attempts > 0) this.#failing = false;
    this.#updateState();
    if (this.idle) this.emit('idle');
  }

  /**
   * A FLUSH_ACK told the target's disk state. After a flush that declared it
   * up-to-date (and nothing was marked to resync since), the pair is in sync:
   * recorded, with the time.
   */
  #peerSaid(disk: DiskState, declared: boolean): void {
    if (disk === 'up-to-date') {
      if (!declared || this.resyncing || this.#needs.dirtyCount > 0 || this.#peerDisk === 'up-to-date') return;
      this.#setPeer('up-to-date');
      this.#inconsistent = undefined;
      this.#storedPeer = 'up-to-date';
      this.#lastInSync = Date.now();
      void this.#savePair().catch((error: unknown) => log('volume %s: pair state not recorded: %s', this.name, (error as Error).message));
    } else if (disk !== this.#peerDisk && this.#peerDisk !== 'inconsistent') {
      this.#setPeer(disk);
    }
  }

  /** Moves the exact acknowledged prefix forward. */
  #advanceAcked(): void {
    for (;;) {
      const next = this.#requests.get(this.#ackedThrough + 1);
      if (next === undefined || next.state !== 'acked') break;
      this.#ackedThrough = next.end;
    }
    if (this.#unacked === 0) this.#ackedThrough = this.#lastSeq;
  }

  /**
   * The target holds every seq ≤ `seq` on stable storage: their journal
   * records are released, their regions covered, and the volume forgets them.
   */
  #markDurable(seq: number): void {
    if (seq <= this.#durableSeq) return;
    this.#durableSeq = seq;
    this.#acknowledgeThrough(seq, seq);
    for (const req of this.#inOrder().values()) {
      if (req.seq > seq) break;
      if (req.state !== 'acked') this.acknowledged(req);
      this.#requests.delete(req.seq);
      if (req.resync) this.#forgetResyncCopy(req);
      // (a skip that stands for backlog records the journal could not give back covers several)
      if (req.journaled) for (let s = req.seq; s <= req.end; s++) this.#journal.release(s);
      req.targetDurable = true;
      this.#covered(req);
    }
    this.#advanceAcked();
  }

  /** The target answered `req` with an error: report, keep, retry later. @internal */
  failed(req: MirrorRequest, error: BlockMirrorError): void {
    log('volume %s: %s seq %d failed on the target: %s', this.name, req.kind, req.seq, error.code);
    req.slot = -1;
    if (req.state === 'inflight') this.#landed(req);
    if (req.state === 'acked') return;
    req.state = 'queued';
    req.attempts++;
    this.#resendable(req);
    if (req.journalDurable && req.held > 0) this.#spillable.add(req);
    this.#mirrorErrors++;
    this.#lastError = error;
    this.#failing = true;
    if (this.#link.outagePolicy === 'degrade') this.#degrade(req, error);
    this.emit('mirror-error', { seq: req.seq, kind: req.kind, offset: req.offset, length: req.length, error });
    this.#setState('lagging');
    const timer = this.#link.clock.setTimeout(() => {
      this.#retryTimers.delete(timer);
      if (this.#closed || req.state !== 'queued') return;
      req.resend = true;
      this.queue.reinsert(req);
      this.#link.pump();
    }, this.#link.retryDelay(req.attempts));
    this.#retryTimers.add(timer);
  }

  /** `req` was in flight on a connection that closed: send it again. @internal */
  requeue(req: MirrorRequest): void {
    log('volume %s: %s seq %d requeued (was %s)', this.name, req.kind, req.seq, req.state);
    req.slot = -1;
    if (req.state !== 'inflight') return;
    this.#landed(req);
    req.state = 'queued';
    req.resend = true;
    this.#resendable(req);
    this.queue.reinsert(req);
    if (req.journalDurable && req.held > 0) {
      this.#spillable.add(req);
      this.#enforceBudget();
    }
  }

  /**
   * True when requests of this volume are in flight and every one of them
   * comes after `req` in send order: the target may hold them all until `req`
   * arrives, so `req` must not wait for room in the window or the payload
   * budget (only their answers could make it). One such request at a time:
   * once it is in flight, the next one waits for it. @internal
   */
  awaitedInFlight(req: MirrorRequest): boolean {
    if (this.#inFlight.size === 0) return false;
    const order = sendOrder(req);
    for (const other of this.#inFlight) if (sendOrder(other) < order) return false;
    return true;
  }

  /** `req` leaves on connection `slot`. @internal */
  sending(req: MirrorRequest, slot: number): void {
    req.state = 'inflight';
    req.slot = slot;
    this.#spillable.delete(req);
    this.#inFlight.add(req);
    if (req.end > this.#sentTop) this.#sentTop = req.end;
    if (req.kind === 'write') this.#link.payloadBudget.inFlight += req.length;
  }

  /** `req` is no longer in flight (answered, or its connection closed). */
  #landed(req: MirrorRequest): void {
    this.#inFlight.delete(req);
    if (req.kind === 'write') this.#link.payloadBudget.inFlight -= req.length;
  }

  /**
   * The next request to send, or undefined. Requests leave in seq order:
   * nothing is sent before every older request of the volume was sent.
   * @internal
   */
  nextToSend(): MirrorRequest | undefined {
    for (;;) {
      const req = this.queue.peek();
      const first = this.#backlog.first;
      if (first !== 0 && (req === undefined || first < sendOrder(req))) {
        // the next one lives in the journal only: read it (and the next ones) back, in order
        this.#readBack(first);
        return undefined;
      }
      if (req === undefined) return undefined;
      if (req.state === 'queued' && (this.#requests.get(req.seq) === req || this.#flushes.has(req))) {
        // a read-back queues what it loads when it ends: nothing from its start on leaves before
        if (this.#readingBack !== undefined && sendOrder(req) >= this.#readBackFrom) return undefined;
        // its bytes are the caller's until its journal append completes (which pumps again)
        if (req.borrowed) return undefined;
        if (!req.spilled) return req;
        // its payload is in the journal only: read it (and the next ones) back, in order
        this.#readBack(req.seq);
        return undefined;
      }
      this.queue.shift();
    }
  }

  /** Sets `req` in `#requests` (noting when it goes below the highest seq there, see `#inOrder`). */
  #adopt(req: MirrorRequest): void {
    this.#requests.set(req.seq, req);
    if (req.seq > this.#requestsTop) this.#requestsTop = req.seq;
    else this.#unordered = true;
  }

  /** `#requests`, in seq order (sorted again first if a request was set below the top, e.g. read back from the journal). */
  #inOrder(): Map<number, MirrorRequest> {
    if (this.#unordered) {
      this.#requests = new Map([...this.#requests].sort((a, b) => a[0] - b[0]));
      this.#unordered = false;
    }
    return this.#requests;
  }

  /** True while `req` waits in the send queue as a request its volume owns. */
  #isQueued(req: MirrorRequest): boolean {
    return req.state === 'queued' && (this.#requests.get(req.seq) === req || this.#flushes.has(req));
  }

  /**
   * A queued write or zero that the journal holds durably, whose payload is
   * not in RAM and that nobody waits for leaves RAM entirely: it joins the
   * journal-only backlog, as a seq of a run, and is made a request again when
   * it is read back (ordered after every older request, as after a restart).
   * It must be covered (see `#covered`), or lack only the local flush after
   * its completed local write: its regions then wait for that flush in
   * `#unflushed`. A zero does so only behind a backlog or while the link is
   * down (it is sent at once otherwise).
   */
  #toBacklog(req: MirrorRequest): void {
    if (req.state !== 'queued' || !req.journaled || !req.journalDurable || this.#closed) return;
    if (req.onDone !== undefined || req.onAck !== undefined || req.resync || req.resend || req.attempts > 0 || req.offset < 0) return;
    // not covered yet: only for want of a local flush after its (completed) local write, the journal being durable
    if (req.uncovered && !(this.#journalDurable && req.localWritten)) return;
    if (req.kind === 'write') {
      if (req.data !== undefined) return;
    } else if (req.kind !== 'zero' || (this.#backlog.count === 0 && this.#link.up)) {
      return;
    }
    const lag = req.lag ?? 0;
    if ((lag !== 0 && lag !== req.length) || req.seq <= this.#backlog.last || this.#requests.get(req.seq) !== req) return;
    this.#requests.delete(req.seq);
    this.#spillable.delete(req);
    this.#setSpilled(req, false);
    if (req.uncovered) {
      // its regions wait for the next local flush without it (its entry there goes in bulk)
      req.uncovered = false;
      if (++this.#localPendingStale > 1024 && this.#localPendingStale * 2 > this.#localPending.length) {
        this.#localPending = this.#localPending.filter((r) => r.uncovered);
        this.#localPendingStale = 0;
      }
      if (req.length > 0) {
        this.#unflushedRange(req.offset, req.length);
      }
    }
    this.#backlog.add(req.seq, req.kind === 'write' ? req.length : 0, (lag > 0 ? BACKLOG_LAGGED : 0) | (req.kind === 'zero' ? BACKLOG_ZERO : 0));
    // its object leaves the send queue in bulk
    if (++this.#queueStale > 256 && this.#queueStale * 2 > this.queue.length) {
      this.queue.prune((r) => this.#isQueued(r));
      this.#queueStale = 0;
    }
  }

  /** The target acknowledged `n` recovered requests: once it has all of them, the journal replay is done. */
  #replayed(n: number): void {
    const r = this.#replay;
    if (r === undefined || n <= 0) return;
    r.left -= n;
    if (r.left > 0) return;
    this.#replay = undefined;
    this.emit('replayed', { records: r.records, bytes: r.bytes, durationMs: this.#link.clock.now() - r.started });
  }

  /** Recovered requests (of the journal replay) among seqs `from`…`to`. */
  #recoveredIn(from: number, to: number): number {
    const r = this.#replay;
    return r === undefined || from > r.through ? 0 : Math.min(to, r.through) - from + 1;
  }

  /** Makes the oldest backlog seq a request again, from its journal record `entry`. */
  #fromBacklog(entry: PendingJournalEntry): MirrorRequest {
    const bytes = this.#backlog.firstBytes;
    const flags = this.#backlog.firstFlags;
    const zero = entry.kind === 'zero';
    if (zero !== ((flags & BACKLOG_ZERO) !== 0) || (zero ? 0 : entry.length) !== bytes) throw notLeftThere(this.name, entry.seq);
    this.#backlog.shift();
    const req = this.#request(entry.kind, entry.seq, entry.offset, entry.length, zero ? undefined : entry.data, entry.fua, entry.seq - 1);
    req.owned = true;
    req.journaled = true;
    req.journalDurable = true;
    // it was covered (locally durable) before it left RAM
    req.localDurable = true;
    req.lag = (flags & BACKLOG_LAGGED) !== 0 ? bytes : 0;
    if (this.#recoveredIn(req.seq, req.seq) > 0) req.onAck = this.#replayedOne;
    this.#adopt(req);
    this.#hold(req);
    return req;
  }

  /** Gives a spilled request its payload back from its journal record (and its range, if only the journal knew it). */
  #refill(req: MirrorRequest, entry: PendingJournalEntry): void {
    const zero = entry.kind === 'zero';
    if (entry.kind !== req.kind || (req.offset >= 0 ? entry.offset !== req.offset || entry.length !== req.length : !zero && entry.length !== req.length)) {
      throw notLeftThere(this.name, entry.seq);
    }
    req.offset = entry.offset;
    req.length = entry.length;
    req.fua = entry.fua;
    if (!zero) req.data = entry.data;
    this.#setSpilled(req, false);
    this.#hold(req);
  }

  /**
   * The journal could not give back the oldest record of the backlog: every
   * backlog seq becomes part of a skip record (one per run) and the whole
   * volume is resynced, since only the journal knew their ranges.
   */
  #abandonBacklog(): void {
    if (this.#backlog.count === 0) return;
    log('volume %s: %d journal-only requests become skip records; the volume is resynced', this.name, this.#backlog.count);
    const skips: MirrorRequest[] = [];
    let lag = 0;
    this.#backlog.takeThrough(Number.MAX_SAFE_INTEGER, (piece) => {
      const n = piece.to - piece.from + 1;
      const skip = this.#request('skip', piece.from, 0, 0, undefined, false, piece.from - 1);
      skip.end = piece.to;
      skip.owned = true;
      // it stands for writes a resync brings instead
      skip.owed = true;
      // its records are released once it is durable on the target
      skip.journaled = true;
      const recovered = this.#recoveredIn(piece.from, piece.to);
      if (recovered > 0) skip.onAck = () => this.#replayed(recovered);
      this.#unacked -= n - 1;
      if ((piece.flags & BACKLOG_ZERO) === 0) this.#pendingBytes -= n * piece.bytes;
      if ((piece.flags & BACKLOG_LAGGED) !== 0) lag += n * piece.bytes;
      this.#adopt(skip);
      skips.push(skip);
    });
    this.queue.insertSorted(skips);
    if (lag > 0) this.#returnLag(lag);
    this.markForResync();
  }

  /** Counts `req`'s payload in the budget (a write with data, once). */
  #hold(req: MirrorRequest): void {
    // (a borrowed payload is the caller's: counted once the request copies it)
    if (req.kind !== 'write' || req.data === undefined || req.held > 0 || req.borrowed) return;
    req.held = req.data.length;
    this.#link.payloadBudget.used += req.held;
    this.#bufferedBytes += req.held;
    this.#enforceBudget();
  }

  /**
   * Over the payload budget: queued requests whose payload the journal holds
   * drop their RAM copy, oldest first (and leave RAM entirely, see
   * `#toBacklog`).
   */
  #enforceBudget(): void {
    const budget = this.#link.payloadBudget;
    if (budget.used <= budget.limit) return;
    for (const req of this.#spillable) {
      if (budget.used <= budget.limit) break;
      this.#spillable.delete(req);
      if (req.state !== 'queued' || req.held === 0 || !req.journalDurable || req.kind !== 'write') continue;
      this.#spill(req);
    }
    // still over it: queued requests the journal could not take (it is full), and that no caller waits for, go to the bitmap
    if (budget.used <= budget.limit || !this.#journalSuspended || this.#converting) return;
    this.#converting = true;
    try {
      for (const req of this.#inOrder().values()) {
        if (budget.used <= budget.limit) break;
        if (req.state !== 'queued' || req.held === 0 || req.journaled || req.resync || req.onDone !== undefined || req.kind !== 'write') continue;
        this.#toSkip(req);
      }
    } finally {
      this.#converting = false;
    }
  }

  #converting = false;

  /** Drops the RAM copy of a queued request the journal holds (it is read back when its turn comes). */
  #spill(req: MirrorRequest): void {
    this.#dropPayload(req);
    this.#setSpilled(req, true);
    this.#toBacklog(req);
  }

  /**
   * Makes room in the budget for the requests from seq `from` on: queued
   * requests after it whose payload the journal holds drop their RAM copy,
   * oldest first, until `bytes` are free (they are read back in turn). So the
   * budget goes to the requests sent next, not to the newest ones.
   */
  #spillBehind(from: number, bytes: number): void {
    let freed = 0;
    for (const req of this.#spillable) {
      if (freed >= bytes) break;
      if (req.seq <= from || req.state !== 'queued' || req.held === 0 || !req.journalDurable || req.kind !== 'write') continue;
      freed += req.held;
      this.#spill(req);
    }
  }

  /** Drops `req`'s payload from RAM and from the budget. */
  #dropPayload(req: MirrorRequest): void {
    const data = req.data;
    req.data = undefined;
    // (bytes read back from the journal: their memory may hold the next reads)
    if (data !== undefined) this.#journal.recycle?.(data);
    this.#spillable.delete(req);
    if (req.held === 0) return;
    this.#link.payloadBudget.used -= req.held;
    this.#bufferedBytes -= req.held;
    req.held = 0;
    this.#openLagGate();
  }

  #readingBack: Promise<void> | undefined;
  /** Seq from which the read-back in progress loads requests (see `nextToSend`). */
  #readBackFrom = 0;
  /** Requests of `#requests` whose payload was dropped to the journal and not read back yet. */
  #spilledCount = 0;

  /** Marks `req` spilled or not, keeping {@link #spilledCount}. */
  #setSpilled(req: MirrorRequest, spilled: boolean): void {
    if (req.spilled === spilled) return;
    req.spilled = spilled;
    this.#spilledCount += spilled ? 1 : -1;
  }

  /**
   * While spilled or journal-only requests wait and the budget has room for
   * a batch, they are read back ahead of their turn, so that reading the
   * journal overlaps sending.
   */
  #readAhead(): void {
    if ((this.#spilledCount === 0 && this.#backlog.count === 0) || this.#readingBack !== undefined) return;
    let from = this.#backlog.count > 0 ? this.#backlog.first : Number.MAX_SAFE_INTEGER;
    if (this.#spilledCount > 0) {
      let scanned = 0;
      for (const req of this.#inOrder().values()) {
        if (req.seq >= from) break;
        if (req.spilled && req.state === 'queued') {
          from = req.seq;
          break;
        }
        // the spilled tail follows the requests held in RAM: give up on a long scan
        if (++scanned > 4096) break;
      }
    }
    if (from !== Number.MAX_SAFE_INTEGER) this.#readBack(from, true);
  }
  /** Queued requests whose payload the journal holds durably: their RAM copy may go when over budget. */
  readonly #spillable = new Set<MirrorRequest>();
  /** Payload bytes this volume's requests hold in RAM (counted in the primary's budget). */
  #bufferedBytes = 0;

  /**
   * Reads spilled requests' payloads and journal-only requests back from the
   * journal, from seq `from` on, in order, within the room the payload budget
   * has (up to a quarter of it; at least one request when none of this
   * volume is in flight, so that it always makes progress); then the pump
   * goes on. A spilled request whose record cannot be read becomes a skip
   * record and its range is resynced; when it is the backlog's oldest record,
   * the whole backlog does (see `#abandonBacklog`).
   */
  #readBack(from: number, ahead = false): void {
    // (nothing is read while no connection can carry it)
    if (this.#readingBack !== undefined || this.#closed || !this.#link.up) return;
    const budget = this.#link.payloadBudget;
    const batch = Math.max(1, Math.floor(budget.limit / 4));
    if (budget.limit - budget.used < batch) this.#spillBehind(from, batch - (budget.limit - budget.used));
    const room = budget.limit - budget.used;
    // Ahead of its turn: only a whole batch. Its turn, but no room: an acknowledgement frees some and pumps
    // again — unless nothing of this volume is in flight to free it, or what is in flight may wait for
    // `from` on the target (it was sent before, and newer requests after it): then at least one is read.
    if (ahead ? room < batch : room < Math.max(1, Math.floor(budget.limit / 8)) && this.#inFlight.size > 0 && from > this.#sentTop) return;
    const want = Math.max(1, Math.min(batch, room));
    this.#readBackFrom = from;
    this.#readingBack = (async () => {
      const loadedFromBacklog: MirrorRequest[] = [];
      let loaded = 0;
      let count = 0;
      let passed = 0;
      let failed = false;
      try {
        for await (const entry of this.#journal.pending(from - 1)) {
          if (this.#closed) break;
          let req: MirrorRequest | undefined;
          if (entry.seq === this.#backlog.first) {
            req = this.#fromBacklog(entry);
            loadedFromBacklog.push(req);
          } else {
            const r = this.#requests.get(entry.seq);
            if (r !== undefined && r.spilled && r.state === 'queued') {
              this.#refill(r, entry);
              req = r;
            }
          }
          if (req === undefined) {
            if (entry.kind === 'write') this.#journal.recycle?.(entry.data);
            // one that needs no reading: the run read ends (or, before it started, give up a long search)
            if (count > 0 || ++passed > 256) break;
            continue;
          }
          count++;
          loaded += req.held;
          if (loaded >= want || count >= READ_BACK_MAX_REQUESTS) break;
        }
      } catch (error) {
        this.#lastError = toBlockMirrorError(error);
        // (a journal closed under the read is not a record that cannot be read)
        failed = this.#lastError.code !== 'BM_ERR_CLOSED';
      }
      this.queue.insertSorted(loadedFromBacklog);
      if (failed && !this.#closed) {
        const head = this.#requests.get(from);
        if (head !== undefined && head.spilled && head.state === 'queued') this.#toSkip(head);
        if (this.#backlog.first === from) this.#abandonBacklog();
      }
    })().finally(() => {
      this.#readingBack = undefined;
      this.#link.pump();
    });
  }

  /**
   * The target applied every seq ≤ `applied` (and holds every seq ≤
   * `durable` on stable storage): the requests and backlog seqs it covers
   * are acknowledged, in seq order. Backlog seqs it holds durably are
   * forgotten at once (their journal records released); the others become
   * acknowledged requests known by their journal record only (`offset` -1)
   * until they are durable.
   */
  #acknowledgeThrough(applied: number, durable: number): void {
    const reqs: MirrorRequest[] = [];
    for (const req of this.#inOrder().values()) {
      if (req.end > applied) break;
      if (req.state !== 'acked') reqs.push(req);
    }
    let i = 0;
    const acknowledgeBefore = (seq: number): void => {
      for (; i < reqs.length && (reqs[i] as MirrorRequest).seq < seq; i++) {
        const req = reqs[i] as MirrorRequest;
        if (req.state !== 'acked') this.acknowledged(req);
      }
    };
    if (this.#backlog.count > 0 && this.#backlog.first <= applied) {
      let lag = 0;
      this.#backlog.takeThrough(applied, (piece) => {
        acknowledgeBefore(piece.from);
        const zero = (piece.flags & BACKLOG_ZERO) !== 0;
        const n = piece.to - piece.from + 1;
        this.#unacked -= n;
        if (!zero) {
          this.#pendingBytes -= n * piece.bytes;
          this.#replicatedBytes += n * piece.bytes;
        }
        if ((piece.flags & BACKLOG_LAGGED) !== 0) lag += n * piece.bytes;
        this.#replayed(this.#recoveredIn(piece.from, piece.to));
        for (let seq = piece.from; seq <= piece.to; seq++) {
          if (seq <= durable) {
            this.#journal.release(seq);
            continue;
          }
          const req = this.#request(zero ? 'zero' : 'write', seq, -1, zero ? 0 : piece.bytes, undefined, false, seq - 1);
          req.state = 'acked';
          req.owned = true;
          req.journaled = true;
          req.journalDurable = true;
          req.localDurable = true;
          this.#adopt(req);
        }
        if (piece.from <= this.#ackedThrough + 1 && piece.to > this.#ackedThrough) this.#ackedThrough = piece.to;
        this.#advanceAcked();
      });
      if (lag > 0) this.#returnLag(lag);
    }
    acknowledgeBefore(Number.MAX_SAFE_INTEGER);
    this.#advanceAcked();
  }

  /**
   * The handshake's answer for this volume: the target applied every seq ≤
   * `applied` of our stream, holds every seq ≤ `durable` on stable storage,
   * and its ordering state is incarnation `inc`. With the incarnation we saw
   * before, requests not acknowledged are simply sent again (the target
   * applies each at most once). With a new one (first contact, or the target
   * restarted) everything above `applied` must reach it again: requests whose
   * payload is gone become skip records and their ranges are resynced, and
   * seqs we no longer hold (a restart of ours) are skipped.
   * @internal
   */
  targetReady(applied: number, inc: string | undefined, durable: number | undefined): void {
    log('volume %s: target ready applied=%d inc=%s durable=%s (we: acked=%d last=%d inc=%s)', this.name, applied, inc, durable, this.#ackedThrough, this.#lastSeq, this.#targetInc);
    if (applied > this.#lastSeq) this.#lastSeq = applied;
    this.#acknowledgeThrough(applied, Math.min(durable ?? 0, applied));
    if (durable !== undefined) this.#markDurable(Math.min(durable, applied));
    if (inc !== undefined && inc === this.#targetInc) return;
    this.#targetInc = inc;
    const fresh = new Map<number, MirrorRequest>();
    let next = applied + 1;
    const hole = (from: number, to: number): void => {
      if (to < from) return;
      const skip = this.#request('skip', from, 0, 0, undefined, false, from - 1);
      skip.end = to;
      fresh.set(from, skip);
      this.#unacked++;
      this.queue.reinsert(skip);
    };
    // the backlog's runs hold their seqs (all above `applied` by now): no hole there
    let run = 0;
    const passRuns = (before: number): void => {
      for (; run < this.#backlog.runs; run++) {
        const r = this.#backlog.run(run);
        if (r.from >= before) break;
        hole(next, r.from - 1);
        next = Math.max(next, r.to + 1);
      }
    };
    for (const req of this.#inOrder().values()) {
      if (req.end <= applied) {
        fresh.set(req.seq, req);
        continue;
      }
      passRuns(req.seq);
      if (req.seq > next) hole(next, req.seq - 1);
      next = req.end + 1;
      fresh.set(req.seq, req);
      if (req.state !== 'acked') continue;
      // the target may have lost it: send it again — read back from the journal when only the journal
      // knows it, a skip when its payload is gone
      if (req.offset < 0) {
        this.#setSpilled(req, true);
        if (req.kind === 'write') this.#pendingBytes += req.length;
      } else if (req.data === undefined && req.kind !== 'zero') {
        this.#toSkip(req);
      }
      req.state = 'queued';
      this.#unacked++;
      this.queue.reinsert(req);
    }
    passRuns(Number.MAX_SAFE_INTEGER);
    hole(next, this.#lastSeq);
    this.#requests = fresh;
    this.#unordered = false;
    this.#requestsTop = Math.max(this.#requestsTop, this.#lastSeq);
    this.#ackedThrough = Math.min(this.#ackedThrough, applied);
    this.#advanceAcked();
    this.#updateState();
  }

  /** Fails waiting sync callers whose request is older than `timeout` ms (they stay queued). @internal */
  expireWaiters(now: number, timeout: number): void {
    const reject = this.#link.outagePolicy === 'suspend';
    for (const req of this.#inOrder().values()) {
      if (req.onDone === undefined) continue;
      if (now - req.createdAt < timeout) break;
      this.#degrade(req, new BlockMirrorError('BM_ERR_TIMEOUT', `the mirror did not acknowledge seq ${req.seq} within ${timeout} ms`), reject);
    }
    for (const req of this.#flushes) {
      if (now - req.createdAt >= timeout) {
        this.#degrade(req, new BlockMirrorError('BM_ERR_TIMEOUT', `the mirror did not acknowledge a flush within ${timeout} ms`), reject);
      }
    }
  }

  /**
   * The link went down: tell waiting sync callers now (degrade), and give up
   * digest probes — a resync holds its region's range lock while it waits
   * for one, and writes to the region must not wait for the link. @internal
   */
  linkDown(error: BlockMirrorError): void {
    for (const req of [...this.#flushes]) {
      if (req.kind !== 'hash' || req.onFail === undefined) continue;
      this.#flushes.delete(req);
      const fail = req.onFail;
      req.onFail = undefined;
      req.onAck = undefined;
      fail(error);
    }
    if (this.#link.outagePolicy === 'degrade') {
      for (const req of this.#requests.values()) this.#degrade(req, error);
      for (const req of this.#flushes) this.#degrade(req, error);
    }
    this.#updateState();
  }

  /** The link state changed. @internal */
  linkChanged(): void {
    this.#updateState();
  }

  /** True when nothing is pending. */
  get idle(): boolean {
    return this.#unacked === 0 && this.#flushes.size === 0;
  }

  /**
   * The operator resolved the volume's split brain here by discarding the
   * target's data: recorded durably, offered at the next handshake. @internal
   */
  async resolveDiscardRemote(): Promise<void> {
    if (!this.#splitBrain && this.#peerDisk !== 'diverged') {
      throw new BlockMirrorError('BM_ERR_NOT_DIVERGED', `volume ${this.name}: the target did not refuse it for a split brain or another lineage; nothing to resolve`, { details: { volume: this.name } });
    }
    this.#resolution = 'discard-remote';
    await this.#savePair();
  }

  /** The owed split-brain decision, if any. */
  get resolution(): Resolution | undefined {
    return this.#resolution;
  }

  /** True once the volume was demoted (read-only, its pairing state says `target`). */
  get demoted(): boolean {
    return this.#demoted;
  }

  /**
   * First step of a demotion: writes are refused from now on; resolves once
   * every write already past that check finished. `false` undoes it (a
   * demotion that could not drain). @internal
   */
  async stopWrites(stop = true): Promise<void> {
    this.#readOnly = stop;
    if (!stop) return;
    while (this.#writing > 0) await new Promise<void>((resolve) => (this.#writesDone = resolve));
  }

  /**
   * Last step of a demotion, once drained: a flush that declares the
   * target's image up-to-date and hands the volume over; once the target
   * acknowledged, the pairing state says `target`. @internal
   */
  async handOver(): Promise<void> {
    const req = this.#request('flush', 0, 0, 0, undefined, false, this.#ackedThrough);
    req.upToDate = true;
    req.handover = true;
    const outcome = await this.#waitFor(req);
    if (!outcome.ok) throw outcome.error;
    this.#demoted = true;
    await this.#savePair();
    this.#setState('demoted');
  }

  /** The target refused this volume: split brain (recorded: the target's image is `diverged`). @internal */
  splitBrainDetected(): void {
    this.#splitBrain = true;
    if (this.#peerDisk !== 'diverged') {
      this.#setPeer('diverged');
      void this.#savePair().catch((error: unknown) => log('volume %s: pair state not recorded: %s', this.name, (error as Error).message));
    }
    this.#updateState();
  }

  /**
   * Async back-pressure: admits a write of `bytes` into the lag (the bytes
   * written locally and not yet acknowledged by the target) at once, or
   * returns a promise that resolves once it is admitted. While the link is up
   * the lag stays within `maxAsyncLag` (a larger write waits for an empty
   * lag); waiting writes are admitted one by one in arrival order as room
   * frees up, each counted at once, so a wake-up never lets a crowd past the
   * limit (with the default limits the async backlog then fits the payload
   * budget, and nothing is spilled to the journal only to be read back).
   * While the link is down writes never wait: the journal (then the bitmap)
   * absorbs them.
   */
  #lagGate(bytes: number): Promise<void> | undefined {
    if (this.#lagWaiters.length === 0 && this.#lagRoom(bytes)) {
      this.#lagBytes += bytes;
      return undefined;
    }
    return new Promise<void>((resolve) => this.#lagWaiters.push({ bytes, admit: resolve }));
  }

  #lagRoom(bytes: number): boolean {
    const limit = this.#link.maxAsyncLag;
    return limit === 0 || !this.#link.up || this.#closed || this.#lagBytes === 0 || this.#lagBytes + bytes <= limit;
  }

  #returnLag(bytes: number): void {
    this.#lagBytes -= bytes;
    this.#openLagGate();
  }

  #openLagGate(): void {
    while (this.#lagWaiters.length > 0 && this.#lagRoom(this.#lagWaiters[0]!.bytes)) {
      const w = this.#lagWaiters.shift()!;
      this.#lagBytes += w.bytes;
      w.admit();
    }
  }

  #updateState(): void {
    this.#openLagGate();
    if (this.mode === 'local') return;
    if (this.#demoted) {
      this.#setState('demoted');
      return;
    }
    if (this.#splitBrain) {
      this.#setState('split-brain');
      return;
    }
    if (this.idle && this.#journalSuspended && this.#journal.size === 0) this.#journalSuspended = false;
    if (this.resyncing) this.#setState('inconsistent');
    else if (this.#needs.dirtyCount > 0) this.#setState('needs-resync');
    else if (this.idle && this.#requests.size === 0 && this.#backlog.count === 0 && this.#peerDisk === 'up-to-date') {
      this.#sweepRegions(0);
      this.#setState('in-sync');
    }
    else {
      this.#setState(this.#link.up && !this.#failing ? 'replicating' : 'lagging');
      // in-sync means durable on the target, and its image up-to-date: ask for both once nothing else was pending for `durableDelay`
      if (this.idle && this.#link.up && !this.#closed && this.#durableTimer === undefined) {
        this.#durableTimer = this.#link.clock.setTimeout(() => {
          this.#durableTimer = undefined;
          if (this.idle && !this.#closed) void this.makeDurable();
        }, this.#link.durableDelay);
      }
    }
  }

  #setState(state: VolumeState): void {
    if (state === this.#state) return;
    if (this.#state === 'in-sync') this.#lastInSync = Date.now();
    this.#state = state;
    this.emit('state', state);
  }

  /** Every seq ≤ this was acknowledged by the target. */
  get ackedSeq(): number {
    return this.#ackedThrough;
  }

  /** The oldest `n` requests not acknowledged, as `kind#seq:state@slot` (diagnostics). @internal */
  describePending(n = 4): string[] {
    const out: string[] = [`lag=${this.#lagBytes}/${this.#lagWaiters.length}`, `lock=${this.#lock.size}`];
    if (this.#backlog.count > 0) out.push(`journal-only ${this.#backlog.count} from #${this.#backlog.first} (${this.#backlog.runs} runs)`);
    if (this.#readingBack !== undefined) out.push(`reading back from #${this.#readBackFrom}`);
    const head = this.queue.peek();
    if (head !== undefined) out.push(`head ${head.kind}#${head.seq}:${head.state}${this.#isQueued(head) ? '' : ':stale'}${head.spilled ? ':spilled' : ''}`);
    out.push(`inflight=${this.#inFlight.size} budget=${this.#link.payloadBudget.used}/${this.#link.payloadBudget.inFlight}/${this.#link.payloadBudget.limit}`);
    for (const req of this.#inOrder().values()) {
      if (out.length >= n + 2) break;
      if (req.state !== 'acked') out.push(`${req.kind}#${req.seq}:${req.state}@${req.slot}${req.resend ? ':resend' : ''}`);
    }
    for (const req of this.#flushes) {
      if (out.length >= 2 * n) break;
      out.push(`${req.kind}(bar ${req.barrier}):${req.state}@${req.slot}`);
    }
    return out;
  }

  /** Payload bytes held, by request state and origin (diagnostics). @internal */
  describeHeld(): Record<string, number> {
    const out: Record<string, number> = {};
    for (const req of this.#requests.values()) {
      if (req.held === 0) continue;
      const key = `${req.state}${req.resync ? '/resync' : ''}${req.journaled ? '/journaled' : ''}${req.journalDurable ? '/jdurable' : ''}`;
      out[key] = (out[key] ?? 0) + req.held;
    }
    return out;
  }

  /**
   * What this volume keeps in RAM for its pending requests (diagnostics and
   * tests): request objects, journal-only requests and their runs, payload
   * bytes held. @internal
   */
  describeMemory(): { requests: number; journalOnly: number; runs: number; queue: number; heldBytes: number; inFlightBytes: number } {
    return {
      requests: this.#requests.size + this.#flushes.size,
      journalOnly: this.#backlog.count,
      runs: this.#backlog.runs,
      queue: this.queue.length,
      heldBytes: this.#bufferedBytes,
      inFlightBytes: this.#link.payloadBudget.inFlight,
    };
  }

  /** Every seq ≤ this is on the target's stable storage. */
  get durableSeq(): number {
    return this.#durableSeq;
  }

  /** True when every acknowledged request is also durable on the target. */
  get durable(): boolean {
    return this.#requests.size === 0 && this.#backlog.count === 0;
  }

  /**
   * Asks the target to make everything acknowledged so far durable (a
   * flush). Resolves once it answered; journal records and write-intent bits
   * of what it covers are then released. @internal
   */
  makeDurable(): Promise<void> {
    this.#sweepRegions(REGION_HOLD_MS);
    if ((this.#localPending.length > 0 || this.#unflushed.size > 0) && !this.#closed) void this.#flushLocal().catch(() => undefined);
    // nothing to make durable, and the target's image is known up-to-date (or cannot be declared so yet)
    const declare = this.#needs.dirtyCount === 0 && !this.resyncing && !this.#splitBrain;
    const nothingPending = this.#requests.size === 0 && this.#backlog.count === 0;
    if (this.#closed || (nothingPending && (this.#peerDisk === 'up-to-date' || !declare || !this.#link.up))) return Promise.resolve();
    // Ordered after what is acknowledged, not after what waits (a long backlog being replayed): the
    // acknowledged requests are forgotten as it goes, not at its end. It declares the target's image
    // ours only when that is everything.
    const barrier = this.#ackedThrough;
    const declares = declare && barrier >= this.#lastSeq;
    if (!nothingPending && barrier <= this.#durableSeq && !declares) return Promise.resolve();
    // a flush in progress covers what was acknowledged when it was issued: a later one covers the rest
    if (this.#durabilityFlush !== undefined) {
      return this.#durabilityBarrier >= barrier ? this.#durabilityFlush : this.#durabilityFlush.then(() => this.makeDurable());
    }
    const req = this.#request('flush', 0, 0, 0, undefined, false, barrier);
    this.#durabilityBarrier = barrier;
    this.#ackedBytesSinceDurable = 0;
    // nothing is left to resync: once the target applied and flushed everything up to here, its image is ours
    if (declares) req.upToDate = true;
    const flushed = new Promise<void>((resolve) => {
      req.onDone = (outcome) => {
        this.#durabilityFlush = undefined;
        // nobody waits for a durability flush that failed: the next one replaces it
        if (!outcome.ok) this.#flushes.delete(req);
        resolve();
      };
      this.#enqueue(req);
    });
    this.#durabilityFlush = flushed;
    return flushed;
  }

  /** Plain-object status. */
  status(): PrimaryVolumeStatus {
    const inSync = this.#state === 'in-sync';
    const s: PrimaryVolumeStatus = {
      name: this.name,
      mode: this.mode,
      state: this.#state,
      inSync,
      disk: 'up-to-date',
      peerDisk: this.mode === 'local' ? 'unknown' : this.peerDisk,
      size: this.device.size,
      blockSize: this.device.blockSize,
      lastSeq: this.#lastSeq,
      ackedSeq: this.ackedSeq,
      pendingRequests: this.#unacked + this.#flushes.size,
      pendingBytes: this.#pendingBytes,
      bufferedBytes: this.#bufferedBytes,
      replicatedBytes: this.#replicatedBytes,
      mirrorErrors: this.#mirrorErrors,
      journalEntries: this.#journal.size,
      resyncRegions: this.#needs.dirtyCount,
      resyncBytes: this.#needs.dirtyBytes,
      bitmapDirtyRegions: this.#bitmap.dirtyCount,
      journalBytes: this.#journal.stats().usedBytes,
      journalCapacity: this.#journal.stats().capacityBytes,
    };
    if (this.mode !== 'local') s.generation = this.#gen.current;
    if (this.#resolution !== undefined) s.resolution = this.#resolution;
    if (this.#failback !== undefined) s.failback = { ...this.#failback };
    const last = inSync ? Date.now() : this.#lastInSync;
    if (last !== undefined && this.mode !== 'local') s.lastInSyncAt = new Date(last).toISOString();
    if (this.#lastError !== undefined) s.lastError = { code: this.#lastError.code, message: this.#lastError.message };
    return s;
  }

  /** Stops accepting requests; waiting callers are told the mirror failed. @internal */
  shutdown(): void {
    this.#closed = true;
    this.#openLagGate();
    if (this.#durableTimer !== undefined) this.#link.clock.clearTimeout(this.#durableTimer);
    this.#durableTimer = undefined;
    for (const t of this.#retryTimers) this.#link.clock.clearTimeout(t);
    this.#retryTimers.clear();
    for (const req of this.#requests.values()) this.#degrade(req, closedError(this.name));
    for (const req of this.#flushes) this.#degrade(req, closedError(this.name));
  }

  /** The volume's journal. @internal */
  get journal(): Journal {
    return this.#journal;
  }

  /**
   * Switches to `journal` and the durable stream state (before the first
   * write) and recovers the journal's pending entries: they are queued again,
   * oldest first, to be sent before any new write. Sequence numbers continue
   * above every seq the previous run may have used (`stream.reserved`); the
   * first handshake tells which of the recovered entries the target already
   * holds and skips the seqs nobody holds any more. With a new stream (no
   * valid stream state) the recovered entries' ranges are also resynced: the
   * target's ordering state cannot tell what of them it applied. With
   * `durable` false (fsync `none`) a journaled write keeps its write-intent
   * bit until the target holds it durably.
   * @internal
   */
  async useJournal(
    journal: Journal,
    stream: { id: string; reserved: number; continued: boolean },
    reserve: (through: number) => Promise<void>,
    durable: boolean,
  ): Promise<number> {
    this.#journal = journal;
    this.#journalDurable = durable;
    this.stream = stream.id;
    let recovered = 0;
    let recoveredBytes = 0;
    let lastRecovered = 0;
    const started = this.#link.clock.now();
    let journalOnly = false;
    for await (const entry of journal.pending()) {
      const zero = entry.kind === 'zero';
      if (!stream.continued) this.markForResync(entry.offset, entry.length);
      if (!zero) {
        this.#pendingBytes += entry.length;
        recoveredBytes += entry.length;
      }
      this.#unacked++;
      recovered++;
      lastRecovered = entry.seq;
      // within the payload budget the record's data stays in RAM; past it, the rest stays in the journal only
      // (read back when its turn comes)
      journalOnly ||= !zero && this.#link.payloadBudget.used + entry.length > this.#link.payloadBudget.limit;
      if (journalOnly) {
        this.#backlog.add(entry.seq, zero ? 0 : entry.length, zero ? BACKLOG_ZERO : 0);
        if (!zero) journal.recycle?.(entry.data);
        continue;
      }
      const req = this.#request(entry.kind, entry.seq, entry.offset, entry.length, entry.data, entry.fua, entry.seq - 1);
      req.owned = true;
      req.journaled = true;
      req.journalDurable = true;
      // its local write belongs to the previous run: the bitmap still marks it if it was not durable
      req.localDurable = true;
      this.#adopt(req);
      this.#hold(req);
      if (req.held > 0) this.#spillable.add(req);
      this.queue.push(req);
      // journal replay: done once the target acknowledged every recovered request
      req.onAck = this.#replayedOne;
    }
    if (recovered > 0) this.#replay = { through: lastRecovered, left: recovered, records: recovered, bytes: recoveredBytes, started };
    this.#lastSeq = Math.max(this.#lastSeq, journal.lastSeq, stream.continued ? stream.reserved : 0);
    this.#journaledSeq = this.#lastSeq;
    this.#completedSeq = this.#lastSeq;
    this.#lastWriteSeq = this.#lastSeq;
    this.#ackedThrough = 0;
    this.#reserved = this.#lastSeq;
    this.#reserve = reserve;
    await this.#extendReservation();
    if (recovered > 0) this.#updateState();
    return recovered;
  }

  /**
   * Switches to a persistent write-intent bitmap (before the first write).
   * Every region it holds dirty may differ on the target (the primary stopped
   * with writes to it pending): those regions are resynced. With `alone`
   * (a state directory without a journal directory) no journal clears its
   * bits — only the target's durable acknowledgements do — so it names
   * every region the target may lack, and the pairing state records it as
   * the failback bitmap (`PairState.bitmapOf`, with the target's node id).
   * @internal
   */
  useBitmap(bitmap: DirtyBitmap, alone = false): number {
    this.#bitmap = bitmap;
    this.#persistentBitmap = true;
    if (alone) {
      // no durable journal: a request only in the (memory) journal is not covered, its bit stays until the target holds it
      this.#bitmapAlone = true;
      this.#journalDurable = false;
    }
    const dirty = this.#needs.merge(bitmap);
    if (dirty > 0) this.#updateState();
    return dirty;
  }

  /** The write-intent bitmap. @internal */
  get bitmap(): DirtyBitmap {
    return this.#bitmap;
  }

  /** Marks a range (default: the whole volume) to be copied to the target by the next resync. */
  markForResync(offset = 0, length = this.device.size): void {
    checkRange(this.device, offset, length);
    this.#bitmap.mark(offset, length);
    this.#resyncLater(offset, length);
    this.#updateState();
  }

  /** Regions to resync, in order (a live walk). @internal */
  resyncRegions(): Generator<BitmapRegion, void, undefined> {
    return this.#needs.dirtyRegions();
  }

  /** Bytes left to resync. @internal */
  get resyncBytes(): number {
    return this.#needs.dirtyBytes;
  }

  /** Sets whether a resync runs (state `inconsistent` vs `needs-resync`). @internal */
  setResyncing(running: boolean): void {
    this.resyncing = running;
    this.#updateState();
  }

  /**
   * Asks the target for the digest of a range, ordered after every write
   * issued so far. Resolves with the digest; a connection loss resends it.
   * @internal
   */
  probe(offset: number, length: number, alg: RegionHashAlgorithm): Promise<Buffer> {
    // no waiting for the link under a range lock (see linkDown)
    if (!this.#link.up) return Promise.reject(new BlockMirrorError('BM_ERR_CONNECTION_CLOSED', 'the link to the mirror target is down'));
    const req = this.#request('hash', 0, offset, length, undefined, false, this.#lastSeq);
    req.alg = alg;
    return new Promise<Buffer>((resolve, reject) => {
      req.onAck = (digest) => (digest === undefined ? reject(new BlockMirrorError('BM_ERR_PROTOCOL', 'HASH_ACK without a digest')) : resolve(digest));
      req.onFail = reject;
      this.#enqueue(req);
    });
  }

  /**
   * Copies one region to the target (resync): under the region's range lock,
   * optionally compares digests first (checksum resync: identical regions are
   * not sent), then reads the primary's current data and sends it as a write
   * ordered after every earlier write. Resolves with the payload bytes sent
   * once the target acknowledged (the region is then no longer to resync).
   * @internal
   */
  async resyncRegion(region: BitmapRegion, checksum: RegionHashAlgorithm | undefined): Promise<ResyncCopy> {
    const release = await this.#lock.acquire(region.offset, region.length);
    let acked: Promise<void>;
    let copy: ResyncCopy;
    try {
      if (this.#closed) throw closedError(this.name);
      // zero-aware: a region the device knows to be zero is not read; one read as all zero goes as a zero range
      let zero = await knownZero(this.device, region.offset, region.length);
      let data: Buffer | undefined;
      if (checksum !== undefined) {
        // the local digest: of zeroes (known zero), or of the data read
        const marked = this.#needsMarked;
        const [read, remote] = await Promise.all([zero ? undefined : this.device.read(region.offset, region.length), this.probe(region.offset, region.length, checksum)]);
        const local = read === undefined ? zeroDigest(checksum, region.length) : digestOf(read, checksum);
        // equal, unless the target may have lost something since it answered (the copy then goes anyway)
        if (local.equals(remote) && this.#needsMarked === marked) {
          this.#equalRegions([region]);
          return { bytes: 0, zeroBytes: 0 };
        }
        data = read;
      } else if (!zero) {
        data = await this.device.read(region.offset, region.length);
      }
      if (data !== undefined && isAllZero(data)) {
        zero = true;
        data = undefined;
      }
      if (!zero && region.length > this.#link.maxPayload) throw tooLarge(this.name, region.length, this.#link.maxPayload);
      ({ acked } = await this.#queueResyncCopy(region.offset, region.length, data));
      copy = zero ? { bytes: 0, zeroBytes: region.length } : { bytes: region.length, zeroBytes: 0 };
    } finally {
      release();
    }
    await acked;
    return copy;
  }

  /**
   * Copies a run of adjacent regions the device knows to read as zeroes as one
   * zero range (resync), under the run's range lock. Resolves with undefined
   * (nothing done) when part of the run is not known zero any more.
   * @internal
   */
  async resyncZeroRun(regions: readonly BitmapRegion[], checksum: RegionHashAlgorithm | undefined): Promise<ResyncCopy | undefined> {
    const first = regions[0]!;
    const last = regions.at(-1)!;
    const offset = first.offset;
    const length = last.offset + last.length - offset;
    const release = await this.#lock.acquire(offset, length);
    let acked: Promise<void>;
    try {
      if (this.#closed) throw closedError(this.name);
      if (!(await knownZero(this.device, offset, length))) return undefined;
      if (regions.some((r) => !this.#needs.isDirty(r.index))) return undefined;
      // checksum resync: one digest of the whole run on the target; zeroes there already: nothing to send
      const marked = this.#needsMarked;
      if (checksum !== undefined && (await this.probe(offset, length, checksum)).equals(zeroDigest(checksum, length)) && this.#needsMarked === marked) {
        this.#equalRegions(regions);
        return { bytes: 0, zeroBytes: 0 };
      }
      ({ acked } = await this.#queueResyncCopy(offset, length, undefined));
    } finally {
      release();
    }
    await acked;
    return { bytes: 0, zeroBytes: length };
  }

  /** `req`, a resync copy, is durable on the target: later copies of its regions need not wait for it. */
  #forgetResyncCopy(req: MirrorRequest): void {
    const last = this.#needs.regionIndex(req.offset + req.length - 1);
    for (let i = this.#needs.regionIndex(req.offset); i <= last; i++) if (this.#resyncCopies.get(i) === req) this.#resyncCopies.delete(i);
  }

  /** Marks a range to be copied by the next resync. */
  #resyncLater(offset: number, length: number): void {
    this.#needsMarked++;
    this.#needs.mark(offset, length);
  }

  /** Regions a checksum resync found equal on both sides: no longer to resync (their bits wait for a local flush with a persistent bitmap). */
  #equalRegions(regions: readonly BitmapRegion[]): void {
    for (const region of regions) {
      this.#needs.clearRegion(region.index);
      if (this.#persistentBitmap) this.#awaitLocalFlush(region.offset, region.length);
      else this.#cleanRegion(region.index);
    }
    this.#updateState();
  }

  /**
   * Queues a resync copy of a range of whole regions (its data, or a zero
   * range when `data` is undefined) ordered after every earlier write, and
   * takes the regions off the resync list; `acked` resolves once the target
   * acknowledged it. Called under the range's lock.
   */
  async #queueResyncCopy(offset: number, length: number, data: Buffer | undefined): Promise<{ acked: Promise<void> }> {
    if (this.#lastSeq >= this.#reserved) await this.#extendReservation();
    if (this.#closed) throw closedError(this.name);
    const seq = this.#takeSeq();
    this.#lastResyncSeq = seq;
    // after every earlier write (one of them may overlap the range) and every
    // earlier copy of the range; other regions' resync writes may be applied
    // in any order among themselves
    let barrier = this.#lastWriteSeq;
    const first = this.#needs.regionIndex(offset);
    const last = this.#needs.regionIndex(offset + length - 1);
    for (let i = first; i <= last; i++) {
      const earlier = this.#resyncCopies.get(i);
      if (earlier !== undefined && this.#requests.get(earlier.seq) === earlier && earlier.seq > barrier) barrier = earlier.seq;
    }
    const req = this.#request(data === undefined ? 'zero' : 'write', seq, offset, length, data, false, barrier);
    for (let i = first; i <= last; i++) this.#resyncCopies.set(i, req);
    req.owned = true;
    req.resync = true;
    // what it copies may not be on the primary's stable storage yet: its bit stays until a local flush too
    this.#localDone(req, false);
    // the write-intent bit stays until the target holds the copy durably
    this.#cover(offset, length);
    req.uncovered = true;
    const acked = new Promise<void>((resolve) => {
      req.onAck = () => resolve();
    });
    // off the resync list before it is queued, not after: a copy that becomes
    // a skip record at once (no room while the link is down) marks them again
    for (let i = first; i <= last; i++) this.#needs.clearRegion(i);
    this.#enqueue(req);
    return { acked };
  }

  /**
   * Online verify of one region: digests of the primary's and the target's
   * copy, taken at the same point of the write stream (under the region's
   * range lock). Resolves true when they match.
   * @internal
   */
  async verifyRegion(region: BitmapRegion, alg: RegionHashAlgorithm): Promise<boolean> {
    const release = await this.#lock.acquire(region.offset, region.length);
    try {
      const [local, remote] = await Promise.all([hashRegion(this.device, region.offset, region.length, alg), this.probe(region.offset, region.length, alg)]);
      return local.equals(remote);
    } finally {
      release();
    }
  }
}

const noRelease = (): void => undefined;

/** What one resync copy sent: payload bytes, and bytes sent as a zero range (no payload). @internal */
export interface ResyncCopy {
  bytes: number;
  zeroBytes: number;
}

function digestOf(data: Buffer, alg: RegionHashAlgorithm): Buffer {
  return createHash(alg).update(data).digest();
}

/** A region written lately (see `PrimaryVolume.#regions`). */
interface RegionUse {
  /** Writes to it not covered yet. */
  uncovered: number;
  /** Clock time of its last write. */
  lastWritten: number;
}

/** A journal record read back is not the request the volume left there. */
function notLeftThere(name: string, seq: number): BlockMirrorError {
  return new BlockMirrorError('BM_ERR_IO', `volume ${name}: journal record seq ${seq} is not the request that was left in the journal`, {
    details: { volume: name, seq },
  });
}

function closedError(name: string): BlockMirrorError {
  return new BlockMirrorError('BM_ERR_CLOSED', `volume ${name} is closed`);
}

/** A write that no mirror request can carry (its payload exceeds the link's limit): refused before it takes a seq. */
function tooLarge(name: string, length: number, maxPayload: number): BlockMirrorError {
  return new BlockMirrorError('BM_ERR_FRAME_TOO_LARGE', `volume ${name}: a mirror request of ${length} bytes exceeds the link's payload limit of ${maxPayload}`, {
    details: { volume: name, payloadLength: length, maxPayloadLength: maxPayload },
  });
}

/**
 * Result of a write sent as parts: `failed` (with the first part's error) if
 * any part failed, else the parts' common answer; `seq` is the last part's
 * (once `ackedSeq` reaches it, every part is acknowledged).
 */
function combineResults(sofar: WriteResult | undefined, part: WriteResult): WriteResult {
  if (sofar === undefined) return part;
  const r: WriteResult = sofar.mirror === 'failed' ? { ...sofar } : { ...part };
  const seq = part.seq ?? sofar.seq;
  if (seq !== undefined) r.seq = seq;
  else delete r.seq;
  const seqs = sofar.partSeqs ?? (sofar.seq === undefined ? [] : [sofar.seq]);
  r.partSeqs = part.seq === undefined ? seqs : [...seqs, part.seq];
  return r;
}

function toResult(outcome: MirrorOutcome, seq: number | undefined): WriteResult {
  if (!outcome.ok && outcome.reject === true) throw outcome.error;
  const r: WriteResult = outcome.ok ? { mirror: 'acknowledged' } : { mirror: 'failed', error: outcome.error };
  if (seq !== undefined) r.seq = seq;
  return r;
}

/**
 * The failback ranges of a READY checked against the volume (sorted and
 * disjoint were checked by the codec) and widened to whole blocks (a
 * superset, as the mapping onto regions is).
 */
function failbackRanges(ranges: readonly number[], size: number, blockSize: number, name: string): number[] {
  const out: number[] = [];
  for (let k = 0; k < ranges.length; k += 2) {
    const offset = ranges[k]!;
    const length = ranges[k + 1]!;
    if (length > size || offset > size - length) {
      throw new BlockMirrorError('BM_ERR_PROTOCOL', `volume ${name}: the target's failback range ${offset}+${length} lies beyond the volume (${size} bytes)`, { details: { volume: name } });
    }
    const start = offset - (offset % blockSize);
    const end = Math.min(size, Math.ceil((offset + length) / blockSize) * blockSize);
    out.push(start, end - start);
  }
  return out;
}
