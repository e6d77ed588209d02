import { nextSessionChange, type ChangeFeed } from '../database/change-feed.ts'
import { ProblemError } from './errors.ts'
import { isStarting, type LeaseRoute, type LeaseRouter } from './lease-routes.ts'
import { SETTLE_RECHECK_MS } from './leases.ts'
import { noObserver, type HoldOutcome, type Observer, type QueryKind } from './metrics.ts'
import { sessionFailedProblem } from './session-failure.ts'
import type { SessionService } from './sessions.ts'

export interface HoldSettings {
  /** How long a request waits for a starting session (PROXY_HOLD_SECONDS); 0: not at all, 409 session_not_ready. */
  holdSeconds: number
  /** Requests held at once per session on this replica (PROXY_HOLD_MAX_PER_SESSION); more get 503. */
  maxPerSession: number
}

/** Under Step Functions' 60 s HTTP Task limit; 64 held requests of a session cost a few MiB at most. */
export const DEFAULT_HOLD_SETTINGS: HoldSettings = { holdSeconds: 50, maxPerSession: 64 }

/** What a request refused while its session starts is asked to wait before it retries. */
const STARTING_RETRY_AFTER_SECONDS = 5
/** A replica shutting down lets its held requests go at once: a retry reaches another replica. */
const CLOSING_RETRY_AFTER_SECONDS = 1

/**
 * Holds proxied requests and queries whose session is still starting (PENDING,
 * STARTING) until it serves, instead of refusing them: a caller that acquired without
 * waiting (or whose long-poll ran out) can send its first query at once. The wait is
 * the acquire long-poll's (a change notification for the session, or a re-read each
 * second), on the route itself, so the lease is checked and kept alive while held.
 * Bounded in time (holdSeconds), in count (maxPerSession, per replica), and in memory:
 * a held request's body is not read until it is forwarded (src/routes/proxy.ts).
 */
export class RequestHold {
  private readonly heldPerSession = new Map<string, number>()
  private readonly closing = new AbortController()

  constructor(
    private readonly deps: {
      router: LeaseRouter
      sessions: SessionService
      changes: ChangeFeed
      settings: HoldSettings
      observer?: Observer
    },
  ) {}

  /** Lets every held request go (503 session_starting, Retry-After 1 s), now and from now on: the app is closing. */
  close(): void {
    this.closing.abort()
  }

  /**
   * The route for a token (LeaseRouter.resolve), held while its session is starting.
   * `signal` aborts the hold: the client hung up. Throws resolve's problems, the
   * session's failure (sessionFailedProblem) when it fails while held, 503
   * session_starting when it is still starting after holdSeconds, and 503
   * too_many_held_requests when maxPerSession requests of the session are held already.
   */
  async route(token: string | undefined, sessionId: string | undefined, kind: QueryKind, signal?: AbortSignal): Promise<LeaseRoute> {
    const { router, settings } = this.deps
    if (settings.holdSeconds <= 0) return router.resolve(token, sessionId)
    const first = await router.resolveOrStarting(token, sessionId)
    if (!isStarting(first)) return first
    return this.hold(first, token, sessionId, kind, signal)
  }

  private async hold(first: LeaseRoute, token: string | undefined, sessionId: string | undefined, kind: QueryKind, signal?: AbortSignal): Promise<LeaseRoute> {
    const { router, sessions, changes, settings } = this.deps
    const observer = this.deps.observer ?? noObserver
    const started = performance.now()
    const id = first.sessionId
    const held = this.heldPerSession.get(id) ?? 0
    if (held >= settings.maxPerSession) {
      observer.holdEnded?.({ kind, outcome: 'rejected', seconds: 0 })
      throw new ProblemError(
        503,
        'too_many_held_requests',
        'Service Unavailable',
        `session ${id} is ${first.sessionStatus} and ${held} requests are already waiting for it here (PROXY_HOLD_MAX_PER_SESSION); retry after the Retry-After seconds`,
        { sessionId: id, sessionStatus: first.sessionStatus },
        STARTING_RETRY_AFTER_SECONDS,
      )
    }
    this.heldPerSession.set(id, held + 1)
    observer.holdStarted?.(kind)
    let outcome: HoldOutcome = 'ended'
    try {
      const deadline = Date.now() + settings.holdSeconds * 1000
      const wakers = signal ? [signal, this.closing.signal] : [this.closing.signal]
      let route = first
      while (isStarting(route)) {
        if (this.closing.signal.aborted) {
          outcome = 'closing'
          throw stillStarting(route, 'this replica is shutting down; retry', CLOSING_RETRY_AFTER_SECONDS)
        }
        if (signal?.aborted) {
          outcome = 'abandoned'
          throw stillStarting(route, 'the client went away while it was held', STARTING_RETRY_AFTER_SECONDS)
        }
        const remaining = deadline - Date.now()
        if (remaining <= 0) {
          outcome = 'timeout'
          throw stillStarting(route, `it is still ${route.sessionStatus} after ${settings.holdSeconds} s (PROXY_HOLD_SECONDS)`, STARTING_RETRY_AFTER_SECONDS)
        }
        await nextSessionChange(changes, id, Math.min(remaining, SETTLE_RECHECK_MS), wakers)
        try {
          // A starting route is never served from the router's cache: this reads the database.
          route = await router.resolveOrStarting(token, sessionId)
        } catch (err) {
          // Failing ends the session's leases in the same transaction: the lease's end is
          // how a held request first sees it, and the session's failure is its answer.
          if (err instanceof ProblemError && (err.code === 'lease_ended' || err.code === 'session_not_ready')) {
            const session = await sessions.get(id)
            if (session.status === 'FAILED') {
              outcome = 'failed'
              throw sessionFailedProblem(session, route.leaseId)
            }
          }
          throw err
        }
      }
      outcome = 'served'
      return route
    } finally {
      const left = (this.heldPerSession.get(id) ?? 1) - 1
      if (left > 0) this.heldPerSession.set(id, left)
      else this.heldPerSession.delete(id)
      observer.holdEnded?.({ kind, outcome, seconds: (performance.now() - started) / 1000 })
    }
  }
}

const stillStarting = (route: LeaseRoute, why: string, retryAfterSeconds: number) =>
  new ProblemError(
    503,
    'session_starting',
    'Service Unavailable',
    `session ${route.sessionId} is not serving yet: ${why}; retry after the Retry-After seconds`,
    { sessionId: route.sessionId, sessionStatus: route.sessionStatus },
    retryAfterSeconds,
  )
