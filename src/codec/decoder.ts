/**
 * Frame decoders: {@link FrameDecoder} for a byte stream (frames split at any byte
 * boundary, many frames per chunk) and {@link decodeFrame} for one whole datagram.
 *
 * Checks, in this order, each failing with a coded {@link BlockMirrorError}:
 * magic (`BM_ERR_BAD_MAGIC`), version (`BM_ERR_BAD_VERSION`), header length
 * (`BM_ERR_HEADER_TOO_LARGE`), payload length (`BM_ERR_FRAME_TOO_LARGE`) — all from the
 * 20-byte prefix, before anything else is buffered — then, as soon as the header is in,
 * the header CRC (`BM_ERR_BAD_CHECKSUM`), the message type (`BM_ERR_UNKNOWN_MESSAGE`
 * unless `FrameFlag.OPTIONAL` is set, in which case the frame is dropped), the msgpack
 * header (`BM_ERR_BAD_HEADER`), and once the payload is in, its CRC when
 * `FrameFlag.PAYLOAD_CRC` is set (`BM_ERR_BAD_CHECKSUM`). A dropped OPTIONAL frame is
 * skipped after its header CRC: its header is not decoded and its payload not checked.
 * Unknown flag bits are ignored.
 *
 * @module
 */
import { crc32 } from 'node:zlib';
import { Decoder } from '@msgpack/msgpack';
import { BlockMirrorError } from '../errors.js';
import { validateCodecLimits } from './encoder.js';
import { DEFAULT_CODEC_LIMITS, FrameFlag, MAGIC, MessageType, PREFIX_LENGTH, WIRE_VERSION } from './frame.js';
import type { CodecLimits, Frame } from './frame.js';

const EMPTY_PAYLOAD: Buffer = Buffer.alloc(0);

/** `KNOWN_TYPES[t] === 1` when `t` is a {@link MessageType} value. */
const KNOWN_TYPES = new Uint8Array(256);
for (const value of Object.values(MessageType)) KNOWN_TYPES[value] = 1;

/**
 * Structural pre-check of a msgpack value occupying exactly `bytes[start..end)`.
 *
 * Every msgpack item takes at least one byte, so a container announcing more items
 * than bytes remain is rejected before `@msgpack/msgpack` sees it. This matters: that
 * decoder pre-allocates `new Array(size)` for each announced array, so a 64 KiB header
 * of nested `array32` heads announcing 65535 items each would make it allocate
 * gigabytes. After this check, the total of all announced container sizes is bounded by
 * the header length. Runs in O(length) with no allocation.
 */
