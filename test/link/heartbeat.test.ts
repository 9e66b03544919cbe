import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { decodeFrame } from '../../src/codec/decoder.js';
import { encodeFrame } from '../../src/codec/encoder.js';
import { MessageType } from '../../src/codec/frame.js';
import { BlockMirrorError, type ErrorCode } from '../../src/errors.js';
import {
  HeartbeatReplayGuard,
  computeHeartbeatMac,
  encodeHeartbeat,
  parseHeartbeat,
  verifyHeartbeat,
  type HeartbeatFields,
  type HeartbeatRejectReason,
} from '../../src/link/heartbeat.js';

const SECRET = Buffer.from('correct horse battery staple');
const fields: HeartbeatFields = { node: 'node-b', session: 's-1', seq: 7, time: 1234.5, status: 'up' };

function rejects(fn: () => unknown, code: ErrorCode, reason: HeartbeatRejectReason): BlockMirrorError {
  try {
    fn();
  } catch (error) {
    assert.ok(error instanceof BlockMirrorError, `expected a BlockMirrorError, got ${String(error)}`);
    assert.equal(error.code, code, error.message);
    assert.equal(error.details.reason, reason);
    return error;
  }
  assert.fail(`expected ${code}`);
}

describe('heartbeat datagram', () => {
  it('is one HEARTBEAT frame carrying node, session, seq, time and status (and a MAC with a secret)', () => {
    const plain = encodeHeartbeat(fields);
    const frame = decodeFrame(plain);
    assert.ok(frame !== null, 'frame !== null');
    assert.equal(frame.type, MessageType.HEARTBEAT);
    assert.equal(frame.payload.length, 0);
    assert.deepEqual(parseHeartbeat(frame.header), fields);

    const signed = verifyHeartbeat(encodeHeartbeat(fields, SECRET), { secret: SECRET });
    assert.deepEqual({ ...signed, mac: undefined }, { ...fields, mac: undefined });
    assert.deepEqual(Buffer.from(signed.mac!), computeHeartbeatMac(SECRET, fields));
    assert.ok(plain.length < 200, `a heartbeat is small (${plain.length} bytes)`);
  });

  it('round-trips any valid fields (property)', () => {
    fc.assert(
      fc.property(
        fc.record({
          node: fc.string({ minLength: 1, maxLength: 256 }),
          session: fc.string({ minLength: 1, maxLength: 256 }),
          seq: fc.maxSafeNat(),
          time: fc.double({ noNaN: true, noDefaultInfinity: true }),
          status: fc.constantFrom('up' as const, 'down' as const, 'probation' as const, 'connecting' as const),
        }),
        (f) => {
          const hb = verifyHeartbeat(encodeHeartbeat(f, SECRET), { secret: SECRET });
          assert.equal(hb.node, f.node);
          assert.equal(hb.session, f.session);
          assert.equal(hb.seq, f.seq);
          assert.ok(hb.time === f.time, `time ${hb.time} !== ${f.time}`); // -0 arrives as 0
          assert.equal(hb.status, f.status);
        },
      ),
    );
  });

  it('refuses invalid fields when encoding', () => {
    for (const bad of [{ node: '' }, { session: 'x'.repeat(257) }, { seq: -1 }, { seq: 1.5 }, { time: Number.NaN }, { status: 'sideways' }]) {
      assert.throws(() => encodeHeartbeat({ ...fields, ...bad } as HeartbeatFields), (e: unknown) => e instanceof BlockMirrorError && e.code === 'BM_ERR_INVALID_ARGUMENT');
    }
    assert.throws(() => encodeHeartbeat(fields, new Uint8Array(0)), (e: unknown) => e instanceof BlockMirrorError && e.code === 'BM_ERR_INVALID_ARGUMENT');
  });

  it('with a secret: a missing or wrong MAC is BM_ERR_AUTH_FAILED; without one the MAC is not needed', () => {
    rejects(() => verifyHeartbeat(encodeHeartbeat(fields), { secret: SECRET }), 'BM_ERR_AUTH_FAILED', 'auth');
    rejects(() => verifyHeartbeat(encodeHeartbeat(fields, Buffer.from('wrong secret')), { secret: SECRET }), 'BM_ERR_AUTH_FAILED', 'auth');
    // A MAC computed over other fields (e.g. a replayed MAC with a new seq) does not verify.
    const mac = computeHeartbeatMac(SECRET, fields);
    const forged = encodeFrame(MessageType.HEARTBEAT, { ...fields, seq: fields.seq + 100, mac }, undefined, { payloadChecksum: false })[0] as Buffer;
    rejects(() => verifyHeartbeat(forged, { secret: SECRET }), 'BM_ERR_AUTH_FAILED', 'auth');
    assert.equal(verifyHeartbeat(encodeHeartbeat(fields)).seq, 7);
    assert.equal(verifyHeartbeat(encodeHeartbeat(fields, SECRET)).seq, 7);
  });

  it('with a secret: flipping any bit of a signed heartbeat is refused (property)', () => {
    const good = encodeHeartbeat(fields, SECRET);
    fc.assert(
      fc.property(fc.nat({ max: good.length * 8 - 1 }), (bit) => {
        const bad = Buffer.from(good);
        bad[bit >> 3]! ^= 1 << (bit & 7);
        assert.throws(() => verifyHeartbeat(bad, { secret: SECRET }), BlockMirrorError);
      }),
      { numRuns: good.length * 8 },
    );
  });

  it('malformed datagrams are refused with codec codes and reason malformed', () => {
    const good = encodeHeartbeat(fields);
    rejects(() => verifyHeartbeat(good.subarray(0, good.length - 1)), 'BM_ERR_BAD_HEADER', 'malformed');
    rejects(() => verifyHeartbeat(Buffer.from('hello there, not a frame')), 'BM_ERR_BAD_MAGIC', 'malformed');
    const ping = encodeFrame(MessageType.PING, fields)[0] as Buffer;
    rejects(() => verifyHeartbeat(ping), 'BM_ERR_UNKNOWN_MESSAGE', 'malformed');
    const noStatus = encodeFrame(MessageType.HEARTBEAT, { ...fields, status: 'maybe' })[0] as Buffer;
    rejects(() => verifyHeartbeat(noStatus), 'BM_ERR_BAD_HEADER', 'malformed');
    const shortMac = encodeFrame(MessageType.HEARTBEAT, { ...fields, mac: new Uint8Array(8) })[0] as Buffer;
    rejects(() => verifyHeartbeat(shortMac), 'BM_ERR_BAD_HEADER', 'malformed');
    const withPayload = Buffer.concat(encodeFrame(MessageType.HEARTBEAT, fields, Buffer.alloc(4)));
    rejects(() => verifyHeartbeat(withPayload), 'BM_ERR_FRAME_TOO_LARGE', 'malformed');
    rejects(() => parseHeartbeat([1, 2]), 'BM_ERR_BAD_HEADER', 'malformed');
  });

  it('expectedNode / rejectNode: other nodes and reflections are refused (BM_ERR_PROTOCOL, unexpected-node)', () => {
    const buf = encodeHeartbeat(fields, SECRET);
    assert.equal(verifyHeartbeat(buf, { secret: SECRET, expectedNode: 'node-b' }).node, 'node-b');
    rejects(() => verifyHeartbeat(buf, { secret: SECRET, expectedNode: 'node-c' }), 'BM_ERR_PROTOCOL', 'unexpected-node');
    rejects(() => verifyHeartbeat(buf, { secret: SECRET, rejectNode: 'node-b' }), 'BM_ERR_PROTOCOL', 'unexpected-node');
  });

  it('lastSeq: a seq not above the last accepted one is refused (replayed)', () => {
    const buf = encodeHeartbeat(fields);
    rejects(() => verifyHeartbeat(buf, { lastSeq: 7 }), 'BM_ERR_PROTOCOL', 'replayed');
    rejects(() => verifyHeartbeat(buf, { lastSeq: 8 }), 'BM_ERR_PROTOCOL', 'replayed');
    assert.equal(verifyHeartbeat(buf, { lastSeq: 6 }).seq, 7);
  });

  it('replay guard: per node+session, duplicates and older seqs are refused; a new session is a restart; old sessions stay refused', () => {
    const guard = new HeartbeatReplayGuard();
    const hb = (over: Partial<HeartbeatFields>): Buffer => encodeHeartbeat({ ...fields, ...over }, SECRET);
    const ok = (over: Partial<HeartbeatFields>): void => void verifyHeartbeat(hb(over), { secret: SECRET, guard });
    const replay = (over: Partial<HeartbeatFields>): void => void rejects(() => verifyHeartbeat(hb(over), { secret: SECRET, guard }), 'BM_ERR_PROTOCOL', 'replayed');

    ok({ seq: 5 });
    replay({ seq: 5 });
    replay({ seq: 4 });
    ok({ seq: 9 });
    replay({ seq: 6 });
    ok({ node: 'other', seq: 1 }); // per node
    assert.deepEqual(guard.last('node-b'), { session: 's-1', seq: 9 });

    ok({ session: 's-2', seq: 1 }); // restart: seq starts again
    assert.deepEqual(guard.last('node-b'), { session: 's-2', seq: 1 });
    ok({ session: 's-2', seq: 2 });
    replay({ session: 's-1', seq: 100 }); // the old run cannot be replayed
    // A refused heartbeat does not change the state.
    ok({ session: 's-2', seq: 3 });
    // Forged heartbeats are refused before the guard sees them, so they cannot advance it.
    rejects(() => verifyHeartbeat(encodeHeartbeat({ ...fields, session: 's-2', seq: 1000 }, Buffer.from('nope')), { secret: SECRET, guard }), 'BM_ERR_AUTH_FAILED', 'auth');
    ok({ session: 's-2', seq: 4 });
  });

  it('replay guard forgets the least recent node beyond maxNodes', () => {
    const guard = new HeartbeatReplayGuard({ maxNodes: 2 });
    for (const node of ['a', 'b', 'c']) guard.accept({ ...fields, node });
    assert.equal(guard.last('a'), undefined);
    assert.ok(guard.last('b') !== undefined && guard.last('c') !== undefined, 'the two most recent nodes are kept');
  });
});
