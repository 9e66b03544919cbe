/**
 * Benchmark harness: `npm run bench [-- options]`.
 *
 * Runs the selected suites (all by default), prints one table per suite and
 * writes JSON to `benchmarks/results/<suite>-<date>.json` plus the merged
 * `benchmarks/results/latest.json` (one entry per suite, with the machine
 * information of its run; a `--quick` run does not touch latest.json).
 *
 * Options:
 * - `--only codec,journal,replay,write,nbd,resync,cycle,tls,zeros`   suites to run (default: all)
 * - `--quick`                  short smoke run (1 round, short runs, small volumes)
 * - `--journal-ms MS`          measuring time per journal-suite row (default 1500)
 * - `--rounds N`               rounds of the write and nbd suites and of the resync suite's initial-sync part (default 3)
 * - `--backlog-mib N`          replay suite, issue 11: journaled backlog in MiB, replayed by a primary
 *                              in its own process whose RSS is measured (default 4096; 128 with `--quick`; 0 to skip)
 * - `--backlog-writes 64k,1m`  replay suite: write sizes of the backlog runs, one run each (default 64k)
 * - `--backlog-node-args=FLAGS` replay suite: Node flags of the backlog primary's process (default none)
 * - `--backlog-runtime bundle|tsx` replay suite: the backlog primary runs the library compiled to
 *                              JavaScript under plain node (`bundle`, default, as a user) or via tsx
 * - `--max-buffered-mib N`     replay suite: `maxBufferedBytes` of the backlog primary (default: the library's, 16 MiB)
 * - `--heap-snapshot-dir DIR`  replay suite: heap snapshots of the backlog primary after the backlog phase and after the replay
 * - `--resync-mib N`           volume size of the resync suite in MiB (default 1024; 128 with `--quick`)
 * - `--write-ms MS`            measuring time per write-suite run (default 3000)
 * - `--nbd-runtime S`          fio runtime per nbd job in seconds (default 5)
 * - `--write-configs a,b`      subset of unmirrored,local,sync,async,sync-inproc,async-inproc
 * - `--write-workloads 4096x32,65536x8`  write sizes × writes in flight
 * - `--nbd-configs a,b`        subset of nbdkit,nbdkit-proxy,nbdkit-null,null,device,async,sync,async-tls,sync-tls,sync-nbd,cycle
 *                              (async-tls, sync-tls: async and sync over a mutual-TLS link, compared with
 *                              async and sync — the TLS cost, issue 14; need `openssl`)
 * - `--nbd-jobs a,b`           subset of randwrite-4k-qd32,randwrite-4k-qd1,write-64k-qd8,randread-4k-qd32
 * - `--connections N`          mirror connections per primary (write and nbd suites; default 4)
 * - `--uv-threadpool N`        UV_THREADPOOL_SIZE of the nbd suite's server and target processes
 * - `--cpu-prof-dir DIR`       CPU profiles of the child processes (target; NBD servers) into DIR
 * - `--child-node-args=FLAGS`  Node flags of the server processes (default: the
 *                              README's recommended `--initial-old-space-size=256`; '' for none)
 * - `--zeros-mib N`            zeros suite (issue 13): volume size in MiB (default 4096; 256 with `--quick`)
 * - `--zeros-data-mib N`       zeros suite: data in the volume in MiB (default 64; 8 with `--quick`)
 * - `--zeros-no-baseline`      zeros suite: skip the runs of the code before issue 13
 * - `--no-save`                print only, write no JSON
 *
 * @module
 */
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { runCodecBenchmark } from './codec.js';
import { runJournalBenchmark } from './journal.js';
import { runReplayBenchmark } from './replay.js';
import { runCycleBenchmark } from './cycle.js';
import { runWriteBenchmark, WRITE_CONFIGS, type WriteBenchOptions, type WriteConfig, type WriteWorkload } from './write.js';
import { NBD_CONFIGS, NBD_JOBS, runNbdBenchmark, type NbdBenchOptions, type NbdConfig } from './nbd.js';
import { runResyncBenchmark } from './resync.js';
import { runTlsBenchmark } from './tls.js';
import { runZerosBenchmark } from './zeros.js';
import { BENCH_DIR, formatTable, machineInfo, type MachineInfo } from './util.js';

