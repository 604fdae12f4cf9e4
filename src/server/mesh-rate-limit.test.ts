/**
 * The cluster-wide request rate limit in process: `/mesh/rate-limit` routes on a fastify app with
 * the real mesh routes and error handler, and its enforcement by Admission (429 + Retry-After,
 * counted only when admitted, replicated through the registry document).
 */
import Fastify, { type FastifyInstance } from 'fastify';
import type { Logger } from 'pino';
import { describe, expect, it } from 'vitest';
import type { MeshRuntime } from '../../mesh/runtime.js';
import type { AdmissionConfig } from '../cli/config-types.js';
import { Metrics } from '../observability/metrics.js';
import type { SmgError } from '../protocols/errors.js';
import type { PolicyRegistry } from '../routing/registry.js';
import { Replica } from '../state/replica.js';
import { ManualClock } from '../testing/manual-clock.js';
import {
  GLOBAL_RATE_LIMIT_CONFIG_KEY,
  decodeGlobalRateLimit,
  encodeGlobalRateLimit,
} from './admission/global-limit.js';
import { Admission, type AdmissionTicket } from './admission/index.js';
import { makeErrorHandler } from './error-handler.js';
import { registerMeshRoutes } from './mesh-routes.js';

const OFF: AdmissionConfig = {
  maxConcurrentRequests: -1,
  queueSize: 100,
  queueTimeoutSecs: 60,
  priorityScheduler: false,
  priorityDefaultMaxClass: 'default',
  priorityTenantMetricTopN: 32,
  tenantRateLimit: false,
};

const logger = { error: () => undefined, warn: () => undefined, info: () => undefined } as unknown as Logger;

async function meshApp(replica: Replica, meshOn = true): Promise<FastifyInstance> {
  const app = Fastify();
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('*', { parseAs: 'buffer' }, (_req, body, done) => done(null, body));
  app.setErrorHandler(makeErrorHandler(1024 * 1024));
  registerMeshRoutes(app, {
    replica,
    policies: {} as PolicyRegistry,
    mesh: () => (meshOn ? ({} as MeshRuntime) : undefined),
    storeHealthy: () => true,
  });
  await app.ready();
  return app;
}

const post = (app: FastifyInstance, body: unknown) =>
  app.inject({
    method: 'POST',
    url: '/mesh/rate-limit',
    headers: { 'content-type': 'application/json' },
    payload: typeof body === 'string' ? body : JSON.stringify(body),
  });

/** two replicas wired like two peers: registry changes of one are applied on the other */
function pair(clock: ManualClock): [Replica, Replica] {
  const a = new Replica({ nodeId: 'a', now: clock.now });
  const b = new Replica({ nodeId: 'b', now: clock.now });
  a.onRegistryChanges((changes, source) => {
    if (source === 'local') b.applyRegistryChanges(changes);
  });
  b.onRegistryChanges((changes, source) => {
    if (source === 'local') a.applyRegistryChanges(changes);
  });
  return [a, b];
}

function admissionFor(replica: Replica, clock: ManualClock, cfg: Partial<AdmissionConfig> = {}, extra = {}) {
  const admission = Admission.fromConfig(
    { ...OFF, ...cfg },
    {
      metrics: new Metrics(),
      logger,
      replica,
      now: clock.now,
      timers: clock.timers,
      globalRateLimit: true,
      ...extra,
    },
  );
  if (!admission) throw new Error('admission is off');
  const admit = (tenant = 'auth:a') => {
    const r: { err?: SmgError; ticket?: AdmissionTicket; cancel?: () => void } = {};
    const pending = admission.admit({ tenant, priority: undefined, estimatedTokens: 10 }, (err, t) => {
      r.err = err ?? t?.start('m', 10);
      r.ticket = t;
    });
    if (pending) r.cancel = () => pending.cancel();
    return r;
  };
  return { admission, admit };
}

