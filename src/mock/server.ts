/**
 * Mock inference engines (`smg mock-worker`): each port is an independent SGLang/vLLM-like,
 * OpenAI-compatible engine with its own prefix KV cache, counters and runtime settings. Built on
 * node:http directly so it stays much faster than the gateway in front of it.
 *
 * Inference (POST; JSON body; streaming where the API has it):
 *   /v1/chat/completions  /v1/completions  /v1/embeddings (encoding_format float|base64)
 *   /generate (SGLang native)  /v1/rerank  /v1/classify (= /classify)  /v1/messages (Anthropic)
 *   /v1/responses
 * Timing: prefill ends after ttft_ms + uncached_prompt_tokens / prefill_tokens_per_s; then the
 * first token, then one token per itl_ms. A non-streaming response is sent once all tokens are
 * "generated" (ttft + itl × tokens); a stream sends its headers together with its first event.
 * The prompt's full KV blocks enter the cache when prefill ends; `usage` reports cached tokens.
 * Output: `output_tokens` deterministic pseudo-words, fewer if the request's max tokens is lower
 * (then finish_reason is `length` / `max_tokens`, else `stop` / `end_turn`). Anthropic usage
 * follows Anthropic: input_tokens excludes cache_read_input_tokens. There is no batching or
 * queue model: requests never wait for each other, so latency does not grow with load.
 *
 * Engine info (GET): /health (= /health_generate; 200 empty, 503 when made unhealthy),
 *   /v1/models, /get_server_info (= /server_info), /get_model_info (= /model_info),
 *   /v1/loads (SGLang load report), /metrics (Prometheus, sglang:* names).
 *   POST|GET /flush_cache empties the KV cache.
 *
 * Test hooks, for the gateway's own tests:
 *   POST /mock/faults  JSON {fail_rate?, fail_status?, healthy?, ttft_ms?, itl_ms?,
 *                      prefill_tokens_per_s?, output_tokens?, fail_mid_stream_after?, reset?}
 *                      changes this worker's behaviour for requests received from now on
 *                      (reset: back to the CLI settings first; fail_status in 400..599) and
 *                      answers the current settings; GET /mock/faults reads them.
 *                      fail_mid_stream_after = N > 0 destroys a stream's socket right after its
 *                      N-th token (if it has that many; non-streaming requests are unaffected);
 *                      0 or null = never.
 *   GET /mock/last-request  {method, path, headers, raw_headers, body_base64} of the last
 *                      inference request received (404 before the first one).
 *   GET /mock/stats    {requests, running, failures, prompt_tokens_total, cached_tokens_total,
 *                      generation_tokens_total, cached_blocks, health_checks, unauthorized}
 * Every response carries `x-mock-worker: <host:port>`. `requests` counts inference requests
 * received (injected failures and 4xx included); `running` is held from receipt until the
 * response ends or the client goes away.
 *
 * With `--api-key` (or SMG_MOCK_API_KEY) every route but /health, /health_generate, /metrics and
 * the /mock/ hooks needs `Authorization: Bearer <key>`, else 401 (counted in `unauthorized`).
 *
 * Errors use the OpenAI envelope {"error":{"message","type","param","code":null}}: invalid JSON or
 * a missing/invalid field → 400 invalid_request_error; unknown path → 404; wrong method → 405;
 * injected failure (fail_rate) → fail_status with type server_error, sent before any delay.
 */
import { timingSafeEqual } from 'node:crypto';
import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { z } from 'zod';
import { Engine, MAX_RUNNING_REQUESTS } from './engine.js';
import {
  BadRequest,
  chatPlan,
  classifyPlan,
  completionPlan,
  embeddingPlan,
  generatePlan,
  isObj,
  messagesPlan,
  type JsonPlan,
  type PlanBuilder,
  type StreamPlan,
  rerankPlan,
  responsesPlan,
} from './inference.js';
import type { MockWorkerOptions } from './options.js';

export interface MockFleet {
  workers: { port: number; url: string }[];
  close(): Promise<void>;
}

const MAX_BODY_BYTES = 64 * 1024 * 1024;

const INFERENCE = new Map<string, PlanBuilder>([
  ['/v1/chat/completions', chatPlan],
  ['/v1/completions', completionPlan],
  ['/v1/embeddings', embeddingPlan],
  ['/generate', generatePlan],
  ['/v1/rerank', rerankPlan],
  ['/v1/classify', classifyPlan],
  ['/classify', classifyPlan],
  ['/v1/messages', messagesPlan],
  ['/v1/responses', responsesPlan],
]);

