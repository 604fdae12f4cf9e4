/**
 * Retry policy (inventory §5.1) and a retry budget.
 *
 * A retry re-runs worker selection and happens only before the first byte reaches the client.
 * `maxRetries` counts retries after the first attempt (SMG's `--retry-max-retries` counts attempts).
 * Backoff before retry n (1-based) is `min(initial × multiplier^(n-1), max)` ± jitter, so SMG's
 * defaults give 50, 75, 112, 168 ms…
 *
 * The budget keeps retries at most `ratio` of the requests seen over a sliding window, plus a small
 * floor per second so a quiet gateway can still retry: when the whole fleet is sick, retries stop
 * multiplying the load instead of turning every request into five.
 */
import type { RetryConfig } from '../cli/config-types.js';
import type { WorkerResilience } from '../state/worker.js';

/** SMG's retryable statuses */
export const DEFAULT_RETRYABLE_STATUSES: ReadonlySet<number> = new Set([408, 429, 500, 502, 503, 504]);

export interface RetrySettings {
  maxRetries: number;
  initialBackoffMs: number;
  maxBackoffMs: number;
  multiplier: number;
  jitter: number;
  retryable: ReadonlySet<number>;
}

/** the delay before retry `n` (1 = first retry), in ms */
export function backoffMs(n: number, s: RetrySettings, random: () => number = Math.random): number {
  const base = Math.min(s.initialBackoffMs * Math.pow(s.multiplier, Math.max(0, n - 1)), s.maxBackoffMs);
  if (s.jitter <= 0) return Math.round(base);
  const factor = (random() * 2 - 1) * s.jitter;
  return Math.max(0, Math.round(base + base * factor));
}

const settingsCache = new WeakMap<object, RetrySettings>();

/** the global flags, overridden by a worker's `resilience` (cached per spec or config object) */
export function retrySettings(global: RetryConfig, resilience?: WorkerResilience): RetrySettings {
  const cacheKey: object = resilience ?? global;
  const cached = settingsCache.get(cacheKey);
  if (cached) return cached;
  const disabled = resilience?.disable_retry ?? global.disabled;
  const s: RetrySettings = {
    maxRetries: disabled ? 0 : (resilience?.max_retries ?? global.maxRetries),
    initialBackoffMs: resilience?.initial_backoff_ms ?? global.initialBackoffMs,
    maxBackoffMs: resilience?.max_backoff_ms ?? global.maxBackoffMs,
    multiplier: resilience?.backoff_multiplier ?? global.backoffMultiplier,
    jitter: resilience?.jitter_factor ?? global.jitterFactor,
    retryable: resilience?.retryable_status_codes
      ? new Set(resilience.retryable_status_codes)
      : DEFAULT_RETRYABLE_STATUSES,
  };
  settingsCache.set(cacheKey, s);
  return s;
}

/**
 * Sliding-window retry budget: one-second buckets over `windowSecs`. A retry is allowed while
 * `retries < ratio × requests + minPerSec × windowSecs` over the window.
 */
export class RetryBudget {
  private readonly requests: Float64Array;
  private readonly retries: Float64Array;
  private sumRequests = 0;
  private sumRetries = 0;
  private second: number;

  constructor(
    private readonly ratio: number,
    private readonly windowSecs: number,
    private readonly minPerSec: number,
    private readonly now: () => number = Date.now,
  ) {
    this.requests = new Float64Array(windowSecs);
    this.retries = new Float64Array(windowSecs);
    this.second = Math.floor(now() / 1000);
  }

  /** a new client request (its first attempt) */
  onRequest(): void {
    this.advance();
    this.requests[this.second % this.windowSecs]++;
    this.sumRequests++;
  }

  /** asks for one retry; counts it when granted */
  tryRetry(): boolean {
    this.advance();
    const allowance = this.ratio * this.sumRequests + this.minPerSec * this.windowSecs;
    if (this.sumRetries + 1 > allowance) return false;
    this.retries[this.second % this.windowSecs]++;
    this.sumRetries++;
    return true;
  }

  /** retries and requests inside the window (for tests and stats) */
  snapshot(): { requests: number; retries: number } {
    this.advance();
    return { requests: this.sumRequests, retries: this.sumRetries };
  }

  private advance(): void {
    const s = Math.floor(this.now() / 1000);
    if (s === this.second) return;
    const steps = Math.min(s - this.second, this.windowSecs);
    for (let i = 1; i <= steps; i++) {
      const slot = (this.second + i) % this.windowSecs;
      this.sumRequests -= this.requests[slot];
      this.sumRetries -= this.retries[slot];
      this.requests[slot] = 0;
      this.retries[slot] = 0;
    }
    if (s - this.second >= this.windowSecs) {
      this.sumRequests = 0;
      this.sumRetries = 0;
    }
    this.second = s;
  }
}
