/**
 * Frame layout of the blockmirror wire protocol.
 *
 * ```
 * offset size field
 *  0     2    magic          0x424D ("BM"), big-endian
 *  2     1    version        wire-format version (1)
 *  3     1    type           message type, see MessageType
 *  4     2    flags          FrameFlag bits
 *  6     2    headerLength   bytes of msgpack header that follow the prefix
 *  8     4    payloadLength  bytes of raw payload that follow the header
 * 12     4    payloadCrc     CRC-32 of the payload (0 unless FrameFlag.PAYLOAD_CRC)
 * 16     4    headerCrc      CRC-32 of bytes 0..15 followed by the header bytes
 * 20     …    header (msgpack), then payload (raw bytes, never msgpack)
 * ```
 * All integers are big-endian.
 *
 * @module
 */

/** Magic number at the start of every frame ("BM"). */
export const MAGIC = 0x424d;
/** Wire-format version written in every frame. */
export const WIRE_VERSION = 1;
/** Length of the fixed binary prefix. */
export const PREFIX_LENGTH = 20;

/** Bits of the prefix `flags` field. */
export const FrameFlag = {
  /** An unknown message type carrying this flag is ignored instead of closing the connection. */
  OPTIONAL: 0x0001,
  /** `payloadCrc` holds the CRC-32 of the payload and must be checked. */
  PAYLOAD_CRC: 0x0002,
  /** The write must be durable on the receiver before it is acknowledged (FUA). */
  FUA: 0x0004,
} as const;

/** Message types. */
export const MessageType = {
  HELLO: 1,
  CHALLENGE: 2,
  AUTH: 3,
  READY: 4,
  ERROR: 5,
  PING: 6,
  PONG: 7,
  /** Link heartbeat datagram (UDP), see `link/heartbeat.ts`. */
  HEARTBEAT: 8,
  WRITE: 16,
  WRITE_ACK: 17,
  FLUSH: 18,
  FLUSH_ACK: 19,
  /** Zero a range (trim / write-zeroes): after it, the range reads as zeroes. Acknowledged with WRITE_ACK. */
  ZERO: 20,
  /** Hash a range of the target's image once every seq ≤ barrier is applied (checksum resync, online verify). */
  HASH: 21,
  /** The digest asked by HASH. */
  HASH_ACK: 22,
  /** Sequence numbers that carry nothing (see `SkipHeader`); acknowledged with WRITE_ACK. */
  SKIP: 23,
  /** Freeze/copy cycle (src/cycle, SPEC 28–35): opens the transfer of one freeze to a target. Types 32–39 are reserved for cycles. */
  CYCLE_BEGIN: 32,
  /** Cycle: changed blocks of one volume (payload = raw granules, slot-addressed as in the freeze table). */
  CYCLE_DATA: 33,
  /** Cycle: a part of one volume's freeze table (payload = binary table entries). */
  CYCLE_TABLE: 34,
  /** Cycle: everything of the transfer was sent; the target commits (stage, journal, merge). */
  CYCLE_COMMIT: 35,
  /** Cycle: the target's answer to a transfer (committed, or a coded failure). */
  CYCLE_ACK: 36,
} as const;

/** One of {@link MessageType}'s values. */
export type MessageTypeValue = (typeof MessageType)[keyof typeof MessageType];

/** A decoded frame. */
export interface Frame {
  /** Message type (may be unknown to this build when the OPTIONAL flag was set by the sender — such frames are dropped by the decoder). */
  type: number;
  /** Prefix flags. */
  flags: number;
  /** The decoded msgpack header (validated per type by `messages.ts`, not by the codec). */
  header: unknown;
  /** Raw payload; a view into the received bytes when possible (zero-length when absent). */
  payload: Buffer;
}

/** Size limits enforced by the codec before anything is allocated. */
export interface CodecLimits {
  /** Largest accepted msgpack header in bytes (≤ 65535). */
  maxHeaderLength: number;
  /** Largest accepted payload in bytes. */
  maxPayloadLength: number;
}

/** Default limits: 64 KiB headers, 8 MiB payloads. */
export const DEFAULT_CODEC_LIMITS: Readonly<CodecLimits> = Object.freeze({
  maxHeaderLength: 65535,
  maxPayloadLength: 8 * 1024 * 1024,
});
