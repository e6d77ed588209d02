/**
 * `npm run demo`: chroma-lease end to end on this machine, in about a minute.
 *
 * Builds a small receipts snapshot (deterministic embeddings, no model downloads),
 * starts the real control plane on embedded defaults in a temporary directory, runs
 * concurrent workflow steps that each acquire a lease with @chroma-lease/client, query
 * through the proxy with the official chromadb client (lease.chroma()) and through the
 * JSON query route, and release; then
 * waits for the shared session to stop after its idle TTL and prints its timeline, and
 * ends with the original design's cost comparison (24/7 against on demand) computed from
 * the session records of this run.
 */
import { chmod, mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { ChromaLeaseClient, unwrap } from '@chroma-lease/client'
import { buildApp } from '../src/app.ts'
import { loadConfig } from '../src/config.ts'
import { createLogger, openRuntime } from '../src/runtime.ts'
import { DEFAULT_FARGATE_PRICES, hourlyPrice, runCost } from '../src/services/cost.ts'
import { buildSnapshotFixture } from '../test/helpers/snapshot-fixture.ts'

const STEPS = 6
const IDLE_TTL_SECONDS = 5

const say = (line: string) => console.log(`${((performance.now() - t0) / 1000).toFixed(1).padStart(5)}s  ${line}`)
const t0 = performance.now()

const dir = await mkdtemp(join(tmpdir(), 'chroma-lease-demo-'))
await chmod(dir, 0o755) // the embedded Postgres runs as the postgres user
const snapshots = join(dir, 'snapshots')
say('building a receipts snapshot: 500 receipts, 32-dim deterministic embeddings')
const receipts = await buildSnapshotFixture(snapshots, { collection: 'receipts', count: 500, dim: 32, seed: 7 })

const config = loadConfig({
  DATA_DIR: join(dir, 'data'),
  SNAPSHOT_ROOT: snapshots,
  PORT: '0',
  LOG_LEVEL: 'warn',
  IDLE_TTL_SECONDS: String(IDLE_TTL_SECONDS),
  RECONCILE_INTERVAL_SECONDS: '0.2',
  SWEEP_INTERVAL_SECONDS: '1',
})
const logger = createLogger(config.logLevel)
const runtime = await openRuntime(config, logger)
const app = await buildApp({ db: runtime.db, clock: runtime.clock, services: runtime.services, preflight: runtime.preflight, logger })
const base = await app.listen({ host: '127.0.0.1', port: 0 })
runtime.workers.start()
say(`control plane on ${base} (embedded Postgres, sessions as local processes)`)
// The demo's server has no API keys, so the operator routes below need none either.
const client = new ChromaLeaseClient({ url: base })

/** One workflow step: lease, query twice, release. */
async function workflowStep(n: number) {
  const lease = await client.acquire({ snapshot: `file://${receipts.tarPath}`, collection: 'receipts', waitSeconds: 40, holder: `workflow-${n}`, idempotencyKey: `demo-step-${n}` })
  say(`step ${n}: lease ${lease.id.slice(0, 8)} on session ${lease.session.id.slice(0, 8)} (${lease.session.status}, ${lease.session.leaseCount} lease(s))`)

  // The official client, pointed at the control plane with the lease token.
  const chroma = await lease.chroma()
  const collection = await chroma.getCollection({ name: 'receipts' })
  const target = n * 37
  const hits = await collection.query({ queryEmbeddings: [receipts.vector(target)], nResults: 2, include: ['documents', 'distances'] })
  say(`step ${n}: nearest to receipt ${target} via the proxy → "${hits.documents[0]![0]}"`)

  // The JSON route, as a Step Functions HTTP Task would call it.
  const json = await unwrap(
    client.api.POST('/v1/sessions/{id}/query', {
      params: { path: { id: lease.session.id } },
      headers: { 'x-chroma-token': lease.token },
      body: { collection: 'receipts', queryEmbeddings: [receipts.vector(target + 1)], nResults: 1 },
    }),
  )
  say(`step ${n}: nearest to receipt ${target + 1} via /query → ${json.ids[0]![0]}`)

  await sleep(300 + n * 200)
  const released = await lease.release()
  say(`step ${n}: released; the session now has ${released.session.leaseCount} lease(s)`)
  return lease.session.id
}

let exitCode = 0
try {
  say(`${STEPS} workflow steps start at once`)
  const sessionIds = await Promise.all(Array.from({ length: STEPS }, (_, i) => workflowStep(i + 1)))
  const [sessionId] = new Set(sessionIds)
  say(`all ${STEPS} steps shared ${new Set(sessionIds).size} session; it is idle now and stops after ${IDLE_TTL_SECONDS}s`)

  const readSession = () => unwrap(client.api.GET('/v1/sessions/{id}', { params: { path: { id: sessionId! } } }))
  let session = await readSession()
  while (session.status !== 'STOPPED' && session.status !== 'FAILED') {
    await sleep(500)
    session = await readSession()
  }
  say(`session ${session.status} (${session.stopReason})`)

  const { events } = await unwrap(client.api.GET('/v1/sessions/{id}/events', { params: { path: { id: sessionId! }, query: { limit: 1000 } } }))
  const start = Date.parse(events[0]!.at)
  console.log('\nsession timeline:')
  for (const e of events) {
    const reason = e.reason ? ` (${e.reason})` : ''
    console.log(`  +${((Date.parse(e.at) - start) / 1000).toFixed(2).padStart(6)}s  ${e.type}${reason}`)
  }
  await printCostComparison()
} catch (err) {
  console.error(err)
  exitCode = 1
} finally {
  await app.close()
  await runtime.close()
  await rm(dir, { recursive: true, force: true })
}
process.exit(exitCode)

/**
 * The original design's comparison, from this run's real session records: one Chroma
 * task running 24/7 against a session per workflow run, at Fargate prices
 * (src/services/cost.ts), for the original design's task size (0.5 vCPU, 2 GB, x86).
 * Local sessions report no size, so that size is applied to their measured run time.
 */
async function printCostComparison(): Promise<void> {
  const size = { cpuUnits: 512, memoryMiB: 2048, architecture: 'x86_64' }
  const prices = DEFAULT_FARGATE_PRICES
  const rows = await runtime.db.session.findMany({ select: { launchedAt: true, endedAt: true } })
  const runs = rows.filter((r) => r.launchedAt && r.endedAt).map((r) => (r.endedAt!.getTime() - r.launchedAt!.getTime()) / 1000)
  if (runs.length === 0) return
  const runSeconds = runs.reduce((a, b) => a + b, 0) / runs.length
  const alwaysOn = hourlyPrice(size, prices) * 730
  const perRun = runCost(size, runSeconds, prices)
  // In production a session also waits for Fargate to start it (~45 s) and stays up for its idle TTL (default 300 s), not the demo's.
  const productionSeconds = runSeconds - IDLE_TTL_SECONDS + 45 + 300
  const perProductionRun = runCost(size, productionSeconds, prices)
  const usd = (n: number) => `$${n < 1 ? n.toFixed(4) : n.toFixed(2)}`
  console.log(`\ncost at us-east-1 Fargate prices, 0.5 vCPU / 2 GB x86 ($${hourlyPrice(size, prices).toFixed(5)}/h, per second, 1-minute minimum):`)
  console.log(`  this run: ${runs.length} session(s), ${runSeconds.toFixed(1)} s from launch to stop (idle TTL ${IDLE_TTL_SECONDS} s) = ${usd(perRun)} per workflow run`)
  console.log(`  with a 45 s Fargate start and the default 300 s idle TTL: ${productionSeconds.toFixed(0)} s = ${usd(perProductionRun)} per workflow run`)
  console.log('  runs/month   24/7 task   on demand (this run)   on demand (300 s idle TTL)')
  for (const n of [30, 730, 8760]) {
    console.log(`  ${String(n).padStart(10)}   ${usd(alwaysOn).padStart(9)}   ${usd(n * perRun).padStart(20)}   ${usd(n * perProductionRun).padStart(26)}`)
  }
  console.log(`  break-even: ${Math.floor(alwaysOn / perProductionRun)} runs/month with the 300 s idle TTL (runs closer together than the TTL share one session)`)
}
