/**
 * The block-hash prefix index against SMG's radix tree, on a multi-turn chat workload.
 *
 * SMG's cache_aware keeps a character radix tree (StringTree) per model: insert the routing text
 * for the chosen worker, match returns the longest matched prefix and a tenant of the deepest
 * matched node; match_rate = matched / length > cache_threshold ⇒ that tenant, else least loaded.
 * The reference below re-implements just that, and the same simulated traffic runs through it and
 * through our cache_aware over the real CacheIndex. The figure of merit is conversation
 * stickiness: the share of follow-up turns routed to the worker that served the previous turn
 * (the one holding the conversation's KV cache).
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { LoadView } from '../state/load-view.js';
import type { WorkerView } from '../state/registry.js';
import { createCacheAwarePolicy } from './cache-aware.js';
import { makeContext, makeRequest, makeWorker, makeWorkers, seededRandom, testParams } from './testing.js';
import type { PolicyParams } from './types.js';

// ---------------------------------------------------------------------------------------------
// Reference: a character radix tree with SMG StringTree semantics

interface RadixNode {
  /** edge label leading into this node */
  label: string;
  children: Map<string, RadixNode>;
  /** tenant → last access epoch */
  tenants: Map<string, number>;
}

function radixNode(label: string): RadixNode {
  return { label, children: new Map(), tenants: new Map() };
}

class StringTree {
  private readonly root = radixNode('');
  private epoch = 0;

  insert(text: string, tenant: string): void {
    const t = ++this.epoch;
    let node = this.root;
    node.tenants.set(tenant, t);
    let i = 0;
    while (i < text.length) {
      const child = node.children.get(text[i]);
      if (!child) {
        const leaf = radixNode(text.slice(i));
        leaf.tenants.set(tenant, t);
        node.children.set(text[i], leaf);
        return;
      }
      let j = 0;
      while (j < child.label.length && i + j < text.length && child.label[j] === text[i + j]) j++;
      if (j < child.label.length) {
        // split the edge: `mid` takes the common part and inherits the child's tenants
        const mid = radixNode(child.label.slice(0, j));
        mid.tenants = new Map(child.tenants);
        child.label = child.label.slice(j);
        mid.children.set(child.label[0], child);
        node.children.set(mid.label[0], mid);
        node = mid;
      } else {
        node = child;
      }
      node.tenants.set(tenant, t);
      i += j;
    }
  }

  /** longest matched prefix length and the most recent tenant of the deepest matched node */
  match(text: string): { matched: number; tenant: string | undefined } {
    let node = this.root;
    let i = 0;
    while (i < text.length) {
      const child = node.children.get(text[i]);
      if (!child) break;
      let j = 0;
      while (j < child.label.length && i + j < text.length && child.label[j] === text[i + j]) j++;
      i += j;
      node = child;
      if (j < child.label.length) break;
    }
    let tenant: string | undefined;
    let best = -1;
    for (const [w, t] of node.tenants) {
      if (t > best) {
        best = t;
        tenant = w;
      }
    }
    return { matched: i, tenant };
  }
}

/** SMG's cache_aware over the radix tree (in-flight imbalance check, match, else min-load) */
function radixCacheAware(params: PolicyParams, load: LoadView) {
  const tree = new StringTree();
  function minLoad(workers: readonly WorkerView[]): WorkerView {
    let best = workers[0];
    for (const w of workers) {
      const a = load.inflight(w.id);
      const b = load.inflight(best.id);
      if (a < b || (a === b && load.processed(w.id) < load.processed(best.id))) best = w;
    }
    return best;
  }
  return (workers: readonly WorkerView[], text: string): WorkerView => {
    let min = Infinity;
    let max = -Infinity;
    for (const w of workers) {
      min = Math.min(min, load.inflight(w.id));
      max = Math.max(max, load.inflight(w.id));
    }
    let chosen: WorkerView;
    if (max - min > params.balanceAbsThreshold && max > min * params.balanceRelThreshold) {
      chosen = minLoad(workers);
    } else {
      const m = tree.match(text);
      const rate = text.length > 0 ? m.matched / text.length : 0;
      const tenant = workers.find((w) => w.id === m.tenant);
      chosen = rate > params.cacheThreshold && tenant ? tenant : minLoad(workers);
    }
    tree.insert(text, chosen.id);
    return chosen;
  };
}

// ---------------------------------------------------------------------------------------------
// Workload: multi-turn conversations over shared system prompts

function words(rand: () => number, chars: number): string {
  const out: string[] = [];
  let n = 0;
  while (n < chars) {
    const len = 2 + Math.floor(rand() * 8);
    let w = '';
    for (let i = 0; i < len; i++) w += String.fromCharCode(97 + Math.floor(rand() * 26));
    out.push(w);
    n += len + 1;
  }
  return out.join(' ');
}

