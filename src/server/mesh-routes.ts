/**
 * `/mesh/*` (inventory §2.6, under control-plane auth): membership, the replicated registry as
 * this node sees it, cluster-wide per-model policies (with their parameters, see policy-params.ts)
 * and config, the cluster-wide request rate
 * limit (`/mesh/rate-limit`, see src/server/admission/global-limit.ts), and graceful leave. Every route
 * answers 503 `mesh_disabled` on a node started without `--ha-mesh`.
 */
import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { MeshRuntime } from '../../mesh/runtime.js';
import { SmgError } from '../protocols/errors.js';
import { readJsonBody } from './admin-routes.js';
import {
  GLOBAL_RATE_LIMIT_CONFIG_KEY,
  encodeGlobalRateLimit,
  globalRateLimitProblem,
  globalRateLimitStats,
  readGlobalRateLimit,
} from './admission/global-limit.js';
import { isPolicyName } from '../routing/factory.js';
import { parsePolicyParams } from './policy-params.js';
import type { PolicyRegistry } from '../routing/registry.js';
import { POLICY_NAMES } from '../routing/types.js';
import type { Replica } from '../state/replica.js';
import type { WorkerView } from '../state/registry.js';

export interface MeshRouteDeps {
  replica: Replica;
  policies: PolicyRegistry;
  /** the running mesh; undefined when the node runs alone */
  mesh: () => MeshRuntime | undefined;
  /** whether the local store accepts writes (true without a store) */
  storeHealthy: () => boolean;
}

/** config keys and policy model ids; `__proto__` is refused (Automerge forbids it as a map key) */
const CONFIG_KEY = /^(?!__proto__$)[A-Za-z0-9._:/-]{1,128}$/;
const MAX_CONFIG_VALUE_BYTES = 64 * 1024;

const meshDisabled = () =>
  new SmgError(503, 'mesh_disabled', 'The HA mesh is not enabled on this node (start it with --ha-mesh)');
const badRequest = (message: string) => new SmgError(400, 'invalid_request', message);

function jsonBody(req: FastifyRequest): Record<string, unknown> {
  const parsed = readJsonBody(req, badRequest);
  if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed))
    throw badRequest('body must be a JSON object');
  return parsed as Record<string, unknown>;
}

