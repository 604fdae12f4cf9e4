/**
 * When each worker's next health probe runs, for a whole fleet at once: one timer (armed for the
 * earliest due probe) instead of one per worker, at most `maxInFlight` probes in flight (SMG: 128),
 * the rest waiting in due order, and at most one probe of a worker at a time. With 2,000 workers
 * the gateway thus never opens 2,000 sockets in one tick, and a fleet of dead workers costs what
 * its probe rate costs, not a timer storm. With `batchMs`, a wake-up also starts the probes due
 * shortly after: on this VM a probe woken on its own cost about twice the CPU of one sharing the
 * wake-up (≈ 2 ms against 1 ms), so 2,000 workers cost half as much.
 *
 * The delays come from the caller; `probeDelay` (below) is the policy the WorkerManager uses:
 * interval probes pinned to a per-worker phase so a fleet's probes spread evenly over the
 * interval, and exponential backoff (capped at the interval) for workers that never answered.
 *
 * Owns: the due times, the in-flight count, the timer. Never: I/O or health decisions (the `run`
 * callback does both), and never runs a worker's probe twice at once.
 */

export interface ProbeClock {
  now(): number;
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

const systemClock: ProbeClock = {
  now: () => Date.now(),
  setTimeout: (fn, ms) => {
    const t = setTimeout(fn, ms);
    // probes never keep the process alive on their own
    t.unref();
    return t;
  },
  clearTimeout: (h) => clearTimeout(h as NodeJS.Timeout),
};

export interface ProbeSchedulerOptions {
  /**
   * one probe of worker `id`, due at `due` (it may start before, by up to `batchMs`, or later when
   * slots are full); it counts as in flight until the promise settles (a rejection is ignored)
   */
  run: (id: string, due: number) => Promise<void>;
  /** probes in flight at once (SMG: 128) */
  maxInFlight: number;
  /**
   * a timer that fires also starts the probes due within this many ms after it (default 0): a
   * fleet's probes spread over the interval then share wake-ups, which cost as much as the probes.
   * A caller that schedules the next probe from the time this one ran should count from `due`
   * instead, or early starts would shorten its intervals.
   */
  batchMs?: number;
  clock?: ProbeClock;
}

interface HeapEntry {
  due: number;
  /** schedule order, so equal due times run first-come first-served */
  seq: number;
  id: string;
}

export class ProbeScheduler {
  private readonly clock: ProbeClock;
  /** id → the seq of its live heap entry (older entries of the id are stale and skipped) */
  private readonly live = new Map<string, number>();
  private heap: HeapEntry[] = [];
  private seq = 0;
  /** due probes not started yet (waiting for a slot, or for the worker's running probe): id → due */
  private readonly queued = new Map<string, number>();
  /** the order they came due in (an id no longer queued is skipped) */
  private readonly ready: string[] = [];
  private readyHead = 0;
  private readonly running = new Set<string>();
  private timer: unknown;
  private timerDue = Infinity;
  private closed = false;

  constructor(private readonly o: ProbeSchedulerOptions) {
    if (!(o.maxInFlight >= 1)) throw new RangeError('maxInFlight must be at least 1');
    this.clock = o.clock ?? systemClock;
  }

  /** (re)sets the next probe of `id` to `delayMs` from now, replacing any earlier schedule */
  schedule(id: string, delayMs: number): void {
    if (this.closed) return;
    this.queued.delete(id);
    const due = this.clock.now() + Math.max(0, delayMs);
    const seq = ++this.seq;
    this.live.set(id, seq);
    this.push({ due, seq, id });
    this.compactIfStale();
    this.arm();
  }

  /** no further probes of `id` (one in flight finishes, and is not followed by another) */
  cancel(id: string): void {
    this.live.delete(id);
    this.queued.delete(id);
  }

  /** a probe of `id` is scheduled (not due yet, or due and not started) */
  isScheduled(id: string): boolean {
    return this.live.has(id) || this.queued.has(id);
  }

  isRunning(id: string): boolean {
    return this.running.has(id);
  }

  inFlight(): number {
    return this.running.size;
  }

  /** probes due and not started (no free slot, or the worker's previous probe still runs) */
  waiting(): number {
    return this.queued.size;
  }

  close(): void {
    this.closed = true;
    if (this.timer !== undefined) this.clock.clearTimeout(this.timer);
    this.timer = undefined;
    this.live.clear();
    this.queued.clear();
    this.heap = [];
    this.ready.length = 0;
    this.readyHead = 0;
  }

  private arm(): void {
    const top = this.peekLive();
    const due = top?.due ?? Infinity;
    if (due >= this.timerDue) return;
    if (this.timer !== undefined) this.clock.clearTimeout(this.timer);
    this.timer = undefined;
    this.timerDue = due;
    if (due === Infinity) return;
    this.timer = this.clock.setTimeout(() => this.onTimer(), Math.max(0, due - this.clock.now()));
  }

