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
import { jsonDepth, MAX_BODY_DEPTH } from '../protocols/json-depth.js';
import { parseWithLargeStrings } from '../protocols/large-strings.js';
import { RoutingInput, type Endpoint, type ParsedBody } from '../protocols/routing-text.js';
import type { WorkerView } from '../state/registry.js';
import type { Admission, AdmissionTicket } from './admission/index.js';
import type { Auth } from './auth.js';
import { lingerOnClose } from './lingering-close.js';
import {
  declaredLength,
  LARGE_BODY_BYTES,
  readBody,
  type BodyFailure,
  type RequestBody,
  type RequestBytesBudget,
} from './body-reader.js';
import {
  Forwarding,
  writeErrorResponse,
  type ForwardDeps,
  type ForwardRequest,
  type RouterChildren,
} from './forward.js';
import { ENDPOINT_BY_PATH } from './request-id.js';

export { responseHeaders, upstreamRequestHeaders, type InflightCounter } from './forward.js';

/** an inference body: a JSON object, nested no deeper than SMG accepts (else 400) */
export function parseInferenceBody(raw: RequestBody): ParsedBody {
  if (raw.length === 0) throw errors.invalidJson('request body is empty');
  let parsed: unknown;
  let large: ParsedBody['large'];
  try {
    // a large body keeps its large strings in its bytes; smaller ones: JSON.parse alone, faster for them
    const lazy = raw.length >= LARGE_BODY_BYTES ? parseLarge(raw) : undefined;
    if (lazy) ({ value: parsed, large } = lazy);
    else parsed = JSON.parse(raw.text());
  } catch (err) {
    throw errors.invalidJson(err instanceof Error ? err.message : String(err));
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
    throw errors.invalidJson('expected a JSON object');
  }
  // JSON.parse takes any depth; the code that reads the body afterwards must not have to
  if (jsonDepth(parsed, MAX_BODY_DEPTH) > MAX_BODY_DEPTH) {
    throw errors.invalidJson(`the body nests more than ${MAX_BODY_DEPTH} levels deep`);
  }
  return { value: parsed as Record<string, unknown>, large };
}

/**
 * A large body with its large strings left in place; undefined when it has none. A body it
 * refuses is parsed again by JSON.parse, whose message (and verdict) the client gets.
 */
function parseLarge(raw: RequestBody): { value: unknown; large: ParsedBody['large'] } | undefined {
  try {
    return parseWithLargeStrings(raw.chunks);
  } catch {
    return { value: JSON.parse(raw.text()) as unknown, large: undefined };
  }
}

/** what the HTTP layer records for every response, fast path or fastify */
export interface HttpOutcome {
  method: string;
  /** route template, or `other` */
  route: string;
  /** the request target; only its path is logged (a query string may carry secrets) */
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

function pathOnly(url: string): string {
  const q = url.indexOf('?');
  return q < 0 ? url : url.slice(0, q);
}

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
        path: pathOnly(o.url),
        status: o.status,
        latency_ms: Math.round(o.elapsedMs * 100) / 100,
      },
      'request completed',
    );
  }
}

