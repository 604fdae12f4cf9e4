/**
 * `smg launch` configuration: turns argv, `SMG_*` environment variables and an optional `--config`
 * file into one validated {@link Config}. Precedence, highest first: command-line flags, environment,
 * config file, SMG's defaults (inventory §1).
 *
 * One zod object ({@link LaunchSchema}) describes every value whatever its source; its error
 * messages name the flag, so a bad value in a file reads the same as a bad value on the command
 * line. This module owns parsing and validation only: it never opens sockets, never logs and never
 * exits the process; every problem is a thrown {@link ConfigError}.
 */
import { readFileSync, statSync } from 'node:fs';
import { isIP } from 'node:net';
import { hostname } from 'node:os';
import { getHeapStatistics } from 'node:v8';
import { extname, join } from 'node:path';
import { z } from 'zod';

import { POLICY_NAMES } from '../routing/types.js';
import type { PolicyName } from '../routing/types.js';
import { ConfigFileError, parseConfigSource, readConfigSource } from '../protocols/config-file.js';
import {
  MAX_BACKOFF_MS,
  MAX_BACKOFF_NOTE,
  MAX_DURATION_NOTE,
  MAX_DURATION_SECS,
} from '../protocols/durations.js';
import { checkWorkerUrl } from '../protocols/worker-spec.js';
import {
  loadPrioritySchedulerConfig,
  loadTenantRateLimitConfig,
  validateTenantRules,
} from '../server/admission/index.js';
import { MAX_CLUSTER_KEY_FILE_BYTES, parseClusterKey, parseClusterKeyFile } from '../../mesh/swim/keyring.js';
import { parseHostPort } from '../../mesh/swim/udp-transport.js';
import type { Config, LogLevel, MeshConfig, PriorityClass } from './config-types.js';

/** worker URL validation is shared with the admin API (POST/PUT /workers) */
export { checkWorkerUrl };

/** Any problem with the launch configuration; the message is meant for the user as is. */
export class ConfigError extends Error {
  override readonly name = 'ConfigError';
}

// ---------------------------------------------------------------------------------------------
// Defaults (SMG's, inventory §1). Optional flags with no default (health-check-port, log-dir,
// prometheus-duration-buckets) are absent here.

export const LOG_LEVELS = ['debug', 'info', 'warn', 'error'] as const satisfies readonly LogLevel[];
export const ASSIGNMENT_MODES = ['random', 'min_load', 'min_group'] as const;

export const PRIORITY_CLASSES = [
  'bulk',
  'default',
  'interactive',
  'system',
] as const satisfies readonly PriorityClass[];
export const CONTROL_PLANE_ROLES = ['admin', 'user'] as const;

export const DEFAULT_REQUEST_ID_HEADERS = ['x-request-id', 'x-correlation-id', 'x-trace-id', 'request-id'];

export const LAUNCH_DEFAULTS = {
  host: '0.0.0.0',
  port: 30000,
  'worker-urls': [] as string[],
  'max-payload-size': 536_870_912,
  'body-read-timeout-secs': 60,
  // a quarter of the V8 heap: JSON.parse of the bodies needs about as much again on the heap
  'max-buffered-request-bytes': Math.floor(getHeapStatistics().heap_size_limit / 4),
  'keep-alive-timeout-secs': 75,
  'headers-timeout-secs': 60,
  'request-timeout-secs': 1800,
  'shutdown-grace-period-secs': 180,
  'cors-allowed-origins': [] as string[],
  policy: 'cache_aware' as PolicyName,
  'cache-threshold': 0.3,
  'balance-abs-threshold': 64,
  'balance-rel-threshold': 1.5,
  'balance-token-usage-threshold': 1.0,
  'overload-token-usage-threshold': 1.0,
  'eviction-interval': 120,
  'max-tree-size': 67_108_864,
  'block-size': 16,
  'max-idle-secs': 14_400,
  'assignment-mode': 'random' as (typeof ASSIGNMENT_MODES)[number],
  'prefix-token-count': 256,
  'prefix-hash-load-factor': 1.25,
  'least-load-kv-pressure-weight': 0.15,
  'least-load-default-throughput': 2000,
  'least-load-mean-prefill-tokens': 1024,
  'routing-key-override': false,
  'enable-igw': false,
  'model-alias': {} as Record<string, string>,
  'prefix-block-chars': 32,
  'load-monitor-interval': 10,
  'health-failure-threshold': 3,
  'health-success-threshold': 2,
  'health-check-timeout-secs': 5,
  'health-check-interval-secs': 60,
  'health-check-endpoint': '/health',
  'disable-health-check': false,
  'remove-unhealthy-workers': false,
  'drain-settle-secs': 5,
  'log-level': 'info' as LogLevel,
  'log-json': false,
  'prometheus-host': '0.0.0.0',
  'prometheus-port': 29000,
  'request-id-headers': DEFAULT_REQUEST_ID_HEADERS,
  'enable-trace': false,
  'otlp-traces-endpoint': 'http://localhost:4318/v1/traces',
  // §1.7 reliability
  'retry-max-retries': 4,
  'retry-initial-backoff-ms': 50,
  'retry-max-backoff-ms': 30_000,
  'retry-backoff-multiplier': 1.5,
  'retry-jitter-factor': 0.2,
  'disable-retries': false,
  'retry-budget-ratio': 0.2,
  'retry-budget-window-secs': 10,
  'retry-budget-min-per-sec': 10,
  'cb-failure-threshold': 10,
  'cb-success-threshold': 3,
  'cb-timeout-duration-secs': 60,
  'cb-window-duration-secs': 120,
  'disable-circuit-breaker': false,
  // §1.8 admission
  'max-concurrent-requests': -1,
  'queue-size': 100,
  'queue-timeout-secs': 60,
  'priority-scheduler-enabled': false,
  'priority-scheduler-default-max-class': 'default' as PriorityClass,
  'priority-scheduler-tenant-metric-top-n': 32,
  'tenant-rate-limit-enabled': false,
  // §1.9 auth
  'tenant-api-key': [] as { tenant: string; key: string }[],
  'trust-tenant-header': false,
  'tenant-header-name': 'x-smg-tenant-id',
  'control-plane-api-keys': [] as { id: string; name: string; role: 'admin' | 'user'; key: string }[],
  'disable-audit-logging': false,
  // mesh (issue 4)
  'ha-mesh': false,
  seeds: [] as string[],
  'mesh-port': 30001,
  'mesh-insecure': false,
};
const D = LAUNCH_DEFAULTS;

// ---------------------------------------------------------------------------------------------
// Field builders. Every error message is complete except for the `--flag: ` prefix.

interface IssueInput {
  readonly input?: unknown;
}

/** how a value is quoted in messages: strings JSON-quoted, everything else as JSON */
function show(value: unknown): string {
  if (value === undefined) return 'nothing';
  let text: string;
  try {
    text = JSON.stringify(value) ?? String(value);
  } catch {
    text = Array.isArray(value) ? 'a list' : typeof value === 'object' ? 'a mapping' : typeof value;
  }
  // a value pasted by mistake (a whole file, a huge list) must not flood the message
  return text.length > SHOW_MAX_CHARS
    ? `${text.slice(0, SHOW_MAX_CHARS)}… (${text.length} characters)`
    : text;
}

const SHOW_MAX_CHARS = 200;

