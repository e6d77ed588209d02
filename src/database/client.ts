import { PrismaPg } from '@prisma/adapter-pg'
import { PrismaClient } from '../generated/prisma/client.ts'

export type Database = PrismaClient

/** The Prisma client over node-postgres; no native query engine (Prisma 7). */
export function createDatabase(url: string, poolSize = 20): Database {
  return new PrismaClient({ adapter: new PrismaPg({ connectionString: url, max: poolSize }) })
}
