/**
 * Constants of the NBD protocol (`NetworkBlockDevice/nbd` `doc/proto.md`):
 * magic numbers, handshake and transmission flags, option and reply codes,
 * command types and flags, and the error values allowed on the wire.
 *
 * All multi-byte fields are big-endian on the wire.
 *
 * @module
 */

/** `NBDMAGIC`, first 64 bits the server sends (as a bigint: it does not fit a safe integer). */
export const NBD_INIT_MAGIC = 0x4e42444d41474943n;
/** `IHAVEOPT`: second 64 bits of the newstyle greeting and prefix of every client option. */
export const NBD_OPTS_MAGIC = 0x49484156454f5054n;
/** Magic of every fixed-newstyle option reply. */
export const NBD_REP_MAGIC = 0x3e889045565a9n;
/** Second 64 bits of an oldstyle greeting (`cliserv_magic`); blockmirror speaks newstyle only. */
export const NBD_OLDSTYLE_MAGIC = 0x00420281861253n;
/** Magic of a transmission request. */
export const NBD_REQUEST_MAGIC = 0x25609513;
/** Magic of a simple reply. */
export const NBD_SIMPLE_REPLY_MAGIC = 0x67446698;
/** Magic of a structured reply chunk. */
export const NBD_STRUCTURED_REPLY_MAGIC = 0x668e33ef;

// Handshake flags (16 bits, server → client).
/** Handshake flag: the server speaks fixed newstyle negotiation. */
export const NBD_FLAG_FIXED_NEWSTYLE = 1 << 0;
/** Handshake flag: the server can omit the 124 zero bytes after `NBD_OPT_EXPORT_NAME`. */
export const NBD_FLAG_NO_ZEROES = 1 << 1;

// Client flags (32 bits, client → server).
/** Client flag: the client speaks fixed newstyle negotiation. */
export const NBD_FLAG_C_FIXED_NEWSTYLE = 1 << 0;
/** Client flag: omit the 124 zero bytes after `NBD_OPT_EXPORT_NAME`. */
export const NBD_FLAG_C_NO_ZEROES = 1 << 1;

// Transmission flags (16 bits).
/** Transmission flag: always set. */
export const NBD_FLAG_HAS_FLAGS = 1 << 0;
/** Transmission flag: the export is read-only; writes fail with `EPERM`. */
export const NBD_FLAG_READ_ONLY = 1 << 1;
/** Transmission flag: `NBD_CMD_FLUSH` is supported. */
export const NBD_FLAG_SEND_FLUSH = 1 << 2;
/** Transmission flag: `NBD_CMD_FLAG_FUA` is supported. */
export const NBD_FLAG_SEND_FUA = 1 << 3;
/** Transmission flag: the export behaves like a rotational medium. */
export const NBD_FLAG_ROTATIONAL = 1 << 4;
/** Transmission flag: `NBD_CMD_TRIM` is supported. */
export const NBD_FLAG_SEND_TRIM = 1 << 5;
/** Transmission flag: `NBD_CMD_WRITE_ZEROES` (and `NBD_CMD_FLAG_NO_HOLE`) is supported. */
export const NBD_FLAG_SEND_WRITE_ZEROES = 1 << 6;
/** Transmission flag: `NBD_CMD_FLAG_DF` is supported on reads (structured replies only). */
export const NBD_FLAG_SEND_DF = 1 << 7;
/** Transmission flag: FLUSH and FUA on one connection cover writes completed on every connection. */
export const NBD_FLAG_CAN_MULTI_CONN = 1 << 8;
/** Transmission flag: `NBD_CMD_RESIZE` (experimental) is supported. */
export const NBD_FLAG_SEND_RESIZE = 1 << 9;
/** Transmission flag: `NBD_CMD_CACHE` is understood. */
export const NBD_FLAG_SEND_CACHE = 1 << 10;
/** Transmission flag: `NBD_CMD_FLAG_FAST_ZERO` is supported. */
export const NBD_FLAG_SEND_FAST_ZERO = 1 << 11;

