/**
 * Coded errors. Every error blockmirror raises on purpose is a {@link BlockMirrorError}
 * whose `code` is one of {@link ERROR_CODES}. Codes are stable: match on `code`, never on
 * the message text.
 *
 * @module
 */

/**
 * Every error code with the meaning users can rely on. This table is the single
 * place where codes are defined; the README's error table is checked against it.
 */
export const ERROR_CODES = {
  BM_ERR_INVALID_ARGUMENT: 'An API argument or option is missing, of the wrong type or out of its allowed range.',
  BM_ERR_OUT_OF_RANGE: 'A request addresses bytes outside the volume or device (offset + length > size).',
  BM_ERR_MISALIGNED: 'A request offset or length is not a multiple of the device block size.',
  BM_ERR_CLOSED: 'The object (device, volume, primary, target, connection) was closed; nothing was done.',
  BM_ERR_IO: 'The underlying device reported an I/O error (EIO); the request may not have been applied.',
  BM_ERR_NO_SPACE: 'The underlying device or file system is full (ENOSPC); the request was not applied.',
  BM_ERR_NOT_SUPPORTED: 'The device or peer does not support this operation (e.g. trim; an NBD fast zero of a range that may hold data, answered `ENOTSUP`).',
  BM_ERR_READ_ONLY: 'The volume is read-only here (e.g. a mirror target volume); nothing was written.',
  BM_ERR_BAD_MAGIC: 'A received frame does not start with the blockmirror magic number; the connection is closed.',
  BM_ERR_BAD_VERSION: 'A received frame carries a wire-format version this build does not speak; the connection is closed.',
  BM_ERR_BAD_CHECKSUM: 'A received frame failed its CRC-32 check (header or payload); the connection is closed.',
  BM_ERR_HEADER_TOO_LARGE: 'A received frame announces a header longer than the configured limit; nothing was allocated.',
  BM_ERR_FRAME_TOO_LARGE: 'A frame (received or to be sent) has a payload longer than the configured limit; nothing was allocated.',
  BM_ERR_BAD_HEADER: 'A frame header is not valid msgpack or lacks required fields for its message type.',
  BM_ERR_UNKNOWN_MESSAGE: 'A mandatory message of unknown type was received; the connection is closed.',
  BM_ERR_PROTOCOL: 'A peer sent a message that is not allowed in the current protocol state.',
  BM_ERR_PROTOCOL_VERSION: 'The peers share no protocol version.',
  BM_ERR_HANDSHAKE_TIMEOUT: 'The peer did not complete the handshake in time.',
  BM_ERR_AUTH_FAILED: 'The peer could not prove knowledge of the shared secret (or demanded one we lack).',
  BM_ERR_UNKNOWN_VOLUME: 'The peer does not host a volume of that name.',
  BM_ERR_VOLUME_MISMATCH: 'The peer hosts the volume with a different size or block size; nothing was written.',
  BM_ERR_VOLUME_BUSY: 'Another primary already mirrors into this target volume (one writer per volume).',
  BM_ERR_SETTINGS_MISMATCH: 'Settings both peers must share (heartbeats: interval and stale time) could not be agreed; the handshake was refused and nothing was claimed.',
  BM_ERR_SPLIT_BRAIN: 'The target volume holds data the primary cannot prove to be an ancestor of its own: written on its own since it last had the primary\'s data (split brain, a promoted target), or of another lineage (another primary, a primary that lost its state); nothing was overwritten. Resolve with a policy or by hand.',
  BM_ERR_NOT_DIVERGED: 'A split-brain resolution was asked for a volume that has no refused peer (no split brain or unrelated lineage to resolve); nothing was changed.',
  BM_ERR_PROMOTE_REFUSED: 'The volume cannot be promoted: its image is not up-to-date, or its primary did not hand it over (demote the primary first, or force the promotion when the primary is lost); nothing was changed.',
  BM_ERR_DEMOTED: 'The volume\'s pairing state says its image is a mirror\'s (the volume was demoted, or the state directory is a mirror\'s): a primary serves it only after it was promoted; nothing was written.',
  BM_ERR_CONNECTION_CLOSED: 'The connection closed before the request was answered.',
  BM_ERR_CONNECT_FAILED: 'A connection to the peer could not be opened.',
  BM_ERR_DEVICE_UNAVAILABLE: 'The storage behind a device (an NBD server) is not reachable: the request failed (one in flight when the connection broke may have been applied in part); the device reconnects in the background.',
  BM_ERR_ADDRESS_IN_USE: 'The listening address is already in use.',
  BM_ERR_MIRROR_WRITE_FAILED: 'The mirror target could not write the data; it stays queued and is retried.',
  BM_ERR_TIMEOUT: 'An operation did not complete within its configured timeout (a suspended sync write past `mirrorTimeout`; an `NbdBlockDevice` request past `requestTimeout`: a local device error, the request may have been applied in part).',
  BM_ERR_JOURNAL_FULL: 'The journal has no room for the record (the oldest unacknowledged record would be overwritten); nothing was written.',
  BM_ERR_JOURNAL_CORRUPT: 'The journal file is not a blockmirror journal or its superblock is unreadable; nothing was changed.',
  BM_ERR_BITMAP_CORRUPT: 'The dirty-bitmap file is not a blockmirror bitmap or its header is unreadable; nothing was changed.',
  BM_ERR_TOO_MANY_CONNECTIONS: 'A listener already holds its configured maximum of connections, unauthenticated connections or peer sessions; the new one was closed at once and nothing else was affected.',
  BM_ERR_BUSY: 'A cycle target has its maximum of transfers waiting for their BEGIN to be handled (`maxPendingTransfers`); the new one was refused at its BEGIN, nothing was staged, and the source tries again at its next cycle.',
} as const;

