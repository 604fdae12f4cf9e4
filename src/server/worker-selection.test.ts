/**
 * WorkerSelection against a real Replica: what it accepts from a request body (the model's type,
 * how deeply the body nests), how aliases resolve whatever the client sends, and the bounded set
 * of `model` metric labels.
 */
import { describe, expect, it } from 'vitest';
import { SmgError } from '../protocols/errors.js';
import { PolicyRegistry } from '../routing/registry.js';
import { makeContext, testParams } from '../routing/testing.js';
import { Replica } from '../state/replica.js';
import { testWorkerSpec } from '../testing/worker-spec.js';
import { MAX_BODY_DEPTH } from '../protocols/json-depth.js';
import { RoutingInput, type Endpoint } from '../protocols/routing-text.js';
import { RequestBody } from './body-reader.js';
import { parseInferenceBody } from './proxy.js';
import { OTHER_MODEL_LABEL, WorkerSelection } from './worker-selection.js';

/** what the request path hands selection for a parsed body */
const input = (endpoint: Endpoint, body: Record<string, unknown>) =>
  new RoutingInput(endpoint, { value: body }, () => ({ value: body }));

function selection(
  workers: { url: string; models: string[] }[],
  aliases: Record<string, string> = {},
  policy: 'round_robin' | 'cache_aware' = 'round_robin',
): { sel: WorkerSelection; replica: Replica } {
  const replica = new Replica({ nodeId: 'n1' });
  workers.forEach((w, i) => {
    const id = `w${i}`;
    replica.apply({ kind: 'worker.upsert', id, spec: testWorkerSpec(w.url, w.models), hlc: replica.tick() });
    replica.apply({ kind: 'worker.health', id, status: 'ready', hlc: replica.tick() });
  });
  const policies = new PolicyRegistry({
    defaultPolicy: policy,
    params: testParams(),
    ctx: makeContext(),
    routingKeyOverride: false,
  });
  return {
    sel: new WorkerSelection(replica, policies, { enableIgw: false, modelAliases: aliases }),
    replica,
  };
}

function thrown(fn: () => unknown): SmgError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(SmgError);
    return err as SmgError;
  }
  throw new Error('expected an SmgError');
}

const nested = (depth: number): unknown => {
  let v: unknown = 'x';
  for (let i = 0; i < depth; i++) v = [v];
  return v;
};

describe('WorkerSelection: the model a request names', () => {
  it('resolves aliases through a Map: Object.prototype member names are ordinary models', () => {
    const { sel } = selection([{ url: 'http://a:1', models: [] }], { fast: 'llama', constructor: 'tiny' });
    expect(sel.resolveModel('fast')).toBe('llama');
    expect(sel.resolveModel('constructor')).toBe('tiny');
    for (const m of ['toString', '__proto__', 'hasOwnProperty', 'valueOf'])
      expect(sel.resolveModel(m)).toBe(m);
    expect(sel.resolveModel(undefined)).toBe('');
    expect(sel.resolveModel('')).toBe('');
  });

  it('answers a model of another type than string with 400, never as if it were absent', () => {
    const { sel } = selection([{ url: 'http://a:1', models: [] }]);
    for (const [model, type] of [
      [42, 'number'],
      [null, 'null'],
      [{ id: 'm' }, 'object'],
      [['m'], 'object'],
      [true, 'boolean'],
    ] as const) {
      const e = thrown(() => sel.select(input('chat', { model, messages: [] }), {}));
      expect(e.status).toBe(400);
      expect(e.code).toBe('invalid_request');
      expect(e.message).toBe(`"model" must be a string, got ${type}`);
    }
  });

  it('routes a model named like an Object.prototype member to the fleet (not to a function)', () => {
    const { sel } = selection([{ url: 'http://a:1', models: ['m'] }]);
    const s = sel.select(input('chat', { model: 'constructor', messages: [] }), {});
    expect(s.model).toBe('constructor');
    expect(s.worker.url).toBe('http://a:1');
  });
});

describe('inference bodies: depth', () => {
  /** the body `{"model":"m","<field>":[[…"x"…]]}` as a client sends it (built as text: too deep to stringify) */
  const parse = (field: string, depth: number) => {
    const raw = Buffer.from(`{"model":"m","${field}":${'['.repeat(depth)}"x"${']'.repeat(depth)}}`);
    return parseInferenceBody(new RequestBody([raw], raw.length));
  };

  it(`accepts ${MAX_BODY_DEPTH} levels and answers 400 beyond, on every endpoint's field`, () => {
    // the body object is level 1, so the prompt may nest MAX_BODY_DEPTH - 1 lists
    const ok = parse('prompt', MAX_BODY_DEPTH - 1);
    const { sel } = selection([{ url: 'http://a:1', models: [] }], {}, 'cache_aware');
    expect(sel.select(input('completions', ok.value), {}).worker.url).toBe('http://a:1');
    for (const field of ['prompt', 'text', 'input', 'messages']) {
      const e = thrown(() => parse(field, 8_000));
      expect(e.status).toBe(400);
      expect(e.code).toBe('invalid_request_body');
      expect(e.message).toBe(`Invalid JSON body: the body nests more than ${MAX_BODY_DEPTH} levels deep`);
    }
  });

  it('routing-text extraction survives deep inputs it is handed directly (no recursion past two lists)', () => {
    const { sel } = selection([{ url: 'http://a:1', models: [] }], {}, 'cache_aware');
    for (const endpoint of ['completions', 'generate', 'embeddings'] as const) {
      const deep = { model: 'm', prompt: nested(8_000), text: nested(8_000), input: nested(8_000) };
      expect(sel.select(input(endpoint, deep), {}).worker.url).toBe('http://a:1');
    }
  });
});

describe('WorkerSelection: model metric labels', () => {
  it('labels served models and alias names as themselves, anything else `other`', () => {
    const { sel } = selection([{ url: 'http://a:1', models: ['llama'] }], { fast: 'tiny' });
    expect(sel.modelLabel('llama')).toBe('llama');
    expect(sel.modelLabel('fast')).toBe('fast');
    expect(sel.modelLabel('tiny')).toBe('tiny');
    expect(sel.modelLabel('')).toBe('default');
    for (const m of ['gpt-5', 'constructor', '__proto__', 'x'.repeat(10_000)])
      expect(sel.modelLabel(m)).toBe(OTHER_MODEL_LABEL);
  });

  it('a wildcard fleet routes 3,000 distinct models under one label', () => {
    const { sel } = selection([{ url: 'http://a:1', models: [] }]);
    const labels = new Set<string>();
    for (let i = 0; i < 3_000; i++) {
      const s = sel.select(input('chat', { model: `client-model-${i}`, messages: [] }), {});
      expect(s.model).toBe(`client-model-${i}`);
      labels.add(sel.modelLabel(s.model));
    }
    expect([...labels]).toEqual([OTHER_MODEL_LABEL]);
  });

  it('a model becomes its own label once a worker serves it', () => {
    const { sel, replica } = selection([{ url: 'http://a:1', models: [] }]);
    expect(sel.modelLabel('late')).toBe(OTHER_MODEL_LABEL);
    replica.apply({
      kind: 'worker.upsert',
      id: 'w9',
      spec: testWorkerSpec('http://b:1', ['late']),
      hlc: replica.tick(),
    });
    expect(sel.modelLabel('late')).toBe('late');
  });
});
