/**
 * The one WorkerSpec schema: what POST/PUT/PATCH accept (SMG's documented fields), what they
 * refuse (unknown fields, unbounded sizes, durations no timer can wait), and the same check on
 * specs replicated from peers.
 */
import { describe, expect, it } from 'vitest';
import { Replica } from '../state/replica.js';
import type { WorkerSpec } from '../state/worker.js';
import {
  WORKER_SPEC_LIMITS,
  checkStoredWorkerSpec,
  checkWorkerUrl,
  parseWorkerPatch,
  parseWorkerSpec,
} from './worker-spec.js';

function errorOf(body: unknown): string {
  const r = parseWorkerSpec(body);
  if (!('error' in r)) throw new Error(`expected an error for ${JSON.stringify(body).slice(0, 200)}`);
  return r.error;
}

function specOf(body: unknown): WorkerSpec {
  const r = parseWorkerSpec(body);
  if ('error' in r) throw new Error(r.error);
  return r.spec;
}

/** every field SMG documents for a WorkerSpec (inventory §2.5) */
const FULL_SMG_SPEC = {
  url: 'http://10.0.0.5:8000',
  models: [{ id: 'llama', context_length: 8192 }, 'qwen'],
  model_id: 'mistral',
  worker_type: 'prefill',
  connection_mode: 'http',
  runtime_type: 'vllm',
  provider: 'openai',
  labels: { policy: 'round_robin', tokenizer_path: '/models/llama' },
  priority: 10,
  cost: 0.5,
  api_key: 'sk-worker',
  bootstrap_port: 8998,
  dp_base_url: 'http://10.0.0.5:8000',
  dp_rank: 1,
  dp_size: 4,
  kv_connector: 'NixlConnector',
  kv_role: 'kv_producer',
  kv_engine_id: 'engine-7',
  kv_block_size: 16,
  health: {
    timeout_secs: 5,
    check_interval_secs: 30,
    success_threshold: 1,
    failure_threshold: 3,
    disable_health_check: false,
    drain_settle_secs: 0,
  },
  http_pool: {
    pool_max_idle_per_host: 8,
    pool_idle_timeout_secs: 90,
    timeout_secs: 60,
    connect_timeout_secs: 5,
  },
  resilience: {
    max_retries: 2,
    initial_backoff_ms: 10,
    max_backoff_ms: 1000,
    backoff_multiplier: 2,
    jitter_factor: 0.1,
    disable_retry: false,
    cb_failure_threshold: 5,
    cb_success_threshold: 2,
    cb_timeout_secs: 30,
    cb_window_secs: 60,
    disable_circuit_breaker: false,
    retryable_status_codes: [502, 503],
  },
  max_connection_attempts: 5,
  load_monitor_interval_secs: 10,
  multimodal_tensor_transport: 'shm',
  multimodal_shm_min_bytes: 65536,
  zmq_handshake_address: 'tcp://10.0.0.5:5557',
};

describe('WorkerSpec: what is accepted', () => {
  it('accepts every field SMG documents, storing the ones this version does not act on as given', () => {
    const spec = specOf(FULL_SMG_SPEC);
    expect(spec.models).toEqual(['llama', 'qwen', 'mistral']);
    expect(spec.runtime).toBe('vllm');
    expect(spec).toMatchObject({
      dp_base_url: 'http://10.0.0.5:8000',
      dp_rank: 1,
      dp_size: 4,
      kv_connector: 'NixlConnector',
      kv_role: 'kv_producer',
      kv_engine_id: 'engine-7',
      kv_block_size: 16,
      multimodal_tensor_transport: 'shm',
      multimodal_shm_min_bytes: 65536,
      zmq_handshake_address: 'tcp://10.0.0.5:5557',
      http_pool: FULL_SMG_SPEC.http_pool,
      resilience: FULL_SMG_SPEC.resilience,
    });
  });

  it('applies SMG defaults and nothing else for a bare URL', () => {
    expect(specOf({ url: '127.0.0.1:8000' })).toEqual({
      url: 'http://127.0.0.1:8000',
      models: [],
      worker_type: 'regular',
      connection_mode: 'http',
      runtime: 'unspecified',
      labels: {},
      priority: 50,
      cost: 1,
      health: {},
      max_connection_attempts: 20,
    });
  });

  it('accepts each bound exactly', () => {
    const at = {
      url: `http://${'h'.repeat(63)}.example:1/${'p'.repeat(1000)}`,
      labels: Object.fromEntries(Array.from({ length: WORKER_SPEC_LIMITS.labels }, (_, i) => [`k${i}`, 'v'])),
      models: Array.from({ length: WORKER_SPEC_LIMITS.models }, (_, i) => `m${i}`),
      health: { check_interval_secs: 2_073_600 },
      resilience: { max_backoff_ms: 3_600_000 },
    };
    expect(specOf(at).models).toHaveLength(WORKER_SPEC_LIMITS.models);
  });
});

