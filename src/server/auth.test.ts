import { createHash } from 'node:crypto';
import type { IncomingHttpHeaders } from 'node:http';
import { Writable } from 'node:stream';
import Fastify from 'fastify';
import pino from 'pino';
import { describe, expect, it } from 'vitest';
import type { AuthConfig } from '../cli/config-types.js';
import { Metrics } from '../observability/metrics.js';
import { SmgError } from '../protocols/errors.js';
import { Auth, controlPlaneHook, isControlPlaneRoute, presentedKey, principalOf } from './auth.js';
import { makeErrorHandler } from './error-handler.js';

const SHARED = 'shared-secret-0001';
const RED = 'team-red-secret-0002';
const BLUE = 'team-blue-secret-0003';
const ADMIN = 'cp-admin-secret-0004';
const USER = 'cp-user-secret-0005';
const ALL_KEYS = [SHARED, RED, BLUE, ADMIN, USER];

const hex = (s: string) => createHash('sha256').update(s).digest('hex');

function cfg(over: Partial<AuthConfig> = {}): AuthConfig {
  return {
    tenantApiKeys: [],
    trustTenantHeader: false,
    tenantHeaderName: 'x-smg-tenant-id',
    controlPlaneApiKeys: [],
    disableAuditLogging: false,
    ...over,
  };
}

const FULL: Partial<AuthConfig> = {
  apiKey: SHARED,
  tenantApiKeys: [
    { tenant: 'team-red', key: RED },
    { tenant: 'team-blue', key: BLUE },
  ],
  controlPlaneApiKeys: [
    { id: 'ops', name: 'Ops bot', role: 'admin', key: ADMIN },
    { id: 'dash', name: 'Dashboard', role: 'user', key: USER },
  ],
};

/** an Auth whose pino output lands in memory, with its own metrics registry */
function make(over: Partial<AuthConfig> = {}) {
  let text = '';
  const out = new Writable({
    write(chunk: Buffer, _enc, cb) {
      text += chunk.toString();
      cb();
    },
  });
  const logger = pino({ level: 'debug' }, out);
  const metrics = new Metrics();
  const auth = new Auth(cfg(over), { logger, metrics });
  const records = () =>
    text
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l) as Record<string, unknown>);
  const audits = () => records().filter((r) => r.msg === 'audit');
  const count = async (plane: string, result: string) => {
    const m = await metrics.authResults.get();
    return m.values.find((v) => v.labels.plane === plane && v.labels.result === result)?.value ?? 0;
  };
  return { auth, metrics, text: () => text, records, audits, count };
}

const bearer = (key: string): IncomingHttpHeaders => ({ authorization: `Bearer ${key}` });

/** runs fn, expecting an SmgError, and returns it */
function failure(fn: () => unknown): SmgError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(SmgError);
    return err as SmgError;
  }
  throw new Error('expected an SmgError, got none');
}

const req = (
  over: Partial<{ method: string; url: string; remoteAddress: string; requestId: string }> = {},
) => ({
  method: 'GET',
  url: '/workers',
  ...over,
});

describe('presentedKey', () => {
  it('reads Bearer (any scheme case) and x-api-key; Bearer wins when both are sent', () => {
    expect(presentedKey({ authorization: 'Bearer abc' })).toBe('abc');
    expect(presentedKey({ authorization: 'bearer abc' })).toBe('abc');
    expect(presentedKey({ authorization: 'BEARER   abc' })).toBe('abc');
    expect(presentedKey({ 'x-api-key': ' abc ' })).toBe('abc');
    expect(presentedKey({ authorization: 'Bearer one', 'x-api-key': 'two' })).toBe('one');
  });

  it('treats empty or malformed credentials as missing', () => {
    expect(presentedKey({})).toBeUndefined();
    expect(presentedKey({ authorization: 'Bearer' })).toBeUndefined();
    expect(presentedKey({ authorization: 'Bearer    ' })).toBeUndefined();
    expect(presentedKey({ authorization: 'Bearerabc' })).toBeUndefined();
    expect(presentedKey({ authorization: 'Basic dXNlcjpwYXNz' })).toBeUndefined();
    expect(presentedKey({ authorization: 'Bearer caf\u00e9' })).toBeUndefined();
    expect(presentedKey({ 'x-api-key': '' })).toBeUndefined();
    expect(presentedKey({ 'x-api-key': '   ' })).toBeUndefined();
  });

  it('falls back to x-api-key when Authorization is not a usable Bearer', () => {
    expect(presentedKey({ authorization: 'Basic dXNlcjpwYXNz', 'x-api-key': 'k' })).toBe('k');
    expect(presentedKey({ authorization: 'Bearer ', 'x-api-key': 'k' })).toBe('k');
  });
});

