/**
 * `blockmirror demo`: the first thing a newcomer runs. In one process, on
 * loopback, in a temporary directory: a mirror target, a link proxy, a
 * primary with a sync and an async file volume, an NBD export and an admin
 * endpoint; writes through NBD, cuts the link, keeps writing, heals it,
 * waits for in-sync, verifies both images by SHA-256, prints a final status
 * table, cleans up.
 *
 * @module
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes, randomInt } from 'node:crypto';
import { accessSync, constants as fsConstants, createReadStream, statSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import createDebug from 'debug';
import { createAdminServer } from '../admin/server.js';
import { createCycleSource, type CycleResult } from '../cycle/cycle-runner.js';
import { LayeredVolume } from '../cycle/layered-volume.js';
import { FileBlockDevice } from '../device/file-device.js';
import type { AdminStatus } from '../admin/status.js';
import { BlockMirrorError, toBlockMirrorError } from '../errors.js';
import { NbdServer } from '../nbd/server.js';
import { createMirrorTarget } from '../replication/mirror-target.js';
import { createPrimary, type LinkState, type Primary } from '../replication/primary.js';
import { formatHostPort, type HostPort, type PrimaryConfig } from './args.js';
import { LinkProxy } from './demo-proxy.js';
import { primaryOptionsFrom } from './options.js';
import { primaryExports } from './primary.js';
import { latencyRecorder } from './nbd-front.js';
import { closeDevices, openVolumes, packageVersion, Resources, say, type CliIo } from './runtime.js';
import { fetchStatus } from './status.js';
import { formatBytes, renderColumns, renderStatusTable } from './table.js';

const log = createDebug('blockmirror:cli');

const MiB = 1024 * 1024;
/** Size of each demo volume. */
/** Short link-health timers so the demo stays quick (defaults: 1500 / 4000 / 10000 ms). */
const DEMO_LINK_TIMERS = { heartbeatInterval: 200, staleAfter: 1000, probation: 500 } as const;
const VOLUME_SIZE = 64 * MiB;
/** Size of one workload write. */
const WRITE_SIZE = 256 * 1024;
/** Writes per volume in step 1, and per burst in step 4 (two bursts). */
const STEP1_WRITES = 32;
const BURST_WRITES = 12;
/** Bytes written to the cycle volume before its first freeze. */
const CYCLE_FIRST_BYTES = 8 * MiB;
/** Size and number of the writes between the two freezes of the cycle volume. */
const CYCLE_BLOCK = 4096;
const CYCLE_CHANGED_BLOCKS = 64;
/** Longest wait for a link state or for in-sync. */
const WAIT_TIMEOUT = 20_000;
/** Longest run of one NBD client process. */
const TOOL_TIMEOUT = 30_000;

interface DemoVolume {
  name: string;
  mode: 'sync' | 'async';
  primaryPath: string;
  mirrorPath: string;
}

type Writer = { kind: 'qemu-io' | 'nbdcopy'; path: string } | { kind: 'api' };

/** Absolute path of an executable on PATH, or undefined. */
function which(name: string): string | undefined {
  for (const dir of (process.env.PATH ?? '').split(path.delimiter)) {
    if (dir === '') continue;
    const candidate = path.join(dir, name);
    try {
      accessSync(candidate, fsConstants.X_OK);
      if (statSync(candidate).isFile()) return candidate;
    } catch {
      // not here
    }
  }
  return undefined;
}

async function sha256File(file: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(file, { highWaterMark: 4 * MiB })) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

