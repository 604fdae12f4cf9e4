/**
 * OpenTelemetry tracing (inventory §6.2): one `http_request` SERVER span per request, its parent
 * taken from the inbound W3C `traceparent`/`tracestate`, exported in batches over OTLP/HTTP.
 *
 * SMG exports OTLP over gRPC (port 4317); we speak OTLP/HTTP with protobuf bodies (the OTLP/HTTP
 * default encoding; port 4318, path `/v1/traces`), which every OpenTelemetry Collector, Jaeger,
 * Tempo and vendor endpoint accepts.
 *
 * Why no SDK tracer: measured on the 2-core reference machine, the SDK's span path (Tracer,
 * context, hrtime arrays, attribute sanitising) costs ~10 µs per span and its transformer another
 * 4–8 µs, together ~15% of the gateway's per-request CPU at 8k req/s. The spans here are plain
 * records encoded straight to OTLP protobuf (a third of the JSON size, which matters as much:
 * socket writes cost ~6 ns a byte here) and handed to the SDK's own OTLP/HTTP transport
 * (`@opentelemetry/otlp-exporter-base`: keep-alive, timeouts, retries honouring Retry-After, and
 * the `OTEL_EXPORTER_OTLP_*` header and compression variables). tracing.test.ts checks the bytes
 * against the SDK's own protobuf serializer.
 *
 * Owns: span records, their OTLP encoding, the export queue. Never: throws on the request path,
 * blocks a request on export, or logs an export failure more than once a minute.
 */
import { randomFillSync } from 'node:crypto';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import type { IncomingHttpHeaders } from 'node:http';
import { ExportResultCode, parseTraceParent, TraceState, type ExportResult } from '@opentelemetry/core';
import { OTLPExporterBase } from '@opentelemetry/otlp-exporter-base';
import {
  convertLegacyHttpOptions,
  createOtlpHttpExportDelegate,
} from '@opentelemetry/otlp-exporter-base/node-http';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { TracingConfig } from '../cli/config-types.js';
import type { Logger } from './logger.js';

/** SMG's batch exporter interval: queued spans leave at least every 500 ms */
export const EXPORT_INTERVAL_MS = 500;
/**
 * Spans per export request. SMG uses 64; we use the OpenTelemetry SDK default, 512, because an
 * export request is what costs here: ~1 ms of event-loop CPU per POST on the 2-core reference
 * machine, so at 8k req/s batches of 64 (125 POST/s) took ~20% of the gateway's CPU and batches of
 * 512 (16 POST/s) take ~2%.
 */
export const MAX_EXPORT_BATCH = 512;
/** spans waiting for export; beyond this new spans are dropped (the OTel SDK default) */
export const MAX_QUEUE = 2048;
/** batches in flight at once, so a slow collector does not stall the queue behind one request */
const MAX_CONCURRENT_EXPORTS = 4;
const EXPORT_TIMEOUT_MS = 10_000;
const SHUTDOWN_TIMEOUT_MS = 5_000;
const ERROR_LOG_INTERVAL_MS = 60_000;
/** a body buffer fits a full batch of typical spans (~550 B); a bigger batch grows its buffer */
const BODY_BUFFER_SIZE = 512 * 1024;
/** batches alive at once: in flight plus sealed (MAX_QUEUE / MAX_EXPORT_BATCH) plus the open one */
const MAX_FREE_BUFFERS = 8;
/** per-span caps (the OTel SDK's defaults) so a misbehaving caller cannot grow a span without bound */
const MAX_ATTRIBUTES = 128;
const MAX_EVENTS = 128;

// OTLP enum values (opentelemetry-proto trace.proto)
const SPAN_KIND_SERVER = 2;
const STATUS_UNSET = 0;
const STATUS_ERROR = 2;
/** OTLP span flags: W3C trace flags plus "has is_remote" (0x100) and "parent is remote" (0x200) */
const FLAG_HAS_IS_REMOTE = 0x100;
const FLAG_IS_REMOTE = 0x200;
const SAMPLED = 0x01;

export type AttributeValue = string | number | boolean;

export interface RequestSpan {
  /** W3C header value to send to the worker: this span as the parent */
  readonly traceparent: string;
  readonly tracestate: string | undefined;
  setAttribute(key: string, value: AttributeValue): void;
  /** e.g. `RequestSentEvent {url}`, `RequestReceivedEvent` */
  addEvent(name: string, attrs?: Record<string, string | number>): void;
  /** sets status_code, latency (µs), error and the span status; the first call wins */
  end(statusCode: number, error?: string): void;
}

export interface StartRequest {
  method: string;
  url: string;
  httpVersion: string;
  requestId: string;
  headers: IncomingHttpHeaders;
}

// ------------------------------------------------------------------------------------ ids

// random bytes are drawn in batches: one syscall per ~170 spans instead of two per span
const ID_POOL_SIZE = 4096;
const idPool = Buffer.allocUnsafe(ID_POOL_SIZE);
let idPos = ID_POOL_SIZE;

