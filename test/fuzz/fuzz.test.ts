/**
 * The fuzz campaign's CI budget: every surface with a fixed seed and a fixed
 * number of inputs (about 10 s in all on an idle machine). The long campaign
 * is `npm run fuzz` (scripts/fuzz.ts).
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { cliSurface } from './surfaces/cli.js';
import { cycleSurface } from './surfaces/cycle.js';
import { filesSurface } from './surfaces/files.js';
import { handshakeSurface } from './surfaces/handshake.js';
import { heartbeatSurface } from './surfaces/heartbeat.js';
import { nbdSurface } from './surfaces/nbd.js';
import { replicationFramesSurface } from './surfaces/replication-frames.js';
import { runSurface, type Surface } from './surface.js';

const SEED = 0x5ec0_2026;

/** CI budget per surface: inputs, and the outcomes that show the inputs got deep. */
const BUDGET: Array<[Surface<never>, number, string[]]> = [
  [handshakeSurface as Surface<never>, 4000, ['challenged', 'timeouts']],
  [replicationFramesSurface as Surface<never>, 4000, ['handshakes', 'deviceWrites']],
  [heartbeatSurface as Surface<never>, 20000, ['accepted', 'malformed', 'auth', 'unexpected-node']],
  [cycleSurface as Surface<never>, 3000, ['begun', 'committed', 'transferErrors']],
  [nbdSurface as Surface<never>, 6000, ['sessions', 'requests', 'backendWrites', 'protocolErrors']],
  [filesSurface as Surface<never>, 4000, ['journal:opened', 'journal:BM_ERR_JOURNAL_CORRUPT', 'bitmap:opened', 'bitmap:BM_ERR_BITMAP_CORRUPT', 'pair:opened', 'apply:opened', 'node-id:opened']],
  [cliSurface as Surface<never>, 20000, ['parsed', 'refused', 'specParsed', 'specRefused']],
];

describe('fuzz campaign (CI budget)', () => {
  for (const [surface, runs, deep] of BUDGET) {
    it(`${surface.name}: ${runs} valid-then-mutated inputs, no crash, coded errors only, bounded memory`, async () => {
      const report = await runSurface(surface, { runs, seed: SEED });
      assert.equal(report.failed, false, report.failure);
      assert.equal(report.inputs, runs);
      assert.ok(report.heapGrowthMiB < 64, `heap grew by ${report.heapGrowthMiB} MiB`);
      for (const key of deep) assert.ok((report.outcomes?.[key] ?? 0) > 0, `${key}: ${JSON.stringify(report.outcomes)}`);
    });
  }
});
