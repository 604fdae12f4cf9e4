/**
 * The inference hot path: parse only what routing needs, pick a worker, forward the original
 * body bytes over the worker's keep-alive pool, and stream the answer back chunk by chunk with
 * backpressure. A client that goes away aborts the upstream request. The worker's in-flight
 * count is held until the response body ends, whichever way it ends.
 */
import type { IncomingHttpHeaders, IncomingMessage, ServerResponse } from 'node:http';
import { performance } from 'node:perf_hooks';
import type { Logger } from 'pino';
import { errors as undiciErrors } from 'undici';
import type { Metrics } from '../observability/metrics.js';
import { errorEnvelope, errors, SmgError } from '../protocols/errors.js';
import type { Endpoint } from '../protocols/routing-text.js';
import type { Replica } from '../state/replica.js';
import type { WorkerView } from '../state/registry.js';
import { splitWorkerUrl, type UpstreamPools } from '../workers/upstream.js';
import { ENDPOINT_BY_PATH } from './request-id.js';
import type { WorkerSelection } from './worker-selection.js';

/** hop-by-hop headers never forwarded in either direction (RFC 9110 §7.6.1, plus `host`) */
const HOP_BY_HOP_RESPONSE = new Set([
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
]);

/** towards the worker, undici frames the body itself: the client's length header is not reused */
const HOP_BY_HOP_REQUEST = new Set([...HOP_BY_HOP_RESPONSE, 'content-length']);

/** proxied requests whose upstream response has not ended yet (shutdown waits for these) */
export interface InflightCounter {
  proxied: number;
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
    if (v === undefined || HOP_BY_HOP_REQUEST.has(name) || connectionTokens?.has(name)) continue;
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

/**
 * The worker's response headers without hop-by-hop ones, plus the gateway's own (`x-request-id`,
 * CORS), which win over the worker's.
 */
export function responseHeaders(
  upstream: Record<string, string | string[] | undefined>,
  extra: Record<string, unknown> = {},
): Record<string, string | string[]> {
  const out: Record<string, string | string[]> = {};
  const connectionTokens = connectionHeaderTokens(upstream.connection);
  for (const name in upstream) {
    const v = upstream[name];
    if (v === undefined || HOP_BY_HOP_RESPONSE.has(name) || connectionTokens?.has(name)) continue;
    out[name] = v;
  }
  for (const name in extra) {
    const v = extra[name];
    if (typeof v === 'string' || Array.isArray(v)) out[name] = v as string | string[];
    else if (typeof v === 'number') out[name] = String(v);
  }
  return out;
}

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

export interface FastPathDeps {
  inflight: InflightCounter;
  replica: Replica;
  selection: WorkerSelection;
  pools: UpstreamPools;
  metrics: Metrics;
  logger: Logger;
  bodyLimit: number;
  genReqId: (req: IncomingMessage) => string;
  /** CORS headers for a request's Origin, or undefined */
  corsHeaders: (origin: string | undefined) => Record<string, string> | undefined;
}

/**
 * The inference routes, served straight from node:http without fastify's per-request objects,
 * hooks and child loggers: this is the hot path. Returns false for anything it does not serve
 * (the caller hands those to fastify).
 */
export function createInferenceFastPath(
  deps: FastPathDeps,
): (req: IncomingMessage, res: ServerResponse) => boolean {
  const { replica, selection, pools, metrics, inflight, logger, bodyLimit } = deps;
  /** labelled metric children per (model, endpoint, worker type, policy): resolved once */
  interface RouterChildren {
    labels: Record<'router_type' | 'backend_type' | 'connection_mode' | 'model' | 'endpoint', string>;
    requests: { inc(): void };
    requestsStreaming: { inc(): void };
    selection: { inc(): void };
    duration: { observe(v: number): void };
  }
  const routerChildren = new Map<string, RouterChildren>();
  function childrenFor(
    model: string,
    endpoint: Endpoint,
    worker: WorkerView,
    policy: string,
  ): RouterChildren {
    const key = `${model}\u0000${endpoint}\u0000${worker.spec.worker_type}\u0000${policy}`;
    let c = routerChildren.get(key);
    if (!c) {
      const labels = {
        router_type: 'http',
        backend_type: 'regular',
        connection_mode: 'http',
        model: model || 'default',
        endpoint,
      };
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
      };
      routerChildren.set(key, c);
    }
    return c;
  }

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
    let errorCode = '';
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

