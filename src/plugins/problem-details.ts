import fp from 'fastify-plugin'
import type { FastifyError, FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import { isDatabaseUnavailable } from '../database/client.ts'
import { ProblemError } from '../services/errors.ts'
import { discardRequestBody } from './request-body.ts'

/** Fastify's own client errors, by code, with the stable code we publish for each. */
export const FASTIFY_CODES: Record<string, string> = {
  FST_ERR_CTP_INVALID_JSON_BODY: 'invalid_json',
  FST_ERR_CTP_EMPTY_JSON_BODY: 'invalid_json',
  FST_ERR_CTP_BODY_TOO_LARGE: 'payload_too_large',
  FST_ERR_CTP_INVALID_MEDIA_TYPE: 'unsupported_media_type',
  FST_ERR_CTP_INVALID_CONTENT_LENGTH: 'invalid_content_length',
  FST_ERR_ASYNC_CONSTRAINT: 'bad_request',
  FST_ERR_BAD_URL: 'bad_url',
  FST_ERR_MAX_PARAM_LENGTH: 'uri_too_long',
}

/** What a 503 database_unavailable asks clients to wait: a Postgres restart or failover takes seconds. */
export const DATABASE_RETRY_AFTER_SECONDS = 5

export function sendProblem(reply: FastifyReply, status: number, code: string, title: string, detail: string, extra: Record<string, unknown> = {}) {
  return reply
    .code(status)
    .type('application/problem+json')
    .send({ type: `https://chroma-lease.dev/problems/${code}`, title, status, detail, code, ...extra })
}

/**
 * Errors the router raises before any route or error handler runs (a malformed or
 * too long URL): Fastify's `frameworkErrors` option, so they leave as problems too.
 */
export function frameworkProblem(err: FastifyError, _request: unknown, reply: FastifyReply) {
  const status = err.statusCode ?? 400
  return sendProblem(reply, status, (err.code && FASTIFY_CODES[err.code]) ?? 'bad_request', httpTitle(status), err.message)
}

/**
 * One error handler: every failure leaves as RFC 9457 problem details with a stable
 * `code`. Client mistakes are 4xx and say what is wrong; anything unexpected is a
 * 500 that says nothing about internals (the log has the stack, with the request id).
 */
export default fp(async function problemDetails(app: FastifyInstance) {
  app.setErrorHandler(async (err: FastifyError, request, reply) => {
    if (isDatabaseUnavailable(err)) {
      // An outage, not a bug: the client retries, and the pools reconnect by themselves.
      request.log.warn({ err }, 'database unavailable')
      reply.header('retry-after', String(DATABASE_RETRY_AFTER_SECONDS))
      return sendProblem(reply, 503, 'database_unavailable', 'Service Unavailable', 'the database cannot be reached right now; retry after the Retry-After seconds')
    }
    const p = toProblem(err, request)
    if (p.status === 500) request.log.error({ err }, 'unhandled error')
    // A body too large was not read: read and drop the rest first, so that a client
    // still sending it gets this answer instead of a broken pipe.
    if (p.status === 413 && !(await discardRequestBody(request.raw))) reply.header('connection', 'close')
    if (err instanceof ProblemError && err.retryAfterSeconds !== undefined) reply.header('retry-after', String(err.retryAfterSeconds))
    return sendProblem(reply, p.status, p.code, p.title, p.detail, p.extra)
  })
  app.setNotFoundHandler((request, reply) =>
    sendProblem(reply, 404, 'route_not_found', 'Not Found', `no route ${request.method} ${request.url.split('?')[0]}`),
  )
})

function toProblem(err: FastifyError, request: FastifyRequest): { status: number; code: string; title: string; detail: string; extra?: Record<string, unknown> } {
  if (err instanceof ProblemError) return { status: err.status, code: err.code, title: err.title, detail: err.message, extra: err.extra }
  if (err.validation) return { status: 400, code: 'validation_failed', title: 'Bad Request', detail: validationDetail(err, request.body) }
  const status = err.statusCode ?? 500
  if (status >= 400 && status < 500) {
    const code = (err.code && FASTIFY_CODES[err.code]) ?? 'bad_request'
    const detail =
      code === 'unsupported_media_type'
        ? `the API takes JSON bodies: send content-type: application/json (got ${request.headers['content-type'] ? JSON.stringify(request.headers['content-type']) : 'none'})`
        : err.message
    return { status, code, title: httpTitle(status), detail }
  }
  return { status: 500, code: 'internal_error', title: 'Internal Server Error', detail: 'the control plane failed to handle this request; see its log for the request id' }
}

/** What is wrong with the request, naming the field: an unknown one by its name, a missing body by what to send. */
function validationDetail(err: FastifyError, body: unknown): string {
  const context = err.validationContext ?? 'request'
  const first = err.validation?.[0] as { keyword?: string; instancePath?: string; params?: { additionalProperty?: string } } | undefined
  if (context === 'body' && body === undefined) return 'the request has no body: send a JSON object with content-type: application/json'
  if (first?.keyword === 'additionalProperties' && first.params?.additionalProperty !== undefined) {
    return `${context}${first.instancePath ?? ''} has an unknown field ${JSON.stringify(first.params.additionalProperty)}; check its spelling against the API (/docs)`
  }
  return `${context} ${err.message.replace(/^(body|querystring|params|headers)\s*/, '')}`
}

function httpTitle(status: number): string {
  return (
    { 400: 'Bad Request', 401: 'Unauthorized', 403: 'Forbidden', 404: 'Not Found', 405: 'Method Not Allowed', 406: 'Not Acceptable', 413: 'Content Too Large', 414: 'URI Too Long', 415: 'Unsupported Media Type', 429: 'Too Many Requests' }[status] ??
    'Client Error'
  )
}