describe('data plane', () => {
  it('is open without keys: tenant from IP, counted as open', async () => {
    const t = make();
    expect(t.auth.dataPlaneOpen).toBe(true);
    expect(t.auth.authenticateData({}, '10.1.2.3')).toBe('ip:10.1.2.3');
    expect(t.auth.authenticateData(bearer('whatever'), '10.1.2.3')).toBe('ip:10.1.2.3');
    expect(await t.count('data', 'open')).toBe(2);
  });

  it('accepts the shared key via Bearer and x-api-key, as a hash-derived tenant', async () => {
    const t = make({ apiKey: SHARED });
    expect(t.auth.dataPlaneOpen).toBe(false);
    const tenant = `auth:${hex(SHARED)}`;
    expect(t.auth.authenticateData(bearer(SHARED), '10.0.0.1')).toBe(tenant);
    expect(t.auth.authenticateData({ 'x-api-key': SHARED }, '10.0.0.1')).toBe(tenant);
    expect(await t.count('data', 'allowed')).toBe(2);
  });

  it('maps tenant keys to their tenants', () => {
    const t = make(FULL);
    expect(t.auth.authenticateData(bearer(RED), undefined)).toBe('auth:team-red');
    expect(t.auth.authenticateData({ 'x-api-key': BLUE }, undefined)).toBe('auth:team-blue');
  });

  it('lets a tenant key win over an identical shared key', () => {
    const t = make({ apiKey: RED, tenantApiKeys: [{ tenant: 'team-red', key: RED }] });
    expect(t.auth.authenticateData(bearer(RED), undefined)).toBe('auth:team-red');
    // and says so at start-up, naming the identity but never the key
    expect(
      t.records().some((r) => r.msg === 'the same API key is configured twice; the last entry wins'),
    ).toBe(true);
  });

  it('answers a missing key with 401 and a data-plane challenge', async () => {
    const t = make(FULL);
    const e = failure(() => t.auth.authenticateData({}, '10.0.0.1'));
    expect(e.status).toBe(401);
    expect(e.code).toBe('unauthorized');
    expect(e.headers['www-authenticate']).toBe('Bearer realm="data-plane"');
    expect(await t.count('data', 'denied_missing')).toBe(1);
  });

  it('answers an unknown key with 401 and a data-plane challenge', async () => {
    const t = make(FULL);
    const e = failure(() => t.auth.authenticateData(bearer('nope'), '10.0.0.1'));
    expect(e.status).toBe(401);
    expect(e.headers['www-authenticate']).toBe('Bearer realm="data-plane"');
    expect(await t.count('data', 'denied_invalid')).toBe(1);
  });

  it('does not accept control-plane keys on the data plane (SMG keeps the planes apart)', () => {
    const t = make(FULL);
    expect(failure(() => t.auth.authenticateData(bearer(ADMIN), undefined)).status).toBe(401);
    expect(failure(() => t.auth.authenticateData(bearer(USER), undefined)).status).toBe(401);
  });

  it('stays open when only control-plane keys are configured', () => {
    const t = make({ controlPlaneApiKeys: FULL.controlPlaneApiKeys });
    expect(t.auth.dataPlaneOpen).toBe(true);
    expect(t.auth.authenticateData({}, '10.0.0.9')).toBe('ip:10.0.0.9');
  });
});

