import type { Logger } from 'pino'
import type { LeaseTokens } from '../services/auth.ts'
import type { Clock } from '../services/clock.ts'
import type { EndedLeases } from '../services/ended-leases.ts'
import type { SessionAgentClient } from '../services/session-agent.ts'

/** Revocations in flight at once (each call is one small POST to one agent). */
const CONCURRENCY = 16

/**
 * Direct access ends with the lease: every pass (the reconciler's period, a couple of
 * seconds), each reachable session's agent is told which of its leases ended before
 * expiring (POST /_agent/revoke), so a released lease's token is refused within seconds.
 * Each replica remembers what each launch attempt's agent has acknowledged and sends
 * only what is new; after a restart it sends everything again, which the agent takes
 * as it is (revocation is idempotent). A failed call is retried next pass.
 */
export class LeaseRevoker {
  /** attempt key -> lease ids its agent has acknowledged. */
  private readonly told = new Map<string, Set<string>>()

  constructor(
    private readonly ended: EndedLeases,
    private readonly agents: SessionAgentClient,
    private readonly tokens: LeaseTokens,
    private readonly launcherKind: string,
    private readonly clock: Clock,
    private readonly logger?: Logger,
  ) {}

  /** One pass; answers how many leases were newly revoked at their agents. */
  async revokeOnce(): Promise<number> {
    const pending = await this.ended.atReachableAgents(this.launcherKind)
    // An attempt with no unexpired ended lease left has nothing more to be told (a lease
    // that ends later is new to it anyway): what was told of it is forgotten.
    const live = new Set(pending.map(({ session: s }) => `${s.id}:${s.generation}`))
    for (const key of this.told.keys()) if (!live.has(key)) this.told.delete(key)
    const due = pending.flatMap(({ session: s, leases }) => {
      const key = `${s.id}:${s.generation}`
      const told = this.told.get(key)
      const fresh = leases.filter((l) => !told?.has(l.id))
      return fresh.length ? [{ s, key, fresh }] : []
    })
    let revoked = 0
    const worker = async () => {
      for (let job = due.shift(); job; job = due.shift()) {
        const { s, key, fresh } = job
        try {
          await this.agents.revoke(`http://${s.host}:${s.port}`, this.tokens.controlToken(s.id, s.generation), fresh, this.clock.now())
        } catch (err) {
          this.logger?.debug({ sessionId: s.id, err: (err as Error).message }, 'revoking ended leases at the agent failed; retrying next pass')
          continue
        }
        const told = this.told.get(key) ?? new Set<string>()
        for (const l of fresh) told.add(l.id)
        this.told.set(key, told)
        revoked += fresh.length
      }
    }
    await Promise.all(Array.from({ length: CONCURRENCY }, worker))
    return revoked
  }
}
