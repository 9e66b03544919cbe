/**
 * The durable pairing state of one volume on one node: the lineage of its
 * data (generation ids and history), the disk state of its own image, the
 * disk state of the peer's image as last known, and when the pair was last
 * known in sync. Both sides keep it (a primary and a mirror target), in the
 * node's state directory (`<dir>/<volume>.state`) or wherever a
 * {@link PairStateStore} puts it.
 *
 * Disk states follow DRBD's vocabulary:
 * - `up-to-date`: the image is a complete copy of the primary's data (a
 *   primary's own image always is);
 * - `inconsistent`: a sync or resync into it is running or was interrupted:
 *   the image is no image the primary ever had, not usable as a copy;
 * - `outdated`: consistent (an image the primary had at some point) but
 *   behind: the primary wrote since;
 * - `diverged`: both sides wrote while apart (split brain): neither is a copy
 *   of the other;
 * - `unknown`: never paired (a blank target), or not known (a peer not seen yet).
 *
 * @module
 */
import { readStateFile, writeStateFile } from '../storage/state-file.js';
import { BlockMirrorError } from '../errors.js';
import { isGenerationId, MAX_HISTORY, type GenerationState } from './generation.js';

/** Disk state of a volume's image (see the module documentation). */
export type DiskState = 'up-to-date' | 'inconsistent' | 'outdated' | 'diverged' | 'unknown';

/** Every {@link DiskState}. */
export const DISK_STATES: readonly DiskState[] = ['up-to-date', 'inconsistent', 'outdated', 'diverged', 'unknown'];

/** True when `s` is a {@link DiskState}. */
export function isDiskState(s: unknown): s is DiskState {
  return typeof s === 'string' && (DISK_STATES as readonly string[]).includes(s);
}

/** What a node keeps about one volume's pairing across restarts. */
export interface PairState {
  /** Lineage of the data the volume holds (absent: a blank target volume that never held a primary's data). */
  generations?: GenerationState;
  /** Disk state of this node's image. */
  disk: DiskState;
  /** Disk state of the peer's image, as last known. */
  peer: DiskState;
  /** Wall-clock time (epoch ms) when the pair was last known in sync (absent: never). */
  lastInSync?: number;
  /**
   * Which role last served this image (absent: not recorded, as before roles
   * existed): `primary` (a primary wrote it, or it was promoted), `target` (a
   * mirror target received it, or its primary was demoted). A primary refuses
   * to serve an image whose role is `target` (`BM_ERR_DEMOTED`); a target
   * hosting an image whose role is `primary` treats it as possibly ahead of
   * any other copy (a primary may have written it after the last
   * acknowledgement): it is resynced by checksum before it counts as a copy.
   */
  role?: PairRole;
  /**
   * A split-brain decision taken by the operator and not yet applied (see
   * `resolve`): `discard-local` (a target: accept the refused primary's
   * lineage and drop this image's own data), `discard-remote` (a primary: the
   * target drops its data at the next handshake). Cleared once applied.
   */
  resolution?: Resolution;
  /** A target: its primary handed the volume over (demoted, drained, up-to-date): it may be promoted without force. */
  handedOver?: boolean;
  /**
   * The write-intent bitmap kept beside this state (`<dir>/<volume>.bitmap`)
   * holds every region where this image may differ from the image of node
   * `peer` as of generation `generation`: a bit is set before a local write
   * and cleared only once `peer` held the write durably (no journal clears
   * it). A primary whose bitmap lives in its state directory (no journal
   * directory) records it with its current generation and the mirror it
   * mirrors to. A target keeps it after a failback claim (see
   * `claim-decision.ts`) until its image is `up-to-date` again, so that a
   * failback interrupted by a crash or a lost reply still resyncs only those
   * regions; it is then dropped and the bitmap file removed.
   */
  bitmapOf?: BitmapOwner;
}

/** See {@link PairState.bitmapOf}. */
export interface BitmapOwner {
  /** Generation of this image the bitmap belongs to. */
  generation: string;
  /** Node id of the mirror whose durable acknowledgements alone clear its bits. */
  peer: string;
}

/** Role that last served a volume's image (see {@link PairState.role}). */
export type PairRole = 'primary' | 'target';

/**
 * How a split brain (or an unrelated lineage) is resolved by hand:
 * `discard-local` drops this side's data, `discard-remote` the peer's.
 */
export type Resolution = 'discard-local' | 'discard-remote';

