/**
 * Admission: the one object the request path asks "may this request run now?". It decides on
 * what the headers tell (tenant, priority, declared body size), before the body is read, so a
 * request that waits or is refused has cost no memory for its body. In order:
 * 0. the cluster-wide request rate limit (`/mesh/rate-limit`, with `globalRateLimit`), then
 * 1. the tenant's own rate limits (cheap reject, nothing queued), then
 * 2. either the priority scheduler (`--priority-scheduler-enabled`) or the legacy concurrency
 *    limit + start rate + FIFO queue (`--max-concurrent-requests > 0`).
 * Once the admitted request's body is read, `ticket.start(model)` checks the tenant's model rule
 * (the model is only known from the body) and only then commits the quota: a request refused or
 * abandoned at any step before gives its global and tenant quota back.
 *
 * The decision is synchronous whenever it can be: `done` runs before `admit` returns, and no
 * promise is allocated. Only a request that has to wait gets a `PendingAdmission` handle; it ends
 * in exactly one of `done(…)` (admitted, 408, close) or the caller's `cancel()`.
 *
 * Wiring expected from the request path and the app:
 * - `ticket.start(model, tokens)` once the body is read (an error: answer it, then `release()`);
 * - `ticket.firstByte()` when the first response byte goes out, `ticket.onPreempt` set right after
 *   admission (preemption answers 503 `errors.schedulerPreempted()` and calls `release`), and
 *   `ticket.release({ totalTokens })` when the body ends or the client leaves;
 * - `refreshGauges()` from the metrics scrape hook (the smg_scheduler_* gauges are not updated
 *   per request);
 * - `close()` on shutdown: queued requests get the queue-timeout error of their admission path
 *   (408 with `Retry-After: 1`: clients retry it, and no new error code is needed).
 */
import type { Logger } from 'pino';
import type { AdmissionConfig, PriorityClass } from '../../cli/config-types.js';
import type { Metrics } from '../../observability/metrics.js';
import { errors, SmgError } from '../../protocols/errors.js';
import type { Replica } from '../../state/replica.js';
import {
  ConcurrencyLimiter,
  realTimers,
  type ConcurrencySlot,
  type QueuedWait,
  type Timers,
} from './concurrency.js';
import {
  CAPACITY_WITHOUT_WORKERS,
  PriorityScheduler,
  SchedulerPermit,
  loadPrioritySchedulerConfig,
  prioritySettings,
  workerCapacity,
  type PrioritySchedulerFile,
} from './priority.js';
import { GlobalRateLimiter, type GlobalLease } from './global-limit.js';
import {
  TenantRateLimiter,
  loadTenantRateLimitConfig,
  validateTenantRules,
  type TenantLease,
  type TenantRateLimitRules,
} from './tenant-limits.js';

export { loadPrioritySchedulerConfig, parsePrioritySchedulerConfig } from './priority.js';
export type { PrioritySchedulerFile } from './priority.js';
export {
  loadTenantRateLimitConfig,
  parseTenantRateLimitConfig,
  validateTenantRules,
} from './tenant-limits.js';
export type { TenantRateLimitRules } from './tenant-limits.js';
export type { Timers } from './concurrency.js';

export interface AdmissionRequest {
  /** canonical tenant key: auth:<id> | header:<id> | ip:<addr> | anonymous */
  tenant: string;
  /** raw x-smg-priority header value */
  priority: string | undefined;
  /** estimated input tokens (declared request bytes / 4; 0 when the length is not declared) */
  estimatedTokens: number;
}

export interface AdmissionTicket {
  /**
   * The body is read and names `model` (resolved id, '' if none): checks the tenant's model rule,
   * then commits the request's quota. An error (429 of the model rule) leaves the ticket to be
   * released. Idempotent once it succeeded.
   */
  start(model: string, estimatedTokens: number): SmgError | undefined;
  /** the response's first byte went to the client: no longer preemptible */
  firstByte(): void;
  /** set by the caller; invoked at most once if preempted before firstByte */
  onPreempt: (() => void) | undefined;
  /** idempotent; end of body or client gone; settles tenant token usage with the real count */
  release(usage?: { totalTokens?: number }): void;
}

export interface PendingAdmission {
  /** the client left while queued: dequeue (scheduler outcome client_cancelled); `done` is not called */
  cancel(): void;
}

