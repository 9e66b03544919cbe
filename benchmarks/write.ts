/**
 * Mirrored write benchmark (issue 2, benchmark b): throughput and latency of
 * `primary.volume(name).write()` on loopback TCP, sync and async, against
 * unmirrored writes to the same kind of {@link FileBlockDevice}.
 *
 * Workloads: 4 KiB writes with 32 in flight and 64 KiB writes with 8 in
 * flight, at random offsets aligned to the write size, over a sparse
 * file-backed volume (default 1 GiB) in a temp directory. Configurations:
 *
 * - `unmirrored`: `FileBlockDevice.write` directly (the reference);
 * - `local`: the same through the API with a `local` (not mirrored) volume — the API's own cost;
 * - `sync`, `async`: mirrored to a target in a separate process (its own event
 *   loop, like a real deployment) — the headline figures;
 * - `sync-inproc`, `async-inproc`: the target in this process (one event loop for both sides).
 *
 * Primaries and targets are created once and kept for the whole run (one
 * volume per mode on each target); the configurations are alternated over
 * several rounds (the order rotates each round) and medians are reported.
 * Async runs are measured twice: "host-visible" (until the last write
 * resolved) and "drained" (until the target acknowledged everything).
 *
 * Run alone: `node --import tsx benchmarks/write.ts [--quick]`, or through
 * `npm run bench -- --only write`.
 *
 * @module
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { FileBlockDevice } from '../src/device/file-device.js';
import { createPrimary, type Primary } from '../src/replication/primary.js';
import { createMirrorTarget, type MirrorTarget } from '../src/replication/mirror-target.js';
import { LatencyRecorder, fillPattern, formatTable, median, processCpuMs, round, spawnTsFixture, type JsonChild } from './util.js';

/** Configurations of the write benchmark. */
export const WRITE_CONFIGS = ['unmirrored', 'local', 'sync', 'async', 'sync-inproc', 'async-inproc'] as const;
/** One configuration of the write benchmark. */
export type WriteConfig = (typeof WRITE_CONFIGS)[number];

/** A workload: write size and writes in flight. */
export interface WriteWorkload {
  blockSize: number;
  depth: number;
}

/** Default workloads: 4 KiB × 32 in flight, 64 KiB × 8 in flight. */
export const DEFAULT_WRITE_WORKLOADS: readonly WriteWorkload[] = [
  { blockSize: 4096, depth: 32 },
  { blockSize: 65536, depth: 8 },
];

/** Options of {@link runWriteBenchmark}. */
export interface WriteBenchOptions {
  /** Rounds (each configuration measured once per round). Default 3. */
  rounds?: number;
  /** Measuring time per run in ms. Default 3000. */
  durationMs?: number;
  /** Warm-up time per configuration before the first round, ms. Default 500. */
  warmupMs?: number;
  /** Volume size in bytes. Default 1 GiB. */
  volumeSize?: number;
  /** Workloads. Default {@link DEFAULT_WRITE_WORKLOADS}. */
  workloads?: readonly WriteWorkload[];
  /** Configurations. Default all of {@link WRITE_CONFIGS}. */
  configs?: readonly WriteConfig[];
  /** Connections per primary. Default 4 (the library default). */
  connections?: number;
  /** Journal capacity of each primary volume (in-memory journal), bytes. Default 4 GiB (the library's 256 MiB overflows in an async run). */
  journalCapacity?: number;
  /** Write a CPU profile of the target process into this directory. */
  cpuProfDir?: string;
  /** Progress lines (default: stderr). */
  log?: (line: string) => void;
}

/** One measured run. */
export interface WriteRun {
  config: WriteConfig;
  blockSize: number;
  depth: number;
  round: number;
  ops: number;
  /** Host-visible elapsed time (ms): until the last write resolved. */
  elapsedMs: number;
  /** Until the target acknowledged every write (async), ms. */
  drainedMs: number;
  MBps: number;
  iops: number;
  drainedMBps: number;
  p50us: number;
  p99us: number;
  /** Mirror failures seen (`mirror: 'failed'`). */
  failed: number;
  /** `journal-full` events during the run (the journal overflowed; should stay 0). */
  journalFull: number;
  /** Bytes still pending on the mirror when the last write resolved (async). */
  backlogBytes: number;
  /** CPU of this process (the primary; with an in-process target, both) until drained, % of one core. */
  primaryCpuPct: number;
  /** CPU of the target child process until drained, % of one core (child-process configurations). */
  targetCpuPct: number | null;
  /** Primary + target CPU time per write, µs. */
  cpuUsPerOp: number;
}

