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
 * After a serving session's confirmation fails (the agent unreachable), the next try waits
 * this long (or the confirm interval, if shorter), so that dead addresses do not take every
 * pass's workers from the agents that answer. Far inside a 15-minute dead man's switch.
 */
export const RETRY_AFTER_FAILURE_SECONDS = 10

/** What one replica remembers of a launch attempt's agent; rebuilt by its next passes after a restart. */
interface AgentContact {
  /** When it last answered (injected clock, ms). */
  confirmedAt: number
  /** Its last answer said it was restoring: while starting, it is asked every pass, for the progress. */
  restoring: boolean
  /** When the last try failed, if it did. */
  failedAt: number | null
}

/**
 * The dead man's switch, fed: every live session whose agent has an address is
 * confirmed at most every confirmIntervalSeconds, from what the database says alone.
 * Its own loop, so neither a long reconcile pass (launch retries in a capacity outage)
 * nor a launcher that cannot describe its compute lets healthy sessions stop
 * themselves; and never from the proxy's hot path. Only sessions the control plane
 * wants serving (STARTING, READY, DRAINING) are confirmed: a STOPPING or ended one's
 * agent stops itself when its switch runs out, even if every stop request was lost.
 *
 * The answer is the agent's status: its memory and CPU are recorded on the session,
 * and a restoring session is confirmed every pass so its progress is followed where
 * the launcher cannot report it (no status file on Fargate).
 */
export class AgentConfirmer {
  private readonly contacts = new Map<string, AgentContact>()

  constructor(
    private readonly sessions: SessionService,
    private readonly agents: SessionAgentClient,
    private readonly tokens: LeaseTokens,
    /** Only this launcher's sessions: the ones this control plane reconciles. */
    private readonly launcherKind: string,
    /** The control plane's clock (the database's in production, which runs with real time, as the agents' switches do). */
    private readonly clock: Clock,
    private readonly opts: AgentConfirmerOptions,
    private readonly logger?: Logger,
  ) {}

  /** One pass: confirms the sessions that are due, longest unconfirmed first. Answers how many agents answered. */
  async confirmSessions(): Promise<number> {
    const reachable = await this.sessions.reachable(this.launcherKind)
    const live = new Set(reachable.map(attemptKey))
    for (const key of this.contacts.keys()) if (!live.has(key)) this.contacts.delete(key)
    const now = this.clock.now().getTime()
    const last = (s: ReachableSession) => this.contacts.get(attemptKey(s))?.confirmedAt ?? Number.NEGATIVE_INFINITY
    const due = reachable.filter((s) => this.isDue(s, now)).sort((a, b) => last(a) - last(b))
    let answered = 0
    const worker = async () => {
      for (let s = due.shift(); s; s = due.shift()) if (await this.confirm(s)) answered++
    }
    await Promise.all(Array.from({ length: AGENT_CONFIRM_CONCURRENCY }, worker))
    return answered
  }

  private isDue(s: ReachableSession, now: number): boolean {
    const contact = this.contacts.get(attemptKey(s))
    const intervalMs = this.opts.confirmIntervalSeconds * 1000
    // A starting agent that does not answer yet is normal (its task is still coming up): asked every pass.
    if (s.status === 'STARTING') return !contact || contact.restoring || contact.failedAt !== null || now - contact.confirmedAt >= intervalMs
    if (contact?.failedAt != null && now - contact.failedAt < Math.min(intervalMs, RETRY_AFTER_FAILURE_SECONDS * 1000)) return false
    return now - (contact?.confirmedAt ?? Number.NEGATIVE_INFINITY) >= intervalMs
  }

  private async confirm(s: ReachableSession): Promise<boolean> {
    const key = attemptKey(s)
    let status
    try {
      // With the control plane's time: the agent judges lease tokens' expiry on it.
      status = await this.agents.confirm(`http://${s.host}:${s.port}`, this.tokens.controlToken(s.id, s.generation), this.clock.now())
    } catch (err) {
      // Not confirmed: tried again after RETRY_AFTER_FAILURE_SECONDS while the switch counts down.
      const contact = this.contacts.get(key)
      this.contacts.set(key, { confirmedAt: contact?.confirmedAt ?? Number.NEGATIVE_INFINITY, restoring: contact?.restoring ?? false, failedAt: this.clock.now().getTime() })
      this.logger?.debug({ sessionId: s.id, err: (err as Error).message }, 'agent confirmation failed; retrying later')
      return false
    }
    const restoring = status?.phase === 'restoring'
    this.contacts.set(key, { confirmedAt: this.clock.now().getTime(), restoring, failedAt: null })
    try {
      if (status?.usage) await this.sessions.recordUsage(s, status.usage)
      // Shown while it restores, cleared once it has; only while the session is still
      // STARTING (the reconciler clears it at READY, and a late answer must not undo that).
      if (s.status === 'STARTING') {
        await this.sessions.setProgress(s, restoring ? { phase: status!.phase, bytes: status!.bytes, totalBytes: status!.totalBytes, percent: status!.percent } : null, 'STARTING')
      }
    } catch (err) {
      this.logger?.warn({ sessionId: s.id, err: (err as Error).message }, "recording the agent's answer failed")
    }
    return true
  }
}

const attemptKey = (s: Pick<ReachableSession, 'id' | 'generation'>) => `${s.id}:${s.generation}`