describe('WorkerSpec: what is refused, with a message that names it', () => {
  it('unknown fields, top level and nested, like PATCH always did', () => {
    expect(errorOf({ url: 'http://a:1', bogus: 1 })).toBe('body: unknown field "bogus"');
    expect(errorOf({ url: 'http://a:1', health: { intervall: 5 } })).toBe(
      'health: unknown field "intervall"',
    );
    expect(errorOf({ url: 'http://a:1', http_pool: { max: 1 } })).toBe('http_pool: unknown field "max"');
    const many = Object.fromEntries(Array.from({ length: 10_000 }, (_, i) => [`x${i}`, i]));
    expect(errorOf({ url: 'http://a:1', ...many })).toBe(
      'body: unknown fields "x0", "x1", "x2", "x3", "x4" and 9995 more',
    );
  });

  it('a 100 KB host name, a 1 MB path', () => {
    expect(errorOf({ url: `http://${'a'.repeat(100_000)}:1` })).toMatch(
      /^url: Too big: expected string to have <=2048 characters/,
    );
    expect(errorOf({ url: `http://${'a.'.repeat(200)}example:1` })).toBe(
      'url: invalid URL: the host name is 407 characters long; the limit is 253',
    );
    expect(errorOf({ url: `http://127.0.0.1:1/${'p'.repeat(1_000_000)}` })).toMatch(/^url: Too big/);
    expect(checkWorkerUrl(`http://x:1/${'p'.repeat(3000)}`)).toEqual({
      ok: false,
      reason: 'worker URL is 3011 characters long; the limit is 2048',
    });
  });

  it('100,000 labels, over-long label names and values, and __proto__ as a label', () => {
    const labels = Object.fromEntries(Array.from({ length: 100_000 }, (_, i) => [`k${i}`, 'v']));
    expect(errorOf({ url: 'http://a:1', labels })).toBe('labels: at most 64 labels');
    expect(errorOf({ url: 'http://a:1', labels: { ['k'.repeat(100_000)]: 'v' } })).toMatch(
      /^labels\.k{64}…: Too big: expected string to have <=128 characters$/,
    );
    expect(errorOf({ url: 'http://a:1', labels: { k: 'v'.repeat(1025) } })).toMatch(/^labels\.k: Too big/);
    expect(errorOf(JSON.parse('{"url":"http://a:1","labels":{"__proto__":"x"}}'))).toBe(
      'labels: "__proto__" is not allowed as a label name',
    );
  });

  it('too many or too long model ids, over-long names and keys', () => {
    expect(errorOf({ url: 'http://a:1', models: Array.from({ length: 257 }, (_, i) => `m${i}`) })).toMatch(
      /^models: Too big: expected array to have <=256 items/,
    );
    expect(errorOf({ url: 'http://a:1', models: ['m'.repeat(257)] })).toMatch(/^models\.0/);
    expect(errorOf({ url: 'http://a:1', models: [{ id: 'm'.repeat(257) }] })).toMatch(/^models\.0/);
    expect(errorOf({ url: 'http://a:1', runtime: 'r'.repeat(65) })).toMatch(/^runtime: Too big/);
    expect(errorOf({ url: 'http://a:1', provider: 'p'.repeat(65) })).toMatch(/^provider: Too big/);
    expect(errorOf({ url: 'http://a:1', api_key: 'k'.repeat(4097) })).toMatch(/^api_key: Too big/);
  });

  it('durations no timer can wait (Node turns them into a 1 ms loop)', () => {
    expect(errorOf({ url: 'http://a:1', health: { check_interval_secs: 3_000_000 } })).toBe(
      'health.check_interval_secs: must be at most 2073600 (24 days, the longest a timer can wait)',
    );
    for (const [block, key] of [
      ['health', 'timeout_secs'],
      ['health', 'drain_settle_secs'],
      ['resilience', 'cb_timeout_secs'],
      ['resilience', 'cb_window_secs'],
      ['http_pool', 'timeout_secs'],
    ] as const) {
      expect(errorOf({ url: 'http://a:1', [block]: { [key]: 3_000_000 } })).toMatch(
        /must be at most 2073600/,
      );
    }
    expect(errorOf({ url: 'http://a:1', load_monitor_interval_secs: 3_000_000 })).toMatch(
      /must be at most 2073600/,
    );
    expect(errorOf({ url: 'http://a:1', resilience: { max_backoff_ms: 3_600_001 } })).toBe(
      'resilience.max_backoff_ms: must be at most 3600000 (one hour)',
    );
  });

  it('a spec that would not fit one replicated write, whatever its fields', () => {
    const labels = Object.fromEntries(Array.from({ length: 64 }, (_, i) => [`k${i}`, 'v'.repeat(1000)]));
    expect(errorOf({ url: 'http://a:1', labels })).toMatch(
      /^the worker spec is \d+ bytes as JSON; the limit is 32768 \(it is replicated to every peer in one message\)$/,
    );
  });

  it('bodies that are not objects, wrong types, other connection modes', () => {
    for (const body of [null, [], 'x', 42, true])
      expect(errorOf(body)).toBe('body: expected a JSON object (a WorkerSpec)');
    expect(errorOf({ url: 42 })).toMatch(/^url: Invalid input: expected string/);
    expect(errorOf({ url: 'http://a:1', priority: -1 })).toMatch(/^priority: Too small/);
    expect(errorOf({ url: 'http://a:1', connection_mode: 'grpc' })).toBe(
      'connection_mode: only "http" is supported in this version',
    );
    expect(errorOf({ url: 'http://a:1', dp_rank: 4, dp_size: 4 })).toBe(
      'dp_rank: must be below dp_size (4), got 4',
    );
  });

  it('lists at most five problems', () => {
    const message = errorOf({
      url: 1,
      priority: 'a',
      cost: 'b',
      labels: 1,
      health: 1,
      resilience: 1,
      models: 1,
    });
    expect(message.split('; ')).toHaveLength(6);
    expect(message).toMatch(/\(2 more problems\)$/);
  });
});

