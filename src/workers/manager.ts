/**
 * Worker lifecycle on this node: registration (validate, mint an id, discover models through the
 * worker's /v1/models), health probing, engine-load polling, drain and removal. Every outcome is
 * an event applied to the Replica; routing only ever sees the Replica's views.
 *
 * Probes run through one ProbeScheduler (≤ 128 in flight, one timer for the fleet): interval
 * probes fall at a per-worker phase so a fleet's probes spread over the interval, and a worker that
 * never answered is retried with exponential backoff up to the interval (see probe-scheduler.ts).
 * Model discovery and engine-load polls have a scheduler each, so 2,000 workers registered at once
 * never open 2,000 sockets in one tick.
 *
 * Owns: timers and I/O towards workers (probes, discovery, load polls). Never: routing decisions.
 */
import { randomUUID } from 'node:crypto';
import { request } from 'undici';
import type { Logger } from 'pino';
import type { HealthConfig } from '../cli/config-types.js';
import type { Metrics } from '../observability/metrics.js';
import { errors } from '../protocols/errors.js';
import { WORKER_SPEC_LIMITS, workerSpecSizeProblem, type WorkerPatch } from '../protocols/worker-spec.js';
import type { Replica } from '../state/replica.js';
import type { EngineLoad, WorkerSpec, WorkerStatus } from '../state/worker.js';
import { initialHealth, nextHealth, type HealthState } from './health.js';
import { parseEngineLoad } from './engine-load.js';
import { ProbeScheduler, probeDelay, probePhase, type ProbeClock } from './probe-scheduler.js';
import { splitWorkerUrl, type UpstreamPools } from './upstream.js';

/** SMG's bound on concurrent health probes */
export const MAX_PROBES_IN_FLIGHT = 128;
/** concurrent model discoveries (`GET /v1/models`, once per worker, a burst at start-up) */
const MAX_DISCOVERIES_IN_FLIGHT = 32;
/** concurrent engine-load polls (load-aware policies only) */
const MAX_LOAD_POLLS_IN_FLIGHT = 64;
/** a worker this node takes over (mesh duty) is probed within this window, spread by phase */
const TAKEOVER_SPREAD_MS = 200;
/** probes due within this window share one wake-up (see ProbeSchedulerOptions.batchMs) */
const PROBE_BATCH_MS = 1000;

export interface JobStatus {
  state: 'running' | 'completed' | 'failed';
  message: string;
}

/**
 * Shared probing (the mesh): which workers this node probes, and hints that a worker just failed.
 * Without one, this node probes every worker.
 */
export interface ProbeDuty {
  isProber(workerId: string): boolean;
  /** the assignment may have changed */
  onDutyChange(fn: () => void): () => void;
  /** a peer (or this node) saw the worker fail: probe it now if this node is one of its probers */
  onSuspect(fn: (workerId: string) => void): () => void;
}

/** a suspect hint re-probes at most this often */
const MIN_HINTED_PROBE_GAP_MS = 250;

interface Runtime {
  id: string;
  /** this node's last published observation (what peers hold from it) */
  reported?: WorkerStatus;
  lastProbeAt: number;
  /** when this node first probed the worker while pending (0: not yet): the pending budget runs from here */
  pendingSince: number;
  /** where in each interval this node probes the worker (see probeDelay) */
  phase: number;
  /** the spec last seen in the registry (a change from any peer re-arms probes and polls) */
  spec: WorkerSpec;
  health: HealthState;
  job: JobStatus;
  modelsDiscovered: boolean;
  probing: boolean;
  stopped: boolean;
  drainTimer?: NodeJS.Timeout;
  /**
   * Registered on this node and not yet judged: probed here whoever its probers are, so it serves
   * from here once it answers its first probe (its probers, on other peers, learn of it by gossip).
   */
  admitting?: boolean;
}

export interface WorkerManagerOptions {
  replica: Replica;
  pools: UpstreamPools;
  health: HealthConfig;
  logger: Logger;
  metrics: Metrics;
  /** --load-monitor-interval, seconds */
  loadMonitorIntervalSecs: number;
  /** whether engine loads must be polled (a load-aware policy is in use) */
  wantsEngineLoads: (spec: WorkerSpec) => boolean;
  /** probe clock and timers (tests); default the system clock */
  clock?: ProbeClock;
}