describe('tenant resolution', () => {
  it('uses the tenant header only when trusted', () => {
    const h = { 'x-smg-tenant-id': 'acme' };
    expect(make().auth.resolveTenant(h, '10.0.0.1')).toBe('ip:10.0.0.1');
    expect(make({ trustTenantHeader: true }).auth.resolveTenant(h, '10.0.0.1')).toBe('header:acme');
  });

  it('honours a custom header name, case-insensitively', () => {
    const t = make({ trustTenantHeader: true, tenantHeaderName: 'X-Org-Id' });
    expect(t.auth.resolveTenant({ 'x-org-id': 'org-7' }, undefined)).toBe('header:org-7');
    expect(t.auth.resolveTenant({ 'x-smg-tenant-id': 'acme' }, undefined)).toBe('anonymous');
  });

  it('sanitises the header: trimmed, at most 128 chars of [A-Za-z0-9._:@-], else ignored', () => {
    const t = make({ trustTenantHeader: true });
    const r = (v: string) => t.auth.resolveTenant({ 'x-smg-tenant-id': v }, '10.0.0.1');
    expect(r('  team.a:b@c-d_e  ')).toBe('header:team.a:b@c-d_e');
    expect(r('x'.repeat(128))).toBe(`header:${'x'.repeat(128)}`);
    expect(r('x'.repeat(129))).toBe('ip:10.0.0.1');
    expect(r('')).toBe('ip:10.0.0.1');
    expect(r('a b')).toBe('ip:10.0.0.1');
    expect(r('a,b')).toBe('ip:10.0.0.1');
    expect(r('a\u00e9')).toBe('ip:10.0.0.1');
    expect(r('a"}{')).toBe('ip:10.0.0.1');
    // a repeated header arrives as "a, b": ambiguous, so ignored
    expect(r('a, b')).toBe('ip:10.0.0.1');
  });

  it('prefers the authenticated tenant over a trusted header', () => {
    const t = make({ ...FULL, trustTenantHeader: true });
    const h = { ...bearer(RED), 'x-smg-tenant-id': 'someone-else' };
    expect(t.auth.authenticateData(h, '10.0.0.1')).toBe('auth:team-red');
  });

  it('uses the header through authenticateData on an open data plane', () => {
    const t = make({ trustTenantHeader: true });
    expect(t.auth.authenticateData({ 'x-smg-tenant-id': 'acme' }, '10.0.0.1')).toBe('header:acme');
  });

  it('falls back to the client IP (IPv4-mapped shown as IPv4), then anonymous', () => {
    const t = make();
    expect(t.auth.resolveTenant({}, '::ffff:192.168.1.20')).toBe('ip:192.168.1.20');
    expect(t.auth.resolveTenant({}, '::FFFF:192.168.1.20')).toBe('ip:192.168.1.20');
    expect(t.auth.resolveTenant({}, '2001:db8::1')).toBe('ip:2001:db8::1');
    expect(t.auth.resolveTenant({}, '::1')).toBe('ip:::1');
    expect(t.auth.resolveTenant({}, undefined)).toBe('anonymous');
    expect(t.auth.resolveTenant({}, '')).toBe('anonymous');
  });
});

