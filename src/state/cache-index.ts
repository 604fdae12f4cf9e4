/**
 * Prefix-cache index: per model, chained block hash → the workers that hold that prefix and when
 * each was last seen there. A chained hash names a whole prefix, so whether a worker holds the
 * first k blocks of a prompt is one lookup of block k − 1.
 *
 * Merge rule (commutative, associative, idempotent): per (hash, worker) keep the max `seen`.
 * Eviction and worker removal are local compactions outside the merge: eviction drops a worker's
 * least recently used chains, leaves first, once it holds more than its budget; removal drops
 * all of its blocks.
 *
 * Lookup. A worker's blocks are recorded as `anchor` (the deepest block it already held) plus the
 * hashes appended after it, and eviction only ever drops a block after its held descendants, so
 * the blocks a worker holds are prefix-closed: if it holds block i of a prompt it holds blocks
 * 0..i. The deepest block of a prompt held by a worker (or by any of a set of workers) is
 * therefore found by binary search, O(log n) lookups (`deepest`, `depthOf`), which also reads a
 * lazily hashed prompt (PromptHashes) only as far as it probes.
 *
 * Checkpoints. Peers gossip only every CHECKPOINT_STRIDE-th block of a delta (the blocks at depths
 * S, 2S, …; see mesh/soft-state.ts), so a worker's blocks learnt from a peer are prefix-closed over
 * checkpoints only. The search is therefore two binary searches: over the checkpoints (monotone for
 * gossiped and local blocks alike), then within the stride after the deepest checkpoint found
 * (monotone too: local blocks are contiguous there, gossiped ones absent). With only local blocks
 * the result is the same as one binary search; with gossiped ones it is at most S − 1 blocks short.
 * The approximation:
 * a worker whose chain has a hole (a delta received before the deltas of its ancestors, or an
 * anchor that had been evicted) can be found shallower than it is, never deeper; `match` (linear,
 * exact per block) is kept for tests and diagnostics.
 *
 * Storage, per model: 256 open-addressing tables ("shards", picked by the hash's mixed bits) in
 * typed arrays (linear probing, backward-shift deletion): the 53-bit hash (Float64Array), its
 * holder (a worker slot, or a reference to a shared holder list when several workers hold it), its
 * last-seen second (for a single holder) and its parent hash (learnt from the deltas; eviction
 * uses it to keep chains prefix-closed). 24 bytes per cell at a load factor ≤ 0.6, no object per
 * block unless shared; a lookup is about one cache miss (key, holder and time share 16 bytes),
 * against three or four for a Map<number, …> with 53-bit (heap number) keys. A table grows one shard at a time, so the pause
 * of a resize (rehash, and the page faults of fresh memory) is 1/256 of the index.
 */
import { blockAt, type BlockList } from './block-hash.js';
import type { CacheBlocksEvent } from './events.js';

/** a block held by several workers: parallel arrays of worker slots and last-seen seconds */
interface SharedBlock {
  slots: number[];
  secs: number[];
}

/** 2^SHARD_BITS shards per model: a table grows one shard at a time, a bounded pause */
const SHARD_BITS = 8;
const SHARDS = 1 << SHARD_BITS;
/** a cell reference: shard * CELL_SPAN + cell */
const CELL_SPAN = 2 ** (32 - SHARD_BITS);
const CELL_MASK = CELL_SPAN - 1;
const MIN_CAPACITY = 16;
/** grow when size > capacity × MAX_LOAD */
const MAX_LOAD = 0.6;
const TWO_POW_32 = 4294967296;
/** peers learn every CHECKPOINT_STRIDE-th block of a prompt (depths S, 2S, …) */
export const CHECKPOINT_STRIDE = 8;

/**
 * The largest d in [0, n] such that `held(i)` for every block i < d, given that `held` is
 * prefix-closed over the checkpoints (blocks S−1, 2S−1, …) and, after the deepest checkpoint held,
 * over the blocks up to the next one. `probe.held(i)` is called O(log n) times.
 */
