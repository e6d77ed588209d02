import type { Logger } from 'pino'
import type { Clock } from '../services/clock.ts'
import type { Services } from '../services/index.ts'
import type { Launcher } from '../services/launchers/launcher.ts'
import type { Database, SqlPool } from '../database/client.ts'
import { WorkerPassClaim } from '../database/worker-pass-claim.ts'
import type { Observer } from '../services/metrics.ts'
import { WARM_POOL_PASS_SECONDS } from '../services/warm-pool.ts'
import { AgentConfirmer } from './agent-confirmer.ts'
import { LeaseRevoker } from './lease-revoker.ts'
import { WorkerLoop } from './loop.ts'
import { OrphanSweeper } from './orphan-sweeper.ts'
import { Reaper } from './reaper.ts'
import { Reconciler } from './reconciler.ts'
import { Retention } from './retention.ts'

/** How often claimed warm agents' restores are checked for readiness (s). */
const CLAIMED_START_POLL_SECONDS = 0.2

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
  /** How often the warm pool is brought to its target and pins to their counts (default WARM_POOL_PASS_SECONDS, 5 s). */
  warmPoolIntervalSeconds?: number
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
  /**
   * With it, the reconciler and the orphan sweep run one pass per interval for the whole
   * fleet (claimed in worker_passes), since each pass describes every task in the launcher's
   * backend; without it (a lone process in a test), every tick runs its pass.
   */
  sql?: SqlPool
}) {
  const { db, clock, services, launcher, settings, logger, sql } = deps
  const observer = deps.observer ?? services.metrics
  const reconciler = new Reconciler(services.sessions, launcher, services.chroma, services.saveBack, services.tokens, services.warmPool, {
    startTimeoutSeconds: settings.startTimeoutSeconds,
    deadManSeconds: settings.deadManSeconds ?? 900,
  }, logger, observer)
  const confirmer = new AgentConfirmer(services.sessions, services.agents, services.tokens, launcher.kind, clock, {
    confirmIntervalSeconds: settings.confirmIntervalSeconds ?? 60,
  }, logger)
  const revoker = new LeaseRevoker(services.endedLeases, services.agents, services.tokens, launcher.kind, clock, logger)
  const reaper = new Reaper(db, clock, services.sessions, { maxSessionSeconds: settings.maxSessionSeconds, drainGraceSeconds: settings.drainGraceSeconds }, logger)
  const sweeper = new OrphanSweeper(db, launcher, services.sessions, logger, observer)
  const retention = new Retention(clock, services.retention, { retentionDays: settings.retentionDays ?? 30 }, logger)
  const loop = (name: string, seconds: number, pass: () => Promise<unknown>, fleetWide = false) =>
    new WorkerLoop(name, seconds * 1000, pass, logger, {
      // Per launcher kind: replicas with another launcher reconcile other sessions.
      claim: fleetWide && sql ? new WorkerPassClaim(sql, `${name}:${launcher.kind}`, seconds) : undefined,
      onPass: (outcome) => observer.workerPass?.(name, outcome),
    })
  const loops = [
    loop('reconciler', settings.reconcileIntervalSeconds, () => reconciler.reconcileOnce(), true),
    // As often as the reconciler (restoring sessions are followed every pass); the rest only when due.
    // Per replica: what it remembers of each agent decides which are due.
    loop('agent-confirmer', settings.reconcileIntervalSeconds, () => confirmer.confirmSessions()),
    // Released leases' direct-access tokens are refused within a pass or two.
    loop('lease-revoker', settings.reconcileIntervalSeconds, () => revoker.revokeOnce()),
    loop('reaper', settings.sweepIntervalSeconds, () => reaper.reapOnce()),
    loop('orphan-sweeper', settings.sweepIntervalSeconds, () => sweeper.sweepOnce(), true),
    loop('retention', RETENTION_INTERVAL_SECONDS, () => retention.purgeOnce()),
    // Per replica, five times a second: only claimed warm agents still restoring are read (a handful), and a
    // warm start is a restore of a second or so that a 1 s pass would lengthen by half a second on average.
    ...(services.warmPool.enabled ? [loop('warm-starts', Math.min(CLAIMED_START_POLL_SECONDS, settings.reconcileIntervalSeconds), () => reconciler.finishClaimedStarts())] : []),
    // Fleet-wide: one replica sizes the pool per interval (two at once would launch twice the missing agents).
    ...(services.warmPool.enabled ? [loop('warm-pool', settings.warmPoolIntervalSeconds ?? WARM_POOL_PASS_SECONDS, () => services.warmPool.refill(), true)] : []),
    // Fleet-wide too: one replica starts what pins are missing per interval.
    loop('pins', settings.warmPoolIntervalSeconds ?? WARM_POOL_PASS_SECONDS, () => services.pins.keepOnce(), true),
  ]
  return {
    reconciler,
    confirmer,
    revoker,
    reaper,
    sweeper,
    retention,
    /** One scheduled pass of a loop by name, as its timer runs it (claimed first where fleet-wide); whether it ran. */
    tick: (name: string) => loops.find((l) => l.name === name)!.tick(),
    start: () => loops.forEach((l) => l.start()),
    stop: () => Promise.all(loops.map((l) => l.stop())),
  }
}
