import type { Stream, StreamCloseEvent, StreamMessageEvent } from '@libp2p/interface';

import { DEFAULT_MAX_FRAME_BYTES, FrameDecoder, encodeFrame } from './framing.js';

export const DEFAULT_RECEIVE_TIMEOUT_MS = 10_000;

/** A framed, bidirectional message channel over one libp2p stream (`/smg/<name>/1`). */
export interface Channel {
  /** Sends one frame (length-prefixed on the wire). Rejects frames > maxFrameBytes and on a closed stream. */
  send(frame: Uint8Array): Promise<void>;
  /** The next frame, or null when the other side closed; rejects after timeoutMs without a frame. */
  receive(timeoutMs?: number): Promise<Uint8Array | null>;
  /** Closes our writing side gracefully (the remote's receive() then yields null). */
  close(): Promise<void>;
  /** Resets the stream at once; pending and later receive()/send() reject. */
  abort(err?: Error): void;
}

export interface ChannelOptions {
  maxFrameBytes?: number;
  /** complete frames held for a slow reader before the stream is paused (default 2 × maxFrameBytes) */
  maxQueuedBytes?: number;
}

interface Waiter {
  resolve(frame: Uint8Array | null): void;
  reject(err: Error): void;
  timer: ReturnType<typeof setTimeout>;
}

export class StreamChannel implements Channel {
  private readonly maxFrameBytes: number;
  private readonly maxQueuedBytes: number;
  private readonly decoder: FrameDecoder;
  private readonly frames: Uint8Array[] = [];
  private queuedBytes = 0;
  private waiter: Waiter | null = null;
  private ended = false;
  private error: Error | null = null;
  private paused = false;

  constructor(
    private readonly stream: Stream,
    opts: ChannelOptions = {},
  ) {
    this.maxFrameBytes = opts.maxFrameBytes ?? DEFAULT_MAX_FRAME_BYTES;
    this.maxQueuedBytes = opts.maxQueuedBytes ?? 2 * this.maxFrameBytes;
    this.decoder = new FrameDecoder(this.maxFrameBytes);
    stream.addEventListener('message', (evt: StreamMessageEvent) => this.onData(evt.data));
    stream.addEventListener('end', () => this.onEnd());
    stream.addEventListener('close', (evt: StreamCloseEvent) => {
      if (evt.error != null) this.fail(evt.error);
      else this.onEnd();
    });
  }

  async send(frame: Uint8Array): Promise<void> {
    if (frame.length > this.maxFrameBytes) {
      throw new Error(`frame of ${frame.length} bytes exceeds the limit of ${this.maxFrameBytes}`);
    }
    if (this.error != null) throw this.error;
    // throws if the stream is closed for writing
    if (!this.stream.send(encodeFrame(frame))) {
      await this.stream.onDrain({ signal: AbortSignal.timeout(DEFAULT_RECEIVE_TIMEOUT_MS) });
    }
  }

  receive(timeoutMs = DEFAULT_RECEIVE_TIMEOUT_MS): Promise<Uint8Array | null> {
    const frame = this.frames.shift();
    if (frame !== undefined) {
      this.queuedBytes -= frame.length;
      this.maybeResume();
      return Promise.resolve(frame);
    }
    if (this.error != null) return Promise.reject(this.error);
    if (this.ended) return Promise.resolve(null);
    if (this.waiter != null) return Promise.reject(new Error('receive() already pending on this channel'));
    return new Promise<Uint8Array | null>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiter = null;
        reject(new Error(`no frame within ${timeoutMs} ms`));
      }, timeoutMs);
      this.waiter = { resolve, reject, timer };
    });
  }

  async close(): Promise<void> {
    if (this.stream.status !== 'open') return;
    try {
      await this.stream.close({ signal: AbortSignal.timeout(DEFAULT_RECEIVE_TIMEOUT_MS) });
    } catch (err) {
      this.stream.abort(err instanceof Error ? err : new Error(String(err)));
    }
  }

  abort(err?: Error): void {
    const e = err ?? new Error('channel aborted');
    this.fail(e);
    this.stream.abort(e);
  }

  private onData(data: StreamMessageEvent['data']): void {
    if (this.error != null) return;
    this.decoder.push(data instanceof Uint8Array ? data : data.subarray());
    try {
      for (let f = this.decoder.next(); f != null; f = this.decoder.next()) this.deliver(f);
    } catch (err) {
      // oversized or malformed prefix from the remote: the stream is unusable
      this.abort(err instanceof Error ? err : new Error(String(err)));
      return;
    }
    if (this.queuedBytes > this.maxQueuedBytes && !this.paused && this.stream.readStatus === 'readable') {
      this.paused = true;
      this.stream.pause();
    }
  }

  private deliver(frame: Uint8Array): void {
    const w = this.waiter;
    if (w != null) {
      this.waiter = null;
      clearTimeout(w.timer);
      w.resolve(frame);
      return;
    }
    this.frames.push(frame);
    this.queuedBytes += frame.length;
  }

  private maybeResume(): void {
    if (this.paused && this.queuedBytes <= this.maxQueuedBytes / 2 && this.stream.readStatus === 'paused') {
      this.paused = false;
      this.stream.resume();
    }
  }

  private onEnd(): void {
    if (this.ended || this.error != null) return;
    // 'end' also fires (before 'close') when the stream is reset: that is not a clean end
    const status = this.stream.status;
    if (status === 'reset' || status === 'aborted') {
      this.fail(new Error(status === 'reset' ? 'stream reset by the remote' : 'stream aborted'));
      return;
    }
    if (this.decoder.midFrame) {
      this.fail(new Error('stream ended in the middle of a frame'));
      return;
    }
    this.ended = true;
    const w = this.waiter;
    if (w != null && this.frames.length === 0) {
      this.waiter = null;
      clearTimeout(w.timer);
      w.resolve(null);
    }
  }

  private fail(err: Error): void {
    if (this.error != null) return;
    this.error = err;
    const w = this.waiter;
    if (w != null) {
      this.waiter = null;
      clearTimeout(w.timer);
      w.reject(err);
    }
  }
}
