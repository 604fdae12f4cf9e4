/**
 * The one Prometheus registry of the gateway, with SMG's metric names and labels (inventory §6.1)
 * for what this version implements. Hot-path metrics cache their labelled children so a request
 * costs a few map lookups, not label hashing.
 */
import http from 'node:http';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

/** SMG's 29 buckets for every *_duration_seconds, ttft and tpot histogram */
export const SMG_DURATION_BUCKETS = [
  0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 30, 45, 60, 90, 120, 180, 240, 300, 480,
  900, 1200, 1800, 2700, 3600, 5400, 7200,
];

export class Metrics {
  readonly registry = new Registry();

  readonly httpRequests: Counter<'method' | 'path'>;
  readonly httpDuration: Histogram<'method' | 'path'>;
  readonly httpResponses: Counter<'path' | 'status_code' | 'error_code'>;
  readonly httpConnections: Gauge;

  readonly routerRequests: Counter<
    'router_type' | 'backend_type' | 'connection_mode' | 'model' | 'endpoint' | 'streaming'
  >;
  readonly routerDuration: Histogram<
    'router_type' | 'backend_type' | 'connection_mode' | 'model' | 'endpoint'
  >;
  readonly routerErrors: Counter<
    'router_type' | 'backend_type' | 'connection_mode' | 'model' | 'endpoint' | 'error_type'
  >;
  readonly routerUpstream: Counter<'router_type' | 'status_code' | 'error_code'>;
  readonly routerStage: Histogram<'router_type' | 'stage'>;

  readonly workerPoolSize: Gauge<'worker_type' | 'connection_mode' | 'model'>;
  readonly workerConnections: Gauge<'worker_type' | 'connection_mode'>;
  readonly workerRequestsActive: Gauge<'worker'>;
  readonly workerRoutingKeys: Gauge<'worker'>;
  readonly workerHealth: Gauge<'worker'>;
  readonly workerHealthChecks: Counter<'worker_type' | 'result'>;
  readonly workerSelection: Counter<'worker_type' | 'connection_mode' | 'model' | 'policy'>;
  readonly workerErrors: Counter<'worker_type' | 'connection_mode' | 'error_type'>;

  readonly manualBranch: Counter<'branch'>;
  readonly consistentHashingBranch: Counter<'branch'>;
  readonly prefixHashBranch: Counter<'branch'>;
  readonly manualCacheEntries: Gauge;
  readonly registryInvalidEntries: Gauge;

  // issue 3: streamed usage, reliability, admission, runtime
  readonly httpInflightAge: Gauge<'gt' | 'le'>;
  readonly httpRateLimit: Counter<'result'>;
  readonly routerTtft: Histogram<'router_type' | 'backend_type' | 'model' | 'endpoint'>;
  readonly routerTpot: Histogram<'router_type' | 'backend_type' | 'model' | 'endpoint'>;
  readonly routerGeneration: Histogram<'router_type' | 'backend_type' | 'model' | 'endpoint'>;
  readonly routerTokens: Counter<'router_type' | 'backend_type' | 'model' | 'endpoint' | 'token_type'>;
  readonly cbState: Gauge<'worker'>;
  readonly cbConsecutiveFailures: Gauge<'worker'>;
  readonly cbConsecutiveSuccesses: Gauge<'worker'>;
  readonly cbTransitions: Counter<'worker' | 'from' | 'to'>;
  readonly cbOutcomes: Counter<'worker' | 'outcome'>;
  readonly retries: Counter<'worker_type' | 'endpoint'>;
  readonly retriesExhausted: Counter<'worker_type' | 'endpoint'>;
  readonly retryBackoff: Histogram<'attempt'>;
  readonly retryBudgetRejected: Counter<'endpoint'>;
  readonly engineRunning: Gauge<'worker' | 'model' | 'dp_rank'>;
  readonly engineWaiting: Gauge<'worker' | 'model' | 'dp_rank'>;
  readonly engineTokenUsage: Gauge<'worker' | 'model' | 'dp_rank'>;
  readonly engineGenThroughput: Gauge<'worker' | 'model' | 'dp_rank'>;
  readonly engineCacheHitRate: Gauge<'worker' | 'model' | 'dp_rank'>;
  readonly schedulerAdmit: Counter<'class' | 'outcome'>;
  readonly schedulerPreemption: Counter<'victim_class' | 'by_class'>;
  readonly schedulerClamp: Counter<'tenant' | 'requested_class' | 'effective_class'>;
  readonly schedulerUnknownPriority: Counter<'tenant'>;
  readonly schedulerStarvationPromotion: Counter<'class'>;
  readonly schedulerQueueWait: Histogram<'class'>;
  readonly schedulerInflight: Gauge<'class'>;
  readonly schedulerQueueDepth: Gauge<'class'>;
  readonly schedulerQueueSizeLimit: Gauge<'class'>;
  readonly schedulerCapacityPressure: Gauge<'class'>;
  readonly schedulerUtilization: Gauge;
  readonly tenantRateLimit: Counter<'result' | 'scope'>;
  readonly authResults: Counter<'plane' | 'result'>;
  readonly nodeEventLoopDelay: Histogram;
  readonly nodeEventLoopUtilization: Gauge;
  readonly nodeEventLoopStalls: Counter;
  readonly nodeHeapUsed: Gauge;
  readonly nodeHeapTotal: Gauge;
  readonly nodeActiveHandles: Gauge;

