import type { FastifyInstance, FastifyRequest } from 'fastify'
import { ProblemError } from '../services/errors.ts'
import type { Metrics, QueryKind, QueryOutcome } from '../services/metrics.ts'

const sessionStatusOf = new WeakMap<FastifyRequest, string>()

/** Tells the query metrics the status of the session a request was routed to. */
export function noteSessionStatus(request: FastifyRequest, status: string): void {
  sessionStatusOf.set(request, status)
}

export function queryOutcome(statusCode: number, sessionStatus?: string): QueryOutcome {
  if (statusCode < 400) return 'ok'
  if (statusCode === 401 || statusCode === 403) return 'denied'
  if (statusCode === 409) return 'not_ready'
  // A hold that ran out or was full (503 session_starting, too_many_held_requests).
  if (statusCode === 503 && (sessionStatus === 'PENDING' || sessionStatus === 'STARTING')) return 'not_ready'
  if (statusCode >= 500) return 'upstream_error'
  return 'client_error'
}

/**
 * Times every request of the routes in this (encapsulated) plugin as a query of `kind`,
 * from its arrival until its response is fully sent or the client hangs up, labelled
 * with the routed session's status (`unknown` when the token resolved to none) and the
 * outcome. The in-flight gauge follows the socket, so a client that hangs up is not
 * counted forever.
 */
export function instrumentQueries(app: FastifyInstance, metrics: Metrics, kind: QueryKind): void {
  app.addHook('onRequest', async (request, reply) => {
    const started = performance.now()
    let finished = false
    metrics.queriesInFlight.inc({ kind })
    reply.raw.once('finish', () => {
      finished = true
    })
    reply.raw.once('close', () => {
      metrics.queriesInFlight.dec({ kind })
      const sessionStatus = sessionStatusOf.get(request) ?? 'unknown'
      metrics.queryDuration.observe(
        { kind, session_status: sessionStatus, outcome: finished ? queryOutcome(reply.statusCode, sessionStatus) : 'aborted' },
        (performance.now() - started) / 1000,
      )
    })
  })
  // A session that is not serving is refused with its status in the problem (409 session_not_ready, 503 session_starting).
  app.addHook('onError', async (request, _reply, error) => {
    const status = error instanceof ProblemError ? error.extra.sessionStatus : undefined
    if (typeof status === 'string' && !sessionStatusOf.has(request)) sessionStatusOf.set(request, status)
  })
}
