/**
 * The validated configuration of `smg launch`: one object built from flags, an optional
 * `--config` file and defaults (SMG's defaults, inventory §1). Everything downstream reads this,
 * never argv.
 */
import type { PolicyName, PolicyParams } from '../routing/types.js';

export type LogLevel = 'debug' | 'info' | 'warn' | 'error';

export interface HealthConfig {
  /** --health-failure-threshold (3): Ready → NotReady after this many consecutive failures */
  failureThreshold: number;
  /** --health-success-threshold (2): NotReady → Ready after this many consecutive successes (a new worker: its first) */
  successThreshold: number;
  /** --health-check-timeout-secs (5) */
  timeoutSecs: number;
  /** --health-check-interval-secs (60) */
  intervalSecs: number;
  /** --health-check-endpoint (/health) */
  endpoint: string;
  /** --disable-health-check: workers start Ready and are never probed */
  disabled: boolean;
  /** --remove-unhealthy-workers: Failed workers are removed from the registry */
  removeUnhealthyWorkers: boolean;
  /** --drain-settle-secs (5): Draining hold before a DELETEd worker is removed */
  drainSettleSecs: number;
}

export interface Config {
  // §1.1 workers / server
  host: string;
  port: number;
  healthCheckPort?: number;
  workerUrls: string[];
  maxPayloadSize: number;
  /** the whole request body must arrive within this time (408 otherwise) */
  bodyReadTimeoutSecs: number;
  /** request bodies held by the process at once, bytes (503 + Retry-After past it) */
  maxBufferedRequestBytes: number;
  /** idle keep-alive connections are closed after this */
  keepAliveTimeoutSecs: number;
  /** a request's headers must arrive within this time (408 otherwise) */
  headersTimeoutSecs: number;
  requestTimeoutSecs: number;
  shutdownGracePeriodSecs: number;
  corsAllowedOrigins: string[];
  // §1.2 routing
  policy: PolicyName;
  policyParams: PolicyParams;
  routingKeyOverride: boolean;
  enableIgw: boolean;
  /** alias → canonical model id */
  modelAliases: Record<string, string>;
  /** characters per prefix-index block in HTTP mode (smg's own knob; SMG matches characters) */
  prefixBlockChars: number;
  // §1.4 load monitoring (used by power_of_two / least_load)
  loadMonitorIntervalSecs: number;
  // §1.7 health
  health: HealthConfig;
  // §1.10 observability
  logLevel: LogLevel;
  logJson: boolean;
  logDir?: string;
  prometheusHost: string;
  prometheusPort: number;
  prometheusDurationBuckets?: number[];
  requestIdHeaders: string[];
  // issue 3: reliability, admission, auth, tracing
  retry: RetryConfig;
  circuitBreaker: CircuitBreakerConfig;
  admission: AdmissionConfig;
  auth: AuthConfig;
  tracing: TracingConfig;
  // issue 4: the HA mesh
  mesh: MeshConfig;
}

/** The HA mesh (issue 4). */
export interface MeshConfig {
  /** --ha-mesh (alias --enable-mesh) */
  enabled: boolean;
  /** --seeds (alias --mesh-peer-urls): host:port, DNS names resolved again on every attempt */
  seeds: string[];
  /** --mesh-host: 0.0.0.0 with a cluster key, else 127.0.0.1 */
  host: string;
  /** --mesh-advertise-host */
  advertiseHost?: string;
  /** --mesh-port (30001): UDP for SWIM, TCP for libp2p */
  port: number;
  /** --mesh-node-name (alias --mesh-server-name): default <hostname>-<port> (the API port) */
  nodeName: string;
  /** --data-dir: default ./.smg/<node-name>; undefined with `--data-dir none` (no state kept) */
  dataDir?: string;
  /** --mesh-cluster-key / SMG_MESH_CLUSTER_KEY: base64, primary first */
  clusterKeys: string[];
  /** --mesh-insecure */
  insecure: boolean;
}

