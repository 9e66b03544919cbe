/**
 * `blockmirror primary --mode cycle` against `blockmirror mirror`, as real
 * processes, written and read by real NBD clients (qemu-img, qemu-io).
 * Missing tools skip the test, or fail it under CI=true.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { describe, test, type TestContext } from 'node:test';
import { requireTool, runTool, type ToolResult } from '../helpers/tools.js';
import { CliProcess, listeningAddresses, oneErrorLine, runCli, tmpDir } from './cli-helpers.js';

const MiB = 1024 * 1024;

function ok(r: ToolResult, what: string): void {
  assert.equal(r.code, 0, `${what} exited with ${r.code ?? r.signal}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`);
}

interface CycleStatus {
  role: string;
  cycle: number;
  phase: string;
  peers: Array<{ address: string; link: string; freeze: number }>;
  volumes: Record<string, { mode: string; inSync: boolean; pendingBytes: number; state: string }>;
}

async function status(port: number): Promise<CycleStatus> {
  const res = await fetch(`http://127.0.0.1:${port}/status`);
  assert.equal(res.status, 200);
  return (await res.json()) as CycleStatus;
}

/**
 * Waits until the mirror holds everything written before this call: a
 * freeze taken after it (number > the current cycle) is committed. Returns
 * that commit line.
 */
async function mirrorCatchesUp(primary: CliProcess, adminPort: number): Promise<string> {
  const { cycle } = await status(adminPort);
  const later = Array.from({ length: 100 }, (_, i) => cycle + 1 + i);
  return primary.waitForLine(new RegExp(`^cycle (${later.join('|')}) committed `));
}

function startPrimary(t: TestContext, args: string[]): CliProcess {
  return new CliProcess(t, ['primary', ...args]);
}

