/**
 * Validation helpers for options given to the public API.
 *
 * @module
 */
import { BlockMirrorError } from '../errors.js';

/** A positive safe integer ≤ max, or `BM_ERR_INVALID_ARGUMENT`. */
export function positiveInt(value: unknown, name: string, max = Number.MAX_SAFE_INTEGER): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 1 || value > max) {
    throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', `${name} must be an integer between 1 and ${max}`, { details: { [name]: value } });
  }
  return value;
}

/** A non-negative safe integer, or `BM_ERR_INVALID_ARGUMENT`. */
export function nonNegativeInt(value: unknown, name: string): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 0) {
    throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', `${name} must be a non-negative integer`, { details: { [name]: value } });
  }
  return value;
}

/** The secret as bytes (UTF-8 for strings); undefined when not set. */
export function secretBytes(secret: unknown): Uint8Array | undefined {
  if (secret === undefined) return undefined;
  if (typeof secret === 'string' && secret.length > 0) return Buffer.from(secret, 'utf8');
  if (secret instanceof Uint8Array && secret.length > 0) return secret;
  throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', 'secret must be a non-empty string or Uint8Array');
}

/** Volume names: 1–255 printable characters without '/' or control characters. */
export function checkVolumeName(name: unknown): string {
  // eslint-disable-next-line no-control-regex
  if (typeof name !== 'string' || name.length === 0 || name.length > 255 || /[\u0000-\u001f\u007f/]/.test(name)) {
    throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', `invalid volume name ${JSON.stringify(name)}: 1–255 characters, no '/' or control characters`);
  }
  return name;
}
