/**
 * FIFO of mirror requests waiting to be sent, in sequence order. Retried
 * requests are put back at their sequence position.
 *
 * @module
 */
import type { MirrorRequest } from './mirror-request.js';

/** Ordered queue with O(1) push/shift and sorted re-insertion. */
export class SendQueue {
  #items: MirrorRequest[] = [];
  #head = 0;

  get length(): number {
    return this.#items.length - this.#head;
  }

  /** Appends `req`, or puts it at its place when it sorts before the last one (a probe with an older barrier). */
  push(req: MirrorRequest): void {
    const last = this.#items.length > this.#head ? this.#items[this.#items.length - 1] : undefined;
    if (last !== undefined && sendOrder(req) < sendOrder(last)) this.reinsert(req);
    else this.#items.push(req);
  }

  peek(): MirrorRequest | undefined {
    return this.#items[this.#head];
  }

  shift(): MirrorRequest | undefined {
    if (this.#head >= this.#items.length) return undefined;
    const req = this.#items[this.#head]!;
    this.#items[this.#head] = undefined as unknown as MirrorRequest;
    this.#head++;
    if (this.#head > 1024 && this.#head * 2 > this.#items.length) this.#compact();
    return req;
  }

  /** Puts `req` back before the first queued request that comes after it (flushes stay behind their barrier). */
  reinsert(req: MirrorRequest): void {
    this.#compact();
    const key = sendOrder(req);
    let lo = 0;
    let hi = this.#items.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (sendOrder(this.#items[mid]!) <= key) lo = mid + 1;
      else hi = mid;
    }
    this.#items.splice(lo, 0, req);
  }

  /**
   * Inserts requests (sorted by their send order) at their places, with one
   * merge: the requests read back from the journal in one batch.
   */
  insertSorted(reqs: readonly MirrorRequest[]): void {
    if (reqs.length === 0) return;
    const items = this.#items;
    const last = items.length > this.#head ? items[items.length - 1]! : undefined;
    if (last === undefined || sendOrder(reqs[0]!) >= sendOrder(last)) {
      for (const req of reqs) items.push(req);
      return;
    }
    const merged: MirrorRequest[] = [];
    let k = 0;
    for (let i = this.#head; i < items.length; i++) {
      const item = items[i]!;
      const key = sendOrder(item);
      while (k < reqs.length && sendOrder(reqs[k]!) < key) merged.push(reqs[k++]!);
      merged.push(item);
    }
    while (k < reqs.length) merged.push(reqs[k++]!);
    this.#items = merged;
    this.#head = 0;
  }

  /** Keeps only the requests `keep` accepts (drops, in one pass, requests their volume no longer owns). */
  prune(keep: (req: MirrorRequest) => boolean): void {
    this.#items = this.#items.slice(this.#head).filter(keep);
    this.#head = 0;
  }

  #compact(): void {
    if (this.#head === 0) return;
    this.#items = this.#items.slice(this.#head);
    this.#head = 0;
  }
}

/** Sort key: requests with a seq by seq; a probe (flush, hash) right after the requests its barrier covers. */
export function sendOrder(req: MirrorRequest): number {
  return req.kind === 'flush' || req.kind === 'hash' ? req.barrier + 0.5 : req.seq;
}
