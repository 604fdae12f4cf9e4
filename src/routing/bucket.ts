/**
 * bucket (SMG §3.10): route by prompt length so each worker serves a band of lengths, while
 * keeping the characters sent to each worker over a sliding window roughly equal.
 *
 * Per instance: the ordered worker URLs, one length band per URL (initially 0..4096 split evenly,
 * the last band open-ended), a 5 s window of recent (time, chars, url) and chars per URL over it.
 *   imbalanced (max − min chars > balanceAbsThreshold and max > balanceRelThreshold × min, over
 *   the candidates) ⇒ the candidate with the fewest chars;
 *   else the band containing the prompt's length (binary search); its worker if it is a
 *   candidate, else a random candidate.
 * Every 5 s (checked lazily on select, by `ctx.now()`) the bands are recomputed from the window so
 * that each worker's band holds ≈ total / n characters. SMG skips the recomputation while the
 * per-band load stays within 2× of the last one; we always recompute (it costs one sort of the
 * window) so the bands follow a shift in the length distribution even at constant volume.
 * Lengths are UTF-16 code units (SMG counts Unicode scalars; the difference is immaterial here).
 *
 * Per candidate array (the registry reuses it until the workers change) the candidates' URL
 * indices are resolved once, so a decision reads per-URL character counts from an array.
 *
 * Owns: the bands and the window (local to this gateway). Never: I/O, timers.
 */
import type { WorkerView } from '../state/registry.js';
import { randomIndex } from './candidates.js';
import type { PolicyParams, RouteRequest, RoutingContext, RoutingPolicy } from './types.js';

const INITIAL_MAX_CHARS = 4096;
const WINDOW_MS = 5000;
const ADJUST_INTERVAL_MS = 5000;

interface Band {
  url: string;
  lo: number;
  /** inclusive; Infinity for the last band */
  hi: number;
}

interface WindowEntry {
  t: number;
  chars: number;
  url: string;
}

/** per candidate array: each candidate's URL index, and the first candidate of each URL (−1) */
interface CandidateState {
  urlOf: Int32Array;
  candidateOf: Int32Array;
}

/** splits 0..INITIAL_MAX_CHARS evenly over the URLs, the last band open-ended */
function evenBands(urls: readonly string[]): Band[] {
  const n = urls.length;
  if (n === 0) return [];
  const gap = Math.floor(INITIAL_MAX_CHARS / n);
  return urls.map((url, i) => ({ url, lo: i * gap, hi: i === n - 1 ? Infinity : (i + 1) * gap - 1 }));
}

/**
 * Bands over the sorted recent lengths such that each holds ≈ total / n characters: band i ends at
 * the length where the running sum comes nearest to (i + 1) · total / n. Bands never overlap and
 * cover 0..∞; equal lengths cannot be split, which the imbalance check then evens out.
 */
export function bandsFor(urls: readonly string[], lengths: readonly number[]): Band[] {
  const n = urls.length;
  if (n === 0) return [];
  const sorted = [...lengths].sort((a, b) => a - b);
  let total = 0;
  for (const c of sorted) total += c;
  const target = total / n;
  const bands: Band[] = [];
  let acc = 0;
  let k = 0;
  let lo = 0;
  for (let i = 0; i < n; i++) {
    if (i === n - 1) {
      bands.push({ url: urls[i], lo, hi: Infinity });
      break;
    }
    const goal = target * (i + 1);
    while (k < sorted.length && acc + sorted[k] <= goal) acc += sorted[k++];
    if (k < sorted.length && goal - acc > acc + sorted[k] - goal) acc += sorted[k++];
    const hi = Math.max(lo, k > 0 ? sorted[k - 1] : lo);
    bands.push({ url: urls[i], lo, hi });
    lo = hi + 1;
  }
  return bands;
}

/** the band containing `chars` (bands are sorted and contiguous) */
function findBand(bands: readonly Band[], chars: number): Band | undefined {
  let lo = 0;
  let hi = bands.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    const b = bands[mid];
    if (chars < b.lo) hi = mid;
    else if (chars > b.hi) lo = mid + 1;
    else return b;
  }
  return undefined;
}

