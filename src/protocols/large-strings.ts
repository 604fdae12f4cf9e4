/**
 * Parsing a large JSON request body without turning its large strings into JavaScript strings.
 *
 * Routing reads three things from an inference body: `model`, `stream` and at most
 * {@link MAX_ROUTING_TEXT_CHARS}-ish characters of prompt text. `JSON.parse(body.toString())` makes
 * the whole body a string and then every prompt a second string: for an 8 MiB upload, 16 MiB of
 * old-generation garbage per request, which under a few concurrent large uploads kept V8's heap
 * (and the process's RSS) far above what the requests actually hold.
 *
 * Here one pass over the body's bytes (the socket's chunks, never joined) finds every string whose
 * content is longer than {@link LARGE_STRING_BYTES}, checks it as JSON.parse would (no raw control
 * characters, valid escapes), and leaves it where it is: the rest of the document — its
 * structure, keys, numbers and short strings — is parsed by `JSON.parse` with each large string
 * replaced by a placeholder. The caller asks a {@link LargeString} for as many characters as it
 * needs (`prefix`), or for the whole (`full`), decoded from the original bytes on demand.
 *
 * Owns: the byte scan, the placeholders, decoding on demand. Never: what the fields mean.
 */
import { randomBytes } from 'node:crypto';
import { StringDecoder } from 'node:string_decoder';

/** strings with more content bytes than this stay in the body's bytes */
export const LARGE_STRING_BYTES = 64 * 1024;

/**
 * Placeholders are `NUL + nonce + index`: a random nonce per process, so no client can write a
 * string that is mistaken for one.
 */
const NONCE = `\u0000${randomBytes(9).toString('base64url')}:`;
const NONCE_JSON = `\\u0000${NONCE.slice(1)}`;

const QUOTE = 0x22;
const BACKSLASH = 0x5c;

/** a JSON string's content left in the request's bytes: its raw bytes, escapes included */
export class LargeString {
  constructor(
    private readonly segments: readonly Buffer[],
    /** content bytes (raw, escapes not yet resolved) */
    readonly bytes: number,
    private readonly escaped: boolean,
  ) {}

  /**
   * At least the first `chars` UTF-16 code units of the string (the whole string when shorter),
   * decoding little more than that takes.
   */
  prefix(chars: number): string {
    return this.decode(chars);
  }

  /** the whole string */
  full(): string {
    return this.decode(Infinity);
  }

  private decode(chars: number): string {
    // raw code units wanted: an unescaped code unit is 1 raw one, or 2 (`\n`), or 6 (`\uXXXX`)
    const target = this.escaped ? chars * 6 : chars;
    const decoder = new StringDecoder('utf8');
    const parts: string[] = [];
    let have = 0;
    let complete = true;
    outer: for (const seg of this.segments) {
      let off = 0;
      while (off < seg.length) {
        if (have >= target) {
          complete = false;
          break outer;
        }
        // a byte decodes to at most one code unit: never much more than wanted
        const n = Math.min(seg.length - off, Math.max(target - have, 16));
        const s = decoder.write(off === 0 && n === seg.length ? seg : seg.subarray(off, off + n));
        off += n;
        parts.push(s);
        have += s.length;
      }
    }
    if (complete) parts.push(decoder.end());
    let raw = parts.join('');
    if (!this.escaped) return raw;
    // a cut through an escape would not parse: end before any escape left unfinished
    if (!complete) raw = raw.slice(0, safeEscapeCut(raw));
    return JSON.parse(`"${raw}"`) as string;
  }
}

/** the longest prefix of raw JSON string content that does not end inside an escape */
function safeEscapeCut(raw: string): number {
  const n = raw.length;
  // an escape is at most 6 characters (\uXXXX): only the last 5 can hold an unfinished one
  for (let i = Math.max(0, n - 5); i < n; i++) {
    if (raw.charCodeAt(i) !== BACKSLASH) continue;
    let run = 1;
    while (i - run >= 0 && raw.charCodeAt(i - run) === BACKSLASH) run++;
    if (run % 2 === 0) continue; // this backslash is itself escaped
    const rest = n - i;
    if (rest === 1 || (raw.charCodeAt(i + 1) === 0x75 /* u */ && rest < 6)) return i;
    i++; // a complete two-character escape
  }
  return n;
}

/** a parsed body whose large strings are placeholders, and what each placeholder stands for */
export interface ParsedWithLargeStrings {
  value: unknown;
  large: ReadonlyMap<string, LargeString>;
}

/** the LargeString a string value stands for, if it is a placeholder */
export function largeStringOf(
  large: ReadonlyMap<string, LargeString> | undefined,
  s: string,
): LargeString | undefined {
  return large !== undefined && s.charCodeAt(0) === 0 ? large.get(s) : undefined;
}

const HEX = new Uint8Array(256);
for (const c of '0123456789abcdefABCDEF') HEX[c.charCodeAt(0)] = 1;
const SIMPLE_ESCAPE = new Uint8Array(256);
for (const c of '"\\/bfnrt') SIMPLE_ESCAPE[c.charCodeAt(0)] = 1;

