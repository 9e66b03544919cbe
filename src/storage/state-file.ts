/**
 * Small state files replaced atomically: written to a temporary file, synced,
 * renamed over the old one, and the directory synced — a crash leaves either
 * the old or the new content, never a mix. The content is one JSON line plus
 * a CRC-32 line, so a damaged file is detected instead of misread.
 *
 * @module
 */
import { randomBytes } from 'node:crypto';
import { open, readFile, rename, unlink } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { crc32 } from 'node:zlib';
import createDebug from 'debug';
import { BlockMirrorError, toBlockMirrorError } from '../errors.js';

const log = createDebug('blockmirror:storage');

/** Makes a directory entry change (create, rename, unlink) durable. */
export async function syncDirectory(dir: string): Promise<void> {
  const handle = await open(dir, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/**
 * Makes the creation of `path` durable: syncs its directory. Best effort:
 * some file systems refuse a directory fsync (logged, not thrown).
 */
export async function syncParent(path: string): Promise<void> {
  try {
    await syncDirectory(dirname(path));
  } catch (error) {
    log('directory fsync of %s not possible: %s', path, (error as Error).message);
  }
}

/**
 * Replaces `path` with `body` (JSON) atomically and durably.
 *
 * @throws {BlockMirrorError} `BM_ERR_IO` / `BM_ERR_NO_SPACE` on system errors.
 */
export async function writeStateFile(path: string, body: unknown): Promise<void> {
  const json = JSON.stringify(body);
  const text = `${json}\n${crc32(Buffer.from(json, 'utf8')).toString(16).padStart(8, '0')}\n`;
  const tmp = join(dirname(path), `.${basename(path)}.${randomBytes(4).toString('hex')}.tmp`);
  try {
    const handle = await open(tmp, 'w', 0o644);
    try {
      await handle.writeFile(text, 'utf8');
      await handle.sync();
    } finally {
      await handle.close();
    }
    await rename(tmp, path);
    await syncDirectory(dirname(path));
  } catch (error) {
    await unlink(tmp).catch(() => undefined);
    throw toBlockMirrorError(error);
  }
}

/**
 * Reads a file written by {@link writeStateFile}; `undefined` when it does not exist.
 *
 * @throws {BlockMirrorError} `BM_ERR_JOURNAL_CORRUPT` when the file is damaged
 *   (CRC mismatch, not JSON); `BM_ERR_IO` on system errors.
 */
export async function readStateFile(path: string): Promise<unknown> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw toBlockMirrorError(error);
  }
  const lines = text.split('\n');
  const json = lines[0] ?? '';
  const crc = lines[1] ?? '';
  if (crc32(Buffer.from(json, 'utf8')).toString(16).padStart(8, '0') !== crc) {
    throw new BlockMirrorError('BM_ERR_JOURNAL_CORRUPT', `state file ${path} is damaged (checksum mismatch)`, { details: { path } });
  }
  try {
    return JSON.parse(json) as unknown;
  } catch (error) {
    throw new BlockMirrorError('BM_ERR_JOURNAL_CORRUPT', `state file ${path} is not valid JSON`, { cause: error, details: { path } });
  }
}

/** Removes a file; a missing file is fine. */
export async function removeFile(path: string): Promise<void> {
  try {
    await unlink(path);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw toBlockMirrorError(error);
  }
}
