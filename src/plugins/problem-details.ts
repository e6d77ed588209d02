import fp from 'fastify-plugin'
import type { FastifyError, FastifyInstance, FastifyReply } from 'fastify'
import { ProblemError } from '../services/errors.ts'

/** Fastify's own client errors, by code, with the stable code we publish for each. */
export const FASTIFY_CODES: Record<string, string> = {
  FST_ERR_CTP_INVALID_JSON_BODY: 'invalid_json',
  FST_ERR_CTP_EMPTY_JSON_BODY: 'invalid_json',
  FST_ERR_CTP_BODY_TOO_LARGE: 'payload_too_large',
  FST_ERR_CTP_INVALID_MEDIA_TYPE: 'unsupported_media_type',
  FST_ERR_CTP_INVALID_CONTENT_LENGTH: 'invalid_content_length',
  FST_ERR_ASYNC_CONSTRAINT: 'bad_request',
  FST_ERR_BAD_URL: 'bad_url',
}

export function sendProblem(reply: FastifyReply, status: number, code: string, title: string, detail: string, extra: Record<string, unknown> = {}) {
  return reply
    .code(status)
    .type('application/problem+json')
    .send({ type: `https://chroma-lease.dev/problems/${code}`, title, status, detail, code, ...extra })
}

/**
 * One error handler: every failure leaves as RFC 9457 problem details with a stable
 * `code`. Client mistakes are 4xx and say what is wrong; anything unexpected is a
 * 500 that says nothing about internals (the log has the stack, with the request id).
 */
export default fp(async function problemDetails(app: FastifyInstance) {
  app.setErrorHandler((err: FastifyError, request, reply) => {
    if (err instanceof ProblemError) {
      return sendProblem(reply, err.status, err.code, err.title, err.message, err.extra)
    }
    if (err.validation) {
      return sendProblem(reply, 400, 'validation_failed', 'Bad Request', validationDetail(err, request.body))
    }
    const status = err.statusCode ?? 500
    if (status >= 400 && status < 500) {
      const code = (err.code && FASTIFY_CODES[err.code]) ?? 'bad_request'
      const detail =
        code === 'unsupported_media_type'
          ? `the API takes JSON bodies: send content-type: application/json (got ${request.headers['content-type'] ? JSON.stringify(request.headers['content-type']) : 'none'})`
          : err.message
      return sendProblem(reply, status, code, httpTitle(status), detail)
    }
    request.log.error({ err }, 'unhandled error')
    return sendProblem(reply, 500, 'internal_error', 'Internal Server Error', 'the control plane failed to handle this request; see its log for the request id')
  })
  app.setNotFoundHandler((request, reply) =>
    sendProblem(reply, 404, 'route_not_found', 'Not Found', `no route ${request.method} ${request.url.split('?')[0]}`),
  )
})

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
    { 400: 'Bad Request', 401: 'Unauthorized', 403: 'Forbidden', 404: 'Not Found', 405: 'Method Not Allowed', 406: 'Not Acceptable', 413: 'Content Too Large', 415: 'Unsupported Media Type', 429: 'Too Many Requests' }[status] ??
    'Client Error'
  )
}
