/**
 * Token usage and generation timing of one upstream response, observed from its body bytes as
 * they pass through: time to first token (TTFT), time per output token (TPOT), generation time,
 * and the prompt / completion / cached token counts the engine reported.
 *
 * Streams are SSE: OpenAI (`data: {...}` per chunk, `data: [DONE]`, a final `usage` chunk when
 * `stream_options.include_usage`), SGLang `/generate` (every event carries a cumulative
 * `meta_info`; the last one per `index` wins), Anthropic `/v1/messages` (`message_start` has the
 * input usage, `message_delta` the output usage) and OpenAI Responses (`response.completed`
 * carries `response.usage`). A non-streaming body is one JSON document (`usage` or `meta_info`,
 * or an array of them for an SGLang batch).
 *
 * Cost: this runs on every chunk of every response, so it never JSON-parses a token event. It
 * finds event boundaries and the `"usage"` / `"meta_info"` byte patterns with Buffer.indexOf over
 * the whole chunk, classifies each event from its first bytes, and parses only the few events that
 * carry usage (SGLang's meta_info events are remembered by reference and only the last one per
 * index is parsed, in `finish`). A non-streaming body is parsed once, in `finish`, if ≤ 1 MiB.
 *
 * Owns: byte-level SSE framing for observation only (the bytes are forwarded untouched by the
 * caller). Never: modifies, copies or delays the stream; throws.
 */

export interface UsageResult {
  /** streaming only: request sent upstream → first token event */
  ttftSec?: number;
  /** streaming only: (last token − first token) / (completion tokens − 1), with ≥ 2 tokens */
  tpotSec?: number;
  /** streaming only: first token → last token */
  generationSec?: number;
  promptTokens?: number;
  completionTokens?: number;
  cachedTokens?: number;
}

/** a non-streaming body larger than this is not parsed (the counts are then unknown) */
export const MAX_PARSED_BODY = 1024 * 1024;
/** an SSE event larger than this is counted but not parsed, and not buffered past this size */
const MAX_EVENT = 1024 * 1024;

const LF = 0x0a;
const CR = 0x0d;
const SPACE = 0x20;
const COLON = 0x3a;
const QUOTE = 0x22;
const BACKSLASH = 0x5c;
const OPEN = 0x7b;
const CLOSE = 0x7d;
const USAGE = Buffer.from('"usage"');
const META_INFO = Buffer.from('"meta_info"');
const INDEX = Buffer.from('"index":');
const DATA = Buffer.from('data:');
const EVENT = Buffer.from('event:');
const DONE = Buffer.from('[DONE]');
const NO_CHOICES = Buffer.from('"choices":[]');

type Json = Record<string, unknown>;

const isObj = (v: unknown): v is Json => typeof v === 'object' && v !== null && !Array.isArray(v);
const count = (v: unknown): number | undefined =>
  typeof v === 'number' && Number.isFinite(v) && v >= 0 ? v : undefined;

/** `buf` has `pat` at `at` (bounded by `end`) */
function hasAt(buf: Buffer, at: number, end: number, pat: Buffer): boolean {
  if (at + pat.length > end) return false;
  for (let i = 0; i < pat.length; i++) if (buf[at + i] !== pat[i]) return false;
  return true;
}

/** Token counts from whatever shape of usage an engine reports; fields it lacks stay unset. */
interface Counts {
  prompt?: number;
  completion?: number;
  cached?: number;
}

/**
 * OpenAI: prompt_tokens (cached in prompt_tokens_details.cached_tokens), completion_tokens.
 * Responses: input_tokens includes the cached ones (input_tokens_details.cached_tokens).
 * Anthropic: input_tokens excludes cache reads and writes, which it counts apart.
 * SGLang meta_info: prompt_tokens, completion_tokens, cached_tokens.
 */