function between(rand: () => number, lo: number, hi: number): number {
  return lo + Math.floor(rand() * (hi - lo + 1));
}

interface Conversation {
  messages: string[];
  turns: number;
  done: number;
}

export interface Workload {
  conversations: number;
  systemPrompts: number;
  /** system prompt length range, chars */
  system: [number, number];
  /** share of conversations without a system prompt */
  noSystem: number;
  user: [number, number];
  assistant: [number, number];
  /** conversations open at once */
  active: number;
  /** chance per step that an open, idle conversation sends its next turn */
  sendChance: number;
  /** steps a request holds its worker */
  hold: [number, number];
}

export const CHAT_WORKLOAD: Workload = {
  conversations: 200,
  systemPrompts: 5,
  system: [100, 2000],
  noSystem: 0.2,
  user: [20, 600],
  assistant: [50, 1500],
  active: 48,
  sendChance: 0.3,
  hold: [2, 20],
};

function makeConversations(seed: number, wl: Workload): Conversation[] {
  const rand = seededRandom(seed);
  const systems = Array.from({ length: wl.systemPrompts }, () => words(rand, between(rand, ...wl.system)));
  return Array.from({ length: wl.conversations }, () => ({
    messages: rand() < wl.noSystem ? [] : [systems[Math.floor(rand() * systems.length)]],
    turns: between(rand, 4, 6),
    done: 0,
  }));
}

interface SimResult {
  followUps: number;
  sticky: number;
  rate: number;
  /** most requests in flight on one worker at any time */
  peakInflight: number;
  /** requests per worker */
  perWorker: number[];
}

/**
 * Runs the workload through `route`. Up to `active` conversations are open at once; each step,
 * each open conversation whose previous request has completed sends its next turn with
 * `sendChance` (the chat routing text: every message so far, space-joined); a request holds its
 * worker for `hold` steps, then the assistant's reply joins the conversation.
 */
function simulate(
  seed: number,
  wl: Workload,
  load: LoadView,
  workers: readonly WorkerView[],
  route: (text: string) => WorkerView,
): SimResult {
  const rand = seededRandom(seed);
  const convs = makeConversations(seed * 7 + 1, wl);
  const active: number[] = [];
  let next = 0;
  const busyUntil = new Map<number, number>();
  let releases: { at: number; worker: string }[] = [];
  const lastWorker = new Map<number, string>();
  const perWorker = new Map<string, number>();
  let followUps = 0;
  let sticky = 0;
  let peakInflight = 0;
  let step = 0;
  while (next < convs.length || active.length > 0) {
    step++;
    releases = releases.filter((r) => {
      if (r.at > step) return true;
      load.release(r.worker);
      return false;
    });
    while (active.length < wl.active && next < convs.length) active.push(next++);
    for (const c of [...active]) {
      if ((busyUntil.get(c) ?? 0) > step || rand() >= wl.sendChance) continue;
      const conv = convs[c];
      conv.messages.push(words(rand, between(rand, ...wl.user)));
      const text = conv.messages.join(' ');
      const w = route(text);
      expect(workers).toContain(w);
      load.acquire(w.id);
      peakInflight = Math.max(peakInflight, load.inflight(w.id));
      perWorker.set(w.id, (perWorker.get(w.id) ?? 0) + 1);
      const hold = between(rand, ...wl.hold);
      releases.push({ at: step + hold, worker: w.id });
      busyUntil.set(c, step + hold);
      const prev = lastWorker.get(c);
      if (prev !== undefined) {
        followUps++;
        if (prev === w.id) sticky++;
      }
      lastWorker.set(c, w.id);
      conv.messages.push(words(rand, between(rand, ...wl.assistant)));
      conv.done++;
      if (conv.done >= conv.turns) active.splice(active.indexOf(c), 1);
    }
  }
  return {
    followUps,
    sticky,
    rate: sticky / followUps,
    peakInflight,
    perWorker: workers.map((w) => perWorker.get(w.id) ?? 0),
  };
}

function runBlockIndex(
  seed: number,
  blockChars: number,
  wl: Workload = CHAT_WORKLOAD,
  params: PolicyParams = testParams(),
): SimResult {
  const ctx = makeContext({ seed, blockChars });
  const workers = makeWorkers(8);
  const policy = createCacheAwarePolicy(params, ctx);
  return simulate(seed, wl, ctx.load, workers, (text) => {
    const w = policy.select(workers, makeRequest({ text }));
    if (!w) throw new Error('no worker');
    return w;
  });
}

function runRadix(
  seed: number,
  wl: Workload = CHAT_WORKLOAD,
  params: PolicyParams = testParams(),
): SimResult {
  const load = new LoadView('ref');
  const workers = makeWorkers(8);
  const route = radixCacheAware(params, load);
  return simulate(seed, wl, load, workers, (text) => route(workers, text));
}

