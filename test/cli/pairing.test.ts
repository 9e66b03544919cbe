/**
 * Issue 12, with real processes: first pairing, persisted lineage and disk
 * states, as a new user meets them with the CLI. Every wait is on a line the
 * processes print (or on their exit), never on a sleep.
 *
 * (a) a primary with data and a blank mirror, no --initial-sync: not in sync
 *     until the data is there; identical images afterwards;
 * (b) a mirror that served primary A, restarted: an unrelated primary B is
 *     refused, the mirror's data untouched;
 * (c) a primary without --journal stopped with SIGINT (and later killed) and
 *     restarted: accepted, no split brain, in sync;
 * (d) status during the initial sync (inconsistent, progress) on both sides;
 *     an interrupted sync is inconsistent after a restart and resumes.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { describe, test } from 'node:test';
import type { TestContext } from 'node:test';
import { fetchStatus } from '../../src/cli/status.js';
import type { AdminStatus, AdminVolumeStatus } from '../../src/admin/status.js';
import { RawClient } from '../nbd/raw-client.js';
import { CliProcess, listeningAddresses, runCli, tmpDir } from './cli-helpers.js';

const MiB = 1024 * 1024;
/**
 * Short link timers: a restarted peer is back within a second (a restart
 * closes the connections; heartbeats only have to come back for the
 * probation). The stale time tolerates event-loop stalls of a loaded machine.
 */
const FAST = ['--heartbeat-interval', '100', '--stale-after', '3000', '--probation', '100'];

type HostPort = { host: string; port: number };

interface Node {
  proc: CliProcess;
  admin: HostPort;
}

/** A mirror on `port` (0: any), with an admin endpoint. */
async function startMirror(t: TestContext, volume: string, port = 0): Promise<Node & { port: number }> {
  const proc = new CliProcess(t, ['mirror', '--listen', `127.0.0.1:${port}`, '--volume', volume, '--admin', '127.0.0.1:0', ...FAST]);
  const addrs = listeningAddresses(await proc.waitForLine(/^listening mirror=/));
  return { proc, admin: addrs.admin!, port: addrs.mirror!.port };
}

/** A sync-mode primary of one volume, with NBD and admin endpoints. */
async function startPrimary(t: TestContext, port: number, volume: string, extra: string[] = []): Promise<Node & { nbd: HostPort }> {
  const proc = new CliProcess(t, ['primary', '--peer', `127.0.0.1:${port}`, '--volume', volume, '--mode', 'sync', '--nbd', '127.0.0.1:0', '--admin', '127.0.0.1:0', ...FAST, ...extra]);
  const addrs = listeningAddresses(await proc.waitForLine(/^listening /));
  return { proc, admin: addrs.admin!, nbd: addrs.nbd! };
}

async function volumeStatus(admin: HostPort, name = 'v'): Promise<AdminVolumeStatus & Record<string, unknown>> {
  const s: AdminStatus = await fetchStatus(admin);
  return s.volumes[name]! as AdminVolumeStatus & Record<string, unknown>;
}

function sha(b: Buffer): string {
  return createHash('sha256').update(b).digest('hex');
}

/** Lines of a process matching `re` (to count them). */
function count(proc: CliProcess, re: RegExp): number {
  return proc.lines.filter((l) => re.test(l)).length;
}

