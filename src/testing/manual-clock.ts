/**
 * A clock and timers driven by hand for deterministic tests: time moves only in `advance`, which
 * fires due timers in time order (each sees `now()` at its own due time).
 */
export interface ManualTimers {
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

export class ManualClock {
  private seq = 0;
  private readonly pending = new Map<number, { at: number; fn: () => void }>();
  readonly now = (): number => this.t;
  readonly timers: ManualTimers = {
    setTimeout: (fn, ms) => {
      const id = ++this.seq;
      this.pending.set(id, { at: this.t + ms, fn });
      return id;
    },
    clearTimeout: (h) => {
      this.pending.delete(h as number);
    },
  };

  constructor(public t = 1_000_000) {}

  advance(ms: number): void {
    const end = this.t + ms;
    for (;;) {
      let next: [number, { at: number; fn: () => void }] | undefined;
      for (const e of this.pending) if (e[1].at <= end && (!next || e[1].at < next[1].at)) next = e;
      if (!next) break;
      this.pending.delete(next[0]);
      this.t = Math.max(this.t, next[1].at);
      next[1].fn();
    }
    this.t = end;
  }

  get timersPending(): number {
    return this.pending.size;
  }
}
