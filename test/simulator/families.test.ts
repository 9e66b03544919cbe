/**
 * The simulator's other families in `npm test`, with budgets proportionate
 * to their cost (the default family runs in campaign.test.ts): freeze/copy
 * cycles (invariant I6, issue 11 scenario 13), requests through the NBD
 * front with writes in many parts (scenario 12), and 8 GiB sparse volumes
 * with zero/TRIM above 4 GiB (scenario 5). Each seed runs twice and its two
 * traces must be identical. Longer campaigns:
 * `npm run sim -- --family cycle|nbd|big --seeds N [--from S]`.
 *
 *   SIM_CYCLE_SEEDS=120 SIM_NBD_SEEDS=50 SIM_BIG_SEEDS=4 node --import tsx --test test/simulator/families.test.ts
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { runCampaign } from '../../src/testing/simulator/campaign.js';
import type { SimFamily, SimulationResult } from '../../src/testing/simulator/simulation.js';

function traceHash(result: SimulationResult): string {
  return createHash('sha256').update(result.trace.join('\n')).digest('hex');
}

async function campaignTwice(family: SimFamily, seeds: number): Promise<void> {
  const first = new Map<number, string>();
  const result = await runCampaign({ family, seeds, onResult: (r) => first.set(r.seed, traceHash(r)) });
  const lines = result.failures.map((r) => `seed ${r.seed}: ${r.violations.map((v) => `${v.invariant} (${v.message})`).join('; ')}\n  replay: ${r.replay}`);
  assert.equal(result.failures.length, 0, `${result.failures.length} of ${seeds} ${family} schedules failed\n${lines.slice(0, 10).join('\n')}`);
  const differ: number[] = [];
  await runCampaign({ family, seeds, onResult: (r) => (first.get(r.seed) === traceHash(r) ? undefined : differ.push(r.seed)) });
  assert.deepEqual(differ, [], `${family} seeds whose second run took another schedule: ${differ.slice(0, 10).join(' ')}`);
}

const cycleSeeds = Number(process.env.SIM_CYCLE_SEEDS ?? 120);
const nbdSeeds = Number(process.env.SIM_NBD_SEEDS ?? 50);
const bigSeeds = Number(process.env.SIM_BIG_SEEDS ?? 4);

test(`simulator, cycle family (SPEC 29–33, invariant I6): ${cycleSeeds} freeze/copy schedules serve only complete freeze images, reach the latest freeze after the heal, and replay identically`, async () => {
  await campaignTwice('cycle', cycleSeeds);
});

test(`simulator, NBD-front family: ${nbdSeeds} schedules of writes through the NBD server in many parts keep every invariant and replay identically`, async () => {
  await campaignTwice('nbd', nbdSeeds);
});

test(`simulator, large-volume family: ${bigSeeds} schedules on 8 GiB volumes with zero/TRIM above 4 GiB keep every invariant and replay identically`, async () => {
  await campaignTwice('big', bigSeeds);
});
