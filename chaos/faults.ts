import { readdir, readFile } from 'node:fs/promises'
import type pg from 'pg'
import type { ChaosPostgres, Replica } from './cluster.ts'
import type { FaultKind, Recorder } from './record.ts'
import type { Rng } from './rng.ts'
import type { TcpProxy } from './tcp-proxy.ts'
import { call } from './workload.ts'

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

export interface FaultContext {
  rec: Recorder
  rng: Rng
  replicas: Replica[]
  postgres: ChaosPostgres
  proxy: TcpProxy
  /** A direct connection to Postgres (not through the proxy), for picking targets. */
  db: pg.Pool
  leaseTtlSeconds: number
  /** A snapshot to probe a restarted replica's acquire with. */
  probeSnapshot: { uri: string; collection: string }
  stopping: boolean
}

export const FAULT_KINDS: FaultKind[] = ['replica_kill', 'replica_stop', 'chroma_kill', 'agent_kill', 'agent_stop', 'pg_restart', 'pg_cut']

/**
 * Injects one fault at a time per target class (one replica down at most, one Postgres
 * fault at most), at seeded random moments, and undoes each (restart, SIGCONT) itself.
 */
export async function runFaults(ctx: FaultContext, gapMs: [number, number]): Promise<void> {
  const running = new Set<Promise<void>>()
  let replicaBusy = false
  let postgresBusy = false
  while (!ctx.stopping) {
    await sleep(ctx.rng.between(gapMs[0], gapMs[1]))
    if (ctx.stopping) break
    const kind = ctx.rng.pick(FAULT_KINDS)
    let task: Promise<void> | null = null
    if (kind === 'replica_kill' || kind === 'replica_stop') {
      if (replicaBusy) continue
      replicaBusy = true
      const replica = ctx.rng.pick(ctx.replicas)
      task = (kind === 'replica_kill' ? killReplica(ctx, replica) : stopReplica(ctx, replica)).finally(() => (replicaBusy = false))
    } else if (kind === 'pg_restart' || kind === 'pg_cut') {
      if (postgresBusy) continue
      postgresBusy = true
      task = (kind === 'pg_restart' ? restartPostgres(ctx) : cutPostgres(ctx)).finally(() => (postgresBusy = false))
    } else {
      task = sessionFault(ctx, kind)
    }
    const t = task.catch((err) => {
      ctx.rec.count('fault_error')
      ctx.rec.suspects.push({ at: Date.now(), leaseId: '-', sessionId: '-', what: `fault ${kind} failed: ${(err as Error).message}` })
    })
    running.add(t)
    void t.finally(() => running.delete(t))
  }
  await Promise.all(running)
}

async function killReplica(ctx: FaultContext, replica: Replica): Promise<void> {
  const f = ctx.rec.fault('replica_kill', replica.name, { replica: replica.name })
  replica.down = true
  await replica.kill()
  await sleep(ctx.rng.between(500, 3_000))
  const restartedAt = Date.now()
  const restart = { replica: replica.name, restartedAt, readyAt: null as number | null, firstAcquireAt: null as number | null }
  ctx.rec.restarts.push(restart)
  await replica.start()
  restart.readyAt = Date.now()
  f.end = Date.now()
  replica.down = false
  // Time from the restart to this replica's first successful acquire (a probe of our own, released at once).
  const deadline = Date.now() + 60_000
  while (Date.now() < deadline) {
    try {
      const res = await call(ctx.rec, replica, 'POST', '/v1/leases', { body: { snapshot: ctx.probeSnapshot.uri, collection: ctx.probeSnapshot.collection, holder: 'chaos-probe' }, timeoutMs: 5_000 })
      if (res.status === 201 || res.status === 200) {
        restart.firstAcquireAt = Date.now()
        ctx.rec.count('probe_acquire')
        await call(ctx.rec, replica, 'DELETE', `/v1/leases/${res.body.id}`).catch(() => {})
        return
      }
    } catch {
      // not answering yet
    }
    await sleep(100)
  }
}

async function stopReplica(ctx: FaultContext, replica: Replica): Promise<void> {
  const f = ctx.rec.fault('replica_stop', replica.name, { replica: replica.name })
  replica.down = true
  replica.signal('SIGSTOP')
  // Longer than a lease TTL: the other replicas must not take the pause for anyone's expiry.
  await sleep((ctx.leaseTtlSeconds + ctx.rng.between(1, 4)) * 1000)
  replica.signal('SIGCONT')
  const deadline = Date.now() + 30_000
  while (Date.now() < deadline && !(await replica.ready())) await sleep(100)
  f.end = Date.now()
  replica.down = false
}

async function restartPostgres(ctx: FaultContext): Promise<void> {
  const f = ctx.rec.fault('pg_restart', 'postgres')
  await ctx.postgres.restartImmediately()
  f.end = Date.now()
}

async function cutPostgres(ctx: FaultContext): Promise<void> {
  const f = ctx.rec.fault('pg_cut', 'postgres')
  const n = ctx.proxy.cutAll()
  f.detail = `${n} connections cut`
  f.end = Date.now()
}

/** A READY session's agent pid (its launch ref) and its Chroma child's pid. */
async function pickSession(ctx: FaultContext): Promise<{ sessionId: string; agentPid: number; chromaPid: number | null } | null> {
  const { rows } = await ctx.db.query<{ id: string; launch_ref: string }>(`SELECT id, launch_ref FROM sessions WHERE status = 'READY' AND launch_ref IS NOT NULL ORDER BY id`)
  if (!rows.length) return null
  const row = ctx.rng.pick(rows)
  const agentPid = Number(row.launch_ref)
  const cmdline = await readFile(`/proc/${agentPid}/cmdline`, 'utf8').catch(() => '')
  if (!cmdline.includes(row.id)) return null
  return { sessionId: row.id, agentPid, chromaPid: await childChroma(agentPid) }
}

async function childChroma(agentPid: number): Promise<number | null> {
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue
    const stat = await readFile(`/proc/${entry}/stat`, 'utf8').catch(() => '')
    const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1])
    if (ppid !== agentPid) continue
    const cmdline = await readFile(`/proc/${entry}/cmdline`, 'utf8').catch(() => '')
    if (cmdline.includes('chroma-server')) return Number(entry)
  }
  return null
}

async function sessionFault(ctx: FaultContext, kind: FaultKind): Promise<void> {
  const target = await pickSession(ctx).catch(() => null)
  if (!target) return
  const signal = (pid: number, sig: NodeJS.Signals) => {
    try {
      process.kill(pid, sig)
    } catch {
      // already gone
    }
  }
  if (kind === 'chroma_kill') {
    if (target.chromaPid === null) return
    const f = ctx.rec.fault(kind, target.sessionId, { sessionId: target.sessionId, detail: `chroma pid ${target.chromaPid}` })
    signal(target.chromaPid, 'SIGKILL')
    f.end = Date.now()
  } else if (kind === 'agent_kill') {
    const f = ctx.rec.fault(kind, target.sessionId, { sessionId: target.sessionId, detail: `agent pid ${target.agentPid}` })
    signal(target.agentPid, 'SIGKILL')
    f.end = Date.now()
  } else if (kind === 'agent_stop') {
    // The agent stops answering while its port stays open (the kernel still accepts connections).
    const f = ctx.rec.fault(kind, target.sessionId, { sessionId: target.sessionId, detail: `agent pid ${target.agentPid}` })
    signal(target.agentPid, 'SIGSTOP')
    await sleep(ctx.rng.between(3_000, 10_000))
    signal(target.agentPid, 'SIGCONT')
    f.end = Date.now()
  }
}
