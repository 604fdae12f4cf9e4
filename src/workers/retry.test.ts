import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import type { RetryConfig } from '../cli/config-types.js';
import { backoffMs, DEFAULT_RETRYABLE_STATUSES, RetryBudget, retrySettings } from './retry.js';

const GLOBAL: RetryConfig = {
  maxRetries: 4,
  initialBackoffMs: 50,
  maxBackoffMs: 30_000,
  backoffMultiplier: 1.5,
  jitterFactor: 0.2,
  disabled: false,
  budgetRatio: 0.2,
  budgetWindowSecs: 10,
  budgetMinPerSec: 0,
};

describe('backoff', () => {
  it("follows SMG's schedule without jitter: 50, 75, 112, 169 ms…, capped", () => {
    const s = { ...retrySettings(GLOBAL), jitter: 0 };
    expect([1, 2, 3, 4].map((n) => backoffMs(n, s))).toEqual([50, 75, 113, 169]);
    expect(backoffMs(40, s)).toBe(30_000);
  });

  it('stays within ± jitter of the base delay', () => {
    const s = retrySettings(GLOBAL);
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 30 }),
        fc.double({ min: 0, max: 0.999999, noNaN: true }),
        (n, r) => {
          const base = Math.min(50 * 1.5 ** (n - 1), 30_000);
          const d = backoffMs(n, s, () => r);
          return d >= Math.floor(base * 0.8) - 1 && d <= Math.ceil(base * 1.2) + 1;
        },
      ),
    );
  });
});

describe('retrySettings', () => {
  it('uses the flags, SMG statuses, and worker overrides', () => {
    const g = retrySettings(GLOBAL);
    expect(g.maxRetries).toBe(4);
    expect(g.retryable).toBe(DEFAULT_RETRYABLE_STATUSES);
    expect([...g.retryable].sort()).toEqual([408, 429, 500, 502, 503, 504]);
    const w = retrySettings(GLOBAL, { max_retries: 1, retryable_status_codes: [503], initial_backoff_ms: 5 });
    expect(w).toMatchObject({ maxRetries: 1, initialBackoffMs: 5 });
    expect([...w.retryable]).toEqual([503]);
    expect(retrySettings(GLOBAL, { disable_retry: true }).maxRetries).toBe(0);
    expect(retrySettings({ ...GLOBAL, disabled: true, maxRetries: 0 }).maxRetries).toBe(0);
  });
});

describe('RetryBudget', () => {
  it('allows retries up to ratio × requests over the window', () => {
    let now = 0;
    const b = new RetryBudget(0.2, 10, 0, () => now);
    for (let i = 0; i < 100; i++) b.onRequest();
    let granted = 0;
    for (let i = 0; i < 50; i++) if (b.tryRetry()) granted++;
    expect(granted).toBe(20);
    // the window slides: after it passes, old requests no longer fund retries
    now = 11_000;
    expect(b.tryRetry()).toBe(false);
    for (let i = 0; i < 10; i++) b.onRequest();
    expect(b.tryRetry()).toBe(true);
    expect(b.tryRetry()).toBe(true);
    expect(b.tryRetry()).toBe(false);
  });

  it('always allows the per-second floor', () => {
    const b = new RetryBudget(0.2, 10, 1, () => 0);
    let granted = 0;
    for (let i = 0; i < 20; i++) if (b.tryRetry()) granted++;
    expect(granted).toBe(10);
  });

  it('grants a retry only while the window holds enough requests to fund it', () => {
    fc.assert(
      fc.property(
        fc.array(fc.tuple(fc.boolean(), fc.integer({ min: 0, max: 3000 })), { maxLength: 400 }),
        (ops) => {
          let now = 0;
          const b = new RetryBudget(0.2, 5, 0, () => now);
          for (const [isRetry, dt] of ops) {
            now += dt;
            if (!isRetry) {
              b.onRequest();
              continue;
            }
            const before = b.snapshot();
            const granted = b.tryRetry();
            const fundable = before.retries + 1 <= 0.2 * before.requests + 1e-9;
            if (granted !== fundable) return false;
          }
          return true;
        },
      ),
    );
  });
});
