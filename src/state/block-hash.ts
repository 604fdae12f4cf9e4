/**
 * Chained block hashes of a prompt: block i's hash covers blocks 0..i, so one hash names a whole
 * prefix. HTTP mode hashes characters (`blockChars` UTF-16 code units per block); the trailing
 * partial block is not hashed, as engines only cache full pages.
 *
 * The function: the code units of a block, paired into 32-bit words (c0 | c1 << 16); a pair of
 * words (w0, w1) enters two 32-bit multiply / xor-shift lanes (a, b) as w0 + w1·K1 and w1 + w0·K2
 * (a bijection of the 64 input bits, as 1 − K1·K2 is odd), so a step absorbs four code units with
 * one dependent multiply per lane. Within a block, words 4k, 4k+1 go to (a, b) and words 4k+2,
 * 4k+3 to a second pair of lanes seeded from (a, b), so two independent chains run side by side;
 * the leftover pair, word and code unit go to (a, b). At the block's end the second pair is
 * merged in and the boundary folded in; (a, b) carry over to the next block (the chaining) and
 * are folded into a 53-bit safe integer, so a hash can key a number table and travel as a JSON
 * number. 0 is reserved for "no block".
 *
 * Speed: the text is copied once as UTF-16LE into a reused buffer (a native copy) and read as
 * int32 words, about 0.5–0.8 ns per character (a charCodeAt loop: 2 ns); big-endian hosts and odd
 * block sizes read the same words with charCodeAt (same hashes, slower).
 */

// int32 arithmetic throughout (seeds and words as int32: no double conversions in the loop)
const LANE1_SEED = 0x811c9dc5 | 0;
const LANE1_PRIME = 0x01000193;
const LANE2_SEED = 0x9e3779b9 | 0;
const LANE2_PRIME = 0x85ebca6b;
const PAIR_K1 = 0x2545f491;
/** even, so that 1 − K1·K2 is odd */
const PAIR_K2 = 0x7feb352c;
/** the second pair of lanes of a block starts from the first pair xor these */
const ODD_SEED1 = 0x5bd1e995;
const ODD_SEED2 = 0x27d4eb2f;
const TWO_POW_21 = 2 ** 21;
const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;
/** texts up to this many code units reuse one buffer; longer ones get a temporary one */
const MAX_REUSED_CHARS = 1 << 20;

let buf = Buffer.allocUnsafeSlow(0);
let words = new Int32Array(0);
/** whose text the reused buffer holds, and how many code units of it */
let bufOwner: PromptHashes | undefined;
let bufChars = 0;

/** the owner's text as int32 words, at least its first `chars` code units */
function wordsOf(owner: PromptHashes, text: string, chars: number): Int32Array {
  if (bufOwner === owner && bufChars >= chars) return words;
  const bytes = chars * 2;
  if (buf.length < bytes) {
    const b = Buffer.allocUnsafeSlow(Math.max(bytes, 2 * buf.length, 8192));
    const w = new Int32Array(b.buffer, b.byteOffset, b.length >>> 2);
    if (chars > MAX_REUSED_CHARS) {
      b.write(text, 0, bytes, 'utf16le');
      return w;
    }
    buf = b;
    words = w;
  }
  buf.write(text, 0, bytes, 'utf16le');
  bufOwner = owner;
  bufChars = chars;
  return words;
}

/**
 * A prompt's chained block hashes, computed on demand: `at(i)` hashes blocks up to i only, so a
 * lookup that stops early (a miss on the first block, a match of a shared system prompt) does not
 * pay for the rest of the text; `all()` finishes the job (off the decision path, when recording).
 */
export class PromptHashes {
  /** full blocks of the text (at most `maxBlocks`) */
  readonly length: number;
  private readonly out: number[];
  private done = 0;
  /** the two lanes after block `done` − 1 */
  a = LANE1_SEED;
  b = LANE2_SEED;

  constructor(
    private readonly text: string,
    private readonly blockChars: number,
    maxBlocks: number = Infinity,
  ) {
    this.length = Math.max(0, Math.min(Math.floor(text.length / blockChars), maxBlocks));
    this.out = new Array<number>(this.length);
  }

