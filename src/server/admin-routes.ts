/**
 * Control-plane routes (inventory §2.5): worker CRUD, /get_loads, /flush_cache. Writes become
 * events through the WorkerManager; reads come from the Replica's views. A cache flush also
 * empties the gateway's own prefix index for the flushed workers, on every peer (a registry write,
 * see src/state/cache-flush.ts), so cache_aware stops steering to caches that were just emptied.
 */
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { request as undiciRequest } from 'undici';
import { errors } from '../protocols/errors.js';
import { parseWorkerPatch, parseWorkerSpec } from '../protocols/worker-spec.js';
import type { Replica } from '../state/replica.js';
import type { WorkerView } from '../state/registry.js';
import { parseEngineLoad } from '../workers/engine-load.js';
import type { WorkerManager } from '../workers/manager.js';
import { splitWorkerUrl, type UpstreamPools } from '../workers/upstream.js';
import { workerInfo, workersBody } from './worker-info.js';

/**
 * The largest body fastify reads (every fastify route is control plane or utility; inference
 * bodies take the fast path and its --max-payload-size). A WorkerSpec is at most 32 KiB once
 * normalised; 1 MiB leaves room for model cards with metadata, and the control plane never
 * buffers 512 MiB for a caller.
 */
export const ADMIN_BODY_LIMIT_BYTES = 1024 * 1024;

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const FANOUT_TIMEOUT_MS = 10_000;

/** the raw body of an admin call as JSON; `fail` builds the 400 for an empty or unparsable body */
export function readJsonBody(req: FastifyRequest, fail: (message: string) => Error): unknown {
  const raw = req.body;
  if (!Buffer.isBuffer(raw) || raw.length === 0) throw fail('request body is empty');
  try {
    return JSON.parse(raw.toString('utf8'));
  } catch (err) {
    throw fail(`invalid JSON body: ${err instanceof Error ? err.message : String(err)}`);
  }
}

const jsonBody = (req: FastifyRequest): unknown => readJsonBody(req, errors.invalidWorker);

function workerId(req: FastifyRequest): string {
  const id = (req.params as { id: string }).id;
  if (!UUID.test(id)) throw errors.invalidWorker(`worker id must be a UUID, got "${id}"`);
  return id;
}

async function callWorker(
  pools: UpstreamPools,
  w: WorkerView,
  method: 'GET' | 'POST',
  path: string,
): Promise<{ status: number; body: string }> {
  const { origin, basePath } = splitWorkerUrl(w.url);
  const res = await undiciRequest(origin + basePath + path, {
    dispatcher: pools.get(origin),
    method,
    headers: pools.authHeaders(w.spec),
    signal: AbortSignal.timeout(FANOUT_TIMEOUT_MS),
  });
  return { status: res.statusCode, body: await res.body.text() };
}

export function registerAdminRoutes(
  app: FastifyInstance,
  deps: { replica: Replica; manager: WorkerManager; pools: UpstreamPools },
): void {
  const { replica, manager, pools } = deps;
  const info = (w: WorkerView) => workerInfo(w, replica.load.inflight(w.id), manager.jobStatus(w.id));

  app.post('/workers', async (req, reply) => {
    const parsed = parseWorkerSpec(jsonBody(req));
    if ('error' in parsed) throw errors.invalidWorker(parsed.error);
    const id = manager.register(parsed.spec);
    const location = `/workers/${id}`;
    return reply
      .code(202)
      .header('location', location)
      .send({ status: 'accepted', worker_id: id, url: parsed.spec.url, location });
  });

  app.get('/workers', async (req, reply) => {
    const model = (req.query as { model?: unknown }).model;
    // `?model=a&model=b` parses to a list: one model or none
    if (model !== undefined && typeof model !== 'string')
      throw errors.invalidWorker('query parameter "model" must be given once');
    const list = model ? replica.registry.forModel(model) : replica.registry.list();
    // assembled as bytes: JSON.stringify of 2,000 fresh WorkerInfo objects per call took most of the time
    const body = workersBody(
      list,
      (id) => replica.load.inflight(id),
      (id) => manager.jobStatus(id),
    );
    return reply.type('application/json; charset=utf-8').send(body);
  });

  app.get('/workers/:id', async (req) => {
    const id = workerId(req);
    const w = replica.registry.get(id);
    if (!w) throw errors.workerNotFound(id);
    return info(w);
  });

  app.put('/workers/:id', async (req, reply) => {
    const id = workerId(req);
    const parsed = parseWorkerSpec(jsonBody(req));
    if ('error' in parsed) throw errors.invalidWorker(parsed.error);
    manager.replace(id, parsed.spec);
    return reply.code(202).send({ status: 'accepted', worker_id: id, url: parsed.spec.url });
  });

  app.patch('/workers/:id', async (req, reply) => {
    const id = workerId(req);
    const parsed = parseWorkerPatch(jsonBody(req));
    if ('error' in parsed) throw errors.invalidWorker(parsed.error);
    manager.patch(id, parsed.patch);
    return reply.code(202).send({ status: 'accepted', worker_id: id });
  });

  app.delete('/workers/:id', async (req, reply) => {
    const id = workerId(req);
    manager.remove(id);
    return reply.code(202).send({ status: 'accepted', worker_id: id, message: 'draining, then removal' });
  });

  app.get('/get_loads', async () => {
    const workers = replica.registry.list();
    const results = await Promise.all(
      workers.map(async (w) => {
        try {
          const res = await callWorker(pools, w, 'GET', '/v1/loads');
          const load = res.status === 200 ? parseEngineLoad(res.body, 'loads') : undefined;
          let details: unknown = null;
          try {
            details = JSON.parse(res.body);
          } catch {
            details = null;
          }
          return {
            ok: res.status === 200,
            entry: {
              worker: w.url,
              worker_type: w.spec.worker_type,
              load: load ? load.numUsedTokens : -1,
              details,
            },
          };
        } catch {
          return {
            ok: false,
            entry: { worker: w.url, worker_type: w.spec.worker_type, load: -1, details: null },
          };
        }
      }),
    );
    return {
      loads: results.map((r) => r.entry),
      total_workers: workers.length,
      successful: results.filter((r) => r.ok).length,
      failed: results.filter((r) => !r.ok).length,
    };
  });

  app.post('/flush_cache', async () => {
    const workers = replica.registry.list();
    const successful: string[] = [];
    const failed: string[] = [];
    const flushed: string[] = [];
    await Promise.all(
      workers.map(async (w) => {
        try {
          const res = await callWorker(pools, w, 'POST', '/flush_cache');
          const ok = res.status >= 200 && res.status < 300;
          (ok ? successful : failed).push(w.url);
          if (ok) flushed.push(w.id);
        } catch {
          failed.push(w.url);
        }
      }),
    );
    // after the answers: blocks recorded while the flush ran may be gone from the engine too
    replica.flushCacheIndex(flushed);
    return {
      successful,
      failed,
      total_workers: workers.length,
      http_workers: workers.length,
      grpc_workers: 0,
      zmq_workers: 0,
      message:
        failed.length === 0
          ? `Cache flushed on all ${successful.length} workers`
          : `Cache flush failed on ${failed.length} of ${workers.length} workers`,
    };
  });
}
