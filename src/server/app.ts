/**
 * The fastify application: global hooks (request id, metrics, CORS), the body parser that keeps
 * the original bytes, and the route groups. Built from already-constructed parts so tests can
 * assemble it around any Replica.
 */
import http from 'node:http';
import Fastify, { LogController, type FastifyInstance } from 'fastify';
import type { Logger } from 'pino';
import type { Config } from '../cli/config-types.js';
import type { Metrics } from '../observability/metrics.js';
import { installTracingHooks, type Tracing } from '../observability/tracing.js';
import { errors, type SmgError } from '../protocols/errors.js';
import type { Replica } from '../state/replica.js';
import type { WorkerManager } from '../workers/manager.js';
import type { WorkerBreakers } from '../workers/breakers.js';
import type { RetryBudget } from '../workers/retry.js';
import type { UpstreamPools } from '../workers/upstream.js';
import type { Admission } from './admission/index.js';
import { controlPlaneHook, isControlPlaneRoute, type Auth } from './auth.js';
import { registerEngineMetricsRoute } from './engine-metrics.js';
import { ADMIN_BODY_LIMIT_BYTES, registerAdminRoutes } from './admin-routes.js';
import { registerMeshRoutes, type MeshRouteDeps } from './mesh-routes.js';
import { makeErrorHandler } from './error-handler.js';
import { LargeBodyReclaimer } from './large-body-gc.js';
import { lingerOnClose } from './lingering-close.js';
import { readBody, RequestBytesBudget, type BodyFailure } from './body-reader.js';
import { createInferenceFastPath, recordHttpOutcome, type InflightCounter } from './proxy.js';
import { makeRequestIdGenerator } from './request-id.js';
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
  auth: Auth;
  admission: Admission | undefined;
  tracing: Tracing | undefined;
  breakers: WorkerBreakers;
  budget: RetryBudget;
  meshDeps: MeshRouteDeps;
}

/** CORS (`--cors-allowed-origins`; empty = any origin) */
function makeCors(origins: string[]) {
  const allowAny = origins.length === 0;
  const allowed = new Set(origins);
  return (origin: string | undefined): Record<string, string> | undefined => {
    if (!origin || !(allowAny || allowed.has(origin))) return undefined;
    return allowAny
      ? { 'access-control-allow-origin': '*' }
      : { 'access-control-allow-origin': origin, vary: 'Origin' };
  };
}

/**
 * The listening server's own timeouts (fastify's options do not reach a server made by
 * `serverFactory`): idle keep-alive connections, headers, and the whole request as a last bound
 * for any route. The request bound covers the longest legitimate wait — headers, admission
 * queue (the body is not read meanwhile), body — so it never cuts an admitted request short.
 */
export function serverTimeouts(
  cfg: Pick<Config, 'keepAliveTimeoutSecs' | 'headersTimeoutSecs' | 'bodyReadTimeoutSecs'>,
  maxQueueWaitMs: number,
): { keepAliveTimeout: number; headersTimeout: number; requestTimeout: number } {
  const headersTimeout = cfg.headersTimeoutSecs * 1000;
  return {
    keepAliveTimeout: cfg.keepAliveTimeoutSecs * 1000,
    headersTimeout,
    requestTimeout: headersTimeout + maxQueueWaitMs + cfg.bodyReadTimeoutSecs * 1000 + 5_000,
  };
}

