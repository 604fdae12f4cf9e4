/**
 * The worker registry and worker health as CRDTs, and the read views routing uses.
 *
 * Registry: a last-writer-wins map keyed by worker id, ordered by HLC, with remove-wins tombstones:
 * a removed id is dead for good (re-registering a URL mints a new id), so upserts and removals
 * commute whatever their timestamps. Health is an LWW register per (worker id, observing node),
 * the node being the HLC's (a health event may arrive before the worker it describes); a worker's
 * status is judged over the observations of its current probers (see `setHealthJudge`): draining if
 * any node drains it, ready if one of them sees it ready, else their latest word. So one peer's failed
 * probes never take a worker out of the fleet while another prober still reaches it.
 *
 * Views: a change updates the one worker's view (O(1), so registering or probing N workers is O(N)
 * overall, not O(N²)); the sorted lists routing reads are rebuilt on the first read after a change,
 * once per burst of changes, so routing still reads plain arrays on the hot path.
 */
import type { WorkerHealthEvent, WorkerRemoveEvent, WorkerUpsertEvent } from './events.js';
import { compareHlc, type Hlc } from './hlc.js';
import type { WorkerSpec, WorkerStatus } from './worker.js';

export interface WorkerView {
  readonly id: string;
  readonly url: string;
  readonly spec: WorkerSpec;
  /** models served; empty = any model */
  readonly models: readonly string[];
  readonly status: WorkerStatus;
  /** `ready`: may receive traffic (the circuit breaker may still refuse it) */
  readonly routable: boolean;
  /** HLC of the registry write that produced this spec */
  readonly version: Hlc;
}

interface RegistryEntry {
  hlc: Hlc;
  removed: boolean;
  spec?: WorkerSpec;
}

export class WorkerRegistry {
  private readonly entries = new Map<string, RegistryEntry>();
  /** worker id → observing node → its latest observation */
  private readonly health = new Map<string, Map<string, { hlc: Hlc; status: WorkerStatus }>>();
  /** does `node`'s observation of `workerId` count? (the mesh: is it a current prober) */
  private judge: (workerId: string, node: string) => boolean = () => true;

  private readonly views = new Map<string, WorkerView>();
  /** url → its live views (more than one only while a duplicate registration is being resolved) */
  private readonly byUrl = new Map<string, WorkerView[]>();
  /** the lists below are stale: rebuilt on the next read */
  private listsStale = false;
  private all: WorkerView[] = [];
  private byModel = new Map<string, WorkerView[]>();
  private wildcard: WorkerView[] = [];
  private routableByModel = new Map<string, WorkerView[]>();
  private routableWildcard: WorkerView[] = [];
  private routableAll: WorkerView[] = [];
  /** local, non-replicated exclusions (this node's open circuit breakers) */
  private readonly excluded = new Set<string>();

  applyUpsert(ev: WorkerUpsertEvent): boolean {
    const cur = this.entries.get(ev.id);
    if (cur && (cur.removed || compareHlc(cur.hlc, ev.hlc) >= 0)) return false;
    this.entries.set(ev.id, { hlc: ev.hlc, removed: false, spec: ev.spec });
    this.refreshView(ev.id);
    return true;
  }

  applyRemove(ev: WorkerRemoveEvent): boolean {
    const cur = this.entries.get(ev.id);
    if (cur?.removed) {
      // keep the latest removal time so replicas agree whatever the order of duplicate removals
      if (compareHlc(ev.hlc, cur.hlc) > 0) cur.hlc = ev.hlc;
      return false;
    }
    this.entries.set(ev.id, { hlc: ev.hlc, removed: true });
    this.refreshView(ev.id);
    return true;
  }

  applyHealth(ev: WorkerHealthEvent): boolean {
    let byNode = this.health.get(ev.id);
    if (!byNode) this.health.set(ev.id, (byNode = new Map()));
    const cur = byNode.get(ev.hlc.node);
    if (cur && compareHlc(cur.hlc, ev.hlc) >= 0) return false;
    byNode.set(ev.hlc.node, { hlc: ev.hlc, status: ev.status });
    if (this.entries.get(ev.id)?.removed === false) this.refreshView(ev.id);
    return true;
  }

