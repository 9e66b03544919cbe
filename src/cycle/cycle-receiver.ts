/**
 * {@link CycleReceiver}: the target's handler of cycle messages on one
 * handshaken connection. It is independent of the listener, so that a mirror
 * target serving other modes on the same connection can hand frames of types
 * 32–36 to it.
 *
 * @module
 */
import createDebug from 'debug';
import { BlockMirrorError, toBlockMirrorError } from '../errors.js';
import { MessageType, type Frame } from '../codec/frame.js';
import type { VolumeOffer } from '../codec/messages.js';
import type { FramedConnection } from '../link/framed-connection.js';
import { parseCycleBegin, parseCycleCommit, parseCycleData, parseCycleTable, type CycleBeginHeader } from './messages.js';
import type { StagedTransfer, StagingStore } from './staging-store.js';

const log = createDebug('blockmirror:cycle');

/** Events a {@link CycleReceiver} reports (through its `events` option). */
export interface CycleReceiverEvents {
  begin(info: { source: string; to: number; volumes: string[] }): void;
  committed(info: { source: string; to: number; volumes: string[]; bytes: number }): void;
  transferError(info: { source: string; to: number; error: BlockMirrorError }): void;
}

/** A transfer being received on a connection. */
interface Current {
  id: number;
  to: number;
  /** Settles once BEGIN was handled (undefined: refused). */
  ready: Promise<StagedTransfer | undefined>;
  bytes: number;
  committing: boolean;
  /** Names of the transfer's volumes. */
  volumes: string[];
  /** Settles when its commit (or refusal) is finished, once COMMIT arrived. */
  work: Promise<void> | undefined;
  /** Payloads of TABLE and DATA frames waiting for BEGIN to be handled (released when the connection closes first). */
  waiting: Set<{ payload: Uint8Array | 'zero' | undefined }>;
}

/** Options of a {@link CycleReceiver}. */
export interface CycleReceiverOptions {
  conn: FramedConnection;
  store: StagingStore;
  /** Node id of the source (from the handshake). */
  source: string;
  /** The volumes offered in the handshake, in their order (index = `v`). */
  offers: readonly VolumeOffer[];
  /** Data writes in flight before reading from the connection pauses (default 64). */
  maxInFlight?: number;
  events?: Partial<CycleReceiverEvents>;
}

/** Receives transfers on one connection: see the module notes. */
export class CycleReceiver {
  readonly #conn: FramedConnection;
  readonly #store: StagingStore;
  readonly #source: string;
  readonly #offers: readonly VolumeOffer[];
  readonly #maxInFlight: number;
  readonly #events: Partial<CycleReceiverEvents>;
  #current: Current | undefined;
  #inFlight = 0;
  #paused = false;

