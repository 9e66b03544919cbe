/**
 * Freeze/copy cycle benchmark (issue 5).
 *
 * 1. A file-backed layered volume (default 1 GiB, random content) is copied
 *    to a cycle target in a child process over loopback TCP (cycle 1: full copy).
 * 2. 1 % of its 4 KiB blocks, chosen at random, are rewritten; cycle 2 brings
 *    the target up to date. Measured: wall time (freeze → target committed →
 *    local merge) and bytes on the wire, against `rsync --no-whole-file
 *    --inplace -I` between the same two image files (the source image after
 *    the changes and a copy of the target image before them) in the same run.
 * 3. Foreground write overhead: 64 KiB writes (8 in flight) for a fixed time
 *    on the layered volume without a cycle, and while a cycle copies 256 MiB;
 *    plus the same workload on the bare file device for reference.
 *
 * Run: `node --import tsx benchmarks/cycle.ts [--size-mib N] [--write-ms MS] [--keep]`
 * (`UV_THREADPOOL_SIZE=16` in the environment: the copy's reads and the
 * foreground writes share libuv's thread pool, 4 threads by default)
 * or through `runCycleBenchmark()`. The target child is this file started with
 * `--serve-target <dir> <size>`.
 *
 * @module
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomFillSync, randomInt } from 'node:crypto';
import { closeSync, copyFileSync, mkdirSync, mkdtempSync, openSync, readSync, rmSync } from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { FileBlockDevice } from '../src/device/file-device.js';
import type { BlockDevice } from '../src/device/block-device.js';
import { LayeredVolume } from '../src/cycle/layered-volume.js';
import { createCycleSource, type CycleResult, type CycleSource } from '../src/cycle/cycle-runner.js';
import { createCycleTarget } from '../src/cycle/cycle-target.js';
import { TcpTransport } from '../src/transport/tcp.js';

const MiB = 1024 * 1024;

/** Options of {@link runCycleBenchmark}. */
export interface CycleBenchOptions {
  /** Volume size in bytes (default 1 GiB). */
  size?: number;
  /** Fraction of 4 KiB blocks changed before cycle 2 (default 0.01). */
  changedFraction?: number;
  /** Measuring time of each foreground-write run in ms (default 1500). */
  writeMs?: number;
  /** Bytes the cycle copies during the overhead measurement (default 256 MiB, at most the volume). */
  overheadCopyBytes?: number;
  /** Directory for the images (default: a new one under the OS temp dir, removed afterwards). */
  dir?: string;
  /** Keep the files. */
  keep?: boolean;
  /** Progress lines (default: stderr). */
  log?: (line: string) => void;
}

/** One row of the result table. */
export interface CycleBenchRow {
  measure: string;
  ms: number | null;
  wireBytes: number | null;
  /** MB/s for write runs. */
  mbps?: number | null;
  p50us?: number | null;
  p99us?: number | null;
  note: string;
}

/** Result of {@link runCycleBenchmark}. */
export interface CycleBenchResult {
  rows: CycleBenchRow[];
  settings: { size: number; changedFraction: number; changedBlocks: number; changedBytes: number; writeMs: number; overheadCopyBytes: number; cpus: number; load: number[]; uvThreadpoolSize: number };
  /**
   * Ratios the issue sets goals for: time to bring the target up to date / rsync time (goal ≤ 0.5; also
   * against rsync followed by a sync, and for the whole cycle), wire bytes / changed bytes (goal ≤ 1.1).
   */
  goals: { timeVsRsync: number | null; timeVsDurableRsync: number | null; wholeCycleVsRsync: number | null; wireVsChanged: number };
}

function ratio(a: number, b: number | null): number | null {
  return b === null || b === 0 ? null : Math.round((a / b) * 1000) / 1000;
}

function percentile(sorted: Float64Array, p: number): number {
  if (sorted.length === 0) return Number.NaN;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))]!;
}

/** Fills a device with random bytes, 8 MiB at a time. */
async function fillRandom(device: BlockDevice): Promise<void> {
  const chunk = Buffer.allocUnsafe(8 * MiB);
  for (let at = 0; at < device.size; at += chunk.length) {
    const n = Math.min(chunk.length, device.size - at);
    randomFillSync(chunk, 0, n);
    await device.write(at, chunk.subarray(0, n));
  }
}

