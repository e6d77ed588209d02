import type { Logger } from 'pino'
import type { Database } from '../database/client.ts'
import type { Launcher, RunningCompute } from '../services/launchers/launcher.ts'
import { noObserver, type Observer, type OrphanCause } from '../services/metrics.ts'
import type { SessionStatus } from '../generated/prisma/enums.ts'
import { LIVE_STATUSES, type SessionService } from '../services/sessions.ts'

/**
 * Invariant 3: anything this control plane launched that has no live session (no row,
 * a row that ended, or a row that moved on to a later launch generation) is stopped,
 * and so is a second compute of a live session's generation (a duplicate: one the
 * session did not record as its launch_ref, e.g. a RunTask replay that did not see the
 * first task in ListTasks yet). Sessions are written before they are launched, so a
 * launch in flight always has its row and is never mistaken for an orphan; and while a
 * launch is not recorded yet (launch_ref unset: in flight, or its replica crashed before
 * writing it), every compute of that generation is left alone, since the next launch
 * attempt adopts one of them. Once the ref is recorded, the others are stopped.
 */
export class OrphanSweeper {
  constructor(
    private readonly db: Database,
    private readonly launcher: Launcher,
    private readonly sessions: SessionService,
    private readonly logger?: Logger,
    private readonly observer: Observer = noObserver,
  ) {}

  /** Orphans already counted for the observer, while they are still running. */
  private counted = new Set<string>()

  async sweepOnce(): Promise<string[]> {
    await this.sweepSecrets()
    const running = await this.launcher.listRunning()
    const stillRunning = new Set(running.map((r) => `${r.sessionId}:${r.generation}:${r.ref}`))
    this.counted = new Set([...this.counted].filter((k) => stillRunning.has(k)))
    if (running.length === 0) return []
    const rows = await this.db.session.findMany({
      where: { id: { in: [...new Set(running.map((r) => r.sessionId))] } },
      select: { id: true, status: true, generation: true, launcher: true, launchRef: true },
    })
    const byId = new Map(rows.map((r) => [r.id, r]))
    const stopped: string[] = []
    for (const compute of running) {
      const row = byId.get(compute.sessionId)
      const cause = orphanCause(row, compute, this.launcher.kind)
      if (!cause) continue
      const why = !row
        ? 'no session row'
        : cause === 'superseded'
          ? `superseded by generation ${row.generation}`
          : cause === 'duplicate'
            ? `a duplicate of ${row.launchRef}, the compute the session recorded`
            : `session is ${row.status}`
      this.logger?.warn({ sessionId: compute.sessionId, ref: compute.ref, why }, 'stopping orphaned compute')
      await this.launcher.stop(compute, `orphan: ${why}`)
      // Stopping takes a few sweeps (SIGTERM, then SIGKILL after a grace): count each orphan once.
      const key = `${compute.sessionId}:${compute.generation}:${compute.ref}`
      if (!this.counted.has(key)) this.observer.orphanStopped(cause)
      this.counted.add(key)
      if (row) await this.sessions.recordEvent(row.id, { type: 'orphan_stopped', reason: why, detail: { ref: compute.ref } }, row.status)
      stopped.push(compute.ref)
    }
    return stopped
  }

  /**
   * Per-launch secrets (Fargate's session secrets) whose launch attempt is no longer live:
   * no row, a later generation, or an ended session. A stop deletes its task's secret; this
   * catches what a stop did not reach (a launch that failed before any task, a crash).
   * Rows are written before launches, so a launch in flight always has a live row.
   */
  private async sweepSecrets(): Promise<void> {
    if (!this.launcher.listSecrets || !this.launcher.deleteSecret) return
    const secrets = await this.launcher.listSecrets()
    if (secrets.length === 0) return
    const rows = await this.db.session.findMany({ where: { id: { in: [...new Set(secrets.map((s) => s.sessionId))] } }, select: { id: true, status: true, generation: true } })
    const byId = new Map(rows.map((r) => [r.id, r]))
    for (const secret of secrets) {
      const row = byId.get(secret.sessionId)
      if (row && row.generation === secret.generation && LIVE_STATUSES.includes(row.status)) continue
      this.logger?.info({ sessionId: secret.sessionId, generation: secret.generation }, 'deleting a leftover session secret')
      await this.launcher.deleteSecret(secret.sessionId, secret.generation)
    }
  }
}

/**
 * Why a running compute is an orphan, or undefined when it is its session's. A live
 * session of the same generation owns it unless the session recorded another ref for
 * that generation (refs are compared as the launcher reports them: launch() and
 * listRunning() name a compute alike, a task ARN or a pid). A row of another launcher
 * kind has no ref of ours to compare with. launch_ref is read as the ref of the row's
 * current generation: whatever bumps the generation clears launch_ref with it
 * (SessionService.relaunch), or the new generation's first compute would look like a
 * duplicate of the old one's before its own ref is recorded.
 */
export function orphanCause(
  row: { status: SessionStatus; generation: number; launcher: string; launchRef: string | null } | undefined,
  compute: RunningCompute,
  launcherKind: Launcher['kind'],
): OrphanCause | undefined {
  if (!row) return 'no_session'
  if (row.generation !== compute.generation) return 'superseded'
  if (!LIVE_STATUSES.includes(row.status)) return 'session_ended'
  if (row.launchRef !== null && row.launcher === launcherKind && row.launchRef !== compute.ref) return 'duplicate'
  return undefined
}
