/**
 * Command-line options of `smg mock-worker`: a fleet of simulated inference engines (see server.ts).
 * Flags are kebab-case and take `--flag value` or `--flag=value`; every value is validated with zod
 * and a bad one throws `MockWorkerArgsError` naming the flag and what it accepts.
 */
import { z } from 'zod';

export interface MockWorkerOptions {
  /** first port; workers listen on port..port+count-1 (0 = one ephemeral port per worker) */
  port: number;
  count: number;
  host: string;
  model: string;
  /** prefix-cache capacity in KV blocks */
  kvBlocks: number;
  /** tokens per KV block */
  blockSize: number;
  /** base time to first token, ms */
  ttftMs: number;
  /** prefill speed for uncached prompt tokens; 0 = prefill takes no time */
  prefillTokensPerS: number;
  /** inter-token latency, ms */
  itlMs: number;
  /** tokens generated per request unless the request's max tokens is lower */
  outputTokens: number;
  /** probability (0..1) that an inference request fails with `failStatus` */
  failRate: number;
  failStatus: number;
  /**
   * `--api-key` / SMG_MOCK_API_KEY: like an engine started with `--api-key`, every route but
   * /health, /health_generate, /metrics and the /mock/ test hooks then needs `Authorization: Bearer <key>`
   */
  apiKey?: string;
  /** `--help` was given: the caller prints MOCK_WORKER_USAGE and exits 0 */
  help: boolean;
}

export const MOCK_WORKER_DEFAULTS: Omit<MockWorkerOptions, 'port'> = {
  count: 1,
  host: '127.0.0.1',
  model: 'mock-model',
  kvBlocks: 8192,
  blockSize: 16,
  ttftMs: 0,
  prefillTokensPerS: 0,
  itlMs: 0,
  outputTokens: 8,
  failRate: 0,
  failStatus: 500,
  help: false,
};

/** Options for programmatic use (tests, demo, bench): defaults plus overrides; port 0 = ephemeral. */
export function mockWorkerOptions(overrides: Partial<MockWorkerOptions> = {}): MockWorkerOptions {
  return { port: 0, ...MOCK_WORKER_DEFAULTS, ...overrides };
}

export class MockWorkerArgsError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'MockWorkerArgsError';
  }
}

export const MOCK_WORKER_USAGE = `Usage: smg mock-worker --port P [options]

Simulated SGLang/vLLM-style OpenAI-compatible engines, one per port.

Options:
  --port P                  first port to listen on (required, 1..65535; 0 = an ephemeral
                            port per worker, each printed on its listening line)
  --count N                 number of workers on ports P..P+N-1 (default 1, at most 4096)
  --host H                  address to bind (default 127.0.0.1)
  --model NAME              served model name (default mock-model)
  --kv-blocks N             prefix-cache capacity in KV blocks (default 8192)
  --block-size N            tokens per KV block (default 16)
  --ttft-ms MS              base time to first token (default 0)
  --prefill-tokens-per-s R  prefill speed for uncached prompt tokens, 0 = free (default 0)
  --itl-ms MS               inter-token latency (default 0)
  --output-tokens N         tokens generated per request, lowered by max_tokens (default 8)
  --fail-rate F             probability 0..1 that a request fails (default 0)
  --fail-status S           HTTP status of injected failures, 400..599 (default 500)
  --api-key KEY             require Authorization: Bearer KEY, as an engine started with --api-key
                            (not on /health and /metrics); prefer env SMG_MOCK_API_KEY, which ps
                            does not show
  --help                    show this help
`;

/** one process serves SMG's scale-test fleet (2,000 workers) with room to spare */
const MAX_COUNT = 4096;

const NUMBER_RE = /^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$/;

function numeric(schema: z.ZodNumber) {
  return z
    .string()
    .trim()
    .regex(NUMBER_RE)
    .transform((s) => Number(s))
    .pipe(schema);
}

type ValueKey = Exclude<keyof MockWorkerOptions, 'help'>;
/** an engine's key in the environment instead of argv */
export const MOCK_API_KEY_ENV = 'SMG_MOCK_API_KEY';

interface FlagSpec {
  key: ValueKey;
  schema: z.ZodType<string | number, string>;
  /** what the flag accepts, for error messages */
  accepts: string;
}

