/**
 * cache_aware vs round_robin on a multi-turn chat workload (budget c).
 *
 * Four mock engines with the TTFT model (TTFT = ttft-ms + uncached prompt tokens / prefill rate)
 * and a small KV cache; conversations share system prompts by group and grow turn by turn (each
 * turn appends the assistant's reply and a new user message), so a worker that served the previous
 * turn has most of the prompt cached. The same seeded workload runs through a fresh gateway per
 * policy, after `POST /flush_cache` on every engine: a closed loop of `concurrency` conversations
 * in flight, each conversation's turns sequential. Requests stream with usage, so the client reads
 * TTFT (first SSE data chunk) and `usage.prompt_tokens_details.cached_tokens`.
 */
import { Pool } from 'undici';
import { startGatewayProc, startMockFleet, stopAll, type Proc } from '../src/testing/processes.js';
import {
  cpuWindow,
  distribution,
  log,
  loadAvg,
  randomText,
  resultHeader,
  round,
  seededRandom,
  sleep,
  type BenchOptions,
  type BenchOutcome,
  type CpuWindow,
} from './common.js';

export const CHAT_PATH = '/v1/chat/completions';
export const MODEL = 'mock-model';
const POLICIES = ['cache_aware', 'round_robin'] as const;
type ComparedPolicy = (typeof POLICIES)[number];

export interface CacheAwareParams {
  engines: number;
  mockArgs: string[];
  conversations: number;
  turns: number;
  concurrency: number;
  groups: number;
  /** system prompt length range, characters */
  systemChars: [number, number];
  /** user message length range, characters */
  userChars: [number, number];
  maxTokens: number;
  seed: number;
  /** hard limit per policy run, s */
  runTimeoutS: number;
}

export interface Message {
  role: 'system' | 'user' | 'assistant';
  content: string;
}

export interface TurnRecord {
  conversation: number;
  turn: number;
  status: number;
  ttftMs: number;
  e2eMs: number;
  promptTokens: number;
  cachedTokens: number;
  completionTokens: number;
  worker: string;
  error?: string;
}

export interface Workload {
  systems: string[];
  /** per conversation: its group and its user messages, one per turn */
  conversations: { group: number; users: string[] }[];
  /** order in which conversations are started */
  order: number[];
}

export function buildWorkload(p: CacheAwareParams): Workload {
  const rnd = seededRandom(p.seed);
  const between = ([lo, hi]: [number, number]) => lo + Math.floor(rnd() * (hi - lo + 1));
  const systems = Array.from(
    { length: p.groups },
    (_, g) => `You are assistant #${g} of the benchmark. ${randomText(rnd, between(p.systemChars))}`,
  );
  const conversations = Array.from({ length: p.conversations }, (_, i) => ({
    group: i % p.groups,
    users: Array.from(
      { length: p.turns },
      (_, t) => `[c${i} t${t}] ${randomText(rnd, between(p.userChars))}`,
    ),
  }));
  const order = conversations.map((_, i) => i);
  for (let i = order.length - 1; i > 0; i--) {
    const j = Math.floor(rnd() * (i + 1));
    [order[i], order[j]] = [order[j], order[i]];
  }
  return { systems, conversations, order };
}

export interface ChatUsage {
  prompt_tokens?: number;
  completion_tokens?: number;
  prompt_tokens_details?: { cached_tokens?: number } | null;
}

/** one streaming chat request: TTFT at the first data chunk; content and usage parsed at the end */
export async function streamChat(pool: Pool, messages: Message[], maxTokens: number) {
  const body = JSON.stringify({
    model: MODEL,
    messages,
    max_tokens: maxTokens,
    stream: true,
    stream_options: { include_usage: true },
  });
  const t0 = process.hrtime.bigint();
  const res = await pool.request({
    path: CHAT_PATH,
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body,
    headersTimeout: 30_000,
    bodyTimeout: 30_000,
  });
  let ttftMs = NaN;
  const chunks: Buffer[] = [];
  for await (const chunk of res.body) {
    if (Number.isNaN(ttftMs)) ttftMs = Number(process.hrtime.bigint() - t0) / 1e6;
    chunks.push(chunk as Buffer);
  }
  const e2eMs = Number(process.hrtime.bigint() - t0) / 1e6;
  const text = Buffer.concat(chunks).toString('utf8');
  let content = '';
  let usage: ChatUsage | undefined;
  if (res.statusCode === 200) {
    for (const line of text.split('\n')) {
      if (!line.startsWith('data: ') || line === 'data: [DONE]') continue;
      const ev = JSON.parse(line.slice(6)) as {
        choices?: { delta?: { content?: string } }[];
        usage?: ChatUsage;
      };
      const piece = ev.choices?.[0]?.delta?.content;
      if (piece) content += piece;
      if (ev.usage) usage = ev.usage;
    }
  }
  const worker = res.headers['x-mock-worker'];
  return {
    status: res.statusCode,
    ttftMs,
    e2eMs,
    content,
    usage,
    worker: typeof worker === 'string' ? worker : '?',
    errorBody: res.statusCode === 200 ? undefined : text.slice(0, 300),
  };
}

