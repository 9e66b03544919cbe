import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { systemClock } from '../../src/clock.js';
import { ConnectionArray } from '../../src/link/connection-array.js';
import { LinkMonitor, type LinkMonitorOptions } from '../../src/link/link-monitor.js';
import { TcpTransport, type UdpChannel } from '../../src/transport/tcp.js';

const WAIT = 10_000;

/** Resolves when `predicate()` holds, checked now and at every event `event` of `monitor`; rejects after `ms`. */
function until(monitor: LinkMonitor, event: 'state' | 'heartbeat' | 'reopen', predicate: () => boolean, what: string, ms = WAIT): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    const check = (): void => {
      if (!predicate()) return;
      clearTimeout(timer);
      monitor.off(event, check);
      resolve();
    };
    const timer = setTimeout(() => {
      monitor.off(event, check);
      reject(new Error(`timed out after ${ms} ms waiting for ${what}; status ${JSON.stringify(monitor.status())}`));
    }, ms);
    monitor.on(event, check);
    check();
  });
}

describe('LinkMonitor over real UDP (127.0.0.1)', () => {
  it('two monitors hear each other and go up; when one stops sending the other goes down; a restarted peer comes back through probation', async () => {
    const transport = new TcpTransport();
    const channels: UdpChannel[] = [];
    const monitors: LinkMonitor[] = [];
    try {
      const chA = await transport.bindDatagram({ host: '127.0.0.1', port: 0 });
      channels.push(chA);
      const chB = await transport.bindDatagram({ host: '127.0.0.1', port: 0 });
      channels.push(chB);
      // Small real timers, with staleAfter well above the interval so a busy machine does not flap.
      const common: Omit<LinkMonitorOptions, 'channel' | 'nodeId' | 'slots'> = {
        clock: systemClock,
        heartbeatInterval: 20,
        staleAfter: 250,
        probation: 100,
        secret: Buffer.from('udp test secret'),
      };
      const a = new LinkMonitor({ ...common, channel: chA, peer: chB.address, nodeId: 'A', expectedNode: 'B', slots: new ConnectionArray(2) });
      const b = new LinkMonitor({ ...common, channel: chB, peer: chA.address, nodeId: 'B', expectedNode: 'A', slots: new ConnectionArray(2) });
      monitors.push(a, b);

      a.start();
      b.start();
      await Promise.all([
        until(a, 'heartbeat', () => a.status().heartbeatsReceived > 0, 'a to hear b'),
        until(b, 'heartbeat', () => b.status().heartbeatsReceived > 0, 'b to hear a'),
      ]);
      a.connected();
      b.connected();
      assert.equal(a.state, 'up');
      assert.equal(b.state, 'up');
      assert.equal(a.status().peerNode, 'B');
      assert.equal(b.status().peerNode, 'A');

      // b stops sending: a must go down (whatever happened before, a `down` entered after this point).
      const stoppedAt = systemClock.now();
      b.stop();
      await until(a, 'state', () => a.state === 'down' && a.status().since > stoppedAt, 'a to go down');
      const st = a.status();
      assert.ok(st.reason === 'stale' || st.reason === 'probation-gap', `down because heartbeats stopped (${st.reason})`);
      assert.ok(st.lastHeartbeatReceived !== undefined && st.since - st.lastHeartbeatReceived > 250, 'down only after staleAfter without heartbeat');
      assert.ok(st.heartbeatsSent > 0, 'a kept sending');

      // The peer restarts (same node id, new session) on the same port: probation, then reopen.
      const b2 = new LinkMonitor({ ...common, channel: chB, peer: chA.address, nodeId: 'B', expectedNode: 'A', slots: new ConnectionArray(2) });
      monitors.push(b2);
      let reopened = false;
      a.once('reopen', () => {
        reopened = true;
      });
      b2.start();
      await until(a, 'reopen', () => reopened, 'a to reopen after probation');
      assert.equal(a.state, 'connecting');
      assert.equal(a.status().peerSession, b2.session);
      assert.notEqual(b2.session, b.session);
      assert.equal(a.status().heartbeatsRejected.auth, 0);
    } finally {
      for (const m of monitors) m.stop();
      await Promise.all(channels.map((c) => c.close()));
    }
  });
});
