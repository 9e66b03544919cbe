/**
 * Issue 4 benchmarks (resynchronisation), in one run on one machine:
 *
 * 1. Initial sync throughput: a file-backed volume of `sizeMiB` random bytes
 *    (`FileBlockDevice` in a temp dir) copied to a blank target on loopback
 *    TCP, timed from link up to `resync-done` + drain; resync settings
 *    regionSize 64 KiB / 1 MiB × concurrency 4 / 16. Reference: `nbdcopy`
 *    copying the same image between two `nbdkit file` exports, in the same run.
 * 2. Checksum sync of a target that already holds the same bytes vs the
 *    full copy of (1): seconds and bytes on the wire.
 * 3. Bytes on the wire per dirty byte: 1 % of the volume dirtied in random
 *    4 KiB writes while the link is down, with a journal small enough to
 *    overflow (the bitmap takes over); then the link heals and the resync
 *    runs. Region sizes 4 KiB, 64 KiB (default) and 1 MiB.
 *
 * The target runs in its own process (`fixtures/resync-target.ts`), the
 * primary in this one. Bytes on the wire are counted by the primary's
 * transport: `bytesWritten + bytesRead` of every TCP socket the primary
 * opens (TCP payload in both directions: frames, headers, acks, digests;
 * IP/TCP headers not included) plus the UDP heartbeat payloads.
 *
 *   node --import tsx benchmarks/resync.ts [sizeMiB=1024] [rounds=3]
 *
 * @module
 */
