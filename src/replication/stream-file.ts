/**
 * The replication stream of a volume, kept beside its journal file: the
 * stream id and the sequence numbers reserved so far. A restarted primary
 * continues the same stream above every seq it may have used (the target
 * keeps its ordering state per stream), so no sequence number is ever used
 * twice — also for sync writes, which are not journaled. Seqs are reserved in
 * blocks of {@link SEQ_RESERVATION}: one small durable write per block.
 *
 * @module
 */
import { randomBytes } from 'node:crypto';
import { readStateFile, writeStateFile } from '../storage/state-file.js';

/** Sequence numbers reserved by one durable write of the stream file. */
export const SEQ_RESERVATION = 1 << 20;

/** A volume's stream: id and the highest seq it may have used. */
export interface StreamState {
  stream: string;
  /** Every seq ever used is ≤ reserved. */
  reserved: number;
}

/** Where a volume's {@link StreamState} is kept. */
export interface StreamStore {
  load(): Promise<StreamState | undefined>;
  save(state: StreamState): Promise<void>;
}

/** Stream state in a small crash-safe state file. */
export class FileStreamStore implements StreamStore {
  readonly path: string;

  constructor(path: string) {
    this.path = path;
  }

  async load(): Promise<StreamState | undefined> {
    try {
      const stored = (await readStateFile(this.path)) as { stream?: unknown; reserved?: unknown } | undefined;
      if (typeof stored?.stream !== 'string' || !/^[0-9a-f]{16,64}$/.test(stored.stream)) return undefined;
      const reserved = typeof stored.reserved === 'number' && Number.isSafeInteger(stored.reserved) && stored.reserved >= 0 ? stored.reserved : undefined;
      // a file of an older version (no reservation): the journal's last seq bounds what was journaled only
      if (reserved === undefined) return undefined;
      return { stream: stored.stream, reserved };
    } catch {
      return undefined; // damaged: start a new stream (the target then starts from zero for it)
    }
  }

  save(state: StreamState): Promise<void> {
    return writeStateFile(this.path, { stream: state.stream, reserved: state.reserved });
  }
}

/** Stream state in memory (a test's "disk" that survives a simulated crash). */
export class MemoryStreamStore implements StreamStore {
  #state: StreamState | undefined;

  load(): Promise<StreamState | undefined> {
    return Promise.resolve(this.#state === undefined ? undefined : { ...this.#state });
  }

  save(state: StreamState): Promise<void> {
    this.#state = { ...state };
    return Promise.resolve();
  }
}

/** A new random stream id. */
export function newStreamId(): string {
  return randomBytes(8).toString('hex');
}
