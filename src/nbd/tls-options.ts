/**
 * TLS settings of the NBD server (`NBD_OPT_STARTTLS`): the options a user
 * gives and the context the server uses.
 *
 * @module
 */
import tls from 'node:tls';
import { invalidArgument } from '../errors.js';

/** TLS settings of an {@link NbdServer} (see {@link NbdServerOptions.tls}). */
export interface NbdTlsOptions {
  /** A ready context (certificate, key and, for client certificates, the CA). */
  secureContext?: tls.SecureContext;
  /** Server certificate chain (PEM). */
  cert?: string | Buffer;
  /** Server private key (PEM). */
  key?: string | Buffer;
  /** CA that signs client certificates (PEM): clients must present one. */
  ca?: string | Buffer;
  /** Require a client certificate (default: true when `ca` is given). */
  requireClientCertificate?: boolean;
}

/** What the server uses for STARTTLS. @internal */
export interface NbdTls {
  readonly context: tls.SecureContext;
  readonly requireClientCertificate: boolean;
}

/** The STARTTLS settings of a server, or undefined when TLS is not offered. @internal */
export function nbdTls(options: NbdTlsOptions | undefined): NbdTls | undefined {
  if (options === undefined) return undefined;
  if (options === null || typeof options !== 'object') throw invalidArgument('NbdServer: tls must be an object');
  const requireClientCertificate = options.requireClientCertificate ?? options.ca !== undefined;
  if (options.secureContext !== undefined) return { context: options.secureContext, requireClientCertificate };
  if (options.cert === undefined || options.key === undefined) throw invalidArgument('NbdServer: tls needs a secureContext, or cert and key');
  try {
    return {
      context: tls.createSecureContext({ cert: options.cert, key: options.key, ...(options.ca === undefined ? {} : { ca: options.ca }), minVersion: 'TLSv1.2' }),
      requireClientCertificate,
    };
  } catch (error) {
    throw invalidArgument(`NbdServer: unusable TLS certificate or key: ${(error as Error).message}`);
  }
}