describe('/mesh/rate-limit routes', () => {
  it('answer 503 mesh_disabled without --ha-mesh', async () => {
    const app = await meshApp(new Replica({ nodeId: 'n' }), false);
    for (const res of [
      await app.inject({ method: 'GET', url: '/mesh/rate-limit' }),
      await post(app, { limit_per_second: 5 }),
      await app.inject({ method: 'GET', url: '/mesh/rate-limit/stats' }),
    ]) {
      expect(res.statusCode).toBe(503);
      expect(res.json()).toMatchObject({ error: { code: 'mesh_disabled' } });
    }
    await app.close();
  });

  it('reject a body that is not {limit_per_second: whole number >= 0} with 400 and say why', async () => {
    const app = await meshApp(new Replica({ nodeId: 'n' }));
    const cases: [unknown, RegExp][] = [
      ['', /body is empty/],
      ['{"limit_per_second":', /invalid JSON/],
      [[1], /JSON object/],
      [{}, /"limit_per_second" is required/],
      [{ limit_per_second: -1 }, /whole number >= 0.*got -1/],
      [{ limit_per_second: 1.5 }, /whole number >= 0.*got 1\.5/],
      [{ limit_per_second: '10' }, /got "10"/],
      [{ limit_per_second: null }, /got null/],
      [{ limit_per_second: 2 ** 60 }, /whole number/],
    ];
    for (const [body, message] of cases) {
      const res = await post(app, body);
      expect(res.statusCode, JSON.stringify(body)).toBe(400);
      expect(res.json().error.code).toBe('invalid_request');
      expect(res.json().error.message).toMatch(message);
    }
    expect((await app.inject({ method: 'GET', url: '/mesh/rate-limit' })).json()).toEqual({
      limit_per_second: 0,
    });
    await app.close();
  });

  it('store the limit in the replicated registry: set on one peer, read and enforced on another', async () => {
    const clock = new ManualClock(28_333 * 60_000);
    const [a, b] = pair(clock);
    const appA = await meshApp(a);
    const appB = await meshApp(b);
    const set = await post(appA, { limit_per_second: 3 });
    expect(set.statusCode).toBe(200);
    expect(set.json()).toEqual({ limit_per_second: 3 });
    expect((await appB.inject({ method: 'GET', url: '/mesh/rate-limit' })).json()).toEqual({
      limit_per_second: 3,
    });
    // a /mesh/config value like any other (hex), so it survives restarts with the document
    expect(decodeGlobalRateLimit(b.doc.config().get(GLOBAL_RATE_LIMIT_CONFIG_KEY))).toBe(3);
    const { admit } = admissionFor(b, clock);
    expect([admit(), admit(), admit()].every((r) => r.ticket !== undefined)).toBe(true);
    expect(admit().err?.status).toBe(429);
    // 0 removes the limit everywhere
    expect((await post(appB, { limit_per_second: 0 })).json()).toEqual({ limit_per_second: 0 });
    expect(a.doc.config().has(GLOBAL_RATE_LIMIT_CONFIG_KEY)).toBe(false);
    expect(admit().ticket).toBeDefined();
    await appA.close();
    await appB.close();
  });

  it('stats: the cluster estimate over the last second and what remains (-1 when unlimited)', async () => {
    const clock = new ManualClock(28_333 * 60_000);
    const [a, b] = pair(clock);
    const app = await meshApp(a);
    const stats = async () => (await app.inject({ method: 'GET', url: '/mesh/rate-limit/stats' })).json();
    expect(await stats()).toEqual({ limit_per_second: 0, current_count: 0, remaining: -1 });
    const onA = admissionFor(a, clock);
    const onB = admissionFor(b, clock);
    // requests count without a limit too: the stats show the rate, a new limit starts from it
    onA.admit();
    expect(await stats()).toEqual({ limit_per_second: 0, current_count: 1, remaining: -1 });
    await post(app, { limit_per_second: 10 });
    onA.admit();
    onB.admit();
    // b's admission reaches a with its slot (the mesh's takeDirty)
    for (const ev of b.globalRate.takeDirty()) a.apply(ev);
    expect(await stats()).toEqual({ limit_per_second: 10, current_count: 3, remaining: 7 });
    // the estimate slides: half a second into the next window, half of the last one still counts
    clock.advance(1500 - (clock.t % 1000));
    expect(await stats()).toEqual({ limit_per_second: 10, current_count: 2, remaining: 8 });
    clock.advance(1000);
    expect(await stats()).toEqual({ limit_per_second: 10, current_count: 0, remaining: 10 });
    await app.close();
  });
});