/** Where a volume's {@link PairState} is kept (one store per volume). */
export interface PairStateStore {
  /** The stored state, or undefined when none was ever stored (a volume never paired). */
  load(): Promise<PairState | undefined>;
  /** Stores the state durably, replacing the previous one atomically. */
  save(state: PairState): Promise<void>;
}

/** A copy of `s` that shares nothing with it. */
export function copyPairState(s: PairState): PairState {
  const out: PairState = { disk: s.disk, peer: s.peer };
  if (s.generations !== undefined) out.generations = { current: s.generations.current, history: [...s.generations.history] };
  if (s.lastInSync !== undefined) out.lastInSync = s.lastInSync;
  if (s.role !== undefined) out.role = s.role;
  if (s.resolution !== undefined) out.resolution = s.resolution;
  if (s.handedOver === true) out.handedOver = true;
  if (s.bitmapOf !== undefined) out.bitmapOf = { generation: s.bitmapOf.generation, peer: s.bitmapOf.peer };
  return out;
}

/**
 * Checks a {@link PairState} (as given to `save` or read from a file).
 *
 * @throws {BlockMirrorError} `BM_ERR_INVALID_ARGUMENT` naming `what` when it is not valid.
 */
export function checkPairState(s: unknown, what = 'pair state'): PairState {
  const bad = (why: string): BlockMirrorError => new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', `${what} is not valid: ${why}`);
  if (s === null || typeof s !== 'object' || Array.isArray(s)) throw bad('not an object');
  const p = s as Partial<PairState>;
  if (!isDiskState(p.disk)) throw bad('disk must be a disk state');
  if (!isDiskState(p.peer)) throw bad('peer must be a disk state');
  if (p.lastInSync !== undefined && (typeof p.lastInSync !== 'number' || !Number.isSafeInteger(p.lastInSync) || p.lastInSync < 0)) throw bad('lastInSync must be epoch milliseconds');
  if (p.role !== undefined && p.role !== 'primary' && p.role !== 'target') throw bad('role must be primary or target');
  if (p.resolution !== undefined && p.resolution !== 'discard-local' && p.resolution !== 'discard-remote') throw bad('resolution must be discard-local or discard-remote');
  if (p.handedOver !== undefined && typeof p.handedOver !== 'boolean') throw bad('handedOver must be a boolean');
  if (p.bitmapOf !== undefined) {
    const b = p.bitmapOf as Partial<BitmapOwner> | null;
    if (b === null || typeof b !== 'object' || !isGenerationId(b.generation) || typeof b.peer !== 'string' || b.peer === '' || b.peer.length > 256) {
      throw bad('bitmapOf must hold a generation id and a node id');
    }
  }
  if (p.generations !== undefined) {
    const g = p.generations as Partial<GenerationState> | null;
    if (g === null || typeof g !== 'object' || !isGenerationId(g.current) || !Array.isArray(g.history) || !g.history.every(isGenerationId)) {
      throw bad('generations must hold generation ids');
    }
  }
  const out = copyPairState(p as PairState);
  if (out.generations !== undefined) out.generations.history = out.generations.history.slice(0, MAX_HISTORY);
  return out;
}

/** Pair state kept in memory (lost at exit: the volume counts as never paired at the next start). */
export class MemoryPairStateStore implements PairStateStore {
  #state: PairState | undefined;

  constructor(state?: PairState) {
    this.#state = state === undefined ? undefined : checkPairState(state);
  }

  load(): Promise<PairState | undefined> {
    return Promise.resolve(this.#state === undefined ? undefined : copyPairState(this.#state));
  }

  save(state: PairState): Promise<void> {
    try {
      this.#state = checkPairState(state);
    } catch (error) {
      return Promise.reject(error);
    }
    return Promise.resolve();
  }
}

/** Pair state in a small crash-safe state file (JSON + CRC, replaced atomically; see `storage/state-file.ts`). */
export class FilePairStateStore implements PairStateStore {
  readonly path: string;

  constructor(path: string) {
    if (typeof path !== 'string' || path.length === 0) throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', 'pair state file path must be a non-empty string');
    this.path = path;
  }

  /** @throws {BlockMirrorError} `BM_ERR_JOURNAL_CORRUPT` (damaged file), `BM_ERR_INVALID_ARGUMENT` (not a pair state). */
  async load(): Promise<PairState | undefined> {
    const p = await readStateFile(this.path);
    if (p === undefined) return undefined;
    return checkPairState(p, `pair state file ${this.path}`);
  }

  async save(state: PairState): Promise<void> {
    await writeStateFile(this.path, checkPairState(state));
  }
}
