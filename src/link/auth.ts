/**
 * HMAC-SHA256 challenge–response. Each side proves knowledge of the shared
 * secret over both nonces, with a role label so that a proof can never be
 * reflected back to its sender.
 *
 * @module
 */
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';

/** Length of handshake nonces and proofs in bytes. */
export const NONCE_LENGTH = 32;

/** 32 fresh random bytes. */
export function createNonce(): Uint8Array {
  return randomBytes(NONCE_LENGTH);
}

/**
 * The proof a side sends: HMAC-SHA256(secret, label ‖ first nonce ‖ second nonce).
 * The server proves over (client nonce, server nonce) with label "bm-server";
 * the client over (server nonce, client nonce) with label "bm-client".
 */
export function computeProof(
  secret: Uint8Array,
  role: 'server' | 'client',
  first: Uint8Array,
  second: Uint8Array,
): Uint8Array {
  const mac = createHmac('sha256', secret);
  mac.update(role === 'server' ? 'bm-server\0' : 'bm-client\0');
  mac.update(first);
  mac.update(second);
  return mac.digest();
}

/** Constant-time check of a received proof. */
export function verifyProof(
  secret: Uint8Array,
  role: 'server' | 'client',
  first: Uint8Array,
  second: Uint8Array,
  proof: Uint8Array | undefined,
): boolean {
  if (proof === undefined || proof.length !== NONCE_LENGTH) return false;
  const expected = computeProof(secret, role, first, second);
  return timingSafeEqual(expected, proof);
}
