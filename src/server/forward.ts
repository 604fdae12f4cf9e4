/**
 * One proxied inference request after its body has been read and admitted: pick a worker, send
 * the original bytes, stream the answer back, and retry on another worker while nothing has
 * reached the client yet.
 *
 * Each attempt holds the worker's in-flight count and (in half-open) a circuit-breaker trial slot
 * from dispatch until its upstream response ends, fails, or is abandoned; its verdict feeds the
 * worker's breaker. A retryable status is discovered at the response head: its (small) body is
 * drained so the keep-alive connection survives, then the request is re-routed after a backoff.
 * Once headers went to the client the response is committed: an upstream failure then ends an SSE
 * stream with a final `error` event (never a silent truncation) and breaks any other body.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { performance } from 'node:perf_hooks';
import type { Dispatcher } from 'undici';
import { errors as undiciErrors } from 'undici';
import type { Logger } from 'pino';
import type { RetryConfig } from '../cli/config-types.js';
import type { Metrics } from '../observability/metrics.js';
import type { RequestSpan } from '../observability/tracing.js';
import { UsageObserver } from '../observability/usage.js';
import { errorEnvelope, errors, SmgError } from '../protocols/errors.js';
import type { Endpoint, RoutingInput } from '../protocols/routing-text.js';
import type { WorkerView } from '../state/registry.js';
import type { Replica } from '../state/replica.js';
import type { WorkerBreakers } from '../workers/breakers.js';
import { outcomeOf, type CircuitBreaker, type Outcome } from '../workers/circuit-breaker.js';
import { backoffMs, retrySettings, type RetryBudget, type RetrySettings } from '../workers/retry.js';
import { splitWorkerUrl, type UpstreamPools } from '../workers/upstream.js';
import type { AdmissionTicket } from './admission/index.js';
import type { RequestBody } from './body-reader.js';
import type { WorkerSelection } from './worker-selection.js';

/** proxied requests whose upstream response has not ended yet (shutdown waits for these) */
export interface InflightCounter {
  proxied: number;
  /**
   * The requests in flight as an intrusive list (no per-request hashing or allocation), read by
   * the request-age gauge every 20 s.
   */
  head: InflightEntry | undefined;
}

export interface InflightEntry {
  readonly started: number;
  prevInflight: InflightEntry | undefined;
  nextInflight: InflightEntry | undefined;
}

/** start times (performance.now()) of the requests in flight */
export function* inflightStarts(c: InflightCounter): Generator<number> {
  for (let e = c.head; e !== undefined; e = e.nextInflight) yield e.started;
}

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

/**
 * towards the worker, undici frames the body itself: the client's length header is not reused;
 * `Expect: 100-continue` was answered by the gateway (undici refuses to send it)
 */
const HOP_BY_HOP_REQUEST = new Set([...HOP_BY_HOP_RESPONSE, 'content-length', 'expect']);

const KEEP_ALIVE_TOKENS: ReadonlySet<string> = new Set(['keep-alive']);
const CLOSE_TOKENS: ReadonlySet<string> = new Set(['close']);

function connectionHeaderTokens(v: string | string[] | undefined): ReadonlySet<string> | undefined {
  if (!v) return undefined;
  // the two values nearly every request carries, without splitting
  if (v === 'keep-alive' || v === 'Keep-Alive') return KEEP_ALIVE_TOKENS;
  if (v === 'close' || v === 'Close') return CLOSE_TOKENS;
  const s = Array.isArray(v) ? v.join(',') : v;
  return new Set(
    s
      .split(',')
      .map((t) => t.trim().toLowerCase())
      .filter(Boolean),
  );
}

export interface UpstreamHeaderOptions {
  /** the gateway's `--api-key`, sent to workers that have no key of their own */
  workerApiKey?: string;
  /** the gateway checks client keys: they are the gateway's secrets and never reach a worker */
  stripClientAuth?: boolean;
  traceparent?: string;
  tracestate?: string;
}

