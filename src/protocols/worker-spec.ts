/**
 * SMG's WorkerSpec (the body of POST/PUT /workers), validated with zod at every boundary a spec
 * crosses: the admin API (POST, PUT and PATCH share one field schema: PATCH takes the patchable
 * subset), `--worker-urls`, and specs replicated from peers through the registry document (a
 * peer running another version must not put into this node's registry what its API refuses).
 *
 * Every field is bounded (inventory §2.5 names the fields): strings by length, lists and maps by
 * count, durations by what a timer can wait, and the whole normalised spec by the size one gossip
 * message can carry, so one admin call cannot make the registry, every peer's copy of it and the
 * metrics it labels grow without limit. Unknown fields are refused with their names; SMG's
 * documented fields are accepted, and those this version does not act on are stored (and shown by
 * GET /workers) as given.
 */
import { z } from 'zod';
import type { WorkerSpec } from '../state/worker.js';
import { MAX_BACKOFF_MS, MAX_BACKOFF_NOTE, MAX_DURATION_NOTE, MAX_DURATION_SECS } from './durations.js';

/** the bounds of a WorkerSpec, in one place (docs/design-notes.md lists them) */
export const WORKER_SPEC_LIMITS = {
  /** a worker URL (and `dp_base_url`, `zmq_handshake_address`) */
  urlChars: 2048,
  /** DNS: a host name is at most 253 characters */
  hostnameChars: 253,
  models: 256,
  modelIdChars: 256,
  labels: 64,
  labelKeyChars: 128,
  labelValueChars: 1024,
  /** runtime, provider, kv_connector, kv_role */
  nameChars: 64,
  kvEngineIdChars: 256,
  apiKeyChars: 4096,
  /**
   * The normalised spec as JSON. A registry write travels to every peer in one gossip message of
   * at most 64 KiB (mesh/gossip/framing.ts), with room left for Automerge's own encoding.
   */
  specJsonBytes: 32 * 1024,
} as const;

const L = WORKER_SPEC_LIMITS;
const SCHEME_RE = /^([A-Za-z][A-Za-z0-9+.-]*):\/\//;

/**
 * Validates and normalises one worker URL: a bare `host:port` means `http://host:port` (as in SMG),
 * only http(s) is accepted, a trailing `/` is stripped. Kept as the user wrote it otherwise, since
 * the URL is the worker's identity (admin API, metrics labels).
 */
