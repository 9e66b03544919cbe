/**
 * Zeros suite (issue 13): a sparse volume (default 4 GiB holding 64 MiB of
 * data) through the shipped CLI processes with their defaults.
 *
 * - `initial-sync`: a blank mirror (volume file created by the mirror) and a
 *   primary whose allocation map is known (made once by a `--scan-zeros`
 *   start that is not measured): time from the primary's start to its
 *   `resync done` line, bytes relayed between the two (a counting TCP relay).
 * - `first-cycle`: the same with `--mode cycle`: time to `cycle 1 committed`.
 * - each of the two again with the code before issue 13 (`today`: commit
 *   {@link ISSUE_13_BASE}, run through tsx from a `git archive` copy), for
 *   the speed-up.
 * - `nbdcopy`: `nbdcopy nbd://… null:` out of the primary's NBD export vs
 *   out of `nbdkit file` serving the same image.
 *
 * Goals: wire bytes ≤ 1.1 × data, ≥ 10× faster than `today`, nbdcopy ≥ 0.5×
 * the speed of `nbdkit file`.
 *
 * @module
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, rmSync, symlinkSync, mkdirSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { LinkProxy } from '../src/cli/demo-proxy.js';
import { freePort, ROOT_DIR, round, startNbdkit } from './util.js';

const MiB = 2 ** 20;

/** Options of {@link runZerosBenchmark}. */
export interface ZerosBenchOptions {
  /** Volume size in MiB (default 4096). */
  sizeMiB?: number;
  /** Data in the volume in MiB (default 64). */
  dataMiB?: number;
  /** Also run the code before issue 13 (default true). */
  baseline?: boolean;
  log?: (line: string) => void;
}

/** One row of the table. */
export interface ZerosRow {
  scenario: string;
  code: 'now' | 'today' | 'nbdkit file';
  seconds: number | null;
  /** The primary's own figure (`ms=` of its done line), without the process start. */
  reportedSeconds: number | null;
  wireMiB: number | null;
  wirePerData: number | null;
  MBps: number | null;
}

/** A CLI process whose stdout lines can be awaited. */
class CliChild {
  readonly process: ChildProcess;
  readonly #lines: string[] = [];
  readonly #waiters: Array<{ match: RegExp; resolve: (line: string) => void }> = [];
  #stderr = '';
  readonly exited: Promise<number | null>;

  constructor(readonly name: string, args: string[], cwd: string) {
    const main = existsSync(join(cwd, 'dist/cli/main.js')) ? ['dist/cli/main.js'] : ['--import', 'tsx', 'src/cli/main.ts'];
    this.process = spawn(process.execPath, [...main, ...args], { cwd, stdio: ['ignore', 'pipe', 'pipe'] });
    createInterface({ input: this.process.stdout! }).on('line', (line) => {
      const i = this.#waiters.findIndex((w) => w.match.test(line));
      if (i >= 0) this.#waiters.splice(i, 1)[0]!.resolve(line);
      else this.#lines.push(line);
    });
    this.process.stderr!.on('data', (c: Buffer) => {
      this.#stderr = (this.#stderr + c.toString()).slice(-4000);
    });
    this.exited = new Promise((resolve) => this.process.once('exit', (code) => resolve(code)));
  }

  /** The first stdout line (seen or to come) matching `match`. */
  line(match: RegExp, timeoutMs = 600_000): Promise<string> {
    const seen = this.#lines.findIndex((l) => match.test(l));
    if (seen >= 0) return Promise.resolve(this.#lines.splice(seen, 1)[0]!);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`${this.name}: no line ${match} after ${timeoutMs} ms; stderr: ${this.#stderr}`)), timeoutMs);
      void this.exited.then((code) => reject(new Error(`${this.name} exited (${code}) before ${match}; stderr: ${this.#stderr}`)));
      this.#waiters.push({
        match,
        resolve: (l) => {
          clearTimeout(timer);
          resolve(l);
        },
      });
    });
  }

  async stop(): Promise<void> {
    if (this.process.exitCode !== null || this.process.signalCode !== null) return;
    this.process.kill('SIGTERM');
    const timer = setTimeout(() => this.process.kill('SIGKILL'), 20_000);
    await this.exited;
    clearTimeout(timer);
  }
}

/** A sparse image of `size` bytes holding `data` bytes of random data in 1 MiB pieces spread evenly. */
async function makeImage(path: string, size: number, data: number): Promise<void> {
  const f = await open(path, 'w');
  try {
    await f.truncate(size);
    const pieces = data / MiB;
    const stride = Math.floor(size / pieces / MiB) * MiB;
    for (let i = 0; i < pieces; i++) await f.write(randomBytes(MiB), 0, MiB, i * stride);
    await f.sync();
  } finally {
    await f.close();
  }
}

