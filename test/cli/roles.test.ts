/**
 * Issue 12 items 4 and 5 with real `blockmirror` processes and real NBD
 * clients (qemu-io, qemu-img): resolving a split brain on either side,
 * failover (demote + promote; promote --force with the primary killed) and
 * failback (the old primary restarted as the mirror of the new one). Every
 * wait is on a line a process prints, its exit, or its status endpoint.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import path from 'node:path';
import { describe, test } from 'node:test';
import type { TestContext } from 'node:test';
import { fetchStatus } from '../../src/cli/status.js';
import type { AdminVolumeStatus } from '../../src/admin/status.js';
import { requireTool, runTool, type ToolResult } from '../helpers/tools.js';
import { CliProcess, listeningAddresses, oneErrorLine, runCli, tmpDir } from './cli-helpers.js';

/** Short link timers (see pairing.test.ts): a restarted peer is back within a second. */
const FAST = ['--heartbeat-interval', '100', '--stale-after', '3000', '--probation', '100'];
type HostPort = { host: string; port: number };

interface Node {
  proc: CliProcess;
  admin: HostPort;
  port?: number;
  nbd?: HostPort;
}

async function startMirror(t: TestContext, volume: string, extra: string[] = []): Promise<Node & { port: number }> {
  const proc = new CliProcess(t, ['mirror', '--listen', '127.0.0.1:0', '--volume', volume, '--admin', '127.0.0.1:0', ...FAST, ...extra]);
  const addrs = listeningAddresses(await proc.waitForLine(/^listening mirror=/));
  return { proc, admin: addrs.admin!, port: addrs.mirror!.port };
}

async function startPrimary(t: TestContext, port: number, volume: string, extra: string[] = []): Promise<Node & { nbd: HostPort }> {
  const proc = new CliProcess(t, ['primary', '--peer', `127.0.0.1:${port}`, '--volume', volume, '--mode', 'sync', '--nbd', '127.0.0.1:0', '--admin', '127.0.0.1:0', ...FAST, ...extra]);
  const addrs = listeningAddresses(await proc.waitForLine(/^listening /));
  return { proc, admin: addrs.admin!, nbd: addrs.nbd! };
}

async function volumeStatus(admin: HostPort): Promise<AdminVolumeStatus & Record<string, unknown>> {
  return (await fetchStatus(admin)).volumes.v! as AdminVolumeStatus & Record<string, unknown>;
}

/** Polls the node's status until `done` holds (the processes print no line for every state). */
async function statusUntil(node: Node, done: (s: AdminVolumeStatus & Record<string, unknown>) => boolean, timeout = 60_000): Promise<AdminVolumeStatus & Record<string, unknown>> {
  const deadline = Date.now() + timeout;
  for (;;) {
    const s = await volumeStatus(node.admin);
    if (done(s)) return s;
    if (Date.now() > deadline) throw new Error(`status never matched: ${JSON.stringify(s)}\nstdout: ${node.proc.stdout}\nstderr: ${node.proc.stderr}`);
    await new Promise<void>((resolve) => setTimeout(resolve, 50));
  }
}

const hp = (a: HostPort): string => `${a.host}:${a.port}`;
const uri = (nbd: HostPort): string => `nbd://${hp(nbd)}/v`;

function ok(r: ToolResult, what: string): void {
  assert.equal(r.code, 0, `${what} failed: ${r.stdout}${r.stderr}`);
}

async function qemuWrite(t: TestContext, nbd: HostPort, pattern: number, offset: string, length: string): Promise<void> {
  ok(await runTool(t, 'qemu-io', ['-f', 'raw', '-c', `write -P ${pattern} ${offset} ${length}`, uri(nbd)]), `qemu-io write -P ${pattern} ${offset} ${length}`);
}

async function qemuRead(t: TestContext, file: string, pattern: number, offset: string, length: string): Promise<void> {
  ok(await runTool(t, 'qemu-io', ['-f', 'raw', '-r', '-c', `read -P ${pattern} ${offset} ${length}`, file]), `${path.basename(file)} holds ${pattern} at ${offset}+${length}`);
}