export function checkWorkerUrl(raw: string): { ok: true; url: string } | { ok: false; reason: string } {
  if (raw.length > L.urlChars) {
    return { ok: false, reason: `worker URL is ${raw.length} characters long; the limit is ${L.urlChars}` };
  }
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
  if (parsed.hostname.length > L.hostnameChars) {
    return {
      ok: false,
      reason: `invalid URL: the host name is ${parsed.hostname.length} characters long; the limit is ${L.hostnameChars}`,
    };
  }
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

// ---------------------------------------------------------------------------------------------
// field schemas

const text = (max: number) => z.string().min(1).max(max);
const int = (min: number, max: number) => z.number().int().min(min).max(max);
const secs = (min: number) =>
  z
    .number()
    .int()
    .min(min)
    .max(MAX_DURATION_SECS, { error: `must be at most ${MAX_DURATION_SECS} (${MAX_DURATION_NOTE})` });
const backoffMs = () =>
  z
    .number()
    .int()
    .min(0)
    .max(MAX_BACKOFF_MS, { error: `must be at most ${MAX_BACKOFF_MS} (${MAX_BACKOFF_NOTE})` });
/** thresholds and counts: far above any sane setting, far below what breaks arithmetic */
const COUNT_MAX = 100_000;

const modelId = text(L.modelIdChars);
/**
 * SMG's model card: `"id"` or `{"id": …, …}`. Only the id is used (routing is by model id); the
 * card's other fields (context length, parsers, …) are SMG's gRPC-mode metadata and are ignored.
 */
const modelCard = z.union([modelId, z.object({ id: modelId }).loose()]);

/**
 * zod's record drops a `__proto__` key without a word, so it is refused before: a label the
 * caller sent must either be stored or be an error.
 */
const labels = z
  .custom<unknown>((v) => !(typeof v === 'object' && v !== null && Object.hasOwn(v, '__proto__')), {
    error: '"__proto__" is not allowed as a label name',
  })
  .pipe(
    z
      .record(text(L.labelKeyChars), z.string().max(L.labelValueChars))
      .refine((r) => Object.keys(r).length <= L.labels, { error: `at most ${L.labels} labels` }),
  );

const healthSchema = z.strictObject({
  timeout_secs: secs(1).optional(),
  check_interval_secs: secs(1).optional(),
  success_threshold: int(1, COUNT_MAX).optional(),
  failure_threshold: int(1, COUNT_MAX).optional(),
  disable_health_check: z.boolean().optional(),
  drain_settle_secs: secs(0).optional(),
});

/** SMG's `resilience` block; unknown keys are rejected so a typo cannot silently disable a setting */
const resilienceSchema = z.strictObject({
  max_retries: int(0, 100).optional(),
  initial_backoff_ms: backoffMs().optional(),
  max_backoff_ms: backoffMs().optional(),
  backoff_multiplier: z.number().min(1).max(100).optional(),
  jitter_factor: z.number().min(0).max(1).optional(),
  disable_retry: z.boolean().optional(),
  cb_failure_threshold: int(1, COUNT_MAX).optional(),
  cb_success_threshold: int(1, COUNT_MAX).optional(),
  cb_timeout_secs: secs(1).optional(),
  cb_window_secs: secs(1).optional(),
  disable_circuit_breaker: z.boolean().optional(),
  retryable_status_codes: z.array(int(100, 599)).max(500).optional(),
});

/**
 * SMG's per-worker HTTP pool overrides: stored and shown, not applied (this version sizes and times
 * its upstream pools gateway-wide: --request-timeout-secs, a 10 s connect timeout).
 */
const httpPoolSchema = z.strictObject({
  pool_max_idle_per_host: int(0, COUNT_MAX).optional(),
  pool_idle_timeout_secs: secs(0).optional(),
  timeout_secs: secs(1).optional(),
  connect_timeout_secs: secs(1).optional(),
});

/**
 * Every field of SMG's WorkerSpec (inventory §2.5), none with a default: defaults are applied when
 * a spec is normalised, so PATCH (the patchable subset of these) never invents values.
 */
const fields = {
  url: z.string().min(1).max(L.urlChars),
  models: z.array(modelCard).max(L.models).optional(),
  model_id: modelId.optional(),
  worker_type: z.enum(['regular', 'prefill', 'decode', 'encode']).optional(),
  connection_mode: z.enum(['http', 'grpc', 'zmq']).optional(),
  runtime: text(L.nameChars).optional(),
  runtime_type: text(L.nameChars).optional(),
  provider: text(L.nameChars).optional(),
  labels: labels.optional(),
  priority: int(0, 2 ** 32 - 1).optional(),
  cost: z.number().nonnegative().max(1e9).optional(),
  api_key: z.string().max(L.apiKeyChars).optional(),
  bootstrap_port: int(1, 65535).optional(),
  health: healthSchema.optional(),
  http_pool: httpPoolSchema.optional(),
  resilience: resilienceSchema.optional(),
  max_connection_attempts: int(1, 1000).optional(),
  load_monitor_interval_secs: secs(1).optional(),
  // documented by SMG for data-parallel, PD-disaggregated, multimodal and ZMQ workers: stored as
  // given (GET /workers shows them), not acted on in this version's HTTP mode
  dp_base_url: z.string().min(1).max(L.urlChars).optional(),
  dp_rank: int(0, 65_535).optional(),
  dp_size: int(1, 65_536).optional(),
  kv_connector: text(L.nameChars).optional(),
  kv_role: text(L.nameChars).optional(),
  kv_engine_id: text(L.kvEngineIdChars).optional(),
  kv_block_size: int(1, 65_536).optional(),
  multimodal_tensor_transport: z.enum(['inline', 'shm', 'auto', 'rdma']).optional(),
  multimodal_shm_min_bytes: int(0, 2 ** 40).optional(),
  zmq_handshake_address: z.string().min(1).max(L.urlChars).optional(),
};

/** the body of POST and PUT /workers */
export const workerSpecSchema = z.strictObject(fields);

/** what PATCH /workers/{id} may change: the same field schemas */
export const PATCHABLE_FIELDS = ['priority', 'cost', 'labels', 'api_key', 'health'] as const;
export const workerPatchSchema = z.strictObject({
  priority: fields.priority,
  cost: fields.cost,
  labels: fields.labels,
  api_key: fields.api_key,
  health: fields.health,
});

export type WorkerPatch = z.infer<typeof workerPatchSchema>;

/** the documented fields stored as given (see `fields`) */
const STORED_AS_GIVEN = [
  'provider',
  'api_key',
  'bootstrap_port',
  'http_pool',
  'resilience',
  'load_monitor_interval_secs',
  'dp_base_url',
  'dp_rank',
  'dp_size',
  'kv_connector',
  'kv_role',
  'kv_engine_id',
  'kv_block_size',
  'multimodal_tensor_transport',
  'multimodal_shm_min_bytes',
  'zmq_handshake_address',
] as const satisfies readonly (keyof typeof fields & keyof WorkerSpec)[];

// ---------------------------------------------------------------------------------------------
// messages

const MAX_LISTED = 5;

/** zod issues as one short message: at most a few, unknown fields named, never the input echoed */
function zodMessage(err: z.ZodError): string {
  const parts = err.issues.slice(0, MAX_LISTED).map((i) => {
    // a path holds client keys (label names): quoted short, never echoed whole
    const where = i.path.length ? i.path.map((p) => clip(String(p))).join('.') : 'body';
    if (i.code === 'unrecognized_keys') {
      const keys = i.keys.slice(0, MAX_LISTED).map((k) => JSON.stringify(clip(k)));
      const more = i.keys.length > MAX_LISTED ? ` and ${i.keys.length - MAX_LISTED} more` : '';
      return `${where}: unknown field${i.keys.length > 1 ? 's' : ''} ${keys.join(', ')}${more}`;
    }
    // a record key's own problem (a label name) reads better than zod's "Invalid key in record"
    if (i.code === 'invalid_key' && i.issues[0]) return `${where}: ${i.issues[0].message}`;
    return `${where}: ${i.message}`;
  });
  if (err.issues.length > MAX_LISTED) parts.push(`(${err.issues.length - MAX_LISTED} more problems)`);
  return parts.join('; ');
}

function clip(s: string): string {
  return s.length > 64 ? `${s.slice(0, 64)}…` : s;
}

/** why a normalised spec cannot be stored, or undefined when it can */
export function workerSpecSizeProblem(spec: WorkerSpec): string | undefined {
  const bytes = Buffer.byteLength(JSON.stringify(spec));
  return bytes > L.specJsonBytes
    ? `the worker spec is ${bytes} bytes as JSON; the limit is ${L.specJsonBytes} (it is replicated to every peer in one message)`
    : undefined;
}

/** validates an admin body (or a replicated spec) into a normalised WorkerSpec; an error message on bad input */
export function parseWorkerSpec(body: unknown): { spec: WorkerSpec } | { error: string } {
  if (typeof body !== 'object' || body === null || Array.isArray(body))
    return { error: 'body: expected a JSON object (a WorkerSpec)' };
  const r = workerSpecSchema.safeParse(body);
  if (!r.success) return { error: zodMessage(r.error) };
  const v = r.data;
  if ((v.connection_mode ?? 'http') !== 'http')
    return { error: 'connection_mode: only "http" is supported in this version' };
  const norm = checkWorkerUrl(v.url);
  if (!norm.ok) return { error: `url: ${norm.reason}` };
  if (v.dp_rank !== undefined && v.dp_size !== undefined && v.dp_rank >= v.dp_size)
    return { error: `dp_rank: must be below dp_size (${v.dp_size}), got ${v.dp_rank}` };
  const models = [...new Set((v.models ?? []).map((m) => (typeof m === 'string' ? m : m.id)))];
  if (v.model_id && !models.includes(v.model_id)) models.push(v.model_id);
  if (models.length > L.models) return { error: `models: at most ${L.models} models` };
  const spec: WorkerSpec = {
    url: norm.url,
    models,
    worker_type: v.worker_type ?? 'regular',
    connection_mode: 'http',
    runtime: v.runtime ?? v.runtime_type ?? 'unspecified',
    labels: v.labels ?? {},
    priority: v.priority ?? 50,
    cost: v.cost ?? 1,
    health: v.health ?? {},
    max_connection_attempts: v.max_connection_attempts ?? 20,
  };
  for (const key of STORED_AS_GIVEN) {
    if (v[key] !== undefined) (spec as unknown as Record<string, unknown>)[key] = v[key];
  }
  const tooBig = workerSpecSizeProblem(spec);
  return tooBig === undefined ? { spec } : { error: tooBig };
}

export function parseWorkerPatch(body: unknown): { patch: WorkerPatch } | { error: string } {
  if (typeof body !== 'object' || body === null || Array.isArray(body))
    return { error: `body: expected a JSON object with some of ${PATCHABLE_FIELDS.join(', ')}` };
  const r = workerPatchSchema.safeParse(body);
  if (!r.success) return { error: zodMessage(r.error) };
  return { patch: r.data };
}

/**
 * A spec read back from the replicated registry (written by this node or a peer), normalised, or
 * undefined when this node's API would refuse it (an over-long URL, an interval no timer can wait,
 * unknown fields): a peer running another version cannot put such a spec into this registry.
 */
export function checkStoredWorkerSpec(value: unknown): WorkerSpec | undefined {
  const parsed = parseWorkerSpec(value);
  return 'error' in parsed ? undefined : parsed.spec;
}
