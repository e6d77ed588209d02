import type { Logger } from 'pino'
import type { Clock } from '../services/clock.ts'
import type { LeaseTokens } from '../services/auth.ts'
import type { ChromaClient } from '../services/chroma.ts'
import { LaunchDeferred, type Launcher, type LaunchSpec, type LaunchTarget, type ObservedCompute } from '../services/launchers/launcher.ts'
import type { LaunchFailureCause, StartPhases } from '../services/metrics.ts'
import type { SaveBackService } from '../services/save-back.ts'
import { SessionService, type SessionRecord } from '../services/sessions.ts'

export interface ReconcilerOptions {
  startTimeoutSeconds: number
  /** Agents stop themselves when not confirmed for this long (their dead man's switch; AgentConfirmer confirms them). */
  deadManSeconds: number
}

/** Sessions stepped at once in a pass (launches wait on the launcher's rate limit, not on this). */
const STEP_CONCURRENCY = 8

/** Save-on-release attempts before the session fails, and the wait after the first failure (doubling). */
const SAVE_ON_RELEASE_ATTEMPTS = 3
const SAVE_RETRY_BASE_MS = 30_000

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
    private readonly saveBack: SaveBackService,
    private readonly tokens: LeaseTokens,
    private readonly clock: Clock,
    private readonly opts: ReconcilerOptions,
    private readonly logger?: Logger,
  ) {}

  async reconcileOnce(): Promise<void> {
    const live = await this.sessions.inStatus(['PENDING', 'STARTING', 'READY', 'DRAINING', 'STOPPING'])
    const launched = live.filter((s) => s.launchRef !== null && s.launcher === this.launcher.kind)
    // A launcher that cannot answer (throttling beyond the SDK's retries) leaves its sessions
    // unobserved for this pass; launches and everything else still go ahead.
    const observed = launched.length
      ? await this.launcher.describe(launched.map(targetOf)).catch((err: Error) => {
          this.logger?.warn({ err, sessions: launched.length }, 'describing the launched compute failed; those sessions wait for the next pass')
          return new Map<string, ObservedCompute>()
        })
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
        if (seen && seen.state !== 'stopped' && seen.progress) await this.sessions.setProgress(s, seen.progress)
        // Where the agent answers, for the agent confirmer (its dead man's switch runs from launch).
        if (seen && seen.state !== 'stopped' && seen.host !== undefined && seen.port !== undefined && (seen.host !== s.host || seen.port !== s.port)) {
          await this.sessions.recordEndpoint(s, seen.host, seen.port)
        }
        return this.awaitReady(s, seen)
      case 'READY':
      case 'DRAINING':
        return this.watchServing(s, seen)
      case 'STOPPING':
        return this.finishStopping(s, seen)
    }
  }

  /**
   * A serving session: its compute may have stopped (lost, or interrupted and gone),
   * may be stopping on someone else's word (scale-in, Spot: drain it so no new lease
   * attaches), or may owe a save-back because its saveOnRelease lease ended.
   */
  private async watchServing(s: SessionRecord, seen: ObservedCompute | undefined): Promise<void> {
    if (seen?.state === 'stopped') {
      await this.recordSaveOnStop(s, seen)
      // The launcher judges how its compute ended (e.g. ECS's stop codes): an interruption
      // that drained the session is clean, a stop for a reason it does not know is not.
      if (seen.clean) {
        await this.sessions.transition(s, [s.status], 'STOPPED', { type: 'stopped', reason: seen.reason, detail: { cause: 'compute_exited' } }, { endedAt: this.clock.now() })
        return
      }
      await this.sessions.transition(s, [s.status], 'FAILED', { type: 'failed', reason: seen.reason, detail: { cause: 'compute_lost' } }, {
        error: `session compute stopped unexpectedly: ${seen.reason}`,
        endedAt: this.clock.now(),
      })
      // "Stopped" may mean unusable rather than gone (an UNHEALTHY Fargate task keeps running).
      await this.launcher.stop(targetOf(s), 'failed').catch(() => {})
      return
    }
    if (seen?.state !== 'running') return
    if (seen.stopping) {
      if (s.status === 'READY') {
        await this.sessions.transition(s, ['READY'], 'DRAINING', { type: 'draining', reason: 'compute_stopping', detail: { phase: seen.detail ?? null } }, {
          drainingAt: this.clock.now(),
          stopReason: 'interrupted',
        })
      }
      return
    }
    if (seen.progress) await this.sessions.setProgress(s, seen.progress)
    if (s.saveOnRelease && s.leaseCount === 0 && s.savedSnapshot === null && !this.saveBack.isSaving(s)) await this.saveOnReleaseWhenDue(s)
  }

  /**
   * A failed save-on-release is retried with backoff (S3 or the network may be back
   * soon), since failing the session would stop it and lose the writes it holds. The
   * attempts are read from the session's save_failed events, so any replica, or this one
   * after a restart, picks up where the last attempt left off.
   */
  private async saveOnReleaseWhenDue(s: SessionRecord): Promise<void> {
    const failed = await this.sessions.saveFailures(s.id)
    if (failed.count >= SAVE_ON_RELEASE_ATTEMPTS) {
      const ended = await this.sessions.transition(s, ['READY', 'DRAINING'], 'FAILED', { type: 'failed', reason: failed.lastReason, detail: { cause: 'save_failed', attempts: failed.count } }, {
        error: `save on release failed ${failed.count} times: ${failed.lastReason}`,
        endedAt: this.clock.now(),
      })
      if (ended && s.launchRef) await this.launcher.stop(targetOf(s), 'save failed').catch(() => {})
      return
    }
    const retryAt = (failed.lastAt?.getTime() ?? 0) + SAVE_RETRY_BASE_MS * 2 ** (failed.count - 1)
    if (failed.count > 0 && this.clock.now().getTime() < retryAt) return
    this.saveOnRelease(s)
  }

  /**
   * A version the agent saved on its way out (SAVE_ON_STOP), recorded on the session:
   * from the agent's last status where the launcher can read it (local processes), else
   * from the series' `latest` pointer when this session wrote it (Fargate).
   */
  private async recordSaveOnStop(s: SessionRecord, seen: Extract<ObservedCompute, { state: 'stopped' }>): Promise<void> {
    let saved = seen.saved ?? null
    if (!saved && s.saveOnRelease && seen.clean) {
      saved = await this.saveBack.savedOnStop(s).catch((err: Error) => {
        this.logger?.warn({ sessionId: s.id, err: err.message }, 'could not read the series latest pointer after a stop')
        return null
      })
    }
    if (!saved || saved.snapshot === s.savedSnapshot) return
    await this.sessions.recordSave(s, saved, 'stop')
  }


  /** The saveOnRelease lease has ended: save, then stop. A failed save leaves `latest` as it was; saveOnReleaseWhenDue retries it. */
  private saveOnRelease(s: SessionRecord): void {
    // Fire and forget: a save takes as long as the upload, and must not hold up the pass.
    // A failure is recorded as a save_failed event; saveOnReleaseWhenDue decides what next.
    this.saveBack.save(s.id, 'release').then(
      (saved) => this.sessions.stopUnleased(saved, 'saved'),
      (err: Error) => this.logger?.warn({ sessionId: s.id, err: err.message }, 'save on release failed; retrying later'),
    ).catch((err: unknown) => this.logger?.error({ err, sessionId: s.id }, 'save on release: recording the outcome failed'))
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

  /** Everything a launch attempt needs, derived from the session alone: a retry from any replica sends the same. */
  launchSpec(s: SessionRecord): LaunchSpec {
    return {
      sessionId: s.id,
      generation: s.generation,
      snapshot: s.snapshot,
      collection: s.collection,
      authToken: this.tokens.sessionToken(s.id, s.generation),
      controlToken: this.tokens.controlToken(s.id, s.generation),
      leaseKey: this.tokens.leaseKey(s.id, s.generation),
      deadManSeconds: this.opts.deadManSeconds,
      saveOnStop: s.saveOnRelease,
    }
  }

  private async launchAndRecord(s: SessionRecord): Promise<void> {
    let ref: string
    try {
      ;({ ref } = await this.launcher.launch(this.launchSpec(s)))
    } catch (err) {
      if (err instanceof LaunchDeferred) {
        // Still STARTING without a ref: relaunchOrphanedClaim retries it on a later pass.
        this.logger?.warn({ sessionId: s.id, reason: err.message }, 'launch deferred')
        return
      }
      return this.fail(s, `launch failed: ${(err as Error).message}`, 'launch_error')
    }
    const recorded = await this.sessions.recordLaunch(s, ref)
    if (recorded) this.logger?.info({ sessionId: s.id, ref }, 'session launched')
    // Another replica recorded its launch first: if this compute is another one, the orphan sweeper stops it as a duplicate.
    else this.logger?.warn({ sessionId: s.id, ref }, 'launch not recorded: the session has moved on or another launch was recorded first')
  }

  private async awaitReady(s: SessionRecord, seen: ObservedCompute | undefined): Promise<void> {
    // Launched but not observed this pass (the launcher's API failing): nothing is decided,
    // the start deadline included, so throttling cannot fail a task that is nearly READY.
    if (!seen) return
    if (seen.state === 'stopped') return this.fail(s, seen.reason, 'compute_stopped')
    let lastReason = seen.detail ?? 'not running yet'
    // Told to stop by someone else while starting (a Spot interruption): it will not serve.
    if (seen.state === 'running' && seen.stopping) return this.fail(s, `compute is stopping: ${seen.detail ?? 'stop requested'}`, 'compute_stopped')
    if (seen.state === 'running') {
      // The first pass to see it running marks the phase boundary (once per launch attempt).
      const runningAt = runningSince(s) ?? (await this.sessions.markRunning(s, { host: seen.host, port: seen.port, phase: seen.detail ?? null }, seen.size))
      const readiness = await this.chroma.readiness(`http://${seen.host}:${seen.port}`, s.collection, this.tokens.sessionToken(s.id, s.generation))
      if (readiness.ready) {
        const now = this.clock.now()
        const ok = await this.sessions.transition(s, ['STARTING'], 'READY', {
          type: 'ready',
          detail: { host: seen.host, port: seen.port, startSeconds: secondsSince(s.launchedAt, now), phases: startPhases(s, runningAt ?? now, now) },
        }, { host: seen.host, port: seen.port, readyAt: now })
        if (ok) {
          await this.sessions.setProgress(s, null)
          this.logger?.info({ sessionId: s.id, host: seen.host, port: seen.port }, 'session ready')
        }
        return
      }
      lastReason = readiness.reason
    }
    if (this.pastStartDeadline(s)) {
      await this.fail(s, `not ready within ${this.opts.startTimeoutSeconds}s: ${lastReason}`, 'start_timeout')
    }
  }

  private async finishStopping(s: SessionRecord, seen: ObservedCompute | undefined): Promise<void> {
    // Launched but not observed this pass: whether to ask again, or to record it stopped, waits for an answer.
    if (s.launchRef && !seen) return
    if (seen?.state === 'stopped') await this.recordSaveOnStop(s, seen)
    if (s.launchRef && seen?.state !== 'stopped') {
      // Asked once is enough once the backend shows the stop under way; until it does (a
      // replica that crashed before asking, a lost StopTask), ask again.
      if (!seen?.stopUnderway) await this.launcher.stop(targetOf(s), s.stopReason ?? 'stopping')
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

export const targetOf = (s: Pick<SessionRecord, 'id' | 'generation' | 'launchRef' | 'launchedAt'>): LaunchTarget => ({
  sessionId: s.id,
  generation: s.generation,
  ref: s.launchRef!,
  ...(s.launchedAt ? { launchedAt: s.launchedAt } : {}),
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