const SUITES = ['codec', 'journal', 'replay', 'write', 'nbd', 'resync', 'cycle', 'tls', 'zeros'] as const;
type Suite = (typeof SUITES)[number];

/** What a suite run stores in its JSON file and in latest.json. */
interface SuiteRecord {
  suite: Suite;
  quick: boolean;
  command: string;
  machine: MachineInfo;
  /** Load average when the suite finished. */
  loadAverageAfter: number[];
  durationSec: number;
  options: unknown;
  rows: unknown[];
  details?: unknown;
}

const { values } = parseArgs({
  options: {
    only: { type: 'string' },
    quick: { type: 'boolean', default: false },
    rounds: { type: 'string' },
    'journal-ms': { type: 'string' },
    'write-ms': { type: 'string' },
    'nbd-runtime': { type: 'string' },
    'resync-mib': { type: 'string' },
    'backlog-mib': { type: 'string' },
    'backlog-writes': { type: 'string' },
    'backlog-node-args': { type: 'string' },
    'backlog-runtime': { type: 'string' },
    'max-buffered-mib': { type: 'string' },
    'heap-snapshot-dir': { type: 'string' },
    'write-configs': { type: 'string' },
    'write-workloads': { type: 'string' },
    'nbd-configs': { type: 'string' },
    'nbd-jobs': { type: 'string' },
    'uv-threadpool': { type: 'string' },
    connections: { type: 'string' },
    'cpu-prof-dir': { type: 'string' },
    'child-node-args': { type: 'string' },
    'zeros-mib': { type: 'string' },
    'zeros-data-mib': { type: 'string' },
    'zeros-no-baseline': { type: 'boolean', default: false },
    'no-save': { type: 'boolean', default: false },
  },
  strict: true,
});

function list<T extends string>(value: string | undefined, allowed: readonly T[], what: string): T[] | undefined {
  if (value === undefined) return undefined;
  const items = value.split(',').map((s) => s.trim()).filter((s) => s !== '');
  for (const item of items) {
    if (!allowed.includes(item as T)) throw new Error(`${what}: unknown ${JSON.stringify(item)} (expected one of ${allowed.join(', ')})`);
  }
  return items as T[];
}

function int(value: string | undefined, what: string): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (!Number.isFinite(n) || n <= 0) throw new Error(`${what} must be a positive number`);
  return n;
}

const quick = values.quick === true;
const suites = list(values.only, SUITES, '--only') ?? [...SUITES];
const rounds = int(values.rounds, '--rounds');
const log = (line: string): void => void process.stderr.write(`${line}\n`);

const writeOptions: WriteBenchOptions = quick ? { rounds: 1, durationMs: 1000, warmupMs: 200, volumeSize: 256 * 2 ** 20 } : {};
if (rounds !== undefined) writeOptions.rounds = rounds;
const writeMs = int(values['write-ms'], '--write-ms');
if (writeMs !== undefined) writeOptions.durationMs = writeMs;
const writeConfigs = list<WriteConfig>(values['write-configs'], WRITE_CONFIGS, '--write-configs');
if (writeConfigs !== undefined) writeOptions.configs = writeConfigs;
if (values['write-workloads'] !== undefined) {
  writeOptions.workloads = values['write-workloads'].split(',').map((w): WriteWorkload => {
    const m = /^(\d+)x(\d+)$/.exec(w.trim());
    if (m === null) throw new Error(`--write-workloads: expected SIZExDEPTH, got ${JSON.stringify(w)}`);
    return { blockSize: Number(m[1]), depth: Number(m[2]) };
  });
}

