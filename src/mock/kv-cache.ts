/**
 * A prefix KV cache like an engine's radix cache, at block granularity: a prompt's tokens split into
 * full blocks of `blockSize` tokens (the trailing partial block is never cached); block i is keyed by
 * a chained hash of blocks 0..i, so one key names a whole prefix. A lookup counts the leading blocks
 * present; after prefill every full block of the prompt is inserted. LRU eviction over `capacity`
 * blocks, using a Set's insertion order (delete + re-add = touch).
 */

const LANE_A_SEED = 0x811c9dc5;
const LANE_A_PRIME = 0x01000193;
const LANE_B_SEED = 0x9e3779b9;
const LANE_B_PRIME = 0x85ebca6b;
const TWO_POW_21 = 2 ** 21;

export class KvCache {
  private readonly blocks = new Set<number>();

  constructor(
    readonly capacity: number,
    readonly blockSize: number,
  ) {}

  /** cached blocks */
  get size(): number {
    return this.blocks.size;
  }

  /** Chained keys of the full blocks of a token sequence (53-bit integers, never 0). */
  keys(ids: ArrayLike<number>): number[] {
    const bs = this.blockSize;
    const n = Math.floor(ids.length / bs);
    const out = new Array<number>(n);
    let a = LANE_A_SEED;
    let b = LANE_B_SEED;
    let pos = 0;
    for (let i = 0; i < n; i++) {
      const end = pos + bs;
      for (; pos < end; pos++) {
        const id = ids[pos];
        a = Math.imul(a ^ id, LANE_A_PRIME);
        b = Math.imul(b ^ id, LANE_B_PRIME);
        b ^= b >>> 15;
      }
      // fold the block boundary in
      a = Math.imul(a ^ 0xff, LANE_A_PRIME);
      b = Math.imul(b ^ (b >>> 13), 0xc2b2ae35);
      const h = (a >>> 0) * TWO_POW_21 + ((b >>> 0) >>> 11);
      out[i] = h === 0 ? 1 : h;
    }
    return out;
  }

  /** How many leading blocks of `keys` are cached (cached tokens = result × blockSize). */
  match(keys: readonly number[]): number {
    let i = 0;
    while (i < keys.length && this.blocks.has(keys[i])) i++;
    return i;
  }

  /**
   * Insert (or touch) every block of a prompt. Deepest block first, so a prefix is always more
   * recently used than its extensions and eviction trims leaves before roots, as a radix cache does.
   */
  insert(keys: readonly number[]): void {
    const blocks = this.blocks;
    for (let i = keys.length - 1; i >= 0; i--) {
      const k = keys[i];
      if (blocks.has(k)) blocks.delete(k);
      blocks.add(k);
    }
    let excess = blocks.size - this.capacity;
    if (excess > 0) {
      for (const k of blocks) {
        blocks.delete(k);
        if (--excess === 0) break;
      }
    }
  }

  flush(): void {
    this.blocks.clear();
  }
}