/** One row of the result table (medians over the rounds). */
export interface WriteBenchRow {
  workload: string;
  config: WriteConfig;
  target: 'none' | 'child process' | 'same process';
  rounds: number;
  MBps: number | null;
  iops: number | null;
  p50us: number | null;
  p99us: number | null;
  /** MB/s / unmirrored MB/s (medians). */
  vsUnmirrored: number | null;
  /** Async: MB/s until the target acknowledged everything. */
  drainedMBps: number | null;
  drainedVsUnmirrored: number | null;
  /** Async: median mirror backlog when the host saw its last write complete (MB). */
  backlogMB: number | null;
  primaryCpuPct: number | null;
  targetCpuPct: number | null;
  cpuUsPerOp: number | null;
  failed: number;
}

/** Result of {@link runWriteBenchmark}. */
export interface WriteBenchResult {
  rows: WriteBenchRow[];
  runs: WriteRun[];
  settings: Required<Omit<WriteBenchOptions, 'log' | 'cpuProfDir'>> & { dir: string };
}

type WriteFn = (offset: number, data: Buffer) => Promise<{ mirror?: string } | void>;

interface Loop {
  ops: number;
  elapsedMs: number;
  failed: number;
  latency: LatencyRecorder;
}

/** The closed loop lets the event loop run at least this often (ms). */
const YIELD_EVERY_MS = 10;

/** Closed loop: `depth` workers each writing its own buffer at random aligned offsets until `durationMs` passed. */
async function closedLoop(write: WriteFn, blockSize: number, depth: number, volumeSize: number, durationMs: number): Promise<Loop> {
  const blocks = Math.floor(volumeSize / blockSize);
  const latency = new LatencyRecorder();
  let ops = 0;
  let failed = 0;
  const start = performance.now();
  const stopAt = start + durationMs;
  let lastYield = start;
  const worker = async (w: number): Promise<void> => {
    const buf = fillPattern(Buffer.allocUnsafeSlow(blockSize), w + 1 + blockSize);
    for (;;) {
      let t0 = performance.now();
      if (t0 >= stopAt) return;
      if (t0 - lastYield > YIELD_EVERY_MS) {
        // Inline device writes resolve without I/O: without this the loop would
        // starve timers and sockets (the other primaries' heartbeats) for the
        // whole run, which they rightly take for an outage.
        lastYield = t0;
        await new Promise<void>((resolve) => setImmediate(resolve));
        t0 = performance.now();
      }
      buf[0] = ops & 0xff;
      const r = await write(Math.floor(Math.random() * blocks) * blockSize, buf);
      latency.add((performance.now() - t0) * 1000);
      ops++;
      if (r !== undefined && r.mirror === 'failed') failed++;
    }
  };
  await Promise.all(Array.from({ length: depth }, (_, w) => worker(w)));
  return { ops, elapsedMs: performance.now() - start, failed, latency };
}

interface Setup {
  target: 'none' | 'child process' | 'same process';
  targetPid: number | undefined;
  write: WriteFn;
  /** Resolves when the mirror has everything (async); returns the backlog seen first. */
  drain: () => Promise<number>;
}

/**
 * Runs the write benchmark. Creates its files under a fresh temp directory
 * (removed afterwards), a target child process and an in-process target.
 */
