/**
 * Runs the `blockmirror` CLI as a real child process
 * (`node --import tsx src/cli/main.ts …`), reads its stdout line by line and
 * kills it (SIGKILL) when the test ends, so no child outlives its test.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { TestContext } from 'node:test';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const CLI_MAIN = path.join(ROOT, 'src/cli/main.ts');

/** Environment of CLI children: no DEBUG (so no stack traces), everything else inherited. */
function childEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env = { ...process.env, ...extra };
  if (extra.DEBUG === undefined) delete env.DEBUG;
  return env;
}

export interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

/** A running CLI process. */
export class CliProcess {
  readonly child: ChildProcess;
  readonly lines: string[] = [];
  stderr = '';
  readonly exited: Promise<Exit>;
  #exit: Exit | undefined;
  #partial = '';
  #waiters = new Set<() => void>();

  constructor(t: TestContext, args: readonly string[], options: { env?: Record<string, string>; cwd?: string } = {}) {
    this.child = spawn(process.execPath, ['--import', 'tsx', CLI_MAIN, ...args], {
      cwd: options.cwd ?? ROOT,
      env: childEnv(options.env),
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    this.child.stdout!.setEncoding('utf8').on('data', (s: string) => {
      this.#partial += s;
      const parts = this.#partial.split('\n');
      this.#partial = parts.pop()!;
      this.lines.push(...parts);
      this.#wake();
    });
    this.child.stderr!.setEncoding('utf8').on('data', (s: string) => {
      this.stderr += s;
      this.#wake();
    });
    this.exited = new Promise<Exit>((resolve) => {
      this.child.on('close', (code, signal) => {
        if (this.#partial !== '') this.lines.push(this.#partial);
        this.#partial = '';
        this.#exit = { code, signal };
        this.#wake();
        resolve(this.#exit);
      });
    });
    t.after(() => {
      if (this.#exit === undefined) this.child.kill('SIGKILL');
      return this.exited.then(() => undefined);
    });
  }

  get stdout(): string {
    return this.lines.join('\n') + (this.#partial === '' ? '' : `\n${this.#partial}`);
  }

  #wake(): void {
    for (const w of [...this.#waiters]) w();
  }

  /**
   * Resolves with the first whole stdout line matching `re` (already printed
   * or to come); rejects when the process exits first or after `timeout` ms
   * (a safety net against hangs, not a timing assumption).
   */
  waitForLine(re: RegExp, timeout = 60_000): Promise<string> {
    return this.#waitFor(() => this.lines, re, timeout, 'printing');
  }

  /** Like {@link waitForLine}, for a whole stderr line. */
  waitForStderrLine(re: RegExp, timeout = 60_000): Promise<string> {
    return this.#waitFor(() => this.stderr.split('\n').slice(0, -1), re, timeout, 'printing on stderr');
  }

  #waitFor(source: () => string[], re: RegExp, timeout: number, what: string): Promise<string> {
    return new Promise((resolve, reject) => {
      const check = (): boolean => {
        for (const line of source()) {
          if (re.test(line)) {
            done();
            resolve(line);
            return true;
          }
        }
        if (this.#exit !== undefined) {
          done();
          reject(new Error(`process exited (${this.#exit.code ?? this.#exit.signal}) before ${what} ${re}\nstdout: ${this.stdout}\nstderr: ${this.stderr}`));
          return true;
        }
        return false;
      };
      const timer = setTimeout(() => {
        done();
        reject(new Error(`no line matching ${re} within ${timeout} ms\nstdout: ${this.stdout}\nstderr: ${this.stderr}`));
      }, timeout);
      const done = (): void => {
        clearTimeout(timer);
        this.#waiters.delete(waiter);
      };
      const waiter = (): void => void check();
      if (check()) return;
      this.#waiters.add(waiter);
    });
  }

  /** Sends `signal` and waits for the exit. */
  async stop(signal: NodeJS.Signals = 'SIGTERM'): Promise<Exit> {
    if (this.#exit === undefined) this.child.kill(signal);
    return this.exited;
  }
}

/** Runs the CLI to completion. */
export async function runCli(
  t: TestContext,
  args: readonly string[],
  options: { env?: Record<string, string> } = {},
): Promise<Exit & { stdout: string; stderr: string }> {
  const p = new CliProcess(t, args, options);
  const exit = await p.exited;
  return { ...exit, stdout: p.stdout, stderr: p.stderr };
}

/** Parses `host:port` from a `key=host:port` token. */
export function addr(s: string): { host: string; port: number } {
  const i = s.lastIndexOf(':');
  return { host: s.slice(0, i), port: Number(s.slice(i + 1)) };
}

/** `listening mirror=H:P [nbd=H:P] [admin=H:P]` → map of key → address. */
export function listeningAddresses(line: string): Record<string, { host: string; port: number }> {
  const out: Record<string, { host: string; port: number }> = {};
  for (const token of line.split(' ').slice(1)) {
    const eq = token.indexOf('=');
    if (eq > 0) out[token.slice(0, eq)] = addr(token.slice(eq + 1));
  }
  return out;
}

/** A temporary directory removed when the test ends. */
export async function tmpDir(t: TestContext, prefix = 'blockmirror-cli-'): Promise<string> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), prefix));
  t.after(() => fs.rm(dir, { recursive: true, force: true }));
  return dir;
}

/** Asserts the stderr of a failed run is exactly one `blockmirror: CODE: message` line, no stack trace. */
export function oneErrorLine(stderr: string): { code: string; message: string } {
  const lines = stderr.split('\n').filter((l) => l !== '');
  if (lines.length !== 1) throw new Error(`expected one stderr line, got ${lines.length}:\n${stderr}`);
  const m = /^blockmirror: (BM_ERR_[A-Z_]+): (.+)$/.exec(lines[0]!);
  if (m === null) throw new Error(`stderr line does not look like "blockmirror: CODE: message": ${lines[0]}`);
  if (/\n\s+at /.test(stderr)) throw new Error(`stack trace on stderr:\n${stderr}`);
  return { code: m[1]!, message: m[2]! };
}

/** A TCP port free on loopback right now (for a process that must be told its port before it starts). */
export async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen({ host: '127.0.0.1', port: 0 }, () => resolve()));
  const port = (server.address() as net.AddressInfo).port;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}
