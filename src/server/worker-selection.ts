/**
 * Request → worker: resolves the model (aliases, IGW strictness), finds the candidates in the
 * Replica's views, extracts routing text only when the model's policy needs it, and asks the
 * policy. Synchronous and I/O-free: everything it reads is in memory.
 *
 * It refuses a `model` that is not a string (bodies nested deeper than SMG accepts never get here:
 * the request path refuses them when it parses). Lookups keyed by client text use Maps, never
 * plain objects: `constructor` is just a model name.
 */
import type { Config } from '../cli/config-types.js';
import { errors } from '../protocols/errors.js';
import type { RoutingInput } from '../protocols/routing-text.js';
import type { PolicyRegistry } from '../routing/registry.js';
import type { HeaderValue, RoutingPolicy } from '../routing/types.js';
import type { WorkerView } from '../state/registry.js';
import type { Replica } from '../state/replica.js';

export interface Selection {
  worker: WorkerView;
  /** model id after alias resolution ('' when the request named none) */
  model: string;
  policy: RoutingPolicy;
}

/** the `model` metric label of every model that is neither served by a worker nor an alias */
export const OTHER_MODEL_LABEL = 'other';

export class WorkerSelection {
  private refreshQueued = false;
  /** alias → canonical model (`--model-alias`) */
  private readonly aliases: ReadonlyMap<string, string>;
  /** alias names and their targets: models the operator named, so fit for a metric label */
  private readonly aliasModels: ReadonlySet<string>;

  constructor(
    private readonly replica: Replica,
    private readonly policies: PolicyRegistry,
    private readonly cfg: Pick<Config, 'enableIgw' | 'modelAliases'>,
  ) {
    this.aliases = new Map(Object.entries(cfg.modelAliases));
    this.aliasModels = new Set([...this.aliases.keys(), ...this.aliases.values()]);
    replica.onApplied((ev, changed) => {
      if (changed && (ev.kind === 'worker.upsert' || ev.kind === 'worker.remove')) this.refreshSoon();
    });
    // a model's policy set cluster-wide (on any peer) replaces its instance here
    replica.onRegistryDiff((diff) => {
      if (diff.policiesChanged) this.refreshSoon();
    });
  }

  /**
   * Policies learn of worker-set changes once per tick: a burst (2,000 `--worker-urls`, a registry
   * sync) costs one refresh, not one O(workers) refresh per worker. No request is routed in between.
   */
  private refreshSoon(): void {
    if (this.refreshQueued) return;
    this.refreshQueued = true;
    queueMicrotask(() => {
      this.refreshQueued = false;
      this.refreshPolicies();
    });
  }

  /**
   * The model a request asks for after alias resolution; '' when it names none. A `model` of
   * another type than string is the client's mistake, answered with 400 rather than routed as if
   * it were absent.
   */
  resolveModel(raw: unknown): string {
    if (raw === undefined || raw === '') return '';
    if (typeof raw !== 'string') {
      throw errors.invalidRequest(`"model" must be a string, got ${raw === null ? 'null' : typeof raw}`);
    }
    return this.aliases.get(raw) ?? raw;
  }

  /**
   * The `model` label of request metrics for a resolved model: the model itself when a registered
   * worker serves it or `--model-alias` names it, `default` for none, else `other`. Labels come
   * from a bounded set, like the tenant top-N of the priority scheduler: a label per
   * client-chosen string made `/metrics` grow from 108 KB to 37.8 MB over 3,000 requests.
   */
  modelLabel(model: string): string {
    if (model === '') return 'default';
    if (this.replica.registry.hasModel(model) || this.aliasModels.has(model)) return model;
    return OTHER_MODEL_LABEL;
  }

  /**
   * The policy key and candidates for a model. A model no worker declares is routed over every
   * worker (SMG's single-router behaviour) unless `--enable-igw`, where it is a 404.
   */
  candidates(model: string): { key: string; all: readonly WorkerView[]; routable: readonly WorkerView[] } {
    const reg = this.replica.registry;
    if (model !== '' && reg.hasModel(model)) {
      return { key: model, all: reg.forModel(model), routable: reg.routable(model) };
    }
    if (model !== '' && this.cfg.enableIgw) throw errors.modelNotFound(model);
    return { key: '', all: reg.list(), routable: reg.routable() };
  }

  /**
   * Picks a worker. `exclude` (a retry's already-tried workers) is honoured when another routable
   * worker is left; otherwise a tried worker may be chosen again.
   */
  select(
    input: RoutingInput,
    headers: Record<string, HeaderValue>,
    exclude?: ReadonlySet<string>,
  ): Selection {
    const model = this.resolveModel(input.model);
    const c = this.candidates(model);
    const { key, all } = c;
    let routable = c.routable;
    const policy = this.policies.policyFor(key, all);
    if (routable.length === 0) throw errors.noAvailableWorkers(model);
    if (exclude !== undefined && exclude.size > 0) {
      const fresh = routable.filter((w) => !exclude.has(w.id));
      if (fresh.length > 0) routable = fresh;
    }
    const text = policy.needsText ? input.text() : '';
    const worker = this.policies.select(key, routable, { model: key, text, headers });
    if (!worker) throw errors.noAvailableWorkers(model);
    return { worker, model, policy };
  }

  private refreshPolicies(): void {
    const reg = this.replica.registry;
    // only models with a policy instance hold state to update (instances are created on first use),
    // so a registration burst with no traffic yet never builds the registry's sorted lists
    for (const { model } of this.policies.names()) {
      if (model === '') this.policies.workersChanged('', reg.list());
      else if (reg.hasModel(model)) this.policies.workersChanged(model, reg.forModel(model));
    }
  }
}
