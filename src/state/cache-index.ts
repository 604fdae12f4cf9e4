/**
 * Prefix-cache index: per model, chained block hash → the workers that hold that prefix and when
 * each was last seen there. A request matches, per worker, the deepest of its leading blocks that
 * the worker holds (a chained hash names the whole prefix, so no walk of ancestors is needed).
 *
 * Merge rule (commutative, associative, idempotent): per (hash, worker) keep the max `seen`.
 * Eviction and worker removal are local compactions outside the merge: eviction drops a worker's
 * least recently seen blocks once it holds more than its budget; removal drops all of them.
 *
 * Memory: a block held by one worker is a single number in the map (worker slot and last-seen
 * second packed together); only blocks shared by several workers get an object.
 */
import type { CacheBlocksEvent } from './events.js';

const SLOT_FACTOR = 2 ** 31; // seen seconds < 2^31; slot * 2^31 + secs stays below 2^53

interface SharedBlock {
  slots: number[];
  secs: number[];
}

type BlockValue = number | SharedBlock;

class ModelIndex {
  readonly blocks = new Map<number, BlockValue>();
  /** blocks held per worker slot */
  readonly held = new Map<number, number>();
}

/** packed HLC (wall ms * 1024 + counter) → whole seconds */
function secsOf(seen: number): number {
  return Math.floor(seen / 1024 / 1000);
}

export interface CacheMatch {
  /** worker id → number of leading blocks it holds */
  depths: Map<string, number>;
  /** deepest block index + 1 known to any worker */
  known: number;
}

export class CacheIndex {
  private readonly models = new Map<string, ModelIndex>();
  private readonly slotOf = new Map<string, number>();
  private readonly workerOfSlot: (string | undefined)[] = [];
  private readonly freeSlots: number[] = [];

  /**
   * @param maxBlocksPerWorker per model and worker; SMG's `--max-tree-size` is a per-worker
   *   budget in characters, so callers pass `maxTreeSize / blockChars`.
   */
  constructor(private maxBlocksPerWorker: number = Number.MAX_SAFE_INTEGER) {}

  setBudget(maxBlocksPerWorker: number): void {
    this.maxBlocksPerWorker = maxBlocksPerWorker;
  }

  /** total blocks across models (an entry shared by k workers counts once) */
  size(): number {
    let n = 0;
    for (const m of this.models.values()) n += m.blocks.size;
    return n;
  }

  /** blocks held by one worker for one model */
  heldBy(model: string, workerId: string): number {
    const slot = this.slotOf.get(workerId);
    if (slot === undefined) return 0;
    return this.models.get(model)?.held.get(slot) ?? 0;
  }

  match(model: string, hashes: readonly number[]): CacheMatch {
    const depths = new Map<string, number>();
    const idx = this.models.get(model);
    let known = 0;
    if (!idx) return { depths, known };
    const bySlot = new Map<number, number>();
    for (let i = 0; i < hashes.length; i++) {
      const v = idx.blocks.get(hashes[i]);
      if (v === undefined) continue;
      known = i + 1;
      if (typeof v === 'number') {
        bySlot.set(Math.floor(v / SLOT_FACTOR), i + 1);
      } else {
        for (const s of v.slots) bySlot.set(s, i + 1);
      }
    }
    for (const [slot, d] of bySlot) {
      const w = this.workerOfSlot[slot];
      if (w !== undefined) depths.set(w, d);
    }
    return { depths, known };
  }

  apply(ev: CacheBlocksEvent): boolean {
    let idx = this.models.get(ev.model);
    if (!idx) {
      idx = new ModelIndex();
      this.models.set(ev.model, idx);
    }
    const slot = this.slotFor(ev.worker);
    const secs = secsOf(ev.seen);
    let changed = false;
    if (ev.anchor !== 0) changed = this.put(idx, ev.anchor, slot, secs) || changed;
    for (const h of ev.hashes) changed = this.put(idx, h, slot, secs) || changed;
    return changed;
  }