export type AdmissionDone = (err: SmgError | undefined, ticket: AdmissionTicket | undefined) => void;

export interface AdmissionDeps {
  metrics: Metrics;
  logger: Logger;
  replica: Replica;
  now?: () => number;
  /** injected timers (tests); real, unref'd timers by default */
  timers?: Timers;
  /** rules already loaded (else read from `tenantRateLimitConfigPath`) */
  tenantRules?: TenantRateLimitRules;
  /** scheduler file already loaded (else read from `priorityConfigPath` when set) */
  priorityFile?: PrioritySchedulerFile;
  /** when given, the tenant rules are checked against it (`header:` tenants need a trusted header) */
  trustTenantHeader?: boolean;
  /**
   * enforce the cluster-wide request rate limit kept in the registry document (set it with
   * `cfg.mesh.enabled`: only the mesh routes can set the limit)
   */
  globalRateLimit?: boolean;
}

class Ticket implements AdmissionTicket {
  private released = false;
  private started = false;
  private ruleLease: TenantLease | undefined = undefined;
  private preemptHook: (() => void) | undefined = undefined;
  private wasPreempted = false;

  constructor(
    private readonly admission: Admission,
    private readonly tenant: string,
    private readonly global: GlobalLease | undefined,
    private readonly lease: TenantLease | undefined,
    private readonly slot: ConcurrencySlot | undefined,
    private readonly permit: SchedulerPermit | undefined,
  ) {}

  start(model: string, estimatedTokens: number): SmgError | undefined {
    if (this.started || this.released) return undefined;
    const r = this.admission.tenantLimiter?.reserveModel(this.tenant, model, estimatedTokens);
    if (r instanceof SmgError) return r;
    this.started = true;
    this.ruleLease = r;
    this.global?.commit();
    this.lease?.commit();
    this.ruleLease?.commit();
    return undefined;
  }

  get onPreempt(): (() => void) | undefined {
    return this.preemptHook;
  }

  set onPreempt(fn: (() => void) | undefined) {
    this.preemptHook = fn;
    // only a request whose path can be told is a preemption candidate
    if (this.permit && !this.released) this.permit.onPreempt = fn ? () => this.preempted() : undefined;
  }

  firstByte(): void {
    this.permit?.firstByte();
  }

  release(usage?: { totalTokens?: number }): void {
    if (this.released) return;
    this.released = true;
    if (!this.started) {
      // never ran (body not read, refused by its model rule, client gone): it costs no quota
      this.global?.cancel();
      this.lease?.cancel();
    } else {
      const real = usage?.totalTokens;
      const known = real !== undefined && Number.isFinite(real) && real >= 0 ? real : undefined;
      for (const l of [this.lease, this.ruleLease]) {
        // a preempted request produced nothing: only its request counts
        l?.settle(known ?? (this.wasPreempted ? 0 : l.reservedTokens));
      }
    }
    this.slot?.release();
    this.permit?.release();
  }

  private preempted(): void {
    this.wasPreempted = true;
    const hook = this.preemptHook;
    this.preemptHook = undefined;
    try {
      hook?.();
    } catch (err) {
      this.admission.logger.error({ err }, 'admission: onPreempt hook threw');
    }
  }
}

/** one request's way through admission; the handle the caller holds while it is queued */
class Attempt implements PendingAdmission {
  private finished = false;
  wait: QueuedWait | undefined = undefined;

  constructor(
    private readonly admission: Admission,
    private readonly tenant: string,
    private readonly lease: TenantLease | undefined,
    private readonly global: GlobalLease | undefined,
    private readonly done: AdmissionDone,
  ) {}

  /** the gate's answer: a concurrency slot or a scheduler permit */
  readonly onGrant = (
    err: SmgError | undefined,
    grant: ConcurrencySlot | SchedulerPermit | undefined,
  ): void => {
    if (grant instanceof SchedulerPermit) this.finish(err, undefined, grant);
    else this.finish(err, grant, undefined);
  };

  cancel(): void {
    if (this.finished) return;
    this.finished = true;
    this.wait?.cancel();
    this.lease?.cancel();
    this.global?.cancel();
  }

