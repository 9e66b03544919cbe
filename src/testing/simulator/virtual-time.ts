/**
 * Virtual time for simulations: a {@link Clock} whose timers fire only when
 * the simulation advances it, one at a time, in a fixed order.
 *
 * @module
 */
import type { Clock, TimerHandle } from '../../clock.js';
import { BlockMirrorError } from '../../errors.js';

// Captured at load: real macrotask turns, whatever a test installs later.
const realSetImmediate = globalThis.setImmediate;

interface Timer {
  readonly id: number;
  due: number;
  readonly callback: () => void;
  readonly interval: number | undefined;
  cancelled: boolean;
}

/** A handle of a global timer while {@link VirtualTime.installGlobals} is active (looks like Node's `Timeout`). */
class VirtualTimeout {
  readonly #vt: VirtualTime;
  readonly timer: Timer;
  constructor(vt: VirtualTime, timer: Timer) {
    this.#vt = vt;
    this.timer = timer;
  }
  ref(): this {
    return this;
  }
  unref(): this {
    return this;
  }
  hasRef(): boolean {
    return false;
  }
  refresh(): this {
    this.#vt.refresh(this.timer);
    return this;
  }
  [Symbol.toPrimitive](): number {
    return this.timer.id;
  }
}

/**
 * A virtual clock and the scheduler that drives it.
 *
 * Timers are kept in a min-heap ordered by (due time, creation order), so two
 * runs that create the same timers fire them in the same order. Between two
 * timers the scheduler lets the real event loop {@link settle} (microtasks,
 * `process.nextTick`, and a few `setImmediate` turns for the in-memory
 * network's zero-delay deliveries). Nothing waits for wall-clock time.
 *
 * ```ts
 * const vt = new VirtualTime();
 * const restore = vt.installGlobals(); // optional: global setTimeout & Date.now too
 * try { await vt.runFor(5000); } finally { restore(); }
 * ```
 */
/** What {@link VirtualTime.drive} saw of a promise. */
export interface Settled<T> {
  value?: T;
  error?: unknown;
  /** False: still pending when the time ran out. */
  done: boolean;
}

/**
 * Actions a simulation schedules in virtual time (fault steps, restarts):
 * cancelled together when the faults stop, skipped once the run is stopped,
 * a failing action logged rather than thrown.
 */
export class ScheduledActions {
  readonly #handles = new Set<TimerHandle>();
  #stopped = false;

  constructor(
    private readonly vt: VirtualTime,
    private readonly onError: (error: unknown) => void,
  ) {}

