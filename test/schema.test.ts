import { readFile } from 'node:fs/promises'
import t from 'tap'
import pg from 'pg'
import { createDatabase } from '../src/database/client.ts'
import { migrate } from '../src/database/migrator.ts'
import * as enums from '../src/generated/prisma/enums.ts'
import { freshDatabaseUrl, stopTestDatabase } from './helpers/database.ts'

// Prisma's `migrate diff` needs a native engine that cannot run here, so this test is
// the proof that prisma/migrations builds exactly what schema.prisma describes: the
// generated client's data model against the migrated database's information_schema.

t.teardown(stopTestDatabase)

type Field = { name: string; kind: string; type: string; dbName?: string | null }
type Model = { dbName: string | null; fields: Field[] }

const schemaText = await readFile(new URL('../prisma/schema.prisma', import.meta.url), 'utf8')

/** `model X { ... }` blocks of schema.prisma, field lines by field name (for `?` and `@db.*`). */
function fieldLines(model: string): Map<string, string> {
  const block = new RegExp(`model ${model} \\{([\\s\\S]*?)\\n\\}`).exec(schemaText)![1]!
  return new Map(
    block
      .split('\n')
      .map((l) => l.trim())
      .filter((l) => /^[a-z]\w*\s+\w/.test(l))
      .map((l) => [l.split(/\s+/)[0]!, l]),
  )
}

const PG_TYPES: Record<string, string> = {
  String: 'text',
  Int: 'integer',
  BigInt: 'bigint',
  DateTime: 'timestamp with time zone',
  Json: 'jsonb',
  Boolean: 'boolean',
  Float: 'double precision',
}

const url = await freshDatabaseUrl({ migrated: false })
const first = await migrate(url)
const client = new pg.Client({ connectionString: url })
await client.connect()
t.teardown(() => client.end())
const db = createDatabase(url, 1)
t.teardown(() => db.$disconnect())
const models = (db as unknown as { _runtimeDataModel: { models: Record<string, Model> } })._runtimeDataModel.models

t.test('migrations apply once and are recorded as prisma migrate deploy would', async (t) => {
  t.ok(first.applied.length >= 1)
  const again = await migrate(url)
  t.same(again.applied, [], 'a second run applies nothing')
  const { rows } = await client.query('SELECT migration_name, checksum, finished_at FROM _prisma_migrations ORDER BY migration_name')
  t.same(rows.map((r) => r.migration_name), first.applied)
  for (const r of rows) {
    t.match(r.checksum, /^[0-9a-f]{64}$/)
    t.ok(r.finished_at)
  }
})

t.test('every model is a table with exactly its columns, types and nullability', async (t) => {
  const { rows: columns } = await client.query(
    `SELECT table_name, column_name, data_type, udt_name, is_nullable FROM information_schema.columns WHERE table_schema = 'public'`,
  )
  for (const [name, model] of Object.entries(models)) {
    const table = model.dbName ?? name
    const lines = fieldLines(name)
    const dbColumns = columns.filter((c) => c.table_name === table)
    t.ok(dbColumns.length > 0, `${name} → table ${table}`)
    const scalars = model.fields.filter((f) => f.kind === 'scalar' || f.kind === 'enum')
    t.same(dbColumns.map((c) => c.column_name).sort(), scalars.map((f) => f.dbName ?? f.name).sort(), `${table}: no missing or extra columns`)
    for (const f of scalars) {
      const column = dbColumns.find((c) => c.column_name === (f.dbName ?? f.name))
      if (!column) continue
      const line = lines.get(f.name)!
      const list = new RegExp(`^${f.name}\\s+\\w+\\[\\]`).test(line)
      const elementType = f.kind === 'enum' ? 'USER-DEFINED' : line.includes('@db.Uuid') ? 'uuid' : line.includes('@db.Date') ? 'date' : PG_TYPES[f.type]
      if (list) {
        // A scalar list is an array column, nullable as Prisma migrate makes it.
        t.equal(column.data_type, 'ARRAY', `${table}.${column.column_name} type`)
        const udt: Record<string, string> = { uuid: 'uuid', text: 'text', integer: 'int4', bigint: 'int8', date: 'date', 'double precision': 'float8', boolean: 'bool' }
        t.equal(column.udt_name, `_${udt[elementType ?? ""]}`, `${table}.${column.column_name} element type`)
        t.equal(column.is_nullable, 'YES', `${table}.${column.column_name} nullability`)
        continue
      }
      t.equal(column.data_type, elementType, `${table}.${column.column_name} type`)
      if (f.kind === 'enum') t.equal(column.udt_name, f.type, `${table}.${column.column_name} enum type`)
      const optional = new RegExp(`^${f.name}\\s+\\w+\\?`).test(line)
      t.equal(column.is_nullable, optional ? 'YES' : 'NO', `${table}.${column.column_name} nullability`)
    }
  }
})

