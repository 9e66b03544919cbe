/**
 * Issue 12, items 6–9, with real `blockmirror` processes: heartbeat settings
 * given to one side only, start-up order (every listener bound before the
 * mirror is contacted), persistent node ids and wall-clock times in status,
 * and what the mirror and the primary log.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import dgram from 'node:dgram';
import fs from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { describe, test } from 'node:test';
import type { TestContext } from 'node:test';
import { RawClient } from '../nbd/raw-client.js';
import { CliProcess, listeningAddresses, oneErrorLine, runCli, tmpDir } from './cli-helpers.js';

const ISO = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/;

interface Status {
  role: string;
  node: string;
  peers: Array<{
    address: string;
    link: string;
    node?: string;
    connections: unknown;
    lastSeenAt?: string;
    heartbeatIntervalMs?: number;
    staleAfterMs?: number;
    heartbeats?: { received: number; lastReceivedAt?: string; intervalMs: number; staleAfterMs: number; [k: string]: unknown };
    [k: string]: unknown;
  }>;
  volumes: Record<string, { state: string; primary?: string; [k: string]: unknown }>;
}

async function status(port: number): Promise<Status> {
  const res = await fetch(`http://127.0.0.1:${port}/status`);
  assert.equal(res.status, 200);
  return (await res.json()) as Status;
}

/**
 * Polls the admin endpoint at `port` until `done(status)` holds (processes
 * report nothing else to wait on); fails at once when `abort()` returns a reason.
 */
async function statusUntil(port: number, done: (s: Status) => boolean, abort: () => string | undefined = () => undefined, timeout = 60_000): Promise<Status> {
  const deadline = Date.now() + timeout;
  for (;;) {
    const reason = abort();
    if (reason !== undefined) throw new Error(reason);
    const s = await status(port);
    if (done(s)) return s;
    if (Date.now() > deadline) throw new Error(`status never matched within ${timeout} ms: ${JSON.stringify(s)}`);
    await new Promise<void>((resolve) => setTimeout(resolve, 50));
  }
}

async function usedPort(t: TestContext): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen({ host: '127.0.0.1', port: 0 }, () => resolve()));
  t.after(() => new Promise<void>((resolve) => server.close(() => resolve())));
  return (server.address() as net.AddressInfo).port;
}

/**
 * A TCP listener and a UDP socket on one port that record every contact: where
 * a primary would find its mirror (connections and heartbeats).
 */
async function sentinel(t: TestContext): Promise<{ port: number; contacts(): Promise<{ tcp: number; udp: number }> }> {
  let tcp = 0;
  let udp = 0;
  let probes = 0;
  const server = net.createServer((socket) => {
    tcp++;
    socket.on('error', () => undefined);
    socket.destroy();
  });
  await new Promise<void>((resolve) => server.listen({ host: '127.0.0.1', port: 0 }, () => resolve()));
  const port = (server.address() as net.AddressInfo).port;
  const socket = dgram.createSocket('udp4');
  socket.on('message', () => udp++);
  await new Promise<void>((resolve) => socket.bind(port, '127.0.0.1', () => resolve()));
  t.after(async () => {
    await new Promise<void>((resolve) => server.close(() => resolve()));
    await new Promise<void>((resolve) => socket.close(() => resolve()));
  });
  return {
    port,
    // a contact of our own, after everything the primary could have sent (both queues are FIFO)
    async contacts() {
      const before = { tcp, udp };
      await new Promise<void>((resolve, reject) => {
        const c = net.connect({ host: '127.0.0.1', port }, () => undefined);
        c.on('error', () => undefined);
        c.on('close', () => (tcp > before.tcp ? resolve() : reject(new Error('own probe not seen'))));
      });
      const probe = dgram.createSocket('udp4');
      await new Promise<void>((resolve) => {
        const seen = (): void => {
          socket.off('message', seen);
          resolve();
        };
        socket.on('message', seen);
        probe.send(Buffer.from('probe'), port, '127.0.0.1');
      });
      probe.close();
      probes++;
      return { tcp: tcp - probes, udp: udp - probes };
    },
  };
}

