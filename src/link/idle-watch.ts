/**
 * Idle check of a connection handler (SPEC 6, seed 000 claim 16): a handler
 * that received no frame for `idleTimeout` (T3) looks at its slot of the
 * connection array. Slot closed (the link monitor marked it stale, or the
 * owner closed it) → the handler closes its connection and exits; slot open
 * → it keeps listening for another T3.
 *
 * @module
 */
import type { Clock, TimerHandle } from '../clock.js';
import { BlockMirrorError } from '../errors.js';
import type { ConnectionSlot } from './connection-array.js';

/** Default {@link IdleWatchOptions.idleTimeout} (T3). */
export const DEFAULT_IDLE_TIMEOUT = 5000;

/** Options of {@link IdleWatch}. */
export interface IdleWatchOptions {
  /** Time source. */
  clock: Clock;
  /** T3: idle time in milliseconds after which the slot is checked (default 5000). */
  idleTimeout?: number;
  /** The slot of the connection this handler serves. */
  slot: ConnectionSlot;
  /**
   * The handler's own connection. When given, the slot also counts as closed
   * once it holds another connection (the slot was reopened meanwhile).
   */
  connection?: ConnectionSlot['connection'];
  /** Called once when the handler must close its connection and exit. */
  onExpire(): void;
  /**
   * Called at each check that finds the slot still open, with the idle time
   * (ms): a handler waiting for answers can probe its peer (PING) and give
   * up on a connection that stays silent (a black-holed path).
   */
  onIdle?(idleFor: number): void;
}

/**
 * Watches one connection handler for idleness. Call {@link touch} on every
 * received frame and {@link stop} when the handler exits for another reason.
 *
 * Rule: a check runs whenever T3 has passed since the last frame (or since
 * construction). At a check, if the slot's status is `closed` (or it holds
 * another connection than `connection`), `onExpire()` is called once and the
 * watch stops; otherwise (`open` or `connecting`) the handler keeps listening
 * and the next check is T3 after this one, or T3 after the next frame if one
 * arrives meanwhile.
 */
export class IdleWatch {
  /** T3 in milliseconds. */
  readonly idleTimeout: number;
  readonly #clock: Clock;
  readonly #slot: ConnectionSlot;
  readonly #connection: ConnectionSlot['connection'];
  readonly #checkConnection: boolean;
  readonly #onExpire: () => void;
  readonly #onIdle: ((idleFor: number) => void) | undefined;
  #lastActivity: number;
  #timer: TimerHandle | undefined;
  #stopped = false;
  #expired = false;
  #checks = 0;

  constructor(options: IdleWatchOptions) {
    const t = options.idleTimeout ?? DEFAULT_IDLE_TIMEOUT;
    if (typeof t !== 'number' || !Number.isFinite(t) || t <= 0) {
      throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', 'idleTimeout must be a positive finite number', { details: { idleTimeout: t } });
    }
    if (typeof options.onExpire !== 'function' || options.slot === undefined || options.clock === undefined) {
      throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', 'IdleWatch needs clock, slot and onExpire');
    }
    this.idleTimeout = t;
    this.#clock = options.clock;
    this.#slot = options.slot;
    this.#checkConnection = 'connection' in options;
    this.#connection = options.connection;
    this.#onExpire = options.onExpire;
    this.#onIdle = options.onIdle;
    this.#lastActivity = this.#clock.now();
    this.#arm(t);
  }

  /** A frame arrived: the idle time restarts. Cheap (no timer is touched). */
  touch(): void {
    if (!this.#stopped) this.#lastActivity = this.#clock.now();
  }

  /** Stops watching (clears the timer). Idempotent. */
  stop(): void {
    this.#stopped = true;
    if (this.#timer !== undefined) this.#clock.clearTimeout(this.#timer);
    this.#timer = undefined;
  }

  /** True once `onExpire` was called. */
  get expired(): boolean {
    return this.#expired;
  }

  /** Slot checks made so far (each after T3 of idleness). */
  get checks(): number {
    return this.#checks;
  }

  /** Milliseconds since the last frame (or construction). */
  get idleFor(): number {
    return this.#clock.now() - this.#lastActivity;
  }

  #arm(ms: number): void {
    this.#timer = this.#clock.setTimeout(() => {
      this.#timer = undefined;
      this.#fire();
    }, ms);
  }

  #fire(): void {
    if (this.#stopped) return;
    const idle = this.#clock.now() - this.#lastActivity;
    if (idle < this.idleTimeout) {
      // A frame arrived meanwhile: check when T3 has passed since it.
      this.#arm(this.idleTimeout - idle);
      return;
    }
    this.#checks++;
    const slot = this.#slot;
    const gone = slot.status === 'closed' || (this.#checkConnection && slot.connection !== this.#connection);
    if (!gone) {
      // Slot still open: keep listening; check again after another T3.
      this.#arm(this.idleTimeout);
      this.#onIdle?.(idle);
      return;
    }
    this.#expired = true;
    this.stop();
    this.#onExpire();
  }
}