  /** the hash of blocks 0..i (0 ≤ i < length; 0 outside) */
  at(i: number): number {
    if (i < this.done) return i >= 0 ? this.out[i] : 0;
    if (!(i < this.length)) return 0;
    this.extend(i + 1);
    return this.out[i];
  }

  /** every block's hash (computes what is left); the array is the instance's own */
  all(): number[] {
    if (this.done < this.length) this.extend(this.length);
    return this.out;
  }

  private extend(to: number): void {
    const bc = this.blockChars;
    if (LITTLE_ENDIAN && (bc & 1) === 0) {
      hashWords(this, wordsOf(this, this.text, to * bc), this.out, this.done, to, bc >>> 1);
    } else {
      hashChars(this, this.text, this.out, this.done, to, bc);
    }
    this.done = to;
  }
}

/** the chained block hashes of a prompt: an array, or computed on demand */
export type BlockList = readonly number[] | PromptHashes;

/** block i's hash of a BlockList (0 outside it) */
export function blockAt(list: BlockList, i: number): number {
  return list instanceof PromptHashes ? list.at(i) : (list[i] ?? 0);
}

/** every hash of a BlockList, as an array */
export function blockArray(list: BlockList): readonly number[] {
  return list instanceof PromptHashes ? list.all() : list;
}

/** the chained hashes of the text's full blocks, at most `maxBlocks` of them */
export function blockHashes(text: string, blockChars: number, maxBlocks: number = Infinity): number[] {
  return new PromptHashes(text, blockChars, maxBlocks).all();
}

/** the lanes a hashing run resumes from and leaves behind */
interface Lanes {
  a: number;
  b: number;
}

/** blocks [from, to) from little-endian words (even block size) */
function hashWords(
  lanes: Lanes,
  wd: Int32Array,
  out: number[],
  from: number,
  to: number,
  wordsPerBlock: number,
): void {
  let a = lanes.a;
  let b = lanes.b;
  let wi = from * wordsPerBlock;
  for (let i = from; i < to; i++) {
    const end = wi + wordsPerBlock;
    let a1 = a ^ ODD_SEED1;
    let b1 = b ^ ODD_SEED2;
    for (; wi + 3 < end; wi += 4) {
      const w0 = wd[wi];
      const w1 = wd[wi + 1];
      const w2 = wd[wi + 2];
      const w3 = wd[wi + 3];
      a = Math.imul(a ^ ((w0 + Math.imul(w1, PAIR_K1)) | 0), LANE1_PRIME);
      a ^= a >>> 16;
      b = Math.imul(b ^ ((w1 + Math.imul(w0, PAIR_K2)) | 0), LANE2_PRIME);
      b ^= b >>> 15;
      a1 = Math.imul(a1 ^ ((w2 + Math.imul(w3, PAIR_K1)) | 0), LANE1_PRIME);
      a1 ^= a1 >>> 16;
      b1 = Math.imul(b1 ^ ((w3 + Math.imul(w2, PAIR_K2)) | 0), LANE2_PRIME);
      b1 ^= b1 >>> 15;
    }
    if (wi + 1 < end) {
      const w0 = wd[wi];
      const w1 = wd[wi + 1];
      wi += 2;
      a = Math.imul(a ^ ((w0 + Math.imul(w1, PAIR_K1)) | 0), LANE1_PRIME);
      a ^= a >>> 16;
      b = Math.imul(b ^ ((w1 + Math.imul(w0, PAIR_K2)) | 0), LANE2_PRIME);
      b ^= b >>> 15;
    }
    if (wi < end) {
      const w = wd[wi++];
      a = Math.imul(a ^ w, LANE1_PRIME);
      a ^= a >>> 16;
      b = Math.imul(b ^ w, LANE2_PRIME);
      b ^= b >>> 15;
    }
    // merge the second pair of lanes, then the block boundary (blocks of different sizes never
    // chain alike)
    a = Math.imul(a ^ ((a1 << 13) | (a1 >>> 19)), LANE1_PRIME);
    a ^= a >>> 16;
    b = Math.imul(b ^ ((b1 << 17) | (b1 >>> 15)), LANE2_PRIME);
    b ^= b >>> 15;
    a = Math.imul(a ^ 0xff, LANE1_PRIME);
    b = Math.imul(b ^ (b >>> 13), 0xc2b2ae35);
    const h = (a >>> 0) * TWO_POW_21 + ((b >>> 0) >>> 11);
    out[i] = h === 0 ? 1 : h;
  }
  lanes.a = a;
  lanes.b = b;
}