    const fail = (e: SmgError) => {
      errorCode = e.code;
      if (res.headersSent) {
        res.destroy();
        return;
      }
      const payload = JSON.stringify(errorEnvelope(e.status, e.code, e.message));
      res.writeHead(e.status, {
        ...extraHeaders,
        ...e.headers,
        'content-type': 'application/json; charset=utf-8',
        'x-smg-error-code': e.code,
        'content-length': String(Buffer.byteLength(payload)),
      });
      res.end(payload);
    };

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
        forward(req, res, endpoint, raw, requestId, extraHeaders, (code) => (errorCode = code));
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

  function forward(
    req: IncomingMessage,
    res: ServerResponse,
    endpoint: Endpoint,
    raw: Buffer,
    requestId: string,
    extraHeaders: Record<string, string>,
    setErrorCode: (code: string) => void,
  ): void {
    // everything that can fail before the upstream call throws an SmgError
    const body = parseBody(raw);
    const streaming = body.stream === true;
    const sel = selection.select(endpoint, body, req.headers);
    const { worker } = sel;
    const mc = childrenFor(sel.model, endpoint, worker, sel.policy.name);
    const routerLabelSet = mc.labels;
    (streaming ? mc.requestsStreaming : mc.requests).inc();
    mc.selection.inc();

    const started = performance.now();
    replica.load.acquire(worker.id);
    inflight.proxied++;
    let done = false;
    let controller: { abort(reason: Error): void; pause(): void; resume(): void } | undefined;
    const finish = () => {
      if (done) return;
      done = true;
      inflight.proxied--;
      replica.load.release(worker.id);
      res.off('close', onClientClose);
      res.off('drain', onDrain);
      mc.duration.observe((performance.now() - started) / 1000);
    };
    const routerError = (code: string) => {
      metrics.inc(metrics.routerErrors, { ...routerLabelSet, error_type: code });
      metrics.inc(metrics.workerErrors, {
        worker_type: worker.spec.worker_type,
        connection_mode: 'http',
        error_type: code,
      });
    };
    const onClientClose = () => {
      if (done || res.writableFinished) return;
      metrics.inc(metrics.routerErrors, { ...routerLabelSet, error_type: 'client_disconnected' });
      controller?.abort(new Error('client disconnected'));
      finish();
    };
    const onDrain = () => controller?.resume();
    res.on('close', onClientClose);
    res.on('drain', onDrain);

    const { origin, basePath } = splitWorkerUrl(worker.url);
    pools.get(origin).dispatch(
      {
        method: 'POST',
        path: basePath + (req.url ?? '/'),
        headers: upstreamRequestHeaders(req.headers, requestId, worker),
        body: raw,
      },
      {
        onRequestStart(ctl) {
          controller = ctl;
          if (done) ctl.abort(new Error('client disconnected'));
        },
        onResponseStart(_ctl, statusCode, headers) {
          if (done) return;
          metrics.inc(metrics.routerUpstream, {
            router_type: 'http',
            status_code: String(statusCode),
            error_code: statusCode >= 400 ? 'upstream_error' : '',
          });
          res.writeHead(statusCode, responseHeaders(headers, extraHeaders));
        },
        onResponseData(ctl, chunk) {
          if (done) return;
          if (!res.write(chunk)) ctl.pause();
        },
        onResponseEnd() {
          if (done) return;
          res.end();
          finish();
        },
        onResponseError(_ctl, err) {
          if (done) return;
          const e = classifyUpstreamError(err, worker.url);
          routerError(e.code);
          setErrorCode(e.code);
          if (!res.headersSent) {
            const payload = JSON.stringify(errorEnvelope(e.status, e.code, e.message));
            res.writeHead(e.status, {
              ...extraHeaders,
              'content-type': 'application/json; charset=utf-8',
              'x-smg-error-code': e.code,
              'content-length': String(Buffer.byteLength(payload)),
            });
            res.end(payload);
          } else {
            // the worker failed mid-response: the client must see a broken response, not a short one
            logger.warn(
              { request_id: requestId, worker: worker.url, err: err.message },
              'upstream failed mid-response',
            );
            res.destroy();
          }
          finish();
        },
      },
    );
  }
}
