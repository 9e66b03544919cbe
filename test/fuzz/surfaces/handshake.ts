/**
 * Fuzz surface: the replication handshake of a listener (pre-auth).
 * Valid HELLO and AUTH frames from arbitraries, then damaged, reordered and
 * split, fed to `serverHandshake` with a secret. Every outcome is a coded
 * error and a closed connection, or — never, since the fuzzer cannot know
 * the secret — an accepted peer; the decoder never holds more than one
 * pre-auth frame; the handshake always ends (timeout in virtual time).
 */
import fc from 'fast-check';
import FakeTimers from '@sinonjs/fake-timers';
import { clockFrom } from '../../../src/clock.js';
import { encodeFrame } from '../../../src/codec/encoder.js';
import { DEFAULT_CODEC_LIMITS, FrameFlag, MessageType } from '../../../src/codec/frame.js';
import { FramedConnection } from '../../../src/link/framed-connection.js';
import { serverHandshake } from '../../../src/link/handshake.js';
import { preAuthLimits, PRE_AUTH_MAX_HEADER_LENGTH } from '../../../src/link/pre-auth.js';
import { applyMutations, mutationsArb, reorder, reordersArb, split, splitsArb, type LengthField } from '../mutate.js';
import { StubConnection, settle } from '../stub-connection.js';
import { assertCoded, type Surface } from '../surface.js';

const SECRET = Buffer.from('handshake-fuzz-secret');

const offerArb = fc.record({
  name: fc.constantFrom('db', 'v', ''),
  size: fc.constantFrom(1 << 20, 0, -1, 2 ** 53),
  blockSize: fc.constantFrom(512, 4096, 3),
  generation: fc.constantFrom('ab'.repeat(16), 'x'),
  stream: fc.constantFrom('s'.repeat(8), ''),
  base: fc.nat(),
});
const helloArb = fc.record({
  protocol: fc.constantFrom([1, 1], [0, 5], [2, 1]),
  node: fc.constantFrom('primary-1', ''),
  session: fc.constantFrom('sess-1', 'sess-2'),
  slot: fc.integer({ min: 0, max: 5 }),
  slots: fc.integer({ min: 1, max: 5 }),
  features: fc.constantFrom(['barrier-v1'], [], ['cycle-v1']),
  nonce: fc.uint8Array({ minLength: 32, maxLength: 32 }),
  hb: fc.option(fc.integer({ min: 1, max: 65535 }), { nil: undefined }),
});
const authArb = fc.record({
  proof: fc.uint8Array({ minLength: 32, maxLength: 32 }),
  volumes: fc.array(offerArb, { maxLength: 3 }),
});

export interface HandshakeInput {
  hello: unknown;
  auth: unknown;
  extra: number[];
  order: Parameters<typeof reorder>[1];
  mutations: Parameters<typeof applyMutations>[1];
  splits: number[];
}

/** Header and payload length fields of the 20-byte prefix of the first frames. */
function lengthFields(frames: readonly Uint8Array[][]): LengthField[] {
  const fields: LengthField[] = [];
  let at = 0;
  for (const f of frames) {
    fields.push({ offset: at + 6, size: 2 }, { offset: at + 8, size: 4 });
    at += f.reduce((n, c) => n + c.byteLength, 0);
  }
  return fields;
}

const stats = { challenged: 0, timeouts: 0, authFailed: 0 };

export const handshakeSurface: Surface<HandshakeInput> = {
  name: 'replication-handshake',
  stats,
  arbitrary: fc.record({
    hello: helloArb,
    auth: authArb,
    extra: fc.array(fc.constantFrom(MessageType.HELLO, MessageType.AUTH, MessageType.WRITE, MessageType.ERROR, 200), { maxLength: 2 }),
    order: reordersArb,
    mutations: mutationsArb(4),
    splits: splitsArb,
  }),
  async run(input) {
    const fake = FakeTimers.createClock(0);
    const clock = clockFrom(fake);
    const frames = reorder(
      [
        encodeFrame(MessageType.HELLO, input.hello),
        encodeFrame(MessageType.AUTH, input.auth),
        ...input.extra.map((t) => encodeFrame(t, { x: 1 }, t === MessageType.WRITE ? Buffer.alloc(64) : undefined, { flags: t === 200 ? FrameFlag.OPTIONAL : 0 })),
      ],
      input.order,
    );
    const bytes = applyMutations(Buffer.concat(frames.flat()), input.mutations, lengthFields(frames));
    const raw = new StubConnection();
    const conn = new FramedConnection(raw, { limits: preAuthLimits(DEFAULT_CODEC_LIMITS) });
    let accepted = false;
    const outcome = serverHandshake(conn, {
      nodeId: 'target-1',
      secret: SECRET,
      timeout: 5000,
      clock,
      accept: () => {
        accepted = true;
        return [];
      },
    }).then(
      () => undefined,
      (error: unknown) => error,
    );
    for (const chunk of split(bytes, input.splits)) {
      raw.feed(chunk);
      if (conn.bufferedBytes > PRE_AUTH_MAX_HEADER_LENGTH + 20 + chunk.length) throw new Error(`pre-auth buffering of ${conn.bufferedBytes} bytes`);
      await settle(1);
    }
    await settle(2);
    fake.tick(5000);
    const error = await outcome;
    if (accepted) throw new Error('a peer that does not know the secret was accepted');
    if (error === undefined) throw new Error('the handshake succeeded without the secret');
    assertCoded(error, 'serverHandshake');
    if (raw.bytesWritten > 0) stats.challenged++;
    if (error.code === 'BM_ERR_HANDSHAKE_TIMEOUT') stats.timeouts++;
    if (error.code === 'BM_ERR_AUTH_FAILED') stats.authFailed++;
    if (!conn.closed) throw new Error('the connection stayed open after a failed handshake');
  },
};