// Option codes (`NBD_OPT_*`).
/** Option: choose an export and enter transmission (cannot fail gracefully). */
export const NBD_OPT_EXPORT_NAME = 1;
/** Option: end the negotiation (soft disconnect). */
export const NBD_OPT_ABORT = 2;
/** Option: list the exports. */
export const NBD_OPT_LIST = 3;
/** Option: withdrawn, unused. */
export const NBD_OPT_PEEK_EXPORT = 4;
/** Option: upgrade to TLS. */
export const NBD_OPT_STARTTLS = 5;
/** Option: describe an export without entering transmission. */
export const NBD_OPT_INFO = 6;
/** Option: describe an export and enter transmission. */
export const NBD_OPT_GO = 7;
/** Option: use structured replies in transmission. */
export const NBD_OPT_STRUCTURED_REPLY = 8;
/** Option: list metadata contexts. */
export const NBD_OPT_LIST_META_CONTEXT = 9;
/** Option: select metadata contexts (for `NBD_CMD_BLOCK_STATUS`). */
export const NBD_OPT_SET_META_CONTEXT = 10;
/** Option: 64-bit request and reply headers. */
export const NBD_OPT_EXTENDED_HEADERS = 11;

// Option reply types (`NBD_REP_*`); errors have bit 31 set.
/** Option reply: success / end of a list. */
export const NBD_REP_ACK = 1;
/** Option reply: one export in the answer to `NBD_OPT_LIST`. */
export const NBD_REP_SERVER = 2;
/** Option reply: one item of export information (`NBD_INFO_*`). */
export const NBD_REP_INFO = 3;
/** Option reply: one metadata context. */
export const NBD_REP_META_CONTEXT = 4;
const NBD_REP_FLAG_ERROR = 0x80000000;
/** Option error: option unknown to this server. */
export const NBD_REP_ERR_UNSUP = NBD_REP_FLAG_ERROR + 1;
/** Option error: forbidden by server policy. */
export const NBD_REP_ERR_POLICY = NBD_REP_FLAG_ERROR + 2;
/** Option error: syntactically or semantically invalid. */
export const NBD_REP_ERR_INVALID = NBD_REP_FLAG_ERROR + 3;
/** Option error: not supported on this platform. */
export const NBD_REP_ERR_PLATFORM = NBD_REP_FLAG_ERROR + 4;
/** Option error: TLS required first. */
export const NBD_REP_ERR_TLS_REQD = NBD_REP_FLAG_ERROR + 5;
/** Option error: the export does not exist. */
export const NBD_REP_ERR_UNKNOWN = NBD_REP_FLAG_ERROR + 6;
/** Option error: the server is shutting down. */
export const NBD_REP_ERR_SHUTDOWN = NBD_REP_FLAG_ERROR + 7;
/** Option error: the client must request `NBD_INFO_BLOCK_SIZE`. */
export const NBD_REP_ERR_BLOCK_SIZE_REQD = NBD_REP_FLAG_ERROR + 8;
/** Option error: request or reply too large. */
export const NBD_REP_ERR_TOO_BIG = NBD_REP_FLAG_ERROR + 9;

// Information types inside `NBD_REP_INFO` replies.
/** Info item: size and transmission flags (mandatory). */
export const NBD_INFO_EXPORT = 0;
/** Info item: canonical export name. */
export const NBD_INFO_NAME = 1;
/** Info item: human-readable description. */
export const NBD_INFO_DESCRIPTION = 2;
/** Info item: minimum, preferred and maximum block sizes. */
export const NBD_INFO_BLOCK_SIZE = 3;

