/** `once` for eventemitter3 emitters (node:events' `once` is typed for Node emitters only). */
export function onceEvent<T extends unknown[] = unknown[]>(
  emitter: { once(event: never, listener: (...args: never[]) => void): unknown },
  event: string,
): Promise<T> {
  return new Promise<T>((resolve) => {
    (emitter.once as unknown as (e: string, l: (...args: T) => void) => unknown).call(emitter, event, (...args: T) => resolve(args));
  });
}
