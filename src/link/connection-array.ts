/**
 * The connection array of seed 000 (claims 9–11): slot m holds the socket of
 * worker m, the time the last heartbeat from the peer was seen, and the slot's
 * status. Worker m's mirror requests travel on connection m.
 *
 * @module
 */
import { wallClockIso, type Clock } from '../clock.js';
import type { FramedConnection } from './framed-connection.js';

/** Status of one slot. */
export type SlotStatus = 'connecting' | 'open' | 'closed';

/** One slot of the {@link ConnectionArray}. */
export interface ConnectionSlot {
  /** Slot index m (= worker index). */
  readonly index: number;
  /** The connection, present while `status` is `open`. */
  connection: FramedConnection | undefined;
  /** Clock time of the last heartbeat (or handshake) seen from the peer (0: none yet). */
  lastHeartbeat: number;
  status: SlotStatus;
  /** Requests sent on this connection and not yet answered. */
  inFlight: number;
  /** Requests sent on this slot since the array was created. */
  sent: number;
}

/** Plain-object view of a slot, for `status()`. */
export interface ConnectionSlotStatus {
  index: number;
  status: SlotStatus;
  /** Wall-clock time (ISO 8601) of the last heartbeat (or handshake) seen from the peer; absent before the first. */
  lastHeartbeatAt?: string;
  inFlight: number;
  sent: number;
}

/** n slots, one per worker. */
export class ConnectionArray {
  readonly slots: ConnectionSlot[];

  constructor(size: number) {
    this.slots = Array.from({ length: size }, (_, index) => ({
      index,
      connection: undefined,
      lastHeartbeat: 0,
      status: 'closed' as SlotStatus,
      inFlight: 0,
      sent: 0,
    }));
  }

  get size(): number {
    return this.slots.length;
  }

  /** A heartbeat from the peer refreshes every slot's timestamp (SPEC 3). */
  refresh(now: number): void {
    for (const slot of this.slots) slot.lastHeartbeat = now;
  }

  /** Slots whose last heartbeat is older than `staleAfter` (SPEC 4). */
  stale(now: number, staleAfter: number): ConnectionSlot[] {
    return this.slots.filter((s) => s.status !== 'closed' && now - s.lastHeartbeat > staleAfter);
  }

  /** Number of open slots. */
  get openCount(): number {
    let n = 0;
    for (const s of this.slots) if (s.status === 'open') n++;
    return n;
  }

  /**
   * The slot that should carry the next request of worker `worker`: slot
   * `worker mod n` when open and below `maxInFlight`, else the next open slot
   * with room; undefined when none has room.
   */
  pick(worker: number, maxInFlight: number): ConnectionSlot | undefined {
    const n = this.slots.length;
    for (let i = 0; i < n; i++) {
      const slot = this.slots[(worker + i) % n]!;
      if (slot.status === 'open' && slot.inFlight < maxInFlight) return slot;
    }
    return undefined;
  }

  /** Plain-object snapshot; `clock` is the one the slots' times come from (to turn them into wall-clock times). */
  snapshot(clock: Clock): ConnectionSlotStatus[] {
    return this.slots.map((s) => {
      const slot: ConnectionSlotStatus = { index: s.index, status: s.status, inFlight: s.inFlight, sent: s.sent };
      if (s.lastHeartbeat !== 0) slot.lastHeartbeatAt = wallClockIso(clock, s.lastHeartbeat);
      return slot;
    });
  }
}