export function createBucketPolicy(params: PolicyParams, ctx: RoutingContext): RoutingPolicy {
  let urls: string[] = [];
  let urlIndex = new Map<string, number>();
  let bands: Band[] = [];
  const window: WindowEntry[] = [];
  let head = 0;
  /** characters sent per URL (index into `urls`) over the window */
  let charsOf: number[] = [];
  let lastAdjust = ctx.now();
  let states = new WeakMap<readonly WorkerView[], CandidateState>();

  function setUrls(next: readonly string[]): void {
    const unique = [...new Set(next)];
    if (unique.length === urls.length && unique.every((u, i) => u === urls[i])) return;
    urls = unique;
    urlIndex = new Map(unique.map((u, i) => [u, i]));
    states = new WeakMap();
    const lengths = liveWindow().map((e) => e.chars);
    bands = lengths.length > 0 ? bandsFor(urls, lengths) : evenBands(urls);
    charsOf = new Array<number>(urls.length).fill(0);
    for (const e of liveWindow()) {
      const u = urlIndex.get(e.url);
      if (u !== undefined) charsOf[u] += e.chars;
    }
  }

  /** the candidates' URL indices (adopting URLs not seen yet), cached per candidate array */
  function stateOf(workers: readonly WorkerView[]): CandidateState {
    let st = states.get(workers);
    if (!st) {
      if (workers.some((w) => !urlIndex.has(w.url))) setUrls([...urls, ...workers.map((w) => w.url)]);
      const urlOf = new Int32Array(workers.length);
      const candidateOf = new Int32Array(urls.length).fill(-1);
      workers.forEach((w, i) => {
        const u = urlIndex.get(w.url) as number;
        urlOf[i] = u;
        if (candidateOf[u] < 0) candidateOf[u] = i;
      });
      st = { urlOf, candidateOf };
      states.set(workers, st);
    }
    return st;
  }

  function liveWindow(): WindowEntry[] {
    return window.slice(head);
  }

  function expire(now: number): void {
    while (head < window.length && now - window[head].t > WINDOW_MS) {
      const e = window[head++];
      const u = urlIndex.get(e.url);
      if (u !== undefined) charsOf[u] = Math.max(0, charsOf[u] - e.chars);
    }
    if (head > 1024 && head * 2 > window.length) {
      window.splice(0, head);
      head = 0;
    }
  }

  return {
    name: 'bucket',
    needsText: true,
    select(workers: readonly WorkerView[], req: RouteRequest): WorkerView | undefined {
      const n = workers.length;
      if (n === 0) return undefined;
      const now = ctx.now();
      expire(now);
      const st = stateOf(workers);
      if (now - lastAdjust >= ADJUST_INTERVAL_MS) {
        lastAdjust = now;
        if (head < window.length)
          bands = bandsFor(
            urls,
            liveWindow().map((e) => e.chars),
          );
      }
      const chars = (req.text ?? '').length;

      const { urlOf, candidateOf } = st;
      let min = Infinity;
      let max = -Infinity;
      let least = 0;
      for (let i = 0; i < n; i++) {
        const c = charsOf[urlOf[i]];
        if (c < min) {
          min = c;
          least = i;
        }
        if (c > max) max = c;
      }
      let chosen: number;
      if (max - min > params.balanceAbsThreshold && max > params.balanceRelThreshold * min) {
        chosen = least;
      } else {
        const band = findBand(bands, chars);
        const u = band ? urlIndex.get(band.url) : undefined;
        const c = u !== undefined ? candidateOf[u] : -1;
        chosen = c >= 0 ? c : randomIndex(ctx, n);
      }
      const w = workers[chosen];
      window.push({ t: now, chars, url: w.url });
      charsOf[urlOf[chosen]] += chars;
      return w;
    },
    onWorkersChanged(workers: readonly WorkerView[]): void {
      setUrls(workers.map((w) => w.url));
    },
  };
}
