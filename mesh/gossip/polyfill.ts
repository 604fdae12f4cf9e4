/**
 * libp2p 3 (and its dependencies) call `Promise.withResolvers`, which Node 20 lacks (it arrived in
 * Node 22). This module must be evaluated before any libp2p module: import it as the first import
 * statement of every entry point that loads libp2p (node.ts does). ESM evaluates a module's
 * imports depth-first in source order, so a side-effect import placed first runs first.
 */
interface WithResolvers<T> {
  promise: Promise<T>;
  resolve: (value: T | PromiseLike<T>) => void;
  reject: (reason?: unknown) => void;
}

const P = Promise as unknown as { withResolvers?: <T>() => WithResolvers<T> };

if (typeof P.withResolvers !== 'function') {
  Object.defineProperty(Promise, 'withResolvers', {
    configurable: true,
    writable: true,
    enumerable: false,
    value: function withResolvers<T>(this: PromiseConstructor): WithResolvers<T> {
      let resolve!: (value: T | PromiseLike<T>) => void;
      let reject!: (reason?: unknown) => void;
      const promise = new this<T>((res, rej) => {
        resolve = res;
        reject = rej;
      });
      return { promise, resolve, reject };
    },
  });
}

export {};
