import { setTimeout as sleep } from 'node:timers/promises'
import { Prisma } from '../generated/prisma/client.ts'
import type { RateLimiter } from '../services/launchers/token-bucket.ts'
import type { SqlPool } from './client.ts'

/**
 * A token bucket kept in Postgres, so every replica draws from the same one: ECS limits
 * RunTask per account and region, and N replicas each spacing their own calls would
 * send N times the rate. One UPDATE per token, refilled from the database's clock (the
 * replicas' clocks need not agree); callers in this process queue in order first, so
 * they do not contend for the row among themselves.
 */
export class SharedTokenBucket implements RateLimiter {
  private queue: Promise<void> = Promise.resolve()
  private created: Promise<void> | undefined

  constructor(
    private readonly sql: SqlPool,
    private readonly name: string,
    private readonly ratePerSecond: number,
    private readonly burst: number,
  ) {}

  take(): Promise<void> {
    const turn = this.queue.then(() => this.waitForToken())
    this.queue = turn.catch(() => {})
    return turn
  }

  /** The bucket's row, inserted once per process; a failed insert (the database unreachable) is tried again by the next take(). */
  private ensureRow(): Promise<void> {
    this.created ??= this.sql
      .execute(Prisma.sql`
        INSERT INTO rate_buckets (name, tokens, updated_at) VALUES (${this.name}, ${this.burst}::float8, clock_timestamp())
        ON CONFLICT (name) DO NOTHING`)
      .then(
        () => {},
        (err: unknown) => {
          this.created = undefined
          throw err
        },
      )
    return this.created
  }

  private async waitForToken(): Promise<void> {
    await this.ensureRow()
    const rate = Prisma.sql`${this.ratePerSecond}::float8`
    const available = Prisma.sql`least(${this.burst}::float8, tokens + ${rate} * extract(epoch FROM clock_timestamp() - updated_at)::float8)`
    for (;;) {
      const [row] = await this.sql.rows<{ took: boolean; tokens: number }>(Prisma.sql`
        WITH taken AS (
          UPDATE rate_buckets SET tokens = ${available} - 1, updated_at = clock_timestamp()
          WHERE name = ${this.name} AND ${available} >= 1
          RETURNING tokens
        )
        SELECT true AS took, tokens FROM taken
        UNION ALL
        SELECT false, ${available} FROM rate_buckets WHERE name = ${this.name} AND NOT EXISTS (SELECT 1 FROM taken)`)
      if (!row || row.took) return
      await sleep(Math.max(5, Math.ceil(((1 - row.tokens) / this.ratePerSecond) * 1000)))
    }
  }
}
