/**
 * Per-model policy parameters (`PUT /mesh/policies/{model}` `{"policy", "params"}`): which of the
 * `--policy` family of flags each policy reads, spelled as in SMG's JSON (snake_case of the flag:
 * `cache_threshold` for `--cache-threshold`), validated with the flags' own zod fields
 * (LAUNCH_SHAPE), and laid over the global values for that model only.
 *
 * Not per model: `--eviction-interval`, `--max-tree-size`, `--block-size` (the prefix index and
 * its eviction timer are shared by every model) and the routing-key-override instance.
 *
 * Owns: the parameter names, which policy reads which, their parsing. Never: I/O, routing.
 */
import { LAUNCH_SHAPE, type LaunchKey } from '../cli/config.js';
import { isPolicyName } from '../routing/factory.js';
import type { PolicyChoice } from '../routing/registry.js';
import type { PolicyName, PolicyParams } from '../routing/types.js';
import type { ModelPolicy, PolicyParam } from '../state/registry-doc.js';

interface ParamDef {
  /** the flag whose zod field validates it */
  flag: LaunchKey;
  field: keyof PolicyParams;
}

/** JSON name → flag and PolicyParams field (a Map: request keys never reach Object.prototype) */
export const POLICY_PARAMS: ReadonlyMap<string, ParamDef> = new Map<string, ParamDef>([
  ['cache_threshold', { flag: 'cache-threshold', field: 'cacheThreshold' }],
  ['balance_abs_threshold', { flag: 'balance-abs-threshold', field: 'balanceAbsThreshold' }],
  ['balance_rel_threshold', { flag: 'balance-rel-threshold', field: 'balanceRelThreshold' }],
  [
    'balance_token_usage_threshold',
    { flag: 'balance-token-usage-threshold', field: 'balanceTokenUsageThreshold' },
  ],
  [
    'overload_token_usage_threshold',
    { flag: 'overload-token-usage-threshold', field: 'overloadTokenUsageThreshold' },
  ],
  ['max_idle_secs', { flag: 'max-idle-secs', field: 'maxIdleSecs' }],
  ['assignment_mode', { flag: 'assignment-mode', field: 'assignmentMode' }],
  ['prefix_token_count', { flag: 'prefix-token-count', field: 'prefixTokenCount' }],
  ['prefix_hash_load_factor', { flag: 'prefix-hash-load-factor', field: 'prefixHashLoadFactor' }],
  [
    'least_load_kv_pressure_weight',
    { flag: 'least-load-kv-pressure-weight', field: 'leastLoadKvPressureWeight' },
  ],
  [
    'least_load_default_throughput',
    { flag: 'least-load-default-throughput', field: 'leastLoadDefaultThroughput' },
  ],
  [
    'least_load_mean_prefill_tokens',
    { flag: 'least-load-mean-prefill-tokens', field: 'leastLoadMeanPrefillTokens' },
  ],
]);

/** the parameters each policy reads (the others take none) */
export const PARAMS_OF_POLICY: Readonly<Record<PolicyName, readonly string[]>> = {
  cache_aware: [
    'cache_threshold',
    'balance_abs_threshold',
    'balance_rel_threshold',
    'balance_token_usage_threshold',
    'overload_token_usage_threshold',
  ],
  bucket: ['balance_abs_threshold', 'balance_rel_threshold'],
  manual: ['max_idle_secs', 'assignment_mode'],
  prefix_hash: ['prefix_token_count', 'prefix_hash_load_factor'],
  least_load: [
    'least_load_kv_pressure_weight',
    'least_load_default_throughput',
    'least_load_mean_prefill_tokens',
  ],
  random: [],
  round_robin: [],
  passthrough: [],
  power_of_two: [],
  consistent_hashing: [],
};

function takes(policy: PolicyName): string {
  const names = PARAMS_OF_POLICY[policy];
  return names.length === 0 ? `${policy} takes no parameters` : `${policy} takes ${names.join(', ')}`;
}

/**
 * Validates a request's `params` for `policy`: a JSON object of the parameters that policy reads,
 * each checked as its flag is. Returns the values to store, or the first problem as a message.
 */
export function parsePolicyParams(
  policy: PolicyName,
  raw: unknown,
): { params: Record<string, PolicyParam> } | { error: string } {
  if (raw === undefined || raw === null) return { params: {} };
  if (typeof raw !== 'object' || Array.isArray(raw)) return { error: '"params" must be a JSON object' };
  const params: Record<string, PolicyParam> = {};
  for (const [name, value] of Object.entries(raw as Record<string, unknown>)) {
    const def = POLICY_PARAMS.get(name);
    if (!def) {
      const snake = name.replace(/-/g, '_').replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);
      const hint = snake !== name && POLICY_PARAMS.has(snake) ? ` (did you mean "${snake}"?)` : '';
      return { error: `unknown parameter "${name}"${hint}; ${takes(policy)}` };
    }
    if (!PARAMS_OF_POLICY[policy].includes(name))
      return { error: `parameter "${name}" does not apply to ${policy}; ${takes(policy)}` };
    const parsed = LAUNCH_SHAPE[def.flag].safeParse(value);
    if (!parsed.success)
      return { error: `params.${name}: ${parsed.error.issues[0]?.message ?? 'invalid value'}` };
    params[name] = parsed.data as PolicyParam;
  }
  return { params };
}

/**
 * The global parameters with a model's stored ones over them. Stored values are checked again:
 * what a foreign or newer peer wrote and this node does not accept is left out (the global value
 * applies), never an error on the routing path.
 */
export function withPolicyParams(
  base: PolicyParams,
  policy: PolicyName,
  stored: Readonly<Record<string, PolicyParam>> | undefined,
): PolicyParams {
  if (!stored) return base;
  const out: PolicyParams = { ...base };
  let changed = false;
  for (const [name, value] of Object.entries(stored)) {
    const def = POLICY_PARAMS.get(name);
    if (!def || !PARAMS_OF_POLICY[policy].includes(name)) continue;
    const parsed = LAUNCH_SHAPE[def.flag].safeParse(value);
    if (!parsed.success) continue;
    (out as unknown as Record<string, unknown>)[def.field] = parsed.data;
    changed = true;
  }
  return changed ? out : base;
}

/**
 * `PolicyRegistryOptions.modelPolicy` over the registry document's policies: one choice object per
 * stored setting (the document keeps a setting's object while it is unchanged), so the registry
 * replaces a model's instance exactly when its policy or parameters change, on every peer.
 */
export function modelPolicyReader(
  policies: () => ReadonlyMap<string, ModelPolicy>,
  base: PolicyParams,
): (model: string) => PolicyChoice | undefined {
  const choices = new WeakMap<ModelPolicy, PolicyChoice>();
  return (model) => {
    const p = policies().get(model);
    if (!p || !isPolicyName(p.policy)) return undefined;
    let choice = choices.get(p);
    if (!choice) {
      choice = { name: p.policy, params: withPolicyParams(base, p.policy, p.params) };
      choices.set(p, choice);
    }
    return choice;
  };
}