function readUsage(u: Json, into: Counts): void {
  const prompt = count(u.prompt_tokens);
  const completion = count(u.completion_tokens) ?? count(u.output_tokens);
  const input = count(u.input_tokens);
  const cacheRead = count(u.cache_read_input_tokens);
  const cacheWrite = count(u.cache_creation_input_tokens);
  if (prompt !== undefined) into.prompt = prompt;
  else if (input !== undefined) into.prompt = input + (cacheRead ?? 0) + (cacheWrite ?? 0);
  if (completion !== undefined) into.completion = completion;
  const details = isObj(u.prompt_tokens_details)
    ? u.prompt_tokens_details
    : isObj(u.input_tokens_details)
      ? u.input_tokens_details
      : undefined;
  const cached = cacheRead ?? count(u.cached_tokens) ?? (details ? count(details.cached_tokens) : undefined);
  if (cached !== undefined) into.cached = cached;
}

/** the usage object of a document: top level, Anthropic's `message`, or the Responses `response` */
function usageOf(doc: Json): Json | undefined {
  if (isObj(doc.usage)) return doc.usage;
  if (isObj(doc.message) && isObj(doc.message.usage)) return doc.message.usage;
  if (isObj(doc.response) && isObj(doc.response.usage)) return doc.response.usage;
  if (isObj(doc.meta_info)) return doc.meta_info;
  return undefined;
}

/** a whole non-streaming body: one document, or an array of them (SGLang batch /generate) */
function readBody(doc: unknown, into: Counts): void {
  if (Array.isArray(doc)) {
    const sum: Counts = {};
    for (const d of doc) {
      if (!isObj(d)) continue;
      const u = usageOf(d);
      if (!u) continue;
      const one: Counts = {};
      readUsage(u, one);
      if (one.prompt !== undefined) sum.prompt = (sum.prompt ?? 0) + one.prompt;
      if (one.completion !== undefined) sum.completion = (sum.completion ?? 0) + one.completion;
      if (one.cached !== undefined) sum.cached = (sum.cached ?? 0) + one.cached;
    }
    Object.assign(into, sum);
  } else if (isObj(doc)) {
    const u = usageOf(doc);
    if (u) readUsage(u, into);
  }
}

