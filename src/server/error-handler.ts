/**
 * The one place errors become responses: SMG's OpenAI-style envelope plus `X-SMG-Error-Code`.
 * Worker admin routes use SMG's flat `{error, code}` body instead. Nothing escapes as a crash:
 * unknown errors are a logged 500.
 */
import type { FastifyError, FastifyReply, FastifyRequest } from 'fastify';
import { errorEnvelope, errors, SmgError } from '../protocols/errors.js';

function toSmgError(err: FastifyError | Error, bodyLimit: number): SmgError {
  if (err instanceof SmgError) return err;
  const code = (err as FastifyError).code;
  if (code === 'FST_ERR_CTP_BODY_TOO_LARGE') return errors.payloadTooLarge(bodyLimit);
  if (code === 'FST_ERR_CTP_INVALID_MEDIA_TYPE') return errors.unsupportedMediaType('unknown');
  if (code === 'FST_ERR_CTP_EMPTY_JSON_BODY') return errors.invalidJson('request body is empty');
  if (code === 'FST_ERR_CTP_INVALID_CONTENT_LENGTH') return errors.invalidRequest('invalid content-length');
  const status = (err as FastifyError).statusCode;
  if (status && status >= 400 && status < 500) return new SmgError(status, 'invalid_request', err.message);
  return errors.internal();
}

export function makeErrorHandler(bodyLimit: number) {
  return function errorHandler(err: FastifyError | Error, request: FastifyRequest, reply: FastifyReply) {
    // a route may set its own limit; the message names the one that applied
    const e = toSmgError(err, request.routeOptions.bodyLimit ?? bodyLimit);
    if (e.status >= 500 && !(err instanceof SmgError)) request.log.error({ err }, 'unhandled error');
    reply.code(e.status);
    reply.header('x-smg-error-code', e.code);
    for (const [k, v] of Object.entries(e.headers)) reply.header(k, v);
    if (request.url.startsWith('/workers')) return reply.send({ error: e.message, code: e.code });
    return reply.send(errorEnvelope(e.status, e.code, e.message));
  };
}