export class WorkerManager {
  private readonly runtimes = new Map<string, Runtime>();
  private closed = false;
  private duty: ProbeDuty | undefined;
  private readonly dutyOffs: (() => void)[] = [];
  private readonly probes: ProbeScheduler;
  private readonly discoveries: ProbeScheduler;
  private readonly loadPolls: ProbeScheduler;
  /** models and backend found by discoveries, written in one change per tick (writeDiscovered) */
  private readonly discovered = new Map<string, { models: string[]; ownedBy?: string }>();
  private discoveredFlushQueued = false;
  private readonly now: () => number;

  constructor(private readonly o: WorkerManagerOptions) {
    const clock = o.clock && { clock: o.clock };
    this.probes = new ProbeScheduler({
      run: (id, due) => this.probe(id, due),
      maxInFlight: MAX_PROBES_IN_FLIGHT,
      batchMs: PROBE_BATCH_MS,
      ...clock,
    });
    this.discoveries = new ProbeScheduler({
      run: (id) => this.discoverById(id),
      maxInFlight: MAX_DISCOVERIES_IN_FLIGHT,
      ...clock,
    });
    this.loadPolls = new ProbeScheduler({
      run: (id) => this.pollLoad(id),
      maxInFlight: MAX_LOAD_POLLS_IN_FLIGHT,
      ...clock,
    });
    const c = o.clock;
    this.now = c ? () => c.now() : Date.now;
    // the registry is replicated: workers registered, changed or removed on any peer arrive here
    o.replica.onApplied((ev, changed) => {
      if (!changed || this.closed) return;
      if (ev.kind === 'worker.upsert') this.onUpsert(ev.id, ev.spec);
      else if (ev.kind === 'worker.remove') this.onRemoved(ev.id);
    });
  }

  /**
   * From now on probe only the workers `duty` assigns to this node (the mesh: 2 probers per worker),
   * taking over a worker's health where the fleet left it, and probe at once on a suspect hint.
   */
  setProbeDuty(duty: ProbeDuty): void {
    for (const off of this.dutyOffs.splice(0)) off();
    this.duty = duty;
    this.dutyOffs.push(
      duty.onDutyChange(() => this.reassign()),
      duty.onSuspect((id) => this.probeOnHint(id)),
    );
    this.reassign();
  }

  private reassign(): void {
    if (this.closed) return;
    for (const rt of this.runtimes.values()) {
      if (rt.stopped || rt.drainTimer || this.healthDisabled(rt.spec)) continue;
      const mine = !this.duty || this.duty.isProber(rt.id) || rt.admitting === true;
      if (!mine) {
        this.probes.cancel(rt.id);
      } else if (!this.probes.isScheduled(rt.id) && !rt.probing) {
        // continue from the fleet's verdict: a ready worker needs the failure threshold to go out
        const status = this.o.replica.registry.get(rt.id)?.status;
        if (status === 'ready' || status === 'not_ready') rt.health = initialHealth(status);
        this.scheduleProbe(rt, Math.floor(rt.phase * TAKEOVER_SPREAD_MS));
      }
    }
  }

  private probeOnHint(id: string): void {
    const rt = this.runtimes.get(id);
    if (!rt || rt.stopped || rt.drainTimer || rt.probing || this.healthDisabled(rt.spec)) return;
    if (this.duty && !this.duty.isProber(id)) return;
    if (this.now() - rt.lastProbeAt < MIN_HINTED_PROBE_GAP_MS) return;
    this.scheduleProbe(rt, 0);
  }

  jobStatus(id: string): JobStatus | undefined {
    return this.runtimes.get(id)?.job;
  }

  /** starts probes and polls for every worker already in the registry (restored from the data dir) */
  adoptExisting(): void {
    for (const w of this.o.replica.registry.list()) {
      // pending until its first probe answers, as a new worker (see health.ts)
      if (!this.runtimes.has(w.id)) this.start(w.id, w.spec);
    }
  }