describe('control plane', () => {
  it('is open without any key: an admin principal from source open', async () => {
    const t = make();
    const p = t.auth.authenticateControl({}, req());
    expect(p).toEqual({ id: 'anonymous', name: 'open', role: 'admin', source: 'open' });
    expect(await t.count('control', 'open')).toBe(1);
  });

  it('allows an admin control-plane key', async () => {
    const t = make(FULL);
    const p = t.auth.authenticateControl(bearer(ADMIN), req());
    expect(p).toEqual({ id: 'ops', name: 'Ops bot', role: 'admin', source: 'control-plane-key' });
    expect(await t.count('control', 'allowed')).toBe(1);
  });

  it('allows the shared --api-key as an admin only while no control-plane keys exist (as SMG)', () => {
    const t = make({ apiKey: SHARED });
    expect(t.auth.authenticateControl(bearer(SHARED), req())).toMatchObject({
      role: 'admin',
      source: 'api-key',
    });
    expect(t.auth.authenticateControl({ 'x-api-key': SHARED }, req()).source).toBe('api-key');
    expect(failure(() => make(FULL).auth.authenticateControl(bearer(SHARED), req())).status).toBe(401);
  });

  it('answers a user-role key with 403', async () => {
    const t = make(FULL);
    const e = failure(() => t.auth.authenticateControl(bearer(USER), req({ method: 'POST' })));
    expect(e.status).toBe(403);
    expect(e.code).toBe('forbidden');
    expect(e.headers['www-authenticate']).toBeUndefined();
    expect(await t.count('control', 'denied_role')).toBe(1);
  });

  it('answers missing and unknown keys with 401 and a control-plane challenge', async () => {
    const t = make(FULL);
    for (const h of [{}, bearer('nope'), { authorization: 'Basic Zm9vOmJhcg==' }]) {
      const e = failure(() => t.auth.authenticateControl(h, req()));
      expect(e.status).toBe(401);
      expect(e.headers['www-authenticate']).toBe('Bearer realm="control-plane"');
    }
    expect(await t.count('control', 'denied_missing')).toBe(2);
    expect(await t.count('control', 'denied_invalid')).toBe(1);
  });

  it('never lets a tenant key reach the control plane', () => {
    const t = make(FULL);
    expect(failure(() => t.auth.authenticateControl(bearer(RED), req())).status).toBe(401);
    const shared = make({ apiKey: SHARED, tenantApiKeys: FULL.tenantApiKeys });
    expect(failure(() => shared.auth.authenticateControl(bearer(RED), req())).status).toBe(401);
    expect(shared.auth.authenticateControl(bearer(SHARED), req()).source).toBe('api-key');
  });

  it('denies everything when only tenant keys are configured', async () => {
    const t = make({ tenantApiKeys: FULL.tenantApiKeys });
    for (const h of [{}, bearer(RED), bearer(BLUE), bearer('nope')]) {
      const e = failure(() => t.auth.authenticateControl(h, req()));
      expect(e.status).toBe(401);
      expect(e.headers['www-authenticate']).toBe('Bearer realm="control-plane"');
      expect(e.message).toMatch(/only tenant API keys/);
    }
    expect(await t.count('control', 'denied_missing')).toBe(1);
    expect(await t.count('control', 'denied_invalid')).toBe(3);
    expect(t.audits().every((a) => a.reason === 'control_plane_disabled')).toBe(true);
  });

  it('rejects a JWT-looking bearer (JWT is not implemented)', () => {
    const t = make(FULL);
    const jwt = 'eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl';
    const e = failure(() => t.auth.authenticateControl(bearer(jwt), req()));
    expect(e.status).toBe(401);
    expect(e.message).toMatch(/JWT/);
    expect(t.audits()[0]).toMatchObject({ decision: 'deny', reason: 'jwt_not_supported' });
  });
});

describe('audit log', () => {
  it('writes one line per control-plane call with the documented fields', () => {
    const t = make(FULL);
    t.auth.authenticateControl(bearer(ADMIN), {
      method: 'DELETE',
      url: '/workers/abc?force=1',
      remoteAddress: '::ffff:10.9.8.7',
      requestId: 'req-1',
    });
    failure(() => t.auth.authenticateControl(bearer(USER), req({ method: 'POST', url: '/flush_cache' })));
    failure(() => t.auth.authenticateControl({}, req({ requestId: 'req-3' })));
    failure(() => t.auth.authenticateControl(bearer('nope'), req()));
    const a = t.audits();
    expect(a).toHaveLength(4);
    for (const line of a) expect(line.level).toBe(30);
    const strip = (r: Record<string, unknown>) => {
      const { level: _l, time: _t, pid: _p, hostname: _h, msg: _m, ...rest } = r;
      return rest;
    };
    expect(strip(a[0])).toEqual({
      audit: true,
      plane: 'control',
      decision: 'allow',
      principal_id: 'ops',
      principal_name: 'Ops bot',
      role: 'admin',
      method: 'DELETE',
      path: '/workers/abc',
      request_id: 'req-1',
      remote_addr: '10.9.8.7',
    });
    expect(strip(a[1])).toEqual({
      audit: true,
      plane: 'control',
      decision: 'deny',
      reason: 'admin_role_required',
      principal_id: 'dash',
      principal_name: 'Dashboard',
      role: 'user',
      method: 'POST',
      path: '/flush_cache',
    });
    expect(strip(a[2])).toEqual({
      audit: true,
      plane: 'control',
      decision: 'deny',
      reason: 'missing_credentials',
      method: 'GET',
      path: '/workers',
      request_id: 'req-3',
    });
    expect(a[3]).toMatchObject({ decision: 'deny', reason: 'invalid_credentials' });
  });

  it('audits open-mode calls as allowed with reason open', () => {
    const t = make();
    t.auth.authenticateControl({}, req());
    expect(t.audits()[0]).toMatchObject({
      decision: 'allow',
      reason: 'open',
      role: 'admin',
      principal_id: 'anonymous',
    });
  });

  it('writes nothing with disableAuditLogging, but still counts', async () => {
    const t = make({ ...FULL, disableAuditLogging: true });
    t.auth.authenticateControl(bearer(ADMIN), req());
    failure(() => t.auth.authenticateControl({}, req()));
    expect(t.audits()).toHaveLength(0);
    expect(await t.count('control', 'allowed')).toBe(1);
    expect(await t.count('control', 'denied_missing')).toBe(1);
  });

  it('never logs key material, whatever happens', () => {
    const t = make({ ...FULL, apiKey: SHARED, trustTenantHeader: true });
    const attempts: IncomingHttpHeaders[] = [
      ...ALL_KEYS.map(bearer),
      ...ALL_KEYS.map((k) => ({ 'x-api-key': k })),
      bearer('wrong-key-0006'),
      bearer(`${ADMIN}.x.y`),
    ];
    for (const h of attempts) {
      for (const url of ['/workers', `/workers?api_key=${ADMIN}`]) {
        try {
          t.auth.authenticateControl(h, { method: 'POST', url, remoteAddress: '10.0.0.1' });
        } catch {
          // denials are expected; only the log matters here
        }
      }
      try {
        t.auth.authenticateData(h, '10.0.0.1');
      } catch {
        // idem
      }
    }
    const log = t.text();
    expect(t.audits().length).toBe(attempts.length * 2);
    for (const k of [...ALL_KEYS, 'wrong-key-0006']) {
      expect(log).not.toContain(k);
      expect(log).not.toContain(hex(k));
    }
  });
});