  private finish(
    err: SmgError | undefined,
    slot: ConcurrencySlot | undefined,
    permit: SchedulerPermit | undefined,
  ): void {
    if (this.finished) {
      // cancelled, yet granted in the same turn: hand the slot straight back
      slot?.release();
      permit?.release();
      return;
    }
    this.finished = true;
    if (err) {
      this.lease?.cancel();
      this.global?.cancel();
      this.admission.deliver(this.done, err, undefined);
      return;
    }
    this.admission.deliver(
      this.done,
      undefined,
      new Ticket(this.admission, this.tenant, this.global, this.lease, slot, permit),
    );
  }
}

export class Admission {
  /** undefined when everything is off: the request path then skips admission entirely */
  static fromConfig(cfg: AdmissionConfig, deps: AdmissionDeps): Admission | undefined {
    const legacy = !cfg.priorityScheduler && cfg.maxConcurrentRequests > 0;
    if (!cfg.priorityScheduler && !legacy && !cfg.tenantRateLimit && !deps.globalRateLimit) return undefined;
    let tenantRules: TenantRateLimitRules | undefined;
    if (cfg.tenantRateLimit) {
      tenantRules = deps.tenantRules;
      if (!tenantRules) {
        if (!cfg.tenantRateLimitConfigPath) {
          throw new Error('--tenant-rate-limit-enabled needs --tenant-rate-limit-config <file>');
        }
        tenantRules = loadTenantRateLimitConfig(cfg.tenantRateLimitConfigPath);
      }
      if (deps.trustTenantHeader !== undefined) {
        validateTenantRules(tenantRules, { trustTenantHeader: deps.trustTenantHeader });
      }
    }
    let priorityFile: PrioritySchedulerFile | undefined;
    if (cfg.priorityScheduler) {
      priorityFile =
        deps.priorityFile ??
        (cfg.priorityConfigPath ? loadPrioritySchedulerConfig(cfg.priorityConfigPath) : undefined);
    }
    return new Admission(cfg, deps, tenantRules, priorityFile);
  }

  readonly logger: Logger;
  /** @internal read by tickets for the model rule */
  readonly tenantLimiter: TenantRateLimiter | undefined;
  private readonly globalLimiter: GlobalRateLimiter | undefined;
  private readonly concurrency: ConcurrencyLimiter | undefined;
  private readonly scheduler: PriorityScheduler | undefined;
  private unsubscribe: (() => void) | undefined;
  private capacityUpdateQueued = false;
  private readonly queueTimeoutMs: number;

  private constructor(
    cfg: AdmissionConfig,
    private readonly deps: AdmissionDeps,
    tenantRules: TenantRateLimitRules | undefined,
    priorityFile: PrioritySchedulerFile | undefined,
  ) {
    this.logger = deps.logger;
    this.queueTimeoutMs = cfg.queueTimeoutSecs * 1000;
    const now = deps.now ?? Date.now;
    const timers = deps.timers ?? realTimers;
    const metrics = deps.metrics;
    if (deps.globalRateLimit) this.globalLimiter = new GlobalRateLimiter({ replica: deps.replica, now });
    if (tenantRules) {
      this.tenantLimiter = new TenantRateLimiter(tenantRules, {
        usage: deps.replica.rateLimits,
        now,
        metrics,
      });
    }
    if (cfg.priorityScheduler) {
      const fallback = cfg.maxConcurrentRequests > 0 ? cfg.maxConcurrentRequests : CAPACITY_WITHOUT_WORKERS;
      const scheduler = new PriorityScheduler(
        prioritySettings(priorityFile, {
          defaultMaxClass: cfg.priorityDefaultMaxClass,
          tenantMetricTopN: cfg.priorityTenantMetricTopN,
        }),
        { now, timers, metrics, initialCapacity: workerCapacity(deps.replica.registry.list(), fallback) },
      );
      this.scheduler = scheduler;
      if (priorityFile?.capacity === undefined) {
        // capacity follows the routable fleet; applied off the event's call stack, since it can
        // admit queued requests and their callbacks should not run inside Replica.apply
        this.unsubscribe = deps.replica.onApplied((ev, changed) => {
          if (!changed || this.capacityUpdateQueued) return;
          if (ev.kind !== 'worker.upsert' && ev.kind !== 'worker.remove' && ev.kind !== 'worker.health')
            return;
          this.capacityUpdateQueued = true;
          queueMicrotask(() => {
            this.capacityUpdateQueued = false;
            scheduler.setCapacity(workerCapacity(deps.replica.registry.list(), fallback));
          });
        });
      }
    } else if (cfg.maxConcurrentRequests > 0) {
      this.concurrency = new ConcurrencyLimiter(
        {
          maxConcurrent: cfg.maxConcurrentRequests,
          ...(cfg.rateLimitTokensPerSecond !== undefined && { ratePerSec: cfg.rateLimitTokensPerSecond }),
          queueSize: Math.max(0, cfg.queueSize),
          queueTimeoutSecs: cfg.queueTimeoutSecs,
        },
        {
          now,
          timers,
          onDecision: (admitted) =>
            metrics.inc(metrics.httpRateLimit, { result: admitted ? 'allowed' : 'rejected' }),
        },
      );
    }
  }