import { spawn } from 'node:child_process';
import { randomFillSync } from 'node:crypto';
import { open, mkdtemp, rm, truncate, writeFile, copyFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type net from 'node:net';
import { FileBlockDevice } from '../src/device/file-device.js';
import { Primary, type PrimaryOptions } from '../src/replication/primary.js';
import { TcpConnection, TcpTransport } from '../src/transport/tcp.js';
import type { ConnectOptions, DatagramChannel, Transport, TransportAddress, TransportServer, TransportSupports } from '../src/transport/transport.js';
import type { ResyncResult } from '../src/replication/resync-runner.js';
import { formatTable, median, processCpuMs, round, spawnTsFixture, startNbdkit, type JsonChild } from './util.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const BLOCK = 4096;
/** Heartbeats fast enough that a healed link reopens within ~0.1 s; stale detection lenient for a loaded machine. */
const LINK = { heartbeatInterval: 100, staleAfter: 3000, probation: 0 };

/** Options of {@link runResyncBenchmark}. */
export interface ResyncBenchOptions {
  /** Volume size in MiB (default 1024). */
  sizeMiB?: number;
  /** Rounds of part 1 (nbdcopy and each resync configuration, alternated; medians reported; default 3). */
  rounds?: number;
  /** Progress lines (default: stderr). */
  log?: (line: string) => void;
}

/** One row of the resync benchmark table. */
export interface ResyncBenchRow {
  measure: string;
  /** Resync region size in KiB (null: not ours). */
  regionKiB: number | null;
  /** Resync concurrency (regions at once). */
  conc: number | null;
  /** Bytes the run had to bring to the target, MiB: the volume (parts 1, 2) or the dirty bytes (part 3). */
  dataMiB: number;
  seconds: number | null;
  /** dataMiB·2^20 / seconds / 10^6. */
  MBps: number | null;
  /** CPU seconds of all processes involved (primary + target; nbdcopy + 2 × nbdkit). */
  cpuSec: number | null;
  /** Bytes on the wire (TCP payload both directions + UDP heartbeats), MiB; null when not measured. */
  wireMiB: number | null;
  /** Bytes on the wire per data byte. */
  wirePerByte: number | null;
  /** Throughput relative to nbdcopy (part 1). */
  xNbdcopy: number | null;
  /** Seconds relative to the default full copy (part 2). */
  timeVsFull: number | null;
  /** Bytes on the wire relative to the default full copy (part 2). */
  wireVsFull: number | null;
  /** Regions whose data the resync sent / regions visited. */
  regionsSent: string | null;
  note: string;
}

/** Raw figures of one timed run. */
export interface ResyncRun {
  kind: 'nbdcopy' | 'full' | 'checksum' | 'verify' | 'dirty';
  round: number;
  regionSize: number | null;
  concurrency: number | null;
  dataBytes: number;
  seconds: number;
  /** CPU seconds (user + system) of every process involved during the timed window: primary + target, or nbdcopy + both nbdkit. */
  cpuSeconds: number | null;
  wire: WireCount | null;
  result?: Omit<ResyncResult, 'progress'>;
  /** `progress` events seen during the run, and the library's own average rate (resync-done's progress snapshot), MB/s. */
  progress?: { events: number; reportedMBps: number; reportedSeconds: number };
  /** Verify: mismatched ranges found. */
  mismatches?: number;
  /** Part 3: what the primary held when the link healed. */
  beforeHeal?: { journalEntries: number; journalBytes: number; resyncRegions: number; resyncBytes: number; journalFull: boolean };
  /** Images compared byte for byte after the run. */
  identical: boolean | null;
}

/** Result of {@link runResyncBenchmark}. */
export interface ResyncBenchResult {
  rows: ResyncBenchRow[];
  runs: ResyncRun[];
  settings: { sizeMiB: number; rounds: number; link: typeof LINK; nbdcopy: string; nbdkit: string; target: string; wire: string };
}

/** Bytes on the wire, both directions. */
export interface WireCount {
  tcpSent: number;
  tcpReceived: number;
  udp: number;
  total: number;
}

/**
 * A TCP transport that counts what crosses the wire: TCP payload bytes of
 * every socket it opened (`bytesWritten`/`bytesRead`, kept after the socket
 * closed) and UDP datagram payloads.
 */
class CountingTransport implements Transport {
  readonly supports: TransportSupports = { datagram: true, faults: false };
  readonly #tcp = new TcpTransport();
  readonly #sockets: net.Socket[] = [];
  #udp = 0;

  listen(address: TransportAddress): Promise<TransportServer> {
    return this.#tcp.listen(address);
  }

  async connect(address: TransportAddress, options?: ConnectOptions): Promise<TcpConnection> {
    const conn = await this.#tcp.connect(address, options);
    if (!(conn instanceof TcpConnection)) throw new Error('expected a TcpConnection');
    this.#sockets.push(conn.socket);
    return conn;
  }

  async bindDatagram(address: TransportAddress): Promise<DatagramChannel> {
    const channel = await this.#tcp.bindDatagram(address);
    const send = channel.send.bind(channel);
    channel.send = (data: Uint8Array, to: TransportAddress): void => {
      this.#udp += data.byteLength;
      send(data, to);
    };
    channel.on('message', (data) => {
      this.#udp += data.byteLength;
    });
    return channel;
  }

  count(): WireCount {
    let tcpSent = 0;
    let tcpReceived = 0;
    for (const s of this.#sockets) {
      tcpSent += s.bytesWritten;
      tcpReceived += s.bytesRead;
    }
    return { tcpSent, tcpReceived, udp: this.#udp, total: tcpSent + tcpReceived + this.#udp };
  }
}

function diff(a: WireCount, b: WireCount): WireCount {
  return { tcpSent: b.tcpSent - a.tcpSent, tcpReceived: b.tcpReceived - a.tcpReceived, udp: b.udp - a.udp, total: b.total - a.total };
}

/** Writes `size` random bytes to `path`. */
async function randomImage(path: string, size: number): Promise<void> {
  const fh = await open(path, 'w');
  try {
    const chunk = Buffer.alloc(8 * MiB);
    for (let off = 0; off < size; off += chunk.length) {
      randomFillSync(chunk);
      const n = Math.min(chunk.length, size - off);
      await fh.write(chunk, 0, n, off);
    }
    await fh.datasync();
  } finally {
    await fh.close();
  }
}

/** A blank (sparse) image of `size` bytes. */
async function blankImage(path: string, size: number): Promise<void> {
  await rm(path, { force: true });
  await writeFile(path, '');
  await truncate(path, size);
}

/** fdatasync of `path` (outside the timed windows: no writeback of one run spills into the next). */
async function syncFile(path: string): Promise<void> {
  const fh = await open(path, 'r+');
  try {
    await fh.datasync();
  } finally {
    await fh.close();
  }
}

/** True when both files hold the same bytes. */
async function sameImages(a: string, b: string, size: number): Promise<boolean> {
  const [fa, fb] = await Promise.all([open(a, 'r'), open(b, 'r')]);
  try {
    const ba = Buffer.alloc(16 * MiB);
    const bb = Buffer.alloc(16 * MiB);
    for (let off = 0; off < size; off += ba.length) {
      const n = Math.min(ba.length, size - off);
      const [ra, rb] = await Promise.all([fa.read(ba, 0, n, off), fb.read(bb, 0, n, off)]);
      if (ra.bytesRead !== n || rb.bytesRead !== n || !ba.subarray(0, n).equals(bb.subarray(0, n))) return false;
    }
    return true;
  } finally {
    await Promise.all([fa.close(), fb.close()]);
  }
}

function run(cmd: string, args: string[]): Promise<string> {
  return new Promise<string>((resolve, reject) => {
    const p = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    p.stdout.on('data', (c: Buffer) => (out += c.toString()));
    p.stderr.on('data', (c: Buffer) => (out += c.toString()));
    p.once('error', (error) => reject(new Error(`${cmd} is required for the resync benchmark (apt-get install -y nbdkit libnbd-bin): ${error.message}`)));
    p.once('exit', (code) => (code === 0 ? resolve(out) : reject(new Error(`${cmd} ${args.join(' ')} exited ${code}: ${out.slice(-2000)}`))));
  });
}


/** Parses the children's line of bash's `times` ("0m1.234s 0m0.567s"); CPU seconds. */
function childTimes(out: string): number | null {
  const lines = out.trim().split('\n');
  const m = /^(\d+)m([\d.]+)s (\d+)m([\d.]+)s$/.exec(lines.at(-1)?.trim() ?? '');
  return m === null ? null : Number(m[1]) * 60 + Number(m[2]) + Number(m[3]) * 60 + Number(m[4]);
}

/**
 * nbdcopy between two nbdkit file exports; seconds of the nbdcopy process
 * (connect to exit) and CPU seconds of nbdcopy and both nbdkit processes.
 */
async function nbdcopy(source: string, dest: string, size: number): Promise<{ seconds: number; cpuSeconds: number | null }> {
  await blankImage(dest, size);
  const src = await startNbdkit(source, true);
  const dst = await startNbdkit(dest, false);
  try {
    const cpu0 = [processCpuMs(src.pid), processCpuMs(dst.pid)];
    const t0 = performance.now();
    // bash's `times` reports the CPU time of nbdcopy (its finished child)
    const out = await run('bash', ['-c', 'nbdcopy "$1" "$2" && times', 'nbdcopy', src.uri, dst.uri]);
    const seconds = (performance.now() - t0) / 1000;
    const cpu1 = [processCpuMs(src.pid), processCpuMs(dst.pid)];
    const copyCpu = childTimes(out);
    const kitCpu = cpu0.every((x) => x !== null) && cpu1.every((x) => x !== null) ? (cpu1[0]! - cpu0[0]! + cpu1[1]! - cpu0[1]!) / 1000 : null;
    return { seconds, cpuSeconds: copyCpu === null || kitCpu === null ? null : copyCpu + kitCpu };
  } finally {
    await src.stop();
    await dst.stop();
    await syncFile(dest);
  }
}

function waitFor<T extends unknown[]>(subscribe: (listener: (...args: T) => void) => () => void, accept: (...args: T) => boolean, timeoutMs: number, what: string): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    let unsubscribe = (): void => {};
    const timer = setTimeout(() => {
      unsubscribe();
      reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}`));
    }, timeoutMs);
    unsubscribe = subscribe((...args: T) => {
      if (!accept(...args)) return;
      clearTimeout(timer);
      unsubscribe();
      resolve(args);
    });
  });
}

async function waitLink(primary: Primary, state: string, timeoutMs = 30000): Promise<void> {
  if (primary.link === state) return;
  await waitFor<[string]>(
    (l) => {
      primary.on('link', l);
      return () => primary.off('link', l);
    },
    (s) => s === state,
    timeoutMs,
    `link ${state}`,
  );
}

/** The next `resync-done` of `primary`; `cancel()` stops waiting (the promise then never settles). */
function resyncDone(primary: Primary, timeoutMs: number): { promise: Promise<[{ volume: string } & ResyncResult]>; cancel: () => void } {
  let cancel = (): void => {};
  const promise = new Promise<[{ volume: string } & ResyncResult]>((resolve, reject) => {
    const timer = setTimeout(() => {
      cleanup();
      reject(new Error(`no resync-done after ${timeoutMs} ms: ${JSON.stringify(primary.status().volumes)}`));
    }, timeoutMs);
    const onDone = (info: { volume: string } & ResyncResult): void => {
      cleanup();
      resolve([info]);
    };
    const onError = (info: { volume: string; error: Error }): void => {
      // a resync error resumes when the link is up again; report it, keep waiting
      process.stderr.write(`resync-error ${info.volume}: ${info.error.message}\n`);
    };
    const cleanup = (): void => {
      clearTimeout(timer);
      primary.off('resync-done', onDone);
      primary.off('resync-error', onError);
    };
    primary.on('resync-done', onDone);
    primary.on('resync-error', onError);
    cancel = cleanup;
  });
  return { promise, cancel };
}

interface Ctx {
  dir: string;
  size: number;
  source: string;
  targetImage: string;
  log: (line: string) => void;
}

async function startTarget(ctx: Ctx): Promise<{ child: JsonChild; port: number }> {
  const { child, ready } = await spawnTsFixture<{ port: number }>('resync-target.ts', { size: ctx.size, image: ctx.targetImage, name: 'v', blockSize: BLOCK, link: LINK });
  return { child, port: ready.port };
}

function primaryOptions(port: number, transport: Transport, device: FileBlockDevice, extra: Partial<PrimaryOptions>, initialSync?: 'full' | 'checksum' | 'none'): PrimaryOptions {
  return {
    peer: { host: '127.0.0.1', port },
    transport,
    volumes: [{ name: 'v', device, mode: 'async', ...(initialSync === undefined ? {} : { initialSync }) }],
    ...LINK,
    ...extra,
  };
}

/** Part 1/2: one initial sync (full or checksum) of ctx.targetImage as it is; timed from link up to resync-done + drain. */
async function initialSync(ctx: Ctx, kind: 'full' | 'checksum', regionSize: number, concurrency: number, roundIndex: number, verify = false): Promise<ResyncRun[]> {
  const cancels: Array<() => void> = [];
  const { child, port } = await startTarget(ctx);
  const device = await FileBlockDevice.open(ctx.source, { size: ctx.size, blockSize: BLOCK });
  const transport = new CountingTransport();
  const primary = new Primary(primaryOptions(port, transport, device, { resync: { regionSize, concurrency } }, kind));
  try {
    let t0 = 0;
    let w0: WireCount | undefined;
    let cpu0 = { self: process.cpuUsage(), target: processCpuMs(child.process.pid) };
    primary.on('link', (state) => {
      if (state === 'up' && w0 === undefined) {
        t0 = performance.now();
        w0 = transport.count();
        cpu0 = { self: process.cpuUsage(), target: processCpuMs(child.process.pid) };
      }
    });
    let progressEvents = 0;
    primary.on('progress', (p) => {
      if (p.operation === 'resync') progressEvents++;
    });
    const done = resyncDone(primary, 300_000);
    cancels.push(done.cancel);
    await primary.start(true);
    const [result] = await done.promise;
    await primary.drain(300_000);
    const seconds = (performance.now() - t0) / 1000;
    const wire = diff(w0!, transport.count());
    const cpuSeconds = cpuSince(cpu0, child);
    const runs: ResyncRun[] = [];
    if (verify) {
      // online verify of the (now identical) volume with the same settings
      const v0 = { wire: transport.count(), cpu: { self: process.cpuUsage(), target: processCpuMs(child.process.pid) }, t: performance.now() };
      const vr = await primary.verify('v');
      const vSeconds = (performance.now() - v0.t) / 1000;
      runs.push({
        kind: 'verify',
        round: roundIndex,
        regionSize,
        concurrency,
        dataBytes: ctx.size,
        seconds: vSeconds,
        cpuSeconds: cpuSince(v0.cpu, child),
        wire: diff(v0.wire, transport.count()),
        mismatches: vr.mismatches.length,
        identical: null,
      });
      ctx.log(`verify ${regionSize / KiB} KiB × ${concurrency}: ${vSeconds.toFixed(2)} s, ${vr.mismatches.length} mismatches`);
    }
    await primary.close();
    await child.stop();
    await syncFile(ctx.targetImage);
    const identical = await sameImages(ctx.source, ctx.targetImage, ctx.size);
    const r: ResyncRun = {
      kind,
      round: roundIndex,
      regionSize,
      concurrency,
      dataBytes: ctx.size,
      seconds,
      cpuSeconds,
      wire,
      result: { regions: result.regions, regionsSent: result.regionsSent, bytesSent: result.bytesSent, zeroBytesSent: result.zeroBytesSent },
      progress: { events: progressEvents, reportedMBps: result.progress.averageBytesPerSecond / 1e6, reportedSeconds: result.progress.elapsedMs / 1000 },
      identical,
    };
    ctx.log(`${kind} sync ${regionSize / KiB} KiB × ${concurrency}: ${seconds.toFixed(2)} s, ${(ctx.size / seconds / 1e6).toFixed(0)} MB/s, wire ${(wire.total / MiB).toFixed(1)} MiB${identical ? '' : ' — IMAGES DIFFER'}`);
    return [r, ...runs];
  } finally {
    for (const c of cancels) c();
    await primary.close({ drain: false });
    await child.stop();
    await device.close();
  }
}

/** CPU seconds of this process and of the target process since `cpu0`. */
function cpuSince(cpu0: { self: NodeJS.CpuUsage; target: number | null }, child: JsonChild): number | null {
  const self = process.cpuUsage(cpu0.self);
  const target = processCpuMs(child.process.pid);
  if (target === null || cpu0.target === null) return null;
  return (self.user + self.system) / 1e6 + (target - cpu0.target) / 1000;
}

/** A deterministic PRNG (xorshift32). */
function prng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) / 2 ** 32;
  };
}

/** `count` distinct random 4 KiB block indices of a volume of `blocks` blocks. */
function randomBlocks(blocks: number, count: number, seed: number): number[] {
  const rnd = prng(seed);
  const chosen = new Set<number>();
  while (chosen.size < count) chosen.add(Math.floor(rnd() * blocks));
  return [...chosen];
}

/**
 * Part 3: the target holds the primary's image; the link goes down, 1 % of
 * the volume is written in random 4 KiB writes (the journal overflows), the
 * link heals; bytes on the wire from the heal to resync-done + drain.
 */
async function dirtyResync(ctx: Ctx, regionSize: number, blocks: number[], seed: number, concurrency: number): Promise<ResyncRun> {
  const cancels: Array<() => void> = [];
  const { child, port } = await startTarget(ctx);
  const device = await FileBlockDevice.open(ctx.source, { size: ctx.size, blockSize: BLOCK });
  const transport = new CountingTransport();
  const journalDir = join(ctx.dir, `journal-${regionSize}`);
  await rm(journalDir, { recursive: true, force: true });
  // 256 KiB of ring: ~55 records of 4 KiB, then the bitmap takes over
  const primary = new Primary(
    // the target already holds the primary's image (part 1 copied it): no initial sync
    primaryOptions(port, transport, device, { resync: { regionSize, concurrency }, journal: { dir: journalDir, capacityBytes: 256 * KiB, fsync: 'batch' } }, 'none'),
  );
  try {
    await primary.start(true);
    await waitLink(primary, 'up');
    let journalFull = false;
    primary.on('journal-full', () => (journalFull = true));
    await child.request({ cmd: 'close' });
    await waitLink(primary, 'down');
    const volume = primary.volume('v');
    const rnd = prng(seed);
    const pending = new Set<Promise<unknown>>();
    for (const b of blocks) {
      const data = Buffer.allocUnsafe(BLOCK);
      for (let i = 0; i < BLOCK; i += 4) data.writeUInt32LE((rnd() * 2 ** 32) >>> 0, i);
      const p: Promise<unknown> = volume.write(b * BLOCK, data).finally(() => pending.delete(p));
      pending.add(p);
      if (pending.size >= 32) await Promise.race(pending);
    }
    await Promise.all(pending);
    const st = volume.status();
    const beforeHeal = { journalEntries: st.journalEntries, journalBytes: st.journalBytes, resyncRegions: st.resyncRegions, resyncBytes: st.resyncBytes, journalFull };
    const w0 = transport.count();
    const cpu0 = { self: process.cpuUsage(), target: processCpuMs(child.process.pid) };
    const done = st.resyncBytes > 0 ? resyncDone(primary, 300_000) : undefined;
    if (done !== undefined) cancels.push(done.cancel);
    const t0 = performance.now();
    await child.request({ cmd: 'open' });
    await waitLink(primary, 'up');
    const result = done === undefined ? undefined : (await done.promise)[0];
    await primary.drain(300_000);
    const seconds = (performance.now() - t0) / 1000;
    const wire = diff(w0, transport.count());
    const cpuSeconds = cpuSince(cpu0, child);
    await primary.close();
    await child.stop();
    await syncFile(ctx.targetImage);
    const identical = await sameImages(ctx.source, ctx.targetImage, ctx.size);
    const dataBytes = blocks.length * BLOCK;
    ctx.log(
      `dirty resync ${regionSize / KiB} KiB regions: ${(dataBytes / MiB).toFixed(1)} MiB dirty (journal ${st.journalEntries} entries, bitmap ${st.resyncRegions} regions), wire ${(wire.total / MiB).toFixed(1)} MiB = ${(wire.total / dataBytes).toFixed(2)} × dirty, ${seconds.toFixed(2)} s${identical ? '' : ' — IMAGES DIFFER'}`,
    );
    return {
      kind: 'dirty',
      round: 0,
      regionSize,
      concurrency,
      dataBytes,
      seconds,
      cpuSeconds,
      wire,
      ...(result === undefined ? {} : { result: { regions: result.regions, regionsSent: result.regionsSent, bytesSent: result.bytesSent, zeroBytesSent: result.zeroBytesSent } }),
      beforeHeal,
      identical,
    };
  } finally {
    for (const c of cancels) c();
    await primary.close({ drain: false });
    await child.stop();
    await device.close();
  }
}

async function toolVersion(cmd: string): Promise<string> {
  return (await run(cmd, ['--version'])).split('\n')[0]!.trim();
}

const num = (v: number | null | undefined, digits: number): number | null => round(v ?? null, digits);

/**
 * Runs the three measurements on a volume of `sizeMiB` MiB (default 1024)
 * under a fresh temp directory (removed afterwards). Needs `nbdkit` and `nbdcopy`.
 */
export async function runResyncBenchmark(options: ResyncBenchOptions = {}): Promise<ResyncBenchResult> {
  const sizeMiB = options.sizeMiB ?? 1024;
  const rounds = options.rounds ?? 3;
  const log = options.log ?? ((line: string) => void process.stderr.write(`${line}\n`));
  const size = sizeMiB * MiB;
  const nbdcopyVersion = await toolVersion('nbdcopy');
  const nbdkitVersion = await toolVersion('nbdkit');
  const dir = await mkdtemp(join(tmpdir(), 'bm-bench-resync-'));
  const ctx: Ctx = { dir, size, source: join(dir, 'primary.img'), targetImage: join(dir, 'target.img'), log };
  const runs: ResyncRun[] = [];
  try {
    log(`writing ${sizeMiB} MiB of random data`);
    await randomImage(ctx.source, size);

    // --- 1. initial sync to a blank target vs nbdcopy, alternated per round
    const configs = [
      { regionSize: 64 * KiB, concurrency: 4 },
      { regionSize: 64 * KiB, concurrency: 16 },
      { regionSize: MiB, concurrency: 4 },
      { regionSize: MiB, concurrency: 16 },
    ];
    for (let r = 0; r < rounds; r++) {
      const nbdDest = join(dir, 'nbdcopy.img');
      const { seconds, cpuSeconds } = await nbdcopy(ctx.source, nbdDest, size);
      await rm(nbdDest, { force: true });
      log(`nbdcopy: ${seconds.toFixed(2)} s, ${(size / seconds / 1e6).toFixed(0)} MB/s, ${cpuSeconds?.toFixed(2)} CPU s`);
      runs.push({ kind: 'nbdcopy', round: r, regionSize: null, concurrency: null, dataBytes: size, seconds, cpuSeconds, wire: null, identical: null });
      for (const c of configs) {
        await blankImage(ctx.targetImage, size);
        runs.push(...(await initialSync(ctx, 'full', c.regionSize, c.concurrency, r)));
      }
    }

    // --- 2. checksum sync of an identical target (the last full copy left it identical)
    if (!(await sameImages(ctx.source, ctx.targetImage, size))) await copyFile(ctx.source, ctx.targetImage);
    runs.push(...(await initialSync(ctx, 'checksum', 64 * KiB, 4, 0, true)));
    runs.push(...(await initialSync(ctx, 'checksum', MiB, 16, 0, true)));

    // --- 3. bytes on the wire per dirty byte (1 % of the volume in random 4 KiB writes)
    const blocks = randomBlocks(size / BLOCK, Math.max(1, Math.round(size / BLOCK / 100)), 42);
    for (const [i, regionSize] of [4 * KiB, 64 * KiB, MiB].entries()) {
      runs.push(await dirtyResync(ctx, regionSize, blocks, 1000 + i, 4));
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }

  // --- table
  const med = (kind: ResyncRun['kind'], regionSize: number | null, concurrency: number | null): { seconds: number; cpu: number | null; wire: number | null; run: ResyncRun } | undefined => {
    const of = runs.filter((x) => x.kind === kind && x.regionSize === regionSize && x.concurrency === concurrency);
    if (of.length === 0) return undefined;
    const wires = of.map((x) => x.wire?.total).filter((w): w is number => w !== undefined);
    const cpus = of.map((x) => x.cpuSeconds).filter((c): c is number => c !== null);
    return { seconds: median(of.map((x) => x.seconds)), cpu: cpus.length === 0 ? null : median(cpus), wire: wires.length === 0 ? null : median(wires), run: of[0]! };
  };
  const nbd = med('nbdcopy', null, null)!;
  const rows: ResyncBenchRow[] = [];
  const mk = (measure: string, kind: ResyncRun['kind'], regionSize: number | null, concurrency: number | null, note: string, ref?: { seconds: number; wire: number | null }): ResyncBenchRow | undefined => {
    const m = med(kind, regionSize, concurrency);
    if (m === undefined) return undefined;
    const data = m.run.dataBytes;
    const MBps = data / m.seconds / 1e6;
    const res = m.run.result;
    const differs = runs.some((x) => x.kind === kind && x.regionSize === regionSize && x.concurrency === concurrency && x.identical === false);
    return {
      measure,
      regionKiB: regionSize === null ? null : regionSize / KiB,
      conc: concurrency,
      dataMiB: num(data / MiB, 2)!,
      seconds: num(m.seconds, 2),
      MBps: num(MBps, 0),
      cpuSec: num(m.cpu, 2),
      wireMiB: num(m.wire === null ? null : m.wire / MiB, 2),
      wirePerByte: num(m.wire === null ? null : m.wire / data, 4),
      xNbdcopy: kind === 'full' || kind === 'nbdcopy' ? num(nbd.seconds / m.seconds, 2) : null,
      timeVsFull: ref === undefined ? null : num(m.seconds / ref.seconds, 3),
      wireVsFull: ref === undefined || ref.wire === null || m.wire === null ? null : num(m.wire / ref.wire, 4),
      regionsSent: res === undefined ? null : `${res.regionsSent}/${res.regions}`,
      note: differs ? `${note} IMAGES DIFFER`.trim() : note,
    };
  };
  const push = (row: ResyncBenchRow | undefined): void => {
    if (row !== undefined) rows.push(row);
  };
  push(mk('1. nbdcopy nbdkit file → nbdkit file', 'nbdcopy', null, null, `${nbdcopyVersion}; wire not counted`));
  const fullConfigs = [...new Set(runs.filter((x) => x.kind === 'full').map((x) => `${x.regionSize}:${x.concurrency}`))].map((k) => k.split(':').map(Number) as [number, number]);
  const best = fullConfigs.reduce((a, b) => (med('full', b[0], b[1])!.seconds < med('full', a[0], a[1])!.seconds ? b : a));
  for (const [rs, c] of fullConfigs) {
    const isDefault = rs === 64 * KiB && c === 4;
    const isBest = rs === best[0] && c === best[1];
    push(mk('1. initial sync full → blank target', 'full', rs, c, [isDefault ? 'defaults' : '', isBest ? 'best' : ''].filter((s) => s !== '').join(', ')));
  }
  const fullDefault = med('full', 64 * KiB, 4);
  const fullSame = (rs: number, c: number): { seconds: number; wire: number | null } | undefined => med('full', rs, c) ?? fullDefault;
  push(mk('2. checksum sync → identical target', 'checksum', 64 * KiB, 4, 'vs full copy, same settings', fullSame(64 * KiB, 4)));
  push(mk('2. checksum sync → identical target', 'checksum', MiB, 16, 'vs full copy, same settings', fullSame(MiB, 16)));
  for (const rs of [64 * KiB, MiB]) {
    const c = rs === MiB ? 16 : 4;
    const row = mk('2. online verify (identical, link up)', 'verify', rs, c, '', fullSame(rs, c));
    const v = runs.find((x) => x.kind === 'verify' && x.regionSize === rs);
    if (row !== undefined && v !== undefined) row.note = `${v.mismatches} mismatches`;
    push(row);
  }
  for (const rs of [4 * KiB, 64 * KiB, MiB]) {
    const r = runs.find((x) => x.kind === 'dirty' && x.regionSize === rs);
    const row = mk('3. resync after outage, 1% dirty (4 KiB writes)', 'dirty', rs, 4, '');
    if (row !== undefined && r?.beforeHeal !== undefined) {
      const b = r.beforeHeal;
      row.note = `journal ${b.journalEntries} writes, bitmap ${b.resyncRegions} regions${b.journalFull ? '' : ', journal did NOT overflow'}${row.note === '' ? '' : `; ${row.note}`}`;
      // MB/s of dirty data is not a throughput figure worth comparing
      row.MBps = null;
    }
    push(row);
  }
  return {
    rows,
    runs,
    settings: {
      sizeMiB,
      rounds,
      link: LINK,
      nbdcopy: nbdcopyVersion,
      nbdkit: nbdkitVersion,
      target: 'mirror target in a child process (benchmarks/fixtures/resync-target.ts), primary in the benchmark process, async volume, 4 connections',
      wire: "TCP payload bytes of the primary's sockets (bytesWritten + bytesRead) + UDP heartbeat payloads; IP/TCP headers not included",
    },
  };
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const result = await runResyncBenchmark({ sizeMiB: Number(process.argv[2] ?? 1024), rounds: Number(process.argv[3] ?? 3) });
  console.log(formatTable(result.rows as unknown as Array<Record<string, unknown>>));
  process.exit(0);
}
