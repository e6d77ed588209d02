import type { Logger } from 'pino'
import type { Clock } from '../services/clock.ts'
import type { PurgeResult, RetentionService } from '../services/retention.ts'

export interface RetentionOptions {
  /** RETENTION_DAYS: ended sessions' leases and events older than this go (their costs stay as rollups). */
  retentionDays: number
  /** Sessions per batch: each batch is one short statement. */
  batchSize?: number
  /** Batches per pass at most, so one pass of a large backlog does not run on for long. */
  maxBatches?: number
}

/** Purges what retention allows, batch after batch, until a batch comes back short. */
export class Retention {
  constructor(
    private readonly clock: Clock,
    private readonly retention: RetentionService,
    private readonly opts: RetentionOptions,
    private readonly logger?: Logger,
  ) {}

  async purgeOnce(): Promise<PurgeResult> {
    const batchSize = this.opts.batchSize ?? 50
    const total: PurgeResult = { sessions: 0, leases: 0, events: 0 }
    for (let i = 0; i < (this.opts.maxBatches ?? 100); i++) {
      const batch = await this.retention.purgeBatch(this.opts.retentionDays, batchSize, this.clock.sql)
      total.sessions += batch.sessions
      total.leases += batch.leases
      total.events += batch.events
      if (batch.sessions < batchSize) break
    }
    if (total.sessions > 0) this.logger?.info({ ...total, retentionDays: this.opts.retentionDays }, 'purged ended sessions past retention (costs kept as rollups)')
    return total
  }
}
