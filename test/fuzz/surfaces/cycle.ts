/**
 * Fuzz surface: cycle messages received by a cycle host (after the
 * handshake). A valid transfer — CYCLE_BEGIN, its table, CYCLE_DATA frames,
 * CYCLE_COMMIT — from the freeze the image holds, then damaged, reordered
 * and split. The host keeps its state across inputs (images move on as
 * transfers commit). Properties: coded errors only, the image device is
 * only ever written inside the volume and on block boundaries, the host
 * keeps answering.
 */
import fc from 'fast-check';
import FakeTimers from '@sinonjs/fake-timers';
import { clockFrom } from '../../../src/clock.js';
import { encodeFrame } from '../../../src/codec/encoder.js';
import { DEFAULT_CODEC_LIMITS, MessageType } from '../../../src/codec/frame.js';
import { CycleHost } from '../../../src/cycle/cycle-host.js';
import { FreezeTable } from '../../../src/cycle/freeze-table.js';
import { cycleGeometry } from '../../../src/cycle/geometry.js';
import { FramedConnection } from '../../../src/link/framed-connection.js';
import { MemoryFileSystem } from '../../../src/testing/simulator/memory-fs.js';
import type { VolumeOffer } from '../../../src/codec/messages.js';
import { GuardDevice } from '../guard-device.js';
import { applyMutations, mutationsArb, reorder, reordersArb, split, splitsArb } from '../mutate.js';
import { StubConnection, settle } from '../stub-connection.js';
import { assertCoded, type Surface } from '../surface.js';

const SIZE = 256 * 1024;
const CHUNK = 64 * 1024;
const GRAN = 4096;
const LINEAGE = 'cd'.repeat(16);
const geometry = cycleGeometry(SIZE, 512, CHUNK, GRAN);
const OFFER: VolumeOffer = { name: 'v', size: SIZE, blockSize: 512, generation: LINEAGE, stream: 'cycle', base: 0 };

export interface CycleInput {
  full: boolean;
  /** Granules changed by a delta (granule numbers in the volume). */
  granules: number[];
  fill: number;
  order: Parameters<typeof reorder>[1];
  mutations: Parameters<typeof applyMutations>[1];
  splits: number[];
  /** Close before the commit's answer (a dropped connection mid-transfer). */
  dropEarly: boolean;
}

let host: CycleHost | undefined;
let device: GuardDevice;
let nextId = 1;
const fake = FakeTimers.createClock(0);
const stats = { accepted: 0, begun: 0, committed: 0, transferErrors: 0, deviceWrites: 0 };

function frames(input: CycleInput, from: number): Uint8Array[][] {
  const id = nextId++;
  const to = from + 1;
  const out: Uint8Array[][] = [];
  const data = Buffer.alloc(CHUNK, input.fill);
  if (input.full) {
    out.push(encodeFrame(MessageType.CYCLE_BEGIN, { id, to, vols: [{ v: 0, from: 0, full: true, chunk: CHUNK, gran: GRAN, tbl: 0, n: geometry.chunkCount * geometry.granulesPerChunk }] }));
    for (let c = 0; c < geometry.chunkCount; c++) out.push(encodeFrame(MessageType.CYCLE_DATA, { id, v: 0, s: c, g: 0, n: geometry.granulesPerChunk }, data));
  } else {
    const table = new FreezeTable(geometry);
    for (const g of input.granules) {
      const chunk = Math.floor((g * GRAN) / CHUNK);
      table.allocate(chunk);
      table.mark(chunk, g % geometry.granulesPerChunk, 1);
    }
    const bytes = table.encode();
    out.push(encodeFrame(MessageType.CYCLE_BEGIN, { id, to, vols: [{ v: 0, from, full: false, chunk: CHUNK, gran: GRAN, tbl: bytes.length, n: table.granules }] }));
    out.push(encodeFrame(MessageType.CYCLE_TABLE, { id, v: 0, off: 0 }, bytes));
    for (const run of table.runs()) out.push(encodeFrame(MessageType.CYCLE_DATA, { id, v: 0, s: run.slot, g: run.granule, n: run.count }, data.subarray(0, run.length)));
  }
  out.push(encodeFrame(MessageType.CYCLE_COMMIT, { id, to }));
  return out;
}

async function openHost(): Promise<void> {
  device = new GuardDevice(SIZE, { blockSize: 512 });
  host = await CycleHost.open({ dir: '/fuzz-cycle', volumes: [{ name: 'v', device }], fs: new MemoryFileSystem().view(), clock: clockFrom(fake) });
  host.on('begin', () => stats.begun++);
  host.on('committed', () => stats.committed++);
  host.on('transfer-error', () => stats.transferErrors++);
}

export const cycleSurface: Surface<CycleInput> = {
  name: 'cycle',
  stats,
  arbitrary: fc.record({
    full: fc.boolean(),
    granules: fc.uniqueArray(fc.integer({ min: 0, max: SIZE / GRAN - 1 }), { minLength: 1, maxLength: 6 }),
    fill: fc.integer({ min: 0, max: 255 }),
    order: reordersArb,
    mutations: mutationsArb(3),
    splits: splitsArb,
    dropEarly: fc.boolean(),
  }),
  setup: openHost,
  async teardown() {
    stats.deviceWrites += device.writes;
    await host?.close();
    host = undefined;
  },
  async run(input) {
    const h = host!;
    const image = h.volumeStatus('v');
    const from = image.lineage === LINEAGE && image.seeding !== true ? image.freeze : 0;
    const list = reorder(frames({ ...input, full: input.full || from === 0 }, from), input.order);
    const bytes = applyMutations(Buffer.concat(list.flat()), input.mutations);
    const raw = new StubConnection();
    const conn = new FramedConnection(raw, { limits: DEFAULT_CODEC_LIMITS });
    let closeError: unknown;
    conn.once('close', (error) => {
      closeError = error;
    });
    try {
      h.accept({ node: 'src', session: 's', protocol: [1, 1], slot: 0, slots: 1, features: ['cycle-v1'], nonce: new Uint8Array(32) } as never, [OFFER], conn);
    } catch (error) {
      assertCoded(error, 'CycleHost.accept');
      raw.destroy();
      return;
    }
    h.serve(conn, 'src', [OFFER]);
    stats.accepted++;
    for (const chunk of split(bytes, input.splits)) {
      raw.feed(chunk);
      if (!input.dropEarly) await settle(1);
    }
    await settle(input.dropEarly ? 1 : 8);
    raw.destroy();
    await settle(4);
    if (closeError !== undefined) assertCoded(closeError, 'cycle connection close');

    if (device.violations.length > 0) throw new Error(`image device misuse: ${device.violations[0]}`);
    h.volumeStatus('v');
  },
};