// Command types (`NBD_CMD_*`).
/** Command: read. */
export const NBD_CMD_READ = 0;
/** Command: write (payload follows the header). */
export const NBD_CMD_WRITE = 1;
/** Command: disconnect after the in-flight requests (no reply). */
export const NBD_CMD_DISC = 2;
/** Command: make completed writes durable. */
export const NBD_CMD_FLUSH = 3;
/** Command: discard a range (hint). */
export const NBD_CMD_TRIM = 4;
/** Command: prefetch hint. */
export const NBD_CMD_CACHE = 5;
/** Command: write zeroes without a payload. */
export const NBD_CMD_WRITE_ZEROES = 6;
/** Command: query metadata contexts (structured replies only). */
export const NBD_CMD_BLOCK_STATUS = 7;
/** Command: resize (experimental). */
export const NBD_CMD_RESIZE = 8;

// Command flags (`NBD_CMD_FLAG_*`).
/** Command flag: force unit access (reply only once durable). */
export const NBD_CMD_FLAG_FUA = 1 << 0;
/** Command flag (WRITE_ZEROES): keep the range allocated. */
export const NBD_CMD_FLAG_NO_HOLE = 1 << 1;
/** Command flag (READ): do not fragment the structured reply. */
export const NBD_CMD_FLAG_DF = 1 << 2;
/** Command flag (BLOCK_STATUS): one extent only. */
export const NBD_CMD_FLAG_REQ_ONE = 1 << 3;
/** Command flag (WRITE_ZEROES): fail with `ENOTSUP` unless fast. */
export const NBD_CMD_FLAG_FAST_ZERO = 1 << 4;

// Structured reply flags and chunk types.
/** Structured reply flag: last chunk of the reply. */
export const NBD_REPLY_FLAG_DONE = 1 << 0;
/** Structured chunk: no payload, final. */
export const NBD_REPLY_TYPE_NONE = 0;
/** Structured chunk: 64-bit offset then data. */
export const NBD_REPLY_TYPE_OFFSET_DATA = 1;
/** Structured chunk: 64-bit offset and 32-bit length of zeroes. */
export const NBD_REPLY_TYPE_OFFSET_HOLE = 2;
/** Structured chunk: block status descriptors. */
export const NBD_REPLY_TYPE_BLOCK_STATUS = 5;
/** Structured chunk: error, message. */
export const NBD_REPLY_TYPE_ERROR = (1 << 15) + 1;
/** Structured chunk: error, message, offset. */
export const NBD_REPLY_TYPE_ERROR_OFFSET = (1 << 15) + 2;

// Metadata contexts.
/** The one standard metadata context: allocation status (`NBD_STATE_HOLE`, `NBD_STATE_ZERO`). */
export const NBD_META_BASE_ALLOCATION = 'base:allocation';
/** `base:allocation` flag: the extent is not allocated (a hole). */
export const NBD_STATE_HOLE = 1 << 0;
/** `base:allocation` flag: the extent reads as zeroes. */
export const NBD_STATE_ZERO = 1 << 1;

// Error values allowed in replies (`NBD_E*`).
/** Error: operation not permitted (write to a read-only export). */
export const NBD_EPERM = 1;
/** Error: input/output error. */
export const NBD_EIO = 5;
/** Error: cannot allocate memory. */
export const NBD_ENOMEM = 12;
/** Error: invalid argument (range, alignment, flags, unknown command). */
export const NBD_EINVAL = 22;
/** Error: no space left (also writes beyond the end of the export). */
export const NBD_ENOSPC = 28;
/** Error: value too large (`NBD_CMD_FLAG_DF` on a too-long read). */
export const NBD_EOVERFLOW = 75;
/** Error: operation not supported (`NBD_CMD_FLAG_FAST_ZERO`). */
export const NBD_ENOTSUP = 95;
/** Error: the server is shutting down. */
export const NBD_ESHUTDOWN = 108;

