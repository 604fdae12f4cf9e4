/**
 * Assembles one gateway node: Replica → workers (pools, manager) → routing (policies, selection)
 * → HTTP app, plus the Prometheus listener and the optional probe-only listener. `close()` stops
 * everything it started, in reverse order.
 */
import http from 'node:http';
import os from 'node:os';
import { randomBytes } from 'node:crypto';
import type { FastifyInstance } from 'fastify';
import type { Config } from '../cli/config-types.js';
import { createLogger, type Logger } from '../observability/logger.js';
import { Metrics, SMG_DURATION_BUCKETS, startMetricsServer } from '../observability/metrics.js';
import { refreshEngineGauges, startRuntimeMetrics } from '../observability/runtime.js';
import { Tracing } from '../observability/tracing.js';
import { checkStoredWorkerSpec, parseWorkerSpec } from '../protocols/worker-spec.js';
import { CacheRecorder } from '../routing/cache-recorder.js';
import { PolicyRegistry } from '../routing/registry.js';
import type { PolicyName, RoutingContext } from '../routing/types.js';
import { packHlc } from '../state/hlc.js';
import { Replica } from '../state/replica.js';
import { WorkerBreakers } from '../workers/breakers.js';
import { WorkerManager } from '../workers/manager.js';
import { RetryBudget } from '../workers/retry.js';
import { Admission, loadPrioritySchedulerConfig, loadTenantRateLimitConfig } from './admission/index.js';
import { Auth } from './auth.js';
import { UpstreamPools } from '../workers/upstream.js';
import { buildApp } from './app.js';
import { inflightStarts, type InflightCounter } from './forward.js';
import type { Lifecycle } from './utility-routes.js';
import { WorkerSelection } from './worker-selection.js';
import { registerMeshMetrics } from '../../mesh/metrics.js';
import type { MeshRuntime } from '../../mesh/runtime.js';
import {
  openNodeState,
  persistCacheIndex,
  persistReplica,
  restoreCacheIndex,
  restoreRateSlots,
  type NodeState,
} from '../../store/persistence.js';
import { modelPolicyReader } from './policy-params.js';
import { resealWorkerKeys, watchWorkerKeys, workerKeySealer } from '../workers/worker-keys.js';

const LOAD_AWARE: ReadonlySet<string> = new Set<PolicyName>(['power_of_two', 'least_load']);

export interface Gateway {
  readonly app: FastifyInstance;
  readonly replica: Replica;
  /** the HA mesh, when started with --ha-mesh */
  readonly mesh?: MeshRuntime;
  readonly metrics: Metrics;
  readonly logger: Logger;
  /** http://host:port of the API listener */
  readonly url: string;
  /** http://host:port of the Prometheus listener, if started */
  readonly metricsUrl?: string;
  /**
   * Drains and stops: readiness turns 503 at once; after `settleMs` (default 0; SIGTERM uses
   * {@link settleMsFor}) the listener stops accepting and in-flight requests get the rest of the
   * grace period.
   */
  close(settleMs?: number): Promise<void>;
}

export interface GatewayOptions {
  logger?: Logger;
  nodeId?: string;
  /** start the Prometheus listener (default true) */
  prometheus?: boolean;
}

function listenAddress(server: http.Server): { host: string; port: number } {
  const a = server.address();
  if (a && typeof a === 'object') return { host: a.address, port: a.port };
  throw new Error('server is not listening');
}

function hostForUrl(host: string): string {
  if (host === '0.0.0.0' || host === '::') return '127.0.0.1';
  return host.includes(':') ? `[${host}]` : host;
}

/** SMG's settle time: min(grace / 2, 5 s) */
export function settleMsFor(cfg: Pick<Config, 'shutdownGracePeriodSecs'>): number {
  return Math.min((cfg.shutdownGracePeriodSecs * 1000) / 2, 5000);
}

/** how long a restarted node waits for the first probes of the workers it restored */
const RESTORED_PROBE_WAIT_MS = 3_000;

