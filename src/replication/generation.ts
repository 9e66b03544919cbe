/**
 * Generation ids of a volume (as DRBD's generation UUIDs): `current` names
 * the lineage of the data, `history` the generations it grew out of. A
 * primary starts a new generation when it writes while its target is not
 * connected; when the two meet again, comparing generations tells whether the
 * target is simply behind (resync from the primary) or whether both sides
 * wrote while apart (split brain: never resolved automatically by default).
 * Both sides keep them in their pair state (`pair-state.ts`).
 *
 * @module
 */
import { randomBytes } from 'node:crypto';

/** The generations of a volume. */
export interface GenerationState {
  /** Current generation id: 12 hex digits of creation time (ms) + 8 random hex digits. */
  current: string;
  /** Earlier generations, most recent first (at most {@link MAX_HISTORY}). */
  history: string[];
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