function randomHex(bytes: number): string {
  if (idPos + bytes > ID_POOL_SIZE) {
    randomFillSync(idPool);
    idPos = 0;
  }
  const s = idPool.toString('hex', idPos, idPos + bytes);
  idPos += bytes;
  return s;
}

const ZERO_SPAN_ID = '0000000000000000';
const ZERO_TRACE_ID = '00000000000000000000000000000000';

function newSpanId(): string {
  let id = randomHex(8);
  // all-zero ids are invalid (W3C): astronomically rare, but cheap to exclude
  while (id === ZERO_SPAN_ID) id = randomHex(8);
  return id;
}

function newTraceId(): string {
  let id = randomHex(16);
  while (id === ZERO_TRACE_ID) id = randomHex(16);
  return id;
}

// ------------------------------------------------------------------------------------ spans

interface SpanEvent {
  name: string;
  at: number;
  attrs: Record<string, string | number> | undefined;
}

/** a span as recorded until it ends and is encoded; callers see it as a RequestSpan */
class LeanSpan implements RequestSpan {
  readonly spanId = newSpanId();
  readonly traceId: string;
  readonly parentSpanId: string | undefined;
  readonly tracestate: string | undefined;
  readonly flags: number;
  readonly startedAt = performance.now();
  endedAt = 0;
  // the attributes every span has are fields, encoded at export
  readonly method: string;
  readonly uri: string;
  readonly httpVersion: string;
  readonly requestId: string;
  httpStatus = 0;
  error: string | undefined;
  /** attributes added with setAttribute */
  keys: string[] | undefined;
  values: AttributeValue[] | undefined;
  events: SpanEvent[] | undefined;
  private ended = false;

  constructor(
    private readonly owner: Tracing,
    r: StartRequest,
  ) {
    const tp = r.headers.traceparent;
    const parent = tp === undefined ? null : parseTraceParent(Array.isArray(tp) ? tp[0] : tp);
    if (parent) {
      this.traceId = parent.traceId;
      this.parentSpanId = parent.spanId;
      this.flags = parent.traceFlags & 0xff;
      const ts = r.headers.tracestate;
      if (ts !== undefined && ts !== '') {
        // several tracestate headers are one list (W3C §3.3.1.1); TraceState drops invalid members
        const s = new TraceState(Array.isArray(ts) ? ts.join(',') : ts).serialize();
        this.tracestate = s === '' ? undefined : s;
      }
    } else {
      this.traceId = newTraceId();
      this.flags = SAMPLED;
    }
    this.method = r.method;
    // the query string can carry secrets (`?api_key=…`, signed URLs): spans keep the path only
    const q = r.url.indexOf('?');
    this.uri = q < 0 ? r.url : r.url.slice(0, q);
    this.httpVersion = r.httpVersion;
    this.requestId = r.requestId;
  }

  get traceparent(): string {
    return `00-${this.traceId}-${this.spanId}-${this.flags & SAMPLED ? '01' : '00'}`;
  }

  /** the built-in attributes (method, uri, version, request_id, status_code, latency, error) are the span's own */
  setAttribute(key: string, value: AttributeValue): void {
    if (this.ended) return;
    if (this.keys === undefined || this.values === undefined) {
      this.keys = [key];
      this.values = [value];
      return;
    }
    const i = this.keys.indexOf(key);
    if (i >= 0) this.values[i] = value;
    else if (this.keys.length < MAX_ATTRIBUTES) {
      this.keys.push(key);
      this.values.push(value);
    }
  }

  addEvent(name: string, attrs?: Record<string, string | number>): void {
    if (this.ended) return;
    const ev: SpanEvent = { name, at: performance.now(), attrs };
    if (this.events === undefined) this.events = [ev];
    else if (this.events.length < MAX_EVENTS) this.events.push(ev);
  }

  end(statusCode: number, error?: string): void {
    if (this.ended) return;
    this.ended = true;
    this.endedAt = performance.now();
    this.httpStatus = statusCode;
    this.error = error;
    // a parent that asked not to be sampled: propagate the context, record nothing
    if (this.flags & SAMPLED) this.owner.enqueue(this);
  }

  /** OTel semantic conventions: on a SERVER span only 5xx (or a failure) is an error, 4xx is the client's */
  get isError(): boolean {
    return this.error !== undefined || this.httpStatus >= 500;
  }
}

// ------------------------------------------------------------------------------------ OTLP protobuf

/*
 * ExportTraceServiceRequest, written by hand for the one shape we send (opentelemetry-proto
 * v1, trace.proto / common.proto / resource.proto). Field numbers used:
 *   request: 1 resource_spans
 *   ResourceSpans: 1 resource, 2 scope_spans        Resource: 1 attributes
 *   ScopeSpans: 1 scope, 2 spans                     InstrumentationScope: 1 name, 2 version
 *   Span: 1 trace_id, 2 span_id, 3 trace_state, 4 parent_span_id, 5 name, 6 kind,
 *         7 start_time_unix_nano (fixed64), 8 end_time_unix_nano (fixed64), 9 attributes,
 *         11 events, 15 status, 16 flags (fixed32)
 *   Event: 1 time_unix_nano (fixed64), 2 name, 3 attributes
 *   Status: 2 message, 3 code                        KeyValue: 1 key, 2 value
 *   AnyValue: 1 string_value, 2 bool_value, 3 int_value, 4 double_value (fixed64)
 * Zero-valued fields (dropped counts) are omitted, as proto3 allows.
 */