t.test('enums have exactly the generated values', async (t) => {
  for (const name of ['SessionStatus', 'SessionMode', 'ApiKeyRole'] as const) {
    const { rows } = await client.query(
      `SELECT e.enumlabel FROM pg_enum e JOIN pg_type ty ON ty.oid = e.enumtypid WHERE ty.typname = $1 ORDER BY e.enumsortorder`,
      [name],
    )
    t.same(rows.map((r) => r.enumlabel), Object.values(enums[name]), name)
  }
})

t.test('unique constraints and indexes of schema.prisma exist, and the partial index of invariant 2', async (t) => {
  const { rows } = await client.query(`SELECT tablename, indexdef FROM pg_indexes WHERE schemaname = 'public' AND indexdef LIKE 'CREATE UNIQUE%'`)
  const has = (table: string, cols: string[]) =>
    rows.some((r) => r.tablename === table && new RegExp(`\\(${cols.map((c) => `"?${c}"?`).join(', ')}\\)`).test(r.indexdef))
  for (const [name, model] of Object.entries(models)) {
    const table = model.dbName ?? name
    const col = (field: string) => model.fields.find((f) => f.name === field)?.dbName ?? field
    for (const [field, line] of fieldLines(name)) {
      if (/@unique\b/.test(line) || /@id\b/.test(line)) t.ok(has(table, [col(field)]), `${table}.${col(field)} is unique`)
    }
    const block = new RegExp(`model ${name} \\{([\\s\\S]*?)\\n\\}`).exec(schemaText)![1]!
    for (const m of block.matchAll(/@@unique\(\[([^\]]+)\]\)/g)) {
      const cols = m[1]!.split(',').map((s) => col(s.trim()))
      t.ok(has(table, cols), `${table} unique (${cols.join(', ')})`)
    }
  }
  const all = (await client.query(`SELECT tablename, indexdef FROM pg_indexes WHERE schemaname = 'public'`)).rows
  for (const [name, model] of Object.entries(models)) {
    const table = model.dbName ?? name
    const col = (field: string) => model.fields.find((f) => f.name === field)?.dbName ?? field
    const block = new RegExp(`model ${name} \\{([\\s\\S]*?)\\n\\}`).exec(schemaText)![1]!
    for (const m of block.matchAll(/@@index\(\[([^\]]+)\]\)/g)) {
      const cols = m[1]!.split(',').map((s) => col(s.trim()))
      const pattern = new RegExp(`\\(${cols.map((c) => `"?${c}"?`).join(', ')}\\)`)
      t.ok(all.some((r) => r.tablename === table && pattern.test(r.indexdef)), `${table} index (${cols.join(', ')})`)
    }
  }
  const partial = rows.find((r) => /sessions_one_live_per_pool/.test(r.indexdef))
  t.match(partial?.indexdef, /WHERE \(status = ANY \(ARRAY\['PENDING'::"SessionStatus", 'STARTING'::"SessionStatus", 'READY'::"SessionStatus"\]\)\)/)
})
