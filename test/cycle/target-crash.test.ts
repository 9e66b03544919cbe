/**
 * SPEC 31/33: a cycle target killed with SIGKILL (a real child process)
 * during a merge, or while a transfer streams in, holds exactly freeze k-1 or
 * freeze k when it restarts — never a mix — and the source then completes.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { randomInt } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface, type Interface } from 'node:readline';
import { after, describe, it } from 'node:test';
import { createCycleSource } from '../../src/cycle/cycle-runner.js';
import { TcpTransport } from '../../src/transport/tcp.js';
import { linksUp, openVolume, pattern, subDir, tempDir, waitFor } from './helpers.js';

const root = tempDir('sigkill');
after(root.cleanup);
const fixture = new URL('./fixtures/cycle-target-process.ts', import.meta.url).pathname;
const MiB = 1024 * 1024;

interface Child {
  proc: ChildProcess;
  lines: Interface;
  exited: Promise<NodeJS.Signals | null>;
  /** Resolves with the first line starting with `prefix` (its words after the prefix). */
  line(prefix: string): Promise<string[]>;
}

function spawnTarget(dir: string, size: number, port: number, slowMs: number): Child {
  const proc = spawn(process.execPath, ['--import', 'tsx', fixture, dir, String(size), String(port), String(slowMs)], { stdio: ['ignore', 'pipe', 'inherit'] });
  const lines = createInterface({ input: proc.stdout! });
  const seen: string[] = [];
  const waiters: Array<{ prefix: string; resolve: (w: string[]) => void }> = [];
  const matches = (l: string, prefix: string): boolean => l === prefix || l.startsWith(`${prefix} `);
  const words = (l: string, prefix: string): string[] => l.slice(prefix.length + 1).split(' ').filter((w) => w !== '');
  lines.on('line', (l) => {
    seen.push(l);
    for (const w of [...waiters]) {
      if (matches(l, w.prefix)) {
        waiters.splice(waiters.indexOf(w), 1);
        w.resolve(words(l, w.prefix));
      }
    }
  });
  const exited = new Promise<NodeJS.Signals | null>((resolve) => proc.once('exit', (_c, signal) => resolve(signal)));
  after(() => void proc.kill('SIGKILL'));
  return {
    proc,
    lines,
    exited,
    line: (prefix) => {
      const found = seen.find((l) => matches(l, prefix));
      if (found !== undefined) return Promise.resolve(words(found, prefix));
      return new Promise((resolve) => waiters.push({ prefix, resolve }));
    },
  };
}

describe('cycle target crash', () => {
  it('SPEC 31/33: killed with SIGKILL during the merge or during the copy, the target restarts with exactly freeze k-1 or freeze k', { timeout: 60000 }, async () => {
    const dir = subDir(root.dir, 'run');
    const tdir = subDir(dir, 'target');
    const size = 4 * MiB;
    let child = spawnTarget(tdir, size, 0, 3);
    const [portText, freeze0] = await child.line('ready');
    const port = Number(portText);
    assert.equal(freeze0, '0');
    const v = await openVolume(dir, 'p.img', size, { chunkSize: 256 * 1024 });
    const source = await createCycleSource({
      volumes: [{ name: 'v', volume: v }],
      targets: [{ host: '127.0.0.1', port }],
      transport: new TcpTransport(),
      interval: 0,
      retryDelay: { min: 20, max: 200 },
      bandwidth: 16 * MiB,
    });
    const mirror = (): Buffer => readFileSync(join(tdir, 'mirror.img'));
    const scatter = async (seed: number): Promise<void> => {
      for (let i = 0; i < 200; i++) await v.write(randomInt(size / 4096) * 4096, pattern(4096, seed + i));
    };
    try {
      await linksUp(source);
      await v.write(0, pattern(size, 1));
      assert.equal((await source.freezeNow()).targets[0]!.ok, true);
      const image1 = await v.read(0, size);

      // 1. killed while merging freeze 2 (the image writes are slow): the commit marker is durable → replayed
      await scatter(1000);
      const cycle2 = source.freezeNow();
      await child.line('merge-start 2');
      child.proc.kill('SIGKILL');
      assert.equal(await child.exited, 'SIGKILL');
      const r2 = await cycle2;
      assert.equal(r2.targets[0]!.ok, false, 'the source saw the copy fail');
      const image2 = await v.readFrozen(2, 0, size);
      assert.ok(!image2.equals(image1));
      const up = waitFor(source, 'target-link', (i: { state: string }) => i.state === 'up');
      child = spawnTarget(tdir, size, port, 0);
      const [, held2] = await child.line('ready');
      assert.equal(held2, '2', 'the interrupted merge was replayed: freeze 2');
      assert.ok(mirror().equals(image2), 'exactly the image of freeze 2');
      await up;

      // 2. killed while freeze 3 streams in (before its commit marker): freeze 2 stays
      await scatter(5000);
      const cycle3 = source.freezeNow();
      await child.line('begin 3');
      child.proc.kill('SIGKILL');
      await child.exited;
      await cycle3;
      const image3 = await v.readFrozen(3, 0, size);
      const back = waitFor(source, 'target-committed', (i: { cycle: number }) => i.cycle === 3);
      child = spawnTarget(tdir, size, port, 0);
      const [, held3] = await child.line('ready');
      assert.ok(held3 === '2' || held3 === '3', `freeze k-1 or k, got ${held3}`);
      assert.ok(mirror().equals(held3 === '2' ? image2 : image3), `exactly the image of freeze ${held3}`);
      await back; // the source catches up
      assert.ok(mirror().equals(image3), 'after the retry: freeze 3');
    } finally {
      await source.close();
      await v.close();
      child.proc.kill('SIGKILL');
      await child.exited;
    }
  });
});
