/**
 * Helpers of the cycle tests: temporary directories, file-backed layered
 * volumes, deterministic data, waiting for events.
 */
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FileBlockDevice } from '../../src/device/file-device.js';
import { LayeredVolume, type LayeredVolumeOptions } from '../../src/cycle/layered-volume.js';
import type { CycleSource } from '../../src/cycle/cycle-runner.js';

/** A fresh temporary directory, removed by the returned cleanup. */
export function tempDir(prefix: string): { dir: string; cleanup: () => void } {
  const dir = mkdtempSync(join(tmpdir(), `bm-cycle-${prefix}-`));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

/** A sub-directory of `dir` (created). */
export function subDir(dir: string, name: string): string {
  const d = join(dir, name);
  mkdirSync(d, { recursive: true });
  return d;
}

/** Opens (creating if needed) `<dir>/<name>` as the base of a layered volume. */
export async function openVolume(dir: string, name: string, size: number, options: LayeredVolumeOptions & { blockSize?: number } = {}): Promise<LayeredVolume> {
  const base = await FileBlockDevice.open(join(dir, name), { size, blockSize: options.blockSize ?? 512 });
  try {
    return await LayeredVolume.open(base, options);
  } catch (error) {
    await base.close();
    throw error;
  }
}

/** Deterministic bytes from a seed (xorshift). */
export function pattern(length: number, seed: number): Buffer {
  const b = Buffer.allocUnsafe(length);
  let x = (seed * 2654435761) >>> 0 || 1;
  for (let i = 0; i < length; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    b[i] = x & 0xff;
  }
  return b;
}

/** Waits until every target link of a cycle source is up. */
export async function linksUp(source: CycleSource): Promise<void> {
  while (source.status().targets.some((t) => t.link !== 'up')) await waitFor(source, 'target-link', (info: { state: string }) => info.state === 'up');
}

/** Resolves with the arguments of the first `event` for which `filter` is true (rejects after `timeoutMs`). */
export function waitFor<T extends unknown[]>(
  emitter: { on(event: never, fn: never): unknown; off(event: never, fn: never): unknown },
  event: string,
  filter: (...args: T) => boolean = () => true,
  timeoutMs = 20000,
): Promise<T> {
  const on = emitter.on as unknown as (e: string, fn: (...args: T) => void) => unknown;
  const off = emitter.off as unknown as (e: string, fn: (...args: T) => void) => unknown;
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => {
      off.call(emitter, event, listener);
      reject(new Error(`timed out waiting for ${event}`));
    }, timeoutMs);
    const listener = (...args: T): void => {
      if (!filter(...args)) return;
      clearTimeout(timer);
      off.call(emitter, event, listener);
      resolve(args);
    };
    on.call(emitter, event, listener);
  });
}
