import type { Logger } from 'pino'
import type { Clock } from '../services/clock.ts'
import type { LeaseTokens } from '../services/auth.ts'
import type { ChromaClient } from '../services/chroma.ts'
import { LaunchDeferred, type Launcher, type LaunchTarget, type ObservedCompute } from '../services/launchers/launcher.ts'
import type { LaunchFailureCause, StartPhases } from '../services/metrics.ts'
import { SessionService, type SessionRecord } from '../services/sessions.ts'

export interface ReconcilerOptions {
  startTimeoutSeconds: number
}

/** Sessions stepped at once in a pass (launches wait on the launcher's rate limit, not on this). */
const STEP_CONCURRENCY = 8

/** A claimed launch whose claimant vanished before recording the ref is retried after this long. */
const ORPHANED_CLAIM_MS = 15_000

/**
 * Drives every live session one step toward where it should be, from what the
 * database and the launcher say now (never from memory of an earlier pass):
 * PENDING → STARTING (launch) → READY (Chroma answers), STOPPING → STOPPED, and
 * FAILED for compute that died or never became ready. Every step is a fenced
 * compare-and-set, so replicas may reconcile the same session at once.
 */
export class Reconciler {
  constructor(
    private readonly sessions: SessionService,
    private readonly launcher: Launcher,
    private readonly chroma: ChromaClient,
    private readonly tokens: LeaseTokens,
    private readonly clock: Clock,
    private readonly opts: ReconcilerOptions,
    private readonly logger?: Logger,
  ) {}

  async reconcileOnce(): Promise<void> {
    const live = await this.sessions.inStatus(['PENDING', 'STARTING', 'READY', 'DRAINING', 'STOPPING'])
    const launched = live.filter((s) => s.launchRef !== null && s.launcher === this.launcher.kind)
    const observed = launched.length
      ? await this.launcher.describe(launched.map(targetOf))
      : new Map<string, ObservedCompute>()
    // A bounded number of steps at once: each may hold a database connection in a
    // transaction, and hundreds at once would starve the pool (and the API with it).
    const queue = live.filter((s) => s.launcher === this.launcher.kind)
    const worker = async () => {
      for (let s = queue.shift(); s; s = queue.shift()) {
        await this.step(s, s.launchRef ? observed.get(s.launchRef) : undefined).catch((err) =>
          this.logger?.error({ err, sessionId: s!.id, status: s!.status }, 'reconcile step failed; retrying next pass'),
        )
      }
    }
    await Promise.all(Array.from({ length: STEP_CONCURRENCY }, worker))
  }

  private async step(s: SessionRecord, seen: ObservedCompute | undefined): Promise<void> {
    switch (s.status) {
      case 'PENDING':
        return this.launch(s)
      case 'STARTING':
        if (!s.launchRef) return this.relaunchOrphanedClaim(s)
        return this.awaitReady(s, seen)
      case 'READY':
      case 'DRAINING':
        if (seen?.state === 'stopped') {
          await this.sessions.transition(s, [s.status], 'FAILED', { type: 'failed', reason: seen.reason, detail: { cause: 'compute_lost' } }, {
            error: `session compute stopped unexpectedly: ${seen.reason}`,
            endedAt: this.clock.now(),
          })
          // "Stopped" may mean unusable rather than gone (an UNHEALTHY Fargate task keeps running).
          await this.launcher.stop(targetOf(s), 'failed').catch(() => {})
        }
        return
      case 'STOPPING':
        return this.finishStopping(s, seen)
    }
  }

  /** Claims the launch (PENDING → STARTING) so one replica launches, then launches idempotently. */
  private async launch(s: SessionRecord): Promise<void> {
    const claimed = await this.sessions.transition(s, ['PENDING'], 'STARTING', { type: 'launching' }, { launchedAt: this.clock.now() })
    if (claimed) await this.launchAndRecord(s)
  }

  private async relaunchOrphanedClaim(s: SessionRecord): Promise<void> {
    if (this.clock.now().getTime() - (s.launchedAt?.getTime() ?? 0) < ORPHANED_CLAIM_MS) return
    if (this.pastStartDeadline(s)) return this.fail(s, 'the launch was never recorded', 'launch_unrecorded')
    await this.launchAndRecord(s)
  }