function msgpackShapeIsValid(bytes: Buffer, start: number, end: number): boolean {
  let p = start;
  let pending = 1;
  while (pending > 0) {
    if (p >= end) return false;
    const b = bytes[p++] as number;
    pending--;
    if (b < 0x80 || b >= 0xe0) continue; // fixint
    if (b < 0x90) {
      pending += 2 * (b & 0x0f); // fixmap
    } else if (b < 0xa0) {
      pending += b & 0x0f; // fixarray
    } else if (b < 0xc0) {
      p += b & 0x1f; // fixstr
    } else {
      let skip: number;
      switch (b) {
        case 0xc0:
        case 0xc2:
        case 0xc3:
          skip = 0;
          break;
        case 0xcc:
        case 0xd0:
          skip = 1;
          break;
        case 0xcd:
        case 0xd1:
          skip = 2;
          break;
        case 0xd4:
          skip = 2;
          break;
        case 0xd5:
          skip = 3;
          break;
        case 0xca:
        case 0xce:
        case 0xd2:
          skip = 4;
          break;
        case 0xd6:
          skip = 5;
          break;
        case 0xcb:
        case 0xcf:
        case 0xd3:
          skip = 8;
          break;
        case 0xd7:
          skip = 9;
          break;
        case 0xd8:
          skip = 17;
          break;
        case 0xc4: // bin 8
        case 0xd9: // str 8
          if (p + 1 > end) return false;
          skip = 1 + (bytes[p] as number);
          break;
        case 0xc5: // bin 16
        case 0xda: // str 16
          if (p + 2 > end) return false;
          skip = 2 + bytes.readUInt16BE(p);
          break;
        case 0xc6: // bin 32
        case 0xdb: // str 32
          if (p + 4 > end) return false;
          skip = 4 + bytes.readUInt32BE(p);
          break;
        case 0xc7: // ext 8
          if (p + 1 > end) return false;
          skip = 2 + (bytes[p] as number);
          break;
        case 0xc8: // ext 16
          if (p + 2 > end) return false;
          skip = 3 + bytes.readUInt16BE(p);
          break;
        case 0xc9: // ext 32
          if (p + 4 > end) return false;
          skip = 5 + bytes.readUInt32BE(p);
          break;
        case 0xdc: // array 16
          if (p + 2 > end) return false;
          pending += bytes.readUInt16BE(p);
          skip = 2;
          break;
        case 0xdd: // array 32
          if (p + 4 > end) return false;
          pending += bytes.readUInt32BE(p);
          skip = 4;
          break;
        case 0xde: // map 16
          if (p + 2 > end) return false;
          pending += 2 * bytes.readUInt16BE(p);
          skip = 2;
          break;
        case 0xdf: // map 32
          if (p + 4 > end) return false;
          pending += 2 * bytes.readUInt32BE(p);
          skip = 4;
          break;
        default: // 0xc1 (never used)
          return false;
      }
      p += skip;
    }
    if (p > end || pending > end - p) return false;
  }
  return p === end;
}

const msgpackDecoders = new Map<number, Decoder>();

/**
 * A msgpack decoder bounded by the header length limit: no string, binary, extension
 * or array longer than the header itself, no map with more than half as many entries.
 */
function msgpackDecoderFor(maxHeaderLength: number): Decoder {
  let decoder = msgpackDecoders.get(maxHeaderLength);
  if (decoder === undefined) {
    decoder = new Decoder({
      maxStrLength: maxHeaderLength,
      maxBinLength: maxHeaderLength,
      maxExtLength: maxHeaderLength,
      maxArrayLength: maxHeaderLength,
      maxMapLength: maxHeaderLength >>> 1,
    });
    msgpackDecoders.set(maxHeaderLength, decoder);
  }
  return decoder;
}

function fail(code: 'BM_ERR_BAD_MAGIC' | 'BM_ERR_BAD_VERSION' | 'BM_ERR_HEADER_TOO_LARGE' | 'BM_ERR_FRAME_TOO_LARGE' | 'BM_ERR_BAD_CHECKSUM' | 'BM_ERR_BAD_HEADER' | 'BM_ERR_UNKNOWN_MESSAGE', message: string, details: Record<string, unknown>, cause?: unknown): BlockMirrorError {
  return new BlockMirrorError(code, message, cause === undefined ? { details } : { details, cause });
}

/**
 * Checks the prefix at `buf[off..off+20)` (magic, version, header length, payload
 * length, in that order) and returns the total frame length.
 */
function checkPrefix(buf: Buffer, off: number, limits: CodecLimits): number {
  const magic = (buf[off] as number) * 256 + (buf[off + 1] as number);
  if (magic !== MAGIC) {
    throw fail('BM_ERR_BAD_MAGIC', `bad frame magic 0x${magic.toString(16).padStart(4, '0')}`, { magic });
  }
  const version = buf[off + 2] as number;
  if (version !== WIRE_VERSION) {
    throw fail('BM_ERR_BAD_VERSION', `unsupported wire-format version ${version}`, { version, supported: WIRE_VERSION });
  }
  const headerLength = (buf[off + 6] as number) * 256 + (buf[off + 7] as number);
  if (headerLength > limits.maxHeaderLength) {
    throw fail('BM_ERR_HEADER_TOO_LARGE', `frame header of ${headerLength} bytes exceeds the limit of ${limits.maxHeaderLength}`, {
      headerLength,
      maxHeaderLength: limits.maxHeaderLength,
    });
  }
  const payloadLength = buf.readUInt32BE(off + 8);
  if (payloadLength > limits.maxPayloadLength) {
    throw fail('BM_ERR_FRAME_TOO_LARGE', `frame payload of ${payloadLength} bytes exceeds the limit of ${limits.maxPayloadLength}`, {
      payloadLength,
      maxPayloadLength: limits.maxPayloadLength,
    });
  }
  return PREFIX_LENGTH + headerLength + payloadLength;
}