describe('configuration', () => {
  it('refuses empty or unsendable keys instead of silently opening or locking out', () => {
    const logger = pino({ level: 'silent' });
    expect(() => new Auth(cfg({ apiKey: '' }), { logger })).toThrow(/--api-key is empty/);
    expect(() => new Auth(cfg({ tenantApiKeys: [{ tenant: 't', key: ' ' }] }), { logger })).toThrow(/empty/);
    expect(
      () =>
        new Auth(cfg({ controlPlaneApiKeys: [{ id: 'x', name: 'X', role: 'admin', key: 'caf\u00e9' }] }), {
          logger,
        }),
    ).toThrow(/non-ASCII/);
  });

  it('works without metrics', () => {
    const auth = new Auth(cfg({ apiKey: SHARED }), { logger: pino({ level: 'silent' }) });
    expect(auth.authenticateData(bearer(SHARED), undefined)).toMatch(/^auth:[0-9a-f]{64}$/);
    expect(failure(() => auth.authenticateData({}, undefined)).status).toBe(401);
  });
});

describe('isControlPlaneRoute', () => {
  it.each([
    ['/workers', 'GET', true],
    ['/workers', 'POST', true],
    ['/workers/', 'GET', true],
    ['/workers/:id', 'DELETE', true],
    ['/workers/0f3c/extra', 'PATCH', true],
    ['/workers?model=m', 'GET', true],
    ['/flush_cache', 'POST', true],
    ['/get_loads', 'GET', true],
    ['/start_profile', 'POST', true],
    ['/stop_profile', 'POST', true],
    ['/mesh/status', 'GET', true],
    ['/mesh/config/:key', 'POST', true],
    ['/mesh', 'GET', true],
    ['/workers', 'OPTIONS', false],
    ['/workersx', 'GET', false],
    ['/meshy', 'GET', false],
    ['/health', 'GET', false],
    ['/v1/models', 'GET', false],
    ['/v1/chat/completions', 'POST', false],
    ['/', 'GET', false],
  ])('%s %s ⇒ %s', (path, method, expected) => {
    expect(isControlPlaneRoute(path, method)).toBe(expected);
  });
});

