/**
 * Real NBD servers for tests: nbdkit (any plugin and filters) and qemu-nbd,
 * run in the foreground on a Unix socket in a fresh directory. Ready is an
 * event, not a sleep: both write their pid file only once the socket listens
 * (nbdkit: `-P`; qemu-nbd: `--pid-file`, documented to appear after the
 * socket), and the helper waits for that file with `fs.watch`.
 *
 * `stop()` sends SIGTERM and resolves when the process has exited (SIGKILL
 * after 5 s); tests stop what they started.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';

/** A running NBD server. */
export interface RunningNbdServer {
  /** `nbd+unix:///EXPORT?socket=PATH` of its default export. */
  uri: string;
  /** Path of its Unix socket. */
  socket: string;
  /** Its working directory (removed by `stop`). */
  dir: string;
  /** Stops it; resolves when it has exited. Idempotent. */
  stop(): Promise<void>;
}

/** Spawns `cmd args` (which must write `pidFile` once listening) and resolves when it is ready. */
async function startWithPidFile(cmd: string, args: (dir: string, socket: string, pidFile: string) => string[], exportName = ''): Promise<RunningNbdServer> {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'bm-nbdsrv-'));
  const socket = path.join(dir, 'sock');
  const pidFile = path.join(dir, 'pid');
  let child!: ChildProcess;
  let stderr = '';
  const ready = new Promise<void>((resolve, reject) => {
    const watcher = fs.watch(dir, (_event, name) => {
      if (name === 'pid') done();
    });
    const done = (error?: Error): void => {
      watcher.close();
      if (error === undefined) resolve();
      else reject(error);
    };
    child = spawn(cmd, args(dir, socket, pidFile), { stdio: ['ignore', 'ignore', 'pipe'] });
    child.stderr!.setEncoding('utf8').on('data', (s: string) => (stderr += s));
    child.once('error', (err) => done(err));
    child.once('exit', (code, signal) => done(new Error(`${cmd} exited (${code ?? signal}) before listening: ${stderr}`)));
    // the file may have appeared before the watcher saw the directory
    if (fs.existsSync(pidFile)) done();
  });
  const exited = new Promise<void>((resolve) => child.once('close', () => resolve()));
  let stopping: Promise<void> | undefined;
  const stop = (): Promise<void> => {
    stopping ??= (async () => {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGTERM');
        const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
        await exited;
        clearTimeout(timer);
      }
      await fsp.rm(dir, { recursive: true, force: true });
    })();
    return stopping;
  };
  try {
    await ready;
  } catch (error) {
    await stop();
    throw error;
  }
  return { uri: `nbd+unix:///${encodeURIComponent(exportName)}?socket=${socket}`, socket, dir, stop };
}

/**
 * Starts `nbdkit [--filter=…] PLUGIN ARGS` on a Unix socket (`nbdkit -f -U
 * SOCK -P PID`), with `extra` options before the plugin (e.g. `--no-sr`,
 * `--filter=nozero`).
 */
export function startNbdkit(plugin: string, pluginArgs: readonly string[], extra: readonly string[] = []): Promise<RunningNbdServer> {
  return startWithPidFile('nbdkit', (_dir, socket, pidFile) => ['-f', '-U', socket, '-P', pidFile, ...extra, plugin, ...pluginArgs]);
}

/**
 * Starts `qemu-nbd` on `image` (format `format`) on a Unix socket, persistent
 * and shared by any number of clients, with discards passed to the image.
 */
export function startQemuNbd(image: string, format: 'qcow2' | 'raw', extra: readonly string[] = []): Promise<RunningNbdServer> {
  return startWithPidFile('qemu-nbd', (_dir, socket, pidFile) => [
    '--persistent',
    '--shared=0',
    '--discard=unmap',
    '-k',
    socket,
    `--pid-file=${pidFile}`,
    '-f',
    format,
    ...extra,
    image,
  ]);
}
