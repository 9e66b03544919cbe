/**
 * Long fuzz run of the frame decoder.
 *
 * `FUZZ_FRAMES=5000000 node --import tsx scripts/fuzz.ts` — count from FUZZ_FRAMES
 * (default 2,000,000), seed from FUZZ_SEED or random; the seed is printed so a failure
 * can be reproduced with `FUZZ_SEED=<seed>`.
 */
import { randomInt } from 'node:crypto';
import { runFrameFuzz, FuzzFailure } from '../test/codec/fuzz-frames.js';

const count = Number(process.env.FUZZ_FRAMES ?? 2_000_000);
const seed = process.env.FUZZ_SEED === undefined ? randomInt(0, 2 ** 32 - 1) : Number(process.env.FUZZ_SEED);
if (!Number.isSafeInteger(count) || count < 1 || !Number.isSafeInteger(seed) || seed < 0) {
  console.error('FUZZ_FRAMES must be a positive integer and FUZZ_SEED a non-negative integer');
  process.exit(2);
}

console.log(`fuzzing ${count} frames, seed ${seed} (reproduce with FUZZ_SEED=${seed} FUZZ_FRAMES=${count})`);
const started = performance.now();
try {
  const stats = runFrameFuzz({
    count,
    seed,
    progressEvery: 250_000,
    onProgress: (done) => console.log(`  ${done} frames, ${((performance.now() - started) / 1000).toFixed(1)} s`),
  });
  console.log(`done in ${((performance.now() - started) / 1000).toFixed(1)} s`);
  console.log(JSON.stringify(stats, null, 2));
} catch (error) {
  if (error instanceof FuzzFailure) {
    console.error(`FAILURE at iteration ${error.iteration}, seed ${error.seed}`);
    console.error(`input (hex): ${error.input.toString('hex')}`);
  }
  console.error(error);
  process.exitCode = 1;
}
