/**
 * Campaigns: many seeds, one {@link Simulation} each, with a summary of the
 * failures and the command that replays each one.
 *
 * @module
 */
import type { FaultKind, SimConfig } from './config.js';
import { simulateCycle, type CycleSimConfig } from './cycle-simulation.js';
import { simulate, type InvariantId, type SimFamily, type SimulationResult } from './simulation.js';

/** Options of {@link runCampaign}. */
export interface CampaignOptions {
  /** First seed (default 1). */
  from?: number;
  /** Number of seeds (schedules). */
  seeds: number;
  /** The family of schedules (default `pair`). */
  family?: SimFamily;
  /** Overrides of the drawn settings for every schedule (`pair`, `big`, `nbd`). */
  config?: Partial<SimConfig>;
  /** Overrides of the drawn settings for every schedule of the `cycle` family. */
  cycleConfig?: Partial<CycleSimConfig>;
  /** Called after each schedule (progress, printing failures). */
  onResult?: (result: SimulationResult) => void;
}

/** Summary of a campaign. */
export interface CampaignResult {
  schedules: number;
  failures: SimulationResult[];
  /** Failing seeds per broken invariant. */
  byInvariant: Partial<Record<InvariantId, number[]>>;
  /** Wall-clock milliseconds. */
  elapsedMs: number;
}

/** Runs seeds `from … from + seeds - 1`, one after the other. */
export async function runCampaign(options: CampaignOptions): Promise<CampaignResult> {
  const from = options.from ?? 1;
  const started = performance.now();
  const failures: SimulationResult[] = [];
  const byInvariant: CampaignResult['byInvariant'] = {};
  for (let seed = from; seed < from + options.seeds; seed++) {
    const family = options.family ?? 'pair';
    const result =
      family === 'cycle'
        ? await simulateCycle({ seed, ...(options.cycleConfig === undefined ? {} : { config: options.cycleConfig }) })
        : await simulate({ seed, family, ...(options.config === undefined ? {} : { config: options.config }) });
    if (!result.ok) {
      failures.push({ ...result, trace: [] });
      for (const v of result.violations) (byInvariant[v.invariant] ??= []).push(seed);
    }
    options.onResult?.(result);
  }
  return { schedules: options.seeds, failures, byInvariant, elapsedMs: performance.now() - started };
}

/** Parses a comma-separated list of fault kinds (`none` for the empty set). */
export function parseFaults<K extends string = FaultKind>(list: string, known: readonly K[]): Set<K> {
  if (list === 'none' || list === '') return new Set();
  const out = new Set<K>();
  for (const item of list.split(',')) {
    const k = item.trim() as K;
    if (!known.includes(k)) throw new Error(`unknown fault kind ${item} (known: ${known.join(', ')})`);
    out.add(k);
  }
  return out;
}
