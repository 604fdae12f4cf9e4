/**
 * `GET /engine_metrics` (inventory §2.4): every registered worker's own Prometheus text, fetched
 * concurrently and concatenated, each section headed by a `# worker: <url>` comment. A worker that
 * fails (refused, timed out, non-200, gRPC) contributes `# worker: <url> error: <reason>` instead
 * of failing the answer; no registered worker at all is SMG's 503 `no_available_workers`.
 *
 * As in SMG the sections are concatenated as they are, so families the workers share repeat their
 * `# HELP`/`# TYPE` lines: this is a debugging view, scrape the workers themselves for storage.
 *
 * Owns: the route. Never: caches worker answers, or lets one slow worker hold the others back
 * past the timeout.
 */
import type { FastifyInstance } from 'fastify';
import { request, type Dispatcher } from 'undici';
import { errors } from '../protocols/errors.js';
import type { WorkerView } from '../state/registry.js';
import type { Replica } from '../state/replica.js';
import { splitWorkerUrl, type UpstreamPools } from '../workers/upstream.js';

export interface EngineMetricsDeps {
  replica: Replica;
  /** the workers' keep-alive pools; without them each fetch uses undici's global dispatcher */
  pools?: UpstreamPools;
  /** per-worker timeout for the whole answer, ms (default 5000) */
  timeoutMs?: number;
  /** sent as the bearer token to workers that have no `api_key` of their own */
  workerApiKey?: string;
  /** bytes kept per worker (default 8 MiB); a longer answer is cut at a line end, with a comment */
  maxBytesPerWorker?: number;
}

export const ENGINE_METRICS_TIMEOUT_MS = 5_000;
const MAX_BYTES_PER_WORKER = 8 * 1024 * 1024;

/** an error reason fit for one comment line */
function reasonOf(err: unknown): string {
  if (err instanceof Error) {
    const code = (err as NodeJS.ErrnoException).code;
    const r = code && code !== 'ABORT_ERR' ? code : err.name === 'AbortError' ? 'TimeoutError' : err.message;
    return r.replace(/[\r\n]+/g, ' ');
  }
  return String(err).replace(/[\r\n]+/g, ' ');
}

async function scrape(w: WorkerView, deps: EngineMetricsDeps): Promise<string> {
  if (w.spec.connection_mode === 'grpc') return `# worker: ${w.url} error: gRPC worker, no HTTP /metrics\n`;
  const timeout = deps.timeoutMs ?? ENGINE_METRICS_TIMEOUT_MS;
  const limit = deps.maxBytesPerWorker ?? MAX_BYTES_PER_WORKER;
  const key = w.spec.api_key ?? deps.workerApiKey;
  const signal = AbortSignal.timeout(timeout);
  let res: Dispatcher.ResponseData | undefined;
  try {
    const { origin, basePath } = splitWorkerUrl(w.url);
    res = await request(`${origin}${basePath}/metrics`, {
      method: 'GET',
      headers: key ? { authorization: `Bearer ${key}`, accept: 'text/plain' } : { accept: 'text/plain' },
      signal,
      headersTimeout: timeout,
      bodyTimeout: timeout,
      ...(deps.pools && { dispatcher: deps.pools.get(origin) }),
    });
    if (res.statusCode !== 200) {
      await res.body.dump().catch(() => undefined);
      return `# worker: ${w.url} error: HTTP ${res.statusCode}\n`;
    }
    const chunks: Buffer[] = [];
    let size = 0;
    let cut = false;
    for await (const chunk of res.body) {
      const b = chunk as Buffer;
      if (size + b.length > limit) {
        chunks.push(b.subarray(0, limit - size));
        cut = true;
        break;
      }
      chunks.push(b);
      size += b.length;
    }
    if (cut) res.body.destroy();
    let text = Buffer.concat(chunks).toString('utf8');
    if (cut) {
      // drop the partial last line, say where the answer was cut
      text = `${text.slice(0, text.lastIndexOf('\n') + 1)}# worker: ${w.url} truncated at ${limit} bytes\n`;
    } else if (text.length > 0 && !text.endsWith('\n')) text += '\n';
    return `# worker: ${w.url}\n${text}`;
  } catch (err) {
    res?.body.destroy();
    return `# worker: ${w.url} error: ${signal.aborted ? 'TimeoutError' : reasonOf(err)}\n`;
  }
}

export function registerEngineMetricsRoute(app: FastifyInstance, deps: EngineMetricsDeps): void {
  app.get('/engine_metrics', async (_request, reply) => {
    const workers = deps.replica.registry.list();
    if (workers.length === 0) throw errors.noAvailableWorkers('');
    const sections = await Promise.all(workers.map((w) => scrape(w, deps)));
    return reply
      .code(200)
      .header('content-type', 'text/plain; version=0.0.4; charset=utf-8')
      .send(sections.join(''));
  });
}
