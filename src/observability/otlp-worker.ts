/**
 * The OTLP/HTTP export of span batches, run in a worker thread (see `workerThreadExporter` in
 * tracing.ts): each POST costs ≈ 1.5 ms of event-loop time (HTTP client, socket writes, response
 * parsing), which on the main thread is ≈ 3 µs per span at 512 spans a batch. Messages in:
 * `{id, body: Uint8Array, spans}`, or `{shutdown: true}`; out: `{id, code, error?}`.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { otlpHttpExporter } from './tracing.js';

interface ExportMessage {
  id: number;
  body: Uint8Array;
  spans: number;
}

const port = parentPort;
if (port) {
  const exporter = otlpHttpExporter(String((workerData as { url: string }).url));
  port.on('message', (m: ExportMessage | { shutdown: true }) => {
    if ('shutdown' in m) {
      exporter.shutdown().finally(() => port.postMessage({ shutdownDone: true }));
      return;
    }
    const body = m.body;
    exporter.export({ body, spans: m.spans, buffer: Buffer.from(body.buffer, body.byteOffset, 0) }, (r) =>
      port.postMessage({ id: m.id, code: r.code, ...(r.error && { error: r.error.message }) }),
    );
  });
}
