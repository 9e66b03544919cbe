/**
 * Progress of the long operations a server command runs in the background
 * (resync, initial sync, verify, large cycle transfers): one
 * {@link createProgress} display per operation, on stderr.
 *
 * @module
 */
import { systemClock, type Clock } from '../clock.js';
import { createProgress, type Progress, type ProgressStream } from './progress.js';

/** The running displays of a command, by label (e.g. `resync vol0`). */
export class OperationProgress {
  readonly #stream: ProgressStream;
  readonly #clock: Clock;
  readonly #displays = new Map<string, Progress>();

  constructor(stream: ProgressStream, clock: Clock = systemClock) {
    this.#stream = stream;
    this.#clock = clock;
  }

  /** Shows `done` of `total` for `label`, starting its display on the first report. */
  report(label: string, done: number, total: number): void {
    let display = this.#displays.get(label);
    if (display === undefined) {
      display = createProgress({ label, total, stream: this.#stream, clock: this.#clock });
      this.#displays.set(label, display);
    }
    display.setTotal(total);
    display.update(done);
  }

  /** Ends the display of `label` (at 100 %, or where it stood when `aborted`). */
  finish(label: string, aborted = false): void {
    const display = this.#displays.get(label);
    if (display === undefined) return;
    this.#displays.delete(label);
    display.finish({ aborted });
  }

  /** Ends every display where it stands (shutdown). */
  close(): void {
    for (const label of [...this.#displays.keys()]) this.finish(label, true);
  }
}
