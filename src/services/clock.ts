import { Prisma } from '../generated/prisma/client.ts'
import type { Database } from '../database/client.ts'

/**
 * Time is a dependency, and there is one clock: the database's. Every TTL predicate
 * and every new expiry or lifecycle timestamp is computed by Postgres in the statement
 * that acts on it, from `clock.sql` (DESIGN.md, "One clock"), so replicas with skewed
 * or jumping host clocks agree, and a replica paused between reading a time and
 * writing cannot act on a stale one.
 *
 * `now()` is this process's estimate of that time. It serves only what stays in
 * memory (pacing of workers, display) and never decides whether a lease or a
 * session has run out.
 */
export interface Clock {
  now(): Date
  /** "Now" as SQL: Postgres's now() in production, a fixed instant on a ManualClock. */
  readonly sql: Prisma.Sql
}

/** Postgres's transaction time: what every statement on the production clock reads. */
const DATABASE_NOW = Prisma.sql`now()`

/** For code that has no database at hand (a launcher's in-memory pacing). */
export const systemClock: Clock = { now: () => new Date(), sql: DATABASE_NOW }

/**
 * The database's clock. now() adds to the host's clock the offset to Postgres's
 * clock_timestamp() measured at start and on every sync(): only an estimate, for
 * pacing and display, since the host clock may jump between syncs.
 */
export class DatabaseClock implements Clock {
  readonly sql = DATABASE_NOW
  private offsetMs = 0
  constructor(
    private readonly db: Database,
    /** The host's clock (a test injects one that jumps). */
    private readonly hostNow: () => number = Date.now,
  ) {}

  now(): Date {
    return new Date(this.hostNow() + this.offsetMs)
  }

  async sync(): Promise<void> {
    const before = this.hostNow()
    const [row] = await this.db.$queryRaw<Array<{ now: Date }>>`SELECT clock_timestamp() AS now`
    const after = this.hostNow()
    if (row) this.offsetMs = row.now.getTime() - (before + after) / 2
  }
}

/**
 * A clock that moves only when told to, for tests and simulations. Its SQL is the
 * instant it shows, so the same statements that read Postgres's now() in production
 * read this clock in tests.
 */
export class ManualClock implements Clock {
  private t: number
  constructor(start: Date | number = Date.parse('2026-01-01T00:00:00Z')) {
    this.t = typeof start === 'number' ? start : start.getTime()
  }
  now(): Date {
    return new Date(this.t)
  }
  get sql(): Prisma.Sql {
    return Prisma.sql`${new Date(this.t)}::timestamptz`
  }
  advance(seconds: number): void {
    this.t += seconds * 1000
  }
}