/** Sentinel returned by {@link readHeader} for an OPTIONAL frame of unknown type. */
const DROP: unique symbol = Symbol('drop');

/**
 * Given the prefix and the complete header at `buf[off..)`: checks the header CRC, the
 * type, and decodes the header.
 */
function readHeader(buf: Buffer, off: number, decoder: Decoder): unknown {
  const headerStart = off + PREFIX_LENGTH;
  const headerEnd = headerStart + (buf[off + 6] as number) * 256 + (buf[off + 7] as number);
  const headerBytes = buf.subarray(headerStart, headerEnd);
  const expected = buf.readUInt32BE(off + 16);
  const actual = crc32(headerBytes, crc32(buf.subarray(off, off + 16)));
  if (actual !== expected) {
    throw fail('BM_ERR_BAD_CHECKSUM', 'frame header checksum mismatch', { expected, actual, part: 'header' });
  }
  const type = buf[off + 3] as number;
  if (KNOWN_TYPES[type] !== 1) {
    if (((buf[off + 5] as number) & FrameFlag.OPTIONAL) !== 0) return DROP;
    throw fail('BM_ERR_UNKNOWN_MESSAGE', `unknown mandatory message type ${type}`, { type });
  }
  if (!msgpackShapeIsValid(buf, headerStart, headerEnd)) {
    throw fail('BM_ERR_BAD_HEADER', 'frame header is not one well-formed msgpack value', { type });
  }
  try {
    return decoder.decode(headerBytes);
  } catch (error) {
    throw fail('BM_ERR_BAD_HEADER', `frame header is not valid msgpack: ${String(error)}`, { type }, error);
  }
}

function checkPayloadCrc(payload: Buffer, expected: number): void {
  const actual = payload.length === 0 ? 0 : crc32(payload);
  if (actual !== expected) {
    throw fail('BM_ERR_BAD_CHECKSUM', 'frame payload checksum mismatch', { expected, actual, part: 'payload' });
  }
}

/** Options of {@link FrameDecoder}. */
export interface FrameDecoderOptions {
  /**
   * Called synchronously from {@link FrameDecoder.push} for every decoded frame, in
   * order. `frame.payload` is a view into the pushed chunk when the frame arrived in one
   * chunk (the caller must not reuse that chunk's memory while it holds the payload);
   * a frame spread over several chunks gets a payload assembled once. If it throws, the
   * exception propagates out of `push` and the decoder stops (like after a decoding
   * error, but {@link FrameDecoder.error} stays undefined): the stream cannot be trusted
   * to be handled in order any more. It must not call `push` on the same decoder.
   */
  onFrame: (frame: Frame) => void;
  /** Size limits, checked from the prefix before the body is buffered. Default {@link DEFAULT_CODEC_LIMITS}. */
  limits?: CodecLimits;
}