type GetHandler = (e: Engine, res: ServerResponse) => void;
type PostHandler = (e: Engine, res: ServerResponse, body: Buffer) => void;

// ---------------------------------------------------------------- responses

function sendBody(e: Engine, res: ServerResponse, status: number, contentType: string, body: string): void {
  res.writeHead(status, [
    'content-type',
    contentType,
    'content-length',
    String(Buffer.byteLength(body)),
    'x-mock-worker',
    e.label,
  ]);
  res.end(body);
}

function sendJson(e: Engine, res: ServerResponse, status: number, body: string): void {
  sendBody(e, res, status, 'application/json', body);
}

function sendError(
  e: Engine,
  res: ServerResponse,
  status: number,
  message: string,
  type: string,
  param: string | null = null,
): void {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  sendJson(e, res, status, JSON.stringify({ error: { message, type, param, code: null } }));
}

function internalError(e: Engine, res: ServerResponse, err: unknown): void {
  try {
    sendError(e, res, 500, `mock worker internal error: ${String(err)}`, 'server_error');
  } catch {
    res.destroy();
  }
}

function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

// ---------------------------------------------------------------- request plumbing

function readBody(e: Engine, req: IncomingMessage, res: ServerResponse, done: (body: Buffer) => void): void {
  const chunks: Buffer[] = [];
  let size = 0;
  let tooLarge = false;
  req.on('data', (c: Buffer) => {
    if (tooLarge) return;
    size += c.length;
    if (size > MAX_BODY_BYTES) {
      tooLarge = true;
      res.shouldKeepAlive = false;
      sendError(e, res, 413, `request body exceeds ${MAX_BODY_BYTES} bytes`, 'invalid_request_error');
      return;
    }
    chunks.push(c);
  });
  req.on('end', () => {
    if (tooLarge) return;
    const body = chunks.length === 1 ? chunks[0] : Buffer.concat(chunks, size);
    try {
      done(body);
    } catch (err) {
      internalError(e, res, err);
    }
  });
  req.on('error', () => {
    // the client went away; `close` on the response does the bookkeeping
  });
}

interface Job {
  timer: NodeJS.Timeout | undefined;
  closed: boolean;
}

function inference(e: Engine, req: IncomingMessage, res: ServerResponse, build: PlanBuilder): void {
  const t0 = performance.now();
  e.requests++;
  e.running++;
  const job: Job = { timer: undefined, closed: false };
  res.once('close', () => {
    job.closed = true;
    if (job.timer !== undefined) clearTimeout(job.timer);
    job.timer = undefined;
    e.running--;
  });
  readBody(e, req, res, (body) => {
    e.lastRequest = {
      method: req.method ?? 'POST',
      path: req.url ?? '/',
      headers: req.headers,
      rawHeaders: req.rawHeaders,
      body,
    };
    const s = e.settings;
    if (s.fail_rate > 0 && Math.random() < s.fail_rate) {
      e.failures++;
      sendError(e, res, s.fail_status, 'injected failure', 'server_error');
      return;
    }
    let json: unknown;
    try {
      json = JSON.parse(body.toString());
    } catch (err) {
      sendError(e, res, 400, `Invalid JSON body: ${errorMessage(err)}`, 'invalid_request_error');
      return;
    }
    if (!isObj(json)) {
      sendError(e, res, 400, 'The request body must be a JSON object', 'invalid_request_error');
      return;
    }
    let plan;
    try {
      plan = build(e, json, t0);
    } catch (err) {
      if (!(err instanceof BadRequest)) throw err;
      sendError(e, res, 400, err.message, 'invalid_request_error', err.param);
      return;
    }
    if (plan.stream) runStream(e, res, job, plan);
    else runJson(e, res, job, plan);
  });
}

function runJson(e: Engine, res: ServerResponse, job: Job, plan: JsonPlan): void {
  const delay = plan.prefill.delayMs + e.settings.itl_ms * plan.n;
  const finish = () => {
    job.timer = undefined;
    if (job.closed) return;
    e.commit(plan.prefill);
    e.generationTokensTotal += plan.n * plan.choices;
    sendJson(e, res, 200, plan.body());
  };
  if (delay > 0) job.timer = setTimeout(finish, delay);
  else finish();
}

