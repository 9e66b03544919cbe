/**
 * The `blockmirror` CLI as a real child process: servers on port 0, status,
 * error lines and exit statuses, clean shutdown on SIGTERM.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { describe, test } from 'node:test';
import type { TestContext } from 'node:test';
import { RawClient } from '../nbd/raw-client.js';
import { CliProcess, freePort, listeningAddresses, oneErrorLine, ROOT, runCli, tmpDir } from './cli-helpers.js';

const MiB = 1024 * 1024;

async function usedPort(t: TestContext): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen({ host: '127.0.0.1', port: 0 }, () => resolve()));
  t.after(() => new Promise<void>((resolve) => server.close(() => resolve())));
  return (server.address() as net.AddressInfo).port;
}

async function startMirror(t: TestContext, args: string[]): Promise<{ proc: CliProcess; addrs: ReturnType<typeof listeningAddresses> }> {
  const proc = new CliProcess(t, ['mirror', '--listen', '127.0.0.1:0', ...args]);
  const line = await proc.waitForLine(/^listening mirror=/);
  return { proc, addrs: listeningAddresses(line) };
}

describe('blockmirror CLI', () => {
  test('--help, help <command>, --version', async (t) => {
    const pkg = JSON.parse(await fs.readFile(path.join(ROOT, 'package.json'), 'utf8')) as { version: string };
    const [help, sub, version] = await Promise.all([
      runCli(t, ['--help']),
      runCli(t, ['help', 'primary']),
      runCli(t, ['--version']),
    ]);
    assert.equal(help.code, 0);
    for (const cmd of ['mirror', 'primary', 'status', 'demo']) assert.match(help.stdout, new RegExp(`^  ${cmd} `, 'm'));
    assert.equal(sub.code, 0);
    assert.match(sub.stdout, /--heartbeat-interval MS/);
    assert.match(sub.stdout, /--mode sync\|async\|cycle/);
    assert.equal(version.code, 0);
    assert.equal(version.stdout.trim(), `blockmirror ${pkg.version}`);
    assert.equal(help.stderr + sub.stderr + version.stderr, '');
  });

  test('usage errors: one stderr line "blockmirror: CODE: message", exit 2, no stack trace', async (t) => {
    const dir = await tmpDir(t);
    const vol = `v=${path.join(dir, 'v.img')}:1M`;
    const cases: Array<{ args: string[]; code: string; message: RegExp }> = [
      { args: [], code: 'BM_ERR_INVALID_ARGUMENT', message: /missing command/ },
      { args: ['frobnicate'], code: 'BM_ERR_INVALID_ARGUMENT', message: /unknown command "frobnicate"/ },
      { args: ['primary', '--peer', '127.0.0.1:7000', '--volume', vol, '--bogus'], code: 'BM_ERR_INVALID_ARGUMENT', message: /unknown option --bogus/ },
      { args: ['mirror', '--listen', '127.0.0.1:0'], code: 'BM_ERR_INVALID_ARGUMENT', message: /--volume/ },
      { args: ['mirror', '--volume', vol], code: 'BM_ERR_INVALID_ARGUMENT', message: /missing --listen/ },
      {
        args: ['mirror', '--listen', '127.0.0.1:0', '--volume', `v=${path.join(dir, 'v.img')}:64Q`],
        code: 'BM_ERR_INVALID_ARGUMENT',
        message: /invalid size "64Q"/,
      },
      { args: ['mirror', '--listen', 'nohost', '--volume', vol], code: 'BM_ERR_INVALID_ARGUMENT', message: /--listen: expected HOST:PORT/ },
      { args: ['mirror', '--listen', '127.0.0.1:70000', '--volume', vol], code: 'BM_ERR_INVALID_ARGUMENT', message: /port must be/ },
      { args: ['mirror', '--listen', '127.0.0.1:0', '--volume', vol, '--volume', vol], code: 'BM_ERR_INVALID_ARGUMENT', message: /more than once/ },
      { args: ['primary', '--peer', '127.0.0.1:7000', '--volume', vol, '--mode', 'cycle', '--probation', '10'], code: 'BM_ERR_INVALID_ARGUMENT', message: /--probation applies to --mode sync and async only/ },
      { args: ['primary', '--peer', '127.0.0.1:7000', '--volume', vol, '--mode', 'fast'], code: 'BM_ERR_INVALID_ARGUMENT', message: /--mode must be/ },
      { args: ['primary', '--peer', '127.0.0.1:7000', '--volume', vol, '--connections', '0'], code: 'BM_ERR_INVALID_ARGUMENT', message: /--connections/ },
      {
        args: ['primary', '--peer', '127.0.0.1:7000', '--volume', vol, '--heartbeat-interval', '500', '--stale-after', '100'],
        code: 'BM_ERR_INVALID_ARGUMENT',
        message: /--stale-after .* must be longer/,
      },
      { args: ['primary', '--peer', '127.0.0.1:7000', '--volume', vol, '--probation', '1.5s'], code: 'BM_ERR_INVALID_ARGUMENT', message: /--probation/ },
      { args: ['primary', '--peer', '127.0.0.1:7000', '--volume', vol, '--peer', '127.0.0.1:7001'], code: 'BM_ERR_INVALID_ARGUMENT', message: /--peer given more than once/ },
      { args: ['status'], code: 'BM_ERR_INVALID_ARGUMENT', message: /missing --admin/ },
    ];
    const results = await Promise.all(cases.map((c) => runCli(t, c.args)));
    results.forEach((r, i) => {
      const c = cases[i]!;
      const what = `blockmirror ${c.args.join(' ')}`;
      assert.equal(r.code, 2, `${what}: exit status\n${r.stderr}`);
      const line = oneErrorLine(r.stderr);
      assert.equal(line.code, c.code, what);
      assert.match(line.message, c.message, what);
      assert.equal(r.stdout, '', what);
    });
    // Nothing was created by a refused command line.
    await assert.rejects(fs.stat(path.join(dir, 'v.img')), { code: 'ENOENT' });
  });

  test('runtime errors: missing volume file, size differing from the file, unreadable secret, port in use → one line, exit 1', async (t) => {
    const dir = await tmpDir(t);
    const existing = path.join(dir, 'existing.img');
    await fs.writeFile(existing, Buffer.alloc(MiB));
    const port = await usedPort(t);
    const good = `v=${path.join(dir, 'good.img')}:1M`;
    const cases: Array<{ args: string[]; code: string; message: RegExp }> = [
      {
        args: ['mirror', '--listen', '127.0.0.1:0', '--volume', `v=${path.join(dir, 'missing.img')}`],
        code: 'BM_ERR_INVALID_ARGUMENT',
        message: /volume v: .*missing\.img does not exist and no size was given/,
      },
      {
        args: ['mirror', '--listen', '127.0.0.1:0', '--volume', `v=${path.join(dir, 'no-such-dir', 'x.img')}:1M`],
        code: 'BM_ERR_INVALID_ARGUMENT',
        message: /volume v: cannot open .*no-such-dir.*no such file/,
      },
      {
        args: ['mirror', '--listen', '127.0.0.1:0', '--volume', `v=${existing}:2M`],
        code: 'BM_ERR_INVALID_ARGUMENT',
        message: /volume v: .*exists with size 1048576, not the requested size 2097152/,
      },
      {
        args: ['mirror', '--listen', '127.0.0.1:0', '--volume', good, '--secret-file', path.join(dir, 'nope.txt')],
        code: 'BM_ERR_INVALID_ARGUMENT',
        message: /cannot read --secret-file .*nope\.txt: no such file/,
      },
      { args: ['mirror', '--listen', `127.0.0.1:${port}`, '--volume', good], code: 'BM_ERR_ADDRESS_IN_USE', message: new RegExp(`127\\.0\\.0\\.1:${port}`) },
      {
        args: ['mirror', '--listen', '127.0.0.1:0', '--volume', `w=${path.join(dir, 'w.img')}:1M`, '--admin', `127.0.0.1:${port}`],
        code: 'BM_ERR_ADDRESS_IN_USE',
        message: /admin/,
      },
      {
        args: ['primary', '--peer', '127.0.0.1:9', '--volume', `p=${path.join(dir, 'p.img')}:1M`, '--nbd', `127.0.0.1:${port}`],
        code: 'BM_ERR_ADDRESS_IN_USE',
        message: /NBD/,
      },
      { args: ['status', '--admin', `127.0.0.1:${await freePort()}`], code: 'BM_ERR_CONNECT_FAILED', message: /cannot reach the admin endpoint/ },
    ];
    // One at a time: two of them create the same kind of file and the port checks must not race each other.
    for (const c of cases) {
      const r = await runCli(t, c.args);
      const what = `blockmirror ${c.args.join(' ')}`;
      assert.equal(r.code, 1, `${what}: exit status\n${r.stderr}`);
      const lines = r.stderr.split('\n').filter((l) => l !== '' && !l.startsWith('blockmirror: warning:'));
      const line = oneErrorLine(lines.join('\n'));
      assert.equal(line.code, c.code, `${what}\n${r.stderr}`);
      assert.match(line.message, c.message, what);
    }
  });

  test('mirror + primary on port 0: listening lines, link up, journal files, status --json and the table, SIGTERM → exit 0, files intact', async (t) => {
    const dir = await tmpDir(t);
    const secret = path.join(dir, 'secret');
    await fs.writeFile(secret, 'correct horse battery staple\n');
    // Both sides start from the same content (as after an initial copy).
    const base = randomBytes(4 * MiB);
    const pPath = path.join(dir, 'primary.img');
    const mPath = path.join(dir, 'mirror.img');
    await fs.writeFile(pPath, base);
    await fs.writeFile(mPath, base);
    const sparse = path.join(dir, 'mirror-new.img');

    const mirror = await startMirror(t, [
      '--volume', `vol0=${mPath}`,
      '--volume', `vol1=${sparse}:2M`,
      '--admin', '127.0.0.1:0',
      '--secret-file', secret,
    ]);
    assert.ok(mirror.addrs.mirror!.port > 0);
    assert.equal(mirror.addrs.admin!.host, '127.0.0.1');
    assert.equal((await fs.stat(sparse)).size, 2 * MiB, 'missing file created with the given size');
    assert.match(mirror.proc.stdout, /^volume vol1 path=.*mirror-new\.img size=2097152$/m);

    const primary = new CliProcess(t, [
      'primary',
      '--peer', `127.0.0.1:${mirror.addrs.mirror!.port}`,
      '--volume', `vol0=${pPath}:4M`,
      '--volume', `vol1=${path.join(dir, 'primary-new.img')}:2M`,
      '--mode', 'sync',
      '--connections', '2',
      '--nbd', '127.0.0.1:0',
      '--admin', '127.0.0.1:0',
      '--secret-file', secret,
      '--journal', path.join(dir, 'journal'),
      // identical by construction (same content; vol1 blank on both sides): no initial sync
      '--assume-clean',
    ]);
    const line = await primary.waitForLine(/^listening /);
    assert.match(line, /^listening nbd=127\.0\.0\.1:\d+ admin=127\.0\.0\.1:\d+ peer=127\.0\.0\.1:\d+$/);
    const p = listeningAddresses(line);
    await primary.waitForLine(/^link up peer=127\.0\.0\.1:\d+$/);
    await mirror.proc.waitForLine(/^peer connected node=primary-/);
    const journals = (await fs.readdir(path.join(dir, 'journal'))).filter((f) => f.endsWith('.journal')).sort();
    assert.deepEqual(journals, ['vol0.journal', 'vol1.journal'], '--journal: one file journal per volume');

    // Write through NBD into the sync volume: answered once the mirror has it.
    const block = randomBytes(64 * 1024);
    const client = await RawClient.connect(p.nbd!.port);
    t.after(() => client.destroy());
    const { size } = await client.go('vol0');
    assert.equal(size, 4 * MiB);
    assert.equal(await client.writeAt(1, MiB, block), 0);
    await client.disconnect();

    const status = await runCli(t, ['status', '--admin', `127.0.0.1:${p.admin!.port}`, '--json']);
    assert.equal(status.code, 0, status.stderr);
    const s = JSON.parse(status.stdout) as {
      role: string;
      version: string;
      peers: Array<{ address: string; link: string }>;
      volumes: Record<string, { mode: string; inSync: boolean; pendingBytes: number; state: string; replicatedBytes: number }>;
      nbd: { address: string };
    };
    assert.equal(s.role, 'primary');
    assert.equal(s.peers[0]!.address, `127.0.0.1:${mirror.addrs.mirror!.port}`);
    assert.equal(s.peers[0]!.link, 'up');
    assert.deepEqual(
      { mode: s.volumes.vol0!.mode, inSync: s.volumes.vol0!.inSync, pendingBytes: s.volumes.vol0!.pendingBytes, state: s.volumes.vol0!.state },
      { mode: 'sync', inSync: true, pendingBytes: 0, state: 'in-sync' },
    );
    assert.equal(s.volumes.vol0!.replicatedBytes, block.length);
    assert.equal(s.volumes.vol1!.inSync, true);
    assert.equal(s.nbd.address, `127.0.0.1:${p.nbd!.port}`);

    const table = await runCli(t, ['status', '--admin', `127.0.0.1:${p.admin!.port}`]);
    assert.equal(table.code, 0, table.stderr);
    assert.match(table.stdout, /^role primary {2}node primary-/m);
    assert.match(table.stdout, /^PEER +LINK +CONNECTIONS +NODE$/m);
    assert.match(table.stdout, /^VOLUME +MODE +STATE +IN-SYNC +DISK +PEER-DISK +SYNC +LAST-IN-SYNC +PENDING +REPLICATED +ERRORS +SIZE$/m);
    assert.match(table.stdout, new RegExp(`^127\\.0\\.0\\.1:${mirror.addrs.mirror!.port} +up +2/2 +target-`, 'm'));
    assert.match(table.stdout, /^vol0 +sync +in-sync +yes +up-to-date +up-to-date +- +now +0 B +64\.0 KiB +0 +4\.0 MiB$/m);

    const mStatus = await runCli(t, ['status', '--admin', `127.0.0.1:${mirror.addrs.admin!.port}`, '--json']);
    assert.equal(mStatus.code, 0, mStatus.stderr);
    const ms = JSON.parse(mStatus.stdout) as { role: string; volumes: Record<string, { mode: string; inSync: boolean; state: string; replicatedBytes: number }> };
    assert.equal(ms.role, 'target');
    assert.deepEqual(
      { mode: ms.volumes.vol0!.mode, inSync: ms.volumes.vol0!.inSync, state: ms.volumes.vol0!.state, replicatedBytes: ms.volumes.vol0!.replicatedBytes },
      { mode: 'target', inSync: true, state: 'mirroring', replicatedBytes: block.length },
    );

    const pExit = await primary.stop('SIGTERM');
    assert.deepEqual(pExit, { code: 0, signal: null }, primary.stderr);
    assert.match(primary.stdout, /^stopping signal=SIGTERM$/m);
    assert.match(primary.stdout, /^stopped$/m);
    const mExit = await mirror.proc.stop('SIGTERM');
    assert.deepEqual(mExit, { code: 0, signal: null }, mirror.proc.stderr);
    assert.match(mirror.proc.stdout, /^stopped$/m);
    assert.equal(primary.stderr, '');
    assert.equal(mirror.proc.stderr, '');

    const want = Buffer.from(base);
    block.copy(want, MiB);
    const [pImg, mImg] = await Promise.all([fs.readFile(pPath), fs.readFile(mPath)]);
    assert.equal(pImg.length, 4 * MiB);
    assert.ok(pImg.equals(want), 'primary file: original content plus the NBD write');
    assert.ok(mImg.equals(want), 'mirror file: identical to the primary');
  });

  test('size mismatch with the mirror: the primary exits 1 with one BM_ERR_VOLUME_MISMATCH line', async (t) => {
    const dir = await tmpDir(t);
    const mirror = await startMirror(t, ['--volume', `vol0=${path.join(dir, 'm.img')}:1M`]);
    const r = await runCli(t, ['primary', '--peer', `127.0.0.1:${mirror.addrs.mirror!.port}`, '--volume', `vol0=${path.join(dir, 'p.img')}:2M`]);
    assert.equal(r.code, 1, r.stderr);
    const line = oneErrorLine(r.stderr);
    assert.equal(line.code, 'BM_ERR_VOLUME_MISMATCH');
    assert.match(line.message, /vol0/);
    // The mirror is unaffected and still shuts down cleanly.
    assert.deepEqual(await mirror.proc.stop('SIGINT'), { code: 0, signal: null });
  });

  test('wrong secret: the primary exits 1 with BM_ERR_AUTH_FAILED', async (t) => {
    const dir = await tmpDir(t);
    await fs.writeFile(path.join(dir, 'a'), 'one secret\n');
    await fs.writeFile(path.join(dir, 'b'), 'another secret\n');
    const mirror = await startMirror(t, ['--volume', `vol0=${path.join(dir, 'm.img')}:1M`, '--secret-file', path.join(dir, 'a')]);
    const r = await runCli(t, [
      'primary', '--peer', `127.0.0.1:${mirror.addrs.mirror!.port}`,
      '--volume', `vol0=${path.join(dir, 'p.img')}:1M`,
      '--secret-file', path.join(dir, 'b'),
    ]);
    assert.equal(r.code, 1, r.stderr);
    assert.equal(oneErrorLine(r.stderr).code, 'BM_ERR_AUTH_FAILED');
    await mirror.proc.stop();
  });

  test('--initial-sync full: a filled primary volume is copied to a blank mirror; progress JSON on stderr, a "resync done" line, identical files', async (t) => {
    const dir = await tmpDir(t);
    const image = randomBytes(16 * MiB);
    const pPath = path.join(dir, 'primary.img');
    const mPath = path.join(dir, 'mirror.img');
    await fs.writeFile(pPath, image);
    const mirror = await startMirror(t, ['--volume', `v=${mPath}:16M`]);
    const primary = new CliProcess(t, ['primary', '--peer', `127.0.0.1:${mirror.addrs.mirror!.port}`, '--volume', `v=${pPath}`, '--mode', 'async', '--initial-sync', 'full']);
    const done = await primary.waitForLine(/^resync done volume=v /);
    assert.match(done, /^resync done volume=v bytes=16777216 zero=0 regions=256\/256 ms=\d+$/);
    const progress = primary.stderr.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as { label: string; done: number; total: number; finished?: boolean });
    const last = progress.at(-1);
    assert.deepEqual(last === undefined ? undefined : [last.label, last.done, last.total, last.finished], ['resync v', 16 * MiB, 16 * MiB, true]);
    assert.equal((await primary.stop('SIGTERM')).code, 0, primary.stderr);
    assert.equal((await mirror.proc.stop('SIGTERM')).code, 0, mirror.proc.stderr);
    assert.ok((await fs.readFile(mPath)).equals(image), 'the mirror file holds the primary image');
  });
});

