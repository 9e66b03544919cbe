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
import { adminPost } from '../../src/cli/role-command.js';
import type { AdminVolumeStatus } from '../../src/admin/status.js';
import { requireTool, runTool, type ToolResult } from '../helpers/tools.js';
import { CliProcess, freePort, listeningAddresses, oneErrorLine, runCli, tmpDir } from './cli-helpers.js';

/** Short link timers (see pairing.test.ts): a restarted peer is back within a second. */
const FAST = ['--heartbeat-interval', '100', '--stale-after', '3000', '--probation', '100'];
type HostPort = { host: string; port: number };

interface Node {
  proc: CliProcess;
  admin: HostPort;
  port?: number;
  nbd?: HostPort;
}

async function startMirror(t: TestContext, volume: string, extra: string[] = [], listen = '127.0.0.1:0'): Promise<Node & { port: number }> {
  const proc = new CliProcess(t, ['mirror', '--listen', listen, '--volume', volume, '--admin', '127.0.0.1:0', ...FAST, ...extra]);
  const addrs = listeningAddresses(await proc.waitForLine(/^listening mirror=/));
  const node: Node & { port: number } = { proc, admin: addrs.admin!, port: addrs.mirror!.port };
  if (addrs.nbd !== undefined) node.nbd = addrs.nbd;
  return node;
}

/** A TCP port nothing listens on now (for a node started later, whose address must be known before). */

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