const WIRE_VARINT = 0;
const WIRE_I64 = 1;
const WIRE_LEN = 2;
const WIRE_I32 = 5;
const tag = (field: number, wire: number) => (field << 3) | wire;

const TWO_32 = 4294967296;
/** read once: the getter validates its receiver on every call */
const TIME_ORIGIN = performance.timeOrigin;
const HEX = new Uint8Array(128);
for (let i = 0; i < 10; i++) HEX[48 + i] = i;
for (let i = 0; i < 6; i++) HEX[97 + i] = 10 + i;

class ProtoWriter {
  buf: Buffer;
  pos = 0;

  constructor(size = 64 * 1024) {
    this.buf = Buffer.allocUnsafe(size);
  }

  ensure(n: number): void {
    if (this.pos + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.pos + n) size *= 2;
    const next = Buffer.allocUnsafe(size);
    this.buf.copy(next, 0, 0, this.pos);
    this.buf = next;
  }

  byte(b: number): void {
    this.buf[this.pos++] = b;
  }

  /** a non-negative integer below 2^53 */
  varint(v: number): void {
    const buf = this.buf;
    if (v < 0x80) {
      buf[this.pos++] = v;
      return;
    }
    while (v >= 0x80) {
      buf[this.pos++] = (v % 0x80) | 0x80;
      v = Math.floor(v / 0x80);
    }
    buf[this.pos++] = v;
  }

  /** int64: negative values are their 64-bit two's complement, ten bytes */
  int64(v: number): void {
    if (v >= 0) this.varint(v);
    else {
      let x = BigInt.asUintN(64, BigInt(v));
      while (x >= 0x80n) {
        this.buf[this.pos++] = Number(x & 0x7fn) | 0x80;
        x >>= 7n;
      }
      this.buf[this.pos++] = Number(x);
    }
  }

  fixed32(v: number): void {
    this.buf.writeUInt32LE(v >>> 0, this.pos);
    this.pos += 4;
  }

  /** unix nanoseconds as fixed64, from a performance.now() reading, without BigInt */
  time(perfMs: number): void {
    const t = TIME_ORIGIN + perfMs;
    const ms = Math.floor(t);
    const subNs = Math.round((t - ms) * 1e6);
    const msHi = Math.floor(ms / TWO_32);
    // (ms mod 2^32) * 1e6 + subNs < 2^52: exact in a double
    let lo = (ms - msHi * TWO_32) * 1e6 + subNs;
    const carry = Math.floor(lo / TWO_32);
    lo -= carry * TWO_32;
    this.buf.writeUInt32LE(lo, this.pos);
    this.buf.writeUInt32LE(msHi * 1e6 + carry, this.pos + 4);
    this.pos += 8;
  }

  /** lowercase hex (validated on the way in) as raw bytes */
  hexBytes(hex: string): void {
    const buf = this.buf;
    this.buf[this.pos++] = hex.length >> 1;
    for (let i = 0; i < hex.length; i += 2) {
      buf[this.pos++] = (HEX[hex.charCodeAt(i)] << 4) | HEX[hex.charCodeAt(i + 1)];
    }
  }

  /** a length-prefixed UTF-8 string: short ASCII is copied by hand, anything else by Buffer.write */
  string(s: string): void {
    const n = s.length;
    if (n < 0x80) {
      const buf = this.buf;
      const start = this.pos;
      let p = start + 1;
      let i = 0;
      for (; i < n; i++) {
        const c = s.charCodeAt(i);
        if (c >= 0x80) break;
        buf[p++] = c;
      }
      if (i === n) {
        buf[start] = n;
        this.pos = p;
        return;
      }
    }
    const len = Buffer.byteLength(s, 'utf8');
    this.ensure(len + 5);
    this.varint(len);
    this.pos += this.buf.write(s, this.pos, 'utf8');
  }

  raw(bytes: Uint8Array): void {
    const n = bytes.length;
    // TypedArray#set has a fixed cost that dominates for the short key fields copied here
    if (n <= 32) {
      const buf = this.buf;
      let p = this.pos;
      for (let i = 0; i < n; i++) buf[p++] = bytes[i];
      this.pos = p;
    } else {
      this.buf.set(bytes, this.pos);
      this.pos += n;
    }
  }

  /** reserves `reserve` bytes for a length prefix; returns where the content starts */
  beginLen(reserve: number): number {
    this.pos += reserve;
    return this.pos;
  }

  /** writes the length of everything since `start`, moving the content if the prefix is not `reserve` bytes */
  endLen(start: number, reserve: number): void {
    const len = this.pos - start;
    const need = varintSize(len);
    if (need !== reserve) {
      this.ensure(need - reserve);
      this.buf.copyWithin(start - reserve + need, start, this.pos);
      this.pos += need - reserve;
    }
    const end = this.pos;
    this.pos = start - reserve;
    this.varint(len);
    this.pos = end;
  }
}

