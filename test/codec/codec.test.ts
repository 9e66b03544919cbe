import { describe, it, test } from 'node:test';
import assert from 'node:assert/strict';
import { crc32 } from 'node:zlib';
import fc from 'fast-check';
import { encodeFrame, frameLength } from '../../src/codec/encoder.js';
import { FrameDecoder, decodeFrame } from '../../src/codec/decoder.js';
import { DEFAULT_CODEC_LIMITS, FrameFlag, MAGIC, MessageType, PREFIX_LENGTH, WIRE_VERSION } from '../../src/codec/frame.js';
import type { CodecLimits, Frame } from '../../src/codec/frame.js';
import { BlockMirrorError, isBlockMirrorError } from '../../src/errors.js';
import type { ErrorCode } from '../../src/errors.js';
import { rawFrame } from './fuzz-frames.js';

const KNOWN_TYPES: readonly number[] = Object.values(MessageType);
const UNKNOWN_TYPE = 200;
assert.ok(!KNOWN_TYPES.includes(UNKNOWN_TYPE));

/** Deterministic pseudo-random bytes (fast to build, unlike fc.uint8Array of 70k elements). */
function bytesFrom(length: number, seed: number): Buffer {
  const out = Buffer.allocUnsafe(length);
  let x = seed | 1;
  for (let i = 0; i < length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = x & 0xff;
  }
  return out;
}

function frameBytes(type: number, header: unknown, payload?: Uint8Array, options?: Parameters<typeof encodeFrame>[3]): Buffer {
  return Buffer.concat(encodeFrame(type, header, payload, options));
}

function decodeStream(pieces: readonly Buffer[], limits?: CodecLimits): { frames: Frame[]; decoder: FrameDecoder } {
  const frames: Frame[] = [];
  const decoder = new FrameDecoder(limits === undefined ? { onFrame: (f) => frames.push(f) } : { limits, onFrame: (f) => frames.push(f) });
  for (const piece of pieces) decoder.push(piece);
  return { frames, decoder };
}

function expectCode(fn: () => unknown, code: ErrorCode): BlockMirrorError {
  let caught: unknown;
  try {
    fn();
  } catch (error) {
    caught = error;
  }
  assert.ok(isBlockMirrorError(caught), `expected a BlockMirrorError ${code}, got ${String(caught)}`);
  assert.equal(caught.code, code, caught.message);
  return caught;
}

// ---------------------------------------------------------------- arbitraries

const keyArb = fc.string({ maxLength: 12 }).filter((k) => k !== '__proto__');
const leafArb = fc.oneof(
  fc.constant(null),
  fc.boolean(),
  fc.integer(),
  fc.maxSafeInteger(),
  fc.double().map((d) => (Object.is(d, -0) ? 0 : d)),
  fc.string({ unit: 'grapheme', maxLength: 40 }),
  fc.uint8Array({ maxLength: 64 }).map((a) => Buffer.from(a)),
);
const { header: headerArb } = fc.letrec((tie) => ({
  value: fc.oneof({ depthSize: 'small', maxDepth: 4 }, leafArb, tie('array'), tie('map')),
  array: fc.array(tie('value'), { maxLength: 5 }),
  map: fc.dictionary(keyArb, tie('value'), { maxKeys: 6, noNullPrototype: true }),
  header: fc.oneof({ weight: 4, arbitrary: tie('map') }, { weight: 1, arbitrary: leafArb }, { weight: 1, arbitrary: tie('array') }),
}));
const payloadArb = fc
  .tuple(fc.oneof(fc.constantFrom(0, 1, 4096, 65535, 65536, 70000), fc.integer({ min: 0, max: 70000 })), fc.integer())
  .map(([length, seed]) => bytesFrom(length, seed));
const frameArb = fc.record({
  type: fc.constantFrom(...KNOWN_TYPES),
  flags: fc.integer({ min: 0, max: 0xffff }),
  payloadChecksum: fc.boolean(),
  header: headerArb,
  payload: payloadArb,
});

