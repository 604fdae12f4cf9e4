/**
 * The inference hot path: parse only what routing needs, pick a worker, forward the original
 * body bytes over the worker's keep-alive pool, and stream the answer back chunk by chunk with
 * backpressure. A client that goes away aborts the upstream request. The worker's in-flight
 * count is held until the response body ends, whichever way it ends.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { performance } from 'node:perf_hooks';
import type { Logger } from 'pino';
import type { Metrics } from '../observability/metrics.js';
import type { Tracing } from '../observability/tracing.js';
import { errors, SmgError } from '../protocols/errors.js';
import type { Endpoint } from '../protocols/routing-text.js';
import type { WorkerView } from '../state/registry.js';
import type { Admission } from './admission/index.js';
import type { Auth } from './auth.js';
import {
  Forwarding,
  writeErrorResponse,
  type ForwardDeps,
  type ForwardRequest,
  type RouterChildren,
} from './forward.js';
import { ENDPOINT_BY_PATH } from './request-id.js';

export { responseHeaders, upstreamRequestHeaders, type InflightCounter } from './forward.js';

function parseBody(raw: Buffer): Record<string, unknown> {
  if (raw.length === 0) throw errors.invalidJson('request body is empty');
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

/** what the HTTP layer records for every response, fast path or fastify */
export interface HttpOutcome {
  method: string;
  /** route template, or `other` */
  route: string;
  url: string;
  status: number;
  errorCode: string;
  elapsedMs: number;
  requestId: string;
}

interface HttpChildren {
  requests: { inc(): void };
  duration: { observe(v: number): void };
  responses: { inc(): void };
}
const httpChildren = new WeakMap<Metrics, Map<string, HttpChildren>>();

export function recordHttpOutcome(metrics: Metrics, logger: Logger, o: HttpOutcome): void {
  // one map lookup per response instead of three label hashings
  let byKey = httpChildren.get(metrics);
  if (!byKey) httpChildren.set(metrics, (byKey = new Map()));
  const key = `${o.method} ${o.route} ${o.status} ${o.errorCode}`;
  let c = byKey.get(key);
  if (!c) {
    if (byKey.size > 10_000) byKey.clear();
    c = {
      requests: metrics.httpRequests.labels({ method: o.method, path: o.route }),
      duration: metrics.httpDuration.labels({ method: o.method, path: o.route }),
      responses: metrics.httpResponses.labels({
        path: o.route,
        status_code: String(o.status),
        error_code: o.errorCode,
      }),
    };
    byKey.set(key, c);
  }
  c.requests.inc();
  c.duration.observe(o.elapsedMs / 1000);
  c.responses.inc();
  const level = o.status >= 500 ? 'error' : o.status >= 400 ? 'warn' : 'info';
  if (logger.isLevelEnabled(level)) {
    logger[level](
      {
        request_id: o.requestId,
        method: o.method,
        path: o.url,
        status: o.status,
        latency_ms: Math.round(o.elapsedMs * 100) / 100,
      },
      'request completed',
    );
  }
}

export interface FastPathDeps extends Omit<ForwardDeps, 'childrenFor' | 'upstreamStatus'> {
  bodyLimit: number;
  genReqId: (req: IncomingMessage) => string;
  /** CORS headers for a request's Origin, or undefined */
  corsHeaders: (origin: string | undefined) => Record<string, string> | undefined;
  /** data-plane auth and tenant resolution; undefined = open and no tenant needed */
  auth: Auth | undefined;
  admission: Admission | undefined;
  tracing: Tracing | undefined;
  lifecycle: { draining: boolean };
}

/**
 * The inference routes, served straight from node:http without fastify's per-request objects,
 * hooks and child loggers: this is the hot path. Returns false for anything it does not serve
 * (the caller hands those to fastify).
 *
 * Order per request: request id → auth (tenant) → body (size limit) → parse → admission →
 * {@link Forwarding} (select, send, retry, stream).
 */
