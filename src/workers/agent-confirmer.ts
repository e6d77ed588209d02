import type { Logger } from 'pino'
import type { LeaseTokens } from '../services/auth.ts'
import type { Clock } from '../services/clock.ts'
import type { SessionAgentClient } from '../services/session-agent.ts'
import type { ReachableSession, SessionService } from '../services/sessions.ts'

export interface AgentConfirmerOptions {
  /** How often each session's agent is confirmed; well under its dead man's switch. */
  confirmIntervalSeconds: number
}

/**
 * Confirmations in flight at once: enough to confirm thousands of sessions a minute,
 * few enough that agents that hang (each up to the client's timeout) cannot pile up.
 */
export const AGENT_CONFIRM_CONCURRENCY = 16

/**
 * The dead man's switch, fed: every live session whose agent has an address is
 * confirmed at most every confirmIntervalSeconds, from what the database says alone.
 * Its own loop, so neither a long reconcile pass (launch retries in a capacity outage)
 * nor a launcher that cannot describe its compute lets healthy sessions stop
 * themselves; and never from the proxy's hot path. A session whose row is no longer
 * live is not confirmed, so its agent stops itself even if every other safeguard failed.
 *
 * The answer is the agent's status: its memory and CPU are recorded on the session,
 * and a restoring session is confirmed every pass so its progress is followed where
 * the launcher cannot report it (no status file on Fargate).
 */
export class AgentConfirmer {
  /** When each launch attempt's agent last answered, on the injected clock; one replica's memory, rebuilt by its next pass. */
  private readonly confirmedAt = new Map<string, number>()

  constructor(
    private readonly sessions: SessionService,
    private readonly agents: SessionAgentClient,
    private readonly tokens: LeaseTokens,
    /** Only this launcher's sessions: the ones this control plane reconciles. */
    private readonly launcherKind: string,
    private readonly clock: Clock,
    private readonly opts: AgentConfirmerOptions,
    private readonly logger?: Logger,
  ) {}

  /** One pass: confirms the sessions that are due, longest unconfirmed first. Answers how many agents answered. */
  async confirmSessions(): Promise<number> {
    const reachable = await this.sessions.reachable(this.launcherKind)
    const live = new Set(reachable.map(attemptKey))
    for (const key of this.confirmedAt.keys()) if (!live.has(key)) this.confirmedAt.delete(key)
    const now = this.clock.now().getTime()
    const last = (s: ReachableSession) => this.confirmedAt.get(attemptKey(s)) ?? Number.NEGATIVE_INFINITY
    const due = reachable
      .filter((s) => s.status === 'STARTING' || now - last(s) >= this.opts.confirmIntervalSeconds * 1000)
      .sort((a, b) => last(a) - last(b))
    let answered = 0
    const worker = async () => {
      for (let s = due.shift(); s; s = due.shift()) if (await this.confirm(s)) answered++
    }
    await Promise.all(Array.from({ length: AGENT_CONFIRM_CONCURRENCY }, worker))
    return answered
  }

  private async confirm(s: ReachableSession): Promise<boolean> {
    let status
    try {
      status = await this.agents.confirm(`http://${s.host}:${s.port}`, this.tokens.controlToken(s.id, s.generation))
    } catch (err) {
      // Not recorded as confirmed: the next pass tries again while the switch counts down.
      this.logger?.debug({ sessionId: s.id, err: (err as Error).message }, 'agent confirmation failed; retrying next pass')
      return false
    }
    this.confirmedAt.set(attemptKey(s), this.clock.now().getTime())
    try {
      if (status?.usage) await this.sessions.recordUsage(s, status.usage)
      // Shown while it restores, cleared once it has (setProgress writes only a change).
      if (s.status === 'STARTING') {
        const restoring = status?.phase === 'restoring'
        await this.sessions.setProgress(s, restoring ? { phase: status.phase, bytes: status.bytes, totalBytes: status.totalBytes, percent: status.percent } : null)
      }
    } catch (err) {
      this.logger?.warn({ sessionId: s.id, err: (err as Error).message }, "recording the agent's answer failed")
    }
    return true
  }
}

const attemptKey = (s: Pick<ReachableSession, 'id' | 'generation'>) => `${s.id}:${s.generation}`
