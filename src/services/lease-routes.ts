import { isDatabaseUnavailable, type SqlPool } from '../database/client.ts'
import { Prisma } from '../generated/prisma/client.ts'
import type { Change, ChangeFeed } from '../database/change-feed.ts'
import type { SessionStatus } from '../generated/prisma/enums.ts'
import { LeaseTokens } from './auth.ts'
import type { Clock } from './clock.ts'
import { conflict, forbidden, unauthorized } from './errors.ts'
import { STARTING_STATUSES } from './sessions.ts'

/** Where a lease token's requests go, as the proxy and the query route need it. */
export interface LeaseRoute {
  leaseId: string
  sessionId: string
  ttlSeconds: number
  /** The lease's expiry as the database last returned it. */
  expiresAt: number
  ended: boolean
  sessionStatus: SessionStatus
  base: string | null
  /** What the session's agent requires: the proxy and the query route send it upstream. */
  sessionToken: string
  /** When it was read (Date.now(), for its age) and the clock's time then (for its expiry). */
  cachedAt: number
  checkedAt: number
  /**
   * How far this process's estimate of the database's clock was ahead of Postgres's own
   * at the read: the estimate can be off by seconds (a replica paused mid-sync), so
   * expiries are judged on the estimate corrected by it.
   */
  skewMs: number
  renewing?: Promise<void>
  /** After a failed keep-alive write (Date.now()). */
  retryRenewAt?: number
}

// A safety net under the change feed: even a missed notification is noticed this soon.
const MAX_ROUTE_AGE_MS = 10_000
const MAX_ENTRIES = 50_000
// How soon a read or a keep-alive write that found the database away is tried again.
const RETRY_MS = 1_000
// A load that a change for its lease or session overtook is read again, this many times at most.
const MAX_LOAD_ATTEMPTS = 3

/**
 * Resolves lease tokens to session endpoints for the proxy's hot path: from memory
 * after the first request, dropped the moment the change feed says the lease ended
 * or the session moved. Proxied use keeps the lease alive (a sliding TTL) with at
 * most one write per third of its TTL.
 */
export class LeaseRouter {
  private readonly routes = new Map<string, LeaseRoute>()
  private readonly bySession = new Map<string, Set<string>>()
  /** The changes seen by each load in flight: one that concerns what it read makes it read again. */
  private readonly loading = new Set<Change[]>()
  private readonly unsubscribe: () => void

  constructor(
    private readonly sql: SqlPool,
    private readonly clock: Clock,
    changes: ChangeFeed,
    private readonly tokens: LeaseTokens,
  ) {
    // A lease that ended takes only its own route with it; the session's other holders
    // keep theirs. A session that moved drops them all (its address or status changed).
    this.unsubscribe = changes.on((c) => {
      for (const seen of this.loading) seen.push(c)
      if (c.kind === 'lease') this.forgetLease(c.sessionId, c.leaseId)
      else this.forgetSession(c.sessionId)
    })
  }

  close() {
    this.unsubscribe()
  }

  /** Waits for the keep-alive writes in flight (shutdown, tests). */
  async flush() {
    await Promise.all([...this.routes.values()].map((r) => r.renewing))
  }

  /**
   * The route for a token, checked against the session it may open (when the path
   * names one). Throws 401 for an unknown, ended or expired lease, 403 for another
   * session, and 409 when the session is not serving.
   */
  async resolve(token: string | undefined, sessionId?: string): Promise<LeaseRoute> {
    const route = await this.resolveOrStarting(token, sessionId)
    if (isStarting(route)) throw notReady(route)
    return route
  }

  /**
   * As resolve, except that a session still starting (PENDING, STARTING) is not refused:
   * its route is returned, for a caller that waits for it (RequestHold), and the lease
   * is kept alive as by proxied use. Such a route is never served from the cache, so a
   * caller that asks again sees the session's status as the database has it now.
   */
  async resolveOrStarting(token: string | undefined, sessionId?: string): Promise<LeaseRoute> {
    if (!token) throw unauthorized('lease_token_required', 'send the lease token as x-chroma-token or Authorization: Bearer')
    const hash = LeaseTokens.hash(token)
    let route = this.routes.get(hash)
    let now = route ? this.clock.now().getTime() - route.skewMs : 0
    // An expiry seen only in the cache is checked against the database before it is
    // refused: another replica may have renewed the lease (renewals send no notification).
    const expiredUnconfirmed = route !== undefined && !route.ended && route.expiresAt <= now && route.checkedAt < route.expiresAt
    // A cached status that is not serving is read again: the notification of its READY may
    // not have arrived yet, and a caller waiting for READY must not be told it still is not.
    if (!route || Date.now() - route.cachedAt > MAX_ROUTE_AGE_MS || expiredUnconfirmed || !isServing(route)) {
      const cached = route
      try {
        route = await this.load(hash)
      } catch (err) {
        // The data path outlives a database outage: a route authorised before it keeps
        // serving on what the cache knows (its expiry included), re-read once a second.
        if (!cached || expiredUnconfirmed || !isDatabaseUnavailable(err)) throw err
        cached.cachedAt = Date.now() - MAX_ROUTE_AGE_MS + RETRY_MS
        route = cached
      }
      now = this.clock.now().getTime() - route.skewMs
    }
    if (route.ended || route.expiresAt <= now) {
      throw unauthorized('lease_ended', `lease ${route.leaseId} has ${route.ended ? 'ended' : 'expired'}: acquire a new lease (POST /v1/leases) and use its token`)
    }
    if (sessionId !== undefined && route.sessionId !== sessionId) {
      throw forbidden('wrong_session', 'this lease token does not open that session')
    }
    if (!isServing(route) && !isStarting(route)) throw notReady(route)
    this.keepAlive(route, now)
    return route
  }