  /**
   * Resolves once every worker with health checks has had its first probe answered (or failed),
   * or after `timeoutMs`: a restarted node listens only then, so its first requests find the
   * workers it restored routable instead of pending.
   */
  async firstProbes(timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    const waiting = (): boolean => {
      for (const rt of this.runtimes.values()) {
        if (rt.stopped || this.healthDisabled(rt.spec)) continue;
        if (rt.lastProbeAt === 0 || rt.probing) return true;
      }
      return false;
    };
    while (waiting() && Date.now() < deadline && !this.closed) await new Promise((r) => setTimeout(r, 10));
  }

  /** registers a worker; throws SmgError 409 when its URL is already registered */
  register(spec: WorkerSpec): string {
    if (this.o.replica.registry.getByUrl(spec.url)) throw errors.workerExists(spec.url);
    const id = randomUUID();
    this.start(id, spec).admitting = true;
    this.upsert(id, spec);
    this.o.logger.info({ worker_id: id, url: spec.url }, 'worker registered');
    return id;
  }

  /**
   * Registers many workers in one registry write (`--worker-urls` at start-up: 2,000 workers are
   * one Automerge change, not 2,000). URLs already registered, or repeated in `specs`, are skipped.
   */
  registerAll(specs: readonly WorkerSpec[]): string[] {
    const batch: [string, WorkerSpec][] = [];
    const urls = new Set<string>();
    for (const spec of specs) {
      if (urls.has(spec.url) || this.o.replica.registry.getByUrl(spec.url)) continue;
      urls.add(spec.url);
      batch.push([randomUUID(), spec]);
    }
    if (batch.length === 0) return [];
    for (const [id, spec] of batch) this.start(id, spec).admitting = true;
    this.o.replica.writeRegistry((d) => d.upsertWorkers(batch));
    for (const [id, spec] of batch) this.o.logger.info({ worker_id: id, url: spec.url }, 'worker registered');
    return batch.map(([id]) => id);
  }

  /** probing, discovery and load polls for a worker this node has no runtime for yet */
  private start(id: string, spec: WorkerSpec): Runtime {
    const rt: Runtime = {
      id,
      spec,
      health: initialHealth(),
      job: { state: 'running', message: 'discovering models' },
      modelsDiscovered: spec.models.length > 0,
      probing: false,
      stopped: false,
      lastProbeAt: 0,
      pendingSince: 0,
      phase: probePhase(`${this.o.replica.nodeId}/${id}`),
    };
    this.runtimes.set(id, rt);
    const disabled = this.healthDisabled(spec);
    // deferred: the registry entry may be written right after (register) or is being applied now
    queueMicrotask(() => {
      if (rt.stopped) return;
      if (disabled) this.setStatus(rt, 'ready');
      this.discoveries.schedule(rt.id, 0);
      if (!disabled) this.scheduleProbe(rt, 0);
      this.scheduleLoadPoll(rt, 0);
    });
    return rt;
  }

  /** a worker written to the registry here or by a peer */
  private onUpsert(id: string, spec: WorkerSpec): void {
    const rt = this.runtimes.get(id);
    if (!rt) {
      if (this.dropDuplicate(id, spec)) return;
      this.start(id, spec);
      this.o.logger.info({ worker_id: id, url: spec.url }, 'worker registered by a peer');
      return;
    }
    if (rt.spec === spec || rt.stopped) return;
    const before = rt.spec;
    rt.spec = spec;
    // the document hands back a parsed copy of what this node wrote: only a real change re-arms
    if (JSON.stringify(before) !== JSON.stringify(spec)) this.rearm(rt, before, spec);
  }

  /**
   * Two peers registered the same URL at the same time under different ids: every peer keeps the
   * smaller id and tombstones the other, so all converge on one worker per URL.
   */
  private dropDuplicate(id: string, spec: WorkerSpec): boolean {
    const twins = this.o.replica.registry.allByUrl(spec.url).filter((w) => w.id !== id);
    if (twins.length === 0) return false;
    const keep = [id, ...twins.map((w) => w.id)].sort()[0];
    for (const loser of [id, ...twins.map((w) => w.id)]) {
      if (loser === keep) continue;
      this.o.logger.warn({ worker_id: loser, kept: keep, url: spec.url }, 'duplicate registration of a URL');
      const rt = this.runtimes.get(loser);
      if (rt) this.stopRuntime(rt);
      this.o.replica.writeRegistry((d) => d.removeWorker(loser));
    }
    return keep !== id;
  }

