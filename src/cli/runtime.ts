/**
 * What the long-running CLI commands share: opening volume files, reading the
 * secret, closing resources in order, and waiting for a signal or a fatal error.
 *
 * @module
 */
import { readFile } from 'node:fs/promises';
import { existsSync, readFileSync } from 'node:fs';
import type { Writable } from 'node:stream';
import createDebug from 'debug';
import { BlockMirrorError, isBlockMirrorError, toBlockMirrorError } from '../errors.js';
import type { BlockDevice } from '../device/block-device.js';
import { FileBlockDevice } from '../device/file-device.js';
import { NbdBlockDevice } from '../nbd/nbd-block-device.js';
import type { VolumeSpec } from './args.js';
import { CLI_BLOCK_SIZE } from './args.js';
import { formatError } from './errors.js';

const log = createDebug('blockmirror:cli');

/** Streams and environment of a CLI run (the real process, or a test's). */
export interface CliIo {
  stdout: Writable;
  stderr: Writable;
  env: NodeJS.ProcessEnv;
  /** Emits `SIGINT` / `SIGTERM` (default `process`). */
  signals?: Pick<NodeJS.EventEmitter, 'on' | 'off'>;
}

/** Writes one line to stdout. */
export function say(io: CliIo, line: string): void {
  io.stdout.write(`${line}\n`);
}

/** Writes a non-fatal `blockmirror: warning: …` line to stderr. */
export function warn(io: CliIo, message: string): void {
  io.stderr.write(`blockmirror: warning: ${message}\n`);
}

/** The package version (from package.json, two levels above this file in src/ and dist/). */
export function packageVersion(): string {
  try {
    const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version?: unknown };
    return typeof pkg.version === 'string' ? pkg.version : '0.0.0';
  } catch {
    return '0.0.0';
  }
}

/**
 * Opens every volume: a file (created sparse when missing and a size is
 * given) or an export on an NBD server (connected with 512-byte blocks). On
 * failure closes those already open and throws `volume NAME: …` with the
 * device's code. The names of the files it created are added to `created`.
 */
export async function openVolumes(specs: readonly VolumeSpec[], created?: Set<string>): Promise<Map<string, BlockDevice>> {
  const devices = new Map<string, BlockDevice>();
  try {
    for (const spec of specs) {
      try {
        if (spec.nbd !== undefined) {
          devices.set(spec.name, await NbdBlockDevice.open(spec.nbd, { blockSize: CLI_BLOCK_SIZE }));
          log('volume %s: NBD export %s', spec.name, spec.path);
          continue;
        }
        const opts: { size?: number; blockSize: number } = { blockSize: CLI_BLOCK_SIZE };
        if (spec.size !== undefined) opts.size = spec.size;
        if (created !== undefined && !existsSync(spec.path)) created.add(spec.name);
        devices.set(spec.name, await FileBlockDevice.open(spec.path, opts));
        log('volume %s: %s', spec.name, spec.path);
      } catch (error) {
        const err = toBlockMirrorError(error);
        throw new BlockMirrorError(err.code, `volume ${spec.name}: ${err.message}`, { cause: error, details: err.details });
      }
    }
  } catch (error) {
    await Promise.all([...devices.values()].map((d) => d.close().catch(() => undefined)));
    throw error;
  }
  return devices;
}

/**
 * One line per connection change of the volumes on NBD servers: a stderr
 * warning `volume NAME: NBD server unreachable (CODE: …); writes fail until it
 * is back` and, on stdout, `volume NAME nbd reconnected`.
 */
export function logNbdVolumes(devices: ReadonlyMap<string, BlockDevice>, io: CliIo): void {
  for (const [name, device] of devices) {
    if (!(device instanceof NbdBlockDevice)) continue;
    device.on('disconnect', (error) => warn(io, `volume ${name}: NBD server ${device.uri} unreachable (${error.code}: ${error.message}); its I/O fails until it is back`));
    device.on('reconnect', () => say(io, `volume ${name} nbd reconnected uri=${device.uri}`));
    device.on('connection-error', (error) => log('volume %s: %s: %s', name, error.code, error.message));
  }
}

/** Flushes then closes every device (errors are collected, the first is thrown after all are closed). */
export async function closeDevices(devices: Iterable<BlockDevice>): Promise<void> {
  const errors: unknown[] = [];
  await Promise.all(
    [...devices].map(async (d) => {
      try {
        await d.flush();
      } catch (error) {
        if (!isBlockMirrorError(error, 'BM_ERR_CLOSED')) errors.push(error);
      }
      await d.close().catch((error: unknown) => errors.push(error));
    }),
  );
  if (errors.length > 0) throw errors[0];
}

