import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { Metrics } from '../../observability/metrics.js';
import { SmgError } from '../../protocols/errors.js';
import { RateLimitUsage } from '../../state/rate-limit.js';
import { Replica } from '../../state/replica.js';
import {
  TenantLease,
  TenantRateLimiter,
  loadTenantRateLimitConfig,
  parseTenantRateLimitConfig,
  tenantKeyProblem,
  validateTenantRules,
  type TenantRateLimitRules,
} from './tenant-limits.js';

const W = 60_000;
const T0 = 28_333 * W;

function limiter(rules: TenantRateLimitRules, clock = { t: T0 }, metrics?: Metrics) {
  const usage = new RateLimitUsage('n1', { windowMs: W, now: () => clock.t });
  return { lim: new TenantRateLimiter(rules, { usage, now: () => clock.t, metrics }), usage, clock };
}

function lease(r: TenantLease | SmgError | undefined): TenantLease {
  if (!(r instanceof TenantLease)) throw new Error(`expected a lease, got ${String(r)}`);
  return r;
}

function rejection(r: TenantLease | SmgError | undefined): SmgError {
  if (!(r instanceof SmgError)) throw new Error(`expected a rejection, got ${String(r)}`);
  return r;
}

describe('tenant rate limits: enforcement', () => {
  it('enforces requests per minute with Retry-After until the sliding window admits', () => {
    const { lim, clock } = limiter({ default_policy: { requests_per_minute: 3 } });
    for (let i = 0; i < 3; i++) lease(lim.reserve('auth:a', 10)).commit();
    const err = rejection(lim.reserve('auth:a', 10));
    expect(err.status).toBe(429);
    expect(err.code).toBe('tenant_rate_limit_exceeded');
    expect(err.message).toContain('3 requests per minute');
    // all 3 requests sit in the current window: room comes when a third of them has faded from
    // the look-back in the next window, i.e. 1/3 into it: 60 s + 20 s
    expect(err.headers['retry-after']).toBe('80');
    // other tenants have their own scope
    expect(lim.reserve('auth:b', 10)).toBeInstanceOf(TenantLease);
    clock.t = T0 + W + 20_000;
    expect(lim.reserve('auth:a', 10)).toBeInstanceOf(TenantLease);
  });

  it('enforces tokens per minute on the estimate, then on the real usage once settled', () => {
    const { lim, clock } = limiter({ default_policy: { tokens_per_minute: 1000 } });
    const a = lease(lim.reserve('auth:a', 600));
    a.commit();
    // 600 reserved: 500 more would exceed
    const err = rejection(lim.reserve('auth:a', 500));
    expect(err.message).toContain('1000 tokens per minute');
    // the request really used 100 tokens: the rest comes back
    a.settle(100);
    a.settle(5000); // idempotent
    clock.t += 1000;
    const b = lease(lim.reserve('auth:a', 850));
    b.settle(850);
    expect(rejection(lim.reserve('auth:a', 100)).headers['retry-after']).toBeDefined();
  });

  it('a request refused later gives its reservation back; a committed one keeps its request', () => {
    const { lim, usage } = limiter({ default_policy: { requests_per_minute: 1, tokens_per_minute: 100 } });
    const a = lease(lim.reserve('auth:a', 80));
    expect(rejection(lim.reserve('auth:a', 1))).toBeInstanceOf(SmgError);
    a.cancel();
    a.commit(); // after cancel: nothing
    expect(usage.estimate('tenant:auth:a', T0)).toEqual({ requests: 0, tokens: 0 });
    const b = lease(lim.reserve('auth:a', 80));
    b.commit();
    b.cancel(); // too late to cancel: the request was admitted
    expect(usage.estimate('tenant:auth:a', T0)).toEqual({ requests: 1, tokens: 80 });
    b.settle(30);
    expect(usage.estimate('tenant:auth:a', T0)).toEqual({ requests: 1, tokens: 30 });
  });

  it('a request larger than the whole token limit runs only in an idle window', () => {
    const { lim, clock } = limiter({ default_policy: { tokens_per_minute: 100 } });
    const big = lease(lim.reserve('auth:a', 5000));
    expect(rejection(lim.reserve('auth:a', 5000))).toBeInstanceOf(SmgError);
    big.settle(5000);
    clock.t += 2 * W;
    expect(lim.reserve('auth:a', 5000)).toBeInstanceOf(TenantLease);
  });

  it('model rules: exact match first, then the longest prefix; each rule is its own scope', () => {
    const rules: TenantRateLimitRules = {
      default_policy: {
        model_rules: [
          { rule_id: 'llama', matcher: { type: 'prefix', value: 'llama' }, requests_per_minute: 1 },
          { rule_id: 'llama-3', matcher: { type: 'prefix', value: 'llama-3' }, requests_per_minute: 2 },
          { rule_id: 'exact', matcher: { type: 'exact', value: 'llama-3-8b' }, requests_per_minute: 3 },
        ],
      },
    };
    const { lim } = limiter(rules);
    const count = (model: string) => {
      let n = 0;
      while (lim.reserveModel('auth:a', model, 1) instanceof TenantLease) n++;
      return n;
    };
    expect(count('llama-3-8b')).toBe(3);
    expect(count('llama-3-70b')).toBe(2);
    expect(count('llama-2')).toBe(1);
    // no rule and no tenant-wide limit: unlimited, no lease at all
    expect(lim.reserveModel('auth:a', 'mistral', 1)).toBeUndefined();
    expect(lim.reserveModel('auth:a', '', 1)).toBeUndefined();
    expect(lim.reserve('auth:a', 1)).toBeUndefined();
    const err = rejection(lim.reserveModel('auth:a', 'llama-3-8b', 1));
    expect(err.message).toContain('model rule exact');
  });

  it('a tenant entry replaces the default policy for that tenant', () => {
    const { lim } = limiter({
      default_policy: { requests_per_minute: 1 },
      tenants: [{ tenant_key: 'auth:big', requests_per_minute: 5 }],
    });
    let n = 0;
    while (lim.reserve('auth:big', 1) instanceof TenantLease) n++;
    expect(n).toBe(5);
    n = 0;
    while (lim.reserve('ip:10.0.0.1', 1) instanceof TenantLease) n++;
    expect(n).toBe(1);
  });

  it('the tenant scope and the model rule are separate scopes: a rule leaves the tenant scope alone', () => {
    const { lim, usage } = limiter({
      default_policy: {
        requests_per_minute: 10,
        model_rules: [{ rule_id: 'g', matcher: { type: 'exact', value: 'g' }, tokens_per_minute: 100 }],
      },
    });
    lease(lim.reserve('auth:a', 90)).commit();
    lease(lim.reserveModel('auth:a', 'g', 90)).commit();
    expect(rejection(lim.reserveModel('auth:a', 'g', 20)).message).toContain(
      '100 tokens per minute (model rule g)',
    );
    expect(usage.estimate('tenant:auth:a', T0).requests).toBe(1);
    expect(usage.estimate('rule:g:auth:a', T0).requests).toBe(1);
    expect(lim.reserveModel('auth:a', 'other', 20)).toBeUndefined();
  });

  it('counts decisions by scope', async () => {
    const metrics = new Metrics();
    const { lim } = limiter(
      {
        default_policy: {
          requests_per_minute: 1,
          model_rules: [{ rule_id: 'r', matcher: { type: 'exact', value: 'm' }, requests_per_minute: 5 }],
        },
      },
      { t: T0 },
      metrics,
    );
    lim.reserve('auth:a', 1);
    lim.reserveModel('auth:a', 'm', 1);
    lim.reserve('auth:a', 1);
    const values = (await metrics.tenantRateLimit.get()).values.map((v) => [
      v.labels.result,
      v.labels.scope,
      v.value,
    ]);
    expect(values).toEqual(
      expect.arrayContaining([
        ['allowed', 'tenant', 1],
        ['allowed', 'model_rule', 1],
        ['rejected', 'tenant', 1],
      ]),
    );
  });

  it('two nodes that exchange their slots respect one limit together', () => {
    const clock = { t: T0 };
    const rules: TenantRateLimitRules = { default_policy: { requests_per_minute: 10 } };
    const nodes = ['a', 'b'].map((id) => {
      const replica = new Replica({ nodeId: id, now: () => clock.t, rateLimitWindowMs: W });
      return {
        replica,
        lim: new TenantRateLimiter(rules, { usage: replica.rateLimits, now: () => clock.t }),
      };
    });
    const gossip = () => {
      for (const from of nodes) {
        for (const ev of from.replica.rateLimits.takeDirty()) {
          for (const to of nodes) if (to !== from) to.replica.apply(ev);
        }
      }
    };
    let admitted = 0;
    for (let i = 0; i < 40; i++) {
      const r = nodes[i % 2].lim.reserve('auth:t', 1);
      if (r instanceof TenantLease) {
        r.commit();
        admitted++;
      }
      gossip();
    }
    expect(admitted).toBe(10);
    // a node alone (no gossip) would admit its own 10: the sum is what limits
    expect(nodes[0].replica.rateLimits.estimate('tenant:auth:t').requests).toBe(10);
  });
});

