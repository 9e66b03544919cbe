/**
 * Heartbeats that must be authenticated without a shared secret (the link
 * runs over TLS: the key comes from the TLS session, `useKey`), in virtual
 * time (issue 14): nothing unauthenticated is sent or accepted, the key is
 * kept across an outage so that the probation still works, and a down link
 * whose heartbeats cannot be authenticated asks its owner to reconnect
 * (`rekey`).
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { encodeHeartbeat } from '../../src/link/heartbeat.js';
import { entered, virtualPair, type Pair } from './harness.js';

const KEY = Buffer.alloc(32, 0x5a);
const OTHER_KEY = Buffer.alloc(32, 0xa5);

/** A forger on host 'x' sending heartbeats that claim to come from B, to A, every 500 ms (from `from` to `to`). */
async function forger(pair: Pair, key: Uint8Array | undefined, from: number, to: number): Promise<{ sent: () => number; close: () => Promise<void> }> {
  const x = await pair.network.transport({ host: 'x' }).bindDatagram({ host: 'x', port: 0 });
  let seq = 1_000_000;
  let sent = 0;
  for (let t = from; t < to; t += 500) {
    pair.fake.setTimeout(() => {
      x.send(encodeHeartbeat({ node: 'B', session: pair.b.monitor.session, seq: ++seq, time: pair.fake.now, status: 'up' }, key), pair.a.channel.address);
      sent++;
    }, t - pair.fake.now);
  }
  return { sent: () => sent, close: () => x.close() };
}