/** Reads the shared secret: the first line of `file` (without its line ending); must not be empty. */
export async function readSecret(file: string): Promise<string> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (error) {
    const reason = (error as { code?: unknown }).code === 'ENOENT' ? 'no such file' : error instanceof Error ? error.message : String(error);
    throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', `cannot read --secret-file ${file}: ${reason}`, { cause: error });
  }
  const secret = text.split(/\r?\n/)[0] ?? '';
  if (secret.length === 0) throw new BlockMirrorError('BM_ERR_INVALID_ARGUMENT', `--secret-file ${file}: the first line is empty`);
  return secret;
}

/** Things to close, closed in reverse order of registration; each failure is reported, none stops the others. */
export class Resources {
  readonly #stack: Array<{ name: string; close: () => Promise<void> }> = [];

  /** Registers `close` (runs before everything registered earlier). */
  add(name: string, close: () => Promise<void>): void {
    this.#stack.push({ name, close });
  }

  /** Closes everything (last registered first). Resolves with the errors met. */
  async closeAll(): Promise<Array<{ name: string; error: BlockMirrorError }>> {
    const errors: Array<{ name: string; error: BlockMirrorError }> = [];
    while (this.#stack.length > 0) {
      const { name, close } = this.#stack.pop()!;
      try {
        log('closing %s', name);
        await close();
      } catch (error) {
        log('closing %s failed: %O', name, error);
        errors.push({ name, error: toBlockMirrorError(error) });
      }
    }
    return errors;
  }
}

/** Why a server command stops. */
export type StopReason = { kind: 'signal'; signal: NodeJS.Signals } | { kind: 'error'; error: unknown };

/**
 * Resolves `stopped` on the first SIGINT/SIGTERM or {@link Lifecycle.fail}.
 * A second SIGINT while shutting down exits the process at once (status 1).
 * A ref'd keep-alive timer holds the process open until {@link Lifecycle.dispose}
 * (the library's own timers are unref'd).
 */
export class Lifecycle {
  readonly stopped: Promise<StopReason>;
  readonly #io: CliIo;
  readonly #signals: Pick<NodeJS.EventEmitter, 'on' | 'off'>;
  readonly #keepAlive: NodeJS.Timeout;
  #resolve!: (reason: StopReason) => void;
  #stopping = false;
  readonly #onSignal = (signal: NodeJS.Signals): void => {
    if (this.#stopping) {
      // A second Ctrl-C means "now". Repeated SIGTERMs (process-group kills send several) are ignored.
      if (signal !== 'SIGINT') return;
      this.#io.stderr.write('blockmirror: SIGINT again: exiting without a clean shutdown\n');
      process.exit(1);
    }
    this.#stop({ kind: 'signal', signal });
  };

  constructor(io: CliIo) {
    this.#io = io;
    this.#signals = io.signals ?? process;
    this.stopped = new Promise<StopReason>((resolve) => {
      this.#resolve = resolve;
    });
    this.#signals.on('SIGINT', this.#onSignal);
    this.#signals.on('SIGTERM', this.#onSignal);
    this.#keepAlive = setInterval(() => undefined, 1 << 30);
  }

  /** Stops with a fatal error (the command then exits 1 after closing everything). */
  fail(error: unknown): void {
    this.#stop({ kind: 'error', error });
  }

  #stop(reason: StopReason): void {
    if (this.#stopping) return;
    this.#stopping = true;
    this.#resolve(reason);
  }

  /** Removes the signal handlers and the keep-alive timer. */
  dispose(): void {
    this.#signals.off('SIGINT', this.#onSignal);
    this.#signals.off('SIGTERM', this.#onSignal);
    clearInterval(this.#keepAlive);
  }
}

/**
 * Runs a server command's shutdown: closes `resources`, reports close errors
 * on stderr, disposes the lifecycle. Returns the exit status: 0 after a
 * signal with everything closed cleanly; rethrows the fatal error otherwise.
 */
export async function shutdown(io: CliIo, lifecycle: Lifecycle, resources: Resources, reason: StopReason): Promise<number> {
  if (reason.kind === 'signal') say(io, `stopping signal=${reason.signal}`);
  const errors = await resources.closeAll();
  lifecycle.dispose();
  if (reason.kind === 'error') throw reason.error;
  for (const { name, error } of errors) io.stderr.write(formatError(new BlockMirrorError(error.code, `closing ${name}: ${error.message}`)));
  if (errors.length > 0) return 1;
  say(io, 'stopped');
  return 0;
}
