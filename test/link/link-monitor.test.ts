import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { BlockMirrorError } from '../../src/errors.js';
import { decodeFrame } from '../../src/codec/decoder.js';
import { encodeHeartbeat, parseHeartbeat, type Heartbeat } from '../../src/link/heartbeat.js';
import { LinkMonitor } from '../../src/link/link-monitor.js';
import { LATENCY, bindSide, entered, virtualPair, type Pair } from './harness.js';

const I = 1500;
const S = 4000;
const P = 10000;
const SECRET = Buffer.from('shared secret of A and B');

function decoded(datagram: Buffer): Heartbeat {
  const frame = decodeFrame(datagram);
  assert.ok(frame !== null, 'frame !== null');
  return parseHeartbeat(frame.header);
}

/** First multiple of `interval` (a send time of a monitor started at 0) strictly after `t`. */
function firstSendAfter(t: number, interval: number): number {
  return (Math.floor(t / interval) + 1) * interval;
}

/** Starts a at 0 and b at `phase`, and reports both connected (state up). */
function startBoth(pair: Pair, phase: number): void {
  pair.a.monitor.start();
  pair.a.monitor.connected();
  pair.fake.setTimeout(() => {
    pair.b.monitor.start();
    pair.b.monitor.connected();
  }, phase);
  if (phase === 0) pair.until(0);
}

