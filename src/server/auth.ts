/**
 * Gateway authentication (inventory §12, §2.1, §2.7): API keys on the data plane with tenant
 * resolution, and API keys with roles plus an audit trail on the control plane.
 *
 * Keys arrive in plaintext from the config; only their SHA-256 digests are kept. A presented key
 * is hashed once and compared against every stored digest with `timingSafeEqual`, without an
 * early exit, so response timing tells nothing about which entry (or how many) matched. Hashing
 * first already removes the byte-by-byte signal of a plain string compare (SMG relies on that
 * alone); the full scan is cheap insurance on top.
 *
 * Planes (SMG's split, `middleware/auth.rs` vs `crates/auth`):
 * - data plane: keys = `--api-key` + `--tenant-api-key`s. Control-plane keys are NOT accepted
 *   there (SMG builds the serving key map from those two flags only), so an operator key cannot
 *   spend inference quota under an identity no rate limit or tenant policy knows about.
 * - control plane: `--control-plane-api-keys` (admin may call, user gets 403); the shared
 *   `--api-key` is not accepted there once such keys exist (as SMG). Without control-plane keys:
 *   shared `--api-key` only (as admin); tenant keys
 *   alone ⇒ deny all (a tenant key must never reach admin routes, and "no key matched an empty
 *   set" must not read as "open"); no keys at all ⇒ open (dev/test deployments).
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import type { IncomingHttpHeaders } from 'node:http';
import type { FastifyRequest, onRequestHookHandler } from 'fastify';
import type { Logger } from 'pino';
import type { AuthConfig } from '../cli/config-types.js';
import type { Metrics } from '../observability/metrics.js';
import { errors, type SmgError } from '../protocols/errors.js';

export interface Principal {
  id: string;
  name: string;
  role: 'admin' | 'user';
  source: 'api-key' | 'control-plane-key' | 'open';
}

type AuthResult = 'allowed' | 'denied_missing' | 'denied_invalid' | 'denied_role' | 'open';

/** why a control-plane call was allowed or denied; the audit line's `reason` */
type AuditReason =
  | 'open'
  | 'missing_credentials'
  | 'invalid_credentials'
  | 'jwt_not_supported'
  | 'admin_role_required'
  | 'control_plane_disabled';

interface ControlRequest {
  method: string;
  url: string;
  remoteAddress?: string;
  requestId?: string;
}

/** one stored key: its digest and what it authenticates as */
interface KeyEntry<T> {
  hash: Buffer;
  value: T;
}

/** tenant ids from a trusted header: bounded and free of anything that could split a label or log */
const TENANT_HEADER_VALUE = /^[A-Za-z0-9._:@-]{1,128}$/;
/**
 * A sendable key: printable ASCII, inner spaces allowed, none at the ends (HTTP trims those).
 * Header values reach node as latin1, so a non-ASCII key could never be matched anyway.
 */