  /**
   * Reads a route and caches it, unless a change to its lease or session arrived while
   * it was being read: the row may predate that change, so it is read again.
   */
  private async load(hash: string): Promise<LeaseRoute> {
    for (let attempt = 1; ; attempt++) {
      const seen: Change[] = []
      this.loading.add(seen)
      let route: LeaseRoute
      try {
        route = await this.read(hash)
      } finally {
        this.loading.delete(seen)
      }
      const overtaken = seen.some((c) => c.sessionId === route.sessionId && (c.kind === 'session' || c.leaseId === route.leaseId))
      if (!overtaken) {
        this.remember(hash, route)
        return route
      }
      if (attempt >= MAX_LOAD_ATTEMPTS) return route // changing as we read: serve this request, cache nothing
    }
  }

  private async read(hash: string): Promise<LeaseRoute> {
    const rows = await this.sql.rows<
      { id: string; session_id: string; ttl_seconds: number; expires_at: Date; ended_at: Date | null; db_now: Date; status: SessionStatus; host: string | null; port: number | null; generation: number }
    >(Prisma.sql`SELECT l.id, l.session_id, l.ttl_seconds, l.expires_at, l.ended_at, ${this.clock.sql} AS db_now, s.status, s.host, s.port, s.generation
      FROM leases l JOIN sessions s ON s.id = l.session_id WHERE l.token_hash = ${hash}`)
    const r = rows[0]
    if (!r) throw unauthorized('invalid_lease_token', 'unknown lease token')
    return {
      leaseId: r.id,
      sessionId: r.session_id,
      ttlSeconds: r.ttl_seconds,
      expiresAt: r.expires_at.getTime(),
      ended: r.ended_at !== null,
      sessionStatus: r.status,
      base: r.host && r.port ? `http://${r.host}:${r.port}` : null,
      sessionToken: this.tokens.sessionToken(r.session_id, Number(r.generation)),
      cachedAt: Date.now(),
      checkedAt: r.db_now.getTime(),
      skewMs: this.clock.now().getTime() - r.db_now.getTime(),
    }
  }

  private remember(hash: string, route: LeaseRoute) {
    if (this.routes.size >= MAX_ENTRIES) this.clear()
    this.routes.set(hash, route)
    let hashes = this.bySession.get(route.sessionId)
    if (!hashes) this.bySession.set(route.sessionId, (hashes = new Set()))
    hashes.add(hash)
  }

  /**
   * Renews once a third of the TTL has passed since the last renewal; never on every
   * request. The new expiry is computed by Postgres and never earlier than the one the
   * lease has (a renew elsewhere may have set a later one), and the cache takes it.
   */
  private keepAlive(route: LeaseRoute, now: number) {
    const renewDue = route.expiresAt - (route.ttlSeconds * 1000 * 2) / 3
    if (now < renewDue || route.renewing || Date.now() < (route.retryRenewAt ?? 0)) return
    route.renewing = this.sql
      .rows<{ expires_at: Date; ttl_seconds: number }>(Prisma.sql`
        UPDATE leases SET expires_at = GREATEST(expires_at, ${this.clock.sql} + make_interval(secs => ttl_seconds))
        WHERE id = ${route.leaseId}::uuid AND ended_at IS NULL AND expires_at > ${this.clock.sql}
        RETURNING expires_at, ttl_seconds`)
      .then(([row]) => {
        if (!row) {
          route.ended = true
          return
        }
        route.expiresAt = row.expires_at.getTime()
        route.ttlSeconds = row.ttl_seconds
        route.checkedAt = this.clock.now().getTime() - route.skewMs
      })
      .catch(() => {
        route.retryRenewAt = Date.now() + RETRY_MS // a request after that tries again
      })
      .finally(() => {
        route.renewing = undefined
      })
  }

  private forgetSession(sessionId: string) {
    const hashes = this.bySession.get(sessionId)
    if (!hashes) return
    for (const h of hashes) this.routes.delete(h)
    this.bySession.delete(sessionId)
  }

  private forgetLease(sessionId: string, leaseId: string) {
    const hashes = this.bySession.get(sessionId)
    if (!hashes) return
    for (const h of hashes) {
      if (this.routes.get(h)?.leaseId !== leaseId) continue
      this.routes.delete(h)
      hashes.delete(h)
    }
  }

  private clear() {
    this.routes.clear()
    this.bySession.clear()
  }
}

/** A route the proxy can forward to: its session serves and has an address. */
function isServing(route: LeaseRoute): boolean {
  return (route.sessionStatus === 'READY' || route.sessionStatus === 'DRAINING') && route.base !== null
}

/** A route whose session is on its way to READY. */
export function isStarting(route: LeaseRoute): boolean {
  return STARTING_STATUSES.includes(route.sessionStatus)
}

const notReady = (route: LeaseRoute) =>
  conflict('session_not_ready', `session ${route.sessionId} is ${route.sessionStatus}`, { sessionStatus: route.sessionStatus })

/** The lease token from `x-chroma-token` (Chroma's own clients) or `Authorization: Bearer`. */
export function leaseTokenFrom(headers: Record<string, string | string[] | undefined>): string | undefined {
  const chroma = headers['x-chroma-token']
  if (typeof chroma === 'string' && chroma) return chroma
  const auth = headers.authorization
  if (typeof auth === 'string' && auth.toLowerCase().startsWith('bearer ')) return auth.slice(7).trim() || undefined
  return undefined
}
