import { describe, expect, it } from 'vitest';
import {
  MOCK_WORKER_DEFAULTS,
  MockWorkerArgsError,
  mockWorkerOptions,
  parseMockWorkerArgs,
} from './options.js';

function parseError(argv: string[]): MockWorkerArgsError {
  try {
    parseMockWorkerArgs(argv);
  } catch (err) {
    expect(err).toBeInstanceOf(MockWorkerArgsError);
    return err as MockWorkerArgsError;
  }
  throw new Error(`expected ${JSON.stringify(argv)} to be rejected`);
}

describe('parseMockWorkerArgs', () => {
  it('applies the defaults', () => {
    expect(parseMockWorkerArgs(['--port', '8000'])).toEqual({ port: 8000, ...MOCK_WORKER_DEFAULTS });
  });

  it('accepts every flag, as --flag value and --flag=value', () => {
    const opts = parseMockWorkerArgs([
      '--port=9000',
      '--count',
      '3',
      '--host',
      '0.0.0.0',
      '--model=llama',
      '--kv-blocks',
      '100',
      '--block-size=32',
      '--ttft-ms',
      '12.5',
      '--prefill-tokens-per-s',
      '5000',
      '--itl-ms=3',
      '--output-tokens',
      '0',
      '--fail-rate',
      '0.25',
      '--fail-status=503',
    ]);
    expect(opts).toEqual({
      port: 9000,
      count: 3,
      host: '0.0.0.0',
      model: 'llama',
      kvBlocks: 100,
      blockSize: 32,
      ttftMs: 12.5,
      prefillTokensPerS: 5000,
      itlMs: 3,
      outputTokens: 0,
      failRate: 0.25,
      failStatus: 503,
      help: false,
    });
  });

  it('--port 0 gives each of --count workers an ephemeral port (no port-range check)', () => {
    expect(parseMockWorkerArgs(['--port', '0', '--count', '4096'])).toMatchObject({ port: 0, count: 4096 });
  });

  it('--help needs no port', () => {
    expect(parseMockWorkerArgs(['--help']).help).toBe(true);
  });

  it('rejects bad input naming the flag and what it accepts', () => {
    expect(parseError([]).message).toMatch(/--port is required.*0\.\.65535/);
    expect(parseError(['--port', '-1']).message).toMatch(/--port.*0\.\.65535/);
    expect(parseError(['--port', '70000']).message).toMatch(/--port.*0\.\.65535/);
    expect(parseError(['--port', '8000', '--count', '4097']).message).toMatch(/--count.*1\.\.4096/);
    expect(parseError(['--port', 'abc']).message).toMatch(/"abc".*--port/);
    expect(parseError(['--port', '']).message).toMatch(/--port/);
    expect(parseError(['--port', '8000', '--fail-rate', '1.5']).message).toMatch(/--fail-rate.*0\.\.1/);
    expect(parseError(['--port', '8000', '--count', '2.5']).message).toMatch(/--count.*integer/);
    expect(parseError(['--port', '8000', '--fail-status', '200']).message).toMatch(
      /--fail-status.*400\.\.599/,
    );
    expect(parseError(['--port', '8000', '--ttft-ms', '-1']).message).toMatch(/--ttft-ms/);
    expect(parseError(['--port', '8000', '--bogus', '1']).message).toMatch(/unknown flag --bogus.*--port/);
    expect(parseError(['--port']).message).toMatch(/--port needs a value/);
    expect(parseError(['--port', '--count', '2']).message).toMatch(/--port needs a value/);
    expect(parseError(['8000']).message).toMatch(/unexpected argument "8000"/);
    expect(parseError(['--port', '65535', '--count', '2']).message).toMatch(/65535/);
    expect(parseError(['--help=yes']).message).toMatch(/--help takes no value/);
  });

  it('takes the engine API key from --api-key or SMG_MOCK_API_KEY, and never repeats it in an error', () => {
    expect(parseMockWorkerArgs(['--port', '8000', '--api-key', 'sk-1']).apiKey).toBe('sk-1');
    expect(parseMockWorkerArgs(['--port', '8000'], { SMG_MOCK_API_KEY: 'sk-env' }).apiKey).toBe('sk-env');
    expect(
      parseMockWorkerArgs(['--port', '8000', '--api-key=sk-1'], { SMG_MOCK_API_KEY: 'sk-env' }).apiKey,
    ).toBe('sk-1');
    expect(parseMockWorkerArgs(['--port', '8000']).apiKey).toBeUndefined();
    const bad = parseError(['--port', '8000', '--api-key', 'has space secret']);
    expect(bad.message).toMatch(/--api-key: expected a key of printable ASCII/);
    expect(bad.message).not.toContain('secret');
  });

  it('mockWorkerOptions fills in defaults for programmatic use', () => {
    expect(mockWorkerOptions({ itlMs: 5 })).toEqual({ ...MOCK_WORKER_DEFAULTS, port: 0, itlMs: 5 });
  });
});
