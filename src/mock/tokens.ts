/**
 * The mock engine's toy model: a deterministic tokenizer (one token per 4 characters), the token ids
 * the prefix cache hashes, the words it "generates" and its embeddings. Everything is O(n) in the
 * input and allocation-light, as it runs on every request.
 */
import { seededRandom } from '../testing/prng.js';

/** characters per token */
export const CHARS_PER_TOKEN = 4;

const FNV_OFFSET = 0x811c9dc5;
const FNV_PRIME = 0x01000193;

/** token count of a text: ceil(chars / 4) */
export function countTokens(text: string): number {
  return Math.ceil(text.length / CHARS_PER_TOKEN);
}

/** The token sequence of a text, for KV-cache hashing: one 32-bit id per 4-character chunk. */
export function tokenIds(text: string): Uint32Array {
  const n = countTokens(text);
  const ids = new Uint32Array(n);
  let pos = 0;
  for (let t = 0; t < n; t++) {
    let h = FNV_OFFSET;
    const end = Math.min(pos + CHARS_PER_TOKEN, text.length);
    for (; pos < end; pos++) h = Math.imul(h ^ text.charCodeAt(pos), FNV_PRIME);
    ids[t] = h >>> 0;
  }
  return ids;
}

/** a cheap 32-bit seed from (at most) the first 64 characters of a text */
export function textSeed(text: string): number {
  let h = FNV_OFFSET ^ text.length;
  const end = Math.min(text.length, 64);
  for (let i = 0; i < end; i++) h = Math.imul(h ^ text.charCodeAt(i), FNV_PRIME);
  return h >>> 0;
}

/** a 32-bit hash of the whole text */
export function textHash(text: string): number {
  let h = FNV_OFFSET;
  for (let i = 0; i < text.length; i++) h = Math.imul(h ^ text.charCodeAt(i), FNV_PRIME);
  return h >>> 0;
}

const VOCAB = (
  'the a mock engine token says hello from simulated gpu inference with prefix cache and ' +
  'deterministic output words for gateway tests demo benchmark stream quick brown fox jumps over lazy ' +
  'dog model answer request response latency batch decode prefill block router worker node mesh'
).split(' ');

/** first token id of the output vocabulary, for `/generate`'s output_ids */
export const VOCAB_ID_BASE = 1000;

export interface Generated {
  /** text pieces, one per output token; all but the first start with a space */
  pieces: string[];
  /** token ids of the pieces */
  ids: number[];
}

/** The deterministic output of a prompt whose seed is `seed`: `n` pseudo-words. */
export function generate(seed: number, n: number): Generated {
  const pieces = new Array<string>(n);
  const ids = new Array<number>(n);
  const v = VOCAB.length;
  let k = seed % v;
  const step = 1 + (seed % 7);
  for (let i = 0; i < n; i++) {
    pieces[i] = i === 0 ? VOCAB[k] : ' ' + VOCAB[k];
    ids[i] = VOCAB_ID_BASE + k;
    k = (k + step) % v;
  }
  return { pieces, ids };
}

/** A deterministic unit-length embedding of `dims` dimensions for a text. */
export function embed(text: string, dims: number): Float32Array {
  const next = seededRandom(textHash(text));
  const out = new Float32Array(dims);
  let norm = 0;
  for (let i = 0; i < dims; i++) {
    const x = next() * 2 - 1;
    out[i] = x;
    norm += x * x;
  }
  norm = Math.sqrt(norm) || 1;
  for (let i = 0; i < dims; i++) out[i] /= norm;
  return out;
}

/** Deterministic probabilities (summing to 1) over `k` classes for a text. */
export function classProbs(text: string, k: number): number[] {
  const next = seededRandom(textHash(text) ^ 0x5bd1e995);
  const logits = Array.from({ length: k }, () => next() * 4);
  const max = Math.max(...logits);
  const exps = logits.map((l) => Math.exp(l - max));
  const sum = exps.reduce((a, b) => a + b, 0);
  return exps.map((e) => e / sum);
}

/** A deterministic relevance score in (0, 1): overlap of the query's words with the document, plus noise. */
export function relevance(query: string, document: string): number {
  const words = query.toLowerCase().match(/[\p{L}\p{N}]+/gu) ?? [];
  const doc = document.toLowerCase();
  let hits = 0;
  for (const w of words) if (doc.includes(w)) hits++;
  const overlap = words.length === 0 ? 0 : hits / words.length;
  const noise = (textHash(query + '\u0000' + document) % 1000) / 1000;
  return 0.05 + 0.8 * overlap + 0.1 * noise;
}
