/**
 * Frame fuzzing loop, shared by `test/codec/fuzz.test.ts` (fixed seed, 100k frames) and
 * `scripts/fuzz.ts` (long runs, random seed).
 *
 * Valid frames are encoded, then mutated (bit flips, byte changes, insertions, deletions,
 * truncations, duplicated ranges, forged prefix fields and msgpack headers with their
 * CRC fixed up so the deeper checks are reached), split at random boundaries and fed to a
 * {@link FrameDecoder} and to {@link decodeFrame}. Every outcome must be a decoded frame
 * or a {@link BlockMirrorError} with a known code, and the decoder's buffered bytes must
 * stay within the limits.
 *
 * @module
 */
import { crc32 } from 'node:zlib';
import { encodeFrame } from '../../src/codec/encoder.js';
import { FrameDecoder, decodeFrame } from '../../src/codec/decoder.js';
import { DEFAULT_CODEC_LIMITS, FrameFlag, MAGIC, MessageType, PREFIX_LENGTH, WIRE_VERSION } from '../../src/codec/frame.js';
import type { CodecLimits, Frame } from '../../src/codec/frame.js';
import { BlockMirrorError, isErrorCode } from '../../src/errors.js';

/** Fields of a hand-made frame; CRCs and lengths are computed unless given. */
export interface RawFrameParts {
  magic?: number;
  version?: number;
  type: number;
  flags?: number;
  /** Raw header bytes (not necessarily valid msgpack). */
  header: Uint8Array;
  payload?: Uint8Array;
  headerLength?: number;
  payloadLength?: number;
  payloadCrc?: number;
  headerCrc?: number;
}

/** Builds a frame byte by byte, for crafting bad frames. */
export function rawFrame(parts: RawFrameParts): Buffer {
  const payload = parts.payload ?? new Uint8Array(0);
  const flags = parts.flags ?? 0;
  const buf = Buffer.alloc(PREFIX_LENGTH + parts.header.length + payload.length);
  buf.writeUInt16BE(parts.magic ?? MAGIC, 0);
  buf[2] = parts.version ?? WIRE_VERSION;
  buf[3] = parts.type;
  buf.writeUInt16BE(flags, 4);
  buf.writeUInt16BE(parts.headerLength ?? parts.header.length, 6);
  buf.writeUInt32BE(parts.payloadLength ?? payload.length, 8);
  const payloadCrc = parts.payloadCrc ?? ((flags & FrameFlag.PAYLOAD_CRC) !== 0 && payload.length > 0 ? crc32(payload) : 0);
  buf.writeUInt32BE(payloadCrc, 12);
  buf.set(parts.header, PREFIX_LENGTH);
  buf.set(payload, PREFIX_LENGTH + parts.header.length);
  fixHeaderCrc(buf, 0, parts.header.length);
  if (parts.headerCrc !== undefined) buf.writeUInt32BE(parts.headerCrc, 16);
  return buf;
}

/** Recomputes the header CRC of the frame at `buf[off..)` whose header has `headerBytes` bytes present. */
export function fixHeaderCrc(buf: Buffer, off: number, headerBytes: number): void {
  const end = Math.min(buf.length, off + PREFIX_LENGTH + headerBytes);
  buf.writeUInt32BE(crc32(buf.subarray(off + PREFIX_LENGTH, end), crc32(buf.subarray(off, off + 16))), off + 16);
}

