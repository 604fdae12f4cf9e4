import { describe, expect, it } from 'vitest';
import { parseLaunchArgs } from '../cli/config.js';
import { POLICY_NAMES } from '../routing/types.js';
import type { ModelPolicy } from '../state/registry-doc.js';
import {
  PARAMS_OF_POLICY,
  POLICY_PARAMS,
  modelPolicyReader,
  parsePolicyParams,
  withPolicyParams,
} from './policy-params.js';

const GLOBAL = parseLaunchArgs([], {}).policyParams;

/** a valid value of each parameter, other than its default */
const SAMPLE: Record<string, string | number> = {
  cache_threshold: 0.75,
  balance_abs_threshold: 8,
  balance_rel_threshold: 2.5,
  balance_token_usage_threshold: 0.5,
  overload_token_usage_threshold: 0.9,
  max_idle_secs: 60,
  assignment_mode: 'min_group',
  prefix_token_count: 128,
  prefix_hash_load_factor: 1.5,
  least_load_kv_pressure_weight: 0.3,
  least_load_default_throughput: 500,
  least_load_mean_prefill_tokens: 2048,
};

describe('per-model policy parameters', () => {
  it('each is its flag: same name in snake_case, same field, same value as the flag gives', () => {
    expect([...POLICY_PARAMS.keys()].sort()).toEqual(Object.keys(SAMPLE).sort());
    for (const [name, def] of POLICY_PARAMS) {
      expect(name).toBe(def.flag.replace(/-/g, '_'));
      const policy = POLICY_NAMES.find((p) => PARAMS_OF_POLICY[p].includes(name));
      expect(policy, `${name} applies to some policy`).toBeDefined();
      const fromFlag = parseLaunchArgs([`--${def.flag}`, String(SAMPLE[name])], {}).policyParams;
      const parsed = parsePolicyParams(policy!, { [name]: SAMPLE[name] });
      expect(parsed).toEqual({ params: { [name]: SAMPLE[name] } });
      expect(withPolicyParams(GLOBAL, policy!, { [name]: SAMPLE[name] })).toEqual(fromFlag);
    }
    for (const list of Object.values(PARAMS_OF_POLICY))
      for (const n of list) expect(POLICY_PARAMS.has(n)).toBe(true);
  });

  it('refuses what the flags refuse, unknown names and parameters of another policy, with a clear message', () => {
    const bad: [string, unknown, RegExp][] = [
      [
        'cache_aware',
        { cache_threshold: 2 },
        /^params\.cache_threshold: must be a number between 0 and 1, got 2$/,
      ],
      ['cache_aware', { balance_abs_threshold: -1 }, /params\.balance_abs_threshold: must be/],
      [
        'manual',
        { assignment_mode: 'fastest' },
        /params\.assignment_mode: invalid value "fastest"; allowed: random, min_load, min_group/,
      ],
      [
        'cache_aware',
        { max_idle_secs: 5 },
        /"max_idle_secs" does not apply to cache_aware; cache_aware takes cache_threshold, /,
      ],
      ['round_robin', { cache_threshold: 0.5 }, /round_robin takes no parameters/],
      [
        'cache_aware',
        { 'cache-threshold': 0.5 },
        /unknown parameter "cache-threshold" \(did you mean "cache_threshold"\?\)/,
      ],
      ['cache_aware', { cacheThreshold: 0.5 }, /did you mean "cache_threshold"/],
      ['cache_aware', JSON.parse('{"__proto__": 1}'), /unknown parameter "__proto__"/],
      ['cache_aware', { eviction_interval: 10 }, /unknown parameter "eviction_interval"/],
      ['cache_aware', [0.5], /"params" must be a JSON object/],
      ['cache_aware', 'x', /"params" must be a JSON object/],
    ];
    for (const [policy, raw, message] of bad) {
      const r = parsePolicyParams(policy as 'cache_aware', raw);
      expect('error' in r ? r.error : r, JSON.stringify(raw)).toMatch(message);
    }
    expect(parsePolicyParams('cache_aware', undefined)).toEqual({ params: {} });
  });

  it('stored values this node does not accept fall back to the global ones', () => {
    const p = withPolicyParams(GLOBAL, 'cache_aware', {
      cache_threshold: 7,
      balance_abs_threshold: 3,
      max_idle_secs: 5,
      future_knob: 1,
    });
    expect(p).toEqual({ ...GLOBAL, balanceAbsThreshold: 3 });
    expect(withPolicyParams(GLOBAL, 'cache_aware', { future_knob: 1 })).toBe(GLOBAL);
  });

  it('the reader gives one choice object per stored setting', () => {
    let policies = new Map<string, ModelPolicy>([
      ['m', { policy: 'cache_aware', params: { cache_threshold: 0.9 }, updatedAt: 1 }],
      ['x', { policy: 'nonsense', updatedAt: 1 }],
    ]);
    const read = modelPolicyReader(() => policies, GLOBAL);
    const a = read('m');
    expect(a).toEqual({ name: 'cache_aware', params: { ...GLOBAL, cacheThreshold: 0.9 } });
    expect(read('m')).toBe(a);
    expect(read('x')).toBeUndefined();
    expect(read('other')).toBeUndefined();
    policies = new Map([['m', { policy: 'cache_aware', updatedAt: 2 }]]);
    expect(read('m')).toEqual({ name: 'cache_aware', params: GLOBAL });
  });
});
