/**
 * Legacy admission (SMG `--max-concurrent-requests`, inventory §5.4): a concurrency limit, an
 * optional token bucket on request starts, and a bounded FIFO queue for requests that find neither.
 *
 * SMG runs both through one token bucket that is refilled over time *and* gets each token back when
 * the response ends, so its concurrency drifts above the configured cap under long requests. Here
 * the two are separate: a semaphore that only `release` gives back (in-flight never exceeds the
 * cap), and, only when `--rate-limit-tokens-per-second` is set, a bucket (capacity = the cap, refill
 * = that rate, starts full) that only time refills and every start drains by one.
 *
 * Everything is synchronous except waiting: one timer serves the whole queue (waiters share one
 * timeout and leave in FIFO order, so the head always expires first) and the next bucket token.
 * Also home of the small pieces the priority scheduler shares: timers, the alarm and the queue.
 */
import { errors, type SmgError } from '../../protocols/errors.js';

/** the timer functions admission uses; injected so tests drive time by hand */
export interface Timers {
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

/** real timers that never keep the process alive on their own */
export const realTimers: Timers = {
  setTimeout(fn, ms) {
    const t = setTimeout(fn, ms);
    t.unref();
    return t;
  },
  clearTimeout(handle) {
    clearTimeout(handle as ReturnType<typeof setTimeout>);
  },
};

/** one timer for "the next thing that is due", re-armed only when that moment changes */
export class Alarm {
  private handle: unknown = undefined;
  private at = Infinity;

  constructor(
    private readonly timers: Timers,
    private readonly now: () => number,
    private readonly fire: () => void,
  ) {}

  /** fire at `at` (ms, same clock as `now`); Infinity disarms */
  set(at: number): void {
    if (at === this.at) return;
    this.clear();
    if (at === Infinity) return;
    this.at = at;
    // ≥ 1 ms: a timer that fires a hair early finds nothing due and re-arms, never spins
    this.handle = this.timers.setTimeout(
      () => {
        this.handle = undefined;
        this.at = Infinity;
        this.fire();
      },
      Math.max(1, Math.ceil(at - this.now())),
    );
  }

  clear(): void {
    if (this.handle !== undefined) this.timers.clearTimeout(this.handle);
    this.handle = undefined;
    this.at = Infinity;
  }
}

export interface Queued {
  /** true while in a queue; a cancelled entry is unlinked lazily, this flag is the truth */
  queued: boolean;
}

/** FIFO with O(1) amortised push/shift and lazy removal from the middle */
export class WaitQueue<T extends Queued> {
  private items: (T | undefined)[] = [];
  private head = 0;
  private live = 0;

  get size(): number {
    return this.live;
  }

  push(x: T): void {
    x.queued = true;
    this.items.push(x);
    this.live++;
  }

  peek(): T | undefined {
    while (this.head < this.items.length) {
      const x = this.items[this.head];
      if (x?.queued) return x;
      this.items[this.head++] = undefined;
    }
    this.reset();
    return undefined;
  }

  shift(): T | undefined {
    const x = this.peek();
    if (!x) return undefined;
    x.queued = false;
    this.items[this.head++] = undefined;
    this.live--;
    if (this.live === 0) this.reset();
    else if (this.head > 1024 && this.head * 2 > this.items.length) this.compact();
    return x;
  }

  remove(x: T): boolean {
    if (!x.queued) return false;
    x.queued = false;
    this.live--;
    if (this.live === 0) this.reset();
    // cancellations leave holes: keep them from outgrowing the live entries
    else if (this.items.length - this.head > 64 && this.items.length - this.head > 4 * this.live)
      this.compact();
    return true;
  }

  /** removes and returns every live entry, oldest first */
  drain(): T[] {
    const out: T[] = [];
    for (let i = this.head; i < this.items.length; i++) {
      const x = this.items[i];
      if (x?.queued) {
        x.queued = false;
        out.push(x);
      }
    }
    this.reset();
    return out;
  }