function runStream(e: Engine, res: ServerResponse, job: Job, plan: StreamPlan): void {
  const { itl_ms: itl, fail_mid_stream_after: failAfter } = e.settings;
  const n = plan.n;
  let i = 0;
  let started = false;
  // events due at the same instant leave in one write (one packet), as an engine's would; a
  // collected batch rather than res.cork(): on Node 22 a cork taken before writeHead is never
  // released, and the stream stalls after its first event
  const batch: string[] = [];
  const sink = { write: (s: string) => batch.push(s) };
  const flush = (then?: () => void) => {
    if (batch.length === 0) return then?.();
    res.write(batch.length === 1 ? batch[0] : batch.join(''), then && (() => then()));
    batch.length = 0;
  };
  const step = () => {
    job.timer = undefined;
    if (job.closed || res.destroyed) return;
    const cut = emit();
    // the injected mid-stream failure: the tokens so far reach the client, then the socket dies
    if (cut) flush(() => res.destroy());
    else {
      flush();
      if (i >= n) res.end();
    }
  };
  /** collects what is due now; true = cut the stream here */
  const emit = (): boolean => {
    if (!started) {
      started = true;
      res.writeHead(200, [
        'content-type',
        'text/event-stream',
        'cache-control',
        'no-cache',
        'x-mock-worker',
        e.label,
      ]);
      e.commit(plan.prefill);
      plan.head(sink);
    }
    while (i < n) {
      plan.token(i, sink);
      i++;
      e.generationTokensTotal += plan.choices;
      if (failAfter > 0 && i === failAfter) return true;
      if (i < n) {
        if (itl > 0) {
          job.timer = setTimeout(step, itl);
          return false;
        }
        if (batch.length >= 64) {
          flush();
          if (res.writableNeedDrain) {
            res.once('drain', step);
            return false;
          }
        }
      }
    }
    plan.tail(sink);
    return false;
  };
  const delay = plan.prefill.delayMs;
  if (delay > 0) job.timer = setTimeout(step, delay);
  else step();
}

// ---------------------------------------------------------------- engine info

function round(x: number, digits: number): number {
  const f = 10 ** digits;
  return Math.round(x * f) / f;
}

function loadReport(e: Engine) {
  const used = e.cache.size * e.blockSize;
  return {
    num_running_reqs: e.running,
    num_waiting_reqs: 0,
    num_total_reqs: e.running,
    num_waiting_uncached_tokens: 0,
    num_used_tokens: used,
    num_total_tokens: used,
    max_total_num_tokens: e.maxTotalNumTokens,
    max_running_requests: MAX_RUNNING_REQUESTS,
    token_usage: round(e.tokenUsage(), 4),
    gen_throughput: round(e.genThroughput(), 2),
    cache_hit_rate: round(e.cacheHitRate(), 4),
    utilization: round(e.running / MAX_RUNNING_REQUESTS, 4),
  };
}

function promLabel(v: string): string {
  return v.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n');
}

function metricsText(e: Engine): string {
  const label = `{model_name="${promLabel(e.model)}"}`;
  const l = loadReport(e);
  const rows: [string, 'gauge' | 'counter', string, number][] = [
    ['num_running_reqs', 'gauge', 'The number of running requests.', l.num_running_reqs],
    ['num_queue_reqs', 'gauge', 'The number of requests in the waiting queue.', 0],
    ['num_used_tokens', 'gauge', 'The number of used tokens.', l.num_used_tokens],
    [
      'max_total_num_tokens',
      'gauge',
      'Maximum total number of tokens in the KV cache.',
      l.max_total_num_tokens,
    ],
    ['token_usage', 'gauge', 'The token usage.', e.tokenUsage()],
    ['cache_hit_rate', 'gauge', 'The prefix cache hit rate.', e.cacheHitRate()],
    ['gen_throughput', 'gauge', 'The generation throughput (token/s).', l.gen_throughput],
    ['prompt_tokens_total', 'counter', 'Number of prefill tokens processed.', e.promptTokensTotal],
    ['generation_tokens_total', 'counter', 'Number of generation tokens processed.', e.generationTokensTotal],
    ['cached_tokens_total', 'counter', 'Number of cached prompt tokens.', e.cachedTokensTotal],
    ['num_requests_total', 'counter', 'Number of requests received.', e.requests],
  ];
  let out = '';
  for (const [name, type, help, value] of rows) {
    out += `# HELP sglang:${name} ${help}\n# TYPE sglang:${name} ${type}\nsglang:${name}${label} ${value}\n`;
  }
  return out;
}

function settingsBody(e: Engine): string {
  return JSON.stringify(e.settings);
}

