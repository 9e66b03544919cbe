/** `once` for eventemitter3 emitters (node:events' `once` is typed for Node emitters only). */
export function onceEvent<T extends unknown[] = unknown[]>(
  emitter: { once(event: never, listener: (...args: never[]) => void): unknown },
  event: string,
): Promise<T> {
  return new Promise<T>((resolve) => {
    (emitter.once as unknown as (e: string, l: (...args: T) => void) => unknown).call(emitter, event, (...args: T) => resolve(args));
  });
}

/** Something with a link state and a `link` event (a primary). */
export interface LinkEmitter<S extends string> {
  link: S;
  on(e: 'link', l: (s: S) => void): unknown;
  off(e: 'link', l: (s: S) => void): unknown;
}

/** Resolves once `primary.link` is `state` (at once when it is already). */
export async function linkReaches<S extends string>(primary: LinkEmitter<S>, state: S): Promise<void> {
  if (primary.link === state) return;
  await new Promise<void>((resolve) => {
    const l = (s: S): void => {
      if (s !== state) return;
      primary.off('link', l);
      resolve();
    };
    primary.on('link', l);
  });
}
