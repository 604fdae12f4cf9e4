/**
 * SMG's `extract_text_for_routing`: the text that prefix-aware policies hash. Chat joins every
 * message's text (assistant turns included, so a follow-up turn extends the previous turn's text);
 * completions join prompts; generate uses `text` or the token ids; embeddings / classify join the
 * inputs. Never throws: odd shapes contribute nothing.
 */
import { largeStringOf, type LargeString } from './large-strings.js';

export type Endpoint =
  'chat' | 'completions' | 'embeddings' | 'generate' | 'rerank' | 'classify' | 'responses' | 'messages';

type Json = unknown;

function isRecord(v: Json): v is Record<string, Json> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function contentText(content: Json, out: Pieces): void {
  if (typeof content === 'string') {
    if (content) out.push(content);
  } else if (Array.isArray(content)) {
    for (const part of content) {
      if (typeof part === 'string') out.push(part);
      else if (isRecord(part)) {
        if (typeof part.text === 'string') out.push(part.text);
        else if (typeof part.content === 'string') out.push(part.content);
      }
    }
  }
}

/**
 * Prompts are a string, a list of strings, token ids or a list of token-id lists: two levels of
 * lists at most. Deeper lists contribute nothing, so no input can exhaust the stack here.
 */
const MAX_INPUT_NESTING = 2;

function joinInputs(input: Json, out: Pieces, depth = 0): void {
  if (typeof input === 'string') out.push(input);
  else if (Array.isArray(input) && depth < MAX_INPUT_NESTING) {
    if (input.length > 0 && typeof input[0] === 'number') {
      // join() would stringify a nested list recursively: token ids only
      if (input.every((t) => typeof t === 'number')) out.push(input.join(' '));
    } else for (const x of input) joinInputs(x, out, depth + 1);
  }
}

/**
 * Routing looks at most at this many characters of a prompt (≈ 256k tokens, beyond the context of
 * the models served): a larger prompt still goes to the engine whole, but its routing text,
 * prefix hashes and prefix-index entries stay bounded whatever a client sends.
 */
export const MAX_ROUTING_TEXT_CHARS = 1 << 20;

/** a string of its own characters (V8 copies a concatenation into a new string when it flattens it) */
function flat(s: string): string {
  const joined = ' ' + s;
  joined.charCodeAt(1); // indexing flattens the concatenation into one new string
  return joined.slice(1);
}

/** the texts routing joins, up to {@link MAX_ROUTING_TEXT_CHARS} (what is past it is never copied) */
class Pieces {
  private readonly list: string[] = [];
  /** characters so far, a separator before every piece but the first included */
  private length = 0;
  private cut = false;
  /** a piece is a slice of a client string (which it would keep alive) */
  private sliced = false;

  /** @param large the body's large strings, when it was parsed with them left in its bytes */
  constructor(private readonly large?: ReadonlyMap<string, LargeString>) {}

  push(s: string): void {
    if (this.cut) return;
    const room = MAX_ROUTING_TEXT_CHARS - this.length - (this.list.length > 0 ? 1 : 0);
    const big = largeStringOf(this.large, s);
    if (big !== undefined) {
      // a large string is never empty; decoded from the body's bytes, no further than there is
      // room for (one more character tells whether it is cut): a fresh string of its own
      if (room <= 0) {
        this.cut = true;
        return;
      }
      const head = big.prefix(room + 1);
      if (head.length > room) {
        this.cut = true;
        this.add(head.slice(0, room));
      } else this.add(head);
      return;
    }
    if (s.length > room) {
      this.cut = true;
      if (room <= 0) return;
      s = s.slice(0, room);
      this.sliced = true;
    }
    this.add(s);
  }

  private add(s: string): void {
    this.length += s.length + (this.list.length > 0 ? 1 : 0);
    this.list.push(s);
  }

  join(): string {
    const text = this.list.join(' ');
    // a cut piece is a slice of the whole prompt and would keep it alive: `flat` makes it a copy
    return this.sliced && this.list.length === 1 ? flat(text) : text;
  }
}

export function extractRoutingText(
  endpoint: Endpoint,
  body: Record<string, Json>,
  large?: ReadonlyMap<string, LargeString>,
): string {
  const out = new Pieces(large);
  switch (endpoint) {
    case 'chat':
      if (Array.isArray(body.messages)) {
        for (const m of body.messages) {
          if (!isRecord(m)) continue;
          contentText(m.content, out);
          if (typeof m.reasoning_content === 'string') out.push(m.reasoning_content);
        }
      }
      break;
    case 'messages':
      contentText(body.system, out);
      if (Array.isArray(body.messages))
        for (const m of body.messages) if (isRecord(m)) contentText(m.content, out);
      break;
    case 'responses':
      if (typeof body.instructions === 'string') out.push(body.instructions);
      if (typeof body.input === 'string') out.push(body.input);
      else if (Array.isArray(body.input))
        for (const item of body.input) if (isRecord(item)) contentText(item.content, out);
      break;
    case 'completions':
      joinInputs(body.prompt, out);
      break;
    case 'generate':
      if (typeof body.text === 'string' || Array.isArray(body.text)) joinInputs(body.text, out);
      else if (Array.isArray(body.input_ids)) joinInputs(body.input_ids, out);
      break;
    case 'embeddings':
    case 'classify':
      joinInputs(body.input, out);
      break;
    case 'rerank':
      if (typeof body.query === 'string') out.push(body.query);
      break;
  }
  return out.join();
}

/** a parsed request body; `large`: its large strings, when they were left in the body's bytes */
export interface ParsedBody {
  value: Record<string, Json>;
  large?: ReadonlyMap<string, LargeString>;
}

/**
 * What routing reads from a request body: the model, the stream flag and, only when a policy asks,
 * the routing text. `release()` lets the parsed body go once the first worker is chosen, so a
 * request in flight holds its raw bytes rather than a second and third copy of a large prompt; a
 * later selection (a retry) that needs the text parses the raw bytes again.
 */
export class RoutingInput {
  readonly model: unknown;
  readonly stream: boolean;
  private body: ParsedBody | undefined;

  constructor(
    readonly endpoint: Endpoint,
    body: ParsedBody,
    private readonly reparse: () => ParsedBody,
  ) {
    this.body = body;
    const model = body.value.model;
    const big = typeof model === 'string' ? largeStringOf(body.large, model) : undefined;
    this.model = big ? big.full() : model;
    this.stream = body.value.stream === true;
  }

  /** {@link extractRoutingText} of the body */
  text(): string {
    const body = this.body ?? this.reparse();
    return extractRoutingText(this.endpoint, body.value, body.large);
  }

  /** the parsed body is no longer needed */
  release(): void {
    this.body = undefined;
  }
}

/** SMG's request-id prefixes by route */
export function requestIdPrefix(endpoint: Endpoint | undefined): string {
  switch (endpoint) {
    case 'chat':
      return 'chatcmpl-';
    case 'completions':
      return 'cmpl-';
    case 'generate':
      return 'gnt-';
    case 'responses':
      return 'resp-';
    case 'messages':
      return 'msg_';
    default:
      return 'req-';
  }
}
