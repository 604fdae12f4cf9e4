import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { ROOT_CONTEXT, SpanKind, SpanStatusCode, trace, type HrTime } from '@opentelemetry/api';
import { ExportResultCode, TraceState, type ExportResult } from '@opentelemetry/core';
import { ProtobufTraceSerializer } from '@opentelemetry/otlp-transformer';
import {
  BasicTracerProvider,
  InMemorySpanExporter,
  SimpleSpanProcessor,
} from '@opentelemetry/sdk-trace-base';
import Fastify from 'fastify';
import fc from 'fast-check';
import { afterEach, describe, expect, it } from 'vitest';
import type { Logger } from './logger.js';
import {
  MAX_EXPORT_BATCH,
  MAX_QUEUE,
  Tracing,
  installTracingHooks,
  normalizeEndpoint,
  requestSpan,
  type SpanBatch,
  type SpanBatchExporter,
} from './tracing.js';

// ------------------------------------------------------------------------------------ protobuf reader

type Wire = { field: number; wire: number; value: bigint | Uint8Array };

/** every field of one message, in order (the wire format, no schema) */
function readFields(buf: Uint8Array): Wire[] {
  const out: Wire[] = [];
  let pos = 0;
  const varint = (): bigint => {
    let v = 0n;
    let shift = 0n;
    for (;;) {
      if (pos >= buf.length) throw new Error('truncated varint');
      const b = buf[pos++];
      v |= BigInt(b & 0x7f) << shift;
      if (b < 0x80) return v;
      shift += 7n;
      if (shift > 63n) throw new Error('varint too long');
    }
  };
  const fixed = (n: number): bigint => {
    if (pos + n > buf.length) throw new Error('truncated fixed');
    let v = 0n;
    for (let i = n - 1; i >= 0; i--) v = (v << 8n) | BigInt(buf[pos + i]);
    pos += n;
    return v;
  };
  while (pos < buf.length) {
    const key = Number(varint());
    const field = key >>> 3;
    const wire = key & 7;
    if (wire === 0) out.push({ field, wire, value: varint() });
    else if (wire === 1) out.push({ field, wire, value: fixed(8) });
    else if (wire === 5) out.push({ field, wire, value: fixed(4) });
    else if (wire === 2) {
      const len = Number(varint());
      if (pos + len > buf.length) throw new Error('truncated bytes');
      out.push({ field, wire, value: buf.subarray(pos, pos + len) });
      pos += len;
    } else throw new Error(`unexpected wire type ${wire}`);
  }
  return out;
}

const hex = (b: Uint8Array) => Buffer.from(b).toString('hex');
const utf8 = (b: Uint8Array) => Buffer.from(b).toString('utf8');
const bytesOf = (w: Wire) => w.value as Uint8Array;
const numOf = (w: Wire) => w.value as bigint;

type Value = string | number | boolean;

function decodeAnyValue(buf: Uint8Array): Value {
  const [f, ...rest] = readFields(buf);
  expect(rest).toEqual([]);
  switch (f.field) {
    case 1:
      return utf8(bytesOf(f));
    case 2:
      return numOf(f) !== 0n;
    case 3:
      return Number(BigInt.asIntN(64, numOf(f)));
    case 4:
      return Buffer.from(new BigUint64Array([numOf(f)]).buffer).readDoubleLE(0);
    default:
      throw new Error(`AnyValue field ${f.field}`);
  }
}

/** KeyValue list as [key, value] pairs, in wire order */
function decodeAttrs(ws: Wire[], field: number): [string, Value][] {
  return ws
    .filter((w) => w.field === field)
    .map((w) => {
      const kv = readFields(bytesOf(w));
      const key = kv.find((x) => x.field === 1);
      const value = kv.find((x) => x.field === 2);
      expect(kv.length).toBe(2);
      return [utf8(bytesOf(key as Wire)), decodeAnyValue(bytesOf(value as Wire))];
    });
}

/** a span as data; fields absent on the wire take their proto3 defaults */
interface DecodedSpan {
  traceId: string;
  spanId: string;
  traceState: string;
  parentSpanId: string;
  name: string;
  kind: number;
  start: bigint;
  end: bigint;
  attributes: [string, Value][];
  droppedAttributes: number;
  events: { time: bigint; name: string; attributes: [string, Value][]; dropped: number }[];
  droppedEvents: number;
  links: number;
  droppedLinks: number;
  status: { code: number; message: string };
  flags: number;
}

