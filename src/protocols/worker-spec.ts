/**
 * SMG's WorkerSpec (the body of POST/PUT /workers) and WorkerInfo (what GET /workers returns),
 * validated with zod at the admin boundary. Inventory §2.5.
 */
import { z } from 'zod';
import type { WorkerSpec } from '../state/worker.js';

const SCHEME_RE = /^([A-Za-z][A-Za-z0-9+.-]*):\/\//;

/**
 * Validates and normalises one worker URL: a bare `host:port` means `http://host:port` (as in SMG),
 * only http(s) is accepted, a trailing `/` is stripped. Kept as the user wrote it otherwise, since
 * the URL is the worker's identity (admin API, metrics labels).
 */
export function checkWorkerUrl(raw: string): { ok: true; url: string } | { ok: false; reason: string } {
  const trimmed = raw.trim();
  if (trimmed === '') return { ok: false, reason: 'empty worker URL' };
  const scheme = SCHEME_RE.exec(trimmed)?.[1];
  if (scheme !== undefined && !/^https?$/i.test(scheme)) {
    return {
      ok: false,
      reason: `unsupported scheme ${JSON.stringify(scheme.toLowerCase())} in ${trimmed}; only http and https are supported in this version`,
    };
  }
  const withScheme = scheme === undefined ? `http://${trimmed}` : trimmed;
  let parsed: URL;
  try {
    parsed = new URL(withScheme);
  } catch {
    return { ok: false, reason: `invalid URL ${JSON.stringify(raw)}` };
  }
  if (parsed.hostname === '') return { ok: false, reason: `invalid URL ${JSON.stringify(raw)} (no host)` };
  if (parsed.search !== '' || parsed.hash !== '' || /[?#]/.test(withScheme)) {
    return {
      ok: false,
      reason: `invalid URL ${JSON.stringify(raw)} (query strings and fragments are not allowed)`,
    };
  }
  if (parsed.username !== '' || parsed.password !== '') {
    return { ok: false, reason: `invalid URL ${JSON.stringify(raw)} (credentials are not allowed)` };
  }
  return { ok: true, url: withScheme.replace(/\/+$/, '') };
}

const modelCard = z.union([z.string().min(1), z.object({ id: z.string().min(1) }).loose()]);

const healthSchema = z
  .object({
    timeout_secs: z.number().int().positive().optional(),
    check_interval_secs: z.number().int().positive().optional(),
    success_threshold: z.number().int().positive().optional(),
    failure_threshold: z.number().int().positive().optional(),
    disable_health_check: z.boolean().optional(),
    drain_settle_secs: z.number().int().nonnegative().optional(),
  })
  .strict();

/** SMG's `resilience` block; unknown keys are rejected so a typo cannot silently disable a setting */
const resilienceSchema = z
  .object({
    max_retries: z.number().int().min(0).max(100).optional(),
    initial_backoff_ms: z.number().int().min(0).optional(),
    max_backoff_ms: z.number().int().min(0).optional(),
    backoff_multiplier: z.number().min(1).optional(),
    jitter_factor: z.number().min(0).max(1).optional(),
    disable_retry: z.boolean().optional(),
    cb_failure_threshold: z.number().int().min(1).optional(),
    cb_success_threshold: z.number().int().min(1).optional(),
    cb_timeout_secs: z.number().int().min(1).optional(),
    cb_window_secs: z.number().int().min(1).optional(),
    disable_circuit_breaker: z.boolean().optional(),
    retryable_status_codes: z.array(z.number().int().min(100).max(599)).optional(),
  })
  .strict();

export const workerSpecSchema = z
  .object({
    url: z.string().min(1),
    models: z.array(modelCard).optional(),
    model_id: z.string().min(1).optional(),
    worker_type: z.enum(['regular', 'prefill', 'decode', 'encode']).default('regular'),
    connection_mode: z.enum(['http', 'grpc']).default('http'),
    runtime: z.string().optional(),
    runtime_type: z.string().optional(),
    provider: z.string().optional(),
    labels: z.record(z.string(), z.string()).default({}),
    priority: z.number().int().min(0).default(50),
    cost: z.number().nonnegative().default(1),
    api_key: z.string().optional(),
    bootstrap_port: z.number().int().min(1).max(65535).optional(),
    health: healthSchema.default({}),
    http_pool: z.record(z.string(), z.number()).optional(),
    resilience: resilienceSchema.optional(),
    max_connection_attempts: z.number().int().positive().default(20),
    load_monitor_interval_secs: z.number().int().positive().optional(),
  })
  .loose();

export const workerPatchSchema = z
  .object({
    priority: z.number().int().min(0).optional(),
    cost: z.number().nonnegative().optional(),
    labels: z.record(z.string(), z.string()).optional(),
    api_key: z.string().optional(),
    health: healthSchema.optional(),
  })
  .strict();

export type WorkerPatch = z.infer<typeof workerPatchSchema>;

function zodMessage(err: z.ZodError): string {
  return err.issues.map((i) => `${i.path.length ? i.path.join('.') : 'body'}: ${i.message}`).join('; ');
}

/** validates an admin body into a WorkerSpec; returns an error message on bad input */
export function parseWorkerSpec(body: unknown): { spec: WorkerSpec } | { error: string } {
  const r = workerSpecSchema.safeParse(body);
  if (!r.success) return { error: zodMessage(r.error) };
  const v = r.data;
  if (v.connection_mode !== 'http')
    return { error: 'connection_mode: only "http" is supported in this version' };
  const norm = checkWorkerUrl(v.url);
  if (!norm.ok) return { error: norm.reason };
  const models = (v.models ?? []).map((m) => (typeof m === 'string' ? m : m.id));
  if (v.model_id && !models.includes(v.model_id)) models.push(v.model_id);
  const spec: WorkerSpec = {
    url: norm.url,
    models,
    worker_type: v.worker_type,
    connection_mode: 'http',
    runtime: v.runtime ?? v.runtime_type ?? 'unspecified',
    labels: v.labels,
    priority: v.priority,
    cost: v.cost,
    health: v.health,
    max_connection_attempts: v.max_connection_attempts,
  };
  if (v.provider !== undefined) spec.provider = v.provider;
  if (v.api_key !== undefined) spec.api_key = v.api_key;
  if (v.bootstrap_port !== undefined) spec.bootstrap_port = v.bootstrap_port;
  if (v.http_pool !== undefined) spec.http_pool = v.http_pool;
  if (v.resilience !== undefined) spec.resilience = v.resilience;
  if (v.load_monitor_interval_secs !== undefined)
    spec.load_monitor_interval_secs = v.load_monitor_interval_secs;
  return { spec };
}

export function parseWorkerPatch(body: unknown): { patch: WorkerPatch } | { error: string } {
  const r = workerPatchSchema.safeParse(body);
  if (!r.success) return { error: zodMessage(r.error) };
  return { patch: r.data };
}