const nbdOptions: NbdBenchOptions = quick ? { rounds: 1, runtimeSec: 1, rampSec: 0, imageSize: 64 * 2 ** 20 } : {};
if (rounds !== undefined) nbdOptions.rounds = rounds;
const nbdRuntime = int(values['nbd-runtime'], '--nbd-runtime');
if (nbdRuntime !== undefined) nbdOptions.runtimeSec = nbdRuntime;
const nbdConfigs = list<NbdConfig>(values['nbd-configs'], NBD_CONFIGS, '--nbd-configs');
if (nbdConfigs !== undefined) nbdOptions.configs = nbdConfigs;
const jobNames = list(values['nbd-jobs'], NBD_JOBS.map((j) => j.name), '--nbd-jobs');
if (jobNames !== undefined) nbdOptions.jobs = NBD_JOBS.filter((j) => jobNames.includes(j.name));
const connections = int(values.connections, '--connections');
if (connections !== undefined) {
  writeOptions.connections = connections;
  nbdOptions.connections = connections;
}
const uv = int(values['uv-threadpool'], '--uv-threadpool');
if (uv !== undefined) nbdOptions.uvThreadpoolSize = uv;
if (values['child-node-args'] !== undefined) process.env.BM_BENCH_CHILD_NODE_ARGS = values['child-node-args'];
if (values['cpu-prof-dir'] !== undefined) {
  mkdirSync(values['cpu-prof-dir'], { recursive: true });
  writeOptions.cpuProfDir = values['cpu-prof-dir'];
  nbdOptions.cpuProfDir = values['cpu-prof-dir'];
}
writeOptions.log = log;
nbdOptions.log = log;

const resultsDir = join(BENCH_DIR, 'results');
const stamp = new Date().toISOString().replace(/:/g, '-').replace(/\.\d+Z$/, 'Z');
const command = ['npm run bench --', ...process.argv.slice(2)].join(' ');
const records: SuiteRecord[] = [];
const failures: Suite[] = [];

const first = machineInfo();
log(`blockmirror benchmarks: ${suites.join(', ')}${quick ? ' (quick)' : ''} — ${first.cpus} × ${first.cpuModel}, node ${first.node}, load ${first.loadAverage.join(' ')}`);

/** Runs one suite; returns its table rows, details and effective options. */
async function runSuite(suite: Suite): Promise<{ rows: unknown[]; details?: unknown; options: unknown }> {
  switch (suite) {
    case 'codec':
      return { rows: await runCodecBenchmark(), options: {} };
    case 'journal': {
      const durationMs = int(values['journal-ms'], '--journal-ms') ?? (quick ? 300 : 1500);
      return { rows: await runJournalBenchmark({ durationMs }), options: { durationMs } };
    }
    case 'cycle': {
      const r = await runCycleBenchmark(quick ? { size: 128 * 2 ** 20, writeMs: 500 } : {});
      return { rows: r.rows, details: { goals: r.goals }, options: r.settings };
    }
    case 'replay': {
      const sizeMiB = quick ? 64 : 512;
      const backlogMiB = values['backlog-mib'] === '0' ? 0 : (int(values['backlog-mib'], '--backlog-mib') ?? (quick ? 128 : 4096));
      const backlogWriteSizes = values['backlog-writes']?.split(',').map((w) => {
        const m = /^(\d+)([km]?)$/i.exec(w.trim());
        if (m === null) throw new Error(`--backlog-writes: expected sizes like 64k or 1m, got ${JSON.stringify(w)}`);
        return Number(m[1]) * (m[2]?.toLowerCase() === 'm' ? 2 ** 20 : m[2]?.toLowerCase() === 'k' ? 1024 : 1);
      });
      const maxBufferedMiB = int(values['max-buffered-mib'], '--max-buffered-mib');
      const heapSnapshotDir = values['heap-snapshot-dir'];
      if (heapSnapshotDir !== undefined) mkdirSync(heapSnapshotDir, { recursive: true });
      const r = await runReplayBenchmark({
        sizeMiB,
        backlogMiB,
        ...(backlogWriteSizes !== undefined ? { backlogWriteSizes } : {}),
        ...(values['backlog-node-args'] !== undefined ? { backlogNodeArgs: values['backlog-node-args'].trim().split(/\s+/).filter((f) => f !== '') } : {}),
        ...(values['backlog-runtime'] !== undefined ? { backlogRuntime: list(values['backlog-runtime'], ['bundle', 'tsx'] as const, '--backlog-runtime')![0]! } : {}),
        ...(maxBufferedMiB !== undefined ? { maxBufferedBytes: Math.round(maxBufferedMiB * 2 ** 20) } : {}),
        ...(heapSnapshotDir !== undefined ? { heapSnapshotDir } : {}),
        log,
      });
      return { rows: r.rows, details: r.details, options: r.settings };
    }
    case 'write': {
      const r = await runWriteBenchmark(writeOptions);
      return { rows: r.rows, details: { runs: r.runs }, options: r.settings };
    }
    case 'nbd': {
      const r = await runNbdBenchmark(nbdOptions);
      return { rows: r.rows, details: { runs: r.runs, servers: r.servers }, options: r.settings };
    }
    case 'tls': {
      const r = await runTlsBenchmark({ rounds: rounds ?? (quick ? 1 : 3), ...(writeMs === undefined ? {} : { durationMs: writeMs }), log });
      return { rows: r.rows, details: {}, options: r.settings };
    }
    case 'zeros': {
      const r = await runZerosBenchmark({
        sizeMiB: int(values['zeros-mib'], '--zeros-mib') ?? (quick ? 256 : 4096),
        dataMiB: int(values['zeros-data-mib'], '--zeros-data-mib') ?? (quick ? 8 : 64),
        baseline: values['zeros-no-baseline'] !== true,
        log,
      });
      return { rows: r.rows, details: { goals: r.goals }, options: r.settings };
    }
    case 'resync': {
      const sizeMiB = int(values['resync-mib'], '--resync-mib') ?? (quick ? 128 : 1024);
      const r = await runResyncBenchmark({ sizeMiB, rounds: rounds ?? (quick ? 1 : 3), log });
      return { rows: r.rows, details: { runs: r.runs }, options: r.settings };
    }
  }
}

