/**
 * Hybrid logical clock. Every event carries one; together with the node id it totally orders
 * writes across peers, even when wall clocks disagree a little. The clock never goes backwards:
 * it is bumped past every remote timestamp it observes.
 *
 * Owns: timestamp creation and comparison. Never: I/O.
 */

export interface Hlc {
  /** wall-clock milliseconds (the max seen so far) */
  readonly wall: number;
  /** logical counter inside one millisecond */
  readonly counter: number;
  /** node id, breaks ties so that two nodes never produce equal timestamps */
  readonly node: string;
}

/** Counters above this wrap into the next millisecond, so `packHlc` stays a safe integer. */
const MAX_COUNTER = 1023;

export function compareHlc(a: Hlc, b: Hlc): number {
  if (a.wall !== b.wall) return a.wall < b.wall ? -1 : 1;
  if (a.counter !== b.counter) return a.counter < b.counter ? -1 : 1;
  if (a.node === b.node) return 0;
  return a.node < b.node ? -1 : 1;
}

/** A single number that orders like (wall, counter); node ties collapse. Used where only max() matters. */
export function packHlc(h: Hlc): number {
  return h.wall * (MAX_COUNTER + 1) + h.counter;
}

/** an Hlc that packs to `packed` (the node is not in the packed form: the caller names it) */
export function unpackHlc(packed: number, node: string): Hlc {
  return { wall: Math.floor(packed / (MAX_COUNTER + 1)), counter: packed % (MAX_COUNTER + 1), node };
}

export class HlcClock {
  private wall = 0;
  private counter = 0;

  constructor(
    readonly node: string,
    private readonly physical: () => number = Date.now,
    /** restores the high-water mark of a restarted node so its clock never repeats a timestamp */
    highWater?: Hlc,
  ) {
    if (highWater) {
      this.wall = highWater.wall;
      this.counter = highWater.counter;
    }
  }

  /** a fresh timestamp for a local event */
  now(): Hlc {
    const pt = this.physical();
    if (pt > this.wall) {
      this.wall = pt;
      this.counter = 0;
    } else if (this.counter >= MAX_COUNTER) {
      this.wall += 1;
      this.counter = 0;
    } else {
      this.counter += 1;
    }
    return { wall: this.wall, counter: this.counter, node: this.node };
  }

  /** moves the clock past a remote timestamp (call before applying a remote event) */
  observe(remote: Hlc): void {
    if (remote.wall > this.wall || (remote.wall === this.wall && remote.counter > this.counter)) {
      this.wall = remote.wall;
      this.counter = Math.min(remote.counter, MAX_COUNTER);
    }
  }

  highWater(): Hlc {
    return { wall: this.wall, counter: this.counter, node: this.node };
  }
}
