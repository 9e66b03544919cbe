/**
 * Applies a primary's replication stream of one volume on the target in an
 * order the primary allows: a request with barrier b waits until every
 * sequence number ≤ b has been applied (the contiguous watermark). Requests
 * whose barriers are met run concurrently. A resent request is applied at
 * most once: a copy of a request that is waiting or running shares its
 * outcome, and a copy of an applied one is acknowledged without writing.
 *
 * Each instance has an `incarnation` id: a primary that sees a new one after
 * a reconnect knows the target lost its volatile ordering state (it
 * restarted, or it switched streams) and resends everything above the
 * watermark the target reported.
 *
 * @module
 */
import { randomBytes } from 'node:crypto';
import { BlockMirrorError } from '../errors.js';

interface Waiting {
  barrier: number;
  run: () => void;
  /** Drops the waiter (a new session ends the old one's requests). */
  cancel?: () => void;
}

const done: Promise<void> = Promise.resolve();

/** Per (stream, volume) ordering state on the target. */
export class ApplyOrder {
  #watermark: number;
  /** Applied seqs above the watermark. */
  readonly #applied = new Set<number>();
  /** Seqs waiting or running, with their outcome. */
  readonly #pending = new Map<number, Promise<void>>();
  #waiting: Waiting[] = [];
  /** Random id of this ordering state (changes when the target restarts or starts a new stream). */
  readonly incarnation: string;

  constructor(watermark = 0, incarnation: string = randomBytes(6).toString('hex')) {
    this.#watermark = watermark;
    this.incarnation = incarnation;
  }

  /** Every seq ≤ watermark has been applied. */
  get watermark(): number {
    return this.#watermark;
  }

  /** Requests whose barrier is not met yet. */
  get waitingCount(): number {
    return this.#waiting.length;
  }

  /** True if `seq` was applied already. */
  isApplied(seq: number): boolean {
    return seq <= this.#watermark || this.#applied.has(seq);
  }

  /** True when a request with this barrier would have to wait. */
  wouldWait(barrier: number): boolean {
    return barrier > this.#watermark;
  }

  /**
   * Applies request `seq` with `apply` once every seq ≤ `barrier` is applied.
   * Resolves when it is applied (now or earlier), rejects with `apply`'s error
   * (the request may then be resent and submitted again).
   */
  submit(seq: number, barrier: number, apply: () => Promise<void>, end = seq): Promise<void> {
    if (end === seq ? this.isApplied(seq) : end <= this.#watermark) return done;
    const pending = this.#pending.get(seq);
    if (pending !== undefined) return pending;
    const outcome = new Promise<void>((resolve, reject) => {
      const cancel = (): void => {
        this.#pending.delete(seq);
        reject(new BlockMirrorError('BM_ERR_CLOSED', `request seq ${seq} was superseded by a new session of the primary`));
      };
      this.#whenApplied(barrier, cancel, () => {
        apply().then(
          () => {
            this.#finish(seq, true, end);
            resolve();
          },
          (error: unknown) => {
            this.#finish(seq, false);
            reject(error);
          },
        );
      });
    });
    this.#pending.set(seq, outcome);
    return outcome;
  }

  /**
   * Applies a skip record: sequence numbers `[from, to]` carry nothing (a
   * restart of the primary left them unused, or their data reaches the target
   * by a resync instead). Ordered like a request with barrier `from - 1`;
   * once every seq below `from` is applied the watermark moves to `to`.
   */
  skip(from: number, to: number): Promise<void> {
    if (to < from) return done;
    return this.submit(from, from - 1, () => done, to);
  }

  /**
   * Ends the requests of an earlier session: those still waiting for a barrier
   * are dropped (their connections are gone; the primary resends what it
   * needs), and the promise resolves once the running ones finished, so that
   * a new session never races a stale write.
   */
  async settle(): Promise<void> {
    const dropped = this.#waiting;
    this.#waiting = [];
    for (const w of dropped) w.cancel?.();
    const running = [...this.#pending.values()].map((p) => p.catch(() => undefined));
    await Promise.all(running);
  }

  /** Runs `run` once every seq ≤ `barrier` is applied (at once if already so). */
  whenApplied(barrier: number, run: () => void): void {
    this.#whenApplied(barrier, undefined, run);
  }

  #whenApplied(barrier: number, cancel: (() => void) | undefined, run: () => void): void {
    if (barrier <= this.#watermark) run();
    else if (cancel === undefined) this.#waiting.push({ barrier, run });
    else this.#waiting.push({ barrier, run, cancel });
  }

  #finish(seq: number, applied: boolean, end = seq): void {
    this.#pending.delete(seq);
    if (!applied) return;
    if (seq <= this.#watermark + 1 && end > this.#watermark) {
      this.#watermark = end;
      for (const s of this.#applied) if (s <= end) this.#applied.delete(s);
      while (this.#applied.delete(this.#watermark + 1)) this.#watermark++;
      this.#release();
    } else if (seq > this.#watermark) {
      this.#applied.add(seq);
    }
  }

  #release(): void {
    if (this.#waiting.length === 0) return;
    const ready: Waiting[] = [];
    const still: Waiting[] = [];
    for (const w of this.#waiting) (w.barrier <= this.#watermark ? ready : still).push(w);
    if (ready.length === 0) return;
    this.#waiting = still;
    for (const w of ready) w.run();
  }
}