/** Runs the demo; resolves with the exit status (0), rejects with a coded error. */
export async function runDemo(io: CliIo): Promise<number> {
  const t0 = performance.now();
  const elapsed = (): string => `${((performance.now() - t0) / 1000).toFixed(2).padStart(6)}s`;
  const step = (text: string): void => say(io, `[${elapsed()}] ${text}`);
  const detail = (text: string): void => {
    for (const line of text.replace(/\n$/, '').split('\n')) say(io, line === '' ? '' : `           ${line}`);
  };

  const resources = new Resources();
  const children = new Set<ChildProcess>();
  const dir = await mkdtemp(path.join(tmpdir(), 'blockmirror-demo-'));
  resources.add('temporary directory', () => rm(dir, { recursive: true, force: true }));
  resources.add('client processes', async () => {
    for (const c of children) c.kill('SIGKILL');
  });

  let interrupt: (signal: NodeJS.Signals) => void = () => undefined;
  const interrupted = new Promise<never>((_, reject) => {
    interrupt = (signal) => reject(new BlockMirrorError('BM_ERR_CLOSED', `demo interrupted by ${signal}`));
  });
  interrupted.catch(() => undefined);
  const signals = io.signals ?? process;
  signals.on('SIGINT', interrupt);
  signals.on('SIGTERM', interrupt);

  const flow = demoFlow({ io, dir, resources, children, step, detail, elapsed });
  flow.catch(() => undefined);
  try {
    await Promise.race([flow, interrupted]);
  } catch (error) {
    for (const c of children) c.kill('SIGKILL');
    const errors = await resources.closeAll();
    for (const e of errors) log('cleanup: %s: %s', e.name, e.error.message);
    throw error;
  } finally {
    signals.off('SIGINT', interrupt);
    signals.off('SIGTERM', interrupt);
  }
  step('step 10/10: clean up (close the cycle source, NBD, admin, primary, target, proxy, volume files; remove the temporary directory)');
  const errors = await resources.closeAll();
  if (errors.length > 0) {
    const e = errors[0]!;
    throw new BlockMirrorError(e.error.code, `cleanup: ${e.name}: ${e.error.message}`);
  }
  say(io, `demo ok: primary and mirror images identical (3 volumes) in ${((performance.now() - t0) / 1000).toFixed(1)}s`);
  return 0;
}

interface DemoContext {
  io: CliIo;
  dir: string;
  resources: Resources;
  children: Set<ChildProcess>;
  step(text: string): void;
  detail(text: string): void;
  elapsed(): string;
}

/** Waits for `primary` to report link `state` (now or by event), or rejects after `timeout` ms. */
function waitForLink(primary: Primary, state: LinkState, timeout: number): Promise<void> {
  if (primary.link === state) return Promise.resolve();
  return new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => {
      primary.off('link', onLink);
      reject(new BlockMirrorError('BM_ERR_TIMEOUT', `the link did not become ${state} within ${timeout} ms (it is ${primary.link})`));
    }, timeout);
    const onLink = (s: LinkState): void => {
      if (s !== state) return;
      clearTimeout(timer);
      primary.off('link', onLink);
      resolve();
    };
    primary.on('link', onLink);
  });
}