const FLAGS: Record<string, FlagSpec> = {
  port: {
    key: 'port',
    schema: numeric(z.number().int().min(0).max(65535)),
    accepts: 'an integer in 0..65535 (0: an ephemeral port per worker)',
  },
  count: {
    key: 'count',
    schema: numeric(z.number().int().min(1).max(MAX_COUNT)),
    accepts: `an integer in 1..${MAX_COUNT}`,
  },
  host: { key: 'host', schema: z.string().trim().min(1), accepts: 'a non-empty host name or address' },
  model: { key: 'model', schema: z.string().trim().min(1), accepts: 'a non-empty model name' },
  'kv-blocks': {
    key: 'kvBlocks',
    schema: numeric(z.number().int().min(1).max(1e8)),
    accepts: 'an integer in 1..100000000',
  },
  'block-size': {
    key: 'blockSize',
    schema: numeric(z.number().int().min(1).max(65536)),
    accepts: 'an integer in 1..65536',
  },
  'ttft-ms': {
    key: 'ttftMs',
    schema: numeric(z.number().min(0).max(3.6e6)),
    accepts: 'a number of ms in 0..3600000',
  },
  'prefill-tokens-per-s': {
    key: 'prefillTokensPerS',
    schema: numeric(z.number().min(0).max(1e12)),
    accepts: 'a number >= 0 (0 = prefill takes no time)',
  },
  'itl-ms': {
    key: 'itlMs',
    schema: numeric(z.number().min(0).max(3.6e6)),
    accepts: 'a number of ms in 0..3600000',
  },
  'output-tokens': {
    key: 'outputTokens',
    schema: numeric(z.number().int().min(0).max(1e6)),
    accepts: 'an integer in 0..1000000',
  },
  'fail-rate': { key: 'failRate', schema: numeric(z.number().min(0).max(1)), accepts: 'a number in 0..1' },
  'fail-status': {
    key: 'failStatus',
    schema: numeric(z.number().int().min(400).max(599)),
    accepts: 'an HTTP status in 400..599',
  },
  'api-key': {
    key: 'apiKey',
    schema: z.string().regex(/^[\x21-\x7e]+$/),
    accepts: 'a key of printable ASCII characters without spaces',
  },
};

const KNOWN = [...Object.keys(FLAGS), 'help'].map((f) => `--${f}`).join(', ');

/**
 * Parse the arguments after `mock-worker` (and SMG_MOCK_API_KEY from `env`). Throws
 * MockWorkerArgsError on anything invalid.
 */
export function parseMockWorkerArgs(argv: string[], env: NodeJS.ProcessEnv = {}): MockWorkerOptions {
  const values: Partial<Record<ValueKey, string | number>> = {};
  let help = false;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (!arg.startsWith('--') || arg === '--') {
      throw new MockWorkerArgsError(`unexpected argument "${arg}"; known flags: ${KNOWN}`);
    }
    const eq = arg.indexOf('=');
    const name = eq === -1 ? arg.slice(2) : arg.slice(2, eq);
    if (name === 'help') {
      if (eq !== -1) throw new MockWorkerArgsError('--help takes no value');
      help = true;
      continue;
    }
    const spec = Object.hasOwn(FLAGS, name) ? FLAGS[name] : undefined;
    if (!spec) throw new MockWorkerArgsError(`unknown flag --${name}; known flags: ${KNOWN}`);
    let raw: string;
    if (eq !== -1) {
      raw = arg.slice(eq + 1);
    } else {
      const next = argv[i + 1];
      if (next === undefined || (next.startsWith('--') && next.length > 2)) {
        throw new MockWorkerArgsError(`--${name} needs a value: ${spec.accepts}`);
      }
      raw = next;
      i++;
    }
    const parsed = spec.schema.safeParse(raw);
    if (!parsed.success) {
      // a key is not repeated in the message
      const shown = spec.key === 'apiKey' ? 'given' : `"${raw}"`;
      throw new MockWorkerArgsError(`invalid value ${shown} for --${name}: expected ${spec.accepts}`);
    }
    values[spec.key] = parsed.data;
  }
  const envKey = env[MOCK_API_KEY_ENV];
  if (values.apiKey === undefined && envKey !== undefined && envKey !== '') {
    const parsed = FLAGS['api-key'].schema.safeParse(envKey);
    if (!parsed.success)
      throw new MockWorkerArgsError(`${MOCK_API_KEY_ENV}: expected ${FLAGS['api-key'].accepts}`);
    values.apiKey = parsed.data;
  }
  if (help) return { port: 0, ...MOCK_WORKER_DEFAULTS, ...values, help: true } as MockWorkerOptions;
  if (values.port === undefined) {
    throw new MockWorkerArgsError(`--port is required: ${FLAGS.port.accepts}`);
  }
  const opts = { ...MOCK_WORKER_DEFAULTS, ...values, help: false } as MockWorkerOptions;
  if (opts.port !== 0 && opts.port + opts.count - 1 > 65535) {
    throw new MockWorkerArgsError(
      `--port ${opts.port} with --count ${opts.count} runs past port 65535: lower --port or --count`,
    );
  }
  return opts;
}
