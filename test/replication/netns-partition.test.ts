import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface, type Interface } from 'node:readline';
import { requireTool } from '../helpers/tools.js';

const fixture = new URL('./fixtures/netns-node.ts', import.meta.url).pathname;

/** Line-oriented control of a fixture process. */
class Node {
  readonly child: ChildProcess;
  readonly #lines: Interface;
  readonly #waiters: Array<{ match: (l: string) => boolean; resolve: (l: string) => void }> = [];
  readonly seen: string[] = [];

  constructor(child: ChildProcess) {
    this.child = child;
    this.#lines = createInterface({ input: child.stdout! });
    this.#lines.on('line', (line) => {
      this.seen.push(line);
      const i = this.#waiters.findIndex((w) => w.match(line));
      if (i >= 0) this.#waiters.splice(i, 1)[0]!.resolve(line);
    });
  }

  /** Resolves with the first line (already seen from `from` on, or later) that starts with `prefix`. */
  wait(prefix: string, from = 0): Promise<string> {
    const earlier = this.seen.slice(from).find((l) => l.startsWith(prefix));
    if (earlier !== undefined) return Promise.resolve(earlier);
    return new Promise((resolve) => this.#waiters.push({ match: (l) => l.startsWith(prefix), resolve }));
  }

  send(line: string): void {
    this.child.stdin!.write(`${line}\n`);
  }
}

function sh(args: string[]): void {
  execFileSync(args[0]!, args.slice(1), { stdio: 'pipe' });
}

test('SPEC 4-9: a real partition between two network namespaces (iptables DROP mid-workload) loses nothing; after healing the images are identical', async (t) => {
  if (!requireTool(['ip', 'iptables'], t)) return;
  if (process.getuid?.() !== 0) {
    if (process.env.CI === 'true') throw new Error('this test needs root (network namespaces); CI runs as root');
    t.skip('needs root for ip netns');
    return;
  }
  const id = `${process.pid % 100000}`;
  const nsA = `bm-a-${id}`;
  const nsB = `bm-b-${id}`;
  const vethA = `bma${id}`;
  const vethB = `bmb${id}`;
  const dir = await mkdtemp(join(tmpdir(), 'bm-netns-'));
  const nodes: Node[] = [];
  try {
    sh(['ip', 'netns', 'add', nsA]);
    sh(['ip', 'netns', 'add', nsB]);
    sh(['ip', 'link', 'add', vethA, 'type', 'veth', 'peer', 'name', vethB]);
    sh(['ip', 'link', 'set', vethA, 'netns', nsA]);
    sh(['ip', 'link', 'set', vethB, 'netns', nsB]);
    sh(['ip', '-n', nsA, 'addr', 'add', '10.77.0.1/24', 'dev', vethA]);
    sh(['ip', '-n', nsB, 'addr', 'add', '10.77.0.2/24', 'dev', vethB]);
    for (const [ns, dev] of [[nsA, vethA], [nsB, vethB]] as const) {
      sh(['ip', '-n', ns, 'link', 'set', dev, 'up']);
      sh(['ip', '-n', ns, 'link', 'set', 'lo', 'up']);
    }
    const run = (ns: string, args: string[]): Node => {
      const child = spawn('ip', ['netns', 'exec', ns, process.execPath, '--import', 'tsx', fixture, ...args], { stdio: ['pipe', 'pipe', 'inherit'] });
      const node = new Node(child);
      nodes.push(node);
      return node;
    };
    const target = run(nsB, ['target', '10.77.0.2', join(dir, 'mirror.img')]);
    const port = (await target.wait('listening ')).split(' ')[1]!;
    const primary = run(nsA, ['primary', '10.77.0.2', port, join(dir, 'primary.img'), join(dir, 'journal')]);
    await primary.wait('link up');
    primary.send('write 200');
    await primary.wait('wrote 200');

    // partition: drop everything between the namespaces (TCP and UDP), as a cable cut would
    const mark = primary.seen.length;
    sh(['ip', 'netns', 'exec', nsA, 'iptables', '-A', 'INPUT', '-s', '10.77.0.2', '-j', 'DROP']);
    sh(['ip', 'netns', 'exec', nsA, 'iptables', '-A', 'OUTPUT', '-d', '10.77.0.2', '-j', 'DROP']);
    primary.send('write 300');
    await primary.wait('link down', mark);
    const wrote = await primary.wait('wrote 500', mark);
    assert.ok(Number(/journal=(\d+)/.exec(wrote)![1]) > 0, `writes journaled during the partition: ${wrote}`);

    const heal = primary.seen.length;
    sh(['ip', 'netns', 'exec', nsA, 'iptables', '-D', 'INPUT', '-s', '10.77.0.2', '-j', 'DROP']);
    sh(['ip', 'netns', 'exec', nsA, 'iptables', '-D', 'OUTPUT', '-d', '10.77.0.2', '-j', 'DROP']);
    await primary.wait('link probation', heal);
    await primary.wait('link up', heal);
    primary.send('write 100');
    await primary.wait('wrote 600', heal);
    primary.send('drain');
    await primary.wait('drained', heal);
    primary.send('hash');
    target.send('hash');
    const [a, b] = await Promise.all([primary.wait('hash '), target.wait('hash ')]);
    assert.equal(b, a, 'mirror image == primary image');
  } finally {
    for (const n of nodes) {
      n.send('quit');
      await new Promise<void>((resolve) => {
        if (n.child.exitCode !== null || n.child.signalCode !== null) resolve();
        else n.child.once('exit', () => resolve());
        setTimeout(() => n.child.kill('SIGKILL'), 10000).unref();
      });
    }
    for (const ns of [nsA, nsB]) {
      try {
        sh(['ip', 'netns', 'del', ns]);
      } catch {
        // not created
      }
    }
    await rm(dir, { recursive: true, force: true });
  }
});