const GETS = new Map<string, GetHandler>();
const health: GetHandler = (e, res) => {
  e.healthChecks++;
  if (e.settings.healthy) sendBody(e, res, 200, 'text/plain', '');
  else sendError(e, res, 503, 'mock worker is unhealthy', 'server_error');
};
const serverInfo: GetHandler = (e, res) =>
  sendJson(
    e,
    res,
    200,
    JSON.stringify({
      model_path: e.model,
      tokenizer_path: e.model,
      served_model_name: e.model,
      tp_size: 1,
      dp_size: 1,
      page_size: e.blockSize,
      max_total_num_tokens: e.maxTotalNumTokens,
      max_running_requests: MAX_RUNNING_REQUESTS,
      context_length: 32768,
      version: 'mock',
      internal_states: [
        {
          last_gen_throughput: round(e.genThroughput(), 2),
          num_running_reqs: e.running,
          token_usage: round(e.tokenUsage(), 4),
        },
      ],
    }),
  );
const modelInfo: GetHandler = (e, res) =>
  sendJson(
    e,
    res,
    200,
    JSON.stringify({
      model_path: e.model,
      tokenizer_path: e.model,
      is_generation: true,
      served_model_name: e.model,
      max_context_length: 32768,
    }),
  );
const flushCache = (e: Engine, res: ServerResponse) => {
  e.flush();
  sendBody(e, res, 200, 'text/plain', 'Cache flushed.\n');
};
GETS.set('/health', health);
GETS.set('/health_generate', health);
GETS.set('/v1/models', (e, res) =>
  sendJson(
    e,
    res,
    200,
    JSON.stringify({
      object: 'list',
      data: [
        {
          id: e.model,
          object: 'model',
          created: e.createdAt,
          owned_by: 'sglang',
          root: e.model,
          max_model_len: 32768,
        },
      ],
    }),
  ),
);
GETS.set('/get_server_info', serverInfo);
GETS.set('/server_info', serverInfo);
GETS.set('/get_model_info', modelInfo);
GETS.set('/model_info', modelInfo);
GETS.set('/v1/loads', (e, res) => {
  const load = loadReport(e);
  sendJson(
    e,
    res,
    200,
    JSON.stringify({
      timestamp: new Date().toISOString(),
      version: 'mock',
      dp_rank_count: 1,
      loads: [{ dp_rank: 0, ...load }],
      aggregate: load,
    }),
  );
});
GETS.set('/metrics', (e, res) =>
  sendBody(e, res, 200, 'text/plain; version=0.0.4; charset=utf-8', metricsText(e)),
);
GETS.set('/flush_cache', flushCache);
GETS.set('/mock/faults', (e, res) => sendJson(e, res, 200, settingsBody(e)));
GETS.set('/mock/stats', (e, res) =>
  sendJson(
    e,
    res,
    200,
    JSON.stringify({
      requests: e.requests,
      running: e.running,
      failures: e.failures,
      prompt_tokens_total: e.promptTokensTotal,
      cached_tokens_total: e.cachedTokensTotal,
      generation_tokens_total: e.generationTokensTotal,
      cached_blocks: e.cache.size,
      health_checks: e.healthChecks,
      unauthorized: e.unauthorized,
    }),
  ),
);
GETS.set('/mock/last-request', (e, res) => {
  const r = e.lastRequest;
  if (!r) {
    sendError(e, res, 404, 'no inference request received yet', 'invalid_request_error');
    return;
  }
  sendJson(
    e,
    res,
    200,
    JSON.stringify({
      method: r.method,
      path: r.path,
      headers: r.headers,
      raw_headers: r.rawHeaders,
      body_base64: r.body.toString('base64'),
    }),
  );
});

const FaultsSchema = z
  .object({
    fail_rate: z.number().min(0).max(1),
    fail_status: z.number().int().min(400).max(599),
    healthy: z.boolean(),
    ttft_ms: z.number().min(0),
    itl_ms: z.number().min(0),
    prefill_tokens_per_s: z.number().min(0),
    output_tokens: z.number().int().min(0),
    fail_mid_stream_after: z.number().int().min(0).nullable(),
    reset: z.boolean(),
  })
  .partial()
  .strict();

const POSTS = new Map<string, PostHandler>([
  ['/flush_cache', (e, res) => flushCache(e, res)],
  [
    '/mock/faults',
    (e, res, body) => {
      let raw: unknown = {};
      if (body.length > 0) {
        try {
          raw = JSON.parse(body.toString());
        } catch (err) {
          sendError(e, res, 400, `Invalid JSON body: ${errorMessage(err)}`, 'invalid_request_error');
          return;
        }
      }
      const parsed = FaultsSchema.safeParse(raw);
      if (!parsed.success) {
        sendError(e, res, 400, `invalid faults: ${z.prettifyError(parsed.error)}`, 'invalid_request_error');
        return;
      }
      const { reset, fail_mid_stream_after, ...rest } = parsed.data;
      if (reset) e.settings = { ...e.initial };
      Object.assign(e.settings, rest);
      if (fail_mid_stream_after !== undefined) e.settings.fail_mid_stream_after = fail_mid_stream_after ?? 0;
      sendJson(e, res, 200, settingsBody(e));
    },
  ],
]);