function expectedFlags(flags: number, payloadChecksum: boolean): number {
  return payloadChecksum ? flags | FrameFlag.PAYLOAD_CRC : flags & ~FrameFlag.PAYLOAD_CRC;
}

// ---------------------------------------------------------------- tests

describe('codec: round trip', () => {
  it('encode → decode returns type, flags, header and payload (stream and datagram)', () => {
    fc.assert(
      fc.property(frameArb, ({ type, flags, payloadChecksum, header, payload }) => {
        const chunks = encodeFrame(type, header, payload, { flags, payloadChecksum });
        assert.equal(chunks.length, payload.length > 0 ? 2 : 1);
        if (payload.length > 0) assert.equal(chunks[1], payload, 'the payload object itself is returned');
        const wire = Buffer.concat(chunks);
        assert.equal(frameLength(chunks), wire.length);

        const { frames, decoder } = decodeStream([wire]);
        assert.equal(frames.length, 1);
        assert.equal(decoder.bufferedBytes, 0);
        const datagram = decodeFrame(wire);
        for (const frame of [frames[0], datagram]) {
          assert.ok(frame);
          assert.equal(frame.type, type);
          assert.equal(frame.flags, expectedFlags(flags, payloadChecksum));
          assert.deepStrictEqual(frame.header, header);
          assert.ok(frame.payload.equals(payload));
        }
      }),
      { numRuns: 150, seed: 424242 },
    );
  });

  it('writes the documented prefix layout', () => {
    const payload = bytesFrom(1000, 7);
    const wire = frameBytes(MessageType.WRITE, { id: 1 }, payload, { flags: FrameFlag.FUA });
    const headerLength = wire.readUInt16BE(6);
    assert.equal(wire.readUInt16BE(0), MAGIC);
    assert.equal(wire[2], WIRE_VERSION);
    assert.equal(wire[3], MessageType.WRITE);
    assert.equal(wire.readUInt16BE(4), FrameFlag.FUA | FrameFlag.PAYLOAD_CRC);
    assert.equal(wire.readUInt32BE(8), payload.length);
    assert.equal(wire.readUInt32BE(12), crc32(payload));
    const header = wire.subarray(PREFIX_LENGTH, PREFIX_LENGTH + headerLength);
    assert.equal(wire.readUInt32BE(16), crc32(header, crc32(wire.subarray(0, 16))));
    assert.equal(wire.length, PREFIX_LENGTH + headerLength + payload.length);
  });

  it('without payloadChecksum clears PAYLOAD_CRC and writes payloadCrc 0', () => {
    const wire = frameBytes(MessageType.WRITE, { id: 1 }, bytesFrom(100, 3), { flags: FrameFlag.PAYLOAD_CRC, payloadChecksum: false });
    assert.equal(wire.readUInt16BE(4) & FrameFlag.PAYLOAD_CRC, 0);
    assert.equal(wire.readUInt32BE(12), 0);
  });

  it('omits undefined header properties and sends a top-level undefined as nil', () => {
    const frame = decodeFrame(frameBytes(MessageType.PING, { a: 1, b: undefined }));
    assert.deepStrictEqual(frame?.header, { a: 1 });
    assert.equal(decodeFrame(frameBytes(MessageType.PING, undefined))?.header, null);
  });
});

