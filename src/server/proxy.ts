/**
 * The inference hot path: parse only what routing needs, pick a worker, forward the original
 * body bytes over the worker's keep-alive pool, and stream the answer back chunk by chunk with
 * backpressure. A client that goes away aborts the upstream request. The worker's in-flight
 * count is held until the response body ends, whichever way it ends.
 */
import type { IncomingHttpHeaders } from 'node:http';
import type { FastifyReply, FastifyRequest } from 'fastify';
import { errors as undiciErrors } from 'undici';
import type { Metrics } from '../observability/metrics.js';
import { errors, SmgError } from '../protocols/errors.js';
import type { Endpoint } from '../protocols/routing-text.js';
import type { Replica } from '../state/replica.js';
import type { WorkerView } from '../state/registry.js';
import { splitWorkerUrl, type UpstreamPools } from '../workers/upstream.js';
import type { WorkerSelection } from './worker-selection.js';

/** hop-by-hop and framing headers never forwarded in either direction */
const HOP_BY_HOP = new Set([
  'connection',
  'keep-alive',
  'proxy-authenticate',
  'proxy-authorization',
  'proxy-connection',
  'te',
  'trailer',
  'trailers',
  'transfer-encoding',
  'upgrade',
  'host',
  'content-length',
]);

/** proxied requests whose upstream response has not ended yet (shutdown waits for these) */
export interface InflightCounter {
  proxied: number;
}

export interface ProxyDeps {
  inflight: InflightCounter;
  replica: Replica;
  selection: WorkerSelection;
  pools: UpstreamPools;
  metrics: Metrics;
}

export function upstreamRequestHeaders(
  incoming: IncomingHttpHeaders,
  requestId: string,
  worker: WorkerView,
): Record<string, string | string[]> {
  const out: Record<string, string | string[]> = {};
  const connectionTokens = connectionHeaderTokens(incoming.connection);
  for (const name in incoming) {
    const v = incoming[name];
    if (v === undefined || HOP_BY_HOP.has(name) || connectionTokens?.has(name)) continue;
    out[name] = v;
  }
  out['x-request-id'] = requestId;
  if (worker.spec.api_key) out['authorization'] = `Bearer ${worker.spec.api_key}`;
  return out;
}

function connectionHeaderTokens(v: string | string[] | undefined): Set<string> | undefined {
  if (!v) return undefined;
  const s = Array.isArray(v) ? v.join(',') : v;
  return new Set(
    s
      .split(',')
      .map((t) => t.trim().toLowerCase())
      .filter(Boolean),
  );
}

export function responseHeaders(
  upstream: Record<string, string | string[] | undefined>,
): Record<string, string | string[]> {
  const out: Record<string, string | string[]> = {};
  const connectionTokens = connectionHeaderTokens(upstream.connection);
  for (const name in upstream) {
    const v = upstream[name];
    if (v === undefined || HOP_BY_HOP.has(name) || connectionTokens?.has(name)) continue;
    out[name] = v;
  }
  return out;
}

function parseBody(raw: unknown): Record<string, unknown> {
  if (!Buffer.isBuffer(raw) || raw.length === 0) throw errors.invalidJson('request body is empty');
  let parsed: unknown;
  try {
    parsed = JSON.parse(raw.toString('utf8'));
  } catch (err) {
    throw errors.invalidJson(err instanceof Error ? err.message : String(err));
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
    throw errors.invalidJson('expected a JSON object');
  }
  return parsed as Record<string, unknown>;
}

function classifyUpstreamError(err: unknown, url: string): SmgError {
  if (
    err instanceof undiciErrors.HeadersTimeoutError ||
    err instanceof undiciErrors.BodyTimeoutError ||
    err instanceof undiciErrors.ConnectTimeoutError ||
    (err instanceof Error && err.name === 'TimeoutError')
  ) {
    return errors.upstreamTimeout(url);
  }
  const detail = err instanceof Error ? ((err as NodeJS.ErrnoException).code ?? err.message) : String(err);
  return errors.upstreamUnreachable(url, detail);
}

export function makeInferenceHandler(deps: ProxyDeps, endpoint: Endpoint) {
  const { replica, selection, pools, metrics, inflight } = deps;
  const routerLabels = (model: string) => ({
    router_type: 'http',
    backend_type: 'regular',
    connection_mode: 'http',
    model: model || 'default',
    endpoint,
  });

  return async function handle(request: FastifyRequest, reply: FastifyReply): Promise<FastifyReply> {
    const body = parseBody(request.body);
    const streaming = body.stream === true;
    const sel = selection.select(endpoint, body, request.headers);
    const { worker } = sel;
    const labels = routerLabels(sel.model);
    metrics.inc(metrics.routerRequests, { ...labels, streaming: streaming ? 'true' : 'false' });
    metrics.inc(metrics.workerSelection, {
      worker_type: worker.spec.worker_type,
      connection_mode: 'http',
      model: labels.model,
      policy: sel.policy.name,
    });

    const started = process.hrtime.bigint();
    replica.load.acquire(worker.id);
    inflight.proxied++;
    let released = false;
    const release = () => {
      if (released) return;
      released = true;
      inflight.proxied--;
      replica.load.release(worker.id);
      metrics.observe(metrics.routerDuration, labels, Number(process.hrtime.bigint() - started) / 1e9);
    };

    const ac = new AbortController();
    const onClientClose = () => {
      if (!reply.raw.writableFinished) ac.abort();
    };
    reply.raw.once('close', onClientClose);

    const { origin, basePath } = splitWorkerUrl(worker.url);
    const path = basePath + request.url;
    let upstream;
    try {
      upstream = await pools.get(origin).request({
        method: 'POST',
        path,
        headers: upstreamRequestHeaders(request.headers, request.id, worker),
        body: request.body as Buffer,
        signal: ac.signal,
      });
    } catch (err) {
      release();
      reply.raw.off('close', onClientClose);
      if (ac.signal.aborted) {
        // the client went away before the worker answered: nothing left to answer
        metrics.inc(metrics.routerErrors, { ...labels, error_type: 'client_disconnected' });
        return reply.code(499).send();
      }
      const e = classifyUpstreamError(err, worker.url);
      metrics.inc(metrics.routerErrors, { ...labels, error_type: e.code });
      metrics.inc(metrics.workerErrors, {
        worker_type: worker.spec.worker_type,
        connection_mode: 'http',
        error_type: e.code,
      });
      throw e;
    }

    metrics.inc(metrics.routerUpstream, {
      router_type: 'http',
      status_code: String(upstream.statusCode),
      error_code: upstream.statusCode >= 400 ? 'upstream_error' : '',
    });
    const stream = upstream.body;
    stream.once('end', release);
    stream.once('close', release);
    stream.once('error', (err: Error) => {
      release();
      if (!ac.signal.aborted) {
        metrics.inc(metrics.routerErrors, { ...labels, error_type: 'upstream_stream_error' });
        request.log.warn({ worker: worker.url, err: err.message }, 'upstream stream failed');
      }
    });
    reply.code(upstream.statusCode);
    reply.headers(responseHeaders(upstream.headers));
    reply.header('x-request-id', request.id);
    return reply.send(stream);
  };
}