  private async launchAndRecord(s: SessionRecord): Promise<void> {
    let ref: string
    try {
      ;({ ref } = await this.launcher.launch({
        sessionId: s.id,
        generation: s.generation,
        snapshot: s.snapshot,
        collection: s.collection,
        authToken: this.tokens.sessionToken(s.id, s.generation),
      }))
    } catch (err) {
      if (err instanceof LaunchDeferred) {
        // Still STARTING without a ref: relaunchOrphanedClaim retries it on a later pass.
        this.logger?.warn({ sessionId: s.id, reason: err.message }, 'launch deferred')
        return
      }
      return this.fail(s, `launch failed: ${(err as Error).message}`, 'launch_error')
    }
    const recorded = await this.sessions.transition(s, ['STARTING'], 'STARTING', { type: 'launched', detail: { ref } }, { launchRef: ref })
    if (recorded) this.logger?.info({ sessionId: s.id, ref }, 'session launched')
  }

  private async awaitReady(s: SessionRecord, seen: ObservedCompute | undefined): Promise<void> {
    if (seen?.state === 'stopped') return this.fail(s, seen.reason, 'compute_stopped')
    let lastReason = seen?.detail ?? 'not running yet'
    if (seen?.state === 'running') {
      // The first pass to see it running marks the phase boundary (once per launch attempt).
      const runningAt = runningSince(s) ?? (await this.sessions.markRunning(s, { host: seen.host, port: seen.port, phase: seen.detail ?? null }))
      const readiness = await this.chroma.readiness(`http://${seen.host}:${seen.port}`, s.collection)
      if (readiness.ready) {
        const now = this.clock.now()
        const ok = await this.sessions.transition(s, ['STARTING'], 'READY', {
          type: 'ready',
          detail: { host: seen.host, port: seen.port, startSeconds: secondsSince(s.launchedAt, now), phases: startPhases(s, runningAt ?? now, now) },
        }, { host: seen.host, port: seen.port, readyAt: now })
        if (ok) this.logger?.info({ sessionId: s.id, host: seen.host, port: seen.port }, 'session ready')
        return
      }
      lastReason = readiness.reason
    }
    if (this.pastStartDeadline(s)) {
      await this.fail(s, `not ready within ${this.opts.startTimeoutSeconds}s: ${lastReason}`, 'start_timeout')
    }
  }

  private async finishStopping(s: SessionRecord, seen: ObservedCompute | undefined): Promise<void> {
    if (s.launchRef && seen?.state !== 'stopped') {
      await this.launcher.stop(targetOf(s), s.stopReason ?? 'stopping')
      return
    }
    await this.sessions.transition(s, ['STOPPING'], 'STOPPED', { type: 'stopped', reason: s.stopReason }, { endedAt: this.clock.now() })
  }

  /** FAILED keeps the reason (and its cause, for metrics); the compute is stopped here, and by the orphan sweeper should this crash. */
  private async fail(s: SessionRecord, reason: string, cause: LaunchFailureCause): Promise<void> {
    const ok = await this.sessions.transition(s, ['PENDING', 'STARTING'], 'FAILED', { type: 'failed', reason, detail: { cause } }, {
      error: reason,
      endedAt: this.clock.now(),
    })
    if (!ok) return
    this.logger?.warn({ sessionId: s.id, reason }, 'session failed')
    if (s.launchRef) await this.launcher.stop(targetOf(s), 'failed').catch(() => {})
  }

  private pastStartDeadline(s: SessionRecord): boolean {
    const started = s.launchedAt?.getTime() ?? s.createdAt.getTime()
    return this.clock.now().getTime() - started > this.opts.startTimeoutSeconds * 1000
  }
}

export const targetOf = (s: Pick<SessionRecord, 'id' | 'generation' | 'launchRef'>): LaunchTarget => ({
  sessionId: s.id,
  generation: s.generation,
  ref: s.launchRef!,
})

const secondsSince = (from: Date | null, now: Date) => (from ? (now.getTime() - from.getTime()) / 1000 : null)

/** When this launch attempt's compute was first seen running, or null (a runningAt older than the launch claim is an earlier attempt's). */
function runningSince(s: SessionRecord): Date | null {
  return s.runningAt && s.launchedAt && s.runningAt >= s.launchedAt ? s.runningAt : null
}

/** The phases of the time to READY (see START_PHASES), in seconds, from the session's own timestamps. */
function startPhases(s: SessionRecord, runningAt: Date, readyAt: Date): StartPhases {
  const launchedAt = s.launchedAt ?? s.createdAt
  const seconds = (from: Date, to: Date) => Math.max(0, (to.getTime() - from.getTime()) / 1000)
  return {
    launching: seconds(s.createdAt, launchedAt),
    provisioning: seconds(launchedAt, runningAt),
    chroma_boot: seconds(runningAt, readyAt),
  }
}
