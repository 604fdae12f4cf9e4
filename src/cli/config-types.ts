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
  /** --health-success-threshold (2): Pending/NotReady → Ready after this many consecutive successes */
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
}