export function upstreamRequestHeaders(
  incoming: IncomingMessage['headers'],
  requestId: string,
  worker: WorkerView,
  opts: UpstreamHeaderOptions = {},
  trace?: { readonly traceparent: string; readonly tracestate: string | undefined },
): Record<string, string | string[]> {
  const out: Record<string, string | string[]> = {};
  const connectionTokens = connectionHeaderTokens(incoming.connection);
  for (const name in incoming) {
    const v = incoming[name];
    if (v === undefined || HOP_BY_HOP_REQUEST.has(name) || connectionTokens?.has(name)) continue;
    out[name] = v;
  }
  out['x-request-id'] = requestId;
  if (opts.stripClientAuth) {
    delete out['authorization'];
    delete out['x-api-key'];
  }
  const key = worker.spec.api_key ?? opts.workerApiKey;
  if (key) out['authorization'] = `Bearer ${key}`;
  const traceparent = trace?.traceparent ?? opts.traceparent;
  if (traceparent) {
    out['traceparent'] = traceparent;
    const tracestate = trace ? trace.tracestate : opts.tracestate;
    if (tracestate) out['tracestate'] = tracestate;
    else delete out['tracestate'];
  }
  return out;
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

/** metric children per (model, endpoint, worker type, policy), resolved once */
export interface RouterChildren {
  labels: Record<'router_type' | 'backend_type' | 'connection_mode' | 'model' | 'endpoint', string>;
  requests: { inc(): void };
  requestsStreaming: { inc(): void };
  selection: { inc(): void };
  duration: { observe(v: number): void };
  ttft: { observe(v: number): void };
  tpot: { observe(v: number): void };
  generation: { observe(v: number): void };
  tokens: Record<'input' | 'output' | 'cached', { inc(v: number): void }>;
}

export interface ForwardDeps {
  inflight: InflightCounter;
  replica: Replica;
  selection: WorkerSelection;
  pools: UpstreamPools;
  metrics: Metrics;
  logger: Logger;
  breakers: WorkerBreakers;
  retry: RetryConfig;
  budget: RetryBudget;
  upstreamHeaders: Omit<UpstreamHeaderOptions, 'traceparent' | 'tracestate'>;
  childrenFor(model: string, endpoint: Endpoint, worker: WorkerView, policy: string): RouterChildren;
  /** `smg_router_upstream_responses_total` child for a status, resolved once per status */
  upstreamStatus(status: number): { inc(): void };
  random: () => number;
}

export interface ForwardRequest {
  req: IncomingMessage;
  res: ServerResponse;
  endpoint: Endpoint;
  /** the body's bytes, as read (sent again as they are on a retry) */
  raw: RequestBody;
  /** what routing reads from the body (the parsed body itself is let go after the first selection) */
  routing: RoutingInput;
  requestId: string;
  extraHeaders: Record<string, string>;
  span: RequestSpan | undefined;
  ticket: AdmissionTicket | undefined;
  setErrorCode(code: string): void;
}

const SSE_DONE_ERROR_TYPE: Partial<Record<Endpoint, 'anthropic'>> = { messages: 'anthropic' };

/** Sends one admitted request upstream, with retries. */
export class Forwarding implements InflightEntry {
  prevInflight: InflightEntry | undefined = undefined;
  nextInflight: InflightEntry | undefined = undefined;
  private attempt = 0;
  /** incremented whenever an attempt ends: callbacks of an older attempt are ignored */
  private attemptId = 0;
  private tried: Set<string> | undefined;
  private worker: WorkerView | undefined;
  private breaker: CircuitBreaker | undefined;
  private wasTrial = false;
  private settings: RetrySettings | undefined;
  private controller: Dispatcher.DispatchController | undefined;
  private attemptActive = false;
  private discarding = false;
  private discardedStatus = 0;
  private status = 0;
  private sse = false;
  private done = false;
  private backoff: NodeJS.Timeout | undefined;
  private mc: RouterChildren | undefined;
  private model = '';
  readonly started = performance.now();
  private sentAt = 0;
  private usage: UsageObserver | undefined;
  private readonly streaming: boolean;

  constructor(
    private readonly d: ForwardDeps,
    private readonly r: ForwardRequest,
  ) {
    this.streaming = r.routing.stream;
  }

  start(): void {
    const { res } = this.r;
    this.d.inflight.proxied++;
    const c = this.d.inflight;
    this.nextInflight = c.head;
    if (c.head) c.head.prevInflight = this;
    c.head = this;
    this.d.budget.onRequest();
    res.on('close', this.onClientClose);
    res.on('drain', this.onDrain);
    if (this.r.ticket) this.r.ticket.onPreempt = this.onPreempt;
    this.runAttempt();
  }

  private readonly onDrain = () => this.controller?.resume();

  private readonly onClientClose = () => {
    if (this.done || this.r.res.writableFinished) return;
    const labels = this.mc?.labels;
    if (labels)
      this.d.metrics.inc(this.d.metrics.routerErrors, { ...labels, error_type: 'client_disconnected' });
    this.abandonAttempt();
    this.finish();
  };

  private readonly onPreempt = () => {
    if (this.done || this.r.res.headersSent) return;
    this.abandonAttempt();
    this.sendError(errors.schedulerPreempted());
    this.finish();
  };

  private runAttempt(): void {
    const { d, r } = this;
    let sel;
    try {
      sel = d.selection.select(r.routing, r.req.headers, this.tried);
    } catch (err) {
      if (err instanceof SmgError) this.sendError(err);
      else {
        // the details are for the log only: no internal text ever reaches a client
        d.logger.error({ err, request_id: r.requestId }, 'worker selection failed');
        this.sendError(errors.internal());
      }
      this.finish();
      return;
    }
    r.routing.release();
    const { worker } = sel;
    const mc = d.childrenFor(sel.model, r.endpoint, worker, sel.policy.name);
    if (this.mc === undefined) {
      this.mc = mc;
      this.model = sel.model;
      (this.streaming ? mc.requestsStreaming : mc.requests).inc();
      if (r.span) r.span.setAttribute('model', sel.model || 'default');
    }
    mc.selection.inc();
    this.worker = worker;
    this.settings = retrySettings(d.retry, worker.spec.resilience);
    const breaker = d.breakers.get(worker);
    this.breaker = breaker;
    this.wasTrial = breaker.state === 'half_open';
    breaker.onStart();
    d.replica.load.acquire(worker.id);
    this.attemptActive = true;
    this.discarding = false;
    this.status = 0;
    const id = ++this.attemptId;
    this.sentAt = performance.now();
    if (r.span) {
      r.span.setAttribute('worker', worker.url);
      r.span.addEvent('RequestSentEvent', { url: worker.url, attempt: this.attempt + 1 });
    }

    const { origin, basePath } = splitWorkerUrl(worker.url);
    const headers = upstreamRequestHeaders(r.req.headers, r.requestId, worker, d.upstreamHeaders, r.span);
    const body = r.raw.payload();
    // a stream of chunks is sent with its length, not chunked (undici measures a single buffer)
    if (!Buffer.isBuffer(body)) headers['content-length'] = String(r.raw.length);
    d.pools.get(origin).dispatch(
      { method: 'POST', path: basePath + (r.req.url ?? '/'), headers, body },
      {
        onRequestStart: (ctl) => {
          if (id !== this.attemptId) return ctl.abort(new Error('attempt abandoned'));
          this.controller = ctl;
        },
        onResponseStart: (ctl, statusCode, upstreamHeaders) => {
          if (id !== this.attemptId) return;
          this.onHead(ctl, statusCode, upstreamHeaders);
        },
        onResponseData: (ctl, chunk) => {
          if (id !== this.attemptId || this.discarding) return;
          if (this.usage) this.usage.onChunk(chunk, performance.now());
          if (!r.res.write(chunk)) ctl.pause();
        },
        onResponseEnd: () => {
          if (id !== this.attemptId) return;
          this.onEnd();
        },
        onResponseError: (_ctl, err) => {
          if (id !== this.attemptId) return;
          this.onError(err);
        },
      },
    );
  }

  private onHead(
    _ctl: Dispatcher.DispatchController,
    statusCode: number,
    upstreamHeaders: Record<string, string | string[] | undefined>,
  ): void {
    const { d, r } = this;
    d.upstreamStatus(statusCode).inc();
    const settings = this.settings as RetrySettings;
    if (settings.retryable.has(statusCode)) {
      if (this.mayRetry(settings)) {
        // drain the error body so the keep-alive connection survives, then retry
        this.discarding = true;
        this.discardedStatus = statusCode;
        return;
      }
      if (this.attempt > 0) this.countExhausted();
    }
    this.status = statusCode;
    const ct = upstreamHeaders['content-type'];
    this.sse = typeof ct === 'string' && ct.includes('text/event-stream');
    r.res.writeHead(statusCode, responseHeaders(upstreamHeaders, r.extraHeaders));
    r.ticket?.firstByte();
    if (statusCode < 300) this.usage = new UsageObserver(this.streaming && this.sse, this.sentAt);
  }

  private onEnd(): void {
    if (this.discarding) {
      this.endAttempt(outcomeOf(this.discardedStatus));
      this.scheduleRetry();
      return;
    }
    this.r.res.end();
    this.endAttempt(outcomeOf(this.status));
    this.finish();
  }

  private onError(err: Error): void {
    const { d, r } = this;
    const worker = this.worker as WorkerView;
    const e = classifyUpstreamError(err, worker.url);
    const labels = this.mc?.labels;
    if (labels) d.metrics.inc(d.metrics.routerErrors, { ...labels, error_type: e.code });
    d.metrics.inc(d.metrics.workerErrors, {
      worker_type: worker.spec.worker_type,
      connection_mode: 'http',
      error_type: e.code,
    });
    const wasDiscarding = this.discarding;
    this.endAttempt('failure');
    if (!r.res.headersSent) {
      if (wasDiscarding || this.mayRetry(this.settings as RetrySettings)) {
        this.scheduleRetry();
        return;
      }
      if (this.attempt > 0) this.countExhausted();
      this.sendError(e);
      this.finish();
      return;
    }
    // the response is committed: end it visibly broken, never as a silently short success
    r.setErrorCode(e.code);
    d.logger.warn(
      { request_id: r.requestId, worker: worker.url, err: err.message },
      'upstream failed mid-response',
    );
    if (this.sse && !r.res.destroyed) {
      r.res.end(sseErrorEvent(r.endpoint, e));
    } else {
      r.res.destroy();
    }
    this.finish();
  }

  /** asks once per failed attempt: attempts left, client still here, budget allows */
  private mayRetry(settings: RetrySettings): boolean {
    if (this.attempt >= settings.maxRetries || this.done) return false;
    if (!this.d.budget.tryRetry()) {
      this.d.metrics.inc(this.d.metrics.retryBudgetRejected, { endpoint: this.r.endpoint });
      return false;
    }
    return true;
  }

  private countExhausted(): void {
    const worker = this.worker as WorkerView;
    this.d.metrics.inc(this.d.metrics.retriesExhausted, {
      worker_type: worker.spec.worker_type,
      endpoint: this.r.endpoint,
    });
  }

  private scheduleRetry(): void {
    const { d } = this;
    const worker = this.worker as WorkerView;
    (this.tried ??= new Set()).add(worker.id);
    this.attempt++;
    const delay = backoffMs(this.attempt, this.settings as RetrySettings, d.random);
    d.metrics.inc(d.metrics.retries, { worker_type: worker.spec.worker_type, endpoint: this.r.endpoint });
    d.metrics.retryBackoff.observe({ attempt: String(this.attempt) }, delay / 1000);
    this.backoff = setTimeout(() => {
      this.backoff = undefined;
      if (!this.done) this.runAttempt();
    }, delay);
  }

  /** ends the current attempt: worker load, breaker verdict, stale-callback guard */
  private endAttempt(outcome: Outcome | undefined): void {
    if (!this.attemptActive) return;
    this.attemptActive = false;
    this.attemptId++;
    this.controller = undefined;
    this.discarding = false;
    const worker = this.worker as WorkerView;
    this.d.replica.load.release(worker.id);
    this.d.breakers.record(worker, this.breaker as CircuitBreaker, outcome, this.wasTrial);
  }

  /** client gone or preempted: stop the upstream call without a verdict on the worker */
  private abandonAttempt(): void {
    if (this.backoff) clearTimeout(this.backoff);
    this.backoff = undefined;
    const ctl = this.controller;
    this.endAttempt(undefined);
    ctl?.abort(new Error('client disconnected'));
  }

  private sendError(e: SmgError): void {
    this.r.setErrorCode(e.code);
    if (!this.r.res.headersSent && !this.r.res.destroyed)
      writeErrorResponse(this.r.res, e, this.r.extraHeaders);
  }

  private finish(): void {
    if (this.done) return;
    this.done = true;
    const { d, r } = this;
    d.inflight.proxied--;
    const c = d.inflight;
    if (this.prevInflight) this.prevInflight.nextInflight = this.nextInflight;
    else if (c.head === this) c.head = this.nextInflight;
    if (this.nextInflight) this.nextInflight.prevInflight = this.prevInflight;
    this.prevInflight = this.nextInflight = undefined;
    r.res.off('close', this.onClientClose);
    r.res.off('drain', this.onDrain);
    if (this.backoff) clearTimeout(this.backoff);
    const mc = this.mc;
    if (mc) mc.duration.observe((performance.now() - this.started) / 1000);
    let totalTokens: number | undefined;
    if (this.usage) {
      const u = this.usage.finish(performance.now());
      if (mc) {
        if (u.ttftSec !== undefined) mc.ttft.observe(u.ttftSec);
        if (u.tpotSec !== undefined) mc.tpot.observe(u.tpotSec);
        if (u.generationSec !== undefined) mc.generation.observe(u.generationSec);
        if (u.promptTokens) mc.tokens.input.inc(u.promptTokens);
        if (u.completionTokens) mc.tokens.output.inc(u.completionTokens);
        if (u.cachedTokens) mc.tokens.cached.inc(u.cachedTokens);
      }
      if (u.promptTokens !== undefined || u.completionTokens !== undefined) {
        totalTokens = (u.promptTokens ?? 0) + (u.completionTokens ?? 0);
      }
    }
    r.ticket?.release(totalTokens === undefined ? undefined : { totalTokens });
  }
}

/** SMG's error envelope as a complete response, with the gateway's own headers and the error's */
export function writeErrorResponse(
  res: ServerResponse,
  e: SmgError,
  extraHeaders: Record<string, string>,
): void {
  const payload = JSON.stringify(errorEnvelope(e.status, e.code, e.message));
  res.writeHead(e.status, {
    ...extraHeaders,
    ...e.headers,
    'content-type': 'application/json; charset=utf-8',
    'x-smg-error-code': e.code,
    'content-length': String(Buffer.byteLength(payload)),
  });
  res.end(payload);
}

/** the last event of a stream whose worker failed: OpenAI's `{error}` shape, or Anthropic's */
function sseErrorEvent(endpoint: Endpoint, e: SmgError): string {
  if (SSE_DONE_ERROR_TYPE[endpoint] === 'anthropic') {
    return `event: error\ndata: ${JSON.stringify({ type: 'error', error: { type: 'api_error', message: e.message } })}\n\n`;
  }
  return `data: ${JSON.stringify(errorEnvelope(e.status, e.code, e.message))}\n\n`;
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