const KEY_SYNTAX = /^[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?$/;
const BEARER = /^bearer +(.*)$/i;

const OPEN_PRINCIPAL: Principal = Object.freeze({
  id: 'anonymous',
  name: 'open',
  role: 'admin',
  source: 'open',
});
const SHARED_KEY_PRINCIPAL: Principal = Object.freeze({
  id: 'api-key',
  name: 'shared --api-key',
  role: 'admin',
  source: 'api-key',
});

function sha256(s: string): Buffer {
  return createHash('sha256').update(s, 'utf8').digest();
}

/**
 * The key a caller presented: `Authorization: Bearer <key>` or `x-api-key: <key>` (the Anthropic
 * SDK sends the latter); Bearer wins when both are present. The scheme is case-insensitive.
 * Anything empty or malformed counts as no key, so it is reported as missing rather than wrong.
 */
export function presentedKey(headers: IncomingHttpHeaders): string | undefined {
  const authz = headers.authorization;
  if (typeof authz === 'string') {
    const m = BEARER.exec(authz.trim());
    if (m && KEY_SYNTAX.test(m[1])) return m[1];
  }
  const xKey = headers['x-api-key'];
  // node joins a repeated x-api-key with ", ": such a value matches no real key and fails as invalid
  if (typeof xKey === 'string') {
    const k = xKey.trim();
    if (KEY_SYNTAX.test(k)) return k;
  }
  return undefined;
}

/** `::ffff:10.0.0.1` (IPv4 on a dual-stack socket) is reported as the plain IPv4 address */
function normalizeAddress(addr: string | undefined): string | undefined {
  if (!addr) return undefined;
  return addr.toLowerCase().startsWith('::ffff:') && addr.includes('.') ? addr.slice(7) : addr;
}

/**
 * The path of a request URL without its query: audit lines and route checks never see query
 * strings, which is where a careless client might put a key.
 */
function pathOf(url: string): string {
  const q = url.indexOf('?');
  return q < 0 ? url : url.slice(0, q);
}

export class Auth {
  /** true when no data-plane key is configured: the request path skips authenticateData except for tenant resolution */
  readonly dataPlaneOpen: boolean;

  private readonly logger: Logger;
  private readonly metrics?: Metrics;
  private readonly dataKeys: KeyEntry<string>[];
  private readonly controlKeys: KeyEntry<Principal>[];
  private readonly controlMode: 'keys' | 'deny-all' | 'open';
  private readonly trustTenantHeader: boolean;
  private readonly tenantHeaderName: string;
  private readonly audit: boolean;

  constructor(cfg: AuthConfig, deps: { logger: Logger; metrics?: Metrics }) {
    this.logger = deps.logger;
    this.metrics = deps.metrics;
    this.trustTenantHeader = cfg.trustTenantHeader;
    this.tenantHeaderName = (cfg.tenantHeaderName || 'x-smg-tenant-id').toLowerCase();
    this.audit = !cfg.disableAuditLogging;

    // an empty key would mean "auth on, but anyone who sends nothing gets in" — refuse to start
    // rather than guess whether the operator meant open or closed
    const hashKey = (key: string, what: string) => {
      if (key.trim() === '') throw new Error(`auth: ${what} is empty`);
      if (!KEY_SYNTAX.test(key)) {
        throw new Error(`auth: ${what} has non-ASCII or control characters; no client could send it`);
      }
      return sha256(key);
    };

    // The shared key comes first so a tenant key with the same value takes precedence (later
    // matches win, as in SMG's map where tenant keys are inserted after the shared one).
    const shared = cfg.apiKey !== undefined ? hashKey(cfg.apiKey, '--api-key') : undefined;
    this.dataKeys = [];
    if (shared) this.dataKeys.push({ hash: shared, value: `auth:${shared.toString('hex')}` });
    for (const { tenant, key } of cfg.tenantApiKeys) {
      const hash = hashKey(key, `--tenant-api-key for tenant "${tenant}"`);
      this.dataKeys.push({ hash, value: `auth:${tenant}` });
    }
    this.dataPlaneOpen = this.dataKeys.length === 0;

    this.controlKeys = [];
    // as SMG: once control-plane keys exist, only they open admin routes; the shared key is the
    // control-plane credential only when no control-plane keys are configured
    if (shared && cfg.controlPlaneApiKeys.length === 0) {
      this.controlKeys.push({ hash: shared, value: SHARED_KEY_PRINCIPAL });
    }
    for (const { id, name, role, key } of cfg.controlPlaneApiKeys) {
      this.controlKeys.push({
        hash: hashKey(key, `--control-plane-api-keys entry "${id}"`),
        value: Object.freeze({ id, name, role, source: 'control-plane-key' }),
      });
      if (key.split('.').length === 3) {
        this.logger.warn(
          { key_id: id },
          'control-plane API key has three dot-separated segments and looks like a JWT; ' +
            'it works today but will be rejected once JWT validation is added',
        );
      }
    }
    this.controlMode =
      this.controlKeys.length > 0 ? 'keys' : cfg.tenantApiKeys.length > 0 ? 'deny-all' : 'open';

    warnDuplicates(this.logger, 'data-plane', this.dataKeys);
    warnDuplicates(this.logger, 'control-plane', this.controlKeys);
    this.logger.info(
      {
        data_plane: this.dataPlaneOpen ? 'open' : `${this.dataKeys.length} key(s)`,
        control_plane: this.controlMode === 'keys' ? `${this.controlKeys.length} key(s)` : this.controlMode,
        trust_tenant_header: this.trustTenantHeader,
        audit: this.audit,
      },
      'auth configured',
    );
  }

  /**
   * Data plane (inference routes). Returns the canonical tenant key; throws SmgError 401 when
   * keys are configured and the caller presented none or a wrong one. Cheap: one SHA-256 +
   * constant-time compares.
   */
  authenticateData(headers: IncomingHttpHeaders, remoteAddress: string | undefined): string {
    if (this.dataPlaneOpen) {
      this.count('data', 'open');
      return this.resolveTenant(headers, remoteAddress);
    }
    const key = presentedKey(headers);
    if (key === undefined) {
      this.count('data', 'denied_missing');
      throw errors.unauthorized(
        'data-plane',
        'Missing API key: send "Authorization: Bearer <key>" or "x-api-key: <key>"',
      );
    }
    const tenant = findKey(this.dataKeys, key);
    if (tenant === undefined) {
      this.count('data', 'denied_invalid');
      throw errors.unauthorized('data-plane', 'Invalid API key');
    }
    this.count('data', 'allowed');
    return tenant;
  }

  /**
   * The tenant of an unauthenticated caller (open data plane): the trusted tenant header when
   * `--trust-tenant-header` is on and its value is well-formed, else `ip:<addr>`, else
   * `anonymous`. Authenticated callers always resolve to their key's tenant instead, so a
   * header can never move a keyed caller into someone else's quota.
   */
  resolveTenant(headers: IncomingHttpHeaders, remoteAddress: string | undefined): string {
    if (this.trustTenantHeader) {
      const v = headers[this.tenantHeaderName];
      // a repeated header arrives joined with ", " and fails the pattern: ambiguous ⇒ ignored
      if (typeof v === 'string') {
        const id = v.trim();
        if (TENANT_HEADER_VALUE.test(id)) return `header:${id}`;
      }
    }
    const ip = normalizeAddress(remoteAddress);
    return ip ? `ip:${ip}` : 'anonymous';
  }

  /**
   * Control plane (admin + /workers + later /mesh routes): returns the principal or throws
   * 401/403; writes one audit log line per call (allowed or denied) unless disableAuditLogging.
   */
  authenticateControl(headers: IncomingHttpHeaders, r: ControlRequest): Principal {
    if (this.controlMode === 'open') {
      this.count('control', 'open');
      this.writeAudit(r, 'allow', 'open', OPEN_PRINCIPAL);
      return OPEN_PRINCIPAL;
    }
    const key = presentedKey(headers);
    if (this.controlMode === 'deny-all') {
      throw this.deny(
        r,
        key === undefined ? 'denied_missing' : 'denied_invalid',
        'control_plane_disabled',
        errors.unauthorized(
          'control-plane',
          'Control-plane routes are disabled: only tenant API keys are configured',
        ),
      );
    }
    if (key === undefined) {
      throw this.deny(
        r,
        'denied_missing',
        'missing_credentials',
        errors.unauthorized('control-plane', 'Missing API key: send "Authorization: Bearer <key>"'),
      );
    }
    const principal = findKey(this.controlKeys, key);
    if (principal === undefined) {
      // JWT/OIDC (`--jwt-issuer`) is not implemented yet, so a JWT-looking token (three
      // dot-separated segments) that matches no configured key is rejected with its own reason
      // rather than a bare "invalid key": an operator pointing an IdP at us sees why. (SMG
      // rejects such a token without API-key fallback once JWT fails; without a JWT validator
      // it tries the keys first, as we do here.)
      if (key.split('.').length === 3) {
        throw this.deny(
          r,
          'denied_invalid',
          'jwt_not_supported',
          errors.unauthorized(
            'control-plane',
            'JWT bearer tokens are not supported; use a control-plane API key',
          ),
        );
      }
      throw this.deny(
        r,
        'denied_invalid',
        'invalid_credentials',
        errors.unauthorized('control-plane', 'Invalid API key'),
      );
    }
    if (principal.role !== 'admin') {
      throw this.deny(
        r,
        'denied_role',
        'admin_role_required',
        errors.forbidden('Admin role required for control-plane access'),
        principal,
      );
    }
    this.count('control', 'allowed');
    this.writeAudit(r, 'allow', undefined, principal);
    return principal;
  }

  private deny(
    r: ControlRequest,
    result: AuthResult,
    reason: AuditReason,
    err: SmgError,
    principal?: Principal,
  ): SmgError {
    this.count('control', result);
    this.writeAudit(r, 'deny', reason, principal);
    return err;
  }

  private count(plane: 'data' | 'control', result: AuthResult): void {
    if (this.metrics) this.metrics.inc(this.metrics.authResults, { plane, result });
  }

  /** the audit line: who did what, from where, and the decision — never the key or the query */
  private writeAudit(
    r: ControlRequest,
    decision: 'allow' | 'deny',
    reason: AuditReason | undefined,
    principal: Principal | undefined,
  ): void {
    if (!this.audit) return;
    const line: Record<string, unknown> = { audit: true, plane: 'control', decision };
    if (reason) line.reason = reason;
    if (principal) {
      line.principal_id = principal.id;
      line.principal_name = principal.name;
      line.role = principal.role;
    }
    line.method = r.method;
    line.path = pathOf(r.url);
    if (r.requestId) line.request_id = r.requestId;
    const addr = normalizeAddress(r.remoteAddress);
    if (addr) line.remote_addr = addr;
    this.logger.info(line, 'audit');
  }
}

/**
 * The entry whose digest equals the presented key's. Every entry is compared (no early exit),
 * and the last match wins, which is how duplicates resolve (see the constructor).
 */
function findKey<T>(entries: KeyEntry<T>[], key: string): T | undefined {
  const h = sha256(key);
  let found: T | undefined;
  for (const e of entries) {
    if (timingSafeEqual(h, e.hash)) found = e.value;
  }
  return found;
}

function warnDuplicates<T>(logger: Logger, plane: string, entries: KeyEntry<T>[]): void {
  const seen = new Set<string>();
  for (const e of entries) {
    const hex = e.hash.toString('hex');
    if (seen.has(hex)) {
      // the identity, never the key: which entry wins is deterministic (the last one)
      logger.warn(
        { plane, identity: describe(e.value) },
        'the same API key is configured twice; the last entry wins',
      );
    }
    seen.add(hex);
  }
}

function describe(v: unknown): string {
  return typeof v === 'string' ? v : `${(v as Principal).source}:${(v as Principal).id}`;
}

/** the principal a control-plane hook admitted for a request, for handlers that want to know who */
const principals = new WeakMap<FastifyRequest, Principal>();

export function principalOf(req: FastifyRequest): Principal | undefined {
  return principals.get(req);
}

/**
 * fastify onRequest hook enforcing control-plane auth on routes for which
 * isControlPlane(routeUrl, method) is true; errors go through the app's error handler.
 *
 * The route *template* (`/workers/:id`) is checked when a route matched, so encodings or
 * trailing slashes that still reach a handler cannot dodge the check; unmatched URLs are checked
 * by their raw path, so probing `/workers/...` without a key answers 401, not a 404 that reveals
 * the route layout.
 */
export function controlPlaneHook(
  auth: Auth,
  isControlPlane: (url: string, method: string) => boolean,
): onRequestHookHandler {
  return function controlPlaneAuth(req, reply, done) {
    // CORS preflights carry no credentials by design, and the CORS hook has answered them already
    if (reply.sent || req.method === 'OPTIONS') return done();
    const route = req.routeOptions.url ?? pathOf(req.url);
    if (!isControlPlane(route, req.method)) return done();
    try {
      const principal = auth.authenticateControl(req.headers, {
        method: req.method,
        url: req.url,
        remoteAddress: req.ip,
        requestId: String(req.id),
      });
      principals.set(req, principal);
      done();
    } catch (err) {
      done(err as Error);
    }
  };
}

const CONTROL_PLANE_EXACT = new Set([
  '/workers',
  '/flush_cache',
  '/get_loads',
  '/start_profile',
  '/stop_profile',
  '/mesh',
]);

/**
 * The routes SMG puts under control-plane auth: /workers*, /flush_cache, /get_loads,
 * /start_profile, /stop_profile, /mesh/*. Every method counts except OPTIONS (preflight).
 * Accepts a route template or a raw path; a query string and one trailing slash are ignored.
 */
export function isControlPlaneRoute(path: string, method: string): boolean {
  if (method === 'OPTIONS') return false;
  let p = pathOf(path);
  if (p.length > 1 && p.endsWith('/')) p = p.slice(0, -1);
  return CONTROL_PLANE_EXACT.has(p) || p.startsWith('/workers/') || p.startsWith('/mesh/');
}