describe('codec: encoder', () => {
  it('returns the caller payload itself (zero copy) and one prefix+header allocation', () => {
    const payload = new Uint8Array(65536);
    const chunks = encodeFrame(MessageType.WRITE, { id: 7, vol: 'vol0', off: 0, seq: 1 }, payload);
    assert.equal(chunks.length, 2);
    assert.equal(chunks[1], payload);
    const head = chunks[0] as Uint8Array;
    assert.equal(head.length, PREFIX_LENGTH + Buffer.from(head).readUInt16BE(6));
    assert.notEqual(head.buffer, payload.buffer);
  });

  it('returns only the prefix chunk without payload or with an empty one', () => {
    assert.equal(encodeFrame(MessageType.PING, { t: 1 }).length, 1);
    assert.equal(encodeFrame(MessageType.PING, { t: 1 }, new Uint8Array(0)).length, 1);
  });

  it('does not let the next encode overwrite an earlier header (shared msgpack buffer)', () => {
    const a = encodeFrame(MessageType.PING, { name: 'first' })[0] as Uint8Array;
    const copy = Buffer.from(a);
    encodeFrame(MessageType.PING, { name: 'second-and-longer' });
    assert.ok(copy.equals(a));
    assert.deepStrictEqual(decodeFrame(Buffer.from(a))?.header, { name: 'first' });
  });

  it('rejects payloads over the limit with BM_ERR_FRAME_TOO_LARGE', () => {
    const limits = { maxHeaderLength: 1024, maxPayloadLength: 100 };
    encodeFrame(MessageType.WRITE, {}, new Uint8Array(100), { limits });
    expectCode(() => encodeFrame(MessageType.WRITE, {}, new Uint8Array(101), { limits }), 'BM_ERR_FRAME_TOO_LARGE');
    expectCode(
      () => encodeFrame(MessageType.WRITE, {}, new Uint8Array(DEFAULT_CODEC_LIMITS.maxPayloadLength + 1)),
      'BM_ERR_FRAME_TOO_LARGE',
    );
  });

  it('rejects headers over the limit (and over 65535) with BM_ERR_HEADER_TOO_LARGE', () => {
    const limits = { maxHeaderLength: 16, maxPayloadLength: 100 };
    encodeFrame(MessageType.PING, 'x'.repeat(15), undefined, { limits }); // 16 bytes: str8 head + 15
    expectCode(() => encodeFrame(MessageType.PING, 'x'.repeat(16), undefined, { limits }), 'BM_ERR_HEADER_TOO_LARGE');
    expectCode(() => encodeFrame(MessageType.PING, 'x'.repeat(70000)), 'BM_ERR_HEADER_TOO_LARGE');
    // the encoder still works after a huge header
    assert.deepStrictEqual(decodeFrame(frameBytes(MessageType.PING, { ok: true }))?.header, { ok: true });
  });

  it('rejects bad arguments', () => {
    expectCode(() => encodeFrame(256, {}), 'BM_ERR_INVALID_ARGUMENT');
    expectCode(() => encodeFrame(1.5, {}), 'BM_ERR_INVALID_ARGUMENT');
    expectCode(() => encodeFrame(MessageType.PING, {}, undefined, { flags: 0x10000 }), 'BM_ERR_INVALID_ARGUMENT');
    expectCode(() => encodeFrame(MessageType.PING, {}, undefined, { limits: { maxHeaderLength: 70000, maxPayloadLength: 1 } }), 'BM_ERR_INVALID_ARGUMENT');
    expectCode(() => encodeFrame(MessageType.PING, { f: () => 1 }), 'BM_ERR_BAD_HEADER');
  });
});