const KNOWN_SPAN_FIELDS = new Set([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]);

function decodeSpan(buf: Uint8Array): DecodedSpan {
  const ws = readFields(buf);
  for (const w of ws) expect(KNOWN_SPAN_FIELDS.has(w.field), `span field ${w.field}`).toBe(true);
  const one = (n: number) => ws.find((w) => w.field === n);
  const str = (n: number) => (one(n) ? utf8(bytesOf(one(n) as Wire)) : '');
  const id = (n: number) => (one(n) ? hex(bytesOf(one(n) as Wire)) : '');
  const int = (n: number) => (one(n) ? Number(numOf(one(n) as Wire)) : 0);
  const statusWs = one(15) ? readFields(bytesOf(one(15) as Wire)) : [];
  const st = (n: number) => statusWs.find((w) => w.field === n);
  return {
    traceId: id(1),
    spanId: id(2),
    traceState: str(3),
    parentSpanId: id(4),
    name: str(5),
    kind: int(6),
    start: one(7) ? numOf(one(7) as Wire) : 0n,
    end: one(8) ? numOf(one(8) as Wire) : 0n,
    attributes: decodeAttrs(ws, 9),
    droppedAttributes: int(10),
    events: ws
      .filter((w) => w.field === 11)
      .map((w) => {
        const e = readFields(bytesOf(w));
        const f = (n: number) => e.find((x) => x.field === n);
        return {
          time: numOf(f(1) as Wire),
          name: utf8(bytesOf(f(2) as Wire)),
          attributes: decodeAttrs(e, 3),
          dropped: f(4) ? Number(numOf(f(4) as Wire)) : 0,
        };
      }),
    droppedEvents: int(12),
    links: ws.filter((w) => w.field === 13).length,
    droppedLinks: int(14),
    status: {
      message: st(2) ? utf8(bytesOf(st(2) as Wire)) : '',
      code: st(3) ? Number(numOf(st(3) as Wire)) : 0,
    },
    flags: int(16),
  };
}

interface DecodedRequest {
  resource: [string, Value][];
  scope: { name: string; version: string };
  spans: DecodedSpan[];
}

/** ExportTraceServiceRequest → one entry per ResourceSpans × ScopeSpans */
function decodeRequest(buf: Uint8Array): DecodedRequest[] {
  const out: DecodedRequest[] = [];
  for (const rs of readFields(buf)) {
    expect(rs.field).toBe(1);
    const rsWs = readFields(bytesOf(rs));
    const res = rsWs.find((w) => w.field === 1);
    const resource = res ? decodeAttrs(readFields(bytesOf(res)), 1) : [];
    for (const ss of rsWs.filter((w) => w.field === 2)) {
      const ssWs = readFields(bytesOf(ss));
      const sc = ssWs.find((w) => w.field === 1);
      const scWs = sc ? readFields(bytesOf(sc)) : [];
      const scStr = (n: number) => {
        const w = scWs.find((x) => x.field === n);
        return w ? utf8(bytesOf(w)) : '';
      };
      out.push({
        resource,
        scope: { name: scStr(1), version: scStr(2) },
        spans: ssWs.filter((w) => w.field === 2).map((w) => decodeSpan(bytesOf(w))),
      });
    }
  }
  return out;
}

// ------------------------------------------------------------------------------------ helpers

interface LogLine {
  level: 'warn' | 'info' | 'error';
  obj: unknown;
  msg: string;
}

function testLogger(): { logger: Logger; lines: LogLine[] } {
  const lines: LogLine[] = [];
  const at =
    (level: LogLine['level']) =>
    (obj: unknown, msg = '') =>
      lines.push({ level, obj, msg });
  const logger = { warn: at('warn'), info: at('info'), error: at('error'), debug: () => undefined };
  return { logger: logger as unknown as Logger, lines };
}