export interface FastPathDeps extends Omit<ForwardDeps, 'childrenFor' | 'upstreamStatus'> {
  bodyLimit: number;
  /** --body-read-timeout-secs, in ms */
  bodyTimeoutMs: number;
  /** --max-buffered-request-bytes: every body this process holds */
  bodyBudget: RequestBytesBudget;
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
 * Order per request: request id → auth (tenant) → declared size and the buffered-bytes budget →
 * admission (all on the headers; a queued request's body stays unread in the socket) → body
 * (size, time and memory bounds, src/server/body-reader.ts) → parse → the model's tenant rule
 * (`ticket.start`) → {@link Forwarding} (select, send, retry, stream).
 */
export function createInferenceFastPath(
  deps: FastPathDeps,
): (req: IncomingMessage, res: ServerResponse) => boolean {
  const { metrics, logger, bodyLimit, bodyBudget, auth, admission, tracing, lifecycle } = deps;
  const bodyLimits = { limit: bodyLimit, timeoutMs: deps.bodyTimeoutMs, budget: bodyBudget };
  const BODY_FAILURES: Record<BodyFailure, () => SmgError> = {
    too_large: () => errors.payloadTooLarge(bodyLimit),
    timeout: () => errors.bodyReadTimeout(deps.bodyTimeoutMs / 1000),
    over_budget: () => errors.requestBufferFull(bodyBudget.cap),
    aborted: () => errors.clientClosed(),
  };
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
    // answered before (or instead of) reading the whole body: the rest is never read, so the
    // connection closes once the answer is out
    const failAndClose = (e: SmgError) => {
      extraHeaders['connection'] = 'close';
      // what the client still sends is read and dropped for a while, so it sees this answer
      // rather than a reset
      lingerOnClose(req);
      fail(e);
    };

    let tenant = 'anonymous';
    if (auth !== undefined && (needTenant || !auth.dataPlaneOpen)) {
      try {
        tenant = auth.authenticateData(req.headers, req.socket.remoteAddress);
      } catch (err) {
        // the body is never read: answer and close, like an oversized body
        failAndClose(err instanceof SmgError ? err : errors.unauthorized('data-plane'));
        return true;
      }
    }

    // everything up to admission is decided on the headers: no body byte is read before
    const declared = declaredLength(req);
    if (declared !== undefined && Number.isNaN(declared)) {
      failAndClose(errors.invalidRequest('invalid content-length'));
      return true;
    }
    if (declared !== undefined && declared > bodyLimit) {
      failAndClose(errors.payloadTooLarge(bodyLimit));
      return true;
    }
    if (!bodyBudget.fits(declared ?? 0)) {
      failAndClose(errors.requestBufferFull(bodyBudget.cap));
      return true;
    }
    // a client that sent `Expect: 100-continue` sends its body only once it is admitted
    const expectsContinue = /100-continue/i.test(req.headers.expect ?? '');

    const readAndForward = (ticket: AdmissionTicket | undefined) => {
      if (expectsContinue) res.writeContinue();
      const read = readBody(req, bodyLimits, (failure, raw) => {
        if (failure || !raw) {
          ticket?.release();
          if (failure === 'aborted') res.destroy();
          else failAndClose(BODY_FAILURES[failure ?? 'aborted']());
          return;
        }
        try {
          const routing = new RoutingInput(endpoint, parseInferenceBody(raw), () => parseInferenceBody(raw));
          const model = deps.selection.resolveModel(routing.model);
          const refused = ticket?.start(model, Math.ceil(raw.length / 4));
          if (refused) throw refused;
          const request: ForwardRequest = {
            req,
            res,
            endpoint,
            raw,
            routing,
            requestId,
            extraHeaders,
            span,
            ticket,
            setErrorCode,
          };
          new Forwarding(forwardDeps, request).start();
        } catch (err) {
          ticket?.release();
          if (err instanceof SmgError) fail(err);
          else {
            logger.error({ err, request_id: requestId }, 'unhandled error on the inference path');
            fail(new SmgError(500, 'internal_error', 'Internal server error'));
          }
        }
      });
      res.once('close', read.release);
    };

    req.on('error', () => res.destroy());
    if (admission === undefined) {
      readAndForward(undefined);
      return true;
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
        estimatedTokens: declared === undefined ? 0 : Math.ceil(declared / 4),
      },
      (err, ticket) => {
        queued = false;
        res.off('close', onQueuedClose);
        if (err || !ticket) {
          ticket?.release();
          // the body was never read: the connection cannot be reused
          failAndClose(err ?? new SmgError(500, 'internal_error', 'admission failed'));
          return;
        }
        if (res.destroyed) {
          ticket.release();
          return;
        }
        readAndForward(ticket);
      },
    );
    if (queued && pending) res.once('close', onQueuedClose);
    return true;
  };
}
