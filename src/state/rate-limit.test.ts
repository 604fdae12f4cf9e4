import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import type { RateLimitSlotsEvent } from './events.js';
import { RateLimitUsage } from './rate-limit.js';

const W = 60_000;
/** the start of a window, so offsets below read as "seconds into the window" */
const T0 = 28_333 * W;

function usage(node = 'n1', now = () => T0) {
  return new RateLimitUsage(node, { windowMs: W, now });
}

describe('RateLimitUsage estimate', () => {
  it('weights the previous window by the part of it still inside the look-back', () => {
    const u = usage();
    u.add('k', 60, 6000, T0 + 30_000);
    expect(u.estimate('k', T0 + 59_999)).toEqual({ requests: 60, tokens: 6000 });
    // next window: 60 × (1 − 0) at its start, 60 × 0.75 a quarter in, 0 a whole window later
    expect(u.estimate('k', T0 + W).requests).toBeCloseTo(60);
    expect(u.estimate('k', T0 + W + 15_000)).toEqual({ requests: 45, tokens: 4500 });
    u.add('k', 10, 0, T0 + W + 15_000);
    expect(u.estimate('k', T0 + W + 30_000).requests).toBeCloseTo(10 + 30);
    expect(u.estimate('k', T0 + 2 * W).requests).toBeCloseTo(10);
    expect(u.estimate('k', T0 + 3 * W).requests).toBe(0);
  });

  it('adds this node’s pending reservations until they are given back', () => {
    const u = usage();
    u.reserve('k', 1, 500);
    u.reserve('k', 1, 300);
    expect(u.estimate('k', T0)).toEqual({ requests: 2, tokens: 800 });
    u.unreserve('k', 1, 500);
    expect(u.estimate('k', T0)).toEqual({ requests: 1, tokens: 300 });
    // pending is local: never in the replicated state or the dirty slots
    expect(u.exportState(T0)).toEqual([]);
    expect(u.takeDirty(T0)).toEqual([]);
  });

  it('waitMs is the first moment the estimate leaves room (property)', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: 100 }),
        fc.integer({ min: 0, max: 100 }),
        fc.integer({ min: 0, max: 50 }),
        fc.integer({ min: 0, max: W - 1 }),
        fc.integer({ min: 1, max: 120 }),
        fc.integer({ min: 1, max: 5 }),
        (prev, cur, pending, into, limit, need) => {
          const u = usage();
          u.add('k', prev, 0, T0 - 1);
          u.add('k', cur, 0, T0);
          u.reserve('k', pending, 0);
          const now = T0 + into;
          const wait = u.waitMs('k', 'requests', limit, need, now);
          if (need > limit) {
            expect(wait).toBe(Infinity);
            return;
          }
          // the wait assumes pending usage settles into the current window: check against that
          const settled = usage();
          settled.add('k', prev, 0, T0 - 1);
          settled.add('k', cur + pending, 0, T0);
          expect(settled.waitMs('k', 'requests', limit, need, now)).toBeCloseTo(wait, 6);
          const fits = (t: number) => settled.estimate('k', t).requests + need <= limit + 1e-6;
          if (wait === 0) {
            expect(fits(now)).toBe(true);
            return;
          }
          expect(fits(now)).toBe(false);
          // (earlier moment first: the counters prune windows as time moves on)
          if (wait > 2) expect(fits(now + Math.floor(wait) - 2)).toBe(false);
          expect(fits(now + Math.ceil(wait))).toBe(true);
        },
      ),
      { numRuns: 500 },
    );
  });
});

