/**
 * Two link monitors ('a' and 'b') on a MemoryNetwork in virtual time.
 *
 * Determinism: the MemoryNetwork delivers undelayed datagrams on a real
 * `setImmediate`, outside virtual time. The harness gives every datagram a
 * fixed one-way delay of {@link LATENCY} ms, so every delivery is a timer of
 * the fake clock and `fake.tick()` runs sends, deliveries and checks
 * synchronously, in a fixed order.
 */
import { createClock, type Clock as FakeClock } from '@sinonjs/fake-timers';
import { clockFrom, type Clock } from '../../src/clock.js';
import { ConnectionArray } from '../../src/link/connection-array.js';
import type { Heartbeat } from '../../src/link/heartbeat.js';
import { LinkMonitor, type LinkMonitorOptions, type LinkState, type LinkTransitionReason } from '../../src/link/link-monitor.js';
import { MemoryNetwork } from '../../src/transport/memory.js';
import type { DatagramChannel, TransportAddress } from '../../src/transport/transport.js';

/** One-way datagram delay in the virtual network (ms). */
export const LATENCY = 1;

export interface Transition {
  t: number;
  state: LinkState;
  previous: LinkState;
  reason: LinkTransitionReason;
}

/** A monitor plus everything it did, with virtual times. */
export interface Side {
  name: string;
  monitor: LinkMonitor;
  channel: DatagramChannel;
  slots: ConnectionArray;
  transitions: Transition[];
  downs: { t: number; reason: LinkTransitionReason }[];
  reopens: number[];
  /** Valid heartbeats received. */
  heartbeats: { t: number; hb: Heartbeat }[];
  /** Datagrams handed to the channel. */
  sends: { t: number; datagram: Buffer; to: TransportAddress }[];
}

export interface Pair {
  fake: FakeClock;
  clock: Clock;
  network: MemoryNetwork;
  a: Side;
  b: Side;
  /** Advances virtual time to absolute time `t`. */
  until(t: number): void;
  /** Drops all datagrams between a and b (both ways) until {@link heal}. */
  partition(): void;
  heal(): void;
  stop(): Promise<void>;
}

export type SideOptions = Partial<Omit<LinkMonitorOptions, 'clock' | 'channel' | 'slots'>>;

export async function bindSide(
  network: MemoryNetwork,
  clock: Clock,
  fake: FakeClock,
  host: string,
  options: SideOptions & { nodeId: string },
  slotCount = 4,
  channel?: DatagramChannel,
): Promise<Side> {
  const ch = channel ?? (await network.transport({ host }).bindDatagram({ host, port: 0 }));
  const slots = new ConnectionArray(slotCount);
  for (const slot of slots.slots) slot.status = 'open';
  const monitor = new LinkMonitor({ clock, channel: ch, slots, ...options });
  const side: Side = { name: host, monitor, channel: ch, slots, transitions: [], downs: [], reopens: [], heartbeats: [], sends: [] };
  if (channel === undefined) {
    const send = ch.send.bind(ch);
    ch.send = (data, to) => {
      side.sends.push({ t: fake.now, datagram: Buffer.from(data), to });
      send(data, to);
    };
  }
  monitor.on('state', (state, previous, reason) => side.transitions.push({ t: fake.now, state, previous, reason }));
  monitor.on('down', (reason) => side.downs.push({ t: fake.now, reason }));
  monitor.on('reopen', () => side.reopens.push(fake.now));
  monitor.on('heartbeat', (hb) => side.heartbeats.push({ t: fake.now, hb }));
  return side;
}

/**
 * Creates sides a (node 'A', host 'a') and b (node 'B', host 'b') aimed at each
 * other, not started. Slots start `open` (as if the owner had connected).
 */
export async function virtualPair(options: { a?: SideOptions; b?: SideOptions; slots?: number } = {}): Promise<Pair> {
  const fake = createClock();
  const clock = clockFrom(fake);
  const network = new MemoryNetwork({ clock });
  network.setDatagramFaults({ delayMs: LATENCY });
  const a = await bindSide(network, clock, fake, 'a', { nodeId: 'A', expectedNode: 'B', ...options.a }, options.slots);
  const b = await bindSide(network, clock, fake, 'b', { nodeId: 'B', expectedNode: 'A', ...options.b }, options.slots);
  if (options.a?.peer === undefined) a.monitor.setPeer(b.channel.address);
  if (options.b?.peer === undefined) b.monitor.setPeer(a.channel.address);
  return {
    fake,
    clock,
    network,
    a,
    b,
    until(t: number): void {
      if (t < fake.now) throw new Error(`cannot go back from ${fake.now} to ${t}`);
      fake.tick(t - fake.now);
    },
    partition: () => network.partition('a', 'b'),
    heal: () => network.heal('a', 'b'),
    async stop(): Promise<void> {
      a.monitor.stop();
      b.monitor.stop();
      // Deliveries still in flight are timers of the network: run them out. A
      // monitor timer left running would make runAll() loop and throw.
      fake.runAll();
      if (fake.countTimers() !== 0) throw new Error(`${fake.countTimers()} timers left after stop()`);
      await a.channel.close();
      await b.channel.close();
    },
  };
}

/** Times at which `side` entered `state`. */
export function entered(side: Side, state: LinkState): number[] {
  return side.transitions.filter((tr) => tr.state === state).map((tr) => tr.t);
}