describe('WorkerSpec: PATCH takes the patchable subset with the same field schemas', () => {
  it('accepts the patchable fields', () => {
    expect(
      parseWorkerPatch({
        priority: 1,
        cost: 2,
        labels: { a: 'b' },
        api_key: 'k',
        health: { timeout_secs: 3 },
      }),
    ).toEqual({
      patch: { priority: 1, cost: 2, labels: { a: 'b' }, api_key: 'k', health: { timeout_secs: 3 } },
    });
    expect(parseWorkerPatch({})).toEqual({ patch: {} });
  });

  it('refuses other spec fields, unknown fields and out-of-bounds values the same way', () => {
    expect(parseWorkerPatch({ url: 'http://b:1' })).toEqual({ error: 'body: unknown field "url"' });
    expect(parseWorkerPatch({ health: { check_interval_secs: 3_000_000 } })).toEqual({
      error: 'health.check_interval_secs: must be at most 2073600 (24 days, the longest a timer can wait)',
    });
    expect(
      parseWorkerPatch({ labels: Object.fromEntries(Array.from({ length: 65 }, (_, i) => [`k${i}`, 'v'])) }),
    ).toEqual({
      error: 'labels: at most 64 labels',
    });
    expect(parseWorkerPatch(null)).toEqual({
      error: 'body: expected a JSON object with some of priority, cost, labels, api_key, health',
    });
  });
});

describe('WorkerSpec: specs replicated from peers', () => {
  it('normalises a valid stored spec and refuses what the API would refuse', () => {
    const spec = specOf({ url: 'http://a:1', models: ['m'] });
    expect(checkStoredWorkerSpec(JSON.parse(JSON.stringify(spec)))).toEqual(spec);
    expect(checkStoredWorkerSpec({ ...spec, health: { check_interval_secs: 3_000_000 } })).toBeUndefined();
    expect(checkStoredWorkerSpec({ ...spec, injected: true })).toBeUndefined();
    expect(checkStoredWorkerSpec({ ...spec, url: `http://${'a'.repeat(300)}:1` })).toBeUndefined();
  });

  it('a peer without the check cannot put a refused spec into a checking node’s registry', () => {
    const a = new Replica({ nodeId: 'a' });
    const b = new Replica({ nodeId: 'b', workerSpecCheck: checkStoredWorkerSpec });
    a.onRegistryChanges((changes, source) => {
      if (source === 'local') b.applyRegistryChanges(changes);
    });
    const good = specOf({ url: 'http://good:1', models: ['m'] });
    const bad = {
      ...specOf({ url: 'http://bad:1', models: ['m'] }),
      health: { check_interval_secs: 3_000_000 },
      extra: '[['.repeat(10_000),
    } as unknown as WorkerSpec;
    a.writeRegistry((d) => d.upsertWorker('w-good', good));
    a.writeRegistry((d) => d.upsertWorker('w-bad', bad));
    // the writer keeps what it wrote; the checking peer drops it and counts it
    expect(a.registry.list().map((w) => w.url)).toEqual(['http://bad:1', 'http://good:1']);
    expect(b.registry.list().map((w) => w.url)).toEqual(['http://good:1']);
    expect(b.doc.invalidEntries()).toBe(1);
    // and refuses the same spec written locally, before it enters the replicated history
    expect(() => b.writeRegistry((d) => d.upsertWorker('w-bad2', bad))).toThrow(/does not pass validation/);
  });
});
