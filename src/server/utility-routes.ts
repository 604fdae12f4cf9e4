/**
 * Public routes (inventory §2.4): liveness, readiness, models, model/server info. Model and server
 * info come from a routable worker of the requested model, never just the first worker.
 */
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { request as undiciRequest } from 'undici';
import { errors } from '../protocols/errors.js';
import type { WorkerView } from '../state/registry.js';
import type { Replica } from '../state/replica.js';
import { splitWorkerUrl, type UpstreamPools } from '../workers/upstream.js';
import { responseHeaders } from './proxy.js';

export interface Lifecycle {
  draining: boolean;
}

export function registerUtilityRoutes(
  app: FastifyInstance,
  deps: {
    replica: Replica;
    pools: UpstreamPools;
    modelAliases: Record<string, string>;
    lifecycle: Lifecycle;
  },
): void {
  const { replica, pools, modelAliases, lifecycle } = deps;
  const startedAt = Math.floor(Date.now() / 1000);

  const ok = async () => 'OK';
  app.get('/health', ok);
  app.get('/liveness', ok);

  app.get('/readiness', async (_req, reply) => {
    const total = replica.registry.list().length;
    const healthy = replica.registry.routable().length;
    if (lifecycle.draining) return reply.code(503).send({ status: 'not ready', reason: 'draining' });
    if (healthy === 0)
      return reply.code(503).send({ status: 'not ready', reason: 'insufficient healthy workers' });
    return { status: 'ready', healthy_workers: healthy, total_workers: total };
  });

  app.get('/v1/models', async () => {
    const models = replica.registry.models();
    if (models.length === 0 && replica.registry.list().length === 0) throw errors.noAvailableWorkers('');
    const data = models.map((id) => ({
      id,
      object: 'model',
      created: startedAt,
      owned_by: replica.registry.forModel(id)[0]?.spec.runtime ?? 'smg',
    }));
    for (const [alias, canonical] of Object.entries(modelAliases)) {
      if (!models.includes(alias))
        data.push({ id: alias, object: 'model', created: startedAt, owned_by: canonical });
    }
    return { object: 'list', data };
  });

  /**
   * The worker that answers for a model: `?model=` (an alias resolves to its model), else the one
   * model served when there is only one (or only wildcard workers). A model no worker serves is
   * 404 `model_not_found`; one whose workers are all unroutable is 503 `no_available_workers`; with
   * several models and none named, which one is meant is unknown: 400 listing them.
   */
  const infoWorker = (query: unknown): WorkerView => {
    const raw = (query as Record<string, unknown> | undefined)?.model;
    if (raw !== undefined && (typeof raw !== 'string' || raw === ''))
      throw errors.invalidRequest('"model" must be a non-empty string (one ?model= parameter)');
    const reg = replica.registry;
    if (raw === undefined) {
      const models = reg.models();
      if (models.length > 1)
        throw errors.invalidRequest(
          `several models are served (${models.join(', ')}); name one with ?model=`,
        );
      const w = (models.length === 1 ? reg.routable(models[0]) : reg.routable())[0];
      if (!w) throw errors.noAvailableWorkers(models[0] ?? '');
      return w;
    }
    const model = Object.hasOwn(modelAliases, raw) ? modelAliases[raw] : raw;
    // workers that declare it, else wildcard workers (they serve any model)
    if (reg.forModel(model).length === 0) throw errors.modelNotFound(raw);
    const w = reg.routable(model)[0];
    if (!w) throw errors.noAvailableWorkers(raw);
    return w;
  };

  const proxyGet = (path: string) => async (req: FastifyRequest, reply: FastifyReply) => {
    const w = infoWorker(req.query);
    const { origin, basePath } = splitWorkerUrl(w.url);
    try {
      const res = await undiciRequest(origin + basePath + path, {
        dispatcher: pools.get(origin),
        method: 'GET',
        headers: pools.authHeaders(w.spec),
        signal: AbortSignal.timeout(10_000),
      });
      return reply.code(res.statusCode).headers(responseHeaders(res.headers)).send(res.body);
    } catch (err) {
      throw errors.upstreamUnreachable(w.url, err instanceof Error ? err.message : String(err));
    }
  };
  app.get('/get_model_info', proxyGet('/get_model_info'));
  app.get('/get_server_info', proxyGet('/get_server_info'));
}