  private compact(): void {
    const kept: T[] = [];
    for (let i = this.head; i < this.items.length; i++) {
      const x = this.items[i];
      if (x?.queued) kept.push(x);
    }
    this.items = kept;
    this.head = 0;
  }

  private reset(): void {
    this.items = [];
    this.head = 0;
    this.live = 0;
  }
}

export interface ConcurrencySettings {
  /** > 0 */
  maxConcurrent: number;
  /** starts per second; unset = no start-rate limit */
  ratePerSec?: number;
  /** 0 = no queue */
  queueSize: number;
  queueTimeoutSecs: number;
}

export interface ConcurrencyDeps {
  now: () => number;
  timers: Timers;
  /** called once per decision: admitted (at once or from the queue) or rejected (429 / 408) */
  onDecision?: (admitted: boolean) => void;
}

/** an admitted request's hold on a slot */
export interface ConcurrencySlot {
  /** idempotent */
  release(): void;
}

export interface QueuedWait {
  /** the client left: dequeue; `done` is not called */
  cancel(): void;
}

export type ConcurrencyDone = (err: SmgError | undefined, slot: ConcurrencySlot | undefined) => void;

class Slot implements ConcurrencySlot {
  private released = false;
  constructor(
    private readonly owner: ConcurrencyLimiter,
    readonly since: number,
  ) {}

  release(): void {
    if (this.released) return;
    this.released = true;
    this.owner.releaseSlot(this);
  }
}

class Waiter implements Queued, QueuedWait {
  queued = false;
  constructor(
    private readonly owner: ConcurrencyLimiter,
    readonly enqueuedAt: number,
    readonly done: ConcurrencyDone,
  ) {}

  cancel(): void {
    this.owner.cancelWaiter(this);
  }
}

/** EWMA weight of a new slot hold time in the expected-wait estimate */
export const HOLD_EWMA_ALPHA = 0.1;

export class ConcurrencyLimiter {
  private inflight = 0;
  private tokens: number;
  private refilledAt: number;
  private readonly queue = new WaitQueue<Waiter>();
  private readonly alarm: Alarm;
  /** mean time a slot is held, for Retry-After (seeded with 1 s) */
  private holdMs = 1000;
  private dispatching = false;
  private redispatch = false;
  private closed = false;

  constructor(
    readonly settings: ConcurrencySettings,
    private readonly deps: ConcurrencyDeps,
  ) {
    if (!(settings.maxConcurrent > 0)) throw new Error('maxConcurrent must be > 0');
    this.tokens = settings.maxConcurrent;
    this.refilledAt = deps.now();
    this.alarm = new Alarm(deps.timers, deps.now, () => this.onAlarm());
  }

  /**
   * Takes a slot: `done` runs synchronously when the decision is immediate (admitted, or 429), and
   * the returned handle exists only while the request waits in the queue.
   */
  acquire(done: ConcurrencyDone): QueuedWait | undefined {
    // settle the queue first (expired heads, a token that arrived before the timer): FIFO stays FIFO
    if (this.queue.size > 0) this.dispatch();
    const now = this.deps.now();
    if (this.queue.size === 0 && this.canStart(now)) {
      done(undefined, this.start(now));
      return undefined;
    }
    if (this.closed || this.queue.size >= this.settings.queueSize) {
      this.deps.onDecision?.(false);
      done(errors.rateLimited(this.expectedWaitSecs(now)), undefined);
      return undefined;
    }
    const w = new Waiter(this, now, done);
    this.queue.push(w);
    this.arm(now);
    return w;
  }

  /** JSON-able state for stats and tests */
  stats(): { inflight: number; queued: number; tokens?: number; maxConcurrent: number; queueSize: number } {
    if (this.settings.ratePerSec !== undefined) this.refill(this.deps.now());
    return {
      inflight: this.inflight,
      queued: this.queue.size,
      ...(this.settings.ratePerSec !== undefined && { tokens: Math.floor(this.tokens * 1000) / 1000 }),
      maxConcurrent: this.settings.maxConcurrent,
      queueSize: this.settings.queueSize,
    };
  }