function varintSize(v: number): number {
  let n = 1;
  while (v >= 0x80) {
    v = Math.floor(v / 0x80);
    n++;
  }
  return n;
}

/** the KeyValue `key` field (tag, length, bytes) per attribute key: keys repeat on every span */
const keyFields = new Map<string, Uint8Array>();

function keyField(key: string): Uint8Array {
  let f = keyFields.get(key);
  if (f === undefined) {
    const w = new ProtoWriter(16 + key.length * 3);
    w.byte(tag(1, WIRE_LEN));
    w.string(key);
    f = Uint8Array.from(w.buf.subarray(0, w.pos));
    // keys come from code, but a caller could build them from data: keep the cache bounded
    if (keyFields.size >= 4096) keyFields.clear();
    keyFields.set(key, f);
  }
  return f;
}

/** upper bound of what one attribute may add beyond its string value's UTF-16 length */
const ATTR_OVERHEAD = 32;

/** an attribute (KeyValue) as `field`; `k` is the key's encoded field, from keyField() */
function writeAttribute(w: ProtoWriter, field: number, k: Uint8Array, v: AttributeValue): void {
  w.ensure(k.length + ATTR_OVERHEAD + (typeof v === 'string' ? v.length * 3 : 0));
  const mark = w.pos;
  // fast path, nearly every attribute: every length fits one byte, so they are known up front
  // (KeyValue = key field + 0x12 + len + AnyValue; AnyValue = tag + string len + bytes, or tag + varint)
  if (typeof v === 'string') {
    const n = v.length;
    const kvLen = k.length + 4 + n;
    if (kvLen < 0x80) {
      const buf = w.buf;
      let p = mark;
      buf[p++] = tag(field, WIRE_LEN);
      buf[p++] = kvLen;
      for (let i = 0; i < k.length; i++) buf[p++] = k[i];
      buf[p++] = tag(2, WIRE_LEN);
      buf[p++] = n + 2;
      buf[p++] = tag(1, WIRE_LEN);
      buf[p++] = n;
      let i = 0;
      for (; i < n; i++) {
        const c = v.charCodeAt(i);
        if (c >= 0x80) break;
        buf[p++] = c;
      }
      if (i === n) {
        w.pos = p;
        return;
      }
      // not ASCII: byte and UTF-16 lengths differ, take the general path
    }
  } else if (typeof v === 'number' && v >= 0 && v < 0x4000 && Number.isInteger(v)) {
    const vLen = v < 0x80 ? 1 : 2;
    const kvLen = k.length + 3 + vLen;
    if (kvLen < 0x80) {
      const buf = w.buf;
      let p = mark;
      buf[p++] = tag(field, WIRE_LEN);
      buf[p++] = kvLen;
      for (let i = 0; i < k.length; i++) buf[p++] = k[i];
      buf[p++] = tag(2, WIRE_LEN);
      buf[p++] = vLen + 1;
      buf[p++] = tag(3, WIRE_VARINT);
      if (vLen === 1) buf[p++] = v;
      else {
        buf[p++] = (v & 0x7f) | 0x80;
        buf[p++] = v >>> 7;
      }
      w.pos = p;
      return;
    }
  }
  w.pos = mark;
  w.byte(tag(field, WIRE_LEN));
  const kv = w.beginLen(1);
  w.raw(k);
  w.byte(tag(2, WIRE_LEN));
  const any = w.beginLen(1);
  if (typeof v === 'string') {
    w.byte(tag(1, WIRE_LEN));
    w.string(v);
  } else if (typeof v === 'boolean') {
    w.byte(tag(2, WIRE_VARINT));
    w.byte(v ? 1 : 0);
  } else if (Number.isSafeInteger(v)) {
    w.byte(tag(3, WIRE_VARINT));
    w.int64(v);
  } else {
    w.byte(tag(4, WIRE_I64));
    w.buf.writeDoubleLE(v, w.pos);
    w.pos += 8;
  }
  w.endLen(any, 1);
  w.endLen(kv, 1);
}

// the built-in attributes' keys, encoded once
const K_METHOD = keyField('method');
const K_URI = keyField('uri');
const K_VERSION = keyField('version');
const K_REQUEST_ID = keyField('request_id');
const K_STATUS_CODE = keyField('status_code');
const K_LATENCY = keyField('latency');
const K_ERROR = keyField('error');
const K_HTTP_METHOD = keyField('http.request.method');
const K_URL_PATH = keyField('url.path');
const K_HTTP_STATUS = keyField('http.response.status_code');

function versionLabel(v: string): string {
  return v === '1.1' ? 'HTTP/1.1' : v === '2.0' ? 'HTTP/2.0' : v === '1.0' ? 'HTTP/1.0' : `HTTP/${v}`;
}