async function demoFlow(ctx: DemoContext): Promise<void> {
  const { io, dir, resources, step, detail } = ctx;
  say(io, `blockmirror ${packageVersion()} demo: mirror two file volumes over loopback, cut the link, heal it, verify; then freeze/copy cycles of a third`);
  say(io, `working directory ${dir}`);
  say(io, '');

  const volumes: DemoVolume[] = [
    { name: 'sync0', mode: 'sync', primaryPath: path.join(dir, 'primary-sync0.img'), mirrorPath: path.join(dir, 'mirror-sync0.img') },
    { name: 'async0', mode: 'async', primaryPath: path.join(dir, 'primary-async0.img'), mirrorPath: path.join(dir, 'mirror-async0.img') },
  ];

  // --- setup -----------------------------------------------------------
  const cycleVolume = { name: 'cycle0', primaryPath: path.join(dir, 'primary-cycle0.img'), mirrorPath: path.join(dir, 'mirror-cycle0.img') };
  const mirrorDevices = await openVolumes(
    [...volumes, cycleVolume].map((v) => ({ name: v.name, path: v.mirrorPath, size: VOLUME_SIZE })),
  );
  resources.add('mirror volume files', () => closeDevices(mirrorDevices.values()));
  const cycleStateDir = path.join(dir, 'mirror-cycle-state');
  await mkdir(cycleStateDir);
  const target = await createMirrorTarget({
    listen: { host: '127.0.0.1', port: 0 },
    volumes: [...volumes, cycleVolume].map((v) => ({ name: v.name, device: mirrorDevices.get(v.name)! })),
    cycle: { dir: cycleStateDir },
    ...DEMO_LINK_TIMERS,
  });
  resources.add('mirror target', () => target.close());
  step(
    `setup: mirror target on ${formatHostPort(target.address)}, volumes sync0, async0 and cycle0 (${formatBytes(VOLUME_SIZE)} files, sparse)`,
  );

  const proxy = await LinkProxy.start({ target: target.address });
  resources.add('link proxy', () => proxy.close());
  step(`setup: link proxy ${formatHostPort(proxy.address)} -> ${formatHostPort(target.address)} (real TCP relay the demo can cut)`);

  const primaryDevices = await openVolumes(volumes.map((v) => ({ name: v.name, path: v.primaryPath, size: VOLUME_SIZE })));
  resources.add('primary volume files', () => closeDevices(primaryDevices.values()));
  const config: PrimaryConfig = {
    peer: proxy.address,
    volumes: volumes.map((v) => ({ name: v.name, path: v.primaryPath, size: VOLUME_SIZE, mode: v.mode })),
    mode: 'sync',
    connections: 4,
    // both volume files were just created blank (identical): no initial sync, as --assume-clean
    initialSync: 'none',
    ...DEMO_LINK_TIMERS,
    drainTimeout: 5000,
  };
  const options = primaryOptionsFrom(config, { devices: primaryDevices, retryDelay: { min: 50, max: 250 } });
  const primary = await createPrimary(options);
  resources.add('primary', () => primary.close({ drain: false }));
  let connectErrors = 0;
  primary.on('connect-error', () => connectErrors++);
  await waitForLink(primary, 'up', WAIT_TIMEOUT);
  step(`setup: primary connected through the proxy: link up, ${options.connections ?? 4} connections`);

  const { histograms, observer } = latencyRecorder(volumes.map((v) => v.name));
  const nbd = new NbdServer({ exports: primaryExports(primary, observer), defaultExport: 'sync0' });
  nbd.on('error', (error) => log('nbd: %s', error.message));
  const nbdAddress = await nbd.listen({ host: '127.0.0.1', port: 0 });
  resources.add('NBD server', () => nbd.close());
  const uri = (name: string): string => `nbd://${formatHostPort(nbdAddress)}/${name}`;
  const admin = await createAdminServer({
    port: 0,
    source: primary,
    metrics: { writeLatency: histograms, nbd: () => nbd.stats() },
    version: packageVersion(),
  });
  resources.add('admin endpoint', () => admin.close());
  const adminAddress: HostPort = admin.address;
  step(`setup: NBD exports ${uri('sync0')} (sync) and ${uri('async0')} (async)`);
  step(`setup: admin endpoint ${admin.url}/status and ${admin.url}/metrics`);
  say(io, '');
  say(io, 'note: the primary sends UDP heartbeats (relayed by the proxy too); after a cut the link comes back');
  say(io, `      once heartbeats have flowed for the probation period without a gap (the demo uses ${config.probation} ms).`);
  say(io, '');

  const qemuIo = which('qemu-io');
  const nbdcopy = which('nbdcopy');
  const writer: Writer =
    qemuIo !== undefined ? { kind: 'qemu-io', path: qemuIo } : nbdcopy !== undefined ? { kind: 'nbdcopy', path: nbdcopy } : { kind: 'api' };
  const how =
    writer.kind === 'api'
      ? 'through the library API (no NBD client found: install qemu-utils or libnbd-bin to write through NBD)'
      : `through NBD with ${writer.kind}`;

  let phase = 0;
  /** Writes `count` blocks of WRITE_SIZE random bytes at random offsets of every volume. */
  const workload = async (count: number): Promise<number> => {
    phase++;
    const data = randomBytes(WRITE_SIZE);
    const patternFile = path.join(dir, `pattern-${phase}.bin`);
    await writeFile(patternFile, data);
    let bytes = 0;
    await Promise.all(
      volumes.map(async (v) => {
        const offsets = Array.from({ length: count }, () => randomInt(VOLUME_SIZE / WRITE_SIZE) * WRITE_SIZE);
        if (writer.kind === 'qemu-io') {
          const args = ['-f', 'raw', uri(v.name)];
          for (const off of offsets) args.push('-c', `write -q -s ${patternFile} ${off} ${WRITE_SIZE}`);
          args.push('-c', 'flush');
          await runClient(ctx, writer.path, args);
        } else if (writer.kind === 'nbdcopy') {
          // nbdcopy copies a whole file from offset 0: write `count` blocks of fresh random data.
          const src = path.join(dir, `copy-${phase}-${v.name}.bin`);
          await writeFile(src, randomBytes(count * WRITE_SIZE));
          await runClient(ctx, writer.path, ['--flush', src, uri(v.name)]);
        } else {
          const volume = primary.volume(v.name);
          for (const off of offsets) await volume.write(off, data);
          await volume.flush();
        }
        bytes += count * WRITE_SIZE;
      }),
    );
    return bytes;
  };

  const adminStatus = (): Promise<AdminStatus> => fetchStatus(adminAddress);
  const pendingLine = (s: AdminStatus): string =>
    volumes.map((v) => `${v.name}: ${s.volumes[v.name]!.state}, ${formatBytes(s.volumes[v.name]!.pendingBytes)} pending`).join('; ');

  // --- 1 ---------------------------------------------------------------
  step(`step 1/10: write a workload ${how}: ${STEP1_WRITES} x ${formatBytes(WRITE_SIZE)} at random offsets per volume`);
  let t = performance.now();
  const wrote = await workload(STEP1_WRITES);
  detail(`wrote ${formatBytes(wrote)} in ${((performance.now() - t) / 1000).toFixed(2)}s`);
  const lat = volumes.map((v) => {
    const h = histograms.get(v.name)!;
    if (h.count === 0) return `${v.name}: no NBD writes`;
    return `${v.name} p50 <= ${(h.quantile(0.5) * 1000).toFixed(2)} ms, p99 <= ${(h.quantile(0.99) * 1000).toFixed(2)} ms`;
  });
  detail(`NBD write latency (histogram buckets): ${lat.join('; ')}`);

  // --- 2 ---------------------------------------------------------------
  await primary.drain(WAIT_TIMEOUT); // the async volume may still be catching up
  step('step 2/10: status from the admin endpoint (both volumes in sync)');
  const s2 = await adminStatus();
  detail(renderStatusTable(s2));
  for (const v of volumes) {
    if (!s2.volumes[v.name]!.inSync) throw new BlockMirrorError('BM_ERR_TIMEOUT', `volume ${v.name} is not in sync after step 1`);
  }

  // --- 3 ---------------------------------------------------------------
  step('step 3/10: cut the link (the proxy destroys every connection and refuses new ones)');
  t = performance.now();
  proxy.cut();
  await waitForLink(primary, 'down', WAIT_TIMEOUT);
  detail(`the primary saw the link go down after ${(performance.now() - t).toFixed(0)} ms`);

  // --- 4 ---------------------------------------------------------------
  step(`step 4/10: keep writing while the link is down (${how}; the NBD clients still get success)`);
  let last = 0;
  for (let burst = 1; burst <= 2; burst++) {
    await workload(BURST_WRITES);
    const s = await adminStatus();
    detail(`after burst ${burst}: ${pendingLine(s)}`);
    const pending = volumes.reduce((sum, v) => sum + s.volumes[v.name]!.pendingBytes, 0);
    if (pending <= last) throw new BlockMirrorError('BM_ERR_PROTOCOL', 'pending bytes did not grow while the link was down');
    last = pending;
    for (const v of volumes) {
      if (s.volumes[v.name]!.state !== 'lagging') {
        throw new BlockMirrorError('BM_ERR_PROTOCOL', `volume ${v.name} is ${s.volumes[v.name]!.state}, expected lagging while the link is down`);
      }
    }
  }
  detail(renderStatusTable(await adminStatus()));

  // --- 5 ---------------------------------------------------------------
  step('step 5/10: heal the link');
  const healed = performance.now();
  proxy.heal();

  // --- 6 ---------------------------------------------------------------
  step('step 6/10: wait for in-sync (link events, then every volume idle)');
  await waitForLink(primary, 'up', WAIT_TIMEOUT);
  detail(
    `link up ${(performance.now() - healed).toFixed(0)} ms after the heal ` +
      `(${connectErrors} reconnect attempts failed while cut, ${proxy.stats.refused} refused by the proxy)`,
  );
  await primary.drain(WAIT_TIMEOUT);
  detail(`in sync ${(performance.now() - healed).toFixed(0)} ms after the heal`);

  // --- 7 ---------------------------------------------------------------
  step('step 7/10: verify both images by SHA-256 (primary file vs mirror file)');
  await Promise.all([...primaryDevices.values(), ...mirrorDevices.values()].map((d) => d.flush()));
  const rows: string[][] = [['VOLUME', 'IMAGE', 'SHA-256', 'RESULT']];
  let mismatch: string | undefined;
  for (const v of volumes) {
    const [a, b] = await Promise.all([sha256File(v.primaryPath), sha256File(v.mirrorPath)]);
    const result = a === b ? 'identical' : 'DIFFERENT';
    rows.push([`${v.name} (${v.mode})`, 'primary', a, ''], ['', 'mirror', b, result]);
    if (a !== b) mismatch ??= v.name;
  }
  detail(renderColumns(rows));
  if (mismatch !== undefined) throw new BlockMirrorError('BM_ERR_IO', `volume ${mismatch}: the mirror image differs from the primary image`);

  // --- 8 ---------------------------------------------------------------
  step('step 8/10: freeze/copy cycles: volume cycle0 in cycle mode (cycle 1 copies it whole, cycle 2 only what changed)');
  const cycleBase = await FileBlockDevice.open(cycleVolume.primaryPath, { size: VOLUME_SIZE });
  resources.add('cycle volume file', () => cycleBase.close());
  const layered = await LayeredVolume.open(cycleBase);
  resources.add('layered volume', () => layered.close());
  const source = await createCycleSource({ volumes: [{ name: cycleVolume.name, volume: layered }], targets: [target.address], interval: 0 });
  resources.add('cycle source', () => source.close());
  const cycleLine = (r: CycleResult): string => {
    const failed = r.targets.find((x) => !x.ok);
    if (failed !== undefined) throw new BlockMirrorError(failed.error?.code ?? 'BM_ERR_IO', `cycle ${r.cycle} failed: ${failed.error?.message ?? 'unknown'}`);
    return `cycle ${r.cycle}: ${formatBytes(r.bytesSent)} on the wire in ${r.durationMs.toFixed(0)} ms`;
  };
  await layered.write(0, randomBytes(CYCLE_FIRST_BYTES));
  detail(`${cycleLine(await source.freezeNow())} (first freeze: the whole ${formatBytes(VOLUME_SIZE)} volume, ${formatBytes(CYCLE_FIRST_BYTES)} of data; its zero runs go as range records)`);
  const changed = new Set<number>();
  while (changed.size < CYCLE_CHANGED_BLOCKS) changed.add(randomInt(VOLUME_SIZE / CYCLE_BLOCK));
  for (const block of changed) await layered.write(block * CYCLE_BLOCK, randomBytes(CYCLE_BLOCK));
  detail(`${cycleLine(await source.freezeNow())} after ${changed.size} writes of ${formatBytes(CYCLE_BLOCK)} (${formatBytes(changed.size * CYCLE_BLOCK)} changed)`);
  await mirrorDevices.get(cycleVolume.name)!.flush();
  const cycleImage = createHash('sha256').update(await layered.read(0, VOLUME_SIZE)).digest('hex');
  const cycleMirror = await sha256File(cycleVolume.mirrorPath);
  detail(
    renderColumns([
      ['VOLUME', 'IMAGE', 'SHA-256', 'RESULT'],
      ['cycle0 (cycle)', 'primary', cycleImage, ''],
      ['', 'mirror', cycleMirror, cycleImage === cycleMirror ? 'identical' : 'DIFFERENT'],
    ]),
  );
  if (cycleImage !== cycleMirror) throw new BlockMirrorError('BM_ERR_IO', 'volume cycle0: the mirror image differs from the frozen image');

  // --- 9 ---------------------------------------------------------------
  step('step 9/10: final status');
  const s8 = await adminStatus();
  detail(renderStatusTable(s8));
}

/** Runs an NBD client; rejects with its stderr when it fails. */
function runClient(ctx: DemoContext, cmd: string, args: string[]): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    ctx.children.add(child);
    let output = '';
    child.stdout?.setEncoding('utf8').on('data', (s: string) => (output += s));
    child.stderr?.setEncoding('utf8').on('data', (s: string) => (output += s));
    const timer = setTimeout(() => child.kill('SIGKILL'), TOOL_TIMEOUT);
    child.on('error', (err) => {
      clearTimeout(timer);
      ctx.children.delete(child);
      reject(toBlockMirrorError(err, 'BM_ERR_IO'));
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      ctx.children.delete(child);
      if (code === 0) resolve();
      else {
        const tail = output.trim().split('\n').slice(-3).join(' | ');
        reject(new BlockMirrorError('BM_ERR_IO', `${path.basename(cmd)} exited with ${code ?? signal}: ${tail}`));
      }
    });
  });
}
