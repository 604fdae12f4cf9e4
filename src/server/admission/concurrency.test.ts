import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { ManualClock } from '../../testing/manual-clock.js';
import type { SmgError } from '../../protocols/errors.js';
import {
  ConcurrencyLimiter,
  WaitQueue,
  type ConcurrencySettings,
  type ConcurrencySlot,
  type QueuedWait,
} from './concurrency.js';

interface Outcome {
  err?: SmgError;
  slot?: ConcurrencySlot;
  at?: number;
}

function setup(s: Partial<ConcurrencySettings> = {}) {
  const clock = new ManualClock(1_000_000);
  const decisions: boolean[] = [];
  const lim = new ConcurrencyLimiter(
    { maxConcurrent: 2, queueSize: 2, queueTimeoutSecs: 10, ...s },
    { now: clock.now, timers: clock.timers, onDecision: (a) => decisions.push(a) },
  );
  const acquire = (): { out: Outcome; wait: QueuedWait | undefined } => {
    const out: Outcome = {};
    const wait = lim.acquire((err, slot) => {
      expect(out.err ?? out.slot).toBeUndefined(); // done runs once
      out.err = err;
      out.slot = slot;
      out.at = clock.t;
    });
    return { out, wait };
  };
  return { clock, lim, acquire, decisions };
}

