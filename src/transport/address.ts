/**
 * Validation of {@link TransportAddress} values given to the public API.
 *
 * @module
 */
import { BlockMirrorError } from '../errors.js';
import type { TransportAddress } from './transport.js';

/**
 * Returns a copy of `address` when it is `{ host: non-empty string, port:
 * integer 0…65535 }`; throws `BM_ERR_INVALID_ARGUMENT` naming `what` otherwise.
 */
export function checkAddress(address: unknown, what: string): TransportAddress {
  const a = address as TransportAddress | null;
  if (a === null || typeof a !== 'object' || typeof a.host !== 'string' || a.host === '') {
    throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', `${what}: address.host must be a non-empty string`);
  }
  if (!Number.isInteger(a.port) || a.port < 0 || a.port > 65535) {
    throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', `${what}: address.port must be an integer in 0..65535`, { details: { port: a.port } });
  }
  return { host: a.host, port: a.port };
}
