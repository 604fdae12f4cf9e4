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
 * Owns: the bands and the window (local to this gateway). Never: I/O, timers.
 */
import type { WorkerView } from '../state/registry.js';
import { lookupOf, randomIndex } from './candidates.js';
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
  let bands: Band[] = [];
  const window: WindowEntry[] = [];
  let head = 0;
  const charsPerUrl = new Map<string, number>();
  let lastAdjust = ctx.now();
  let synced = new WeakSet<readonly WorkerView[]>();

  function setUrls(next: readonly string[]): void {
    const unique = [...new Set(next)];
    if (unique.length === urls.length && unique.every((u, i) => u === urls[i])) return;
    urls = unique;
    synced = new WeakSet();
    const lengths = liveWindow().map((e) => e.chars);
    bands = lengths.length > 0 ? bandsFor(urls, lengths) : evenBands(urls);
    charsPerUrl.clear();
    for (const e of liveWindow()) charsPerUrl.set(e.url, (charsPerUrl.get(e.url) ?? 0) + e.chars);
  }

  function liveWindow(): WindowEntry[] {
    return window.slice(head);
  }

  function expire(now: number): void {
    while (head < window.length && now - window[head].t > WINDOW_MS) {
      const e = window[head++];
      const left = (charsPerUrl.get(e.url) ?? 0) - e.chars;
      if (left > 0) charsPerUrl.set(e.url, left);
      else charsPerUrl.delete(e.url);
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
      if (!synced.has(workers)) {
        const known = new Set(urls);
        if (workers.some((w) => !known.has(w.url))) setUrls([...urls, ...workers.map((w) => w.url)]);
        synced.add(workers);
      }
      if (now - lastAdjust >= ADJUST_INTERVAL_MS) {
        lastAdjust = now;
        if (head < window.length)
          bands = bandsFor(
            urls,
            liveWindow().map((e) => e.chars),
          );
      }
      const chars = (req.text ?? '').length;

      let min = Infinity;
      let max = -Infinity;
      let least = workers[0];
      for (const w of workers) {
        const c = charsPerUrl.get(w.url) ?? 0;
        if (c < min) {
          min = c;
          least = w;
        }
        if (c > max) max = c;
      }
      let chosen: WorkerView;
      if (max - min > params.balanceAbsThreshold && max > params.balanceRelThreshold * min) {
        chosen = least;
      } else {
        const band = findBand(bands, chars);
        chosen = (band && lookupOf(workers).byUrl.get(band.url)) ?? workers[randomIndex(ctx, n)];
      }
      window.push({ t: now, chars, url: chosen.url });
      charsPerUrl.set(chosen.url, (charsPerUrl.get(chosen.url) ?? 0) + chars);
      return chosen;
    },
    onWorkersChanged(workers: readonly WorkerView[]): void {
      setUrls(workers.map((w) => w.url));
    },
  };
}
