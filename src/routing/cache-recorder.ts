/**
 * Takes the prefix-cache deltas of routing decisions off the decision path: `record` only queues
 * (the policy's hashes are kept as they are; policies never reuse them), and the queue is applied
 * as `cache.blocks` events in one batch on the next `setImmediate` (or by an explicit `flush`),
 * hashing first whatever part of a lazily hashed prompt (PromptHashes) the decision did not need.
 * Later requests of the same event-loop turn do not see the delta yet, as a peer would not until
 * gossip delivers it; from the next turn on they do.
 *
 * The gateway's RoutingContext uses it for both recording methods:
 *   `recordCache: (model, worker, hashes, fromDepth) => recorder.record(model, worker, hashes, fromDepth)`
 *   `recordCacheDeferred: (model, worker, hashes, fromDepth) => recorder.record(…the same)`
 * with `apply = (ev) => replica.apply(ev)` and `seen = () => packHlc(replica.tick())`.
 *
 * Owns: the queue. Never: the index (it only emits events through `apply`).
 */
import { blockArray, type BlockList } from '../state/block-hash.js';
import type { CacheBlocksEvent } from '../state/events.js';

interface PendingRecord {
  model: string;
  worker: string;
  hashes: BlockList;
  fromDepth: number;
}

export type Scheduler = (fn: () => void) => void;

export class CacheRecorder {
  private queue: PendingRecord[] = [];
  private scheduled = false;
  private readonly flushSoon = (): void => {
    this.scheduled = false;
    this.flush();
  };

  /**
   * @param apply applies one event (the gateway: `replica.apply`)
   * @param seen the event's packed HLC, taken when it is applied
   * @param schedule runs the batch later; `null`: only `flush` applies (benchmarks, tests)
   */
  constructor(
    private readonly apply: (ev: CacheBlocksEvent) => void,
    private readonly seen: () => number,
    private readonly schedule: Scheduler | null = setImmediate,
  ) {}

  /** queues "`worker` now holds `hashes`, from `fromDepth` on" (the RoutingContext.recordCache contract) */
  record(model: string, worker: string, hashes: BlockList, fromDepth: number): void {
    this.queue.push({ model, worker, hashes, fromDepth });
    if (!this.scheduled && this.schedule) {
      this.scheduled = true;
      this.schedule(this.flushSoon);
    }
  }

  /** deltas queued and not applied yet */
  get pending(): number {
    return this.queue.length;
  }

  /** applies every queued delta, in order; returns how many */
  flush(): number {
    const batch = this.queue;
    if (batch.length === 0) return 0;
    this.queue = [];
    for (const r of batch) {
      // a lazily hashed prompt is completed here, after the decision
      const hashes = blockArray(r.hashes);
      this.apply({
        kind: 'cache.blocks',
        model: r.model,
        worker: r.worker,
        anchor: r.fromDepth > 0 ? hashes[r.fromDepth - 1] : 0,
        hashes: hashes.slice(r.fromDepth),
        seen: this.seen(),
        from: r.fromDepth,
      });
    }
    return batch.length;
  }
}