  /** removed by a peer (or by this node's own removal, already stopped) */
  private onRemoved(id: string): void {
    const rt = this.runtimes.get(id);
    if (!rt) return;
    this.stopRuntime(rt);
    this.o.logger.info({ worker_id: id, url: rt.spec.url }, 'worker removed by a peer');
    this.closePoolIfUnused(rt.spec.url);
  }

  private stopRuntime(rt: Runtime): void {
    rt.stopped = true;
    this.stopTimers(rt);
    if (rt.drainTimer) clearTimeout(rt.drainTimer);
    this.runtimes.delete(rt.id);
  }

  private closePoolIfUnused(url: string): void {
    const { origin } = splitWorkerUrl(url);
    // close the pool once no other worker shares the origin; in-flight requests finish first
    if (!this.o.replica.registry.list().some((w) => splitWorkerUrl(w.url).origin === origin)) {
      void this.o.pools.close(origin);
    }
  }

  /** PUT: full replacement, same URL */
  replace(id: string, spec: WorkerSpec): void {
    const cur = this.o.replica.registry.get(id);
    const rt = this.runtimes.get(id);
    if (!cur || !rt) throw errors.workerNotFound(id);
    if (cur.url !== spec.url) throw errors.invalidWorker(`url cannot change (was ${cur.url})`);
    if (spec.models.length === 0 && cur.models.length > 0 && rt.modelsDiscovered)
      spec = { ...spec, models: [...cur.models] };
    this.upsert(id, spec);
  }

  patch(id: string, patch: WorkerPatch): void {
    const cur = this.o.replica.registry.get(id);
    const rt = this.runtimes.get(id);
    if (!cur || !rt) throw errors.workerNotFound(id);
    const spec: WorkerSpec = {
      ...cur.spec,
      ...(patch.priority !== undefined ? { priority: patch.priority } : {}),
      ...(patch.cost !== undefined ? { cost: patch.cost } : {}),
      ...(patch.labels !== undefined ? { labels: patch.labels } : {}),
      ...(patch.api_key !== undefined ? { api_key: patch.api_key } : {}),
      ...(patch.health !== undefined ? { health: { ...cur.spec.health, ...patch.health } } : {}),
    };
    // each patched field passed its schema; the whole spec must still fit one replicated write
    const tooBig = workerSpecSizeProblem(spec);
    if (tooBig !== undefined) throw errors.invalidWorker(tooBig);
    this.upsert(id, spec);
  }

  /** DELETE: drain for drain_settle_secs, then remove */
  remove(id: string): void {
    const cur = this.o.replica.registry.get(id);
    const rt = this.runtimes.get(id);
    if (!cur || !rt) throw errors.workerNotFound(id);
    if (rt.drainTimer) return;
    this.stopTimers(rt);
    this.setStatus(rt, 'draining');
    const settleMs = 1000 * (cur.spec.health.drain_settle_secs ?? this.o.health.drainSettleSecs);
    rt.drainTimer = setTimeout(() => this.finishRemoval(id), settleMs);
    rt.drainTimer.unref();
  }

  async close(): Promise<void> {
    this.closed = true;
    for (const off of this.dutyOffs.splice(0)) off();
    this.probes.close();
    this.discoveries.close();
    this.loadPolls.close();
    for (const rt of this.runtimes.values()) {
      this.stopTimers(rt);
      if (rt.drainTimer) clearTimeout(rt.drainTimer);
      rt.stopped = true;
    }
  }

  private finishRemoval(id: string): void {
    const rt = this.runtimes.get(id);
    const cur = this.o.replica.registry.get(id);
    if (rt) this.stopRuntime(rt);
    this.o.replica.writeRegistry((d) => d.removeWorker(id));
    if (cur) this.closePoolIfUnused(cur.url);
    this.o.logger.info({ worker_id: id, url: cur?.url }, 'worker removed');
  }