function deepestHeld(n: number, probe: HeldProbe): number {
  const S = CHECKPOINT_STRIDE;
  // checkpoints: blocks k·S − 1 for k = 1..floor(n / S)
  let lo = 0;
  let hi = Math.floor(n / S);
  while (lo < hi) {
    const mid = (lo + hi + 1) >>> 1;
    if (probe.held(mid * S - 1)) lo = mid;
    else hi = mid - 1;
  }
  // then the blocks after the deepest checkpoint, up to (not including) the next one
  let a = lo * S;
  let b = Math.min(n, a + S - 1);
  while (a < b) {
    const mid = (a + b + 1) >>> 1;
    if (probe.held(mid - 1)) a = mid;
    else b = mid - 1;
  }
  return a;
}
const MAX_SECS = 0xffffffff;

/** packed HLC (wall ms * 1024 + counter) → whole seconds */
function secsOf(seen: number): number {
  const s = Math.floor(seen / 1024 / 1000);
  return s > 0 ? (s < MAX_SECS ? s : MAX_SECS) : 0;
}

/** a usable block hash: positive and finite (block-hash never makes 0; 0 means "no block") */
/** a packed HLC whose second is `secs` (the inverse of secsOf) */
function seenOf(secs: number): number {
  return secs * 1000 * 1024;
}

function validKey(h: number): boolean {
  return h > 0 && h < Infinity;
}

/** 32 well-mixed bits of a key: the top SHARD_BITS pick the shard, the next ones the home cell */
function mix(key: number): number {
  return Math.imul((key >>> 0) ^ Math.imul((key / TWO_POW_32) | 0, 0x85ebca6b), 0x9e3779b1);
}

/**
 * One open-addressing table: linear probing, backward-shift deletion (no tombstones). A cell is
 * 16 bytes of one buffer, so a probe touches one cache line: the key (float64 at 2·i), its owner
 * (int32 at 4·i + 2: ≥ 0 the only holder's slot, < 0 −(index into the model's `shared`) − 1) and
 * the only holder's last-seen second (uint32 at 4·i + 3). Parents, read only by insertion and
 * eviction, live apart.
 */
class Shard {
  capacity = 0;
  /** 32 − log2(capacity): home = (mix << SHARD_BITS) >>> shift */
  shift = 32;
  size = 0;
  /** keys at even indices; 0 = empty cell */
  f64 = new Float64Array(0);
  i32 = new Int32Array(0);
  u32 = new Uint32Array(0);
  /** parent block's hash, 0 = a first block or unknown */
  parent = new Float64Array(0);

  allocate(capacity: number): void {
    this.capacity = capacity;
    this.shift = 32 - Math.log2(capacity);
    const buf = new ArrayBuffer(capacity * 16);
    this.f64 = new Float64Array(buf);
    this.i32 = new Int32Array(buf);
    this.u32 = new Uint32Array(buf);
    this.parent = new Float64Array(capacity);
  }

  find(key: number, m: number): number {
    const f64 = this.f64;
    if (f64.length === 0 || !(key > 0)) return -1;
    const mask = this.capacity - 1;
    let i = (m << SHARD_BITS) >>> this.shift;
    for (;;) {
      const k = f64[i << 1];
      if (k === key) return i;
      if (k === 0) return -1;
      i = (i + 1) & mask;
    }
  }

  /** the cell of `key`, inserting it (key and parent 0 only) if absent; −1 − cell when inserted */
  findOrInsert(key: number, m: number): number {
    if (this.size + 1 > this.capacity * MAX_LOAD) this.grow();
    const f64 = this.f64;
    const mask = this.capacity - 1;
    let i = (m << SHARD_BITS) >>> this.shift;
    for (;;) {
      const k = f64[i << 1];
      if (k === key) return i;
      if (k === 0) {
        f64[i << 1] = key;
        this.parent[i] = 0;
        this.size++;
        return -1 - i;
      }
      i = (i + 1) & mask;
    }
  }

