/**
 * What a peer may send before it authenticated: handshake frames only, so
 * headers of at most 64 KiB and no payload. A listener decodes with these
 * limits until the handshake succeeded, then widens them to its own (so an
 * unauthenticated peer never makes it buffer more than one small header).
 *
 * @module
 */
import type { CodecLimits } from '../codec/frame.js';

/** Largest frame header accepted before authentication (64 KiB − 1, the wire maximum). */
export const PRE_AUTH_MAX_HEADER_LENGTH = 65535;

/** The limits a listener uses before authentication, given its own. */
export function preAuthLimits(limits: CodecLimits): CodecLimits {
  return { maxHeaderLength: Math.min(limits.maxHeaderLength, PRE_AUTH_MAX_HEADER_LENGTH), maxPayloadLength: 0 };
}
