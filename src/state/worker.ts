/**
 * The worker as the replicated registry knows it. Plain data only: the zod schema that validates
 * an incoming WorkerSpec lives in src/protocols; this module only names the shape.
 */

export type WorkerType = 'regular' | 'prefill' | 'decode' | 'encode';
export type ConnectionMode = 'http' | 'grpc';
/** SMG's worker states; only `ready` workers (whose circuit allows) are routable. */
export type WorkerStatus = 'pending' | 'ready' | 'not_ready' | 'failed' | 'draining';

export interface WorkerHealthConfig {
  timeout_secs?: number;
  check_interval_secs?: number;
  success_threshold?: number;
  failure_threshold?: number;
  disable_health_check?: boolean;
  drain_settle_secs?: number;
}

/**
 * Per-worker retry and circuit-breaker overrides (SMG's WorkerSpec `resilience`). `max_retries`
 * counts retries after the first attempt, like `--retry-max-retries` here (SMG counts attempts).
 */
export interface WorkerResilience {
  max_retries?: number;
  initial_backoff_ms?: number;
  max_backoff_ms?: number;
  backoff_multiplier?: number;
  jitter_factor?: number;
  disable_retry?: boolean;
  cb_failure_threshold?: number;
  cb_success_threshold?: number;
  cb_timeout_secs?: number;
  cb_window_secs?: number;
  disable_circuit_breaker?: boolean;
  retryable_status_codes?: number[];
}

export interface WorkerSpec {
  url: string;
  /** model ids this worker serves; empty = discovered at registration, or wildcard if discovery found none */
  models: string[];
  worker_type: WorkerType;
  connection_mode: ConnectionMode;
  runtime: string;
  provider?: string;
  labels: Record<string, string>;
  priority: number;
  cost: number;
  /** write-only: sent to the worker as a bearer token, never returned by the API */
  api_key?: string;
  bootstrap_port?: number;
  health: WorkerHealthConfig;
  /** SMG's per-worker pool overrides: stored and shown, not applied (pools are gateway-wide here) */
  http_pool?: WorkerHttpPool;
  resilience?: WorkerResilience;
  max_connection_attempts: number;
  load_monitor_interval_secs?: number;
  // SMG's fields for data-parallel, PD-disaggregated, multimodal and ZMQ workers: stored as given
  // and shown by GET /workers; this version's HTTP mode does not act on them
  dp_base_url?: string;
  dp_rank?: number;
  dp_size?: number;
  kv_connector?: string;
  kv_role?: string;
  kv_engine_id?: string;
  kv_block_size?: number;
  multimodal_tensor_transport?: 'inline' | 'shm' | 'auto' | 'rdma';
  multimodal_shm_min_bytes?: number;
  zmq_handshake_address?: string;
}

export interface WorkerHttpPool {
  pool_max_idle_per_host?: number;
  pool_idle_timeout_secs?: number;
  timeout_secs?: number;
  connect_timeout_secs?: number;
}

/** What `/v1/loads` (or `/metrics`) of an engine reported; feeds least_load and power_of_two. */
export interface EngineLoad {
  /** fraction of KV cache in use, 0..1 */
  tokenUsage: number;
  numRunningReqs: number;
  numWaitingReqs: number;
  numWaitingUncachedTokens: number;
  /** tokens/s, 0 when unknown */
  genThroughput: number;
  /** absolute used tokens, -1 if unknown */
  numUsedTokens: number;
}