  private grow(): void {
    const { f64, i32, parent, capacity } = this;
    this.allocate(Math.max(MIN_CAPACITY, capacity * 2));
    const nf = this.f64;
    const ni = this.i32;
    const np = this.parent;
    const mask = this.capacity - 1;
    const shift = this.shift;
    for (let j = 0; j < capacity; j++) {
      const k = f64[j << 1];
      if (k === 0) continue;
      let i = (mix(k) << SHARD_BITS) >>> shift;
      while (nf[i << 1] !== 0) i = (i + 1) & mask;
      nf[i << 1] = k;
      ni[(i << 2) + 2] = i32[(j << 2) + 2];
      ni[(i << 2) + 3] = i32[(j << 2) + 3]; // the secs' bits, copied as they are
      np[i] = parent[j];
    }
  }

  delete(cell: number): void {
    const { f64, i32, parent } = this;
    const mask = this.capacity - 1;
    let hole = cell;
    let j = cell;
    for (;;) {
      j = (j + 1) & mask;
      const k = f64[j << 1];
      if (k === 0) break;
      const h = (mix(k) << SHARD_BITS) >>> this.shift;
      // the entry at j may move back to `hole` unless its home lies cyclically in (hole, j]
      if (hole <= j ? hole < h && h <= j : hole < h || h <= j) continue;
      f64[hole << 1] = k;
      i32[(hole << 2) + 2] = i32[(j << 2) + 2];
      i32[(hole << 2) + 3] = i32[(j << 2) + 3];
      parent[hole] = parent[j];
      hole = j;
    }
    f64[hole << 1] = 0;
    this.size--;
  }
}

/**
 * One model's blocks: SHARDS tables addressed by the key's mixed bits. A cell is named by a
 * reference `shard * CELL_SPAN + cell`, valid until the next insertion or deletion.
 */
class ModelIndex {
  readonly shards: Shard[] = [];
  readonly shared: (SharedBlock | undefined)[] = [];
  private readonly freeShared: number[] = [];
  /** blocks held per worker slot */
  readonly held: number[] = [];
  /** whether the last `findOrInsert` created the cell (its owner and secs are then unset) */
  inserted = false;

  constructor() {
    for (let i = 0; i < SHARDS; i++) this.shards.push(new Shard());
  }

  get size(): number {
    let n = 0;
    for (const sh of this.shards) n += sh.size;
    return n;
  }

  /** the reference of `key`'s cell, or −1 */
  find(key: number): number {
    const m = mix(key);
    const s = m >>> (32 - SHARD_BITS);
    const c = this.shards[s].find(key, m);
    return c < 0 ? -1 : s * CELL_SPAN + c;
  }

  /** the reference of `key`'s cell, inserting it if absent (sets `inserted`) */
  findOrInsert(key: number): number {
    const m = mix(key);
    const s = m >>> (32 - SHARD_BITS);
    const c = this.shards[s].findOrInsert(key, m);
    this.inserted = c < 0;
    return s * CELL_SPAN + (c < 0 ? -1 - c : c);
  }

  key(ref: number): number {
    return this.shards[ref >>> (32 - SHARD_BITS)].f64[(ref & CELL_MASK) << 1];
  }

  owner(ref: number): number {
    return this.shards[ref >>> (32 - SHARD_BITS)].i32[((ref & CELL_MASK) << 2) + 2];
  }

  setOwner(ref: number, owner: number, secs: number): void {
    const sh = this.shards[ref >>> (32 - SHARD_BITS)];
    const c = (ref & CELL_MASK) << 2;
    sh.i32[c + 2] = owner;
    sh.u32[c + 3] = secs;
  }

  secs(ref: number): number {
    return this.shards[ref >>> (32 - SHARD_BITS)].u32[((ref & CELL_MASK) << 2) + 3];
  }

  parent(ref: number): number {
    return this.shards[ref >>> (32 - SHARD_BITS)].parent[ref & CELL_MASK];
  }

  setParent(ref: number, parent: number): void {
    this.shards[ref >>> (32 - SHARD_BITS)].parent[ref & CELL_MASK] = parent;
  }

