import type { Logger } from 'pino'
import type { Database, SqlPool } from '../database/client.ts'
import type { ChangeFeed } from '../database/change-feed.ts'
import { ApiKeyService, LeaseTokens } from './auth.ts'
import { ChromaClient } from './chroma.ts'
import { CostReport } from './cost-report.ts'
import type { Clock } from './clock.ts'
import { DEFAULT_FARGATE_PRICES, type FargatePrices } from './cost.ts'
import { EndedLeases } from './ended-leases.ts'
import { LeaseRouter } from './lease-routes.ts'
import { LeaseService, type LeaseLimits } from './leases.ts'
import { Metrics } from './metrics.ts'
import { QueryService } from './query.ts'
import { DEFAULT_HOLD_SETTINGS, RequestHold, type HoldSettings } from './request-hold.ts'
import { RetentionService } from './retention.ts'
import { SaveBackService } from './save-back.ts'
import { SessionAgentClient } from './session-agent.ts'
import { SessionService } from './sessions.ts'
import { SnapshotService, type S3Sender } from './snapshots/snapshot-service.ts'
import { WarmPoolService } from './warm-pool.ts'
import { WarmPoolHintService } from './warm-pool-hints.ts'
import { PinService } from './pins.ts'

export interface ServiceDeps {
  db: Database
  /** The same pool as db, for the hot-path statements (SqlPool). */
  sql: SqlPool
  clock: Clock
  changes: ChangeFeed
  tokenSecret: Buffer
  limits: LeaseLimits
  snapshotRoot: string
  s3?: S3Sender
  /** Where services and workers report what they do; none: a Metrics of their own. */
  metrics?: Metrics
  /** How long a save-back may take before the control plane gives up on it (default 900 s). */
  saveTimeoutSeconds?: number
  /** Writes one structured line per session event; none: no event log. */
  logger?: Logger
  /** Fargate prices for session costs; none: us-east-1's. */
  prices?: FargatePrices
  /** WARM_POOL_MIN/MAX and the age at which a warm agent is replaced; none: no warm pool. */
  warmPool?: { min: number; max: number; maxAgeSeconds: number }
  /** How proxied requests and queries wait for a starting session; none: DEFAULT_HOLD_SETTINGS. */
  hold?: HoldSettings
}

export type Services = ReturnType<typeof createServices>

/** The domain, wired once: the app's routes and the workers share these instances. */
export function createServices(deps: ServiceDeps) {
  const prices = deps.prices ?? DEFAULT_FARGATE_PRICES
  const metrics = deps.metrics ?? new Metrics(deps.db, deps.clock, prices)
  const sessions = new SessionService(deps.db, deps.sql, deps.clock, prices, metrics, deps.logger)
  const snapshots = new SnapshotService({ snapshotRoot: deps.snapshotRoot, s3: deps.s3 })
  const tokens = new LeaseTokens(deps.tokenSecret)
  const chroma = new ChromaClient()
  const agents = new SessionAgentClient()
  const warmPool = new WarmPoolService({
    sql: deps.sql,
    clock: deps.clock,
    sessions,
    agents,
    tokens,
    settings: { min: 0, max: 0, maxAgeSeconds: 21_600, ...deps.warmPool, launcher: deps.limits.launcher },
    logger: deps.logger,
  })
  const warmPoolHints = new WarmPoolHintService({ sql: deps.sql, clock: deps.clock, max: deps.warmPool?.max ?? 0 })
  const costs = new CostReport(deps.sql, deps.clock, prices)
  if (warmPool.enabled) metrics.watchWarmPool(warmPool, () => costs.idleBeforeClaim('warm_pool'))
  const leases = new LeaseService({ db: deps.db, sql: deps.sql, clock: deps.clock, sessions, snapshots, chroma, tokens, changes: deps.changes, limits: deps.limits, observer: metrics, warmPool, logger: deps.logger })
  const router = new LeaseRouter(deps.sql, deps.clock, deps.changes, tokens)
  const pins = new PinService({ sql: deps.sql, clock: deps.clock, sessions, snapshots, idleTtlSeconds: deps.limits.idleTtlSeconds, launcher: deps.limits.launcher, logger: deps.logger })
  const holds = new RequestHold({ router, sessions, changes: deps.changes, settings: deps.hold ?? DEFAULT_HOLD_SETTINGS, observer: metrics })
  const query = new QueryService(holds, chroma)
  const saveBack = new SaveBackService(sessions, agents, tokens, snapshots, { saveTimeoutSeconds: deps.saveTimeoutSeconds ?? 900 }, deps.logger)
  const apiKeys = new ApiKeyService(deps.db, deps.clock)
  const retention = new RetentionService(deps.sql, prices)
  const endedLeases = new EndedLeases(deps.sql, deps.clock)
  return { metrics, sessions, snapshots, tokens, leases, chroma, agents, saveBack, router, holds, query, apiKeys, costs, retention, endedLeases, warmPool, warmPoolHints, pins }
}
