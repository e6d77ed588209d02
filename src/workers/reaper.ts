import { Prisma } from '../generated/prisma/client.ts'
import type { Database } from '../database/client.ts'
import type { Clock } from '../services/clock.ts'
import { EVENT_COLUMNS, eventFromRow, SessionService } from '../services/sessions.ts'
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

  /** Records expiry of leases past their TTL. They stopped counting at expiry already; this writes it down. */
  async expireLeases(): Promise<number> {
    const now = this.clock.now()
    const events = await this.db.$queryRaw<Array<Record<string, unknown>>>`
      WITH l AS (
        UPDATE leases SET ended_at = expires_at, end_reason = 'expired'
        WHERE id IN (SELECT id FROM leases WHERE ended_at IS NULL AND expires_at <= ${now} LIMIT 5000)
        RETURNING id, session_id, ended_at)
      INSERT INTO session_events (session_id, at, type, lease_id)
      SELECT session_id, ended_at, 'lease_expired', id FROM l
      RETURNING ${EVENT_COLUMNS}`
    this.sessions.announce(events.map(eventFromRow))
    return events.length
  }

  /** Sessions past MAX_SESSION_SECONDS take no new leases; their holders get drainGraceSeconds to finish. */
  async drainPastMaxLifetime(): Promise<number> {
    const now = this.clock.now()
    const due = await this.db.session.findMany({
      where: { status: 'READY', createdAt: { lte: new Date(now.getTime() - this.opts.maxSessionSeconds * 1000) } },
      select: { id: true, generation: true },
    })
    let drained = 0
    for (const s of due) {
      const ok = await this.sessions.transition(s, ['READY'], 'DRAINING', { type: 'draining', reason: 'max_lifetime' }, {
        drainingAt: now,
        stopReason: 'max_lifetime',
      })
      if (ok) drained++
    }
    return drained
  }

  /**
   * Stops sessions nobody holds: READY ones idle past their idle TTL (idle since the
   * later of becoming ready and their last lease ending), DRAINING ones as soon as
   * their last lease ends, and max-lifetime ones once their drain grace is over.
   */
  async reapIdleSessions(): Promise<{ id: string; reason: string }[]> {
    const now = this.clock.now()
    const idle = idleSince(now)
    const unleasedAndDue = Prisma.sql`(sessions.status = 'DRAINING' OR ${idle})`
    const candidates = await this.db.$queryRaw<Array<{ id: string; generation: number; status: 'READY' | 'DRAINING'; stop_reason: string | null; forced: boolean }>>`
      SELECT sessions.id, sessions.generation, sessions.status, sessions.stop_reason,
             (sessions.stop_reason = 'max_lifetime' AND sessions.draining_at <= ${new Date(now.getTime() - this.opts.drainGraceSeconds * 1000)}) AS forced
      FROM sessions
      WHERE sessions.status IN ('READY', 'DRAINING')
        -- a saveOnRelease session is stopped by the reconciler once its save is done
        AND NOT (sessions.save_on_release AND sessions.saved_snapshot IS NULL AND sessions.stop_reason IS DISTINCT FROM 'max_lifetime')
        AND (${unleasedAndDue} OR (sessions.stop_reason = 'max_lifetime' AND sessions.draining_at <= ${new Date(now.getTime() - this.opts.drainGraceSeconds * 1000)}))
      LIMIT 500`
    const stopped: { id: string; reason: string }[] = []
    for (const c of candidates) {
      let ok: boolean
      let reason: string
      if (c.forced) {
        reason = 'max_lifetime'
        ok = await this.sessions.transition(c, ['DRAINING'], 'STOPPING', { type: 'stopping', reason: 'max_lifetime', detail: { forced: true } }, { stoppingAt: now }, true)
      } else {
        reason = c.status === 'DRAINING' ? (c.stop_reason === 'max_lifetime' ? 'max_lifetime' : 'drained') : 'idle'
        ok = await this.sessions.stopUnleased(c, reason as 'idle' | 'drained' | 'max_lifetime', c.status === 'DRAINING' ? Prisma.sql`TRUE` : idle)
      }
      if (ok) {
        stopped.push({ id: c.id, reason })
        this.logger?.info({ sessionId: c.id, reason }, 'session stopping')
      }
    }
    return stopped
  }
}

/** True when the session (aliased `sessions`) has had no live lease for its idle TTL. */
function idleSince(now: Date): Prisma.Sql {
  return Prisma.sql`(
    NOT EXISTS (SELECT 1 FROM leases l WHERE l.session_id = sessions.id AND l.ended_at IS NULL AND l.expires_at > ${now})
    AND GREATEST(sessions.ready_at,
                 (SELECT max(LEAST(COALESCE(l.ended_at, l.expires_at), l.expires_at)) FROM leases l WHERE l.session_id = sessions.id))
        + make_interval(secs => sessions.idle_ttl_seconds) <= ${now})`
}