  constructor(options: CycleReceiverOptions) {
    this.#conn = options.conn;
    this.#store = options.store;
    this.#source = options.source;
    this.#offers = options.offers;
    this.#maxInFlight = options.maxInFlight ?? 64;
    this.#events = options.events ?? {};
    this.#conn.once('close', () => {
      const cur = this.#current;
      this.#current = undefined;
      if (cur !== undefined && !cur.committing) this.#drop(cur);
    });
  }

  /** True for the frame types this receiver handles. */
  static handles(type: number): boolean {
    return type === MessageType.CYCLE_BEGIN || type === MessageType.CYCLE_TABLE || type === MessageType.CYCLE_DATA || type === MessageType.CYCLE_COMMIT;
  }

  /**
   * Handles one frame. Throws a coded error for a malformed or misplaced
   * frame (the caller closes the connection with it).
   */
  onFrame(frame: Frame): void {
    switch (frame.type) {
      case MessageType.CYCLE_BEGIN:
        this.#begin(parseCycleBegin(frame.header));
        return;
      case MessageType.CYCLE_TABLE: {
        const h = parseCycleTable(frame.header);
        const cur = this.#for(h.id);
        if (cur === undefined) return;
        const held = this.#hold(cur, frame.payload);
        void cur.ready.then((t) => {
          const payload = this.#take(cur, held);
          if (t === undefined || payload === undefined || payload === 'zero') return;
          this.#guard(() => t.table(h.v, h.off, payload));
        });
        return;
      }
      case MessageType.CYCLE_DATA: {
        const h = parseCycleData(frame.header);
        const cur = this.#for(h.id);
        if (cur === undefined) return;
        if (h.z === 1 && frame.payload.length > 0) throw new BlockMirrorError('BM_ERR_BAD_HEADER', 'a zero run (CYCLE_DATA with z) carries a payload');
        if (h.z !== 1) cur.bytes += frame.payload.length;
        const held = this.#hold(cur, h.z === 1 ? 'zero' : frame.payload);
        this.#inFlight++;
        if (this.#inFlight >= this.#maxInFlight && !this.#paused) {
          this.#paused = true;
          this.#conn.connection.pause();
        }
        void cur.ready
          .then((t) => {
            const payload = this.#take(cur, held);
            if (t === undefined || t.done || payload === undefined) return undefined;
            let p: Promise<void> | undefined;
            this.#guard(() => (p = t.data(h.v, h.s, h.g, h.n, payload)));
            return p;
          })
          .catch(() => undefined) // kept by the transfer and reported by its commit
          .finally(() => {
            this.#inFlight--;
            if (this.#paused && this.#inFlight <= this.#maxInFlight / 2) {
              this.#paused = false;
              this.#conn.connection.resume();
            }
          });
        return;
      }
      case MessageType.CYCLE_COMMIT: {
        const h = parseCycleCommit(frame.header);
        const cur = this.#for(h.id);
        if (cur === undefined) return;
        if (h.to !== cur.to) throw new BlockMirrorError('BM_ERR_PROTOCOL', `commit of freeze ${h.to} in a transfer to ${cur.to}`);
        cur.committing = true;
        const work = cur.ready.then(async (t) => {
          if (t === undefined || t.done) {
            // refused at BEGIN (already answered) or dropped: nothing to commit
            if (this.#current === cur) this.#current = undefined;
            return;
          }
          const volumes = t.volumes.map((sv) => sv.plan.name);
          try {
            await t.commit();
            log('committed freeze %d from %s (%d bytes)', cur.to, this.#source, cur.bytes);
            this.#events.committed?.({ source: this.#source, to: cur.to, volumes, bytes: cur.bytes });
            this.#conn.send(MessageType.CYCLE_ACK, { id: cur.id, to: cur.to });
          } catch (error) {
            const err = toBlockMirrorError(error);
            this.#events.transferError?.({ source: this.#source, to: cur.to, error: err });
            this.#conn.send(MessageType.CYCLE_ACK, { id: cur.id, to: cur.to, code: err.code, message: err.message });
          } finally {
            if (this.#current === cur) this.#current = undefined;
          }
        });
        cur.work = work;
        this.#store.hold(cur.volumes, work);
        return;
      }
      default:
        throw new BlockMirrorError('BM_ERR_PROTOCOL', `unexpected message type ${frame.type} in a cycle`);
    }
  }

  #begin(h: CycleBeginHeader): void {
    // A source sends a BEGIN only after the previous transfer was answered; the
    // previous one may still be finishing here (a refusal is answered at BEGIN,
    // before its COMMIT arrives): the new transfer waits for it. An unfinished
    // transfer without COMMIT is dropped.
    const previous = this.#current;
    if (previous !== undefined && !previous.committing) void previous.ready.then((t) => t?.abort());
    const plans = h.vols.map((p) => {
      const offer = this.#offers[p.v];
      if (offer === undefined) throw new BlockMirrorError('BM_ERR_PROTOCOL', `transfer for volume index ${p.v}, not offered in the handshake`);
      return { name: offer.name, key: p.v, lineage: offer.generation, from: p.from, full: p.full, chunkSize: p.chunk, granularity: p.gran, tableBytes: p.tbl, granules: p.n };
    });
    const names = plans.map((p) => p.name);
    // admitted at once or refused at once (BM_ERR_BUSY) until its BEGIN is handled: what a transfer sends
    // is held in RAM only meanwhile (then it goes to the staging files), so a flood holds no more than the bound
    let release: () => void = () => undefined;
    let admission: BlockMirrorError | undefined;
    try {
      release = this.#store.admitTransfer();
    } catch (error) {
      admission = toBlockMirrorError(error);
    }
    const ready = (async (): Promise<StagedTransfer | undefined> => {
      if (previous !== undefined) {
        if (previous.work !== undefined) await previous.work;
        else await previous.ready.then((t) => t?.abort());
      }
      try {
        if (admission !== undefined) throw admission;
        const t = await this.#store.begin(this.#source, h.to, plans);
        this.#events.begin?.({ source: this.#source, to: h.to, volumes: names });
        return t;
      } catch (error) {
        const err = toBlockMirrorError(error);
        log('refused transfer to freeze %d from %s: %s', h.to, this.#source, err.message);
        this.#events.transferError?.({ source: this.#source, to: h.to, error: err });
        // what each volume holds, so that the source can plan again (its view may be stale after a cut)
        const held = plans.map((p) => {
          try {
            const img = this.#store.image(p.name);
            return img.lineage === p.lineage && !img.seeding ? img.freeze : 0;
          } catch {
            return 0;
          }
        });
        this.#conn.send(MessageType.CYCLE_ACK, { id: h.id, to: h.to, code: err.code, message: err.message, held });
        return undefined;
      }
    })();
    void ready.then(release, release);
    this.#current = { id: h.id, to: h.to, ready, bytes: 0, committing: false, volumes: names, work: undefined, waiting: new Set() };
  }

  /** Keeps a frame's payload until the transfer's BEGIN is handled. */
  #hold(cur: Current, payload: Uint8Array | 'zero'): { payload: Uint8Array | 'zero' | undefined } {
    const held = { payload };
    cur.waiting.add(held);
    return held;
  }

  /** The payload kept by {@link #hold} (undefined: released, the connection closed meanwhile). */
  #take(cur: Current, held: { payload: Uint8Array | 'zero' | undefined }): Uint8Array | 'zero' | undefined {
    cur.waiting.delete(held);
    return held.payload;
  }

  /**
   * Drops the transfer of a connection that closed or is failed: aborted once
   * begun (a transfer whose COMMIT arrived is committed first). Before its
   * COMMIT, the data waiting for its BEGIN is released at once: a slow BEGIN
   * (a state write on a busy disk) behind many closed connections would
   * otherwise hold all they sent (issue 14).
   */
  #drop(cur: Current): void {
    if (!cur.committing) {
      for (const held of cur.waiting) held.payload = undefined;
      cur.waiting.clear();
    }
    void cur.ready.then((t) => t?.abort());
  }

  /** The current transfer if `id` is it; frames of an older transfer are ignored. */
  #for(id: number): Current | undefined {
    const cur = this.#current;
    if (cur === undefined || cur.id !== id) return undefined;
    return cur;
  }

  /** Runs a transfer step; a protocol error closes the connection. */
  #guard(step: () => void): void {
    try {
      step();
    } catch (error) {
      const err = toBlockMirrorError(error, 'BM_ERR_PROTOCOL');
      const cur = this.#current;
      this.#current = undefined;
      if (cur !== undefined) this.#drop(cur);
      this.#conn.fail(err);
    }
  }
}
