import type { S3Client } from '@aws-sdk/client-s3'
import type { Database } from '../database/client.ts'
import type { ChangeFeed } from '../database/change-feed.ts'
import { ApiKeyService, LeaseTokens } from './auth.ts'
import { ChromaClient } from './chroma.ts'
import type { Clock } from './clock.ts'
import { LeaseRouter } from './lease-routes.ts'
import { LeaseService, type LeaseLimits } from './leases.ts'
import { QueryService } from './query.ts'
import { SessionService } from './sessions.ts'
import { SnapshotService } from './snapshots/snapshot-service.ts'

export interface ServiceDeps {
  db: Database
  clock: Clock
  changes: ChangeFeed
  tokenSecret: Buffer
  limits: LeaseLimits
  snapshotRoot: string
  s3?: S3Client
}

export type Services = ReturnType<typeof createServices>

/** The domain, wired once: the app's routes and the workers share these instances. */
export function createServices(deps: ServiceDeps) {
  const sessions = new SessionService(deps.db, deps.clock)
  const snapshots = new SnapshotService({ snapshotRoot: deps.snapshotRoot, s3: deps.s3 })
  const tokens = new LeaseTokens(deps.tokenSecret)
  const leases = new LeaseService({ db: deps.db, clock: deps.clock, sessions, snapshots, tokens, changes: deps.changes, limits: deps.limits })
  const chroma = new ChromaClient()
  const router = new LeaseRouter(deps.db, deps.clock, deps.changes)
  const query = new QueryService(router, chroma)
  const apiKeys = new ApiKeyService(deps.db, deps.clock)
  return { sessions, snapshots, tokens, leases, chroma, router, query, apiKeys }
}
