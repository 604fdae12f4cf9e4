/**
 * A consistent-hash ring over worker URLs, shared by consistent_hashing and prefix_hash.
 *
 * SMG places 150 virtual nodes per URL at the first 8 bytes of BLAKE3(`{url}#{i}`); we use SHA-256
 * (in node:crypto, no dependency) folded to a 53-bit safe integer, so positions are plain numbers
 * in a sorted Float64Array and a lookup is a binary search plus a short walk with no allocation.
 * Every peer computes the same ring from the same URLs, so a key maps to the same worker on every
 * gateway of the mesh.
 *
 * Owns: ring construction and lookup. Never: worker health (the caller's `pick` decides).
 */
import { createHash } from 'node:crypto';

export const VIRTUAL_NODES = 150;

const TWO_POW_21 = 2 ** 21;

/** position of a key on the ring: the first 8 bytes of SHA-256, folded to 53 bits */
export function ringPosition(key: string): number {
  const d = createHash('sha256').update(key).digest();
  return d.readUInt32BE(0) * TWO_POW_21 + (d.readUInt32BE(4) >>> 11);
}

export class HashRing {
  readonly urls: readonly string[];
  private readonly urlSet: ReadonlySet<string>;
  private readonly positions: Float64Array;
  /** index into `urls` of the virtual node at the same index of `positions` */
  private readonly owners: Uint32Array;

  constructor(urls: Iterable<string>, vnodes: number = VIRTUAL_NODES) {
    const unique = [...new Set(urls)].sort();
    this.urls = unique;
    this.urlSet = new Set(unique);
    const total = unique.length * vnodes;
    const pos = new Float64Array(total);
    const own = new Uint32Array(total);
    for (let u = 0; u < unique.length; u++) {
      for (let i = 0; i < vnodes; i++) {
        pos[u * vnodes + i] = ringPosition(`${unique[u]}#${i}`);
        own[u * vnodes + i] = u;
      }
    }
    const order = Array.from({ length: total }, (_, i) => i);
    // ties on position (astronomically rare) break by URL so every peer builds the same ring
    order.sort((a, b) => pos[a] - pos[b] || own[a] - own[b]);
    this.positions = new Float64Array(total);
    this.owners = new Uint32Array(total);
    for (let k = 0; k < total; k++) {
      this.positions[k] = pos[order[k]];
      this.owners[k] = own[order[k]];
    }
  }

  has(url: string): boolean {
    return this.urlSet.has(url);
  }

  /**
   * Walks clockwise from `position` (the first virtual node at or after it, wrapping) and returns
   * the first non-undefined result of `pick(url)`; URLs `pick` rejects are skipped.
   */
  walk<T>(position: number, pick: (url: string) => T | undefined): T | undefined {
    const n = this.positions.length;
    if (n === 0) return undefined;
    let lo = 0;
    let hi = n;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.positions[mid] < position) lo = mid + 1;
      else hi = mid;
    }
    let lastOwner = -1;
    for (let k = 0; k < n; k++) {
      const owner = this.owners[(lo + k) % n];
      if (owner === lastOwner) continue; // consecutive vnodes of a rejected URL
      lastOwner = owner;
      const hit = pick(this.urls[owner]);
      if (hit !== undefined) return hit;
    }
    return undefined;
  }
}
