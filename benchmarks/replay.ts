/**
 * Issue 3 benchmarks, in one run on one machine:
 *
 * 1. Replay speed: journal N MiB of async writes while the target is down,
 *    bring the target back, and time from "link up" until every write is
 *    acknowledged; compared with the raw TCP throughput of the same loopback
 *    (64 KiB writes through a plain `net` socket pair) measured in the same run.
 * 2. Journal append overhead: async writes (64 KiB, 8 in flight) with a
 *    `FileJournal` (fsync batch) vs the in-memory journal, target connected.
 * 3. Issue 11, memory budget: the primary (and its writer) in a child process
 *    of its own (`fixtures/replay-primary.ts`, the library's defaults, in
 *    particular `maxBufferedBytes`), the target in this process. With the
 *    target down, a backlog of `backlogMiB` (default 4 GiB) of async writes
 *    goes to a `FileJournal` large enough for all of it; then the target comes
 *    back and the backlog is replayed (timed from link up until `drain()`
 *    resolves). The child's RSS is sampled every 100 ms in both phases, by the
 *    child (`process.memoryUsage()`, with the summed `bufferedBytes`) and by
 *    this process (`/proc/<pid>/status`; `VmHWM` reset at each phase start via
 *    `clear_refs`, so the kernel's peak is exact even between samples). At the
 *    end the two images are hashed and must be equal. Goal: peak RSS ≤ 150 MiB.
 *
 *   node --import tsx benchmarks/replay.ts [sizeMiB] [backlogMiB]
 *
 * @module
 */
import net from 'node:net';
import { createHash } from 'node:crypto';
import { createReadStream, readFileSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { symlink } from 'node:fs/promises';
import { BENCH_DIR, ROOT_DIR, spawnTsFixture, waitLink, type JsonChild } from './util.js';
import { FileBlockDevice } from '../src/device/file-device.js';
import { createMirrorTarget, type MirrorTarget } from '../src/replication/mirror-target.js';
import { DEFAULT_MAX_BUFFERED, createPrimary, type Primary } from '../src/replication/primary.js';
import { MemoryPairStateStore } from '../src/replication/pair-state.js';

/** A buffer of pseudo-random bytes (cheap LCG; incompressible enough for loopback). */
function fillPattern(buf: Buffer, seed: number): Buffer {
  let x = seed >>> 0 || 1;
  for (let i = 0; i < buf.length; i += 4) {
    x = (Math.imul(x, 1664525) + 1013904223) >>> 0;
    buf.writeUInt32LE(x, i);
  }
  return buf;
}

const MiB = 1024 * 1024;
const LINK = { heartbeatInterval: 50, staleAfter: 200, probation: 0 };

/** One row of the replay benchmark. */
export interface ReplayBenchRow {
  measure: string;
  mib: number;
  seconds: number;
  mibPerSec: number;
  ratio: number | null;
  /** Backlog rows: peak RSS of the primary's process in that phase (kernel's VmHWM), MiB. */
  peakRssMiB?: number | null;
  /** Backlog rows: peak of the summed `bufferedBytes` (payload bytes held in RAM), MiB. */
  peakBufferedMiB?: number | null;
  note?: string;
}

async function rawTcp(bytes: number): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as net.AddressInfo).port;
  const received = new Promise<void>((resolve) => {
    server.once('connection', (sock) => {
      let got = 0;
      sock.on('data', (d: Buffer) => {
        got += d.length;
        if (got >= bytes) resolve();
      });
    });
  });
  const sock = net.connect(port, '127.0.0.1');
  await new Promise<void>((resolve) => sock.once('connect', () => resolve()));
  sock.setNoDelay(true);
  const chunk = fillPattern(Buffer.alloc(64 * 1024), 1);
  const t0 = performance.now();
  for (let sent = 0; sent < bytes; sent += chunk.length) {
    if (!sock.write(chunk)) await new Promise<void>((resolve) => sock.once('drain', () => resolve()));
  }
  await received;
  const seconds = (performance.now() - t0) / 1000;
  sock.destroy();
  server.close();
  return seconds;
}


