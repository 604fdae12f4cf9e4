/**
 * The chaos load: a failover client that spreads requests over every peer round-robin and, on a
 * connection error, retries the same request on the next peer (what a client behind a DNS
 * round-robin name does), and a multi-turn conversation workload driven through it.
 */
import { Agent, request } from 'undici';
import { randomText, seededRandom } from '../bench/common.js';
import type { TurnRecord } from './report.js';

/** errors meaning "this peer did not take the request": try the next one */
const CONNECTION_ERRORS = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'EPIPE',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ETIMEDOUT',
  'UND_ERR_SOCKET',
  'UND_ERR_CONNECT_TIMEOUT',
  'UND_ERR_CLOSED',
]);

export function isConnectionError(err: unknown): boolean {
  if (!(err instanceof Error)) return false;
  const code = (err as { code?: unknown }).code;
  if (typeof code === 'string' && CONNECTION_ERRORS.has(code)) return true;
  const cause = (err as { cause?: unknown }).cause;
  if (cause !== undefined && cause !== err && isConnectionError(cause)) return true;
  return /socket hang up|other side closed/i.test(err.message);
}

export interface FailoverResult {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: string;
  /** peers tried, the last one answered (or the last error) */
  attempts: number;
  peer: string;
  error?: string;
}

export interface FailoverOptions {
  /** connect timeout per attempt (default 2 s) */
  connectTimeoutMs?: number;
  /** whole-response timeout per attempt (default 30 s: longer than any pause a scenario injects) */
  requestTimeoutMs?: number;
  /** rounds over all peers before giving up (default 3), with a short pause between rounds */
  rounds?: number;
}

export class FailoverClient {
  private next = 0;
  private readonly agent: Agent;
  readonly counts = { requests: 0, retried: 0, failovers: 0 };

  constructor(
    private readonly urls: () => string[],
    private readonly opts: FailoverOptions = {},
  ) {
    this.agent = new Agent({
      connect: { timeout: opts.connectTimeoutMs ?? 2000 },
      headersTimeout: opts.requestTimeoutMs ?? 30_000,
      bodyTimeout: opts.requestTimeoutMs ?? 30_000,
      keepAliveTimeout: 4000,
    });
  }

  async post(path: string, body: unknown): Promise<FailoverResult> {
    this.counts.requests++;
    const urls = this.urls();
    const rounds = this.opts.rounds ?? 3;
    const start = this.next++ % urls.length;
    const payload = JSON.stringify(body);
    let lastError = '';
    let attempts = 0;
    for (let round = 0; round < rounds; round++) {
      for (let k = 0; k < urls.length; k++) {
        const peer = urls[(start + k) % urls.length];
        attempts++;
        if (attempts === 2) this.counts.retried++;
        if (attempts > 1) this.counts.failovers++;
        try {
          const res = await request(`${peer}${path}`, {
            method: 'POST',
            headers: { 'content-type': 'application/json' },
            body: payload,
            dispatcher: this.agent,
          });
          const text = await res.body.text();
          return { status: res.statusCode, headers: res.headers, body: text, attempts, peer };
        } catch (err) {
          lastError = `${peer}: ${describe(err)}`;
          if (!isConnectionError(err)) {
            return { status: 0, headers: {}, body: '', attempts, peer, error: lastError };
          }
        }
      }
      await new Promise((r) => setTimeout(r, 200 * (round + 1)));
    }
    return { status: 0, headers: {}, body: '', attempts, peer: '', error: `all peers failed: ${lastError}` };
  }

  async close(): Promise<void> {
    await this.agent.close();
  }
}

export function describe(err: unknown): string {
  if (!(err instanceof Error)) return String(err);
  const code = (err as { code?: unknown }).code;
  const cause = (err as { cause?: unknown }).cause;
  return `${typeof code === 'string' ? `${code} ` : ''}${err.message}${cause instanceof Error ? ` (${describe(cause)})` : ''}`;
}

interface Message {
  role: 'system' | 'user' | 'assistant';
  content: string;
}

interface Conversation {
  id: number;
  messages: Message[];
  turns: number;
  busy: boolean;
}