async function sameImages(t: TestContext, a: string, b: string): Promise<void> {
  ok(await runTool(t, 'qemu-img', ['compare', '-f', 'raw', '-F', 'raw', a, b]), `qemu-img compare ${path.basename(a)} ${path.basename(b)}`);
}

/** Runs `blockmirror ARGS` to its exit. */
async function cli(t: TestContext, args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return runCli(t, args);
}

describe('issue 12 items 4-5: resolve, promote, demote, failback with real processes', () => {
  test('SPEC 22: planned failover (demote + promote) and failback: the old primary rejoins as the mirror of the new one, only what changed is resent, images identical', async (t) => {
    if (!requireTool(['qemu-io', 'qemu-img'], t)) return;
    const dir = await tmpDir(t);
    const pPath = path.join(dir, 'p.img');
    const mPath = path.join(dir, 'm.img');
    const pState = `${pPath}.primary-state`;
    const mState = `${mPath}.mirror-state`;
    let mirror = await startMirror(t, `v=${mPath}:4M`);
    let primary = await startPrimary(t, mirror.port, `v=${pPath}:4M`, ['--assume-clean']);
    await qemuWrite(t, primary.nbd, 0x11, '0', '1M');
    await statusUntil(primary, (s) => s.inSync);

    // promote without a hand-over: refused, nothing changes
    const early = await cli(t, ['promote', '--admin', hp(mirror.admin), '--volume', 'v']);
    assert.equal(early.code, 1);
    assert.equal(oneErrorLine(early.stderr).code, 'BM_ERR_PROMOTE_REFUSED');

    // demote: drained, handed over, read-only
    const demoted = await cli(t, ['demote', '--admin', hp(primary.admin), '--volume', 'v']);
    assert.equal(demoted.code, 0, demoted.stderr);
    await primary.proc.waitForLine(/^volume v demoted generation=/);
    assert.equal((await volumeStatus(primary.admin)).state, 'demoted');
    const refused = await runTool(t, 'qemu-io', ['-f', 'raw', '-c', 'write -P 0x99 0 4k', uri(primary.nbd)]);
    assert.match(refused.stdout + refused.stderr, /Operation not permitted|EPERM|failed/i, 'the demoted export refuses writes');
    await qemuRead(t, pPath, 0x11, '0', '4k');
    assert.equal((await volumeStatus(mirror.admin)).handedOver, true);

    // promote (no force needed now); the mirror says what it did
    const promoted = await cli(t, ['promote', '--admin', hp(mirror.admin), '--volume', 'v']);
    assert.equal(promoted.code, 0, promoted.stderr);
    const result = JSON.parse(promoted.stdout) as { generation: string; history: string[] };
    await mirror.proc.waitForLine(/^volume v promoted generation=/);
    assert.equal((await volumeStatus(mirror.admin)).role, 'promoted');
    assert.equal((await primary.proc.stop('SIGTERM')).code, 0, primary.proc.stderr);
    assert.equal((await mirror.proc.stop('SIGTERM')).code, 0, mirror.proc.stderr);

    // the demoted node cannot come back as a primary by mistake
    const back = await cli(t, ['primary', '--peer', '127.0.0.1:9', '--volume', `v=${pPath}`, '--state-dir', pState]);
    assert.equal(back.code, 1);
    assert.equal(oneErrorLine(back.stderr).code, 'BM_ERR_DEMOTED');

    // failback: the old primary is the mirror of the promoted node (same files and state directories)
    if (process.env.ROLES_DEBUG === '1') console.log(await fs.readFile(path.join(pState, 'v.state'), 'utf8'), await fs.readFile(path.join(mState, 'v.state'), 'utf8'), result);
    mirror = await startMirror(t, `v=${pPath}`, ['--state-dir', pState]);
    primary = await startPrimary(t, mirror.port, `v=${mPath}`, ['--state-dir', mState]);
    const now = await statusUntil(primary, (s) => s.inSync);
    assert.notEqual(now.generation, undefined);
    assert.ok(result.history.length >= 1);
    // the new primary writes; the old one (now its mirror) receives it
    await qemuWrite(t, primary.nbd, 0x22, '2M', '64k');
    await statusUntil(primary, (s) => s.inSync);
    assert.doesNotMatch(primary.proc.stdout, /^resync done/m, 'no resync: the old primary only lacked what was written since the promotion');
    assert.equal((await primary.proc.stop('SIGTERM')).code, 0, primary.proc.stderr);
    assert.equal((await mirror.proc.stop('SIGTERM')).code, 0, mirror.proc.stderr);
    await qemuRead(t, pPath, 0x22, '2M', '64k');
    await qemuRead(t, pPath, 0x11, '0', '1M');
    await sameImages(t, pPath, mPath);
  });

  test('SPEC 22: promote --force with the old primary killed fences it by lineage; the old primary wrote after the split, rejoins as a mirror, is refused as diverged, and resolve --discard-local on it resyncs it by checksum', async (t) => {
    if (!requireTool(['qemu-io', 'qemu-img'], t)) return;
    const dir = await tmpDir(t);
    const pPath = path.join(dir, 'p.img');
    const mPath = path.join(dir, 'm.img');
    const pState = `${pPath}.primary-state`;
    const mState = `${mPath}.mirror-state`;
    let mirror = await startMirror(t, `v=${mPath}:4M`);
    let primary = await startPrimary(t, mirror.port, `v=${pPath}:4M`, ['--assume-clean']);
    await qemuWrite(t, primary.nbd, 0x11, '0', '1M');
    await statusUntil(primary, (s) => s.inSync);
    primary.proc.child.kill('SIGKILL');
    await primary.proc.exited;

    // the primary is lost: promote needs --force
    const refused = await cli(t, ['promote', '--admin', hp(mirror.admin), '--volume', 'v']);
    assert.equal(oneErrorLine(refused.stderr).code, 'BM_ERR_PROMOTE_REFUSED');
    const forced = await cli(t, ['promote', '--admin', hp(mirror.admin), '--volume', 'v', '--force']);
    assert.equal(forced.code, 0, forced.stderr);
    await mirror.proc.waitForLine(/^volume v promoted generation=\S+ \(forced\)/);

    // the old primary comes back as a primary while the promoted node still runs: fenced
    primary = await startPrimary(t, mirror.port, `v=${pPath}`);
    await primary.proc.waitForStderrLine(/BM_ERR_SPLIT_BRAIN.*was promoted/);
    await statusUntil(primary, (s) => s.state === 'split-brain' && s.peerDisk === 'diverged');
    // it writes anyway (its clients do not know): its lineage moves on, apart from the promoted one
    await qemuWrite(t, primary.nbd, 0x33, '3M', '64k');
    assert.equal((await primary.proc.stop('SIGTERM')).code, 0, primary.proc.stderr);
    assert.equal((await mirror.proc.stop('SIGTERM')).code, 0, mirror.proc.stderr);

    // failover done: the promoted node serves as the primary, the old primary rejoins as its mirror
    mirror = await startMirror(t, `v=${pPath}`, ['--state-dir', pState]);
    primary = await startPrimary(t, mirror.port, `v=${mPath}`, ['--state-dir', mState]);
    await qemuWrite(t, primary.nbd, 0x44, '1M', '64k');
    // the old primary's writes after the split are not silently overwritten: refused as a split brain
    await mirror.proc.waitForStderrLine(/BM_ERR_SPLIT_BRAIN/);
    await statusUntil(primary, (s) => s.state === 'split-brain' && s.peerDisk === 'diverged');
    await qemuRead(t, pPath, 0x33, '3M', '64k');

    // the operator gives the old primary's data up, on the old primary (now the mirror)
    const resolved = await cli(t, ['resolve', '--admin', hp(mirror.admin), '--volume', 'v', '--discard-local']);
    assert.equal(resolved.code, 0, resolved.stderr);
    await mirror.proc.waitForLine(/^volume v resolve discard-local/);
    await mirror.proc.waitForLine(/^volume v disk up-to-date \(was inconsistent\)$/);
    const done = await primary.proc.waitForLine(/^resync done volume=v /);
    const sent = Number(/bytes=(\d+)/.exec(done)![1]);
    assert.ok(sent < 4 * 1024 * 1024, `a checksum resync sends only the regions that differ (${sent} bytes), not the volume`);
    await statusUntil(primary, (s) => s.inSync);
    assert.equal((await primary.proc.stop('SIGTERM')).code, 0, primary.proc.stderr);
    assert.equal((await mirror.proc.stop('SIGTERM')).code, 0, mirror.proc.stderr);
    await qemuRead(t, pPath, 0x44, '1M', '64k');
    await qemuRead(t, pPath, 0x00, '3M', '64k');
    await sameImages(t, pPath, mPath);
  });

  test('SPEC 22: resolve on the primary after a real split brain: --discard-local is refused with a coded error, --discard-remote makes the mirror drop its data and resync from the primary', async (t) => {
    if (!requireTool(['qemu-io', 'qemu-img'], t)) return;
    const dir = await tmpDir(t);
    const pPath = path.join(dir, 'p.img');
    const mPath = path.join(dir, 'm.img');
    const mState = `${mPath}.mirror-state`;
    let mirror = await startMirror(t, `v=${mPath}:4M`);
    let primary = await startPrimary(t, mirror.port, `v=${pPath}:4M`, ['--assume-clean']);
    await qemuWrite(t, primary.nbd, 0x11, '0', '1M');
    await statusUntil(primary, (s) => s.inSync);
    const port = mirror.port;
    // split: the primary is stopped and the mirror promoted and written as a primary
    assert.equal((await primary.proc.stop('SIGTERM')).code, 0, primary.proc.stderr);
    assert.equal((await cli(t, ['promote', '--admin', hp(mirror.admin), '--volume', 'v', '--force'])).code, 0);
    assert.equal((await mirror.proc.stop('SIGTERM')).code, 0, mirror.proc.stderr);
    const promoted = await startPrimary(t, 9, `v=${mPath}`, ['--state-dir', mState]);
    await qemuWrite(t, promoted.nbd, 0x55, '2M', '64k');
    assert.equal((await promoted.proc.stop('SIGTERM')).code, 0, promoted.proc.stderr);
    // … and the other side wrote too: both wrote while apart
    primary = await startPrimary(t, 9, `v=${pPath}`);
    await qemuWrite(t, primary.nbd, 0x66, '3M', '64k');
    assert.equal((await primary.proc.stop('SIGTERM')).code, 0, primary.proc.stderr);

    // the promoted node is a mirror again; the primary meets it: split brain
    mirror = await startMirror(t, `v=${mPath}`, ['--state-dir', mState]);
    primary = await startPrimary(t, mirror.port, `v=${pPath}`);
    await mirror.proc.waitForStderrLine(/BM_ERR_SPLIT_BRAIN.*both sides wrote/);
    await statusUntil(primary, (s) => s.state === 'split-brain');
    assert.equal((await volumeStatus(mirror.admin)).bytesWritten, 0, 'the refused primary changed nothing on the mirror');
    assert.ok(port > 0);

    const local = await cli(t, ['resolve', '--admin', hp(primary.admin), '--volume', 'v', '--discard-local']);
    assert.equal(local.code, 1);
    assert.equal(oneErrorLine(local.stderr).code, 'BM_ERR_NOT_SUPPORTED');
    const remote = await cli(t, ['resolve', '--admin', hp(primary.admin), '--volume', 'v', '--discard-remote']);
    assert.equal(remote.code, 0, remote.stderr);
    await primary.proc.waitForLine(/^resync done volume=v /);
    await statusUntil(primary, (s) => s.inSync);
    assert.equal((await volumeStatus(primary.admin)).resolution, undefined, 'the decision was applied and cleared');
    assert.equal((await primary.proc.stop('SIGTERM')).code, 0, primary.proc.stderr);
    assert.equal((await mirror.proc.stop('SIGTERM')).code, 0, mirror.proc.stderr);
    await qemuRead(t, mPath, 0x66, '3M', '64k');
    await qemuRead(t, mPath, 0x00, '2M', '64k');
    await sameImages(t, pPath, mPath);
  });
});
