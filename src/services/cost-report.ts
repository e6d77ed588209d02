import { Prisma } from '../generated/prisma/client.ts'
import type { SqlPool } from '../database/client.ts'
import type { Principal } from './auth.ts'
import type { Clock } from './clock.ts'
import { sessionCostSql, type FargatePrices } from './cost.ts'

export interface WorkflowCost {
  /** The leases' `holder` (e.g. a Step Functions execution ARN); null for leases acquired without one. */
  holder: string | null
  leases: number
  sessions: number
  /** The leases' shares of their sessions' costs; sessions with no reported size (local processes) add nothing. */
  costUsd: number
  /** Leases whose session reported no size, so their share is unknown rather than zero. */
  unpricedLeases: number
  firstLeaseAt: string
  lastLeaseAt: string
}

/**
 * Cost per workflow: each session's cost (start-up and idle time included: they are
 * what the workflows caused) is split among the leases that held it in proportion to
 * how long each held it, and the shares are summed per holder. A share grows while its
 * session runs on, and is final once the session has ended.
 */
export class CostReport {
  constructor(
    private readonly sql: SqlPool,
    private readonly clock: Clock,
    private readonly prices: FargatePrices,
  ) {}

  async byWorkflow(viewer: Principal, filter: { since?: Date; holder?: string; limit: number }): Promise<WorkflowCost[]> {
    const now = this.clock.sql
    // Which leases the report is about; the shares are computed over every lease of
    // their sessions, so a filter never makes a workflow's share look larger.
    const wanted = Prisma.join(
      [
        viewer.role === 'operator' ? Prisma.sql`TRUE` : Prisma.sql`principal = ${viewer.id}`,
        filter.since ? Prisma.sql`created_at >= ${filter.since}` : Prisma.sql`TRUE`,
        filter.holder !== undefined ? Prisma.sql`holder = ${filter.holder}` : Prisma.sql`TRUE`,
      ],
      ' AND ',
    )
    const rows = await this.sql.rows<{ holder: string | null; leases: number; sessions: number; usd: number | null; unpriced: number; first: Date; last: Date }>(Prisma.sql`
      WITH wanted AS (SELECT id FROM leases WHERE ${wanted}),
      held AS (
        SELECT l.id, l.session_id, l.holder, l.created_at,
               greatest(0, extract(epoch FROM least(coalesce(l.ended_at, l.expires_at), l.expires_at, ${now}) - l.created_at))::float8 AS seconds
        FROM leases l WHERE l.session_id IN (SELECT session_id FROM leases WHERE id IN (SELECT id FROM wanted))),
      shares AS (
        SELECT h.*, ${sessionCostSql(this.prices, now)} * CASE
                 WHEN sum(h.seconds) OVER w > 0 THEN h.seconds / sum(h.seconds) OVER w
                 ELSE 1.0 / count(*) OVER w END AS usd
        FROM held h JOIN sessions s ON s.id = h.session_id
        WINDOW w AS (PARTITION BY h.session_id))
      SELECT holder, count(*)::int AS leases, count(DISTINCT session_id)::int AS sessions,
             sum(usd)::float8 AS usd, count(*) FILTER (WHERE usd IS NULL)::int AS unpriced,
             min(created_at) AS first, max(created_at) AS last
      FROM shares WHERE id IN (SELECT id FROM wanted)
      GROUP BY holder ORDER BY sum(usd) DESC NULLS LAST, max(created_at) DESC
      LIMIT ${filter.limit}`)
    return rows.map((r) => ({
      holder: r.holder,
      leases: r.leases,
      sessions: r.sessions,
      costUsd: Math.round((r.usd ?? 0) * 1e6) / 1e6,
      unpricedLeases: r.unpriced,
      firstLeaseAt: r.first.toISOString(),
      lastLeaseAt: r.last.toISOString(),
    }))
  }
}