  /** writes the spec to the replicated registry; the view and every peer follow */
  private upsert(id: string, spec: WorkerSpec): void {
    if (this.o.replica.doc.isRemoved(id)) return; // removed meanwhile (e.g. by a peer)
    this.o.replica.writeRegistry((d) => d.upsertWorker(id, spec));
  }

  private setStatus(rt: Runtime, status: WorkerStatus): void {
    rt.health = { ...rt.health, status };
    // compared with this node's own last word, not the fleet's verdict: peers must hold this node's
    // current observation even when the verdict already agrees with it
    if (rt.reported === status) return;
    rt.reported = status;
    this.o.replica.apply({ kind: 'worker.health', id: rt.id, status, hlc: this.o.replica.tick() });
  }

  private healthDisabled(spec: WorkerSpec): boolean {
    return this.o.health.disabled || spec.health.disable_health_check === true;
  }

  private rearm(rt: Runtime, before: WorkerSpec, after: WorkerSpec): void {
    const wasDisabled = this.healthDisabled(before);
    const isDisabled = this.healthDisabled(after);
    if (
      wasDisabled !== isDisabled ||
      before.health.check_interval_secs !== after.health.check_interval_secs
    ) {
      this.probes.cancel(rt.id);
      if (isDisabled) this.setStatus(rt, 'ready');
      else this.scheduleProbe(rt, 0);
    }
    if (after.models.length === 0) {
      rt.modelsDiscovered = false;
      this.discoveries.schedule(rt.id, 0);
    }
    this.loadPolls.cancel(rt.id);
    this.scheduleLoadPoll(rt, 0);
  }

  private stopTimers(rt: Runtime): void {
    this.probes.cancel(rt.id);
    this.discoveries.cancel(rt.id);
    this.loadPolls.cancel(rt.id);
  }

  private authHeaders(spec: WorkerSpec): Record<string, string> {
    return this.o.pools.authHeaders(spec);
  }

  private timeoutMs(spec: WorkerSpec): number {
    return 1000 * (spec.health.timeout_secs ?? this.o.health.timeoutSecs);
  }

