/**
 * Injectable time. Everything in blockmirror that waits or measures time goes
 * through a {@link Clock}, so tests can run timers in virtual time.
 *
 * @module
 */

/** Opaque timer handle returned by {@link Clock.setTimeout} / {@link Clock.setInterval}. */
export type TimerHandle = unknown;

/** A source of time and timers. */
export interface Clock {
  /** Milliseconds since an arbitrary epoch; monotonic for the real clock. */
  now(): number;
  setTimeout(callback: () => void, ms: number): TimerHandle;
  clearTimeout(handle: TimerHandle): void;
  setInterval(callback: () => void, ms: number): TimerHandle;
  clearInterval(handle: TimerHandle): void;
}

/** The real clock: `performance.now()` and Node's timers (unref'd so they never hold the process open). */
export const systemClock: Clock = {
  now: () => performance.now(),
  setTimeout: (callback, ms) => {
    const t = setTimeout(callback, ms);
    t.unref();
    return t;
  },
  clearTimeout: (handle) => clearTimeout(handle as NodeJS.Timeout),
  setInterval: (callback, ms) => {
    const t = setInterval(callback, ms);
    t.unref();
    return t;
  },
  clearInterval: (handle) => clearInterval(handle as NodeJS.Timeout),
};

/**
 * Wraps an object with `Date.now`-style timers (for example a clock from
 * `@sinonjs/fake-timers`' `createClock()`) as a {@link Clock}.
 */
export function clockFrom(timers: {
  now: number | (() => number);
  setTimeout(cb: () => void, ms: number): unknown;
  clearTimeout(h: unknown): void;
  setInterval(cb: () => void, ms: number): unknown;
  clearInterval(h: unknown): void;
}): Clock {
  return {
    now: () => (typeof timers.now === 'function' ? timers.now() : timers.now),
    setTimeout: (cb, ms) => timers.setTimeout(cb, ms),
    clearTimeout: (h) => timers.clearTimeout(h),
    setInterval: (cb, ms) => timers.setInterval(cb, ms),
    clearInterval: (h) => timers.clearInterval(h),
  };
}

/**
 * Like {@link systemClock}, but its timers keep the event loop alive. Used by
 * simulated I/O (the in-memory network), whose pending deliveries must hold
 * the process open as a socket would.
 */
export const activeClock: Clock = {
  now: () => performance.now(),
  setTimeout: (callback, ms) => setTimeout(callback, ms),
  clearTimeout: (handle) => clearTimeout(handle as NodeJS.Timeout),
  setInterval: (callback, ms) => setInterval(callback, ms),
  clearInterval: (handle) => clearInterval(handle as NodeJS.Timeout),
};

/**
 * The wall-clock time (ISO 8601, UTC) at which `clock` showed `t`: now minus
 * the time elapsed since `t` on `clock`. Status documents use it so that their
 * times mean something outside the process (never milliseconds since an
 * arbitrary epoch such as the process start).
 */
export function wallClockIso(clock: Clock, t: number): string {
  return new Date(Date.now() - (clock.now() - t)).toISOString();
}
