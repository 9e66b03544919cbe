/**
 * Generation ids of a volume (as DRBD's generation UUIDs): `current` names
 * the lineage of the data, `history` the generations it grew out of. A
 * primary starts a new generation when it writes while its target is not
 * connected; when the two meet again, comparing generations tells whether the
 * target is simply behind (resync from the primary) or whether both sides
 * wrote while apart (split brain: never resolved automatically by default).
 *
 * @module
 */
import { randomBytes } from 'node:crypto';
import { readStateFile, writeStateFile } from '../storage/state-file.js';
import { BlockMirrorError } from '../errors.js';

/** The generations of a volume. */
export interface GenerationState {
  /** Current generation id: 12 hex digits of creation time (ms) + 8 random hex digits. */
  current: string;
  /** Earlier generations, most recent first (at most {@link MAX_HISTORY}). */
  history: string[];
}

/** Where a volume's {@link GenerationState} is kept. */
export interface GenerationStore {
  /** The stored state, or undefined for a volume that never had one (a blank volume). */
  load(): Promise<GenerationState | undefined>;
  /** Stores the state durably. */
  save(state: GenerationState): Promise<void>;
}

/** Earlier generations remembered. */
export const MAX_HISTORY = 32;

const ID = /^[0-9a-f]{12}-[0-9a-f]{8}$/;

/** A new generation id; ids created later compare greater (`younger`). */
export function newGenerationId(now = Date.now()): string {
  return `${Math.floor(now).toString(16).padStart(12, '0')}-${randomBytes(4).toString('hex')}`;
}

/** True when `id` is a well-formed generation id. */
export function isGenerationId(id: unknown): id is string {
  return typeof id === 'string' && ID.test(id);
}

/** A first generation for a volume. */
export function freshGeneration(): GenerationState {
  return { current: newGenerationId(), history: [] };
}

/** The next generation: a new current id, the old one first in the history. */
export function advanceGeneration(state: GenerationState): GenerationState {
  return { current: newGenerationId(), history: [state.current, ...state.history].slice(0, MAX_HISTORY) };
}

/**
 * How a target's data relates to a primary's:
 * - `same`: same current generation;
 * - `target-behind`: the target's current is in the primary's history (the primary wrote since; it resends);
 * - `target-ahead`: the primary's current is in the target's history (the target was written since, e.g. promoted);
 * - `split-brain`: neither descends from the other: both sides wrote while apart;
 * - `blank`: the target has no generation (a new volume).
 */
export type Lineage = 'same' | 'target-behind' | 'target-ahead' | 'split-brain' | 'blank';

/** Compares a primary's and a target's generations. */
export function compareGenerations(primary: GenerationState, target: GenerationState | undefined): Lineage {
  if (target === undefined) return 'blank';
  if (primary.current === target.current) return 'same';
  if (primary.history.includes(target.current)) return 'target-behind';
  if (target.history.includes(primary.current)) return 'target-ahead';
  return 'split-brain';
}

/** Generations kept in memory (lost at exit). */
export class MemoryGenerationStore implements GenerationStore {
  #state: GenerationState | undefined;

  constructor(state?: GenerationState) {
    this.#state = state;
  }

  async load(): Promise<GenerationState | undefined> {
    return this.#state === undefined ? undefined : { current: this.#state.current, history: [...this.#state.history] };
  }

  async save(state: GenerationState): Promise<void> {
    this.#state = { current: state.current, history: [...state.history] };
  }
}

/** Generations in a small state file (JSON + CRC), replaced atomically and durably. */
export class FileGenerationStore implements GenerationStore {
  readonly path: string;

  constructor(path: string) {
    if (typeof path !== 'string' || path.length === 0) throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', 'generation file path must be a non-empty string');
    this.path = path;
  }

  async load(): Promise<GenerationState | undefined> {
    const p = (await readStateFile(this.path)) as Partial<GenerationState> | undefined;
    if (p === undefined) return undefined;
    if (p === null || typeof p !== 'object' || !isGenerationId(p.current) || !Array.isArray(p.history) || !p.history.every(isGenerationId)) {
      throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', `generation file ${this.path} has no valid generation ids`);
    }
    return { current: p.current, history: p.history.slice(0, MAX_HISTORY) };
  }

  save(state: GenerationState): Promise<void> {
    return writeStateFile(this.path, { current: state.current, history: state.history });
  }
}
