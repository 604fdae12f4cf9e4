/**
 * Parses what an engine reports about its own load: SGLang's `GET /v1/loads` JSON, or the
 * Prometheus text of `GET /metrics` (SGLang `sglang:` / `sglang_` and vLLM `vllm:` names).
 * Returns undefined for anything it cannot read.
 */
import type { EngineLoad } from '../state/worker.js';

type Rec = Record<string, unknown>;

function num(v: unknown, dflt = 0): number {
  return typeof v === 'number' && Number.isFinite(v) ? v : dflt;
}

function fromLoads(text: string): EngineLoad | undefined {
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    return undefined;
  }
  if (typeof parsed !== 'object' || parsed === null) return undefined;
  const loads = (parsed as Rec).loads;
  if (!Array.isArray(loads) || loads.length === 0) return undefined;
  const ranks = loads.filter((l): l is Rec => typeof l === 'object' && l !== null);
  if (ranks.length === 0) return undefined;
  let usage = 0;
  const out: EngineLoad = {
    tokenUsage: 0,
    numRunningReqs: 0,
    numWaitingReqs: 0,
    numWaitingUncachedTokens: 0,
    genThroughput: 0,
    numUsedTokens: 0,
  };
  for (const r of ranks) {
    usage += num(r.token_usage);
    out.numRunningReqs += num(r.num_running_reqs);
    out.numWaitingReqs += num(r.num_waiting_reqs);
    out.numWaitingUncachedTokens += num(r.num_waiting_uncached_tokens);
    out.genThroughput += num(r.gen_throughput);
    out.numUsedTokens += num(r.num_used_tokens);
  }
  // SMG's effective_token_usage: the mean over DP ranks
  out.tokenUsage = Math.min(1, Math.max(0, usage / ranks.length));
  return out;
}

function fromMetrics(text: string): EngineLoad | undefined {
  const values = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{[^}]*\})?\s+([-+0-9.eEinfINFaN]+)/.exec(line);
    if (!m) continue;
    const name = m[1].replace(/^(sglang|vllm)_/, '$1:');
    const v = Number(m[2]);
    if (Number.isFinite(v)) values.set(name, (values.get(name) ?? 0) + v);
  }
  const pick = (...names: string[]) => {
    for (const n of names) if (values.has(n)) return values.get(n);
    return undefined;
  };
  const usage = pick('sglang:token_usage', 'vllm:kv_cache_usage_perc', 'vllm:gpu_cache_usage_perc');
  const running = pick('sglang:num_running_reqs', 'vllm:num_requests_running');
  if (usage === undefined && running === undefined) return undefined;
  return {
    tokenUsage: Math.min(1, Math.max(0, usage ?? 0)),
    numRunningReqs: running ?? 0,
    numWaitingReqs: pick('sglang:num_queue_reqs', 'vllm:num_requests_waiting') ?? 0,
    numWaitingUncachedTokens: 0,
    genThroughput: pick('sglang:gen_throughput') ?? 0,
    numUsedTokens: pick('sglang:num_used_tokens') ?? -1,
  };
}

export function parseEngineLoad(text: string, kind: 'loads' | 'metrics'): EngineLoad | undefined {
  return kind === 'loads' ? fromLoads(text) : fromMetrics(text);
}
