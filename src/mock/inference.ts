/**
 * The inference endpoints of a mock engine as plans: a parsed request becomes its prefill (cache
 * lookup, time to first token), its output length, and how to render the response either as one
 * JSON body or as a stream of SSE events (head at the first token, one step per token, tail).
 * The server (server.ts) owns the timing and the socket; nothing here does I/O.
 */
import { type Engine, type Prefill, type Prompt, idsPrompt, textPrompt } from './engine.js';
import { classProbs, embed, generate, relevance, textSeed, type Generated } from './tokens.js';

export type Json = Record<string, unknown>;

/** Where plans write SSE events: a ServerResponse in practice. */
export interface Sink {
  write(chunk: string): unknown;
}

interface PlanBase {
  prefill: Prefill;
  /** output tokens per choice (0 for encoder endpoints) */
  n: number;
  /** choices generated in parallel (prompts of a batch) */
  choices: number;
}

export interface JsonPlan extends PlanBase {
  stream: false;
  body(): string;
}

export interface StreamPlan extends PlanBase {
  stream: true;
  /** events written at the first token, before token 0 */
  head(w: Sink): void;
  /** events of token i (one per choice) */
  token(i: number, w: Sink): void;
  /** events after the last token, through the terminator */
  tail(w: Sink): void;
}

export type Plan = JsonPlan | StreamPlan;

export type PlanBuilder = (e: Engine, body: Json, t0: number) => Plan;

/** A malformed request: answered with 400 and an OpenAI error envelope. */
export class BadRequest extends Error {
  constructor(
    message: string,
    readonly param: string | null = null,
  ) {
    super(message);
    this.name = 'BadRequest';
  }
}

const DONE = 'data: [DONE]\n\n';

