/**
 * Codec micro-benchmark: cost of encoding + decoding WRITE frames with a realistic
 * header, with and without payload CRC, payload copies on the send path, and the
 * throughput of `zlib.crc32`.
 *
 * Run alone: `node --import tsx benchmarks/codec.ts`.
 *
 * @module
 */
import { crc32 } from 'node:zlib';
import { pathToFileURL } from 'node:url';
import { encodeFrame } from '../src/codec/encoder.js';
import { FrameDecoder } from '../src/codec/decoder.js';
import { MessageType } from '../src/codec/frame.js';
import type { Frame } from '../src/codec/frame.js';

/** One row of the codec benchmark. */
export interface CodecBenchResult {
  /** What was measured. */
  benchmark: string;
  /** Payload size in bytes. */
  payloadBytes: number;
  /** Median encode time per frame (ns), when measured. */
  encodeNs: number | null;
  /** Median decode time per frame (ns), when measured. */
  decodeNs: number | null;
  /** encodeNs + decodeNs, or the time per operation for rows without an encode/decode split. */
  totalNs: number | null;
  /** Payload bytes per second processed, in GB/s (10⁹), when meaningful. */
  throughputGBps: number | null;
  /** Payload copies per frame on the send path (rows that check it). */
  payloadCopies: number | null;
  /** Payload bytes copied per frame on the send path (rows that check it). */
  payloadBytesCopied: number | null;
}

const SIZES = [4 * 1024, 64 * 1024, 1024 * 1024];
const ROUNDS = 7;
const ROUND_NS = 60_000_000; // ≥ 60 ms per round

/** A realistic WRITE header. */
function writeHeader(i: number, size: number): { id: number; vol: string; off: number; seq: number; barrier: boolean } {
  return { id: i + 1, vol: 'vol0', off: 1_073_741_824 + i * size, seq: 1_000_000 + i, barrier: (i & 63) === 0 };
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)] as number;
}

/**
 * Runs `body(iterations)` for several rounds, calibrating `iterations` so a round lasts
 * about {@link ROUND_NS}; returns the median time per iteration in ns.
 */
function measure(body: (iterations: number) => void): number {
  let iterations = 16;
  // warm-up and calibration
  for (;;) {
    const start = process.hrtime.bigint();
    body(iterations);
    const elapsed = Number(process.hrtime.bigint() - start);
    if (elapsed >= ROUND_NS / 4) {
      iterations = Math.max(1, Math.ceil((iterations * ROUND_NS) / elapsed));
      break;
    }
    iterations *= 4;
  }
  const perIteration: number[] = [];
  for (let round = 0; round < ROUNDS; round++) {
    const start = process.hrtime.bigint();
    body(iterations);
    perIteration.push(Number(process.hrtime.bigint() - start) / iterations);
  }
  return median(perIteration);
}

let sink = 0;

function benchEncode(size: number, payloadChecksum: boolean): { ns: number; copies: number } {
  const payload = Buffer.alloc(size, 0xa5);
  let copies = 0;
  const ns = measure((iterations) => {
    for (let i = 0; i < iterations; i++) {
      const chunks = encodeFrame(MessageType.WRITE, writeHeader(i, size), payload, { payloadChecksum });
      if (chunks[1] !== payload) copies++;
      sink += (chunks[0] as Uint8Array).length;
    }
  });
  return { ns, copies };
}

function benchDecode(size: number, payloadChecksum: boolean): number {
  // Distinct received frames (different headers), each in its own chunk as a socket delivers them.
  const count = Math.max(4, Math.min(256, Math.floor((32 * 1024 * 1024) / size)));
  const payload = Buffer.alloc(size, 0x5a);
  const received: Buffer[] = [];
  for (let i = 0; i < count; i++) {
    received.push(Buffer.concat(encodeFrame(MessageType.WRITE, writeHeader(i, size), payload, { payloadChecksum })));
  }
  let frames = 0;
  const decoder = new FrameDecoder({
    onFrame: (frame: Frame) => {
      frames++;
      sink += frame.payload.length;
    },
  });
  const ns = measure((iterations) => {
    for (let i = 0; i < iterations; i++) decoder.push(received[i % count] as Buffer);
  });
  if (frames === 0) throw new Error('decoder produced no frames');
  return ns;
}

function benchCrc(size: number): number {
  const data = Buffer.alloc(size);
  for (let i = 0; i < size; i++) data[i] = (i * 2654435761) >>> 24;
  return measure((iterations) => {
    for (let i = 0; i < iterations; i++) sink ^= crc32(data);
  });
}

function round(value: number, digits = 0): number {
  const f = 10 ** digits;
  return Math.round(value * f) / f;
}

/** Runs the codec benchmark; returns one row per measurement. */
export async function runCodecBenchmark(): Promise<CodecBenchResult[]> {
  const rows: CodecBenchResult[] = [];
  for (const size of SIZES) {
    const enc = benchEncode(size, false);
    const dec = benchDecode(size, false);
    rows.push({
      benchmark: 'header cost: encode+decode, no payload CRC',
      payloadBytes: size,
      encodeNs: round(enc.ns),
      decodeNs: round(dec),
      totalNs: round(enc.ns + dec),
      throughputGBps: null,
      payloadCopies: enc.copies,
      payloadBytesCopied: enc.copies * size,
    });
    await new Promise((resolve) => setImmediate(resolve));
  }
  for (const size of SIZES) {
    const enc = benchEncode(size, true);
    const dec = benchDecode(size, true);
    rows.push({
      benchmark: 'encode+decode with payload CRC',
      payloadBytes: size,
      encodeNs: round(enc.ns),
      decodeNs: round(dec),
      totalNs: round(enc.ns + dec),
      throughputGBps: round(size / (enc.ns + dec), 2),
      payloadCopies: enc.copies,
      payloadBytesCopied: enc.copies * size,
    });
    await new Promise((resolve) => setImmediate(resolve));
  }
  for (const size of SIZES) {
    const ns = benchCrc(size);
    rows.push({
      benchmark: 'zlib.crc32',
      payloadBytes: size,
      encodeNs: null,
      decodeNs: null,
      totalNs: round(ns),
      throughputGBps: round(size / ns, 2),
      payloadCopies: null,
      payloadBytesCopied: null,
    });
  }
  if (sink === 0.5) console.log(sink); // keep results observable
  return rows;
}

const invokedPath = process.argv[1];
if (invokedPath !== undefined && import.meta.url === pathToFileURL(invokedPath).href) {
  const rows = await runCodecBenchmark();
  console.table(rows);
}
