/**
 * The journal-only part of a volume's backlog: requests queued for the target
 * whose record the journal holds durably and that have nothing in RAM — no
 * payload and no request object. They are kept as runs of consecutive seqs
 * (with the payload size of their requests, so that the volume's counters
 * stay exact), and become requests again, oldest first, when they are read
 * back from the journal to be sent.
 *
 * A 4 GiB backlog of equal-sized writes is one run (32 bytes), whatever the
 * number of writes; the worst case (sizes or kinds changing from one request
 * to the next) is one run per request.
 *
 * @module
 * @internal
 */
import { PackedDeque } from '../journal/packed-deque.js';

/** Run flag: its requests are writes counted in the volume's async lag budget (each for its payload size). */
export const BACKLOG_LAGGED = 1;
/** Run flag: its requests are zero ranges (payload size 0). */
export const BACKLOG_ZERO = 2;

const FROM = 0;
const TO = 1;
/** Payload bytes of each request of the run (0 for zero ranges). */
const BYTES = 2;
const FLAGS = 3;

/** A piece of a run taken out of the backlog: seqs `from`..`to`, each with `bytes` of payload. */
export interface BacklogPiece {
  from: number;
  to: number;
  bytes: number;
  flags: number;
}

/** @internal Seqs held by the journal only, in increasing order. */
export class JournalBacklog {
  readonly #runs = new PackedDeque(4);
  #count = 0;
  #bytes = 0;

  /** Number of requests. */
  get count(): number {
    return this.#count;
  }

  /** Payload bytes of the requests (zero ranges count 0). */
  get bytes(): number {
    return this.#bytes;
  }

  /** Number of runs. */
  get runs(): number {
    return this.#runs.length;
  }

  /** The oldest seq, or 0 when empty. */
  get first(): number {
    return this.#runs.length > 0 ? this.#runs.get(0, FROM) : 0;
  }

  /** The newest seq, or 0 when empty. */
  get last(): number {
    return this.#runs.length > 0 ? this.#runs.get(this.#runs.length - 1, TO) : 0;
  }

  /** Payload bytes of each request of the oldest run. */
  get firstBytes(): number {
    return this.#runs.get(0, BYTES);
  }

  /** Flags of the oldest run. */
  get firstFlags(): number {
    return this.#runs.get(0, FLAGS);
  }

  /** Run `i` (0 = oldest), as a new object (for walks that are not on a hot path). */
  run(i: number): BacklogPiece {
    const r = this.#runs;
    return { from: r.get(i, FROM), to: r.get(i, TO), bytes: r.get(i, BYTES), flags: r.get(i, FLAGS) };
  }

  /** Adds `seq`, which must be greater than {@link last}. */
  add(seq: number, bytes: number, flags: number): void {
    const r = this.#runs;
    const n = r.length;
    if (n > 0 && seq <= r.get(n - 1, TO)) throw new RangeError(`journal backlog: seq ${seq} is not after ${r.get(n - 1, TO)}`);
    if (n > 0 && r.get(n - 1, TO) === seq - 1 && r.get(n - 1, BYTES) === bytes && r.get(n - 1, FLAGS) === flags) {
      r.set(n - 1, TO, seq);
    } else {
      const i = r.push();
      r.set(i, FROM, seq);
      r.set(i, TO, seq);
      r.set(i, BYTES, bytes);
      r.set(i, FLAGS, flags);
    }
    this.#count++;
    this.#bytes += bytes;
  }

  /** Removes the oldest seq. */
  shift(): void {
    const r = this.#runs;
    if (r.length === 0) return;
    this.#count--;
    this.#bytes -= r.get(0, BYTES);
    const from = r.get(0, FROM);
    if (from === r.get(0, TO)) r.shift();
    else r.set(0, FROM, from + 1);
  }

  /** Removes every seq ≤ `seq`, oldest first, telling `visit` each piece of a run removed. */
  takeThrough(seq: number, visit: (piece: BacklogPiece) => void): void {
    const r = this.#runs;
    while (r.length > 0 && r.get(0, FROM) <= seq) {
      const piece = this.run(0);
      if (piece.to <= seq) {
        r.shift();
      } else {
        piece.to = seq;
        r.set(0, FROM, seq + 1);
      }
      const n = piece.to - piece.from + 1;
      this.#count -= n;
      this.#bytes -= n * piece.bytes;
      visit(piece);
    }
  }
}
