/**
 * A full garbage collection from a test or the fuzz loop, without starting
 * node with `--expose-gc` (the flag is set at run time), so that heap and
 * array-buffer figures measure what is still referenced.
 */
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';

setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;

/**
 * Runs a full garbage collection after a turn of the event loop (so that
 * `WeakRef`s kept alive by the current job can clear), then a second one:
 * V8 frees array-buffer contents on a background thread, and the next
 * collection first waits for that, so `process.memoryUsage()` is exact.
 */
export async function collectGarbage(): Promise<void> {
  await new Promise<void>((resolve) => setImmediate(resolve));
  gc();
  gc();
}

/** Bytes the heap and the array buffers (Buffer contents, outside the heap) hold after a full garbage collection. */
export async function retainedBytes(): Promise<number> {
  await collectGarbage();
  const m = process.memoryUsage();
  return m.heapUsed + m.arrayBuffers;
}
