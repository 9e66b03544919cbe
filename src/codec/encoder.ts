/**
 * Frame encoder: fixed prefix + msgpack header in one allocation, payload passed through.
 *
 * @module
 */
import { crc32 } from 'node:zlib';
import { Encoder } from '@msgpack/msgpack';
import { BlockMirrorError } from '../errors.js';
import { DEFAULT_CODEC_LIMITS, FrameFlag, MAGIC, PREFIX_LENGTH, WIRE_VERSION } from './frame.js';
import type { CodecLimits } from './frame.js';

/** Largest header the 16-bit `headerLength` field can describe. */
const MAX_WIRE_HEADER_LENGTH = 0xffff;
/** Largest payload the 32-bit `payloadLength` field can describe. */
const MAX_WIRE_PAYLOAD_LENGTH = 0xffffffff;
/** Past this size the shared msgpack encoder (and its grown buffer) is replaced. */
const ENCODER_BUFFER_RETAIN_LIMIT = 1024 * 1024;

const MAGIC_HI = (MAGIC >>> 8) & 0xff;
const MAGIC_LO = MAGIC & 0xff;
const NOT_PAYLOAD_CRC = ~FrameFlag.PAYLOAD_CRC & 0xffff;

/**
 * One shared msgpack encoder. `encodeSharedRef` returns a view into its internal
 * buffer, which the next call overwrites: the bytes are copied into the frame's
 * prefix allocation right away. `ignoreUndefined` drops `undefined` properties so
 * optional header fields are simply absent on the wire.
 */
let msgpackEncoder = new Encoder({ ignoreUndefined: true });

/** Options of {@link encodeFrame}. */
export interface EncodeFrameOptions {
  /** Prefix flags (FrameFlag bits). `PAYLOAD_CRC` is set or cleared according to `payloadChecksum`. */
  flags?: number;
  /** Compute the payload CRC-32 and set `FrameFlag.PAYLOAD_CRC`. Default `true`. */
  payloadChecksum?: boolean;
  /** Size limits checked before sending. Default {@link DEFAULT_CODEC_LIMITS}. */
  limits?: CodecLimits;
}

/**
 * Checks a {@link CodecLimits} object (integers, header ≤ 65535, payload ≤ 2³²−1).
 *
 * @throws {@link BlockMirrorError} `BM_ERR_INVALID_ARGUMENT` when a limit is out of range.
 */
export function validateCodecLimits(limits: CodecLimits): void {
  const { maxHeaderLength, maxPayloadLength } = limits;
  if (!Number.isInteger(maxHeaderLength) || maxHeaderLength < 1 || maxHeaderLength > MAX_WIRE_HEADER_LENGTH) {
    throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', `maxHeaderLength must be an integer in 1..${MAX_WIRE_HEADER_LENGTH}`, {
      details: { maxHeaderLength },
    });
  }
  if (!Number.isInteger(maxPayloadLength) || maxPayloadLength < 0 || maxPayloadLength > MAX_WIRE_PAYLOAD_LENGTH) {
    throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', `maxPayloadLength must be an integer in 0..${MAX_WIRE_PAYLOAD_LENGTH}`, {
      details: { maxPayloadLength },
    });
  }
}

/**
 * Encodes one frame for a byte stream or a datagram.
 *
 * Returns `[prefixAndHeader]`, or `[prefixAndHeader, payload]` when `payload` is non-empty.
 * `prefixAndHeader` is the only allocation (20-byte prefix followed by the msgpack header);
 * `payload` is the caller's object itself — never copied, so it must not be modified until
 * the transport is done with it. Write both chunks as one unit (`cork()` + two writes, or
 * `writev`).
 *
 * The header is any msgpack-encodable value; `undefined` properties are omitted, a
 * top-level `undefined` is sent as nil. Block data belongs in `payload`, never in the header.
 *
 * @param type - message type, an integer 0..255 (normally a {@link MessageType} value).
 * @param header - the message header, encoded with msgpack.
 * @param payload - raw payload bytes, sent as is.
 * @throws {@link BlockMirrorError} `BM_ERR_FRAME_TOO_LARGE` when the payload exceeds
 *   `limits.maxPayloadLength`, `BM_ERR_HEADER_TOO_LARGE` when the encoded header exceeds
 *   `limits.maxHeaderLength` (or 65535), `BM_ERR_BAD_HEADER` when the header cannot be
 *   encoded, `BM_ERR_INVALID_ARGUMENT` for a bad type, flags or limits.
 */