/** A stable error code string, see {@link ERROR_CODES}. */
export type ErrorCode = keyof typeof ERROR_CODES;

/** Extra information that travels with a {@link BlockMirrorError}. */
export interface BlockMirrorErrorOptions {
  /** The lower-level error this one wraps. */
  cause?: unknown;
  /** Free-form details (offsets, limits, peer addresses) for logs and status. */
  details?: Record<string, unknown>;
}

/**
 * The one error class of blockmirror. `code` is stable; `details` carries
 * machine-readable context.
 */
export class BlockMirrorError extends Error {
  /** Stable code, see {@link ERROR_CODES}. */
  readonly code: ErrorCode;
  /** Machine-readable context (offsets, limits, …). */
  readonly details: Record<string, unknown>;

  constructor(code: ErrorCode, message: string, options: BlockMirrorErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'BlockMirrorError';
    this.code = code;
    this.details = options.details ?? {};
  }
}

/** True when `value` is a {@link BlockMirrorError}, optionally of the given code. */
export function isBlockMirrorError(value: unknown, code?: ErrorCode): value is BlockMirrorError {
  return value instanceof BlockMirrorError && (code === undefined || value.code === code);
}

/** True when `code` is one of the known {@link ErrorCode}s. */
export function isErrorCode(code: unknown): code is ErrorCode {
  return typeof code === 'string' && Object.hasOwn(ERROR_CODES, code);
}

/**
 * Converts a Node.js system error (EIO, ENOSPC, EADDRINUSE, …) or anything else
 * into a {@link BlockMirrorError}; coded errors pass through unchanged.
 */
export function toBlockMirrorError(error: unknown, fallback: ErrorCode = 'BM_ERR_IO'): BlockMirrorError {
  if (error instanceof BlockMirrorError) return error;
  const sys = (error as { code?: unknown } | null)?.code;
  const message = error instanceof Error ? error.message : String(error);
  switch (sys) {
    case 'EIO':
      return new BlockMirrorError('BM_ERR_IO', message, { cause: error });
    case 'ENOSPC':
    case 'EDQUOT':
      return new BlockMirrorError('BM_ERR_NO_SPACE', message, { cause: error });
    case 'EADDRINUSE':
      return new BlockMirrorError('BM_ERR_ADDRESS_IN_USE', message, { cause: error });
    case 'ECONNREFUSED':
    case 'EHOSTUNREACH':
    case 'ENETUNREACH':
      return new BlockMirrorError('BM_ERR_CONNECT_FAILED', message, { cause: error });
    case 'ECONNRESET':
    case 'EPIPE':
      return new BlockMirrorError('BM_ERR_CONNECTION_CLOSED', message, { cause: error });
    default:
      return new BlockMirrorError(fallback, message, { cause: error });
  }
}

/** A `BM_ERR_INVALID_ARGUMENT` error: a bad option or argument of an API call. @internal */
export function invalidArgument(message: string, details?: Record<string, unknown>): BlockMirrorError {
  return new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', message, details === undefined ? {} : { details });
}

/**
 * Refusals by a peer that retrying cannot fix until someone changes the
 * configuration: links reconnect at their slowest pace after them. @internal
 */
export const CONFIGURATION_REFUSALS: ReadonlySet<ErrorCode> = new Set<ErrorCode>([
  'BM_ERR_AUTH_FAILED',
  'BM_ERR_VOLUME_MISMATCH',
  'BM_ERR_UNKNOWN_VOLUME',
  'BM_ERR_PROTOCOL_VERSION',
  'BM_ERR_NOT_SUPPORTED',
  'BM_ERR_SPLIT_BRAIN',
  'BM_ERR_SETTINGS_MISMATCH',
]);
