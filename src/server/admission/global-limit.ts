/**
 * The cluster-wide request rate limit (SMG `/mesh/rate-limit`): at most `limit_per_second`
 * inference requests per second across every peer of the mesh, 0 = unlimited.
 *
 * The limit lives in the replicated registry document (config key `global_rate_limit`, the hex of
 * `{"limit_per_second":N}` like every /mesh/config value), so a POST on any peer reaches every
 * peer and survives restarts with the data dir. The usage is `Replica.globalRate`: 1-second
 * sliding windows of a G-counter whose slots the mesh gossips, with the mesh share rule of
 * `RateLimitUsage.admits` bounding what peers admit on each other's late counts.
 *
 * A request holds 1 pending request while it is being admitted; `commit` (admitted) moves it into
 * the replicated counter, `cancel` (refused later, or gone while queued) gives it back: only
 * admitted requests count.
 */
import { SmgError } from '../../protocols/errors.js';
import type { RateLimitUsage } from '../../state/rate-limit.js';
import type { Replica } from '../../state/replica.js';

import {
  GLOBAL_RATE_KEY,
  GLOBAL_RATE_LIMIT_CONFIG_KEY,
  decodeGlobalRateLimit,
  encodeGlobalRateLimit,
  readGlobalRateLimit,
} from '../../state/global-rate-limit.js';

export {
  GLOBAL_RATE_KEY,
  GLOBAL_RATE_LIMIT_CONFIG_KEY,
  decodeGlobalRateLimit,
  encodeGlobalRateLimit,
  readGlobalRateLimit,
};

/** why `v` is not a valid `limit_per_second`, or undefined when it is one */
export function globalRateLimitProblem(v: unknown): string | undefined {
  if (v === undefined) return '"limit_per_second" is required';
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0)
    return `"limit_per_second" must be a whole number >= 0 (0 = unlimited), got ${JSON.stringify(v) ?? String(v)}`;
  return undefined;
}

export const globalRateLimitExceeded = (limit: number, retryAfterSecs: number) =>
  new SmgError(
    429,
    'rate_limit_exceeded',
    `Cluster-wide rate limit of ${limit} requests per second exceeded; try again later`,
    { 'retry-after': String(Math.max(1, Math.ceil(retryAfterSecs))) },
  );

/** a request's hold on the global rate: pending until admission decides */
export class GlobalLease {
  private state: 'reserved' | 'done' = 'reserved';

  constructor(
    private readonly usage: RateLimitUsage,
    private readonly now: () => number,
  ) {}

  /** admitted: the request counts cluster-wide */
  commit(): void {
    if (this.state !== 'reserved') return;
    this.state = 'done';
    this.usage.unreserve(GLOBAL_RATE_KEY, 1, 0);
    this.usage.add(GLOBAL_RATE_KEY, 1, 0, this.now());
  }

  /** refused later or abandoned: nothing counts */
  cancel(): void {
    if (this.state !== 'reserved') return;
    this.state = 'done';
    this.usage.unreserve(GLOBAL_RATE_KEY, 1, 0);
  }
}

export interface GlobalRateLimiterDeps {
  replica: Replica;
  now: () => number;
}

export class GlobalRateLimiter {
  private readonly usage: RateLimitUsage;
  /** the decoded limit of the last config value seen (decoded again only when the value changes) */
  private raw: string | undefined = undefined;
  private cached = 0;

  constructor(private readonly deps: GlobalRateLimiterDeps) {
    this.usage = deps.replica.globalRate;
  }

  /** the limit in force (0 = unlimited) */
  limit(): number {
    const raw = this.deps.replica.doc.config().get(GLOBAL_RATE_LIMIT_CONFIG_KEY);
    if (raw !== this.raw) {
      this.raw = raw;
      this.cached = decodeGlobalRateLimit(raw);
    }
    return this.cached;
  }

  /**
   * A lease holding 1 pending request, or a 429 when the cluster (or this peer's share of what is
   * left) is at the limit. Requests count even without a limit, so the stats show the cluster's
   * rate and a new limit starts from the real recent usage.
   */
  reserve(): GlobalLease | SmgError {
    const limit = this.limit();
    if (limit > 0) {
      const now = this.deps.now();
      if (!this.usage.admits(GLOBAL_RATE_KEY, 'requests', limit, 1, now)) {
        const waitMs = this.usage.waitMs(GLOBAL_RATE_KEY, 'requests', limit, 1, now);
        return globalRateLimitExceeded(limit, waitMs / 1000);
      }
    }
    this.usage.reserve(GLOBAL_RATE_KEY, 1, 0);
    return new GlobalLease(this.usage, this.deps.now);
  }
}

/** `GET /mesh/rate-limit/stats`: the cluster's estimate over the last second */
export function globalRateLimitStats(
  replica: Replica,
  now?: number,
): { limit_per_second: number; current_count: number; remaining: number } {
  const limit = readGlobalRateLimit(replica.doc);
  const current = Math.round(replica.globalRate.estimate(GLOBAL_RATE_KEY, now).requests);
  return {
    limit_per_second: limit,
    current_count: current,
    remaining: limit > 0 ? Math.max(0, limit - current) : -1,
  };
}
