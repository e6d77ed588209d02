import { mkdir, mkdtemp } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { buildTestApp } from './helpers/app.ts'

t.test('liveness, readiness and metrics', async (t) => {
  const root = await mkdtemp(join(tmpdir(), 'health-'))
  await mkdir(join(root, 'snap'))
  const ctx = await buildTestApp(t, { snapshotRoot: root })
  t.same((await ctx.app.inject('/healthz')).json(), { status: 'ok' })
  t.same((await ctx.app.inject('/readyz')).json(), { status: 'ready' })
  for (let i = 0; i < 3; i++) {
    await ctx.app.inject({ method: 'POST', url: '/v1/leases', payload: { snapshot: `file://${root}/snap`, mode: i === 2 ? 'exclusive' : 'shared' } })
  }
  const metrics = await ctx.app.inject('/metrics')
  t.equal(metrics.statusCode, 200)
  t.match(metrics.headers['content-type'], /^text\/plain/)
  t.match(metrics.body, /^chroma_lease_sessions\{status="PENDING"\} 2$/m, 'sessions by status, counted')
  t.match(metrics.body, /^chroma_lease_live_leases 3$/m, 'live leases, counted')
  t.match(metrics.body, /chroma_lease_http_request_duration_seconds_count\{method="POST",route="\/v1\/leases",status_class="2xx"\} 3/)
  t.match(metrics.body, /chroma_lease_process_resident_memory_bytes/)
  t.notMatch(metrics.body, /[0-9a-f]{8}-[0-9a-f]{4}-/, 'no ids as labels')
})

t.test('readiness fails when the database is gone', async (t) => {
  const ctx = await buildTestApp(t)
  // The database goes away under the running app.
  const admin = new URL(ctx.databaseUrl)
  const name = admin.pathname.slice(1)
  admin.pathname = '/postgres'
  const pg = await import('pg')
  const c = new pg.default.Client({ connectionString: admin.toString() })
  await c.connect()
  await c.query(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()`, [name])
  await c.query(`DROP DATABASE "${name}" WITH (FORCE)`)
  await c.end()
  const res = await ctx.app.inject('/readyz')
  t.equal(res.statusCode, 503)
  t.equal(res.json().status, 'database_unavailable')
})
