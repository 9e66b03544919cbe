/**
 * One fuzz target ("surface") and the loop that runs it: fast-check draws
 * inputs from the surface's arbitrary, the surface runs each and throws on a
 * broken property (a crash, an uncoded error, a write outside what a valid
 * request allows, unbounded buffering). Unhandled rejections and uncaught
 * exceptions during a run fail the campaign too.
 *
 * @module
 */
import fc from 'fast-check';
import { BlockMirrorError, isErrorCode } from '../../src/errors.js';
import { retainedBytes } from '../helpers/gc.js';

/** A fuzz target. */
export interface Surface<T = unknown> {
  /** Name used by `npm run fuzz -- --surface NAME` and in the report. */
  readonly name: string;
  /** Valid-then-mutated inputs. */
  readonly arbitrary: fc.Arbitrary<T>;
  /** Runs one input; throws (or rejects) when a property is broken. */
  run(input: T): Promise<void> | void;
  /** Outcome counters the surface keeps (how deep the inputs got), reported with the counts. */
  readonly stats?: Record<string, number>;
  /** Called once before the runs. */
  setup?(): Promise<void>;
  /** Called once after the runs. */
  teardown?(): Promise<void>;
}

/** Outcome counts of one surface. */
export interface SurfaceReport {
  surface: string;
  inputs: number;
  seconds: number;
  failed: boolean;
  /** fast-check's report of the smallest failing input (with its seed and path). */
  failure?: string;
  /** Growth of the heap and of the array buffers (Buffer contents) from after the setup to after the last input (before the teardown), after a full garbage collection, in MiB (a leak shows here). */
  heapGrowthMiB: number;
  /** The surface's outcome counters. */
  outcomes?: Record<string, number>;
}

/** Throws unless `error` is a BlockMirrorError with a code of the table. */
export function assertCoded(error: unknown, where: string): asserts error is BlockMirrorError {
  if (!(error instanceof BlockMirrorError) || !isErrorCode(error.code)) {
    throw new Error(`${where}: not a coded BlockMirrorError: ${error instanceof Error ? `${error.name}: ${error.message}` : String(error)}`, { cause: error });
  }
}

/** Options of {@link runSurface}. */
export interface RunOptions {
  /** Inputs to run (the campaign stops earlier when `seconds` are used). */
  runs: number;
  /** Time budget in seconds (default: none). */
  seconds?: number;
  seed: number;
  /** Called now and then with the inputs done so far. */
  onProgress?: (done: number) => void;
}

/** Runs `surface` on `runs` inputs (or until `seconds` are used) and reports. */
export async function runSurface<T>(surface: Surface<T>, options: RunOptions): Promise<SurfaceReport> {
  const strays: unknown[] = [];
  const onStray = (error: unknown): void => {
    strays.push(error);
  };
  process.on('unhandledRejection', onStray);
  process.on('uncaughtException', onStray);
  const started = performance.now();
  let inputs = 0;
  try {
    await surface.setup?.();
    const retainedBefore = await retainedBytes();
    const property = fc.asyncProperty(surface.arbitrary, async (input) => {
      inputs++;
      if (options.onProgress !== undefined && inputs % 10_000 === 0) options.onProgress(inputs);
      await surface.run(input);
      if (strays.length > 0) throw new Error(`unhandled rejection or uncaught exception: ${String(strays[0])}`, { cause: strays[0] });
    });
    const details = await fc.check(property, {
      numRuns: options.runs,
      seed: options.seed,
      ...(options.seconds === undefined ? {} : { interruptAfterTimeLimit: options.seconds * 1000, markInterruptAsFailure: false }),
      endOnFailure: true,
    });
    // measured before the teardown: what a long-lived host kept per input shows here (issue 14)
    const retainedAfter = await retainedBytes();
    await surface.teardown?.();
    const report: SurfaceReport = {
      surface: surface.name,
      inputs: details.numRuns,
      seconds: Math.round((performance.now() - started) / 100) / 10,
      failed: details.failed,
      heapGrowthMiB: Math.round(((retainedAfter - retainedBefore) / 2 ** 20) * 10) / 10,
    };
    if (surface.stats !== undefined) report.outcomes = { ...surface.stats };
    if (details.failed) {
      const cause = details.errorInstance instanceof Error ? (details.errorInstance.stack ?? details.errorInstance.message) : String(details.errorInstance);
      report.failure = `${fc.defaultReportMessage(details) ?? 'failed'}\n${cause}`;
    }
    return report;
  } finally {
    process.off('unhandledRejection', onStray);
    process.off('uncaughtException', onStray);
  }
}