  private readonly cache = new Map<string, { inc(v?: number): void }>();
  /** refreshes gauges that are cheaper to compute at scrape time than to keep current */
  beforeScrape: () => void = () => undefined;

  constructor(durationBuckets: number[] = SMG_DURATION_BUCKETS) {
    const registers = [this.registry];
    const routerLabels = ['router_type', 'backend_type', 'connection_mode', 'model', 'endpoint'] as const;
    this.httpRequests = new Counter({
      name: 'smg_http_requests_total',
      help: 'HTTP requests received, by method and route template',
      labelNames: ['method', 'path'],
      registers,
    });
    this.httpDuration = new Histogram({
      name: 'smg_http_request_duration_seconds',
      help: 'HTTP request duration from receipt to the end of the response',
      labelNames: ['method', 'path'],
      buckets: durationBuckets,
      registers,
    });
    this.httpResponses = new Counter({
      name: 'smg_http_responses_total',
      help: 'HTTP responses sent, by route, status and SMG error code',
      labelNames: ['path', 'status_code', 'error_code'],
      registers,
    });
    this.httpConnections = new Gauge({
      name: 'smg_http_connections_active',
      help: 'Open client connections',
      registers,
    });
    this.routerRequests = new Counter({
      name: 'smg_router_requests_total',
      help: 'Requests routed to workers',
      labelNames: [...routerLabels, 'streaming'],
      registers,
    });
    this.routerDuration = new Histogram({
      name: 'smg_router_request_duration_seconds',
      help: 'Routed request duration until the upstream response ends',
      labelNames: [...routerLabels],
      buckets: durationBuckets,
      registers,
    });
    this.routerErrors = new Counter({
      name: 'smg_router_request_errors_total',
      help: 'Routed requests that failed, by error type',
      labelNames: [...routerLabels, 'error_type'],
      registers,
    });
    this.routerUpstream = new Counter({
      name: 'smg_router_upstream_responses_total',
      help: 'Responses received from workers, by status',
      labelNames: ['router_type', 'status_code', 'error_code'],
      registers,
    });
    this.routerStage = new Histogram({
      name: 'smg_router_stage_duration_seconds',
      help: 'Time spent in each routing stage',
      labelNames: ['router_type', 'stage'],
      buckets: durationBuckets,
      registers,
    });
    this.workerPoolSize = new Gauge({
      name: 'smg_worker_pool_size',
      help: 'Registered workers',
      labelNames: ['worker_type', 'connection_mode', 'model'],
      registers,
    });
    this.workerConnections = new Gauge({
      name: 'smg_worker_connections_active',
      help: 'Open upstream connections to workers',
      labelNames: ['worker_type', 'connection_mode'],
      registers,
    });
    this.workerRequestsActive = new Gauge({
      name: 'smg_worker_requests_active',
      help: 'In-flight requests on a worker (this node)',
      labelNames: ['worker'],
      registers,
    });
    this.workerRoutingKeys = new Gauge({
      name: 'smg_worker_routing_keys_active',
      help: 'Sticky routing keys assigned to a worker (manual policy)',
      labelNames: ['worker'],
      registers,
    });
    this.workerHealth = new Gauge({
      name: 'smg_worker_health',
      help: '1 when the worker is healthy (ready), else 0',
      labelNames: ['worker'],
      registers,
    });
    this.workerHealthChecks = new Counter({
      name: 'smg_worker_health_checks_total',
      help: 'Health probes, by result',
      labelNames: ['worker_type', 'result'],
      registers,
    });
    this.workerSelection = new Counter({
      name: 'smg_worker_selection_total',
      help: 'Worker selections by the routing policy',
      labelNames: ['worker_type', 'connection_mode', 'model', 'policy'],
      registers,
    });
    this.workerErrors = new Counter({
      name: 'smg_worker_errors_total',
      help: 'Upstream errors, by type',
      labelNames: ['worker_type', 'connection_mode', 'error_type'],
      registers,
    });
    this.manualBranch = new Counter({
      name: 'smg_manual_policy_branch_total',
      help: 'manual policy decisions by branch',
      labelNames: ['branch'],
      registers,
    });
    this.consistentHashingBranch = new Counter({
      name: 'smg_consistent_hashing_policy_branch_total',
      help: 'consistent_hashing policy decisions by branch',
      labelNames: ['branch'],
      registers,
    });
    this.prefixHashBranch = new Counter({
      name: 'smg_prefix_hash_policy_branch_total',
      help: 'prefix_hash policy decisions by branch',
      labelNames: ['branch'],
      registers,
    });
    this.registryInvalidEntries = new Gauge({
      name: 'smg_registry_invalid_entries',
      help: 'Replicated registry entries left out of the views: they do not parse or fail validation (e.g. a peer’s worker spec this node refuses)',
      registers,
    });
    this.manualCacheEntries = new Gauge({
      name: 'smg_manual_policy_cache_entries',
      help: 'Entries in the manual policy sticky map',
      registers,
    });
    const usageLabels = ['router_type', 'backend_type', 'model', 'endpoint'] as const;
    const engineLabels = ['worker', 'model', 'dp_rank'] as const;
    const counter = <T extends string>(name: string, help: string, labelNames: readonly T[] = []) =>
      new Counter<T>({ name, help, labelNames, registers });
    const gauge = <T extends string>(name: string, help: string, labelNames: readonly T[] = []) =>
      new Gauge<T>({ name, help, labelNames, registers });
    const histogram = <T extends string>(
      name: string,
      help: string,
      labelNames: readonly T[],
      buckets: number[] = durationBuckets,
    ) => new Histogram<T>({ name, help, labelNames, buckets, registers });

    this.httpInflightAge = gauge(
      'smg_http_inflight_request_age_count',
      'In-flight requests by age bucket (non-cumulative, seconds), sampled every 20 s',
      ['gt', 'le'],
    );
    this.httpRateLimit = counter('smg_http_rate_limit_total', 'Admission decisions (token bucket)', [
      'result',
    ]);
    this.routerTtft = histogram('smg_router_ttft_seconds', 'Time to first token (streamed)', usageLabels);
    this.routerTpot = histogram(
      'smg_router_tpot_seconds',
      'Time per output token after the first',
      usageLabels,
    );
    this.routerGeneration = histogram(
      'smg_router_generation_duration_seconds',
      'Time from the first token to the end of generation',
      usageLabels,
    );
    this.routerTokens = counter('smg_router_tokens_total', 'Tokens reported by workers in usage', [
      ...usageLabels,
      'token_type',
    ]);
    this.cbState = gauge('smg_worker_cb_state', 'Circuit breaker state: 0 closed, 1 open, 2 half-open', [
      'worker',
    ]);
    this.cbConsecutiveFailures = gauge(
      'smg_worker_cb_consecutive_failures',
      'Consecutive failures seen by the circuit breaker',
      ['worker'],
    );
    this.cbConsecutiveSuccesses = gauge(
      'smg_worker_cb_consecutive_successes',
      'Consecutive successes seen by the circuit breaker',
      ['worker'],
    );
    this.cbTransitions = counter('smg_worker_cb_transitions_total', 'Circuit breaker state changes', [
      'worker',
      'from',
      'to',
    ]);
    this.cbOutcomes = counter('smg_worker_cb_outcomes_total', 'Outcomes recorded by circuit breakers', [
      'worker',
      'outcome',
    ]);
    this.retries = counter('smg_worker_retries_total', 'Retried upstream attempts', [
      'worker_type',
      'endpoint',
    ]);
    this.retriesExhausted = counter(
      'smg_worker_retries_exhausted_total',
      'Requests that failed after their last allowed attempt',
      ['worker_type', 'endpoint'],
    );
    this.retryBackoff = histogram('smg_worker_retry_backoff_seconds', 'Backoff slept before a retry', [
      'attempt',
    ]);
    this.retryBudgetRejected = counter(
      'smg_worker_retry_budget_exhausted_total',
      'Retries not attempted because the retry budget was spent',
      ['endpoint'],
    );
    this.engineRunning = gauge(
      'smg_engine_running_requests',
      'Running requests reported by the engine',
      engineLabels,
    );
    this.engineWaiting = gauge(
      'smg_engine_waiting_requests',
      'Queued requests reported by the engine',
      engineLabels,
    );
    this.engineTokenUsage = gauge(
      'smg_engine_token_usage',
      'KV-cache token usage (0..1) reported by the engine',
      engineLabels,
    );
    this.engineGenThroughput = gauge(
      'smg_engine_gen_throughput',
      'Generation throughput (tokens/s) reported by the engine',
      engineLabels,
    );
    this.engineCacheHitRate = gauge(
      'smg_engine_cache_hit_rate',
      'Prefix-cache hit rate reported by the engine',
      engineLabels,
    );
    this.schedulerAdmit = counter('smg_scheduler_admit_total', 'Priority scheduler decisions', [
      'class',
      'outcome',
    ]);
    this.schedulerPreemption = counter(
      'smg_scheduler_preemption_total',
      'Requests preempted by a higher class',
      ['victim_class', 'by_class'],
    );
    this.schedulerClamp = counter('smg_scheduler_clamp_total', 'Priorities clamped down to the tenant cap', [
      'tenant',
      'requested_class',
      'effective_class',
    ]);
    this.schedulerUnknownPriority = counter(
      'smg_scheduler_unknown_priority_value_total',
      'Requests with an unknown x-smg-priority value',
      ['tenant'],
    );
    this.schedulerStarvationPromotion = counter(
      'smg_scheduler_starvation_promotion_total',
      'Queued requests served early because they waited past the starvation threshold',
      ['class'],
    );
    this.schedulerQueueWait = histogram('smg_scheduler_queue_wait_seconds', 'Time spent queued', ['class']);
    this.schedulerInflight = gauge('smg_scheduler_inflight', 'Admitted in-flight requests', ['class']);
    this.schedulerQueueDepth = gauge('smg_scheduler_queue_depth', 'Queued requests', ['class']);
    this.schedulerQueueSizeLimit = gauge('smg_scheduler_queue_size_limit', 'Queue capacity', ['class']);
    this.schedulerCapacityPressure = gauge(
      'smg_scheduler_class_capacity_pressure',
      'In-flight requests of the class over the capacity available to it',
      ['class'],
    );
    this.schedulerUtilization = gauge('smg_scheduler_utilization', 'In-flight requests over capacity');
    this.tenantRateLimit = counter('smg_tenant_rate_limit_total', 'Tenant rate-limit decisions', [
      'result',
      'scope',
    ]);
    this.authResults = counter('smg_auth_requests_total', 'Authentication decisions', ['plane', 'result']);
    this.nodeEventLoopDelay = histogram(
      'smg_node_event_loop_delay_seconds',
      'Event-loop delay samples (the Node counterpart of SMG tokio_event_loop_delay)',
      [],
      [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
    );
    this.nodeEventLoopUtilization = gauge(
      'smg_node_event_loop_utilization',
      'Fraction of time the event loop was busy since the last scrape (SMG: tokio worker busy ratio)',
    );
    this.nodeEventLoopStalls = counter(
      'smg_node_event_loop_stalls_total',
      'Event-loop delays longer than 100 ms (SMG: tokio event loop stalls)',
    );
    this.nodeHeapUsed = gauge('smg_node_heap_used_bytes', 'V8 heap in use');
    this.nodeHeapTotal = gauge('smg_node_heap_total_bytes', 'V8 heap reserved');
    this.nodeActiveHandles = gauge(
      'smg_node_active_resources',
      'Active libuv resources (SMG: tokio alive tasks)',
    );
    collectDefaultMetrics({ register: this.registry, prefix: 'smg_process_' });
  }

  /** increments a labelled counter through a cached child */
  inc<T extends string>(counter: Counter<T>, labels: Record<T, string>, by = 1): void {
    const key = `${(counter as unknown as { name: string }).name}\u0000${Object.values(labels).join('\u0000')}`;
    let child = this.cache.get(key);
    if (!child) {
      child = counter.labels(labels);
      if (this.cache.size > 50_000) this.cache.clear();
      this.cache.set(key, child);
    }
    child.inc(by);
  }

  branch(policy: 'manual' | 'consistent_hashing' | 'prefix_hash', branch: string): void {
    const c =
      policy === 'manual'
        ? this.manualBranch
        : policy === 'consistent_hashing'
          ? this.consistentHashingBranch
          : this.prefixHashBranch;
    this.inc(c, { branch });
  }
}

/** serves `GET /metrics` on its own listener (`--prometheus-host`, `--prometheus-port`) */
export function startMetricsServer(
  metrics: Metrics,
  host: string,
  port: number,
  log?: { error(obj: object, msg: string): void },
): Promise<http.Server> {
  const server = http.createServer((req, res) => {
    if (req.method === 'GET' && (req.url === '/metrics' || req.url?.startsWith('/metrics?'))) {
      try {
        metrics.beforeScrape();
      } catch {
        // a failing refresh must not cost the scrape
      }
      metrics.registry.metrics().then(
        (text) => {
          res.writeHead(200, { 'content-type': metrics.registry.contentType });
          res.end(text);
        },
        (err: unknown) => {
          // a collector's exception text is internal: the log gets it, the scraper a status line
          log?.error({ err }, 'metrics collection failed');
          res.writeHead(500, { 'content-type': 'text/plain' });
          res.end('metrics collection failed\n');
        },
      );
      return;
    }
    res.writeHead(404, { 'content-type': 'text/plain' });
    res.end('not found\n');
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve(server);
    });
  });
}