describe('global rate limit in admission', () => {
  const limited = (limit: number) => {
    const clock = new ManualClock(28_333 * 60_000);
    const replica = new Replica({ nodeId: 'n', now: clock.now });
    replica.writeRegistry((d) => d.setConfig(GLOBAL_RATE_LIMIT_CONFIG_KEY, encodeGlobalRateLimit(limit)));
    return { clock, replica };
  };

  it('is off unless asked for; with it, admission exists even with every other feature off', () => {
    const replica = new Replica({ nodeId: 'n' });
    const deps = { metrics: new Metrics(), logger, replica };
    expect(Admission.fromConfig(OFF, deps)).toBeUndefined();
    const a = Admission.fromConfig(OFF, { ...deps, globalRateLimit: true });
    expect(a?.stats()).toEqual({ mode: 'none', globalRateLimit: { limitPerSecond: 0 } });
  });

  it('answers 429 rate_limit_exceeded with Retry-After over the limit, and admits again as the window slides', () => {
    const { clock, replica } = limited(5);
    const { admit } = admissionFor(replica, clock);
    for (let i = 0; i < 5; i++) expect(admit().ticket).toBeDefined();
    const err = admit().err;
    expect(err?.status).toBe(429);
    expect(err?.code).toBe('rate_limit_exceeded');
    expect(err?.message).toContain('5 requests per second');
    // all 5 in this window (which just began): room when a fifth of them has faded, 1.2 s from now
    expect(err?.headers['retry-after']).toBe('2');
    expect(replica.globalRate.estimate('global').requests).toBe(5);
    clock.advance(1000 - (clock.t % 1000) + 200);
    // 20% into the next window: 5 × 0.8 = 4 still count, room for one
    expect(admit().ticket).toBeDefined();
    expect(admit().err?.status).toBe(429);
  });

  it('counts only admitted requests: refused by a tenant limit, the queue or the client costs nothing', () => {
    const { clock, replica } = limited(100);
    const { admit } = admissionFor(
      replica,
      clock,
      { tenantRateLimit: true, maxConcurrentRequests: 1, queueSize: 1, queueTimeoutSecs: 1 },
      { tenantRules: { default_policy: { requests_per_minute: 3 } } },
    );
    const count = () => replica.globalRate.estimate('global').requests;
    const first = admit('auth:t');
    expect(first.ticket).toBeDefined();
    expect(count()).toBe(1);
    const queued = admit('auth:t');
    expect(count()).toBe(2); // pending while it waits
    expect(admit('auth:t').err?.code).toBe('rate_limit_exceeded'); // the queue is full
    expect(count()).toBe(2);
    clock.advance(1000);
    expect(queued.err?.status).toBe(408);
    const cancelled = admit('auth:t');
    cancelled.cancel?.();
    first.ticket?.release();
    // the tenant's 3 per minute: first, and the queued and cancelled ones were refunded
    const second = admit('auth:t');
    second.ticket?.release();
    const third = admit('auth:t');
    third.ticket?.release();
    expect(admit('auth:t').err?.code).toBe('tenant_rate_limit_exceeded');
    // the cluster counter holds the three admitted requests only: first in the previous window,
    // second and third in this one
    const w = Math.floor(clock.t / 1000);
    expect(replica.globalRate.exportState()).toEqual([
      [
        'global',
        [
          [w - 1, [['n', 1, 0]]],
          [w, [['n', 2, 0]]],
        ],
      ],
    ]);
    expect(count()).toBeCloseTo(3);
  });

  it('in a 3-peer mesh a peer with all the traffic still reaches ~the limit within a window', () => {
    const { clock, replica } = limited(100);
    replica.globalRate.setPeers(3);
    const { admit } = admissionFor(replica, clock);
    // one window at 500 requests/s, the mesh handing the slots out every 50 ms
    clock.advance(1000 - (clock.t % 1000));
    let n = 0;
    for (let ms = 0; ms < 1000; ms += 2) {
      if (ms % 50 === 0) replica.globalRate.takeDirty();
      if (admit().ticket) n++;
      clock.advance(2);
    }
    expect(n).toBeGreaterThanOrEqual(90);
    expect(n).toBeLessThanOrEqual(100);
  });
});