  /** stops the timer and answers every waiter with `err(waitedSecs)`; later acquires queue nothing */
  close(err: (waitedSecs: number) => SmgError): void {
    this.closed = true;
    this.alarm.clear();
    const now = this.deps.now();
    for (const w of this.queue.drain()) w.done(err((now - w.enqueuedAt) / 1000), undefined);
  }

  /** @internal */
  releaseSlot(slot: Slot): void {
    this.inflight--;
    const now = this.deps.now();
    this.holdMs += HOLD_EWMA_ALPHA * (Math.max(0, now - slot.since) - this.holdMs);
    if (this.queue.size > 0) this.dispatch();
  }

  /** @internal */
  cancelWaiter(w: Waiter): void {
    if (!this.queue.remove(w)) return;
    this.arm(this.deps.now());
  }

  private canStart(now: number): boolean {
    if (this.inflight >= this.settings.maxConcurrent) return false;
    if (this.settings.ratePerSec === undefined) return true;
    this.refill(now);
    return this.tokens >= 1;
  }

  private start(now: number): Slot {
    this.inflight++;
    if (this.settings.ratePerSec !== undefined) this.tokens -= 1;
    this.deps.onDecision?.(true);
    return new Slot(this, now);
  }

  private refill(now: number): void {
    const rate = this.settings.ratePerSec ?? 0;
    if (now > this.refilledAt) {
      this.tokens = Math.min(
        this.settings.maxConcurrent,
        this.tokens + ((now - this.refilledAt) * rate) / 1000,
      );
    }
    this.refilledAt = now;
  }

  /** grants queue heads while slots (and tokens) allow; re-entrant calls fold into the running loop */
  private dispatch(): void {
    if (this.dispatching) {
      this.redispatch = true;
      return;
    }
    this.dispatching = true;
    try {
      do {
        this.redispatch = false;
        for (;;) {
          const now = this.deps.now();
          this.expire(now);
          if (this.queue.size === 0 || !this.canStart(now)) break;
          const w = this.queue.shift() as Waiter;
          w.done(undefined, this.start(now));
        }
      } while (this.redispatch);
    } finally {
      this.dispatching = false;
    }
    this.arm(this.deps.now());
  }

  private onAlarm(): void {
    this.dispatch();
  }

  /** answers waiters past the queue timeout with 408 (they sit at the head: FIFO, one timeout) */
  private expire(now: number): void {
    const timeoutMs = this.settings.queueTimeoutSecs * 1000;
    for (let head = this.queue.peek(); head && now - head.enqueuedAt >= timeoutMs; head = this.queue.peek()) {
      this.queue.shift();
      this.deps.onDecision?.(false);
      head.done(errors.queueTimeout((now - head.enqueuedAt) / 1000, this.expectedWaitSecs(now)), undefined);
    }
  }

  /** the next moment something can change without a release: the head's timeout or the next token */
  private arm(now: number): void {
    const head = this.queue.peek();
    if (!head || this.closed) {
      this.alarm.set(Infinity);
      return;
    }
    let at = head.enqueuedAt + this.settings.queueTimeoutSecs * 1000;
    const rate = this.settings.ratePerSec;
    if (rate !== undefined && rate > 0 && this.inflight < this.settings.maxConcurrent) {
      this.refill(now);
      if (this.tokens < 1) at = Math.min(at, now + ((1 - this.tokens) * 1000) / rate);
    }
    this.alarm.set(at);
  }

  /** a rough wait for a new arrival: the queue ahead of it drained at the slot turnover and the start rate */
  private expectedWaitSecs(now: number): number {
    const ahead = this.queue.size + 1;
    let secs = 0;
    if (this.inflight >= this.settings.maxConcurrent) {
      secs = ((ahead / this.settings.maxConcurrent) * this.holdMs) / 1000;
    }
    const rate = this.settings.ratePerSec;
    if (rate !== undefined) {
      this.refill(now);
      const short = ahead - this.tokens;
      if (short > 0) secs = Math.max(secs, rate > 0 ? short / rate : this.settings.queueTimeoutSecs);
    }
    return Math.min(Math.max(secs, 1), 3600);
  }
}