// ---------------------------------------------------------------- server

/** routes an engine started with `--api-key` still answers without it (as SGLang does) */
const OPEN_WITH_API_KEY = new Set(['/health', '/health_generate', '/metrics']);

function authorized(e: Engine, req: IncomingMessage, path: string): boolean {
  if (e.apiKey === undefined || OPEN_WITH_API_KEY.has(path) || path.startsWith('/mock/')) return true;
  const given = Buffer.from(req.headers.authorization ?? '');
  const wanted = Buffer.from(`Bearer ${e.apiKey}`);
  return given.length === wanted.length && timingSafeEqual(given, wanted);
}

function onRequest(e: Engine, req: IncomingMessage, res: ServerResponse): void {
  try {
    const url = req.url ?? '/';
    const q = url.indexOf('?');
    const path = q === -1 ? url : url.slice(0, q);
    const method = req.method;
    if (!authorized(e, req, path)) {
      req.resume();
      e.unauthorized++;
      sendError(e, res, 401, 'Unauthorized: missing or wrong API key', 'authentication_error');
      return;
    }
    if (method === 'POST') {
      const build = INFERENCE.get(path);
      if (build !== undefined) {
        inference(e, req, res, build);
        return;
      }
      const post = POSTS.get(path);
      if (post !== undefined) {
        readBody(e, req, res, (body) => post(e, res, body));
        return;
      }
    } else if (method === 'GET' || method === 'HEAD') {
      const get = GETS.get(path);
      if (get !== undefined) {
        req.resume();
        get(e, res);
        return;
      }
    }
    req.resume();
    if (INFERENCE.has(path) || POSTS.has(path) || GETS.has(path)) {
      const allow = [GETS.has(path) ? 'GET, HEAD' : '', INFERENCE.has(path) || POSTS.has(path) ? 'POST' : '']
        .filter(Boolean)
        .join(', ');
      res.setHeader('allow', allow);
      sendError(e, res, 405, `Method ${method} is not allowed on ${path}`, 'invalid_request_error');
      return;
    }
    sendError(e, res, 404, `No route for ${method} ${path}`, 'invalid_request_error');
  } catch (err) {
    internalError(e, res, err);
  }
}

function hostForUrl(host: string): string {
  if (host === '0.0.0.0' || host === '') return '127.0.0.1';
  if (host === '::') return '[::1]';
  return host.includes(':') ? `[${host}]` : host;
}

function listen(server: http.Server, port: number, host: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const onError = (err: Error) => reject(err);
    server.once('error', onError);
    server.listen(port, host, () => {
      server.off('error', onError);
      resolve((server.address() as AddressInfo).port);
    });
  });
}

function closeServer(server: http.Server): Promise<void> {
  return new Promise((resolve) => {
    if (!server.listening) {
      server.closeAllConnections();
      resolve();
      return;
    }
    server.close(() => resolve());
    server.closeAllConnections();
  });
}

/**
 * Start `opts.count` independent engines on ports opts.port.. (port 0: each on its own ephemeral
 * port). Resolves once all listen; if one cannot, the others are closed and the error is thrown.
 */
export async function startMockWorkers(opts: MockWorkerOptions): Promise<MockFleet> {
  const servers: http.Server[] = [];
  const workers: { port: number; url: string }[] = [];
  try {
    for (let i = 0; i < opts.count; i++) {
      const engine = new Engine(opts);
      const server = http.createServer((req, res) => onRequest(engine, req, res));
      server.on('clientError', (err: NodeJS.ErrnoException, socket) => {
        if (err.code === 'ECONNRESET' || !socket.writable) {
          socket.destroy();
          return;
        }
        socket.end('HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n\r\n');
      });
      servers.push(server);
      const port = await listen(server, opts.port === 0 ? 0 : opts.port + i, opts.host);
      const host = hostForUrl(opts.host);
      engine.label = `${opts.host.includes(':') ? `[${opts.host}]` : opts.host}:${port}`;
      workers.push({ port, url: `http://${host}:${port}` });
    }
  } catch (err) {
    await Promise.all(servers.map(closeServer));
    throw err;
  }
  let closing: Promise<void> | undefined;
  return {
    workers,
    close: () => (closing ??= Promise.all(servers.map(closeServer)).then(() => undefined)),
  };
}
