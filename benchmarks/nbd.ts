/**
 * NBD benchmark (issue 6, item 6): the same fio jobs (`--ioengine=nbd`)
 * against
 * - `nbdkit`: `nbdkit file` (C reference, unmirrored);
 * - `nbdkit-proxy`: `nbdkit nbd` forwarding to another `nbdkit file` on
 *   loopback: a C reference for one network hop (no local write, no
 *   checksum), i.e. a lower bound of the work a mirrored write does;
 * - `nbdkit-null`: `nbdkit null` (discards writes): C reference for the NBD layer alone;
 * - `null`: our {@link NbdServer} with a backend that discards writes (compared with `nbdkit-null`);
 * - `device`: our {@link NbdServer} serving a {@link FileBlockDevice} (unmirrored);
 * - `async`: our NbdServer serving an async-mirrored primary volume;
 * - `sync`: the same, sync-mirrored;
 * - `async-tls`, `sync-tls` (issue 14, item 1): `async` and `sync` whose
 *   replication link runs over mutual TLS ({@link TlsTransport}, certificates
 *   of a fresh test CA made with the `openssl` CLI), mirrored to a second,
 *   TLS-listening target in the same target process: their `ref` is `async`
 *   and `sync`, so `vsNbdkit` is the TLS cost (TLS MB/s ÷ plain MB/s);
 * - `sync-nbd`: `sync` whose mirror-side volume is an {@link NbdBlockDevice}
 *   on `nbdkit file` (issue 13, item 6) instead of a {@link FileBlockDevice}:
 *   its `ref` is `sync`, so `vsNbdkit` is the ratio of the two;
 * - `cycle`: our NbdServer serving a layered volume frozen every second and
 *   copied to the same target process (cycles run during the job).
 *
 * Every server runs in its own process (ours: `benchmarks/fixtures/nbd-primary.ts`);
 * the mirror target of the mirrored configurations is one more process on loopback
 * (`benchmarks/fixtures/mirror-target.ts`, one volume per configuration). Each
 * configuration has its own image (default 256 MiB), written in full once
 * before the first round (so writes overwrite and reads read real data).
 *
 * Jobs: 4 KiB random write at iodepth 32, 4 KiB random write at iodepth 1,
 * 64 KiB sequential write at iodepth 8, 4 KiB random read at iodepth 32;
 * time-based (default 5 s each). Configurations alternate within each job,
 * the order rotating every round; medians over the rounds are reported,
 * with fio's total-latency percentiles (`lat` = submission + completion;
 * `clat` alone is kept in the runs for reference). After each async job the
 * mirror is drained (its time is reported) so that its backlog does not
 * steal CPU from the next measurement.
 *
 * Needs `fio` (with the nbd engine) and `nbdkit` (and `openssl` for the TLS configurations).
 * Run alone: `node --import tsx benchmarks/nbd.ts [--quick]`, or `npm run bench -- --only nbd`.
 *
 * @module
 */
