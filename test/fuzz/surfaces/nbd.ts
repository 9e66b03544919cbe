/**
 * Fuzz surface: the NBD server, handshake and transmission. A valid client
 * stream — client flags, options (structured replies, meta context, INFO,
 * GO or EXPORT_NAME) and requests of every command within the export — then
 * damaged (with lies in option and request lengths), reordered and split,
 * served over an in-memory stream. Properties: the connection always ends,
 * only coded errors are reported, the backends are only called inside the
 * export and on block boundaries, a read-only export is never written, and
 * the bytes in flight stay within the server's budget.
 */
import fc from 'fast-check';
import FakeTimers from '@sinonjs/fake-timers';
import { clockFrom } from '../../../src/clock.js';
import * as P from '../../../src/nbd/protocol.js';
import { NbdServer } from '../../../src/nbd/server.js';
import { duplexPair } from '../../../src/testing/simulator/nbd-client.js';
import { GuardDevice } from '../guard-device.js';
import { applyMutations, mutationsArb, reorder, reordersArb, split, splitsArb, type LengthField } from '../mutate.js';
import { settle } from '../stub-connection.js';
import { assertCoded, type Surface } from '../surface.js';

const SIZE = 1 << 20;
const MAX_PAYLOAD = 64 * 1024;
const BUDGET = 256 * 1024;

function option(opt: number, data: Buffer): Buffer {
  const h = Buffer.alloc(16);
  h.writeBigUInt64BE(P.NBD_OPTS_MAGIC, 0);
  h.writeUInt32BE(opt, 8);
  h.writeUInt32BE(data.length, 12);
  return Buffer.concat([h, data]);
}

function nameInfo(name: string, infos: number[]): Buffer {
  const n = Buffer.from(name);
  const b = Buffer.alloc(4 + n.length + 2 + 2 * infos.length);
  b.writeUInt32BE(n.length, 0);
  n.copy(b, 4);
  b.writeUInt16BE(infos.length, 4 + n.length);
  infos.forEach((x, i) => b.writeUInt16BE(x, 6 + n.length + 2 * i));
  return b;
}

function metaContext(name: string, queries: string[]): Buffer {
  const parts = [Buffer.alloc(4), Buffer.from(name), Buffer.alloc(4)];
  parts[0]!.writeUInt32BE(Buffer.byteLength(name));
  parts[2]!.writeUInt32BE(queries.length);
  for (const q of queries) {
    const l = Buffer.alloc(4);
    l.writeUInt32BE(Buffer.byteLength(q));
    parts.push(l, Buffer.from(q));
  }
  return Buffer.concat(parts);
}

function request(type: number, handle: number, offset: number, length: number, flags: number, payload?: Buffer): Buffer {
  const h = P.encodeRequestHeader(type, flags, handle, offset, length);
  return payload === undefined ? h : Buffer.concat([h, payload]);
}

const requestArb = fc.record({
  type: fc.constantFrom(P.NBD_CMD_READ, P.NBD_CMD_WRITE, P.NBD_CMD_WRITE, P.NBD_CMD_READ, P.NBD_CMD_FLUSH, P.NBD_CMD_TRIM, P.NBD_CMD_WRITE_ZEROES, P.NBD_CMD_BLOCK_STATUS, P.NBD_CMD_CACHE, P.NBD_CMD_DISC, 99),
  block: fc.integer({ min: 0, max: SIZE / 512 - 1 }),
  blocks: fc.integer({ min: 0, max: 128 }),
  flags: fc.constantFrom(0, 0, 0, P.NBD_CMD_FLAG_FUA, P.NBD_CMD_FLAG_NO_HOLE, P.NBD_CMD_FLAG_DF, P.NBD_CMD_FLAG_REQ_ONE),
});

export interface NbdInput {
  exportName: 'disk' | 'ro' | 'nope';
  structured: boolean;
  allocation: boolean;
  info: boolean;
  exportNameOption: boolean;
  requests: Array<{ type: number; block: number; blocks: number; flags: number }>;
  order: Parameters<typeof reorder>[1];
  mutations: Parameters<typeof applyMutations>[1];
  splits: number[];
}

let server: NbdServer;
let disk: GuardDevice;
let ro: GuardDevice;
const errors: unknown[] = [];
const fake = FakeTimers.createClock(0);
const stats = { sessions: 0, requests: 0, backendWrites: 0, protocolErrors: 0 };

