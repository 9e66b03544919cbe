/**
 * The frame every simulation family runs its schedule in: the virtual clock
 * installed as the global one, unhandled rejections and a throwing schedule
 * reported as `unhandled-rejection` violations, and the teardown always run.
 *
 * @module
 */
import type { VirtualTime } from './virtual-time.js';

/** Runs `schedule` in the frame above; `violate(message)` records an `unhandled-rejection`. */
export async function runSchedule(vt: VirtualTime, violate: (message: string) => void, schedule: () => Promise<void>, teardown: () => Promise<void>): Promise<void> {
  const restore = vt.installGlobals();
  const onUnhandled = (reason: unknown): void => violate(reason instanceof Error ? `${reason.name}: ${reason.message}` : String(reason));
  process.on('unhandledRejection', onUnhandled);
  try {
    await schedule();
  } catch (error) {
    violate(`simulator: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}`);
  } finally {
    await teardown();
    process.off('unhandledRejection', onUnhandled);
    restore();
  }
}