import { spawn, execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { benchTlsCredentials, formatTable, median, processCpuMs, round, spawnTsFixture, startNbdkit, startNbdkitPlugin, type JsonChild, type TlsPem } from './util.js';

/** Configurations of the NBD benchmark. */
export const NBD_CONFIGS = ['nbdkit', 'nbdkit-proxy', 'nbdkit-null', 'null', 'device', 'async', 'sync', 'async-tls', 'sync-tls', 'sync-nbd', 'cycle'] as const;
/** One configuration of the NBD benchmark. */
export type NbdConfig = (typeof NBD_CONFIGS)[number];

/** The nbdkit configuration each one is compared with (`vsNbdkit`). */
export const NBD_REFERENCE: Readonly<Record<NbdConfig, NbdConfig>> = {
  nbdkit: 'nbdkit',
  'nbdkit-proxy': 'nbdkit',
  'nbdkit-null': 'nbdkit-null',
  null: 'nbdkit-null',
  device: 'nbdkit',
  async: 'nbdkit',
  sync: 'nbdkit',
  // the same mirrors over TLS: the ratio is the cost of TLS
  'async-tls': 'async',
  'sync-tls': 'sync',
  // the same sync mirror with the mirror's volume on nbdkit file: the ratio to the file-device mirror
  'sync-nbd': 'sync',
  cycle: 'nbdkit',
};

/** Configurations served by nbdkit (C). */
const NBDKIT_CONFIGS: ReadonlySet<NbdConfig> = new Set(['nbdkit', 'nbdkit-proxy', 'nbdkit-null']);
/** Our configurations that mirror to the target process: the fixture's mode, and whether the link is TLS. */
const MIRRORED = {
  async: { mode: 'async' },
  sync: { mode: 'sync' },
  'async-tls': { mode: 'async', tls: true },
  'sync-tls': { mode: 'sync', tls: true },
  'sync-nbd': { mode: 'sync' },
  cycle: { mode: 'cycle' },
} as const satisfies Partial<Record<NbdConfig, { mode: 'sync' | 'async' | 'cycle'; tls?: true }>>;
type MirroredConfig = keyof typeof MIRRORED;
function isMirrored(config: NbdConfig): config is MirroredConfig {
  return Object.hasOwn(MIRRORED, config);
}
function isTls(config: MirroredConfig): boolean {
  return 'tls' in MIRRORED[config];
}
/** Configurations with a backlog to drain after each job (async mirroring, cycles). */
function drains(config: NbdConfig): boolean {
  return isMirrored(config) && MIRRORED[config].mode !== 'sync';
}

/** One fio job. */
export interface NbdJob {
  name: string;
  rw: 'randwrite' | 'write' | 'randread' | 'read';
  bs: number;
  iodepth: number;
}

/** The four jobs of issue 6. */
export const NBD_JOBS: readonly NbdJob[] = [
  { name: 'randwrite-4k-qd32', rw: 'randwrite', bs: 4096, iodepth: 32 },
  { name: 'randwrite-4k-qd1', rw: 'randwrite', bs: 4096, iodepth: 1 },
  { name: 'write-64k-qd8', rw: 'write', bs: 65536, iodepth: 8 },
  { name: 'randread-4k-qd32', rw: 'randread', bs: 4096, iodepth: 32 },
];

/** Options of {@link runNbdBenchmark}. */
export interface NbdBenchOptions {
  /** Rounds. Default 3. */
  rounds?: number;
  /** fio runtime per job in seconds. Default 5. */
  runtimeSec?: number;
  /** fio ramp time (not measured) per job in seconds. Default 1. */
  rampSec?: number;
  /** Image size in bytes. Default 256 MiB. */
  imageSize?: number;
  /** Jobs. Default {@link NBD_JOBS}. */
  jobs?: readonly NbdJob[];
  /** Configurations. Default all of {@link NBD_CONFIGS}. */
  configs?: readonly NbdConfig[];
  /** Mirror connections per primary. Default 4. */
  connections?: number;
  /** `UV_THREADPOOL_SIZE` of our server and target processes (default: unset, libuv's 4). */
  uvThreadpoolSize?: number;
  /** Write CPU profiles of our server and target processes into this directory. */
  cpuProfDir?: string;
  /** Progress lines (default: stderr). */
  log?: (line: string) => void;
}

/** One fio measurement. */
export interface NbdRun {
  config: NbdConfig;
  job: string;
  round: number;
  MBps: number;
  iops: number;
  /** Total latency (fio `lat` = submission + completion), median, µs. */
  p50us: number;
  /** Total latency, 99th percentile, µs. */
  p99us: number;
  /**
   * fio's completion latency (`clat`), for reference. With the nbd engine a
   * reply that arrives while fio is still submitting is counted as submission
   * latency, so clat alone can be misleadingly small (seen at iodepth 1).
   */
  clatP50us: number;
  clatP99us: number;
  /** Async: time to drain the mirror after the job, ms. */
  drainMs: number | null;
  /** CPU used by the NBD server process during the job (ramp included), % of one core. */
  serverCpuPct: number | null;
  /** CPU used by the second process during the job, % of one core (mirror target; the proxy's nbdkit file). */
  targetCpuPct: number | null;
  /** Server + target CPU time per I/O, µs (approximate: CPU over the whole job / (IOPS × job time)). */
  cpuUsPerOp: number | null;
}

/** One row of the result table (medians over the rounds). */
export interface NbdBenchRow {
  job: string;
  config: NbdConfig;
  rounds: number;
  MBps: number | null;
  iops: number | null;
  p50us: number | null;
  p99us: number | null;
  /** The reference configuration of `vsNbdkit` / `p50VsNbdkit` ({@link NBD_REFERENCE}). */
  ref: NbdConfig;
  /** MB/s relative to the reference (medians). */
  vsNbdkit: number | null;
  /** p50 latency relative to the reference. */
  p50VsNbdkit: number | null;
  /** Mirrored configurations, write jobs: MB/s relative to `nbdkit-proxy` (one C network hop), when measured. */
  vsProxy: number | null;
  drainMs: number | null;
  serverCpuPct: number | null;
  targetCpuPct: number | null;
  cpuUsPerOp: number | null;
}

/** Result of {@link runNbdBenchmark}. */
export interface NbdBenchResult {
  rows: NbdBenchRow[];
  runs: NbdRun[];
  /** Final state of our servers (NBD stats, primary status, mirror failures, journal overflows). */
  servers: Record<string, unknown>;
  settings: Required<Omit<NbdBenchOptions, 'log' | 'cpuProfDir' | 'uvThreadpoolSize'>> & {
    uvThreadpoolSize: number | null;
    fio: string;
    nbdkit: string;
    adapter: string | null;
  };
}

interface FioJson {
  jobs: Array<{
    error: number;
    read: FioSide;
    write: FioSide;
  }>;
}
interface FioSide {
  io_bytes: number;
  bw_bytes: number;
  iops: number;
  clat_ns: { percentile?: Record<string, number> };
  lat_ns: { percentile?: Record<string, number> };
}

/** Checks that a command runs; returns its first output line. */
function toolVersion(cmd: string, args: string[]): string {
  try {
    return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }).split('\n')[0]!.trim();
  } catch {
    throw new Error(`${cmd} is required for the NBD benchmark (apt-get install -y fio nbdkit)`);
  }
}