/** an exporter that records batches and answers as told (SUCCESS unless `result` says otherwise) */
function memoryExporter(result: () => ExportResult | 'hold' = () => ({ code: ExportResultCode.SUCCESS })) {
  const batches: SpanBatch[] = [];
  const held: (() => void)[] = [];
  let wake: (() => void) | undefined;
  const exporter: SpanBatchExporter = {
    export(batch, done) {
      batches.push(batch);
      wake?.();
      const r = result();
      if (r === 'hold') held.push(() => done({ code: ExportResultCode.SUCCESS }));
      else done(r);
    },
    shutdown: async () => undefined,
  };
  /** resolves once `n` batches were exported */
  const waitFor = async (n: number) => {
    while (batches.length < n) await new Promise<void>((resolve) => (wake = resolve));
  };
  return { exporter, batches, held, waitFor };
}

const spansOf = (batches: SpanBatch[]) =>
  batches.flatMap((b) => decodeRequest(b.body).flatMap((r) => r.spans));

const PARENT_TRACE = '0af7651916cd43dd8448eb211c80319c';
const PARENT_SPAN = 'b7ad6b7169203331';
const TRACEPARENT_RE = /^00-[0-9a-f]{32}-[0-9a-f]{16}-0[01]$/;

const req = (headers: http.IncomingHttpHeaders = {}, url = '/v1/chat/completions?x=1') => ({
  method: 'POST',
  url,
  httpVersion: '1.1',
  requestId: 'chatcmpl-test',
  headers,
});

const toClose: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const c of toClose.splice(0)) await c();
});

function enabled(logger: Logger, exporter?: SpanBatchExporter, endpoint = 'http://127.0.0.1:4318/v1/traces') {
  const t = Tracing.create(
    { enabled: true, otlpTracesEndpoint: endpoint },
    { logger, serviceVersion: '1.2.3', ...(exporter && { exporter }) },
  );
  if (!t) throw new Error('tracing should be on');
  toClose.push(() => t.shutdown());
  return t;
}

// ------------------------------------------------------------------------------------ tests

describe('Tracing.create', () => {
  it('is undefined when tracing is off', () => {
    const { logger } = testLogger();
    expect(
      Tracing.create({ enabled: false, otlpTracesEndpoint: 'http://x:4318' }, { logger }),
    ).toBeUndefined();
  });

  it('normalises SMG-style endpoints to OTLP/HTTP trace URLs', () => {
    expect(normalizeEndpoint('localhost:4318')).toBe('http://localhost:4318/v1/traces');
    expect(normalizeEndpoint('http://collector:4318')).toBe('http://collector:4318/v1/traces');
    expect(normalizeEndpoint('https://otel.example.com/custom/path')).toBe(
      'https://otel.example.com/custom/path',
    );
    expect(() => normalizeEndpoint('ftp://x')).toThrow(/http/);
    expect(() => normalizeEndpoint('http://')).toThrow(/not a URL/);
  });

  it('warns when pointed at the gRPC port', () => {
    const { logger, lines } = testLogger();
    enabled(logger, memoryExporter().exporter, 'localhost:4317');
    expect(lines.some((l) => l.level === 'warn' && /4317/.test(l.msg))).toBe(true);
  });
});

