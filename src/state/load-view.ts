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

  constructor(private readonly selfId: string) {}

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
  }

  release(workerId: string): void {
    const n = (this.local.get(workerId) ?? 0) - 1;
    if (n > 0) this.local.set(workerId, n);
    else this.local.delete(workerId);
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
  }
}
