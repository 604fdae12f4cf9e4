/**
 * Tenant rate limits (SMG `--tenant-rate-limit-enabled`, inventory §5.6): requests and tokens per
 * minute per tenant, and per (tenant, model rule) for the model rule matching the request (exact
 * match first, then the longest prefix). A tenant listed in `tenants` uses its own entry instead of
 * `default_policy` as a whole; a limit left out of a policy is no limit.
 *
 * SMG keeps one token bucket per scope on each instance (N instances ⇒ ≈N× the limit). Here the
 * usage lives in the replicated sliding-window counters of src/state/rate-limit.ts, so the limit is
 * cluster-wide once the mesh gossips the slots, and in a mesh each peer keeps to its share of what
 * is left (`RateLimitUsage.admits`); a rejection's Retry-After is the time until the window
 * estimate would admit the request.
 *
 * A request reserves 1 request and its estimated input tokens in every scope (local pending usage).
 * When admission lets it through, `commit` moves the request into the replicated counter; `settle`
 * at the end replaces the token reservation with the real usage; `cancel` (rejected or gone while
 * queued) gives everything back, so a request refused later costs no quota.
 */
import { isIP } from 'node:net';
import type { Metrics } from '../../observability/metrics.js';
import { ConfigFileError, parseConfigSource, readConfigSource } from '../../protocols/config-file.js';
import { errors, type SmgError } from '../../protocols/errors.js';
import type { RateLimitUsage } from '../../state/rate-limit.js';

export interface ModelMatcherSpec {
  type: 'exact' | 'prefix';
  value: string;
}

export interface ModelRuleSpec {
  rule_id: string;
  matcher: ModelMatcherSpec;
  tokens_per_minute?: number;
  requests_per_minute?: number;
}

export interface TenantPolicySpec {
  tokens_per_minute?: number;
  requests_per_minute?: number;
  model_rules?: ModelRuleSpec[];
}

/** `--tenant-rate-limit-config`, validated (the YAML shape, so the admin API can take it as JSON later) */
export interface TenantRateLimitRules {
  default_policy: TenantPolicySpec;
  tenants?: (TenantPolicySpec & { tenant_key: string })[];
}

// ---------------------------------------------------------------------------------------------
// config file

const RULE_ID = /^[A-Za-z0-9._-]+$/;
/** what src/server/auth.ts accepts from a trusted tenant header: other ids could never match */
const HEADER_TENANT_ID = /^[A-Za-z0-9._:@-]{1,128}$/;

function show(v: unknown): string {
  return v === undefined ? 'nothing' : (JSON.stringify(v) ?? String(v));
}

