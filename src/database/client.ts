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

/** Postgres SQLSTATEs and socket errors that mean "the database cannot be reached now", not "this statement is wrong". */
const UNAVAILABLE_CODES = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ETIMEDOUT',
  'EPIPE',
  'ENOTFOUND',
  'EAI_AGAIN',
  '57P01', // admin_shutdown: the server is stopping
  '57P02', // crash_shutdown
  '57P03', // cannot_connect_now: starting up or shutting down
  '08000',
  '08001',
  '08003',
  '08004',
  '08006', // connection exceptions
  '53300', // too_many_connections
  'P1001', // Prisma: can't reach database server
  'P1002', // Prisma: reached but timed out
  'P1008', // Prisma: operations timed out
  'P1017', // Prisma: server closed the connection
  'P2024', // Prisma: timed out fetching a connection from the pool
])
const UNAVAILABLE_KINDS = new Set(['DatabaseNotReachable', 'ConnectionClosed', 'SocketTimeout', 'TooManyConnections'])
const UNAVAILABLE_MESSAGES = /Connection terminated|connection timeout|Client has encountered a connection error|Can't reach database server|Server has closed the connection/i

/**
 * True when an error (or one it wraps) says the database is out of reach, for now: a
 * request answers 503 and its client retries (an acquire with its Idempotency-Key,
 * since a connection lost during a commit leaves the outcome unknown).
 */
export function isDatabaseUnavailable(err: unknown): boolean {
  for (let e = err as Record<string, unknown> | undefined, depth = 0; e && typeof e === 'object' && depth < 5; depth++) {
    if (typeof e.code === 'string' && UNAVAILABLE_CODES.has(e.code)) return true
    if (typeof e.kind === 'string' && UNAVAILABLE_KINDS.has(e.kind)) return true
    if (typeof e.originalCode === 'string' && UNAVAILABLE_CODES.has(e.originalCode)) return true
    if (typeof e.message === 'string' && UNAVAILABLE_MESSAGES.test(e.message)) return true
    // Prisma's known request errors (e.g. P2039) keep the driver's error under meta.driverAdapterError.
    const adapterError = (e.meta as { driverAdapterError?: unknown } | undefined)?.driverAdapterError
    e = (e.cause ?? (e as { originalError?: unknown }).originalError ?? adapterError) as Record<string, unknown> | undefined
  }
  return false
}
