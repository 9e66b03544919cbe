/**
 * The deterministic simulator from the command line.
 *
 *   npm run sim -- --seeds 200 [--from 1]   a campaign: one schedule per seed
 *   npm run sim -- --seed 42 [--verbose]    replays one seed (--verbose prints the schedule)
 *   --faults cut,partition,…                only these fault kinds (default: all; `none` for none)
 *   --family pair|big|nbd|cycle             the family of schedules (default pair):
 *       big    8 GiB sparse volumes, zero/TRIM above 4 GiB (issue 11, scenario 5)
 *       nbd    requests through the real NBD server, writes in many parts (scenario 12)
 *       cycle  freeze/copy cycles: source, 1–2 cycle targets, invariant I6 (scenario 13)
 *
 * Exits 1 when a schedule broke an invariant; each failure prints the one
 * command that replays it.
 */
import { ALL_CYCLE_FAULTS, ALL_FAULTS, parseFaults, runCampaign, simulate, simulateCycle, type CycleSimConfig, type SimConfig, type SimFamily, type SimulationResult } from '../src/testing.js';

function usage(message?: string): never {
  if (message !== undefined) console.error(message);
  console.error('usage: npm run sim -- [--family pair|big|nbd|cycle] (--seed S [--verbose] | --seeds N [--from S]) [--faults kind,kind,…]');
  process.exit(2);
}

const args = process.argv.slice(2);
let seed: number | undefined;
let seeds: number | undefined;
let from = 1;
let verbose = false;
let config: Partial<SimConfig> | undefined;
let cycleConfig: Partial<CycleSimConfig> | undefined;
let family: SimFamily = 'pair';
let faultList: string | undefined;
for (let i = 0; i < args.length; i++) {
  const a = args[i];
  const value = (): number => {
    const n = Number(args[++i]);
    if (!Number.isSafeInteger(n) || n < 0) usage(`${a} needs a non-negative integer`);
    return n;
  };
  if (a === '--seed') seed = value();
  else if (a === '--seeds') seeds = value();
  else if (a === '--from') from = value();
  else if (a === '--verbose') verbose = true;
  else if (a === '--faults') faultList = args[++i] ?? '';
  else if (a === '--family') {
    const f = args[++i];
    if (f !== 'pair' && f !== 'big' && f !== 'nbd' && f !== 'cycle') usage('--family needs pair, big, nbd or cycle');
    family = f;
  } else usage(`unknown argument ${a}`);
}
if (faultList !== undefined) {
  try {
    if (family === 'cycle') cycleConfig = { faults: parseFaults(faultList, ALL_CYCLE_FAULTS) };
    else config = { faults: parseFaults(faultList, ALL_FAULTS) };
  } catch (error) {
    usage((error as Error).message);
  }
}

function printFailure(r: SimulationResult): void {
  console.log(`seed ${r.seed} FAILED (${r.violations.map((v) => v.invariant).join(', ')})`);
  for (const v of r.violations) console.log(`  ${v.invariant} at t=${v.time}: ${v.message}`);
  console.log(`  faults: ${r.faultsInjected.join(', ') || 'none'}`);
  console.log(`  replay: ${r.replay}`);
}

if (seed !== undefined) {
  const trace = verbose ? { onTrace: (line: string) => console.log(line) } : {};
  const r =
    family === 'cycle'
      ? await simulateCycle({ seed, ...(cycleConfig === undefined ? {} : { config: cycleConfig }), ...trace })
      : await simulate({ seed, family, ...(config === undefined ? {} : { config }), ...trace });
  if (r.ok) console.log(`seed ${seed} ok (${r.requests.completed}/${r.requests.issued} requests, ${r.virtualTime} virtual ms)`);
  else printFailure(r);
  process.exitCode = r.ok ? 0 : 1;
} else {
  if (seeds === undefined) usage();
  const result = await runCampaign({
    from,
    seeds,
    family,
    ...(config === undefined ? {} : { config }),
    ...(cycleConfig === undefined ? {} : { cycleConfig }),
    onResult: (r) => {
      if (!r.ok) printFailure(r);
    },
  });
  const perSecond = (result.schedules / result.elapsedMs) * 1000;
  console.log(`${family}: ${result.schedules} schedules (seeds ${from}…${from + seeds - 1}) in ${(result.elapsedMs / 1000).toFixed(1)} s (${perSecond.toFixed(1)}/s): ${result.failures.length} failed`);
  for (const [inv, list] of Object.entries(result.byInvariant)) console.log(`  ${inv}: ${list.length} seed(s), e.g. ${list.slice(0, 8).join(' ')}`);
  process.exitCode = result.failures.length === 0 ? 0 : 1;
}