  private onTimer(): void {
    this.timer = undefined;
    this.timerDue = Infinity;
    if (this.closed) return;
    const until = this.clock.now() + (this.o.batchMs ?? 0);
    for (let top = this.peekLive(); top && top.due <= until; top = this.peekLive()) {
      this.pop();
      this.live.delete(top.id);
      this.queued.set(top.id, top.due);
      this.ready.push(top.id);
    }
    this.pump();
    this.arm();
  }

  /** starts waiting probes while slots are free */
  private pump(): void {
    while (this.running.size < this.o.maxInFlight && this.readyHead < this.ready.length) {
      const id = this.ready[this.readyHead++];
      const due = this.queued.get(id);
      // cancelled or rescheduled meanwhile; or its previous probe still runs (it is queued again
      // when that one ends)
      if (due === undefined || this.running.has(id)) continue;
      this.queued.delete(id);
      this.start(id, due);
    }
    if (this.readyHead === this.ready.length) {
      this.ready.length = 0;
      this.readyHead = 0;
    } else if (this.readyHead > 1024 && this.readyHead * 2 > this.ready.length) {
      this.ready.splice(0, this.readyHead);
      this.readyHead = 0;
    }
  }

  private start(id: string, due: number): void {
    this.running.add(id);
    let p: Promise<void>;
    try {
      p = this.o.run(id, due);
    } catch {
      p = Promise.resolve();
    }
    p.catch(() => undefined).finally(() => {
      this.running.delete(id);
      if (this.closed) return;
      if (this.queued.has(id)) this.ready.push(id);
      this.pump();
    });
  }

  // ---- a binary min-heap by (due, seq) with lazily dropped stale entries ----

  private peekLive(): HeapEntry | undefined {
    while (this.heap.length > 0) {
      const top = this.heap[0];
      if (this.live.get(top.id) === top.seq) return top;
      this.pop();
    }
    return undefined;
  }

  /** rescheduling leaves stale entries behind: rebuild when they outnumber the live ones */
  private compactIfStale(): void {
    if (this.heap.length < 1024 || this.heap.length < 2 * this.live.size) return;
    const keep = this.heap.filter((e) => this.live.get(e.id) === e.seq);
    this.heap = [];
    for (const e of keep) this.push(e);
  }

  private push(e: HeapEntry): void {
    const h = this.heap;
    h.push(e);
    let i = h.length - 1;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (!before(h[i], h[parent])) break;
      [h[i], h[parent]] = [h[parent], h[i]];
      i = parent;
    }
  }

  private pop(): void {
    const h = this.heap;
    const last = h.pop();
    if (last === undefined || h.length === 0) return;
    h[0] = last;
    let i = 0;
    for (;;) {
      const l = 2 * i + 1;
      const r = l + 1;
      let m = i;
      if (l < h.length && before(h[l], h[m])) m = l;
      if (r < h.length && before(h[r], h[m])) m = r;
      if (m === i) break;
      [h[i], h[m]] = [h[m], h[i]];
      i = m;
    }
  }
}

function before(a: HeapEntry, b: HeapEntry): boolean {
  return a.due < b.due || (a.due === b.due && a.seq < b.seq);
}

/** a worker's phase in [0, 1): where in each interval its probes fall (FNV-1a of the key) */
export function probePhase(key: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < key.length; i++) h = Math.imul(h ^ key.charCodeAt(i), 0x01000193);
  return (h >>> 0) / 2 ** 32;
}

/** first probe of a worker that never answered comes this long after the previous one */
export const PENDING_PROBE_MS = 1000;

/**
 * The delay before a worker's next probe.
 *  - `pendingFailures` > 0 (a worker that has never answered, this many failures in a row):
 *    exponential backoff from PENDING_PROBE_MS, doubling per failure, ±25 % by phase so a fleet
 *    registered at once does not retry in lockstep; once it reaches the interval, the interval
 *    cadence below.
 *  - a pending worker without a failure yet: PENDING_PROBE_MS.
 *  - otherwise the interval, pinned to the worker's phase: the next probe falls at the first
 *    instant ≥ now + interval/2 whose offset within the interval (on the wall clock) equals
 *    phase × interval. Consecutive probes of a worker are thus exactly one interval apart, and the
 *    probes of a fleet are spread evenly over each interval whatever their registration times.
 */
export function probeDelay(opts: {
  now: number;
  intervalMs: number;
  phase: number;
  pending: boolean;
  pendingFailures: number;
}): number {
  const { now, intervalMs, phase } = opts;
  if (opts.pending) {
    if (opts.pendingFailures === 0) return Math.min(PENDING_PROBE_MS, intervalMs);
    const backoff = PENDING_PROBE_MS * 2 ** Math.min(30, opts.pendingFailures - 1) * (0.75 + 0.5 * phase);
    if (backoff < intervalMs) return Math.round(backoff);
  }
  const offset = phase * intervalMs;
  const earliest = now + intervalMs / 2;
  const k = Math.ceil((earliest - offset) / intervalMs);
  return Math.max(0, Math.round(k * intervalMs + offset - now));
}