describe('blockmirror primary --mode cycle', () => {
  test('SPEC 30/31: qemu-img writes through NBD; the next cycle brings the mirror to the same image; after SIGKILL the restarted primary keeps every acknowledged write and sends a delta', async (t) => {
    if (!requireTool(['qemu-img', 'qemu-io'], t)) return;
    const dir = await tmpDir(t);
    const mirror = new CliProcess(t, ['mirror', '--listen', '127.0.0.1:0', '--volume', `disk=${path.join(dir, 'mirror.img')}:8M`, '--nbd', '127.0.0.1:0', '--admin', '127.0.0.1:0']);
    const m = listeningAddresses(await mirror.waitForLine(/^listening /));
    const args = [
      '--peer', `127.0.0.1:${m.mirror!.port}`,
      '--volume', `disk=${path.join(dir, 'primary.img')}:8M`,
      '--mode', 'cycle',
      '--cycle-interval', '200',
      '--journal', path.join(dir, 'layers'),
      '--nbd', '127.0.0.1:0',
      '--admin', '127.0.0.1:0',
    ];
    let primary = startPrimary(t, args);
    let p = listeningAddresses(await primary.waitForLine(/^listening /));
    await primary.waitForLine(/^link up peer=/);
    assert.match(primary.stdout, /^volume disk path=.*primary\.img size=8388608 mode=cycle layers=.*layers$/m);

    const image = randomBytes(8 * MiB);
    const src = path.join(dir, 'src.img');
    await fs.writeFile(src, image);
    const primaryUri = (port: number) => `nbd://127.0.0.1:${port}/disk`;
    ok(await runTool(t, 'qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', src, primaryUri(p.nbd!.port)]), 'qemu-img convert');
    await mirrorCatchesUp(primary, p.admin!.port);
    ok(await runTool(t, 'qemu-img', ['compare', '-f', 'raw', '-F', 'raw', `nbd://127.0.0.1:${m.nbd!.port}/disk`, src]), 'qemu-img compare mirror vs source image');
    assert.match(mirror.stdout, /^cycle \d+ committed volumes=disk bytes=\d+ source=cycle-source-/m);
    // the first cycle copies the whole 8 MiB: its progress goes to stderr (JSON lines: not a TTY)
    const progress = primary.stderr.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as { label: string; done: number; total: number; finished?: boolean });
    assert.ok(
      progress.some((r) => /^cycle 1 to 127\.0\.0\.1:\d+$/.test(r.label) && r.finished === true && r.done === 8 * MiB && r.total === 8 * MiB),
      `a finished progress line for cycle 1: ${primary.stderr}`,
    );

    // the primary's status: a primary with a cycle volume and the mirror as its peer
    let s = await status(p.admin!.port);
    assert.equal(s.role, 'primary');
    assert.equal(s.peers[0]!.address, `127.0.0.1:${m.mirror!.port}`);
    assert.equal(s.peers[0]!.link, 'up');
    assert.equal(s.volumes.disk!.mode, 'cycle');
    while (!s.volumes.disk!.inSync) {
      await mirrorCatchesUp(primary, p.admin!.port);
      s = await status(p.admin!.port);
    }
    assert.deepEqual({ state: s.volumes.disk!.state, pending: s.volumes.disk!.pendingBytes }, { state: 'in-sync', pending: 0 });
    const table = await runCli(t, ['status', '--admin', `127.0.0.1:${p.admin!.port}`]);
    assert.match(table.stdout, /^disk\s+cycle\s+in-sync\s+yes/m);

    // an acknowledged write, then SIGKILL (no chance to copy it or to clean up)
    ok(await runTool(t, 'qemu-io', ['-f', 'raw', '-c', 'write -P 0x6b 1M 64k', primaryUri(p.nbd!.port)]), 'qemu-io write');
    const killed = await primary.stop('SIGKILL');
    assert.equal(killed.signal, 'SIGKILL');

    primary = startPrimary(t, args);
    p = listeningAddresses(await primary.waitForLine(/^listening /));
    await primary.waitForLine(/^link up peer=/);
    ok(await runTool(t, 'qemu-io', ['-f', 'raw', '-c', 'read -P 0x6b 1M 64k', primaryUri(p.nbd!.port)]), 'qemu-io read of the acknowledged write after SIGKILL');
    const line = await mirrorCatchesUp(primary, p.admin!.port);
    const bytes = Number(/bytes=(\d+)/.exec(line)![1]);
    ok(await runTool(t, 'qemu-img', ['compare', '-f', 'raw', '-F', 'raw', `nbd://127.0.0.1:${m.nbd!.port}/disk`, primaryUri(p.nbd!.port)]), 'qemu-img compare mirror vs primary');
    const sent = primary.lines.filter((l) => /^cycle \d+ committed /.test(l)).map((l) => Number(/bytes=(\d+)/.exec(l)![1]));
    assert.ok(Math.max(...sent, bytes) < MiB, `after the restart the cycles send deltas, not the 8 MiB image: ${sent.join(', ')}`);

    // the mirror's export is read-only
    const refused = await runTool(t, 'qemu-io', ['-f', 'raw', '-c', 'write -P 0x01 0 4k', `nbd://127.0.0.1:${m.nbd!.port}/disk`]);
    assert.match(refused.stdout + refused.stderr, /Operation not permitted|read-only|Permission denied/i);

    assert.equal((await primary.stop('SIGTERM')).code, 0, primary.stderr);
    assert.equal((await mirror.stop('SIGTERM')).code, 0, mirror.stderr);
    assert.match(primary.stdout, /^stopped$/m);
  });

  test('a size mismatch or an unknown volume at the mirror stops a cycle primary with one coded line, exit 1', async (t) => {
    const dir = await tmpDir(t);
    const mirror = new CliProcess(t, ['mirror', '--listen', '127.0.0.1:0', '--volume', `disk=${path.join(dir, 'mirror.img')}:8M`]);
    const m = listeningAddresses(await mirror.waitForLine(/^listening /));
    const peer = `127.0.0.1:${m.mirror!.port}`;
    const mismatch = await runCli(t, ['primary', '--peer', peer, '--volume', `disk=${path.join(dir, 'a.img')}:16M`, '--mode', 'cycle']);
    assert.equal(mismatch.code, 1);
    assert.equal(oneErrorLine(mismatch.stderr).code, 'BM_ERR_VOLUME_MISMATCH');
    const unknown = await runCli(t, ['primary', '--peer', peer, '--volume', `other=${path.join(dir, 'b.img')}:8M`, '--mode', 'cycle']);
    assert.equal(unknown.code, 1);
    assert.equal(oneErrorLine(unknown.stderr).code, 'BM_ERR_UNKNOWN_VOLUME');
    assert.equal((await mirror.stop('SIGTERM')).code, 0, mirror.stderr);
  });
});
