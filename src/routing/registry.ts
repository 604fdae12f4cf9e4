/**
 * PolicyRegistry: one policy instance per model (key = model id, '' for requests without one),
 * created lazily on the model's first routed request (SMG creates it when the model's first worker
 * registers; same effect, no instance for models nobody asks for).
 *
 * Which policy: the `--policy` default, unless a worker of the model carries the label
 * `policy=<name>` (the first such worker by URL wins; unknown names are ignored). When the label
 * changes, a fresh instance replaces the old one. Label-created policies use the CLI-supplied
 * params: SMG gives them the policy structs' built-in defaults (e.g. cache_aware 0.5 / 32 / 1.1
 * instead of the CLI's 0.3 / 64 / 1.5 — inventory §3.6), which makes a label silently change the
 * tuning; we deliberately don't.
 *
 * A model's policy set cluster-wide (`PUT /mesh/policies/{model}`) wins over labels and may carry
 * parameters of its own, which replace the global ones for that model; when the name or the
 * parameters change, a fresh instance replaces the old one.
 *
 * The label is read in `policyFor` and `workersChanged`, which take the model's full worker list
 * (routable or not); `select` never reads it, as it sees only the routable candidates and a
 * labelled worker going unhealthy must not flip the model's policy and drop its state.
 *
 * Routing-key override (`--routing-key-override`): a request with `x-smg-routing-key` whose model
 * policy is neither manual nor consistent_hashing (both already honour the key) is decided by one
 * shared manual instance, as in SMG.
 *
 * Owns: the instances. Never: I/O, timers (the gateway calls `maintain` every --eviction-interval).
 */
import type { WorkerView } from '../state/registry.js';
import { createPolicy, isPolicyName } from './factory.js';
import { routingKey } from './headers.js';
import { ManualPolicy } from './manual.js';
import type { PolicyName, PolicyParams, RouteRequest, RoutingContext, RoutingPolicy } from './types.js';

export const POLICY_LABEL = 'policy';

/** which policy a model gets, with which parameters */
export interface PolicyChoice {
  readonly name: PolicyName;
  readonly params: PolicyParams;
}

export interface PolicyRegistryOptions {
  defaultPolicy: PolicyName;
  params: PolicyParams;
  ctx: RoutingContext;
  routingKeyOverride: boolean;
  /**
   * A model's policy set cluster-wide (`PUT /mesh/policies/{model}`); wins over worker labels.
   * Called per request: return the same object while the setting does not change (a new object
   * replaces the model's instance).
   */
  modelPolicy?: (model: string) => PolicyChoice | undefined;
}

interface ModelEntry extends PolicyChoice {
  policy: RoutingPolicy;
}

export class PolicyRegistry {
  private readonly entries = new Map<string, ModelEntry>();
  private override: ManualPolicy | undefined;
  /** `wanted()` per worker array: the registry's views are immutable and reused until they change */
  private readonly wantedCache = new WeakMap<readonly WorkerView[], PolicyName>();
  /** the choice of a label or the default, per policy name: the global parameters */
  private readonly plainChoices = new Map<PolicyName, PolicyChoice>();

  constructor(private readonly opts: PolicyRegistryOptions) {}

  /** the model's policy for this worker list, created or replaced as the `policy` label says */
  policyFor(model: string, workers: readonly WorkerView[]): RoutingPolicy {
    const want = this.wantedFor(model, workers);
    const cur = this.entries.get(model);
    if (cur && cur.name === want.name && cur.params === want.params) return cur.policy;
    const policy = createPolicy(want.name, want.params, this.opts.ctx);
    if (workers.length > 0) policy.onWorkersChanged?.(workers);
    this.entries.set(model, { name: want.name, params: want.params, policy });
    return policy;
  }

