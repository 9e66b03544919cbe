/**
 * Small helpers shared by the benchmark suites: statistics, a growable
 * latency recorder, child processes that announce readiness on stdout, free
 * ports and machine information.
 *
 * @module
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, readFileSync } from 'node:fs';
import net from 'node:net';
import type { Primary } from '../src/replication/primary.js';
import os from 'node:os';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';
import { createTestPki } from '../test/helpers/certs.js';

/** Directory of the benchmark sources. */
export const BENCH_DIR = dirname(fileURLToPath(import.meta.url));
/** Repository root. */
export const ROOT_DIR = dirname(BENCH_DIR);

/** Median of `values` (mean of the two middle values for an even count); NaN when empty. */
export function median(values: readonly number[]): number {
  const v = values.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (v.length === 0) return Number.NaN;
  const mid = v.length >> 1;
  return v.length % 2 === 1 ? v[mid]! : (v[mid - 1]! + v[mid]!) / 2;
}

/** Rounds to `digits` decimals (null stays null, NaN becomes null). */
export function round(value: number | null | undefined, digits = 0): number | null {
  if (value === null || value === undefined || !Number.isFinite(value)) return null;
  const f = 10 ** digits;
  return Math.round(value * f) / f;
}

/** Latency samples in microseconds, appended without per-sample allocation. */
export class LatencyRecorder {
  #samples = new Float64Array(1 << 16);
  #count = 0;

  get count(): number {
    return this.#count;
  }