describe('codec: streaming decoder', () => {
  const big = bytesFrom(64 * 1024, 99);
  const specimen = [
    { type: MessageType.WRITE, header: { id: 1, vol: 'vol0', off: 0, seq: 1, barrier: false }, payload: bytesFrom(4096, 1), flags: 0 },
    { type: MessageType.PING, header: { t: 5 }, payload: undefined, flags: 0 },
    { type: MessageType.WRITE, header: { id: 2, vol: 'vol0', off: 4096, seq: 2, barrier: true }, payload: big, flags: FrameFlag.FUA },
    { type: MessageType.FLUSH, header: { id: 3 }, payload: undefined, flags: 0 },
    { type: MessageType.WRITE, header: { id: 4, vol: 'vol0', off: 8192, seq: 3 }, payload: bytesFrom(300, 2), flags: 0 },
  ];
  const wire = Buffer.concat(specimen.map((f) => frameBytes(f.type, f.header, f.payload, { flags: f.flags })));

  function assertSpecimen(frames: readonly Frame[]): void {
    assert.equal(frames.length, specimen.length);
    specimen.forEach((expected, i) => {
      const got = frames[i] as Frame;
      assert.equal(got.type, expected.type);
      assert.equal(got.flags, expected.flags | FrameFlag.PAYLOAD_CRC);
      assert.deepStrictEqual(got.header, expected.header);
      assert.ok(got.payload.equals(expected.payload ?? Buffer.alloc(0)), `payload of frame ${i}`);
    });
  }

  it('decodes frames split into 2 pieces at every byte boundary (incl. a 64 KiB payload)', () => {
    for (let at = 0; at <= wire.length; at++) {
      const { frames, decoder } = decodeStream([wire.subarray(0, at), wire.subarray(at)]);
      if (frames.length !== specimen.length) assert.fail(`split at ${at}: ${frames.length} frames`);
      assert.equal(decoder.bufferedBytes, 0);
      // full comparison on a sample of split points, cheap checks everywhere
      if (at % 997 === 0 || at < 64 || wire.length - at < 64) assertSpecimen(frames);
      else {
        for (let i = 0; i < frames.length; i++) {
          const expected = specimen[i]?.payload ?? Buffer.alloc(0);
          if (!(frames[i] as Frame).payload.equals(expected)) assert.fail(`split at ${at}: payload ${i} differs`);
        }
      }
    }
  });

  it('decodes frames split into many random pieces identically', () => {
    fc.assert(
      fc.property(fc.uniqueArray(fc.integer({ min: 1, max: wire.length - 1 }), { maxLength: 300 }), (cuts) => {
        const points = [0, ...cuts.sort((a, b) => a - b), wire.length];
        const pieces: Buffer[] = [];
        for (let i = 1; i < points.length; i++) pieces.push(wire.subarray(points[i - 1], points[i]));
        assertSpecimen(decodeStream(pieces).frames);
      }),
      { numRuns: 300, seed: 1234 },
    );
  });

  it('decodes a frame pushed one byte at a time', () => {
    const pieces: Buffer[] = [];
    for (let i = 0; i < wire.length; i++) pieces.push(wire.subarray(i, i + 1));
    assertSpecimen(decodeStream(pieces).frames);
  });

  it('decodes many frames from one chunk', () => {
    const one = frameBytes(MessageType.WRITE_ACK, { id: 9 });
    const chunk = Buffer.concat(Array.from({ length: 1000 }, () => one));
    const { frames, decoder } = decodeStream([chunk]);
    assert.equal(frames.length, 1000);
    assert.equal(decoder.bufferedBytes, 0);
  });

  it('delivers payloads as views into the pushed chunk when the frame is within one chunk', () => {
    const { frames } = decodeStream([wire]);
    for (const frame of frames) {
      if (frame.payload.length === 0) continue;
      assert.equal(frame.payload.buffer, wire.buffer);
      assert.ok(frame.payload.byteOffset >= wire.byteOffset && frame.payload.byteOffset + frame.payload.length <= wire.byteOffset + wire.length);
    }
  });

  it('copies a payload spanning chunks once and keeps later frames of the chunk as views', () => {
    const a = frameBytes(MessageType.WRITE, { id: 1 }, bytesFrom(5000, 5));
    const b = frameBytes(MessageType.WRITE, { id: 2 }, bytesFrom(6000, 6));
    const c = frameBytes(MessageType.WRITE, { id: 3 }, bytesFrom(7000, 7));
    const cut = a.length + 3000;
    const all = Buffer.concat([a, b, c]);
    const first = Buffer.from(all.subarray(0, cut));
    const second = Buffer.from(all.subarray(cut));
    const { frames } = decodeStream([first, second]);
    assert.equal(frames.length, 3);
    const [fa, fb, fc3] = frames as [Frame, Frame, Frame];
    assert.equal(fa.payload.buffer, first.buffer);
    assert.notEqual(fb.payload.buffer, first.buffer);
    assert.notEqual(fb.payload.buffer, second.buffer);
    assert.ok(fb.payload.equals(bytesFrom(6000, 6)));
    assert.equal(fc3.payload.buffer, second.buffer);
    assert.ok(fc3.payload.equals(bytesFrom(7000, 7)));
  });

  it('assembles a large payload arriving in many small chunks without re-concatenating', () => {
    const payload = bytesFrom(1024 * 1024, 11);
    const frame = frameBytes(MessageType.WRITE, { id: 1 }, payload);
    const frames: Frame[] = [];
    const decoder = new FrameDecoder({ onFrame: (f) => frames.push(f) });
    let maxBuffered = 0;
    for (let at = 0; at < frame.length; at += 7) {
      decoder.push(frame.subarray(at, at + 7));
      maxBuffered = Math.max(maxBuffered, decoder.bufferedBytes);
    }
    assert.equal(frames.length, 1);
    assert.ok((frames[0] as Frame).payload.equals(payload));
    assert.ok(maxBuffered < frame.length);
    assert.equal(decoder.bufferedBytes, 0);
  });

  it('ignores empty chunks', () => {
    const one = frameBytes(MessageType.PING, { t: 1 });
    const { frames } = decodeStream([Buffer.alloc(0), one.subarray(0, 5), Buffer.alloc(0), one.subarray(5)]);
    assert.equal(frames.length, 1);
  });

  it('stops after onFrame threw: the exception propagates and later input is ignored', () => {
    const one = frameBytes(MessageType.PING, { n: 1 });
    const two = frameBytes(MessageType.PING, { n: 2 });
    const seen: unknown[] = [];
    const decoder = new FrameDecoder({
      onFrame: (f) => {
        seen.push(f.header);
        throw new Error('handler failed');
      },
    });
    assert.throws(() => decoder.push(Buffer.concat([one, two.subarray(0, 10)])), /handler failed/);
    assert.equal(decoder.stopped, true);
    assert.equal(decoder.error, undefined);
    assert.equal(decoder.bufferedBytes, 0);
    decoder.push(two.subarray(10));
    decoder.push(one);
    assert.deepStrictEqual(seen, [{ n: 1 }]);
  });

  it('rejects a re-entrant push from onFrame without failing', () => {
    const one = frameBytes(MessageType.PING, { n: 1 });
    let inner: unknown;
    const decoder = new FrameDecoder({
      onFrame: () => {
        try {
          decoder.push(one);
        } catch (error) {
          inner = error;
        }
      },
    });
    decoder.push(one);
    assert.ok(isBlockMirrorError(inner, 'BM_ERR_INVALID_ARGUMENT'));
    assert.equal(decoder.error, undefined);
  });

  it('rejects bad options', () => {
    expectCode(() => new FrameDecoder({ onFrame: () => {}, limits: { maxHeaderLength: 0, maxPayloadLength: 10 } }), 'BM_ERR_INVALID_ARGUMENT');
    expectCode(() => new FrameDecoder({ onFrame: () => {}, limits: { maxHeaderLength: 100, maxPayloadLength: -1 } }), 'BM_ERR_INVALID_ARGUMENT');
  });
});

