import { randomUUID } from 'node:crypto'
import { Prisma } from '../generated/prisma/client.ts'
import type { SqlPool } from '../database/client.ts'
import type { Principal } from './auth.ts'
import type { Clock } from './clock.ts'
import { badRequest, conflict, notFound } from './errors.ts'

/**
 * Warm pool hints: a workflow about to fan out (a Step Functions Map of 30 exclusive
 * acquires) tells the pool ahead, because the pool sizes itself from recent demand and a
 * burst would otherwise find it too small and start mostly cold.
 *
 * A hint adds `count` agents to the pool's target until it expires; each warm claim after
 * the earliest active hint uses one up (WarmPoolService.state() computes `hinted`). It never
 * raises the pool above WARM_POOL_MAX, the operator's cost cap: a hint above it is refused,
 * and the target stays capped whatever the sum of hints.
 *
 * Times are the database clock's (clock.sql), as for leases.
 */
export interface WarmPoolHintView {
  id: string
  count: number
  createdAt: string
  expiresAt: string
}

export interface WarmPoolHintInput {
  count: number
  seconds?: number
}

/** How long a hint lasts unless it says: about a Map state's fan-out and the agents' start. */
export const DEFAULT_HINT_SECONDS = 600

interface HintRow {
  id: string
  count: number
  created_at: Date
  expires_at: Date
}

const toView = (r: HintRow): WarmPoolHintView => ({ id: r.id, count: r.count, createdAt: r.created_at.toISOString(), expiresAt: r.expires_at.toISOString() })

export class WarmPoolHintService {
  constructor(
    private readonly deps: {
      sql: SqlPool
      clock: Clock
      /** WARM_POOL_MAX: 0 turns the pool, and so hints, off. */
      max: number
    },
  ) {}

  async create(principal: Principal, input: WarmPoolHintInput): Promise<WarmPoolHintView> {
    const { max } = this.deps
    if (max === 0) throw conflict('warm_pool_disabled', 'the warm pool is off on this server (WARM_POOL_MAX=0): a hint would have no effect')
    if (input.count > max) {
      throw badRequest('warm_pool_hint_above_max', `count ${input.count} is above WARM_POOL_MAX (${max}): a hint never raises the pool above it; ask for at most ${max}`)
    }
    const now = this.deps.clock.sql
    const [row] = await this.deps.sql.rows<HintRow>(Prisma.sql`
      INSERT INTO warm_pool_hints (id, count, created_at, expires_at, key_id)
      VALUES (${randomUUID()}::uuid, ${input.count}, ${now}, ${now} + make_interval(secs => ${input.seconds ?? DEFAULT_HINT_SECONDS}), ${principal.id})
      RETURNING id, count, created_at, expires_at`)
    return toView(row!)
  }

  /** Active (unexpired) hints, oldest first: a client's own, or all for an operator. */
  async list(principal: Principal): Promise<WarmPoolHintView[]> {
    const rows = await this.deps.sql.rows<HintRow>(Prisma.sql`
      SELECT id, count, created_at, expires_at FROM warm_pool_hints
      WHERE expires_at > ${this.deps.clock.sql} AND ${this.ownedBy(principal)}
      ORDER BY created_at, id`)
    return rows.map(toView)
  }

  /** Ends an active hint early. Another client's hint is not found, as for leases. */
  async remove(principal: Principal, id: string): Promise<void> {
    const rows = await this.deps.sql.rows(Prisma.sql`
      DELETE FROM warm_pool_hints
      WHERE id = ${id}::uuid AND expires_at > ${this.deps.clock.sql} AND ${this.ownedBy(principal)}
      RETURNING id`)
    if (rows.length === 0) throw notFound('warm_pool_hint_not_found', `no active warm pool hint ${id} (expired, ended, or made by another key)`)
  }

  private ownedBy(principal: Principal): Prisma.Sql {
    return principal.role === 'operator' ? Prisma.sql`TRUE` : Prisma.sql`key_id = ${principal.id}`
  }
}