function isMapping(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** why `key` is not a tenant key the request path can produce, or undefined when it is one */
export function tenantKeyProblem(key: string): string | undefined {
  if (key === 'anonymous') return undefined;
  const colon = key.indexOf(':');
  const kind = colon < 0 ? '' : key.slice(0, colon);
  const id = key.slice(colon + 1);
  switch (kind) {
    case 'auth':
      return id !== '' && id.trim() === id ? undefined : 'auth: needs a tenant id without spaces around it';
    case 'header':
      return HEADER_TENANT_ID.test(id)
        ? undefined
        : 'header: ids are 1–128 characters of A-Z a-z 0-9 . _ : @ -';
    case 'ip': {
      const v = isIP(id);
      if (v === 4) return undefined;
      if (v === 6) {
        if (/^::ffff:\d+\.\d+\.\d+\.\d+$/i.test(id)) return `write the IPv4 form: ip:${id.slice(7)}`;
        const canonical = new URL(`http://[${id}]`).hostname.slice(1, -1);
        return canonical === id ? undefined : `write the canonical IPv6 form: ip:${canonical}`;
      }
      return 'ip: needs an IPv4 or IPv6 address';
    }
    default:
      return 'expected auth:<id>, header:<id>, ip:<address> or anonymous';
  }
}

/** reads and validates `--tenant-rate-limit-config`; errors name the file and the key */
export function loadTenantRateLimitConfig(path: string): TenantRateLimitRules {
  let doc: unknown;
  try {
    doc = parseConfigSource(readConfigSource(path), 'yaml');
  } catch (err) {
    const problem = err instanceof ConfigFileError ? err.problem : 'invalid';
    const what = problem === 'unreadable' ? 'cannot read: ' : problem === 'invalid' ? 'invalid YAML: ' : '';
    throw new Error(`tenant rate-limit config ${path}: ${what}${(err as Error).message}`, { cause: err });
  }
  return parseTenantRateLimitConfig(doc, path);
}

/** validates an already parsed document (`source` names it in errors) */
export function parseTenantRateLimitConfig(doc: unknown, source: string): TenantRateLimitRules {
  const fail = (where: string, problem: string): never => {
    throw new Error(`tenant rate-limit config ${source}: ${where}: ${problem}`);
  };
  const onlyKeys = (where: string, obj: Record<string, unknown>, allowed: string[]) => {
    for (const k of Object.keys(obj)) {
      if (!allowed.includes(k))
        fail(where ? `${where}.${k}` : k, `unknown key (expected one of ${allowed.join(', ')})`);
    }
  };
  const limit = (where: string, v: unknown): number | undefined => {
    if (v === undefined || v === null) return undefined;
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v <= 0) {
      fail(where, `expected a whole number > 0 (leave it out for no limit), got ${show(v)}`);
    }
    return v as number;
  };
  const policy = (where: string, v: unknown, extra: string[]): TenantPolicySpec => {
    if (!isMapping(v)) return fail(where, `expected a mapping, got ${show(v)}`);
    onlyKeys(where, v, ['tokens_per_minute', 'requests_per_minute', 'model_rules', ...extra]);
    const out: TenantPolicySpec = {};
    const tpm = limit(`${where}.tokens_per_minute`, v.tokens_per_minute);
    const rpm = limit(`${where}.requests_per_minute`, v.requests_per_minute);
    if (tpm !== undefined) out.tokens_per_minute = tpm;
    if (rpm !== undefined) out.requests_per_minute = rpm;
    if (v.model_rules !== undefined && v.model_rules !== null) {
      if (!Array.isArray(v.model_rules))
        fail(`${where}.model_rules`, `expected a list, got ${show(v.model_rules)}`);
      const ids = new Set<string>();
      const matchers = new Map<string, string>();
      out.model_rules = (v.model_rules as unknown[]).map((r, i) => {
        const at = `${where}.model_rules[${i}]`;
        if (!isMapping(r)) return fail(at, `expected a mapping, got ${show(r)}`);
        onlyKeys(at, r, ['rule_id', 'matcher', 'tokens_per_minute', 'requests_per_minute']);
        if (typeof r.rule_id !== 'string' || !RULE_ID.test(r.rule_id)) {
          fail(`${at}.rule_id`, `expected [A-Za-z0-9._-]+, got ${show(r.rule_id)}`);
        }
        const id = r.rule_id as string;
        if (ids.has(id)) fail(`${at}.rule_id`, `duplicate rule_id ${show(id)}`);
        ids.add(id);
        const m = r.matcher;
        if (!isMapping(m))
          return fail(`${at}.matcher`, `expected {type: exact|prefix, value}, got ${show(m)}`);
        onlyKeys(`${at}.matcher`, m, ['type', 'value']);
        if (m.type !== 'exact' && m.type !== 'prefix') {
          fail(`${at}.matcher.type`, `expected exact or prefix, got ${show(m.type)}`);
        }
        if (typeof m.value !== 'string' || m.value === '' || m.value.trim() !== m.value) {
          fail(
            `${at}.matcher.value`,
            `expected a model id (or prefix) without spaces around it, got ${show(m.value)}`,
          );
        }
        const sig = `${m.type as string}\u0000${m.value as string}`;
        const other = matchers.get(sig);
        if (other !== undefined) fail(`${at}.matcher`, `same matcher as rule ${show(other)}`);
        matchers.set(sig, id);
        const rule: ModelRuleSpec = {
          rule_id: id,
          matcher: { type: m.type as 'exact' | 'prefix', value: m.value as string },
        };
        const rtpm = limit(`${at}.tokens_per_minute`, r.tokens_per_minute);
        const rrpm = limit(`${at}.requests_per_minute`, r.requests_per_minute);
        if (rtpm !== undefined) rule.tokens_per_minute = rtpm;
        if (rrpm !== undefined) rule.requests_per_minute = rrpm;
        return rule;
      });
    }
    return out;
  };

  if (!isMapping(doc)) return fail('top level', `expected a mapping with default_policy, got ${show(doc)}`);
  onlyKeys('', doc, ['default_policy', 'tenants']);
  if (doc.default_policy === undefined || doc.default_policy === null) {
    fail('default_policy', 'missing (use `default_policy: {}` for no limit on unlisted tenants)');
  }
  const rules: TenantRateLimitRules = { default_policy: policy('default_policy', doc.default_policy, []) };
  if (doc.tenants !== undefined && doc.tenants !== null) {
    if (!Array.isArray(doc.tenants)) fail('tenants', `expected a list, got ${show(doc.tenants)}`);
    const seen = new Set<string>();
    rules.tenants = (doc.tenants as unknown[]).map((t, i) => {
      const at = `tenants[${i}]`;
      const p = policy(at, t, ['tenant_key']);
      const key = (t as Record<string, unknown>).tenant_key;
      if (typeof key !== 'string') return fail(`${at}.tenant_key`, `missing or not a string: ${show(key)}`);
      const problem = tenantKeyProblem(key);
      if (problem) fail(`${at}.tenant_key`, `${show(key)} is not a tenant key: ${problem}`);
      if (seen.has(key)) fail(`${at}.tenant_key`, `duplicate tenant ${show(key)}`);
      seen.add(key);
      return { tenant_key: key, ...p };
    });
  }
  return rules;
}

