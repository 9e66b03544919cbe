/**
 * Heartbeat keys derived from a TLS session: when the link runs over TLS
 * and no shared secret is configured, both ends derive the same HMAC key for
 * the session's heartbeats from the TLS session of the connection in slot 0
 * (RFC 5705 keying material, labelled, with the session id as context). A
 * heartbeat is then authenticated by the TLS handshake that proved the peer.
 * Over TLS nothing else is accepted (`LinkMonitorOptions.requireKey`): no
 * heartbeat counts before the first slot-0 handshake; the key is kept across
 * an outage (the probation's heartbeats need it) until the next slot-0
 * handshake replaces it; where none can be valid (a restart of either end),
 * the primary reconnects by backoff instead (`LinkMonitor.rekeyNeeded`).
 *
 * @module
 */
import type { TransportConnection } from '../transport/transport.js';

/** RFC 5705 label of the heartbeat key. */
export const HEARTBEAT_KEY_LABEL = 'EXPORTER-blockmirror-heartbeat-v1';

/** The heartbeat key of `session` from `connection`'s TLS session, or undefined without TLS. */
export function heartbeatKeyOf(connection: TransportConnection, session: string): Uint8Array | undefined {
  const derive = connection.exportKeyingMaterial;
  if (typeof derive !== 'function') return undefined;
  try {
    return derive.call(connection, 32, HEARTBEAT_KEY_LABEL, Buffer.from(session, 'utf8'));
  } catch {
    return undefined;
  }
}