describe('RateLimitUsage as a G-counter', () => {
  it('two nodes exchanging their dirty slots see the sum of both', () => {
    const a = usage('a');
    const b = usage('b');
    a.add('k', 3, 300, T0);
    b.add('k', 2, 20, T0);
    b.add('k', 1, 0, T0 + 1);
    for (const ev of a.takeDirty(T0)) b.apply(ev);
    for (const ev of b.takeDirty(T0)) a.apply(ev);
    expect(a.estimate('k', T0)).toEqual({ requests: 6, tokens: 320 });
    expect(b.estimate('k', T0)).toEqual({ requests: 6, tokens: 320 });
    expect(a.exportState(T0)).toEqual(b.exportState(T0));
  });

  it('takeDirty returns each changed own slot once, with its current total', () => {
    const u = usage('a');
    u.add('k', 1, 10, T0);
    u.add('k', 1, 10, T0 + 5);
    u.add('j', 0, 7, T0);
    u.add('z', 0, 0, T0); // nothing to add: not dirty
    const first = u.takeDirty(T0);
    expect(first).toEqual<RateLimitSlotsEvent[]>([
      {
        kind: 'ratelimit.slots',
        origin: 'a',
        key: 'k',
        window: T0 / W,
        windowMs: W,
        requests: 2,
        tokens: 20,
      },
      { kind: 'ratelimit.slots', origin: 'a', key: 'j', window: T0 / W, windowMs: W, requests: 0, tokens: 7 },
    ]);
    expect(u.takeDirty(T0)).toEqual([]);
    u.add('k', 1, 0, T0 + 10);
    expect(u.takeDirty(T0)).toMatchObject([{ key: 'k', requests: 3, tokens: 20 }]);
  });

  it('merges a slot by per-field max: stale, duplicated and reordered slots change nothing', () => {
    const u = usage('self');
    const ev = (requests: number, tokens: number): RateLimitSlotsEvent => ({
      kind: 'ratelimit.slots',
      origin: 'peer',
      key: 'k',
      window: T0 / W,
      windowMs: W,
      requests,
      tokens,
    });
    expect(u.apply(ev(5, 100))).toBe(true);
    expect(u.apply(ev(5, 100))).toBe(false);
    expect(u.apply(ev(4, 90))).toBe(false);
    expect(u.apply(ev(5, 120))).toBe(true);
    expect(u.estimate('k', T0)).toEqual({ requests: 5, tokens: 120 });
    // malformed slots are ignored
    expect(u.apply({ ...ev(-1, 0) })).toBe(false);
    expect(u.apply({ ...ev(Number.NaN, 0) })).toBe(false);
    expect(u.apply({ ...ev(Infinity, 0) })).toBe(false);
    expect(u.apply({ ...ev(9, 9), window: 1.5 })).toBe(false);
  });

  it('a restarted node gets its own slot back from a replay and keeps counting from there', () => {
    const before = usage('a');
    before.add('k', 4, 40, T0);
    const saved = before.takeDirty(T0);
    const after = usage('a');
    for (const ev of saved) after.apply(ev);
    after.add('k', 1, 1, T0 + 1);
    expect(after.takeDirty(T0)).toMatchObject([{ origin: 'a', requests: 5, tokens: 41 }]);
  });

  it('forgets windows older than the previous one, and keys with nothing left', () => {
    let now = T0;
    const u = usage('a', () => now);
    u.add('old', 1, 1, T0);
    u.add('k', 1, 1, T0);
    expect(u.size()).toBe(2);
    now = T0 + W;
    u.add('k', 1, 1, now);
    expect(u.exportState()).toHaveLength(2);
    now = T0 + 2 * W;
    u.add('k', 1, 1, now);
    // the sweep of the new window dropped the idle key; k kept only the last two windows
    expect(u.size()).toBe(1);
    expect(u.exportState()).toEqual([
      [
        'k',
        [
          [T0 / W + 1, [['a', 1, 1]]],
          [T0 / W + 2, [['a', 1, 1]]],
        ],
      ],
    ]);
    // a slot of a window that no longer counts is ignored
    expect(
      u.apply({
        kind: 'ratelimit.slots',
        origin: 'b',
        key: 'k',
        window: T0 / W,
        windowMs: W,
        requests: 9,
        tokens: 9,
      }),
    ).toBe(false);
    // dirty slots of forgotten windows are not sent
    expect(u.takeDirty().map((e) => e.window)).toEqual([T0 / W + 1, T0 / W + 2]);
  });

  it('rejects a zero or negative window length', () => {
    expect(() => new RateLimitUsage('a', { windowMs: 0 })).toThrow(/windowMs/);
  });
});
