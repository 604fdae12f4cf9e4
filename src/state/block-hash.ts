/**
 * Chained block hashes of a prompt: block i's hash covers blocks 0..i, so one hash names a whole
 * prefix. HTTP mode hashes characters (`blockChars` per block); the trailing partial block is not
 * hashed, as engines only cache full pages. One pass over the text, no allocation per character.
 *
 * The hash is two 32-bit FNV-1a-style lanes folded into a 53-bit safe integer, so it can key a
 * plain Map<number, …> and travel as a JSON number. 0 is reserved for "no block".
 */

const FNV_OFFSET = 0x811c9dc5;
const FNV_PRIME = 0x01000193;
const LANE2_SEED = 0x9e3779b9;
const LANE2_PRIME = 0x85ebca6b;
const TWO_POW_21 = 2 ** 21;

export function blockHashes(text: string, blockChars: number): number[] {
  const blocks = Math.floor(text.length / blockChars);
  const out = new Array<number>(blocks);
  let a = FNV_OFFSET;
  let b = LANE2_SEED;
  let pos = 0;
  for (let i = 0; i < blocks; i++) {
    const end = pos + blockChars;
    for (; pos < end; pos++) {
      const c = text.charCodeAt(pos);
      a = Math.imul(a ^ c, FNV_PRIME);
      b = Math.imul(b ^ c, LANE2_PRIME);
      b ^= b >>> 15;
    }
    // fold the block boundary in so "ab|c" and "a|bc" differ
    a = Math.imul(a ^ 0xff, FNV_PRIME);
    b = Math.imul(b ^ (b >>> 13), 0xc2b2ae35);
    const h = (a >>> 0) * TWO_POW_21 + ((b >>> 0) >>> 11);
    out[i] = h === 0 ? 1 : h;
  }
  return out;
}