/**
 * The code before issue 13: main as it was when the issue-13 work started
 * (the fork point of that work; a fixed commit, so that the comparison means
 * the same on main as on a branch).
 */
export const ISSUE_13_BASE = 'a061531463';

/** A copy of the code at `ref` (default {@link ISSUE_13_BASE}), or undefined when git cannot make one. */
function baselineTree(dir: string, log: (l: string) => void, ref = ISSUE_13_BASE): string | undefined {
  const check = spawnSync('git', ['-C', ROOT_DIR, 'rev-parse', '--verify', '--quiet', `${ref}^{commit}`], { encoding: 'utf8' });
  if (check.status !== 0) {
    log(`zeros: commit ${ref} is not in this clone: the "today" rows are skipped`);
    return undefined;
  }
  const tree = join(dir, 'today');
  mkdirSync(tree);
  const r = spawnSync('sh', ['-c', `git -C "${ROOT_DIR}" archive ${ref} | tar -x -C "${tree}"`]);
  if (r.status !== 0) return undefined;
  symlinkSync(join(ROOT_DIR, 'node_modules'), join(tree, 'node_modules'));
  log(`zeros: "today" = ${ref.slice(0, 10)} (run through tsx)`);
  return tree;
}

interface SyncRun {
  /** From the primary's start to its line saying it is done. */
  seconds: number;
  /** What the primary reports (`ms=` of that line: the sync or the cycle alone, without the process start). */
  reported: number;
  wire: number;
}

/** One replication run (initial sync or first cycle) from `image` to a blank mirror, with the CLI of `cwd`. */
async function replicate(cwd: string, dir: string, image: string, size: number, mode: 'sync' | 'cycle', primaryState: string): Promise<SyncRun> {
  const port = await freePort();
  const target = join(dir, `target-${mode}-${port}.img`);
  const mirror = new CliChild('mirror', ['mirror', '--listen', `127.0.0.1:${port}`, '--volume', `v=${target}:${size}`, '--state-dir', join(dir, `mirror-state-${port}`)], cwd);
  let primary: CliChild | undefined;
  const proxy = await LinkProxy.start({ target: { host: '127.0.0.1', port } });
  try {
    await mirror.line(/^listening/);
    const started = performance.now();
    const args = ['primary', '--peer', `${proxy.address.host}:${proxy.address.port}`, '--volume', `v=${image}`, '--state-dir', primaryState];
    if (mode === 'cycle') args.push('--mode', 'cycle', '--cycle-interval', '100', '--journal', join(dir, `layers-${port}`));
    primary = new CliChild('primary', args, cwd);
    const done = await primary.line(mode === 'sync' ? /^resync done volume=v/ : /^cycle 1 committed/);
    const seconds = (performance.now() - started) / 1000;
    const s = proxy.stats;
    const ms = /ms=(\d+)/.exec(done);
    return { seconds, reported: ms === null ? seconds : Number(ms[1]) / 1000, wire: s.bytesToTarget + s.bytesFromTarget };
  } finally {
    await primary?.stop();
    await mirror.stop();
    await proxy.close();
    rmSync(target, { force: true });
  }
}

/** nbdcopy of a whole export to `null:`: seconds. */
function nbdcopySeconds(uri: string): number {
  const started = performance.now();
  const r = spawnSync('nbdcopy', [uri, 'null:'], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`nbdcopy ${uri} failed: ${r.stderr}`);
  return (performance.now() - started) / 1000;
}

