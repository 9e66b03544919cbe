/**
 * The source side of one transfer: sends CYCLE_BEGIN, each volume's table
 * and changed granules, then CYCLE_COMMIT (see `messages.ts`). Reads run a
 * few runs ahead of the sends; sends respect the connection's back-pressure
 * and the bandwidth cap.
 *
 * @module
 */
import { BlockMirrorError } from '../errors.js';
import { encodeFrame, frameLength } from '../codec/encoder.js';
import { MessageType, type CodecLimits } from '../codec/frame.js';
import type { FramedConnection } from '../link/framed-connection.js';
import { FreezeTable, type GranuleRun } from './freeze-table.js';
import type { LayeredVolume } from './layered-volume.js';
import type { CycleBeginHeader, CycleDataHeader } from './messages.js';
import { isAllZero } from '../device/zero.js';

/** One volume of a transfer. */
export interface TransferVolume {
  /** Index of the volume in the handshake's volume list. */
  index: number;
  name: string;
  /** Freeze the target holds (the delta starts there); ignored with `full`. */
  from: number;
  /** Full copy: every granule, no table sent. */
  full: boolean;
  /** The granules to send (for a full copy: `FreezeTable.full`). */
  table: FreezeTable;
  /** Reads the source image as of freeze `to`. */
  read(offset: number, length: number): Promise<Buffer>;
  /** True when the range of the image as of freeze `to` is known to read as zeroes (not read then). */
  knownZero?(offset: number, length: number): Promise<boolean>;
}

/** A transfer to send. */
export interface TransferPlan {
  id: number;
  /** Freeze number the target holds afterwards. */
  to: number;
  volumes: TransferVolume[];
}

/** What a transfer sent. */
export interface TransferStats {
  /** Bytes written to the connection (frames: prefix, header, payload). */
  wireBytes: number;
  /** Bytes of granule data. */
  dataBytes: number;
  /** Bytes of freeze tables. */
  tableBytes: number;
  /** Granules sent. */
  granules: number;
  /** CYCLE_DATA frames sent. */
  dataFrames: number;
  /** Bytes of granules sent as zero runs (CYCLE_DATA with `z`, no payload; known zero or read as all zero). */
  zeroBytes: number;
}

/** Options of {@link sendTransfer}. */
export interface SendTransferOptions {
  limits: CodecLimits;
  payloadChecksum: boolean;
  /** Largest data or table payload per frame (default 1 MiB). */
  maxPayload?: number;
  /** Reads in flight ahead of the sends (default 8). */
  readAhead?: number;
  limiter?: { take(bytes: number): Promise<void> } | undefined;
  /** Called after each data frame with the granule bytes sent so far and in all ({@link transferDataBytes}). */
  onProgress?: ((done: number, total: number) => void) | undefined;
}

/** Granule bytes a transfer of `volumes` sends (an upper bound: the last granule of a volume may be short). */
export function transferDataBytes(volumes: readonly TransferVolume[]): number {
  return volumes.reduce((n, v) => n + v.table.granules * v.table.geometry.granularity, 0);
}

function closed(): BlockMirrorError {
  return new BlockMirrorError('BM_ERR_CONNECTION_CLOSED', 'the connection to the cycle target closed during the transfer');
}

/** Waits until the connection drains (or closes). */
function drained(conn: FramedConnection): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    const onDrain = (): void => {
      conn.off('close', onClose);
      resolve();
    };
    const onClose = (): void => {
      conn.off('drain', onDrain);
      reject(closed());
    };
    conn.once('drain', onDrain);
    conn.once('close', onClose);
  });
}

/**
 * Sends a transfer up to and including its CYCLE_COMMIT; the caller waits for
 * the CYCLE_ACK. Rejects with `BM_ERR_CONNECTION_CLOSED` when the connection
 * goes away, or with a read error of the source.
 */