/** Small fast seeded PRNG (mulberry32). */
export class Prng {
  #state: number;
  constructor(seed: number) {
    this.#state = seed >>> 0;
  }
  /** Uniform 32-bit unsigned integer. */
  u32(): number {
    let t = (this.#state = (this.#state + 0x6d2b79f5) >>> 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  }
  /** Integer in [0, n). */
  int(n: number): number {
    return n <= 1 ? 0 : this.u32() % n;
  }
  /** True with probability p. */
  chance(p: number): boolean {
    return this.u32() / 4294967296 < p;
  }
  /** One element of a non-empty array. */
  pick<T>(items: readonly T[]): T {
    return items[this.int(items.length)] as T;
  }
  /** `n` random bytes. */
  bytes(n: number): Buffer {
    const out = Buffer.allocUnsafe(n);
    for (let i = 0; i < n; i++) out[i] = this.u32() & 0xff;
    return out;
  }
}

const KNOWN_TYPES: readonly number[] = Object.values(MessageType);
const UNKNOWN_TYPES: readonly number[] = [0, 8, 15, 99, 128, 200, 255].filter((t) => !KNOWN_TYPES.includes(t));

/** A random msgpack-encodable value of bounded size. */
function randomValue(rng: Prng, depth: number): unknown {
  switch (rng.int(depth > 2 ? 7 : 9)) {
    case 0:
      return rng.int(256);
    case 1:
      return rng.u32() * (rng.chance(0.5) ? 1 : 65536) - 2 ** 31;
    case 2:
      return rng.chance(0.5);
    case 3:
      return null;
    case 4:
      return rng.bytes(rng.int(40)).toString('latin1');
    case 5:
      return rng.u32() / 7;
    case 6:
      return rng.bytes(rng.int(64));
    case 7: {
      const arr: unknown[] = [];
      for (let i = rng.int(6); i > 0; i--) arr.push(randomValue(rng, depth + 1));
      return arr;
    }
    default:
      return randomHeader(rng, depth + 1);
  }
}

function randomHeader(rng: Prng, depth = 0): Record<string, unknown> {
  const header: Record<string, unknown> = {};
  for (let i = rng.int(7); i > 0; i--) header[`k${rng.int(1000)}`] = randomValue(rng, depth);
  return header;
}

interface PoolFrame {
  bytes: Buffer;
  type: number;
  flags: number;
  payloadLength: number;
}

function buildPool(rng: Prng, size: number): PoolFrame[] {
  const pool: PoolFrame[] = [];
  for (let i = 0; i < size; i++) {
    const r = rng.int(100);
    const type = r < 85 ? rng.pick(KNOWN_TYPES) : rng.pick(UNKNOWN_TYPES);
    let flags = rng.chance(0.3) ? FrameFlag.FUA : 0;
    if (r >= 85 && r < 95) flags |= FrameFlag.OPTIONAL;
    const big = rng.chance(0.05);
    const payloadLength = big ? 20_000 + rng.int(50_000) : rng.chance(0.3) ? 0 : rng.int(600);
    const header =
      type === MessageType.WRITE
        ? { id: rng.u32(), vol: 'vol0', off: rng.u32() * 4096, seq: rng.u32(), barrier: rng.chance(0.1) }
        : randomHeader(rng);
    const payloadChecksum = rng.chance(0.7);
    const chunks = encodeFrame(type, header, rng.bytes(payloadLength), { flags, payloadChecksum });
    const bytes = Buffer.concat(chunks);
    pool.push({ bytes, type, flags: bytes.readUInt16BE(4), payloadLength });
  }
  return pool;
}

/** Options of {@link runFrameFuzz}. */
export interface FrameFuzzOptions {
  /** Number of fuzzed inputs. */
  count: number;
  /** PRNG seed; the same seed gives the same inputs. */
  seed: number;
  /** Called every `progressEvery` iterations. */
  onProgress?: (done: number, stats: FrameFuzzStats) => void;
  /** Default 100,000. */
  progressEvery?: number;
}

/** Outcome counts of a fuzz run. */
export interface FrameFuzzStats {
  iterations: number;
  /** Frames delivered by the stream decoder. */
  framesDecoded: number;
  /** Optional frames of unknown type dropped by the stream decoder. */
  framesIgnored: number;
  /** Inputs given to `decodeFrame` that decoded (or were dropped as optional). */
  datagramsDecoded: number;
  /** Errors (stream and datagram) by code. */
  errors: Record<string, number>;
  /** Largest `bufferedBytes` seen. */
  maxBufferedBytes: number;
}

/** Thrown when the fuzz loop finds a bug; carries what is needed to reproduce it. */
export class FuzzFailure extends Error {
  constructor(message: string, readonly seed: number, readonly iteration: number, readonly input: Buffer, options?: { cause?: unknown }) {
    super(`${message} (seed ${seed}, iteration ${iteration}, input ${input.length} bytes: ${input.subarray(0, 96).toString('hex')}${input.length > 96 ? '…' : ''})`, options);
    this.name = 'FuzzFailure';
  }
}

function flipBit(buf: Buffer, index: number, bit: number): void {
  buf[index] = (buf[index] as number) ^ (1 << bit);
}

function mutateBytes(rng: Prng, input: Buffer): Buffer {
  let buf = input;
  for (let ops = 1 + rng.int(4); ops > 0; ops--) {
    const len = buf.length;
    const at = rng.int(len + 1);
    switch (rng.int(7)) {
      case 0: // flip a bit
        if (len > 0) flipBit(buf, Math.min(at, len - 1), rng.int(8));
        break;
      case 1: // set a byte, biased towards the prefix
        if (len > 0) buf[rng.chance(0.5) ? rng.int(Math.min(len, PREFIX_LENGTH)) : Math.min(at, len - 1)] = rng.u32() & 0xff;
        break;
      case 2: // insert bytes
        buf = Buffer.concat([buf.subarray(0, at), rng.bytes(1 + rng.int(8)), buf.subarray(at)]);
        break;
      case 3: // delete a range
        buf = Buffer.concat([buf.subarray(0, at), buf.subarray(Math.min(len, at + 1 + rng.int(16)))]);
        break;
      case 4: // truncate
        buf = buf.subarray(0, at);
        break;
      case 5: // duplicate a range
        buf = Buffer.concat([buf.subarray(0, at), buf.subarray(rng.int(len + 1), at), buf.subarray(at)]);
        break;
      default: // swap in the prefix of another position
        if (len >= 2) buf.writeUInt16BE(rng.u32() & 0xffff, rng.int(len - 1));
    }
  }
  return buf;
}

/** Hostile msgpack fragments, including container heads announcing huge sizes. */
const MSGPACK_BOMBS: readonly number[][] = [
  [0xdd, 0xff, 0xff, 0xff, 0xff],
  [0xdd, 0x00, 0x00, 0xff, 0xff],
  [0xdc, 0xff, 0xff],
  [0xdf, 0xff, 0xff, 0xff, 0xff],
  [0xde, 0xff, 0xff],
  [0xc6, 0xff, 0xff, 0xff, 0xff],
  [0xdb, 0x7f, 0xff, 0xff, 0xff],
  [0xc9, 0x00, 0x01, 0x00, 0x00, 0xff],
  [0xd7, 0xff],
  [0xc7, 0x0c, 0xff],
  [0xc1],
  [0x81, 0xa9, 0x5f, 0x5f, 0x70, 0x72, 0x6f, 0x74, 0x6f, 0x5f, 0x5f, 0x01], // {"__proto__": 1}
  [0x81, 0xc0, 0x01], // {nil: 1}
  [0x81, 0x90, 0x01], // {[]: 1}
];

/** Well-formed msgpack values that `@msgpack/msgpack` must still reject (or decode harmlessly). */
const HOSTILE_VALUES: readonly number[][] = [
  [0x81, 0xa9, 0x5f, 0x5f, 0x70, 0x72, 0x6f, 0x74, 0x6f, 0x5f, 0x5f, 0x01], // {"__proto__": 1}
  [0x81, 0xc0, 0x01], // {nil: 1}
  [0x81, 0x90, 0x01], // {[]: 1}
  [0x81, 0x80, 0x01], // {{}: 1}
  [0xd4, 0xff, 0x00], // timestamp ext of 1 byte
  [0xc7, 0x03, 0xff, 0x01, 0x02, 0x03], // timestamp ext of 3 bytes
  [0xd7, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff], // timestamp 64 with nanoseconds out of range
  [0xd5, 0x07, 0x01, 0x02], // unknown ext
  [0xa3, 0xff, 0xfe, 0xfd], // invalid UTF-8
];

/** Replaces the first frame's header with mutated bytes and fixes lengths and CRC so deeper checks run. */
function mutateHeader(rng: Prng, frame: PoolFrame): Buffer {
  const src = frame.bytes;
  const headerLength = src.readUInt16BE(6);
  let header: Buffer = Buffer.from(src.subarray(PREFIX_LENGTH, PREFIX_LENGTH + headerLength));
  switch (rng.int(6)) {
    case 0:
      header = mutateBytes(rng, header);
      break;
    case 5: {
      const value = Buffer.from(rng.pick(HOSTILE_VALUES));
      const wrap = rng.int(3);
      header = wrap === 0 ? value : wrap === 1 ? Buffer.concat([Buffer.from([0x91]), value]) : Buffer.concat([Buffer.from([0x81, 0xa1, 0x61]), value]);
      break;
    }
    case 1: {
      const bomb = Buffer.from(rng.pick(MSGPACK_BOMBS));
      const at = rng.int(header.length + 1);
      header = Buffer.concat([header.subarray(0, at), bomb, header.subarray(at)]);
      break;
    }
    case 2: {
      // nested container heads
      const parts: Buffer[] = [];
      for (let n = 1 + rng.int(200); n > 0; n--) parts.push(Buffer.from(rng.pick(MSGPACK_BOMBS.slice(0, 5))));
      header = Buffer.concat(parts);
      break;
    }
    case 3:
      header = rng.bytes(rng.int(64));
      break;
    default:
      // two msgpack values where one is expected
      header = Buffer.concat([header, Buffer.from([rng.int(128)])]);
  }
  const payload = src.subarray(PREFIX_LENGTH + headerLength);
  const flags = frame.flags;
  return rawFrame({ type: src[3] as number, flags, header, payload, payloadCrc: src.readUInt32BE(12) });
}

/** Forges prefix fields, then fixes the header CRC so the forged values are trusted. */
function mutatePrefix(rng: Prng, frame: PoolFrame): Buffer {
  const buf = Buffer.from(frame.bytes);
  switch (rng.int(6)) {
    case 0:
      buf.writeUInt32BE(rng.chance(0.3) ? 0xffffffff : rng.int(frame.payloadLength * 2 + 10), 8);
      break;
    case 1:
      buf.writeUInt16BE(rng.int(0x10000), 6);
      break;
    case 2:
      buf[3] = rng.int(256);
      break;
    case 3:
      buf.writeUInt16BE(rng.int(0x10000), 4);
      break;
    case 4:
      buf[2] = rng.int(4);
      break;
    default:
      buf.writeUInt32BE(rng.u32(), 12);
  }
  fixHeaderCrc(buf, 0, buf.readUInt16BE(6));
  return buf;
}

function randomGarbage(rng: Prng): Buffer {
  const buf = rng.bytes(rng.int(200));
  if (buf.length >= 3 && rng.chance(0.6)) {
    buf.writeUInt16BE(MAGIC, 0);
    buf[2] = WIRE_VERSION;
    if (buf.length >= PREFIX_LENGTH && rng.chance(0.5)) {
      buf.writeUInt16BE(rng.int(Math.max(1, buf.length - PREFIX_LENGTH + 1)), 6);
      buf.writeUInt32BE(rng.int(64), 8);
      fixHeaderCrc(buf, 0, buf.readUInt16BE(6));
    }
  }
  return buf;
}

/** Splits `input` into pieces at random boundaries. */
function split(rng: Prng, input: Buffer): Buffer[] {
  const len = input.length;
  const mode = rng.int(6);
  if (mode === 0 || len < 2) return [input];
  if (mode === 1) {
    const at = rng.int(len + 1);
    return [input.subarray(0, at), input.subarray(at)];
  }
  if (mode === 2 && len <= 400) {
    const pieces: Buffer[] = [];
    for (let i = 0; i < len; i++) pieces.push(input.subarray(i, i + 1));
    return pieces;
  }
  const pieces: Buffer[] = [];
  const maxPiece = mode === 3 ? 32 : mode === 4 ? 1024 : 16_384;
  for (let at = 0; at < len; ) {
    const n = 1 + rng.int(maxPiece);
    pieces.push(input.subarray(at, at + n));
    at += n;
  }
  return pieces;
}

function record(stats: FrameFuzzStats, error: unknown, seed: number, iteration: number, input: Buffer): void {
  if (!(error instanceof BlockMirrorError) || !isErrorCode(error.code)) {
    throw new FuzzFailure(`unexpected exception ${String(error)}`, seed, iteration, input, { cause: error });
  }
  stats.errors[error.code] = (stats.errors[error.code] ?? 0) + 1;
}

/**
 * Runs `count` fuzzed inputs with PRNG `seed`.
 *
 * @throws {@link FuzzFailure} on any exception that is not a coded {@link BlockMirrorError},
 *   a memory bound violation, a frame beyond the limits, or a valid input that does not
 *   decode to its frames.
 */
export function runFrameFuzz(options: FrameFuzzOptions): FrameFuzzStats {
  const { count, seed } = options;
  const progressEvery = options.progressEvery ?? 100_000;
  const rng = new Prng(seed);
  const pool = buildPool(rng, 96);
  const limitChoices: readonly CodecLimits[] = [
    DEFAULT_CODEC_LIMITS,
    { maxHeaderLength: 4096, maxPayloadLength: 65536 },
    { maxHeaderLength: 64, maxPayloadLength: 1024 },
  ];
  const stats: FrameFuzzStats = { iterations: 0, framesDecoded: 0, framesIgnored: 0, datagramsDecoded: 0, errors: {}, maxBufferedBytes: 0 };

  for (let iteration = 0; iteration < count; iteration++) {
    const frames: PoolFrame[] = [];
    for (let n = 1 + rng.int(3); n > 0; n--) frames.push(rng.pick(pool));
    const strategy = rng.int(100);
    let input: Buffer;
    let intact = false;
    if (strategy < 10) {
      input = Buffer.concat(frames.map((f) => f.bytes));
      intact = true;
    } else if (strategy < 50) {
      input = mutateBytes(rng, Buffer.concat(frames.map((f) => f.bytes)));
    } else if (strategy < 75) {
      input = Buffer.concat([mutateHeader(rng, frames[0] as PoolFrame), ...frames.slice(1).map((f) => f.bytes)]);
    } else if (strategy < 88) {
      input = Buffer.concat([mutatePrefix(rng, frames[0] as PoolFrame), ...frames.slice(1).map((f) => f.bytes)]);
    } else if (strategy < 95) {
      input = randomGarbage(rng);
    } else {
      // corrupt the payload behind a valid header
      input = Buffer.from((frames[0] as PoolFrame).bytes);
      const headEnd = PREFIX_LENGTH + input.readUInt16BE(6);
      if (input.length > headEnd) flipBit(input, headEnd + rng.int(input.length - headEnd), rng.int(8));
    }
    const limits = intact ? DEFAULT_CODEC_LIMITS : rng.pick(limitChoices);

    // Stream decoder.
    const delivered: Frame[] = [];
    const decoder = new FrameDecoder({ limits, onFrame: (frame) => delivered.push(frame) });
    let failed = false;
    const pieces = split(rng, input);
    const bound = limits.maxHeaderLength + limits.maxPayloadLength + PREFIX_LENGTH;
    for (const piece of pieces) {
      try {
        decoder.push(piece);
      } catch (error) {
        if (failed) throw new FuzzFailure('a failed decoder threw again', seed, iteration, input, { cause: error });
        failed = true;
        record(stats, error, seed, iteration, input);
      }
      const buffered = decoder.bufferedBytes;
      if (buffered > stats.maxBufferedBytes) stats.maxBufferedBytes = buffered;
      if (buffered > bound + piece.length) {
        throw new FuzzFailure(`decoder buffers ${buffered} bytes, bound ${bound} + ${piece.length}`, seed, iteration, input);
      }
    }
    if (failed && decoder.bufferedBytes !== 0) throw new FuzzFailure('a failed decoder kept buffered bytes', seed, iteration, input);
    for (const frame of delivered) {
      if (frame.payload.length > limits.maxPayloadLength) {
        throw new FuzzFailure('a payload beyond the limit was delivered', seed, iteration, input);
      }
    }
    stats.framesDecoded += delivered.length;
    stats.framesIgnored += decoder.ignoredFrames;

    if (intact) {
      const firstMandatoryUnknown = frames.findIndex((f) => !KNOWN_TYPES.includes(f.type) && (f.flags & FrameFlag.OPTIONAL) === 0);
      const upTo = firstMandatoryUnknown === -1 ? frames : frames.slice(0, firstMandatoryUnknown);
      const wanted = upTo.filter((f) => KNOWN_TYPES.includes(f.type));
      if (failed !== (firstMandatoryUnknown !== -1) || delivered.length !== wanted.length) {
        throw new FuzzFailure(`intact input gave ${delivered.length} frames (expected ${wanted.length})`, seed, iteration, input);
      }
      wanted.forEach((f, i) => {
        const got = delivered[i] as Frame;
        if (got.type !== f.type || got.flags !== f.flags || got.payload.length !== f.payloadLength || !got.payload.equals(f.bytes.subarray(f.bytes.length - f.payloadLength))) {
          throw new FuzzFailure(`intact frame ${i} decoded differently`, seed, iteration, input);
        }
      });
    }

    // Datagram decoder on the whole input.
    if (rng.chance(0.3)) {
      try {
        decodeFrame(input, { limits });
        stats.datagramsDecoded++;
      } catch (error) {
        record(stats, error, seed, iteration, input);
      }
    }

    stats.iterations++;
    if (options.onProgress !== undefined && stats.iterations % progressEvery === 0) options.onProgress(stats.iterations, stats);
  }
  return stats;
}
