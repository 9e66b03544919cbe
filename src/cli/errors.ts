/**
 * How the CLI reports errors: one line `blockmirror: <code>: <message>` on
 * stderr, exit status 2 for usage errors and 1 for everything else; the stack
 * only when `DEBUG` is set.
 *
 * @module
 */
import { BlockMirrorError, isBlockMirrorError, type ErrorCode } from '../errors.js';

/** Exit status of a usage error (bad flags or values; nothing was started). */
export const EXIT_USAGE = 2;
/** Exit status of a runtime error. */
export const EXIT_FAILURE = 1;

/** A usage error: reported like any other, exits with {@link EXIT_USAGE}. */
export function usageError(message: string, code: ErrorCode = 'BM_ERR_INVALID_ARGUMENT'): BlockMirrorError {
  return new BlockMirrorError(code, message, { details: { usage: true } });
}

/** Exit status for `error`. */
export function exitCodeFor(error: unknown): number {
  return isBlockMirrorError(error) && error.details.usage === true ? EXIT_USAGE : EXIT_FAILURE;
}

/** Collapses whitespace (a message must stay on one line). */
function oneLine(s: string): string {
  return s.replace(/\s*\n\s*/g, ' ').trim();
}

/**
 * The stderr text for `error`: `blockmirror: <code>: <message>` (one line), or
 * `blockmirror: internal error: <message>` for an error without a code;
 * with `debug`, the stack follows on the next lines.
 */
export function formatError(error: unknown, debug = false): string {
  let line: string;
  if (isBlockMirrorError(error)) line = `blockmirror: ${error.code}: ${oneLine(error.message)}`;
  else {
    const code = (error as { code?: unknown } | null)?.code;
    const message = error instanceof Error ? error.message : String(error);
    line = typeof code === 'string' ? `blockmirror: ${code}: ${oneLine(message)}` : `blockmirror: internal error: ${oneLine(message)}`;
  }
  if (debug && error instanceof Error && error.stack !== undefined) return `${line}\n${error.stack}\n`;
  return `${line}\n`;
}