  /**
   * `from` was a second registration of `into`'s engine (one URL, collapsed into one id): its
   * observations are observations of the same engine, so each counts for `into` where it is the
   * newer word of its node. A peer that held the engine under the losing id keeps it routable.
   */
  adoptHealth(from: string, into: string): void {
    const src = this.health.get(from);
    if (!src || from === into) return;
    let dst = this.health.get(into);
    if (!dst) this.health.set(into, (dst = new Map()));
    let changed = false;
    for (const [node, o] of src) {
      const cur = dst.get(node);
      if (cur && compareHlc(cur.hlc, o.hlc) >= 0) continue;
      dst.set(node, o);
      changed = true;
    }
    if (changed && this.entries.get(into)?.removed === false) this.refreshView(into);
  }

  /**
   * Which observations decide a worker's status: `judge(workerId, node)` is true for its current
   * probers. Call again (or `rejudge`) when membership changes; observations are kept either way.
   */
  setHealthJudge(judge: (workerId: string, node: string) => boolean): void {
    this.judge = judge;
    this.rejudge();
  }

  rejudge(): void {
    for (const id of this.views.keys()) this.refreshView(id);
  }

  /** every node's latest observation of a worker (for /mesh/workers and tests) */
  observations(id: string): { node: string; status: WorkerStatus; hlc: Hlc }[] {
    return [...(this.health.get(id) ?? [])].map(([node, o]) => ({ node, status: o.status, hlc: o.hlc }));
  }

  /** the status the observations of a worker add up to (see the class comment) */
  private statusOf(id: string): WorkerStatus {
    const byNode = this.health.get(id);
    if (!byNode) return 'pending';
    let latest: { hlc: Hlc; status: WorkerStatus } | undefined;
    let latestAny: { hlc: Hlc; status: WorkerStatus } | undefined;
    let ready = false;
    for (const [node, o] of byNode) {
      // draining is an admin decision (DELETE on some peer), not a probe: it counts from anyone
      if (o.status === 'draining') return 'draining';
      if (!latestAny || compareHlc(o.hlc, latestAny.hlc) > 0) latestAny = o;
      if (!this.judge(id, node)) continue;
      if (o.status === 'ready') ready = true;
      if (!latest || compareHlc(o.hlc, latest.hlc) > 0) latest = o;
    }
    if (ready) return 'ready';
    // no current prober has spoken yet (a membership change): the last word of anyone
    return (latest ?? latestAny)?.status ?? 'pending';
  }

  /**
   * Takes a worker out of (or back into) this node's routable lists without touching the
   * replicated state: a local circuit breaker is one node's opinion, never the fleet's.
   */
  setExcluded(id: string, excluded: boolean): void {
    if (excluded === this.excluded.has(id)) return;
    // an unknown (or removed) worker has nothing to exclude
    if (excluded && !this.views.has(id)) return;
    if (excluded) this.excluded.add(id);
    else this.excluded.delete(id);
    this.listsStale = true;
  }

  isExcluded(id: string): boolean {
    return this.excluded.has(id);
  }

  /** true when the id was registered once and then removed */
  isRemoved(id: string): boolean {
    return this.entries.get(id)?.removed === true;
  }

  get(id: string): WorkerView | undefined {
    return this.views.get(id);
  }

  getByUrl(url: string): WorkerView | undefined {
    const list = this.byUrl.get(url);
    return list?.[list.length - 1];
  }

  /** every live worker registered under `url` (two only while peers resolve a duplicate) */
  allByUrl(url: string): readonly WorkerView[] {
    return this.byUrl.get(url) ?? [];
  }

  /** live workers */
  size(): number {
    return this.views.size;
  }

  list(): readonly WorkerView[] {
    if (this.listsStale) this.rebuildLists();
    return this.all;
  }

  /** every model id some worker declares, sorted */
  models(): string[] {
    if (this.listsStale) this.rebuildLists();
    return [...this.byModel.keys()].sort();
  }

  /** workers that serve `model` (including wildcard workers), routable or not */
  forModel(model: string): readonly WorkerView[] {
    if (this.listsStale) this.rebuildLists();
    return this.byModel.get(model) ?? this.wildcard;
  }