describe('RequestSpan', () => {
  it('starts a new trace without an inbound traceparent', async () => {
    const { logger } = testLogger();
    const m = memoryExporter();
    const t = enabled(logger, m.exporter);
    const span = t.startRequest(req());
    expect(span.traceparent).toMatch(TRACEPARENT_RE);
    expect(span.traceparent.endsWith('-01')).toBe(true);
    expect(span.tracestate).toBeUndefined();
    span.end(200);
    await t.shutdown();
    const [s] = spansOf(m.batches);
    expect(s.parentSpanId).toBe('');
    expect(span.traceparent).toBe(`00-${s.traceId}-${s.spanId}-01`);
    // sampled, local root: W3C flags 0x01 plus "has is_remote" (0x100)
    expect(s.flags).toBe(0x101);
  });

  it('continues the inbound trace: same trace id, the caller as parent, tracestate passed on', async () => {
    const { logger } = testLogger();
    const m = memoryExporter();
    const t = enabled(logger, m.exporter);
    const span = t.startRequest(
      req({ traceparent: `00-${PARENT_TRACE}-${PARENT_SPAN}-01`, tracestate: ['vendor=a', 'other=b'] }),
    );
    const [, trace, spanId, flags] = span.traceparent.split('-');
    expect(trace).toBe(PARENT_TRACE);
    expect(spanId).not.toBe(PARENT_SPAN);
    expect(flags).toBe('01');
    expect(span.tracestate).toBe('vendor=a,other=b');
    span.end(200);
    await t.shutdown();
    const [s] = spansOf(m.batches);
    expect(s).toMatchObject({
      traceId: PARENT_TRACE,
      parentSpanId: PARENT_SPAN,
      spanId,
      traceState: 'vendor=a,other=b',
    });
    // parent is remote: 0x200 too
    expect(s.flags).toBe(0x301);
  });

  it('propagates an unsampled parent but records nothing', async () => {
    const { logger } = testLogger();
    const m = memoryExporter();
    const t = enabled(logger, m.exporter);
    const span = t.startRequest(req({ traceparent: `00-${PARENT_TRACE}-${PARENT_SPAN}-00` }));
    expect(span.traceparent).toMatch(new RegExp(`^00-${PARENT_TRACE}-[0-9a-f]{16}-00$`));
    span.end(200);
    await t.shutdown();
    expect(m.batches).toEqual([]);
  });

  it('treats malformed traceparents as absent (new root) and never throws', () => {
    const { logger } = testLogger();
    const t = enabled(logger, memoryExporter().exporter);
    const bad = [
      '',
      'garbage',
      `00-${PARENT_TRACE}-${PARENT_SPAN}`,
      `00-${'0'.repeat(32)}-${PARENT_SPAN}-01`,
      `00-${PARENT_TRACE}-${'0'.repeat(16)}-01`,
      `ff-${PARENT_TRACE}-${PARENT_SPAN}-01`,
      `00-${PARENT_TRACE.toUpperCase()}-${PARENT_SPAN}-01`,
      `00-${PARENT_TRACE}-${PARENT_SPAN}-01-extra`,
    ];
    for (const tp of bad) {
      const span = t.startRequest(req({ traceparent: tp, tracestate: 'a=b' }));
      expect(span.traceparent).toMatch(TRACEPARENT_RE);
      expect(span.traceparent.split('-')[1]).not.toBe(PARENT_TRACE);
      expect(span.tracestate).toBeUndefined();
    }
    fc.assert(
      fc.property(
        fc.option(fc.oneof(fc.string(), fc.array(fc.string(), { maxLength: 3 }))),
        fc.option(fc.oneof(fc.string(), fc.array(fc.string(), { maxLength: 3 }))),
        fc.string(),
        (tp, ts, url) => {
          const headers: http.IncomingHttpHeaders = {};
          if (tp !== null) headers.traceparent = tp as string;
          if (ts !== null) headers.tracestate = ts;
          const span = t.startRequest(req(headers, url));
          expect(span.traceparent).toMatch(TRACEPARENT_RE);
          span.setAttribute(url, url);
          span.addEvent(url, { [url]: url });
          span.end(200, url);
        },
      ),
      { numRuns: 300 },
    );
  });

  it('records the §6.2 attributes, caller attributes and events; end is idempotent', async () => {
    const { logger } = testLogger();
    const m = memoryExporter();
    const t = enabled(logger, m.exporter);
    const span = t.startRequest(req());
    span.setAttribute('model', 'llama');
    span.setAttribute('worker', 'http://w1:8000');
    span.setAttribute('worker', 'http://w2:8000'); // the last value wins, no duplicate key
    span.setAttribute('retried', true);
    span.setAttribute('ratio', 0.25);
    span.setAttribute('big', -5);
    span.addEvent('RequestSentEvent', { url: 'http://w2:8000', attempt: 1 });
    span.addEvent('RequestReceivedEvent');
    span.end(503, 'upstream said no');
    span.end(200);
    span.setAttribute('late', 'ignored');
    await t.shutdown();
    const [s] = spansOf(m.batches);
    expect(s.name).toBe('http_request');
    expect(s.kind).toBe(2); // SERVER
    const attrs = Object.fromEntries(s.attributes);
    expect(s.attributes.length).toBe(Object.keys(attrs).length);
    expect(attrs).toMatchObject({
      method: 'POST',
      // the path without the query string (it can carry secrets)
      uri: '/v1/chat/completions',
      version: 'HTTP/1.1',
      request_id: 'chatcmpl-test',
      status_code: 503,
      error: 'upstream said no',
      'http.request.method': 'POST',
      'url.path': '/v1/chat/completions',
      'http.response.status_code': 503,
      model: 'llama',
      worker: 'http://w2:8000',
      retried: true,
      ratio: 0.25,
      big: -5,
    });
    expect(attrs).not.toHaveProperty('late');
    expect(typeof attrs.latency).toBe('number');
    expect(attrs.latency).toBeGreaterThanOrEqual(0);
    expect(s.status).toEqual({ code: 2, message: 'upstream said no' });
    expect(s.events.map((e) => [e.name, e.attributes])).toEqual([
      [
        'RequestSentEvent',
        [
          ['url', 'http://w2:8000'],
          ['attempt', 1],
        ],
      ],
      ['RequestReceivedEvent', []],
    ]);
    expect(s.start).toBeLessThanOrEqual(s.events[0].time);
    expect(s.events[1].time).toBeLessThanOrEqual(s.end);
    // wall-clock nanoseconds: within a minute of now
    const nowNs = BigInt(Date.now()) * 1_000_000n;
    expect(s.end > nowNs - 60_000_000_000n && s.end < nowNs + 60_000_000_000n).toBe(true);
    expect(m.batches).toHaveLength(1);
  });

  it('marks 5xx as an error and leaves 4xx unset (server-span semantics)', async () => {
    const { logger } = testLogger();
    const m = memoryExporter();
    const t = enabled(logger, m.exporter);
    t.startRequest(req()).end(404);
    t.startRequest(req()).end(502);
    await t.shutdown();
    const [a, b] = spansOf(m.batches);
    expect(a.status).toEqual({ code: 0, message: '' });
    expect(b.status).toEqual({ code: 2, message: 'HTTP 502' });
  });

  it('encodes non-ASCII and long values exactly', async () => {
    const { logger } = testLogger();
    const m = memoryExporter();
    const t = enabled(logger, m.exporter);
    const long = 'x'.repeat(5000);
    const span = t.startRequest(req({}, '/v1/caf\u00e9?api_key=sk-secret'));
    span.setAttribute('model', 'mod\u00e8le-\u{1F600}');
    span.setAttribute('long', long);
    span.setAttribute('n', 2 ** 40);
    span.addEvent('\u00e9v\u00e9nement', { k: long });
    span.end(200);
    await t.shutdown();
    const [s] = spansOf(m.batches);
    const attrs = Object.fromEntries(s.attributes);
    expect(attrs.uri).toBe('/v1/caf\u00e9');
    expect(attrs['url.path']).toBe('/v1/caf\u00e9');
    // nowhere in the exported bytes either
    expect(Buffer.concat(m.batches.map((b) => Buffer.from(b.body))).includes('sk-secret')).toBe(false);
    expect(attrs.model).toBe('mod\u00e8le-\u{1F600}');
    expect(attrs.long).toBe(long);
    expect(attrs.n).toBe(2 ** 40);
    expect(s.events[0]).toMatchObject({ name: '\u00e9v\u00e9nement', attributes: [['k', long]] });
  });
});

