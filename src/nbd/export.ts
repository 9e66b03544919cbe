/**
 * What an {@link NbdServer} serves: named exports, each backed by an
 * {@link NbdBackend} (any {@link BlockDevice}, or anything shaped like one,
 * such as a replicated volume handle).
 *
 * @module
 */
import type { BlockDevice, BlockDeviceSupports } from '../device/block-device.js';
import { BlockMirrorError, isBlockMirrorError } from '../errors.js';
import {
  NBD_EINVAL,
  NBD_EIO,
  NBD_ENOSPC,
  NBD_ENOTSUP,
  NBD_EPERM,
  NBD_MAX_STRING_LENGTH,
} from './protocol.js';

/** Options of {@link NbdBackend.writeZeroes}. */
export interface NbdWriteZeroesOptions {
  /** Force unit access: the zeroes are durable when the promise resolves. */
  fua?: boolean;
  /** The client asked that no hole be punched (`NBD_CMD_FLAG_NO_HOLE`): the range must stay allocated. */
  noHole?: boolean;
}

/**
 * The storage behind an export. Structurally a subset of {@link BlockDevice}
 * (so any device, or a volume handle with the same methods, can be served)
 * plus an optional `writeZeroes`. An optional `blockStatus` (see
 * {@link BlockDevice.blockStatus}) answers `NBD_CMD_BLOCK_STATUS` on
 * `base:allocation`; without it every range is reported allocated with
 * unknown content.
 *
 * The server validates every request (range, alignment to `blockSize`,
 * length limits, read-only) before calling the backend, so the backend sees
 * only requests that satisfy the {@link BlockDevice} contract.
 */
export interface NbdBackend extends Pick<BlockDevice, 'size' | 'blockSize' | 'read' | 'readInto' | 'write' | 'flush' | 'trim' | 'blockStatus'> {
  /**
   * Capabilities, as in {@link BlockDevice.supports}. Only `fua` is consulted:
   * when it is `false`, a FUA request is served as the operation followed by
   * `flush()`. Absent means "FUA is honoured by `write()`".
   */
  readonly supports?: Partial<BlockDeviceSupports>;
  /**
   * Writes zeroes over a range. Optional: without it the server calls
   * `trim` when the client allows a hole (no `NBD_CMD_FLAG_NO_HOLE`; a
   * trimmed range reads as zeroes), else writes buffers of zeroes in chunks
   * of at most 1 MiB (one chunk at a time).
   */
  writeZeroes?(offset: number, length: number, options?: NbdWriteZeroesOptions): Promise<void>;
}

/** One export of an {@link NbdServer}. */
export interface NbdExport {
  /** Name the client asks for (UTF-8, at most 4096 bytes, no NUL). The empty name is the default export. */
  name: string;
  /** Human-readable description, sent in `NBD_OPT_LIST` and `NBD_INFO_DESCRIPTION`. */
  description?: string;
  /** Refuse writes, trims and write-zeroes with `EPERM` (the backend is never called for them). */
  readOnly: boolean;
  /** The storage served. */
  backend: NbdBackend;
  /**
   * Advertise `NBD_FLAG_CAN_MULTI_CONN` (default `true`). Correct when every
   * connection to this export reaches the same backend object and the
   * backend's `flush()` covers all writes completed before it, whichever
   * connection issued them (true of every {@link BlockDevice}: its flush is
   * device-wide and the server keeps no per-connection cache). Set `false`
   * if the backend keeps state per caller.
   */
  multiConn?: boolean;
}

/**
 * Maps an error raised by a backend to the NBD error value sent to the client:
 * `BM_ERR_NO_SPACE` → `ENOSPC`, `BM_ERR_READ_ONLY` → `EPERM`,
 * `BM_ERR_OUT_OF_RANGE` / `BM_ERR_MISALIGNED` / `BM_ERR_INVALID_ARGUMENT` → `EINVAL`,
 * anything else → `EIO`. System errors (`ENOSPC`, `EDQUOT`, `EFBIG`, `EROFS`, `EPERM`, `EACCES`)
 * are mapped the same way.
 */
export function nbdErrorFor(error: unknown): number {
  if (isBlockMirrorError(error)) {
    switch (error.code) {
      case 'BM_ERR_NO_SPACE':
        return NBD_ENOSPC;
      case 'BM_ERR_READ_ONLY':
        return NBD_EPERM;
      case 'BM_ERR_NOT_SUPPORTED':
        return NBD_ENOTSUP;
      case 'BM_ERR_OUT_OF_RANGE':
      case 'BM_ERR_MISALIGNED':
      case 'BM_ERR_INVALID_ARGUMENT':
        return NBD_EINVAL;
      default:
        return NBD_EIO;
    }
  }
  const sys = (error as { code?: unknown } | null)?.code;
  switch (sys) {
    case 'ENOSPC':
    case 'EDQUOT':
    case 'EFBIG':
      return NBD_ENOSPC;
    case 'EROFS':
    case 'EPERM':
    case 'EACCES':
      return NBD_EPERM;
    default:
      return NBD_EIO;
  }
}

/** Byte length of `s` in UTF-8. */
function utf8Length(s: string): number {
  return Buffer.byteLength(s, 'utf8');
}

/**
 * Checks an export's shape (name and description lengths, size and block
 * size) and throws `BM_ERR_INVALID_ARGUMENT` if the server could not serve it
 * correctly.
 */
export function validateNbdExport(exp: NbdExport): void {
  const fail = (message: string): never => {
    throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', `NBD export ${JSON.stringify(exp?.name)}: ${message}`, {
      details: { export: exp?.name },
    });
  };
  if (exp === null || typeof exp !== 'object') fail('not an object');
  if (typeof exp.name !== 'string') fail('name must be a string');
  if (exp.name.includes('\0')) fail('name must not contain NUL');
  if (utf8Length(exp.name) > NBD_MAX_STRING_LENGTH) fail(`name longer than ${NBD_MAX_STRING_LENGTH} bytes`);
  if (exp.description !== undefined) {
    if (typeof exp.description !== 'string') fail('description must be a string');
    if (exp.description.includes('\0')) fail('description must not contain NUL');
    if (utf8Length(exp.description) > NBD_MAX_STRING_LENGTH) fail(`description longer than ${NBD_MAX_STRING_LENGTH} bytes`);
  }
  if (typeof exp.readOnly !== 'boolean') fail('readOnly must be a boolean');
  const b = exp.backend;
  if (b === null || typeof b !== 'object') fail('backend missing');
  const { size, blockSize } = b;
  if (!Number.isInteger(blockSize) || blockSize < 1 || blockSize > 65536 || (blockSize & (blockSize - 1)) !== 0) {
    fail('backend.blockSize must be a power of two between 1 and 65536');
  }
  if (!Number.isSafeInteger(size) || size < 0 || size % blockSize !== 0) {
    fail('backend.size must be a non-negative safe integer multiple of blockSize');
  }
  for (const m of ['read', 'write', 'flush'] as const) {
    if (typeof b[m] !== 'function') fail(`backend.${m} must be a function`);
  }
  if (b.trim !== undefined && typeof b.trim !== 'function') fail('backend.trim must be a function when present');
  if (b.blockStatus !== undefined && typeof b.blockStatus !== 'function') fail('backend.blockStatus must be a function when present');
  if (b.writeZeroes !== undefined && typeof b.writeZeroes !== 'function') {
    fail('backend.writeZeroes must be a function when present');
  }
}