async function writeAll(primary: Primary, bytes: number, size: number, inFlight = 8): Promise<number> {
  const v = primary.volume('v');
  const buf = fillPattern(Buffer.alloc(64 * 1024), 7);
  const t0 = performance.now();
  const pending = new Set<Promise<unknown>>();
  for (let off = 0, i = 0; off < bytes; off += buf.length, i++) {
    const p: Promise<unknown> = v.write((i * buf.length) % size, buf).finally(() => pending.delete(p));
    pending.add(p);
    if (pending.size >= inFlight) await Promise.race(pending);
  }
  await Promise.all(pending);
  return (performance.now() - t0) / 1000;
}

/** Issue 11's goal for the primary's peak RSS with a 4 GiB backlog, MiB. */
export const GOAL_RSS_MIB = 150;

/** Fields of `/proc/<pid>/status`, in KiB. */
function procStatus(pid: number): Record<string, number> | undefined {
  try {
    const out: Record<string, number> = {};
    for (const line of readFileSync(`/proc/${pid}/status`, 'utf8').split('\n')) {
      const m = /^(VmRSS|VmHWM|RssAnon|RssFile|RssShmem):\s+(\d+) kB/.exec(line);
      if (m !== null) out[m[1]!] = Number(m[2]);
    }
    return out;
  } catch {
    return undefined;
  }
}

/**
 * RSS of another process, per phase: polled every 100 ms from
 * `/proc/<pid>/status` (with the anonymous / file-backed split at the polled
 * peak), and the kernel's exact peak (`VmHWM`, reset at the phase start by
 * writing 5 to `/proc/<pid>/clear_refs`).
 */
class ProcRssSampler {
  readonly #pid: number;
  #timer: NodeJS.Timeout | undefined;
  #peak: Record<string, number> | undefined;
  #hwmReset = false;

  constructor(pid: number) {
    this.#pid = pid;
  }

  start(): void {
    try {
      writeFileSync(`/proc/${this.#pid}/clear_refs`, '5');
      this.#hwmReset = true;
    } catch {
      this.#hwmReset = false; // VmHWM then is the peak since the process started
    }
    this.#peak = undefined;
    this.#take();
    this.#timer = setInterval(() => this.#take(), 100);
  }

