/**
 * Fuzz surface: replication frames after the handshake, as a mirror target
 * receives them. A real `MirrorTarget` on an in-memory network; the fuzzer
 * completes a real handshake, then sends a valid request stream — WRITE,
 * ZERO, SKIP, FLUSH, HASH, PING — damaged (with lies in the frame lengths),
 * reordered and split. Properties: only coded errors, the target's device
 * is only written inside the volume and on block boundaries, the target
 * keeps serving (its status answers, a second well-behaved connection
 * completes its handshake afterwards).
 */
import fc from 'fast-check';
import { encodeFrame } from '../../../src/codec/encoder.js';
import { DEFAULT_CODEC_LIMITS, MessageType } from '../../../src/codec/frame.js';
import { FramedConnection } from '../../../src/link/framed-connection.js';
import { clientHandshake } from '../../../src/link/handshake.js';
import { systemClock } from '../../../src/clock.js';
import { createMirrorTarget, type MirrorTarget } from '../../../src/replication/mirror-target.js';
import { MemoryNetwork } from '../../../src/transport/memory.js';
import type { TransportConnection } from '../../../src/transport/transport.js';
import { GuardDevice } from '../guard-device.js';
import { applyMutations, mutationsArb, reorder, reordersArb, type LengthField } from '../mutate.js';
import { settle } from '../stub-connection.js';
import { assertCoded, type Surface } from '../surface.js';

const SIZE = 1 << 20;
const GENERATION = '018c0a1b2c3d-deadbeef';

const requestArb = fc.record({
  type: fc.constantFrom(MessageType.WRITE, MessageType.WRITE, MessageType.WRITE, MessageType.ZERO, MessageType.SKIP, MessageType.FLUSH, MessageType.HASH, MessageType.PING, 99),
  block: fc.integer({ min: 0, max: SIZE / 512 - 1 }),
  blocks: fc.integer({ min: 1, max: 32 }),
  vol: fc.constantFrom(0, 0, 0, 0, 0, 0, 0, 1),
  rs: fc.boolean(),
});

export interface FramesInput {
  requests: Array<{ type: number; block: number; blocks: number; vol: number; rs: boolean }>;
  order: Parameters<typeof reorder>[1];
  mutations: Parameters<typeof applyMutations>[1];
}

let run = 0;
const stats = { handshakes: 0, deviceWrites: 0, connectionErrors: 0, secondHandshakeRefused: 0 };

export const replicationFramesSurface: Surface<FramesInput> = {
  name: 'replication-frames',
  stats,
  arbitrary: fc.record({ requests: fc.array(requestArb, { minLength: 1, maxLength: 6 }), order: reordersArb, mutations: mutationsArb(3) }),
  async run(input) {
    const network = new MemoryNetwork();
    const device = new GuardDevice(SIZE, { blockSize: 512 });
    const target: MirrorTarget = await createMirrorTarget({
      transport: network.transport({ host: '10.0.0.2' }),
      listen: { host: '10.0.0.2', port: 7000 },
      heartbeats: false,
      volumes: [{ name: 'v', device }],
    });
    const errors: unknown[] = [];
    target.on('connection-error', (e) => errors.push(e));
    const client = network.transport({ host: '10.0.0.1' });
    const offer = { name: 'v', size: SIZE, blockSize: 512, generation: GENERATION, stream: `stream-${++run}`, base: 0, clean: 1 as const };
    const handshake = async (): Promise<{ conn: FramedConnection; raw: TransportConnection }> => {
      const raw = await client.connect(target.address);
      const conn = new FramedConnection(raw, { limits: DEFAULT_CODEC_LIMITS });
      await clientHandshake(conn, { nodeId: 'fuzz-primary', session: `s-${run}`, slot: 0, slots: 1, volumes: [offer], timeout: 10_000, clock: systemClock });
      return { conn, raw };
    };
    try {
      const { conn, raw } = await handshake();
      stats.handshakes++;
      conn.on('frame', () => {});
      let seq = 0;
      const frames = input.requests.map((r, id) => {
        const off = r.block * 512;
        const len = Math.min(r.blocks * 512, SIZE - off);
        switch (r.type) {
          case MessageType.WRITE:
            seq++;
            return encodeFrame(r.type, { id, vol: r.vol, off, seq, bar: seq - 1, ...(r.rs ? { rs: 1 } : {}) }, Buffer.alloc(len, id + 1));
          case MessageType.ZERO:
            seq++;
            return encodeFrame(r.type, { id, vol: r.vol, off, seq, bar: seq - 1, len });
          case MessageType.SKIP: {
            const first = seq + 1;
            seq += r.blocks;
            return encodeFrame(r.type, { id, vol: r.vol, seq: first, end: seq });
          }
          case MessageType.FLUSH:
            return encodeFrame(r.type, { id, vol: r.vol, bar: seq, ...(r.rs ? { disk: 'up-to-date' } : {}) });
          case MessageType.HASH:
            return encodeFrame(r.type, { id, vol: r.vol, off, len, bar: seq, alg: 'sha256' });
          default:
            return encodeFrame(r.type, { id });
        }
      });
      const ordered = reorder(frames, input.order);
      const fields: LengthField[] = [];
      let at = 0;
      for (const f of ordered) {
        fields.push({ offset: at + 6, size: 2 }, { offset: at + 8, size: 4 });
        at += f.reduce((n, c) => n + c.byteLength, 0);
      }
      raw.write([applyMutations(Buffer.concat(ordered.flat()), input.mutations, fields)]);
      await settle(6);
      raw.destroy();
      await settle(2);
      for (const e of errors) assertCoded(e, 'target connection-error');
      stats.connectionErrors += errors.length;
      stats.deviceWrites += device.writes;
      if (device.violations.length > 0) throw new Error(`device misuse: ${device.violations[0]}`);
      target.status();
      // the target still serves a well-behaved connection
      try {
        const again = await handshake();
        again.raw.destroy();
      } catch (error) {
        // refused for a reason of its own (the stream's volume busy, diverged…): still a coded answer
        assertCoded(error, 'second handshake');
        stats.secondHandshakeRefused++;
      }
    } finally {
      await target.close();
    }
  },
};
