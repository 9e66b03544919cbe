/**
 * Applies a primary's replication stream of one volume on the target in an
 * order the primary allows: a request with barrier b waits until every
 * sequence number ≤ b has been applied (the contiguous watermark). Requests
 * whose barriers are met run concurrently. A resent request is applied at
 * most once: a copy of a request that is waiting or running shares its
 * outcome, and a copy of an applied one is acknowledged without writing.
 *
 * @module
 */

interface Waiting {
  barrier: number;
  run: () => void;
}

const done: Promise<void> = Promise.resolve();

/** Per (session, volume) ordering state on the target. */
export class ApplyOrder {
  #watermark: number;
  /** Applied seqs above the watermark. */
  readonly #applied = new Set<number>();
  /** Seqs waiting or running, with their outcome. */
  readonly #pending = new Map<number, Promise<void>>();
  #waiting: Waiting[] = [];

  constructor(watermark = 0) {
    this.#watermark = watermark;
  }

  /** Every seq ≤ watermark has been applied. */
  get watermark(): number {
    return this.#watermark;
  }

  /** True if `seq` was applied already. */
  isApplied(seq: number): boolean {
    return seq <= this.#watermark || this.#applied.has(seq);
  }

  /**
   * Applies request `seq` with `apply` once every seq ≤ `barrier` is applied.
   * Resolves when it is applied (now or earlier), rejects with `apply`'s error
   * (the request may then be resent and submitted again).
   */
  submit(seq: number, barrier: number, apply: () => Promise<void>): Promise<void> {
    if (this.isApplied(seq)) return done;
    const pending = this.#pending.get(seq);
    if (pending !== undefined) return pending;
    const outcome = new Promise<void>((resolve, reject) => {
      this.whenApplied(barrier, () => {
        apply().then(
          () => {
            this.#finish(seq, true);
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

  /** Declares every seq ≤ `watermark` applied (the primary says a target acknowledged them before). */
  raise(watermark: number): void {
    if (watermark <= this.#watermark) return;
    this.#watermark = watermark;
    for (const seq of this.#applied) if (seq <= watermark) this.#applied.delete(seq);
    while (this.#applied.delete(this.#watermark + 1)) this.#watermark++;
    this.#release();
  }

  /** Runs `run` once every seq ≤ `barrier` is applied (at once if already so). */
  whenApplied(barrier: number, run: () => void): void {
    if (barrier <= this.#watermark) run();
    else this.#waiting.push({ barrier, run });
  }

  #finish(seq: number, applied: boolean): void {
    this.#pending.delete(seq);
    if (!applied) return;
    if (seq === this.#watermark + 1) {
      this.#watermark = seq;
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