export async function runWriteBenchmark(options: WriteBenchOptions = {}): Promise<WriteBenchResult> {
  const rounds = options.rounds ?? 3;
  const durationMs = options.durationMs ?? 3000;
  const warmupMs = options.warmupMs ?? 500;
  const volumeSize = options.volumeSize ?? 2 ** 30;
  const workloads = options.workloads ?? DEFAULT_WRITE_WORKLOADS;
  const configs = options.configs ?? WRITE_CONFIGS;
  const connections = options.connections ?? 4;
  const journalCapacity = options.journalCapacity ?? 4 * 2 ** 30;
  let journalFull = 0;
  const log = options.log ?? ((line: string) => process.stderr.write(`${line}\n`));
  const dir = mkdtempSync(join(tmpdir(), 'blockmirror-bench-write-'));
  const settings = { rounds, durationMs, warmupMs, volumeSize, workloads, configs, connections, journalCapacity, dir };

  const blockSize = 4096;
  const cleanups: Array<() => Promise<void>> = [];
  const runs: WriteRun[] = [];
  try {
    const device = await FileBlockDevice.open(join(dir, 'primary.img'), { size: volumeSize, blockSize });
    cleanups.push(() => device.close());
    const needChild = configs.some((c) => c === 'sync' || c === 'async');
    const needInproc = configs.some((c) => c.endsWith('-inproc'));

    let childPort = 0;
    let child: JsonChild | undefined;
    if (needChild) {
      const spawned = await spawnTsFixture<{ port: number }>(
        'mirror-target.ts',
        {
          size: volumeSize,
          blockSize,
          volumes: [
            { name: 'sync', image: join(dir, 'target-child-sync.img') },
            { name: 'async', image: join(dir, 'target-child-async.img') },
          ],
        },
        options.cpuProfDir === undefined ? {} : { cpuProfDir: join(options.cpuProfDir, 'write-target') },
      );
      child = spawned.child;
      childPort = spawned.ready.port;
      const c = child;
      cleanups.push(() => c.stop());
    }
    let inproc: MirrorTarget | undefined;
    if (needInproc) {
      const tdevs = await Promise.all(
        ['sync', 'async'].map((m) => FileBlockDevice.open(join(dir, `target-inproc-${m}.img`), { size: volumeSize, blockSize })),
      );
      cleanups.push(async () => {
        await Promise.all(tdevs.map((d) => d.close()));
      });
      inproc = await createMirrorTarget({
        listen: { host: '127.0.0.1', port: 0 },
        volumes: [
          { name: 'sync', device: tdevs[0]! },
          { name: 'async', device: tdevs[1]! },
        ],
      });
      const t = inproc;
      cleanups.push(() => t.close());
    }

    const setups = new Map<WriteConfig, Setup>();
    const primaries: Primary[] = [];
    for (const config of configs) {
      if (config === 'unmirrored') {
        setups.set(config, { target: 'none', targetPid: undefined, write: (o, d) => device.write(o, d), drain: async () => 0 });
        continue;
      }
      const mode = config === 'local' ? 'local' : config.startsWith('sync') ? 'sync' : 'async';
      const port = config === 'local' ? 1 : config.endsWith('-inproc') ? inproc!.address.port : childPort;
      const primary = await createPrimary({
        peer: { host: '127.0.0.1', port },
        // steady-state writes are measured, not a first sync (the images are not compared)
        volumes: [{ name: mode === 'local' ? 'local' : mode, device, mode, initialSync: 'none' }],
        connections,
        // Room for the async backlog of a whole run: an overflow would suspend the
        // journal (volume needs-full-resync) and change what later rounds measure.
        journal: { capacityBytes: journalCapacity },
      });
      primary.on('journal-full', () => journalFull++);
      primaries.push(primary);
      cleanups.unshift(() => primary.close({ timeout: 60000 }));
      const volume = primary.volume(mode === 'local' ? 'local' : mode);
      setups.set(config, {
        target: config === 'local' ? 'none' : config.endsWith('-inproc') ? 'same process' : 'child process',
        targetPid: config === 'sync' || config === 'async' ? child?.process.pid : undefined,
        write: (o, d) => volume.write(o, d),
        drain: async () => {
          const backlog = volume.status().pendingBytes;
          await primary.drain(120000);
          return backlog;
        },
      });
    }

    // Warm-up (JIT, connections, first allocations of the files).
    for (const w of workloads) {
      for (const config of configs) {
        const s = setups.get(config)!;
        await closedLoop(s.write, w.blockSize, w.depth, volumeSize, warmupMs);
        await s.drain();
      }
    }

    for (let r = 0; r < rounds; r++) {
      for (const w of workloads) {
        const order = configs.map((_, i) => configs[(i + r) % configs.length]!);
        for (const config of order) {
          const s = setups.get(config)!;
          const journalFull0 = journalFull;
          const cpu0 = process.cpuUsage();
          const tcpu0 = processCpuMs(s.targetPid);
          const loop = await closedLoop(s.write, w.blockSize, w.depth, volumeSize, durationMs);
          const start = performance.now() - loop.elapsedMs;
          const backlogBytes = await s.drain();
          const drainedMs = performance.now() - start;
          const cpu = process.cpuUsage(cpu0);
          const tcpu1 = processCpuMs(s.targetPid);
          const primaryCpuPct = (cpu.user + cpu.system) / 10 / drainedMs;
          const targetCpuPct = tcpu0 === null || tcpu1 === null ? null : (100 * (tcpu1 - tcpu0)) / drainedMs;
          const [p50, p99] = loop.latency.percentiles([50, 99]);
          const bytes = loop.ops * w.blockSize;
          const run: WriteRun = {
            config,
            blockSize: w.blockSize,
            depth: w.depth,
            round: r + 1,
            ops: loop.ops,
            elapsedMs: loop.elapsedMs,
            drainedMs,
            MBps: bytes / 1e3 / loop.elapsedMs,
            iops: (loop.ops * 1000) / loop.elapsedMs,
            drainedMBps: bytes / 1e3 / drainedMs,
            p50us: p50!,
            p99us: p99!,
            failed: loop.failed,
            journalFull: journalFull - journalFull0,
            backlogBytes,
            primaryCpuPct,
            targetCpuPct,
            cpuUsPerOp: ((primaryCpuPct + (targetCpuPct ?? 0)) * drainedMs * 10) / loop.ops,
          };
          runs.push(run);
          log(
            `write r${r + 1} ${label(w)} ${config.padEnd(12)} ${run.MBps.toFixed(1).padStart(7)} MB/s ${Math.round(run.iops)
              .toString()
              .padStart(6)} IOPS p50 ${Math.round(run.p50us)} µs p99 ${Math.round(run.p99us)} µs` +
              (config.startsWith('async') ? ` drained ${run.drainedMBps.toFixed(1)} MB/s` : '') +
              ` cpu ${Math.round(primaryCpuPct)}%` +
              (targetCpuPct !== null ? `+${Math.round(targetCpuPct)}%` : '') +
              (run.failed > 0 ? ` FAILED ${run.failed}` : '') +
              (run.journalFull > 0 ? ` JOURNAL FULL` : ''),
          );
        }
      }
    }

    const rows: WriteBenchRow[] = [];
    for (const w of workloads) {
      const of = (config: WriteConfig): WriteRun[] => runs.filter((x) => x.config === config && x.blockSize === w.blockSize && x.depth === w.depth);
      const ref = median(of('unmirrored').map((x) => x.MBps));
      for (const config of configs) {
        const rs = of(config);
        const mbps = median(rs.map((x) => x.MBps));
        const drained = median(rs.map((x) => x.drainedMBps));
        const isAsync = config.startsWith('async');
        rows.push({
          workload: label(w),
          config,
          target: setups.get(config)!.target,
          rounds: rs.length,
          MBps: round(mbps, 1),
          iops: round(median(rs.map((x) => x.iops))),
          p50us: round(median(rs.map((x) => x.p50us))),
          p99us: round(median(rs.map((x) => x.p99us))),
          vsUnmirrored: round(mbps / ref, 2),
          drainedMBps: isAsync ? round(drained, 1) : null,
          drainedVsUnmirrored: isAsync ? round(drained / ref, 2) : null,
          backlogMB: isAsync ? round(median(rs.map((x) => x.backlogBytes)) / 1e6, 1) : null,
          primaryCpuPct: round(median(rs.map((x) => x.primaryCpuPct))),
          targetCpuPct: round(median(rs.map((x) => x.targetCpuPct ?? Number.NaN))),
          cpuUsPerOp: round(median(rs.map((x) => x.cpuUsPerOp)), 1),
          failed: rs.reduce((a, x) => a + x.failed, 0),
        });
      }
    }
    return { rows, runs, settings };
  } finally {
    for (const c of cleanups) {
      try {
        await c();
      } catch (error) {
        log(`cleanup: ${error instanceof Error ? error.message : String(error)}`);
      }
    }
    rmSync(dir, { recursive: true, force: true });
  }
}

function label(w: WriteWorkload): string {
  return `${w.blockSize / 1024}KiB x${w.depth}`;
}

const invokedPath = process.argv[1];
if (invokedPath !== undefined && import.meta.url === pathToFileURL(invokedPath).href) {
  const quick = process.argv.includes('--quick');
  const result = await runWriteBenchmark(quick ? { rounds: 1, durationMs: 1000, warmupMs: 200, volumeSize: 256 * 2 ** 20 } : {});
  console.log(formatTable(result.rows as unknown as Array<Record<string, unknown>>));
}