export function isObj(v: unknown): v is Json {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function nowSec(): number {
  return Math.floor(Date.now() / 1000);
}

function modelOf(e: Engine, b: Json): string {
  return typeof b.model === 'string' && b.model !== '' ? b.model : e.model;
}

/** The request's max-tokens limit: the first of `keys` that is set. */
function maxTokens(b: Json | undefined, keys: string[]): number | undefined {
  if (!b) return undefined;
  for (const k of keys) {
    const v = b[k];
    if (v === undefined || v === null) continue;
    if (typeof v !== 'number' || !Number.isFinite(v) || v < 0) {
      throw new BadRequest(`'${k}' must be a non-negative integer`, k);
    }
    return Math.floor(v);
  }
  return undefined;
}

/** Output length: the engine's output_tokens, lowered by the limit; `cut` when the limit stopped it. */
function outputLen(e: Engine, limit: number | undefined): { n: number; cut: boolean } {
  const out = e.settings.output_tokens;
  if (limit === undefined) return { n: out, cut: false };
  return { n: Math.min(out, limit), cut: limit <= out };
}

/** Text of a message content: a string, or the `text` of its parts. */
function contentText(c: unknown): string {
  if (typeof c === 'string') return c;
  if (Array.isArray(c)) {
    let s = '';
    for (const part of c) {
      if (typeof part === 'string') s += part;
      else if (isObj(part)) {
        if (typeof part.text === 'string') s += part.text;
        else if (part.content !== undefined) s += contentText(part.content);
      }
    }
    return s;
  }
  return '';
}

/** A conversation as one prompt text: each message adds `role\ncontent\n`, so turns extend a prefix. */
function renderMessages(messages: unknown[], field: string, prefix = ''): string {
  let text = prefix;
  for (const m of messages) {
    if (!isObj(m)) throw new BadRequest(`each of '${field}' must be an object`, field);
    const role = typeof m.role === 'string' ? m.role : typeof m.type === 'string' ? m.type : '';
    let c = contentText(m.content);
    if (c === '' && typeof m.output === 'string') c = m.output;
    text += role + '\n' + c + '\n';
  }
  return text;
}

function isTokenId(x: unknown): x is number {
  return typeof x === 'number' && Number.isInteger(x) && x >= 0;
}

/** A `prompt`/`input`/`text`: a string, strings, token ids, or lists of token ids. */
function parsePrompts(v: unknown, field: string): Prompt[] {
  if (typeof v === 'string') return [textPrompt(v)];
  if (Array.isArray(v) && v.length > 0) {
    if (v.every((x) => typeof x === 'string')) return (v as string[]).map(textPrompt);
    if (v.every(isTokenId)) return [idsPrompt(v as number[])];
    if (v.every((x) => Array.isArray(x) && x.every(isTokenId))) return (v as number[][]).map(idsPrompt);
  }
  if (v === undefined || v === null) throw new BadRequest(`'${field}' is required`, field);
  throw new BadRequest(
    `'${field}' must be a string, a non-empty array of strings, or token ids (number[] or number[][])`,
    field,
  );
}

function openAiUsage(p: Prefill, completion: number) {
  return {
    prompt_tokens: p.promptTokens,
    completion_tokens: completion,
    total_tokens: p.promptTokens + completion,
    prompt_tokens_details: { cached_tokens: p.cachedTokens },
  };
}

function joinPieces(g: Generated): string {
  return g.pieces.join('');
}

// ---------------------------------------------------------------- /v1/chat/completions

export const chatPlan: PlanBuilder = (e, b) => {
  const messages = b.messages;
  if (!Array.isArray(messages))
    throw new BadRequest("'messages' is required and must be an array", 'messages');
  const text = renderMessages(messages, 'messages');
  const { n, cut } = outputLen(e, maxTokens(b, ['max_completion_tokens', 'max_tokens']));
  const finish = cut ? 'length' : 'stop';
  const model = modelOf(e, b);
  const prefill = e.prefill([textPrompt(text)]);
  const gen = generate(textSeed(text), n);
  const id = 'chatcmpl-' + e.nextId();
  const created = nowSec();
  if (b.stream !== true) {
    return {
      stream: false,
      prefill,
      n,
      choices: 1,
      body: () =>
        JSON.stringify({
          id,
          object: 'chat.completion',
          created,
          model,
          choices: [
            {
              index: 0,
              message: { role: 'assistant', content: joinPieces(gen) },
              logprobs: null,
              finish_reason: finish,
            },
          ],
          usage: openAiUsage(prefill, n),
        }),
    };
  }
  const includeUsage = isObj(b.stream_options) && b.stream_options.include_usage === true;
  const pre =
    `data: {"id":"${id}","object":"chat.completion.chunk","created":${created},` +
    `"model":${JSON.stringify(model)},"choices":[{"index":0,"delta":`;
  const post = ',"logprobs":null,"finish_reason":null}]}\n\n';
  return {
    stream: true,
    prefill,
    n,
    choices: 1,
    head: (w) => w.write(pre + '{"role":"assistant","content":""}' + post),
    token: (i, w) => w.write(pre + '{"content":' + JSON.stringify(gen.pieces[i]) + '}' + post),
    tail: (w) => {
      w.write(pre + `{},"logprobs":null,"finish_reason":"${finish}"}]}\n\n`);
      endOpenAiStream(
        w,
        includeUsage && {
          id,
          object: 'chat.completion.chunk',
          created,
          model,
          usage: openAiUsage(prefill, n),
        },
      );
    },
  };
};

/** the end of an OpenAI stream: the `stream_options.include_usage` chunk if asked, then [DONE] */
function endOpenAiStream(
  w: { write(chunk: string): unknown },
  usageChunk: false | { id: string; object: string; created: number; model: string; usage: unknown },
): void {
  if (usageChunk) {
    const { usage, ...head } = usageChunk;
    w.write(`data: ${JSON.stringify({ ...head, choices: [], usage })}\n\n`);
  }
  w.write(DONE);
}

// ---------------------------------------------------------------- /v1/completions

export const completionPlan: PlanBuilder = (e, b) => {
  const prompts = parsePrompts(b.prompt, 'prompt');
  const { n, cut } = outputLen(e, maxTokens(b, ['max_tokens']));
  const finish = cut ? 'length' : 'stop';
  const model = modelOf(e, b);
  const prefill = e.prefill(prompts);
  const gens = prompts.map((p) => generate(textSeed(p.text), n));
  const id = 'cmpl-' + e.nextId();
  const created = nowSec();
  const completion = n * prompts.length;
  if (b.stream !== true) {
    return {
      stream: false,
      prefill,
      n,
      choices: prompts.length,
      body: () =>
        JSON.stringify({
          id,
          object: 'text_completion',
          created,
          model,
          choices: gens.map((g, index) => ({
            index,
            text: joinPieces(g),
            logprobs: null,
            finish_reason: finish,
          })),
          usage: openAiUsage(prefill, completion),
        }),
    };
  }
  const includeUsage = isObj(b.stream_options) && b.stream_options.include_usage === true;
  const pre = `data: {"id":"${id}","object":"text_completion","created":${created},"model":${JSON.stringify(model)},"choices":[{"index":`;
  return {
    stream: true,
    prefill,
    n,
    choices: prompts.length,
    head: () => {},
    token: (i, w) => {
      for (let j = 0; j < gens.length; j++) {
        w.write(
          `${pre}${j},"text":${JSON.stringify(gens[j].pieces[i])},"logprobs":null,"finish_reason":null}]}\n\n`,
        );
      }
    },
    tail: (w) => {
      for (let j = 0; j < gens.length; j++) {
        w.write(`${pre}${j},"text":"","logprobs":null,"finish_reason":"${finish}"}]}\n\n`);
      }
      endOpenAiStream(
        w,
        includeUsage && {
          id,
          object: 'text_completion',
          created,
          model,
          usage: openAiUsage(prefill, completion),
        },
      );
    },
  };
};

// ---------------------------------------------------------------- /v1/embeddings

export const embeddingPlan: PlanBuilder = (e, b) => {
  const prompts = parsePrompts(b.input, 'input');
  const model = modelOf(e, b);
  let dims = 16;
  if (b.dimensions !== undefined && b.dimensions !== null) {
    if (!isTokenId(b.dimensions) || b.dimensions < 1 || b.dimensions > 8192) {
      throw new BadRequest("'dimensions' must be an integer in 1..8192", 'dimensions');
    }
    dims = b.dimensions;
  }
  const format = b.encoding_format ?? 'float';
  if (format !== 'float' && format !== 'base64') {
    throw new BadRequest("'encoding_format' must be 'float' or 'base64'", 'encoding_format');
  }
  const prefill = e.prefill(prompts);
  return {
    stream: false,
    prefill,
    n: 0,
    choices: 1,
    body: () => {
      const data = prompts.map((p, index) => {
        const v = embed(p.ids ? Array.from(p.ids).join(',') : p.text, dims);
        let embedding: number[] | string;
        if (format === 'base64') {
          const buf = Buffer.allocUnsafe(dims * 4);
          for (let i = 0; i < dims; i++) buf.writeFloatLE(v[i], i * 4);
          embedding = buf.toString('base64');
        } else {
          embedding = Array.from(v);
        }
        return { object: 'embedding', index, embedding };
      });
      const usage = { prompt_tokens: prefill.promptTokens, total_tokens: prefill.promptTokens };
      return JSON.stringify({ object: 'list', data, model, usage });
    },
  };
};

// ---------------------------------------------------------------- /v1/rerank

export const rerankPlan: PlanBuilder = (e, b) => {
  const query = b.query;
  if (typeof query !== 'string') throw new BadRequest("'query' is required and must be a string", 'query');
  const docsIn = b.documents;
  if (!Array.isArray(docsIn))
    throw new BadRequest("'documents' is required and must be an array", 'documents');
  const docs = docsIn.map((d) => {
    if (typeof d === 'string') return d;
    if (isObj(d) && typeof d.text === 'string') return d.text;
    throw new BadRequest("each of 'documents' must be a string or {text}", 'documents');
  });
  const topN = maxTokens(b, ['top_n', 'top_k']);
  const returnDocs = b.return_documents !== false;
  const model = modelOf(e, b);
  const prefill = e.prefill(docs.map((d) => textPrompt(query + '\n' + d)));
  return {
    stream: false,
    prefill,
    n: 0,
    choices: 1,
    body: () => {
      const ranked = docs
        .map((d, index) => ({ index, relevance_score: relevance(query, d), d }))
        .sort((x, y) => y.relevance_score - x.relevance_score || x.index - y.index)
        .slice(0, topN ?? docs.length)
        .map(({ index, relevance_score, d }) =>
          returnDocs ? { index, relevance_score, document: { text: d } } : { index, relevance_score },
        );
      return JSON.stringify({
        id: 'rerank-' + e.nextId(),
        results: ranked,
        model,
        usage: { prompt_tokens: prefill.promptTokens, total_tokens: prefill.promptTokens },
      });
    },
  };
};

// ---------------------------------------------------------------- /v1/classify

const NUM_CLASSES = 2;

export const classifyPlan: PlanBuilder = (e, b) => {
  const prompts = parsePrompts(b.input ?? b.text, 'input');
  const model = modelOf(e, b);
  const prefill = e.prefill(prompts);
  return {
    stream: false,
    prefill,
    n: 0,
    choices: 1,
    body: () => {
      const data = prompts.map((p, index) => {
        const probs = classProbs(p.text, NUM_CLASSES);
        const best = probs.indexOf(Math.max(...probs));
        return { index, label: `LABEL_${best}`, probs, num_classes: NUM_CLASSES };
      });
      return JSON.stringify({
        id: 'classify-' + e.nextId(),
        object: 'list',
        created: nowSec(),
        model,
        data,
        usage: {
          prompt_tokens: prefill.promptTokens,
          completion_tokens: 0,
          total_tokens: prefill.promptTokens,
        },
      });
    },
  };
};

// ---------------------------------------------------------------- /generate (SGLang native)

export const generatePlan: PlanBuilder = (e, b, t0) => {
  let prompts: Prompt[];
  let batch: boolean;
  if (b.text !== undefined && b.text !== null) {
    prompts = parsePrompts(b.text, 'text');
    batch = Array.isArray(b.text);
  } else if (b.input_ids !== undefined && b.input_ids !== null) {
    prompts = parsePrompts(b.input_ids, 'input_ids');
    batch = Array.isArray(b.input_ids) && b.input_ids.length > 0 && Array.isArray(b.input_ids[0]);
  } else {
    throw new BadRequest("'text' or 'input_ids' is required", 'text');
  }
  if (b.sampling_params !== undefined && b.sampling_params !== null && !isObj(b.sampling_params)) {
    throw new BadRequest("'sampling_params' must be an object", 'sampling_params');
  }
  const sp = isObj(b.sampling_params) ? b.sampling_params : undefined;
  const { n, cut } = outputLen(e, maxTokens(sp, ['max_new_tokens']));
  const finish = cut ? { type: 'length', length: n } : { type: 'stop', matched: 2 };
  const prefill = e.prefill(prompts);
  const gens = prompts.map((p) => generate(textSeed(p.text), n));
  const ids = prompts.map(() => e.nextId());
  const meta = (j: number, completion: number, done: boolean) => ({
    id: ids[j],
    finish_reason: done ? finish : null,
    prompt_tokens: prefill.perPrompt[j].tokens,
    completion_tokens: completion,
    cached_tokens: prefill.perPrompt[j].cached,
    e2e_latency: (performance.now() - t0) / 1000,
  });
  if (b.stream !== true) {
    return {
      stream: false,
      prefill,
      n,
      choices: prompts.length,
      body: () => {
        const out = gens.map((g, j) => ({
          text: joinPieces(g),
          output_ids: g.ids,
          meta_info: meta(j, n, true),
        }));
        return JSON.stringify(batch ? out : out[0]);
      },
    };
  }
  const texts = gens.map(() => '');
  const event = (j: number, completion: number, done: boolean) => {
    const ev: Json = {
      text: texts[j],
      output_ids: gens[j].ids.slice(0, completion),
      meta_info: meta(j, completion, done),
    };
    if (batch) ev.index = j;
    return `data: ${JSON.stringify(ev)}\n\n`;
  };
  return {
    stream: true,
    prefill,
    n,
    choices: prompts.length,
    head: () => {},
    token: (i, w) => {
      for (let j = 0; j < gens.length; j++) {
        texts[j] += gens[j].pieces[i];
        w.write(event(j, i + 1, i === n - 1));
      }
    },
    tail: (w) => {
      if (n === 0) for (let j = 0; j < gens.length; j++) w.write(event(j, 0, true));
      w.write(DONE);
    },
  };
};

// ---------------------------------------------------------------- /v1/messages (Anthropic)

function sse(event: string, data: unknown): string {
  return `event: ${event}\ndata: ${JSON.stringify(data)}\n\n`;
}

export const messagesPlan: PlanBuilder = (e, b) => {
  const messages = b.messages;
  if (!Array.isArray(messages))
    throw new BadRequest("'messages' is required and must be an array", 'messages');
  const system = b.system === undefined || b.system === null ? '' : contentText(b.system);
  const text = renderMessages(messages, 'messages', system === '' ? '' : 'system\n' + system + '\n');
  const { n, cut } = outputLen(e, maxTokens(b, ['max_tokens']));
  const stopReason = cut ? 'max_tokens' : 'end_turn';
  const model = modelOf(e, b);
  const prefill = e.prefill([textPrompt(text)]);
  const gen = generate(textSeed(text), n);
  const id = 'msg_' + e.nextId();
  // Anthropic counts cache reads apart from input_tokens
  const usage = (output: number) => ({
    input_tokens: prefill.promptTokens - prefill.cachedTokens,
    output_tokens: output,
    cache_read_input_tokens: prefill.cachedTokens,
    cache_creation_input_tokens: 0,
  });
  if (b.stream !== true) {
    return {
      stream: false,
      prefill,
      n,
      choices: 1,
      body: () =>
        JSON.stringify({
          id,
          type: 'message',
          role: 'assistant',
          model,
          content: [{ type: 'text', text: joinPieces(gen) }],
          stop_reason: stopReason,
          stop_sequence: null,
          usage: usage(n),
        }),
    };
  }
  return {
    stream: true,
    prefill,
    n,
    choices: 1,
    head: (w) => {
      const message = {
        id,
        type: 'message',
        role: 'assistant',
        model,
        content: [],
        stop_reason: null,
        stop_sequence: null,
        usage: usage(0),
      };
      w.write(sse('message_start', { type: 'message_start', message }));
      w.write(
        sse('content_block_start', {
          type: 'content_block_start',
          index: 0,
          content_block: { type: 'text', text: '' },
        }),
      );
    },
    token: (i, w) =>
      w.write(
        'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":' +
          JSON.stringify(gen.pieces[i]) +
          '}}\n\n',
      ),
    tail: (w) => {
      w.write(sse('content_block_stop', { type: 'content_block_stop', index: 0 }));
      w.write(
        sse('message_delta', {
          type: 'message_delta',
          delta: { stop_reason: stopReason, stop_sequence: null },
          usage: { output_tokens: n },
        }),
      );
      w.write(sse('message_stop', { type: 'message_stop' }));
    },
  };
};

// ---------------------------------------------------------------- /v1/responses

export const responsesPlan: PlanBuilder = (e, b) => {
  const input = b.input;
  const instructions = typeof b.instructions === 'string' ? 'system\n' + b.instructions + '\n' : '';
  let text: string;
  if (typeof input === 'string') text = instructions + 'user\n' + input + '\n';
  else if (Array.isArray(input)) text = renderMessages(input, 'input', instructions);
  else throw new BadRequest("'input' is required and must be a string or an array of items", 'input');
  const { n } = outputLen(e, maxTokens(b, ['max_output_tokens']));
  const model = modelOf(e, b);
  const prefill = e.prefill([textPrompt(text)]);
  const gen = generate(textSeed(text), n);
  const id = 'resp_' + e.nextId();
  const msgId = 'msg_' + e.nextId();
  const createdAt = nowSec();
  const outText = joinPieces(gen);
  const part = { type: 'output_text', text: outText, annotations: [] };
  const item = (done: boolean) => ({
    id: msgId,
    type: 'message',
    status: done ? 'completed' : 'in_progress',
    role: 'assistant',
    content: done ? [part] : [],
  });
  const response = (done: boolean) => ({
    id,
    object: 'response',
    created_at: createdAt,
    status: done ? 'completed' : 'in_progress',
    model,
    output: done ? [item(true)] : [],
    usage: done
      ? {
          input_tokens: prefill.promptTokens,
          input_tokens_details: { cached_tokens: prefill.cachedTokens },
          output_tokens: n,
          output_tokens_details: { reasoning_tokens: 0 },
          total_tokens: prefill.promptTokens + n,
        }
      : null,
  });
  if (b.stream !== true)
    return { stream: false, prefill, n, choices: 1, body: () => JSON.stringify(response(true)) };
  let seq = 0;
  const ev = (type: string, data: Json) => sse(type, { type, sequence_number: seq++, ...data });
  const at = { item_id: msgId, output_index: 0, content_index: 0 };
  return {
    stream: true,
    prefill,
    n,
    choices: 1,
    head: (w) => {
      w.write(ev('response.created', { response: response(false) }));
      w.write(ev('response.in_progress', { response: response(false) }));
      w.write(ev('response.output_item.added', { output_index: 0, item: item(false) }));
      w.write(ev('response.content_part.added', { ...at, part: { ...part, text: '' } }));
    },
    token: (i, w) => w.write(ev('response.output_text.delta', { ...at, delta: gen.pieces[i], logprobs: [] })),
    tail: (w) => {
      w.write(ev('response.output_text.done', { ...at, text: outText, logprobs: [] }));
      w.write(ev('response.content_part.done', { ...at, part }));
      w.write(ev('response.output_item.done', { output_index: 0, item: item(true) }));
      w.write(ev('response.completed', { response: response(true) }));
    },
  };
};
