/**
 * The fastify application: global hooks (request id, metrics, CORS), the body parser that keeps
 * the original bytes, and the route groups. Built from already-constructed parts so tests can
 * assemble it around any Replica.
 */
import Fastify, { LogController, type FastifyInstance } from 'fastify';
import type { Logger } from 'pino';
import type { Config } from '../cli/config-types.js';
import type { Metrics } from '../observability/metrics.js';
import { errors } from '../protocols/errors.js';
import type { Replica } from '../state/replica.js';
import type { WorkerManager } from '../workers/manager.js';
import type { UpstreamPools } from '../workers/upstream.js';
import { registerAdminRoutes } from './admin-routes.js';
import { makeErrorHandler } from './error-handler.js';
import { makeInferenceHandler, type InflightCounter } from './proxy.js';
import { ENDPOINT_BY_PATH, makeRequestIdGenerator } from './request-id.js';
import { registerUtilityRoutes, type Lifecycle } from './utility-routes.js';
import type { WorkerSelection } from './worker-selection.js';

export interface AppDeps {
  cfg: Config;
  logger: Logger;
  metrics: Metrics;
  replica: Replica;
  pools: UpstreamPools;
  manager: WorkerManager;
  selection: WorkerSelection;
  lifecycle: Lifecycle;
  inflight: InflightCounter;
}

export function buildApp(deps: AppDeps): FastifyInstance {
  const { cfg, metrics } = deps;
  const app = Fastify({
    loggerInstance: deps.logger,
    // the onResponse hook writes SMG's one line per request instead
    logController: new LogController({ disableRequestLogging: true, requestIdLogLabel: 'request_id' }),
    bodyLimit: cfg.maxPayloadSize,
    genReqId: makeRequestIdGenerator(cfg.requestIdHeaders),
    return503OnClosing: true,
    forceCloseConnections: false,
    keepAliveTimeout: 75_000,
    routerOptions: { ignoreTrailingSlash: true },
  }) as unknown as FastifyInstance;

  // keep every body as the original bytes: inference bodies are forwarded untouched
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('*', { parseAs: 'buffer' }, (_req, body, done) => done(null, body));

  app.setErrorHandler(makeErrorHandler(cfg.maxPayloadSize));
  app.setNotFoundHandler((req, reply) => {
    const e = errors.notFound(`${req.method} ${req.url.split('?')[0]}`);
    reply
      .code(404)
      .header('x-smg-error-code', e.code)
      .send({
        error: { type: 'Not Found', code: e.code, message: e.message, param: null },
      });
  });

  app.server.on('connection', (socket) => {
    metrics.httpConnections.inc();
    socket.once('close', () => metrics.httpConnections.dec());
  });

  const allowAny = cfg.corsAllowedOrigins.length === 0;
  const allowed = new Set(cfg.corsAllowedOrigins);
  app.addHook('onRequest', async (req, reply) => {
    reply.header('x-request-id', req.id);
    const origin = req.headers.origin;
    if (origin && (allowAny || allowed.has(origin))) {
      reply.header('access-control-allow-origin', allowAny ? '*' : origin);
      if (!allowAny) reply.header('vary', 'Origin');
      if (req.method === 'OPTIONS') {
        reply
          .header('access-control-allow-methods', 'GET, POST, PUT, PATCH, DELETE, OPTIONS')
          .header('access-control-allow-headers', req.headers['access-control-request-headers'] ?? '*')
          .header('access-control-max-age', '600')
          .code(204)
          .send();
      }
    }
  });

  app.addHook('onResponse', async (req, reply) => {
    const path = req.routeOptions.url ?? 'other';
    const method = req.method;
    metrics.inc(metrics.httpRequests, { method, path });
    metrics.observe(metrics.httpDuration, { method, path }, reply.elapsedTime / 1000);
    const code = reply.getHeader('x-smg-error-code');
    metrics.inc(metrics.httpResponses, {
      path,
      status_code: String(reply.statusCode),
      error_code: typeof code === 'string' ? code : '',
    });
    const level = reply.statusCode >= 500 ? 'error' : reply.statusCode >= 400 ? 'warn' : 'info';
    req.log[level](
      {
        method,
        path: req.url,
        status: reply.statusCode,
        latency_ms: Math.round(reply.elapsedTime * 100) / 100,
      },
      'request completed',
    );
  });

  const proxyDeps = {
    inflight: deps.inflight,
    replica: deps.replica,
    selection: deps.selection,
    pools: deps.pools,
    metrics,
  };
  for (const [path, endpoint] of Object.entries(ENDPOINT_BY_PATH)) {
    app.post(path, makeInferenceHandler(proxyDeps, endpoint));
  }
  registerUtilityRoutes(app, {
    replica: deps.replica,
    pools: deps.pools,
    modelAliases: cfg.modelAliases,
    lifecycle: deps.lifecycle,
  });
  registerAdminRoutes(app, { replica: deps.replica, manager: deps.manager, pools: deps.pools });
  return app;
}
