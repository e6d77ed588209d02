import { Prisma } from '../generated/prisma/client.ts'
import type { SqlPool } from '../database/client.ts'
import { leaseShares } from './cost-report.ts'
import type { FargatePrices } from './cost.ts'

export interface PurgeResult {
  sessions: number
  leases: number
  events: number
}

/**
 * Retention: the leases (with their idempotency keys) and events of sessions that ended
 * more than `olderThanDays` ago go, their cost shares kept as rollups (cost_rollups), so
 * GET /v1/costs answers as before. Only STOPPED and FAILED sessions qualify, and always
 * with all their leases, so a live session's rows, and the shares of the leases that stay,
 * are untouched. Session rows themselves stay.
 */
export class RetentionService {
  constructor(
    private readonly sql: SqlPool,
    private readonly prices: FargatePrices,
  ) {}

  /**
   * One small batch, in one statement: the sessions are locked with SKIP LOCKED (another
   * replica purging at the same time takes other sessions; acquires never attach to an
   * ended session, so they never wait on these locks), their leases and events deleted,
   * and the deleted leases' shares inserted as rollups, all or nothing. The age is
   * compared with the clock's SQL (Postgres's now() in production).
   */
  async purgeBatch(olderThanDays: number, batchSize: number, now: Prisma.Sql): Promise<PurgeResult> {
    const [row] = await this.sql.rows<PurgeResult>(Prisma.sql`
      WITH batch AS (
        SELECT s.id FROM sessions s
        WHERE s.status IN ('STOPPED', 'FAILED') AND s.ended_at < ${now} - make_interval(days => ${olderThanDays}::int)
          AND (EXISTS (SELECT 1 FROM leases l WHERE l.session_id = s.id) OR EXISTS (SELECT 1 FROM session_events e WHERE e.session_id = s.id))
        ORDER BY s.ended_at
        LIMIT ${batchSize}
        FOR UPDATE OF s SKIP LOCKED),
      gone AS (DELETE FROM leases WHERE session_id IN (SELECT id FROM batch) RETURNING *),
      events AS (DELETE FROM session_events WHERE session_id IN (SELECT id FROM batch) RETURNING 1),
      shares AS (${leaseShares(Prisma.sql`gone`, this.prices, now)}),
      rolled AS (
        INSERT INTO cost_rollups (day, principal, holder, leases, session_ids, usd, unpriced, first_lease_at, last_lease_at)
        SELECT (created_at AT TIME ZONE 'UTC')::date, principal, holder, count(*), array_agg(DISTINCT session_id),
               sum(usd), count(*) FILTER (WHERE usd IS NULL), min(created_at), max(created_at)
        FROM shares GROUP BY 1, 2, 3
        RETURNING 1)
      SELECT (SELECT count(*) FROM batch)::int AS sessions, (SELECT count(*) FROM gone)::int AS leases,
             (SELECT count(*) FROM events)::int AS events, (SELECT count(*) FROM rolled)::int AS rollups`)
    return { sessions: row!.sessions, leases: row!.leases, events: row!.events }
  }
}
