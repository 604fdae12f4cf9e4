import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { Logger } from 'pino';
import { afterAll, describe, expect, it } from 'vitest';
import { ManualClock } from '../../testing/manual-clock.js';
import type { AdmissionConfig } from '../../cli/config-types.js';
import { Metrics } from '../../observability/metrics.js';
import type { SmgError } from '../../protocols/errors.js';
import { Replica } from '../../state/replica.js';
import type { WorkerSpec } from '../../state/worker.js';

import {
  Admission,
  type AdmissionDeps,
  type AdmissionRequest,
  type AdmissionTicket,
  type PendingAdmission,
} from './index.js';
import type { TenantRateLimitRules } from './tenant-limits.js';

const OFF: AdmissionConfig = {
  maxConcurrentRequests: -1,
  queueSize: 100,
  queueTimeoutSecs: 60,
  priorityScheduler: false,
  priorityDefaultMaxClass: 'default',
  priorityTenantMetricTopN: 32,
  tenantRateLimit: false,
};

function quietLogger(): Logger & { errors: unknown[] } {
  const errors: unknown[] = [];
  const l = {
    errors,
    error: (...args: unknown[]) => errors.push(args),
    warn: () => undefined,
    info: () => undefined,
  };
  return l as unknown as Logger & { errors: unknown[] };
}

function setup(cfg: Partial<AdmissionConfig>, deps: Partial<AdmissionDeps> = {}) {
  const clock = new ManualClock(28_333 * 60_000);
  const replica = new Replica({ nodeId: 'n1', now: clock.now });
  const metrics = new Metrics();
  const logger = quietLogger();
  const admission = Admission.fromConfig(
    { ...OFF, ...cfg },
    { metrics, logger, replica, now: clock.now, timers: clock.timers, ...deps },
  );
  if (!admission) throw new Error('admission is off');
  interface Res {
    err?: SmgError;
    ticket?: AdmissionTicket;
    pending?: PendingAdmission;
    calls: number;
  }
  /** as the request path does: admitted on the headers, then started once the body named the model */
  const admit = (req: Partial<AdmissionRequest> & { model?: string } = {}): Res => {
    const r: Res = { calls: 0 };
    const { model = 'm', ...headers } = req;
    const full = { tenant: 'auth:a', priority: undefined, estimatedTokens: 100, ...headers };
    r.pending = admission.admit(full, (err, ticket) => {
      r.calls++;
      r.err = err ?? ticket?.start(model, full.estimatedTokens);
      r.ticket = ticket;
    });
    return r;
  };
  return { admission, admit, clock, replica, metrics, logger };
}

function spec(url: string, labels: Record<string, string> = {}): WorkerSpec {
  return {
    url,
    models: [],
    worker_type: 'regular',
    connection_mode: 'http',
    runtime: 'sglang',
    labels,
    priority: 50,
    cost: 1,
    health: {},
    max_connection_attempts: 20,
  };
}

describe('Admission.fromConfig', () => {
  it('is undefined when every admission feature is off', () => {
    const replica = new Replica({ nodeId: 'n1' });
    expect(
      Admission.fromConfig(OFF, { metrics: new Metrics(), logger: quietLogger(), replica }),
    ).toBeUndefined();
  });

  const dir = mkdtempSync(path.join(tmpdir(), 'smg-admission-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('reads both files from their paths and checks header tenants against the trust flag', () => {
    const rules = path.join(dir, 'rules.yaml');
    writeFileSync(
      rules,
      'default_policy: {}\ntenants: [{ tenant_key: "header:x", requests_per_minute: 1 }]\n',
    );
    const sched = path.join(dir, 'sched.yaml');
    writeFileSync(sched, 'capacity: 300\n');
    const cfg = {
      ...OFF,
      tenantRateLimit: true,
      tenantRateLimitConfigPath: rules,
      priorityScheduler: true,
      priorityConfigPath: sched,
    };
    const deps = { metrics: new Metrics(), logger: quietLogger(), replica: new Replica({ nodeId: 'n1' }) };
    const a = Admission.fromConfig(cfg, { ...deps, trustTenantHeader: true });
    expect(a?.stats()).toMatchObject({
      mode: 'priority',
      priority: { capacity: 300 },
      tenantRateLimit: { keys: 0 },
    });
    a?.close();
    expect(() => Admission.fromConfig(cfg, { ...deps, trustTenantHeader: false })).toThrow(
      /--trust-tenant-header/,
    );
    expect(() => Admission.fromConfig({ ...OFF, tenantRateLimit: true }, deps)).toThrow(
      /--tenant-rate-limit-config/,
    );
    writeFileSync(sched, 'capacity: -1\n');
    expect(() => Admission.fromConfig(cfg, { ...deps, trustTenantHeader: true })).toThrow(
      new RegExp(`${sched}: capacity`),
    );
  });
});

