import type { Logger } from 'pino'
import type { Database } from '../database/client.ts'
import type { Launcher } from '../services/launchers/launcher.ts'
import { noObserver, type Observer } from '../services/metrics.ts'
import { LIVE_STATUSES, type SessionService } from '../services/sessions.ts'

/**
 * Invariant 3: anything this control plane launched that has no live session (no row,
 * a row that ended, or a row that moved on to a later launch generation) is stopped.
 * Sessions are written before they are launched, so a launch in flight always has
 * its row and is never mistaken for an orphan.
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
    const running = await this.launcher.listRunning()
    const stillRunning = new Set(running.map((r) => `${r.sessionId}:${r.generation}:${r.ref}`))
    this.counted = new Set([...this.counted].filter((k) => stillRunning.has(k)))
    if (running.length === 0) return []
    const rows = await this.db.session.findMany({
      where: { id: { in: [...new Set(running.map((r) => r.sessionId))] } },
      select: { id: true, status: true, generation: true },
    })
    const byId = new Map(rows.map((r) => [r.id, r]))
    const stopped: string[] = []
    for (const compute of running) {
      const row = byId.get(compute.sessionId)
      const live = row && LIVE_STATUSES.includes(row.status) && row.generation === compute.generation
      if (live) continue
      const why = !row ? 'no session row' : row.generation !== compute.generation ? `superseded by generation ${row.generation}` : `session is ${row.status}`
      this.logger?.warn({ sessionId: compute.sessionId, ref: compute.ref, why }, 'stopping orphaned compute')
      await this.launcher.stop(compute, `orphan: ${why}`)
      // Stopping takes a few sweeps (SIGTERM, then SIGKILL after a grace): count each orphan once.
      const key = `${compute.sessionId}:${compute.generation}:${compute.ref}`
      if (!this.counted.has(key)) this.observer.orphanStopped(!row ? 'no_session' : row.generation !== compute.generation ? 'superseded' : 'session_ended')
      this.counted.add(key)
      if (row) await this.sessions.recordEvent(row.id, { type: 'orphan_stopped', reason: why, detail: { ref: compute.ref } }, row.status)
      stopped.push(compute.ref)
    }
    return stopped
  }
}