export function registerMeshRoutes(app: FastifyInstance, deps: MeshRouteDeps): void {
  const { replica, policies } = deps;
  const running = (): MeshRuntime => {
    const rt = deps.mesh();
    if (!rt) throw meshDisabled();
    return rt;
  };

  const workerEntry = (w: WorkerView) => ({
    worker_id: w.id,
    model_id: w.models.length === 1 ? w.models[0] : w.models.length === 0 ? '*' : w.models.join(','),
    models: w.models,
    url: w.url,
    health: w.status,
    routable: w.routable,
    // cluster load: this node's in-flight requests plus every live peer's latest snapshot
    load: replica.load.inflight(w.id),
    local_load: replica.load.localInflight(w.id),
    // the worker's blocks in this node's prefix index (what cache_aware steers by)
    cache_blocks: replica.cache.heldByWorker(w.id),
    // shared probing: the members that probe this worker, and what each node last observed
    probers: deps.mesh()?.soft.probersOf(w.id) ?? [replica.nodeId],
    observations: replica.registry
      .observations(w.id)
      .map((o) => ({ node_id: o.node, status: o.status, at: o.hlc.wall }))
      .sort((a, b) => (a.node_id < b.node_id ? -1 : a.node_id > b.node_id ? 1 : 0)),
    version: w.version.wall,
  });

  const policyEntries = (): {
    model_id: string;
    policy_type: string;
    source: string;
    config: Record<string, unknown>;
    version: number;
  }[] => {
    const out = new Map<string, ReturnType<typeof policyEntries>[number]>();
    for (const [model, p] of replica.doc.policies()) {
      out.set(model, {
        model_id: model,
        policy_type: p.policy,
        source: 'mesh',
        config: { ...(p.params ?? {}) },
        version: p.updatedAt,
      });
    }
    for (const { model } of policies.names()) {
      if (out.has(model)) continue;
      const d = policies.describe(model);
      if (d)
        out.set(model, {
          model_id: model === '' ? '*' : model,
          policy_type: d.policy,
          source: d.source,
          config: {},
          version: 0,
        });
    }
    return [...out.values()].sort((a, b) => (a.model_id < b.model_id ? -1 : a.model_id > b.model_id ? 1 : 0));
  };

  app.get('/mesh/status', async () => {
    const rt = running();
    const st = rt.status();
    return {
      ...st,
      stores: {
        membership_count: st.nodes.length,
        worker_count: replica.registry.list().length,
        policy_count: replica.doc.policies().size,
        app_count: replica.doc.config().size,
      },
    };
  });

  app.get('/mesh/health', async (_req, reply) => {
    const rt = running();
    const st = rt.status();
    const storesHealthy = deps.storeHealthy();
    const healthy = storesHealthy && !rt.isLeaving;
    return reply.code(healthy ? 200 : 503).send({
      status: rt.isLeaving ? 'leaving' : healthy ? 'healthy' : 'unhealthy',
      node_name: st.node_name,
      cluster_size: st.node_count,
      joined: rt.hasJoined,
      stores_healthy: storesHealthy,
    });
  });

  app.get('/mesh/workers', async () => {
    running();
    return replica.registry.list().map(workerEntry);
  });

  app.get('/mesh/workers/:id', async (req) => {
    running();
    const id = (req.params as { id: string }).id;
    const w = replica.registry.get(id);
    if (!w) throw new SmgError(404, 'worker_not_found', `Worker ${id} not found`);
    return workerEntry(w);
  });

  app.get('/mesh/policies', async () => {
    running();
    return policyEntries();
  });

  app.get('/mesh/policies/:model', async (req) => {
    running();
    const model = (req.params as { model: string }).model;
    const entry = policyEntries().find((p) => p.model_id === model);
    if (!entry) throw new SmgError(404, 'policy_not_found', `No policy for model '${model}'`);
    return entry;
  });

  app.put('/mesh/policies/:model', async (req) => {
    running();
    const model = (req.params as { model: string }).model;
    if (!CONFIG_KEY.test(model)) throw badRequest(`invalid model id "${model}"`);
    const body = jsonBody(req);
    const policy = body.policy ?? body.policy_type;
    if (typeof policy !== 'string' || !isPolicyName(policy))
      throw badRequest(`"policy" must be one of ${POLICY_NAMES.join(', ')}`);
    // the policy's own parameters (SMG's JSON names; `config`, as GET shows them, is accepted too)
    if (body.params !== undefined && body.config !== undefined)
      throw badRequest('give the parameters as "params" or as "config", not both');
    const parsed = parsePolicyParams(policy, body.params ?? body.config);
    if ('error' in parsed) throw badRequest(parsed.error);
    const params = Object.keys(parsed.params).length > 0 ? parsed.params : undefined;
    replica.writeRegistry((d) => d.setPolicy(model, policy, params));
    return { status: 'updated', model_id: model, policy_type: policy, config: params ?? {} };
  });

  app.get('/mesh/config', async () => {
    running();
    return Object.fromEntries(
      [...replica.doc.config()].map(([key, value]) => [key, { value, format: 'hex' }]),
    );
  });

  app.get('/mesh/config/:key', async (req) => {
    running();
    const key = (req.params as { key: string }).key;
    const value = replica.doc.config().get(key);
    if (value === undefined) throw new SmgError(404, 'config_not_found', `No config key '${key}'`);
    return { key, value, format: 'hex' };
  });

  app.post('/mesh/config', async (req) => {
    running();
    const body = jsonBody(req);
    const { key, value } = body;
    if (typeof key !== 'string' || !CONFIG_KEY.test(key))
      throw badRequest('"key" must be 1-128 characters of A-Z a-z 0-9 . _ : / - (and not __proto__)');
    if (typeof value !== 'string' || value.length % 2 !== 0 || !/^[0-9a-fA-F]*$/.test(value))
      throw badRequest('"value" must be an even-length hex string');
    if (value.length / 2 > MAX_CONFIG_VALUE_BYTES)
      throw badRequest(`"value" must be at most ${MAX_CONFIG_VALUE_BYTES} bytes`);
    replica.writeRegistry((d) => d.setConfig(key, value.toLowerCase()));
    return { status: 'updated', key };
  });

  // the cluster-wide request rate limit: a registry config entry, so every peer enforces it
  app.get('/mesh/rate-limit', async () => {
    running();
    return { limit_per_second: readGlobalRateLimit(replica.doc) };
  });

  app.post('/mesh/rate-limit', async (req) => {
    running();
    const body = jsonBody(req);
    const problem = globalRateLimitProblem(body.limit_per_second);
    if (problem) throw badRequest(problem);
    const limit = body.limit_per_second as number;
    replica.writeRegistry((d) =>
      limit === 0
        ? d.deleteConfig(GLOBAL_RATE_LIMIT_CONFIG_KEY)
        : d.setConfig(GLOBAL_RATE_LIMIT_CONFIG_KEY, encodeGlobalRateLimit(limit)),
    );
    return { limit_per_second: limit };
  });

  app.get('/mesh/rate-limit/stats', async () => {
    running();
    return globalRateLimitStats(replica);
  });

  app.post('/mesh/shutdown', async (_req, reply) => {
    const rt = running();
    if (!rt.isLeaving) void rt.leave();
    return reply.code(202).send({ status: 'shutdown initiated', node_name: rt.name });
  });
}