export async function startGateway(cfg: Config, opts: GatewayOptions = {}): Promise<Gateway> {
  const graceMs = cfg.shutdownGracePeriodSecs * 1000;
  const logger = opts.logger ?? createLogger({ level: cfg.logLevel, json: cfg.logJson, dir: cfg.logDir });
  // the data dir first: a bad, foreign or locked state file stops start-up before anything listens
  const state: NodeState | undefined =
    cfg.mesh.dataDir !== undefined
      ? openNodeState(cfg.mesh.dataDir, { nodeName: cfg.mesh.nodeName, logger })
      : undefined;
  const nodeId = state?.nodeId ?? opts.nodeId ?? `${os.hostname()}-${randomBytes(3).toString('hex')}`;
  const metrics = new Metrics(cfg.prometheusDurationBuckets ?? SMG_DURATION_BUCKETS);
  // worker api_keys are sealed in the registry with the cluster key (else a key of this node)
  let sealer;
  try {
    sealer = workerKeySealer({
      clusterKeys: cfg.mesh.clusterKeys,
      ...(state && { dataDir: cfg.mesh.dataDir }),
      logger,
    });
  } catch (err) {
    state?.store.close();
    throw err;
  }
  const replica = new Replica({
    nodeId,
    // specs from peers and from disk pass the same schema as the admin API's
    workerSpecCheck: checkStoredWorkerSpec,
    sealer,
    cacheBlocksPerWorker: Math.max(1, Math.floor(cfg.policyParams.maxTreeSize / cfg.prefixBlockChars)),
    ...(state && { registryDoc: state.doc, hlcHighWater: state.hlcHighWater }),
  });
  // every registry change is committed to the store before it can be gossiped
  const stopPersist = state ? persistReplica(state.store, replica) : undefined;
  resealWorkerKeys(replica, logger);
  const stopKeyWatch = watchWorkerKeys(replica, logger);
  // the prefix-cache index and this node's rate-limit slots come back before anything routes
  const cacheBlocks = state ? restoreCacheIndex(state.store, replica) : 0;
  const rateSlots = state ? restoreRateSlots(state.store, replica) : 0;
  const stopCachePersist = state ? persistCacheIndex(state.store, replica) : undefined;
  if (state)
    logger.info(
      {
        data_dir: cfg.mesh.dataDir,
        node_id: nodeId,
        incarnation: state.incarnation,
        workers: replica.registry.list().length,
        changes_replayed: state.restoredChanges,
        cache_blocks: cacheBlocks,
        rate_slots: rateSlots,
      },
      'state restored',
    );
  let mesh: MeshRuntime | undefined;
  const meshMetrics = registerMeshMetrics(metrics.registry, {
    runtime: () => mesh,
    store: () => state?.store,
  });
  const pools = new UpstreamPools({
    requestTimeoutMs: cfg.requestTimeoutSecs * 1000,
    ...(cfg.auth.apiKey !== undefined && { defaultApiKey: cfg.auth.apiKey }),
  });

  // routing decisions queue their prefix-cache deltas; they are applied in one batch on setImmediate
  const recorder = new CacheRecorder(
    (ev) => replica.apply(ev),
    () => packHlc(replica.tick()),
  );
  const ctx: RoutingContext = {
    load: replica.load,
    cache: replica.cache,
    blockChars: cfg.prefixBlockChars,
    recordCache: (model, workerId, hashes, fromDepth) => recorder.record(model, workerId, hashes, fromDepth),
    recordCacheDeferred: (model, workerId, hashes, fromDepth) =>
      recorder.record(model, workerId, hashes, fromDepth),
    random: Math.random,
    now: Date.now,
    branch: (policy, branch) => metrics.branch(policy, branch),
  };
  const policies = new PolicyRegistry({
    defaultPolicy: cfg.policy,
    params: cfg.policyParams,
    ctx,
    routingKeyOverride: cfg.routingKeyOverride,
    modelPolicy: modelPolicyReader(() => replica.doc.policies(), cfg.policyParams),
  });
  const selection = new WorkerSelection(replica, policies, cfg);
  // a worker spec a peer (or an older version, on disk) wrote that this node refuses is left
  // out; say so at start and whenever more are
  let invalidEntries = replica.doc.invalidEntries();
  if (invalidEntries > 0)
    logger.warn(
      { invalid_entries: invalidEntries },
      'registry entries left out: they fail validation on this node',
    );
  replica.onRegistryDiff(() => {
    const now = replica.doc.invalidEntries();
    if (now > invalidEntries)
      logger.warn({ invalid_entries: now }, 'registry entries left out: they fail validation on this node');
    invalidEntries = now;
  });
  const manager = new WorkerManager({
    replica,
    pools,
    health: cfg.health,
    logger,
    metrics,
    loadMonitorIntervalSecs: cfg.loadMonitorIntervalSecs,
    wantsEngineLoads: (spec) => LOAD_AWARE.has(spec.labels.policy ?? cfg.policy),
  });
  // workers restored from the data dir get probes and load polls like fresh ones; the node listens
  // once their first probes are answered (bounded), so its first requests are not refused
  const restoredWorkers = replica.registry.list().length;
  manager.adoptExisting();
  if (restoredWorkers > 0) await manager.firstProbes(RESTORED_PROBE_WAIT_MS);
  const lifecycle: Lifecycle = { draining: false };
  const inflight: InflightCounter = { proxied: 0, head: undefined };
  // bad keys or admission files stop start-up here, before anything listens
  const auth = new Auth(cfg.auth, { logger, metrics });
  const admission = Admission.fromConfig(cfg.admission, {
    metrics,
    logger,
    replica,
    trustTenantHeader: cfg.auth.trustTenantHeader,
    // `/mesh/rate-limit`: a cluster-wide request rate, enforced on every peer of the mesh
    globalRateLimit: cfg.mesh.enabled,
    ...(cfg.admission.tenantRateLimit &&
      cfg.admission.tenantRateLimitConfigPath !== undefined && {
        tenantRules: loadTenantRateLimitConfig(cfg.admission.tenantRateLimitConfigPath),
      }),
    ...(cfg.admission.priorityConfigPath !== undefined && {
      priorityFile: loadPrioritySchedulerConfig(cfg.admission.priorityConfigPath),
    }),
  });
  const tracing = Tracing.create(cfg.tracing, { logger });
  const breakers = new WorkerBreakers(cfg.circuitBreaker, replica, metrics, logger);
  const budget = new RetryBudget(
    cfg.retry.budgetRatio,
    cfg.retry.budgetWindowSecs,
    cfg.retry.budgetMinPerSec,
  );
  const app = buildApp({
    cfg,
    logger,
    metrics,
    replica,
    pools,
    manager,
    selection,
    lifecycle,
    inflight,
    auth,
    admission,
    tracing,
    breakers,
    budget,
    meshDeps: {
      replica,
      policies,
      mesh: () => mesh,
      storeHealthy: () => (state ? state.store.lastError() === undefined : true),
    },
  });
  const runtime = startRuntimeMetrics(metrics, {
    inflightStartTimes: () => inflightStarts(inflight),
  });

  metrics.beforeScrape = () => {
    metrics.workerPoolSize.reset();
    for (const w of replica.registry.list()) {
      const models = w.models.length ? w.models : ['*'];
      for (const model of models) {
        metrics.workerPoolSize.inc({ worker_type: w.spec.worker_type, connection_mode: 'http', model });
      }
    }
    metrics.workerRequestsActive.reset();
    metrics.workerHealth.reset();
    for (const w of replica.registry.list()) {
      metrics.workerRequestsActive.set({ worker: w.url }, replica.load.localInflight(w.id));
      metrics.workerHealth.set({ worker: w.url }, w.routable ? 1 : 0);
    }
    metrics.workerConnections.set({ worker_type: 'regular', connection_mode: 'http' }, pools.connections());
    metrics.manualCacheEntries.set(policies.manualEntries());
    metrics.registryInvalidEntries.set(replica.doc.invalidEntries());
    refreshEngineGauges(metrics, replica);
    admission?.refreshGauges();
    breakers.refreshGauges();
  };

  const maintenance = setInterval(() => policies.maintain(), cfg.policyParams.evictionIntervalSecs * 1000);
  maintenance.unref();

  // one registry write for the whole list (restored or repeated URLs are skipped)
  manager.registerAll(
    cfg.workerUrls.map((raw) => {
      const parsed = parseWorkerSpec({ url: raw });
      if ('error' in parsed) throw new Error(`--worker-urls: ${parsed.error}`);
      return parsed.spec;
    }),
  );

  const closers: (() => Promise<void>)[] = [];
  let metricsUrl: string | undefined;
  try {
    await app.listen({ host: cfg.host, port: cfg.port });
    closers.push(() => closeApp(app, inflight, Math.max(0, graceMs - settleMsFor(cfg))));
    if (opts.prometheus !== false) {
      const ms = await startMetricsServer(metrics, cfg.prometheusHost, cfg.prometheusPort, logger);
      const a = listenAddress(ms);
      metricsUrl = `http://${hostForUrl(a.host)}:${a.port}`;
      closers.push(() => new Promise<void>((r) => ms.close(() => r())));
    }
    if (cfg.healthCheckPort !== undefined) {
      const probe = await startProbeServer(app, cfg.host, cfg.healthCheckPort);
      closers.push(() => new Promise<void>((r) => probe.close(() => r())));
    }
    // the mesh joins after the node serves: it routes from its restored state meanwhile
    if (cfg.mesh.enabled) {
      // libp2p loads only when the mesh is on
      const { MeshRuntime } = await import('../../mesh/runtime.js');
      const { generateLibp2pKey } = await import('../../mesh/gossip/node.js');
      let key = state?.libp2pKey;
      if (!key) {
        key = await generateLibp2pKey();
        state?.store.setLibp2pKey(key);
        state?.store.flush();
      }
      mesh = await MeshRuntime.start({
        cfg: cfg.mesh,
        replica,
        logger,
        libp2pKey: key,
        incarnation: state?.incarnation ?? 0,
        ...(state && { store: state.store }),
      });
      meshMetrics.attach(mesh);
      // health probing is shared from now on, and failures seen here become suspect hints
      const soft = mesh.soft;
      manager.setProbeDuty(soft);
      breakers.onFailure = (id) => soft.suspect(id);
    }
  } catch (err) {
    await mesh?.leave().catch(() => undefined);
    stopCachePersist?.();
    stopKeyWatch();
    stopPersist?.();
    state?.store.close();
    clearInterval(maintenance);
    runtime.stop();
    breakers.close();
    admission?.close();
    await tracing?.shutdown().catch(() => undefined);
    await manager.close();
    for (const c of closers.reverse()) await c().catch(() => undefined);
    await pools.closeAll();
    throw err;
  }
  const a = listenAddress(app.server);
  const url = `http://${hostForUrl(a.host)}:${a.port}`;
  logger.info(
    { url, metrics: metricsUrl, policy: cfg.policy, workers: cfg.workerUrls.length },
    'smg gateway listening',
  );

  let closing: Promise<void> | undefined;
  return {
    app,
    replica,
    ...(mesh && { mesh }),
    metrics,
    logger,
    url,
    metricsUrl,
    close(settleMs = 0) {
      closing ??= (async () => {
        lifecycle.draining = true;
        // peers learn at once that this node is leaving (state `left`, not `dead`)
        const left = mesh?.leave().catch((err: unknown) => {
          logger.warn({ err: (err as Error).message }, 'mesh leave failed');
        });
        // SMG §5.7: readiness answers 503 `draining` at once, but the listener keeps accepting for
        // the settle time so load balancers notice before connections are refused
        if (settleMs > 0) {
          logger.info({ settle_ms: settleMs, inflight: inflight.proxied }, 'draining: readiness is 503');
          await new Promise((r) => setTimeout(r, settleMs));
        }
        clearInterval(maintenance);
        runtime.stop();
        await manager.close();
        logger.debug('closing listeners');
        for (const c of closers.reverse()) await c().catch(() => undefined);
        breakers.close();
        admission?.close();
        logger.debug('closing upstream pools');
        await pools.closeAll();
        await tracing?.shutdown().catch(() => undefined);
        await left;
        stopCachePersist?.();
        stopKeyWatch();
        stopPersist?.();
        state?.store.close();
        logger.debug('gateway closed');
      })();
      return closing;
    },
  };
}

