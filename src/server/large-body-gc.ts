/**
 * Giving the memory of large request bodies back soon after their requests end.
 *
 * A body is kept as the socket's chunks (external memory) for the life of its request, so by the
 * time it ends its chunks have been promoted to V8's old generation: only a full garbage
 * collection frees them, and V8 starts one only once about 64 MiB more external memory has been
 * allocated since the last (its fixed soft limit), or when its own heap grows. With a few large
 * uploads at a time that left up to that much freed-but-uncollected body memory on top of the
 * bodies in flight, so the process's RSS peaked well above what the requests actually held.
 *
 * After bodies of at least {@link LARGE_BODY_RECLAIM_BYTES} in all have been released, this asks V8
 * for a full collection, run concurrently (`execution: 'async'`: incremental marking, the main
 * thread pauses only to finish), at most once every {@link MIN_INTERVAL_MS}. Small bodies never
 * trigger it: their memory dies young. `gc` comes from `--expose-gc` set at run time, as Node's
 * documentation shows for `v8.setFlagsFromString`; without it (a runtime that refuses the flag)
 * nothing happens and V8's own schedule applies.
 */
import v8 from 'node:v8';
import vm from 'node:vm';
import { LARGE_BODY_BYTES } from './body-reader.js';

export { LARGE_BODY_BYTES };

/** released body bytes that make a collection worth its cost */
export const LARGE_BODY_RECLAIM_BYTES = 16 * 1024 * 1024;
const MIN_INTERVAL_MS = 250;

type GcFunction = (options?: { type?: 'major' | 'minor'; execution?: 'sync' | 'async' }) => unknown;

let gcFunction: GcFunction | null | undefined;

function collector(): GcFunction | null {
  if (gcFunction === undefined) {
    try {
      v8.setFlagsFromString('--expose-gc');
      const fn: unknown = vm.runInNewContext('gc');
      gcFunction = typeof fn === 'function' ? (fn as GcFunction) : null;
    } catch {
      gcFunction = null;
    }
  }
  return gcFunction;
}

export class LargeBodyReclaimer {
  private released = 0;
  private lastRun = 0;
  /** collections asked for (tests, metrics) */
  runs = 0;

  constructor(
    private readonly thresholdBytes = LARGE_BODY_RECLAIM_BYTES,
    private readonly now: () => number = () => performance.now(),
  ) {}

  /** a request's body of `bytes` is no longer held */
  bodyReleased(bytes: number): void {
    if (bytes < LARGE_BODY_BYTES) return;
    this.released += bytes;
    if (this.released < this.thresholdBytes) return;
    const t = this.now();
    if (t - this.lastRun < MIN_INTERVAL_MS) return;
    const gc = collector();
    if (!gc) return;
    this.released = 0;
    this.lastRun = t;
    this.runs++;
    gc({ type: 'major', execution: 'async' });
  }
}