const SPAN_NAME = (() => {
  const w = new ProtoWriter(64);
  w.byte(tag(5, WIRE_LEN));
  w.string('http_request');
  w.byte(tag(6, WIRE_VARINT));
  w.byte(SPAN_KIND_SERVER);
  return Uint8Array.from(w.buf.subarray(0, w.pos));
})();
const FLAGS_TAG = tag(16, WIRE_I32);

function writeSpan(w: ProtoWriter, s: LeanSpan): void {
  // fixed part: ids, names, times, built-in attributes without their string values
  w.ensure(512 + s.uri.length * 3 + s.requestId.length * 3 + (s.tracestate?.length ?? 0) * 3);
  w.byte(tag(2, WIRE_LEN)); // ScopeSpans.spans
  const span = w.beginLen(2);
  w.byte(tag(1, WIRE_LEN));
  w.hexBytes(s.traceId);
  w.byte(tag(2, WIRE_LEN));
  w.hexBytes(s.spanId);
  if (s.tracestate !== undefined) {
    w.byte(tag(3, WIRE_LEN));
    w.string(s.tracestate);
  }
  if (s.parentSpanId !== undefined) {
    w.byte(tag(4, WIRE_LEN));
    w.hexBytes(s.parentSpanId);
  }
  w.raw(SPAN_NAME);
  w.byte(tag(7, WIRE_I64));
  w.time(s.startedAt);
  w.byte(tag(8, WIRE_I64));
  w.time(s.endedAt);
  // inventory §6.2 attributes, then the OTel semantic-convention ones, then the caller's
  writeAttribute(w, 9, K_METHOD, s.method);
  writeAttribute(w, 9, K_URI, s.uri);
  writeAttribute(w, 9, K_VERSION, versionLabel(s.httpVersion));
  writeAttribute(w, 9, K_REQUEST_ID, s.requestId);
  writeAttribute(w, 9, K_STATUS_CODE, s.httpStatus);
  writeAttribute(w, 9, K_LATENCY, Math.round((s.endedAt - s.startedAt) * 1000));
  if (s.error !== undefined) writeAttribute(w, 9, K_ERROR, s.error);
  writeAttribute(w, 9, K_HTTP_METHOD, s.method);
  writeAttribute(w, 9, K_URL_PATH, s.uri);
  writeAttribute(w, 9, K_HTTP_STATUS, s.httpStatus);
  if (s.keys !== undefined && s.values !== undefined) {
    for (let i = 0; i < s.keys.length; i++) writeAttribute(w, 9, keyField(s.keys[i]), s.values[i]);
  }
  if (s.events !== undefined) {
    for (const ev of s.events) {
      w.ensure(32 + ev.name.length * 3);
      w.byte(tag(11, WIRE_LEN));
      const e = w.beginLen(1);
      w.byte(tag(1, WIRE_I64));
      w.time(ev.at);
      w.byte(tag(2, WIRE_LEN));
      w.string(ev.name);
      if (ev.attrs !== undefined) for (const k in ev.attrs) writeAttribute(w, 3, keyField(k), ev.attrs[k]);
      w.endLen(e, 1);
    }
  }
  const message = s.isError ? (s.error ?? `HTTP ${s.httpStatus}`) : '';
  w.ensure(32 + message.length * 3);
  w.byte(tag(15, WIRE_LEN));
  const st = w.beginLen(1);
  if (message !== '') {
    w.byte(tag(2, WIRE_LEN));
    w.string(message);
  }
  w.byte(tag(3, WIRE_VARINT));
  w.byte(s.isError ? STATUS_ERROR : STATUS_UNSET);
  w.endLen(st, 1);
  w.byte((FLAGS_TAG & 0x7f) | 0x80);
  w.byte(FLAGS_TAG >> 7);
  w.fixed32(s.flags | FLAG_HAS_IS_REMOTE | (s.parentSpanId === undefined ? 0 : FLAG_IS_REMOTE));
  w.endLen(span, 2);
}

/**
 * Frames spans into ExportTraceServiceRequest bodies. Spans are encoded as they end, straight into
 * the buffer that becomes the request body (so a queued span is bytes, not objects the GC must
 * trace and promote); `take` writes the resource and scope headers in front once the spans' total
 * length is known. Body buffers come back through `release` when their export is over and are
 * reused: fresh 300 KB buffers cost a page fault per 4 KB on first touch, more than the encoding.
 */
export class BatchEncoder {
  private w: ProtoWriter;
  private readonly free: Buffer[] = [];
  private readonly resourceField: Uint8Array;
  private readonly scopeField: Uint8Array;
  /** room kept in front of the spans for the headers: their constant parts and three varints */
  private readonly headerRoom: number;
  /** spans appended since the last `take` */
  count = 0;

  constructor(resource: Record<string, string>, scope: { name: string; version: string }) {
    const w = new ProtoWriter(1024);
    for (const [k, v] of Object.entries(resource)) writeAttribute(w, 1, keyField(k), v);
    this.resourceField = Uint8Array.from(w.buf.subarray(0, w.pos));
    w.pos = 0;
    w.byte(tag(1, WIRE_LEN));
    w.string(scope.name);
    w.byte(tag(2, WIRE_LEN));
    w.string(scope.version);
    this.scopeField = Uint8Array.from(w.buf.subarray(0, w.pos));
    this.headerRoom = 6 * 5 + this.resourceField.length + this.scopeField.length;
    this.w = new ProtoWriter(BODY_BUFFER_SIZE);
    this.w.pos = this.headerRoom;
  }

