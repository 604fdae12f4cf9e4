/**
 * Reading request bodies under three bounds, for the inference fast path and for fastify's routes
 * alike:
 * - size: `--max-payload-size` (413), from the declared length before a byte is read, and
 *   counted as the bytes arrive for chunked bodies;
 * - time: `--body-read-timeout-secs` for the whole body, from the first read (408): a client
 *   that trickles its body cannot hold a slot (or a buffer) for longer;
 * - memory: `--max-buffered-request-bytes`, one budget for every body the process holds at once
 *   (503 with Retry-After). A body's bytes are taken from the budget when it starts to be read
 *   (its declared length, or chunk by chunk) and given back when its request ends.
 *
 * Owns the reading only: it never parses, routes or answers; the caller turns a failure into a
 * response. A body is read only once admission let its request in: until then the socket stays
 * paused and the kernel's buffers, not the heap, hold what the client sent.
 */
import type { IncomingMessage } from 'node:http';
import { Readable } from 'node:stream';
import { StringDecoder } from 'node:string_decoder';

/**
 * A body at least this large is a large body: parsed with its large strings left in its bytes
 * (src/protocols/large-strings.ts), and its memory reclaimed soon after its request ends
 * (src/server/large-body-gc.ts). Smaller bodies are parsed by JSON.parse alone (faster for them)
 * and die young.
 */
export const LARGE_BODY_BYTES = 1024 * 1024;

/** the bytes of request bodies held by this process right now, against one cap */
export class RequestBytesBudget {
  private held = 0;

  /** @param onReleased told of every body given back (the gateway: a LargeBodyReclaimer) */
  constructor(
    readonly cap: number,
    private readonly onReleased?: (bytes: number) => void,
  ) {}

  get used(): number {
    return this.held;
  }

  /** takes `n` bytes if they fit under the cap */
  take(n: number): boolean {
    if (this.held + n > this.cap) return false;
    this.held += n;
    return true;
  }

  give(n: number): void {
    this.held = Math.max(0, this.held - n);
    this.onReleased?.(n);
  }

  /** would a request declaring `n` bytes fit now? (nothing is taken) */
  fits(n: number): boolean {
    return this.held + n <= this.cap;
  }
}

/**
 * A request body as it was read: the chunks the socket delivered (one for most bodies), never
 * copied into one contiguous buffer. A large body is thus held once, in the socket's own chunk
 * buffers, instead of once more in a buffer as large as the body, whose allocation and release
 * glibc keeps in its heap after the first few (RSS that does not come back).
 */
export class RequestBody {
  constructor(
    readonly chunks: readonly Buffer[],
    readonly length: number,
  ) {}

  /** what an HTTP client sends (a fresh stream over the chunks each time: a retry sends again) */
  payload(): Buffer | Readable {
    return this.chunks.length === 1 ? this.chunks[0] : Readable.from(this.chunks);
  }

  /** the body decoded as UTF-8, chunk by chunk */
  text(): string {
    if (this.chunks.length === 1) return this.chunks[0].toString('utf8');
    const decoder = new StringDecoder('utf8');
    const parts = this.chunks.map((c) => decoder.write(c));
    parts.push(decoder.end());
    return parts.join('');
  }

  /** one contiguous buffer (for small bodies: the admin routes) */
  bytes(): Buffer {
    if (this.chunks.length === 1) return this.chunks[0];
    return Buffer.concat(this.chunks as Buffer[], this.length);
  }
}

export type BodyFailure = 'too_large' | 'timeout' | 'over_budget' | 'aborted';

export interface BodyLimits {
  /** largest body accepted, bytes */
  limit: number;
  /** the whole body must arrive within this time, ms */
  timeoutMs: number;
  budget: RequestBytesBudget;
}

/** the declared Content-Length: a number, undefined when absent, NaN when malformed */
export function declaredLength(req: IncomingMessage): number | undefined {
  const h = req.headers['content-length'];
  if (h === undefined) return undefined;
  return /^\d{1,15}$/.test(h) ? Number(h) : NaN;
}

export interface BodyRead {
  /** gives the body's bytes back to the budget (call when the request ends); idempotent */
  release(): void;
}

/**
 * Reads `req`'s body; `done` runs exactly once: with the bytes, or with why the read stopped
 * (`aborted`: the client went away). After a failure nothing more is read from the socket: the
 * caller answers and closes the connection.
 */
export function readBody(
  req: IncomingMessage,
  limits: BodyLimits,
  done: (failure: BodyFailure | undefined, body: RequestBody | undefined) => void,
): BodyRead {
  const declared = declaredLength(req);
  const { budget } = limits;
  let taken = 0;
  const release = () => {
    budget.give(taken);
    taken = 0;
  };
  const handle: BodyRead = { release };
  let finished = false;
  const chunks: Buffer[] = [];
  let size = 0;

  const finish = (failure: BodyFailure | undefined) => {
    if (finished) return;
    finished = true;
    clearTimeout(timer);
    req.off('data', onData);
    req.off('end', onEnd);
    req.off('error', onAbort);
    req.off('close', onClose);
    if (failure) {
      chunks.length = 0;
      release();
      req.pause();
      done(failure, undefined);
      return;
    }
    done(undefined, new RequestBody(chunks, size));
  };
  const onData = (chunk: Buffer) => {
    size += chunk.length;
    if (size > limits.limit) return finish('too_large');
    // a chunked body (or one longer than it said) takes its bytes as they come
    if (size > taken) {
      if (!budget.take(size - taken)) return finish('over_budget');
      taken = size;
    }
    chunks.push(chunk);
  };
  const onEnd = () => finish(undefined);
  const onAbort = () => finish('aborted');
  const onClose = () => {
    if (!req.complete) finish('aborted');
  };
  const timer = setTimeout(() => finish('timeout'), limits.timeoutMs);

  if (declared !== undefined && declared > 0) {
    const refused = declared > limits.limit ? 'too_large' : budget.take(declared) ? undefined : 'over_budget';
    if (refused) {
      // answered before a byte is read; `done` runs after this call returns, like every outcome
      finished = true;
      clearTimeout(timer);
      queueMicrotask(() => done(refused, undefined));
      return handle;
    }
    taken = declared;
  }
  req.on('data', onData);
  req.on('end', onEnd);
  req.on('error', onAbort);
  req.on('close', onClose);
  return handle;
}
