/**
 * The simulator campaign: a fixed budget of seeds against the real
 * replication code. Not in the default `npm test` glob yet: the current core
 * is known to break the invariants (see test/simulator/FINDINGS.md); wire it
 * in (rename to `.test.ts`) once the core is fixed.
 *
 *   node --import tsx --test test/simulator/campaign.sim.ts
 *   SIM_SEEDS=2000 SIM_FROM=1 node --import tsx --test test/simulator/campaign.sim.ts
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { runCampaign } from '../../src/testing/simulator/campaign.js';

const seeds = Number(process.env.SIM_SEEDS ?? 2000);
const from = Number(process.env.SIM_FROM ?? 1);

test(`simulator campaign: ${seeds} schedules from seed ${from} keep every invariant`, async () => {
  const result = await runCampaign({ from, seeds });
  const lines = result.failures.map((r) => `seed ${r.seed}: ${r.violations.map((v) => `${v.invariant} (${v.message})`).join('; ')}\n  replay: ${r.replay}`);
  const summary = Object.entries(result.byInvariant).map(([inv, list]) => `${inv}: ${list.length} seed(s), e.g. ${list.slice(0, 5).join(' ')}`);
  assert.equal(result.failures.length, 0, `${result.failures.length} of ${seeds} schedules failed\n${summary.join('\n')}\n${lines.slice(0, 20).join('\n')}`);
});
