/**
 * `blockmirror demo` (what `npm run demo` runs) as a child process: it must
 * exit 0 after printing every step, matching hashes and the final
 * "identical" line, and leave no temporary directory behind.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import path from 'node:path';
import { describe, test } from 'node:test';
import { findTool, requireTool } from '../helpers/tools.js';
import { runCli, tmpDir } from './cli-helpers.js';

describe('blockmirror demo', () => {
  test('runs every step, verifies identical images, cleans up and exits 0', { timeout: 120_000 }, async (t) => {
    const started = performance.now();
    const r = await runCli(t, ['demo']);
    const seconds = (performance.now() - started) / 1000;
    assert.equal(r.code, 0, `exit ${r.code ?? r.signal}\nstdout:\n${r.stdout}\nstderr:\n${r.stderr}`);
    assert.equal(r.stderr, '');
    for (let i = 1; i <= 10; i++) assert.match(r.stdout, new RegExp(`^\\[ *\\d+\\.\\d\\ds\\] step ${i}/10: `, 'm'), `step ${i}`);
    assert.match(r.stdout, /step 1\/10: write a workload (through NBD with (qemu-io|nbdcopy)|through the library API)/);
    assert.match(r.stdout, /after burst 2: sync0: lagging, [\d.]+ [KM]iB pending; async0: lagging, [\d.]+ [KM]iB pending/);
    assert.match(r.stdout, /^note: the primary sends UDP heartbeats/m);
    assert.match(r.stdout, /link up \d+ ms after the heal/);
    // cycle mode: the first freeze copies the whole volume — its data as bytes, its zero runs as range records (issue 13) —,
    // the second only the changed blocks (plus tables and framing)
    const c1 = /cycle 1: ([\d.]+) MiB on the wire in \d+ ms \(first freeze: the whole 64\.0 MiB volume, ([\d.]+) MiB of data; its zero runs go as range records\)/.exec(r.stdout);
    assert.ok(c1 !== null, 'cycle 1 line');
    assert.ok(Number(c1[1]) >= Number(c1[2]) && Number(c1[1]) <= 1.1 * Number(c1[2]), `cycle 1 sent ${c1[1]} MiB for ${c1[2]} MiB of data`);
    const c2 = /cycle 2: ([\d.]+) KiB on the wire in \d+ ms after 64 writes of 4\.0 KiB \(256\.0 KiB changed\)/.exec(r.stdout);
    assert.ok(c2 !== null, 'cycle 2 line');
    assert.ok(Number(c2[1]) >= 256 && Number(c2[1]) <= 1.1 * 256 + 16, `cycle 2 sent ${c2[1]} KiB for 256 KiB changed`);
    // Two hash rows per volume; each mirror row says identical and repeats the primary's hash.
    for (const vol of ['sync0 \\(sync\\)', 'async0 \\(async\\)', 'cycle0 \\(cycle\\)']) {
      const m = new RegExp(`^ +${vol} +primary +([0-9a-f]{64})\\s*\\n +mirror +([0-9a-f]{64}) +identical$`, 'm').exec(r.stdout);
      assert.ok(m !== null, `hash rows of ${vol}`);
      assert.equal(m[1], m[2]);
    }
    assert.match(r.stdout, /^ +sync0 +sync +in-sync +yes +up-to-date +up-to-date +- +now +0 B /m, 'final table: sync0 in sync');
    assert.match(r.stdout, /^ +async0 +async +in-sync +yes +up-to-date +up-to-date +- +now +0 B /m, 'final table: async0 in sync');
    const lines = r.stdout.trimEnd().split('\n');
    assert.match(lines.at(-1)!, /^demo ok: primary and mirror images identical \(3 volumes\) in \d+\.\ds$/);
    const dir = /^working directory (.+)$/m.exec(r.stdout)?.[1];
    assert.ok(dir !== undefined);
    await assert.rejects(fs.stat(dir), { code: 'ENOENT' }, 'temporary directory removed');
    t.diagnostic(`demo took ${seconds.toFixed(1)} s (child process, including tsx start-up)`);
  });

  test('without qemu-io it writes with nbdcopy; without any NBD client through the API, and says so', { timeout: 120_000 }, async (t) => {
    if (!requireTool('nbdcopy', t)) return;
    const bin = await tmpDir(t, 'blockmirror-demo-path-');
    await fs.symlink(findTool('nbdcopy')!, path.join(bin, 'nbdcopy'));
    const [withCopy, withApi] = await Promise.all([runCli(t, ['demo'], { env: { PATH: bin } }), runCli(t, ['demo'], { env: { PATH: path.join(bin, 'none') } })]);
    for (const r of [withCopy, withApi]) {
      assert.equal(r.code, 0, `exit ${r.code ?? r.signal}\nstdout:\n${r.stdout}\nstderr:\n${r.stderr}`);
      assert.match(r.stdout.trimEnd().split('\n').at(-1)!, /^demo ok: primary and mirror images identical/);
    }
    assert.match(withCopy.stdout, /step 1\/10: write a workload through NBD with nbdcopy/);
    assert.match(withApi.stdout, /step 1\/10: write a workload through the library API \(no NBD client found: install qemu-utils or libnbd-bin/);
  });
});