/** Runs the suite; see the module notes. */
export async function runZerosBenchmark(options: ZerosBenchOptions = {}): Promise<{ rows: ZerosRow[]; goals: Record<string, unknown>; settings: Record<string, unknown> }> {
  const log = options.log ?? (() => undefined);
  const size = (options.sizeMiB ?? 4096) * MiB;
  const data = (options.dataMiB ?? 64) * MiB;
  const dir = mkdtempSync(join(tmpdir(), 'bm-zeros-'));
  const rows: ZerosRow[] = [];
  const row = (scenario: string, code: ZerosRow['code'], seconds: number | null, wire: number | null, reported: number | null = null): ZerosRow => {
    const r: ZerosRow = {
      scenario,
      code,
      seconds: round(seconds, 2),
      reportedSeconds: round(reported, 2),
      wireMiB: wire === null ? null : round(wire / MiB, 1),
      wirePerData: wire === null ? null : round(wire / data, 3),
      MBps: seconds === null ? null : round(size / seconds / 1e6, 0),
    };
    rows.push(r);
    return r;
  };
  try {
    const image = join(dir, 'primary.img');
    await makeImage(image, size, data);
    log(`zeros: image ${size / MiB} MiB holding ${data / MiB} MiB`);
    // the primary's allocation map, made once (not measured): a start with --scan-zeros and no mirror
    const state = join(dir, 'primary-state');
    const scanStarted = performance.now();
    const scan = new CliChild('scan', ['primary', '--peer', `127.0.0.1:${await freePort()}`, '--volume', `v=${image}`, '--state-dir', state, '--scan-zeros'], ROOT_DIR);
    await scan.line(/^scan-zeros done/);
    await scan.stop();
    const scanSeconds = (performance.now() - scanStarted) / 1000;
    log(`zeros: --scan-zeros took ${scanSeconds.toFixed(1)} s`);

    const measured: Record<string, { now?: SyncRun; today?: SyncRun }> = {};
    for (const mode of ['sync', 'cycle'] as const) {
      const name = mode === 'sync' ? 'initial sync' : 'first cycle';
      const states = join(dir, `state-${mode}`);
      spawnSync('cp', ['-a', state, states]);
      const now = await replicate(ROOT_DIR, dir, image, size, mode, states);
      log(`zeros: ${name} (now): ${now.seconds.toFixed(2)} s (reported ${now.reported.toFixed(2)} s), ${(now.wire / MiB).toFixed(1)} MiB on the wire`);
      row(name, 'now', now.seconds, now.wire, now.reported);
      measured[name] = { now };
    }
    if (options.baseline !== false) {
      const tree = baselineTree(dir, log);
      if (tree !== undefined) {
        for (const mode of ['sync', 'cycle'] as const) {
          const name = mode === 'sync' ? 'initial sync' : 'first cycle';
          const today = await replicate(tree, dir, image, size, mode, join(dir, `today-state-${mode}`));
          log(`zeros: ${name} (today): ${today.seconds.toFixed(2)} s (reported ${today.reported.toFixed(2)} s), ${(today.wire / MiB).toFixed(1)} MiB on the wire`);
          row(name, 'today', today.seconds, today.wire, today.reported);
          measured[name]!.today = today;
        }
      }
    }

    // nbdcopy out of the primary's export vs nbdkit file of the same image
    const nbdPort = await freePort();
    const server = new CliChild('nbd primary', ['primary', '--peer', `127.0.0.1:${await freePort()}`, '--volume', `v=${image}`, '--state-dir', state, '--nbd', `127.0.0.1:${nbdPort}`], ROOT_DIR);
    // both servers up at once, copies alternating, best of 5 each (a copy takes tens of ms: the minimum filters the load)
    const nbdkit = await startNbdkit(image, true);
    const oursRuns: number[] = [];
    const theirsRuns: number[] = [];
    try {
      await server.line(/^listening/);
      for (let i = 0; i < 5; i++) {
        oursRuns.push(nbdcopySeconds(`nbd://127.0.0.1:${nbdPort}/v`));
        theirsRuns.push(nbdcopySeconds(nbdkit.uri));
      }
    } finally {
      await server.stop();
      await nbdkit.stop();
    }
    const ours = Math.min(...oursRuns);
    const theirs = Math.min(...theirsRuns);
    row('nbdcopy to null:', 'now', ours, null);
    row('nbdcopy to null:', 'nbdkit file', theirs, null);
    log(`zeros: nbdcopy ${ours.toFixed(3)} s vs nbdkit file ${theirs.toFixed(3)} s`);

    const speedup = (name: string): number | null => {
      const m = measured[name];
      // on the primaries' own figures (the process start, tsx for "today", is not part of a sync)
      return m?.today === undefined || m.now === undefined ? null : round(m.today.reported / m.now.reported, 1);
    };
    const goals = {
      initialSyncWirePerData: round(measured['initial sync']!.now!.wire / data, 3),
      firstCycleWirePerData: round(measured['first cycle']!.now!.wire / data, 3),
      initialSyncSpeedup: speedup('initial sync'),
      speedupWallClock: Object.fromEntries(Object.entries(measured).map(([k, m]) => [k, m.today === undefined || m.now === undefined ? null : round(m.today.seconds / m.now.seconds, 1)])),
      firstCycleSpeedup: speedup('first cycle'),
      nbdcopySpeedVsNbdkitFile: round(theirs / ours, 2),
      scanZerosSeconds: round(scanSeconds, 2),
      met: {
        wire: measured['initial sync']!.now!.wire <= 1.1 * data && measured['first cycle']!.now!.wire <= 1.1 * data,
        speedup: (speedup('initial sync') ?? 0) >= 10 && (speedup('first cycle') ?? 0) >= 10,
        nbdcopy: theirs / ours >= 0.5,
      },
    };
    return { rows, goals, settings: { sizeMiB: size / MiB, dataMiB: data / MiB, baseline: options.baseline !== false } };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