  append(span: LeanSpan): void {
    const mark = this.w.pos;
    try {
      writeSpan(this.w, span);
      this.count++;
    } catch {
      // an encoding bug must cost the span, never the request that ended it
      this.w.pos = mark;
    }
  }

  /** the request body for every span appended so far; undefined when there are none */
  take(): { body: Uint8Array; buffer: Buffer } | undefined {
    if (this.count === 0) return undefined;
    const w = this.w;
    const end = w.pos;
    const resource = this.resourceField;
    const scope = this.scopeField;
    // request { 1: ResourceSpans { 1: Resource, 2: ScopeSpans { 1: scope, 2: span… } } }
    const scopeSpansLen = 1 + varintSize(scope.length) + scope.length + (end - this.headerRoom);
    const resourceSpansLen =
      1 + varintSize(resource.length) + resource.length + 1 + varintSize(scopeSpansLen) + scopeSpansLen;
    const headerLen = 1 + varintSize(resourceSpansLen) + resourceSpansLen - (end - this.headerRoom);
    const start = this.headerRoom - headerLen;
    w.pos = start;
    w.byte(tag(1, WIRE_LEN));
    w.varint(resourceSpansLen);
    w.byte(tag(1, WIRE_LEN));
    w.varint(resource.length);
    w.raw(resource);
    w.byte(tag(2, WIRE_LEN));
    w.varint(scopeSpansLen);
    w.byte(tag(1, WIRE_LEN));
    w.varint(scope.length);
    w.raw(scope);
    const taken = { body: w.buf.subarray(start, end), buffer: w.buf };
    // the body stays untouched until its export ends; the next spans go to another buffer
    w.buf = this.free.pop() ?? Buffer.allocUnsafeSlow(BODY_BUFFER_SIZE);
    w.pos = this.headerRoom;
    this.count = 0;
    return taken;
  }

  /** a body's export is over: its buffer may take spans again */
  release(buffer: Buffer): void {
    if (this.free.length < MAX_FREE_BUFFERS) this.free.push(buffer);
  }
}

// ------------------------------------------------------------------------------------ exporter

/** one export request: an encoded ExportTraceServiceRequest and how many spans it carries */
export interface SpanBatch {
  body: Uint8Array;
  spans: number;
  /** the pooled buffer `body` lives in, returned to the encoder when the export is over */
  readonly buffer: Buffer;
}

/** the transport the queue hands batches to (tests substitute it) */
export interface SpanBatchExporter {
  export(batch: SpanBatch, done: (result: ExportResult) => void): void;
  shutdown(): Promise<void>;
}

/**
 * The endpoint as an OTLP/HTTP traces URL: SMG's flag takes `host:port` (scheme optional), so a
 * bare authority gets `http://` and the collector's standard `/v1/traces` path.
 */
export function normalizeEndpoint(endpoint: string): string {
  const raw = /^[a-z][a-z0-9+.-]*:\/\//i.test(endpoint) ? endpoint : `http://${endpoint}`;
  let u: URL;
  try {
    u = new URL(raw);
  } catch {
    throw new Error(`--otlp-traces-endpoint: not a URL: ${endpoint}`);
  }
  if (u.protocol !== 'http:' && u.protocol !== 'https:') {
    throw new Error(`--otlp-traces-endpoint: OTLP/HTTP needs http:// or https://, got ${endpoint}`);
  }
  if (u.pathname === '/' || u.pathname === '') u.pathname = '/v1/traces';
  return u.toString();
}

/** the SDK's OTLP/HTTP transport with our already-encoded bodies */
export function otlpHttpExporter(url: string): SpanBatchExporter {
  const options = convertLegacyHttpOptions({ url, timeoutMillis: EXPORT_TIMEOUT_MS }, 'TRACES', 'v1/traces', {
    'Content-Type': 'application/x-protobuf',
  });
  const delegate = createOtlpHttpExportDelegate<SpanBatch, unknown>(
    options,
    {
      serializeRequest: (batch) => batch.body,
      // an ExportTraceServiceResponse only carries partial-success counts, which we do not act on
      deserializeResponse: () => ({}),
    },
    'otlp_http_span_exporter',
    { name: 'span', countItems: (batch) => batch.spans },
    // no self-observability meter: export failures are logged here instead
    undefined,
  );
  return new OTLPExporterBase<SpanBatch>(delegate);
}

/**
 * The same transport in a worker thread, so the POSTs (≈ 1.5 ms of CPU each) leave the event loop
 * that serves requests. The batch is copied into a transferable buffer (≈ 150 KB, tens of µs) and
 * the pooled buffer is returned at once. Falls back to the in-thread transport when the worker
 * script is not there (running from TypeScript sources in tests) or the worker dies.
 */
