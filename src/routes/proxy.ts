import replyFrom from '@fastify/reply-from'
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import { Type } from 'typebox'
import { IdParams, problems } from '../schemas/common.ts'
import { badRequest, ProblemError } from '../services/errors.ts'
import type { Services } from '../services/index.ts'
import { leaseTokenFrom } from '../services/lease-routes.ts'
import { sendProblem } from '../plugins/problem-details.ts'
import { BodyLimit } from '../plugins/request-body.ts'
import { clientGone } from './client-gone.ts'
import { instrumentQueries, noteSessionStatus } from './query-metrics.ts'

/** Credentials meant for the control plane; a session never sees them (it gets its own token instead). */
const STRIPPED_HEADERS = ['x-chroma-token', 'authorization', 'x-api-key', 'cookie']
/**
 * Hop-by-hop headers (RFC 9110 7.6.1) describe one connection, not the message: each
 * side's are its own. `expect` and `upgrade` are answered (or ignored) by this server,
 * and undici refuses to send them.
 */
const HOP_BY_HOP = ['connection', 'keep-alive', 'proxy-connection', 'proxy-authorization', 'proxy-authenticate', 'te', 'trailer', 'transfer-encoding', 'upgrade', 'expect']

/** The headers without the hop-by-hop ones, those named in their own Connection header included. */
export function endToEnd<T extends Record<string, unknown>>(headers: T): T {
  const named = String(headers.connection ?? '')
    .split(',')
    .map((h) => h.trim().toLowerCase())
    .filter(Boolean)
  const out = { ...headers }
  for (const h of [...HOP_BY_HOP, ...named]) delete out[h]
  return out
}
const METHODS = ['GET', 'POST', 'PUT', 'PATCH', 'DELETE'] as const

/**
 * The upstream path for a proxied request, from the raw (undecoded) URL, so that
 * encoded dot segments and slashes are seen for what they are and refused.
 */
export function upstreamPath(rawUrl: string, prefixLength: number): string {
  const path = rawUrl.slice(prefixLength)
  const q = path.indexOf('?')
  const pathname = q < 0 ? path : path.slice(0, q)
  if (!pathname.startsWith('/api/v2/') && pathname !== '/api/v2') {
    throw badRequest('bad_proxy_path', 'the proxy serves the Chroma API under /api/v2/ only')
  }
  const segments = pathname.split('/').slice(1)
  for (const seg of segments) {
    const decoded = seg.replace(/%2e/gi, '.')
    if (decoded === '.' || decoded === '..' || /%2f|%5c|\\/i.test(seg) || seg === '') {
      if (seg === '' && seg === segments.at(-1)) continue // a trailing slash is harmless
      throw badRequest('bad_proxy_path', 'proxy paths may not contain empty, dot or encoded-slash segments')
    }
  }
  return path
}

/**
 * Chroma's HTTP API, streamed to the session a lease token opens, bodies untouched.
 * `/api/v2/*` serves official Chroma clients pointed at the control plane (they
 * ignore URL paths); `/v1/sessions/{id}/chroma/*` serves plain HTTP callers.
 */
export default async function proxyRoutes(
  app: FastifyInstance,
  { services, bodyLimit, timeoutMs }: { services: Services; bodyLimit: number; timeoutMs: number },
) {
  const tooLarge = () => new ProblemError(413, 'payload_too_large', 'Content Too Large', `proxied bodies are limited to ${bodyLimit} bytes`)
  // Bodies pass through as streams: no parsing, no re-encoding, no buffering; counted
  // as they pass, since a chunked body declares no length. Nothing is read before the
  // request is forwarded, so one held for a starting session holds no body in memory.
  app.removeAllContentTypeParsers()
  app.addContentTypeParser('*', (request, payload, done) => {
    if (Number(request.headers['content-length'] ?? 0) > bodyLimit) return done(tooLarge(), undefined)
    done(null, new BodyLimit(bodyLimit, payload))
  })
  instrumentQueries(app, services.metrics, 'proxy')
  await app.register(replyFrom, {
    // A session that does not start answering within the timeout, or stalls that long
    // in the middle of an answer, is cut off (504 before the answer began, a broken
    // response after).
    undici: { connections: 128, pipelining: 1, keepAliveTimeout: 30_000, headersTimeout: timeoutMs, bodyTimeout: timeoutMs },
    disableRequestLogging: true,
  })

  const forward = async (request: FastifyRequest, reply: FastifyReply, sessionId: string | undefined, prefixLength: number) => {
    const path = upstreamPath(request.url, prefixLength)
    const route = await services.holds.route(leaseTokenFrom(request.headers), sessionId, 'proxy', clientGone(reply))
    noteSessionStatus(request, route.sessionStatus)
    if (request.body instanceof BodyLimit) request.body.start()
    return reply.from(`${route.base}${path}`, {
      rewriteRequestHeaders: (_req, headers) => {
        const out = endToEnd(headers)
        for (const h of STRIPPED_HEADERS) delete out[h]
        out['x-chroma-token'] = route.sessionToken
        return out
      },
      rewriteHeaders: (headers) => endToEnd(headers),
      onError: (r, { error }) => {
        const res = r as unknown as FastifyReply
        // The problem handler reads and drops the rest of the body before answering.
        if (request.body instanceof BodyLimit && request.body.exceeded) return res.send(tooLarge())
        request.log.warn({ err: error, sessionId: route.sessionId }, 'proxied request failed')
        if ((error as { statusCode?: number }).statusCode === 504) {
          return sendProblem(res, 504, 'session_timeout', 'Gateway Timeout', `session ${route.sessionId} did not answer within ${timeoutMs / 1000} s`)
        }
        sendProblem(res, 502, 'session_unreachable', 'Bad Gateway', `session ${route.sessionId} did not answer: ${error.message}`)
      },
    })
  }

  const common = () => ({
    tags: ['proxy'],
    security: [{ chromaToken: [] }, { bearer: [] }] as Array<Record<string, string[]>>,
    response: problems(400, 401, 403, 404, 409, 413, 422, 502, 503, 504),
  })
  app.route({
    method: [...METHODS],
    url: '/api/v2/*',
    schema: {
      ...common(),
      summary: "Chroma's API v2 on the session the lease token opens (point official Chroma clients here)",
    },
    handler: (request, reply) => forward(request, reply, undefined, 0),
  })
  app.route({
    method: [...METHODS],
    url: '/v1/sessions/:id/chroma/*',
    schema: {
      ...common(),
      summary: "Chroma's API on this session, e.g. /v1/sessions/{id}/chroma/api/v2/heartbeat",
      params: Type.Object({ ...IdParams.properties, '*': Type.String() }),
    },
    handler: (request, reply) => {
      const id = (request.params as { id: string }).id
      return forward(request, reply, id, `/v1/sessions/${id}/chroma`.length)
    },
  })
}
