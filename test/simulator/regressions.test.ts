/**
 * Seeds that long simulator campaigns (`npm run sim -- --seeds N --from S`)
 * found failing, kept as regression tests: each broke an invariant on the
 * code before its fix (named in the title) and must keep every invariant now.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { simulate, type SimFamily } from '../../src/testing/simulator/simulation.js';

interface Found {
  family: Exclude<SimFamily, 'cycle'>;
  seed: number;
  /** What it broke before the fix. */
  broke: string;
}

const FOUND: Found[] = [
  { family: 'pair', seed: 102913, broke: 'I3: in-sync with different images (a checksum resync cleared the write-intent bit of a region whose primary copy was not flushed; power loss)' },
  { family: 'pair', seed: 104230, broke: 'I7: payloads of degraded sync writes kept in flight past maxBufferedBytes' },
  { family: 'pair', seed: 108541, broke: 'I7: resends went past the payload budget' },
  { family: 'pair', seed: 110492, broke: 'I7: every request older than one in flight went past the payload budget' },
  { family: 'pair', seed: 111382, broke: 'liveness: a resend waited for room that only the requests waiting for it on the target could free' },
  { family: 'pair', seed: 121152, broke: 'liveness: a window full of requests waiting on the target for a retried one, behind a flush that waited for room in the window' },
  { family: 'pair', seed: 148458, broke: 'I8 (once the check waits for a session with the restarted target: liveness): after a target power loss an idle primary never probed its black-holed connections and stayed in-sync with no session' },
  { family: 'nbd', seed: 169, broke: 'I1: a split sync write resolved acknowledged although the target had lost a part' },
  { family: 'nbd', seed: 3344, broke: 'liveness, in the harness: an NBD client of a primary killed while the client connected took requests nobody answered' },
  { family: 'nbd', seed: 8251, broke: 'I3: in-sync with different images (two resync copies of one region unordered on the target: an acknowledged copy the restarted target lost was resent and applied over the newer copy)' },
  { family: 'nbd', seed: 8587, broke: 'I3: in-sync with different images (a resync copy that became a skip record before it was sent: the region was taken off the resync list after the skip had put it back)' },
  { family: 'nbd', seed: 1275, broke: 'I1: a split sync write resolved acknowledged although the target had lost a part' },
  { family: 'big', seed: 223, broke: 'liveness, in the check: 60 virtual s were too few for a resync of GiBs (zero ranges read in 1 MiB runs on a target without an allocation map): in-sync at 70 s' },
  { family: 'big', seed: 209, broke: 'I4, in the check: a 5 GB zero range applied on the target piece by piece was taken as atomic (a check during it saw part of it)' },
];

for (const f of FOUND) {
  test(`simulator regression, ${f.family} seed ${f.seed} (broke ${f.broke}): every invariant holds`, async () => {
    const r = await simulate({ seed: f.seed, family: f.family });
    assert.deepEqual(
      r.violations.map((v) => `${v.invariant}: ${v.message}`),
      [],
      `replay: ${r.replay}`,
    );
  });
}