export function workerThreadExporter(url: string, logger: Logger): SpanBatchExporter {
  const script = fileURLToPath(new URL('./otlp-worker.js', import.meta.url));
  if (!existsSync(script)) return otlpHttpExporter(url);
  let fallback: SpanBatchExporter | undefined;
  const pending = new Map<number, (result: ExportResult) => void>();
  let nextId = 1;
  let shutdownDone: (() => void) | undefined;
  const worker = new Worker(script, { workerData: { url } });
  worker.unref();
  worker.on('message', (m: { id?: number; code?: number; error?: string; shutdownDone?: boolean }) => {
    if (m.shutdownDone) {
      shutdownDone?.();
      return;
    }
    const done = m.id === undefined ? undefined : pending.get(m.id);
    if (!done || m.id === undefined) return;
    pending.delete(m.id);
    done(
      m.code === ExportResultCode.SUCCESS
        ? { code: ExportResultCode.SUCCESS }
        : { code: ExportResultCode.FAILED, error: new Error(m.error ?? 'export failed') },
    );
  });
  const fail = (err: Error) => {
    if (fallback) return;
    logger.warn({ err: err.message }, 'tracing: export worker failed; exporting on the main thread');
    fallback = otlpHttpExporter(url);
    for (const done of pending.values()) done({ code: ExportResultCode.FAILED, error: err });
    pending.clear();
    shutdownDone?.();
  };
  worker.on('error', fail);
  worker.on('exit', (code) => {
    if (!shutdownDone) fail(new Error(`export worker exited with code ${code}`));
  });
  return {
    export(batch, done) {
      if (fallback) return fallback.export(batch, done);
      const copy = new Uint8Array(batch.body.byteLength);
      copy.set(batch.body);
      const id = nextId++;
      pending.set(id, done);
      worker.postMessage({ id, body: copy, spans: batch.spans }, [copy.buffer]);
    },
    async shutdown() {
      if (fallback) return fallback.shutdown();
      await new Promise<void>((resolve) => {
        shutdownDone = resolve;
        worker.postMessage({ shutdown: true });
      });
      await worker.terminate();
    },
  };
}

// ------------------------------------------------------------------------------------ Tracing

export interface TracingDeps {
  logger: Logger;
  serviceVersion?: string;
  /** replaces the OTLP/HTTP transport (tests) */
  exporter?: SpanBatchExporter;
}

export class Tracing {
  private readonly encoder: BatchEncoder;
  /** encoded batches waiting for an export slot */
  private sealed: SpanBatch[] = [];
  private sealedSpans = 0;
  private timer: NodeJS.Timeout | undefined;
  private immediate: NodeJS.Immediate | undefined;
  private inflight = 0;
  private readonly settled = new Set<() => void>();
  private closed = false;
  private closing: Promise<void> | undefined;
  // failures since the last log line (at most one a minute)
  private failedExports = 0;
  private droppedSpans = 0;
  private lastError = '';
  private lastLogAt = -Infinity;

  private constructor(
    private readonly exporter: SpanBatchExporter,
    private readonly logger: Logger,
    readonly endpoint: string,
    version: string,
  ) {
    this.encoder = new BatchEncoder(
      { 'service.name': 'smg', 'service.version': version },
      { name: 'smg', version },
    );
  }

  /** undefined when tracing is off, so the request path pays one `if` */
  static create(cfg: TracingConfig, deps: TracingDeps): Tracing | undefined {
    if (!cfg.enabled) return undefined;
    const endpoint = normalizeEndpoint(cfg.otlpTracesEndpoint);
    if (new URL(endpoint).port === '4317') {
      deps.logger.warn(
        { endpoint },
        'tracing: port 4317 is OTLP/gRPC; smg exports OTLP/HTTP (the collector default is :4318/v1/traces)',
      );
    }
    deps.logger.info({ endpoint }, 'tracing: exporting spans over OTLP/HTTP');
    return new Tracing(
      deps.exporter ?? workerThreadExporter(endpoint, deps.logger),
      deps.logger,
      endpoint,
      deps.serviceVersion ?? 'unknown',
    );
  }

  /** a span for a request; never throws (a malformed inbound traceparent starts a new trace) */
  startRequest(r: StartRequest): RequestSpan {
    return new LeanSpan(this, r);
  }

  /** @internal a sampled span ended: encode it into the next batch */
  enqueue(span: LeanSpan): void {
    if (this.closed) return;
    if (this.encoder.count + this.sealedSpans >= MAX_QUEUE) {
      this.droppedSpans++;
      this.maybeLog();
      return;
    }
    this.encoder.append(span);
    if (this.encoder.count >= MAX_EXPORT_BATCH) {
      this.seal();
      // a full batch goes out soon, but never inside the request that completed it
      this.immediate ??= setImmediate(() => {
        this.immediate = undefined;
        this.flush(false);
      });
    } else this.armTimer();
  }