export const nbdSurface: Surface<NbdInput> = {
  name: 'nbd',
  stats,
  arbitrary: fc.record({
    exportName: fc.constantFrom('disk' as const, 'disk' as const, 'ro' as const, 'nope' as const),
    structured: fc.boolean(),
    allocation: fc.boolean(),
    info: fc.boolean(),
    exportNameOption: fc.boolean(),
    requests: fc.array(requestArb, { maxLength: 6 }),
    order: reordersArb,
    mutations: mutationsArb(4),
    splits: splitsArb,
  }),
  async setup() {
    disk = new GuardDevice(SIZE, { blockSize: 512 });
    ro = new GuardDevice(SIZE, { blockSize: 512 });
    ro.readOnly = true;
    server = new NbdServer({
      exports: [
        { name: 'disk', readOnly: false, backend: disk },
        { name: 'ro', readOnly: true, backend: ro },
      ],
      maxPayload: MAX_PAYLOAD,
      maxInFlightBytes: BUDGET,
      maxInFlightBytesPerConnection: BUDGET / 2,
      clock: clockFrom(fake),
    });
    server.on('error', (e) => errors.push(e));
    server.on('session', () => stats.sessions++);
  },
  async teardown() {
    await server.close();
  },
  async run(input) {
    const name = input.exportName;
    const handshake: Buffer[] = [Buffer.from([0, 0, 0, P.NBD_FLAG_C_FIXED_NEWSTYLE | P.NBD_FLAG_C_NO_ZEROES])];
    const opts: Buffer[] = [];
    if (input.structured) opts.push(option(P.NBD_OPT_STRUCTURED_REPLY, Buffer.alloc(0)));
    if (input.allocation) opts.push(option(P.NBD_OPT_SET_META_CONTEXT, metaContext(name, [P.NBD_META_BASE_ALLOCATION])));
    if (input.info) opts.push(option(P.NBD_OPT_INFO, nameInfo(name, [P.NBD_INFO_BLOCK_SIZE])));
    opts.push(option(P.NBD_OPT_LIST, Buffer.alloc(0)));
    const go = input.exportNameOption ? option(P.NBD_OPT_EXPORT_NAME, Buffer.from(name)) : option(P.NBD_OPT_GO, nameInfo(name, [P.NBD_INFO_BLOCK_SIZE]));
    const reqs = input.requests.map((r, i) => {
      const offset = r.block * 512;
      const length = Math.min(r.blocks * 512, SIZE - offset);
      return request(r.type, i, offset, length, r.flags, r.type === P.NBD_CMD_WRITE ? Buffer.alloc(length, i) : undefined);
    });
    const parts = [...handshake, ...reorder([...opts, go], input.order), ...reqs];
    // length fields: option lengths and request lengths
    const fields: LengthField[] = [];
    let at = 0;
    for (const p of parts) {
      if (p.length >= 16 && p.readBigUInt64BE(0) === P.NBD_OPTS_MAGIC) fields.push({ offset: at + 12, size: 4 }, { offset: at + 16, size: 4 });
      else if (p.length >= 28 && p.readUInt32BE(0) === P.NBD_REQUEST_MAGIC) fields.push({ offset: at + 24, size: 4 }, { offset: at + 16, size: 8 });
      at += p.length;
    }
    const bytes = applyMutations(Buffer.concat(parts), input.mutations, fields);
    const [client, serverSide] = duplexPair();
    client.resume(); // replies are read and dropped
    client.on('error', () => {});
    const closed = new Promise<void>((resolve) => serverSide.once('close', () => resolve()));
    errors.length = 0; // only this input's errors are checked (and kept)
    server.serve(serverSide);
    for (const chunk of split(bytes, input.splits)) {
      client.write(chunk);
      await settle(1);
    }
    client.end();
    let done = false;
    void closed.then(() => (done = true));
    for (let i = 0; i < 200 && !done; i++) await settle(1);
    if (!done) throw new Error('the NBD connection did not end after the client closed its side');
    for (const e of errors) assertCoded(e, 'NbdServer error event');
    const violation = disk.violations[0] ?? ro.violations[0];
    if (violation !== undefined) throw new Error(`backend misuse: ${violation}`);
    const s = server.stats();
    stats.requests = s.requests;
    stats.protocolErrors = s.protocolErrors;
    stats.backendWrites = disk.writes;
    // one request per connection may pass the budget (only this one is open)
    if (s.peakInFlightBytes > BUDGET + MAX_PAYLOAD) throw new Error(`bytes in flight ${s.peakInFlightBytes} > ${BUDGET + MAX_PAYLOAD}`);
    if (s.connections !== 0) throw new Error(`${s.connections} connections still open`);
  },
};
