/**
 * System tools in tests (qemu-io, qemu-img, nbdinfo, nbdcopy, fio, nbdkit, …).
 *
 * A test that needs a tool calls `requireTool(name, t)` first:
 * - the tool is on PATH → `true`;
 * - it is missing and `CI=true` → throws (the test FAILS: CI must have the tools);
 * - it is missing otherwise → the test is marked skipped with the reason and `false` is returned.
 *
 * `runTool()` spawns a tool, collects its output and kills it (SIGKILL) when
 * the test ends or its timeout passes, so no child outlives its test.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import type { TestContext } from 'node:test';

const found = new Map<string, string | undefined>();

/** Absolute path of an executable on PATH, or undefined. Cached. */
export function findTool(name: string): string | undefined {
  if (found.has(name)) return found.get(name);
  let result: string | undefined;
  for (const dir of (process.env.PATH ?? '').split(path.delimiter)) {
    if (dir === '') continue;
    const candidate = path.join(dir, name);
    try {
      fs.accessSync(candidate, fs.constants.X_OK);
      if (fs.statSync(candidate).isFile()) {
        result = candidate;
        break;
      }
    } catch {
      // not here
    }
  }
  found.set(name, result);
  return result;
}

/** Why a test needing `names` cannot run here, or false when every tool is present. */
export function missingTools(...names: string[]): string | false {
  const missing = names.filter((n) => findTool(n) === undefined);
  return missing.length === 0 ? false : `needs ${missing.join(', ')} on PATH`;
}

/**
 * Checks that every tool in `name` (one name or a list) is on PATH. Missing:
 * throws under `CI=true`, otherwise skips `t` (when given) with the reason and
 * returns false.
 */
export function requireTool(name: string | readonly string[], t?: TestContext): boolean {
  const names = typeof name === 'string' ? [name] : [...name];
  const reason = missingTools(...names);
  if (reason === false) return true;
  if (process.env.CI === 'true') {
    throw new Error(`${reason} (CI=true: system tools are required, install them — e.g. apt-get install qemu-utils libnbd-bin fio nbdkit)`);
  }
  t?.skip(`${reason} (install it to run this test; under CI=true it fails instead)`);
  return false;
}

/** Result of {@link runTool}. */
export interface ToolResult {
  /** Exit code, or null when killed by a signal. */
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** Options of {@link runTool}. */
export interface RunToolOptions {
  /** Kill the tool after this many ms (default 120 000). */
  timeout?: number;
  /** Working directory. */
  cwd?: string;
  /** Data written to stdin (stdin is closed afterwards). */
  input?: string | Buffer;
}

/**
 * Spawns `cmd args`, resolves when it exits (never rejects for a non-zero
 * exit; rejects if it cannot be spawned). The child is SIGKILLed when `t`
 * ends or the timeout passes, whichever comes first.
 */
export function runTool(t: TestContext, cmd: string, args: readonly string[], options: RunToolOptions = {}): Promise<ToolResult> {
  return new Promise<ToolResult>((resolve, reject) => {
    const child = spawn(cmd, args, { cwd: options.cwd, stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    let exited = false;
    const kill = (): void => {
      if (!exited) child.kill('SIGKILL');
    };
    const timer = setTimeout(kill, options.timeout ?? 120_000);
    t.after(kill);
    child.stdout.setEncoding('utf8').on('data', (s: string) => (stdout += s));
    child.stderr.setEncoding('utf8').on('data', (s: string) => (stderr += s));
    child.stdin.on('error', () => {
      // the tool may exit without reading its stdin
    });
    child.stdin.end(options.input);
    child.on('error', (err) => {
      exited = true;
      clearTimeout(timer);
      reject(err);
    });
    child.on('close', (code, signal) => {
      exited = true;
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
  });
}