// Byte sizes of fixed-layout messages.
/** Bytes of a request header. */
export const NBD_REQUEST_SIZE = 28;
/** Bytes of a simple reply header. */
export const NBD_SIMPLE_REPLY_SIZE = 16;
/** Bytes of a structured reply chunk header. */
export const NBD_STRUCTURED_REPLY_HEADER_SIZE = 20;
/** Bytes of an option header (magic, option, length). */
export const NBD_OPTION_HEADER_SIZE = 16;
/** Bytes of an option reply header (magic, option, type, length). */
export const NBD_OPTION_REPLY_HEADER_SIZE = 20;

/** Longest string (export name, description, message) the protocol allows, in bytes. */
export const NBD_MAX_STRING_LENGTH = 4096;

/**
 * Write payloads up to this length "SHOULD NOT be considered a denial of
 * service attack" (spec, "Block size constraints"): an over-limit write
 * below it gets `EINVAL` with its payload skipped; above it the server
 * hard-disconnects.
 */
export const NBD_DOS_PAYLOAD_THRESHOLD = 1 << 25;

/** Human-readable name of an option code (for logs and error messages). */
export function optionName(option: number): string {
  switch (option) {
    case NBD_OPT_EXPORT_NAME: return 'NBD_OPT_EXPORT_NAME';
    case NBD_OPT_ABORT: return 'NBD_OPT_ABORT';
    case NBD_OPT_LIST: return 'NBD_OPT_LIST';
    case NBD_OPT_PEEK_EXPORT: return 'NBD_OPT_PEEK_EXPORT';
    case NBD_OPT_STARTTLS: return 'NBD_OPT_STARTTLS';
    case NBD_OPT_INFO: return 'NBD_OPT_INFO';
    case NBD_OPT_GO: return 'NBD_OPT_GO';
    case NBD_OPT_STRUCTURED_REPLY: return 'NBD_OPT_STRUCTURED_REPLY';
    case NBD_OPT_LIST_META_CONTEXT: return 'NBD_OPT_LIST_META_CONTEXT';
    case NBD_OPT_SET_META_CONTEXT: return 'NBD_OPT_SET_META_CONTEXT';
    case NBD_OPT_EXTENDED_HEADERS: return 'NBD_OPT_EXTENDED_HEADERS';
    default: return `option ${option}`;
  }
}

/** Human-readable name of a command type (for logs and error messages). */
export function commandName(type: number): string {
  switch (type) {
    case NBD_CMD_READ: return 'NBD_CMD_READ';
    case NBD_CMD_WRITE: return 'NBD_CMD_WRITE';
    case NBD_CMD_DISC: return 'NBD_CMD_DISC';
    case NBD_CMD_FLUSH: return 'NBD_CMD_FLUSH';
    case NBD_CMD_TRIM: return 'NBD_CMD_TRIM';
    case NBD_CMD_CACHE: return 'NBD_CMD_CACHE';
    case NBD_CMD_WRITE_ZEROES: return 'NBD_CMD_WRITE_ZEROES';
    case NBD_CMD_BLOCK_STATUS: return 'NBD_CMD_BLOCK_STATUS';
    case NBD_CMD_RESIZE: return 'NBD_CMD_RESIZE';
    default: return `command ${type}`;
  }
}

/**
 * Encodes a transmission request header (28 bytes, without its payload):
 * magic, command flags, type, handle (up to 2^53), offset, length.
 */
export function encodeRequestHeader(type: number, flags: number, handle: number, offset: number, length: number): Buffer {
  const h = Buffer.allocUnsafe(NBD_REQUEST_SIZE);
  h.writeUInt32BE(NBD_REQUEST_MAGIC, 0);
  h.writeUInt16BE(flags, 4);
  h.writeUInt16BE(type, 6);
  h.writeUInt32BE(Math.floor(handle / 0x100000000), 8);
  h.writeUInt32BE(handle >>> 0, 12);
  h.writeUInt32BE(Math.floor(offset / 0x100000000), 16);
  h.writeUInt32BE(offset >>> 0, 20);
  h.writeUInt32BE(length, 24);
  return h;
}