  /** removes a cell (a shared cell's holder list is released) */
  delete(ref: number): void {
    const o = this.owner(ref);
    if (o < 0) this.releaseShared(-1 - o);
    this.shards[ref >>> (32 - SHARD_BITS)].delete(ref & CELL_MASK);
  }

  /** every cell's reference, in table order */
  refs(): number[] {
    const out: number[] = [];
    for (let s = 0; s < SHARDS; s++) {
      const { f64, capacity } = this.shards[s];
      for (let c = 0; c < capacity; c++) if (f64[c << 1] !== 0) out.push(s * CELL_SPAN + c);
    }
    return out;
  }

  newShared(block: SharedBlock): number {
    const i = this.freeShared.pop();
    if (i !== undefined) {
      this.shared[i] = block;
      return i;
    }
    this.shared.push(block);
    return this.shared.length - 1;
  }

  releaseShared(i: number): void {
    this.shared[i] = undefined;
    this.freeShared.push(i);
  }

  /** last-seen second of `slot` on the cell, or −1 if it does not hold it */
  secsAt(ref: number, slot: number): number {
    const o = this.owner(ref);
    if (o >= 0) return o === slot ? this.secs(ref) : -1;
    const b = this.shared[-1 - o];
    if (!b) return -1;
    const i = b.slots.indexOf(slot);
    return i >= 0 ? b.secs[i] : -1;
  }

  holds(ref: number, slot: number): boolean {
    const o = this.owner(ref);
    if (o >= 0) return o === slot;
    const b = this.shared[-1 - o];
    return b !== undefined && b.slots.includes(slot);
  }

  /** whether any holder of the cell is a candidate (`candidateOfSlot[slot] ≥ 0`) */
  heldByCandidate(ref: number, candidateOfSlot: Int32Array): boolean {
    const o = this.owner(ref);
    if (o >= 0) return o < candidateOfSlot.length && candidateOfSlot[o] >= 0;
    const b = this.shared[-1 - o];
    if (!b) return false;
    for (const s of b.slots) if (s < candidateOfSlot.length && candidateOfSlot[s] >= 0) return true;
    return false;
  }

  /** changes when a worker starts or stops holding blocks of this model */
  holdersVersion = 0;

  addHeld(slot: number, delta: number): void {
    while (this.held.length <= slot) this.held.push(0);
    const before = this.held[slot];
    const after = before + delta;
    this.held[slot] = after;
    if (before > 0 !== after > 0) this.holdersVersion++;
  }
}

export interface CacheMatch {
  /** worker id → number of leading blocks it holds */
  depths: Map<string, number>;
  /** deepest block index + 1 known to any worker */
  known: number;
}

const NO_HELD: readonly number[] = [];

/**
 * "Is block i of the prompt held?" for `deepestHeld`: by one worker (`slot` ≥ 0) or by any candidate.
 * One per index, refilled per lookup, so the request path allocates nothing; it remembers the cell
 * of the deepest held block it saw.
 */
class HeldProbe {
  idx: ModelIndex | undefined;
  hashes: BlockList = NO_HELD;
  slot = -1;
  candidateOfSlot: Int32Array = new Int32Array(0);
  everyHolderIsCandidate = false;
  lastIndex = -1;
  lastCell = -1;

  held(i: number): boolean {
    const idx = this.idx as ModelIndex;
    const cell = idx.find(blockAt(this.hashes, i));
    if (cell < 0) return false;
    const ok =
      this.slot >= 0
        ? idx.holds(cell, this.slot)
        : this.everyHolderIsCandidate || idx.heldByCandidate(cell, this.candidateOfSlot);
    if (ok && i > this.lastIndex) {
      this.lastIndex = i;
      this.lastCell = cell;
    }
    return ok;
  }

  /** drops the references to the prompt and the index after a lookup */
  clear(): void {
    this.idx = undefined;
    this.hashes = NO_HELD;
  }
}

