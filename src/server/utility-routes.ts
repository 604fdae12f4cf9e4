/** Public routes (inventory §2.4): liveness, readiness, models, model/server info. */
import type { FastifyInstance } from 'fastify';
import { request as undiciRequest } from 'undici';
import { errors } from '../protocols/errors.js';
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

  const proxyGet = (path: string) => async (_req: unknown, reply: import('fastify').FastifyReply) => {
    const w = replica.registry.routable()[0];
    if (!w) throw errors.noAvailableWorkers('');
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
