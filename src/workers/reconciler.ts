import type { Logger } from 'pino'
import { Prisma } from '../generated/prisma/client.ts'
import type { LeaseTokens } from '../services/auth.ts'
import type { ChromaClient } from '../services/chroma.ts'
import { LaunchDeferred, type Launcher, type LaunchSpec, type LaunchTarget, type ObservedCompute, type RunningCompute } from '../services/launchers/launcher.ts'
import { noObserver, type LaunchFailureCause, type Observer, type ReconcilePhase, type StartPhases } from '../services/metrics.ts'
import type { SaveBackService } from '../services/save-back.ts'
import type { SessionStatus } from '../generated/prisma/enums.ts'
import type { WarmPoolService } from '../services/warm-pool.ts'
import { DB_NOW, SessionService, type SessionCursor, type SessionRecord } from '../services/sessions.ts'

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

/** Sessions read (and described) at a time. */
const PAGE_SIZE = 500

/**
 * The order a pass walks live sessions in: stops (compute to end) and launches (callers
 * waiting) before starts in progress, and those before steady serving sessions.
 */
const PASS_ORDER: SessionStatus[][] = [['STOPPING', 'PENDING'], ['STARTING'], ['READY', 'DRAINING']]

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
    private readonly warmPool: WarmPoolService,
    private readonly opts: ReconcilerOptions,
    private readonly logger?: Logger,
    private readonly observer: Observer = noObserver,
  ) {}

  /** Runs one part of a pass and reports its wall time (RECONCILE_PHASES): where a long pass's time goes. */
  private async timed<T>(phase: ReconcilePhase, part: () => Promise<T>): Promise<T> {
    const started = performance.now()
    try {
      return await part()
    } finally {
      this.observer.reconcilePhase?.(phase, (performance.now() - started) / 1000)
    }
  }

  /**
   * One pass over every live session, however many: page by page (keyset), the most
   * urgent first (PASS_ORDER), so a session created last is still launched, failed
   * or stopped in this pass.
   */
  async reconcileOnce(): Promise<void> {
    const read = (statuses: SessionStatus[], after?: SessionCursor) => this.timed('read', () => this.sessions.inStatus(statuses, PAGE_SIZE, after))
    for (const statuses of PASS_ORDER) {
      let page = await read(statuses)
      for (;;) {
        // The next page is read while this one is described and stepped (keyset pages are
        // disjoint): at thousands of sessions, reading them one page after another was
        // nearly half of a pass.
        const next = page.length < PAGE_SIZE ? undefined : read(statuses, page[page.length - 1])
        next?.catch(() => {}) // awaited below; this only keeps a failure from going unhandled meanwhile
        if (page.length > 0) await this.reconcilePage(page)
        if (!next) break
        page = await next
      }
    }
  }

  private async reconcilePage(live: SessionRecord[]): Promise<void> {
    const launched = live.filter((s) => s.launchRef !== null && s.launcher === this.launcher.kind)
    // A launcher that cannot answer (throttling beyond the SDK's retries) leaves its sessions
    // unobserved for this pass; launches and everything else still go ahead.
    const observed = launched.length
      ? await this.timed('describe', () => this.launcher.describe(launched.map(targetOf))).catch((err: Error) => {
          this.logger?.warn({ err, sessions: launched.length }, 'describing the launched compute failed; those sessions wait for the next pass')
          return new Map<string, ObservedCompute>()
        })
      : new Map<string, ObservedCompute>()
    // A bounded number of steps at once: each may hold a database connection in a
    // transaction, and hundreds at once would starve the pool (and the API with it).
    const queue = live.filter((s) => s.launcher === this.launcher.kind)
    // What runs, asked at most once per page and only if an unrecorded launch needs it.
    let listed: Promise<RunningCompute[]> | undefined
    const running = () => (listed ??= this.launcher.listRunning())
    const worker = async () => {
      for (let s = queue.shift(); s; s = queue.shift()) {
        await this.step(s, s.launchRef ? observed.get(s.launchRef) : undefined, running).catch((err) =>
          this.logger?.error({ err, sessionId: s!.id, status: s!.status }, 'reconcile step failed; retrying next pass'),
        )
      }
    }
    await this.timed('step', () => Promise.all(Array.from({ length: STEP_CONCURRENCY }, worker)))
  }

  private async step(s: SessionRecord, seen: ObservedCompute | undefined, running: () => Promise<RunningCompute[]>): Promise<void> {
    switch (s.status) {
      case 'PENDING':
        return this.launch(s)
      case 'STARTING':
        if (!s.launchRef) return this.relaunchOrphanedClaim(s, running)
        if (seen && seen.state !== 'stopped' && seen.progress) await this.sessions.setProgress(s, seen.progress, s.status)
        // Where the agent answers, for the agent confirmer (its dead man's switch runs from launch).
        if (seen && seen.state !== 'stopped' && seen.host !== undefined && seen.port !== undefined && (seen.host !== s.host || seen.port !== s.port)) {
          await this.sessions.recordEndpoint(s, seen.host, seen.port)
        }
        if (s.mode === 'warm') return this.awaitWarm(s, seen)
        return this.awaitReady(s, seen)
      case 'READY':
      case 'DRAINING':
        if (s.mode === 'warm') return this.watchWarm(s, seen)
        return this.watchServing(s, seen)
      case 'STOPPING':
        return this.finishStopping(s, seen)
    }
  }

  /**
   * A starting warm pool agent is READY once its agent answers in phase `warm` (up and
   * waiting for an assignment); no Chroma runs yet, so Chroma's readiness is not asked.
   */
  private async awaitWarm(s: SessionRecord, seen: ObservedCompute | undefined): Promise<void> {
    if (!seen) return
    if (seen.state === 'stopped') return this.fail(s, seen.reason, 'compute_stopped')
    if (seen.state === 'running' && seen.stopping) return this.fail(s, `compute is stopping: ${seen.detail ?? 'stop requested'}`, 'compute_stopped')
    let lastReason = seen.detail ?? 'not running yet'
    if (seen.state === 'running') {
      runningSince(s) ?? (await this.sessions.markRunning(s, { host: seen.host, port: seen.port, phase: seen.detail ?? null, warm: true }, seen.size))
      const waiting = await this.warmPool.isWaiting(s, seen.host, seen.port).catch((err: Error) => {
        lastReason = `the warm agent does not answer: ${err.message}`
        return false
      })
      if (waiting) {
        const ok = await this.sessions.transition(s, ['STARTING'], 'READY', {
          type: 'ready',
          detail: { host: seen.host, port: seen.port, warm: true, startSeconds: secondsSince(s.launchedAt, s.observedAt) },
        }, { host: seen.host, port: seen.port, readyAt: DB_NOW }, false, Prisma.sql`sessions.mode = 'warm'`)
        if (ok) this.logger?.info({ sessionId: s.id, host: seen.host, port: seen.port }, 'warm agent ready')
        return
      }
    }
    if (this.pastStartDeadline(s)) await this.fail(s, `the warm agent was not ready within ${this.opts.startTimeoutSeconds}s: ${lastReason}`, 'start_timeout')
  }

  /** An unclaimed warm agent whose compute stopped failed (the pool refills); one told to stop by someone else leaves the pool. */
  private async watchWarm(s: SessionRecord, seen: ObservedCompute | undefined): Promise<void> {
    if (seen?.state === 'stopped') {
      await this.sessions.transition(s, [s.status], 'FAILED', { type: 'failed', reason: seen.reason, detail: { cause: 'compute_lost' } }, {
        error: `warm agent stopped unexpectedly: ${seen.reason}`,
        endedAt: DB_NOW,
      }, true, Prisma.sql`sessions.mode = 'warm'`)
      return
    }
    if (seen?.state === 'running' && seen.stopping) await this.warmPool.stopAgent(s, 'compute_stopping')
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
        await this.sessions.transition(s, [s.status], 'STOPPED', { type: 'stopped', reason: seen.reason, detail: { cause: 'compute_exited' } }, { endedAt: DB_NOW })
        return
      }
      await this.sessions.transition(s, [s.status], 'FAILED', { type: 'failed', reason: seen.reason, detail: { cause: 'compute_lost' } }, {
        error: `session compute stopped unexpectedly: ${seen.reason}`,
        endedAt: DB_NOW,
      })
      // "Stopped" may mean unusable rather than gone (an UNHEALTHY Fargate task keeps running).
      await this.launcher.stop(targetOf(s), 'failed').catch(() => {})
      return
    }
    if (seen?.state !== 'running') return
    if (seen.stopping) {
      if (s.status === 'READY') {
        await this.sessions.transition(s, ['READY'], 'DRAINING', { type: 'draining', reason: 'compute_stopping', detail: { phase: seen.detail ?? null } }, {
          drainingAt: DB_NOW,
          stopReason: 'interrupted',
        })
      }
      return
    }
    if (seen.progress) await this.sessions.setProgress(s, seen.progress, s.status)
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
        endedAt: DB_NOW,
      })
      if (ended && s.launchRef) await this.launcher.stop(targetOf(s), 'save failed').catch(() => {})
      return
    }
    const retryAt = (failed.lastAt?.getTime() ?? 0) + SAVE_RETRY_BASE_MS * 2 ** (failed.count - 1)
    if (failed.count > 0 && s.observedAt.getTime() < retryAt) return
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
    const claimed = await this.sessions.transition(s, ['PENDING'], 'STARTING', { type: 'launching' }, { launchedAt: DB_NOW })
    if (claimed) await this.launchAndRecord(s)
  }

  /**
   * A launch claimed ORPHANED_CLAIM_MS ago and still unrecorded: its claimant crashed, is
   * paused, or was deferred. Compute of this attempt already running (the claimant died
   * after RunTask or spawn) is adopted; otherwise a new attempt with the next generation
   * is launched, which fences the old claimant off (generation fencing: its writes are
   * refused, and whatever it still starts is superseded, for the orphan sweep to stop).
   * The deadline for an unrecorded launch runs from the session's creation.
   */
  private async relaunchOrphanedClaim(s: SessionRecord, running: () => Promise<RunningCompute[]>): Promise<void> {
    if (s.observedAt.getTime() - (s.launchedAt?.getTime() ?? 0) < ORPHANED_CLAIM_MS) return
    if (s.observedAt.getTime() - s.createdAt.getTime() > this.opts.startTimeoutSeconds * 1000) {
      return this.fail(s, 'the launch was never recorded', 'launch_unrecorded')
    }
    let found: RunningCompute | undefined
    try {
      found = (await running()).find((r) => r.sessionId === s.id && r.generation === s.generation)
    } catch (err) {
      // Unknown whether this attempt's compute runs: adopting or relaunching waits for an answer.
      this.logger?.warn({ sessionId: s.id, err: (err as Error).message }, 'cannot list running compute; the unrecorded launch waits for a later pass')
      return
    }
    if (found) {
      if (await this.sessions.recordLaunch(s, found.ref)) this.logger?.info({ sessionId: s.id, ref: found.ref }, 'adopted the compute of an unrecorded launch')
      return
    }
    const next = await this.sessions.relaunch(s, `the launch of generation ${s.generation} was not recorded within ${ORPHANED_CLAIM_MS / 1000} s`)
    if (next) await this.launchAndRecord(next)
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
      ...(s.mode === 'warm' ? { warm: true } : {}),
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
      // A claimed warm agent is told its snapshot (again: the claimant's call may have been lost) until it restores.
      if (s.claimedAt) {
        await this.warmPool.assign({ ...s, host: seen.host, port: seen.port }).catch((err: Error) => (lastReason = `assigning the snapshot failed: ${err.message}`))
      }
      const readiness = await this.readyIfServing(s, seen.host, seen.port, runningAt)
      if (readiness.ready) return
      lastReason = readiness.reason
    }
    if (this.pastStartDeadline(s)) {
      await this.fail(s, `not ready within ${this.opts.startTimeoutSeconds}s: ${lastReason}`, 'start_timeout')
    }
  }

  /** Asks the session's Chroma whether it serves (its collection, if it names one); if so, moves it STARTING → READY. */
  private async readyIfServing(s: SessionRecord, host: string, port: number, runningAt: Date | null): Promise<{ ready: boolean; reason: string }> {
    const readiness = await this.chroma.readiness(`http://${host}:${port}`, s.collection, this.tokens.sessionToken(s.id, s.generation))
    if (!readiness.ready) return { ready: false, reason: readiness.reason }
    const now = s.observedAt
    const ok = await this.sessions.transition(s, ['STARTING'], 'READY', {
      type: 'ready',
      detail: {
        host,
        port,
        startSeconds: secondsSince(s.claimedAt ?? s.launchedAt, now),
        phases: startPhases(s, runningAt ?? now, now),
        ...(s.claimedAt ? { warm: true } : {}),
      },
    }, { host, port, readyAt: DB_NOW })
    if (ok) {
      await this.sessions.setProgress(s, null, 'READY')
      this.logger?.info({ sessionId: s.id, host, port }, 'session ready')
    }
    return { ready: true, reason: 'ready' }
  }

  /**
   * The claimed warm agents' restores, followed more often than a pass: a warm start is a
   * restore of a second or so, and a pass every second would add half a second to it.
   * Readiness only, at the endpoint the agent answered from while warm (no launcher call);
   * everything else about these sessions (a stopped task, the deadline, the assignment
   * repeated) stays with the pass. Idempotent: the READY transition is fenced on STARTING.
   */
  async finishClaimedStarts(): Promise<void> {
    const starting = await this.sessions.claimedStarting(this.launcher.kind)
    await Promise.all(
      starting.map((s) =>
        this.readyIfServing(s, s.host!, s.port!, runningSince(s)).catch((err: Error) =>
          this.logger?.debug({ sessionId: s.id, err: err.message }, 'claimed warm agent not answering yet'),
        ),
      ),
    )
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
    await this.sessions.transition(s, ['STOPPING'], 'STOPPED', { type: 'stopped', reason: s.stopReason }, { endedAt: DB_NOW })
  }

  /** FAILED keeps the reason (and its cause, for metrics); the compute is stopped here, and by the orphan sweeper should this crash. */
  private async fail(s: SessionRecord, reason: string, cause: LaunchFailureCause): Promise<void> {
    // Judged on a warm agent unclaimed when read: a claim since then makes it another session's start.
    const fence = s.mode === 'warm' ? Prisma.sql`sessions.mode = 'warm'` : Prisma.sql`TRUE`
    const ok = await this.sessions.transition(s, ['PENDING', 'STARTING'], 'FAILED', { type: 'failed', reason, detail: { cause } }, {
      error: reason,
      endedAt: DB_NOW,
    }, true, fence)
    if (!ok) return
    this.logger?.warn({ sessionId: s.id, reason }, 'session failed')
    if (s.launchRef) await this.launcher.stop(targetOf(s), 'failed').catch(() => {})
  }

  /** Judged on the database's clock as of the pass's read of the session, never the host's. */
  private pastStartDeadline(s: SessionRecord): boolean {
    // A claimed warm agent's start runs from its claim (its launch may be hours old).
    const started = (s.claimedAt ?? s.launchedAt)?.getTime() ?? s.createdAt.getTime()
    return s.observedAt.getTime() - started > this.opts.startTimeoutSeconds * 1000
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

/**
 * The phases of the time to READY (see START_PHASES), in seconds, from the session's own
 * timestamps. A claimed warm agent was launched and running before its claim: its whole
 * start (restore and Chroma's boot) falls in chroma_boot.
 */
function startPhases(s: SessionRecord, runningAt: Date, readyAt: Date): StartPhases {
  const launchedAt = s.launchedAt ?? s.createdAt
  const seconds = (from: Date, to: Date) => Math.max(0, (to.getTime() - from.getTime()) / 1000)
  if (s.claimedAt) return { launching: 0, provisioning: 0, chroma_boot: seconds(s.claimedAt, readyAt) }
  return {
    launching: seconds(s.createdAt, launchedAt),
    provisioning: seconds(launchedAt, runningAt),
    chroma_boot: seconds(runningAt, readyAt),
  }
}
