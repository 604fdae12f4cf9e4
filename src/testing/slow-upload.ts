/**
 * A client that uploads a chat body slowly, as the body-memory test and benchmark need: `chunk`
 * bytes, then a pause of `gapMs`, honouring backpressure; it stops sending once an answer arrives.
 */
import http from 'node:http';

/** an 8 MiB-style chat body of `bytes` bytes: `model` first, then one long user message */
export function largeChatBody(bytes: number, model = 'mock-model'): Buffer {
  const prefix = `{"model":"${model}","max_tokens":1,"messages":[{"role":"user","content":"`;
  const suffix = '"}]}';
  const body = Buffer.alloc(bytes, 'a');
  body.write(prefix, 0, 'latin1');
  body.write(suffix, bytes - suffix.length, 'latin1');
  return body;
}

/** one slow upload to `url`'s chat route; its status, or `reset` when the connection died before any answer */
export function slowUpload(
  url: string,
  body: Buffer,
  chunk: number,
  gapMs: number,
): Promise<number | 'reset'> {
  const u = new URL(url);
  return new Promise((resolve) => {
    let status: number | undefined;
    const req = http.request({
      host: u.hostname,
      port: Number(u.port),
      path: '/v1/chat/completions',
      method: 'POST',
      agent: false,
      headers: { 'content-type': 'application/json', 'content-length': String(body.length) },
    });
    req.on('response', (res) => {
      status = res.statusCode;
      res.resume();
      res.on('end', () => resolve(status as number));
      res.on('error', () => resolve(status as number));
    });
    req.on('error', () => resolve(status ?? 'reset'));
    let off = 0;
    const next = (): void => {
      if (status !== undefined || req.destroyed) return;
      if (off >= body.length) return void req.end();
      const end = Math.min(body.length, off + chunk);
      const more = req.write(body.subarray(off, end));
      off = end;
      if (more) setTimeout(next, gapMs);
      else req.once('drain', () => setTimeout(next, gapMs));
    };
    next();
  });
}