export async function getJson(url: string, method = 'GET'): Promise<unknown> {
  const res = await fetch(url, { method, signal: AbortSignal.timeout(5000) });
  const text = await res.text();
  if (res.status !== 200) throw new Error(`${method} ${url}: ${res.status} ${text.slice(0, 200)}`);
  if (!(res.headers.get('content-type') ?? '').includes('json')) return text;
  return text ? (JSON.parse(text) as unknown) : null;
}

export interface EngineStats {
  requests: number;
  prompt_tokens_total: number;
  cached_tokens_total: number;
  generation_tokens_total: number;
  cached_blocks: number;
}

export async function engineStats(urls: string[]): Promise<EngineStats[]> {
  return Promise.all(urls.map(async (u) => (await getJson(`${u}/mock/stats`)) as EngineStats));
}

export interface PolicyRun {
  policy: ComparedPolicy;
  durationS: number;
  requests: number;
  errors: number;
  rps: number;
  outputTokensPerS: number;
  ttftMs: ReturnType<typeof distribution>;
  ttftFollowUpMs: ReturnType<typeof distribution>;
  ttftFirstTurnMs: ReturnType<typeof distribution>;
  e2eMs: ReturnType<typeof distribution>;
  cachedFractionFollowUps: number;
  cachedFractionAll: number;
  promptTokens: number;
  cachedTokens: number;
  completionTokens: number;
  /** requests per engine (x-mock-worker) */
  perWorker: Record<string, number>;
  /** follow-up turns served by the engine that served the conversation's previous turn */
  stickyFollowUps: number;
  /** the engines' own counters over the run (prompt / cached tokens, blocks cached at the end) */
  engines: {
    url: string;
    requests: number;
    promptTokens: number;
    cachedTokens: number;
    cachedBlocks: number;
  }[];
  cpu: CpuWindow;
  firstError?: string;
}

/**
 * The closed loop: `p.concurrency` conversations in flight, each conversation's turns sequential,
 * conversations started in `wl.order`; `pick()` chooses the pool (gateway) of each request. Stops
 * starting requests after `p.runTimeoutS`.
 */
export async function closedLoop(wl: Workload, p: CacheAwareParams, pick: () => Pool): Promise<TurnRecord[]> {
  const records: TurnRecord[] = [];
  let next = 0;
  let stop = false;
  const hardStop = setTimeout(() => (stop = true), p.runTimeoutS * 1000);
  const loop = async () => {
    while (!stop && next < wl.order.length) {
      const ci = wl.order[next++];
      const conv = wl.conversations[ci];
      const messages: Message[] = [{ role: 'system', content: wl.systems[conv.group] }];
      for (let t = 0; t < conv.users.length && !stop; t++) {
        messages.push({ role: 'user', content: conv.users[t] });
        try {
          const r = await streamChat(pick(), messages, p.maxTokens);
          records.push({
            conversation: ci,
            turn: t + 1,
            status: r.status,
            ttftMs: r.ttftMs,
            e2eMs: r.e2eMs,
            promptTokens: r.usage?.prompt_tokens ?? 0,
            cachedTokens: r.usage?.prompt_tokens_details?.cached_tokens ?? 0,
            completionTokens: r.usage?.completion_tokens ?? 0,
            worker: r.worker,
            ...(r.errorBody !== undefined && { error: `${r.status} ${r.errorBody}` }),
          });
          if (r.status !== 200) break;
          messages.push({ role: 'assistant', content: r.content });
        } catch (err) {
          records.push({
            conversation: ci,
            turn: t + 1,
            status: 0,
            ttftMs: NaN,
            e2eMs: NaN,
            promptTokens: 0,
            cachedTokens: 0,
            completionTokens: 0,
            worker: '?',
            error: (err as Error).message,
          });
          break;
        }
      }
    }
  };
  try {
    await Promise.all(Array.from({ length: p.concurrency }, loop));
  } finally {
    clearTimeout(hardStop);
  }
  return records;
}