const NUMBER_RE = /^[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?$/;

/** numeric strings become numbers; anything else is left for zod to reject with the raw value */
function toNumber(v: unknown): unknown {
  if (typeof v === 'string' && NUMBER_RE.test(v.trim())) return Number(v.trim());
  return v;
}

function toBool(v: unknown): unknown {
  if (typeof v !== 'string') return v;
  const s = v.trim().toLowerCase();
  return s === 'true' ? true : s === 'false' ? false : v;
}

/** a scalar where a list is expected counts as a one-element list */
function toList(v: unknown): unknown {
  return typeof v === 'string' || typeof v === 'number' ? [v] : v;
}

function int(min: number, max?: number, note?: string) {
  const expect =
    max !== undefined
      ? `an integer between ${min} and ${max}${note === undefined ? '' : ` (${note})`}`
      : min === 0
        ? 'a non-negative integer'
        : min === 1
          ? 'a positive integer'
          : `an integer >= ${min}`;
  const error = (iss: IssueInput) => `must be ${expect}, got ${show(iss.input)}`;
  return z.preprocess(
    toNumber,
    z
      .number({ error })
      .int({ error })
      .min(min, { error })
      .max(max ?? Number.MAX_SAFE_INTEGER, { error }),
  );
}

/** `gt` is an exclusive lower bound, `min`/`max` inclusive */
function num(bounds: { min?: number; max?: number; gt?: number }) {
  const { min, max, gt } = bounds;
  const expect =
    min !== undefined && max !== undefined
      ? `a number between ${min} and ${max}`
      : gt === 0
        ? 'a positive number'
        : min === 0
          ? 'a non-negative number'
          : min !== undefined
            ? `a number >= ${min}`
            : 'a number';
  const error = (iss: IssueInput) => `must be ${expect}, got ${show(iss.input)}`;
  let n = z.number({ error });
  if (min !== undefined) n = n.min(min, { error });
  if (max !== undefined) n = n.max(max, { error });
  if (gt !== undefined) n = n.gt(gt, { error });
  return z.preprocess(toNumber, n);
}

const port = () => int(1, 65535);

/** a duration that reaches a timer, in seconds: bounded by what a timer can wait */
const secs = (min: number) => int(min, MAX_DURATION_SECS, MAX_DURATION_NOTE);
/** a retry backoff in milliseconds */
const backoffMs = () => int(0, MAX_BACKOFF_MS, MAX_BACKOFF_NOTE);

function oneOf<const T extends readonly [string, ...string[]]>(values: T) {
  return z.enum(values, {
    error: (iss) => `invalid value ${show(iss.input)}; allowed: ${values.join(', ')}`,
  });
}

function bool() {
  return z.preprocess(toBool, z.boolean({ error: (iss) => `must be true or false, got ${show(iss.input)}` }));
}

function text() {
  const error = (iss: IssueInput) => `must be a non-empty string, got ${show(iss.input)}`;
  return z.string({ error }).min(1, { error });
}

function textList() {
  const error = (iss: IssueInput) => `must be a list of non-empty strings, got ${show(iss.input)}`;
  return z.preprocess(toList, z.array(text(), { error }));
}

// ---------------------------------------------------------------------------------------------
// Worker URLs, model aliases, header names: values with structure of their own.

const workerUrls = z.preprocess(
  toList,
  z
    .array(z.string(), {
      error: (iss) => `must be a list of URLs, got ${show(iss.input)}`,
    })
    .transform((items, ctx) => {
      // a Set, not a list scan: a file may list thousands of workers
      const out = new Set<string>();
      for (const item of items.flatMap((s) => s.split(','))) {
        if (item.trim() === '') continue;
        const r = checkWorkerUrl(item);
        if (!r.ok) {
          ctx.addIssue({ code: 'custom', message: r.reason, input: item });
        } else if (out.has(r.url)) {
          ctx.addIssue({ code: 'custom', message: `duplicate worker URL ${r.url}`, input: item });
        } else {
          out.add(r.url);
        }
      }
      return [...out];
    }),
);

/** `alias=canonical` entries (argv, env, list in a file) or a mapping (file) → alias map */
const modelAliases = z.unknown().transform((value, ctx) => {
  // no prototype: an alias named `constructor` or `__proto__` is an ordinary key
  const out: Record<string, string> = Object.create(null) as Record<string, string>;
  const fail = (message: string) => ctx.addIssue({ code: 'custom', message, input: value });
  const add = (alias: string, canonical: string, shown: string) => {
    if (alias === '' || canonical === '')
      return fail(`malformed entry ${show(shown)}; expected alias=canonical`);
    if (Object.hasOwn(out, alias) && out[alias] !== canonical) {
      return fail(`alias ${show(alias)} is mapped twice (to ${show(out[alias])} and ${show(canonical)})`);
    }
    out[alias] = canonical;
  };
  const list = toList(value);
  if (Array.isArray(list)) {
    for (const entry of list) {
      if (typeof entry !== 'string') {
        fail(`malformed entry ${show(entry)}; expected alias=canonical`);
        continue;
      }
      const eq = entry.indexOf('=');
      if (eq < 0) fail(`malformed entry ${show(entry)}; expected alias=canonical`);
      else add(entry.slice(0, eq).trim(), entry.slice(eq + 1).trim(), entry);
    }
  } else if (typeof list === 'object' && list !== null) {
    for (const [alias, canonical] of Object.entries(list)) {
      if (typeof canonical !== 'string')
        fail(`alias ${show(alias)} must map to a string, got ${show(canonical)}`);
      else add(alias.trim(), canonical.trim(), `${alias}=${canonical}`);
    }
  } else {
    fail(`must be a list of alias=canonical entries, got ${show(value)}`);
  }
  return out;
});

const HEADER_NAME_RE = /^[!#$%&'*+.^_`|~0-9a-z-]+$/;

const requestIdHeaders = z.preprocess(
  (v) => {
    const list = toList(v);
    return Array.isArray(list) ? list.map((h) => (typeof h === 'string' ? h.trim().toLowerCase() : h)) : list;
  },
  z
    .array(
      z.string({ error: (iss) => `must be a header name, got ${show(iss.input)}` }).regex(HEADER_NAME_RE, {
        error: (iss) => `invalid header name ${show(iss.input)}`,
      }),
      { error: (iss) => `must be a list of header names, got ${show(iss.input)}` },
    )
    .transform((names) => [...new Set(names)]),
);

const durationBuckets = z.preprocess(
  (v) => {
    const list = toList(v);
    return Array.isArray(list) ? list.map(toNumber) : list;
  },
  z
    .array(
      z.number({ error: (iss) => `must be a positive number, got ${show(iss.input)}` }).gt(0, {
        error: (iss) => `must be a positive number, got ${show(iss.input)}`,
      }),
      { error: (iss) => `must be a list of bucket bounds in seconds, got ${show(iss.input)}` },
    )
    .min(1, { error: 'must list at least one bucket bound' })
    .superRefine((buckets, ctx) => {
      for (let i = 1; i < buckets.length; i++) {
        if (buckets[i] <= buckets[i - 1]) {
          ctx.addIssue({
            code: 'custom',
            message: `bucket bounds must be strictly increasing, got ${buckets[i - 1]} then ${buckets[i]}`,
            input: buckets,
          });
          return;
        }
      }
    }),
);

/** `tenant:key` entries; the key may itself contain ':' and is never echoed in messages */
const tenantApiKeys = z.preprocess(
  toList,
  z
    .array(z.string({ error: () => 'must be a list of tenant:key entries' }), {
      error: () => 'must be a list of tenant:key entries',
    })
    .transform((items, ctx) => {
      const out: { tenant: string; key: string }[] = [];
      const tenants = new Set<string>();
      for (const [i, item] of items.entries()) {
        const colon = item.indexOf(':');
        const tenant = colon < 0 ? '' : item.slice(0, colon).trim();
        const key = colon < 0 ? '' : item.slice(colon + 1).trim();
        if (tenant === '' || key === '') {
          ctx.addIssue({
            code: 'custom',
            message: `entry ${i + 1} is malformed; expected tenant:key`,
            input: '',
          });
        } else if (tenants.has(tenant)) {
          ctx.addIssue({ code: 'custom', message: `tenant ${show(tenant)} is given twice`, input: '' });
        } else {
          tenants.add(tenant);
          out.push({ tenant, key });
        }
      }
      return out;
    }),
);

/** `id:name:role:key` entries (SMG's format); the key may contain ':' and is never echoed */
const controlPlaneKeys = z.preprocess(
  toList,
  z
    .array(z.string({ error: () => 'must be a list of id:name:role:key entries' }), {
      error: () => 'must be a list of id:name:role:key entries',
    })
    .transform((items, ctx) => {
      const out: { id: string; name: string; role: 'admin' | 'user'; key: string }[] = [];
      const ids = new Set<string>();
      for (const [i, item] of items.entries()) {
        const parts = item.split(':');
        const [id = '', name = '', role = ''] = parts.map((p) => p.trim());
        const key = parts.slice(3).join(':').trim();
        if (parts.length < 4 || id === '' || name === '' || key === '') {
          ctx.addIssue({
            code: 'custom',
            message: `entry ${i + 1} is malformed; expected id:name:role:key`,
            input: '',
          });
        } else if (!(CONTROL_PLANE_ROLES as readonly string[]).includes(role)) {
          ctx.addIssue({
            code: 'custom',
            message: `entry ${i + 1} (id ${show(id)}) has role ${show(role)}; allowed: ${CONTROL_PLANE_ROLES.join(', ')}`,
            input: '',
          });
        } else if (ids.has(id)) {
          ctx.addIssue({ code: 'custom', message: `key id ${show(id)} is given twice`, input: '' });
        } else {
          ids.add(id);
          out.push({ id, name, role: role as 'admin' | 'user', key });
        }
      }
      return out;
    }),
);

/** an OTLP/HTTP traces URL; `host:port` means http://host:port/v1/traces */
const otlpEndpoint = z
  .string({ error: (iss) => `must be an OTLP/HTTP URL, got ${show(iss.input)}` })
  .transform((raw, ctx) => {
    let s = raw.trim();
    if (!/^[a-z][a-z0-9+.-]*:\/\//i.test(s)) s = `http://${s}`;
    let u: URL;
    try {
      u = new URL(s);
    } catch {
      ctx.addIssue({ code: 'custom', message: `must be an OTLP/HTTP URL, got ${show(raw)}`, input: raw });
      return z.NEVER;
    }
    if (u.protocol !== 'http:' && u.protocol !== 'https:') {
      ctx.addIssue({
        code: 'custom',
        message: `must be an http(s) URL (OTLP/HTTP; gRPC OTLP is not supported), got ${show(raw)}`,
        input: raw,
      });
      return z.NEVER;
    }
    if (u.pathname === '/' || u.pathname === '') u.pathname = '/v1/traces';
    return u.toString();
  });

const HEADER_NAME_SINGLE = z
  .string({ error: (iss) => `must be a header name, got ${show(iss.input)}` })
  .transform((v) => v.trim().toLowerCase())
  .pipe(z.string().regex(HEADER_NAME_RE, { error: (iss) => `invalid header name ${show(iss.input)}` }));

/** a file that must exist and be readable; its content is validated by its own loader */
function readableFile() {
  return text().superRefine((path, ctx) => {
    try {
      readConfigSource(path);
    } catch (err) {
      const tooLarge = err instanceof ConfigFileError && err.problem === 'too_large';
      ctx.addIssue({
        code: 'custom',
        message: `${tooLarge ? '' : 'cannot read '}${show(path)}: ${(err as Error).message}`,
        input: path,
      });
    }
  });
}

// ---------------------------------------------------------------------------------------------
// Mesh values.

const HOSTNAME_RE =
  /^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$/;

/** `host:port`, `[v6]:port`; host is a DNS name, an IPv4 or an IPv6 literal. Returns a message or null. */
export function checkHostPort(entry: string): string | null {
  const hp = parseHostPort(entry);
  if (!hp) {
    const port = /:(\d{1,5})$/.exec(entry);
    return port && !entry.startsWith(':') && (Number(port[1]) < 1 || Number(port[1]) > 65535)
      ? `seed ${show(entry)}: port must be between 1 and 65535`
      : `malformed seed ${show(entry)}; expected host:port (e.g. 10.0.0.2:30001, gw-1.smg:30001, [::1]:30001)`;
  }
  if (isIP(hp.host) === 0 && !HOSTNAME_RE.test(hp.host))
    return `seed ${show(entry)}: ${show(hp.host)} is not a host name or IP address`;
  return null;
}

/** seeds: a list of `host:port`, each entry may itself be comma-separated */
const seedList = z.preprocess(
  (v) => {
    const list = toList(v);
    if (!Array.isArray(list)) return list;
    return list
      .flatMap((e) => (typeof e === 'string' ? e.split(',') : [e]))
      .map((e) => (typeof e === 'string' ? e.trim() : e))
      .filter((e) => e !== '');
  },
  z
    .array(z.string({ error: (iss) => `must be a list of host:port, got ${show(iss.input)}` }))
    .superRefine((list, ctx) => {
      for (const e of list) {
        const problem = checkHostPort(e);
        if (problem !== null) ctx.addIssue({ code: 'custom', message: problem });
      }
    }),
);

/** cluster keys: base64 of 32 bytes each, primary first (more keys = accepted during a rotation) */
const clusterKeys = z.preprocess(
  (v) => {
    const list = toList(v);
    return Array.isArray(list) ? list.flatMap((e) => (typeof e === 'string' ? e.split(',') : [e])) : list;
  },
  z
    .array(z.string({ error: (iss) => `must be base64 text, got ${show(iss.input)}` }))
    .superRefine((list, ctx) => {
      list.forEach((k, i) => {
        try {
          parseClusterKey(k);
        } catch (err) {
          ctx.addIssue({ code: 'custom', message: `key ${i + 1}: ${(err as Error).message}` });
        }
      });
    }),
);

/** --mesh-cluster-key-file: the keys from a file, so that none shows on a command line */
const clusterKeyFile = text().transform((path, ctx) => {
  try {
    if (statSync(path).size > MAX_CLUSTER_KEY_FILE_BYTES)
      throw new Error(`larger than ${MAX_CLUSTER_KEY_FILE_BYTES} bytes: not a key file`);
    return parseClusterKeyFile(readFileSync(path, 'utf8'));
  } catch (err) {
    // the messages name the file and the line, never a key
    ctx.addIssue({ code: 'custom', message: `${show(path)}: ${(err as Error).message}`, input: path });
    return z.NEVER;
  }
});

/** SWIM member names: printable, no ':' (SMG's rule), at most 64 bytes */
const nodeName = z
  .string({ error: (iss) => `must be a non-empty string, got ${show(iss.input)}` })
  .regex(/^[A-Za-z0-9._-]{1,64}$/, {
    error: (iss) => `must be 1-64 characters of A-Z a-z 0-9 . _ -, got ${show(iss.input)}`,
  });

const ipLiteral = z
  .string({ error: (iss) => `must be an IP address, got ${show(iss.input)}` })
  .refine((h) => isIP(h) !== 0, {
    error: (iss) => `must be an IPv4 or IPv6 address, got ${show(iss.input)}`,
  });

// ---------------------------------------------------------------------------------------------
// The schema: one key per flag, in SMG spelling without the leading `--`.

export const LAUNCH_SHAPE = {
  // §1.1 workers / server
  host: text().default(D.host),
  port: port().default(D.port),
  'health-check-port': port().optional(),
  'worker-urls': workerUrls.default(D['worker-urls']),
  'max-payload-size': int(1).default(D['max-payload-size']),
  'body-read-timeout-secs': int(1, 3600).default(D['body-read-timeout-secs']),
  'max-buffered-request-bytes': int(1024).default(D['max-buffered-request-bytes']),
  'keep-alive-timeout-secs': int(1, 3600).default(D['keep-alive-timeout-secs']),
  'headers-timeout-secs': int(1, 600).default(D['headers-timeout-secs']),
  'request-timeout-secs': secs(1).default(D['request-timeout-secs']),
  'shutdown-grace-period-secs': secs(0).default(D['shutdown-grace-period-secs']),
  'cors-allowed-origins': textList().default(D['cors-allowed-origins']),
  // §1.2 routing
  policy: oneOf(POLICY_NAMES).default(D.policy),
  'cache-threshold': num({ min: 0, max: 1 }).default(D['cache-threshold']),
  'balance-abs-threshold': int(0).default(D['balance-abs-threshold']),
  'balance-rel-threshold': num({ min: 0 }).default(D['balance-rel-threshold']),
  'balance-token-usage-threshold': num({ min: 0, max: 1 }).default(D['balance-token-usage-threshold']),
  'overload-token-usage-threshold': num({ min: 0, max: 1 }).default(D['overload-token-usage-threshold']),
  'eviction-interval': secs(1).default(D['eviction-interval']),
  'max-tree-size': int(1).default(D['max-tree-size']),
  'block-size': int(1).default(D['block-size']),
  'max-idle-secs': secs(1).default(D['max-idle-secs']),
  'assignment-mode': oneOf(ASSIGNMENT_MODES).default(D['assignment-mode']),
  'prefix-token-count': int(1).default(D['prefix-token-count']),
  'prefix-hash-load-factor': num({ min: 1 }).default(D['prefix-hash-load-factor']),
  'least-load-kv-pressure-weight': num({ min: 0 }).default(D['least-load-kv-pressure-weight']),
  'least-load-default-throughput': num({ gt: 0 }).default(D['least-load-default-throughput']),
  'least-load-mean-prefill-tokens': num({ gt: 0 }).default(D['least-load-mean-prefill-tokens']),
  'routing-key-override': bool().default(D['routing-key-override']),
  'enable-igw': bool().default(D['enable-igw']),
  'model-alias': modelAliases.default(D['model-alias']),
  'prefix-block-chars': int(8, 4096).default(D['prefix-block-chars']),
  // §1.4 load monitoring
  'load-monitor-interval': secs(1).default(D['load-monitor-interval']),
  // §1.7 health
  'health-failure-threshold': int(1).default(D['health-failure-threshold']),
  'health-success-threshold': int(1).default(D['health-success-threshold']),
  'health-check-timeout-secs': secs(1).default(D['health-check-timeout-secs']),
  'health-check-interval-secs': secs(1).default(D['health-check-interval-secs']),
  'health-check-endpoint': z
    .string({ error: (iss) => `must be a path starting with "/", got ${show(iss.input)}` })
    .startsWith('/', { error: (iss) => `must start with "/", got ${show(iss.input)}` })
    .default(D['health-check-endpoint']),
  'disable-health-check': bool().default(D['disable-health-check']),
  'remove-unhealthy-workers': bool().default(D['remove-unhealthy-workers']),
  'drain-settle-secs': secs(0).default(D['drain-settle-secs']),
  // §1.10 observability
  'log-dir': text().optional(),
  'log-level': oneOf(LOG_LEVELS).default(D['log-level']),
  'log-json': bool().default(D['log-json']),
  'prometheus-host': text().default(D['prometheus-host']),
  'prometheus-port': port().default(D['prometheus-port']),
  'prometheus-duration-buckets': durationBuckets.optional(),
  'request-id-headers': requestIdHeaders.default(D['request-id-headers']),
  'enable-trace': bool().default(D['enable-trace']),
  'otlp-traces-endpoint': otlpEndpoint.default(D['otlp-traces-endpoint']),
  // §1.7 reliability
  'retry-max-retries': int(0, 100).default(D['retry-max-retries']),
  'retry-initial-backoff-ms': backoffMs().default(D['retry-initial-backoff-ms']),
  'retry-max-backoff-ms': backoffMs().default(D['retry-max-backoff-ms']),
  'retry-backoff-multiplier': num({ min: 1 }).default(D['retry-backoff-multiplier']),
  'retry-jitter-factor': num({ min: 0, max: 1 }).default(D['retry-jitter-factor']),
  'disable-retries': bool().default(D['disable-retries']),
  'retry-budget-ratio': num({ min: 0, max: 10 }).default(D['retry-budget-ratio']),
  'retry-budget-window-secs': int(1, 3600).default(D['retry-budget-window-secs']),
  'retry-budget-min-per-sec': num({ min: 0 }).default(D['retry-budget-min-per-sec']),
  'cb-failure-threshold': int(1).default(D['cb-failure-threshold']),
  'cb-success-threshold': int(1).default(D['cb-success-threshold']),
  'cb-timeout-duration-secs': secs(1).default(D['cb-timeout-duration-secs']),
  'cb-window-duration-secs': secs(1).default(D['cb-window-duration-secs']),
  'disable-circuit-breaker': bool().default(D['disable-circuit-breaker']),
  // §1.8 admission
  'max-concurrent-requests': int(-1).default(D['max-concurrent-requests']),
  'rate-limit-tokens-per-second': num({ gt: 0 }).optional(),
  'queue-size': int(0).default(D['queue-size']),
  'queue-timeout-secs': secs(1).default(D['queue-timeout-secs']),
  'priority-scheduler-enabled': bool().default(D['priority-scheduler-enabled']),
  'priority-scheduler-default-max-class': oneOf(PRIORITY_CLASSES).default(
    D['priority-scheduler-default-max-class'],
  ),
  'priority-scheduler-config': readableFile().optional(),
  'priority-scheduler-tenant-metric-top-n': int(1, 10_000).default(
    D['priority-scheduler-tenant-metric-top-n'],
  ),
  'tenant-rate-limit-enabled': bool().default(D['tenant-rate-limit-enabled']),
  'tenant-rate-limit-config': readableFile().optional(),
  // §1.9 auth
  'api-key': text().optional(),
  'tenant-api-key': tenantApiKeys.default(D['tenant-api-key']),
  'trust-tenant-header': bool().default(D['trust-tenant-header']),
  'tenant-header-name': HEADER_NAME_SINGLE.default(D['tenant-header-name']),
  'control-plane-api-keys': controlPlaneKeys.default(D['control-plane-api-keys']),
  'disable-audit-logging': bool().default(D['disable-audit-logging']),
  // mesh
  'ha-mesh': bool().default(D['ha-mesh']),
  seeds: seedList.default(D.seeds),
  'mesh-host': ipLiteral.optional(),
  'mesh-advertise-host': ipLiteral.optional(),
  'mesh-port': port().default(D['mesh-port']),
  'mesh-node-name': nodeName.optional(),
  'data-dir': text().optional(),
  'mesh-cluster-key': clusterKeys.optional(),
  'mesh-cluster-key-file': clusterKeyFile.optional(),
  'mesh-insecure': bool().default(D['mesh-insecure']),
};

export type LaunchKey = keyof typeof LAUNCH_SHAPE;

/** The file/flag values of `smg launch`, keyed by flag name; cross-field rules included. */
export const LaunchSchema = z.object(LAUNCH_SHAPE).superRefine((v, ctx) => {
  if (ctx.issues.length > 0) return; // compare ports only once each is valid on its own
  if (v['health-check-port'] !== undefined && v['health-check-port'] === v.port) {
    ctx.addIssue({
      code: 'custom',
      path: ['health-check-port'],
      message: `must differ from --port (both are ${v.port})`,
    });
  }
  if (v['prometheus-port'] === v.port) {
    ctx.addIssue({
      code: 'custom',
      path: ['prometheus-port'],
      message: `must differ from --port (both are ${v.port})`,
    });
  }
  if (v['tenant-rate-limit-enabled'] && v['tenant-rate-limit-config'] === undefined) {
    ctx.addIssue({
      code: 'custom',
      path: ['tenant-rate-limit-config'],
      message: 'is required when --tenant-rate-limit-enabled is set',
    });
  }
  if (v['retry-max-backoff-ms'] < v['retry-initial-backoff-ms']) {
    ctx.addIssue({
      code: 'custom',
      path: ['retry-max-backoff-ms'],
      message: `must be >= --retry-initial-backoff-ms (${v['retry-initial-backoff-ms']})`,
    });
  }
  if (v['ha-mesh'] && (v['mesh-port'] === v.port || v['mesh-port'] === v['prometheus-port'])) {
    ctx.addIssue({
      code: 'custom',
      path: ['mesh-port'],
      message: `must differ from --port and --prometheus-port (got ${v['mesh-port']})`,
    });
  }
  if (v['mesh-cluster-key-file'] !== undefined && (v['mesh-cluster-key'] ?? []).length > 0) {
    ctx.addIssue({
      code: 'custom',
      path: ['mesh-cluster-key-file'],
      message:
        'give the keys either in a file or with --mesh-cluster-key (or SMG_MESH_CLUSTER_KEY), not both',
    });
  }
  if (v['ha-mesh']) {
    const keyed = (v['mesh-cluster-key'] ?? []).length > 0 || (v['mesh-cluster-key-file'] ?? []).length > 0;
    const host = v['mesh-host'] ?? (keyed ? '0.0.0.0' : '127.0.0.1');
    if (!keyed && !v['mesh-insecure'] && !isLoopback(host)) {
      ctx.addIssue({
        code: 'custom',
        path: ['mesh-host'],
        message:
          `${host} is not a loopback address and no --mesh-cluster-key (or SMG_MESH_CLUSTER_KEY) is set: ` +
          'give a key (openssl rand -base64 32), or --mesh-insecure to run an unauthenticated mesh',
      });
    }
    const adv = v['mesh-advertise-host'];
    if (adv !== undefined && (adv === '0.0.0.0' || adv === '::')) {
      ctx.addIssue({
        code: 'custom',
        path: ['mesh-advertise-host'],
        message: `must be an address peers can reach, not ${adv}`,
      });
    }
  } else {
    // the node name also names the data dir, so it is allowed alone
    for (const flag of [
      'seeds',
      'mesh-host',
      'mesh-advertise-host',
      'mesh-cluster-key',
      'mesh-cluster-key-file',
    ] as const) {
      const val = v[flag];
      if (val !== undefined && !(Array.isArray(val) && val.length === 0))
        ctx.addIssue({ code: 'custom', path: [flag], message: 'needs --ha-mesh (or --enable-mesh)' });
    }
  }
  if (v['health-check-port'] !== undefined && v['health-check-port'] === v['prometheus-port']) {
    ctx.addIssue({
      code: 'custom',
      path: ['health-check-port'],
      message: `must differ from --prometheus-port (both are ${v['prometheus-port']})`,
    });
  }
});

// ---------------------------------------------------------------------------------------------
// What the command line knows about each flag: how it takes values, and its help line.

export type FlagGroup =
  'Workers/server' | 'Routing' | 'Health' | 'Reliability' | 'Admission' | 'Auth' | 'Observability' | 'Mesh';

export interface FlagInfo {
  group: FlagGroup;
  /** `value`: exactly one; `list`: one or more, until the next flag, repeatable; `switch`: none */
  arity: 'value' | 'list' | 'switch';
  /** value placeholder shown in help */
  placeholder?: string;
  /** help shown for the default when it is not simply the default value */
  defaultText?: string;
  help: string;
}

const W: FlagGroup = 'Workers/server';
const R: FlagGroup = 'Routing';
const H: FlagGroup = 'Health';
const O: FlagGroup = 'Observability';
const REL: FlagGroup = 'Reliability';
const ADM: FlagGroup = 'Admission';
const AUTH: FlagGroup = 'Auth';
const MESH: FlagGroup = 'Mesh';

export const LAUNCH_FLAGS: { readonly [K in LaunchKey]: FlagInfo } = {
  host: { group: W, arity: 'value', placeholder: 'ADDR', help: 'bind address of the main listener' },
  port: { group: W, arity: 'value', placeholder: 'PORT', help: 'main HTTP port' },
  'health-check-port': {
    group: W,
    arity: 'value',
    placeholder: 'PORT',
    defaultText: 'unset',
    help: 'extra listener for /liveness, /readiness, /health only',
  },
  'worker-urls': {
    group: W,
    arity: 'list',
    placeholder: 'URL...',
    defaultText: 'none',
    help: 'worker base URLs, http(s); host:port means http; commas ok',
  },
  'max-payload-size': { group: W, arity: 'value', placeholder: 'BYTES', help: 'request body size limit' },
  'body-read-timeout-secs': {
    group: W,
    arity: 'value',
    placeholder: 'SECS',
    help: 'time for a whole request body to arrive, from its first read (then 408)',
  },
  'max-buffered-request-bytes': {
    group: W,
    arity: 'value',
    placeholder: 'BYTES',
    defaultText: 'a quarter of the V8 heap limit',
    help: 'request bodies held at once; past it new requests get 503 + Retry-After',
  },
  'keep-alive-timeout-secs': {
    group: W,
    arity: 'value',
    placeholder: 'SECS',
    help: 'idle time before a keep-alive client connection is closed',
  },
  'headers-timeout-secs': {
    group: W,
    arity: 'value',
    placeholder: 'SECS',
    help: 'time for the headers of a request to arrive (then 408)',
  },
  'request-timeout-secs': { group: W, arity: 'value', placeholder: 'SECS', help: 'upstream request timeout' },
  'shutdown-grace-period-secs': {
    group: W,
    arity: 'value',
    placeholder: 'SECS',
    help: 'time for in-flight requests to finish on shutdown',
  },
  'cors-allowed-origins': {
    group: W,
    arity: 'list',
    placeholder: 'ORIGIN...',
    defaultText: 'none (any origin)',
    help: 'allowed CORS origins',
  },
  policy: {
    group: R,
    arity: 'value',
    placeholder: 'NAME',
    help: `routing policy: ${POLICY_NAMES.join(', ')}`,
  },
  'cache-threshold': {
    group: R,
    arity: 'value',
    placeholder: '0..1',
    help: 'cache_aware: prefix-match ratio needed to follow the cache',
  },
  'balance-abs-threshold': {
    group: R,
    arity: 'value',
    placeholder: 'N',
    help: 'cache_aware/bucket: load gap that counts as imbalance',
  },
  'balance-rel-threshold': {
    group: R,
    arity: 'value',
    placeholder: 'X',
    help: 'cache_aware/bucket: load ratio that counts as imbalance',
  },
  'balance-token-usage-threshold': {
    group: R,
    arity: 'value',
    placeholder: '0..1',
    defaultText: '1.0 (off)',
    help: 'cache_aware: KV-usage spread that triggers balancing',
  },
  'overload-token-usage-threshold': {
    group: R,
    arity: 'value',
    placeholder: '0..1',
    defaultText: '1.0 (off)',
    help: 'cache_aware: KV-usage ceiling that triggers balancing',
  },
  'eviction-interval': {
    group: R,
    arity: 'value',
    placeholder: 'SECS',
    help: 'cache_aware tree and manual sticky-map eviction period',
  },
  'max-tree-size': {
    group: R,
    arity: 'value',
    placeholder: 'N',
    help: 'cache_aware: characters kept per prefix tree',
  },
  'block-size': { group: R, arity: 'value', placeholder: 'N', help: 'KV block size (tokens) of the engines' },
  'max-idle-secs': {
    group: R,
    arity: 'value',
    placeholder: 'SECS',
    help: 'manual: idle time before a sticky key is forgotten',
  },
  'assignment-mode': {
    group: R,
    arity: 'value',
    placeholder: 'MODE',
    help: `manual: how new keys are assigned: ${ASSIGNMENT_MODES.join(', ')}`,
  },
  'prefix-token-count': {
    group: R,
    arity: 'value',
    placeholder: 'N',
    help: 'prefix_hash: prefix length hashed',
  },
  'prefix-hash-load-factor': {
    group: R,
    arity: 'value',
    placeholder: 'X',
    help: 'prefix_hash: bounded-load factor (>= 1)',
  },
  'least-load-kv-pressure-weight': {
    group: R,
    arity: 'value',
    placeholder: 'SECS',
    help: 'least_load: weight of KV-cache pressure',
  },
  'least-load-default-throughput': {
    group: R,
    arity: 'value',
    placeholder: 'TOK/S',
    help: 'least_load: throughput assumed if unknown',
  },
  'least-load-mean-prefill-tokens': {
    group: R,
    arity: 'value',
    placeholder: 'N',
    help: 'least_load: prefill tokens assumed if unknown',
  },
  'routing-key-override': {
    group: R,
    arity: 'switch',
    help: 'honour X-SMG-Routing-Key stickily under every policy',
  },
  'enable-igw': { group: R, arity: 'switch', help: 'multi-model inference-gateway mode' },
  'model-alias': {
    group: R,
    arity: 'list',
    placeholder: 'ALIAS=MODEL...',
    defaultText: 'none',
    help: 'requests naming ALIAS go to MODEL (case-sensitive)',
  },
  'prefix-block-chars': {
    group: R,
    arity: 'value',
    placeholder: '8..4096',
    help: 'characters per prefix-index block (HTTP mode)',
  },
  'load-monitor-interval': {
    group: R,
    arity: 'value',
    placeholder: 'SECS',
    help: 'worker load poll period',
  },
  'health-failure-threshold': {
    group: H,
    arity: 'value',
    placeholder: 'N',
    help: 'failed probes in a row before a worker is not ready',
  },
  'health-success-threshold': {
    group: H,
    arity: 'value',
    placeholder: 'N',
    help: 'good probes in a row before a worker is ready',
  },
  'health-check-timeout-secs': {
    group: H,
    arity: 'value',
    placeholder: 'SECS',
    help: 'timeout of one probe',
  },
  'health-check-interval-secs': { group: H, arity: 'value', placeholder: 'SECS', help: 'probe period' },
  'health-check-endpoint': { group: H, arity: 'value', placeholder: 'PATH', help: 'HTTP path probed' },
  'disable-health-check': {
    group: H,
    arity: 'switch',
    help: 'never probe workers; they start ready',
  },
  'remove-unhealthy-workers': {
    group: H,
    arity: 'switch',
    help: 'remove workers that fail their health checks',
  },
  'drain-settle-secs': {
    group: H,
    arity: 'value',
    placeholder: 'SECS',
    help: 'drain time of a deleted worker before removal',
  },
  'log-dir': {
    group: O,
    arity: 'value',
    placeholder: 'DIR',
    defaultText: 'unset (stdout only)',
    help: 'also write log files to DIR',
  },
  'log-level': {
    group: O,
    arity: 'value',
    placeholder: 'LEVEL',
    help: `log level: ${LOG_LEVELS.join(', ')}`,
  },
  'log-json': { group: O, arity: 'switch', help: 'log JSON lines' },
  'prometheus-host': {
    group: O,
    arity: 'value',
    placeholder: 'ADDR',
    help: 'bind address of the metrics listener',
  },
  'prometheus-port': { group: O, arity: 'value', placeholder: 'PORT', help: 'metrics port (GET /metrics)' },
  'prometheus-duration-buckets': {
    group: O,
    arity: 'list',
    placeholder: 'SECS...',
    defaultText: 'built-in',
    help: 'duration histogram bucket bounds, increasing',
  },
  'request-id-headers': {
    group: O,
    arity: 'list',
    placeholder: 'NAME...',
    help: 'inbound request-id headers, first match wins',
  },
  'enable-trace': { group: O, arity: 'switch', help: 'export OpenTelemetry traces (OTLP/HTTP)' },
  'otlp-traces-endpoint': {
    group: O,
    arity: 'value',
    placeholder: 'URL',
    help: 'OTLP/HTTP traces URL (host:port means http://host:port/v1/traces)',
  },
  'retry-max-retries': {
    group: REL,
    arity: 'value',
    placeholder: 'N',
    help: 'retries after the first attempt (SMG counts attempts: its 5 = 4 here)',
  },
  'retry-initial-backoff-ms': { group: REL, arity: 'value', placeholder: 'MS', help: 'first retry backoff' },
  'retry-max-backoff-ms': { group: REL, arity: 'value', placeholder: 'MS', help: 'backoff ceiling' },
  'retry-backoff-multiplier': {
    group: REL,
    arity: 'value',
    placeholder: 'X',
    help: 'backoff growth per retry',
  },
  'retry-jitter-factor': {
    group: REL,
    arity: 'value',
    placeholder: '0..1',
    help: '± random fraction of a backoff',
  },
  'disable-retries': { group: REL, arity: 'switch', help: 'never retry' },
  'retry-budget-ratio': {
    group: REL,
    arity: 'value',
    placeholder: 'X',
    help: 'retries allowed per request over the budget window',
  },
  'retry-budget-window-secs': {
    group: REL,
    arity: 'value',
    placeholder: 'SECS',
    help: 'retry budget window',
  },
  'retry-budget-min-per-sec': {
    group: REL,
    arity: 'value',
    placeholder: 'N',
    help: 'retries per second always allowed, whatever the ratio',
  },
  'cb-failure-threshold': {
    group: REL,
    arity: 'value',
    placeholder: 'N',
    help: 'consecutive failures within the window that open a circuit',
  },
  'cb-success-threshold': {
    group: REL,
    arity: 'value',
    placeholder: 'N',
    help: 'half-open successes that close a circuit',
  },
  'cb-timeout-duration-secs': {
    group: REL,
    arity: 'value',
    placeholder: 'SECS',
    help: 'time a circuit stays open before half-open probes',
  },
  'cb-window-duration-secs': {
    group: REL,
    arity: 'value',
    placeholder: 'SECS',
    help: 'failures older than this no longer count towards opening',
  },
  'disable-circuit-breaker': { group: REL, arity: 'switch', help: 'never open circuits' },
  'max-concurrent-requests': {
    group: ADM,
    arity: 'value',
    placeholder: 'N',
    defaultText: '-1 (off)',
    help: 'in-flight inference requests admitted at once',
  },
  'rate-limit-tokens-per-second': {
    group: ADM,
    arity: 'value',
    placeholder: 'N',
    defaultText: 'unset (no start-rate limit)',
    help: 'request starts per second (token bucket)',
  },
  'queue-size': {
    group: ADM,
    arity: 'value',
    placeholder: 'N',
    help: 'requests waiting for admission (0: none)',
  },
  'queue-timeout-secs': {
    group: ADM,
    arity: 'value',
    placeholder: 'SECS',
    help: 'longest admission wait (then 408)',
  },
  'priority-scheduler-enabled': {
    group: ADM,
    arity: 'switch',
    help: 'priority classes (x-smg-priority) instead of the plain queue',
  },
  'priority-scheduler-default-max-class': {
    group: ADM,
    arity: 'value',
    placeholder: 'CLASS',
    help: `highest class for tenants not in the config: ${PRIORITY_CLASSES.join(', ')}`,
  },
  'priority-scheduler-config': {
    group: ADM,
    arity: 'value',
    placeholder: 'FILE',
    defaultText: 'unset',
    help: 'YAML: capacity, classes, tenant_policies',
  },
  'priority-scheduler-tenant-metric-top-n': {
    group: ADM,
    arity: 'value',
    placeholder: 'N',
    help: 'tenants named in scheduler metric labels',
  },
  'tenant-rate-limit-enabled': { group: ADM, arity: 'switch', help: 'enforce per-tenant RPM/TPM limits' },
  'tenant-rate-limit-config': {
    group: ADM,
    arity: 'value',
    placeholder: 'FILE',
    defaultText: 'unset',
    help: 'YAML: default_policy, tenants, model_rules',
  },
  'api-key': {
    group: AUTH,
    arity: 'value',
    placeholder: 'KEY',
    defaultText: 'unset',
    help: 'shared key for data and admin plane; also sent to workers',
  },
  'tenant-api-key': {
    group: AUTH,
    arity: 'list',
    placeholder: 'TENANT:KEY...',
    defaultText: 'none',
    help: 'data-plane keys, each mapped to a tenant',
  },
  'trust-tenant-header': { group: AUTH, arity: 'switch', help: 'take the tenant from --tenant-header-name' },
  'tenant-header-name': { group: AUTH, arity: 'value', placeholder: 'NAME', help: 'tenant header' },
  'control-plane-api-keys': {
    group: AUTH,
    arity: 'list',
    placeholder: 'ID:NAME:ROLE:KEY...',
    defaultText: 'none',
    help: 'admin-API keys, role admin or user (env CONTROL_PLANE_API_KEYS)',
  },
  'disable-audit-logging': { group: AUTH, arity: 'switch', help: 'no audit log line for admin calls' },
  'ha-mesh': { group: MESH, arity: 'switch', help: 'join the HA mesh of peers (alias --enable-mesh)' },
  seeds: {
    group: MESH,
    arity: 'list',
    placeholder: 'HOST:PORT...',
    defaultText: 'none',
    help: 'peers to join through, DNS names allowed; all are retried with backoff (alias --mesh-peer-urls)',
  },
  'mesh-host': {
    group: MESH,
    arity: 'value',
    placeholder: 'IP',
    defaultText: '0.0.0.0 with a cluster key, else 127.0.0.1',
    help: 'bind address of the mesh (UDP for SWIM, TCP for libp2p)',
  },
  'mesh-advertise-host': {
    group: MESH,
    arity: 'value',
    placeholder: 'IP',
    defaultText: 'bind address, or the first non-loopback IPv4',
    help: 'address peers are told to reach',
  },
  'mesh-port': { group: MESH, arity: 'value', placeholder: 'PORT', help: 'mesh port (UDP + TCP)' },
  'mesh-node-name': {
    group: MESH,
    arity: 'value',
    placeholder: 'NAME',
    defaultText: '<hostname>-<port>',
    help: 'stable node name, also names the default data dir (alias --mesh-server-name)',
  },
  'data-dir': {
    group: MESH,
    arity: 'value',
    placeholder: 'DIR',
    defaultText: './.smg/<node-name>',
    help: 'where the node keeps its SQLite state (workers, registry, prefix index); none: keep nothing',
  },
  'mesh-cluster-key': {
    group: MESH,
    arity: 'list',
    placeholder: 'BASE64...',
    defaultText: 'unset (env SMG_MESH_CLUSTER_KEY)',
    help: '32-byte key that encrypts the mesh; more keys are accepted during a rotation (primary first)',
  },
  'mesh-cluster-key-file': {
    group: MESH,
    arity: 'value',
    placeholder: 'PATH',
    defaultText: 'unset (env SMG_MESH_CLUSTER_KEY_FILE)',
    help: 'the cluster keys from a file (one base64 key per line, primary first; # comments), kept off the command line; not with --mesh-cluster-key',
  },
  'mesh-insecure': {
    group: MESH,
    arity: 'switch',
    help: 'allow an unauthenticated mesh on a non-loopback address',
  },
};

/** SMG's spellings of our flags */
export const FLAG_ALIASES: Readonly<Record<string, LaunchKey>> = {
  'enable-mesh': 'ha-mesh',
  'mesh-peer-urls': 'seeds',
  'mesh-server-name': 'mesh-node-name',
};

/** flags that are not launch settings */
export const META_FLAGS = ['config', 'help', 'version'] as const;

const FLAG_NAMES = Object.keys(LAUNCH_FLAGS) as LaunchKey[];

function isLaunchKey(name: string): name is LaunchKey {
  return Object.hasOwn(LAUNCH_FLAGS, name);
}

/** `SMG_WORKER_URLS` for `worker-urls` */
export function envName(flag: string): string {
  return `SMG_${flag.toUpperCase().replace(/-/g, '_')}`;
}

// ---------------------------------------------------------------------------------------------
// Suggestions for typos.

function editDistance(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const cur = [i];
    for (let j = 1; j <= b.length; j++) {
      cur[j] = Math.min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
    prev = cur;
  }
  return prev[b.length];
}

function suggest(name: string): string | undefined {
  const wanted = name.toLowerCase().replace(/_/g, '-');
  let best: string | undefined;
  let bestDistance = Infinity;
  for (const candidate of [...FLAG_NAMES, ...META_FLAGS]) {
    const d = editDistance(wanted, candidate);
    if (d < bestDistance) {
      best = candidate;
      bestDistance = d;
    }
  }
  return bestDistance <= Math.max(2, Math.floor(wanted.length / 4)) ? best : undefined;
}

// ---------------------------------------------------------------------------------------------
// argv

type RawValue = string | string[] | boolean;

interface ScannedArgv {
  values: Map<LaunchKey, RawValue>;
  config?: string;
}

/** a token that starts a new flag rather than being a value (negative numbers are values) */
function looksLikeFlag(token: string): boolean {
  return token.startsWith('--') || /^-[A-Za-z]/.test(token);
}

/**
 * `help` or `version` when argv asks for it (`--help`, `-h`, `--version`, `-V`) anywhere; the caller
 * answers it before calling {@link parseLaunchArgs}, which rejects these flags.
 */
export function infoFlag(argv: readonly string[]): 'help' | 'version' | undefined {
  for (const token of argv) {
    if (token === '--help' || token === '-h') return 'help';
    if (token === '--version' || token === '-V') return 'version';
  }
  return undefined;
}

function scanArgv(argv: readonly string[]): ScannedArgv {
  const out: ScannedArgv = { values: new Map() };
  let lastSwitch: string | undefined;
  let i = 0;
  while (i < argv.length) {
    const token = argv[i++];
    if (!looksLikeFlag(token)) {
      const hint =
        lastSwitch !== undefined && /^(true|false)$/i.test(token)
          ? ` (--${lastSwitch} is a switch; write --${lastSwitch}=${token.toLowerCase()})`
          : '';
      throw new ConfigError(`unexpected argument ${show(token)}${hint}`);
    }
    lastSwitch = undefined;
    if (token === '-h' || token === '-V' || token === '--help' || token === '--version') {
      const what = token === '-h' || token === '--help' ? '--help' : '--version';
      throw new ConfigError(`${token} cannot be combined with other arguments; run smg ${what} alone`);
    }
    if (!token.startsWith('--')) throw new ConfigError(`unknown flag ${token}`);
    const eq = token.indexOf('=');
    const spelled = eq < 0 ? token.slice(2) : token.slice(2, eq);
    const inline = eq < 0 ? undefined : token.slice(eq + 1);
    const flag = `--${spelled}`;

    const takeOne = (): string => {
      if (inline !== undefined) {
        if (inline === '') throw new ConfigError(`${flag}: missing value`);
        return inline;
      }
      const next = argv[i];
      if (next === undefined || looksLikeFlag(next)) throw new ConfigError(`${flag}: missing value`);
      i++;
      return next;
    };

    if (spelled === 'config') {
      if (out.config !== undefined) throw new ConfigError('--config: given more than once');
      out.config = takeOne();
      continue;
    }
    const name = Object.hasOwn(FLAG_ALIASES, spelled) ? FLAG_ALIASES[spelled] : spelled;
    if (!isLaunchKey(name)) {
      const s = suggest(name);
      throw new ConfigError(`unknown flag ${flag}${s === undefined ? '' : ` (did you mean --${s}?)`}`);
    }
    const { arity } = LAUNCH_FLAGS[name];
    if (arity === 'list') {
      const values: string[] = [takeOne()];
      while (i < argv.length && !looksLikeFlag(argv[i])) values.push(argv[i++]);
      const prior = out.values.get(name);
      out.values.set(name, Array.isArray(prior) ? [...prior, ...values] : values);
      continue;
    }
    if (out.values.has(name))
      throw new ConfigError(
        `${flag}: given more than once${spelled !== name ? ` (--${spelled} is --${name})` : ''}`,
      );
    if (arity === 'switch') {
      if (inline === '')
        throw new ConfigError(`${flag}: missing value after "="; use ${flag} or ${flag}=false`);
      out.values.set(name, inline ?? true);
      if (inline === undefined) lastSwitch = name;
    } else {
      out.values.set(name, takeOne());
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// environment

/** SMG's own environment spellings, used when the SMG_ form is absent */
const ENV_ALIASES: Partial<Record<LaunchKey, string>> = {
  'control-plane-api-keys': 'CONTROL_PLANE_API_KEYS',
};

function readEnv(env: NodeJS.ProcessEnv): Map<LaunchKey, RawValue> {
  const out = new Map<LaunchKey, RawValue>();
  for (const [name, alias] of Object.entries(ENV_ALIASES) as [LaunchKey, string][]) {
    const value = env[alias];
    if (value !== undefined && value.trim() !== '')
      out.set(
        name,
        value.split(/[\s,]+/).filter((s) => s !== ''),
      );
  }
  for (const name of FLAG_NAMES) {
    const value = env[envName(name)];
    if (value === undefined || value.trim() === '') continue;
    out.set(
      name,
      LAUNCH_FLAGS[name].arity === 'list' ? value.split(/[\s,]+/).filter((s) => s !== '') : value,
    );
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// config file

/** Reads a `--config` file into flag-keyed raw values (validated later, with everything else). */
export function loadConfigFile(path: string): Map<LaunchKey, unknown> {
  let source: string;
  try {
    source = readConfigSource(path);
  } catch (err) {
    if (err instanceof ConfigFileError && err.problem === 'too_large')
      throw new ConfigError(`--config: ${show(path)}: ${err.message}`);
    throw new ConfigError(`--config: cannot read ${show(path)}: ${(err as Error).message}`);
  }
  const ext = extname(path).toLowerCase();
  let doc: unknown;
  let format: 'json' | 'yaml' = ext === '.json' ? 'json' : 'yaml';
  try {
    if (ext === '.json' || ext === '.yaml' || ext === '.yml') doc = parseConfigSource(source, format);
    else {
      try {
        doc = parseConfigSource(source, 'json');
        format = 'json';
      } catch {
        doc = parseConfigSource(source, 'yaml');
      }
    }
  } catch (err) {
    throw new ConfigError(
      `--config: cannot parse ${show(path)} as ${format.toUpperCase()}: ${(err as Error).message}`,
    );
  }
  if (doc === null || doc === undefined) return new Map();
  if (typeof doc !== 'object' || Array.isArray(doc)) {
    throw new ConfigError(
      `--config: ${show(path)} must hold a mapping of flag names to values, got ${show(doc)}`,
    );
  }
  const out = new Map<LaunchKey, unknown>();
  const spelledAs = new Map<LaunchKey, string>();
  for (const [key, value] of Object.entries(doc)) {
    const dashed = key.replace(/_/g, '-');
    const name = Object.hasOwn(FLAG_ALIASES, dashed) ? FLAG_ALIASES[dashed] : dashed;
    if (!isLaunchKey(name)) {
      const s = suggest(key);
      const hint =
        s === undefined || (META_FLAGS as readonly string[]).includes(s) ? '' : ` (did you mean ${show(s)}?)`;
      throw new ConfigError(`--config: unknown key ${show(key)} in ${show(path)}${hint}`);
    }
    const earlier = spelledAs.get(name);
    if (earlier !== undefined) {
      throw new ConfigError(
        `--config: keys ${show(earlier)} and ${show(key)} in ${show(path)} are the same setting`,
      );
    }
    spelledAs.set(name, key);
    if (value !== null) out.set(name, value);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// putting it together

/**
 * Parses the arguments of `smg` / `smg launch` (argv after the subcommand) into a validated Config.
 * `env` supplies `SMG_<FLAG>` variables (e.g. `SMG_POLICY`, `SMG_WORKER_URLS=a,b`) and
 * `SMG_CONFIG`; flags win over env, env over the `--config` file, the file over defaults.
 * Throws {@link ConfigError} listing every problem found.
 */
export function parseLaunchArgs(argv: string[], env: NodeJS.ProcessEnv = process.env): Config {
  const scanned = scanArgv(argv);
  const raw: Record<string, unknown> = {};
  const origin = new Map<string, string>();

  const configPath = scanned.config ?? (env.SMG_CONFIG?.trim() || undefined);
  if (configPath !== undefined) {
    for (const [name, value] of loadConfigFile(configPath)) {
      raw[name] = value;
      origin.set(name, ` (in config file ${show(configPath)})`);
    }
  }
  for (const [name, value] of readEnv(env)) {
    raw[name] = value;
    origin.set(name, ` (from ${envName(name)})`);
  }
  for (const [name, value] of scanned.values) {
    raw[name] = value;
    origin.delete(name);
  }

  const result = LaunchSchema.safeParse(raw);
  if (!result.success) {
    const messages = result.error.issues.map((issue) => {
      const key = String(issue.path[0] ?? '');
      return `${key === '' ? '' : `--${key}: `}${issue.message}${origin.get(key) ?? ''}`;
    });
    throw new ConfigError([...new Set(messages)].join('\n'));
  }
  const v = result.data;
  // the admission files are checked here too, so a bad file is a usage error (exit 2) naming it
  try {
    if (v['tenant-rate-limit-enabled'] && v['tenant-rate-limit-config'] !== undefined) {
      validateTenantRules(loadTenantRateLimitConfig(v['tenant-rate-limit-config']), {
        trustTenantHeader: v['trust-tenant-header'],
      });
    }
  } catch (err) {
    throw new ConfigError(`--tenant-rate-limit-config: ${(err as Error).message}`);
  }
  try {
    if (v['priority-scheduler-config'] !== undefined)
      loadPrioritySchedulerConfig(v['priority-scheduler-config']);
  } catch (err) {
    throw new ConfigError(`--priority-scheduler-config: ${(err as Error).message}`);
  }
  return {
    host: v.host,
    port: v.port,
    ...(v['health-check-port'] !== undefined && { healthCheckPort: v['health-check-port'] }),
    workerUrls: [...v['worker-urls']],
    maxPayloadSize: v['max-payload-size'],
    bodyReadTimeoutSecs: v['body-read-timeout-secs'],
    maxBufferedRequestBytes: v['max-buffered-request-bytes'],
    keepAliveTimeoutSecs: v['keep-alive-timeout-secs'],
    headersTimeoutSecs: v['headers-timeout-secs'],
    requestTimeoutSecs: v['request-timeout-secs'],
    shutdownGracePeriodSecs: v['shutdown-grace-period-secs'],
    corsAllowedOrigins: [...v['cors-allowed-origins']],
    policy: v.policy,
    policyParams: {
      cacheThreshold: v['cache-threshold'],
      balanceAbsThreshold: v['balance-abs-threshold'],
      balanceRelThreshold: v['balance-rel-threshold'],
      balanceTokenUsageThreshold: v['balance-token-usage-threshold'],
      overloadTokenUsageThreshold: v['overload-token-usage-threshold'],
      evictionIntervalSecs: v['eviction-interval'],
      maxTreeSize: v['max-tree-size'],
      blockSize: v['block-size'],
      maxIdleSecs: v['max-idle-secs'],
      assignmentMode: v['assignment-mode'],
      prefixTokenCount: v['prefix-token-count'],
      prefixHashLoadFactor: v['prefix-hash-load-factor'],
      leastLoadKvPressureWeight: v['least-load-kv-pressure-weight'],
      leastLoadDefaultThroughput: v['least-load-default-throughput'],
      leastLoadMeanPrefillTokens: v['least-load-mean-prefill-tokens'],
    },
    routingKeyOverride: v['routing-key-override'],
    enableIgw: v['enable-igw'],
    modelAliases: { ...v['model-alias'] },
    prefixBlockChars: v['prefix-block-chars'],
    loadMonitorIntervalSecs: v['load-monitor-interval'],
    health: {
      failureThreshold: v['health-failure-threshold'],
      successThreshold: v['health-success-threshold'],
      timeoutSecs: v['health-check-timeout-secs'],
      intervalSecs: v['health-check-interval-secs'],
      endpoint: v['health-check-endpoint'],
      disabled: v['disable-health-check'],
      removeUnhealthyWorkers: v['remove-unhealthy-workers'],
      drainSettleSecs: v['drain-settle-secs'],
    },
    logLevel: v['log-level'],
    logJson: v['log-json'],
    ...(v['log-dir'] !== undefined && { logDir: v['log-dir'] }),
    prometheusHost: v['prometheus-host'],
    prometheusPort: v['prometheus-port'],
    ...(v['prometheus-duration-buckets'] !== undefined && {
      prometheusDurationBuckets: [...v['prometheus-duration-buckets']],
    }),
    requestIdHeaders: [...v['request-id-headers']],
    retry: {
      maxRetries: v['disable-retries'] ? 0 : v['retry-max-retries'],
      initialBackoffMs: v['retry-initial-backoff-ms'],
      maxBackoffMs: v['retry-max-backoff-ms'],
      backoffMultiplier: v['retry-backoff-multiplier'],
      jitterFactor: v['retry-jitter-factor'],
      disabled: v['disable-retries'],
      budgetRatio: v['retry-budget-ratio'],
      budgetWindowSecs: v['retry-budget-window-secs'],
      budgetMinPerSec: v['retry-budget-min-per-sec'],
    },
    circuitBreaker: {
      failureThreshold: v['cb-failure-threshold'],
      successThreshold: v['cb-success-threshold'],
      timeoutDurationSecs: v['cb-timeout-duration-secs'],
      windowDurationSecs: v['cb-window-duration-secs'],
      disabled: v['disable-circuit-breaker'],
    },
    admission: {
      maxConcurrentRequests: v['max-concurrent-requests'],
      ...(v['rate-limit-tokens-per-second'] !== undefined && {
        rateLimitTokensPerSecond: v['rate-limit-tokens-per-second'],
      }),
      queueSize: v['queue-size'],
      queueTimeoutSecs: v['queue-timeout-secs'],
      priorityScheduler: v['priority-scheduler-enabled'],
      priorityDefaultMaxClass: v['priority-scheduler-default-max-class'],
      ...(v['priority-scheduler-config'] !== undefined && {
        priorityConfigPath: v['priority-scheduler-config'],
      }),
      priorityTenantMetricTopN: v['priority-scheduler-tenant-metric-top-n'],
      tenantRateLimit: v['tenant-rate-limit-enabled'],
      ...(v['tenant-rate-limit-config'] !== undefined && {
        tenantRateLimitConfigPath: v['tenant-rate-limit-config'],
      }),
    },
    auth: {
      ...(v['api-key'] !== undefined && { apiKey: v['api-key'] }),
      tenantApiKeys: v['tenant-api-key'].map((e) => ({ ...e })),
      trustTenantHeader: v['trust-tenant-header'],
      tenantHeaderName: v['tenant-header-name'],
      controlPlaneApiKeys: v['control-plane-api-keys'].map((e) => ({ ...e })),
      disableAuditLogging: v['disable-audit-logging'],
    },
    tracing: { enabled: v['enable-trace'], otlpTracesEndpoint: v['otlp-traces-endpoint'] },
    mesh: meshConfig(v),
  };
}

function meshConfig(v: z.infer<typeof LaunchSchema>): MeshConfig {
  const flagKeys = v['mesh-cluster-key'] ?? [];
  const keys = flagKeys.length > 0 ? flagKeys : (v['mesh-cluster-key-file'] ?? []);
  const nodeName = v['mesh-node-name'] ?? defaultNodeName(v.port);
  // every node keeps its state (workers added over the API, the prefix index) unless told not to
  const given = v['data-dir'];
  const dataDir = given === DATA_DIR_NONE ? undefined : (given ?? join('.smg', nodeName));
  return {
    enabled: v['ha-mesh'],
    seeds: [...v.seeds],
    host: v['mesh-host'] ?? (keys.length > 0 ? '0.0.0.0' : '127.0.0.1'),
    ...(v['mesh-advertise-host'] !== undefined && { advertiseHost: v['mesh-advertise-host'] }),
    port: v['mesh-port'],
    nodeName,
    ...(dataDir !== undefined && { dataDir }),
    clusterKeys: keys.map((k) => k.trim()),
    insecure: v['mesh-insecure'],
  };
}

/** `--data-dir none`: keep no state (a directory named "none" is `./none`) */
export const DATA_DIR_NONE = 'none';

/**
 * `<hostname>-<port>` (the API port): stable across restarts, and so is the default data dir
 * `./.smg/<node-name>`; unique per host, so two gateways started in one directory get two data
 * dirs. The mesh port is not part of it: a node keeps its name and its state when it joins a mesh
 * or moves its mesh port.
 */
function defaultNodeName(port: number): string {
  const host =
    hostname()
      .split('.')[0]
      .replace(/[^A-Za-z0-9_-]/g, '-')
      .slice(0, 50) || 'smg';
  return `${host}-${port}`;
}

export function isLoopback(host: string): boolean {
  return host === '::1' || /^127\./.test(host);
}
