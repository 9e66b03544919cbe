/**
 * Issue 13 with real processes: allocation maps in the state directories,
 * `--scan-zeros`, and a zero-aware initial sync that moves about the data of
 * a sparse volume, not its size. Waits on printed lines, never on sleeps.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { describe, test } from 'node:test';
import { CliProcess, listeningAddresses, tmpDir } from './cli-helpers.js';

const MiB = 1024 * 1024;
const FAST = ['--heartbeat-interval', '100', '--stale-after', '3000', '--probation', '100'];

describe('issue 13: allocation maps with the CLI', () => {
  test('a new mirror volume starts all-zero; --scan-zeros maps an existing sparse image (progress, result kept for the next start); the initial sync sends the data and the holes as zero ranges; the mirror file stays sparse', async (t) => {
    const dir = await tmpDir(t);
    const size = 64 * MiB;
    const pPath = path.join(dir, 'primary.img');
    const mPath = path.join(dir, 'mirror.img');
    const h = await fs.open(pPath, 'w');
    await h.truncate(size);
    const data = randomBytes(MiB);
    await h.write(data, 0, MiB, 40 * MiB);
    await h.close();
    const mState = path.join(dir, 'mirror-state');
    const pState = path.join(dir, 'primary-state');

    const mirror = new CliProcess(t, ['mirror', '--listen', '127.0.0.1:0', '--volume', `v=${mPath}:64M`, '--state-dir', mState, ...FAST]);
    assert.match(await mirror.waitForLine(/^volume v allocation /), new RegExp(`^volume v allocation map=created zero=${size}$`));
    const port = listeningAddresses(await mirror.waitForLine(/^listening mirror=/)).mirror!.port;

    const primary = new CliProcess(t, ['primary', '--peer', `127.0.0.1:${port}`, '--volume', `v=${pPath}`, '--mode', 'async', '--state-dir', pState, '--scan-zeros', ...FAST]);
    assert.match(await primary.waitForLine(/^volume v allocation /), /^volume v allocation map=created zero=0$/, 'an existing image without a map: "may hold data"');
    assert.match(await primary.waitForLine(/^scan-zeros done /), /^scan-zeros done volume=v read=64\.0 MiB zero=63\.0 MiB$/);
    const done = await primary.waitForLine(/^resync done volume=v /);
    // checksum (the default): the holes are known zero here and on the blank mirror (one digest per run of holes): only the data is sent
    assert.match(done, new RegExp(`^resync done volume=v bytes=${MiB} zero=0 regions=16/1024 ms=\\d+$`));

    primary.child.kill('SIGTERM');
    assert.equal((await primary.exited).code, 0);
    mirror.child.kill('SIGTERM');
    assert.equal((await mirror.exited).code, 0);
    const copy = await fs.readFile(mPath);
    assert.deepEqual(copy.subarray(40 * MiB, 41 * MiB), data);
    assert.ok(copy.subarray(0, 40 * MiB).every((b) => b === 0) && copy.subarray(41 * MiB).every((b) => b === 0));
    const allocated = (await fs.stat(mPath)).blocks * 512;
    assert.ok(allocated <= 2 * MiB, `the mirror file allocates ${allocated} bytes for 1 MiB of data`);

    // the scan's result is kept: the next start loads it
    const again = new CliProcess(t, ['primary', '--peer', `127.0.0.1:${port}`, '--volume', `v=${pPath}`, '--state-dir', pState, ...FAST]);
    assert.match(await again.waitForLine(/^volume v allocation /), new RegExp(`^volume v allocation map=loaded zero=${size - MiB}$`));
    again.child.kill('SIGTERM');
    await again.exited;
  });
});