describe('controlPlaneHook in a fastify app', () => {
  async function app(over: Partial<AuthConfig>) {
    const t = make(over);
    const a = Fastify();
    a.setErrorHandler(makeErrorHandler(1024));
    // like app.ts: an earlier hook sets response headers that an auth failure must keep
    a.addHook('onRequest', async (r, reply) => {
      reply.header('x-request-id', r.id);
    });
    a.addHook('onRequest', controlPlaneHook(t.auth, isControlPlaneRoute));
    a.get('/workers', async (r) => ({ workers: [], who: principalOf(r)?.id ?? null }));
    a.get('/workers/:id', async (r) => ({ id: (r.params as { id: string }).id }));
    a.post('/flush_cache', async () => ({ message: 'flushed' }));
    a.get('/health', async (r) => ({ ok: true, who: principalOf(r)?.id ?? null }));
    a.options('/workers', async (_r, reply) => reply.code(204).send());
    await a.ready();
    return { a, t };
  }

  it('answers 401 with the SMG error code and challenge, 403 for a user key, 200 for an admin', async () => {
    const { a, t } = await app(FULL);
    const none = await a.inject({ method: 'POST', url: '/flush_cache' });
    expect(none.statusCode).toBe(401);
    expect(none.headers['www-authenticate']).toBe('Bearer realm="control-plane"');
    expect(none.headers['x-smg-error-code']).toBe('unauthorized');
    expect(none.headers['x-request-id']).toBeTruthy();
    expect(none.json()).toMatchObject({ error: { type: 'Unauthorized', code: 'unauthorized' } });

    const wrong = await a.inject({ method: 'GET', url: '/workers', headers: bearer('nope') });
    expect(wrong.statusCode).toBe(401);
    // /workers keeps SMG's flat worker error body
    expect(wrong.json()).toEqual({ error: 'Invalid API key', code: 'unauthorized' });

    const user = await a.inject({ method: 'POST', url: '/flush_cache', headers: bearer(USER) });
    expect(user.statusCode).toBe(403);
    expect(user.headers['x-smg-error-code']).toBe('forbidden');
    expect(user.headers['www-authenticate']).toBeUndefined();

    const admin = await a.inject({ method: 'GET', url: '/workers', headers: bearer(ADMIN) });
    expect(admin.statusCode).toBe(200);
    expect(admin.json()).toEqual({ workers: [], who: 'ops' });

    const param = await a.inject({ method: 'GET', url: '/workers/abc', headers: { 'x-api-key': ADMIN } });
    expect(param.statusCode).toBe(200);

    expect(t.audits().map((l) => [l.decision, l.path, l.remote_addr])).toEqual([
      ['deny', '/flush_cache', '127.0.0.1'],
      ['deny', '/workers', '127.0.0.1'],
      ['deny', '/flush_cache', '127.0.0.1'],
      ['allow', '/workers', '127.0.0.1'],
      ['allow', '/workers/abc', '127.0.0.1'],
    ]);
    expect(t.audits().every((l) => typeof l.request_id === 'string')).toBe(true);
    await a.close();
  });

  it('leaves non-control routes and CORS preflights alone', async () => {
    const { a, t } = await app(FULL);
    const health = await a.inject({ method: 'GET', url: '/health' });
    expect(health.statusCode).toBe(200);
    expect(health.json()).toEqual({ ok: true, who: null });
    const preflight = await a.inject({ method: 'OPTIONS', url: '/workers' });
    expect(preflight.statusCode).toBe(204);
    expect(t.audits()).toHaveLength(0);
    await a.close();
  });

  it('guards unmatched control-plane paths too (401, not a revealing 404)', async () => {
    const { a } = await app(FULL);
    expect((await a.inject({ method: 'GET', url: '/mesh/status' })).statusCode).toBe(401);
    expect((await a.inject({ method: 'GET', url: '/mesh/status', headers: bearer(ADMIN) })).statusCode).toBe(
      404,
    );
    expect((await a.inject({ method: 'GET', url: '/nothing-here' })).statusCode).toBe(404);
    await a.close();
  });

  it('lets everything through when no key is configured', async () => {
    const { a } = await app({});
    const r = await a.inject({ method: 'POST', url: '/flush_cache' });
    expect(r.statusCode).toBe(200);
    expect((await a.inject({ method: 'GET', url: '/workers' })).json()).toEqual({
      workers: [],
      who: 'anonymous',
    });
    await a.close();
  });
});