/** True when two files have the same bytes. */
function sameFiles(a: string, b: string): boolean {
  const fa = openSync(a, 'r');
  const fb = openSync(b, 'r');
  const ba = Buffer.allocUnsafe(8 * MiB);
  const bb = Buffer.allocUnsafe(8 * MiB);
  try {
    for (let at = 0; ; at += ba.length) {
      const na = readSync(fa, ba, 0, ba.length, at);
      const nb = readSync(fb, bb, 0, bb.length, at);
      if (na !== nb || !ba.subarray(0, na).equals(bb.subarray(0, nb))) return false;
      if (na === 0) return true;
    }
  } finally {
    closeSync(fa);
    closeSync(fb);
  }
}

/** 64 KiB writes, `depth` in flight, for `ms`, at random 64 KiB-aligned offsets; stops early when `until` resolves. */
async function writeLoad(device: BlockDevice, ms: number, until?: Promise<unknown>): Promise<{ mbps: number; p50us: number; p99us: number; writes: number; elapsedMs: number }> {
  const size = 64 * 1024;
  const depth = 8;
  const slots = device.size / size;
  const data = Buffer.allocUnsafe(size);
  randomFillSync(data);
  const lat: number[] = [];
  const started = performance.now();
  let stop = false;
  const timer = setTimeout(() => (stop = true), ms);
  void until?.then(() => (stop = true));
  const worker = async (): Promise<void> => {
    while (!stop) {
      const t0 = performance.now();
      await device.write(randomInt(slots) * size, data);
      lat.push((performance.now() - t0) * 1000);
    }
  };
  await Promise.all(Array.from({ length: depth }, worker));
  clearTimeout(timer);
  const elapsedMs = performance.now() - started;
  const sorted = Float64Array.from(lat).sort();
  return { mbps: (lat.length * size) / MiB / (elapsedMs / 1000), p50us: percentile(sorted, 50), p99us: percentile(sorted, 99), writes: lat.length, elapsedMs };
}

/** Flushes every dirty page of the system (so that write-back of earlier steps does not skew the next measurement). */
function syncAll(): void {
  spawnSync('sync');
}

/** Resolves once the source's (only) target link is up. */
async function linkUp(source: CycleSource): Promise<void> {
  if (source.status().targets[0]?.link === 'up') return;
  await new Promise<void>((resolve) => {
    const onLink = (info: { state: string }): void => {
      if (info.state !== 'up') return;
      source.off('target-link', onLink);
      resolve();
    };
    source.on('target-link', onLink);
  });
}

/** Starts the target child; resolves with its port. */
async function startTargetChild(dir: string, size: number): Promise<{ child: ChildProcess; port: number }> {
  const child = spawn(process.execPath, ['--import', 'tsx', fileURLToPath(import.meta.url), '--serve-target', dir, String(size)], { stdio: ['ignore', 'pipe', 'inherit'] });
  const lines = createInterface({ input: child.stdout! });
  for await (const line of lines) {
    const m = /^ready (\d+)$/.exec(line);
    if (m !== null) return { child, port: Number(m[1]) };
  }
  throw new Error('the target child exited before it was ready');
}

function rsyncStats(output: string): number | null {
  const sent = /Total bytes sent: ([\d,]+)/.exec(output);
  const received = /Total bytes received: ([\d,]+)/.exec(output);
  if (sent === null || received === null) return null;
  return Number(sent[1]!.replace(/,/g, '')) + Number(received[1]!.replace(/,/g, ''));
}

