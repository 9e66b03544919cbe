/**
 * {@link ConsistencyGroup}: several layered volumes frozen at the same
 * instant (SPEC 32). If a write to volume A completed before a write to
 * volume B was issued, every freeze that holds B's write holds A's.
 *
 * How: the group first records its intent ("freeze k") in its state file,
 * then prepares every volume (new layer files, manifest), then switches all
 * of them to their new layers in one synchronous step — no write can slip
 * between two volumes' switches — and finally seals the old layers.
 *
 * Crash safety: the manifests of the volumes cannot be replaced together, so
 * a crash may leave some volumes with freeze k recorded and others without.
 * In that case no switch happened yet (it comes after every manifest), so
 * each volume still wrote everything into its old layer; {@link
 * ConsistencyGroup.open} then completes freeze k on the volumes that lack
 * it, which puts the crash instant — a consistent cut — into freeze k for all.
 *
 * @module
 */
import createDebug from 'debug';
import { BlockMirrorError } from '../errors.js';
import { systemClock, type Clock } from '../clock.js';
import { nodeFileSystem, type FileSystem } from '../storage/file-system.js';
import type { LayeredVolume } from './layered-volume.js';

const log = createDebug('blockmirror:cycle');
const GROUP_FORMAT = 'blockmirror-cycle-group';

/** A volume of a group. */
export interface GroupMember {
  /** Name (unique in the group; the name the volume has on the targets). */
  name: string;
  volume: LayeredVolume;
}

/** Options of {@link ConsistencyGroup.open}. */
export interface ConsistencyGroupOptions {
  /** The group's state file (the freeze intent). */
  stateFile: string;
  /** Clock for freeze times (default {@link systemClock}). */
  clock?: Clock;
  /** File system of the state file (default: the real one). */
  fs?: FileSystem;
}

/** Result of a group freeze. */
export interface GroupFreeze {
  /** Freeze number (the same in every volume of the group). */
  freeze: number;
  /** `clock.now()` at the switch. */
  at: number;
}

interface GroupState {
  format: string;
  version: number;
  freeze: number;
  volumes: string[];
}

function isGroupState(v: unknown): v is GroupState {
  const r = v as Record<string, unknown> | null;
  return (
    typeof r === 'object' &&
    r !== null &&
    r.format === GROUP_FORMAT &&
    r.version === 1 &&
    typeof r.freeze === 'number' &&
    Number.isSafeInteger(r.freeze) &&
    r.freeze >= 0 &&
    Array.isArray(r.volumes)
  );
}

/** Volumes frozen together: see the module notes. */
export class ConsistencyGroup {
  readonly members: readonly GroupMember[];
  readonly #stateFile: string;
  readonly #clock: Clock;
  readonly #fs: FileSystem;
  #freeze: number;
  #busy = false;

  private constructor(members: GroupMember[], stateFile: string, clock: Clock, freeze: number, fs: FileSystem) {
    this.#fs = fs;
    this.members = members;
    this.#stateFile = stateFile;
    this.#clock = clock;
    this.#freeze = freeze;
  }

  /**
   * Opens a group over open volumes, completing a group freeze that a crash
   * interrupted (see the module notes).
   *
   * @throws {BlockMirrorError} `BM_ERR_INVALID_ARGUMENT` for an empty group,
   *   duplicate names, or volumes whose freeze numbers do not fit the group's
   *   state; `BM_ERR_JOURNAL_CORRUPT` for a damaged state file.
   */
  static async open(members: readonly GroupMember[], options: ConsistencyGroupOptions): Promise<ConsistencyGroup> {
    if (!Array.isArray(members) || members.length === 0) throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', 'a consistency group needs at least one volume');
    const names = new Set<string>();
    for (const m of members) {
      if (names.has(m.name)) throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', `volume ${m.name} is listed twice`);
      names.add(m.name);
    }
    const fs = options.fs ?? nodeFileSystem;
    const stored = await fs.readState(options.stateFile);
    if (stored !== undefined && !isGroupState(stored)) {
      throw new BlockMirrorError('BM_ERR_JOURNAL_CORRUPT', `${options.stateFile} is not a consistency-group state file`);
    }
    const freezes = members.map((m) => m.volume.lastFreeze);
    let k: number;
    if (stored === undefined) {
      k = freezes[0]!;
    } else {
      k = stored.freeze;
      for (const m of members) {
        if (m.volume.lastFreeze === k - 1) {
          // the crash came between two manifests of freeze k: complete it (see module notes)
          log('group: completing interrupted freeze %d of %s', k, m.name);
          await m.volume.freeze();
        }
      }
    }
    const bad = members.filter((m) => m.volume.lastFreeze !== k);
    if (bad.length > 0) {
      throw new BlockMirrorError(
        'BM_ERR_INVALID_ARGUMENT',
        `the volumes of a consistency group must be at the same freeze (group: ${k}; ${bad.map((m) => `${m.name}: ${m.volume.lastFreeze}`).join(', ')})`,
        { details: { group: k, volumes: Object.fromEntries(members.map((m) => [m.name, m.volume.lastFreeze])) } },
      );
    }
    const group = new ConsistencyGroup([...members], options.stateFile, options.clock ?? systemClock, k, fs);
    if (stored === undefined) await group.#record(k);
    return group;
  }

  /** Number of the last group freeze. */
  get lastFreeze(): number {
    return this.#freeze;
  }

  /**
   * Freezes every volume at one instant; resolves with the freeze number
   * once every old layer is sealed.
   *
   * @throws {BlockMirrorError} `BM_ERR_VOLUME_BUSY` when a freeze is running;
   *   the error of a volume that could not prepare (no volume is switched then).
   */
  async freeze(): Promise<GroupFreeze> {
    if (this.#busy) throw new BlockMirrorError('BM_ERR_VOLUME_BUSY', 'a group freeze is already running');
    this.#busy = true;
    try {
      const k = this.#freeze + 1;
      await this.#record(k);
      const prepared = await Promise.allSettled(this.members.map((m) => m.volume.prepareFreeze()));
      const failed = prepared.find((r): r is PromiseRejectedResult => r.status === 'rejected');
      if (failed !== undefined) {
        await Promise.allSettled(this.members.map((m) => m.volume.abortPrepared()));
        throw failed.reason;
      }
      // One synchronous step: no write can be issued between two switches.
      for (const m of this.members) m.volume.activatePrepared();
      const at = this.#clock.now();
      this.#freeze = k;
      await Promise.all(this.members.map((m) => m.volume.seal(k)));
      return { freeze: k, at };
    } finally {
      this.#busy = false;
    }
  }

  #record(k: number): Promise<void> {
    const body: GroupState = { format: GROUP_FORMAT, version: 1, freeze: k, volumes: this.members.map((m) => m.name) };
    return this.#fs.writeState(this.#stateFile, body);
  }
}
