/**
 * Human-readable sizes ("64M", "1GiB", "4096") for options and the CLI.
 *
 * @module
 */

import { BlockMirrorError } from '../errors.js';

const MULTIPLIERS: Readonly<Record<string, number>> = {
  '': 1,
  K: 2 ** 10,
  M: 2 ** 20,
  G: 2 ** 30,
  T: 2 ** 40,
};

const SIZE_PATTERN = /^\s*(\d+(?:\.\d+)?)\s*(?:([KMGT])(?:i?B)?|B)?\s*$/i;

/**
 * Parses a size in bytes.
 *
 * Accepts a non-negative safe integer, or a string: a decimal number followed
 * by an optional binary suffix `K`, `M`, `G`, `T` (powers of 1024, case-insensitive),
 * itself optionally followed by `B` or `iB`; a bare `B` means bytes.
 * Examples: `"4096"`, `"512K"`, `"64M"`, `"1GiB"`, `"2TB"`, `"1.5G"`, `"4096B"`.
 * A fractional number is allowed only when the result is a whole number of bytes.
 *
 * @returns the size in bytes (a safe integer).
 * @throws {BlockMirrorError} `BM_ERR_INVALID_ARGUMENT` for anything else (details `{ input }`).
 */
export function parseSize(input: string | number): number {
  if (typeof input === 'number') {
    if (Number.isSafeInteger(input) && input >= 0) return input;
    throw invalid(input, 'must be a non-negative safe integer');
  }
  if (typeof input !== 'string') throw invalid(input, 'must be a string or a number');
  const match = SIZE_PATTERN.exec(input);
  if (match === null) throw invalid(input, 'expected a number with an optional K, M, G or T suffix');
  const value = Number(match[1]);
  const multiplier = MULTIPLIERS[(match[2] ?? '').toUpperCase()] ?? 1;
  const bytes = value * multiplier;
  if (!Number.isSafeInteger(bytes)) {
    throw invalid(input, Number.isInteger(bytes) ? 'is too large' : 'is not a whole number of bytes');
  }
  return bytes;
}

function invalid(input: unknown, why: string): BlockMirrorError {
  const shown =
    typeof input === 'string' ? JSON.stringify(input) : typeof input === 'number' ? String(input) : `(${typeof input})`;
  return new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', `invalid size ${shown}: ${why}`, { details: { input } });
}