/** Runs the benchmark (see the module notes). */
export async function runCycleBenchmark(options: CycleBenchOptions = {}): Promise<CycleBenchResult> {
  const size = options.size ?? 1024 * MiB;
  const fraction = options.changedFraction ?? 0.01;
  const writeMs = options.writeMs ?? 1500;
  const overheadCopyBytes = Math.min(options.overheadCopyBytes ?? 256 * MiB, size);
  const log = options.log ?? ((line: string) => void process.stderr.write(`${line}\n`));
  const dir = options.dir ?? mkdtempSync(join(tmpdir(), 'bm-bench-cycle-'));
  mkdirSync(dir, { recursive: true });
  const targetDir = join(dir, 'target');
  mkdirSync(targetDir, { recursive: true });
  const basePath = join(dir, 'primary.img');
  const rows: CycleBenchRow[] = [];
  let child: ChildProcess | undefined;
  let volume: LayeredVolume | undefined;
  let source: CycleSource | undefined;
  try {
    log(`cycle bench: ${size / MiB} MiB volume in ${dir}`);
    const base = await FileBlockDevice.open(basePath, { size, blockSize: 4096 });
    let t0 = performance.now();
    await fillRandom(base);
    await base.flush();
    log(`filled the volume with random data in ${(performance.now() - t0).toFixed(0)} ms`);
    volume = await LayeredVolume.open(base);
    const target = await startTargetChild(targetDir, size);
    child = target.child;
    source = await createCycleSource({ volumes: [{ name: 'v', volume }], targets: [{ host: '127.0.0.1', port: target.port }], transport: new TcpTransport(), interval: 0 });
    await linkUp(source);

    // cycle 1: the whole volume
    t0 = performance.now();
    const c1 = await source.freezeNow();
    const c1ms = performance.now() - t0;
    if (!c1.targets[0]!.ok) throw new Error(`cycle 1 failed: ${c1.targets[0]!.error?.message}`);
    rows.push({ measure: 'cycle 1 (full copy)', ms: Math.round(c1ms), wireBytes: c1.bytesSent, note: `${((size / MiB) / (c1ms / 1000)).toFixed(0)} MiB/s` });
    log(`cycle 1: ${c1ms.toFixed(0)} ms, ${c1.bytesSent} bytes`);

    // the stale copy rsync will update: the target image at freeze 1
    const rsyncDest = join(dir, 'rsync-dest.img');
    copyFileSync(join(targetDir, 'mirror.img'), rsyncDest);

    // 1 % of the 4 KiB blocks, at random
    const blocks = size / 4096;
    const changed = new Set<number>();
    const want = Math.round(blocks * fraction);
    while (changed.size < want) changed.add(randomInt(blocks));
    const data = Buffer.allocUnsafe(4096);
    for (const b of changed) {
      randomFillSync(data);
      await volume.write(b * 4096, data);
    }
    const changedBytes = changed.size * 4096;
    log(`changed ${changed.size} blocks (${changedBytes} bytes)`);

    // cycle 2: the changes
    syncAll();
    let committedMs = 0;
    const began = performance.now();
    source.once('target-committed', () => (committedMs = performance.now() - began));
    const c2: CycleResult = await source.freezeNow();
    const c2ms = performance.now() - began;
    if (!c2.targets[0]!.ok) throw new Error(`cycle 2 failed: ${c2.targets[0]!.error?.message}`);
    const stats = c2.targets[0]!.stats!;
    rows.push({
      measure: `cycle 2 (${(fraction * 100).toFixed(1)} % changed): target up to date`,
      ms: Math.round(committedMs),
      wireBytes: c2.bytesSent,
      note: `freeze, copy, staged, merged and durable on the target; ${stats.dataBytes} data + ${stats.tableBytes} table bytes in ${stats.dataFrames} frames`,
    });
    rows.push({ measure: 'cycle 2: whole cycle', ms: Math.round(c2ms), wireBytes: c2.bytesSent, note: 'plus the local merge of the frozen layer into the base (durable)' });
    log(`cycle 2: ${c2ms.toFixed(0)} ms, ${c2.bytesSent} bytes`);
    const correct = sameFiles(join(targetDir, 'mirror.img'), basePath);
    if (!correct) throw new Error('after cycle 2 the target image differs from the source image');

    // rsync of the same two images
    const rsync = spawnSync('rsync', ['--version'], { encoding: 'utf8' });
    let rsyncMs: number | null = null;
    let durableRsyncMs: number | null = null;
    if (rsync.status === 0) {
      syncAll();
      t0 = performance.now();
      const r = spawnSync('rsync', ['--no-whole-file', '--inplace', '-I', '--stats', basePath, rsyncDest], { encoding: 'utf8', maxBuffer: 16 * MiB });
      rsyncMs = performance.now() - t0;
      if (r.status !== 0) throw new Error(`rsync failed: ${r.stderr}`);
      const wire = rsyncStats(r.stdout);
      const ok = sameFiles(rsyncDest, basePath);
      rows.push({ measure: 'rsync --no-whole-file --inplace -I', ms: Math.round(rsyncMs), wireBytes: wire, note: ok ? 'same two images, same run (both in the page cache); rsync does not fsync' : 'rsync result differs!' });
      const s0 = performance.now();
      spawnSync('sync', [rsyncDest]);
      const durableMs = rsyncMs + performance.now() - s0;
      durableRsyncMs = durableMs;
      rows.push({ measure: 'rsync, then sync of its destination', ms: Math.round(durableMs), wireBytes: wire, note: 'as durable as a cycle' });
      log(`rsync: ${rsyncMs.toFixed(0)} ms (${durableMs.toFixed(0)} ms with sync), ${wire} bytes`);
    } else {
      rows.push({ measure: 'rsync', ms: null, wireBytes: null, note: 'rsync is not installed (apt-get install -y rsync)' });
    }

    // foreground write overhead
    // bare file device vs layered volume, alternating, median of 3 rounds (the machine's noise hits both alike)
    // every layered run starts on a fresh active layer, as the writes during a cycle copy do
    const plain = await FileBlockDevice.open(join(dir, 'plain.img'), { size, blockSize: 4096 });
    const bareRuns: Array<Awaited<ReturnType<typeof writeLoad>>> = [];
    const layeredRuns: Array<Awaited<ReturnType<typeof writeLoad>>> = [];
    for (let round = 0; round < 3; round++) {
      syncAll();
      bareRuns.push(await writeLoad(plain, writeMs));
      await source.freezeNow(); // a fresh active layer (and a copy of what the previous round wrote)
      syncAll();
      layeredRuns.push(await writeLoad(volume, writeMs));
    }
    await plain.close();
    const med = (runs: Array<Awaited<ReturnType<typeof writeLoad>>>): Awaited<ReturnType<typeof writeLoad>> => [...runs].sort((a, b) => a.mbps - b.mbps)[1]!;
    const bare = med(bareRuns);
    const idle = med(layeredRuns);
    rows.push({ measure: '64 KiB writes, bare file device', ms: Math.round(bare.elapsedMs), wireBytes: null, mbps: Math.round(bare.mbps), p50us: Math.round(bare.p50us), p99us: Math.round(bare.p99us), note: `reference; median of 3 (${bareRuns.map((r) => Math.round(r.mbps)).join(', ')} MB/s)` });
    rows.push({
      measure: '64 KiB writes, layered volume, no cycle',
      ms: Math.round(idle.elapsedMs),
      wireBytes: null,
      mbps: Math.round(idle.mbps),
      p50us: Math.round(idle.p50us),
      p99us: Math.round(idle.p99us),
      note: `median of 3 (${layeredRuns.map((r) => Math.round(r.mbps)).join(', ')} MB/s), each into a fresh layer, alternating with the bare runs`,
    });
    // dirty `overheadCopyBytes`, then write while a cycle copies it: uncapped, then with a bandwidth cap
    const big = Buffer.allocUnsafe(MiB);
    const dirty = async (): Promise<void> => {
      for (let at = 0; at < overheadCopyBytes; at += MiB) {
        randomFillSync(big);
        await volume!.write(at, big);
      }
    };
    const duringCycle = async (label: string): Promise<void> => {
      await dirty();
      await source!.freezeNow(); // copies what was written so far: the next cycle copies exactly the dirtied range
      await dirty();
      const copying = new Promise<void>((resolve) => {
        const onPhase = (p: string): void => {
          if (p !== 'copying') return;
          source!.off('phase', onPhase);
          resolve();
        };
        source!.on('phase', onPhase);
      });
      syncAll();
      const cycle = source!.freezeNow();
      await copying;
      const during = await writeLoad(volume!, writeMs, cycle);
      const c = await cycle;
      rows.push({
        measure: `64 KiB writes, layered volume, cycle copying${label}`,
        ms: Math.round(during.elapsedMs),
        wireBytes: c.bytesSent,
        mbps: Math.round(during.mbps),
        p50us: Math.round(during.p50us),
        p99us: Math.round(during.p99us),
        note: `while a cycle copied ${(c.bytesSent / MiB).toFixed(0)} MiB in ${c.durationMs.toFixed(0)} ms; throughput ${(((idle.mbps - during.mbps) / idle.mbps) * 100).toFixed(0)} % below no cycle`,
      });
    };
    await duringCycle('');
    // the same with a bandwidth cap (a restarted source over the same volume and state files)
    const cap = 64 * MiB;
    await source.close();
    source = await createCycleSource({ volumes: [{ name: 'v', volume }], targets: [{ host: '127.0.0.1', port: target.port }], transport: new TcpTransport(), interval: 0, bandwidth: cap });
    await linkUp(source);
    await duringCycle(`, capped at ${cap / MiB} MiB/s`);
    return {
      rows,
      settings: { size, changedFraction: fraction, changedBlocks: changed.size, changedBytes, writeMs, overheadCopyBytes, cpus: cpus().length, load: loadavg(), uvThreadpoolSize: Number(process.env.UV_THREADPOOL_SIZE ?? 4) },
      goals: {
        timeVsRsync: ratio(committedMs, rsyncMs),
        timeVsDurableRsync: ratio(committedMs, durableRsyncMs),
        wholeCycleVsRsync: ratio(c2ms, rsyncMs),
        wireVsChanged: Math.round((c2.bytesSent / changedBytes) * 1000) / 1000,
      },
    };
  } finally {
    await source?.close();
    await volume?.close();
    if (child !== undefined) {
      const exited = new Promise((resolve) => child!.once('exit', resolve));
      child.kill('SIGTERM');
      await exited;
    }
    if (options.keep !== true && options.dir === undefined) rmSync(dir, { recursive: true, force: true });
  }
}