  /** picks a worker among `workers` (the model's routable candidates); undefined ⇒ none */
  select(model: string, workers: readonly WorkerView[], req: RouteRequest): WorkerView | undefined {
    let policy = this.entries.get(model)?.policy;
    if (!policy) {
      // no instance for a model without candidates: nothing to route, nothing to remember
      if (workers.length === 0) return undefined;
      policy = this.policyFor(model, workers);
    }
    if (
      this.opts.routingKeyOverride &&
      policy.name !== 'manual' &&
      policy.name !== 'consistent_hashing' &&
      routingKey(req) !== undefined
    ) {
      this.override ??= new ManualPolicy(this.opts.params, this.opts.ctx);
      return this.override.select(workers, req);
    }
    return policy.select(workers, req);
  }

  /** whether routing this model needs the request's text extracted */
  needsText(model: string, workers: readonly WorkerView[]): boolean {
    const policy = this.entries.get(model)?.policy;
    if (policy) return policy.needsText;
    if (workers.length === 0) return false;
    return this.policyFor(model, workers).needsText;
  }

  /**
   * The worker list of a model changed (pass every worker of the model, routable or not). Re-reads
   * the `policy` label, forwards to the instance, and drops the instance when the list is empty.
   */
  workersChanged(model: string, workers: readonly WorkerView[]): void {
    const cur = this.entries.get(model);
    if (!cur) return;
    if (workers.length === 0) {
      this.entries.delete(model);
      return;
    }
    const want = this.wantedFor(model, workers);
    if (want.name !== cur.name || want.params !== cur.params) {
      this.policyFor(model, workers);
      return;
    }
    cur.policy.onWorkersChanged?.(workers);
  }

  /**
   * Periodic maintenance (every --eviction-interval): manual TTL sweeps and prefix-index eviction.
   * `CacheIndex.evict()` covers every model, so it runs once here rather than once per cache_aware
   * instance — and also when no local instance is cache_aware, as peers keep feeding the index.
   */
  maintain(): void {
    this.opts.ctx.cache.evict();
    for (const { policy } of this.entries.values()) {
      if (policy.name !== 'cache_aware') policy.maintain?.();
    }
    this.override?.maintain();
  }

  /** model → policy name, sorted by model (metrics, admin) */
  names(): { model: string; policy: PolicyName }[] {
    return [...this.entries]
      .map(([model, e]) => ({ model, policy: e.name }))
      .sort((a, b) => (a.model < b.model ? -1 : a.model > b.model ? 1 : 0));
  }

  /** sticky-map entries over every manual instance, the override one included (a gauge) */
  manualEntries(): number {
    let n = this.override?.size() ?? 0;
    for (const { policy } of this.entries.values()) if (policy instanceof ManualPolicy) n += policy.size();
    return n;
  }

  /** the model's cluster-wide policy, else what its workers ask for (with the global parameters) */
  private wantedFor(model: string, workers: readonly WorkerView[]): PolicyChoice {
    const set = this.opts.modelPolicy?.(model);
    if (set) return set;
    const name = this.wanted(workers);
    let choice = this.plainChoices.get(name);
    if (!choice) this.plainChoices.set(name, (choice = { name, params: this.opts.params }));
    return choice;
  }

  /**
   * The model's policy as it would be chosen now and where that choice comes from, for
   * `/mesh/policies`; undefined for a model without an instance.
   */
  describe(model: string): { policy: PolicyName; source: 'mesh' | 'label' | 'default' } | undefined {
    const cur = this.entries.get(model);
    if (!cur) return undefined;
    const source =
      this.opts.modelPolicy?.(model) !== undefined
        ? 'mesh'
        : cur.name !== this.opts.defaultPolicy
          ? 'label'
          : 'default';
    return { policy: cur.name, source };
  }

  /** the policy a worker list asks for: the first valid `policy` label by URL order, else the default */
  private wanted(workers: readonly WorkerView[]): PolicyName {
    const cached = this.wantedCache.get(workers);
    if (cached !== undefined) return cached;
    let url: string | undefined;
    let name: PolicyName | undefined;
    for (const w of workers) {
      const label = w.spec.labels?.[POLICY_LABEL];
      if (label === undefined || !isPolicyName(label)) continue;
      if (url === undefined || w.url < url) {
        url = w.url;
        name = label;
      }
    }
    const wanted = name ?? this.opts.defaultPolicy;
    this.wantedCache.set(workers, wanted);
    return wanted;
  }
}
