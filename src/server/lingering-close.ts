/**
 * Closing a connection after an answer given before the request's body was read (401, 408, 413,
 * 429, 503 request_buffer_full, …), without turning that answer into a reset.
 *
 * Node closes a `Connection: close` connection as soon as the answer is written
 * (`socket.destroySoon()`). When the client is still sending its body, closing a socket with
 * unread bytes makes the kernel send RST, and a client that has not yet read the answer sees
 * ECONNRESET or EPIPE instead of the status it should act on (back off, retry elsewhere, shrink
 * the body). Lingering close (as nginx's `lingering_close`): after the answer, send FIN, keep
 * reading and discarding what the client still sends, and close once its body is over, once the
 * client closes its side, or after a bounded time, whichever comes first. Nothing read is kept:
 * memory stays bounded; time and bytes are bounded by `lingerMs`.
 */
import type { IncomingMessage } from 'node:http';
import type { Socket } from 'node:net';

/** how long a refused client may keep sending its body after the answer, ms */
export const LINGER_MS = 2_000;

type ClosableSocket = Socket & { destroySoon?: () => void };

/**
 * Makes the close that follows the answer to `req` a lingering one. Call before answering; the
 * answer must carry `Connection: close` (Node then closes the socket through `destroySoon`).
 */
export function lingerOnClose(req: IncomingMessage, lingerMs = LINGER_MS): void {
  const socket = req.socket as ClosableSocket;
  if (socket.destroyed) return;
  socket.destroySoon = function lingeringClose(this: ClosableSocket): void {
    if (this.destroyed) return;
    // destroy() drops what is not yet written: the answer goes out first
    const close = () => {
      clearTimeout(timer);
      if (this.writableFinished) this.destroy();
      else this.once('finish', () => this.destroy());
    };
    const timer = setTimeout(() => this.destroy(), lingerMs);
    timer.unref();
    this.once('close', () => clearTimeout(timer));
    this.once('end', close);
    // the answer is out (or on its way): half-close, then drain the unread body; a body that
    // ends leaves nothing unread, so closing then sends FIN, not RST
    if (this.writable) this.end();
    if (req.complete) return close();
    req.once('end', close);
    req.removeAllListeners('data');
    req.resume();
  };
}
