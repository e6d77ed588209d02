import { chmod, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import pg from 'pg'
import { freeLoopbackPort } from '../src/free-port.ts'
import { migrate } from '../src/database/migrator.ts'
import { buildSnapshotFixture } from '../test/helpers/snapshot-fixture.ts'
import { ChaosPostgres, Replica } from './cluster.ts'
import { runFaults, type FaultContext } from './faults.ts'
import { findLeftovers, INVARIANTS, judge, samplePools, type InvariantName, type Verdict } from './invariants.ts'
import { Recorder } from './record.ts'
import { Rng } from './rng.ts'
import { TcpProxy } from './tcp-proxy.ts'
import { runWorker, type SnapshotTarget, type WorkloadContext } from './workload.ts'

export interface ChaosOptions {
  seed: number
  durationSeconds: number
  replicas: number
  workers: number
  snapshots: number
  /** Seconds between faults, drawn uniformly. */
  faultGapSeconds: [number, number]
  leaseTtlSeconds: number
  idleTtlSeconds: number
  /** WARM_POOL_MIN/MAX of the replicas: warm agents are launched, claimed, faulted (agent kill and stop pick READY ones too) and counted. */
  warmPool: { min: number; max: number }
  log?: (line: string) => void
}

export const DEFAULTS: ChaosOptions = {
  seed: 1,
  durationSeconds: 180,
  replicas: 3,
  workers: 5,
  snapshots: 3,
  faultGapSeconds: [3, 8],
  leaseTtlSeconds: 6,
  idleTtlSeconds: 2,
  warmPool: { min: 1, max: 3 },
}

export interface ChaosResult {
  options: Omit<ChaosOptions, 'log'>
  faults: Record<string, number>
  ops: Record<string, number>
  verdict: Verdict
  acquireMs: { n: number; p50: number; p99: number; max: number }
  restartToAcquireMs: number[]
  notes: string[]
  wallSeconds: number
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

/**
 * One chaos run: a Postgres of its own behind a TCP proxy, N control-plane replicas as
 * child processes (process launcher, real Chroma agents), a seeded workload and seeded
 * faults for `durationSeconds`, then quiescence and the invariant counts.
 */
export async function runChaos(partial: Partial<ChaosOptions> = {}): Promise<ChaosResult> {
  const options = { ...DEFAULTS, ...partial }
  const log = options.log ?? ((line: string) => console.error(`[chaos] ${line}`))
  const wallStart = Date.now()
  const rng = new Rng(options.seed)
  const dir = await mkdtemp(join(tmpdir(), 'chroma-lease-chaos-'))
  await chmod(dir, 0o755) // the postgres user must reach its cluster directory when we run as root
  const dataDir = join(dir, 'data')
  const sessionsDir = join(dataDir, 'sessions')
  const snapshotRoot = join(dir, 'snapshots')
  await mkdir(snapshotRoot, { recursive: true })
  const cleanup: Array<() => Promise<unknown>> = []
  const notes: string[] = []
  // Interrupted (Ctrl-C, a test runner's timeout): leave nothing running behind.
  const interrupted = (signal: NodeJS.Signals) => {
    void (async () => {
      for (const fn of cleanup.reverse()) await fn().catch(() => {})
      await killUnder(sessionsDir)
      process.kill(process.pid, signal)
    })()
  }
  process.once('SIGINT', interrupted).once('SIGTERM', interrupted)
  try {
    log(`seed ${options.seed}, ${options.durationSeconds} s, ${options.replicas} replicas, ${options.workers} workers, in ${dir}`)
    const snapshots: SnapshotTarget[] = []
    for (let i = 0; i < options.snapshots; i++) {
      const fixture = await buildSnapshotFixture(join(snapshotRoot, `s${i}`), { count: 40, dim: 8, seed: 100 + i })
      snapshots.push({ uri: `file://${fixture.tarPath}`, collection: fixture.collection, count: fixture.count, vector: fixture.vector })
    }

    const postgres = new ChaosPostgres(dir)
    await postgres.start()
    cleanup.push(() => postgres.stop())
    await migrate(postgres.url)
    const proxy = new TcpProxy('127.0.0.1', postgres.port)
    const proxyPort = await proxy.listen()
    cleanup.push(() => proxy.close())
    const viaProxy = new URL(postgres.url)
    viaProxy.port = String(proxyPort)
    const db = new pg.Pool({ connectionString: postgres.url, max: 3 })
    db.on('error', () => {})
    cleanup.push(() => db.end())

    const env = {
      DATABASE_URL: viaProxy.toString(),
      DATA_DIR: dataDir,
      SNAPSHOT_ROOT: snapshotRoot,
      LOG_LEVEL: 'warn',
      LEASE_TTL_SECONDS: String(options.leaseTtlSeconds),
      IDLE_TTL_SECONDS: String(options.idleTtlSeconds),
      WARM_POOL_MIN: String(options.warmPool.min),
      WARM_POOL_MAX: String(options.warmPool.max),
      SWEEP_INTERVAL_SECONDS: '2',
      RECONCILE_INTERVAL_SECONDS: '0.5',
      START_TIMEOUT_SECONDS: '60',
      SESSION_DEAD_MAN_SECONDS: '30',
      AGENT_CONFIRM_INTERVAL_SECONDS: '5',
      PROXY_TIMEOUT_SECONDS: '5',
    }
    const replicas: Replica[] = []
    for (let i = 0; i < options.replicas; i++) {
      replicas.push(new Replica({ index: i + 1, port: await freeLoopbackPort(), env, logDir: dir }))
    }
    cleanup.push(() => Promise.all(replicas.map((r) => r.stop())))
    await Promise.all(replicas.map((r) => r.start()))
    log(`replicas ready: ${replicas.map((r) => r.url).join(' ')}`)

    const rec = new Recorder()
    const work: WorkloadContext = {
      rec, replicas, snapshots,
      leaseTtlSeconds: options.leaseTtlSeconds,
      acquireWaitSeconds: 8,
      acquireMarginSeconds: 30,
      stopping: false,
    }
    const faults: FaultContext = {
      rec, rng: rng.fork(), replicas, postgres, proxy, db,
      leaseTtlSeconds: options.leaseTtlSeconds,
      probeSnapshot: snapshots[0]!,
      stopping: false,
    }
    const workers = Array.from({ length: options.workers }, (_, w) => runWorker(work, w + 1, rng.fork()))
    const faulting = runFaults(faults, [options.faultGapSeconds[0] * 1000, options.faultGapSeconds[1] * 1000])
    const sampler = (async () => {
      while (!work.stopping) {
        await samplePools(rec, db).catch(() => {})
        await sleep(1_000)
      }
    })()
    // A replica that exits by itself is a crash: counted, and restarted so that the run goes on.
    const watchdog = (async () => {
      while (!work.stopping) {
        for (const r of replicas) {
          if (!r.down && r.exited) {
            r.down = true
            log(`${r.name} exited by itself; restarting it`)
            await r.start().catch((err) => notes.push(`${r.name} did not restart: ${(err as Error).message}`))
            r.down = false
          }
        }
        await sleep(500)
      }
    })()
    const progress = setInterval(() => log(`${rec.rel(Date.now())}: ${rec.faults.length} faults, ${rec.acquires.length} acquires, ${rec.ops.get('query') ?? 0} queries`), 15_000)
    await sleep(options.durationSeconds * 1000)
    clearInterval(progress)

    // Quiesce: no new faults, the ones under way undone, workers finish their lease in hand.
    log('quiescing')
    faults.stopping = true
    work.stopping = true
    await Promise.all([faulting, sampler, watchdog, ...workers])
    for (const r of replicas) {
      r.signal('SIGCONT')
      if (!(await r.ready())) await r.start()
    }
    const quiescedAt = Date.now()

    // Every lease ends (released, or expired by its TTL), then idle sessions stop within their TTL plus sweeps.
    const leaseDeadline = Date.now() + (options.leaseTtlSeconds + 30) * 1000
    while (Date.now() < leaseDeadline) {
      const { rows } = await db.query<{ n: number }>(`SELECT count(*)::int AS n FROM leases WHERE ended_at IS NULL AND expires_at > now()`).catch(() => ({ rows: [{ n: -1 }] }))
      if (rows[0]!.n === 0) break
      await sleep(500)
    }
    const computeDeadline = Date.now() + (options.idleTtlSeconds + 45) * 1000
    let leftovers = await findLeftovers(db, sessionsDir, options.warmPool.max)
    while (leftovers.length && Date.now() < computeDeadline) {
      await sleep(1_000)
      leftovers = await findLeftovers(db, sessionsDir, options.warmPool.max)
    }
    log(`compute ${leftovers.length ? 'NOT clean' : 'clean'} ${((Date.now() - quiescedAt) / 1000).toFixed(1)} s after quiescing`)
    notes.push(`quiesced in ${((Date.now() - quiescedAt) / 1000).toFixed(1)} s (all leases ended, compute ${leftovers.length ? 'not ' : ''}gone)`)
    for (const s of rec.suspects) if (s.leaseId === '-') notes.push(`${rec.rel(s.at)}: ${s.what}`)

    const { rows: starts } = await db.query<{ warm: number; cold: number; agents: number }>(
      `SELECT count(*) FILTER (WHERE claimed_at IS NOT NULL)::int AS warm, count(*) FILTER (WHERE mode <> 'warm' AND claimed_at IS NULL)::int AS cold,
              count(*) FILTER (WHERE mode = 'warm' OR claimed_at IS NOT NULL)::int AS agents FROM sessions`,
    )
    notes.push(`warm pool (min ${options.warmPool.min}, max ${options.warmPool.max}): ${starts[0]!.agents} warm agents launched; ${starts[0]!.warm} sessions started from one, ${starts[0]!.cold} cold`)
    const crashes = replicas.flatMap((r) => r.crashes.map((c) => `${r.name} exited by itself at ${rec.rel(c.at)} (code ${c.code}, signal ${c.signal}; log ${r.logPath}); near: ${rec.near(c.at)}`))
    const verdict = await judge(rec, db, leftovers, crashes)
    const times = rec.acquires.filter((a) => a.outcome === 'ready' && a.resolvedAt).map((a) => a.resolvedAt! - a.start).sort((a, b) => a - b)
    const pct = (p: number) => (times.length ? times[Math.min(times.length - 1, Math.floor((p / 100) * times.length))]! : 0)
    const faultCounts: Record<string, number> = {}
    for (const f of rec.faults) faultCounts[f.kind] = (faultCounts[f.kind] ?? 0) + 1
    const outcomes: Record<string, number> = {}
    for (const a of rec.acquires) outcomes[`acquire_outcome_${a.outcome}`] = (outcomes[`acquire_outcome_${a.outcome}`] ?? 0) + 1
    const { log: _log, ...plain } = options
    return {
      options: plain,
      faults: faultCounts,
      ops: { ...Object.fromEntries([...rec.ops.entries()].sort()), ...outcomes, leases_acknowledged: rec.leases.size, server_errors_seen: rec.serverErrors.length },
      verdict,
      acquireMs: { n: times.length, p50: pct(50), p99: pct(99), max: times.at(-1) ?? 0 },
      restartToAcquireMs: rec.restarts.filter((r) => r.firstAcquireAt).map((r) => r.firstAcquireAt! - r.restartedAt),
      notes,
      wallSeconds: Math.round((Date.now() - wallStart) / 1000),
    }
  } finally {
    process.off('SIGINT', interrupted).off('SIGTERM', interrupted)
    for (const fn of cleanup.reverse()) await fn().catch(() => {})
    // Kill any agent a failure left behind (the run owns everything under its directory).
    await killUnder(sessionsDir)
    if (!process.env.CHAOS_KEEP) await rm(dir, { recursive: true, force: true }).catch(() => {})
  }
}

async function killUnder(sessionsDir: string): Promise<void> {
  const { readdir, readlink, realpath } = await import('node:fs/promises')
  const root = await realpath(sessionsDir).catch(() => null)
  if (!root) return
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue
    const cwd = await readlink(`/proc/${entry}/cwd`).catch(() => null)
    if (cwd?.startsWith(root + '/')) {
      try {
        process.kill(Number(entry), 'SIGKILL')
      } catch {
        // gone
      }
    }
  }
}

/** The run as a CHAOS.md section. */
export function formatReport(r: ChaosResult): string {
  const lines: string[] = []
  const o = r.options
  lines.push(`### Seed ${o.seed}: ${o.durationSeconds} s, ${o.replicas} replicas, ${o.workers} workers`)
  lines.push('')
  lines.push(`Faults: ${Object.entries(r.faults).map(([k, n]) => `${k} ${n}`).join(', ') || 'none'} (total ${Object.values(r.faults).reduce((a, b) => a + b, 0)}).`)
  lines.push('')
  lines.push(`Operations: ${Object.entries(r.ops).map(([k, n]) => `${k} ${n}`).join(', ')}.`)
  lines.push('')
  lines.push(`Acquire to READY under faults (${r.acquireMs.n} acquires): p50 ${r.acquireMs.p50} ms, p99 ${r.acquireMs.p99} ms, max ${r.acquireMs.max} ms.`)
  lines.push(`Replica restart to its first successful acquire: ${r.restartToAcquireMs.length ? r.restartToAcquireMs.map((ms) => `${(ms / 1000).toFixed(1)} s`).join(', ') : 'no restarts'}.`)
  lines.push('')
  lines.push('| invariant | count |')
  lines.push('|---|---|')
  for (const name of Object.keys(INVARIANTS) as InvariantName[]) lines.push(`| ${name} | ${r.verdict.counts[name]} |`)
  lines.push('')
  const examples = (Object.keys(INVARIANTS) as InvariantName[]).filter((n) => r.verdict.examples[n].length)
  for (const n of examples) {
    lines.push(`Examples of ${n}:`)
    for (const e of r.verdict.examples[n]) lines.push(`- ${e}`)
    lines.push('')
  }
  if (Object.keys(r.verdict.excused).length) {
    lines.push(`Allowed because of a fault: ${Object.entries(r.verdict.excused).map(([k, n]) => `${k} (${n})`).join('; ')}.`)
    lines.push('')
  }
  for (const n of r.notes) lines.push(`- ${n}`)
  lines.push(`- wall time ${r.wallSeconds} s`)
  return lines.join('\n')
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const { values } = parseArgs({
    options: {
      seed: { type: 'string', default: '1' },
      duration: { type: 'string', default: '180' },
      replicas: { type: 'string', default: String(DEFAULTS.replicas) },
      workers: { type: 'string', default: String(DEFAULTS.workers) },
      json: { type: 'string' },
    },
  })
  const result = await runChaos({ seed: Number(values.seed), durationSeconds: Number(values.duration), replicas: Number(values.replicas), workers: Number(values.workers) })
  const report = formatReport(result)
  console.log(report)
  if (values.json) await writeFile(values.json, JSON.stringify(result, null, 2))
  const broken = Object.values(result.verdict.counts).reduce((a, b) => a + b, 0)
  process.exit(broken ? 1 : 0)
}