/** checks the rules against the rest of the configuration: `header:` tenants need a trusted header */
export function validateTenantRules(rules: TenantRateLimitRules, opts: { trustTenantHeader: boolean }): void {
  if (opts.trustTenantHeader) return;
  const header = (rules.tenants ?? []).find((t) => t.tenant_key.startsWith('header:'));
  if (header) {
    throw new Error(
      `tenant rate-limit config: tenant ${show(header.tenant_key)} can never match: ` +
        'header: tenants need --trust-tenant-header',
    );
  }
}

// ---------------------------------------------------------------------------------------------
// enforcement

interface Limits {
  rpm?: number;
  tpm?: number;
}

interface CompiledRule extends Limits {
  ruleId: string;
}

class CompiledPolicy implements Limits {
  readonly rpm?: number;
  readonly tpm?: number;
  private readonly exact = new Map<string, CompiledRule>();
  /** longest prefix first */
  private readonly prefixes: { prefix: string; rule: CompiledRule }[] = [];
  /** anything here limits anything */
  readonly limited: boolean;

  constructor(spec: TenantPolicySpec) {
    if (spec.requests_per_minute !== undefined) this.rpm = spec.requests_per_minute;
    if (spec.tokens_per_minute !== undefined) this.tpm = spec.tokens_per_minute;
    let limited = this.rpm !== undefined || this.tpm !== undefined;
    for (const r of spec.model_rules ?? []) {
      const rule: CompiledRule = { ruleId: r.rule_id, rpm: r.requests_per_minute, tpm: r.tokens_per_minute };
      if (rule.rpm === undefined && rule.tpm === undefined) continue;
      limited = true;
      if (r.matcher.type === 'exact') this.exact.set(r.matcher.value, rule);
      else this.prefixes.push({ prefix: r.matcher.value, rule });
    }
    this.prefixes.sort((a, b) => b.prefix.length - a.prefix.length);
    this.limited = limited;
  }

  rule(model: string): CompiledRule | undefined {
    if (model === '') return undefined;
    const exact = this.exact.get(model);
    if (exact) return exact;
    for (const p of this.prefixes) if (model.startsWith(p.prefix)) return p.rule;
    return undefined;
  }
}

export interface TenantLimiterDeps {
  usage: RateLimitUsage;
  now: () => number;
  metrics?: Metrics;
}

/** a request's hold on its tenant's quota */
export class TenantLease {
  private state: 'reserved' | 'committed' | 'done' = 'reserved';

  constructor(
    private readonly limiter: TenantRateLimiter,
    readonly keys: readonly string[],
    readonly reservedTokens: number,
  ) {}

  /** admission let the request through: its request now counts cluster-wide */
  commit(): void {
    if (this.state !== 'reserved') return;
    this.state = 'committed';
    this.limiter.commitLease(this);
  }

  /** the request ended: `tokens` (real usage) replace the reservation; idempotent */
  settle(tokens: number): void {
    if (this.state === 'done') return;
    this.commit();
    this.state = 'done';
    this.limiter.settleLease(this, Number.isFinite(tokens) && tokens > 0 ? tokens : 0);
  }

  /** the request never ran: gives back the whole reservation */
  cancel(): void {
    if (this.state !== 'reserved') return;
    this.state = 'done';
    this.limiter.cancelLease(this);
  }
}

export class TenantRateLimiter {
  private readonly defaultPolicy: CompiledPolicy;
  private readonly tenants = new Map<string, CompiledPolicy>();

  constructor(
    rules: TenantRateLimitRules,
    private readonly deps: TenantLimiterDeps,
  ) {
    this.defaultPolicy = new CompiledPolicy(rules.default_policy);
    for (const t of rules.tenants ?? []) this.tenants.set(t.tenant_key, new CompiledPolicy(t));
  }