/**
 * Stops accepting, lets proxied requests finish (up to `graceMs`), then closes every connection
 * that is left: idle keep-alive sockets and any a client abandoned without closing.
 */
async function closeApp(app: FastifyInstance, inflight: InflightCounter, graceMs: number): Promise<void> {
  const closed = app.close();
  const deadline = Date.now() + graceMs;
  let done = false;
  void closed.then(() => (done = true));
  while (!done && inflight.proxied > 0 && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 50));
  }
  if (!done) app.server.closeAllConnections();
  await closed;
}

/**
 * `--health-check-port`: /liveness, /readiness and /health on a listener with no middleware, so
 * orchestrator probes are answered even when the main listener is saturated.
 */
async function startProbeServer(app: FastifyInstance, host: string, port: number): Promise<http.Server> {
  const server = http.createServer((req, res) => {
    const path = (req.url ?? '').split('?')[0];
    if (req.method !== 'GET' || !['/health', '/liveness', '/readiness'].includes(path)) {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found\n');
      return;
    }
    app.inject({ method: 'GET', url: path }).then(
      (r) =>
        res
          .writeHead(r.statusCode, { 'content-type': String(r.headers['content-type'] ?? 'text/plain') })
          .end(r.body),
      () => res.writeHead(500).end(),
    );
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => resolve());
  });
  return server;
}