function nodeOf(p: CliProcess): Promise<string> {
  return p.waitForLine(/^node \S+$/).then((l) => l.slice('node '.length));
}

async function startMirror(t: TestContext, args: string[]): Promise<{ proc: CliProcess; addrs: ReturnType<typeof listeningAddresses> }> {
  const proc = new CliProcess(t, ['mirror', '--listen', '127.0.0.1:0', ...args]);
  const line = await proc.waitForLine(/^listening mirror=/);
  return { proc, addrs: listeningAddresses(line) };
}

describe('blockmirror pairing operations (issue 12)', () => {
  test('issue 12: primary --heartbeat-interval 100 --stale-after 400 with a mirror on defaults: the mirror follows, the link comes up and stays up', async (t) => {
    const dir = await tmpDir(t);
    const mirror = await startMirror(t, ['--volume', `v=${path.join(dir, 'm.img')}:1M`, '--admin', '127.0.0.1:0']);
    const primary = new CliProcess(t, [
      'primary', '--peer', `127.0.0.1:${mirror.addrs.mirror!.port}`,
      '--volume', `v=${path.join(dir, 'p.img')}:1M`,
      '--heartbeat-interval', '100', '--stale-after', '400',
      '--admin', '127.0.0.1:0',
    ]);
    const p = listeningAddresses(await primary.waitForLine(/^listening /));
    await primary.waitForLine(/^link up peer=/);
    const flapped = (): string | undefined => {
      const line = primary.lines.find((l) => /^link (down|probation)/.test(l)) ?? mirror.proc.lines.find((l) => /^link (down|probation)/.test(l));
      return line === undefined ? undefined : `the link flapped: ${line}\nprimary: ${primary.stdout}\nmirror: ${mirror.proc.stdout}`;
    };
    // 30 heartbeats from the mirror: 3 s at the primary's 100 ms (the mirror's own 1500 ms would take 45 s, and the
    // primary would have declared the link down after 400 ms)
    const s = await statusUntil(p.admin!.port, (st) => (st.peers[0]!.heartbeats?.received ?? 0) >= 30, flapped);
    assert.equal(flapped(), undefined);
    assert.equal(s.peers[0]!.link, 'up');
    assert.deepEqual([s.peers[0]!.heartbeats!.intervalMs, s.peers[0]!.heartbeats!.staleAfterMs], [100, 400]);
    const m = await status(mirror.addrs.admin!.port);
    assert.deepEqual(
      m.peers.map((peer) => [peer.link, peer.heartbeatIntervalMs, peer.staleAfterMs]),
      [['up', 100, 400]],
      'the mirror uses the primary\'s settings for it',
    );
    assert.equal((await primary.stop('SIGTERM')).code, 0, primary.stderr);
    assert.equal((await mirror.proc.stop('SIGTERM')).code, 0, mirror.proc.stderr);
  });

  test('issue 12: NBD or admin port in use: the primary exits with BM_ERR_ADDRESS_IN_USE before contacting the mirror; the mirror volume stays unclaimed and a correct primary connects right after', async (t) => {
    const dir = await tmpDir(t);
    const taken = await usedPort(t);
    // where the mirror would be: nothing may reach it
    const watch = await sentinel(t);
    for (const flag of ['--nbd', '--admin']) {
      const r = await runCli(t, ['primary', '--peer', `127.0.0.1:${watch.port}`, '--volume', `v=${path.join(dir, 'x.img')}:1M`, flag, `127.0.0.1:${taken}`]);
      assert.equal(r.code, 1, r.stderr);
      assert.deepEqual(await watch.contacts(), { tcp: 0, udp: 0 }, `${flag} in use: the primary contacted nobody (no connection, no heartbeat)`);
      const line = oneErrorLine(r.stderr);
      assert.equal(line.code, 'BM_ERR_ADDRESS_IN_USE', r.stderr);
      assert.match(line.message, flag === '--nbd' ? /NBD/ : /admin/);
    }

    // against a real mirror
    const mirror = await startMirror(t, ['--volume', `v=${path.join(dir, 'm.img')}:1M`, '--admin', '127.0.0.1:0']);
    const failed = new CliProcess(t, ['primary', '--peer', `127.0.0.1:${mirror.addrs.mirror!.port}`, '--volume', `v=${path.join(dir, 'failed.img')}:1M`, '--nbd', `127.0.0.1:${taken}`]);
    const failedNode = await nodeOf(failed);
    assert.equal((await failed.exited).code, 1, failed.stderr);
    assert.equal(oneErrorLine(failed.stderr).code, 'BM_ERR_ADDRESS_IN_USE');
    const unclaimed = await status(mirror.addrs.admin!.port);
    assert.deepEqual(unclaimed.peers, [], 'no peer on the mirror');
    assert.equal(unclaimed.volumes.v!.state, 'unclaimed');

    const good = new CliProcess(t, ['primary', '--peer', `127.0.0.1:${mirror.addrs.mirror!.port}`, '--volume', `v=${path.join(dir, 'good.img')}:1M`, '--nbd', '127.0.0.1:0']);
    const goodNode = await nodeOf(good);
    await good.waitForLine(/^link up peer=/);
    const s = await status(mirror.addrs.admin!.port);
    assert.deepEqual(s.peers.map((peer) => peer.node), [goodNode], 'only the correct primary is a peer of the mirror');
    assert.equal(s.volumes.v!.primary, goodNode);
    assert.notEqual(failedNode, goodNode);
    assert.ok(!mirror.proc.stdout.includes(failedNode) && !mirror.proc.stderr.includes(failedNode), `the mirror never heard of ${failedNode}:\n${mirror.proc.stdout}\n${mirror.proc.stderr}`);
    assert.equal((await good.stop('SIGTERM')).code, 0, good.stderr);
    assert.equal((await mirror.proc.stop('SIGTERM')).code, 0, mirror.proc.stderr);
  });

  test('issue 12: node ids are generated once and kept in --state-dir across restarts of both sides; status times are wall-clock ISO strings', async (t) => {
    const dir = await tmpDir(t);
    const mState = path.join(dir, 'mirror-state');
    const pState = path.join(dir, 'primary-state');
    const mArgs = ['--volume', `v=${path.join(dir, 'm.img')}:1M`, '--admin', '127.0.0.1:0', '--state-dir', mState];
    const mirror = await startMirror(t, mArgs);
    const mNode = (await status(mirror.addrs.admin!.port)).node;
    const port = mirror.addrs.mirror!.port;
    const pArgs = ['primary', '--peer', `127.0.0.1:${port}`, '--volume', `v=${path.join(dir, 'p.img')}:1M`, '--journal', path.join(dir, 'journal'), '--admin', '127.0.0.1:0', '--state-dir', pState, '--probation', '300'];
    let primary = new CliProcess(t, pArgs);
    await primary.waitForLine(/^link up peer=/);
    let p = listeningAddresses(await primary.waitForLine(/^listening /));
    const pNode = (await status(p.admin!.port)).node;
    assert.match(pNode, /^primary-[0-9a-f]{8}$/);
    assert.match(mNode, /^target-[0-9a-f]{8}$/);
    assert.equal(await nodeOf(primary), pNode, 'printed at start');
    assert.equal(await nodeOf(mirror.proc), mNode, 'printed at start');

    // JSON times: wall-clock, not milliseconds since the process started
    const ps = await statusUntil(p.admin!.port, (st) => st.peers[0]!.heartbeats?.lastReceivedAt !== undefined);
    const near = (iso: string | undefined, what: string): void => {
      assert.match(iso ?? '', ISO, what);
      assert.ok(Math.abs(Date.parse(iso!) - Date.now()) < 60_000, `${what} is a wall-clock time: ${iso}`);
    };
    near(ps.peers[0]!.heartbeats!.lastReceivedAt, 'primary peers[0].heartbeats.lastReceivedAt');
    for (const c of ps.peers[0]!.connections as Array<Record<string, unknown>>) {
      near(c.lastHeartbeatAt as string, 'primary peers[0].connections[].lastHeartbeatAt');
      assert.equal(c.lastHeartbeat, undefined, 'no clock-relative number');
    }
    assert.equal(ps.peers[0]!.heartbeats!.lastReceived, undefined, 'no clock-relative number');
    const ms = await status(mirror.addrs.admin!.port);
    near(ms.peers[0]!.lastSeenAt, 'mirror peers[0].lastSeenAt');

    // the primary restarts: same node id, the mirror lists it once
    assert.equal((await primary.stop('SIGTERM')).code, 0, primary.stderr);
    primary = new CliProcess(t, pArgs);
    await primary.waitForLine(/^link up peer=/);
    p = listeningAddresses(await primary.waitForLine(/^listening /));
    assert.equal((await status(p.admin!.port)).node, pNode, 'the restarted primary keeps its node id');
    const connected = mirror.proc.lines.filter((l) => l.startsWith('peer connected '));
    assert.equal(connected.length, 2, connected.join('\n'));
    assert.ok(connected.every((l) => l.startsWith(`peer connected node=${pNode} `)), connected.join('\n'));
    assert.deepEqual((await status(mirror.addrs.admin!.port)).peers.map((peer) => peer.node), [pNode]);

    // the mirror restarts on its port: same node id, and the primary sees it again
    assert.equal((await mirror.proc.stop('SIGTERM')).code, 0, mirror.proc.stderr);
    await primary.waitForLine(/^link down /);
    const again = new CliProcess(t, ['mirror', '--listen', `127.0.0.1:${port}`, ...mArgs]);
    const m2 = listeningAddresses(await again.waitForLine(/^listening /));
    assert.equal((await status(m2.admin!.port)).node, mNode, 'the restarted mirror keeps its node id');
    await statusUntil(p.admin!.port, (st) => st.peers[0]!.link === 'up' && st.peers[0]!.node === mNode);
    assert.ok((await fs.readdir(pState)).includes('node-id'));
    assert.ok((await fs.readdir(mState)).includes('node-id'));
    assert.equal((await primary.stop('SIGTERM')).code, 0, primary.stderr);
    assert.equal((await again.stop('SIGTERM')).code, 0, again.stderr);
  });

  test('issue 12: the mirror logs refused primaries (auth, mismatch, busy, split brain) with their address, disconnects and link changes; the primary prints journal replay completion', async (t) => {
    const dir = await tmpDir(t);
    await fs.writeFile(path.join(dir, 'secret'), 'right\n');
    await fs.writeFile(path.join(dir, 'wrong'), 'wrong\n');
    const secret = ['--secret-file', path.join(dir, 'secret')];
    const mArgs = ['--volume', `v=${path.join(dir, 'm.img')}:1M`, '--state-dir', path.join(dir, 'mirror-state'), ...secret];
    const first = await startMirror(t, mArgs);
    const port = first.addrs.mirror!.port;
    const peer = `127.0.0.1:${port}`;
    const refusal = (code: string, node: string): RegExp => new RegExp(`^blockmirror: warning: refused primary node=${node} address=127\\.0\\.0\\.1:\\d+: ${code}: `);
    const waitStderr = (p: CliProcess, re: RegExp): Promise<string> => p.waitForStderrLine(re);

    const wrong = await runCli(t, ['primary', '--peer', peer, '--volume', `v=${path.join(dir, 'w.img')}:1M`, '--state-dir', path.join(dir, 'w-state'), '--secret-file', path.join(dir, 'wrong')]);
    assert.equal(oneErrorLine(wrong.stderr).code, 'BM_ERR_AUTH_FAILED');
    const wrongNode = /^node (\S+)$/m.exec(wrong.stdout)![1]!;
    await waitStderr(first.proc, refusal('BM_ERR_AUTH_FAILED', wrongNode));

    const big = await runCli(t, ['primary', '--peer', peer, '--volume', `v=${path.join(dir, 'b.img')}:2M`, '--state-dir', path.join(dir, 'b-state'), ...secret]);
    assert.equal(oneErrorLine(big.stderr).code, 'BM_ERR_VOLUME_MISMATCH');
    await waitStderr(first.proc, refusal('BM_ERR_VOLUME_MISMATCH', /^node (\S+)$/m.exec(big.stdout)![1]!));

    // the rightful primary, async with a journal
    const pArgs = ['primary', '--peer', peer, '--volume', `v=${path.join(dir, 'p.img')}:1M`, '--mode', 'async', '--journal', path.join(dir, 'journal'), '--nbd', '127.0.0.1:0', '--state-dir', path.join(dir, 'p-state'), '--drain-timeout', '100', ...secret];
    let primary = new CliProcess(t, pArgs);
    const pNode = await nodeOf(primary);
    await primary.waitForLine(/^link up peer=/);
    await first.proc.waitForLine(new RegExp(`^peer connected node=${pNode} address=127\\.0\\.0\\.1:\\d+$`));
    await first.proc.waitForLine(new RegExp(`^link up node=${pNode} address=127\\.0\\.0\\.1 reason=connected$`));

    // a second primary for the same volume: busy
    const busy = new CliProcess(t, ['primary', '--peer', peer, '--volume', `v=${path.join(dir, 'o.img')}:1M`, '--state-dir', path.join(dir, 'o-state'), ...secret]);
    await waitStderr(first.proc, refusal('BM_ERR_VOLUME_BUSY', await nodeOf(busy)));
    await busy.stop('SIGKILL');

    // one line per refusal, not one per connection attempt
    const refused = first.proc.stderr.split('\n').filter((l) => l.includes('refused primary'));
    assert.deepEqual(refused.map((l) => /: (BM_ERR_[A-Z_]+): /.exec(l)![1]), ['BM_ERR_AUTH_FAILED', 'BM_ERR_VOLUME_MISMATCH', 'BM_ERR_VOLUME_BUSY'], refused.join('\n'));

    // the mirror stops while the primary writes: the writes wait in the journal
    assert.equal((await first.proc.stop('SIGTERM')).code, 0, first.proc.stderr);
    await primary.waitForLine(/^link down /);
    const nbd = listeningAddresses(primary.lines.find((l) => l.startsWith('listening '))!).nbd!;
    const data = randomBytes(256 * 1024);
    const client = await RawClient.connect(nbd.port);
    t.after(() => client.destroy());
    await client.go('v');
    assert.equal(await client.writeAt(1, 0, data), 0);
    await client.disconnect();
    assert.equal((await primary.stop('SIGTERM')).code, 0, primary.stderr);

    // both come back: the primary replays its journal and says so
    const mirror = new CliProcess(t, ['mirror', '--listen', peer, ...mArgs]);
    await mirror.waitForLine(/^listening /);
    primary = new CliProcess(t, pArgs);
    const replay = await primary.waitForLine(/^journal replay volume=v /);
    assert.match(replay, /^journal replay volume=v records=\d+ bytes=262144$/);
    const done = await primary.waitForLine(/^journal replay done volume=v /);
    assert.match(done, /^journal replay done volume=v records=\d+ bytes=262144 ms=\d+$/);
    assert.equal(/records=(\d+)/.exec(done)![1], /records=(\d+)/.exec(replay)![1]);

    // an unrelated primary (its own lineage) is refused as split brain while the volume holds the rightful one's data
    assert.equal((await primary.stop('SIGTERM')).code, 0, primary.stderr);
    await mirror.waitForLine(new RegExp(`^peer disconnected node=${pNode} address=127\\.0\\.0\\.1( code=.*)?$`));
    await mirror.waitForLine(new RegExp(`^link down node=${pNode} address=127\\.0\\.0\\.1 reason=connections-failed$`));
    const stranger = new CliProcess(t, ['primary', '--peer', peer, '--volume', `v=${path.join(dir, 's.img')}:1M`, '--state-dir', path.join(dir, 's-state'), ...secret]);
    await waitStderr(mirror, refusal('BM_ERR_SPLIT_BRAIN', await nodeOf(stranger)));
    await stranger.stop('SIGKILL');
    assert.equal((await mirror.stop('SIGTERM')).code, 0);
    assert.ok((await fs.readFile(path.join(dir, 'm.img'))).subarray(0, data.length).equals(data), 'the replayed writes reached the mirror');
    const lines = mirror.stderr.split('\n').filter((l) => l.includes('refused primary'));
    assert.equal(lines.length, 1, lines.join('\n'));
  });
});