  /** Runs `fn` after `ms` of virtual time, unless cancelled or stopped first. */
  later(ms: number, fn: () => void | Promise<void>): void {
    const handle = this.vt.setTimeout(() => {
      this.#handles.delete(handle);
      if (this.#stopped) return;
      void Promise.resolve().then(fn).catch(this.onError);
    }, ms);
    this.#handles.add(handle);
  }

  /** Cancels every action not run yet. */
  cancelAll(): void {
    for (const h of this.#handles) this.vt.clearTimeout(h);
    this.#handles.clear();
  }

  /** From now on, actions that come due do nothing. */
  stop(): void {
    this.#stopped = true;
  }
}

export class VirtualTime implements Clock {
  #now: number;
  #heap: Timer[] = [];
  #nextId = 1;
  readonly #turns: number;
  /** Timers fired so far. */
  fired = 0;

  /**
   * @param options.start - initial time in ms (default 0).
   * @param options.settleTurns - `setImmediate` turns per {@link settle} (default 2).
   */
  constructor(options: { start?: number; settleTurns?: number } = {}) {
    this.#now = options.start ?? 0;
    this.#turns = options.settleTurns ?? 2;
  }

  now(): number {
    return this.#now;
  }

  /** Timers pending. */
  get pending(): number {
    let n = 0;
    for (const t of this.#heap) if (!t.cancelled) n++;
    return n;
  }

  setTimeout(callback: () => void, ms: number): TimerHandle {
    return this.#add(callback, ms, undefined);
  }

  clearTimeout(handle: TimerHandle): void {
    const timer = timerOf(handle);
    if (timer !== undefined) timer.cancelled = true;
  }

  setInterval(callback: () => void, ms: number): TimerHandle {
    return this.#add(callback, ms, Math.max(1, sanitize(ms)));
  }

  clearInterval(handle: TimerHandle): void {
    this.clearTimeout(handle);
  }

  /** @internal re-arms a timer from now (Node's `timeout.refresh()`). */
  refresh(timer: Timer): void {
    if (timer.cancelled) return;
    timer.cancelled = true;
    const fresh: Timer = { id: timer.id, due: this.#now + (timer.interval ?? 1), callback: timer.callback, interval: timer.interval, cancelled: false };
    this.#push(fresh);
  }

  /** Lets pending microtasks, ticks and `setImmediate` callbacks run (no virtual time passes). */
  async settle(): Promise<void> {
    for (let i = 0; i < this.#turns; i++) await new Promise<void>((resolve) => realSetImmediate(resolve));
  }

  /** The due time of the next timer, or undefined when none is pending. */
  nextDue(): number | undefined {
    this.#dropCancelled();
    return this.#heap[0]?.due;
  }

  /**
   * Advances virtual time to `until`, firing every timer due by then in order
   * and settling after each one. `stop` is checked after each timer: when it
   * returns true the run ends early (time stays at that timer).
   */
  async runUntil(until: number, stop?: () => boolean): Promise<void> {
    await this.settle();
    for (;;) {
      if (stop?.() === true) return;
      this.#dropCancelled();
      const head = this.#heap[0];
      if (head === undefined || head.due > until) break;
      this.#pop();
      this.#now = Math.max(this.#now, head.due);
      if (head.interval !== undefined) {
        head.due = this.#now + head.interval;
        this.#push(head);
      }
      this.fired++;
      head.callback();
      await this.settle();
    }
    if (until > this.#now) this.#now = until;
    await this.settle();
  }

  /** {@link runUntil} `now() + ms`. */
  runFor(ms: number, stop?: () => boolean): Promise<void> {
    return this.runUntil(this.#now + ms, stop);
  }

  /**
   * Runs until `condition()` holds (checked after every timer) or `timeout`
   * ms of virtual time passed; resolves whether it held.
   */
  async runUntilTrue(condition: () => boolean, timeout: number): Promise<boolean> {
    const deadline = this.#now + timeout;
    await this.runUntil(deadline, condition);
    return condition();
  }

  /**
   * Runs virtual time until `p` settles or `timeout` ms passed: its value or
   * error, and whether it settled at all.
   */
  async drive<T>(p: Promise<T>, timeout = 10_000): Promise<Settled<T>> {
    const out: Settled<T> = { done: false };
    p.then(
      (value) => {
        out.value = value;
        out.done = true;
      },
      (error: unknown) => {
        out.error = error;
        out.done = true;
      },
    );
    await this.runUntilTrue(() => out.done, timeout);
    return out;
  }

  /**
   * Routes the global `setTimeout`/`setInterval` (and their `clear…`) and
   * `Date.now` to this clock until the returned function is called, so that
   * code using them directly also runs in virtual time. Only one instance may
   * be installed at a time. `setImmediate` and `process.nextTick` stay real.
   */
  installGlobals(epoch = 1_700_000_000_000): () => void {
    const g = globalThis as unknown as Record<string, unknown> & { [INSTALLED]?: VirtualTime };
    if (g[INSTALLED] !== undefined) throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', 'another VirtualTime is installed');
    const saved = { setTimeout: g.setTimeout, clearTimeout: g.clearTimeout, setInterval: g.setInterval, clearInterval: g.clearInterval, dateNow: Date.now };
    const realClearTimeout = globalThis.clearTimeout;
    const realClearInterval = globalThis.clearInterval;
    g[INSTALLED] = this;
    g.setTimeout = (cb: (...args: unknown[]) => void, ms?: number, ...args: unknown[]) => new VirtualTimeout(this, this.#timer(() => cb(...args), ms ?? 0, undefined));
    g.setInterval = (cb: (...args: unknown[]) => void, ms?: number, ...args: unknown[]) =>
      new VirtualTimeout(this, this.#timer(() => cb(...args), ms ?? 0, Math.max(1, sanitize(ms ?? 0))));
    g.clearTimeout = (h: unknown) => {
      if (h instanceof VirtualTimeout) h.timer.cancelled = true;
      else realClearTimeout(h as NodeJS.Timeout);
    };
    g.clearInterval = (h: unknown) => {
      if (h instanceof VirtualTimeout) h.timer.cancelled = true;
      else realClearInterval(h as NodeJS.Timeout);
    };
    Date.now = () => epoch + Math.floor(this.#now);
    let restored = false;
    return () => {
      if (restored) return;
      restored = true;
      g.setTimeout = saved.setTimeout;
      g.clearTimeout = saved.clearTimeout;
      g.setInterval = saved.setInterval;
      g.clearInterval = saved.clearInterval;
      Date.now = saved.dateNow;
      delete g[INSTALLED];
    };
  }

  /** Cancels every pending timer (end of a simulation). */
  clearAll(): void {
    for (const t of this.#heap) t.cancelled = true;
    this.#heap = [];
  }

  #add(callback: () => void, ms: number, interval: number | undefined): TimerHandle {
    return new TimerRef(this.#timer(callback, ms, interval));
  }

  #timer(callback: () => void, ms: number, interval: number | undefined): Timer {
    const timer: Timer = { id: this.#nextId++, due: this.#now + sanitize(ms), callback, interval, cancelled: false };
    this.#push(timer);
    return timer;
  }

  #dropCancelled(): void {
    while (this.#heap.length > 0 && this.#heap[0]!.cancelled) this.#pop();
  }

  #push(t: Timer): void {
    const h = this.#heap;
    h.push(t);
    let i = h.length - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (!before(h[i]!, h[p]!)) break;
      [h[i], h[p]] = [h[p]!, h[i]!];
      i = p;
    }
  }

  #pop(): Timer | undefined {
    const h = this.#heap;
    const top = h[0];
    const last = h.pop();
    if (h.length > 0 && last !== undefined) {
      h[0] = last;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let m = i;
        if (l < h.length && before(h[l]!, h[m]!)) m = l;
        if (r < h.length && before(h[r]!, h[m]!)) m = r;
        if (m === i) break;
        [h[i], h[m]] = [h[m]!, h[i]!];
        i = m;
      }
    }
    return top;
  }
}

const INSTALLED = Symbol.for('blockmirror.virtualTime');

/** Handle returned by {@link VirtualTime.setTimeout}. */
class TimerRef {
  constructor(readonly timer: Timer) {}
}

function timerOf(handle: TimerHandle): Timer | undefined {
  if (handle instanceof TimerRef || handle instanceof VirtualTimeout) return handle.timer;
  return undefined;
}

function sanitize(ms: number): number {
  return typeof ms === 'number' && Number.isFinite(ms) && ms > 0 ? ms : 0;
}

function before(a: Timer, b: Timer): boolean {
  return a.due < b.due || (a.due === b.due && a.id < b.id);
}
