/**
 * Verification result of a server-side `TLSSocket` made outside
 * `tls.Server` (a listener that wraps accepted sockets itself, or NBD's
 * STARTTLS upgrade): Node sets `authorized` only for sockets of a
 * `tls.Server`, so this asks the socket's handle (`verifyError()`), as
 * `tls.Server` does. A socket without a peer certificate, or a handle that
 * cannot answer, fails closed.
 *
 * @module
 */
import type tls from 'node:tls';

/** Why the peer's certificate failed verification against the CA, or undefined when it passed. */
export function peerCertificateError(socket: tls.TLSSocket): string | undefined {
  const handle = (socket as unknown as { _handle?: { verifyError?: () => (Error & { code?: string }) | null } })._handle;
  if (typeof handle?.verifyError !== 'function') return 'cannot verify the peer certificate';
  const error = handle.verifyError();
  if (error !== null && error !== undefined) return error.code ?? error.message;
  const cert = socket.getPeerCertificate();
  if (cert === null || typeof cert !== 'object' || Object.keys(cert).length === 0) return 'no peer certificate';
  return undefined;
}