  /** GET path on the worker; resolves with status and parsed JSON or text, never throws */
  private async get(
    spec: WorkerSpec,
    path: string,
  ): Promise<{ status: number; body: string } | { error: string }> {
    const { origin, basePath } = splitWorkerUrl(spec.url);
    const timeout = this.timeoutMs(spec);
    // a timer cleared on the answer, not AbortSignal.timeout: that one stays armed for the whole
    // timeout and cost about as much CPU as the probe itself (thousands of probes a minute)
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(new Error(`no answer within ${timeout} ms`)), timeout);
    try {
      const res = await request(origin + basePath + path, {
        dispatcher: this.o.pools.control(),
        method: 'GET',
        // the next call to this worker comes seconds later, past any engine's keep-alive: closing
        // at once spares both sides an idle socket and its timer
        headers: { ...this.authHeaders(spec), connection: 'close' },
        headersTimeout: timeout,
        bodyTimeout: timeout,
        signal: abort.signal,
      });
      const body = await res.body.text();
      return { status: res.statusCode, body };
    } catch (err) {
      return { error: err instanceof Error ? err.message : String(err) };
    } finally {
      clearTimeout(timer);
    }
  }

  /** one discovery, run by its scheduler; the first one ends the registration job */
  private async discoverById(id: string): Promise<void> {
    const rt = this.runtimes.get(id);
    if (!rt || rt.stopped) return;
    await this.discover(rt);
    if (!rt.stopped && rt.job.state === 'running') rt.job = { state: 'completed', message: 'registered' };
  }

  private async discover(rt: Runtime): Promise<void> {
    if (rt.modelsDiscovered || rt.stopped) return;
    const view = this.o.replica.registry.get(rt.id);
    if (!view) return;
    const res = await this.get(view.spec, '/v1/models');
    if (rt.stopped || this.closed) return;
    if ('error' in res || res.status < 200 || res.status >= 300) {
      const why = 'error' in res ? res.error : `HTTP ${res.status}`;
      rt.job = {
        state: 'completed',
        message: `model discovery failed (${why}); serving any model until it succeeds`,
      };
      return;
    }
    let models: string[];
    let ownedBy: string | undefined;
    try {
      const parsed = JSON.parse(res.body) as { data?: { id?: unknown; owned_by?: unknown }[] };
      const data = Array.isArray(parsed.data) ? parsed.data : [];
      // an engine's list is input like any other: ids a WorkerSpec could not hold are skipped
      models = data
        .map((m) => m?.id)
        .filter(
          (x): x is string =>
            typeof x === 'string' && x !== '' && x.length <= WORKER_SPEC_LIMITS.modelIdChars,
        )
        .slice(0, WORKER_SPEC_LIMITS.models);
      const owner = data.find((m) => typeof m?.owned_by === 'string')?.owned_by;
      if (typeof owner === 'string' && /^[a-z0-9_.-]{1,32}$/i.test(owner)) ownedBy = owner.toLowerCase();
    } catch {
      rt.job = { state: 'completed', message: 'model discovery returned invalid JSON; serving any model' };
      return;
    }
    rt.modelsDiscovered = true;
    this.discovered.set(rt.id, { models, ...(ownedBy !== undefined && { ownedBy }) });
    if (!this.discoveredFlushQueued) {
      this.discoveredFlushQueued = true;
      setImmediate(() => this.writeDiscovered());
    }
    rt.job = {
      state: 'completed',
      message: models.length ? `discovered ${models.join(', ')}` : 'no models listed',
    };
  }

  /**
   * Writes what the discoveries of the last tick found, in one registry change: at start-up
   * hundreds of discoveries end within a few ticks, and each change costs a copy of the document's
   * whole `workers` map. Applied to the spec as it is now (an admin write may have come meanwhile).
   */
  private writeDiscovered(): void {
    this.discoveredFlushQueued = false;
    if (this.closed) return;
    const batch: [string, WorkerSpec][] = [];
    for (const [id, found] of this.discovered) {
      const cur = this.o.replica.registry.get(id);
      if (!cur || this.o.replica.doc.isRemoved(id)) continue;
      // SMG detects the backend from `owned_by` (sglang, vllm, …) when the spec does not name it
      const runtime = cur.spec.runtime === 'unspecified' && found.ownedBy ? found.ownedBy : cur.spec.runtime;
      const models = found.models.length > 0 && cur.spec.models.length === 0 ? found.models : cur.spec.models;
      if (runtime === cur.spec.runtime && models === cur.spec.models) continue;
      const spec = { ...cur.spec, runtime, models };
      const tooBig = workerSpecSizeProblem(spec);
      const rt = this.runtimes.get(id);
      if (tooBig !== undefined) {
        if (rt) rt.job = { state: 'completed', message: `discovered models not recorded: ${tooBig}` };
        continue;
      }
      batch.push([id, spec]);
    }
    this.discovered.clear();
    if (batch.length === 0) return;
    try {
      this.o.replica.writeRegistry((d) => d.upsertWorkers(batch));
    } catch {
      // one refused spec refuses the whole batch: write them one by one, reporting the refused ones
      for (const [id, spec] of batch) {
        try {
          this.upsert(id, spec);
        } catch (err) {
          const rt = this.runtimes.get(id);
          const why = err instanceof Error ? err.message : String(err);
          if (rt) rt.job = { state: 'completed', message: `discovered models not recorded: ${why}` };
        }
      }
    }
  }

  private scheduleProbe(rt: Runtime, delayMs: number): void {
    if (rt.stopped || this.closed) return;
    this.probes.schedule(rt.id, delayMs);
  }

  /**
   * One probe, run by the scheduler (which never runs two of one worker at once) at or shortly
   * before `due`: the next one is counted from `due`, so an early start never shortens an interval.
   */
  private async probe(id: string, due: number): Promise<void> {
    const rt = this.runtimes.get(id);
    const view = this.o.replica.registry.get(id);
    if (!rt || !view || rt.stopped || rt.probing) return;
    // a verdict reached elsewhere ends this node's admission probing
    if (rt.admitting && view.status !== 'pending') rt.admitting = false;
    if (this.duty && !this.duty.isProber(rt.id) && !rt.admitting) return; // another peer's duty now
    rt.probing = true;
    rt.lastProbeAt = this.now();
    if (rt.pendingSince === 0) rt.pendingSince = rt.lastProbeAt;
    const spec = view.spec;
    const res = await this.get(spec, this.o.health.endpoint);
    rt.probing = false;
    if (rt.stopped || this.closed) return;
    const ok = !('error' in res) && res.status >= 200 && res.status < 300;
    this.o.metrics.inc(this.o.metrics.workerHealthChecks, {
      worker_type: spec.worker_type,
      result: ok ? 'success' : 'failure',
    });
    const t = {
      successThreshold: spec.health.success_threshold ?? this.o.health.successThreshold,
      failureThreshold: spec.health.failure_threshold ?? this.o.health.failureThreshold,
    };
    const intervalMs = 1000 * (spec.health.check_interval_secs ?? this.o.health.intervalSecs);
    // pending → failed after 10·f intervals of wall time from the first probe, however many probes
    // the backoff fitted in: a budget of 0 fails this probe (unless it promotes), ∞ never does
    const pendingFor = rt.lastProbeAt - rt.pendingSince;
    const budget = pendingFor >= 10 * t.failureThreshold * intervalMs ? 0 : Number.POSITIVE_INFINITY;
    const before = rt.health.status;
    rt.health = nextHealth(rt.health, ok, t, budget);
    if (rt.health.status !== 'pending') rt.admitting = false;
    if (rt.health.status !== before) {
      this.setStatus(rt, rt.health.status);
      const why = 'error' in res ? res.error : `HTTP ${res.status}`;
      this.o.logger[rt.health.status === 'ready' ? 'info' : 'warn'](
        {
          worker_id: rt.id,
          url: spec.url,
          from: before,
          to: rt.health.status,
          ...(ok ? {} : { reason: why }),
        },
        'worker health changed',
      );
      if (rt.health.status === 'ready' && !rt.modelsDiscovered) this.discoveries.schedule(rt.id, 0);
    } else if (rt.reported !== rt.health.status && rt.health.status !== 'pending') {
      // a prober taking over (or back) a worker: its observation replaces what peers hold from it
      this.setStatus(rt, rt.health.status);
    }
    if (rt.health.status === 'failed') {
      if (this.o.health.removeUnhealthyWorkers) this.finishRemoval(rt.id);
      return;
    }
    const pending = rt.health.status === 'pending';
    const now = this.now();
    const from = Math.max(now, due);
    const delay = probeDelay({
      now: from,
      intervalMs,
      phase: rt.phase,
      pending,
      pendingFailures: pending ? rt.health.consecutiveFailures : 0,
    });
    this.scheduleProbe(rt, from + delay - now);
  }

  /** the next load poll in `delayMs`, or (undefined) one load interval on, at the worker's phase */
  private scheduleLoadPoll(rt: Runtime, delayMs?: number): void {
    const view = this.o.replica.registry.get(rt.id);
    if (!view || rt.stopped || this.closed || !this.o.wantsEngineLoads(view.spec)) return;
    const secs = Math.max(1, view.spec.load_monitor_interval_secs ?? this.o.loadMonitorIntervalSecs);
    this.loadPolls.schedule(
      rt.id,
      delayMs ??
        probeDelay({
          now: this.now(),
          intervalMs: secs * 1000,
          phase: rt.phase,
          pending: false,
          pendingFailures: 0,
        }),
    );
  }

  private async pollLoad(id: string): Promise<void> {
    const rt = this.runtimes.get(id);
    const view = this.o.replica.registry.get(id);
    if (!rt || !view || rt.stopped) return;
    let load: EngineLoad | undefined;
    if (view.routable) {
      const res = await this.get(view.spec, '/v1/loads?include=core,queues,memory');
      if (!('error' in res) && res.status === 200) load = parseEngineLoad(res.body, 'loads');
      if (!load) {
        const m = await this.get(view.spec, '/metrics');
        if (!('error' in m) && m.status === 200) load = parseEngineLoad(m.body, 'metrics');
      }
    }
    if (rt.stopped || this.closed) return;
    if (load)
      this.o.replica.apply({ kind: 'worker.engine_load', id: rt.id, load, hlc: this.o.replica.tick() });
    this.scheduleLoadPoll(rt);
  }
}