describe('Admission: legacy concurrency', () => {
  it('admits synchronously up to the cap, queues, answers 429 and counts every decision', async () => {
    const { admit, metrics, admission } = setup({ maxConcurrentRequests: 1, queueSize: 1 });
    const a = admit();
    expect(a.pending).toBeUndefined();
    expect(a.calls).toBe(1);
    expect(a.ticket).toBeDefined();
    const b = admit();
    expect(b.pending).toBeDefined();
    expect(b.calls).toBe(0);
    const c = admit();
    expect(c.err?.status).toBe(429);
    a.ticket?.release();
    a.ticket?.release();
    expect(b.ticket).toBeDefined();
    expect(admission.stats()).toMatchObject({ mode: 'concurrency', concurrency: { inflight: 1, queued: 0 } });
    const byResult = Object.fromEntries(
      (await metrics.httpRateLimit.get()).values.map((v) => [v.labels.result, v.value]),
    );
    expect(byResult).toEqual({ allowed: 2, rejected: 1 });
  });

  it('answers 408 after the queue timeout; close answers the rest with the same error', () => {
    const { admit, clock, admission } = setup({
      maxConcurrentRequests: 1,
      queueSize: 5,
      queueTimeoutSecs: 2,
    });
    admit();
    const timedOut = admit();
    clock.advance(2_000);
    expect(timedOut.err?.status).toBe(408);
    expect(timedOut.err?.code).toBe('queue_timeout');
    const closed = admit();
    admission.close();
    expect(closed.err?.code).toBe('queue_timeout');
    expect(closed.err?.headers['retry-after']).toBe('1');
    expect(clock.timersPending).toBe(0);
  });
});

describe('Admission: tenant limits with a queue behind them', () => {
  const rules: TenantRateLimitRules = { default_policy: { requests_per_minute: 2, tokens_per_minute: 1000 } };

  it('checks the tenant first: a tenant rejection takes no slot', () => {
    const { admit, admission } = setup(
      { maxConcurrentRequests: 5, tenantRateLimit: true },
      { tenantRules: rules },
    );
    admit();
    admit();
    const third = admit();
    expect(third.err?.code).toBe('tenant_rate_limit_exceeded');
    expect(admission.stats().concurrency?.inflight).toBe(2);
  });

  it('a request refused, timed out or cancelled in the queue costs no quota', () => {
    const { admit, clock, replica } = setup(
      { maxConcurrentRequests: 1, queueSize: 1, queueTimeoutSecs: 1, tenantRateLimit: true },
      { tenantRules: { default_policy: { requests_per_minute: 3 } } },
    );
    const usage = () => replica.rateLimits.estimate('tenant:auth:a', clock.t).requests;
    const first = admit();
    expect(usage()).toBe(1);
    const queued = admit();
    expect(usage()).toBe(2); // reserved while it waits
    const refused = admit();
    expect(refused.err?.status).toBe(429);
    expect(refused.err?.code).toBe('rate_limit_exceeded');
    expect(usage()).toBe(2);
    clock.advance(1_000);
    expect(queued.err?.status).toBe(408);
    expect(usage()).toBe(1);
    const cancelled = admit();
    cancelled.pending?.cancel();
    cancelled.pending?.cancel();
    expect(usage()).toBe(1);
    first.ticket?.release();
    clock.advance(60_000);
    expect(cancelled.calls).toBe(0);
  });

  it('settles tokens with the real usage, or the estimate when the usage is unknown', () => {
    const { admit, replica, clock } = setup({ tenantRateLimit: true }, { tenantRules: rules });
    const tokens = () => replica.rateLimits.estimate('tenant:auth:a', clock.t).tokens;
    const a = admit({ estimatedTokens: 400 });
    expect(tokens()).toBe(400);
    a.ticket?.release({ totalTokens: 50 });
    a.ticket?.release({ totalTokens: 9999 });
    expect(tokens()).toBe(50);
    const b = admit({ estimatedTokens: 300 });
    b.ticket?.release();
    expect(tokens()).toBe(350);
    // the replicated slot carries the settled numbers, ready for the mesh
    expect(replica.rateLimits.takeDirty(clock.t)).toMatchObject([
      { key: 'tenant:auth:a', requests: 2, tokens: 350 },
    ]);
  });

  it('a done callback that throws gets its ticket released and is logged', () => {
    const { admission, logger } = setup({ maxConcurrentRequests: 1 });
    admission.admit({ tenant: 'anonymous', priority: undefined, estimatedTokens: 0 }, () => {
      throw new Error('boom');
    });
    expect(logger.errors).toHaveLength(1);
    expect(admission.stats().concurrency?.inflight).toBe(0);
  });
});