export interface WorkloadOptions {
  seed: number;
  conversations: number;
  /** requests in flight at once */
  concurrency: number;
  /** a conversation ends after this many turns (then it is not continued) */
  maxTurns: number;
  /** bounds: stop after this many requests or this long, whichever first */
  maxRequests: number;
  maxMs: number;
  model: string;
  /** characters of the shared system prompt and of each user message */
  systemChars?: number;
  userChars?: number;
}

/**
 * Multi-turn, non-streaming chat conversations: every conversation has its own system prompt
 * (its cacheable prefix) and grows by one user and one assistant message per turn.
 */
export class ConversationLoad {
  readonly turns: TurnRecord[] = [];
  readonly latencies: number[] = [];
  readonly failures: { at: number; peer: string; what: string }[] = [];
  private readonly convs: Conversation[];
  private readonly rnd: () => number;
  private stopped = false;
  private running: Promise<void> | undefined;
  private cursor = 0;
  private sent = 0;

  constructor(
    private readonly client: FailoverClient,
    private readonly opts: WorkloadOptions,
  ) {
    this.rnd = seededRandom(opts.seed);
    this.convs = Array.from({ length: opts.conversations }, (_, id) => ({
      id,
      messages: [
        {
          role: 'system' as const,
          content: `conversation ${id}: ${randomText(this.rnd, opts.systemChars ?? 600)}`,
        },
      ],
      turns: 0,
      busy: false,
    }));
  }

  start(): void {
    const deadline = Date.now() + this.opts.maxMs;
    const lanes = Array.from({ length: this.opts.concurrency }, () => this.lane(deadline));
    this.running = Promise.all(lanes).then(() => undefined);
  }

  /** stops sending new turns and waits for the ones in flight */
  async stop(): Promise<void> {
    this.stopped = true;
    await this.running;
  }

  /** conversations that have had at least one successful turn */
  started(): number {
    return this.convs.filter((c) => c.turns > 0).length;
  }

  get requestsSent(): number {
    return this.sent;
  }

  private pick(): Conversation | undefined {
    for (let k = 0; k < this.convs.length; k++) {
      const c = this.convs[(this.cursor + k) % this.convs.length];
      if (!c.busy && c.turns < this.opts.maxTurns) {
        this.cursor = (this.cursor + k + 1) % this.convs.length;
        return c;
      }
    }
    return undefined;
  }

  private async lane(deadline: number): Promise<void> {
    while (!this.stopped && Date.now() < deadline && this.sent < this.opts.maxRequests) {
      const c = this.pick();
      if (!c) {
        await new Promise((r) => setTimeout(r, 20));
        continue;
      }
      c.busy = true;
      this.sent++;
      try {
        await this.turn(c);
      } finally {
        c.busy = false;
      }
    }
  }

  private async turn(c: Conversation): Promise<void> {
    const user: Message = { role: 'user', content: randomText(this.rnd, this.opts.userChars ?? 120) };
    const messages = [...c.messages, user];
    const sentAt = Date.now();
    const res = await this.client.post('/v1/chat/completions', {
      model: this.opts.model,
      messages,
      max_tokens: 8,
      stream: false,
    });
    const elapsed = Date.now() - sentAt;
    const record: TurnRecord = { conversation: c.id, turn: c.turns, sentAt, worker: '', ok: false };
    if (res.status === 200) {
      try {
        const body = JSON.parse(res.body) as { choices: { message: { content: string | null } }[] };
        const worker = res.headers['x-mock-worker'];
        record.worker = Array.isArray(worker) ? worker[0] : (worker ?? '');
        record.ok = true;
        c.messages = [...messages, { role: 'assistant', content: body.choices[0]?.message.content ?? '' }];
        c.turns++;
        this.latencies.push(elapsed);
      } catch (err) {
        this.failures.push({
          at: sentAt,
          peer: res.peer,
          what: `conversation ${c.id}: unparsable 200 body (${describe(err)})`,
        });
      }
    } else {
      this.failures.push({
        at: sentAt,
        peer: res.peer,
        what: `conversation ${c.id} turn ${c.turns}: ${res.status === 0 ? res.error : `HTTP ${res.status} from ${res.peer}: ${res.body.slice(0, 160)}`}`,
      });
    }
    this.turns.push(record);
  }
}