describe('wire format', () => {
  it('matches the OpenTelemetry SDK protobuf serializer for the same span', async () => {
    const { logger } = testLogger();
    const m = memoryExporter();
    const t = enabled(logger, m.exporter);
    const span = t.startRequest(
      req({ traceparent: `00-${PARENT_TRACE}-${PARENT_SPAN}-01`, tracestate: 'vendor=a' }),
    );
    span.setAttribute('model', 'llama');
    span.setAttribute('ok', false);
    span.addEvent('RequestSentEvent', { url: 'http://w:1', attempt: 2 });
    span.addEvent('RequestReceivedEvent');
    span.end(500, 'boom');
    await t.shutdown();
    const [ours] = decodeRequest(m.batches[0].body);
    const mine = ours.spans[0];
    expect(ours.scope).toEqual({ name: 'smg', version: '1.2.3' });
    expect(ours.resource).toEqual([
      ['service.name', 'smg'],
      ['service.version', '1.2.3'],
    ]);

    // the same span through the SDK: same ids, times, attributes and events
    const hr = (ns: bigint): HrTime => [Number(ns / 1_000_000_000n), Number(ns % 1_000_000_000n)];
    const memory = new InMemorySpanExporter();
    const provider = new BasicTracerProvider({
      idGenerator: { generateTraceId: () => mine.traceId, generateSpanId: () => mine.spanId },
      spanProcessors: [new SimpleSpanProcessor(memory)],
    });
    const parent = trace.setSpanContext(ROOT_CONTEXT, {
      traceId: PARENT_TRACE,
      spanId: PARENT_SPAN,
      traceFlags: 1,
      isRemote: true,
      traceState: new TraceState('vendor=a'),
    });
    const sdkSpan = provider
      .getTracer('smg', '1.2.3')
      .startSpan(
        'http_request',
        { kind: SpanKind.SERVER, startTime: hr(mine.start), attributes: Object.fromEntries(mine.attributes) },
        parent,
      );
    for (const e of mine.events) sdkSpan.addEvent(e.name, Object.fromEntries(e.attributes), hr(e.time));
    sdkSpan.setStatus({ code: SpanStatusCode.ERROR, message: 'boom' });
    sdkSpan.end(hr(mine.end));
    const sdkBytes = ProtobufTraceSerializer.serializeRequest(memory.getFinishedSpans());
    if (!sdkBytes) throw new Error('SDK serializer returned nothing');
    const [sdk] = decodeRequest(sdkBytes);
    expect(sdk.scope).toEqual(ours.scope);
    expect(mine).toEqual(sdk.spans[0]);
    await provider.shutdown();
  });
});