export type TurnSummary = Omit<PolicyRun, 'policy' | 'engines' | 'cpu'>;

/** the client-side figures of a closed-loop run (turns ≥ 2 are the follow-ups) */
export function summarizeTurns(records: TurnRecord[], durationS: number): TurnSummary {
  const ok = records.filter((r) => r.status === 200);
  const sum = (rs: TurnRecord[], k: 'promptTokens' | 'cachedTokens' | 'completionTokens') =>
    rs.reduce((a, r) => a + r[k], 0);
  const follow = ok.filter((r) => r.turn >= 2);
  const perWorker: Record<string, number> = {};
  for (const r of ok) perWorker[r.worker] = (perWorker[r.worker] ?? 0) + 1;
  const lastWorker = new Map<string, string>();
  let sticky = 0;
  for (const r of [...ok].sort((a, b) => a.conversation - b.conversation || a.turn - b.turn)) {
    const key = String(r.conversation);
    if (r.turn >= 2 && lastWorker.get(key) === r.worker) sticky++;
    lastWorker.set(key, r.worker);
  }
  const errors = records.length - ok.length;
  return {
    durationS: round(durationS, 2),
    requests: ok.length,
    errors,
    rps: round(ok.length / durationS, 2),
    outputTokensPerS: round(sum(ok, 'completionTokens') / durationS, 1),
    ttftMs: distribution(
      ok.map((r) => r.ttftMs),
      2,
    ),
    ttftFollowUpMs: distribution(
      follow.map((r) => r.ttftMs),
      2,
    ),
    ttftFirstTurnMs: distribution(
      ok.filter((r) => r.turn === 1).map((r) => r.ttftMs),
      2,
    ),
    e2eMs: distribution(
      ok.map((r) => r.e2eMs),
      2,
    ),
    cachedFractionFollowUps: round(sum(follow, 'cachedTokens') / Math.max(1, sum(follow, 'promptTokens')), 4),
    cachedFractionAll: round(sum(ok, 'cachedTokens') / Math.max(1, sum(ok, 'promptTokens')), 4),
    promptTokens: sum(ok, 'promptTokens'),
    cachedTokens: sum(ok, 'cachedTokens'),
    completionTokens: sum(ok, 'completionTokens'),
    perWorker,
    stickyFollowUps: sticky,
    ...(errors > 0 && { firstError: records.find((r) => r.status !== 200)?.error }),
  };
}

async function runPolicy(
  policy: ComparedPolicy,
  fleetUrls: string[],
  mockPid: number | undefined,
  wl: Workload,
  p: CacheAwareParams,
): Promise<PolicyRun> {
  let gw: Proc | undefined;
  try {
    const g = await startGatewayProc(['--worker-urls', ...fleetUrls, '--policy', policy]);
    gw = g;
    // all engines healthy in the gateway's view before the run
    const deadline = Date.now() + 20_000;
    while (true) {
      const r = (await getJson(`${g.url}/readiness`).catch(() => ({}))) as { healthy_workers?: number };
      if (r.healthy_workers === fleetUrls.length) break;
      if (Date.now() > deadline) throw new Error(`${policy}: only ${r.healthy_workers} healthy workers`);
      await sleep(100);
    }
    for (const u of fleetUrls) await getJson(`${u}/flush_cache`, 'POST');
    const before = await engineStats(fleetUrls);

    const pool = new Pool(g.url, { connections: p.concurrency, pipelining: 1, keepAliveTimeout: 60_000 });
    const cpu = cpuWindow({ smg: g.child.pid, mock: mockPid });
    const t0 = process.hrtime.bigint();
    const records = await closedLoop(wl, p, () => pool);
    const durationS = Number(process.hrtime.bigint() - t0) / 1e9;
    const win = cpu.end();
    await pool.close();
    const after = await engineStats(fleetUrls);

    const { firstError, ...stats } = summarizeTurns(records, durationS);
    return {
      policy,
      ...stats,
      engines: fleetUrls.map((url, i) => ({
        url,
        requests: after[i].requests - before[i].requests,
        promptTokens: after[i].prompt_tokens_total - before[i].prompt_tokens_total,
        cachedTokens: after[i].cached_tokens_total - before[i].cached_tokens_total,
        cachedBlocks: after[i].cached_blocks,
      })),
      cpu: win,
      ...(firstError !== undefined && { firstError }),
    };
  } finally {
    await gw?.stop();
  }
}

