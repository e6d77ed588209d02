import { createHash } from 'node:crypto'
import { PrismaPg } from '@prisma/adapter-pg'
import pg from 'pg'
import { PrismaClient, type Prisma } from '../generated/prisma/client.ts'

export type Database = PrismaClient

/**
 * The few statements on the hot paths (attach a lease, release it, read a session with
 * its lease count) are hand-written SQL already. Through Prisma's engine each costs
 * ~0.4 ms of CPU more than through node-postgres on this machine (see BENCHMARKS.md),
 * so they run here, on the same pool, built with the same `Prisma.sql` templates.
 */
export class SqlPool {
  constructor(private readonly pool: pg.Pool) {}

  async rows<T>(query: Prisma.Sql): Promise<T[]> {
    return (await this.pool.query(prepared(query))).rows as T[]
  }

  async execute(query: Prisma.Sql): Promise<number> {
    return (await this.pool.query(prepared(query))).rowCount ?? 0
  }
}

/**
 * A named statement, so each connection parses and plans it once instead of on every
 * call. Names come from the text, which the code's templates fix (values are always
 * parameters), so the number of distinct statements stays small and bounded.
 */
function prepared(query: Prisma.Sql): pg.QueryConfig {
  const name = `cl_${createHash('sha1').update(query.text).digest('hex').slice(0, 20)}`
  return { name, text: query.text, values: query.values }
}

/** Prisma 7 (no native engine) and the raw hot path, sharing one node-postgres pool. */
export function openDatabase(url: string, poolSize = 20): { db: Database; sql: SqlPool } {
  const pool = new pg.Pool({ connectionString: url, max: poolSize })
  const db = new PrismaClient({ adapter: new PrismaPg(pool, { disposeExternalPool: true }) })
  return { db, sql: new SqlPool(pool) }
}

/** Prisma alone, for tools and tests that need no hot path. */
export function createDatabase(url: string, poolSize = 20): Database {
  return openDatabase(url, poolSize).db
}