export async function sendTransfer(conn: FramedConnection, plan: TransferPlan, options: SendTransferOptions): Promise<TransferStats> {
  const maxPayload = Math.min(options.maxPayload ?? 1024 * 1024, options.limits.maxPayloadLength);
  const readAhead = Math.max(1, options.readAhead ?? 8);
  const stats: TransferStats = { wireBytes: 0, dataBytes: 0, tableBytes: 0, granules: 0, dataFrames: 0, zeroBytes: 0 };

  const send = async (type: number, header: unknown, payload?: Uint8Array): Promise<void> => {
    if (conn.closed) throw closed();
    const chunks = encodeFrame(type, header, payload, { payloadChecksum: options.payloadChecksum, limits: options.limits });
    const n = frameLength(chunks);
    if (options.limiter !== undefined) await options.limiter.take(n);
    if (conn.closed) throw closed();
    stats.wireBytes += n;
    if (!conn.connection.write(chunks)) await drained(conn);
  };

  const tables = plan.volumes.map((v) => (v.full ? Buffer.alloc(0) : v.table.encode()));
  const total = options.onProgress === undefined ? 0 : transferDataBytes(plan.volumes);
  const begin: CycleBeginHeader = {
    id: plan.id,
    to: plan.to,
    vols: plan.volumes.map((v, i) => ({
      v: v.index,
      from: v.full ? 0 : v.from,
      full: v.full,
      chunk: v.table.geometry.chunkSize,
      gran: v.table.geometry.granularity,
      tbl: tables[i]!.length,
      n: v.table.granules,
    })),
  };
  await send(MessageType.CYCLE_BEGIN, begin);

  for (const [i, v] of plan.volumes.entries()) {
    const table = tables[i]!;
    for (let off = 0; off < table.length; off += maxPayload) {
      const part = table.subarray(off, Math.min(table.length, off + maxPayload));
      await send(MessageType.CYCLE_TABLE, { id: plan.id, v: v.index, off }, part);
      stats.tableBytes += part.length;
    }
    const granulesPerFrame = Math.max(1, Math.floor(maxPayload / v.table.geometry.granularity));
    const runs = v.table.runs(granulesPerFrame);
    const window: Array<{ run: GranuleRun; data: Promise<Buffer | number> }> = [];
    // a run that is known zero is not read; one read as all zero is not sent: both go as a zero run (its length)
    const readRun = async (offset: number, length: number): Promise<Buffer | number> => {
      if (v.knownZero !== undefined && (await v.knownZero(offset, length))) return length;
      const data = await v.read(offset, length);
      return isAllZero(data) ? length : data;
    };
    const refill = (): void => {
      while (window.length < readAhead) {
        const next = runs.next();
        if (next.done === true) return;
        const data = readRun(next.value.offset, next.value.length);
        data.catch(() => undefined); // awaited below; avoid an unhandled rejection while queued
        window.push({ run: next.value, data });
      }
    };
    refill();
    while (window.length > 0) {
      const { run, data } = window.shift()!;
      const payload = await data;
      refill();
      const header: CycleDataHeader = { id: plan.id, v: v.index, s: run.slot, g: run.granule, n: run.count };
      if (typeof payload === 'number') {
        header.z = 1;
        await send(MessageType.CYCLE_DATA, header);
        stats.zeroBytes += payload;
      } else {
        await send(MessageType.CYCLE_DATA, header, payload);
      }
      const bytes = typeof payload === 'number' ? payload : payload.length;
      stats.dataBytes += bytes;
      stats.granules += run.count;
      stats.dataFrames++;
      options.onProgress?.(stats.dataBytes, Math.max(total, stats.dataBytes));
    }
  }
  await send(MessageType.CYCLE_COMMIT, { id: plan.id, to: plan.to });
  return stats;
}

/** A volume of a consistency group, as the transfer planner sees it. */
export interface PlannedVolume {
  name: string;
  volume: LayeredVolume;
}

/**
 * Plans the transfer that brings a target from what it holds (`held(name)`,
 * 0 for nothing) to freeze `to`: per volume behind `to`, the union of the
 * frozen layers it lacks, or a full copy when it holds nothing of this
 * lineage or lacks layers already merged into the base. Volumes already at
 * `to` are left out. `index` is the volume's position in `volumes` (its index
 * in the handshake).
 */
export function planTransfer(volumes: readonly PlannedVolume[], held: (name: string) => number, to: number): TransferVolume[] {
  const out: TransferVolume[] = [];
  volumes.forEach((v, index) => {
    const from = held(v.name);
    if (from === to) return;
    const vol = v.volume;
    const full = from === 0 || from < vol.baseFreeze || from > to;
    out.push({
      index,
      name: v.name,
      from,
      full,
      table: full ? FreezeTable.full(vol.geometry) : vol.deltaTable(from, to),
      read: (offset, length) => vol.readFrozen(to, offset, length),
      knownZero: (offset, length) => vol.frozenKnownZero(to, offset, length),
    });
  });
  return out;
}