export function createInferenceFastPath(
  deps: FastPathDeps,
): (req: IncomingMessage, res: ServerResponse) => boolean {
  const { metrics, logger, bodyLimit, auth, admission, tracing, lifecycle } = deps;
  const routerChildren = new Map<string, RouterChildren>();
  function childrenFor(
    model: string,
    endpoint: Endpoint,
    worker: WorkerView,
    policy: string,
  ): RouterChildren {
    // keyed by the bounded label, not the client's model string, so this map stays small too
    const modelLabel = deps.selection.modelLabel(model);
    const key = `${modelLabel}\u0000${endpoint}\u0000${worker.spec.worker_type}\u0000${policy}`;
    let c = routerChildren.get(key);
    if (!c) {
      const labels = {
        router_type: 'http',
        backend_type: 'regular',
        connection_mode: 'http',
        model: modelLabel,
        endpoint,
      };
      const usageLabels = { router_type: 'http', backend_type: 'regular', model: labels.model, endpoint };
      if (routerChildren.size > 10_000) routerChildren.clear();
      c = {
        labels,
        requests: metrics.routerRequests.labels({ ...labels, streaming: 'false' }),
        requestsStreaming: metrics.routerRequests.labels({ ...labels, streaming: 'true' }),
        selection: metrics.workerSelection.labels({
          worker_type: worker.spec.worker_type,
          connection_mode: 'http',
          model: labels.model,
          policy,
        }),
        duration: metrics.routerDuration.labels(labels),
        ttft: metrics.routerTtft.labels(usageLabels),
        tpot: metrics.routerTpot.labels(usageLabels),
        generation: metrics.routerGeneration.labels(usageLabels),
        tokens: {
          input: metrics.routerTokens.labels({ ...usageLabels, token_type: 'input' }),
          output: metrics.routerTokens.labels({ ...usageLabels, token_type: 'output' }),
          cached: metrics.routerTokens.labels({ ...usageLabels, token_type: 'cached' }),
        },
      };
      routerChildren.set(key, c);
    }
    return c;
  }
  const byStatus = new Map<number, { inc(): void }>();
  const upstreamStatus = (status: number) => {
    let c = byStatus.get(status);
    if (!c) {
      c = metrics.routerUpstream.labels({
        router_type: 'http',
        status_code: String(status),
        error_code: status >= 400 ? 'upstream_error' : '',
      });
      byStatus.set(status, c);
    }
    return c;
  };
  const forwardDeps: ForwardDeps = { ...deps, childrenFor, upstreamStatus };
  /** tenant is needed for admission even when the data plane is open (ip:<addr> / header:<id>) */
  const needTenant = admission !== undefined;

  return function fastPath(req: IncomingMessage, res: ServerResponse): boolean {
    if (req.method !== 'POST') return false;
    const url = req.url ?? '/';
    const q = url.indexOf('?');
    const route = q < 0 ? url : url.slice(0, q);
    const endpoint = ENDPOINT_BY_PATH[route];
    if (endpoint === undefined) return false;

    const startedAt = performance.now();
    const requestId = deps.genReqId(req);
    const extraHeaders: Record<string, string> = { 'x-request-id': requestId };
    const cors = deps.corsHeaders(req.headers.origin);
    if (cors) Object.assign(extraHeaders, cors);
    // while draining, tell keep-alive clients to reconnect (to a peer that is not going away)
    if (lifecycle.draining) extraHeaders['connection'] = 'close';
    let errorCode = '';
    const setErrorCode = (code: string) => (errorCode = code);
    const span = tracing?.startRequest({
      method: 'POST',
      url,
      httpVersion: req.httpVersion,
      requestId,
      headers: req.headers,
    });
    res.once('finish', () =>
      recordHttpOutcome(metrics, logger, {
        method: 'POST',
        route,
        url,
        status: res.statusCode,
        errorCode,
        elapsedMs: performance.now() - startedAt,
        requestId,
      }),
    );
    if (span) {
      res.once('close', () => span.end(res.writableFinished ? res.statusCode : 499, errorCode || undefined));
    }

    const fail = (e: SmgError) => {
      errorCode = e.code;
      if (res.headersSent) res.destroy();
      else writeErrorResponse(res, e, extraHeaders);
    };

    let tenant = 'anonymous';
    if (auth !== undefined && (needTenant || !auth.dataPlaneOpen)) {
      try {
        tenant = auth.authenticateData(req.headers, req.socket.remoteAddress);
      } catch (err) {
        // the body is never read: answer and close, like an oversized body
        fail(err instanceof SmgError ? err : errors.unauthorized('data-plane'));
        res.once('finish', () => req.socket.destroy());
        return true;
      }
    }

    // an oversized body is answered at once and its connection closed: the rest is never read
    const rejectOversized = () => {
      fail(errors.payloadTooLarge(bodyLimit, { connection: 'close' }));
      res.once('finish', () => req.socket.destroy());
    };
    const declared = Number(req.headers['content-length']);
    if (declared > bodyLimit) {
      rejectOversized();
      return true;
    }
    const chunks: Buffer[] = [];
    let size = 0;
    let tooLarge = false;
    req.on('data', (chunk: Buffer) => {
      if (tooLarge) return;
      size += chunk.length;
      if (size > bodyLimit) {
        tooLarge = true;
        chunks.length = 0;
        rejectOversized();
        return;
      }
      chunks.push(chunk);
    });
    req.on('error', () => res.destroy());
    req.on('end', () => {
      if (tooLarge || res.destroyed) return;
      try {
        const raw = chunks.length === 1 ? chunks[0] : Buffer.concat(chunks, size);
        const body = parseBody(raw);
        const request: ForwardRequest = {
          req,
          res,
          endpoint,
          raw,
          body,
          requestId,
          extraHeaders,
          span,
          ticket: undefined,
          setErrorCode,
        };
        if (admission === undefined) {
          new Forwarding(forwardDeps, request).start();
          return;
        }
        const priority = req.headers['x-smg-priority'];
        let queued = true;
        // a client that leaves while its request waits in a queue gives up its place (this runs
        // on a later 'close' event, never during admit(), so `pending` is initialised by then)
        const onQueuedClose = () => {
          if (!queued) return;
          queued = false;
          errorCode = 'scheduler_client_cancelled';
          pending?.cancel();
        };
        const pending = admission.admit(
          {
            tenant,
            priority: typeof priority === 'string' ? priority : undefined,
            model: deps.selection.resolveModel(body.model),
            estimatedTokens: Math.ceil(raw.length / 4),
          },
          (err, ticket) => {
            queued = false;
            res.off('close', onQueuedClose);
            if (err || !ticket) {
              ticket?.release();
              fail(err ?? new SmgError(500, 'internal_error', 'admission failed'));
              return;
            }
            if (res.destroyed) {
              ticket.release();
              return;
            }
            request.ticket = ticket;
            new Forwarding(forwardDeps, request).start();
          },
        );
        if (queued && pending) res.once('close', onQueuedClose);
      } catch (err) {
        if (err instanceof SmgError) fail(err);
        else {
          logger.error({ err, request_id: requestId }, 'unhandled error on the inference path');
          fail(new SmgError(500, 'internal_error', 'Internal server error'));
        }
      }
    });
    return true;
  };
}