describe('ConcurrencyLimiter', () => {
  it('admits up to the cap at once, then queues FIFO and admits in order on release', () => {
    const { lim, acquire, decisions } = setup({ queueSize: 5 });
    const a = acquire();
    const b = acquire();
    expect(a.wait).toBeUndefined();
    expect(a.out.slot).toBeDefined();
    expect(b.out.slot).toBeDefined();
    const c = acquire();
    const d = acquire();
    expect(c.wait).toBeDefined();
    expect(c.out.slot ?? c.out.err).toBeUndefined();
    expect(lim.stats()).toMatchObject({ inflight: 2, queued: 2 });
    a.out.slot?.release();
    expect(c.out.slot).toBeDefined();
    expect(d.out.slot).toBeUndefined();
    b.out.slot?.release();
    expect(d.out.slot).toBeDefined();
    expect(decisions).toEqual([true, true, true, true]);
  });

  it('answers 429 with Retry-After when the queue is full, and at once without a queue', () => {
    const { acquire, decisions } = setup({ queueSize: 1 });
    acquire();
    acquire();
    expect(acquire().wait).toBeDefined();
    const full = acquire();
    expect(full.wait).toBeUndefined();
    expect(full.out.err?.status).toBe(429);
    expect(full.out.err?.code).toBe('rate_limit_exceeded');
    expect(Number(full.out.err?.headers['retry-after'])).toBeGreaterThanOrEqual(1);
    expect(decisions.at(-1)).toBe(false);

    const noQueue = setup({ queueSize: 0, maxConcurrent: 1 });
    noQueue.acquire();
    const r = noQueue.acquire();
    expect(r.wait).toBeUndefined();
    expect(r.out.err?.status).toBe(429);
  });

  it('answers 408 once a waiter has waited queueTimeoutSecs, and the next waiter keeps waiting', () => {
    const { clock, acquire, lim } = setup({ queueTimeoutSecs: 10, queueSize: 5 });
    acquire();
    acquire();
    const first = acquire();
    clock.advance(4000);
    const second = acquire();
    clock.advance(5999);
    expect(first.out.err).toBeUndefined();
    clock.advance(1);
    expect(first.out.err?.status).toBe(408);
    expect(first.out.err?.code).toBe('queue_timeout');
    expect(first.out.err?.headers['retry-after']).toBeDefined();
    expect(second.out.err).toBeUndefined();
    clock.advance(4000);
    expect(second.out.err?.status).toBe(408);
    expect(lim.stats().queued).toBe(0);
    expect(clock.timersPending).toBe(0);
  });

  it('a cancelled waiter leaves the queue, is never called, and frees its place', () => {
    const { acquire, lim, clock } = setup({ queueSize: 1 });
    const a = acquire();
    acquire();
    const q = acquire();
    q.wait?.cancel();
    q.wait?.cancel();
    expect(lim.stats().queued).toBe(0);
    const r = acquire();
    expect(r.wait).toBeDefined();
    a.out.slot?.release();
    expect(q.out.slot ?? q.out.err).toBeUndefined();
    expect(r.out.slot).toBeDefined();
    clock.advance(60_000);
    expect(q.out.err).toBeUndefined();
  });

  it('release is idempotent: a double release frees one slot', () => {
    const { acquire, lim } = setup({ maxConcurrent: 1, queueSize: 5 });
    const a = acquire();
    const b = acquire();
    const c = acquire();
    a.out.slot?.release();
    a.out.slot?.release();
    expect(b.out.slot).toBeDefined();
    expect(c.out.slot).toBeUndefined();
    expect(lim.stats().inflight).toBe(1);
  });

  it('limits starts by the token bucket; released slots do not return tokens', () => {
    const { clock, acquire, lim } = setup({ maxConcurrent: 2, ratePerSec: 2, queueSize: 5 });
    const a = acquire();
    const b = acquire();
    a.out.slot?.release();
    b.out.slot?.release();
    // both slots are free but both tokens are spent: the next start waits for a refill (0.5 s)
    const c = acquire();
    expect(c.wait).toBeDefined();
    expect(lim.stats().inflight).toBe(0);
    clock.advance(499);
    expect(c.out.slot).toBeUndefined();
    clock.advance(1);
    expect(c.out.slot).toBeDefined();
    expect(c.out.at).toBe(1_000_500);
    // the bucket refills to its capacity at most
    c.out.slot?.release();
    clock.advance(10_000);
    expect(lim.stats().tokens).toBe(2);
    acquire();
    acquire();
    const d = acquire();
    expect(d.wait).toBeDefined();
  });

  it('close answers every waiter with the error it is given and stops the timer', () => {
    const { acquire, lim, clock } = setup({ queueSize: 5 });
    acquire();
    acquire();
    const q1 = acquire();
    const q2 = acquire();
    clock.advance(1500);
    lim.close((waited) => ({ status: 408, waited }) as unknown as SmgError);
    expect(q1.out.err).toMatchObject({ status: 408, waited: 1.5 });
    expect(q2.out.err).toMatchObject({ status: 408 });
    expect(clock.timersPending).toBe(0);
  });

  it('never exceeds the cap and never idles a slot while requests wait (random admit/release/cancel/time)', () => {
    type Op =
      | { kind: 'acquire' }
      | { kind: 'release'; i: number }
      | { kind: 'cancel'; i: number }
      | { kind: 'tick'; ms: number };
    const op: fc.Arbitrary<Op> = fc.oneof(
      fc.constant({ kind: 'acquire' as const }),
      fc.record({ kind: fc.constant('release' as const), i: fc.nat(50) }),
      fc.record({ kind: fc.constant('cancel' as const), i: fc.nat(50) }),
      fc.record({ kind: fc.constant('tick' as const), ms: fc.integer({ min: 1, max: 4000 }) }),
    );
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 4 }),
        fc.integer({ min: 0, max: 4 }),
        fc.option(fc.integer({ min: 1, max: 5 }), { nil: undefined }),
        fc.array(op, { maxLength: 80 }),
        (maxConcurrent, queueSize, ratePerSec, ops) => {
          const { clock, lim, acquire } = setup({
            maxConcurrent,
            queueSize,
            queueTimeoutSecs: 5,
            ratePerSec,
          });
          const reqs: ReturnType<typeof acquire>[] = [];
          let inflight = 0;
          let maxSeen = 0;
          const check = () => {
            inflight = reqs.filter((r) => r.out.slot && !(r as { done?: boolean }).done).length;
            maxSeen = Math.max(maxSeen, inflight);
            const s = lim.stats();
            expect(s.inflight).toBe(inflight);
            expect(s.inflight).toBeLessThanOrEqual(maxConcurrent);
            expect(s.queued).toBeLessThanOrEqual(queueSize);
            // work-conserving without a start-rate limit
            if (ratePerSec === undefined && s.queued > 0) expect(s.inflight).toBe(maxConcurrent);
          };
          for (const o of ops) {
            if (o.kind === 'acquire') reqs.push(acquire());
            else if (o.kind === 'release') {
              const r = reqs[o.i % Math.max(1, reqs.length)];
              if (r?.out.slot) {
                r.out.slot.release();
                (r as { done?: boolean }).done = true;
              }
            } else if (o.kind === 'cancel') {
              reqs[o.i % Math.max(1, reqs.length)]?.wait?.cancel();
            } else clock.advance(o.ms);
            check();
          }
          expect(maxSeen).toBeLessThanOrEqual(maxConcurrent);
        },
      ),
      { numRuns: 200 },
    );
  });
});

describe('WaitQueue', () => {
  it('keeps FIFO order through lazy removals and compaction', () => {
    const q = new WaitQueue<{ queued: boolean; n: number }>();
    const items = Array.from({ length: 3000 }, (_, n) => ({ queued: false, n }));
    for (const x of items) q.push(x);
    for (const x of items) if (x.n % 3 === 0) q.remove(x);
    expect(q.size).toBe(2000);
    const out: number[] = [];
    for (let x = q.shift(); x; x = q.shift()) out.push(x.n);
    expect(out).toEqual(items.filter((x) => x.n % 3 !== 0).map((x) => x.n));
    expect(q.size).toBe(0);
    expect(q.peek()).toBeUndefined();
  });
});
