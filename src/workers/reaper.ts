import { Prisma } from '../generated/prisma/client.ts'
import type { Database } from '../database/client.ts'
import type { Clock } from '../services/clock.ts'
import { DB_NOW, EVENT_COLUMNS, eventFromRow, SessionService } from '../services/sessions.ts'
import type { Logger } from 'pino'

export interface ReaperOptions {
  maxSessionSeconds: number
  /** How long a session past its max lifetime may drain before its leases are ended. */
  drainGraceSeconds: number
}

export interface ReapResult {
  leasesExpired: number
  drained: number
  stopped: { id: string; reason: string }[]
}

/**
 * Ends what has run out: leases past their TTL, sessions past their idle TTL or max
 * lifetime. Each step is a conditional update on what the database says now, so two
 * replicas reaping at once, or a reaper that crashed halfway, do no harm.
 */
export class Reaper {
  constructor(
    private readonly db: Database,
    private readonly clock: Clock,
    private readonly sessions: SessionService,
    private readonly opts: ReaperOptions,
    private readonly logger?: Logger,
  ) {}

  async reapOnce(): Promise<ReapResult> {
    const leasesExpired = await this.expireLeases()
    const drained = await this.drainPastMaxLifetime()
    const stopped = await this.reapIdleSessions()
    return { leasesExpired, drained, stopped }
  }

  /**
   * Records expiry of leases past their TTL. They stopped counting at expiry already;
   * this writes it down. Each row is claimed once (`ended_at IS NULL` is checked again
   * on the row the UPDATE locks), so two reapers write one `lease_expired` event per lease.
   */
  async expireLeases(): Promise<number> {
    const now = this.clock.sql
    let expired = 0
    for (;;) {
      const events = await this.db.$queryRaw<Array<Record<string, unknown>>>`
        WITH l AS (
          UPDATE leases SET ended_at = expires_at, end_reason = 'expired'
          WHERE id IN (SELECT id FROM leases WHERE ended_at IS NULL AND expires_at <= ${now} LIMIT ${EXPIRE_BATCH} FOR UPDATE SKIP LOCKED)
            AND ended_at IS NULL
          RETURNING id, session_id, ended_at)
        INSERT INTO session_events (session_id, at, type, lease_id)
        SELECT session_id, ended_at, 'lease_expired', id FROM l
        RETURNING ${EVENT_COLUMNS}`
      this.sessions.announce(events.map(eventFromRow))
      expired += events.length
      if (events.length < EXPIRE_BATCH) return expired
    }
  }

  /** Sessions past MAX_SESSION_SECONDS take no new leases; their holders get drainGraceSeconds to finish. */
  async drainPastMaxLifetime(): Promise<number> {
    const due = await this.db.$queryRaw<Array<{ id: string; generation: number }>>`
      SELECT id, generation FROM sessions
      WHERE status = 'READY' AND mode <> 'warm' AND created_at <= ${this.clock.sql} - make_interval(secs => ${this.opts.maxSessionSeconds})`
    let drained = 0
    for (const s of due) {
      const ok = await this.sessions.transition(s, ['READY'], 'DRAINING', { type: 'draining', reason: 'max_lifetime' }, {
        drainingAt: DB_NOW,
        stopReason: 'max_lifetime',
      })
      if (ok) drained++
    }
    return drained
  }

  /**
   * Stops sessions nobody holds: READY ones idle past their idle TTL (idle since the
   * later of becoming ready and their last lease ending), DRAINING ones as soon as
   * their last lease ends, and max-lifetime ones once their drain grace is over. Walks
   * every candidate, a page at a time (keyset on id), so no count of sessions, leased
   * or not, hides one that is due.
   */
  async reapIdleSessions(): Promise<{ id: string; reason: string }[]> {
    const now = this.clock.sql
    const idle = idleSince(now)
    const graceOver = Prisma.sql`(sessions.stop_reason = 'max_lifetime' AND sessions.draining_at <= ${now} - make_interval(secs => ${this.opts.drainGraceSeconds}))`
    const unleasedAndDue = Prisma.sql`(sessions.status = 'DRAINING' AND ${noLiveLease(now)}) OR ${idle}`
    const stopped: { id: string; reason: string }[] = []
    let after = '00000000-0000-0000-0000-000000000000'
    for (;;) {
      const candidates = await this.db.$queryRaw<Array<{ id: string; generation: number; status: 'READY' | 'DRAINING'; stop_reason: string | null; forced: boolean }>>`
        SELECT sessions.id, sessions.generation, sessions.status, sessions.stop_reason, ${graceOver} AS forced
        FROM sessions
        WHERE sessions.status IN ('READY', 'DRAINING') AND sessions.id > ${after}::uuid
          -- an unclaimed warm agent holds no lease by design: the warm pool sizes and recycles it
          AND (sessions.mode <> 'warm' OR sessions.status = 'DRAINING')
          -- a saveOnRelease session is stopped by the reconciler once its save is done
          AND NOT (sessions.save_on_release AND sessions.saved_snapshot IS NULL AND sessions.stop_reason IS DISTINCT FROM 'max_lifetime')
          AND (${unleasedAndDue} OR ${graceOver})
        ORDER BY sessions.id
        LIMIT ${REAP_PAGE}`
      for (const c of candidates) {
        let ok: boolean
        let reason: string
        if (c.forced) {
          reason = 'max_lifetime'
          ok = await this.sessions.transition(c, ['DRAINING'], 'STOPPING', { type: 'stopping', reason: 'max_lifetime', detail: { forced: true } }, { stoppingAt: DB_NOW }, true)
        } else {
          reason = c.status === 'DRAINING' ? (c.stop_reason === 'max_lifetime' ? 'max_lifetime' : 'drained') : 'idle'
          ok = await this.sessions.stopUnleased(c, reason as 'idle' | 'drained' | 'max_lifetime', c.status === 'DRAINING' ? Prisma.sql`TRUE` : idle)
        }
        if (ok) {
          stopped.push({ id: c.id, reason })
          this.logger?.info({ sessionId: c.id, reason }, 'session stopping')
        }
      }
      if (candidates.length < REAP_PAGE) return stopped
      after = candidates[candidates.length - 1]!.id
    }
  }
}

/** Leases expired per statement, and sessions read per page: small enough never to hold locks for long. */
const EXPIRE_BATCH = 1000
const REAP_PAGE = 500

/** No live lease holds the session (aliased `sessions`) at `now`. */
function noLiveLease(now: Prisma.Sql): Prisma.Sql {
  return Prisma.sql`NOT EXISTS (SELECT 1 FROM leases l WHERE l.session_id = sessions.id AND l.ended_at IS NULL AND l.expires_at > ${now})`
}

/**
 * True when the session (aliased `sessions`) has had no live lease for its idle TTL, and
 * no pin keeps it (POST /v1/pins: a shared pin keeps its snapshot's shared session, an
 * exclusive pin its unclaimed standbys).
 */
function idleSince(now: Prisma.Sql): Prisma.Sql {
  return Prisma.sql`(
    ${noLiveLease(now)}
    AND NOT EXISTS (SELECT 1 FROM pins p WHERE (p.mode = 'shared' AND sessions.mode = 'shared' AND p.snapshot = sessions.pool_key)
                                            OR (p.id = sessions.pin_id AND sessions.claimed_at IS NULL))
    AND GREATEST(sessions.ready_at,
                 (SELECT max(LEAST(COALESCE(l.ended_at, l.expires_at), l.expires_at)) FROM leases l WHERE l.session_id = sessions.id))
        + make_interval(secs => sessions.idle_ttl_seconds) <= ${now})`
}