/** Child-process mode: a cycle target on 127.0.0.1, port printed as `ready <port>`. */
async function serveTarget(dir: string, size: number): Promise<void> {
  const device = await FileBlockDevice.open(join(dir, 'mirror.img'), { size, blockSize: 4096 });
  const state = join(dir, 'state');
  mkdirSync(state, { recursive: true });
  const target = await createCycleTarget({ listen: { host: '127.0.0.1', port: 0 }, dir: state, volumes: [{ name: 'v', device }], nodeId: 'bench-target' });
  process.stdout.write(`ready ${target.address.port}\n`);
  process.once('SIGTERM', () => {
    void target.close().then(() => device.close()).then(() => process.exit(0));
  });
}

function formatTable(rows: ReadonlyArray<Record<string, unknown>>): string {
  const columns = [...new Set(rows.flatMap((r) => Object.keys(r)))];
  const cell = (v: unknown): string => (v === undefined || v === null ? '' : String(v));
  const widths = columns.map((c) => Math.max(c.length, ...rows.map((r) => cell(r[c]).length)));
  const line = (vals: string[]): string => `| ${vals.map((v, i) => v.padEnd(widths[i]!)).join(' | ')} |`;
  return [line(columns), `|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|`, ...rows.map((r) => line(columns.map((c) => cell(r[c]))))].join('\n');
}

if (process.argv[1] !== undefined && fileURLToPath(import.meta.url) === process.argv[1]) {
  const { values } = parseArgs({
    options: {
      'serve-target': { type: 'boolean', default: false },
      'size-mib': { type: 'string' },
      'write-ms': { type: 'string' },
      keep: { type: 'boolean', default: false },
    },
    allowPositionals: true,
    strict: true,
  });
  if (values['serve-target']) {
    const [dir, size] = process.argv.slice(process.argv.indexOf('--serve-target') + 1);
    await serveTarget(dir!, Number(size));
  } else {
    const result = await runCycleBenchmark({
      ...(values['size-mib'] === undefined ? {} : { size: Number(values['size-mib']) * MiB }),
      ...(values['write-ms'] === undefined ? {} : { writeMs: Number(values['write-ms']) }),
      keep: values.keep,
    });
    console.log(formatTable(result.rows as unknown as Array<Record<string, unknown>>));
    console.log(JSON.stringify({ settings: result.settings, goals: result.goals }));
  }
}
