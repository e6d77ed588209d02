/**
 * `npm run bench:open-loop`: lease latency at constant offered rates, open loop.
 *
 * The control plane as `npm start` runs it, a READY shared session (4000 × 128-dim), and
 * acquire + release pairs on it offered at fixed rates: pair i is due at start + i / rate
 * whether or not the earlier ones have answered, and the acquire's latency runs from that
 * intended time, so a stall shows in every request that should have gone out during it
 * (no coordinated omission). The release goes as soon as its acquire answers (its earliest
 * possible send time) and its latency runs from then; a pair's latency runs from the
 * acquire's intended time to the release's answer.
 *
 * Rates: 250, 500 and 1,000 pairs/s, then a search for the highest rate that holds (every
 * pair completes, the achieved rate is within 3 % of the offered one, and the pairs' p99
 * stays under 250 ms, i.e. no queue builds up), then half that rate, where the goal is p99 < 25 ms.
 *
 * Options: --seconds=N per rate (default 15). Writes the `open-loop` section of BENCHMARKS.md.
 */
import { chmod, mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Pool } from 'undici'
import { buildSnapshotFixture } from '../test/helpers/snapshot-fixture.ts'
import { ProcessLauncher } from '../src/services/launchers/process-launcher.ts'
import { stopAll } from '../test/helpers/app.ts'
import { startControlPlane } from './control-plane.ts'
import { Latencies, openLoop, sampleRss } from './load.ts'
import { provenance, writeSection } from './report.ts'

const arg = (name: string) => process.argv.find((a) => a.startsWith(`--${name}=`))?.split('=')[1]
const SECONDS = Number(arg('seconds') ?? 15)
const FIXED_RATES = [250, 500, 1000]
const HOLD = { achieved: 0.97, p99Ms: 250 }
const GOAL_P99_MS = 25

const dir = await mkdtemp(join(tmpdir(), 'chroma-lease-open-loop-'))
await chmod(dir, 0o755)
console.log('building a 4000 x 128 snapshot')
const fixture = await buildSnapshotFixture(join(dir, 'snapshots'), { collection: 'bench', count: 4000, dim: 128 })
const cp = await startControlPlane(join(dir, 'data'), { SNAPSHOT_ROOT: join(dir, 'snapshots'), IDLE_TTL_SECONDS: '600', LEASE_TTL_SECONDS: '600' })
// Connections enough for the highest rate at a few ms each; beyond them requests queue in the
// pool, and that wait counts, since latency runs from the intended send time.
const api = new Pool(cp.url, { connections: 64, pipelining: 1 })
const snapshot = `file://${fixture.tarPath}`

interface Step {
  rate: number
  role: string
  achieved: number
  failed: number
  pair: ReturnType<Latencies['summary']> & { p999: number }
  acquire: ReturnType<Latencies['summary']> & { p999: number }
  release: ReturnType<Latencies['summary']> & { p999: number }
  rssPeakMb: number
  holds: boolean
}
const steps: Step[] = []

try {
  // One long lease keeps the shared session READY throughout.
  const holder = await request('POST', '/v1/leases', { snapshot, collection: 'bench', waitSeconds: 50, holder: 'bench-holder', ttlSeconds: 3600 }, 201)
  for (let i = 0; i < 5 && holder.session.status !== 'READY'; i++) {
    const res = await api.request({ method: 'GET', path: `/v1/leases/${holder.id}?waitSeconds=50` })
    holder.session = JSON.parse(await res.body.text()).session
  }
  if (holder.session.status !== 'READY') throw new Error(`the shared session is ${holder.session.status}: ${holder.session.error ?? ''}`)
  console.log('warm-up: 3 s at 250 pairs/s')
  await step(250, 3, 'warm-up')
  steps.length = 0
  for (const rate of FIXED_RATES) await step(rate, SECONDS, 'fixed')
  // The highest rate that holds: from the fixed rates, then bisect between holding and not.
  let low = Math.max(0, ...steps.filter((s) => s.holds).map((s) => s.rate))
  let high = steps.find((s) => !s.holds)?.rate ?? 0
  if (high === 0) {
    // Every fixed rate held: double until one does not.
    for (high = 2000; high <= 8000; high *= 2) if (!(await step(high, SECONDS, 'search')).holds) break
    low = Math.max(low, ...steps.filter((s) => s.holds).map((s) => s.rate))
  }
  while (high - low > Math.max(50, low * 0.1)) {
    const mid = Math.round((low + high) / 2 / 10) * 10
    if ((await step(mid, SECONDS, 'search')).holds) low = mid
    else high = mid
  }
  const highest = low
  if (highest > 0) await step(Math.round(highest / 2), SECONDS, 'half of the highest')
  await report(highest)
} finally {
  await api.close()
  await cp.stop()
  await stopAll(new ProcessLauncher({ rootDir: join(dir, 'data', 'sessions') }))
  await rm(dir, { recursive: true, force: true })
}

