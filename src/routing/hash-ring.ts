/**
 * A consistent-hash ring over worker URLs, shared by consistent_hashing and prefix_hash.
 *
 * SMG places 150 virtual nodes per URL at the first 8 bytes of BLAKE3(`{url}#{i}`); we use a fast
 * non-cryptographic 53-bit hash (two murmur3-style 32-bit lanes, each finalised with fmix32), so a
 * key's position costs a few ns per character instead of a SHA-256 digest, positions are plain
 * numbers in a sorted Float64Array and a lookup is a binary search plus a short walk with no
 * allocation. Keys are not adversarial here (a client choosing its routing key already chooses its
 * worker), so a cryptographic hash buys nothing. Every peer computes the same ring from the same
 * URLs, so a key maps to the same worker on every gateway of the mesh.
 *
 * Owns: ring construction and lookup. Never: worker health (the caller's `pick` decides).
 */

export const VIRTUAL_NODES = 150;

const TWO_POW_21 = 2 ** 21;
const TWO_POW_32 = 4294967296;

/** murmur3's 32-bit finaliser: full avalanche */
function fmix32(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  return h ^ (h >>> 16);
}

/** two 32-bit lanes → a 53-bit safe integer, after cross-mixing and finalising both */
function fold53(h1: number, h2: number): number {
  const a = fmix32(h1 ^ Math.imul(h2, 0x27d4eb2f));
  const b = fmix32(h2 ^ Math.imul(a, 0x165667b1));
  return (a >>> 0) * TWO_POW_21 + (b >>> 11);
}

/** position of a key on the ring: a 53-bit hash of its UTF-16 code units */
export function ringPosition(key: string): number {
  const n = key.length;
  let h1 = 0x9747b28c ^ n;
  let h2 = 0x2c1b3c6d ^ n;
  for (let i = 0; i < n; i++) {
    let k = Math.imul(key.charCodeAt(i), 0xcc9e2d51);
    k = Math.imul((k << 15) | (k >>> 17), 0x1b873593);
    h1 ^= k;
    h1 = (Math.imul((h1 << 13) | (h1 >>> 19), 5) + 0xe6546b64) | 0;
    h2 ^= k;
    h2 = (Math.imul((h2 << 17) | (h2 >>> 15), 9) + 0x38b34ae5) | 0;
  }
  return fold53(h1, h2);
}

/** position on the ring of a number key (e.g. a 53-bit block or token hash), no string needed */
export function numberPosition(x: number): number {
  const lo = x >>> 0;
  const hi = (x / TWO_POW_32) | 0;
  const h1 = fmix32(lo ^ Math.imul(hi, 0x85ebca6b) ^ 0x5bd1e995);
  const h2 = fmix32(hi ^ Math.imul(h1, 0xcc9e2d51) ^ 0x27d4eb2f);
  return fold53(h1, h2);
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

  /** index of the first virtual node at or after `position` (wrapping to 0) */
  private firstAt(position: number): number {
    const n = this.positions.length;
    let lo = 0;
    let hi = n;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.positions[mid] < position) lo = mid + 1;
      else hi = mid;
    }
    return lo === n ? 0 : lo;
  }

  /**
   * As `walk`, with the picks given as an array aligned with `urls` (undefined: skip that URL):
   * no callback, no string lookup.
   */
  walkOwners<T>(position: number, byOwner: readonly (T | undefined)[]): T | undefined {
    const n = this.positions.length;
    if (n === 0) return undefined;
    const start = this.firstAt(position);
    let lastOwner = -1;
    for (let k = 0; k < n; k++) {
      let j = start + k;
      if (j >= n) j -= n;
      const owner = this.owners[j];
      if (owner === lastOwner) continue;
      lastOwner = owner;
      const hit = byOwner[owner];
      if (hit !== undefined) return hit;
    }
    return undefined;
  }

  /**
   * Walks clockwise from `position` (the first virtual node at or after it, wrapping) and returns
   * the first non-undefined result of `pick(url)`; URLs `pick` rejects are skipped.
   */
  walk<T>(position: number, pick: (url: string) => T | undefined): T | undefined {
    const n = this.positions.length;
    if (n === 0) return undefined;
    const lo = this.firstAt(position);
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