describe('LinkMonitor in virtual time', () => {
  it('SPEC 1: no heartbeat before start(); sending begins at start()', async () => {
    const pair = await virtualPair();
    const { a } = pair;
    pair.until(60_000);
    assert.equal(a.sends.length, 0);
    assert.equal(pair.network.datagramsSent, 0);
    assert.equal(a.monitor.status().heartbeatsSent, 0);
    assert.equal(a.monitor.state, 'connecting');
    assert.deepEqual(a.transitions, []);
    assert.ok(a.slots.slots.every((s) => s.status === 'open' && s.lastHeartbeat === 0), 'slots untouched');

    a.monitor.start();
    assert.deepEqual(a.sends.map((s) => s.t), [60_000]);
    pair.until(60_000 + 3 * I);
    assert.deepEqual(a.sends.map((s) => s.t), [60_000, 61_500, 63_000, 64_500]);
    await pair.stop();
  });

  it('SPEC 3: a heartbeat every 1.5 s with node, session, seq, time and status; a received one refreshes every slot', async () => {
    const pair = await virtualPair();
    const { a, b } = pair;
    a.slots.slots[1]!.status = 'closed';
    a.slots.slots[2]!.status = 'connecting';
    a.monitor.start();
    pair.fake.setTimeout(() => b.monitor.start(), 700);

    pair.until(700);
    assert.ok(a.slots.slots.every((s) => s.lastHeartbeat === 0), 'no heartbeat received yet');
    pair.until(700 + LATENCY); // b's first heartbeat (sent at 700) arrives
    assert.deepEqual(a.slots.slots.map((s) => s.lastHeartbeat), [701, 701, 701, 701]);
    pair.until(2200);
    assert.deepEqual(a.slots.slots.map((s) => s.lastHeartbeat), [701, 701, 701, 701]);
    pair.until(2201);
    assert.deepEqual(a.slots.slots.map((s) => s.lastHeartbeat), [2201, 2201, 2201, 2201]);
    assert.equal(a.slots.slots[1]!.status, 'closed', 'refresh does not reopen a slot');

    a.monitor.connected();
    pair.until(15_000);
    assert.deepEqual(
      a.sends.map((s) => s.t),
      Array.from({ length: 11 }, (_, k) => k * I),
    );
    const hbs = a.sends.map((s) => decoded(s.datagram));
    assert.deepEqual(hbs.map((h) => h.seq), Array.from({ length: 11 }, (_, k) => k + 1));
    assert.deepEqual(hbs.map((h) => h.time), a.sends.map((s) => s.t));
    assert.ok(hbs.every((h) => h.node === 'A' && h.session === a.monitor.session && h.mac === undefined), 'node, session, no MAC without a secret');
    assert.equal(hbs[1]!.status, 'connecting');
    assert.equal(hbs.at(-1)!.status, 'up');
    // b started at 700: heartbeats at 700, 2200, …, 14200 → 10 received by a.
    assert.deepEqual(a.heartbeats.map((h) => h.t), Array.from({ length: 10 }, (_, k) => 701 + k * I));
    const st = a.monitor.status();
    assert.equal(st.heartbeatsReceived, 10);
    assert.equal(st.lastHeartbeatReceived, 701 + 9 * I);
    assert.equal(st.peerNode, 'B');
    assert.equal(st.peerSession, b.monitor.session);
    assert.equal(st.state, 'up');
    await pair.stop();
  });

  it('SPEC 4: detection lands in [4 s, 5.5 s] after the last heartbeat (default timers, random outage and phase)', async () => {
    await fc.assert(
      fc.asyncProperty(fc.integer({ min: 0, max: 60_000 }), fc.integer({ min: 0, max: I - 1 }), async (outage, phase) => {
        const pair = await virtualPair();
        startBoth(pair, phase);
        pair.until(outage);
        pair.partition();
        pair.until(outage + S + I + 10);
        const { a } = pair;
        // The last heartbeat a received: b sends at phase + k·I, arriving LATENCY later.
        const arrivals = Math.floor((outage - phase - LATENCY) / I);
        const t0 = outage >= phase + LATENCY ? phase + LATENCY + arrivals * I : 0;
        assert.equal(a.monitor.status().lastHeartbeatReceived ?? 0, t0);
        assert.equal(a.downs.length, 1, 'exactly one outage');
        const down = a.downs[0]!.t;
        assert.equal(a.downs[0]!.reason, 'stale');
        assert.equal(down, firstSendAfter(t0 + S, I), 'down at the first send after t0 + staleAfter');
        assert.ok(down - t0 >= 4000 && down - t0 <= 5500, `detected ${down - t0} ms after the last heartbeat`);
        assert.ok(down - t0 > S, 'down - t0 > S');
        assert.ok(down >= outage, 'down >= outage');
        await pair.stop();
      }),
      { numRuns: 150 },
    );
  });

  it('SPEC 4: detection is at the first send later than t0 + staleAfter, within (S, S + I], for any interval and staleAfter', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.integer({ min: 10, max: 3000 }).chain((interval) =>
          fc.record({
            interval: fc.constant(interval),
            staleAfter: fc.integer({ min: interval, max: 5 * interval }),
            phase: fc.integer({ min: 0, max: interval - 1 }),
            outage: fc.integer({ min: 0, max: 20 * interval }),
          }),
        ),
        async ({ interval, staleAfter, phase, outage }) => {
          const opts = { heartbeatInterval: interval, staleAfter };
          const pair = await virtualPair({ a: opts, b: opts });
          startBoth(pair, phase);
          pair.until(outage);
          pair.partition();
          pair.until(outage + staleAfter + interval + 10);
          const { a } = pair;
          const t0 = a.monitor.status().lastHeartbeatReceived ?? 0;
          assert.equal(a.downs.length, 1);
          const down = a.downs[0]!.t;
          assert.equal(down, firstSendAfter(t0 + staleAfter, interval));
          assert.ok(down - t0 > staleAfter && down - t0 <= staleAfter + interval, 'down - t0 > staleAfter && down - t0 <= staleAfter + interval');
          assert.ok(down >= outage, 'never down while heartbeats flow');
          await pair.stop();
        },
      ),
      { numRuns: 150 },
    );
  });

  it('SPEC 4, 5: on down the stale slots are marked closed, the owner is told once, and heartbeats go on at the normal rate', async () => {
    const pair = await virtualPair();
    const { a, b } = pair;
    const closedAtDown: string[] = [];
    a.monitor.on('down', () => closedAtDown.push(...a.slots.slots.map((s) => s.status)));
    const atB: { t: number; hb: Heartbeat }[] = [];
    b.channel.on('message', (data) => atB.push({ t: pair.fake.now, hb: decoded(data) }));
    startBoth(pair, 750);
    pair.until(20_000);
    b.monitor.stop(); // b stops sending (its channel stays bound and still receives)
    pair.until(60_000);

    // b's last heartbeat: sent at 750 + 12·1500 = 18750, arrived 18751; down at the first send after 22751.
    assert.deepEqual(a.downs, [{ t: 22_500 + I, reason: 'stale' }]);
    assert.equal(a.monitor.state, 'down');
    assert.deepEqual(closedAtDown, ['closed', 'closed', 'closed', 'closed']);
    // Heartbeats every 1.5 s from start to the end, down or not.
    assert.deepEqual(
      a.sends.map((s) => s.t),
      Array.from({ length: 41 }, (_, k) => k * I),
    );
    // The heartbeat sent at 24000 still says 'up': detection runs right after each send.
    const afterDown = atB.filter((x) => x.t > 24_000 + LATENCY);
    assert.ok(afterDown.length > 20, 'afterDown.length > 20');
    assert.ok(afterDown.every((x) => x.hb.status === 'down'), 'heartbeats sent while down say down');
    assert.deepEqual(
      afterDown.map((x) => x.t - LATENCY),
      afterDown.map((_, k) => 25_500 + k * I),
    );
    await pair.stop();
  });

  it('SPEC 8: the connections reopen only after a full clean probation; a short loss below staleAfter is no gap', async () => {
    const pair = await virtualPair();
    const { a } = pair;
    a.monitor.on('reopen', () => a.monitor.connected());
    startBoth(pair, 500);
    pair.until(10_000);
    pair.partition();
    pair.until(30_000);
    assert.equal(a.monitor.state, 'down');
    pair.heal();
    // b sends at 30500 → arrives 30501: probation until 40501.
    pair.until(30_501);
    assert.equal(a.monitor.state, 'probation');
    assert.equal(a.monitor.status().probationEndsAt, 30_501 + P);
    // One heartbeat lost (the one sent at 32000): arrivals 30501, 33501 — a 3 s gap, below staleAfter.
    pair.until(31_900);
    pair.partition();
    pair.until(33_000);
    pair.heal();
    pair.until(40_500);
    assert.equal(a.monitor.state, 'probation');
    assert.deepEqual(a.reopens, []);
    pair.until(40_501);
    assert.deepEqual(a.reopens, [40_501]);
    assert.equal(a.monitor.state, 'up');
    assert.deepEqual(
      a.transitions.map((t) => [t.t, t.previous, t.state, t.reason]),
      [
        [0, 'connecting', 'up', 'connected'],
        [15_000, 'up', 'down', 'stale'], // last arrival 9501 → first send after 13501
        [30_501, 'down', 'probation', 'heartbeat'],
        [40_501, 'probation', 'connecting', 'probation-complete'],
        [40_501, 'connecting', 'up', 'connected'],
      ],
    );
    assert.equal(a.monitor.status().outages, 1);
    await pair.stop();
  });

  it('SPEC 8: a gap during probation falls back to down and the next heartbeat starts a full new probation', async () => {
    const pair = await virtualPair();
    const { a } = pair;
    startBoth(pair, 500);
    pair.until(10_000);
    pair.partition();
    pair.until(30_000);
    pair.heal();
    pair.until(35_000); // probation since 30501; arrivals 30501, 32001, 33501
    pair.partition();
    pair.until(42_000);
    // No heartbeat since 33501: the send at 39000 sees 5499 ms > staleAfter.
    assert.equal(a.monitor.state, 'down');
    assert.deepEqual(a.transitions.at(-1), { t: 39_000, state: 'down', previous: 'probation', reason: 'probation-gap' });
    assert.equal(a.downs.length, 1, 'no second down event: the connections are already closed');
    pair.heal();
    pair.until(42_501); // b sends at 42500
    assert.equal(a.monitor.state, 'probation');
    assert.equal(a.monitor.status().probationEndsAt, 52_501);
    pair.until(52_500);
    assert.deepEqual(a.reopens, [], 'the first probation (would have ended at 40501) never completes');
    pair.until(52_501);
    assert.deepEqual(a.reopens, [52_501]);
    assert.equal(a.monitor.state, 'connecting');
    await pair.stop();
  });

  it('SPEC 8: gaps are seen at a send, at the arrival of the next heartbeat, and at the end of probation (scripted peer)', async () => {
    const pair = await virtualPair();
    const { a, b, fake } = pair;
    // b's monitor is not started: a scripted sender speaks for node B on b's channel.
    let seq = 0;
    const script = (times: number[]): void => {
      for (const t of times) {
        fake.setTimeout(() => b.channel.send(encodeHeartbeat({ node: 'B', session: 'scripted', seq: ++seq, time: fake.now, status: 'up' }), a.channel.address), t - fake.now);
      }
    };
    a.monitor.start();
    a.monitor.connected();
    script([0, 1000]);
    pair.until(20_000);
    assert.deepEqual(entered(a, 'down'), [6000]); // last 1001 → first send after 5001

    // Probation from 20001; heartbeats at 22000 then 26200: the 4200 ms gap is seen when 26201 arrives
    // (the sends at 24000 and 25500 were still inside staleAfter), and that heartbeat restarts probation.
    script([20_000, 22_000, 26_200, 27_200, 28_200, 29_200, 30_200, 31_200, 32_100]);
    pair.until(26_201);
    assert.deepEqual(
      a.transitions.slice(-3).map((t) => [t.t, t.state, t.reason]),
      [
        [20_001, 'probation', 'heartbeat'],
        [26_201, 'down', 'probation-gap'],
        [26_201, 'probation', 'heartbeat'],
      ],
    );
    assert.equal(a.monitor.status().probationEndsAt, 36_201);

    // Last heartbeat at 32101: the send at 36000 sees 3899 ms (no gap yet), the end of probation at
    // 36201 sees 4100 ms > staleAfter: down, no reopen.
    pair.until(40_000);
    assert.deepEqual(a.transitions.at(-1), { t: 36_201, state: 'down', previous: 'probation', reason: 'probation-gap' });
    assert.deepEqual(a.reopens, []);

    script(Array.from({ length: 12 }, (_, k) => 40_000 + k * 1000));
    pair.until(60_000);
    assert.deepEqual(a.reopens, [50_001]);
    assert.deepEqual(entered(a, 'probation'), [20_001, 26_201, 40_001]);
    await pair.stop();
  });

  it('SPEC 8: probation 0 reopens on the first heartbeat after an outage', async () => {
    const pair = await virtualPair({ a: { probation: 0 } });
    const { a } = pair;
    startBoth(pair, 500);
    pair.until(10_000);
    pair.partition();
    pair.until(30_000);
    assert.equal(a.monitor.state, 'down');
    pair.heal();
    pair.until(30_501);
    assert.deepEqual(a.reopens, [30_501]);
    assert.equal(a.monitor.state, 'connecting');
    assert.deepEqual(a.transitions.at(-1), { t: 30_501, state: 'connecting', previous: 'down', reason: 'probation-complete' });
    assert.deepEqual(entered(a, 'probation'), []);
    await pair.stop();
  });

  it('SPEC 8: every reopen follows a full probation with no gap; after the last heal the link comes back (random outages)', async () => {
    const seen = { reopens: 0, gaps: 0 };
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.tuple(fc.integer({ min: 0, max: 15_000 }), fc.integer({ min: 0, max: 12_000 })), { minLength: 1, maxLength: 8 }),
        fc.integer({ min: 0, max: I - 1 }),
        fc.integer({ min: 0, max: 15_000 }),
        async (schedule, phase, probation) => {
          const pair = await virtualPair({ a: { probation } });
          const { a, fake } = pair;
          a.monitor.on('reopen', () => a.monitor.connected());
          startBoth(pair, phase);
          let t = 0;
          for (const [up, down] of schedule) {
            t += up;
            fake.setTimeout(() => pair.partition(), t);
            t += down;
            fake.setTimeout(() => pair.heal(), t);
          }
          const end = t + probation + S + 3 * I;
          pair.until(end);

          const arrivals = a.heartbeats.map((h) => h.t);
          for (const r of a.reopens) {
            const start = r - probation;
            assert.ok(arrivals.includes(start), `probation of the reopen at ${r} started with a heartbeat at ${start}`);
            const inside = arrivals.filter((x) => x >= start && x <= r);
            for (let k = 1; k < inside.length; k++) assert.ok(inside[k]! - inside[k - 1]! <= S, `no gap before ${r}`);
            assert.ok(r - inside.at(-1)! <= S, 'r - inside.at(-1)! <= S');
            const downInside = a.transitions.some((tr) => tr.state === 'down' && tr.t > start && tr.t < r);
            assert.ok(!downInside, '!downInside');
          }
          assert.equal(a.monitor.state, 'up', 'the link is back after the last heal');
          seen.reopens += a.reopens.length;
          seen.gaps += a.transitions.filter((tr) => tr.reason === 'probation-gap').length;
          await pair.stop();
        },
      ),
      { numRuns: 200 },
    );
    // The property is not vacuous: the random schedules did exercise reopens and probation gaps.
    assert.ok(seen.reopens > 50 && seen.gaps > 5, `reopens ${seen.reopens}, probation gaps ${seen.gaps}`);
  });

  it('connectionsFailed(): connecting → down with the down event; ignored while down; heartbeats then bring probation and reopen', async () => {
    const pair = await virtualPair({ a: { probation: 3000 } });
    const { a } = pair;
    const errors: (Error | undefined)[] = [];
    a.monitor.on('down', (_reason, error) => errors.push(error));
    startBoth(pair, 100);
    assert.equal(a.monitor.state, 'up');
    pair.until(1000);
    assert.equal(a.monitor.connectionsFailed(new BlockMirrorError('BM_ERR_CONNECTION_CLOSED', 'reset')), true);
    assert.equal(a.monitor.state, 'down');
    assert.equal(a.monitor.connectionsFailed(new Error('again')), false);
    // b's heartbeat at 1600 arrives 1601: probation to 4601, then reopen → connecting.
    pair.until(4601);
    assert.deepEqual(a.reopens, [4601]);
    assert.equal(a.monitor.state, 'connecting');
    pair.until(5000);
    assert.equal(a.monitor.connectionsFailed(Object.assign(new Error('refused'), { code: 'ECONNREFUSED' })), true);
    assert.deepEqual(a.downs.map((d) => [d.t, d.reason]), [
      [1000, 'connections-failed'],
      [5000, 'connections-failed'],
    ]);
    assert.equal((errors[0] as BlockMirrorError).code, 'BM_ERR_CONNECTION_CLOSED');
    assert.equal((errors[1] as BlockMirrorError).code, 'BM_ERR_CONNECT_FAILED');
    assert.equal(a.monitor.status().outages, 2);
    await pair.stop();
  });

  it('status() shows state, since, last heartbeat, counters and probation end', async () => {
    const pair = await virtualPair();
    const { a } = pair;
    startBoth(pair, 500);
    pair.until(10_000);
    pair.partition();
    pair.until(19_000);
    pair.heal();
    pair.until(21_000);
    const st = a.monitor.status();
    assert.equal(st.state, 'probation');
    assert.equal(st.since, 20_001);
    assert.equal(st.reason, 'heartbeat');
    assert.equal(st.probationEndsAt, 30_001);
    assert.equal(st.lastHeartbeatReceived, 20_001);
    assert.equal(st.heartbeatsSent, 15); // 0, 1500, …, 21000
    assert.equal(st.seq, 15);
    assert.equal(st.heartbeatsReceived, 8); // 501 … 9501 (7), 20001
    assert.deepEqual(st.heartbeatsRejected, { malformed: 0, auth: 0, unauthenticated: 0, 'unexpected-node': 0, replayed: 0 });
    assert.equal(st.running, true);
    assert.equal(st.peerStatus, 'probation'); // b went down too, and heard a's 19500 heartbeat before sending at 20000
    assert.equal(st.transitions, 3);
    assert.deepEqual(st.peer, pair.b.channel.address);
    await pair.stop();
    assert.equal(a.monitor.status().running, false);
  });

  it('stop() clears every timer (also during probation); start() after stop() is BM_ERR_CLOSED', async () => {
    const pair = await virtualPair();
    const { a } = pair;
    startBoth(pair, 500);
    pair.until(10_000);
    pair.partition();
    pair.until(19_000);
    pair.heal();
    pair.until(21_000);
    assert.equal(a.monitor.state, 'probation');
    const sent = a.sends.length;
    a.monitor.stop();
    pair.b.monitor.stop();
    pair.fake.runAll();
    assert.equal(pair.fake.countTimers(), 0);
    assert.equal(a.sends.length, sent);
    assert.deepEqual(a.reopens, []);
    assert.throws(() => a.monitor.start(), (e: unknown) => e instanceof BlockMirrorError && e.code === 'BM_ERR_CLOSED');
    await pair.stop();
  });

  it('without a peer address nothing is sent, detection still runs; setPeer() starts the sending', async () => {
    const pair = await virtualPair({ b: { peer: { host: 'a', port: 1 } } });
    const { b } = pair;
    const target = new LinkMonitor({ clock: pair.clock, channel: pair.b.channel, slots: pair.b.slots, nodeId: 'T' });
    b.monitor.stop();
    target.start();
    pair.until(5000);
    assert.equal(target.status().heartbeatsSent, 0);
    assert.equal(target.state, 'down'); // nothing heard for > staleAfter
    target.setPeer(pair.a.channel.address);
    pair.until(6000);
    assert.equal(target.status().heartbeatsSent, 1);
    target.stop();
    await pair.stop();
  });

  it('rejects bad options', () => {
    const base = { clock: { now: () => 0, setTimeout: () => 0, clearTimeout: () => {}, setInterval: () => 0, clearInterval: () => {} } } as const;
    const bad = (extra: Record<string, unknown>): void => {
      assert.throws(
        () => new LinkMonitor({ ...base, channel: {} as never, slots: {} as never, nodeId: 'A', ...extra } as never),
        (e: unknown) => e instanceof BlockMirrorError && e.code === 'BM_ERR_INVALID_ARGUMENT',
      );
    };
    bad({ heartbeatInterval: 0 });
    bad({ staleAfter: -1 });
    bad({ probation: Number.NaN });
    bad({ nodeId: '' });
    bad({ secret: new Uint8Array(0) });
    bad({ peer: { host: 'x', port: 0 } });
  });
});