/** Runs one fio job against `uri`; returns its figures. */
type FioFigures = Pick<NbdRun, 'MBps' | 'iops' | 'p50us' | 'p99us' | 'clatP50us' | 'clatP99us'>;

async function fio(uri: string, job: NbdJob, size: number, runtimeSec: number, rampSec: number, timeBased = true): Promise<FioFigures> {
  const args = [
    '--name=bench',
    '--ioengine=nbd',
    `--uri=${uri}`,
    `--rw=${job.rw}`,
    `--bs=${job.bs}`,
    `--iodepth=${job.iodepth}`,
    `--size=${size}`,
    '--numjobs=1',
    '--group_reporting',
    '--percentile_list=50:99',
    '--lat_percentiles=1',
    '--output-format=json',
  ];
  if (timeBased) args.push('--time_based', `--runtime=${runtimeSec}`, `--ramp_time=${rampSec}`);
  const out = await new Promise<string>((resolve, reject) => {
    const p = spawn('fio', args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
    p.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    p.once('error', reject);
    p.once('exit', (code) => {
      if (code === 0) resolve(stdout);
      else reject(new Error(`fio ${job.name} on ${uri} exited ${code}: ${stderr.slice(-2000)}`));
    });
  });
  const json = JSON.parse(out.slice(out.indexOf('{'))) as FioJson;
  const j = json.jobs[0];
  if (j === undefined || j.error !== 0) throw new Error(`fio ${job.name}: job error ${j?.error}`);
  const side = job.rw.endsWith('read') ? j.read : j.write;
  const lat = side.lat_ns.percentile ?? {};
  const clat = side.clat_ns.percentile ?? {};
  const us = (p: Record<string, number>, key: string): number => (p[key] ?? Number.NaN) / 1000;
  return {
    MBps: side.bw_bytes / 1e6,
    iops: side.iops,
    p50us: us(lat, '50.000000'),
    p99us: us(lat, '99.000000'),
    clatP50us: us(clat, '50.000000'),
    clatP99us: us(clat, '99.000000'),
  };
}

interface Server {
  uri: string;
  pid: number | undefined;
  /** The second process of a two-process configuration. */
  helperPid?: number | undefined;
  stats?: () => Promise<unknown>;
  drain?: () => Promise<number>;
  stop: () => Promise<void>;
}


/**
 * Runs the NBD benchmark. Creates its images under a fresh temp directory
 * (removed afterwards) and starts nbdkit and our server/target processes.
 */
export async function runNbdBenchmark(options: NbdBenchOptions = {}): Promise<NbdBenchResult> {
  const rounds = options.rounds ?? 3;
  const runtimeSec = options.runtimeSec ?? 5;
  const rampSec = options.rampSec ?? 1;
  const imageSize = options.imageSize ?? 256 * 2 ** 20;
  const jobs = options.jobs ?? NBD_JOBS;
  const configs = options.configs ?? NBD_CONFIGS;
  const connections = options.connections ?? 4;
  const log = options.log ?? ((line: string) => process.stderr.write(`${line}\n`));
  const fioVersion = toolVersion('fio', ['--version']);
  const nbdkitVersion = configs.includes('nbdkit') ? toolVersion('nbdkit', ['--version']) : 'not used';
  const env: Record<string, string> = {};
  if (options.uvThreadpoolSize !== undefined) env.UV_THREADPOOL_SIZE = String(options.uvThreadpoolSize);
  const prof = (name: string): { cpuProfDir?: string } => (options.cpuProfDir === undefined ? {} : { cpuProfDir: join(options.cpuProfDir, `nbd-${name}`) });

  const mirrored = configs.filter(isMirrored);
  const credentials = mirrored.some(isTls) ? benchTlsCredentials() : undefined;
  const dir = mkdtempSync(join(tmpdir(), 'blockmirror-bench-nbd-'));
  const servers = new Map<NbdConfig, Server>();
  const children: JsonChild[] = [];
  const nbdkitStops: Array<() => Promise<void>> = [];
  const runs: NbdRun[] = [];
  let adapter: string | null = null;
  try {
    let targetPort = 0;
    let targetTlsPort = 0;
    let targetPid: number | undefined;
    if (mirrored.length > 0) {
      const cycleDir = join(dir, 'target-cycle-state');
      mkdirSync(cycleDir);
      // sync-nbd: the mirror's volume lives in an image served by nbdkit file
      let mirrorNbd: string | undefined;
      if (mirrored.includes('sync-nbd')) {
        const image = join(dir, 'target-sync-nbd.img');
        writeFileSync(image, '');
        truncateSync(image, imageSize);
        const nbdkit = await startNbdkit(image, false);
        nbdkitStops.push(() => nbdkit.stop());
        mirrorNbd = nbdkit.uri;
      }
      const { child, ready } = await spawnTsFixture<{ port: number; tlsPort?: number }>(
        'mirror-target.ts',
        {
          size: imageSize,
          blockSize: 4096,
          volumes: mirrored.map((m) => (m === 'sync-nbd' ? { name: m, image: '', nbd: mirrorNbd } : { name: m, image: join(dir, `target-${m}.img`), tls: isTls(m) })),
          ...(mirrored.includes('cycle') ? { cycleDir } : {}),
          ...(credentials === undefined ? {} : { tls: credentials.target }),
        },
        { env, ...prof('target') },
      );
      children.push(child);
      targetPort = ready.port;
      targetTlsPort = ready.tlsPort ?? 0;
      targetPid = child.process.pid;
    }
    for (const config of configs) {
      if (NBDKIT_CONFIGS.has(config)) {
        servers.set(config, await startReference(config, dir, imageSize));
        continue;
      }
      const tls: TlsPem | undefined = isMirrored(config) && isTls(config) ? credentials!.primary : undefined;
      const { child, ready } = await spawnTsFixture<{ port: number; adapter: string }>(
        'nbd-primary.ts',
        {
          mode: isMirrored(config) ? MIRRORED[config].mode : config,
          image: join(dir, `${config}.img`),
          size: imageSize,
          name: config,
          targetPort: tls === undefined ? targetPort : targetTlsPort,
          connections,
          ...(tls === undefined ? {} : { tls }),
        },
        { env, ...prof(config) },
      );
      children.push(child);
      if (isMirrored(config)) adapter = ready.adapter;
      servers.set(config, {
        uri: `nbd://127.0.0.1:${ready.port}/${config}`,
        pid: child.process.pid,
        helperPid: isMirrored(config) ? targetPid : undefined,
        drain: async () => (await child.request<{ ms: number }>({ cmd: 'drain' })).ms,
        stats: () => child.request({ cmd: 'stats' }),
        stop: () => child.stop(),
      });
    }

    // Fill every image once (sequential 1 MiB writes): later writes overwrite, reads read data; also warms up.
    for (const config of configs) {
      const s = servers.get(config)!;
      await fio(s.uri, { name: 'fill', rw: 'write', bs: 1 << 20, iodepth: 8 }, imageSize, 0, 0, false);
      if (s.drain !== undefined) await s.drain();
      log(`nbd fill ${config} done`);
    }

    for (let r = 0; r < rounds; r++) {
      for (const job of jobs) {
        const order = configs.map((_, i) => configs[(i + r) % configs.length]!);
        for (const config of order) {
          const s = servers.get(config)!;
          const helperPid = s.helperPid;
          const cpu0 = [processCpuMs(s.pid), helperPid !== undefined ? processCpuMs(helperPid) : null];
          const t0 = performance.now();
          const figures = await fio(s.uri, job, imageSize, runtimeSec, rampSec);
          const wallMs = performance.now() - t0;
          const cpu1 = [processCpuMs(s.pid), helperPid !== undefined ? processCpuMs(helperPid) : null];
          const pct = (i: number): number | null => (cpu0[i] == null || cpu1[i] == null ? null : (100 * (cpu1[i]! - cpu0[i]!)) / wallMs);
          const serverCpuPct = pct(0);
          const targetCpuPct = pct(1);
          const cpuUsPerOp = serverCpuPct === null ? null : ((serverCpuPct + (targetCpuPct ?? 0)) * 1e4) / figures.iops;
          const drainMs = s.drain !== undefined && drains(config) ? await s.drain() : null;
          const run: NbdRun = { config, job: job.name, round: r + 1, ...figures, drainMs, serverCpuPct, targetCpuPct, cpuUsPerOp };
          runs.push(run);
          log(
            `nbd r${r + 1} ${job.name.padEnd(18)} ${config.padEnd(12)} ${run.MBps.toFixed(1).padStart(7)} MB/s ${Math.round(run.iops)
              .toString()
              .padStart(6)} IOPS p50 ${round(run.p50us, 1)} µs p99 ${round(run.p99us, 1)} µs cpu ${round(serverCpuPct)}%` +
              (targetCpuPct !== null ? `+${round(targetCpuPct)}%` : '') +
              (drainMs !== null ? ` drain ${Math.round(drainMs)} ms` : ''),
          );
        }
      }
    }

    const finalStats: Record<string, unknown> = {};
    for (const [config, s] of servers) if (s.stats !== undefined) finalStats[config] = await s.stats();

    const rows: NbdBenchRow[] = [];
    for (const job of jobs) {
      const of = (config: NbdConfig): NbdRun[] => runs.filter((x) => x.config === config && x.job === job.name);
      const proxyMBps = median(of('nbdkit-proxy').map((x) => x.MBps));
      for (const config of configs) {
        const rs = of(config);
        const ref = NBD_REFERENCE[config];
        const refMBps = median(of(ref).map((x) => x.MBps));
        const refP50 = median(of(ref).map((x) => x.p50us));
        const mbps = median(rs.map((x) => x.MBps));
        const p50 = median(rs.map((x) => x.p50us));
        const mirroredWrite = isMirrored(config) && job.rw.endsWith('write');
        rows.push({
          job: job.name,
          config,
          rounds: rs.length,
          MBps: round(mbps, 1),
          iops: round(median(rs.map((x) => x.iops))),
          p50us: round(p50, 1),
          p99us: round(median(rs.map((x) => x.p99us)), 1),
          ref,
          vsNbdkit: round(mbps / refMBps, 2),
          p50VsNbdkit: round(p50 / refP50, 2),
          vsProxy: mirroredWrite ? round(mbps / proxyMBps, 2) : null,
          drainMs: drains(config) ? round(median(rs.map((x) => x.drainMs ?? Number.NaN))) : null,
          serverCpuPct: round(median(rs.map((x) => x.serverCpuPct ?? Number.NaN))),
          targetCpuPct: round(median(rs.map((x) => x.targetCpuPct ?? Number.NaN))),
          cpuUsPerOp: round(median(rs.map((x) => x.cpuUsPerOp ?? Number.NaN)), 1),
        });
      }
    }
    return {
      rows,
      runs,
      servers: finalStats,
      settings: {
        rounds,
        runtimeSec,
        rampSec,
        imageSize,
        jobs,
        configs,
        connections,
        uvThreadpoolSize: options.uvThreadpoolSize ?? null,
        fio: fioVersion,
        nbdkit: nbdkitVersion,
        adapter,
      },
    };
  } finally {
    // Our NBD servers first (they drain into the target), then the target, then nbdkit.
    for (const [config, s] of servers) {
      if (NBDKIT_CONFIGS.has(config)) continue;
      await s.stop().catch((e: unknown) => log(`stopping ${config}: ${String(e)}`));
    }
    for (const c of children) await c.stop().catch((e: unknown) => log(`stopping ${c.name}: ${String(e)}`));
    for (const [config, s] of servers) if (NBDKIT_CONFIGS.has(config)) await s.stop();
    for (const stop of nbdkitStops) await stop().catch((e: unknown) => log(`stopping nbdkit: ${String(e)}`));
    rmSync(dir, { recursive: true, force: true });
    credentials?.cleanup();
  }
}

/** Starts an nbdkit reference configuration with its own image under `dir`. */
async function startReference(config: NbdConfig, dir: string, imageSize: number): Promise<Server> {
  if (config === 'nbdkit-null') {
    const s = await startNbdkitPlugin(['null', `size=${imageSize}`]);
    return { uri: s.uri, pid: s.pid, stop: s.stop };
  }
  const image = join(dir, `${config}.img`);
  writeFileSync(image, '');
  truncateSync(image, imageSize);
  const file = await startNbdkit(image, false);
  if (config === 'nbdkit') return { uri: file.uri, pid: file.pid, stop: file.stop };
  const port = new URL(file.uri).port;
  try {
    const proxy = await startNbdkitPlugin(['nbd', 'hostname=127.0.0.1', `port=${port}`]);
    return {
      uri: proxy.uri,
      pid: proxy.pid,
      helperPid: file.pid,
      stop: async () => {
        await proxy.stop();
        await file.stop();
      },
    };
  } catch (error) {
    await file.stop();
    throw error;
  }
}

const invokedPath = process.argv[1];
if (invokedPath !== undefined && import.meta.url === pathToFileURL(invokedPath).href) {
  const quick = process.argv.includes('--quick');
  const result = await runNbdBenchmark(quick ? { rounds: 1, runtimeSec: 1, rampSec: 0, imageSize: 64 * 2 ** 20 } : {});
  console.log(formatTable(result.rows as unknown as Array<Record<string, unknown>>));
}