  #take(): void {
    const s = procStatus(this.#pid);
    if (s !== undefined && (this.#peak === undefined || (s.VmRSS ?? 0) > (this.#peak.VmRSS ?? 0))) this.#peak = s;
  }

  stop(): ProcRssPhase {
    clearInterval(this.#timer);
    this.#take();
    const last = procStatus(this.#pid);
    const m = (kib: number | undefined): number | null => (kib === undefined ? null : Math.round((kib / 1024) * 10) / 10);
    return {
      vmHwmMiB: m(last?.VmHWM),
      hwmResetAtStart: this.#hwmReset,
      polledPeakRssMiB: m(this.#peak?.VmRSS),
      atPolledPeak: { rssAnonMiB: m(this.#peak?.RssAnon), rssFileMiB: m(this.#peak?.RssFile), rssShmemMiB: m(this.#peak?.RssShmem) },
      endRssMiB: m(last?.VmRSS),
    };
  }
}

/** One phase as seen from /proc. */
export interface ProcRssPhase {
  /** Peak RSS of the phase (the kernel's high-water mark). */
  vmHwmMiB: number | null;
  hwmResetAtStart: boolean;
  polledPeakRssMiB: number | null;
  atPolledPeak: { rssAnonMiB: number | null; rssFileMiB: number | null; rssShmemMiB: number | null };
  endRssMiB: number | null;
}

/** What one backlog run stores in the suite's JSON details. */
export interface BacklogRunDetail {
  backlogMiB: number;
  writeSize: number;
  writes: number;
  inFlight: number;
  nodeArgs: string;
  runtime: 'bundle' | 'tsx';
  childExecArgv: string[];
  maxBufferedBytes: number | 'default';
  journalCapacityBytes: number;
  wallSeconds: number;
  /** The child's own view of each phase (memoryUsage samples, peaks, status, memory after a forced GC). */
  backlog: Record<string, unknown>;
  replay: Record<string, unknown>;
  /** The kernel's view of each phase. */
  backlogRss: ProcRssPhase;
  replayRss: ProcRssPhase;
  replayMibPerSec: number;
  ratioToTcp: number;
  peakRssMiB: number | null;
  goalMet: boolean;
  primarySha256: string;
  targetSha256: string;
  imagesEqual: boolean;
  hashSeconds: number;
  heapSnapshot?: string;
  /** Heap snapshot after the replay (drained), with `heapSnapshotDir`. */
  replayHeapSnapshot?: string;
}

async function sha256File(path: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(path, { highWaterMark: 4 * MiB })) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

/**
 * Compiles `fixtures/replay-primary.ts` and the sources it imports into one
 * ES module in `dir` (esbuild, the bundler tsx itself uses; npm packages stay
 * external and resolve through a `node_modules` link to the repository's).
 */
async function bundleFixture(dir: string): Promise<string> {
  const { build } = await import('esbuild');
  const outfile = join(dir, 'replay-primary.mjs');
  await build({ entryPoints: [join(BENCH_DIR, 'fixtures', 'replay-primary.ts')], bundle: true, platform: 'node', format: 'esm', target: 'node20', packages: 'external', outfile, logLevel: 'warning' });
  await symlink(join(ROOT_DIR, 'node_modules'), join(dir, 'node_modules'), 'dir');
  return outfile;
}

/**
 * One backlog run: child primary, target here; target down → `backlogMiB`
 * of async writes journaled → target up → replay until drained → hashes.
 */
async function runBacklog(o: {
  backlogMiB: number;
  writeSize: number;
  nodeArgs: string[];
  tcpRate: number;
  runtime: 'bundle' | 'tsx';
  /** The bundled fixture (runtime `bundle`). */
  script?: string;
  maxBufferedBytes?: number;
  heapSnapshotDir?: string;
  log: (line: string) => void;
}): Promise<{ rows: ReplayBenchRow[]; detail: BacklogRunDetail }> {
  const wall0 = performance.now();
  const bytes = o.backlogMiB * MiB;
  if (bytes % o.writeSize !== 0) throw new Error(`backlog ${o.backlogMiB} MiB is not a multiple of the write size ${o.writeSize}`);
  const size = Math.max(bytes, 64 * MiB);
  const writes = bytes / o.writeSize;
  const inFlight = 8;
  // every record: payload + a 48-byte header, 512-byte aligned (+512 per record), plus wrap padding and slack
  const journalCapacityBytes = bytes + writes * 512 + 64 * MiB;
  const dir = await mkdtemp(join('/tmp', 'bm-bench-backlog-'));
  const mirrorImage = join(dir, 'mirror.img');
  const primaryImage = join(dir, 'primary.img');
  const tdev = await FileBlockDevice.open(mirrorImage, { size });
  let target: MirrorTarget | undefined = await createMirrorTarget({ listen: { host: '127.0.0.1', port: 0 }, volumes: [{ name: 'v', device: tdev }], ...LINK });
  const port = target.address.port;
  let child: JsonChild | undefined;
  let tdevOpen = true;
  try {
    const spawned = await spawnTsFixture<{ pid: number; execArgv: string[] }>(
      'replay-primary.ts',
      { image: primaryImage, size, port, journalDir: join(dir, 'journal'), capacityBytes: journalCapacityBytes, ...(o.maxBufferedBytes !== undefined ? { maxBufferedBytes: o.maxBufferedBytes } : {}) },
      { nodeArgs: o.nodeArgs, ...(o.script !== undefined ? { plainScript: o.script } : {}) },
    );
    child = spawned.child;
    const rss = new ProcRssSampler(spawned.ready.pid);
    await target.close();
    target = undefined;
    await child.request({ cmd: 'wait-link', state: 'down' }, 30_000);

    rss.start();
    const backlog = await child.request<Record<string, unknown> & { seconds: number; samples: { peakBufferedMiB: number } }>({ cmd: 'backlog', bytes, writeSize: o.writeSize, inFlight }, 3_600_000);
    const backlogRss = rss.stop();
    o.log(`replay: backlog journaled in ${backlog.seconds.toFixed(1)} s, peak RSS ${backlogRss.vmHwmMiB} MiB`);
    let heapSnapshot: string | undefined;
    if (o.heapSnapshotDir !== undefined) {
      heapSnapshot = join(o.heapSnapshotDir, `backlog-${o.backlogMiB}MiB-${o.writeSize}B-${Date.now()}.heapsnapshot`);
      await child.request({ cmd: 'snapshot', path: heapSnapshot }, 600_000);
      o.log(`replay: heap snapshot ${heapSnapshot}`);
    }

    rss.start();
    const replaying = child.request<Record<string, unknown> & { seconds: number; samples: { peakBufferedMiB: number } }>({ cmd: 'replay' }, 3_600_000);
    target = await createMirrorTarget({ listen: { host: '127.0.0.1', port }, volumes: [{ name: 'v', device: tdev }], ...LINK });
    const replay = await replaying;
    const replayRss = rss.stop();
    o.log(`replay: drained in ${replay.seconds.toFixed(1)} s, peak RSS ${replayRss.vmHwmMiB} MiB`);
    let replayHeapSnapshot: string | undefined;
    if (o.heapSnapshotDir !== undefined) {
      replayHeapSnapshot = join(o.heapSnapshotDir, `replayed-${o.backlogMiB}MiB-${o.writeSize}B-${Date.now()}.heapsnapshot`);
      await child.request({ cmd: 'snapshot', path: replayHeapSnapshot }, 600_000);
      o.log(`replay: heap snapshot ${replayHeapSnapshot}`);
    }

    await child.request({ cmd: 'close' }, 120_000);
    await child.stop();
    child = undefined;
    await target.close();
    target = undefined;
    await tdev.close();
    tdevOpen = false;
    const h0 = performance.now();
    const primarySha256 = await sha256File(primaryImage);
    const targetSha256 = await sha256File(mirrorImage);
    const hashSeconds = (performance.now() - h0) / 1000;
    const wallSeconds = (performance.now() - wall0) / 1000;

    const replayMibPerSec = o.backlogMiB / replay.seconds;
    const ratioToTcp = replayMibPerSec / o.tcpRate;
    const peaks = [backlogRss.vmHwmMiB, replayRss.vmHwmMiB].filter((x): x is number => x !== null);
    const peakRssMiB = peaks.length > 0 ? Math.max(...peaks) : null;
    const goalMet = peakRssMiB !== null && peakRssMiB <= GOAL_RSS_MIB;
    const imagesEqual = primarySha256 === targetSha256;
    const flags = o.nodeArgs.join(' ') || 'none';
    const kib = `${o.writeSize / 1024} KiB`;
    const rows: ReplayBenchRow[] = [
      {
        measure: `backlog: async ${kib} x${inFlight} writes, target down (primary in its own process: ${o.runtime === 'bundle' ? 'compiled JS' : 'tsx'}, node flags: ${flags})`,
        mib: o.backlogMiB,
        seconds: backlog.seconds,
        mibPerSec: o.backlogMiB / backlog.seconds,
        ratio: null,
        peakRssMiB: backlogRss.vmHwmMiB,
        peakBufferedMiB: backlog.samples.peakBufferedMiB,
        note: `file journal ${Math.round(journalCapacityBytes / MiB)} MiB, fsync batch; maxBufferedBytes ${o.maxBufferedBytes === undefined ? `default (${DEFAULT_MAX_BUFFERED / MiB} MiB)` : o.maxBufferedBytes}`,
      },
      {
        measure: `replay of that backlog (link up → drain: acknowledged and durable), ${kib}`,
        mib: o.backlogMiB,
        seconds: replay.seconds,
        mibPerSec: replayMibPerSec,
        ratio: ratioToTcp,
        peakRssMiB: replayRss.vmHwmMiB,
        peakBufferedMiB: replay.samples.peakBufferedMiB,
        note: `${imagesEqual ? 'images equal' : 'IMAGES DIFFER'} (sha256); RSS goal ≤ ${GOAL_RSS_MIB} MiB ${goalMet ? 'met' : 'not met'}; wall ${wallSeconds.toFixed(0)} s`,
      },
    ];
    const detail: BacklogRunDetail = {
      backlogMiB: o.backlogMiB,
      writeSize: o.writeSize,
      writes,
      inFlight,
      nodeArgs: flags,
      runtime: o.runtime,
      childExecArgv: spawned.ready.execArgv,
      maxBufferedBytes: o.maxBufferedBytes ?? 'default',
      journalCapacityBytes,
      wallSeconds,
      backlog,
      replay,
      backlogRss,
      replayRss,
      replayMibPerSec,
      ratioToTcp,
      peakRssMiB,
      goalMet,
      primarySha256,
      targetSha256,
      imagesEqual,
      hashSeconds,
      ...(heapSnapshot !== undefined ? { heapSnapshot } : {}),
      ...(replayHeapSnapshot !== undefined ? { replayHeapSnapshot } : {}),
    };
    return { rows, detail };
  } finally {
    if (child !== undefined) child.process.kill('SIGKILL');
    if (target !== undefined) await target.close().catch(() => {});
    if (tdevOpen) await tdev.close().catch(() => {});
    await rm(dir, { recursive: true, force: true });
  }
}

/** Options of {@link runReplayBenchmark}. */
export interface ReplayBenchOptions {
  /** MiB journaled for the in-process replay and raw TCP reference (default 512). */
  sizeMiB?: number;
  /** MiB of the memory-budget backlog (default 4096; 0: skip that part). */
  backlogMiB?: number;
  /** Write sizes of the backlog runs, one run each (default [64 KiB]). */
  backlogWriteSizes?: number[];
  /** Node flags of the primary's child process (default none: what `node` gives a user). */
  backlogNodeArgs?: string[];
  /**
   * How the primary's process runs the library: `bundle` (default) compiles
   * the fixture and src/ into one JavaScript file (esbuild, packages external)
   * run by plain `node`, as a user runs the compiled package; `tsx`: `node
   * --import tsx` on the TypeScript sources (tsx's loader thread adds about
   * 30–40 MiB of RSS that a user does not have).
   */
  backlogRuntime?: 'bundle' | 'tsx';
  /** `maxBufferedBytes` of the child's primary (default: the library's, {@link DEFAULT_MAX_BUFFERED}). */
  maxBufferedBytes?: number;
  /** Write heap snapshots of the primary after the backlog phase and after the replay (each after a forced GC) into this directory. */
  heapSnapshotDir?: string;
  log?: (line: string) => void;
}

/** Rows and the per-run details of {@link runReplayBenchmark}. */
export interface ReplayBenchResult {
  rows: ReplayBenchRow[];
  details: { backlogRuns: BacklogRunDetail[] };
  settings: Record<string, unknown>;
}

/** Runs the measurements (see the module comment). */
export async function runReplayBenchmark(options: ReplayBenchOptions = {}): Promise<ReplayBenchResult> {
  const sizeMiB = options.sizeMiB ?? 512;
  const backlogMiB = options.backlogMiB ?? 4096;
  const backlogWriteSizes = options.backlogWriteSizes ?? [64 * 1024];
  const backlogNodeArgs = options.backlogNodeArgs ?? [];
  const backlogRuntime = options.backlogRuntime ?? 'bundle';
  const log = options.log ?? ((): void => {});
  const bytes = sizeMiB * MiB;
  const volumeSize = Math.max(bytes, 64 * MiB);
  const dir = await mkdtemp(join(tmpdir(), 'bm-bench-replay-'));
  const rows: ReplayBenchRow[] = [];
  const backlogRuns: BacklogRunDetail[] = [];
  let tcpRate: number;
  try {
    const tcpSeconds = await rawTcp(bytes);
    tcpRate = sizeMiB / tcpSeconds;
    rows.push({ measure: 'raw TCP loopback (64 KiB writes)', mib: sizeMiB, seconds: tcpSeconds, mibPerSec: tcpRate, ratio: 1 });
    // --- replay after an outage
    const tdev = await FileBlockDevice.open(join(dir, 'mirror.img'), { size: volumeSize });
    const pdev = await FileBlockDevice.open(join(dir, 'primary.img'), { size: volumeSize });
    let target: MirrorTarget = await createMirrorTarget({ listen: { host: '127.0.0.1', port: 0 }, volumes: [{ name: 'v', device: tdev }], ...LINK });
    const port = target.address.port;
    // both primaries below are the same node's volume: they share its generations
    const generations = new MemoryPairStateStore();
    const primary = await createPrimary({
      peer: target.address,
      // two new sparse files: identical, no initial sync
      volumes: [{ name: 'v', device: pdev, mode: 'async', state: generations, initialSync: 'none' }],
      journal: { dir: join(dir, 'journal'), fsync: 'batch', capacityBytes: bytes + 64 * MiB },
      ...LINK,
    });
    await target.close();
    await waitLink(primary, 'down');
    const journalSeconds = await writeAll(primary, bytes, volumeSize);
    rows.push({ measure: 'async writes while down (journal file, fsync batch)', mib: sizeMiB, seconds: journalSeconds, mibPerSec: sizeMiB / journalSeconds, ratio: null });
    target = await createMirrorTarget({ listen: { host: '127.0.0.1', port }, volumes: [{ name: 'v', device: tdev }], ...LINK });
    await waitLink(primary, 'up');
    const t0 = performance.now();
    await primary.drain(600_000);
    const replaySeconds = (performance.now() - t0) / 1000;
    rows.push({ measure: 'replay after the outage (link up → in sync)', mib: sizeMiB, seconds: replaySeconds, mibPerSec: sizeMiB / replaySeconds, ratio: sizeMiB / replaySeconds / tcpRate });

    // --- journal append overhead with the link up
    const overheadMiB = Math.min(sizeMiB, 256);
    const withFile = await writeAll(primary, overheadMiB * MiB, volumeSize);
    await primary.drain(600_000);
    await primary.close();
    const memPrimary = await createPrimary({ peer: target.address, volumes: [{ name: 'v', device: pdev, mode: 'async', state: generations }], ...LINK });
    const withMemory = await writeAll(memPrimary, overheadMiB * MiB, volumeSize);
    await memPrimary.drain(600_000);
    await memPrimary.close();
    rows.push({ measure: 'async 64 KiB x8, in-memory journal (reference)', mib: overheadMiB, seconds: withMemory, mibPerSec: overheadMiB / withMemory, ratio: 1 });
    rows.push({ measure: 'async 64 KiB x8, file journal fsync batch', mib: overheadMiB, seconds: withFile, mibPerSec: overheadMiB / withFile, ratio: withMemory / withFile });
    await target.close();
    await tdev.close();
    await pdev.close();
  } finally {
    await rm(dir, { recursive: true, force: true });
  }

  // --- issue 11: memory budget while a large backlog sits in the journal and is replayed
  if (backlogMiB > 0) {
    const bundleDir = backlogRuntime === 'bundle' ? await mkdtemp(join('/tmp', 'bm-bench-bundle-')) : undefined;
    try {
      const script = bundleDir === undefined ? undefined : await bundleFixture(bundleDir);
      for (const writeSize of backlogWriteSizes) {
        log(`replay: backlog of ${backlogMiB} MiB in ${writeSize / 1024} KiB writes, primary in a child process (${backlogRuntime}, node flags: ${backlogNodeArgs.join(' ') || 'none'})`);
        const r = await runBacklog({ backlogMiB, writeSize, nodeArgs: backlogNodeArgs, tcpRate, runtime: backlogRuntime, ...(script !== undefined ? { script } : {}), ...(options.maxBufferedBytes !== undefined ? { maxBufferedBytes: options.maxBufferedBytes } : {}), ...(options.heapSnapshotDir !== undefined ? { heapSnapshotDir: options.heapSnapshotDir } : {}), log });
        rows.push(...r.rows);
        backlogRuns.push(r.detail);
        if (!r.detail.imagesEqual) throw new Error(`backlog replay (${writeSize} B writes): the target image differs from the primary's (${r.detail.primarySha256} vs ${r.detail.targetSha256})`);
      }
    } finally {
      if (bundleDir !== undefined) await rm(bundleDir, { recursive: true, force: true });
    }
  }
  const rounded = rows.map((r) => ({ ...r, seconds: Number(r.seconds.toFixed(3)), mibPerSec: Number(r.mibPerSec.toFixed(1)), ratio: r.ratio === null ? null : Number(r.ratio.toFixed(2)) }));
  return {
    rows: rounded,
    details: { backlogRuns },
    settings: { sizeMiB, backlogMiB, backlogWriteSizes, backlogNodeArgs: backlogNodeArgs.join(' '), backlogRuntime, maxBufferedBytes: options.maxBufferedBytes ?? `default (${DEFAULT_MAX_BUFFERED / MiB} MiB)`, goalPeakRssMiB: GOAL_RSS_MIB },
  };
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const r = await runReplayBenchmark({ sizeMiB: Number(process.argv[2] ?? 512), backlogMiB: Number(process.argv[3] ?? 4096), log: (l) => void process.stderr.write(`${l}\n`) });
  console.table(r.rows);
}