/** the same function over charCodeAt: any block size, any byte order */
function hashChars(
  lanes: Lanes,
  text: string,
  out: number[],
  from: number,
  to: number,
  blockChars: number,
): void {
  const wordsPerBlock = blockChars >>> 1;
  const word = (p: number): number => text.charCodeAt(p) | (text.charCodeAt(p + 1) << 16);
  let a = lanes.a;
  let b = lanes.b;
  let pos = from * blockChars;
  for (let i = from; i < to; i++) {
    let k = 0;
    let a1 = a ^ ODD_SEED1;
    let b1 = b ^ ODD_SEED2;
    for (; k + 3 < wordsPerBlock; k += 4, pos += 8) {
      const w0 = word(pos);
      const w1 = word(pos + 2);
      const w2 = word(pos + 4);
      const w3 = word(pos + 6);
      a = Math.imul(a ^ ((w0 + Math.imul(w1, PAIR_K1)) | 0), LANE1_PRIME);
      a ^= a >>> 16;
      b = Math.imul(b ^ ((w1 + Math.imul(w0, PAIR_K2)) | 0), LANE2_PRIME);
      b ^= b >>> 15;
      a1 = Math.imul(a1 ^ ((w2 + Math.imul(w3, PAIR_K1)) | 0), LANE1_PRIME);
      a1 ^= a1 >>> 16;
      b1 = Math.imul(b1 ^ ((w3 + Math.imul(w2, PAIR_K2)) | 0), LANE2_PRIME);
      b1 ^= b1 >>> 15;
    }
    if (k + 1 < wordsPerBlock) {
      const w0 = word(pos);
      const w1 = word(pos + 2);
      k += 2;
      pos += 4;
      a = Math.imul(a ^ ((w0 + Math.imul(w1, PAIR_K1)) | 0), LANE1_PRIME);
      a ^= a >>> 16;
      b = Math.imul(b ^ ((w1 + Math.imul(w0, PAIR_K2)) | 0), LANE2_PRIME);
      b ^= b >>> 15;
    }
    if (k < wordsPerBlock) {
      const w = word(pos);
      pos += 2;
      a = Math.imul(a ^ w, LANE1_PRIME);
      a ^= a >>> 16;
      b = Math.imul(b ^ w, LANE2_PRIME);
      b ^= b >>> 15;
    }
    if (blockChars & 1) {
      const c = text.charCodeAt(pos++);
      a = Math.imul(a ^ c, LANE1_PRIME);
      a ^= a >>> 16;
      b = Math.imul(b ^ c, LANE2_PRIME);
      b ^= b >>> 15;
    }
    a = Math.imul(a ^ ((a1 << 13) | (a1 >>> 19)), LANE1_PRIME);
    a ^= a >>> 16;
    b = Math.imul(b ^ ((b1 << 17) | (b1 >>> 15)), LANE2_PRIME);
    b ^= b >>> 15;
    a = Math.imul(a ^ 0xff, LANE1_PRIME);
    b = Math.imul(b ^ (b >>> 13), 0xc2b2ae35);
    const h = (a >>> 0) * TWO_POW_21 + ((b >>> 0) >>> 11);
    out[i] = h === 0 ? 1 : h;
  }
  lanes.a = a;
  lanes.b = b;
}

/** test hook: the portable path, to check it agrees with the fast one */
export function blockHashesPortable(text: string, blockChars: number): number[] {
  const blocks = Math.floor(text.length / blockChars);
  const out = new Array<number>(Math.max(0, blocks));
  if (blocks > 0) hashChars({ a: LANE1_SEED, b: LANE2_SEED }, text, out, 0, blocks, blockChars);
  return out;
}