async function nbdRead(t: TestContext, nbd: HostPort, pattern: number, offset: string, length: string): Promise<void> {
  ok(await runTool(t, 'qemu-io', ['-f', 'raw', '-r', '-c', `read -P ${pattern} ${offset} ${length}`, uri(nbd)]), `${uri(nbd)} holds ${pattern} at ${offset}+${length}`);
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

  test('SPEC 22, issue 12 (5): promote --force with the old primary killed fences it by lineage; the old primary wrote after the split, rejoins as a mirror, is refused as diverged, and resolve --discard-local on it resyncs it from its write-intent bitmap (which holds its writes after the split) plus the new primary\'s changes', async (t) => {
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
    await mirror.proc.waitForLine(/^volume v failback resync=bitmap regions=\d+ primary=/);
    const failback = await primary.proc.waitForLine(/^failback volume=v resync=/);
    const m = /^failback volume=v resync=bitmap regions=(\d+)\/64 peer-regions=(\d+)$/.exec(failback);
    assert.ok(m !== null && Number(m[2]) >= 1 && Number(m[1]) < 32, `the discarded writes are named by the old primary's bitmap: ${failback}`);
    await mirror.proc.waitForLine(/^volume v disk up-to-date \(was inconsistent\)$/);
    const done = await primary.proc.waitForLine(/^resync done volume=v /);
    const sent = Number(/bytes=(\d+)/.exec(done)![1]);
    assert.ok(sent < 4 * 1024 * 1024, `only the regions of the bitmaps are sent (${sent} bytes), not the volume`);
    assert.ok(Number(/regions=\d+\/(\d+)/.exec(done)![1]) < 32, `the resync visited a few regions, not the volume's 64: ${done}`);
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

describe('issue 12 (5): promote in place: the mirror process serves the promoted volume itself (no restart)', () => {
  test('issue 12 (5): planned failover in place: demote A, promote B with --nbd/--peer: B serves the volume read-write over NBD without a restart (qemu-io write + read back), A restarted as B\'s mirror catches up, status IN-SYNC yes, images equal; then back the same way (demote on B\'s mirror process, promote A in place)', async (t) => {
    if (!requireTool(['qemu-io', 'qemu-img'], t)) return;
    const dir = await tmpDir(t);
    const pPath = path.join(dir, 'p.img');
    const mPath = path.join(dir, 'm.img');
    const pState = `${pPath}.primary-state`;
    const b = await startMirror(t, `v=${mPath}:4M`, ['--nbd', '127.0.0.1:0']);
    const bNbd = b.nbd!;
    let a: Node = await startPrimary(t, b.port, `v=${pPath}:4M`, ['--assume-clean']);
    await qemuWrite(t, a.nbd!, 0x11, '0', '1M');
    await statusUntil(a, (s) => s.inSync);
    // before the promotion B's export is the mirror's: read-only
    const early = await runTool(t, 'qemu-io', ['-f', 'raw', '-c', 'write -P 0x99 0 4k', uri(bNbd)]);
    assert.match(early.stdout + early.stderr, /Operation not permitted|EPERM|Permission denied|failed/i, 'the mirror\'s export refuses writes');

    const demoted = await cli(t, ['demote', '--admin', hp(a.admin), '--volume', 'v']);
    assert.equal(demoted.code, 0, demoted.stderr);
    assert.equal((await a.proc.stop('SIGTERM')).code, 0, a.proc.stderr);

    // promote B in place, towards where A's mirror will listen
    const aPort = await freePort();
    const promoted = await cli(t, ['promote', '--admin', hp(b.admin), '--volume', 'v', '--peer', `127.0.0.1:${aPort}`]);
    assert.equal(promoted.code, 0, promoted.stderr);
    const result = JSON.parse(promoted.stdout) as { generation: string; history: string[]; nbd: string; peer: string };
    assert.equal(result.nbd, uri(bNbd));
    assert.equal(result.peer, `127.0.0.1:${aPort}`);
    await b.proc.waitForLine(new RegExp(`^volume v promoted generation=${result.generation} serving ${uri(bNbd).replace(/[./]/g, '\\$&')} peer=127\\.0\\.0\\.1:${aPort}$`));
    const served = await volumeStatus(b.admin);
    assert.equal(served.role, 'primary');
    assert.equal(served.mode, 'sync');
    assert.equal(served.nbd, uri(bNbd));
    assert.equal(b.proc.child.exitCode, null, 'B was not restarted');

    // B serves the volume read-write on the same NBD address, while its new mirror is not up yet
    await qemuWrite(t, bNbd, 0x22, '2M', '64k');
    await nbdRead(t, bNbd, 0x22, '2M', '64k');
    await nbdRead(t, bNbd, 0x11, '0', '1M');

    // the old primary is fenced: it cannot come back as a primary
    const back = await cli(t, ['primary', '--peer', `127.0.0.1:${b.port}`, '--volume', `v=${pPath}`, '--state-dir', pState]);
    assert.equal(back.code, 1);
    assert.equal(oneErrorLine(back.stderr).code, 'BM_ERR_DEMOTED');

    // failback: A restarts as B's mirror (its own files and state directory) and catches up
    a = await startMirror(t, `v=${pPath}`, ['--state-dir', pState, '--nbd', '127.0.0.1:0'], `127.0.0.1:${aPort}`);
    await statusUntil(b, (s) => s.inSync && s.role === 'primary');
    await qemuWrite(t, bNbd, 0x33, '3M', '64k');
    await statusUntil(b, (s) => s.inSync);
    const table = await cli(t, ['status', '--admin', hp(b.admin)]);
    assert.equal(table.code, 0, table.stderr);
    assert.match(table.stdout, /^v\s+sync\s+in-sync\s+yes\s/m, table.stdout);
    assert.match(table.stdout, new RegExp(`^127\\.0\\.0\\.1:${aPort}\\s+up\\s`, 'm'), 'B lists its mirror as a peer');
    assert.doesNotMatch(b.proc.stdout, /^resync done/m, 'no resync: A only lacked what B wrote since the promotion');

    // and back, in place both ways: demote on B (through the mirror process's admin endpoint), promote A with --peer, B rejoins as A's mirror
    const bState = `${mPath}.mirror-state`;
    const handedBack = await cli(t, ['demote', '--admin', hp(b.admin), '--volume', 'v']);
    assert.equal(handedBack.code, 0, handedBack.stderr);
    await b.proc.waitForLine(/^volume v demoted generation=/);
    const refused = await runTool(t, 'qemu-io', ['-f', 'raw', '-c', 'write -P 0x99 0 4k', uri(bNbd)]);
    assert.match(refused.stdout + refused.stderr, /Operation not permitted|EPERM|Permission denied|failed/i, 'the demoted export refuses writes');
    assert.equal((await b.proc.stop('SIGTERM')).code, 0, b.proc.stderr);
    const bPort = await freePort();
    const swapped = await cli(t, ['promote', '--admin', hp(a.admin), '--volume', 'v', '--peer', `127.0.0.1:${bPort}`]);
    assert.equal(swapped.code, 0, swapped.stderr);
    await qemuWrite(t, a.nbd!, 0x66, '3M', '64k');
    const b2 = await startMirror(t, `v=${mPath}`, ['--state-dir', bState], `127.0.0.1:${bPort}`);
    await statusUntil(a, (s) => s.inSync && s.role === 'primary');
    assert.doesNotMatch(a.proc.stdout, /^resync done/m, 'no resync after a hand-over');
    assert.equal((await a.proc.stop('SIGTERM')).code, 0, a.proc.stderr);
    assert.equal((await b2.proc.stop('SIGTERM')).code, 0, b2.proc.stderr);
    await qemuRead(t, pPath, 0x22, '2M', '64k');
    await qemuRead(t, mPath, 0x66, '3M', '64k');
    await sameImages(t, pPath, mPath);
  });

  test('SPEC 22, issue 12 (5): forced failover in place: A killed (SIGKILL) with a write B never acknowledged, promote --force --peer on B serves the volume at once; A comes back as a primary and is fenced, then restarts as B\'s mirror and is resynced from its write-intent bitmap plus B\'s changes (not the whole volume); images equal', async (t) => {
    if (!requireTool(['qemu-io', 'qemu-img'], t)) return;
    const dir = await tmpDir(t);
    const pPath = path.join(dir, 'p.img');
    const mPath = path.join(dir, 'm.img');
    const pState = `${pPath}.primary-state`;
    const b = await startMirror(t, `v=${mPath}:4M`, ['--nbd', '127.0.0.1:0']);
    const bNbd = b.nbd!;
    let a: Node = await startPrimary(t, b.port, `v=${pPath}:4M`, ['--assume-clean']);
    await qemuWrite(t, a.nbd!, 0x11, '0', '1M');
    await statusUntil(a, (s) => s.inSync);
    // B stalls: A's next write never gets B's acknowledgement (it resolves once A's link is down); A dies
    b.proc.child.kill('SIGSTOP');
    try {
      await qemuWrite(t, a.nbd!, 0x55, '2M', '128k');
    } finally {
      b.proc.child.kill('SIGCONT');
    }
    a.proc.child.kill('SIGKILL');
    await a.proc.exited;

    const aPort = await freePort();
    const refused = await cli(t, ['promote', '--admin', hp(b.admin), '--volume', 'v', '--peer', `127.0.0.1:${aPort}`]);
    assert.equal(oneErrorLine(refused.stderr).code, 'BM_ERR_PROMOTE_REFUSED', 'the primary is lost: --force is needed');
    assert.equal((await volumeStatus(b.admin)).role, 'target', 'a refused promotion serves nothing');
    const forced = await cli(t, ['promote', '--admin', hp(b.admin), '--volume', 'v', '--force', '--peer', `127.0.0.1:${aPort}`]);
    assert.equal(forced.code, 0, forced.stderr);
    await b.proc.waitForLine(/^volume v promoted generation=\S+ \(forced\) serving nbd:\/\/\S+\/v peer=/);
    await qemuWrite(t, bNbd, 0x44, '1M', '64k');
    await nbdRead(t, bNbd, 0x44, '1M', '64k');

    // the old primary returns as a primary: refused by the mirror process that now serves the volume (fenced by lineage)
    a = await startPrimary(t, b.port, `v=${pPath}`);
    await a.proc.waitForStderrLine(/BM_ERR_SPLIT_BRAIN.*was promoted/);
    assert.equal((await a.proc.stop('SIGTERM')).code, 0, a.proc.stderr);
    await nbdRead(t, bNbd, 0x44, '1M', '64k');

    // failback: A as B's mirror; it did not hand over, but its write-intent bitmap says where it may differ:
    // B resyncs those regions plus its own changes since the promotion, not the whole volume
    a = await startMirror(t, `v=${pPath}`, ['--state-dir', pState], `127.0.0.1:${aPort}`);
    const offered = await a.proc.waitForLine(/^volume v failback resync=/);
    assert.match(offered, /^volume v failback resync=bitmap regions=\d+ primary=\S+$/);
    const failback = await b.proc.waitForLine(/^failback volume=v resync=/);
    const m = /^failback volume=v resync=bitmap regions=(\d+)\/64 peer-regions=(\d+)$/.exec(failback);
    assert.ok(m !== null, failback);
    assert.ok(Number(m[2]) >= 2, `A's bitmap names the regions of the write B never acknowledged (${failback})`);
    assert.ok(Number(m[1]) < 32, `the union is a few regions, not the volume's 64 (${failback})`);
    const done = await b.proc.waitForLine(/^resync done volume=v /);
    const visited = Number(/regions=\d+\/(\d+)/.exec(done)![1]);
    assert.ok(visited < 32, `the resync visited ${visited} of 64 regions`);
    await statusUntil(b, (s) => s.inSync && s.role === 'primary');
    await a.proc.waitForLine(/^volume v disk up-to-date \(was inconsistent\)$/);
    // the failback bitmap has served: removed once A is up-to-date
    for (let i = 0; (await fs.stat(path.join(pState, 'v.bitmap')).then(() => true, () => false)) && i < 100; i++) await new Promise((r) => setTimeout(r, 50));
    await assert.rejects(fs.stat(path.join(pState, 'v.bitmap')), { code: 'ENOENT' });
    assert.equal((await b.proc.stop('SIGTERM')).code, 0, b.proc.stderr);
    assert.equal((await a.proc.stop('SIGTERM')).code, 0, a.proc.stderr);
    await qemuRead(t, pPath, 0x44, '1M', '64k');
    await qemuRead(t, pPath, 0x11, '0', '1M');
    await sameImages(t, pPath, mPath);
  });

  test('issue 12 (5): bad input: a malformed promote --peer is a usage error, --peer on a mirror without --nbd changes nothing, and a promotion whose primary cannot start leaves the mirror hosting the volume read-only until promote --peer is retried (two retries at once: one serves, one is refused)', async (t) => {
    if (!requireTool(['qemu-io'], t)) return;
    const dir = await tmpDir(t);
    const pPath = path.join(dir, 'p.img');
    const mPath = path.join(dir, 'm.img');
    const nPath = path.join(dir, 'n.img');
    const mState = `${mPath}.mirror-state`;
    // usage errors: exit 2 before anything is sent
    for (const bad of ['127.0.0.1', '127.0.0.1:0', 'host:99999']) {
      const r = await cli(t, ['promote', '--admin', '127.0.0.1:9', '--volume', 'v', '--peer', bad]);
      assert.equal(r.code, 2, r.stderr);
      const e = oneErrorLine(r.stderr);
      assert.equal(e.code, 'BM_ERR_INVALID_ARGUMENT');
      assert.match(e.message, /--peer/);
    }

    // --peer on a mirror that has no --nbd: refused before anything is recorded
    const plain = await startMirror(t, `v=${nPath}:1M`);
    const noNbd = await cli(t, ['promote', '--admin', hp(plain.admin), '--volume', 'v', '--force', '--peer', '127.0.0.1:9']);
    assert.equal(noNbd.code, 1);
    assert.equal(oneErrorLine(noNbd.stderr).code, 'BM_ERR_INVALID_ARGUMENT');
    assert.match(oneErrorLine(noNbd.stderr).message, /without --nbd.*nothing was changed/);
    assert.equal((await volumeStatus(plain.admin)).role, 'target');
    // a mirror demotes only a volume it serves in place
    const demoteHere = await cli(t, ['demote', '--admin', hp(plain.admin), '--volume', 'v']);
    assert.equal(demoteHere.code, 1);
    assert.equal(oneErrorLine(demoteHere.stderr).code, 'BM_ERR_NOT_SUPPORTED');
    assert.equal((await plain.proc.stop('SIGTERM')).code, 0, plain.proc.stderr);

    const b = await startMirror(t, `v=${mPath}:4M`, ['--nbd', '127.0.0.1:0']);
    const bNbd = b.nbd!;
    const a = await startPrimary(t, b.port, `v=${pPath}:4M`, ['--assume-clean']);
    await qemuWrite(t, a.nbd!, 0x11, '0', '1M');
    await statusUntil(a, (s) => s.inSync);
    assert.equal((await cli(t, ['demote', '--admin', hp(a.admin), '--volume', 'v'])).code, 0);
    assert.equal((await a.proc.stop('SIGTERM')).code, 0, a.proc.stderr);

    // the primary cannot start (its bitmap path in the state directory is taken by a directory)
    await fs.mkdir(path.join(mState, 'v.bitmap'));
    const failed = await cli(t, ['promote', '--admin', hp(b.admin), '--volume', 'v', '--peer', '127.0.0.1:9']);
    assert.equal(failed.code, 1);
    assert.match(oneErrorLine(failed.stderr).message, /promoted generation=\S+ but not served here/);
    await b.proc.waitForStderrLine(/warning: volume v promoted generation=\S+ but not served here/);
    const kept = await volumeStatus(b.admin);
    assert.equal(kept.role, 'promoted', 'the promotion is recorded');
    assert.equal(kept.mode, 'target', 'the mirror still hosts the volume');
    assert.equal(kept.released, undefined, 'not released');
    const readOnly = await runTool(t, 'qemu-io', ['-f', 'raw', '-c', 'write -P 0x99 0 4k', uri(bNbd)]);
    assert.match(readOnly.stdout + readOnly.stderr, /Operation not permitted|EPERM|Permission denied|failed/i, 'the export stays read-only');
    await nbdRead(t, bNbd, 0x11, '0', '4k');

    // the cause fixed, promote --peer again: served (the recorded generation, not a new one)
    await fs.rmdir(path.join(mState, 'v.bitmap'));
    // two at once: exactly one serves it (never two primaries on one device), the other is refused
    // (straight to the admin endpoint, so that both requests arrive together)
    const both = await Promise.all([0, 1].map(() => adminPost(b.admin, '/volumes/v/promote?peer=127.0.0.1%3A9', 10_000)));
    const retried = both.find((r) => r.status === 200);
    assert.ok(retried !== undefined, both.map((r) => r.body).join(''));
    const loser = both.find((r) => r !== retried)!;
    assert.equal(loser.status, 409, loser.body);
    assert.equal((JSON.parse(loser.body) as { error: { code: string } }).error.code, 'BM_ERR_PROMOTE_REFUSED');
    assert.equal((JSON.parse(retried.body) as { generation: string }).generation, kept.generation);
    await qemuWrite(t, bNbd, 0x55, '0', '4k');
    await nbdRead(t, bNbd, 0x55, '0', '4k');
    const again = await cli(t, ['promote', '--admin', hp(b.admin), '--volume', 'v', '--peer', '127.0.0.1:9']);
    assert.equal(oneErrorLine(again.stderr).code, 'BM_ERR_PROMOTE_REFUSED');
    assert.equal((await b.proc.stop('SIGTERM')).code, 0, b.proc.stderr);
    await qemuRead(t, mPath, 0x55, '0', '4k');
  });
});