  hasModel(model: string): boolean {
    if (this.listsStale) this.rebuildLists();
    return this.byModel.has(model);
  }

  /** routable workers for `model`; `undefined` = every routable worker */
  routable(model?: string): readonly WorkerView[] {
    if (this.listsStale) this.rebuildLists();
    if (model === undefined) return this.routableAll;
    const named = this.routableByModel.get(model);
    if (!named) return this.routableWildcard;
    return named;
  }

  /** canonical copy of the CRDT state (sorted), for tests, digests and snapshots */
  exportState(): {
    entries: [string, RegistryEntry][];
    health: [string, [string, { hlc: Hlc; status: WorkerStatus }][]][];
  } {
    const byKey = <T>(a: [string, T], b: [string, T]) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0);
    return {
      entries: [...this.entries].map(([k, v]): [string, RegistryEntry] => [k, { ...v }]).sort(byKey),
      health: [...this.health]
        .map(([k, v]): [string, [string, { hlc: Hlc; status: WorkerStatus }][]] => [
          k,
          [...v].map(([n, o]): [string, typeof o] => [n, { ...o }]).sort(byKey),
        ])
        .sort(byKey),
    };
  }

  /** brings the view of one worker up to date with its entry and observations */
  private refreshView(id: string): void {
    const e = this.entries.get(id);
    const prev = this.views.get(id);
    if (!e || e.removed || !e.spec) {
      if (!prev) return;
      this.views.delete(id);
      this.unindexUrl(prev);
      this.excluded.delete(id);
      this.listsStale = true;
      return;
    }
    const status = this.statusOf(id);
    if (prev && prev.spec === e.spec && prev.status === status) return;
    const view: WorkerView = {
      id,
      url: e.spec.url,
      spec: e.spec,
      models: e.spec.models,
      status,
      routable: status === 'ready',
      version: e.hlc,
    };
    this.views.set(id, view);
    if (prev) this.unindexUrl(prev);
    const sameUrl = this.byUrl.get(view.url);
    if (sameUrl) sameUrl.push(view);
    else this.byUrl.set(view.url, [view]);
    this.listsStale = true;
  }

  private unindexUrl(view: WorkerView): void {
    const list = this.byUrl.get(view.url);
    if (!list) return;
    const rest = list.filter((w) => w.id !== view.id);
    if (rest.length > 0) this.byUrl.set(view.url, rest);
    else this.byUrl.delete(view.url);
  }

  /** the sorted lists routing reads, from the views (a new array whenever anything changed) */
  private rebuildLists(): void {
    this.listsStale = false;
    // stable order: by URL, so policies that pick "the first" are deterministic across peers; the
    // other lists are filled from the sorted one and need no sort of their own
    const byUrlOrder = (a: WorkerView, b: WorkerView) => (a.url < b.url ? -1 : a.url > b.url ? 1 : 0);
    const all = [...this.views.values()].sort(byUrlOrder);
    const byModel = new Map<string, WorkerView[]>();
    const wildcard: WorkerView[] = [];
    for (const view of all) {
      if (view.models.length === 0) wildcard.push(view);
      for (const m of view.models) {
        let list = byModel.get(m);
        if (!list) byModel.set(m, (list = []));
        list.push(view);
      }
    }
    const routableByModel = new Map<string, WorkerView[]>();
    const excluded = this.excluded;
    const usable = (w: WorkerView) => w.routable && !excluded.has(w.id);
    const routableWildcard = wildcard.filter(usable);
    // per-model lists include the wildcard workers, built once here so reads never allocate
    for (const [m, list] of byModel) {
      if (wildcard.length > 0) byModel.set(m, [...list, ...wildcard]);
      const r = list.filter(usable);
      routableByModel.set(m, routableWildcard.length === 0 ? r : [...r, ...routableWildcard]);
    }
    this.all = all;
    this.byModel = byModel;
    this.wildcard = wildcard;
    this.routableByModel = routableByModel;
    this.routableWildcard = routableWildcard;
    this.routableAll = all.filter(usable);
  }
}