/** §1.7 retries (issue 3). */
export interface RetryConfig {
  /** --retry-max-retries (4): retries after the first attempt; SMG's flag counts attempts (its 5 = our 4) */
  maxRetries: number;
  /** --retry-initial-backoff-ms (50) */
  initialBackoffMs: number;
  /** --retry-max-backoff-ms (30000) */
  maxBackoffMs: number;
  /** --retry-backoff-multiplier (1.5) */
  backoffMultiplier: number;
  /** --retry-jitter-factor (0.2): ± fraction of the delay */
  jitterFactor: number;
  /** --disable-retries */
  disabled: boolean;
  /** --retry-budget-ratio (0.2): retries may be at most this fraction of requests over the window */
  budgetRatio: number;
  /** --retry-budget-window-secs (10): the sliding window of the budget */
  budgetWindowSecs: number;
  /** --retry-budget-min-per-sec (10): retries always allowed per second, so a quiet gateway can retry */
  budgetMinPerSec: number;
}

/** §1.7 circuit breakers (issue 3), per worker and per node. */
export interface CircuitBreakerConfig {
  /** --cb-failure-threshold (10): consecutive failures (or failures within the window) to open */
  failureThreshold: number;
  /** --cb-success-threshold (3): successes in half-open to close */
  successThreshold: number;
  /** --cb-timeout-duration-secs (60): open → half-open */
  timeoutDurationSecs: number;
  /** --cb-window-duration-secs (120): sliding window in which failures count (SMG ignores it) */
  windowDurationSecs: number;
  /** --disable-circuit-breaker */
  disabled: boolean;
}

export type PriorityClass = 'bulk' | 'default' | 'interactive' | 'system';

/** §1.8 admission (issue 3). */
export interface AdmissionConfig {
  /** --max-concurrent-requests (-1 = off): token-bucket capacity */
  maxConcurrentRequests: number;
  /** --rate-limit-tokens-per-second (default: = max-concurrent-requests) */
  rateLimitTokensPerSecond?: number;
  /** --queue-size (100; 0 = no queue) */
  queueSize: number;
  /** --queue-timeout-secs (60) */
  queueTimeoutSecs: number;
  /** --priority-scheduler-enabled */
  priorityScheduler: boolean;
  /** --priority-scheduler-default-max-class (default) */
  priorityDefaultMaxClass: PriorityClass;
  /** --priority-scheduler-config: YAML path (classes, tenant_policies) */
  priorityConfigPath?: string;
  /** --priority-scheduler-tenant-metric-top-n (32) */
  priorityTenantMetricTopN: number;
  /** --tenant-rate-limit-enabled */
  tenantRateLimit: boolean;
  /** --tenant-rate-limit-config: YAML path, required when enabled */
  tenantRateLimitConfigPath?: string;
}

/** §1.9 auth (issue 3). Keys are plaintext here; the auth module hashes them at start-up. */
export interface AuthConfig {
  /** --api-key: data + admin plane; also sent to workers */
  apiKey?: string;
  /** --tenant-api-key tenant:key (repeatable) */
  tenantApiKeys: { tenant: string; key: string }[];
  /** --trust-tenant-header */
  trustTenantHeader: boolean;
  /** --tenant-header-name (x-smg-tenant-id) */
  tenantHeaderName: string;
  /** --control-plane-api-keys id:name:role:key (env CONTROL_PLANE_API_KEYS) */
  controlPlaneApiKeys: { id: string; name: string; role: 'admin' | 'user'; key: string }[];
  /** --disable-audit-logging */
  disableAuditLogging: boolean;
}

/** §1.10 tracing (issue 3). */
export interface TracingConfig {
  /** --enable-trace */
  enabled: boolean;
  /** --otlp-traces-endpoint: OTLP/HTTP URL (default http://localhost:4318/v1/traces) */
  otlpTracesEndpoint: string;
}
