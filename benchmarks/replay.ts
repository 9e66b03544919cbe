/**
 * Issue 3 benchmarks, in one run on one machine:
 *
 * 1. Replay speed: journal N MiB of async writes while the target is down,
 *    bring the target back, and time from "link up" until every write is
 *    acknowledged; compared with the raw TCP throughput of the same loopback
 *    (64 KiB writes through a plain `net` socket pair) measured in the same run.
 * 2. Journal append overhead: async writes (64 KiB, 8 in flight) with a
 *    `FileJournal` (fsync batch) vs the in-memory journal, target connected.
 *
 *   node --import tsx benchmarks/replay.ts [sizeMiB]
 *
 * @module
 */
import net from 'node:net';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FileBlockDevice } from '../src/device/file-device.js';
import { createMirrorTarget, type MirrorTarget } from '../src/replication/mirror-target.js';
import { createPrimary, type Primary } from '../src/replication/primary.js';
import { MemoryGenerationStore } from '../src/replication/generation.js';

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

async function waitLink(primary: Primary, state: string): Promise<void> {
  if (primary.link === state) return;
  await new Promise<void>((resolve) => {
    const l = (s: string): void => {
      if (s === state) {
        primary.off('link', l);
        resolve();
      }
    };
    primary.on('link', l);
  });
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

/** Runs both measurements; `sizeMiB` of journaled data for the replay (default 512). */
export async function runReplayBenchmark(options: { sizeMiB?: number } = {}): Promise<ReplayBenchRow[]> {
  const sizeMiB = options.sizeMiB ?? 512;
  const bytes = sizeMiB * MiB;
  const volumeSize = Math.max(bytes, 64 * MiB);
  const dir = await mkdtemp(join(tmpdir(), 'bm-bench-replay-'));
  const rows: ReplayBenchRow[] = [];
  try {
    const tcpSeconds = await rawTcp(bytes);
    const tcpRate = sizeMiB / tcpSeconds;
    rows.push({ measure: 'raw TCP loopback (64 KiB writes)', mib: sizeMiB, seconds: tcpSeconds, mibPerSec: tcpRate, ratio: 1 });

    // --- replay after an outage
    const tdev = await FileBlockDevice.open(join(dir, 'mirror.img'), { size: volumeSize });
    const pdev = await FileBlockDevice.open(join(dir, 'primary.img'), { size: volumeSize });
    let target: MirrorTarget = await createMirrorTarget({ listen: { host: '127.0.0.1', port: 0 }, volumes: [{ name: 'v', device: tdev }], ...LINK });
    const port = target.address.port;
    // both primaries below are the same node's volume: they share its generations
    const generations = new MemoryGenerationStore();
    const primary = await createPrimary({
      peer: target.address,
      volumes: [{ name: 'v', device: pdev, mode: 'async', generations }],
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
    const memPrimary = await createPrimary({ peer: target.address, volumes: [{ name: 'v', device: pdev, mode: 'async', generations }], ...LINK });
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
  return rows.map((r) => ({ ...r, seconds: Number(r.seconds.toFixed(3)), mibPerSec: Number(r.mibPerSec.toFixed(1)), ratio: r.ratio === null ? null : Number(r.ratio.toFixed(2)) }));
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const rows = await runReplayBenchmark({ sizeMiB: Number(process.argv[2] ?? 512) });
  console.table(rows);
}
