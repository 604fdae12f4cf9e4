import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import { getHeapStatistics } from 'node:v8';
import { afterAll, describe, expect, it } from 'vitest';

import { POLICY_NAMES } from '../routing/types.js';
import {
  checkWorkerUrl,
  ConfigError,
  envName,
  infoFlag,
  LAUNCH_FLAGS,
  loadConfigFile,
  parseLaunchArgs,
} from './config.js';
import type { Config } from './config-types.js';
import { LAUNCH_HELP, TOP_HELP } from './help.js';

/** parse with an empty environment, so the machine's SMG_* variables cannot leak in */
const HOST_PART =
  hostname()
    .split('.')[0]
    .replace(/[^A-Za-z0-9_-]/g, '-')
    .slice(0, 50) || 'smg';
const DEFAULT_NODE_NAME = `${HOST_PART}-30000`;
const parse = (argv: string[], env: NodeJS.ProcessEnv = {}) => parseLaunchArgs(argv, env);

function errorOf(argv: string[], env: NodeJS.ProcessEnv = {}): string {
  try {
    parseLaunchArgs(argv, env);
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return (err as Error).message;
  }
  throw new Error(`expected a ConfigError for ${JSON.stringify(argv)}`);
}

const dir = mkdtempSync(join(tmpdir(), 'smg-config-test-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
let fileCount = 0;
function file(name: string, content: string): string {
  const path = join(dir, `${fileCount++}-${name}`);
  writeFileSync(path, content);
  return path;
}

const SMG_DEFAULTS: Config = {
  host: '0.0.0.0',
  port: 30000,
  workerUrls: [],
  maxPayloadSize: 536870912,
  bodyReadTimeoutSecs: 60,
  maxBufferedRequestBytes: Math.floor(getHeapStatistics().heap_size_limit / 4),
  keepAliveTimeoutSecs: 75,
  headersTimeoutSecs: 60,
  requestTimeoutSecs: 1800,
  shutdownGracePeriodSecs: 180,
  corsAllowedOrigins: [],
  policy: 'cache_aware',
  policyParams: {
    cacheThreshold: 0.3,
    balanceAbsThreshold: 64,
    balanceRelThreshold: 1.5,
    balanceTokenUsageThreshold: 1.0,
    overloadTokenUsageThreshold: 1.0,
    evictionIntervalSecs: 120,
    maxTreeSize: 67108864,
    blockSize: 16,
    maxIdleSecs: 14400,
    assignmentMode: 'random',
    prefixTokenCount: 256,
    prefixHashLoadFactor: 1.25,
    leastLoadKvPressureWeight: 0.15,
    leastLoadDefaultThroughput: 2000,
    leastLoadMeanPrefillTokens: 1024,
  },
  routingKeyOverride: false,
  enableIgw: false,
  modelAliases: {},
  prefixBlockChars: 32,
  loadMonitorIntervalSecs: 10,
  health: {
    failureThreshold: 3,
    successThreshold: 2,
    timeoutSecs: 5,
    intervalSecs: 60,
    endpoint: '/health',
    disabled: false,
    removeUnhealthyWorkers: false,
    drainSettleSecs: 5,
  },
  logLevel: 'info',
  logJson: false,
  prometheusHost: '0.0.0.0',
  prometheusPort: 29000,
  requestIdHeaders: ['x-request-id', 'x-correlation-id', 'x-trace-id', 'request-id'],
  retry: {
    maxRetries: 4,
    initialBackoffMs: 50,
    maxBackoffMs: 30000,
    backoffMultiplier: 1.5,
    jitterFactor: 0.2,
    disabled: false,
    budgetRatio: 0.2,
    budgetWindowSecs: 10,
    budgetMinPerSec: 10,
  },
  circuitBreaker: {
    failureThreshold: 10,
    successThreshold: 3,
    timeoutDurationSecs: 60,
    windowDurationSecs: 120,
    disabled: false,
  },
  admission: {
    maxConcurrentRequests: -1,
    queueSize: 100,
    queueTimeoutSecs: 60,
    priorityScheduler: false,
    priorityDefaultMaxClass: 'default',
    priorityTenantMetricTopN: 32,
    tenantRateLimit: false,
  },
  auth: {
    tenantApiKeys: [],
    trustTenantHeader: false,
    tenantHeaderName: 'x-smg-tenant-id',
    controlPlaneApiKeys: [],
    disableAuditLogging: false,
  },
  tracing: { enabled: false, otlpTracesEndpoint: 'http://localhost:4318/v1/traces' },
  mesh: {
    enabled: false,
    seeds: [],
    host: '127.0.0.1',
    port: 30001,
    nodeName: DEFAULT_NODE_NAME,
    dataDir: join('.smg', DEFAULT_NODE_NAME),
    clusterKeys: [],
    insecure: false,
  },
};

describe('defaults', () => {
  it("equal SMG's", () => {
    const config = parse([]);
    expect(config).toEqual(SMG_DEFAULTS);
    expect('healthCheckPort' in config).toBe(false);
    expect('logDir' in config).toBe(false);
    expect('prometheusDurationBuckets' in config).toBe(false);
  });

  it('are fresh objects on every call', () => {
    const a = parse([]);
    a.requestIdHeaders.push('x-mutated');
    a.workerUrls.push('http://mutated');
    a.modelAliases.x = 'y';
    expect(parse([])).toEqual(SMG_DEFAULTS);
  });

  it('ignore process.env when an env is given', () => {
    expect(parseLaunchArgs([], {})).toEqual(SMG_DEFAULTS);
  });
});

/** one value flag each: flag, value given, how to read it back, expected */
const PRIORITY_FILE = file(
  'priority.yaml',
  'capacity: 256\ntenant_policies:\n  - tenant_key: auth:acme\n    max_class: interactive\n',
);
const LIMITS_FILE = file('limits.yaml', 'default_policy:\n  requests_per_minute: 60\n');

const VALUE_FLAGS: [string, string, (c: Config) => unknown, unknown][] = [
  ['host', '127.0.0.1', (c) => c.host, '127.0.0.1'],
  ['port', '8080', (c) => c.port, 8080],
  ['health-check-port', '30001', (c) => c.healthCheckPort, 30001],
  ['max-payload-size', '1024', (c) => c.maxPayloadSize, 1024],
  ['request-timeout-secs', '30', (c) => c.requestTimeoutSecs, 30],
  ['body-read-timeout-secs', '5', (c) => c.bodyReadTimeoutSecs, 5],
  ['max-buffered-request-bytes', '1048576', (c) => c.maxBufferedRequestBytes, 1048576],
  ['keep-alive-timeout-secs', '10', (c) => c.keepAliveTimeoutSecs, 10],
  ['headers-timeout-secs', '7', (c) => c.headersTimeoutSecs, 7],
  ['shutdown-grace-period-secs', '0', (c) => c.shutdownGracePeriodSecs, 0],
  ['policy', 'round_robin', (c) => c.policy, 'round_robin'],
  ['cache-threshold', '0.5', (c) => c.policyParams.cacheThreshold, 0.5],
  ['balance-abs-threshold', '32', (c) => c.policyParams.balanceAbsThreshold, 32],
  ['balance-rel-threshold', '1.1', (c) => c.policyParams.balanceRelThreshold, 1.1],
  ['balance-token-usage-threshold', '0.8', (c) => c.policyParams.balanceTokenUsageThreshold, 0.8],
  ['overload-token-usage-threshold', '0.9', (c) => c.policyParams.overloadTokenUsageThreshold, 0.9],
  ['eviction-interval', '60', (c) => c.policyParams.evictionIntervalSecs, 60],
  ['max-tree-size', '1000', (c) => c.policyParams.maxTreeSize, 1000],
  ['block-size', '32', (c) => c.policyParams.blockSize, 32],
  ['max-idle-secs', '600', (c) => c.policyParams.maxIdleSecs, 600],
  ['assignment-mode', 'min_group', (c) => c.policyParams.assignmentMode, 'min_group'],
  ['prefix-token-count', '128', (c) => c.policyParams.prefixTokenCount, 128],
  ['prefix-hash-load-factor', '2', (c) => c.policyParams.prefixHashLoadFactor, 2],
  ['least-load-kv-pressure-weight', '0', (c) => c.policyParams.leastLoadKvPressureWeight, 0],
  ['least-load-default-throughput', '1500.5', (c) => c.policyParams.leastLoadDefaultThroughput, 1500.5],
  ['least-load-mean-prefill-tokens', '512', (c) => c.policyParams.leastLoadMeanPrefillTokens, 512],
  ['prefix-block-chars', '64', (c) => c.prefixBlockChars, 64],
  ['load-monitor-interval', '2', (c) => c.loadMonitorIntervalSecs, 2],
  ['health-failure-threshold', '5', (c) => c.health.failureThreshold, 5],
  ['health-success-threshold', '1', (c) => c.health.successThreshold, 1],
  ['health-check-timeout-secs', '2', (c) => c.health.timeoutSecs, 2],
  ['health-check-interval-secs', '10', (c) => c.health.intervalSecs, 10],
  ['health-check-endpoint', '/readyz', (c) => c.health.endpoint, '/readyz'],
  ['drain-settle-secs', '0', (c) => c.health.drainSettleSecs, 0],
  ['log-dir', '/var/log/smg', (c) => c.logDir, '/var/log/smg'],
  ['log-level', 'debug', (c) => c.logLevel, 'debug'],
  ['prometheus-host', '127.0.0.1', (c) => c.prometheusHost, '127.0.0.1'],
  ['prometheus-port', '9100', (c) => c.prometheusPort, 9100],
  [
    'otlp-traces-endpoint',
    'http://otel:4318/v1/traces',
    (c) => c.tracing.otlpTracesEndpoint,
    'http://otel:4318/v1/traces',
  ],
  ['retry-max-retries', '3', (c) => c.retry.maxRetries, 3],
  ['retry-initial-backoff-ms', '20', (c) => c.retry.initialBackoffMs, 20],
  ['retry-max-backoff-ms', '900', (c) => c.retry.maxBackoffMs, 900],
  ['retry-backoff-multiplier', '2', (c) => c.retry.backoffMultiplier, 2],
  ['retry-jitter-factor', '0.5', (c) => c.retry.jitterFactor, 0.5],
  ['retry-budget-ratio', '0.1', (c) => c.retry.budgetRatio, 0.1],
  ['retry-budget-window-secs', '30', (c) => c.retry.budgetWindowSecs, 30],
  ['retry-budget-min-per-sec', '5', (c) => c.retry.budgetMinPerSec, 5],
  ['cb-failure-threshold', '5', (c) => c.circuitBreaker.failureThreshold, 5],
  ['cb-success-threshold', '2', (c) => c.circuitBreaker.successThreshold, 2],
  ['cb-timeout-duration-secs', '7', (c) => c.circuitBreaker.timeoutDurationSecs, 7],
  ['cb-window-duration-secs', '9', (c) => c.circuitBreaker.windowDurationSecs, 9],
  ['max-concurrent-requests', '64', (c) => c.admission.maxConcurrentRequests, 64],
  ['rate-limit-tokens-per-second', '12.5', (c) => c.admission.rateLimitTokensPerSecond, 12.5],
  ['queue-size', '0', (c) => c.admission.queueSize, 0],
  ['queue-timeout-secs', '5', (c) => c.admission.queueTimeoutSecs, 5],
  ['priority-scheduler-default-max-class', 'bulk', (c) => c.admission.priorityDefaultMaxClass, 'bulk'],
  ['priority-scheduler-config', PRIORITY_FILE, (c) => c.admission.priorityConfigPath, PRIORITY_FILE],
  ['priority-scheduler-tenant-metric-top-n', '8', (c) => c.admission.priorityTenantMetricTopN, 8],
  ['tenant-rate-limit-config', LIMITS_FILE, (c) => c.admission.tenantRateLimitConfigPath, LIMITS_FILE],
  ['api-key', 'k3y', (c) => c.auth.apiKey, 'k3y'],
  ['tenant-header-name', 'X-Tenant', (c) => c.auth.tenantHeaderName, 'x-tenant'],
];

const SWITCHES: [string, (c: Config) => boolean][] = [
  ['routing-key-override', (c) => c.routingKeyOverride],
  ['enable-igw', (c) => c.enableIgw],
  ['disable-health-check', (c) => c.health.disabled],
  ['remove-unhealthy-workers', (c) => c.health.removeUnhealthyWorkers],
  ['log-json', (c) => c.logJson],
  ['enable-trace', (c) => c.tracing.enabled],
  ['disable-retries', (c) => c.retry.disabled],
  ['disable-circuit-breaker', (c) => c.circuitBreaker.disabled],
  ['priority-scheduler-enabled', (c) => c.admission.priorityScheduler],
  ['trust-tenant-header', (c) => c.auth.trustTenantHeader],
  ['disable-audit-logging', (c) => c.auth.disableAuditLogging],
];

const LIST_FLAGS: [string, string[], (c: Config) => unknown, unknown][] = [
  ['worker-urls', ['http://a:1', 'http://b:2'], (c) => c.workerUrls, ['http://a:1', 'http://b:2']],
  [
    'cors-allowed-origins',
    ['https://x.example', 'https://y.example'],
    (c) => c.corsAllowedOrigins,
    ['https://x.example', 'https://y.example'],
  ],
  [
    'model-alias',
    ['gpt-4=llama-3', 'fast=tiny'],
    (c) => c.modelAliases,
    { 'gpt-4': 'llama-3', fast: 'tiny' },
  ],
  ['request-id-headers', ['X-Req', 'x-other'], (c) => c.requestIdHeaders, ['x-req', 'x-other']],
  ['prometheus-duration-buckets', ['0.1', '0.5', '1'], (c) => c.prometheusDurationBuckets, [0.1, 0.5, 1]],
  ['tenant-api-key', ['a:k1', 'b:k2'], (c) => c.auth.tenantApiKeys.map((k) => k.tenant), ['a', 'b']],
  [
    'control-plane-api-keys',
    ['x:X:admin:k1', 'y:Y:user:k2'],
    (c) => c.auth.controlPlaneApiKeys.map((k) => k.id),
    ['x', 'y'],
  ],
];

const KEY_A = Buffer.alloc(32, 1).toString('base64');
const KEY_B = Buffer.alloc(32, 2).toString('base64');

/** mesh flags need --ha-mesh; each row: flag, argv after `--ha-mesh`, read, expected */
const MESH_FLAGS: [string, string[], (c: Config) => unknown, unknown][] = [
  ['ha-mesh', [], (c) => c.mesh.enabled, true],
  [
    'seeds',
    ['--seeds', 'a.example:30001,10.0.0.2:1', '[::1]:7'],
    (c) => c.mesh.seeds,
    ['a.example:30001', '10.0.0.2:1', '[::1]:7'],
  ],
  ['mesh-host', ['--mesh-host', '127.0.0.2'], (c) => c.mesh.host, '127.0.0.2'],
  ['mesh-advertise-host', ['--mesh-advertise-host', '127.0.0.3'], (c) => c.mesh.advertiseHost, '127.0.0.3'],
  ['mesh-port', ['--mesh-port', '31001'], (c) => c.mesh.port, 31001],
  ['mesh-node-name', ['--mesh-node-name', 'gw-1'], (c) => c.mesh.nodeName, 'gw-1'],
  ['data-dir', ['--data-dir', '/var/lib/smg'], (c) => c.mesh.dataDir, '/var/lib/smg'],
  ['mesh-cluster-key', ['--mesh-cluster-key', KEY_A, KEY_B], (c) => c.mesh.clusterKeys, [KEY_A, KEY_B]],
  [
    'mesh-cluster-key-file',
    ['--mesh-cluster-key-file', file('cluster.keys', `# primary first\n${KEY_B}\n\n  ${KEY_A}  \n`)],
    (c) => c.mesh.clusterKeys,
    [KEY_B, KEY_A],
  ],
  ['mesh-insecure', ['--mesh-insecure', '--mesh-host', '0.0.0.0'], (c) => c.mesh.host, '0.0.0.0'],
];

describe('mesh flags', () => {
  it.each(MESH_FLAGS)('--%s', (_flag, argv, read, expected) => {
    expect(read(parse(['--ha-mesh', ...argv]))).toEqual(expected);
  });

  it("accepts SMG's spellings as aliases", () => {
    const c = parse(['--enable-mesh', '--mesh-peer-urls', '127.0.0.1:1', '--mesh-server-name', 'n1']);
    expect(c.mesh).toMatchObject({ enabled: true, seeds: ['127.0.0.1:1'], nodeName: 'n1' });
    expect(() => parse(['--ha-mesh', '--enable-mesh'])).toThrow(
      /given more than once \(--enable-mesh is --ha-mesh\)/,
    );
    const f = file('mesh.yaml', 'enable_mesh: true\nmesh_peer_urls: [a:1]\n');
    expect(parse(['--config', f]).mesh.seeds).toEqual(['a:1']);
  });

  it('defaults: loopback without a key, all interfaces with one, data dir under ./.smg/<name>', () => {
    const plain = parse(['--ha-mesh', '--mesh-node-name', 'x']).mesh;
    expect(plain).toMatchObject({
      host: '127.0.0.1',
      port: 30001,
      dataDir: join('.smg', 'x'),
      clusterKeys: [],
    });
    expect(parse(['--ha-mesh', '--mesh-cluster-key', KEY_A]).mesh.host).toBe('0.0.0.0');
    expect(parse(['--ha-mesh'], { SMG_MESH_CLUSTER_KEY: KEY_A }).mesh.clusterKeys).toEqual([KEY_A]);
  });

  it('every node keeps its state under ./.smg/<hostname>-<port> unless --data-dir none', () => {
    expect(parse([]).mesh).toMatchObject({
      nodeName: DEFAULT_NODE_NAME,
      dataDir: join('.smg', DEFAULT_NODE_NAME),
    });
    // two gateways in one directory on different ports: two data dirs, whatever their mesh ports
    const other = parse(['--port', '30100', '--ha-mesh', '--mesh-port', '30101']).mesh;
    expect(other.nodeName).toBe(`${HOST_PART}-30100`);
    expect(other.dataDir).toBe(join('.smg', `${HOST_PART}-30100`));
    expect(parse(['--data-dir', 'none']).mesh.dataDir).toBeUndefined();
    expect(parse(['--data-dir', './none']).mesh.dataDir).toBe('./none');
    // the node name names the data dir, so it is allowed without the mesh
    expect(parse(['--mesh-node-name', 'solo']).mesh).toMatchObject({
      enabled: false,
      nodeName: 'solo',
      dataDir: join('.smg', 'solo'),
    });
  });

  it.each([
    [['--seeds', 'nohost'], /--seeds: malformed seed "nohost"/],
    [['--seeds', 'a:0'], /port must be between 1 and 65535/],
    [['--seeds', 'bad_host!:1'], /is not a host name or IP address/],
    [['--mesh-cluster-key', 'c2hvcnQ='], /--mesh-cluster-key: key 1: cluster key must be 32 bytes/],
    [['--mesh-cluster-key', '***'], /not valid base64/],
    [['--mesh-host', 'myhost'], /--mesh-host: must be an IPv4 or IPv6 address/],
    [['--mesh-host', '0.0.0.0'], /not a loopback address and no --mesh-cluster-key/],
    [['--mesh-node-name', 'a:b'], /--mesh-node-name: must be 1-64 characters/],
    [['--mesh-port', '30000'], /--mesh-port: must differ from --port/],
    [['--mesh-advertise-host', '0.0.0.0'], /must be an address peers can reach/],
  ])('rejects %j', (argv, message) => {
    expect(() => parse(['--ha-mesh', ...argv])).toThrow(message);
  });

  it('reads the cluster keys from a key file, with clear errors that never show a key', () => {
    const keys = file('one.key', `${KEY_A}\n`);
    const viaFile = parse(['--ha-mesh', '--mesh-cluster-key-file', keys]).mesh;
    expect(viaFile).toMatchObject({ clusterKeys: [KEY_A], host: '0.0.0.0' });
    expect(parse(['--ha-mesh'], { SMG_MESH_CLUSTER_KEY_FILE: keys }).mesh.clusterKeys).toEqual([KEY_A]);
    const error = (argv: string[], env: NodeJS.ProcessEnv = {}) => {
      try {
        parse(['--ha-mesh', ...argv], env);
      } catch (err) {
        return (err as Error).message;
      }
      throw new Error('accepted');
    };
    expect(error(['--mesh-cluster-key-file', keys, '--mesh-cluster-key', KEY_B])).toMatch(
      /--mesh-cluster-key-file: give the keys either in a file or with --mesh-cluster-key/,
    );
    expect(error(['--mesh-cluster-key-file', keys], { SMG_MESH_CLUSTER_KEY: KEY_B })).toMatch(/not both/);
    expect(error(['--mesh-cluster-key-file', join(dir, 'missing.key')])).toMatch(
      /--mesh-cluster-key-file: ".*missing\.key": ENOENT/,
    );
    const short = Buffer.alloc(16, 7).toString('base64');
    const bad = error(['--mesh-cluster-key-file', file('bad.key', `# comment\n${KEY_A}\n${short}\n`)]);
    expect(bad).toMatch(/bad\.key": line 3: cluster key must be 32 bytes, got 16/);
    expect(bad).not.toContain(short);
    expect(bad).not.toContain(KEY_A);
    expect(error(['--mesh-cluster-key-file', file('empty.key', '# nothing here\n\n')])).toMatch(
      /holds no key/,
    );
    expect(error(['--mesh-cluster-key-file', dir])).toMatch(/--mesh-cluster-key-file: .*EISDIR/);
    expect(() => parse(['--mesh-cluster-key-file', keys])).toThrow(
      /--mesh-cluster-key-file: needs --ha-mesh/,
    );
  });

  it('mesh settings without --ha-mesh are an error, not ignored', () => {
    expect(() => parse(['--seeds', 'a:1'])).toThrow(/--seeds: needs --ha-mesh/);
    expect(() => parse(['--mesh-cluster-key', KEY_A])).toThrow(/needs --ha-mesh/);
  });
});

describe('every flag parses', () => {
  it('the tables cover every launch flag', () => {
    // tested on its own below: it needs its config file
    const covered = [...VALUE_FLAGS, ...SWITCHES, ...LIST_FLAGS, ...MESH_FLAGS, ['tenant-rate-limit-enabled']]
      .map((row) => row[0] as string)
      .sort();
    expect(covered).toEqual(Object.keys(LAUNCH_FLAGS).sort());
  });

  it.each(VALUE_FLAGS)('--%s %s (space and = forms)', (flag, value, read, expected) => {
    expect(read(parse([`--${flag}`, value]))).toEqual(expected);
    expect(read(parse([`--${flag}=${value}`]))).toEqual(expected);
  });

  it.each(SWITCHES)('--%s as a bare switch and with =true / =false', (flag, read) => {
    expect(read(parse([`--${flag}`]))).toBe(true);
    expect(read(parse([`--${flag}=true`]))).toBe(true);
    expect(read(parse([`--${flag}=TRUE`]))).toBe(true);
    expect(read(parse([`--${flag}=false`]))).toBe(false);
  });

  it.each(LIST_FLAGS)('--%s takes several values', (flag, values, read, expected) => {
    expect(read(parse([`--${flag}`, ...values]))).toEqual(expected);
    // repeating the flag appends
    const repeated = values.flatMap((v) => [`--${flag}`, v]);
    expect(read(parse(repeated))).toEqual(expected);
    // `=` form for the first value, more values after it
    expect(read(parse([`--${flag}=${values[0]}`, ...values.slice(1)]))).toEqual(expected);
  });

  it('accepts every policy name', () => {
    for (const policy of POLICY_NAMES) expect(parse(['--policy', policy]).policy).toBe(policy);
  });

  it('combines many flags', () => {
    const c = parse([
      '--worker-urls',
      'http://w1:8000',
      'http://w2:8000',
      '--policy',
      'power_of_two',
      '--port=31000',
      '--log-json',
      '--model-alias',
      'a=b',
      '--cache-threshold',
      '1',
    ]);
    expect(c.workerUrls).toEqual(['http://w1:8000', 'http://w2:8000']);
    expect(c.policy).toBe('power_of_two');
    expect(c.port).toBe(31000);
    expect(c.logJson).toBe(true);
    expect(c.modelAliases).toEqual({ a: 'b' });
    expect(c.policyParams.cacheThreshold).toBe(1);
  });
});

describe('worker URLs', () => {
  it('splits comma-separated values and strips a trailing slash', () => {
    const c = parse([
      '--worker-urls',
      'http://a:1,http://b:2/',
      'https://c.example/v1/',
      '--worker-urls',
      'http://d',
    ]);
    expect(c.workerUrls).toEqual(['http://a:1', 'http://b:2', 'https://c.example/v1', 'http://d']);
  });

  it('reads a bare host:port as http', () => {
    expect(parse(['--worker-urls', 'gpu1:8000', '127.0.0.1:8001', '[::1]:8002']).workerUrls).toEqual([
      'http://gpu1:8000',
      'http://127.0.0.1:8001',
      'http://[::1]:8002',
    ]);
  });

  it('rejects grpc and other schemes', () => {
    expect(errorOf(['--worker-urls', 'grpc://gpu1:9000'])).toBe(
      '--worker-urls: unsupported scheme "grpc" in grpc://gpu1:9000; only http and https are supported in this version',
    );
    expect(errorOf(['--worker-urls', 'http://ok:1', 'ipc:///tmp/sock'])).toMatch(/unsupported scheme "ipc"/);
  });

  it('rejects unparsable URLs, queries and duplicates', () => {
    expect(errorOf(['--worker-urls', 'http://a b:1'])).toMatch(
      /^--worker-urls: invalid URL "http:\/\/a b:1"/,
    );
    expect(errorOf(['--worker-urls', 'http://a:99999'])).toMatch(/^--worker-urls: invalid URL/);
    expect(errorOf(['--worker-urls', 'http://a:1/?x=1'])).toMatch(/query strings and fragments/);
    expect(errorOf(['--worker-urls', 'http://a:1', 'a:1/'])).toBe(
      '--worker-urls: duplicate worker URL http://a:1',
    );
  });

  it('checkWorkerUrl is usable on its own', () => {
    expect(checkWorkerUrl('h:1/')).toEqual({ ok: true, url: 'http://h:1' });
    expect(checkWorkerUrl('grpcs://h:1')).toMatchObject({ ok: false });
  });
});

describe('list values', () => {
  it('request-id headers are lower-cased and deduplicated', () => {
    expect(
      parse(['--request-id-headers', 'X-Request-ID', 'x-request-id', 'X-B3-TraceId']).requestIdHeaders,
    ).toEqual(['x-request-id', 'x-b3-traceid']);
  });

  it('model aliases must be alias=canonical', () => {
    expect(errorOf(['--model-alias', 'a=b', 'nonsense'])).toBe(
      '--model-alias: malformed entry "nonsense"; expected alias=canonical',
    );
    expect(errorOf(['--model-alias', '=b'])).toMatch(/malformed entry "=b"/);
    expect(errorOf(['--model-alias', 'a='])).toMatch(/malformed entry "a="/);
    expect(errorOf(['--model-alias', 'a=b', 'a=c'])).toMatch(/alias "a" is mapped twice/);
    expect(parse(['--model-alias', 'a=b=c', 'a=b=c']).modelAliases).toEqual({ a: 'b=c' });
  });

  it('duration buckets must be positive and strictly increasing', () => {
    expect(errorOf(['--prometheus-duration-buckets', '0.5', '0.1'])).toBe(
      '--prometheus-duration-buckets: bucket bounds must be strictly increasing, got 0.5 then 0.1',
    );
    expect(errorOf(['--prometheus-duration-buckets', '0', '1'])).toBe(
      '--prometheus-duration-buckets: must be a positive number, got 0',
    );
    expect(errorOf(['--prometheus-duration-buckets', '1', 'abc'])).toBe(
      '--prometheus-duration-buckets: must be a positive number, got "abc"',
    );
  });

  it('values may be negative numbers (then range-checked)', () => {
    expect(errorOf(['--cache-threshold', '-0.5'])).toBe(
      '--cache-threshold: must be a number between 0 and 1, got -0.5',
    );
  });
});

describe('config file', () => {
  const yaml = file(
    'smg.yaml',
    [
      '# smg config',
      'worker-urls:',
      '  - http://y1:8000',
      '  - http://y2:8000',
      'policy: round_robin',
      'cache_threshold: 0.7',
      'log-json: true',
      'port: 31000',
      'model-alias:',
      '  gpt-4: llama-3',
      'prometheus_duration_buckets: [0.1, 1, 10]',
      'health-check-port: null',
      '',
    ].join('\n'),
  );
  const json = file(
    'smg.json',
    JSON.stringify({
      worker_urls: ['http://j1:8000'],
      'assignment-mode': 'min_load',
      disable_health_check: true,
      'model-alias': ['a=b'],
      'request-id-headers': ['X-Id'],
    }),
  );

  it('reads YAML with kebab-case and snake_case keys', () => {
    const c = parse(['--config', yaml]);
    expect(c.workerUrls).toEqual(['http://y1:8000', 'http://y2:8000']);
    expect(c.policy).toBe('round_robin');
    expect(c.policyParams.cacheThreshold).toBe(0.7);
    expect(c.logJson).toBe(true);
    expect(c.port).toBe(31000);
    expect(c.modelAliases).toEqual({ 'gpt-4': 'llama-3' });
    expect(c.prometheusDurationBuckets).toEqual([0.1, 1, 10]);
    expect(c.healthCheckPort).toBeUndefined();
    expect(c.host).toBe('0.0.0.0');
  });

  it('reads JSON', () => {
    const c = parse([`--config=${json}`]);
    expect(c.workerUrls).toEqual(['http://j1:8000']);
    expect(c.policyParams.assignmentMode).toBe('min_load');
    expect(c.health.disabled).toBe(true);
    expect(c.modelAliases).toEqual({ a: 'b' });
    expect(c.requestIdHeaders).toEqual(['x-id']);
  });

  it('lets command-line flags win over the file', () => {
    const c = parse([
      '--policy',
      'random',
      '--config',
      yaml,
      '--worker-urls',
      'http://cli:1',
      '--log-json=false',
    ]);
    expect(c.policy).toBe('random');
    expect(c.workerUrls).toEqual(['http://cli:1']);
    expect(c.logJson).toBe(false);
    expect(c.port).toBe(31000);
  });

  it('tries JSON then YAML for other extensions, and accepts a comma string for worker-urls', () => {
    expect(parse(['--config', file('smg.conf', '{"port": 1234}')]).port).toBe(1234);
    const c = parse(['--config', file('smg.conf', 'port: 1235\nworker-urls: http://a:1,http://b:2\n')]);
    expect(c.port).toBe(1235);
    expect(c.workerUrls).toEqual(['http://a:1', 'http://b:2']);
  });

  it('treats an empty file as no settings', () => {
    expect(parse(['--config', file('empty.yaml', '')])).toEqual(SMG_DEFAULTS);
  });

  it('rejects unknown keys, naming the key and the file', () => {
    const path = file('typo.yaml', 'polcy: random\n');
    expect(errorOf(['--config', path])).toBe(
      `--config: unknown key "polcy" in "${path}" (did you mean "policy"?)`,
    );
    const nested = file('nested.json', '{"config": "other.yaml"}');
    expect(errorOf(['--config', nested])).toBe(`--config: unknown key "config" in "${nested}"`);
  });

  it('rejects the same setting spelled twice', () => {
    const path = file('twice.json', '{"worker-urls": [], "worker_urls": []}');
    expect(errorOf(['--config', path])).toMatch(
      /keys "worker-urls" and "worker_urls" .* are the same setting/,
    );
  });

  it('rejects malformed files with the parser message', () => {
    const badJson = file('bad.json', '{"port": 1,');
    expect(errorOf(['--config', badJson])).toMatch(
      new RegExp(`^--config: cannot parse "${badJson}" as JSON: .+`),
    );
    const badYaml = file('bad.yaml', 'port: [1, 2\n');
    expect(errorOf(['--config', badYaml])).toMatch(
      new RegExp(`^--config: cannot parse "${badYaml}" as YAML: .+`),
    );
    const list = file('list.yaml', '- a\n- b\n');
    expect(errorOf(['--config', list])).toMatch(/must hold a mapping of flag names to values/);
  });

  it('rejects a missing file', () => {
    const path = join(dir, 'does-not-exist.yaml');
    expect(errorOf(['--config', path])).toMatch(new RegExp(`^--config: cannot read "${path}": .*ENOENT`));
  });

  it('reports bad values with the flag name and the file', () => {
    const path = file('badvalue.yaml', 'port: abc\npolicy: fastest\n');
    const message = errorOf(['--config', path]);
    expect(message).toContain(
      `--port: must be an integer between 1 and 65535, got "abc" (in config file "${path}")`,
    );
    expect(message).toContain('--policy: invalid value "fastest"; allowed: random, round_robin');
    const wrongType = file('wrongtype.json', '{"log-json": "yes", "worker-urls": 5}');
    expect(errorOf(['--config', wrongType])).toContain('--log-json: must be true or false, got "yes"');
  });

  it('loadConfigFile returns flag-keyed raw values', () => {
    expect(Object.fromEntries(loadConfigFile(json))).toMatchObject({ 'worker-urls': ['http://j1:8000'] });
  });

  it('rejects --config given twice', () => {
    expect(errorOf(['--config', yaml, '--config', json])).toBe('--config: given more than once');
  });

  // parsed in time linear in the file (the yaml package's own duplicate check was O(N²): 40k keys
  // took 11.5 s); the outcome is asserted here, the time is not
  it('answers a 40,000-key file with the first unknown key', () => {
    const lines = Array.from({ length: 40_000 }, (_, i) => `key${i}: ${i}`);
    const path = file('many.yaml', `port: 1234\n${lines.join('\n')}\n`);
    expect(errorOf(['--config', path])).toBe(`--config: unknown key "key0" in "${path}"`);
  });

  it('refuses a file over 1 MiB before parsing it', () => {
    const line = 'worker-urls: [' + Array.from({ length: 200_000 }, (_, i) => `"h${i}:1"`).join(',') + ']\n';
    const path = file('huge.yaml', line);
    expect(line.length).toBeGreaterThan(1024 * 1024);
    expect(errorOf(['--config', path])).toBe(
      `--config: "${path}": the file is larger than 1 MiB, the limit for configuration files`,
    );
  });

  it('reads no further than the limit (a device that never ends is refused, not read forever)', () => {
    expect(errorOf(['--config', '/dev/zero'])).toBe(
      '--config: "/dev/zero": the file is larger than 1 MiB, the limit for configuration files',
    );
  });

  it('refuses a duplicate YAML key, naming it and its line', () => {
    const path = file('dup.yaml', 'port: 1\npolicy: random\nport: 2\n');
    expect(errorOf(['--config', path])).toBe(
      `--config: cannot parse "${path}" as YAML: duplicate key "port" (line 3)`,
    );
  });

  it('refuses deeply nested values with a message about nesting, not the call stack', () => {
    const deep = '['.repeat(50_000) + ']'.repeat(50_000);
    for (const path of [file('deep.yaml', `policy: ${deep}\n`), file('deep.json', `{"policy": ${deep}}`)]) {
      const message = errorOf(['--config', path]);
      expect(message).toMatch(/nests more than 32 levels deep$/);
      expect(message).not.toMatch(/call stack/i);
    }
  });

  it('keeps a long or odd value short in messages', () => {
    const path = file('long.json', JSON.stringify({ policy: 'x'.repeat(10_000) }));
    const message = errorOf(['--config', path]);
    expect(message).toMatch(/^--policy: invalid value "x{199}… \(10002 characters\)/);
  });

  it('treats __proto__ and constructor as ordinary (unknown or alias) keys', () => {
    const proto = file('proto.json', '{"__proto__": {"port": 1}}');
    expect(errorOf(['--config', proto])).toBe(`--config: unknown key "__proto__" in "${proto}"`);
    const aliases = file('aliases.json', '{"model-alias": {"constructor": "m1", "__proto__": "m2"}}');
    const c = parse(['--config', aliases]);
    expect(Object.entries(c.modelAliases)).toEqual([
      ['constructor', 'm1'],
      ['__proto__', 'm2'],
    ]);
  });
});

describe('environment', () => {
  it('reads SMG_<FLAG> variables', () => {
    expect(envName('worker-urls')).toBe('SMG_WORKER_URLS');
    const c = parse([], {
      SMG_POLICY: 'manual',
      SMG_WORKER_URLS: 'http://e1:1, http://e2:2',
      SMG_LOG_JSON: 'true',
      SMG_PORT: '',
    });
    expect(c.policy).toBe('manual');
    expect(c.workerUrls).toEqual(['http://e1:1', 'http://e2:2']);
    expect(c.logJson).toBe(true);
    expect(c.port).toBe(30000);
  });

  it('ranks flags over env over file', () => {
    const path = file('env.yaml', 'policy: random\nport: 1111\nhost: 10.0.0.1\n');
    const c = parse(['--port', '3333'], { SMG_CONFIG: path, SMG_PORT: '2222', SMG_POLICY: 'bucket' });
    expect(c.port).toBe(3333);
    expect(c.policy).toBe('bucket');
    expect(c.host).toBe('10.0.0.1');
  });

  it('names the variable in errors', () => {
    expect(errorOf([], { SMG_PORT: 'x' })).toBe(
      '--port: must be an integer between 1 and 65535, got "x" (from SMG_PORT)',
    );
  });
});

/** every flag whose value reaches a timer (setTimeout, setInterval, undici or AbortSignal timeouts) */
const TIMER_FLAGS: [string, number][] = [
  ['request-timeout-secs', 1],
  ['shutdown-grace-period-secs', 0],
  ['eviction-interval', 1],
  ['max-idle-secs', 1],
  ['load-monitor-interval', 1],
  ['health-check-timeout-secs', 1],
  ['health-check-interval-secs', 1],
  ['drain-settle-secs', 0],
  ['cb-timeout-duration-secs', 1],
  ['cb-window-duration-secs', 1],
  ['queue-timeout-secs', 1],
];

describe('durations that reach a timer', () => {
  // Node replaces a delay above 2^31-1 ms with 1 ms: 3000000 s became a 1 ms probe loop
  it.each(TIMER_FLAGS)('--%s refuses what a timer cannot wait, naming the limit', (flag, min) => {
    expect(errorOf([`--${flag}`, '3000000'])).toBe(
      `--${flag}: must be an integer between ${min} and 2073600 (24 days, the longest a timer can wait), got 3000000`,
    );
    expect(() => parse([`--${flag}`, '2073600'])).not.toThrow();
  });

  it('retry backoffs are at most an hour', () => {
    for (const flag of ['retry-initial-backoff-ms', 'retry-max-backoff-ms']) {
      expect(errorOf([`--${flag}`, '3600001'])).toBe(
        `--${flag}: must be an integer between 0 and 3600000 (one hour), got 3600001`,
      );
    }
    expect(
      parse(['--retry-initial-backoff-ms', '3600000', '--retry-max-backoff-ms', '3600000']).retry
        .maxBackoffMs,
    ).toBe(3_600_000);
  });

  it('the same limits hold in a config file', () => {
    const path = file('timers.yaml', 'health_check_interval_secs: 3000000\n');
    expect(errorOf(['--config', path])).toBe(
      `--health-check-interval-secs: must be an integer between 1 and 2073600 (24 days, the longest a timer can wait), got 3000000 (in config file "${path}")`,
    );
  });
});

describe('errors', () => {
  it('unknown flag, with a suggestion', () => {
    expect(errorOf(['--polcy', 'random'])).toBe('unknown flag --polcy (did you mean --policy?)');
    expect(errorOf(['--worker_urls', 'http://a'])).toBe(
      'unknown flag --worker_urls (did you mean --worker-urls?)',
    );
    expect(errorOf(['--worker-url', 'http://a'])).toBe(
      'unknown flag --worker-url (did you mean --worker-urls?)',
    );
    expect(errorOf(['--totally-unrelated'])).toBe('unknown flag --totally-unrelated');
    expect(errorOf(['-x'])).toBe('unknown flag -x');
  });

  it('bad enum value lists the allowed values', () => {
    expect(errorOf(['--policy', 'foo'])).toBe(
      `--policy: invalid value "foo"; allowed: ${POLICY_NAMES.join(', ')}`,
    );
    expect(errorOf(['--log-level', 'trace'])).toBe(
      '--log-level: invalid value "trace"; allowed: debug, info, warn, error',
    );
    expect(errorOf(['--assignment-mode', 'x'])).toBe(
      '--assignment-mode: invalid value "x"; allowed: random, min_load, min_group',
    );
  });

  it('bad numbers name the range', () => {
    expect(errorOf(['--port', 'abc'])).toBe('--port: must be an integer between 1 and 65535, got "abc"');
    expect(errorOf(['--port', '70000'])).toBe('--port: must be an integer between 1 and 65535, got 70000');
    expect(errorOf(['--prometheus-port', '0'])).toBe(
      '--prometheus-port: must be an integer between 1 and 65535, got 0',
    );
    expect(errorOf(['--port', '1.5'])).toMatch(/^--port: must be an integer/);
    expect(errorOf(['--port', '0x10'])).toMatch(/^--port: must be an integer/);
    expect(errorOf(['--cache-threshold', '1.5'])).toBe(
      '--cache-threshold: must be a number between 0 and 1, got 1.5',
    );
    expect(errorOf(['--health-failure-threshold', '0'])).toBe(
      '--health-failure-threshold: must be a positive integer, got 0',
    );
    expect(errorOf(['--health-check-interval-secs', '0'])).toMatch(
      /must be an integer between 1 and 2073600/,
    );
    expect(errorOf(['--health-check-timeout-secs', '-1'])).toMatch(
      /must be an integer between 1 and 2073600/,
    );
    expect(errorOf(['--drain-settle-secs', '-1'])).toBe(
      '--drain-settle-secs: must be an integer between 0 and 2073600 (24 days, the longest a timer can wait), got -1',
    );
    expect(errorOf(['--least-load-default-throughput', '0'])).toMatch(/must be a positive number/);
    expect(errorOf(['--prefix-hash-load-factor', '0.5'])).toMatch(/must be a number >= 1/);
    expect(errorOf(['--prefix-block-chars', '4'])).toBe(
      '--prefix-block-chars: must be an integer between 8 and 4096, got 4',
    );
  });

  it('reports every bad value at once', () => {
    const message = errorOf(['--port', 'x', '--policy', 'y']);
    expect(message.split('\n')).toHaveLength(2);
  });

  it('port conflicts', () => {
    expect(errorOf(['--health-check-port', '30000'])).toBe(
      '--health-check-port: must differ from --port (both are 30000)',
    );
    expect(errorOf(['--prometheus-port', '30000'])).toBe(
      '--prometheus-port: must differ from --port (both are 30000)',
    );
    expect(errorOf(['--health-check-port', '29000'])).toMatch(/must differ from --prometheus-port/);
  });

  it('health endpoint must start with /', () => {
    expect(errorOf(['--health-check-endpoint', 'health'])).toBe(
      '--health-check-endpoint: must start with "/", got "health"',
    );
  });

  it('bad boolean', () => {
    expect(errorOf(['--log-json=yes'])).toBe('--log-json: must be true or false, got "yes"');
    expect(errorOf(['--log-json', 'true'])).toBe(
      'unexpected argument "true" (--log-json is a switch; write --log-json=true)',
    );
    expect(errorOf(['--log-json='])).toMatch(/^--log-json: missing value/);
  });

  it('missing value for a flag', () => {
    expect(errorOf(['--policy'])).toBe('--policy: missing value');
    expect(errorOf(['--policy', '--port', '1'])).toBe('--policy: missing value');
    expect(errorOf(['--worker-urls'])).toBe('--worker-urls: missing value');
    expect(errorOf(['--port='])).toBe('--port: missing value');
    expect(errorOf(['--config'])).toBe('--config: missing value');
  });

  it('a value flag given twice, or a stray argument', () => {
    expect(errorOf(['--port', '1', '--port', '2'])).toBe('--port: given more than once');
    expect(errorOf(['--port', '1', '2'])).toBe('unexpected argument "2"');
    expect(errorOf(['serve'])).toBe('unexpected argument "serve"');
  });

  it('--help and --version are for the caller', () => {
    expect(infoFlag(['--port', '1', '--help'])).toBe('help');
    expect(infoFlag(['-h'])).toBe('help');
    expect(infoFlag(['--version'])).toBe('version');
    expect(infoFlag(['-V'])).toBe('version');
    expect(infoFlag(['--port', '1'])).toBeUndefined();
    expect(() => parse(['--help'])).toThrow(ConfigError);
  });
});

describe('help', () => {
  it('lists every launch flag and its default', () => {
    for (const flag of Object.keys(LAUNCH_FLAGS)) expect(LAUNCH_HELP).toContain(`--${flag}`);
    for (const flag of ['--config', '--help', '--version']) expect(LAUNCH_HELP).toContain(flag);
    expect(LAUNCH_HELP).toMatch(/--port <PORT> +main HTTP port \[default: 30000\]/);
    expect(LAUNCH_HELP).toContain('[default: cache_aware]');
    expect(LAUNCH_HELP).toContain('[default: 536870912]');
    for (const group of ['Workers/server:', 'Routing:', 'Health:', 'Observability:', 'Other:']) {
      expect(LAUNCH_HELP).toContain(`\n${group}\n`);
    }
  });

  it('top-level help lists the subcommands', () => {
    for (const command of ['launch', 'mock-worker', 'demo'])
      expect(TOP_HELP).toMatch(new RegExp(`\\n  ${command} `));
  });

  it('keeps lines within 100 characters', () => {
    for (const line of [...LAUNCH_HELP.split('\n'), ...TOP_HELP.split('\n')]) {
      expect(line.length, line).toBeLessThanOrEqual(100);
    }
  });
});

describe('reliability, admission, auth and tracing flags', () => {
  it('parse retries and breakers; --disable-retries means zero retries', () => {
    const c = parse([
      '--retry-max-retries',
      '2',
      '--retry-initial-backoff-ms',
      '10',
      '--retry-jitter-factor',
      '0',
      '--cb-failure-threshold',
      '3',
      '--cb-window-duration-secs',
      '30',
    ]);
    expect(c.retry).toMatchObject({ maxRetries: 2, initialBackoffMs: 10, jitterFactor: 0 });
    expect(c.circuitBreaker).toMatchObject({ failureThreshold: 3, windowDurationSecs: 30 });
    expect(parse(['--disable-retries']).retry).toMatchObject({ maxRetries: 0, disabled: true });
    expect(errorOf(['--retry-jitter-factor', '2'])).toMatch(
      /--retry-jitter-factor: must be a number between 0 and 1/,
    );
    expect(errorOf(['--retry-initial-backoff-ms', '500', '--retry-max-backoff-ms', '100'])).toMatch(
      /--retry-max-backoff-ms: must be >= --retry-initial-backoff-ms/,
    );
  });

  it('parse admission flags and require the tenant rate-limit file', () => {
    const c = parse([
      '--max-concurrent-requests',
      '8',
      '--queue-size',
      '0',
      '--rate-limit-tokens-per-second',
      '4',
    ]);
    expect(c.admission).toMatchObject({
      maxConcurrentRequests: 8,
      queueSize: 0,
      rateLimitTokensPerSecond: 4,
    });
    const rl = parse(['--tenant-rate-limit-enabled', '--tenant-rate-limit-config', LIMITS_FILE]);
    expect(rl.admission.tenantRateLimit).toBe(true);
    const bad = file('bad-limits.yaml', 'default_policy:\n  requests_per_minut: 5\n');
    expect(errorOf(['--tenant-rate-limit-enabled', '--tenant-rate-limit-config', bad])).toMatch(
      /--tenant-rate-limit-config: .*requests_per_minut/,
    );
    const badPriority = file('bad-priority.yaml', 'classes:\n  urgent: {}\n');
    expect(errorOf(['--priority-scheduler-config', badPriority])).toMatch(
      /--priority-scheduler-config: .*urgent/,
    );
    expect(errorOf(['--tenant-rate-limit-enabled'])).toMatch(
      /--tenant-rate-limit-config: is required when --tenant-rate-limit-enabled is set/,
    );
    expect(errorOf(['--tenant-rate-limit-config', join(dir, 'missing.yaml')])).toMatch(
      /--tenant-rate-limit-config: cannot read/,
    );
    expect(errorOf(['--priority-scheduler-default-max-class', 'urgent'])).toMatch(
      /allowed: bulk, default, interactive, system/,
    );
  });

  it('parse keys without ever echoing them', () => {
    const c = parse([
      '--api-key',
      's3cret',
      '--tenant-api-key',
      'acme:k:with:colons',
      'globex:k2',
      '--control-plane-api-keys',
      'ops:Operator:admin:adm1n',
    ]);
    expect(c.auth.apiKey).toBe('s3cret');
    expect(c.auth.tenantApiKeys).toEqual([
      { tenant: 'acme', key: 'k:with:colons' },
      { tenant: 'globex', key: 'k2' },
    ]);
    expect(c.auth.controlPlaneApiKeys).toEqual([
      { id: 'ops', name: 'Operator', role: 'admin', key: 'adm1n' },
    ]);
    const m = errorOf(['--control-plane-api-keys', 'ops:Operator:root:topsecret', 'bad']);
    expect(m).toMatch(/role "root"; allowed: admin, user/);
    expect(m).toMatch(/entry 2 is malformed; expected id:name:role:key/);
    expect(m).not.toMatch(/topsecret/);
    expect(errorOf(['--tenant-api-key', 'nokey'])).toMatch(/expected tenant:key/);
  });

  it("read SMG's CONTROL_PLANE_API_KEYS environment variable", () => {
    const c = parseLaunchArgs([], { CONTROL_PLANE_API_KEYS: 'a:A:admin:k1,b:B:user:k2' });
    expect(c.auth.controlPlaneApiKeys.map((k) => k.role)).toEqual(['admin', 'user']);
  });

  it('normalise the OTLP endpoint', () => {
    expect(parse(['--enable-trace', '--otlp-traces-endpoint', 'collector:4318']).tracing).toEqual({
      enabled: true,
      otlpTracesEndpoint: 'http://collector:4318/v1/traces',
    });
    expect(errorOf(['--otlp-traces-endpoint', 'grpc://x:4317'])).toMatch(/gRPC OTLP is not supported/);
  });
});