/**
 * Streaming decoder for a byte stream.
 *
 * Frames are delivered through the `onFrame` callback given to the constructor (no
 * per-chunk array or iterator is allocated). Errors are thrown from {@link push}: the
 * first bad frame makes `push` throw a {@link BlockMirrorError} (frames before it in the
 * same chunk have been delivered); the decoder is then failed, keeps the error in
 * {@link error}, drops its buffered bytes and silently ignores any further input. The
 * connection owning it should be closed.
 *
 * Memory is bounded: the limits are checked from the 20-byte prefix, so the decoder
 * never buffers more than one frame allowed by the limits plus the last chunk pushed
 * ({@link bufferedBytes}). Bytes of an unfinished frame are kept as a list of chunks and
 * concatenated once, when the frame is complete.
 *
 * ```ts
 * const decoder = new FrameDecoder({ onFrame: (f) => handle(f) });
 * socket.on('data', (chunk) => {
 *   try { decoder.push(chunk); } catch (err) { socket.destroy(toBlockMirrorError(err)); }
 * });
 * ```
 */
export class FrameDecoder {
  /** Number of frames of unknown type with `FrameFlag.OPTIONAL` that were dropped. */
  ignoredFrames = 0;

  readonly #onFrame: (frame: Frame) => void;
  #limits: CodecLimits;
  #msgpack: Decoder;
  /** Chunks (or chunk tails) of the unfinished frame, oldest first. */
  #pending: Buffer[] = [];
  #pendingBytes = 0;
  /** Total length of the unfinished frame once its prefix is known, else 0. */
  #need = 0;
  /** Length of prefix + header of the unfinished frame once its prefix is known. */
  #headEnd = 0;
  /** `#pending` bytes `[0, 20 + headerLength)` when the header has been read, else undefined. */
  #head: Buffer | undefined = undefined;
  #header: unknown = undefined;
  #error: BlockMirrorError | undefined = undefined;
  #stopped = false;
  #busy = false;

  constructor(options: FrameDecoderOptions) {
    if (typeof options?.onFrame !== 'function') {
      throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', 'FrameDecoder needs an onFrame callback');
    }
    const limits = options.limits ?? DEFAULT_CODEC_LIMITS;
    validateCodecLimits(limits);
    this.#limits = { maxHeaderLength: limits.maxHeaderLength, maxPayloadLength: limits.maxPayloadLength };
    this.#onFrame = options.onFrame;
    this.#msgpack = msgpackDecoderFor(limits.maxHeaderLength);
  }

  /**
   * Changes the size limits for the frames that follow (a connection starts
   * with tight pre-authentication limits and widens them once the peer
   * proved itself). A frame whose prefix was already read keeps the limits it
   * was checked against.
   */
  setLimits(limits: CodecLimits): void {
    validateCodecLimits(limits);
    this.#limits = { maxHeaderLength: limits.maxHeaderLength, maxPayloadLength: limits.maxPayloadLength };
    this.#msgpack = msgpackDecoderFor(limits.maxHeaderLength);
  }

  /** Bytes received but not yet consumed (the unfinished frame). */
  get bufferedBytes(): number {
    return this.#pendingBytes;
  }

  /** The decoding error that failed this decoder, if any. */
  get error(): BlockMirrorError | undefined {
    return this.#error;
  }

  /** True once the decoder ignores input: after a decoding error or an exception thrown by `onFrame`. */
  get stopped(): boolean {
    return this.#stopped;
  }