  private armTimer(): void {
    if (this.timer !== undefined || this.closed) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.flush(true);
    }, EXPORT_INTERVAL_MS);
    this.timer.unref();
  }

  private seal(): void {
    const spans = this.encoder.count;
    const taken = this.encoder.take();
    if (taken === undefined) return;
    this.sealed.push({ body: taken.body, spans, buffer: taken.buffer });
    this.sealedSpans += spans;
  }

  /** sends sealed batches while export slots are free; with `partial`, the open batch too */
  private flush(partial: boolean): void {
    if (partial) this.seal();
    while (this.inflight < MAX_CONCURRENT_EXPORTS && this.sealed.length > 0) {
      const batch = this.sealed.shift() as SpanBatch;
      this.sealedSpans -= batch.spans;
      this.send(batch);
    }
    // leftovers wait for the interval (or for an export slot, which re-flushes when it frees)
    if (this.sealed.length > 0 || this.encoder.count > 0) this.armTimer();
  }

  private send(batch: SpanBatch): void {
    this.inflight++;
    let done = false;
    const finish = (result: ExportResult) => {
      if (done) return;
      done = true;
      this.inflight--;
      this.encoder.release(batch.buffer);
      if (result.code !== ExportResultCode.SUCCESS) {
        this.failedExports++;
        this.droppedSpans += batch.spans;
        this.lastError = result.error?.message ?? 'export failed';
        this.maybeLog();
      }
      for (const f of this.settled) f();
      if (!this.closed && this.sealed.length > 0) this.flush(false);
    };
    try {
      this.exporter.export(batch, finish);
    } catch (err) {
      finish({ code: ExportResultCode.FAILED, error: err instanceof Error ? err : new Error(String(err)) });
    }
  }

  private maybeLog(): void {
    const now = performance.now();
    if (now - this.lastLogAt < ERROR_LOG_INTERVAL_MS) return;
    this.lastLogAt = now;
    this.logger.warn(
      {
        endpoint: this.endpoint,
        failed_exports: this.failedExports,
        dropped_spans: this.droppedSpans,
        ...(this.lastError && { error: this.lastError }),
      },
      this.failedExports > 0
        ? 'tracing: span export failed (logged at most once a minute)'
        : 'tracing: export queue full, spans dropped (logged at most once a minute)',
    );
    this.failedExports = 0;
    this.droppedSpans = 0;
    this.lastError = '';
  }

  /** exports what is queued (within 5 s), then stops the exporter; spans ending later are ignored */
  shutdown(): Promise<void> {
    this.closing ??= this.doShutdown();
    return this.closing;
  }

  private async doShutdown(): Promise<void> {
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    if (this.immediate) clearImmediate(this.immediate);
    this.timer = undefined;
    this.immediate = undefined;
    this.seal();
    let deadlineHit = false;
    const deadline = setTimeout(() => {
      deadlineHit = true;
      for (const f of this.settled) f();
    }, SHUTDOWN_TIMEOUT_MS);
    deadline.unref();
    const nextSettle = () =>
      new Promise<void>((resolve) => {
        const f = () => {
          this.settled.delete(f);
          resolve();
        };
        this.settled.add(f);
      });
    while (!deadlineHit && (this.sealed.length > 0 || this.inflight > 0)) {
      this.flush(false);
      if (this.inflight > 0) await nextSettle();
    }
    clearTimeout(deadline);
    if (deadlineHit) {
      this.logger.warn(
        { endpoint: this.endpoint, unsent_spans: this.sealedSpans },
        'tracing: shutdown deadline reached before every span was exported',
      );
    }
    this.sealed = [];
    this.sealedSpans = 0;
    await Promise.race([
      this.exporter.shutdown().catch(() => undefined),
      new Promise<void>((resolve) => setTimeout(resolve, 1000).unref()),
    ]);
  }
}

// ------------------------------------------------------------------------------------ fastify

interface HookRecord {
  span: RequestSpan;
  error: string | undefined;
}

const hookSpans = new WeakMap<FastifyRequest, HookRecord>();

/** the span the tracing hooks opened for a fastify request (undefined when tracing is off) */
export function requestSpan(request: FastifyRequest): RequestSpan | undefined {
  return hookSpans.get(request)?.span;
}

/**
 * Gives every request fastify serves a span (the inference fast path opens its own with
 * `startRequest`). Uses `request.id` as request_id.
 */
export function installTracingHooks(app: FastifyInstance, tracing: Tracing): void {
  app.addHook('onRequest', (request, _reply, done) => {
    hookSpans.set(request, {
      span: tracing.startRequest({
        method: request.method,
        url: request.url,
        httpVersion: request.raw.httpVersion,
        requestId: String(request.id),
        headers: request.headers,
      }),
      error: undefined,
    });
    done();
  });
  app.addHook('onError', (request, _reply, error, done) => {
    const rec = hookSpans.get(request);
    if (rec) rec.error = error.message;
    done();
  });
  app.addHook('onResponse', (request, reply, done) => {
    const rec = hookSpans.get(request);
    rec?.span.end(reply.statusCode, rec.error);
    done();
  });
  app.addHook('onRequestAbort', (request, done) => {
    // 499: nginx's "client closed request"; onResponse may still follow and is then a no-op
    hookSpans.get(request)?.span.end(499, 'client closed the connection');
    done();
  });
}