export class CacheIndex {
  private readonly models = new Map<string, ModelIndex>();
  private readonly slotOf = new Map<string, number>();
  private readonly workerOfSlot: (string | undefined)[] = [];
  private readonly freeSlots: number[] = [];
  private slotsVersion = 0;
  private readonly probe = new HeldProbe();

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
    for (const m of this.models.values()) n += m.size;
    return n;
  }

  /** blocks held by one worker for one model */
  heldBy(model: string, workerId: string): number {
    const slot = this.slotOf.get(workerId);
    if (slot === undefined) return 0;
    return this.models.get(model)?.held[slot] ?? 0;
  }

  /** blocks held by one worker over every model (diagnostics: `/mesh/workers` `cache_blocks`) */
  heldByWorker(workerId: string): number {
    const slot = this.slotOf.get(workerId);
    if (slot === undefined) return 0;
    let n = 0;
    for (const idx of this.models.values()) n += idx.held[slot] ?? 0;
    return n;
  }

  /**
   * Changes whenever a worker gets or loses its slot; a mapping built from `slotOfWorker` stays
   * valid while this does not change.
   */
  get slotVersion(): number {
    return this.slotsVersion;
  }

  /** the worker's slot (an index into `heldCounts` and `candidateOfSlot` arrays), or −1 */
  slotOfWorker(workerId: string): number {
    return this.slotOf.get(workerId) ?? -1;
  }

  /** blocks held per worker slot for a model (a live view: read it, do not keep it) */
  heldCounts(model: string): readonly number[] {
    return this.models.get(model)?.held ?? NO_HELD;
  }

  /**
   * Changes whenever a worker starts or stops holding blocks of the model: a conclusion drawn
   * from which slots have `heldCounts` > 0 stays valid while this does not change.
   */
  holdersVersion(model: string): number {
    return this.models.get(model)?.holdersVersion ?? 0;
  }

  /**
   * The deepest prefix of `hashes` held by a candidate: returns its length in blocks (0: none)
   * and fills `holders` with the candidate index (`candidateOfSlot[slot]`) of every candidate
   * holding it. Binary search over the prompt's blocks (see the module comment).
   * `everyHolderIsCandidate`: the caller knows that every worker holding blocks of the model is a
   * candidate (see `holdersVersion`), so a block's presence is enough until the last lookup.
   */
  deepest(
    model: string,
    hashes: BlockList,
    candidateOfSlot: Int32Array,
    holders: number[],
    everyHolderIsCandidate = false,
  ): number {
    holders.length = 0;
    const idx = this.models.get(model);
    const n = hashes.length;
    if (!idx || n === 0) return 0;
    const probe = this.probe;
    probe.idx = idx;
    probe.hashes = hashes;
    probe.slot = -1;
    probe.candidateOfSlot = candidateOfSlot;
    probe.everyHolderIsCandidate = everyHolderIsCandidate;
    probe.lastIndex = -1;
    const depth = deepestHeld(n, probe);
    // the search always probes block depth − 1 (the deepest held), so its cell is known
    const loCell = depth > 0 && probe.lastIndex === depth - 1 ? probe.lastCell : -1;
    probe.clear();
    if (loCell < 0) return 0;
    const o = idx.owner(loCell);
    if (o >= 0) {
      const c = o < candidateOfSlot.length ? candidateOfSlot[o] : -1;
      if (c >= 0) holders.push(c);
    } else {
      const b = idx.shared[-1 - o];
      if (b) {
        for (const s of b.slots) {
          const c = s < candidateOfSlot.length ? candidateOfSlot[s] : -1;
          if (c >= 0) holders.push(c);
        }
      }
    }
    return depth;
  }

  /**
   * How many leading blocks of `hashes` one worker holds, looking at the first `limit` only.
   * Binary search, as `deepest`.
   */
  depthOf(model: string, hashes: BlockList, workerId: string, limit: number = hashes.length): number {
    const slot = this.slotOf.get(workerId);
    const idx = this.models.get(model);
    const n = Math.min(limit, hashes.length);
    if (slot === undefined || !idx || n <= 0) return 0;
    const probe = this.probe;
    probe.idx = idx;
    probe.hashes = hashes;
    probe.slot = slot;
    probe.lastIndex = -1;
    const depth = deepestHeld(n, probe);
    probe.clear();
    return depth;
  }

  /** exact per-worker deepest held block (one lookup per block; tests and diagnostics) */
  match(model: string, hashes: readonly number[]): CacheMatch {
    const depths = new Map<string, number>();
    const idx = this.models.get(model);
    let known = 0;
    if (!idx) return { depths, known };
    const bySlot = new Map<number, number>();
    for (let i = 0; i < hashes.length; i++) {
      if (!validKey(hashes[i])) continue;
      const cell = idx.find(hashes[i]);
      if (cell < 0) continue;
      known = i + 1;
      const o = idx.owner(cell);
      if (o >= 0) bySlot.set(o, i + 1);
      else for (const s of idx.shared[-1 - o]?.slots ?? []) bySlot.set(s, i + 1);
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
    let parent = 0;
    if (validKey(ev.anchor)) {
      changed = this.put(idx, ev.anchor, 0, slot, secs);
      parent = ev.anchor;
    }
    for (const h of ev.hashes) {
      if (!validKey(h)) continue;
      if (this.put(idx, h, parent, slot, secs)) changed = true;
      parent = h;
    }
    return changed;
  }

  /** canonical content: model → hash → sorted [worker, last-seen second] pairs */
  exportState(): [string, [number, [string, number][]][]][] {
    const out: [string, [number, [string, number][]][]][] = [];
    for (const [model, idx] of [...this.models].sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0))) {
      const blocks: [number, [string, number][]][] = [];
      for (const ref of idx.refs()) {
        const h = idx.key(ref);
        const o = idx.owner(ref);
        const b = o < 0 ? idx.shared[-1 - o] : undefined;
        const pairs: [string, number][] = b
          ? b.slots.map((s, i): [string, number] => [this.workerOfSlot[s] ?? '?', b.secs[i]])
          : [[this.workerOfSlot[o] ?? '?', idx.secs(ref)]];
        pairs.sort((x, y) => (x[0] < y[0] ? -1 : x[0] > y[0] ? 1 : 0));
        blocks.push([h, pairs]);
      }
      blocks.sort((a, b) => a[0] - b[0]);
      if (blocks.length > 0) out.push([model, blocks]);
    }
    return out;
  }

  /**
   * Every (model, worker, block) the index holds, with the block's parent hash and its last-seen
   * time as a packed HLC (second precision): each row re-applied as `{anchor: parent, hashes: [hash]}`
   * rebuilds the same chains (snapshots for joining peers, persistence).
   */
  forEachBlock(
    fn: (model: string, worker: string, hash: number, parent: number, seen: number) => void,
  ): void {
    for (const [model, idx] of this.models) {
      for (const ref of idx.refs()) {
        const h = idx.key(ref);
        const parent = idx.parent(ref);
        const o = idx.owner(ref);
        if (o >= 0) {
          const w = this.workerOfSlot[o];
          if (w !== undefined) fn(model, w, h, parent, seenOf(idx.secs(ref)));
          continue;
        }
        const b = idx.shared[-1 - o];
        if (!b) continue;
        for (let i = 0; i < b.slots.length; i++) {
          const w = this.workerOfSlot[b.slots[i]];
          if (w !== undefined) fn(model, w, h, parent, seenOf(b.secs[i]));
        }
      }
    }
  }

  /** drops a worker from every model's index */
  removeWorker(workerId: string): void {
    const slot = this.slotOf.get(workerId);
    if (slot === undefined) return;
    for (const idx of this.models.values()) {
      if (!(idx.held[slot] > 0)) continue;
      const drop: number[] = [];
      for (const ref of idx.refs()) if (idx.holds(ref, slot)) drop.push(idx.key(ref));
      for (const h of drop) this.dropSlot(idx, idx.find(h), slot);
    }
    this.slotOf.delete(workerId);
    this.workerOfSlot[slot] = undefined;
    this.freeSlots.push(slot);
    this.slotsVersion++;
  }

  /**
   * Gives every block of `from` to `to` (same parents, the later last-seen time where both hold
   * one), then drops `from`: two registrations of one engine (one URL) that collapsed into one
   * worker hold one KV cache. Returns the blocks moved.
   */
  moveWorker(from: string, to: string): number {
    const src = this.slotOf.get(from);
    if (src === undefined || from === to) return 0;
    const blocks: [ModelIndex, number, number, number][] = [];
    for (const idx of this.models.values()) {
      if (!(idx.held[src] > 0)) continue;
      for (const ref of idx.refs()) {
        if (idx.holds(ref, src)) blocks.push([idx, idx.key(ref), idx.parent(ref), idx.secsAt(ref, src)]);
      }
    }
    this.removeWorker(from);
    const dst = this.slotFor(to);
    for (const [idx, h, parent, secs] of blocks) this.put(idx, h, parent, dst, secs);
    return blocks.length;
  }

  /**
   * Drops the worker's blocks last seen at or before `upToSeen` (a packed HLC, compared at the
   * index's one-second precision), in every model: the worker's cache was flushed then. Returns the
   * blocks dropped; the worker keeps its slot.
   */
  dropWorkerBlocks(workerId: string, upToSeen: number): number {
    const slot = this.slotOf.get(workerId);
    if (slot === undefined) return 0;
    const upTo = secsOf(upToSeen);
    let dropped = 0;
    for (const idx of this.models.values()) {
      if (!(idx.held[slot] > 0)) continue;
      const drop: number[] = [];
      for (const ref of idx.refs()) {
        const secs = idx.secsAt(ref, slot);
        if (secs >= 0 && secs <= upTo) drop.push(idx.key(ref));
      }
      for (const h of drop) if (this.dropSlot(idx, idx.find(h), slot)) dropped++;
    }
    return dropped;
  }

  /**
   * Evicts, per model and worker over its budget, the least recently used blocks, leaves first:
   * a block's recency is the latest of its own and its held descendants' (as an engine's radix
   * cache refreshes a whole path when a request uses it), and among equally recent blocks the
   * descendants go before their ancestors, so what a worker holds stays prefix-closed.
   */
  evict(): number {
    let evicted = 0;
    for (const idx of this.models.values()) {
      const over: number[] = [];
      for (let s = 0; s < idx.held.length; s++) if (idx.held[s] > this.maxBlocksPerWorker) over.push(s);
      if (over.length === 0) continue;
      const refs = idx.refs();
      const drops: [number, number][] = [];
      for (const slot of over) {
        for (const h of this.evictionVictims(idx, refs, slot, idx.held[slot] - this.maxBlocksPerWorker)) {
          drops.push([h, slot]);
        }
      }
      for (const [h, slot] of drops) {
        const cell = idx.find(h);
        if (cell >= 0 && this.dropSlot(idx, cell, slot)) evicted++;
      }
    }
    return evicted;
  }

  /** the hashes of `excess` blocks of `slot` to drop (see `evict`); `refs`: every cell */
  private evictionVictims(idx: ModelIndex, refs: readonly number[], slot: number, excess: number): number[] {
    const cells: number[] = [];
    for (const ref of refs) if (idx.holds(ref, slot)) cells.push(ref);
    const n = cells.length;
    const eff = new Float64Array(n);
    /** cell reference → position in `cells` */
    const pos = new Map<number, number>();
    for (let j = 0; j < n; j++) {
      pos.set(cells[j], j);
      eff[j] = idx.secsAt(cells[j], slot);
    }
    /** position of the held parent of cells[j], or −1 */
    const parentOf = (j: number): number => {
      const p = idx.parent(cells[j]);
      if (p === 0) return -1;
      const pc = idx.find(p);
      return pc >= 0 ? (pos.get(pc) ?? -1) : -1;
    };
    // recency flows up to the ancestors; each step raises a value, so cycles (malformed deltas) end
    for (let j = 0; j < n; j++) {
      const e = eff[j];
      for (let k = parentOf(j); k >= 0 && eff[k] < e; k = parentOf(k)) eff[k] = e;
    }
    const victims: number[] = [];
    if (excess >= n) {
      for (const c of cells) victims.push(idx.key(c));
    } else {
      const sorted = Float64Array.from(eff).sort();
      const cutoff = sorted[excess - 1];
      // strictly older than the cutoff: all of them (their descendants are no more recent)
      const ties: number[] = [];
      for (let j = 0; j < n; j++) {
        if (eff[j] < cutoff) victims.push(idx.key(cells[j]));
        else if (eff[j] === cutoff) ties.push(j);
      }
      // at the cutoff: peel leaves, so no block goes before one of its held descendants
      let need = excess - victims.length;
      const children = new Int32Array(n);
      const parents = new Int32Array(n);
      for (const j of ties) {
        const p = parentOf(j);
        parents[j] = p >= 0 && eff[p] === cutoff ? p : -1;
        if (parents[j] >= 0) children[parents[j]]++;
      }
      const dropped = new Uint8Array(n);
      const leaves = ties.filter((j) => children[j] === 0);
      while (need > 0 && leaves.length > 0) {
        const j = leaves.pop() as number;
        victims.push(idx.key(cells[j]));
        dropped[j] = 1;
        need--;
        const p = parents[j];
        if (p >= 0 && --children[p] === 0) leaves.push(p);
      }
      // only a cycle of malformed parents can leave some: drop any
      for (let t = 0; need > 0 && t < ties.length; t++) {
        if (!dropped[ties[t]]) {
          victims.push(idx.key(cells[ties[t]]));
          need--;
        }
      }
    }
    return victims;
  }

  private put(idx: ModelIndex, h: number, parent: number, slot: number, secs: number): boolean {
    const cell = idx.findOrInsert(h);
    if (parent !== 0 && parent !== h && idx.parent(cell) === 0) idx.setParent(cell, parent);
    if (idx.inserted) {
      idx.setOwner(cell, slot, secs);
      idx.addHeld(slot, 1);
      return true;
    }
    const o = idx.owner(cell);
    if (o >= 0) {
      if (o === slot) {
        if (secs <= idx.secs(cell)) return false;
        idx.setOwner(cell, slot, secs);
        return true;
      }
      idx.setOwner(cell, -1 - idx.newShared({ slots: [o, slot], secs: [idx.secs(cell), secs] }), 0);
      idx.addHeld(slot, 1);
      return true;
    }
    const b = idx.shared[-1 - o] as SharedBlock;
    const i = b.slots.indexOf(slot);
    if (i >= 0) {
      if (secs <= b.secs[i]) return false;
      b.secs[i] = secs;
      return true;
    }
    b.slots.push(slot);
    b.secs.push(secs);
    idx.addHeld(slot, 1);
    return true;
  }

  /** drops one worker from a cell; true if it held it */
  private dropSlot(idx: ModelIndex, cell: number, slot: number): boolean {
    const o = idx.owner(cell);
    if (o >= 0) {
      if (o !== slot) return false;
      idx.delete(cell);
    } else {
      const si = -1 - o;
      const b = idx.shared[si];
      if (!b) return false;
      const i = b.slots.indexOf(slot);
      if (i < 0) return false;
      b.slots.splice(i, 1);
      b.secs.splice(i, 1);
      if (b.slots.length === 1) {
        idx.setOwner(cell, b.slots[0], b.secs[0]);
        idx.releaseShared(si);
      }
    }
    idx.addHeld(slot, -1);
    return true;
  }

  private slotFor(workerId: string): number {
    let slot = this.slotOf.get(workerId);
    if (slot === undefined) {
      slot = this.freeSlots.pop() ?? this.workerOfSlot.length;
      this.slotOf.set(workerId, slot);
      this.workerOfSlot[slot] = workerId;
      this.slotsVersion++;
    }
    return slot;
  }
}