describe('tenant rate limits: config file', () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'smg-tenant-limits-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  let n = 0;
  const file = (text: string) => {
    const p = path.join(dir, `rules-${n++}.yaml`);
    writeFileSync(p, text);
    return p;
  };

  it('loads a full file', () => {
    const p = file(`
default_policy:
  tokens_per_minute: 100000
  requests_per_minute: 600
  model_rules:
    - rule_id: gpt-4.x
      matcher: { type: prefix, value: gpt-4 }
      tokens_per_minute: 20000
tenants:
  - tenant_key: auth:acme
    requests_per_minute: 6000
  - tenant_key: ip:10.1.2.3
    tokens_per_minute: 10
  - tenant_key: ip:2001:db8::1
    requests_per_minute: 1
  - tenant_key: header:team-a
    requests_per_minute: 1
  - tenant_key: anonymous
    requests_per_minute: 1
`);
    const rules = loadTenantRateLimitConfig(p);
    expect(rules.default_policy).toEqual({
      tokens_per_minute: 100000,
      requests_per_minute: 600,
      model_rules: [
        { rule_id: 'gpt-4.x', matcher: { type: 'prefix', value: 'gpt-4' }, tokens_per_minute: 20000 },
      ],
    });
    expect(rules.tenants?.map((t) => t.tenant_key)).toEqual([
      'auth:acme',
      'ip:10.1.2.3',
      'ip:2001:db8::1',
      'header:team-a',
      'anonymous',
    ]);
    expect(() => validateTenantRules(rules, { trustTenantHeader: false })).toThrow(
      /"header:team-a".*--trust-tenant-header/,
    );
    expect(() => validateTenantRules(rules, { trustTenantHeader: true })).not.toThrow();
    expect(loadTenantRateLimitConfig(file('default_policy: {}\n'))).toEqual({ default_policy: {} });
  });

  const bad: [string, string, RegExp][] = [
    [
      'a repeated key',
      'default_policy: {}\ndefault_policy: {}\n',
      /invalid YAML: duplicate key "default_policy"/,
    ],
    ['a file over 1 MiB', `# ${'x'.repeat(1024 * 1024)}\n`, /the file is larger than 1 MiB/],
    ['not YAML', 'default_policy: [\n', /invalid YAML/],
    ['not a mapping', '- 1\n', /top level: expected a mapping/],
    ['no default policy', 'tenants: []\n', /default_policy: missing/],
    ['an unknown top-level key', 'default_policy: {}\nlimits: 1\n', /limits: unknown key/],
    ['an unknown policy key', 'default_policy: { rpm: 1 }\n', /default_policy\.rpm: unknown key/],
    [
      'a zero limit',
      'default_policy: { requests_per_minute: 0 }\n',
      /requests_per_minute: expected a whole number > 0/,
    ],
    [
      'a fractional limit',
      'default_policy: { tokens_per_minute: 1.5 }\n',
      /tokens_per_minute: expected a whole/,
    ],
    ['a string limit', 'default_policy: { tokens_per_minute: "10" }\n', /got "10"/],
    [
      'a bad rule id',
      'default_policy:\n  model_rules: [{ rule_id: "a b", matcher: { type: exact, value: m } }]\n',
      /model_rules\[0\]\.rule_id: expected \[A-Za-z0-9\._-\]\+/,
    ],
    [
      'a duplicate rule id',
      'default_policy:\n  model_rules:\n    - { rule_id: a, matcher: { type: exact, value: m } }\n    - { rule_id: a, matcher: { type: exact, value: n } }\n',
      /model_rules\[1\]\.rule_id: duplicate rule_id "a"/,
    ],
    [
      'a bad matcher type',
      'default_policy:\n  model_rules: [{ rule_id: a, matcher: { type: regex, value: m } }]\n',
      /matcher\.type: expected exact or prefix/,
    ],
    [
      'an empty matcher value',
      'default_policy:\n  model_rules: [{ rule_id: a, matcher: { type: prefix, value: "" } }]\n',
      /matcher\.value: expected a model id/,
    ],
    [
      'a duplicate matcher',
      'default_policy:\n  model_rules:\n    - { rule_id: a, matcher: { type: exact, value: m } }\n    - { rule_id: b, matcher: { type: exact, value: m } }\n',
      /model_rules\[1\]\.matcher: same matcher as rule "a"/,
    ],
    ['tenants not a list', 'default_policy: {}\ntenants: { a: 1 }\n', /tenants: expected a list/],
    [
      'a tenant without key',
      'default_policy: {}\ntenants: [{ requests_per_minute: 1 }]\n',
      /tenants\[0\]\.tenant_key: missing/,
    ],
    [
      'a non-canonical tenant key',
      'default_policy: {}\ntenants: [{ tenant_key: "acme", requests_per_minute: 1 }]\n',
      /tenants\[0\]\.tenant_key: "acme" is not a tenant key/,
    ],
    [
      'a bad IP tenant',
      'default_policy: {}\ntenants: [{ tenant_key: "ip:10.0.0.300" }]\n',
      /needs an IPv4 or IPv6 address/,
    ],
    [
      'a duplicate tenant',
      'default_policy: {}\ntenants: [{ tenant_key: anonymous }, { tenant_key: anonymous }]\n',
      /tenants\[1\]\.tenant_key: duplicate tenant "anonymous"/,
    ],
  ];
  for (const [what, text, message] of bad) {
    it(`rejects ${what} with the file and key named`, () => {
      const p = file(text);
      let thrown: Error | undefined;
      try {
        loadTenantRateLimitConfig(p);
      } catch (err) {
        thrown = err as Error;
      }
      expect(thrown?.message).toMatch(message);
      expect(thrown?.message).toContain(p);
    });
  }

  it('names a file it cannot read', () => {
    expect(() => loadTenantRateLimitConfig(path.join(dir, 'missing.yaml'))).toThrow(
      /missing\.yaml: cannot read/,
    );
  });

  it('parses an in-memory document the same way', () => {
    expect(() => parseTenantRateLimitConfig(null, 'admin API')).toThrow(/admin API: top level/);
  });

  it('knows the canonical tenant keys', () => {
    expect(tenantKeyProblem('auth:abc')).toBeUndefined();
    expect(tenantKeyProblem('auth:')).toMatch(/auth:/);
    expect(tenantKeyProblem('header:a b')).toMatch(/header:/);
    expect(tenantKeyProblem('ip:::ffff:1.2.3.4')).toMatch(/ip:1\.2\.3\.4/);
    expect(tenantKeyProblem('ip:2001:DB8::1')).toMatch(/ip:2001:db8::1/);
    expect(tenantKeyProblem('ip:::1')).toBeUndefined();
    expect(tenantKeyProblem('anon')).toMatch(/expected/);
  });
});
