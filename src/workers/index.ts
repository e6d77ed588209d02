import type { Logger } from 'pino'
import type { Clock } from '../services/clock.ts'
import type { Services } from '../services/index.ts'
import type { Launcher } from '../services/launchers/launcher.ts'
import type { Database } from '../database/client.ts'
import type { Observer } from '../services/metrics.ts'
import { AgentConfirmer } from './agent-confirmer.ts'
import { LeaseRevoker } from './lease-revoker.ts'
import { WorkerLoop } from './loop.ts'
import { OrphanSweeper } from './orphan-sweeper.ts'
import { Reaper } from './reaper.ts'
import { Reconciler } from './reconciler.ts'
import { Retention } from './retention.ts'

export interface WorkerSettings {
  startTimeoutSeconds: number
  maxSessionSeconds: number
  drainGraceSeconds: number
  reconcileIntervalSeconds: number
  sweepIntervalSeconds: number
  /** The agents' dead man's switch (default 900 s) and how often the agent confirmer confirms each (default 60 s). */
  deadManSeconds?: number
  confirmIntervalSeconds?: number
  /** RETENTION_DAYS (default 30). */
  retentionDays?: number
}

/** How often the retention worker looks for ended sessions past RETENTION_DAYS. */
export const RETENTION_INTERVAL_SECONDS = 600

export type Workers = ReturnType<typeof createWorkers>

/** The background loops, built from the same services the routes use. Workers call services, never routes. */
export function createWorkers(deps: {
  db: Database
  clock: Clock
  services: Services
  launcher: Launcher
  settings: WorkerSettings
  logger?: Logger
  /** Where the workers report what they do; default: the services' metrics. */
  observer?: Observer
}) {
  const { db, clock, services, launcher, settings, logger } = deps
  const observer = deps.observer ?? services.metrics
  const reconciler = new Reconciler(services.sessions, launcher, services.chroma, services.saveBack, services.tokens, {
    startTimeoutSeconds: settings.startTimeoutSeconds,
    deadManSeconds: settings.deadManSeconds ?? 900,
  }, logger)
  const confirmer = new AgentConfirmer(services.sessions, services.agents, services.tokens, launcher.kind, clock, {
    confirmIntervalSeconds: settings.confirmIntervalSeconds ?? 60,
  }, logger)
  const revoker = new LeaseRevoker(services.sessions, services.endedLeases, services.agents, services.tokens, launcher.kind, clock, logger)
  const reaper = new Reaper(db, clock, services.sessions, { maxSessionSeconds: settings.maxSessionSeconds, drainGraceSeconds: settings.drainGraceSeconds }, logger)
  const sweeper = new OrphanSweeper(db, launcher, services.sessions, logger, observer)
  const retention = new Retention(clock, services.retention, { retentionDays: settings.retentionDays ?? 30 }, logger)
  const loops = [
    new WorkerLoop('reconciler', settings.reconcileIntervalSeconds * 1000, () => reconciler.reconcileOnce(), logger),
    // As often as the reconciler (restoring sessions are followed every pass); the rest only when due.
    new WorkerLoop('agent-confirmer', settings.reconcileIntervalSeconds * 1000, () => confirmer.confirmSessions(), logger),
    // Released leases' direct-access tokens are refused within a pass or two.
    new WorkerLoop('lease-revoker', settings.reconcileIntervalSeconds * 1000, () => revoker.revokeOnce(), logger),
    new WorkerLoop('reaper', settings.sweepIntervalSeconds * 1000, () => reaper.reapOnce(), logger),
    new WorkerLoop('orphan-sweeper', settings.sweepIntervalSeconds * 1000, () => sweeper.sweepOnce(), logger),
    new WorkerLoop('retention', RETENTION_INTERVAL_SECONDS * 1000, () => retention.purgeOnce(), logger),
  ]
  return {
    reconciler,
    confirmer,
    revoker,
    reaper,
    sweeper,
    retention,
    start: () => loops.forEach((l) => l.start()),
    stop: () => Promise.all(loops.map((l) => l.stop())),
  }
}