export function cacheAwareParams(quick: boolean): CacheAwareParams {
  const common = {
    engines: 4,
    mockArgs: [
      '--ttft-ms',
      '5',
      '--prefill-tokens-per-s',
      '4000',
      '--itl-ms',
      '2',
      '--output-tokens',
      '16',
      '--kv-blocks',
      '2048',
    ],
    systemChars: [2048, 4096] as [number, number],
    userChars: [250, 350] as [number, number],
    maxTokens: 16,
    seed: 7,
  };
  return quick
    ? { ...common, conversations: 12, turns: 3, concurrency: 6, groups: 3, runTimeoutS: 60 }
    : { ...common, conversations: 96, turns: 5, concurrency: 24, groups: 8, runTimeoutS: 300 };
}

export async function runCacheAwareBench(opts: BenchOptions): Promise<BenchOutcome> {
  const header = resultHeader('cache-aware', opts);
  const p = cacheAwareParams(opts.quick);
  const wl = buildWorkload(p);
  const started = Date.now();
  let fleet: Proc | undefined;
  try {
    log(`cache-aware: starting ${p.engines} mock engines`);
    const f = await startMockFleet(p.engines, p.mockArgs);
    fleet = f;
    const runs: PolicyRun[] = [];
    for (const policy of POLICIES) {
      log(
        `cache-aware: ${policy}: ${p.conversations} conversations x ${p.turns} turns, ${p.concurrency} at a time`,
      );
      const r = await runPolicy(policy, f.urls, f.child.pid, wl, p);
      runs.push(r);
      log(
        `cache-aware: ${policy}: ${r.rps} rps, TTFT p50 ${r.ttftMs.p50} p99 ${r.ttftMs.p99} ms, ` +
          `cached follow-ups ${r.cachedFractionFollowUps}, errors ${r.errors}, ${r.durationS} s`,
      );
      await sleep(500);
    }
    const ca = runs.find((r) => r.policy === 'cache_aware') as PolicyRun;
    const rr = runs.find((r) => r.policy === 'round_robin') as PolicyRun;
    const ratios = {
      throughputRps: round(ca.rps / rr.rps, 3),
      outputTokensPerS: round(ca.outputTokensPerS / rr.outputTokensPerS, 3),
      ttftP50: round(ca.ttftMs.p50 / rr.ttftMs.p50, 3),
      ttftP99: round(ca.ttftMs.p99 / rr.ttftMs.p99, 3),
      duration: round(ca.durationS / rr.durationS, 3),
    };
    const result = {
      ...header,
      params: p,
      workload: {
        requests: p.conversations * p.turns,
        systemPromptChars: wl.systems.map((s) => s.length),
        meanUserChars: Math.round(
          wl.conversations.reduce((a, c) => a + c.users.reduce((b, u) => b + u.length, 0), 0) /
            (p.conversations * p.turns),
        ),
      },
      runs,
      ratiosCacheAwareOverRoundRobin: ratios,
      durationS: round((Date.now() - started) / 1000, 1),
      loadAvgAfter: loadAvg(),
    };
    const fmt = (r: PolicyRun) =>
      `${r.policy} cached ${Math.round(r.cachedFractionFollowUps * 100)}% TTFT p50 ${r.ttftMs.p50}/p99 ${r.ttftMs.p99} ms ${r.rps} rps`;
    const summary =
      `${fmt(ca)} | ${fmt(rr)} | cache_aware/round_robin throughput x${ratios.throughputRps}, ` +
      `TTFT p50 x${ratios.ttftP50} | errors ${ca.errors + rr.errors}`;
    return { result, summary };
  } finally {
    await fleet?.stop();
    await stopAll();
  }
}
