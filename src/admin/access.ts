/**
 * Who may use the admin endpoint: on loopback, anyone on the machine; on
 * any other address, only a client with the bearer token or (with TLS) a
 * client certificate the CA signed. `/metrics` may be left open on purpose.
 *
 * @module
 */
import { timingSafeEqual, createHash } from 'node:crypto';
import type http from 'node:http';
import { BlockMirrorError } from '../errors.js';
import { isLoopbackHost } from '../transport/loopback.js';

/** How the admin endpoint authenticates requests. */
export interface AdminAccess {
  /** Bearer token every request must carry (`Authorization: Bearer TOKEN`), if any. */
  readonly token: string | undefined;
  /** Requests come over TLS with a verified client certificate. */
  readonly clientCertificates: boolean;
  /** `/metrics` answers without authentication. */
  readonly openMetrics: boolean;
}

/**
 * Checks the endpoint's settings: a non-loopback host needs a token or TLS
 * client certificates.
 *
 * @throws {BlockMirrorError} `BM_ERR_INVALID_ARGUMENT` for an unauthenticated non-loopback endpoint or an empty token.
 */
export function adminAccess(host: string, token: string | undefined, clientCertificates: boolean, openMetrics: boolean): AdminAccess {
  if (token !== undefined && (typeof token !== 'string' || token.length < 16)) {
    throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', 'the admin token must be a string of at least 16 characters');
  }
  if (!isLoopbackHost(host) && token === undefined && !clientCertificates) {
    throw new BlockMirrorError(
      'BM_ERR_INVALID_ARGUMENT',
      `the admin endpoint on ${host} (not loopback) needs authentication: a bearer token (--admin-token-file / BLOCKMIRROR_ADMIN_TOKEN) or TLS client certificates`,
      { details: { host } },
    );
  }
  return { token, clientCertificates, openMetrics };
}

function digest(s: string): Buffer {
  return createHash('sha256').update(s).digest();
}

/** True when `req` may read `path` (the TLS layer already refused clients without a valid certificate). */
export function mayRead(access: AdminAccess, req: http.IncomingMessage, path: string): boolean {
  if (access.token === undefined) return true;
  if (path === '/metrics' && access.openMetrics) return true;
  const header = req.headers.authorization;
  if (typeof header !== 'string') return false;
  const m = /^Bearer\s+(.+)$/i.exec(header.trim());
  if (m === null) return false;
  // compare digests: constant time whatever the lengths
  return timingSafeEqual(digest(m[1]!), digest(access.token));
}