describe('codec: unknown message types', () => {
  it('drops OPTIONAL frames of unknown type (counted) and continues', () => {
    const optional = frameBytes(UNKNOWN_TYPE, { future: true }, bytesFrom(3000, 1), { flags: FrameFlag.OPTIONAL });
    const ping = frameBytes(MessageType.PING, { t: 1 });
    const wire = Buffer.concat([optional, ping, optional]);
    for (const pieces of [[wire], [wire.subarray(0, 100), wire.subarray(100, 3100), wire.subarray(3100)]]) {
      const { frames, decoder } = decodeStream(pieces);
      assert.deepStrictEqual(
        frames.map((f) => f.type),
        [MessageType.PING],
      );
      assert.equal(decoder.ignoredFrames, 2);
      assert.equal(decoder.bufferedBytes, 0);
    }
    assert.equal(decodeFrame(optional), null);
  });

  it('rejects a mandatory frame of unknown type with BM_ERR_UNKNOWN_MESSAGE', () => {
    const wire = frameBytes(UNKNOWN_TYPE, { future: true });
    expectCode(() => decodeStream([wire]), 'BM_ERR_UNKNOWN_MESSAGE');
    expectCode(() => decodeFrame(wire), 'BM_ERR_UNKNOWN_MESSAGE');
  });
});