function parseJson(text: string): unknown {
  if (text.length > MAX_EVENT) return undefined;
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

/** a reference into a received chunk: the last SGLang event of one index, parsed in finish() */
interface EventRef {
  buf: Buffer;
  start: number;
  end: number;
}

export class UsageObserver {
  private readonly counts: Counts = {};
  private firstAt: number | undefined;
  private lastAt: number | undefined;
  /** token events seen: the completion count when the engine reports no usage */
  private tokenEvents = 0;
  // streaming: the incomplete event at the end of the previous chunks (kept as received)
  private tail: Buffer[] = [];
  private tailLen = 0;
  /** the event being received is over MAX_EVENT: skip to its end (it was counted when it began) */
  private skipping = false;
  // SGLang /generate: the last meta_info event per index; `batch` once an event carries "index"
  private lastMeta: Map<number, EventRef> | undefined;
  private batch: boolean | undefined;
  /** decided by the first data event: SGLang /generate events carry meta_info */
  private sglang: boolean | undefined;
  // non-streaming: the body, while it stays under MAX_PARSED_BODY
  private body: Buffer[] | undefined = [];
  private bodyLen = 0;
  private result: UsageResult | undefined;

  /**
   * @param streaming the response is an SSE stream
   * @param startedAtMs performance.now() when the request was sent upstream
   */
  constructor(
    private readonly streaming: boolean,
    private readonly startedAtMs: number,
  ) {}

  /**
   * One chunk of the upstream body, as received, with performance.now(). The observer may keep a
   * reference to the chunk until `finish` (never a copy): the caller must not reuse its memory.
   */
  onChunk(chunk: Buffer, nowMs: number): void {
    if (this.result !== undefined || chunk.length === 0) return;
    if (!this.streaming) {
      if (this.body === undefined) return;
      this.bodyLen += chunk.length;
      if (this.bodyLen > MAX_PARSED_BODY) this.body = undefined;
      else this.body.push(chunk);
      return;
    }
    try {
      this.onStreamChunk(chunk, nowMs);
    } catch {
      // observation must never break the response it observes
    }
  }

  private onStreamChunk(chunk: Buffer, nowMs: number): void {
    let buf = chunk;
    let scanFrom = 0;
    if (this.tailLen > 0) {
      // a separator may straddle the chunk edge: look at the tail's last 3 bytes with the chunk
      const last = this.tail[this.tail.length - 1];
      const edge = Buffer.concat([last.subarray(Math.max(0, last.length - 3)), chunk.subarray(0, 3)]);
      if (findBoundary(edge, 0) < 0 && findBoundary(chunk, 0) < 0) {
        this.keepTail(chunk, nowMs);
        return;
      }
      scanFrom = Math.max(0, this.tailLen - 3);
      buf = Buffer.concat([...this.tail, chunk], this.tailLen + chunk.length);
      this.tail = [];
      this.tailLen = 0;
    }
    this.scan(buf, scanFrom, nowMs);
  }

  /** processes every complete event in `buf`; keeps the incomplete rest as the tail */
  private scan(buf: Buffer, scanFrom: number, nowMs: number): void {
    // pattern positions over the whole buffer, consumed in order as the events advance; once the
    // first data event has told SGLang /generate (meta_info) from the rest (usage), only its
    // pattern is looked for
    let usageAt = this.sglang === true ? -1 : buf.indexOf(USAGE);
    let metaAt = this.sglang === false ? -1 : buf.indexOf(META_INFO);
    let start = 0;
    let from = scanFrom;
    for (;;) {
      const end = findBoundary(buf, from);
      if (end < 0) break;
      const next = boundaryNext;
      if (this.skipping) this.skipping = false;
      else {
        while (usageAt >= 0 && usageAt < start) usageAt = buf.indexOf(USAGE, usageAt + 1);
        while (metaAt >= 0 && metaAt < start) metaAt = buf.indexOf(META_INFO, metaAt + 1);
        this.onEvent(
          buf,
          start,
          end,
          nowMs,
          usageAt >= 0 && usageAt < end ? usageAt : -1,
          metaAt >= 0 && metaAt < end,
        );
      }
      start = next;
      from = next;
    }
    if (start < buf.length) this.keepTail(start === 0 ? buf : buf.subarray(start), nowMs);
  }

  private keepTail(part: Buffer, nowMs: number): void {
    if (this.skipping) {
      // only the last bytes matter: the blank line that ends the skipped event may straddle chunks
      this.tail = [Buffer.from(part.subarray(Math.max(0, part.length - 3)))];
      this.tailLen = this.tail[0].length;
      return;
    }
    if (this.tailLen + part.length > MAX_EVENT) {
      // too big to parse: count it as the event it starts as, then skip to its end
      const head = this.tailLen > 0 ? this.tail[0] : part;
      this.onEvent(head, 0, Math.min(head.length, 256), nowMs, -1, false);
      this.tail = [];
      this.tailLen = 0;
      this.skipping = true;
      this.keepTail(part, nowMs);
      return;
    }
    this.tail.push(part);
    this.tailLen += part.length;
  }

  /** one complete SSE event, bytes [start, end) of `buf` (end excludes the blank line) */
  private onEvent(
    buf: Buffer,
    start: number,
    end: number,
    nowMs: number,
    /** where `"usage"` first occurs in the event, or -1 */
    usageAt: number,
    hasMeta: boolean,
  ): void {
    // the first lines say what the event is: `event: <name>` and/or where `data:` starts
    let name: string | undefined;
    let data = -1;
    let line = start;
    while (line < end) {
      if (hasAt(buf, line, end, DATA)) {
        data = line + DATA.length;
        break;
      }
      let eol = buf.indexOf(LF, line);
      if (eol < 0 || eol > end) eol = end;
      if (hasAt(buf, line, end, EVENT)) {
        let from = line + EVENT.length;
        if (buf[from] === SPACE) from++;
        name = buf.toString('latin1', from, eol > from && buf[eol - 1] === CR ? eol - 1 : eol);
      }
      // other fields (id:, retry:) and comments (`:` keep-alives) say nothing about tokens
      line = eol + 1;
    }
    if (data < 0) return;
    this.sglang ??= hasMeta;
    if (buf[data] === SPACE) data++;
    if (hasAt(buf, data, end, DONE)) return;

    // only the usage object itself is parsed, never the event around it (a Responses
    // `response.completed` carries the whole output)
    const usage = usageAt >= 0 ? objectAfter(buf, USAGE, usageAt, end) : undefined;
    let token: boolean;
    if (name !== undefined) {
      // named events (Anthropic, Responses): only the deltas carry generated tokens
      token = name === 'content_block_delta' || (name.startsWith('response.') && name.endsWith('.delta'));
    } else {
      // OpenAI's include_usage chunk has no choices; everything else unnamed carries a token
      token = !(usage !== undefined && buf.subarray(start, end).indexOf(NO_CHOICES) >= 0);
    }
    if (token) {
      this.tokenEvents++;
      if (this.firstAt === undefined) this.firstAt = nowMs;
      this.lastAt = nowMs;
    }
    if (hasMeta) this.rememberMeta(buf, start, end);
    else if (usage !== undefined) readUsage(usage, this.counts);
  }

  /** SGLang: meta_info is cumulative, so only the last event of each index matters */
  private rememberMeta(buf: Buffer, start: number, end: number): void {
    if (this.batch === undefined) this.batch = findIndex(buf, start, end) !== undefined;
    const index = this.batch ? (findIndex(buf, start, end) ?? 0) : 0;
    (this.lastMeta ??= new Map()).set(index, { buf, start, end });
  }

  /** the result, with performance.now() at the end of the response; later calls return the same */
  finish(nowMs: number): UsageResult {
    if (this.result !== undefined) return this.result;
    try {
      if (this.streaming) this.finishStream(nowMs);
      else if (this.body !== undefined && this.bodyLen > 0) this.finishBody();
    } catch {
      // unknown counts rather than a failed response
    }
    this.body = undefined;
    const r: UsageResult = {};
    const c = this.counts;
    if (c.prompt !== undefined) r.promptTokens = c.prompt;
    if (c.completion !== undefined) r.completionTokens = c.completion;
    if (c.cached !== undefined) r.cachedTokens = c.cached;
    if (this.streaming && this.firstAt !== undefined && this.lastAt !== undefined) {
      r.ttftSec = Math.max(0, this.firstAt - this.startedAtMs) / 1000;
      const gen = (this.lastAt - this.firstAt) / 1000;
      r.generationSec = gen;
      // without reported usage the token events stand in for tokens (one token per event is
      // what OpenAI-style and SGLang streams send; role and finish chunks make it approximate)
      const tokens = c.completion ?? this.tokenEvents;
      if (tokens >= 2) r.tpotSec = gen / (tokens - 1);
    }
    this.result = r;
    return r;
  }

  /**
   * A non-streaming body. The common case (one JSON object whose last `"usage"` is the top-level
   * one, as OpenAI, Anthropic and SGLang write it) parses just that object; arrays (SGLang batch
   * /generate) and bodies whose usage sits elsewhere are parsed whole.
   */
  private finishBody(): void {
    const body = this.body as Buffer[];
    const buf = body.length === 1 ? body[0] : Buffer.concat(body, this.bodyLen);
    let first = 0;
    while (first < buf.length && buf[first] <= SPACE) first++;
    if (buf[first] === OPEN) {
      const at = buf.lastIndexOf(USAGE);
      if (at > 0) {
        const u = objectAfter(buf, USAGE, at, buf.length);
        if (u !== undefined) {
          readUsage(u, this.counts);
          if (this.counts.prompt !== undefined || this.counts.completion !== undefined) return;
        }
      }
    }
    readBody(parseJson(buf.toString('utf8')), this.counts);
  }

  private finishStream(nowMs: number): void {
    // a stream that ended without its final blank line still ended its last event
    if (this.tailLen > 0 && !this.skipping) {
      const buf = Buffer.concat(this.tail, this.tailLen);
      let end = buf.length;
      while (end > 0 && (buf[end - 1] === LF || buf[end - 1] === CR)) end--;
      this.onEvent(buf, 0, end, nowMs, buf.subarray(0, end).indexOf(USAGE), buf.indexOf(META_INFO) >= 0);
    }
    this.tail = [];
    this.tailLen = 0;
    if (this.lastMeta === undefined || this.lastMeta.size === 0) return;
    const sum: Counts = {};
    for (const ref of this.lastMeta.values()) {
      const meta = objectAfter(ref.buf, META_INFO, ref.start, ref.end);
      if (meta === undefined) continue;
      const one: Counts = {};
      readUsage(meta, one);
      if (one.prompt !== undefined) sum.prompt = (sum.prompt ?? 0) + one.prompt;
      if (one.completion !== undefined) sum.completion = (sum.completion ?? 0) + one.completion;
      if (one.cached !== undefined) sum.cached = (sum.cached ?? 0) + one.cached;
    }
    this.lastMeta = undefined;
    Object.assign(this.counts, sum);
  }
}

/** set by findBoundary: where the next event starts */
let boundaryNext = 0;

/**
 * The end of the first event completed at or after `from`: the position of the line feed that
 * ends its last line, with `boundaryNext` set past the blank line. LF and CRLF line endings.
 */
function findBoundary(buf: Buffer, from: number): number {
  if (from >= buf.length) return -1;
  let p = buf.indexOf(LF, from);
  while (p >= 0) {
    const n = buf[p + 1];
    if (n === LF) {
      boundaryNext = p + 2;
      return p > 0 && buf[p - 1] === CR ? p - 1 : p;
    }
    if (n === CR && buf[p + 2] === LF) {
      boundaryNext = p + 3;
      return p > 0 && buf[p - 1] === CR ? p - 1 : p;
    }
    p = buf.indexOf(LF, p + 1);
  }
  return -1;
}

/**
 * The JSON object that is the value of key `pat` (`"usage"`, `"meta_info"`) in [start, end),
 * parsed on its own: the first occurrence whose value is an object (SGLang's OpenAI streams send
 * `"usage":null` on every chunk). Objects are delimited by brace depth outside strings. (A JSON
 * string cannot contain the key pattern: its quotes would be escaped, so a match is a key.)
 */
function objectAfter(buf: Buffer, pat: Buffer, start: number, end: number): Json | undefined {
  let at = buf.indexOf(pat, start);
  while (at >= 0 && at < end) {
    let p = at + pat.length;
    while (p < end && (buf[p] === SPACE || buf[p] === COLON)) p++;
    if (buf[p] === OPEN) {
      const close = matchBrace(buf, p, end);
      if (close < 0) return undefined;
      const doc = parseJson(buf.toString('utf8', p, close + 1));
      return isObj(doc) ? doc : undefined;
    }
    at = buf.indexOf(pat, p);
  }
  return undefined;
}

/** the position of the `}` that closes the `{` at `open`, or -1 */
function matchBrace(buf: Buffer, open: number, end: number): number {
  let depth = 0;
  for (let p = open; p < end; p++) {
    const c = buf[p];
    if (c === QUOTE) {
      // skip the string, escapes included
      for (p++; p < end && buf[p] !== QUOTE; p++) if (buf[p] === BACKSLASH) p++;
    } else if (c === OPEN) depth++;
    else if (c === CLOSE && --depth === 0) return p;
  }
  return -1;
}

/** a top-level `"index":N` of an SGLang batch event (it follows meta_info, so search backwards) */
function findIndex(buf: Buffer, start: number, end: number): number | undefined {
  // (a JSON string cannot contain `"index":`, its quotes would be escaped: a match is a key)
  const at = buf.subarray(start, end).lastIndexOf(INDEX);
  if (at < 0) return undefined;
  let p = start + at + INDEX.length;
  while (buf[p] === SPACE) p++;
  let n = 0;
  let digits = 0;
  while (p < end && buf[p] >= 0x30 && buf[p] <= 0x39) {
    n = n * 10 + (buf[p] - 0x30);
    p++;
    digits++;
  }
  return digits > 0 ? n : undefined;
}