  /** canonical content: model → hash → sorted [worker, last-seen second] pairs */
  exportState(): [string, [number, [string, number][]][]][] {
    const out: [string, [number, [string, number][]][]][] = [];
    for (const [model, idx] of [...this.models].sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0))) {
      const blocks: [number, [string, number][]][] = [];
      for (const [h, v] of idx.blocks) {
        const pairs: [string, number][] =
          typeof v === 'number'
            ? [[this.workerOfSlot[Math.floor(v / SLOT_FACTOR)] ?? '?', v % SLOT_FACTOR]]
            : v.slots.map((s, i): [string, number] => [this.workerOfSlot[s] ?? '?', v.secs[i]]);
        pairs.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
        blocks.push([h, pairs]);
      }
      blocks.sort((a, b) => a[0] - b[0]);
      if (blocks.length > 0) out.push([model, blocks]);
    }
    return out;
  }

  /** drops a worker from every model's index */
  removeWorker(workerId: string): void {
    const slot = this.slotOf.get(workerId);
    if (slot === undefined) return;
    for (const idx of this.models.values()) {
      if (!idx.held.has(slot)) continue;
      for (const [h, v] of idx.blocks) this.dropSlot(idx, h, v, slot);
      idx.held.delete(slot);
    }
    this.slotOf.delete(workerId);
    this.workerOfSlot[slot] = undefined;
    this.freeSlots.push(slot);
  }

  /** evicts, per model and worker, the least recently seen blocks beyond the budget */
  evict(): number {
    let evicted = 0;
    for (const idx of this.models.values()) {
      for (const [slot, count] of idx.held) {
        if (count <= this.maxBlocksPerWorker) continue;
        const excess = count - this.maxBlocksPerWorker;
        const seen: number[] = [];
        for (const v of idx.blocks.values()) {
          const s = secsFor(v, slot);
          if (s >= 0) seen.push(s);
        }
        seen.sort((a, b) => a - b);
        const cutoff = seen[excess - 1];
        let toDrop = excess;
        for (const [h, v] of idx.blocks) {
          if (toDrop === 0) break;
          const s = secsFor(v, slot);
          if (s >= 0 && s <= cutoff) {
            this.dropSlot(idx, h, v, slot);
            toDrop--;
            evicted++;
          }
        }
      }
    }
    return evicted;
  }

  private put(idx: ModelIndex, h: number, slot: number, secs: number): boolean {
    const v = idx.blocks.get(h);
    if (v === undefined) {
      idx.blocks.set(h, slot * SLOT_FACTOR + secs);
      idx.held.set(slot, (idx.held.get(slot) ?? 0) + 1);
      return true;
    }
    if (typeof v === 'number') {
      const s0 = Math.floor(v / SLOT_FACTOR);
      const t0 = v - s0 * SLOT_FACTOR;
      if (s0 === slot) {
        if (secs <= t0) return false;
        idx.blocks.set(h, slot * SLOT_FACTOR + secs);
        return true;
      }
      idx.blocks.set(h, { slots: [s0, slot], secs: [t0, secs] });
      idx.held.set(slot, (idx.held.get(slot) ?? 0) + 1);
      return true;
    }
    const i = v.slots.indexOf(slot);
    if (i >= 0) {
      if (secs <= v.secs[i]) return false;
      v.secs[i] = secs;
      return true;
    }
    v.slots.push(slot);
    v.secs.push(secs);
    idx.held.set(slot, (idx.held.get(slot) ?? 0) + 1);
    return true;
  }

  private dropSlot(idx: ModelIndex, h: number, v: BlockValue, slot: number): void {
    if (typeof v === 'number') {
      if (Math.floor(v / SLOT_FACTOR) !== slot) return;
      idx.blocks.delete(h);
    } else {
      const i = v.slots.indexOf(slot);
      if (i < 0) return;
      v.slots.splice(i, 1);
      v.secs.splice(i, 1);
      if (v.slots.length === 1) idx.blocks.set(h, v.slots[0] * SLOT_FACTOR + v.secs[0]);
    }
    const n = (idx.held.get(slot) ?? 1) - 1;
    if (n > 0) idx.held.set(slot, n);
    else idx.held.delete(slot);
  }

  private slotFor(workerId: string): number {
    let slot = this.slotOf.get(workerId);
    if (slot === undefined) {
      slot = this.freeSlots.pop() ?? this.workerOfSlot.length;
      this.slotOf.set(workerId, slot);
      this.workerOfSlot[slot] = workerId;
    }
    return slot;
  }
}

function secsFor(v: BlockValue, slot: number): number {
  if (typeof v === 'number') {
    const s0 = Math.floor(v / SLOT_FACTOR);
    return s0 === slot ? v - s0 * SLOT_FACTOR : -1;
  }
  const i = v.slots.indexOf(slot);
  return i >= 0 ? v.secs[i] : -1;
}