describe('export queue', () => {
  it('sends a partial batch after the export interval', async () => {
    const { logger } = testLogger();
    const m = memoryExporter();
    const t = enabled(logger, m.exporter);
    t.startRequest(req()).end(200);
    t.startRequest(req()).end(201);
    await m.waitFor(1);
    expect(m.batches[0].spans).toBe(2);
    expect(spansOf(m.batches).map((s) => Object.fromEntries(s.attributes).status_code)).toEqual([200, 201]);
  });

  it('sends full batches at once, bounds the queue, and logs drops at most once a minute', async () => {
    const { logger, lines } = testLogger();
    const m = memoryExporter(() => 'hold');
    const t = enabled(logger, m.exporter);
    const total = MAX_QUEUE + 3 * MAX_EXPORT_BATCH;
    for (let i = 0; i < total; i++) t.startRequest(req()).end(200);
    // the spans beyond the queue were dropped, once logged
    const drops = lines.filter((l) => l.level === 'warn' && /dropped/.test(l.msg));
    expect(drops).toHaveLength(1);
    await m.waitFor(MAX_QUEUE / MAX_EXPORT_BATCH);
    expect(m.batches.every((b) => b.spans === MAX_EXPORT_BATCH)).toBe(true);
    expect(m.batches.reduce((n, b) => n + b.spans, 0)).toBe(MAX_QUEUE);
    expect(spansOf(m.batches)).toHaveLength(MAX_QUEUE);
    for (const release of m.held.splice(0)) release();
    await t.shutdown();
  });

  it('logs export failures at most once a minute and keeps going', async () => {
    const { logger, lines } = testLogger();
    const m = memoryExporter(() => ({
      code: ExportResultCode.FAILED,
      error: new Error('connect ECONNREFUSED'),
    }));
    const t = enabled(logger, m.exporter);
    for (let round = 0; round < 3; round++) {
      t.startRequest(req()).end(200);
      await m.waitFor(round + 1);
    }
    const warns = lines.filter((l) => l.level === 'warn');
    expect(warns).toHaveLength(1);
    expect(warns[0].msg).toMatch(/export failed/);
    expect(warns[0].obj).toMatchObject({ error: 'connect ECONNREFUSED', dropped_spans: 1 });
  });

  it('survives an exporter that throws', async () => {
    const { logger, lines } = testLogger();
    const exporter: SpanBatchExporter = {
      export: () => {
        throw new Error('kaput');
      },
      shutdown: async () => undefined,
    };
    const t = enabled(logger, exporter);
    t.startRequest(req()).end(200);
    await t.shutdown();
    expect(lines.some((l) => l.level === 'warn' && (l.obj as { error?: string }).error === 'kaput')).toBe(
      true,
    );
  });

  it('flushes on shutdown and ignores spans that end afterwards', async () => {
    const { logger } = testLogger();
    const m = memoryExporter();
    const t = enabled(logger, m.exporter);
    const late = t.startRequest(req());
    t.startRequest(req()).end(200);
    await t.shutdown();
    await t.shutdown(); // idempotent
    late.end(200);
    expect(m.batches).toHaveLength(1);
    expect(m.batches[0].spans).toBe(1);
  });
});

