/**
 * Every error the gateway answers with is a coded `SmgError`, defined here once, and one error
 * handler (src/server/error-handler.ts) turns it into SMG's envelope:
 *   {"error":{"type":<HTTP reason phrase>,"code":<snake_case>,"message":…,"param":null}}
 * plus the `X-SMG-Error-Code` header.
 */
import { STATUS_CODES } from 'node:http';

export class SmgError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
    this.name = 'SmgError';
  }
}

export interface ErrorEnvelope {
  error: { type: string; code: string; message: string; param: null };
}

export function errorEnvelope(status: number, code: string, message: string): ErrorEnvelope {
  return { error: { type: STATUS_CODES[status] ?? 'Error', code, message, param: null } };
}

export const errors = {
  /** an unexpected failure: the message is generic on purpose, the details go to the log */
  internal: () => new SmgError(500, 'internal_error', 'Internal server error'),
  invalidJson: (detail: string) => new SmgError(400, 'invalid_request_body', `Invalid JSON body: ${detail}`),
  invalidRequest: (message: string) => new SmgError(400, 'invalid_request', message),
  unsupportedMediaType: (ct: string) =>
    new SmgError(415, 'unsupported_media_type', `Unsupported content type "${ct}": send application/json`),
  notFound: (path: string) => new SmgError(404, 'not_found', `No route for ${path}`),
  modelNotFound: (model: string) =>
    new SmgError(404, 'model_not_found', `No worker available for model '${model}'`),
  noAvailableWorkers: (model: string) =>
    new SmgError(
      503,
      'no_available_workers',
      model ? `No available workers for model '${model}'` : 'No available workers',
    ),
  payloadTooLarge: (limit: number, headers: Record<string, string> = {}) =>
    new SmgError(413, 'payload_too_large', `Request body exceeds the limit of ${limit} bytes`, headers),
  bodyReadTimeout: (secs: number, headers: Record<string, string> = {}) =>
    new SmgError(
      408,
      'body_read_timeout',
      `The request body did not arrive within ${secs} s (--body-read-timeout-secs)`,
      headers,
    ),
  requestBufferFull: (cap: number, headers: Record<string, string> = {}) =>
    new SmgError(
      503,
      'request_buffer_full',
      `The gateway holds its limit of ${cap} bytes of request bodies; try again later`,
      { 'retry-after': '1', ...headers },
    ),
  /** the client went away before its request was read (only counted: nobody reads the answer) */
  clientClosed: () => new SmgError(499, 'client_closed_request', 'Client closed the request'),
  upstreamTimeout: (url: string) =>
    new SmgError(504, 'call_upstream_timeout', `Upstream worker ${url} did not answer in time`),
  upstreamUnreachable: (url: string, detail: string) =>
    new SmgError(502, 'upstream_connection_error', `Upstream worker ${url} failed: ${detail}`),
  workerNotFound: (id: string) => new SmgError(404, 'worker_not_found', `Worker '${id}' not found`),
  workerExists: (url: string) =>
    new SmgError(409, 'worker_already_exists', `Worker with URL ${url} already exists`),
  invalidWorker: (message: string) => new SmgError(400, 'invalid_worker_spec', message),
  // admission (inventory §5.4–5.6)
  rateLimited: (retryAfterSecs: number) =>
    new SmgError(429, 'rate_limit_exceeded', 'Too many concurrent requests; try again later', {
      'retry-after': String(Math.max(1, Math.ceil(retryAfterSecs))),
    }),
  queueTimeout: (waitedSecs: number, retryAfterSecs: number) =>
    new SmgError(408, 'queue_timeout', `Request waited ${waitedSecs.toFixed(1)} s in the admission queue`, {
      'retry-after': String(Math.max(1, Math.ceil(retryAfterSecs))),
    }),
  schedulerQueueFull: (cls: string, retryAfterSecs: number) =>
    new SmgError(429, 'scheduler_queue_full', `The ${cls} priority queue is full`, {
      'retry-after': String(Math.max(1, Math.ceil(retryAfterSecs))),
    }),
  schedulerQueueTimeout: (cls: string, waitedSecs: number, retryAfterSecs: number) =>
    new SmgError(
      408,
      'scheduler_queue_timeout',
      `Request waited ${waitedSecs.toFixed(1)} s in the ${cls} priority queue`,
      { 'retry-after': String(Math.max(1, Math.ceil(retryAfterSecs))) },
    ),
  schedulerPreempted: () =>
    new SmgError(503, 'scheduler_preempted', 'Request was preempted by a higher-priority request', {
      'retry-after': '1',
      'x-smg-preempted': 'true',
    }),
  schedulerClientCancelled: () =>
    new SmgError(499, 'scheduler_client_cancelled', 'Client went away while the request was queued'),
  tenantRateLimitExceeded: (tenant: string, what: string, retryAfterSecs: number) =>
    new SmgError(429, 'tenant_rate_limit_exceeded', `Rate limit exceeded for ${tenant}: ${what}`, {
      'retry-after': String(Math.max(1, Math.ceil(retryAfterSecs))),
    }),
  // auth (inventory §12)
  unauthorized: (realm: 'data-plane' | 'control-plane', message = 'Missing or invalid API key') =>
    new SmgError(401, 'unauthorized', message, { 'www-authenticate': `Bearer realm="${realm}"` }),
  forbidden: (message = 'This API key may not call control-plane routes') =>
    new SmgError(403, 'forbidden', message),
};