export function encodeFrame(type: number, header: unknown, payload?: Uint8Array, options?: EncodeFrameOptions): Uint8Array[] {
  let flags = 0;
  let payloadChecksum = true;
  let limits: CodecLimits = DEFAULT_CODEC_LIMITS;
  if (options !== undefined) {
    if (options.flags !== undefined) flags = options.flags;
    if (options.payloadChecksum !== undefined) payloadChecksum = options.payloadChecksum;
    if (options.limits !== undefined) {
      limits = options.limits;
      validateCodecLimits(limits);
    }
  }
  if (!Number.isInteger(type) || type < 0 || type > 0xff) {
    throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', 'frame type must be an integer in 0..255', { details: { type } });
  }
  if (!Number.isInteger(flags) || flags < 0 || flags > 0xffff) {
    throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', 'frame flags must be an integer in 0..65535', { details: { flags } });
  }

  const payloadLength = payload === undefined ? 0 : payload.byteLength;
  if (payloadLength > limits.maxPayloadLength) {
    throw new BlockMirrorError('BM_ERR_FRAME_TOO_LARGE', `payload of ${payloadLength} bytes exceeds the limit of ${limits.maxPayloadLength}`, {
      details: { payloadLength, maxPayloadLength: limits.maxPayloadLength },
    });
  }

  let headerBytes: Uint8Array;
  try {
    headerBytes = msgpackEncoder.encodeSharedRef(header);
  } catch (error) {
    throw new BlockMirrorError('BM_ERR_BAD_HEADER', `frame header cannot be encoded with msgpack: ${String(error)}`, { cause: error });
  }
  const headerLength = headerBytes.byteLength;
  if (headerBytes.buffer.byteLength > ENCODER_BUFFER_RETAIN_LIMIT) {
    // Do not keep a huge internal buffer alive after an unusually large header.
    msgpackEncoder = new Encoder({ ignoreUndefined: true });
  }
  const maxHeaderLength = limits.maxHeaderLength < MAX_WIRE_HEADER_LENGTH ? limits.maxHeaderLength : MAX_WIRE_HEADER_LENGTH;
  if (headerLength > maxHeaderLength) {
    throw new BlockMirrorError('BM_ERR_HEADER_TOO_LARGE', `header of ${headerLength} bytes exceeds the limit of ${maxHeaderLength}`, {
      details: { headerLength, maxHeaderLength },
    });
  }

  if (payloadChecksum) flags |= FrameFlag.PAYLOAD_CRC;
  else flags &= NOT_PAYLOAD_CRC;
  const payloadCrc = payloadChecksum && payload !== undefined && payloadLength > 0 ? crc32(payload) : 0;

  const out = Buffer.allocUnsafe(PREFIX_LENGTH + headerLength);
  out[0] = MAGIC_HI;
  out[1] = MAGIC_LO;
  out[2] = WIRE_VERSION;
  out[3] = type;
  out[4] = flags >>> 8;
  out[5] = flags & 0xff;
  out[6] = headerLength >>> 8;
  out[7] = headerLength & 0xff;
  out.writeUInt32BE(payloadLength, 8);
  out.writeUInt32BE(payloadCrc, 12);
  out.set(headerBytes, PREFIX_LENGTH);
  out.writeUInt32BE(crc32(headerBytes, crc32(out.subarray(0, 16))), 16);

  return payload === undefined || payloadLength === 0 ? [out] : [out, payload];
}

/** Total byte length of encoded chunks (e.g. the result of {@link encodeFrame}). */
export function frameLength(chunks: readonly Uint8Array[]): number {
  let total = 0;
  for (const chunk of chunks) total += chunk.byteLength;
  return total;
}
