/**
 * The simulator campaign of `npm test`: a fixed budget of seeded schedules
 * (faults, crashes and restarts of both sides, resyncs, a rogue primary)
 * against the real replication code, every invariant checked; each seed runs
 * twice and its two traces must be identical (determinism). The budget
 * (`SIM_SEEDS`, default 2000, from `SIM_FROM`, default 1) is split into
 * eighths, one test file each, so that the runner spreads them over its
 * workers. Longer campaigns: `npm run sim -- --seeds N [--from S]`.
 *
 *   SIM_SEEDS=2000 SIM_FROM=1 node --import tsx --test test/simulator/campaign-*.test.ts
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { runCampaign } from '../../src/testing/simulator/campaign.js';
import type { SimulationResult } from '../../src/testing/simulator/simulation.js';

const SLICES = 8;

function traceHash(result: SimulationResult): string {
  return createHash('sha256').update(result.trace.join('\n')).digest('hex');
}

/** Registers the test of eighth `slice` (0…7) of the campaign budget. */
export function campaignSlice(slice: number): void {
  const total = Number(process.env.SIM_SEEDS ?? 2000);
  const start = Number(process.env.SIM_FROM ?? 1);
  const per = Math.ceil(total / SLICES);
  const from = start + slice * per;
  const seeds = Math.max(0, Math.min(per, start + total - from));
  test(`simulator campaign (SPEC 7/9/10/13/14/15/16/17/18/19): ${seeds} schedules from seed ${from} keep every invariant, and each replays identically`, async () => {
    const first = new Map<number, string>();
    const result = await runCampaign({ from, seeds, onResult: (r) => first.set(r.seed, traceHash(r)) });
    const lines = result.failures.map((r) => `seed ${r.seed}: ${r.violations.map((v) => `${v.invariant} (${v.message})`).join('; ')}\n  replay: ${r.replay}`);
    const summary = Object.entries(result.byInvariant).map(([inv, list]) => `${inv}: ${list.length} seed(s), e.g. ${list.slice(0, 5).join(' ')}`);
    assert.equal(result.failures.length, 0, `${result.failures.length} of ${seeds} schedules failed\n${summary.join('\n')}\n${lines.slice(0, 20).join('\n')}`);
    const differ: number[] = [];
    await runCampaign({ from, seeds, onResult: (r) => (first.get(r.seed) === traceHash(r) ? undefined : differ.push(r.seed)) });
    assert.deepEqual(differ, [], `seeds whose second run took another schedule: ${differ.slice(0, 10).join(' ')}`);
  });
}