const OUTSIDE = 0;
const IN_STRING = 1;
const AFTER_BACKSLASH = 2;
const IN_HEX = 3;

/**
 * Parses the JSON document in `chunks`. Throws a SyntaxError for what JSON.parse would refuse
 * (the message may differ from JSON.parse's: callers that report it can re-parse for the exact
 * one). Returns undefined when the document has no large string (then plain JSON.parse is as
 * cheap and the caller should use it).
 */
export function parseWithLargeStrings(
  chunks: readonly Buffer[],
  threshold = LARGE_STRING_BYTES,
): ParsedWithLargeStrings | undefined {
  let state = OUTSIDE;
  let hexLeft = 0;
  // the string being scanned: where its content starts, its pieces in earlier chunks and their bytes
  let strChunk = 0;
  let strOff = 0;
  let segs: Buffer[] = [];
  let strBytes = 0;
  let escaped = false;
  /** the skeleton: the body's bytes with each large string's content replaced */
  const skeleton: Buffer[] = [];
  /** where the skeleton's next copied range starts (chunk, offset) */
  let copyChunk = 0;
  let copyFrom = 0;
  const large = new Map<string, LargeString>();

  for (let ci = 0; ci < chunks.length; ci++) {
    const c = chunks[ci];
    const len = c.length;
    let i = 0;
    let segStart = state === OUTSIDE ? -1 : 0;
    while (i < len) {
      if (state === OUTSIDE) {
        const q = c.indexOf(QUOTE, i);
        if (q < 0) break;
        state = IN_STRING;
        strChunk = ci;
        strOff = q + 1;
        segs = [];
        strBytes = 0;
        escaped = false;
        segStart = q + 1;
        i = q + 1;
      } else if (state === IN_STRING) {
        const k = stringEnd(c, i, len);
        if (k === len) break;
        const b = c[k];
        if (b < 0x20) throw new SyntaxError('Bad control character in string literal');
        if (b === BACKSLASH) {
          escaped = true;
          state = AFTER_BACKSLASH;
          i = k + 1;
          continue;
        }
        // the closing quote
        if (strBytes + (k - segStart) > threshold) {
          segs.push(c.subarray(segStart, k));
          strBytes += k - segStart;
          // copy up to (and with) the opening quote, then the placeholder; resume at the closing quote
          copyRange(chunks, skeleton, copyChunk, copyFrom, strChunk, strOff);
          const key = `${NONCE}${large.size}`;
          skeleton.push(Buffer.from(`${NONCE_JSON}${large.size}`, 'latin1'));
          large.set(key, new LargeString(segs, strBytes, escaped));
          copyChunk = ci;
          copyFrom = k;
        }
        segs = [];
        state = OUTSIDE;
        segStart = -1;
        i = k + 1;
      } else if (state === AFTER_BACKSLASH) {
        const b = c[i++];
        if (b === 0x75 /* u */) {
          state = IN_HEX;
          hexLeft = 4;
        } else if (SIMPLE_ESCAPE[b] === 1) {
          state = IN_STRING;
        } else {
          throw new SyntaxError('Bad escaped character in JSON');
        }
      } else {
        if (HEX[c[i++]] !== 1) throw new SyntaxError('Bad Unicode escape in JSON');
        if (--hexLeft === 0) state = IN_STRING;
      }
    }
    if (state !== OUTSIDE && segStart >= 0) {
      const piece = c.subarray(segStart, len);
      if (piece.length > 0) {
        segs.push(piece);
        strBytes += piece.length;
      }
    }
  }
  if (state !== OUTSIDE) throw new SyntaxError('Unterminated string in JSON');
  if (large.size === 0) return undefined;
  copyRange(chunks, skeleton, copyChunk, copyFrom, chunks.length, 0);
  const decoder = new StringDecoder('utf8');
  const text = skeleton.map((b) => decoder.write(b)).join('') + decoder.end();
  return { value: JSON.parse(text) as unknown, large };
}

/** the index of the first quote, backslash or control byte in c[from, len), or len */
function stringEnd(c: Buffer, from: number, len: number): number {
  for (let k = from; k < len; k++) {
    const b = c[k];
    if (b === QUOTE || b === BACKSLASH || b < 0x20) return k;
  }
  return len;
}

/** pushes views of chunks' bytes from (fromChunk, from) up to (toChunk, to), exclusive */
function copyRange(
  chunks: readonly Buffer[],
  out: Buffer[],
  fromChunk: number,
  from: number,
  toChunk: number,
  to: number,
): void {
  for (let ci = fromChunk; ci <= toChunk && ci < chunks.length; ci++) {
    const start = ci === fromChunk ? from : 0;
    const end = ci === toChunk ? to : chunks[ci].length;
    if (end > start) out.push(chunks[ci].subarray(start, end));
  }
}