  /**
   * Decides on a request: `done` runs synchronously when the decision is immediate (then the
   * result is undefined); a handle comes back only while the request waits in a queue.
   */
  admit(req: AdmissionRequest, done: AdmissionDone): PendingAdmission | undefined {
    let global: GlobalLease | undefined;
    if (this.globalLimiter) {
      const g = this.globalLimiter.reserve();
      if (g instanceof SmgError) {
        this.deliver(done, g, undefined);
        return undefined;
      }
      global = g;
    }
    let lease: TenantLease | undefined;
    if (this.tenantLimiter) {
      const r = this.tenantLimiter.reserve(req.tenant, req.estimatedTokens);
      if (r instanceof SmgError) {
        global?.cancel();
        this.deliver(done, r, undefined);
        return undefined;
      }
      lease = r;
    }
    if (!this.scheduler && !this.concurrency) {
      this.deliver(done, undefined, new Ticket(this, req.tenant, global, lease, undefined, undefined));
      return undefined;
    }
    const attempt = new Attempt(this, req.tenant, lease, global, done);
    const wait = this.scheduler
      ? this.scheduler.admit(this.scheduler.resolve(req.tenant, req.priority), attempt.onGrant)
      : (this.concurrency as ConcurrencyLimiter).acquire(attempt.onGrant);
    if (!wait) return undefined;
    attempt.wait = wait;
    return attempt;
  }

  /** the longest a request can wait for admission (its headers are in, its body not yet read) */
  maxQueueWaitMs(): number {
    if (this.scheduler) return this.scheduler.maxQueueWaitMs();
    return this.concurrency ? this.queueTimeoutMs : 0;
  }

  /** sets the smg_scheduler_* gauges; call it from the metrics scrape hook */
  refreshGauges(): void {
    this.scheduler?.refreshGauges();
  }

  /** JSON-able snapshot for debugging and tests */
  stats(): {
    mode: 'priority' | 'concurrency' | 'none';
    concurrency?: ReturnType<ConcurrencyLimiter['stats']>;
    priority?: ReturnType<PriorityScheduler['stats']>;
    tenantRateLimit?: { keys: number };
    globalRateLimit?: { limitPerSecond: number };
  } {
    return {
      mode: this.scheduler ? 'priority' : this.concurrency ? 'concurrency' : 'none',
      ...(this.concurrency && { concurrency: this.concurrency.stats() }),
      ...(this.scheduler && { priority: this.scheduler.stats() }),
      ...(this.tenantLimiter && { tenantRateLimit: { keys: this.deps.replica.rateLimits.size() } }),
      ...(this.globalLimiter && { globalRateLimit: { limitPerSecond: this.globalLimiter.limit() } }),
    };
  }

  /**
   * Stops timers and the capacity feed; every queued request gets its path's queue-timeout error
   * (408, Retry-After 1). Admitted requests keep their tickets.
   */
  close(): void {
    this.unsubscribe?.();
    this.unsubscribe = undefined;
    this.concurrency?.close((waited) => errors.queueTimeout(waited, 1));
    this.scheduler?.close((cls: PriorityClass, waited) => errors.schedulerQueueTimeout(cls, waited, 1));
  }

  /** @internal calls the request path's callback; a throw there must not break admission */
  deliver(done: AdmissionDone, err: SmgError | undefined, ticket: Ticket | undefined): void {
    try {
      done(err, ticket);
    } catch (e) {
      this.logger.error({ err: e }, 'admission: done callback threw; releasing its ticket');
      ticket?.release();
    }
  }
}