describe('LinkMonitor: forged, replayed and duplicated heartbeats', () => {
  type Attack = 'wrong-mac' | 'no-mac' | 'replay' | 'reflection';

  for (const attack of ['wrong-mac', 'no-mac', 'replay', 'reflection'] as Attack[]) {
    it(`a ${attack} heartbeat does not keep a dead link alive and is counted`, async () => {
      const pair = await virtualPair({ a: { secret: SECRET }, b: { secret: SECRET } });
      const { a, b, fake, network } = pair;
      const mallory = await network.transport({ host: 'm' }).bindDatagram({ host: 'm', port: 0 });
      startBoth(pair, 500);
      pair.until(10_000);
      pair.partition(); // a and b cannot hear each other any more; mallory still reaches a
      const recordedFromB = b.sends.map((s) => s.datagram);
      const recordedFromA = a.sends.map((s) => s.datagram);
      let seq = 1000;
      let sent = 0;
      const forge = (): Buffer => {
        sent++;
        switch (attack) {
          case 'wrong-mac':
            return encodeHeartbeat({ node: 'B', session: b.monitor.session, seq: ++seq, time: fake.now, status: 'up' }, Buffer.from('guessed'));
          case 'no-mac':
            return encodeHeartbeat({ node: 'B', session: 'new-session', seq: ++seq, time: fake.now, status: 'up' });
          case 'replay':
            return recordedFromB[sent % recordedFromB.length]!;
          case 'reflection':
            return recordedFromA[sent % recordedFromA.length]!;
        }
      };
      const timer = fake.setInterval(() => mallory.send(forge(), a.channel.address), 500);
      pair.until(60_000);
      fake.clearInterval(timer);
      pair.until(60_010);

      assert.deepEqual(a.downs, [{ t: 15_000, reason: 'stale' }]); // last genuine heartbeat 9501
      assert.equal(a.monitor.state, 'down');
      assert.deepEqual(entered(a, 'probation'), []);
      assert.ok(a.heartbeats.every((h) => h.t < 10_000), 'no heartbeat accepted after the partition');
      const reason = { 'wrong-mac': 'auth', 'no-mac': 'auth', replay: 'replayed', reflection: 'unexpected-node' }[attack];
      const rejected = a.monitor.status().heartbeatsRejected;
      assert.equal(rejected[reason as keyof typeof rejected], sent);
      assert.equal(Object.values(rejected).reduce((x, y) => x + y, 0), sent);
      await mallory.close();
      await pair.stop();
    });
  }

  it('duplicated datagrams are ignored as replays and do not disturb the link', async () => {
    const pair = await virtualPair({ a: { secret: SECRET }, b: { secret: SECRET } });
    pair.network.setDatagramFaults({ delayMs: LATENCY, duplicateRate: 1 });
    startBoth(pair, 500);
    pair.until(30_000);
    const st = pair.a.monitor.status();
    assert.equal(st.state, 'up');
    assert.equal(st.heartbeatsReceived, 20);
    assert.equal(st.heartbeatsRejected.replayed, 20);
    await pair.stop();
  });

  it('a restarted peer (same node, new session, seq from 1) is accepted; its old session stays refused', async () => {
    const pair = await virtualPair({ a: { secret: SECRET, probation: 5000 }, b: { secret: SECRET } });
    const { a, b, fake, network } = pair;
    startBoth(pair, 500);
    pair.until(10_000);
    const oldSession = b.monitor.session;
    const oldDatagram = b.sends.at(-1)!.datagram;
    b.monitor.stop(); // the peer process dies
    pair.until(20_000);
    assert.equal(a.monitor.state, 'down');
    const restarted = await bindSide(network, pair.clock, fake, 'b', { nodeId: 'B', secret: SECRET, peer: a.channel.address, expectedNode: 'A' }, 4, b.channel);
    assert.notEqual(restarted.monitor.session, oldSession);
    restarted.monitor.start(); // seq 1 of a new session, at 20000
    pair.until(20_001);
    assert.equal(a.monitor.state, 'probation');
    assert.equal(a.monitor.status().peerSession, restarted.monitor.session);
    // A recording of the old run replayed now is refused.
    const mallory = await network.transport({ host: 'm' }).bindDatagram({ host: 'm', port: 0 });
    mallory.send(oldDatagram, a.channel.address);
    pair.until(20_100);
    assert.equal(a.monitor.status().heartbeatsRejected.replayed, 1);
    pair.until(25_001);
    assert.deepEqual(a.reopens, [25_001]);
    restarted.monitor.stop();
    await mallory.close();
    await pair.stop();
  });
});
