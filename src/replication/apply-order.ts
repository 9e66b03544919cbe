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

/** A request submitted and not finished: what runs it and who waits for it. */
interface Entry {
  seq: number;
  end: number;
  apply: () => Promise<void>;
  resolve: () => void;
  reject: (error: unknown) => void;
}

/** Something waiting for its barrier: a request, or a callback (`whenApplied`). */
interface Waiting {
  barrier: number;
  /** Arrival order: waiters with the same barrier run first come, first served. */
  n: number;
  entry: Entry | undefined;
  run: (() => void) | undefined;
}

const done: Promise<void> = Promise.resolve();

/** Per (stream, volume) ordering state on the target. */
export class ApplyOrder {
  #watermark: number;
  /** Applied seqs above the watermark. */
  readonly #applied = new Set<number>();
  /** Seqs waiting or running, with their outcome. */
  readonly #pending = new Map<number, Promise<void>>();
  /** Waiters, a binary min-heap on (barrier, arrival): a watermark move releases exactly those it satisfies. */
  #waiting: Waiting[] = [];
  #arrivals = 0;
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
    let entry!: Entry;
    const outcome = new Promise<void>((resolve, reject) => {
      entry = { seq, end, apply, resolve, reject };
    });
    this.#pending.set(seq, outcome);
    if (barrier <= this.#watermark) this.#start(entry);
    else this.#wait({ barrier, n: this.#arrivals++, entry, run: undefined });
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
    const dropped = this.#waiting.sort((a, b) => a.n - b.n);
    this.#waiting = [];
    for (const w of dropped) {
      if (w.entry === undefined) continue;
      this.#pending.delete(w.entry.seq);
      w.entry.reject(new BlockMirrorError('BM_ERR_CLOSED', `request seq ${w.entry.seq} was superseded by a new session of the primary`));
    }
    const running = [...this.#pending.values()].map((p) => p.catch(() => undefined));
    await Promise.all(running);
  }

  /** Runs `run` once every seq ≤ `barrier` is applied (at once if already so). */
  whenApplied(barrier: number, run: () => void): void {
    if (barrier <= this.#watermark) run();
    else this.#wait({ barrier, n: this.#arrivals++, entry: undefined, run });
  }

  #start(entry: Entry): void {
    entry.apply().then(
      () => {
        this.#finish(entry.seq, true, entry.end);
        entry.resolve();
      },
      (error: unknown) => {
        this.#finish(entry.seq, false);
        entry.reject(error);
      },
    );
  }

  #finish(seq: number, applied: boolean, end = seq): void {
    this.#pending.delete(seq);
    if (!applied) return;
    if (seq <= this.#watermark + 1 && end > this.#watermark) {
      this.#watermark = end;
      // a skip record covers seqs that may have been applied out of order
      if (end > seq) for (const s of this.#applied) if (s <= end) this.#applied.delete(s);
      while (this.#applied.delete(this.#watermark + 1)) this.#watermark++;
      this.#release();
    } else if (seq > this.#watermark) {
      this.#applied.add(seq);
    }
  }

  /** Runs every waiter whose barrier the watermark has reached, in (barrier, arrival) order. */
  #release(): void {
    const heap = this.#waiting;
    while (heap.length > 0 && heap[0]!.barrier <= this.#watermark) {
      const w = heap[0]!;
      const last = heap.pop()!;
      if (heap.length > 0) {
        heap[0] = last;
        siftDown(heap, 0);
      }
      if (w.entry !== undefined) this.#start(w.entry);
      else w.run!();
    }
  }

  #wait(w: Waiting): void {
    const heap = this.#waiting;
    heap.push(w);
    let i = heap.length - 1;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (!before(w, heap[parent]!)) break;
      heap[i] = heap[parent]!;
      i = parent;
    }
    heap[i] = w;
  }
}

function before(a: Waiting, b: Waiting): boolean {
  return a.barrier < b.barrier || (a.barrier === b.barrier && a.n < b.n);
}

function siftDown(heap: Waiting[], i: number): void {
  const w = heap[i]!;
  const n = heap.length;
  for (;;) {
    let child = 2 * i + 1;
    if (child >= n) break;
    if (child + 1 < n && before(heap[child + 1]!, heap[child]!)) child++;
    if (!before(heap[child]!, w)) break;
    heap[i] = heap[child]!;
    i = child;
  }
  heap[i] = w;
}
