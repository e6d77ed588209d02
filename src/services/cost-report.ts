import { Prisma } from '../generated/prisma/client.ts'
import type { SqlPool } from '../database/client.ts'
import type { Principal } from './auth.ts'
import type { Clock } from './clock.ts'
import { idleBeforeClaimCostSql, sessionCostSql, type FargatePrices } from './cost.ts'

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

/** Compute started ahead of demand, before an acquire took it: the warm pool's agents, or pins' standbys. */
export interface IdleCost {
  /** Agents or standbys launched (since the report's `since`). */
  agents: number
  idleSeconds: number
  costUsd: number
  /** Those whose launcher reported no size (local processes): their idle time has no price. */
  unpricedAgents: number
}

/** Which rows were started ahead of demand, as `s`, a row of sessions. */
const STARTED_AHEAD = {
  warm_pool: Prisma.sql`(s.mode = 'warm' OR (s.claimed_at IS NOT NULL AND s.pin_id IS NULL))`,
  pins: Prisma.sql`(s.pin_id IS NOT NULL AND s.mode = 'exclusive')`,
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

  /**
   * What the warm pool's agents, or pins' exclusive standbys, created since `since` (all
   * time without it) ran before a claim or until they ended unclaimed: no workflow's share.
   */
  async idleBeforeClaim(kind: keyof typeof STARTED_AHEAD, since?: Date): Promise<IdleCost> {
    const now = this.clock.sql
    const [row] = await this.sql.rows<{ agents: number; seconds: number | null; usd: number | null; unpriced: number }>(Prisma.sql`
      SELECT count(*)::int AS agents,
             sum(greatest(0, extract(epoch FROM coalesce(s.claimed_at, s.ended_at, ${now}) - s.launched_at)))::float8 AS seconds,
             sum(${idleBeforeClaimCostSql(this.prices, now)})::float8 AS usd,
             count(*) FILTER (WHERE s.cpu_units IS NULL OR s.memory_mib IS NULL)::int AS unpriced
      FROM sessions s
      WHERE ${STARTED_AHEAD[kind]} AND s.launched_at IS NOT NULL
        ${since ? Prisma.sql`AND s.created_at >= ${since}` : Prisma.empty}`)
    return {
      agents: row?.agents ?? 0,
      idleSeconds: Math.round(row?.seconds ?? 0),
      costUsd: Math.round((row?.usd ?? 0) * 1e6) / 1e6,
      unpricedAgents: row?.unpriced ?? 0,
    }
  }

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
    // Purged leases (RETENTION_DAYS) answer from their rollups: the same filters, with
    // `since` at the granularity of the UTC day the rollup keeps.
    const wantedRollups = Prisma.join(
      [
        viewer.role === 'operator' ? Prisma.sql`TRUE` : Prisma.sql`principal = ${viewer.id}`,
        filter.since ? Prisma.sql`day >= (${filter.since}::timestamptz AT TIME ZONE 'UTC')::date` : Prisma.sql`TRUE`,
        filter.holder !== undefined ? Prisma.sql`holder = ${filter.holder}` : Prisma.sql`TRUE`,
      ],
      ' AND ',
    )
    const rows = await this.sql.rows<{ holder: string | null; leases: number; sessions: number; usd: number | null; unpriced: number; first: Date; last: Date }>(Prisma.sql`
      WITH wanted AS (SELECT id FROM leases WHERE ${wanted}),
      shares AS (${leaseShares(Prisma.sql`(SELECT * FROM leases WHERE session_id IN (SELECT session_id FROM leases WHERE id IN (SELECT id FROM wanted)))`, this.prices, now)}),
      parts AS (
        SELECT holder, 1 AS leases, ARRAY[session_id] AS session_ids, usd, (usd IS NULL)::int AS unpriced, created_at AS first, created_at AS last
        FROM shares WHERE id IN (SELECT id FROM wanted)
        UNION ALL
        SELECT holder, leases, session_ids, usd, unpriced, first_lease_at, last_lease_at FROM cost_rollups WHERE ${wantedRollups}),
      sessions_per_holder AS (SELECT holder, count(DISTINCT sid)::int AS n FROM parts, unnest(session_ids) AS sid GROUP BY holder)
      SELECT p.holder, sum(p.leases)::int AS leases, max(h.n)::int AS sessions,
             sum(p.usd)::float8 AS usd, sum(p.unpriced)::int AS unpriced, min(p.first) AS first, max(p.last) AS last
      FROM parts p JOIN sessions_per_holder h ON h.holder IS NOT DISTINCT FROM p.holder
      GROUP BY p.holder ORDER BY sum(p.usd) DESC NULLS LAST, max(p.last) DESC
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

/**
 * Each lease's share of its session's cost, as rows (id, session_id, holder, principal,
 * created_at, seconds, usd) over `leases` (a relation of lease rows holding every lease
 * of each session it covers): split in proportion to how long each lease held the
 * session, evenly when none held it for any time. usd is NULL for an unpriced session.
 * The report computes it over live leases, the retention purge over the leases it
 * deletes (their rollups), so both agree.
 */
export function leaseShares(leases: Prisma.Sql, prices: FargatePrices, now: Prisma.Sql): Prisma.Sql {
  return Prisma.sql`
    SELECT h.*, ${sessionCostSql(prices, now)} * CASE
             WHEN sum(h.seconds) OVER w > 0 THEN h.seconds / sum(h.seconds) OVER w
             ELSE 1.0 / count(*) OVER w END AS usd
    FROM (SELECT l.id, l.session_id, l.holder, l.principal, l.created_at,
                 greatest(0, extract(epoch FROM least(coalesce(l.ended_at, l.expires_at), l.expires_at, ${now}) - l.created_at))::float8 AS seconds
          FROM ${leases} l) h
    JOIN sessions s ON s.id = h.session_id
    WINDOW w AS (PARTITION BY h.session_id)`
}