describe('cache_aware: block index vs SMG radix tree', () => {
  for (const seed of [1, 2, 3]) {
    it(`keeps conversations on their worker as well as the radix tree (seed ${seed})`, () => {
      const radix = runRadix(seed);
      for (const blockChars of [32, 64]) {
        const block = runBlockIndex(seed, blockChars);
        console.log(
          `seed ${seed} blockChars ${blockChars}: block index ${block.rate.toFixed(4)} ` +
            `(${block.sticky}/${block.followUps}), radix tree ${radix.rate.toFixed(4)} ` +
            `(${radix.sticky}/${radix.followUps}); per worker ${block.perWorker.join(',')} vs ` +
            `${radix.perWorker.join(',')}, peak in flight ${block.peakInflight} vs ${radix.peakInflight}`,
        );
        expect(block.followUps).toBe(radix.followUps);
        expect(block.rate).toBeGreaterThanOrEqual(0.95);
        expect(block.rate).toBeGreaterThanOrEqual(radix.rate - 0.02);
      }
    });
  }
});

describe('cache_aware under heavy load (imbalance override active)', () => {
  // all 200 conversations open at once and a low absolute threshold, so that the in-flight
  // imbalance check fires and moves conversations in both implementations
  const HEAVY: Workload = { ...CHAT_WORKLOAD, active: 200, sendChance: 0.6, hold: [20, 120] };
  const params = testParams({ balanceAbsThreshold: 8 });
  it('stays within 0.02 of the radix tree when load balancing moves conversations', () => {
    const radix = runRadix(4, HEAVY, params);
    for (const blockChars of [32, 64]) {
      const block = runBlockIndex(4, blockChars, HEAVY, params);
      console.log(
        `heavy blockChars ${blockChars}: block index ${block.rate.toFixed(4)} ` +
          `(${block.sticky}/${block.followUps}), radix tree ${radix.rate.toFixed(4)} ` +
          `(${radix.sticky}/${radix.followUps}); per worker ${block.perWorker.join(',')} vs ` +
          `${radix.perWorker.join(',')}, peak in flight ${block.peakInflight} vs ${radix.peakInflight}`,
      );
      expect(block.rate).toBeGreaterThanOrEqual(radix.rate - 0.02);
    }
  });
});

describe('cache_aware: candidates only (property)', () => {
  it('never returns a worker outside the candidates', () => {
    const all = makeWorkers(6);
    fc.assert(
      fc.property(
        fc.array(
          fc.record({
            subset: fc.subarray(all.map((_, i) => i)),
            prefix: fc.integer({ min: 0, max: 3 }),
            suffix: fc.string({ maxLength: 300 }),
            loads: fc.array(fc.integer({ min: 0, max: 200 }), { minLength: 6, maxLength: 6 }),
            usage: fc.option(fc.double({ min: 0, max: 1, noNaN: true }), { nil: undefined }),
          }),
          { minLength: 1, maxLength: 25 },
        ),
        fc.integer({ min: 1, max: 2 ** 31 - 1 }),
        (steps, seed) => {
          const ctx = makeContext({ seed, blockChars: 16 });
          const policy = createCacheAwarePolicy(
            testParams({ balanceTokenUsageThreshold: 0.2, overloadTokenUsageThreshold: 0.9 }),
            ctx,
          );
          const prefixes = ['', 'a'.repeat(40), 'system prompt '.repeat(5), 'x'.repeat(100)];
          for (const s of steps) {
            const candidates = s.subset.map((i) => all[i]);
            s.loads.forEach((l, i) => {
              while (ctx.load.inflight(all[i].id) < l) ctx.load.acquire(all[i].id);
              while (ctx.load.inflight(all[i].id) > l) ctx.load.release(all[i].id);
              if (s.usage !== undefined)
                ctx.setEngineLoad(all[i].id, { tokenUsage: (s.usage * (i + 1)) / 6 });
            });
            const w = policy.select(candidates, makeRequest({ text: prefixes[s.prefix] + s.suffix }));
            if (candidates.length === 0) expect(w).toBeUndefined();
            else expect(candidates).toContain(w);
          }
        },
      ),
      { numRuns: 200 },
    );
  });

  it('works for a removed worker the index still lists', () => {
    const ctx = makeContext({ blockChars: 16 });
    const policy = createCacheAwarePolicy(testParams(), ctx);
    const a = makeWorker('a', 'http://a');
    const b = makeWorker('b', 'http://b');
    const text = 'q'.repeat(200);
    expect(policy.select([a], makeRequest({ text }))).toBe(a);
    expect(policy.select([b], makeRequest({ text }))).toBe(b);
  });
});