export function buildApp(deps: AppDeps): FastifyInstance {
  const { cfg, metrics } = deps;
  const genReqId = makeRequestIdGenerator(cfg.requestIdHeaders);
  const corsHeaders = makeCors(cfg.corsAllowedOrigins);
  // one budget for every request body this process holds, inference or admin; a body larger than
  // the whole budget could never be read: it is simply too large
  const reclaimer = new LargeBodyReclaimer();
  const bodyBudget = new RequestBytesBudget(cfg.maxBufferedRequestBytes, (n) => reclaimer.bodyReleased(n));
  const bodyLimit = Math.min(cfg.maxPayloadSize, cfg.maxBufferedRequestBytes);
  const bodyLimits = { limit: bodyLimit, timeoutMs: cfg.bodyReadTimeoutSecs * 1000, budget: bodyBudget };
  const adminLimits = { ...bodyLimits, limit: Math.min(ADMIN_BODY_LIMIT_BYTES, bodyLimit) };
  const fastPath = createInferenceFastPath({
    inflight: deps.inflight,
    replica: deps.replica,
    selection: deps.selection,
    pools: deps.pools,
    metrics,
    logger: deps.logger,
    bodyLimit,
    bodyTimeoutMs: bodyLimits.timeoutMs,
    bodyBudget,
    genReqId,
    corsHeaders,
    auth: deps.auth,
    admission: deps.admission,
    tracing: deps.tracing,
    lifecycle: deps.lifecycle,
    breakers: deps.breakers,
    retry: cfg.retry,
    budget: deps.budget,
    upstreamHeaders: {
      ...(cfg.auth.apiKey !== undefined && { workerApiKey: cfg.auth.apiKey }),
      stripClientAuth: !deps.auth.dataPlaneOpen,
    },
    random: Math.random,
  });
  const timeouts = serverTimeouts(cfg, deps.admission?.maxQueueWaitMs() ?? 0);
  // fastify's body parser releases a body's bytes when its response ends
  const responseOf = new WeakMap<http.IncomingMessage, http.ServerResponse>();
  const app = Fastify({
    // inference routes are served by the fast path; fastify serves everything else
    serverFactory: (handler) => {
      const serve = (req: http.IncomingMessage, res: http.ServerResponse) => {
        if (fastPath(req, res)) return;
        responseOf.set(req, res);
        handler(req, res);
      };
      const server = http.createServer(
        {
          headersTimeout: timeouts.headersTimeout,
          requestTimeout: timeouts.requestTimeout,
          // how often headers and request timeouts are checked (Node's default is 30 s)
          connectionsCheckingInterval: Math.min(1000, timeouts.headersTimeout),
        },
        serve,
      );
      server.keepAliveTimeout = timeouts.keepAliveTimeout;
      // `Expect: 100-continue`: the fast path sends 100 once the request is admitted, so a
      // refused or queued client has not sent its body; other routes continue at once
      server.on('checkContinue', (req: http.IncomingMessage, res: http.ServerResponse) => {
        if (fastPath(req, res)) return;
        res.writeContinue();
        responseOf.set(req, res);
        handler(req, res);
      });
      return server;
    },
    loggerInstance: deps.logger,
    // the onResponse hook writes SMG's one line per request instead
    logController: new LogController({ disableRequestLogging: true, requestIdLogLabel: 'request_id' }),
    // fastify serves only control-plane and utility routes (inference takes the fast path)
    bodyLimit: adminLimits.limit,
    genReqId,
    return503OnClosing: true,
    forceCloseConnections: false,
    routerOptions: { ignoreTrailingSlash: true },
  }) as unknown as FastifyInstance;

  // keep every body as the original bytes, read under the same size, time and memory bounds as
  // the fast path's
  const bodyFailures: Record<BodyFailure, () => SmgError> = {
    too_large: () => errors.payloadTooLarge(adminLimits.limit, { connection: 'close' }),
    timeout: () => errors.bodyReadTimeout(cfg.bodyReadTimeoutSecs, { connection: 'close' }),
    over_budget: () => errors.requestBufferFull(bodyBudget.cap, { connection: 'close' }),
    aborted: () => errors.clientClosed(),
  };
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('*', (request, _payload, done) => {
    const read = readBody(request.raw, adminLimits, (failure, raw) => {
      if (failure) {
        if (failure !== 'aborted') lingerOnClose(request.raw);
        done(bodyFailures[failure](), undefined);
      } else done(null, raw?.bytes());
    });
    const res = responseOf.get(request.raw);
    if (res) res.once('close', read.release);
    else read.release();
  });

  app.setErrorHandler(makeErrorHandler(adminLimits.limit));
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

  app.addHook('onRequest', async (req, reply) => {
    reply.header('x-request-id', req.id);
    const cors = corsHeaders(req.headers.origin);
    if (!cors) return;
    reply.headers(cors);
    if (req.method === 'OPTIONS') {
      reply
        .header('access-control-allow-methods', 'GET, POST, PUT, PATCH, DELETE, OPTIONS')
        .header('access-control-allow-headers', req.headers['access-control-request-headers'] ?? '*')
        .header('access-control-max-age', '600')
        .code(204)
        .send();
    }
  });

  app.addHook('onRequest', controlPlaneHook(deps.auth, isControlPlaneRoute));
  if (deps.tracing) installTracingHooks(app, deps.tracing);

  app.addHook('onResponse', async (req, reply) => {
    const code = reply.getHeader('x-smg-error-code');
    recordHttpOutcome(metrics, deps.logger, {
      method: req.method,
      route: req.routeOptions.url ?? 'other',
      url: req.url,
      status: reply.statusCode,
      errorCode: typeof code === 'string' ? code : '',
      elapsedMs: reply.elapsedTime,
      requestId: req.id,
    });
  });

  registerUtilityRoutes(app, {
    replica: deps.replica,
    pools: deps.pools,
    modelAliases: cfg.modelAliases,
    lifecycle: deps.lifecycle,
  });
  registerAdminRoutes(app, { replica: deps.replica, manager: deps.manager, pools: deps.pools });
  registerMeshRoutes(app, deps.meshDeps);
  registerEngineMetricsRoute(app, {
    replica: deps.replica,
    pools: deps.pools,
    ...(cfg.auth.apiKey !== undefined && { workerApiKey: cfg.auth.apiKey }),
  });
  return app;
}
