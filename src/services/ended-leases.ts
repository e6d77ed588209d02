import { Prisma } from '../generated/prisma/client.ts'
import type { SqlPool } from '../database/client.ts'
import type { Clock } from './clock.ts'
import { CONFIRMED_STATUSES, type ReachableSession } from './sessions.ts'

/** A lease whose direct-access token must be refused before it expires. */
export interface EndedLease {
  id: string
  expiresAt: Date
}

/** A session whose agent must refuse these leases' tokens. */
export interface AgentRevocations {
  session: ReachableSession
  leases: EndedLease[]
}

/**
 * Leases that ended before their expiry (released, or ended with their session): their
 * direct-access tokens are still validly signed until expiresAt, so the sessions' agents
 * must be told to refuse them (workers/lease-revoker.ts). Expired leases need nothing:
 * their tokens expire with them.
 */
export class EndedLeases {
  constructor(
    private readonly sql: SqlPool,
    private readonly clock: Clock,
  ) {}

  /**
   * The sessions of one launcher whose agent is reachable (as SessionService.reachable
   * reads them) and has ended leases whose tokens have not expired yet, with those leases.
   * One query, and only the sessions with something to revoke: the lease revoker runs it
   * every pass on every replica, and at thousands of sessions most have nothing.
   */
  async atReachableAgents(launcher: string): Promise<AgentRevocations[]> {
    const rows = await this.sql.rows<{ id: string; session_id: string; expires_at: Date; generation: number; status: ReachableSession['status']; host: string; port: number }>(Prisma.sql`
      SELECT l.id, l.session_id, l.expires_at, s.generation, s.status, s.host, s.port
      FROM sessions s JOIN leases l ON l.session_id = s.id
      WHERE s.status::text IN (${Prisma.join(CONFIRMED_STATUSES)}) AND s.launcher = ${launcher} AND s.host IS NOT NULL AND s.port IS NOT NULL
        AND l.ended_at IS NOT NULL AND l.expires_at > ${this.clock.sql}
      ORDER BY s.created_at ASC, s.id`)
    const bySession = new Map<string, AgentRevocations>()
    for (const r of rows) {
      let due = bySession.get(r.session_id)
      if (!due) {
        due = { session: { id: r.session_id, generation: Number(r.generation), status: r.status, host: r.host, port: Number(r.port) }, leases: [] }
        bySession.set(r.session_id, due)
      }
      due.leases.push({ id: r.id, expiresAt: new Date(r.expires_at) })
    }
    return [...bySession.values()]
  }
}