for (const suite of suites) {
  const machine = machineInfo();
  const started = performance.now();
  log(`\n== ${suite} ==`);
  let result: Awaited<ReturnType<typeof runSuite>>;
  try {
    result = await runSuite(suite);
  } catch (error) {
    // One failing suite (a missing tool, a crash) does not lose the others.
    failures.push(suite);
    process.exitCode = 1;
    log(`suite ${suite} failed: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}`);
    continue;
  }
  const { rows, details, options } = result;
  const record: SuiteRecord = {
    suite,
    quick,
    command,
    machine,
    loadAverageAfter: machineInfo().loadAverage,
    durationSec: Math.round((performance.now() - started) / 100) / 10,
    options,
    rows,
    details,
  };
  records.push(record);
  console.log(`\n${suite} (${machine.date}, ${machine.cpus} CPUs, node ${machine.node}, load ${machine.loadAverage.join(' ')} → ${record.loadAverageAfter.join(' ')})`);
  console.log(formatTable(rows as Array<Record<string, unknown>>));
  if (values['no-save'] !== true) {
    mkdirSync(resultsDir, { recursive: true });
    const file = join(resultsDir, `${suite}-${stamp}.json`);
    writeFileSync(file, `${JSON.stringify(record, null, 2)}\n`);
    log(`wrote ${file}`);
  }
}

if (values['no-save'] !== true && !quick) {
  const latestFile = join(resultsDir, 'latest.json');
  let latest: { updated: string; machine: MachineInfo; suites: Record<string, SuiteRecord> } = { updated: '', machine: first, suites: {} };
  if (existsSync(latestFile)) {
    try {
      latest = JSON.parse(readFileSync(latestFile, 'utf8')) as typeof latest;
    } catch {
      // unreadable: start over
    }
  }
  latest.updated = new Date().toISOString();
  latest.machine = first;
  for (const r of records) latest.suites[r.suite] = r;
  writeFileSync(latestFile, `${JSON.stringify(latest, null, 2)}\n`);
  log(`wrote ${latestFile}`);
} else if (quick) {
  log('quick run: latest.json left unchanged');
}
if (failures.length > 0) log(`failed suites: ${failures.join(', ')}`);
