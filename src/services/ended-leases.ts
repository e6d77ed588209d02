import { Prisma } from '../generated/prisma/client.ts'
import type { SqlPool } from '../database/client.ts'
import type { Clock } from './clock.ts'

/** A lease whose direct-access token must be refused before it expires. */
export interface EndedLease {
  id: string
  expiresAt: Date
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

  /** By session id, for the given sessions: the ended leases whose tokens have not expired yet. */
  async bySession(sessionIds: string[]): Promise<Map<string, EndedLease[]>> {
    const result = new Map<string, EndedLease[]>()
    if (sessionIds.length === 0) return result
    const rows = await this.sql.rows<{ id: string; session_id: string; expires_at: Date }>(Prisma.sql`
      SELECT id, session_id, expires_at FROM leases
      WHERE session_id::text IN (${Prisma.join(sessionIds)}) AND ended_at IS NOT NULL AND expires_at > ${this.clock.sql}`)
    for (const r of rows) {
      const list = result.get(r.session_id) ?? []
      list.push({ id: r.id, expiresAt: new Date(r.expires_at) })
      result.set(r.session_id, list)
    }
    return result
  }
}
