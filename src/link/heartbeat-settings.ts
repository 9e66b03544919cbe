/**
 * Heartbeat settings both ends of a session must share. Each side judges the
 * other's heartbeats by its own stale time: a primary sending every 100 ms and
 * declaring the link down after 400 ms of silence cannot work with a target
 * that answers every 1500 ms — the link would flap between `down` and
 * `probation` forever. So the primary's settings govern the session: it
 * announces them in HELLO (`hbi`, `hbs`), the target uses them for that
 * primary's link monitor and confirms them in READY; when they cannot be
 * agreed, the handshake is refused with `BM_ERR_SETTINGS_MISMATCH` and one
 * message naming both sides' values.
 *
 * @module
 */
import { BlockMirrorError } from '../errors.js';

/** Heartbeat interval and stale time of one link, in milliseconds. */
export interface HeartbeatSettings {
  /** Milliseconds between heartbeats. */
  interval: number;
  /** The link is down after this many milliseconds without a heartbeat (longer than `interval`). */
  staleAfter: number;
}

/** `interval 100 ms, stale after 400 ms`, or `heartbeats off`. */
export function describeHeartbeats(settings: HeartbeatSettings | undefined): string {
  return settings === undefined ? 'heartbeats off' : `heartbeat interval ${settings.interval} ms, stale after ${settings.staleAfter} ms`;
}

function mismatch(message: string, primary: HeartbeatSettings | undefined, mirror: HeartbeatSettings | undefined): BlockMirrorError {
  return new BlockMirrorError('BM_ERR_SETTINGS_MISMATCH', `heartbeat settings disagree: primary ${describeHeartbeats(primary)}; mirror ${describeHeartbeats(mirror)}: ${message}`, {
    details: {
      primaryHeartbeatIntervalMs: primary?.interval,
      primaryStaleAfterMs: primary?.staleAfter,
      mirrorHeartbeatIntervalMs: mirror?.interval,
      mirrorStaleAfterMs: mirror?.staleAfter,
    },
  });
}

/**
 * Target side: the settings the target uses towards a primary that sends
 * heartbeats. `offered` is what the primary announced (undefined: a primary
 * that announces none — the target's own settings apply); `own` is the
 * target's configuration (undefined: the target has heartbeats off).
 *
 * @throws {@link BlockMirrorError} `BM_ERR_SETTINGS_MISMATCH` when the target
 *   sends no heartbeats, or the primary's stale time is not longer than its interval.
 */
export function agreeHeartbeats(offered: HeartbeatSettings | undefined, own: HeartbeatSettings | undefined): HeartbeatSettings {
  if (own === undefined) {
    throw mismatch('this mirror target sends no heartbeats, so the primary would see its link go down again and again (turn heartbeats on here, or off on the primary)', offered, own);
  }
  if (offered === undefined) return own;
  if (offered.staleAfter <= offered.interval) throw mismatch("the primary's stale time must be longer than its interval", offered, own);
  return { interval: offered.interval, staleAfter: offered.staleAfter };
}

/**
 * Primary side: checks the target's READY answer (`answered`; undefined when
 * it confirmed nothing) against the primary's own settings.
 *
 * @throws {@link BlockMirrorError} `BM_ERR_SETTINGS_MISMATCH` when the target
 *   confirmed other settings, or none (it would judge our heartbeats by other
 *   values, or send none).
 */
export function checkAgreedHeartbeats(ours: HeartbeatSettings, answered: HeartbeatSettings | undefined): void {
  if (answered === undefined) {
    throw mismatch('the mirror target did not confirm them (it sends no heartbeats, or runs a blockmirror without heartbeat negotiation)', ours, undefined);
  }
  if (answered.interval !== ours.interval || answered.staleAfter !== ours.staleAfter) throw mismatch("the mirror target did not take over the primary's settings", ours, answered);
}