  /**
   * Checks the request against its tenant's own limits (`requests_per_minute`/`tokens_per_minute`
   * of its policy) and reserves 1 request and `estimatedTokens`: a lease, a 429
   * `tenant_rate_limit_exceeded`, or undefined when no limit applies. Decided on what the headers
   * tell (the tenant, the declared body size), before the body is read.
   */
  reserve(tenant: string, estimatedTokens: number): TenantLease | SmgError | undefined {
    const policy = this.policyOf(tenant);
    if (!policy.limited || (policy.rpm === undefined && policy.tpm === undefined)) return undefined;
    return this.reserveScope(`tenant:${tenant}`, policy, estimatedTokens, tenant, 'tenant', undefined);
  }

  /**
   * The model rule of the tenant's policy that matches `model` (exact first, then the longest
   * prefix), checked and reserved like {@link reserve}. Runs once the body named the model.
   */
  reserveModel(tenant: string, model: string, estimatedTokens: number): TenantLease | SmgError | undefined {
    const policy = this.policyOf(tenant);
    const rule = policy.limited ? policy.rule(model) : undefined;
    if (!rule) return undefined;
    return this.reserveScope(
      `rule:${rule.ruleId}:${tenant}`,
      rule,
      estimatedTokens,
      tenant,
      'model_rule',
      rule.ruleId,
    );
  }

  private policyOf(tenant: string): CompiledPolicy {
    return this.tenants.get(tenant) ?? this.defaultPolicy;
  }

  private reserveScope(
    key: string,
    limits: Limits,
    estimatedTokens: number,
    tenant: string,
    scope: 'tenant' | 'model_rule',
    ruleId: string | undefined,
  ): TenantLease | SmgError {
    const tokens = Number.isFinite(estimatedTokens) && estimatedTokens > 0 ? Math.ceil(estimatedTokens) : 0;
    const err = this.check(key, limits, tokens, this.deps.now(), tenant, scope, ruleId);
    if (err) return err;
    const m = this.deps.metrics;
    if (m) m.inc(m.tenantRateLimit, { result: 'allowed', scope });
    this.deps.usage.reserve(key, 1, tokens);
    return new TenantLease(this, [key], tokens);
  }

  /** @internal */
  commitLease(lease: TenantLease): void {
    const now = this.deps.now();
    for (const k of lease.keys) {
      this.deps.usage.unreserve(k, 1, 0);
      this.deps.usage.add(k, 1, 0, now);
    }
  }

  /** @internal */
  settleLease(lease: TenantLease, tokens: number): void {
    const now = this.deps.now();
    for (const k of lease.keys) {
      this.deps.usage.unreserve(k, 0, lease.reservedTokens);
      this.deps.usage.add(k, 0, tokens, now);
    }
  }

  /** @internal */
  cancelLease(lease: TenantLease): void {
    for (const k of lease.keys) this.deps.usage.unreserve(k, 1, lease.reservedTokens);
  }

  /**
   * The scope's verdict: undefined when both its limits leave room. A request larger than the
   * whole token limit needs an idle window rather than being refused forever.
   */
  private check(
    key: string,
    limits: Limits,
    tokens: number,
    now: number,
    tenant: string,
    scope: 'tenant' | 'model_rule',
    ruleId: string | undefined,
  ): SmgError | undefined {
    const usage = this.deps.usage;
    let waitMs = 0;
    let what: string | undefined;
    // (a refusal by the mesh share rule alone has no window wait: Retry-After is then 1 s)
    if (limits.rpm !== undefined && !usage.admits(key, 'requests', limits.rpm, 1, now)) {
      waitMs = usage.waitMs(key, 'requests', limits.rpm, 1, now);
      what = `${limits.rpm} requests per minute`;
    }
    if (limits.tpm !== undefined) {
      const need = Math.min(tokens, limits.tpm);
      if (!usage.admits(key, 'tokens', limits.tpm, need, now)) {
        waitMs = Math.max(waitMs, usage.waitMs(key, 'tokens', limits.tpm, need, now));
        what = what ? `${what} and ${limits.tpm} tokens per minute` : `${limits.tpm} tokens per minute`;
      }
    }
    if (what === undefined) return undefined;
    const m = this.deps.metrics;
    if (m) m.inc(m.tenantRateLimit, { result: 'rejected', scope });
    if (ruleId !== undefined) what += ` (model rule ${ruleId})`;
    return errors.tenantRateLimitExceeded(tenant, what, Math.ceil(waitMs / 1000));
  }
}
