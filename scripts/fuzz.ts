/**
 * The fuzz campaign: every surface (replication handshake and frames,
 * heartbeats, cycle messages, NBD, files read at start, CLI) plus the frame
 * decoder, with a long budget.
 *
 *   npm run fuzz                                  # 1,000,000 inputs per surface
 *   npm run fuzz -- --runs 200000 --seconds 300   # per surface: at most N inputs or S seconds
 *   npm run fuzz -- --surface nbd --seed 7        # one surface, a given seed
 *
 * Environment: FUZZ_RUNS, FUZZ_SECONDS, FUZZ_SEED (the flags win). The seed
 * is printed so a failure can be replayed; fast-check prints the smallest
 * failing input it found. Exit code 1 when any surface failed.
 */
import { randomInt } from 'node:crypto';
import { parseArgs } from 'node:util';
import { runFrameFuzz, FuzzFailure } from '../test/codec/fuzz-frames.js';
import { SURFACES } from '../test/fuzz/surfaces/index.js';
import { runSurface, type SurfaceReport } from '../test/fuzz/surface.js';

const { values } = parseArgs({
  options: {
    runs: { type: 'string' },
    seconds: { type: 'string' },
    seed: { type: 'string' },
    surface: { type: 'string', multiple: true },
  },
});
const runs = Number(values.runs ?? process.env.FUZZ_RUNS ?? process.env.FUZZ_FRAMES ?? 1_000_000);
const secondsText = values.seconds ?? process.env.FUZZ_SECONDS;
const seconds = secondsText === undefined ? undefined : Number(secondsText);
const seed = Number(values.seed ?? process.env.FUZZ_SEED ?? randomInt(0, 2 ** 31 - 1));
const names = ['frames', ...SURFACES.map((s) => s.name)];
const chosen = values.surface ?? names;
if (!Number.isSafeInteger(runs) || runs < 1 || !Number.isSafeInteger(seed) || seed < 0 || (seconds !== undefined && !(seconds > 0))) {
  console.error('--runs must be a positive integer, --seconds a positive number, --seed a non-negative integer');
  process.exit(2);
}
for (const n of chosen) {
  if (!names.includes(n)) {
    console.error(`unknown surface ${n}: one of ${names.join(', ')}`);
    process.exit(2);
  }
}

console.log(`fuzz campaign: ${runs} inputs per surface${seconds === undefined ? '' : ` or ${seconds} s`}, seed ${seed} (replay: npm run fuzz -- --seed ${seed} --surface NAME)`);
const reports: SurfaceReport[] = [];
if (chosen.includes('frames')) {
  const started = performance.now();
  const deadline = seconds === undefined ? Infinity : started + seconds * 1000;
  let done = 0;
  let failed = false;
  let failure: string | undefined;
  // in slices, so the time budget applies
  const slice = 100_000;
  while (done < runs && performance.now() < deadline) {
    const count = Math.min(slice, runs - done);
    try {
      runFrameFuzz({ count, seed: (seed + done) >>> 0 });
    } catch (error) {
      failed = true;
      failure = error instanceof FuzzFailure ? `iteration ${error.iteration}, seed ${error.seed}, input ${error.input.toString('hex')}` : String(error);
      break;
    }
    done += count;
  }
  const r: SurfaceReport = { surface: 'frames', inputs: done, seconds: Math.round((performance.now() - started) / 100) / 10, failed, heapGrowthMiB: 0 };
  if (failure !== undefined) r.failure = failure;
  reports.push(r);
  console.log(JSON.stringify(r));
}
for (const surface of SURFACES) {
  if (!chosen.includes(surface.name)) continue;
  const started = performance.now();
  const report = await runSurface(surface, {
    runs,
    seed,
    ...(seconds === undefined ? {} : { seconds }),
    onProgress: (done) => {
      if (done % 100_000 === 0) console.log(`  ${surface.name}: ${done} inputs, ${((performance.now() - started) / 1000).toFixed(0)} s`);
    },
  });
  reports.push(report);
  console.log(JSON.stringify(report));
}
console.log('\n| surface | inputs | seconds | result |\n|---|---:|---:|---|');
for (const r of reports) console.log(`| ${r.surface} | ${r.inputs.toLocaleString('en-US')} | ${r.seconds} | ${r.failed ? 'FAILED' : 'ok'} |`);
const bad = reports.filter((r) => r.failed);
for (const r of bad) console.error(`\n${r.surface} FAILED:\n${r.failure}`);
process.exitCode = bad.length > 0 ? 1 : 0;