describe('codec: bad frames', () => {
  const header = Buffer.from(frameBytes(MessageType.WRITE, { id: 1, vol: 'vol0' }).subarray(PREFIX_LENGTH));
  const payload = bytesFrom(2000, 4);
  const good = { type: MessageType.WRITE, flags: FrameFlag.PAYLOAD_CRC, header, payload };

  /** Each bad frame must fail with `code` through the stream decoder (whole and byte by byte) and decodeFrame. */
  function assertRejected(wire: Buffer, code: ErrorCode, limits?: CodecLimits): void {
    expectCode(() => decodeStream([wire], limits), code);
    const pieces: Buffer[] = [];
    for (let i = 0; i < wire.length; i++) pieces.push(wire.subarray(i, i + 1));
    expectCode(() => decodeStream(pieces, limits), code);
    expectCode(() => decodeFrame(wire, limits === undefined ? undefined : { limits }), code);
  }

  it('the hand-made good frame decodes', () => {
    const { frames } = decodeStream([rawFrame(good)]);
    assert.equal(frames.length, 1);
    assert.ok((frames[0] as Frame).payload.equals(payload));
  });

  it('BM_ERR_BAD_MAGIC', () => assertRejected(rawFrame({ ...good, magic: 0x4d42 }), 'BM_ERR_BAD_MAGIC'));
  it('BM_ERR_BAD_VERSION', () => assertRejected(rawFrame({ ...good, version: 2 }), 'BM_ERR_BAD_VERSION'));
  it('BM_ERR_HEADER_TOO_LARGE', () =>
    assertRejected(rawFrame(good), 'BM_ERR_HEADER_TOO_LARGE', { maxHeaderLength: header.length - 1, maxPayloadLength: 1 << 20 }));
  it('BM_ERR_FRAME_TOO_LARGE', () =>
    assertRejected(rawFrame(good), 'BM_ERR_FRAME_TOO_LARGE', { maxHeaderLength: 1024, maxPayloadLength: payload.length - 1 }));
  it('BM_ERR_BAD_CHECKSUM (header)', () => assertRejected(rawFrame({ ...good, headerCrc: 0x12345678 }), 'BM_ERR_BAD_CHECKSUM'));
  it('BM_ERR_BAD_CHECKSUM (payload)', () => assertRejected(rawFrame({ ...good, payloadCrc: 0x12345678 }), 'BM_ERR_BAD_CHECKSUM'));
  it('BM_ERR_BAD_HEADER (never-used byte 0xc1)', () => assertRejected(rawFrame({ ...good, header: Buffer.from([0xc1]) }), 'BM_ERR_BAD_HEADER'));
  it('BM_ERR_BAD_HEADER (two values in the header)', () =>
    assertRejected(rawFrame({ ...good, header: Buffer.from([0x01, 0x02]) }), 'BM_ERR_BAD_HEADER'));
  it('BM_ERR_BAD_HEADER (truncated msgpack)', () =>
    assertRejected(rawFrame({ ...good, header: Buffer.from([0x92, 0x01]) }), 'BM_ERR_BAD_HEADER'));
  it('BM_ERR_BAD_HEADER (empty header)', () => assertRejected(rawFrame({ ...good, header: Buffer.alloc(0) }), 'BM_ERR_BAD_HEADER'));
  it('BM_ERR_BAD_HEADER (__proto__ key)', () =>
    assertRejected(rawFrame({ ...good, header: Buffer.from([0x81, 0xa9, ...Buffer.from('__proto__'), 0x01]) }), 'BM_ERR_BAD_HEADER'));

  it('BM_ERR_BAD_HEADER, not an allocation storm, for a 64 KiB header of nested array32 heads', () => {
    // Each head announces 65535 items; @msgpack/msgpack alone would pre-allocate ~13k arrays of 65535 slots.
    const bomb = Buffer.alloc(65535);
    for (let p = 0; p + 5 <= bomb.length; p += 5) {
      bomb[p] = 0xdd;
      bomb.writeUInt32BE(65535, p + 1);
    }
    expectCode(() => decodeStream([rawFrame({ ...good, header: bomb })]), 'BM_ERR_BAD_HEADER');
    expectCode(() => decodeFrame(rawFrame({ ...good, header: bomb })), 'BM_ERR_BAD_HEADER');
  });

  it('decodeFrame: truncated, short and trailing datagrams give BM_ERR_BAD_HEADER', () => {
    const wire = rawFrame(good);
    assert.equal(expectCode(() => decodeFrame(wire.subarray(0, wire.length - 1)), 'BM_ERR_BAD_HEADER').details.reason, 'truncated');
    assert.equal(expectCode(() => decodeFrame(wire.subarray(0, 10)), 'BM_ERR_BAD_HEADER').details.reason, 'truncated');
    assert.equal(expectCode(() => decodeFrame(Buffer.concat([wire, Buffer.from([0])])), 'BM_ERR_BAD_HEADER').details.reason, 'trailing-bytes');
  });

  it('checks in order: magic, version, header length, payload length, header CRC, type, msgpack, payload CRC', () => {
    const limits = { maxHeaderLength: 64, maxPayloadLength: 1000 };
    const bigHeader = Buffer.alloc(65);
    const bad = { ...good, payloadCrc: 1, header: Buffer.from([0xc1]) };
    const cases: [Buffer, ErrorCode][] = [
      [rawFrame({ ...bad, magic: 1, version: 9, header: bigHeader, headerCrc: 1 }), 'BM_ERR_BAD_MAGIC'],
      [rawFrame({ ...bad, version: 9, header: bigHeader, headerCrc: 1 }), 'BM_ERR_BAD_VERSION'],
      [rawFrame({ ...bad, header: bigHeader, headerCrc: 1 }), 'BM_ERR_HEADER_TOO_LARGE'],
      [rawFrame({ ...bad, headerCrc: 1 }), 'BM_ERR_FRAME_TOO_LARGE'],
      [rawFrame({ ...bad, payload: payload.subarray(0, 1000), headerCrc: 1, type: UNKNOWN_TYPE }), 'BM_ERR_BAD_CHECKSUM'],
      [rawFrame({ ...bad, payload: payload.subarray(0, 1000), type: UNKNOWN_TYPE }), 'BM_ERR_UNKNOWN_MESSAGE'],
      [rawFrame({ ...bad, payload: payload.subarray(0, 1000) }), 'BM_ERR_BAD_HEADER'],
      [rawFrame({ ...good, payload: payload.subarray(0, 1000), payloadCrc: 1 }), 'BM_ERR_BAD_CHECKSUM'],
    ];
    for (const [wire, code] of cases) {
      expectCode(() => decodeStream([wire], limits), code);
      expectCode(() => decodeFrame(wire, { limits }), code);
    }
  });

  it('rejects an announced 4 GiB payload right after the prefix, buffering nothing', () => {
    const prefix = rawFrame({ ...good, payload: undefined, payloadLength: 0xffffffff }).subarray(0, PREFIX_LENGTH);
    const decoder = new FrameDecoder({ onFrame: () => assert.fail('no frame expected') });
    decoder.push(prefix.subarray(0, 12));
    assert.equal(decoder.bufferedBytes, 12);
    const error = expectCode(() => decoder.push(prefix.subarray(12)), 'BM_ERR_FRAME_TOO_LARGE');
    assert.equal(error.details.payloadLength, 0xffffffff);
    assert.equal(decoder.bufferedBytes, 0);
    assert.equal(decoder.error, error);
  });

  it('rejects a bad header CRC as soon as prefix and header are in, before the payload', () => {
    const wire = rawFrame({ ...good, headerCrc: 7 });
    const decoder = new FrameDecoder({ onFrame: () => assert.fail('no frame expected') });
    decoder.push(wire.subarray(0, PREFIX_LENGTH));
    expectCode(() => decoder.push(wire.subarray(PREFIX_LENGTH, PREFIX_LENGTH + header.length)), 'BM_ERR_BAD_CHECKSUM');
  });

  it('after the first error ignores further input', () => {
    const frames: Frame[] = [];
    const decoder = new FrameDecoder({ onFrame: (f) => frames.push(f) });
    const ok = frameBytes(MessageType.PING, { t: 1 });
    expectCode(() => decoder.push(Buffer.concat([ok, rawFrame({ ...good, magic: 0 }), ok])), 'BM_ERR_BAD_MAGIC');
    assert.equal(frames.length, 1, 'frames before the bad one are delivered');
    decoder.push(ok);
    decoder.push(rawFrame({ ...good, version: 3 }));
    assert.equal(frames.length, 1);
    assert.equal(decoder.error?.code, 'BM_ERR_BAD_MAGIC');
    assert.equal(decoder.stopped, true);
    assert.equal(decoder.bufferedBytes, 0);
  });

  it('accepts payloads and headers exactly at the limits', () => {
    const limits = { maxHeaderLength: header.length, maxPayloadLength: payload.length };
    assert.equal(decodeStream([rawFrame(good)], limits).frames.length, 1);
    assert.ok(decodeFrame(rawFrame(good), { limits }));
  });
});

