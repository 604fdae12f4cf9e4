/**
 * Worker load as routing sees it: in-flight requests per worker summed over the cluster (the local
 * node's live counters plus the latest unexpired snapshot of every other node), the engines' own
 * reported load, and a per-worker count of requests routed here (a tie-breaker for policies).
 *
 * Owns: counters and the merge of load snapshots. Never: I/O, timers.
 */
import type { LoadSnapshotEvent, WorkerEngineLoadEvent } from './events.js';
import { compareHlc, type Hlc } from './hlc.js';
import type { EngineLoad } from './worker.js';

interface RemoteSnapshot {
  seq: number;
  expiresAt: number;
  inflight: Record<string, number>;
}

export class LoadView {
  private readonly local = new Map<string, number>();
  private readonly processedCount = new Map<string, number>();
  private readonly remote = new Map<string, RemoteSnapshot>();
  /** Σ over remote snapshots, recomputed when one changes or expires */
  private remoteSum = new Map<string, number>();
  private readonly engine = new Map<string, { hlc: Hlc; load: EngineLoad }>();
  /** dense per-worker index (assigned on first use, never reused) for the array views below */
  private readonly indexOf = new Map<string, number>();
  /** cluster-wide in-flight per worker index: local + Σ remote, kept in step with the maps */
  private inflightAt = new Float64Array(64);
  /** engine report per worker index */
  private readonly engineAt: (EngineLoad | undefined)[] = [];

  constructor(private readonly selfId: string) {}

  /**
   * A small dense integer for a worker id, stable for the life of this view: policies resolve
   * their candidates' indices once per candidate list, then read `inflightByIndex()` and
   * `engineByIndex()` with no keyed lookup per worker.
   */
  workerIndex(workerId: string): number {
    let i = this.indexOf.get(workerId);
    if (i === undefined) {
      i = this.indexOf.size;
      this.indexOf.set(workerId, i);
      if (i >= this.inflightAt.length) {
        const next = new Float64Array(this.inflightAt.length * 2);
        next.set(this.inflightAt);
        this.inflightAt = next;
      }
      this.inflightAt[i] = this.inflight(workerId);
      this.engineAt[i] = this.engine.get(workerId)?.load;
    }
    return i;
  }

  /** cluster-wide in-flight by worker index (a live view: fetch it again after `workerIndex`) */
  inflightByIndex(): Float64Array {
    return this.inflightAt;
  }

  /** engine report by worker index (a live view) */
  engineByIndex(): readonly (EngineLoad | undefined)[] {
    return this.engineAt;
  }

  /** cluster-wide in-flight requests on a worker */
  inflight(workerId: string): number {
    return (this.local.get(workerId) ?? 0) + (this.remoteSum.get(workerId) ?? 0);
  }

  /** this node's own in-flight requests on a worker */
  localInflight(workerId: string): number {
    return this.local.get(workerId) ?? 0;
  }

  processed(workerId: string): number {
    return this.processedCount.get(workerId) ?? 0;
  }

  engineLoad(workerId: string): EngineLoad | undefined {
    return this.engine.get(workerId)?.load;
  }

  /** a request was routed to the worker: held until its response body ends */
  acquire(workerId: string): void {
    this.local.set(workerId, (this.local.get(workerId) ?? 0) + 1);
    this.processedCount.set(workerId, (this.processedCount.get(workerId) ?? 0) + 1);
    const i = this.indexOf.get(workerId);
    if (i !== undefined) this.inflightAt[i]++;
  }

  release(workerId: string): void {
    const cur = this.local.get(workerId) ?? 0;
    const n = cur - 1;
    if (n > 0) this.local.set(workerId, n);
    else this.local.delete(workerId);
    const i = this.indexOf.get(workerId);
    if (i !== undefined && cur > 0) this.inflightAt[i]--;
  }

  localSnapshot(): Record<string, number> {
    return Object.fromEntries(this.local);
  }

  applySnapshot(ev: LoadSnapshotEvent): boolean {
    if (ev.origin === this.selfId) return false;
    const cur = this.remote.get(ev.origin);
    if (cur && cur.seq >= ev.seq) return false;
    this.remote.set(ev.origin, { seq: ev.seq, expiresAt: ev.at + ev.ttlMs, inflight: { ...ev.inflight } });
    this.recomputeRemote();
    return true;
  }

  applyEngineLoad(ev: WorkerEngineLoadEvent): boolean {
    const cur = this.engine.get(ev.id);
    if (cur && compareHlc(cur.hlc, ev.hlc) >= 0) return false;
    this.engine.set(ev.id, { hlc: ev.hlc, load: ev.load });
    const i = this.indexOf.get(ev.id);
    if (i !== undefined) this.engineAt[i] = ev.load;
    return true;
  }

  /** drops snapshots whose TTL passed; returns true if anything changed */
  expire(now: number): boolean {
    let changed = false;
    for (const [origin, snap] of this.remote) {
      if (snap.expiresAt <= now) {
        this.remote.delete(origin);
        changed = true;
      }
    }
    if (changed) this.recomputeRemote();
    return changed;
  }

  /** a node left the cluster: its load goes with it */
  dropOrigin(origin: string): void {
    if (this.remote.delete(origin)) this.recomputeRemote();
  }

  forgetWorker(workerId: string): void {
    this.local.delete(workerId);
    this.processedCount.delete(workerId);
    this.engine.delete(workerId);
    const i = this.indexOf.get(workerId);
    if (i !== undefined) {
      this.inflightAt[i] = this.remoteSum.get(workerId) ?? 0;
      this.engineAt[i] = undefined;
    }
  }

  /** canonical copy of the merged (replicated) state, for tests and digests */
  exportState(): { remote: [string, RemoteSnapshot][]; engine: [string, { hlc: Hlc; load: EngineLoad }][] } {
    const byKey = <T>(a: [string, T], b: [string, T]) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0);
    return { remote: [...this.remote].sort(byKey), engine: [...this.engine].sort(byKey) };
  }

  private recomputeRemote(): void {
    const sum = new Map<string, number>();
    for (const snap of this.remote.values()) {
      for (const [w, n] of Object.entries(snap.inflight)) sum.set(w, (sum.get(w) ?? 0) + n);
    }
    this.remoteSum = sum;
    for (const [id, i] of this.indexOf) this.inflightAt[i] = (this.local.get(id) ?? 0) + (sum.get(id) ?? 0);
  }
}