  /**
   * Feeds received bytes. Complete frames are delivered to `onFrame` before this returns.
   * The decoder keeps references to (not copies of) the bytes of an unfinished frame, so
   * the caller must not reuse `chunk`'s memory.
   *
   * @throws {@link BlockMirrorError} the first decoding error (see the module notes for
   *   the codes); afterwards every call is a no-op. `BM_ERR_INVALID_ARGUMENT` (without
   *   failing the decoder) when called from inside `onFrame`. Whatever `onFrame` throws
   *   (the decoder then stops too).
   */
  push(chunk: Buffer): void {
    if (this.#stopped) return;
    if (this.#busy) {
      throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', 'FrameDecoder.push called from inside onFrame');
    }
    if (chunk.length === 0) return;
    this.#busy = true;
    try {
      if (this.#pendingBytes === 0) {
        this.#parse(chunk, 0);
      } else {
        this.#pending.push(chunk);
        this.#pendingBytes += chunk.length;
        this.#advance();
      }
    } finally {
      this.#busy = false;
    }
  }

  /** Decodes frames from `chunk[pos..)`, with nothing pending. */
  #parse(chunk: Buffer, pos: number): void {
    const len = chunk.length;
    const limits = this.#limits;
    while (len - pos >= PREFIX_LENGTH) {
      let total: number;
      let header: unknown;
      try {
        total = checkPrefix(chunk, pos, limits);
        if (len - pos < total) break;
        header = readHeader(chunk, pos, this.#msgpack);
        if (header === DROP) {
          this.ignoredFrames++;
          pos += total;
          continue;
        }
      } catch (error) {
        throw this.#fail(error);
      }
      const payloadStart = pos + PREFIX_LENGTH + (chunk[pos + 6] as number) * 256 + (chunk[pos + 7] as number);
      const end = pos + total;
      const payload = payloadStart === end ? EMPTY_PAYLOAD : chunk.subarray(payloadStart, end);
      const flags = (chunk[pos + 4] as number) * 256 + (chunk[pos + 5] as number);
      if ((flags & FrameFlag.PAYLOAD_CRC) !== 0) {
        try {
          checkPayloadCrc(payload, chunk.readUInt32BE(pos + 12));
        } catch (error) {
          throw this.#fail(error);
        }
      }
      const type = chunk[pos + 3] as number;
      pos = end;
      try {
        this.#onFrame({ type, flags, header, payload });
      } catch (error) {
        this.#stop();
        throw error;
      }
    }
    if (pos < len) {
      this.#stash(chunk, pos);
      this.#advance();
    }
  }

  /** Keeps `chunk[pos..)` (not a complete frame) as the start of the unfinished frame; nothing else is pending. */
  #stash(chunk: Buffer, pos: number): void {
    const rest = pos === 0 ? chunk : chunk.subarray(pos);
    this.#pending.push(rest);
    this.#pendingBytes = rest.length;
  }

  /** Runs the checks that the pending bytes allow; completes the frame when it is all there. */
  #advance(): void {
    let header: unknown;
    try {
      if (this.#need === 0) {
        if (this.#pendingBytes < PREFIX_LENGTH) return;
        const prefix = this.#gather(0, PREFIX_LENGTH);
        this.#need = checkPrefix(prefix, 0, this.#limits);
        this.#headEnd = PREFIX_LENGTH + (prefix[6] as number) * 256 + (prefix[7] as number);
      }
      if (this.#head === undefined) {
        if (this.#pendingBytes < this.#headEnd) return;
        const head = this.#gather(0, this.#headEnd);
        this.#header = readHeader(head, 0, this.#msgpack);
        this.#head = head;
      }
      if (this.#pendingBytes < this.#need) return;
      header = this.#header;
    } catch (error) {
      throw this.#fail(error);
    }

    // The frame is complete; only the last pending chunk can hold bytes beyond it.
    const head = this.#head;
    const need = this.#need;
    const pending = this.#pending;
    const last = pending[pending.length - 1] as Buffer;
    const usedOfLast = last.length - (this.#pendingBytes - need);
    const dropped = header === DROP;
    const type = head[3] as number;
    const flags = (head[4] as number) * 256 + (head[5] as number);
    let payload = EMPTY_PAYLOAD;
    if (!dropped && need > head.length) {
      payload = this.#gather(head.length, need - head.length);
      if ((flags & FrameFlag.PAYLOAD_CRC) !== 0) {
        try {
          checkPayloadCrc(payload, head.readUInt32BE(12));
        } catch (error) {
          throw this.#fail(error);
        }
      }
    }
    this.#pending = [];
    this.#pendingBytes = 0;
    this.#need = 0;
    this.#head = undefined;
    this.#header = undefined;

    if (dropped) {
      this.ignoredFrames++;
    } else {
      try {
        this.#onFrame({ type, flags, header, payload });
      } catch (error) {
        this.#stop();
        throw error;
      }
    }
    if (usedOfLast < last.length) this.#parse(last, usedOfLast);
  }

  /**
   * Bytes `[start, start + length)` of the pending stream: a view when they lie in one
   * chunk, else a single copy.
   */
  #gather(start: number, length: number): Buffer {
    const pending = this.#pending;
    let i = 0;
    let chunk = pending[0] as Buffer;
    while (start >= chunk.length) {
      start -= chunk.length;
      chunk = pending[++i] as Buffer;
    }
    if (start + length <= chunk.length) return chunk.subarray(start, start + length);
    const out = Buffer.allocUnsafe(length);
    let written = chunk.copy(out, 0, start);
    while (written < length) {
      chunk = pending[++i] as Buffer;
      written += chunk.copy(out, written, 0, Math.min(chunk.length, length - written));
    }
    return out;
  }

  /** Marks the decoder failed with `error` (a decoding error) and releases buffered bytes. */
  #fail(error: unknown): BlockMirrorError {
    const coded =
      error instanceof BlockMirrorError
        ? error
        : new BlockMirrorError('BM_ERR_BAD_HEADER', `frame decoding failed: ${String(error)}`, { cause: error });
    this.#error = coded;
    this.#stop();
    return coded;
  }

  /** Stops decoding for good and releases buffered bytes. */
  #stop(): void {
    this.#stopped = true;
    this.#pending = [];
    this.#pendingBytes = 0;
    this.#need = 0;
    this.#head = undefined;
    this.#header = undefined;
  }
}