describe('OTLP/HTTP export', () => {
  async function receiver(status = 200) {
    const posts: { headers: http.IncomingHttpHeaders; url: string; body: Buffer }[] = [];
    let wake: (() => void) | undefined;
    const server = http.createServer((rq, rs) => {
      const chunks: Buffer[] = [];
      rq.on('data', (c: Buffer) => chunks.push(c));
      rq.on('end', () => {
        posts.push({ headers: rq.headers, url: rq.url ?? '', body: Buffer.concat(chunks) });
        rs.writeHead(status, { 'content-type': 'application/x-protobuf' });
        rs.end();
        wake?.();
      });
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    toClose.push(() => new Promise<void>((resolve) => server.close(() => resolve())));
    const { port } = server.address() as AddressInfo;
    const waitFor = async (n: number) => {
      while (posts.length < n) await new Promise<void>((resolve) => (wake = resolve));
    };
    return { endpoint: `http://127.0.0.1:${port}/v1/traces`, posts, waitFor };
  }

  it('POSTs protobuf ExportTraceServiceRequests to the collector', async () => {
    const r = await receiver();
    const { logger, lines } = testLogger();
    const t = enabled(logger, undefined, r.endpoint);
    const root = t.startRequest(req());
    root.setAttribute('model', 'm1');
    root.end(200);
    const child = t.startRequest(req({ traceparent: `00-${PARENT_TRACE}-${PARENT_SPAN}-01` }));
    child.end(200);
    await t.shutdown();
    expect(r.posts).toHaveLength(1);
    const [post] = r.posts;
    expect(post.url).toBe('/v1/traces');
    expect(post.headers['content-type']).toBe('application/x-protobuf');
    const [body] = decodeRequest(post.body);
    expect(body.resource).toEqual([
      ['service.name', 'smg'],
      ['service.version', '1.2.3'],
    ]);
    expect(body.spans.map((s) => [s.traceId === PARENT_TRACE, s.parentSpanId])).toEqual([
      [false, ''],
      [true, PARENT_SPAN],
    ]);
    expect(root.traceparent).toBe(`00-${body.spans[0].traceId}-${body.spans[0].spanId}-01`);
    expect(Object.fromEntries(body.spans[0].attributes).model).toBe('m1');
    expect(lines.filter((l) => l.level === 'warn')).toEqual([]);
  });

  it('logs a rejected export once and does not throw', async () => {
    const r = await receiver(400);
    const { logger, lines } = testLogger();
    const t = enabled(logger, undefined, r.endpoint);
    t.startRequest(req()).end(200);
    await t.shutdown();
    expect(r.posts).toHaveLength(1);
    const warns = lines.filter((l) => l.level === 'warn');
    expect(warns).toHaveLength(1);
    expect(warns[0].msg).toMatch(/export failed/);
  });
});

describe('installTracingHooks', () => {
  it('gives fastify requests a span with request.id as request_id', async () => {
    const { logger } = testLogger();
    const m = memoryExporter();
    const t = enabled(logger, m.exporter);
    const app = Fastify({ genReqId: () => 'req-fixed' });
    installTracingHooks(app, t);
    let seen: string | undefined;
    app.get('/readiness', async (request) => {
      seen = requestSpan(request)?.traceparent;
      return { ok: true };
    });
    app.get('/boom', async () => {
      throw new Error('handler failed');
    });
    await app.ready();
    const ok = await app.inject({
      method: 'GET',
      url: '/readiness',
      headers: { traceparent: `00-${PARENT_TRACE}-${PARENT_SPAN}-01` },
    });
    expect(ok.statusCode).toBe(200);
    expect(seen).toMatch(new RegExp(`^00-${PARENT_TRACE}-`));
    expect((await app.inject({ method: 'GET', url: '/boom' })).statusCode).toBe(500);
    await app.close();
    await t.shutdown();
    const [a, b] = spansOf(m.batches);
    expect(Object.fromEntries(a.attributes)).toMatchObject({
      method: 'GET',
      uri: '/readiness',
      request_id: 'req-fixed',
      status_code: 200,
    });
    expect(a.parentSpanId).toBe(PARENT_SPAN);
    expect(Object.fromEntries(b.attributes)).toMatchObject({ status_code: 500, error: 'handler failed' });
    expect(b.status.code).toBe(2);
  });
});
