/**
 * Cost of TLS on the replication link: a primary and a mirror target in this
 * process (memory devices, so the link is what is measured), sync and async
 * closed-loop writes, plain TCP against mutual TLS (certificates from the
 * `openssl` CLI), rounds alternating. Reports MB/s per configuration and the
 * TLS/TCP ratio.
 *
 *   npm run bench -- --only tls [--rounds N] [--write-ms MS]
 *
 * @module
 */
import { MemoryBlockDevice } from '../src/device/memory-device.js';
import { createMirrorTarget } from '../src/replication/mirror-target.js';
import { createPrimary } from '../src/replication/primary.js';
import { TlsTransport } from '../src/transport/tls.js';
import type { Transport } from '../src/transport/transport.js';
import { benchTlsCredentials } from './util.js';

/** Options of {@link runTlsBenchmark}. */
export interface TlsBenchOptions {
  rounds?: number;
  durationMs?: number;
  log?: (line: string) => void;
}

/** One row: a workload and mode, TCP and TLS medians and their ratio. */
export interface TlsBenchRow {
  workload: string;
  mode: 'sync' | 'async';
  tcpMBps: number;
  tlsMBps: number;
  tlsVsTcp: number;
}

const WORKLOADS = [
  { blockSize: 64 * 1024, depth: 8 },
  { blockSize: 4096, depth: 16 },
];
const SIZE = 256 * 1024 * 1024;

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length === 0 ? Number.NaN : s.length % 2 === 1 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
}

/** Link transports of the two sides (none: the default plain TCP). */
interface Sides {
  target?: Transport;
  primary?: Transport;
}

async function measure(mode: 'sync' | 'async', sides: Sides, blockSize: number, depth: number, durationMs: number): Promise<number> {
  const target = await createMirrorTarget({
    listen: { host: '127.0.0.1', port: 0 },
    volumes: [{ name: 'v', device: new MemoryBlockDevice(SIZE, { blockSize: 4096 }) }],
    ...(sides.target === undefined ? {} : { transport: sides.target }),
  });
  const primary = await createPrimary({
    peer: target.address,
    volumes: [{ name: 'v', device: new MemoryBlockDevice(SIZE, { blockSize: 4096 }), mode, initialSync: 'none' }],
    ...(sides.primary === undefined ? {} : { transport: sides.primary }),
  });
  try {
    const volume = primary.volume('v');
    const blocks = SIZE / blockSize;
    let bytes = 0;
    const start = performance.now();
    const stopAt = start + durationMs;
    await Promise.all(
      Array.from({ length: depth }, async (_, w) => {
        const buf = Buffer.alloc(blockSize, w + 1);
        while (performance.now() < stopAt) {
          await volume.write(Math.floor(Math.random() * blocks) * blockSize, buf);
          bytes += blockSize;
        }
      }),
    );
    await primary.drain(120_000);
    return bytes / 1e6 / ((performance.now() - start) / 1000);
  } finally {
    await primary.close();
    await target.close();
  }
}

/** Runs the suite. */
export async function runTlsBenchmark(options: TlsBenchOptions = {}): Promise<{ rows: TlsBenchRow[]; settings: Record<string, unknown> }> {
  const rounds = options.rounds ?? 3;
  const durationMs = options.durationMs ?? 3000;
  const log = options.log ?? ((line: string) => process.stderr.write(`${line}\n`));
  const credentials = benchTlsCredentials();
  try {
    const tls: Sides = { target: new TlsTransport(credentials.target), primary: new TlsTransport(credentials.primary) };
    const rows: TlsBenchRow[] = [];
    for (const w of WORKLOADS) {
      for (const mode of ['sync', 'async'] as const) {
        const tcp: number[] = [];
        const secure: number[] = [];
        for (let r = 0; r < rounds; r++) {
          tcp.push(await measure(mode, {}, w.blockSize, w.depth, durationMs));
          secure.push(await measure(mode, tls, w.blockSize, w.depth, durationMs));
          log(`tls ${mode} ${w.blockSize / 1024}k qd${w.depth} round ${r + 1}: tcp ${tcp.at(-1)!.toFixed(1)} MB/s, tls ${secure.at(-1)!.toFixed(1)} MB/s`);
        }
        const a = median(tcp);
        const b = median(secure);
        rows.push({ workload: `${w.blockSize / 1024}k qd${w.depth}`, mode, tcpMBps: Math.round(a * 10) / 10, tlsMBps: Math.round(b * 10) / 10, tlsVsTcp: Math.round((b / a) * 100) / 100 });
      }
    }
    return { rows, settings: { rounds, durationMs, volumeSize: SIZE, devices: 'memory', process: 'primary and target in one process' } };
  } finally {
    credentials.cleanup();
  }
}