describe('heartbeats with a required key (TLS without a secret)', () => {
  it('SPEC 8, issue 14: without a key, a key-required monitor sends no heartbeat and refuses every received one (counted as unauthenticated): forged heartbeats never start a probation; the key of a handshake then does', async () => {
    // B sends unsigned heartbeats claiming to be the peer (as an attacker could), X signed ones with a key of its own
    const pair = await virtualPair({ a: { requireKey: true }, b: {} });
    const { a, b } = pair;
    let rekeys = 0;
    a.monitor.on('rekey', () => rekeys++);
    assert.equal(a.monitor.heartbeatAuth, 'pending');
    assert.equal(a.monitor.keyRequired, true);
    a.monitor.start();
    b.monitor.start();
    const x = await forger(pair, OTHER_KEY, 100, 30_000);
    // nothing can be heard without a key: `connecting` waits for the owner's connection attempts, not for heartbeats
    pair.until(10_000);
    assert.equal(a.monitor.state, 'connecting');
    // the first connection attempt failed
    a.monitor.connectionsFailed(new Error('refused'));
    pair.until(30_000);
    assert.deepEqual(a.sends, [], 'nothing unauthenticated is sent');
    assert.deepEqual(a.heartbeats, [], 'nothing unauthenticated is accepted');
    assert.deepEqual(entered(a, 'down'), [10_000]);
    assert.deepEqual(entered(a, 'probation'), [], 'no probation from forged heartbeats');
    assert.deepEqual(a.reopens, []);
    const st = a.monitor.status();
    assert.equal(st.heartbeatsReceived, 0);
    // every heartbeat of B (sent at 0, 1500, …, 30000: the last still in flight) and of X is refused as unauthenticated
    assert.equal(st.heartbeatsRejected.unauthenticated, b.sends.length - 1 + x.sent());
    assert.equal(st.heartbeatsRejected.auth, 0);
    assert.equal(st.auth, 'pending');
    // no key and down: the owner is asked (once) to reconnect, its handshake being the only way to a key
    assert.equal(st.rekeyNeeded, true);
    assert.equal(rekeys, 1);
    // a handshake gives both ends the key: signed heartbeats flow, probation, reopen
    a.monitor.useKey(KEY);
    b.monitor.useKey(KEY);
    assert.equal(a.monitor.heartbeatAuth, 'session');
    assert.equal(a.monitor.rekeyNeeded, false);
    pair.until(45_000);
    assert.ok(a.sends.length > 0, 'heartbeats are sent once the key is known');
    assert.equal(entered(a, 'probation').length, 1);
    assert.equal(a.reopens.length, 1);
    assert.equal(a.monitor.state, 'connecting');
    await x.close();
    await pair.stop();
  });

  it('SPEC 8, issue 14: the session key is kept across an outage: the probation after it runs on authenticated heartbeats, and unsigned or wrongly keyed heartbeats during the outage start none', async () => {
    const pair = await virtualPair({ a: { requireKey: true }, b: { requireKey: true } });
    const { a, b } = pair;
    a.monitor.start();
    b.monitor.start();
    a.monitor.useKey(KEY);
    b.monitor.useKey(KEY);
    a.monitor.connected();
    b.monitor.connected();
    pair.until(5_000);
    assert.equal(a.monitor.state, 'up');
    assert.equal(a.monitor.status().heartbeatsRejected.auth, 0);
    pair.partition();
    const unsigned = await forger(pair, undefined, 10_000, 25_000);
    const wrong = await forger(pair, OTHER_KEY, 10_250, 25_000);
    pair.until(25_000);
    assert.equal(entered(a, 'down').length, 1);
    assert.ok(entered(a, 'down')[0]! < 10_000);
    assert.equal(a.monitor.state, 'down');
    assert.deepEqual(entered(a, 'probation'), [], 'forged heartbeats start no probation');
    assert.equal(a.monitor.heartbeatAuth, 'session', 'the key is kept while down');
    assert.equal(a.monitor.status().heartbeatsRejected.auth, unsigned.sent() + wrong.sent());
    // the path heals: the kept key authenticates the probation, then reopen
    pair.heal();
    pair.until(45_000);
    assert.equal(entered(a, 'probation').length, 1);
    assert.ok(entered(a, 'probation')[0]! > 25_000);
    assert.equal(a.reopens.length, 1);
    assert.equal(b.reopens.length, 1);
    assert.equal(a.monitor.heartbeatAuth, 'session');
    assert.equal(a.monitor.rekeyNeeded, false);
    await unsigned.close();
    await wrong.close();
    await pair.stop();
  });

  it('issue 14: a down link that keeps a key its peer lost (heartbeats refused as auth, no valid one for staleAfter) needs a rekey; a new key from a handshake ends it', async () => {
    const pair = await virtualPair({ a: { requireKey: true }, b: { requireKey: true } });
    const { a, b } = pair;
    const rekeys: number[] = [];
    a.monitor.on('rekey', () => rekeys.push(pair.fake.now));
    a.monitor.start();
    b.monitor.start();
    a.monitor.useKey(KEY);
    b.monitor.useKey(KEY);
    a.monitor.connected();
    b.monitor.connected();
    pair.until(5_000);
    // B "restarts" and comes back with another key: A cannot verify it (and B cannot verify A)
    b.monitor.useKey(OTHER_KEY);
    pair.until(10_000);
    assert.equal(a.monitor.state, 'down');
    assert.deepEqual(entered(a, 'down'), [9000]);
    assert.ok(a.monitor.status().heartbeatsRejected.auth > 0);
    assert.equal(rekeys.length, 1);
    // A goes down at the first send after 5000 + staleAfter; rekey right then (refused heartbeats, none valid for > staleAfter)
    assert.deepEqual(rekeys, entered(a, 'down'));
    assert.deepEqual(entered(a, 'probation'), []);
    pair.until(20_000);
    assert.equal(rekeys.length, 1, 'once per episode');
    assert.equal(a.monitor.rekeyNeeded, true);
    // the owner's reconnect: a handshake gives both ends a new key
    const fresh = Buffer.alloc(32, 0x33);
    a.monitor.useKey(fresh);
    b.monitor.useKey(fresh);
    assert.equal(a.monitor.rekeyNeeded, false);
    pair.until(35_000);
    assert.equal(entered(a, 'probation').length, 1);
    assert.equal(a.reopens.length, 1);
    // without requireKey (no TLS) or with a secret, never
    await pair.stop();
    const plain = await virtualPair();
    plain.a.monitor.start();
    plain.a.monitor.connectionsFailed();
    plain.fake.tick(10_000);
    assert.equal(plain.a.monitor.rekeyNeeded, false);
    assert.equal(plain.a.monitor.heartbeatAuth, 'none');
    await plain.stop();
    const secret = await virtualPair({ a: { requireKey: true, secret: KEY } });
    secret.a.monitor.start();
    secret.a.monitor.connectionsFailed();
    secret.fake.tick(10_000);
    assert.equal(secret.a.monitor.rekeyNeeded, false);
    assert.equal(secret.a.monitor.heartbeatAuth, 'secret');
    await secret.stop();
  });
});