  add(us: number): void {
    if (this.#count === this.#samples.length) {
      const bigger = new Float64Array(this.#samples.length * 2);
      bigger.set(this.#samples);
      this.#samples = bigger;
    }
    this.#samples[this.#count++] = us;
  }

  /** Percentiles (0…100) of the samples, nearest-rank. */
  percentiles(ps: readonly number[]): number[] {
    if (this.#count === 0) return ps.map(() => Number.NaN);
    const sorted = this.#samples.slice(0, this.#count).sort();
    return ps.map((p) => sorted[Math.min(this.#count - 1, Math.max(0, Math.ceil((p / 100) * this.#count) - 1))]!);
  }
}

let clockTicks: number | undefined;

/**
 * CPU time (user + system, all threads) consumed so far by process `pid`, in
 * ms, from `/proc/<pid>/stat` (Linux; null elsewhere or when the process is gone).
 * Resolution: one clock tick (usually 10 ms).
 */
export function processCpuMs(pid: number | undefined): number | null {
  if (pid === undefined) return null;
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    if (clockTicks === undefined) {
      try {
        clockTicks = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
      } catch {
        clockTicks = 100;
      }
    }
    return ((Number(fields[11]) + Number(fields[12])) * 1000) / clockTicks;
  } catch {
    return null;
  }
}

/** One-line machine description stored with every result. */
export interface MachineInfo {
  date: string;
  hostname: string;
  platform: string;
  arch: string;
  kernel: string;
  cpus: number;
  cpuModel: string;
  memoryGiB: number;
  node: string;
  uvThreadpoolSize: string | null;
  /** Node flags of the benchmark's server processes (fixtures). */
  childNodeArgs: string;
  loadAverage: number[];
  /** Commit measured (`BM_BENCH_COMMIT`, else `git rev-parse HEAD`), with `+dirty` when src/ has uncommitted changes. */
  commit: string | null;
}

let commitInfo: string | null | undefined;

function currentCommit(): string | null {
  if (commitInfo !== undefined) return commitInfo;
  if (process.env.BM_BENCH_COMMIT !== undefined) return (commitInfo = process.env.BM_BENCH_COMMIT);
  try {
    const git = (args: string[]): string => execFileSync('git', args, { cwd: ROOT_DIR, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
    const head = git(['rev-parse', 'HEAD']);
    commitInfo = git(['status', '--porcelain', '--', 'src']) === '' ? head : `${head}+dirty`;
  } catch {
    commitInfo = null;
  }
  return commitInfo;
}

/** Machine information (load average now). */
export function machineInfo(): MachineInfo {
  const cpus = os.cpus();
  return {
    date: new Date().toISOString(),
    hostname: os.hostname(),
    platform: os.platform(),
    arch: os.arch(),
    kernel: os.release(),
    cpus: cpus.length,
    cpuModel: cpus[0]?.model ?? 'unknown',
    memoryGiB: Math.round(os.totalmem() / 2 ** 30),
    node: process.version,
    uvThreadpoolSize: process.env.UV_THREADPOOL_SIZE ?? null,
    childNodeArgs: childNodeArgs().join(' '),
    loadAverage: os.loadavg().map((l) => Math.round(l * 100) / 100),
    commit: currentCommit(),
  };
}

/** A free TCP port on 127.0.0.1 (bound and released; a tiny race is accepted). */
export async function freePort(): Promise<number> {
  return new Promise<number>((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen({ host: '127.0.0.1', port: 0 }, () => {
      const address = server.address();
      const port = typeof address === 'object' && address !== null ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

/** Resolves once something accepts TCP connections on 127.0.0.1:`port`. */
export async function waitForPort(port: number, timeoutMs = 15000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const socket = net.connect({ host: '127.0.0.1', port });
      socket.once('connect', () => {
        socket.destroy();
        resolve(true);
      });
      socket.once('error', () => resolve(false));
    });
    if (ok) return;
    if (Date.now() > deadline) throw new Error(`nothing listens on 127.0.0.1:${port} after ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/**
 * A child process speaking line-delimited JSON on stdin/stdout: the harness
 * sends commands, the child answers one JSON object per command and writes
 * one JSON object when it is ready.
 */
export class JsonChild {
  readonly process: ChildProcess;
  readonly name: string;
  readonly #lines: string[] = [];
  readonly #waiters: Array<(line: string) => void> = [];
  readonly #stderr: string[] = [];
  readonly exited: Promise<number | null>;

  constructor(name: string, child: ChildProcess) {
    this.name = name;
    this.process = child;
    const rl = createInterface({ input: child.stdout! });
    rl.on('line', (line) => {
      if (!line.startsWith('{')) return; // stray output (debug logs go to stderr anyway)
      const w = this.#waiters.shift();
      if (w !== undefined) w(line);
      else this.#lines.push(line);
    });
    child.stderr!.on('data', (chunk: Buffer) => {
      this.#stderr.push(chunk.toString());
      if (this.#stderr.length > 200) this.#stderr.shift();
    });
    this.exited = new Promise((resolve) => child.once('exit', (code) => resolve(code)));
    void this.exited.then(() => {
      for (const w of this.#waiters.splice(0)) w(JSON.stringify({ error: `${name} exited: ${this.stderr.slice(-2000)}` }));
    });
  }

  /** Everything the child wrote on stderr (tail). */
  get stderr(): string {
    return this.#stderr.join('');
  }

  /** Next JSON message from the child; throws on `{ error }`. */
  async next<T>(timeoutMs = 60000): Promise<T> {
    const line =
      this.#lines.shift() ??
      (await new Promise<string>((resolve, reject) => {
        const timer = setTimeout(() => {
          const i = this.#waiters.indexOf(done);
          if (i >= 0) this.#waiters.splice(i, 1);
          reject(new Error(`${this.name}: no answer after ${timeoutMs} ms; stderr: ${this.stderr.slice(-2000)}`));
        }, timeoutMs);
        const done = (l: string): void => {
          clearTimeout(timer);
          resolve(l);
        };
        this.#waiters.push(done);
      }));
    const msg = JSON.parse(line) as T & { error?: string };
    if (typeof msg.error === 'string') throw new Error(`${this.name}: ${msg.error}`);
    return msg;
  }

  /** Sends a command and waits for its answer. */
  async request<T>(command: Record<string, unknown>, timeoutMs = 120000): Promise<T> {
    this.process.stdin!.write(`${JSON.stringify(command)}\n`);
    return this.next<T>(timeoutMs);
  }

  /** Asks the child to exit (closes stdin), kills it after `graceMs`. */
  async stop(graceMs = 20000): Promise<void> {
    if (this.process.exitCode !== null || this.process.signalCode !== null) return;
    this.process.stdin!.end();
    const timer = setTimeout(() => this.process.kill('SIGKILL'), graceMs);
    await this.exited;
    clearTimeout(timer);
  }
}

/** Options of {@link spawnTsFixture}. */
export interface SpawnFixtureOptions {
  /** Extra environment. */
  env?: Record<string, string>;
  /**
   * Write V8 CPU profiles into this directory (`--cpu-prof`; one file per
   * thread, including tsx's loader thread, with Node's default names: the
   * largest is the main thread's). Use one directory per process.
   */
  cpuProfDir?: string;
  /** Node/V8 flags of this process instead of {@link childNodeArgs} (`[]`: none). */
  nodeArgs?: string[];
  /** Run this JavaScript file (absolute path) with plain `node`, without tsx, instead of `fixtures/<file>`. */
  plainScript?: string;
}

/**
 * Node flags the README recommends for servers: a larger initial old
 * generation, so that the socket buffers a busy server promotes do not force
 * a mark-compact every few milliseconds (measured +30–70 % at 64 KiB mirrored).
 */
export const RECOMMENDED_NODE_ARGS = '--initial-old-space-size=256';

/** Node/V8 flags of the fixture processes: `BM_BENCH_CHILD_NODE_ARGS` (space-separated; may be empty), else {@link RECOMMENDED_NODE_ARGS}. */
export function childNodeArgs(): string[] {
  const flags = process.env.BM_BENCH_CHILD_NODE_ARGS ?? RECOMMENDED_NODE_ARGS;
  return flags.trim() === '' ? [] : flags.trim().split(/\s+/);
}

/**
 * Starts `node --import tsx benchmarks/fixtures/<file>` with `args` as one JSON
 * argument (plus {@link childNodeArgs}); waits for its ready message.
 */
export async function spawnTsFixture<T>(file: string, args: unknown, options: SpawnFixtureOptions = {}): Promise<{ child: JsonChild; ready: T }> {
  const nodeArgs = [...(options.plainScript === undefined ? ['--import', 'tsx'] : []), ...(options.nodeArgs ?? childNodeArgs())];
  if (options.cpuProfDir !== undefined) {
    mkdirSync(options.cpuProfDir, { recursive: true });
    nodeArgs.push('--cpu-prof', `--cpu-prof-dir=${options.cpuProfDir}`);
  }
  nodeArgs.push(options.plainScript ?? join(BENCH_DIR, 'fixtures', file), JSON.stringify(args));
  const proc = spawn(process.execPath, nodeArgs, {
    cwd: ROOT_DIR,
    env: { ...process.env, ...options.env },
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  const child = new JsonChild(file, proc);
  try {
    const ready = await child.next<T>(60000);
    return { child, ready };
  } catch (error) {
    proc.kill('SIGKILL');
    throw error;
  }
}

/** PEM credentials of one side of a mutual-TLS replication link (a `TlsTransport`'s `cert`, `key`, `ca`), as passed to a fixture. */
export interface TlsPem {
  cert: string;
  key: string;
  /** The CA that signs the peer's certificate. */
  ca: string;
}

/**
 * Certificates for a mutual-TLS replication link: a fresh CA (the tests'
 * `openssl` helper, `test/helpers/certs.ts`) and one certificate each for the
 * mirror target and the primaries (valid for 127.0.0.1). `cleanup` removes
 * the files.
 */
export function benchTlsCredentials(): { target: TlsPem; primary: TlsPem; cleanup: () => void } {
  const pki = createTestPki();
  try {
    const target = pki.issue('bench-target');
    const primary = pki.issue('bench-primary');
    return { target: { cert: target.cert, key: target.key, ca: pki.ca }, primary: { cert: primary.cert, key: primary.key, ca: pki.ca }, cleanup: pki.cleanup };
  } catch (error) {
    pki.cleanup();
    throw error;
  }
}

/** Reads line-delimited JSON commands from stdin (fixture side); exits the loop when stdin closes. */
export async function serveCommands(handle: (command: Record<string, unknown>) => Promise<unknown>): Promise<void> {
  const rl = createInterface({ input: process.stdin });
  for await (const line of rl) {
    if (line.trim() === '') continue;
    let answer: unknown;
    try {
      answer = await handle(JSON.parse(line) as Record<string, unknown>);
    } catch (error) {
      answer = { error: error instanceof Error ? error.message : String(error) };
    }
    process.stdout.write(`${JSON.stringify(answer ?? {})}\n`);
  }
}

/** Fills `buf` with pseudo-random bytes (cheap, deterministic per `seed`). */
export function fillPattern(buf: Buffer, seed: number): Buffer {
  let x = (seed * 2654435761) >>> 0 || 1;
  for (let i = 0; i + 4 <= buf.length; i += 4) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    buf.writeUInt32LE(x >>> 0, i);
  }
  return buf;
}

/** Formats rows as an aligned text table (numbers right-aligned). */
export function formatTable(rows: ReadonlyArray<Record<string, unknown>>, columns?: readonly string[]): string {
  if (rows.length === 0) return '(no rows)';
  const cols = columns ?? [...new Set(rows.flatMap((r) => Object.keys(r)))];
  const cell = (v: unknown): string => (v === null || v === undefined ? '–' : String(v));
  const widths = cols.map((c) => Math.max(c.length, ...rows.map((r) => cell(r[c]).length)));
  const line = (values: readonly string[], numeric: readonly boolean[]): string =>
    values.map((v, i) => (numeric[i] ? v.padStart(widths[i]!) : v.padEnd(widths[i]!))).join('  ');
  const numericCols = cols.map((c) => rows.every((r) => r[c] === null || r[c] === undefined || typeof r[c] === 'number'));
  const out = [line(cols, numericCols), widths.map((w) => '-'.repeat(w)).join('  ')];
  for (const r of rows) out.push(line(cols.map((c) => cell(r[c])), numericCols));
  return out.join('\n');
}

/** Starts `nbdkit file` on a free loopback port (the C reference server); resolves with its URI and a stop function. */
export function startNbdkit(image: string, readonly: boolean): Promise<NbdkitServer> {
  return startNbdkitPlugin(['file', `file=${image}`], readonly);
}

/** A running nbdkit process. */
export interface NbdkitServer {
  uri: string;
  pid: number | undefined;
  stop: () => Promise<void>;
}

/**
 * Starts nbdkit with `plugin` (plugin name and its `key=value` parameters,
 * e.g. `['null', 'size=1G']` or `['nbd', 'hostname=127.0.0.1', 'port=…']`)
 * on a free loopback port.
 */
export async function startNbdkitPlugin(plugin: readonly string[], readonly = false): Promise<NbdkitServer> {
  const port = await freePort();
  const args = ['--foreground', '--exit-with-parent', '--ipaddr', '127.0.0.1', '--port', String(port)];
  if (readonly) args.push('--readonly');
  args.push(...plugin);
  const p = spawn('nbdkit', args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  p.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
  const exited = new Promise<void>((resolve) => p.once('exit', () => resolve()));
  p.once('error', () => {});
  try {
    await waitForPort(port);
  } catch (error) {
    p.kill('SIGKILL');
    throw new Error(`nbdkit did not start: ${stderr}`, { cause: error });
  }
  return {
    uri: `nbd://127.0.0.1:${port}`,
    pid: p.pid,
    stop: async () => {
      if (p.exitCode === null && p.signalCode === null) p.kill('SIGTERM');
      await exited;
    },
  };
}

/** Resolves once `primary`'s link is in `state` (at once if it is). */
export async function waitLink(primary: Primary, state: string): Promise<void> {
  if (primary.link === state) return;
  await new Promise<void>((resolve) => {
    const l = (s: string): void => {
      if (s === state) {
        primary.off('link', l);
        resolve();
      }
    };
    primary.on('link', l);
  });
}
