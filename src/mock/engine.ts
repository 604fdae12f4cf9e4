/**
 * One simulated engine (one port): runtime settings, prefix cache, counters, and the prefill step
 * that turns prompts into cached/uncached token counts and a time to first token. No I/O here.
 */
import { randomBytes } from 'node:crypto';
import { KvCache } from './kv-cache.js';
import type { MockWorkerOptions } from './options.js';
import { countTokens, tokenIds } from './tokens.js';

/** What `POST /mock/faults` can change at runtime (snake_case, as on the wire). */
export interface EngineSettings {
  fail_rate: number;
  fail_status: number;
  healthy: boolean;
  ttft_ms: number;
  itl_ms: number;
  prefill_tokens_per_s: number;
  output_tokens: number;
  /** a stream is destroyed abruptly after this many tokens; 0 = never */
  fail_mid_stream_after: number;
}

/** A prompt as the engine sees it: a text, or token ids when the request sent them. */
export interface Prompt {
  text: string;
  /** token ids given by the request (`input_ids`, or a token-array prompt); otherwise derived from text */
  ids?: ArrayLike<number>;
  tokens: number;
}

export function textPrompt(text: string): Prompt {
  return { text, tokens: countTokens(text) };
}

export function idsPrompt(ids: number[]): Prompt {
  // the text stands in for seeding the generated words
  return { text: ids.slice(0, 16).join(','), ids, tokens: ids.length };
}

export interface Prefill {
  promptTokens: number;
  cachedTokens: number;
  /** per prompt */
  perPrompt: { tokens: number; cached: number }[];
  /** ttft + prefill time of the uncached tokens, ms */
  delayMs: number;
  /** block keys per prompt to insert once prefill is done (undefined: shorter than a block) */
  keys: (number[] | undefined)[];
}

export interface LastRequest {
  method: string;
  path: string;
  headers: Record<string, string | string[] | undefined>;
  rawHeaders: string[];
  body: Buffer;
}

export const MAX_RUNNING_REQUESTS = 256;

export class Engine {
  settings: EngineSettings;
  readonly initial: EngineSettings;
  readonly cache: KvCache;
  readonly model: string;
  /** required as `Authorization: Bearer <key>` (see MockWorkerOptions.apiKey) */
  readonly apiKey: string | undefined;
  readonly createdAt = Math.floor(Date.now() / 1000);
  /** `host:port`, set once listening; sent as `x-mock-worker` */
  label = '';

  requests = 0;
  /** GET /health and /health_generate received */
  healthChecks = 0;
  running = 0;
  failures = 0;
  /** requests refused for a missing or wrong API key */
  unauthorized = 0;
  promptTokensTotal = 0;
  cachedTokensTotal = 0;
  generationTokensTotal = 0;
  lastRequest: LastRequest | undefined;

  private readonly idPrefix = randomBytes(4).toString('hex');
  private seq = 0;
  private tpTime = Date.now();
  private tpTotal = 0;
  private tpRate = 0;

  constructor(opts: MockWorkerOptions) {
    this.model = opts.model;
    this.apiKey = opts.apiKey;
    this.cache = new KvCache(opts.kvBlocks, opts.blockSize);
    this.initial = {
      fail_rate: opts.failRate,
      fail_status: opts.failStatus,
      healthy: true,
      ttft_ms: opts.ttftMs,
      itl_ms: opts.itlMs,
      prefill_tokens_per_s: opts.prefillTokensPerS,
      output_tokens: opts.outputTokens,
      fail_mid_stream_after: 0,
    };
    this.settings = { ...this.initial };
  }

  get blockSize(): number {
    return this.cache.blockSize;
  }

  get maxTotalNumTokens(): number {
    return this.cache.capacity * this.cache.blockSize;
  }

  /** a fresh request id suffix: unique per worker */
  nextId(): string {
    return this.idPrefix + (++this.seq).toString(16).padStart(6, '0');
  }

  /** Look the prompts up in the prefix cache and compute the time to first token. */
  prefill(prompts: Prompt[]): Prefill {
    const bs = this.cache.blockSize;
    let promptTokens = 0;
    let cachedTokens = 0;
    const perPrompt: { tokens: number; cached: number }[] = [];
    const keys: (number[] | undefined)[] = [];
    for (const p of prompts) {
      let cached = 0;
      let k: number[] | undefined;
      if (p.tokens >= bs) {
        k = this.cache.keys(p.ids ?? tokenIds(p.text));
        cached = this.cache.match(k) * bs;
      }
      promptTokens += p.tokens;
      cachedTokens += cached;
      perPrompt.push({ tokens: p.tokens, cached });
      keys.push(k);
    }
    const s = this.settings;
    let delayMs = s.ttft_ms;
    if (s.prefill_tokens_per_s > 0)
      delayMs += ((promptTokens - cachedTokens) / s.prefill_tokens_per_s) * 1000;
    return { promptTokens, cachedTokens, perPrompt, delayMs, keys };
  }

  /** Prefill finished: insert the prompts' blocks and count their tokens. */
  commit(p: Prefill): void {
    for (const k of p.keys) if (k !== undefined && k.length > 0) this.cache.insert(k);
    this.promptTokensTotal += p.promptTokens;
    this.cachedTokensTotal += p.cachedTokens;
  }

  /** Generated tokens per second, averaged over at least the last second between reads. */
  genThroughput(now = Date.now()): number {
    const dt = now - this.tpTime;
    if (dt >= 1000) {
      this.tpRate = ((this.generationTokensTotal - this.tpTotal) * 1000) / dt;
      this.tpTime = now;
      this.tpTotal = this.generationTokensTotal;
    }
    return this.tpRate;
  }

  cacheHitRate(): number {
    return this.promptTokensTotal === 0 ? 0 : this.cachedTokensTotal / this.promptTokensTotal;
  }

  tokenUsage(): number {
    return this.cache.size / this.cache.capacity;
  }

  flush(): void {
    this.cache.flush();
  }
}