test('SPEC 22, issue 12 (5): READY fb (failback ranges) is checked: even length, non-empty sorted disjoint ranges of safe integers, at most MAX_FAILBACK_RANGES pairs over all volumes', async () => {
  const { parseReady, MAX_FAILBACK_RANGES } = await import('../../src/codec/messages.js');
  const ready = (...fbs: unknown[]) => ({ volumes: fbs.map((fb, i) => ({ name: `v${i}`, applied: 0, fb })) });
  assert.deepEqual(parseReady(ready([0, 4096, 8192, 4096])).volumes[0]!.fb, [0, 4096, 8192, 4096]);
  for (const bad of [[0], [0, 0], [8192, 4096, 0, 4096], [0, 8192, 4096, 4096], [-1, 4096], [0, 1.5], 'x', [0, 2 ** 60]]) {
    assert.throws(() => parseReady(ready(bad)), { code: 'BM_ERR_BAD_HEADER' }, JSON.stringify(bad));
  }
  const many = (n: number) => Array.from({ length: n }, (_, i) => [i * 8192, 4096]).flat();
  assert.equal(parseReady(ready(many(MAX_FAILBACK_RANGES))).volumes[0]!.fb!.length, 2 * MAX_FAILBACK_RANGES);
  assert.throws(() => parseReady(ready(many(MAX_FAILBACK_RANGES + 1))), { code: 'BM_ERR_BAD_HEADER' });
  assert.throws(() => parseReady(ready(many(MAX_FAILBACK_RANGES / 2 + 1), many(MAX_FAILBACK_RANGES / 2))), { code: 'BM_ERR_BAD_HEADER' }, 'the budget is per READY');
});
