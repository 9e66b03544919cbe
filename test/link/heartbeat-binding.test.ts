/**
 * Heartbeats bound to the peer's node id (virtual time): a correctly signed
 * heartbeat of another node — another primary sharing the secret, whose
 * heartbeats reach us — is ignored and counted, so it cannot keep a dead
 * link up or make a live one flap.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { encodeHeartbeat } from '../../src/link/heartbeat.js';
import { entered, virtualPair } from './harness.js';

const SECRET = Buffer.from('shared by every node of the site');

describe('heartbeats bound to the node id', () => {
  it("a monitor bound with expectNode ignores another node's signed heartbeats (counted as unexpected-node) and goes down when its peer falls silent", async () => {
    const pair = await virtualPair({ a: { secret: SECRET, expectedNode: undefined }, b: { secret: SECRET } });
    const { a, b } = pair;
    a.monitor.start();
    b.monitor.start();
    a.monitor.connected();
    b.monitor.connected();
    pair.until(3000);
    assert.equal(a.monitor.state, 'up');
    // the handshake proved the peer is B
    a.monitor.expectNode('B');
    assert.equal(a.monitor.expectedNode, 'B');
    // another primary X with the same secret keeps sending valid heartbeats to A
    const x = await pair.network.transport({ host: 'x' }).bindDatagram({ host: 'x', port: 0 });
    let seq = 0;
    const reflect = (): void => {
      x.send(encodeHeartbeat({ node: 'X', session: 'x-1', seq: ++seq, time: pair.fake.now, status: 'up' }, SECRET), a.channel.address);
    };
    const timer = pair.fake.setInterval(reflect, 500);
    // B goes silent: A must go down despite X's heartbeats
    pair.partition();
    pair.until(20_000);
    assert.ok(entered(a, 'down').length >= 1, 'A went down');
    assert.ok(['down', 'probation'].includes(a.monitor.status().state), a.monitor.status().state);
    assert.ok(a.monitor.status().heartbeatsRejected['unexpected-node'] > 0, JSON.stringify(a.monitor.status().heartbeatsRejected));
    pair.fake.clearInterval(timer);
    await x.close();
    await pair.stop();
  });

  it('without binding (expectNode(undefined)) any node but itself is accepted again — a restarted target under a new id can be heard', async () => {
    const pair = await virtualPair({ a: { secret: SECRET, expectedNode: 'B' }, b: { secret: SECRET, nodeId: 'B2' } });
    const { a, b } = pair;
    a.monitor.start();
    b.monitor.start();
    pair.until(3000);
    assert.ok(a.monitor.status().heartbeatsRejected['unexpected-node'] > 0);
    const before = a.monitor.status().heartbeatsReceived;
    a.monitor.expectNode(undefined);
    pair.until(6000);
    assert.ok(a.monitor.status().heartbeatsReceived > before);
    await pair.stop();
  });

  it('useKey: once both ends use the key derived from the TLS session, an unsigned or wrongly signed heartbeat claiming the peer is refused (auth); a configured secret always wins', async () => {
    const pair = await virtualPair({ a: { expectedNode: 'B' }, b: { expectedNode: 'A' } });
    const { a, b } = pair;
    a.monitor.start();
    b.monitor.start();
    a.monitor.connected();
    b.monitor.connected();
    pair.until(3000);
    assert.equal(a.monitor.heartbeatAuth, 'none');
    const key = Buffer.alloc(32, 7);
    a.monitor.useKey(key);
    b.monitor.useKey(key);
    assert.equal(a.monitor.heartbeatAuth, 'session');
    const received = a.monitor.status().heartbeatsReceived;
    pair.until(9000);
    assert.ok(a.monitor.status().heartbeatsReceived > received, 'signed heartbeats keep flowing');
    // (a heartbeat in flight when the key changed may have been refused: count from here)
    const before = a.monitor.status().heartbeatsRejected.auth;
    const x = await pair.network.transport({ host: 'x' }).bindDatagram({ host: 'x', port: 0 });
    x.send(encodeHeartbeat({ node: 'B', session: b.monitor.session, seq: 1e9, time: 0, status: 'up' }), a.channel.address);
    x.send(encodeHeartbeat({ node: 'B', session: b.monitor.session, seq: 1e9 + 1, time: 0, status: 'up' }, Buffer.alloc(32, 8)), a.channel.address);
    pair.until(9100);
    assert.equal(a.monitor.status().heartbeatsRejected.auth - before, 2);
    assert.equal(a.monitor.state, 'up');
    await x.close();
    await pair.stop();
    const fixed = await virtualPair({ a: { secret: SECRET }, b: { secret: SECRET } });
    fixed.a.monitor.useKey(Buffer.alloc(32, 1));
    assert.equal(fixed.a.monitor.heartbeatAuth, 'secret');
    await fixed.stop();
  });
});
