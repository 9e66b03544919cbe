/**
 * Fuzz surface: heartbeat datagrams. Valid signed heartbeats, then damaged.
 * Every outcome is an accepted heartbeat or a coded rejection with a reason;
 * with a secret, an accepted heartbeat carries exactly the fields that were
 * signed (nothing forged), and only from the expected node.
 */
import fc from 'fast-check';
import { HEARTBEAT_REJECT_REASONS, HEARTBEAT_STATUSES, HeartbeatReplayGuard, encodeHeartbeat, verifyHeartbeat, type HeartbeatFields } from '../../../src/link/heartbeat.js';
import { PREFIX_LENGTH } from '../../../src/codec/frame.js';
import { applyMutations, mutationsArb, type LengthField } from '../mutate.js';
import { assertCoded, type Surface } from '../surface.js';

const SECRET = Buffer.from('fuzz-secret');
/** Prefix fields of a frame: header length (u16 at 6), payload length (u32 at 8). */
const FIELDS: LengthField[] = [
  { offset: 6, size: 2 },
  { offset: 8, size: 4 },
];

export interface HeartbeatInput {
  fields: HeartbeatFields;
  signed: boolean;
  mutations: Parameters<typeof applyMutations>[1];
}

const fieldsArb: fc.Arbitrary<HeartbeatFields> = fc.record({
  node: fc.constantFrom('primary-1', 'target-1', 'x'),
  session: fc.constantFrom('s1', 's2'),
  seq: fc.oneof(fc.nat(), fc.constant(Number.MAX_SAFE_INTEGER)),
  time: fc.nat(),
  status: fc.constantFrom(...HEARTBEAT_STATUSES),
}) as fc.Arbitrary<HeartbeatFields>;

const stats: Record<string, number> = { accepted: 0 };

export const heartbeatSurface: Surface<HeartbeatInput> = {
  name: 'heartbeat',
  stats,
  arbitrary: fc.record({ fields: fieldsArb, signed: fc.boolean(), mutations: mutationsArb(4) }),
  run(input) {
    let valid: Buffer;
    try {
      valid = encodeHeartbeat(input.fields, input.signed ? SECRET : undefined);
    } catch (error) {
      assertCoded(error, 'encodeHeartbeat');
      return;
    }
    void PREFIX_LENGTH;
    const data = applyMutations(valid, input.mutations, FIELDS);
    const guard = new HeartbeatReplayGuard();
    try {
      const hb = verifyHeartbeat(data, { secret: SECRET, expectedNode: 'primary-1', guard });
      // accepted with a secret: it must be exactly what was signed, by the expected node
      const f = input.fields;
      if (!input.signed) throw new Error('an unsigned heartbeat was accepted although a secret is set');
      if (hb.node !== 'primary-1' || hb.node !== f.node || hb.session !== f.session || hb.seq !== f.seq || hb.status !== f.status) {
        throw new Error(`a forged heartbeat was accepted: ${JSON.stringify(hb)} vs ${JSON.stringify(f)}`);
      }
      stats.accepted!++;
    } catch (error) {
      assertCoded(error, 'verifyHeartbeat');
      if (!HEARTBEAT_REJECT_REASONS.includes(error.details.reason as never)) throw new Error(`rejection without a reason: ${error.message}`, { cause: error });
      const key = String(error.details.reason);
      stats[key] = (stats[key] ?? 0) + 1;
    }
    // without a secret: any outcome, but still coded
    try {
      verifyHeartbeat(data, {});
    } catch (error) {
      assertCoded(error, 'verifyHeartbeat without secret');
    }
  },
};