/** Options of {@link decodeFrame}. */
export interface DecodeFrameOptions {
  /** Size limits. Default {@link DEFAULT_CODEC_LIMITS}. */
  limits?: CodecLimits;
}

/**
 * Decodes one whole frame, e.g. a datagram. `buf` must hold exactly one frame.
 * The payload is a view into `buf`.
 *
 * @returns the frame, or `null` for a frame of unknown type carrying `FrameFlag.OPTIONAL`
 *   (to be ignored).
 * @throws {@link BlockMirrorError} the codes of {@link FrameDecoder}, in the same order;
 *   `BM_ERR_BAD_HEADER` (details.reason `truncated` / `trailing-bytes`) when `buf` is
 *   shorter or longer than the frame it announces (checked right after the prefix).
 */
export function decodeFrame(buf: Buffer, options?: DecodeFrameOptions): Frame | null {
  let limits: CodecLimits = DEFAULT_CODEC_LIMITS;
  if (options?.limits !== undefined) {
    limits = options.limits;
    validateCodecLimits(limits);
  }
  if (buf.length < PREFIX_LENGTH) {
    throw fail('BM_ERR_BAD_HEADER', `datagram of ${buf.length} bytes is shorter than a frame prefix`, {
      reason: 'truncated',
      length: buf.length,
    });
  }
  const total = checkPrefix(buf, 0, limits);
  if (buf.length !== total) {
    throw fail('BM_ERR_BAD_HEADER', `datagram of ${buf.length} bytes holds a frame of ${total} bytes`, {
      reason: buf.length < total ? 'truncated' : 'trailing-bytes',
      length: buf.length,
      frameLength: total,
    });
  }
  const header = readHeader(buf, 0, msgpackDecoderFor(limits.maxHeaderLength));
  if (header === DROP) return null;
  const payloadStart = PREFIX_LENGTH + (buf[6] as number) * 256 + (buf[7] as number);
  const payload = payloadStart === total ? EMPTY_PAYLOAD : buf.subarray(payloadStart, total);
  const flags = (buf[4] as number) * 256 + (buf[5] as number);
  if ((flags & FrameFlag.PAYLOAD_CRC) !== 0) checkPayloadCrc(payload, buf.readUInt32BE(12));
  return { type: buf[3] as number, flags, header, payload };
}