async function request(method: 'POST' | 'DELETE', path: string, body: unknown, expect: number): Promise<any> {
  const res = await api.request({ method, path, headers: body ? { 'content-type': 'application/json' } : {}, body: body ? JSON.stringify(body) : undefined })
  const text = await res.body.text()
  if (res.statusCode !== expect) throw new Error(`${method} ${path} answered ${res.statusCode}: ${text.slice(0, 300)}`)
  return text ? JSON.parse(text) : undefined
}

async function step(rate: number, seconds: number, role: string): Promise<Step> {
  console.log(`${role}: ${rate} pairs/s for ${seconds} s`)
  const pair = new Latencies()
  const acquire = new Latencies()
  const release = new Latencies()
  const rss = sampleRss(cp.pid)
  const run = await openLoop(rate, seconds, async (_, intendedAt) => {
    const lease = await request('POST', '/v1/leases', { snapshot, collection: 'bench', holder: 'open-loop' }, 201)
    const sent = performance.now()
    acquire.add(sent - intendedAt)
    await request('DELETE', `/v1/leases/${lease.id}`, undefined, 200)
    release.add(performance.now() - sent)
  }, pair, 4096)
  const memory = await rss.stop()
  const summary = (l: Latencies) => ({ ...l.summary(), p999: l.percentile(99.9) })
  const result: Step = {
    rate,
    role,
    // Over the time it took to answer them all: a rate that does not hold takes longer than its window.
    achieved: run.achievedPerSecond,
    failed: run.failed,
    pair: summary(pair),
    acquire: summary(acquire),
    release: summary(release),
    rssPeakMb: memory.peakMb,
    holds: run.failed === 0 && run.completed / run.seconds >= rate * HOLD.achieved && pair.percentile(99) < HOLD.p99Ms,
  }
  if (run.failed) console.log(`  ${run.failed} failed, e.g. ${(run.firstError as Error)?.message}`)
  console.log(`  achieved ${result.achieved.toFixed(0)}/s, acquire p50 ${result.acquire.p50.toFixed(1)} p99 ${result.acquire.p99.toFixed(1)}, release p99 ${result.release.p99.toFixed(1)} ms: ${result.holds ? 'holds' : 'does not hold'}`)
  steps.push(result)
  return result
}

async function report(highest: number) {
  const f = (n: number, d = 1) => (Number.isFinite(n) ? n.toFixed(d) : '–')
  const half = steps.find((s) => s.role === 'half of the highest')
  const lines = [
    `${provenance()} The load generator (undici, 64 connections), the control plane (\`npm start\`'s bundle), Postgres and the session share the same 2 cores; ${SECONDS}s per rate.`,
    '',
    '| offered pairs/s (ops/s) | why this rate | achieved pairs/s | acquire p50 / p99 / p99.9, from its intended send time | release p50 / p99 / p99.9, sent when its acquire answered | pair p99 | holds | control-plane RSS peak |',
    '|---|---|---|---|---|---|---|---|',
    ...steps.map(
      (s) =>
        `| ${s.rate} (${s.rate * 2}) | ${s.role} | ${f(s.achieved, 0)}${s.failed ? ` (${s.failed} failed)` : ''} | ${f(s.acquire.p50, 1)} / ${f(s.acquire.p99, 1)} / ${f(s.acquire.p999, 1)} ms | ${f(s.release.p50, 1)} / ${f(s.release.p99, 1)} / ${f(s.release.p999, 1)} ms | ${f(s.pair.p99, 1)} ms | ${s.holds ? 'yes' : 'no'} | ${f(s.rssPeakMb, 0)} MB |`,
    ),
    '',
    `- Highest rate that holds (every pair completes, achieved ≥ ${HOLD.achieved * 100} % of offered, pair p99 < ${HOLD.p99Ms} ms): ${highest ? `${highest} pairs/s (${highest * 2} lease operations/s)` : 'none of the rates tried'}.`,
    half
      ? `- p99 under ${GOAL_P99_MS} ms at half that rate (${half.rate} pairs/s): acquire ${half.acquire.p99 < GOAL_P99_MS ? 'met' : '**missed**'} (p99 ${f(half.acquire.p99, 1)} ms, p99.9 ${f(half.acquire.p999, 1)} ms), release ${half.release.p99 < GOAL_P99_MS ? 'met' : '**missed**'} (p99 ${f(half.release.p99, 1)} ms, p99.9 ${f(half.release.p999, 1)} ms).`
      : `- p99 under ${GOAL_P99_MS} ms at half the highest rate: not measured.`,
  ]
  const text = lines.join('\n')
  console.log(`\n${text}`)
  await writeSection('open-loop', text)
}