describe('issue 12: pairing, disk states and lineage with real processes', () => {
  test('issue 12 (a): first pairing is safe by default: a primary with data and a blank mirror (no --initial-sync) is not in sync until the data is there; then the images are identical', async (t) => {
    const dir = await tmpDir(t);
    const image = randomBytes(4 * MiB);
    const pPath = path.join(dir, 'primary.img');
    const mPath = path.join(dir, 'mirror.img');
    await fs.writeFile(pPath, image);
    const mirror = await startMirror(t, `v=${mPath}:4M`);
    // a resync rate so that the copy takes a few seconds: long enough to look at it
    const primary = await startPrimary(t, mirror.port, `v=${pPath}`, ['--resync-rate', '1M']);

    // the mirror adopts the primary's lineage as an inconsistent image: a sync is owed
    await mirror.proc.waitForLine(/^volume v disk inconsistent \(was unknown\)$/);
    // and the primary has heard so (the mirror prints its line before the primary reads the answer)
    await primary.proc.waitForLine(/^volume v peer disk inconsistent /);
    const during = await volumeStatus(primary.admin);
    assert.equal(during.inSync, false, 'the primary does not claim in-sync while the mirror lacks its data');
    assert.notEqual(during.state, 'in-sync');
    assert.equal(during.peerDisk, 'inconsistent');
    const mDuring = await volumeStatus(mirror.admin);
    assert.deepEqual([mDuring.disk, mDuring.inSync], ['inconsistent', false], 'nor does the mirror');

    // the copy ends; the mirror says up-to-date only with the data on it
    await primary.proc.waitForLine(/^resync done volume=v /);
    await mirror.proc.waitForLine(/^volume v disk up-to-date \(was inconsistent\)$/);
    assert.equal(sha(await fs.readFile(mPath)), sha(image), 'when the mirror says up-to-date, its file holds the primary image');
    await primary.proc.waitForLine(/^volume v peer disk up-to-date \(was inconsistent\)$/);
    const after = await volumeStatus(primary.admin);
    assert.deepEqual([after.state, after.inSync, after.disk, after.peerDisk], ['in-sync', true, 'up-to-date', 'up-to-date']);
    assert.equal(typeof after.lastInSyncAt, 'string');
    const mAfter = await volumeStatus(mirror.admin);
    assert.deepEqual([mAfter.disk, mAfter.peerDisk, mAfter.inSync], ['up-to-date', 'up-to-date', true]);

    assert.equal((await primary.proc.stop('SIGTERM')).code, 0, primary.proc.stderr);
    assert.equal((await mirror.proc.stop('SIGTERM')).code, 0, mirror.proc.stderr);
    assert.ok((await fs.readFile(mPath)).equals(image), 'the mirror file equals the primary image');
  });

  test('issue 12 (b): a mirror that served primary A, restarted, refuses an unrelated primary B (split brain / unrelated lineage); its data stays untouched', async (t) => {
    const dir = await tmpDir(t);
    const imageA = randomBytes(2 * MiB);
    const imageB = randomBytes(2 * MiB);
    const aPath = path.join(dir, 'a.img');
    const bPath = path.join(dir, 'b.img');
    const mPath = path.join(dir, 'mirror.img');
    await fs.writeFile(aPath, imageA);
    await fs.writeFile(bPath, imageB);

    let mirror = await startMirror(t, `v=${mPath}:2M`);
    const a = await startPrimary(t, mirror.port, `v=${aPath}`);
    await mirror.proc.waitForLine(/^volume v disk up-to-date \(was inconsistent\)$/);
    const generation = (await volumeStatus(mirror.admin)).generation;
    assert.equal(typeof generation, 'string');
    assert.equal((await a.proc.stop('SIGTERM')).code, 0, a.proc.stderr);
    assert.equal((await mirror.proc.stop('SIGTERM')).code, 0, mirror.proc.stderr);
    const served = await fs.readFile(mPath);
    assert.ok(served.equals(imageA), 'the mirror holds A');

    // the mirror restarts on the same port (its state directory beside the volume)
    const port = mirror.port;
    mirror = await startMirror(t, `v=${mPath}`, port);
    const before = await volumeStatus(mirror.admin);
    assert.deepEqual([before.disk, before.generation, before.inSync], ['up-to-date', generation, false], 'after the restart: still A\'s up-to-date copy, nobody connected');

    // B: another primary, its own data and state directory, even declaring the images identical
    const b = await startPrimary(t, port, `v=${bPath}`, ['--assume-clean']);
    const warning = await b.proc.waitForStderrLine(/BM_ERR_SPLIT_BRAIN/);
    assert.match(warning, /another lineage/);
    assert.match(warning, /nothing was overwritten/);
    await b.proc.waitForLine(/^volume v peer disk diverged \(was unknown\)$/);
    const bStatus = await volumeStatus(b.admin);
    assert.deepEqual([bStatus.state, bStatus.inSync, bStatus.peerDisk], ['split-brain', false, 'diverged']);
    const mStatus = await volumeStatus(mirror.admin);
    assert.deepEqual([mStatus.disk, mStatus.peerDisk, mStatus.generation, mStatus.inSync, mStatus.bytesWritten], ['up-to-date', 'diverged', generation, false, 0]);

    // the table says the same on the mirror
    const table = await runCli(t, ['status', '--admin', `${mirror.admin.host}:${mirror.admin.port}`]);
    assert.equal(table.code, 0, table.stderr);
    assert.match(table.stdout, /^v +target +disconnected +no +up-to-date +diverged +- +\S+ ago /m);

    assert.equal((await b.proc.stop('SIGTERM')).code, 0, b.proc.stderr);
    assert.equal((await mirror.proc.stop('SIGTERM')).code, 0, mirror.proc.stderr);
    assert.ok((await fs.readFile(mPath)).equals(imageA), 'the mirror still holds A, byte for byte');
    assert.ok((await fs.readFile(bPath)).equals(imageB), 'B kept its own data');
  });

  test('issue 12 (c): a primary without --journal stopped with SIGINT and restarted is accepted (no split brain) and in sync; so is one restarted after SIGKILL', async (t) => {
    const dir = await tmpDir(t);
    const pPath = path.join(dir, 'primary.img');
    const mPath = path.join(dir, 'mirror.img');
    await fs.writeFile(pPath, randomBytes(2 * MiB));
    const mirror = await startMirror(t, `v=${mPath}:2M`);
    let primary = await startPrimary(t, mirror.port, `v=${pPath}`);
    await primary.proc.waitForLine(/^volume v peer disk up-to-date \(was inconsistent\)$/);

    /** Writes one block through NBD (sync mode: answered once the mirror has it). */
    const write = async (nbd: HostPort, offset: number, fill: number): Promise<void> => {
      const client = await RawClient.connect(nbd.port);
      t.after(() => client.destroy());
      await client.go('v');
      assert.equal(await client.writeAt(1, offset, Buffer.alloc(64 * 1024, fill)), 0);
      await client.disconnect();
    };
    /** After `link up`: in sync at once, or after the resync of what a crash left dirty. */
    const inSyncAfterStart = async (p: typeof primary): Promise<void> => {
      await p.proc.waitForLine(/^link up /);
      let s = await volumeStatus(p.admin);
      if (!s.inSync) {
        await p.proc.waitForLine(/^volume v peer disk up-to-date /);
        s = await volumeStatus(p.admin);
      }
      assert.deepEqual([s.state, s.inSync, s.peerDisk], ['in-sync', true, 'up-to-date'], JSON.stringify(s));
    };

    await write(primary.nbd, 0, 0x11);
    assert.equal((await primary.proc.stop('SIGINT')).code, 0, primary.proc.stderr);

    // SIGINT, restart: the same lineage (kept in the state directory), no split brain
    primary = await startPrimary(t, mirror.port, `v=${pPath}`);
    await inSyncAfterStart(primary);
    await write(primary.nbd, MiB, 0x22);
    assert.doesNotMatch(primary.proc.stderr, /SPLIT_BRAIN|split brain/);

    // SIGKILL (a crash) right after a write, restart: accepted too
    await write(primary.nbd, 64 * 1024, 0x33);
    assert.equal((await primary.proc.stop('SIGKILL')).signal, 'SIGKILL');
    primary = await startPrimary(t, mirror.port, `v=${pPath}`);
    await inSyncAfterStart(primary);
    assert.doesNotMatch(primary.proc.stderr, /SPLIT_BRAIN|split brain/);
    assert.equal(count(mirror.proc, /disk diverged/), 0);

    assert.equal((await primary.proc.stop('SIGINT')).code, 0, primary.proc.stderr);
    assert.equal((await mirror.proc.stop('SIGINT')).code, 0, mirror.proc.stderr);
    assert.equal(sha(await fs.readFile(mPath)), sha(await fs.readFile(pPath)), 'identical images');
  });

  test('issue 12 (d): during the initial sync both sides say inconsistent / not in sync, with progress; a sync interrupted by a stop is still inconsistent after a restart of the mirror and resumes with only what is left', async (t) => {
    const dir = await tmpDir(t);
    const image = randomBytes(8 * MiB);
    const pPath = path.join(dir, 'primary.img');
    const mPath = path.join(dir, 'mirror.img');
    await fs.writeFile(pPath, image);
    let mirror = await startMirror(t, `v=${mPath}:8M`);
    let primary = await startPrimary(t, mirror.port, `v=${pPath}`, ['--resync-rate', '2M']);

    // the primary's progress display (JSON lines on stderr when not a terminal): some copied, not all
    await primary.proc.waitForStderrLine(/^\{.*"label":"resync v".*"done":[1-9]/);
    const p = await volumeStatus(primary.admin);
    assert.deepEqual([p.inSync, p.peerDisk], [false, 'inconsistent']);
    // copying (inconsistent), or between two runs of the copy after a hiccup of the link (needs-resync)
    assert.ok(p.state === 'inconsistent' || p.state === 'needs-resync', String(p.state));
    if (p.state === 'inconsistent') {
      const progress = p.progress as { operation: string; done: number; total: number; percent: number };
      assert.equal(progress.operation, 'resync');
      assert.ok(progress.total > 0 && progress.total <= 8 * MiB && progress.done < progress.total, JSON.stringify(progress));
    }
    const m = await volumeStatus(mirror.admin);
    assert.deepEqual([m.state, m.disk, m.inSync], ['mirroring', 'inconsistent', false], 'the mirror, connected and written, is not in sync');
    const sync = m.sync as { done: number; total: number; percent: number };
    assert.ok(sync.total > 0 && sync.total <= 8 * MiB && sync.done < sync.total, `the mirror shows the sync progress the primary sent: ${JSON.stringify(sync)}`);
    const table = await runCli(t, ['status', '--admin', `${mirror.admin.host}:${mirror.admin.port}`]);
    assert.match(table.stdout, /^v +target +mirroring +no +inconsistent +up-to-date +\d+\.\d% +never /m, table.stdout);

    // interrupted: the primary stops mid-sync, then the mirror restarts
    assert.equal((await primary.proc.stop('SIGTERM')).code, 0, primary.proc.stderr);
    assert.equal((await mirror.proc.stop('SIGTERM')).code, 0, mirror.proc.stderr);
    const port = mirror.port;
    mirror = await startMirror(t, `v=${mPath}`, port);
    const restarted = await volumeStatus(mirror.admin);
    assert.deepEqual([restarted.disk, restarted.inSync], ['inconsistent', false], 'still inconsistent after the restart');

    // the primary comes back: the sync resumes where it stopped, and says so
    primary = await startPrimary(t, port, `v=${pPath}`);
    const resumed = await primary.proc.waitForLine(/^resync resumed volume=v bytes=\d+ /);
    const left = Number(/bytes=(\d+)/.exec(resumed)![1]);
    assert.ok(left > 0 && left < 8 * MiB, `only what was left is sent: ${left} of ${8 * MiB} bytes`);
    await primary.proc.waitForLine(/^resync done volume=v /);
    await mirror.proc.waitForLine(/^volume v disk up-to-date \(was inconsistent\)$/);
    await primary.proc.waitForLine(/^volume v peer disk up-to-date \(was inconsistent\)$/);
    const done = await volumeStatus(primary.admin);
    assert.deepEqual([done.state, done.inSync], ['in-sync', true]);
    assert.equal(done.progress, undefined, 'no stale progress once done');

    assert.equal((await primary.proc.stop('SIGTERM')).code, 0, primary.proc.stderr);
    assert.equal((await mirror.proc.stop('SIGTERM')).code, 0, mirror.proc.stderr);
    assert.ok((await fs.readFile(mPath)).equals(image), 'the mirror file equals the primary image');
  });
});
