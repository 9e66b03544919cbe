/**
 * The target's durable apply state of one volume: which replication stream
 * wrote it last and the watermark through which that stream's requests are
 * applied AND flushed to the device. It is written only after a device flush
 * that covers the watermark, so after a crash the data holds at least every
 * request ≤ `applied` — a restarted target reports it, and the primary
 * resends everything above it in order (never an older write over a newer
 * one that the target still remembers as applied).
 *
 * @module
 */
import { readStateFile, writeStateFile } from '../storage/state-file.js';
import { BlockMirrorError } from '../errors.js';

/** The durable apply state of a target volume. */
export interface ApplyState {
  /** Replication stream id (see `VolumeOffer.stream`). */
  stream: string;
  /** Every seq ≤ applied of `stream` is on the device, flushed. */
  applied: number;
}

/** Where a target volume's {@link ApplyState} is kept. */
export interface ApplyStateStore {
  /** The stored state, or undefined when none was ever stored. */
  load(): Promise<ApplyState | undefined>;
  /** Stores the state durably (atomically replaces the previous one). */
  save(state: ApplyState): Promise<void>;
}

/** Apply state kept in memory (lost at exit; a new store per volume). */
export class MemoryApplyStateStore implements ApplyStateStore {
  #state: ApplyState | undefined;

  constructor(state?: ApplyState) {
    this.#state = state === undefined ? undefined : { ...state };
  }

  load(): Promise<ApplyState | undefined> {
    return Promise.resolve(this.#state === undefined ? undefined : { ...this.#state });
  }

  save(state: ApplyState): Promise<void> {
    this.#state = { stream: state.stream, applied: state.applied };
    return Promise.resolve();
  }
}

/** Apply state in a small crash-safe state file (see `storage/state-file.ts`). */
export class FileApplyStateStore implements ApplyStateStore {
  readonly path: string;

  constructor(path: string) {
    this.path = path;
  }

  async load(): Promise<ApplyState | undefined> {
    const p = (await readStateFile(this.path)) as Partial<ApplyState> | undefined;
    if (p === undefined) return undefined;
    if (p === null || typeof p !== 'object' || typeof p.stream !== 'string' || !Number.isSafeInteger(p.applied) || (p.applied as number) < 0) {
      throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', `apply state file ${this.path} is not valid`);
    }
    return { stream: p.stream, applied: p.applied as number };
  }

  save(state: ApplyState): Promise<void> {
    return writeStateFile(this.path, { stream: state.stream, applied: state.applied });
  }
}
