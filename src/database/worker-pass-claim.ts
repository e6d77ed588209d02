import { randomUUID } from 'node:crypto'
import { Prisma } from '../generated/prisma/client.ts'
import type { SqlPool } from './client.ts'

/** Decides whether this replica runs a worker's pass now; WorkerLoop asks before each scheduled pass. */
export interface PassClaim {
  /** True: run the pass now (and call done() after it). False: another replica ran or runs it. */
  take(): Promise<boolean>
  /** The pass ended: the next one is due one interval from now, on whichever replica claims it first. */
  done(): Promise<void>
}

/**
 * A claim is released after this long even if its replica never finished the pass (it
 * crashed or was partitioned): another replica then runs the next one. A second pass
 * alongside a slow one is harmless (every step is fenced); it only repeats the calls.
 */
export const PASS_HOLD_SECONDS = 30

/**
 * One pass per interval for the whole fleet, kept in Postgres (worker_passes). Each
 * replica's loop still ticks every interval; the first to find the pass due claims it in
 * one conditional upsert, the others skip that tick. So a fleet of N replicas describes
 * its ECS tasks once per interval rather than N times, and a replica that dies mid-pass
 * holds up the next one by at most PASS_HOLD_SECONDS. Times are the database's
 * (clock_timestamp(), as the shared token bucket reads), so skewed hosts agree; this is
 * pacing, not a TTL of any lease or session.
 */
export class WorkerPassClaim implements PassClaim {
  constructor(
    private readonly sql: SqlPool,
    /** The worker and what it covers, e.g. `reconciler:fargate` (replicas of another launcher kind claim their own). */
    private readonly name: string,
    private readonly intervalSeconds: number,
    private readonly replica: string = randomUUID(),
  ) {}

  async take(): Promise<boolean> {
    const hold = Prisma.sql`clock_timestamp() + make_interval(secs => ${Math.max(PASS_HOLD_SECONDS, this.intervalSeconds * 2)}::float8)`
    const rows = await this.sql.rows<{ name: string }>(Prisma.sql`
      INSERT INTO worker_passes (name, next_at, running_until, replica)
      VALUES (${this.name}, clock_timestamp(), ${hold}, ${this.replica})
      ON CONFLICT (name) DO UPDATE SET running_until = ${hold}, replica = EXCLUDED.replica
      WHERE (worker_passes.running_until IS NULL AND worker_passes.next_at <= clock_timestamp())
         OR worker_passes.running_until <= clock_timestamp()
      RETURNING name`)
    return rows.length > 0
  }

  async done(): Promise<void> {
    // A tenth of the interval early, so that the replica whose tick comes next (its timer
    // runs an interval after its own last tick) finds the pass due rather than just missing it.
    await this.sql.execute(Prisma.sql`
      UPDATE worker_passes SET running_until = NULL,
        next_at = clock_timestamp() + make_interval(secs => ${this.intervalSeconds * 0.9}::float8)
      WHERE name = ${this.name} AND replica = ${this.replica}`)
  }
}
