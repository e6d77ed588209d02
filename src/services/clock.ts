import type { Database } from '../database/client.ts'

/**
 * Time is a dependency. Every TTL comparison goes through one Clock, so tests hand
 * in a ManualClock instead of sleeping, and production replicas agree on time.
 */
export interface Clock {
  now(): Date
}

export const systemClock: Clock = { now: () => new Date() }

/**
 * The database's clock, read without a round trip per call: the offset between this
 * host's clock and Postgres's `now()` is measured at start and on every sync(), so
 * replicas with skewed host clocks still compare TTLs against the same time.
 */
export class DatabaseClock implements Clock {
  private offsetMs = 0
  constructor(private readonly db: Database) {}

  now(): Date {
    return new Date(Date.now() + this.offsetMs)
  }

  async sync(): Promise<void> {
    const before = Date.now()
    const [row] = await this.db.$queryRaw<Array<{ now: Date }>>`SELECT clock_timestamp() AS now`
    const after = Date.now()
    if (row) this.offsetMs = row.now.getTime() - (before + after) / 2
  }
}

/** A clock that moves only when told to: for tests and simulations. */
export class ManualClock implements Clock {
  private t: number
  constructor(start: Date | number = Date.parse('2026-01-01T00:00:00Z')) {
    this.t = typeof start === 'number' ? start : start.getTime()
  }
  now(): Date {
    return new Date(this.t)
  }
  advance(seconds: number): void {
    this.t += seconds * 1000
  }
}