describe('Admission: priority scheduler', () => {
  it('preempts through the ticket: onPreempt once, then release; a preempted request is charged no tokens', () => {
    const { admit, replica, clock } = setup(
      { priorityScheduler: true, priorityDefaultMaxClass: 'system', tenantRateLimit: true },
      {
        priorityFile: {
          capacity: 1,
          classes: { system: { reserved_floor: 0 }, interactive: { reserved_floor: 0 } },
        },
        tenantRules: { default_policy: { tokens_per_minute: 10_000 } },
      },
    );
    const victim = admit({ priority: 'bulk', estimatedTokens: 1000 });
    let preempted = 0;
    const ticket = victim.ticket as AdmissionTicket;
    ticket.onPreempt = () => {
      preempted++;
      expect(ticket.onPreempt).toBeUndefined();
      ticket.release(); // the proxy answers 503 scheduler_preempted and lets go
    };
    const boss = admit({ priority: 'System', estimatedTokens: 10 });
    expect(boss.ticket).toBeDefined();
    expect(preempted).toBe(1);
    expect(replica.rateLimits.estimate('tenant:auth:a', clock.t).tokens).toBe(10);
    // the preemptor answers: no longer preemptible
    boss.ticket?.firstByte();
    const other = admit({ priority: 'system' });
    expect(other.pending).toBeDefined();
  });

  it('follows the routable fleet’s capacity through the replica', async () => {
    const { admission, replica } = setup({ priorityScheduler: true, maxConcurrentRequests: 7 });
    expect(admission.stats().priority?.capacity).toBe(7); // no workers: --max-concurrent-requests
    let c = 0;
    const hlc = () => ({ wall: 1, counter: c++, node: 'n1' });
    replica.apply({
      kind: 'worker.upsert',
      id: 'w1',
      spec: spec('http://a', { max_running_requests: '200' }),
      hlc: hlc(),
    });
    replica.apply({ kind: 'worker.upsert', id: 'w2', spec: spec('http://b'), hlc: hlc() });
    replica.apply({ kind: 'worker.health', id: 'w1', status: 'ready', hlc: hlc() });
    replica.apply({ kind: 'worker.health', id: 'w2', status: 'ready', hlc: hlc() });
    await Promise.resolve();
    expect(admission.stats().priority?.capacity).toBe(264);
    admission.close();
    replica.apply({ kind: 'worker.health', id: 'w2', status: 'failed', hlc: hlc() });
    await Promise.resolve();
    expect(admission.stats().priority?.capacity).toBe(264); // closed: no longer listening
  });

  it('close answers queued requests with scheduler_queue_timeout', () => {
    const { admit, admission } = setup(
      { priorityScheduler: true },
      {
        priorityFile: {
          capacity: 1,
          classes: { system: { reserved_floor: 0 }, interactive: { reserved_floor: 0 } },
        },
      },
    );
    admit();
    const q = admit({ priority: 'bulk' });
    admission.refreshGauges();
    admission.close();
    expect(q.err?.status).toBe(408);
    expect(q.err?.code).toBe('scheduler_queue_timeout');
  });
});

describe('Admission: decided on the headers, the model rule once the body is read', () => {
  const rules: TenantRateLimitRules = {
    default_policy: {
      requests_per_minute: 10,
      model_rules: [{ rule_id: 'big', matcher: { type: 'exact', value: 'big' }, requests_per_minute: 1 }],
    },
  };

  it('a request refused by its model rule at start costs neither the tenant nor the cluster any quota', () => {
    const { admit, replica, clock } = setup({ tenantRateLimit: true }, { tenantRules: rules });
    const tenant = () => replica.rateLimits.estimate('tenant:auth:a', clock.t).requests;
    const first = admit({ model: 'big' });
    expect(first.err).toBeUndefined();
    const second = admit({ model: 'big' });
    expect(second.err?.code).toBe('tenant_rate_limit_exceeded');
    expect(second.err?.message).toContain('model rule big');
    second.ticket?.release();
    expect(tenant()).toBe(1);
    // another model of the same tenant is not held back by that rule
    expect(admit({ model: 'small' }).err).toBeUndefined();
    expect(tenant()).toBe(2);
  });

  it('a ticket released before start (body never read) gives its reservation back', () => {
    const { admission, replica, clock } = setup({ tenantRateLimit: true }, { tenantRules: rules });
    let ticket: AdmissionTicket | undefined;
    admission.admit({ tenant: 'auth:a', priority: undefined, estimatedTokens: 5 }, (_e, t) => (ticket = t));
    expect(replica.rateLimits.estimate('tenant:auth:a', clock.t).requests).toBe(1); // reserved
    ticket?.release();
    expect(replica.rateLimits.estimate('tenant:auth:a', clock.t).requests).toBe(0);
    expect(replica.rateLimits.takeDirty(clock.t)).toEqual([]);
  });
});
