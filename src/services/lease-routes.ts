import type { SqlPool } from '../database/client.ts'
import { Prisma } from '../generated/prisma/client.ts'
import type { ChangeFeed } from '../database/change-feed.ts'
import type { SessionStatus } from '../generated/prisma/enums.ts'
import { LeaseTokens } from './auth.ts'
import type { Clock } from './clock.ts'
import { conflict, forbidden, unauthorized } from './errors.ts'

/** Where a lease token's requests go, as the proxy and the query route need it. */
export interface LeaseRoute {
  leaseId: string
  sessionId: string
  ttlSeconds: number
  expiresAt: number
  ended: boolean
  sessionStatus: SessionStatus
  base: string | null
  /** What the session's agent requires: the proxy and the query route send it upstream. */
  sessionToken: string
  cachedAt: number
  renewing?: Promise<void>
}

// A safety net under the change feed: even a missed notification is noticed this soon.
const MAX_ROUTE_AGE_MS = 10_000
const MAX_ENTRIES = 50_000

/**
 * Resolves lease tokens to session endpoints for the proxy's hot path: from memory
 * after the first request, dropped the moment the change feed says the lease ended
 * or the session moved. Proxied use keeps the lease alive (a sliding TTL) with at
 * most one write per third of its TTL.
 */
export class LeaseRouter {
  private readonly routes = new Map<string, LeaseRoute>()
  private readonly bySession = new Map<string, Set<string>>()
  private readonly unsubscribe: () => void

  constructor(
    private readonly sql: SqlPool,
    private readonly clock: Clock,
    changes: ChangeFeed,
    private readonly tokens: LeaseTokens,
  ) {
    // A lease that ended takes only its own route with it; the session's other holders
    // keep theirs. A session that moved drops them all (its address or status changed).
    this.unsubscribe = changes.on((c) => (c.kind === 'lease' ? this.forgetLease(c.sessionId, c.leaseId) : this.forgetSession(c.sessionId)))
  }

  close() {
    this.unsubscribe()
  }

  /**
   * The route for a token, checked against the session it may open (when the path
   * names one). Throws 401 for an unknown, ended or expired lease, 403 for another
   * session, and 409 when the session is not serving.
   */
  async resolve(token: string | undefined, sessionId?: string): Promise<LeaseRoute> {
    if (!token) throw unauthorized('lease_token_required', 'send the lease token as x-chroma-token or Authorization: Bearer')
    const hash = LeaseTokens.hash(token)
    let route = this.routes.get(hash)
    if (!route || Date.now() - route.cachedAt > MAX_ROUTE_AGE_MS) {
      route = await this.load(hash)
    }
    const now = this.clock.now().getTime()
    if (route.ended || route.expiresAt <= now) {
      throw unauthorized('lease_ended', `lease ${route.leaseId} has ${route.ended ? 'ended' : 'expired'}: acquire a new lease (POST /v1/leases) and use its token`)
    }
    if (sessionId !== undefined && route.sessionId !== sessionId) {
      throw forbidden('wrong_session', 'this lease token does not open that session')
    }
    if ((route.sessionStatus !== 'READY' && route.sessionStatus !== 'DRAINING') || route.base === null) {
      throw conflict('session_not_ready', `session ${route.sessionId} is ${route.sessionStatus}`, { sessionStatus: route.sessionStatus })
    }
    this.keepAlive(route, now)
    return route
  }

  private async load(hash: string): Promise<LeaseRoute> {
    const rows = await this.sql.rows<
      { id: string; session_id: string; ttl_seconds: number; expires_at: Date; ended_at: Date | null; status: SessionStatus; host: string | null; port: number | null; generation: number }
    >(Prisma.sql`SELECT l.id, l.session_id, l.ttl_seconds, l.expires_at, l.ended_at, s.status, s.host, s.port, s.generation
      FROM leases l JOIN sessions s ON s.id = l.session_id WHERE l.token_hash = ${hash}`)
    const r = rows[0]
    if (!r) throw unauthorized('invalid_lease_token', 'unknown lease token')
    const route: LeaseRoute = {
      leaseId: r.id,
      sessionId: r.session_id,
      ttlSeconds: r.ttl_seconds,
      expiresAt: r.expires_at.getTime(),
      ended: r.ended_at !== null,
      sessionStatus: r.status,
      base: r.host && r.port ? `http://${r.host}:${r.port}` : null,
      sessionToken: this.tokens.sessionToken(r.session_id, Number(r.generation)),
      cachedAt: Date.now(),
    }
    if (this.routes.size >= MAX_ENTRIES) this.clear()
    this.routes.set(hash, route)
    let hashes = this.bySession.get(route.sessionId)
    if (!hashes) this.bySession.set(route.sessionId, (hashes = new Set()))
    hashes.add(hash)
    return route
  }

  /** Renews once a third of the TTL has passed since the last renewal; never on every request. */
  private keepAlive(route: LeaseRoute, now: number) {
    const renewDue = route.expiresAt - (route.ttlSeconds * 1000 * 2) / 3
    if (now < renewDue || route.renewing) return
    const expiresAt = new Date(now + route.ttlSeconds * 1000)
    route.renewing = this.sql.execute(Prisma.sql`
        UPDATE leases SET expires_at = ${expiresAt}
        WHERE id = ${route.leaseId}::uuid AND ended_at IS NULL AND expires_at > ${new Date(now)}`)
      .then((n) => {
        if (n === 1) route.expiresAt = expiresAt.getTime()
        else route.ended = true
      })
      .catch(() => {}) // the next request tries again
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

/** The lease token from `x-chroma-token` (Chroma's own clients) or `Authorization: Bearer`. */
export function leaseTokenFrom(headers: Record<string, string | string[] | undefined>): string | undefined {
  const chroma = headers['x-chroma-token']
  if (typeof chroma === 'string' && chroma) return chroma
  const auth = headers.authorization
  if (typeof auth === 'string' && auth.toLowerCase().startsWith('bearer ')) return auth.slice(7).trim() || undefined
  return undefined
}
