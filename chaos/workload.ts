import type { Replica } from './cluster.ts'
import type { Recorder } from './record.ts'
import type { Rng } from './rng.ts'

export interface SnapshotTarget {
  uri: string
  collection: string
  count: number
  vector(i: number): number[]
}

export interface WorkloadContext {
  rec: Recorder
  replicas: Replica[]
  snapshots: SnapshotTarget[]
  leaseTtlSeconds: number
  /** What an acquire asks to wait (waitSeconds). */
  acquireWaitSeconds: number
  /** How long past its wait an acquire may take to become READY or FAILED under faults. */
  acquireMarginSeconds: number
  /** Set when the run winds down: workers finish the lease in hand and stop. */
  stopping: boolean
}

export interface Answer {
  status: number
  body: any
  replica: Replica
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))
const CHROMA_DB = '/api/v2/tenants/default_tenant/databases/default_database'

/**
 * One HTTP call to one replica. Network errors and timeouts throw (the caller retries on
 * another replica); every 5xx is recorded with the replica that answered it.
 */
export async function call(
  rec: Recorder,
  replica: Replica,
  method: string,
  path: string,
  options: { body?: unknown; headers?: Record<string, string>; timeoutMs?: number; signal?: AbortSignal; sessionId?: string } = {},
): Promise<Answer> {
  const signal = options.signal ?? AbortSignal.timeout(options.timeoutMs ?? 4_000)
  const res = await fetch(`${replica.url}${path}`, {
    method,
    signal,
    headers: { ...(options.body !== undefined ? { 'content-type': 'application/json' } : {}), ...options.headers },
    body: options.body !== undefined ? JSON.stringify(options.body) : undefined,
  })
  const text = await res.text()
  let body: any = null
  try {
    body = text ? JSON.parse(text) : null
  } catch {
    body = { raw: text.slice(0, 200) }
  }
  if (res.status >= 500) {
    const sessionId = options.sessionId ?? /\/v1\/sessions\/([0-9a-f-]{36})/.exec(path)?.[1]
    rec.serverErrors.push({ at: Date.now(), replica: replica.name, method, path: path.replace(/[0-9a-f-]{36}/g, ':id').replace(/^\/api\/v2\/.*/, '/api/v2/*'), status: res.status, code: body?.code ?? null, sessionId, detail: String(body?.detail ?? '').slice(0, 160) })
  }
  return { status: res.status, body, replica }
}

/** Tries replicas in random order until one answers (any status) or the deadline passes. */
async function callAny(ctx: WorkloadContext, rng: Rng, method: string, path: string, deadline: number, options: { body?: unknown; headers?: Record<string, string>; timeoutMs?: number; sessionId?: string; retryStatus?: (s: number) => boolean } = {}): Promise<Answer | null> {
  let first = true
  while (Date.now() < deadline) {
    if (!first) await sleep(150 + rng.int(250))
    first = false
    const replica = rng.pick(ctx.replicas)
    const timeoutMs = Math.max(200, Math.min(options.timeoutMs ?? 4_000, deadline - Date.now()))
    try {
      const answer = await call(ctx.rec, replica, method, path, { ...options, timeoutMs })
      if (options.retryStatus?.(answer.status)) continue
      return answer
    } catch {
      ctx.rec.count('network_retry')
    }
  }
  return null
}

/** A worker: acquire, wait for READY, query and renew for a while, then release or abandon; again until told to stop. */
export async function runWorker(ctx: WorkloadContext, worker: number, rng: Rng): Promise<void> {
  let n = 0
  while (!ctx.stopping) {
    try {
      await lifecycle(ctx, worker, ++n, rng)
    } catch (err) {
      ctx.rec.count('worker_exception')
      ctx.rec.suspects.push({ at: Date.now(), leaseId: '-', sessionId: '-', what: `worker ${worker} threw: ${(err as Error).message}` })
    }
    await sleep(rng.int(300))
  }
}

const retry5xx = (s: number) => s >= 500

async function lifecycle(ctx: WorkloadContext, worker: number, n: number, rng: Rng): Promise<void> {
  const { rec } = ctx
  const snapshotIndex = rng.int(ctx.snapshots.length)
  const snap = ctx.snapshots[snapshotIndex]!
  const mode = rng.chance(0.3) ? 'exclusive' : 'shared'
  const key = `w${worker}-${n}-${rng.int(1e9).toString(36)}`
  const body = { snapshot: snap.uri, collection: snap.collection, mode, ttlSeconds: ctx.leaseTtlSeconds, waitSeconds: ctx.acquireWaitSeconds, holder: `chaos-w${worker}` }
  const headers = { 'idempotency-key': key }
  const start = Date.now()
  const acq: (typeof rec.acquires)[number] = {
    key, worker, snapshot: snapshotIndex, mode, start,
    deadline: start + (ctx.acquireWaitSeconds + ctx.acquireMarginSeconds) * 1000,
    resolvedAt: null, outcome: 'unresolved',
  }
  rec.acquires.push(acq)
  rec.count(`acquire_${mode}`)

  // A dropped connection: the request goes out and the client gives up on it at once
  // (it may or may not have reached a replica); the retry below reuses the key.
  if (rng.chance(0.25)) {
    rec.count('dropped_connection')
    const abort = new AbortController()
    const replica = rng.pick(ctx.replicas)
    setTimeout(() => abort.abort(), rng.int(40))
    await call(rec, replica, 'POST', '/v1/leases', { body, headers, signal: abort.signal }).catch(() => {})
  }

  let lease: any = null
  let leaseId: string | null = null
  while (Date.now() < acq.deadline && !lease) {
    const answer = await callAny(ctx, rng, 'POST', '/v1/leases', acq.deadline, { body, headers, timeoutMs: (ctx.acquireWaitSeconds + 5) * 1000, retryStatus: retry5xx })
    if (!answer) break
    if (answer.status === 200 || answer.status === 201) {
      if (answer.status === 200) rec.count('idempotent_replay')
      lease = answer.body
    } else {
      acq.outcome = 'problem'
      acq.resolvedAt = Date.now()
      acq.detail = `${answer.status} ${answer.body?.code}: ${answer.body?.detail ?? ''}`.slice(0, 200)
      rec.count(`acquire_problem_${answer.status}`)
      return
    }
  }
  if (!lease) {
    acq.detail = 'no replica acknowledged the acquire'
    return
  }
  leaseId = lease.id as string
  acq.leaseId = leaseId
  acq.sessionId = lease.session.id
  const record = {
    id: leaseId, token: lease.token as string, sessionId: lease.session.id as string, snapshot: snapshotIndex, mode,
    idempotencyKey: key, ackAt: Date.now(), ackExpiresAt: Date.parse(lease.expiresAt), releaseSentAt: null, abandoned: false,
  } as const
  const known = rec.leases.get(leaseId)
  if (!known) rec.leases.set(leaseId, { ...record })
  const mine = rec.leases.get(leaseId)!
  if (!lease.token) {
    // Only a replay lacks the token (it is returned once): the first answer was lost with its connection.
    rec.count('replay_without_token')
  }
  // Idempotency: one more replay of the same key, on any replica, must name the same lease.
  if (rng.chance(0.2)) {
    const replay = await callAny(ctx, rng, 'POST', '/v1/leases', Date.now() + 5_000, { body, headers, retryStatus: retry5xx })
    if (replay && (replay.status === 200 || replay.status === 201)) {
      rec.count('idempotent_replay')
      if (replay.body.id !== leaseId) rec.idempotencyBroken.push({ at: Date.now(), key, detail: `first ${leaseId}, replay ${replay.body.id}` })
    }
  }

  // Wait for READY or FAILED (long-polls), within the acquire's deadline.
  let view = lease
  const observe = (v: any) => {
    if (v?.expiresAt) mine.ackExpiresAt = Math.max(mine.ackExpiresAt, Date.parse(v.expiresAt))
  }
  observe(view)
  while (true) {
    const s = view?.session?.status
    if (s === 'READY') {
      acq.outcome = 'ready'
      break
    }
    if (s === 'FAILED' || view?.status === 'ended' || view?.status === 'expired') {
      acq.outcome = 'failed'
      acq.detail = `${view?.status} ${view?.endReason ?? ''} ${view?.session?.error ?? ''}`.slice(0, 200)
      break
    }
    if (Date.now() >= acq.deadline) break
    const wait = Math.max(0, Math.min(10, Math.floor((acq.deadline - Date.now()) / 1000) - 1))
    const answer = await callAny(ctx, rng, 'GET', `/v1/leases/${leaseId}?waitSeconds=${wait}`, acq.deadline, { timeoutMs: (wait + 5) * 1000, retryStatus: retry5xx })
    if (!answer) break
    if (answer.status !== 200) {
      acq.outcome = 'problem'
      acq.detail = `${answer.status} ${answer.body?.code} on read`
      break
    }
    view = answer.body
    observe(view)
  }
  if (acq.outcome !== 'unresolved') acq.resolvedAt = Date.now()
  if (acq.outcome === 'unresolved') acq.detail = `session ${view?.session?.status} at the deadline`

  if (acq.outcome === 'ready' && mine.token) await hold(ctx, rng, mine, snap)

  if (rng.chance(0.25)) {
    mine.abandoned = true
    rec.count('abandon')
    return
  }
  mine.releaseSentAt = Date.now()
  rec.count('release')
  const released = await callAny(ctx, rng, 'DELETE', `/v1/leases/${leaseId}`, Date.now() + 30_000, { retryStatus: retry5xx })
  if (!released || released.status !== 200) rec.count('release_unanswered')
}

/** Uses a READY lease for a while: checked queries through any replica, renews, as a workflow step would. */
async function hold(ctx: WorkloadContext, rng: Rng, lease: import('./record.ts').LeaseRecord, snap: SnapshotTarget): Promise<void> {
  const { rec } = ctx
  const until = Date.now() + 1_000 + rng.int(7_000)
  let lastRenew = Date.now()
  let collectionId: string | null = null
  const refused = (what: string) => {
    // Judged later: a refusal before the acknowledged expiry is a lost lease unless its session had a fault.
    if (Date.now() < lease.ackExpiresAt - 500) rec.suspects.push({ at: Date.now(), leaseId: lease.id, sessionId: lease.sessionId, what })
  }
  while (Date.now() < until && !ctx.stopping) {
    if (Date.now() - lastRenew > (ctx.leaseTtlSeconds * 1000) / 3 || rng.chance(0.15)) {
      const sentAt = Date.now()
      const answer = await callAny(ctx, rng, 'POST', `/v1/leases/${lease.id}/renew`, sentAt + 4_000, { body: {}, retryStatus: retry5xx })
      rec.count('renew')
      if (answer?.status === 200) {
        lease.ackExpiresAt = Math.max(lease.ackExpiresAt, Date.parse(answer.body.expiresAt))
        lastRenew = sentAt
      } else if (answer && answer.status < 500) {
        refused(`renew ${answer.status} ${answer.body?.code} from ${answer.replica.name}`)
        return
      }
    }
    const i = rng.int(snap.count)
    const headers = { 'x-chroma-token': lease.token }
    let answer: Answer | null
    if (rng.chance(0.5)) {
      // Chroma's own HTTP API through the proxy (/api/v2/*, as official clients call it).
      if (!collectionId) {
        const found = await callAny(ctx, rng, 'GET', `${CHROMA_DB}/collections/${snap.collection}`, Date.now() + 6_000, { headers, timeoutMs: 6_000, sessionId: lease.sessionId })
        if (found?.status === 200) collectionId = found.body.id
        else if (found && found.status < 500) {
          refused(`proxy ${found.status} ${found.body?.code ?? found.body?.error ?? ''} from ${found.replica.name}`)
          return
        }
        if (!collectionId) continue
      }
      answer = await callAny(ctx, rng, 'POST', `${CHROMA_DB}/collections/${collectionId}/query`, Date.now() + 6_000, {
        body: { query_embeddings: [snap.vector(i)], n_results: 1, include: ['distances'] },
        headers,
        timeoutMs: 6_000,
        sessionId: lease.sessionId,
      })
      rec.count('proxied_query')
    } else {
      answer = await callAny(ctx, rng, 'POST', `/v1/sessions/${lease.sessionId}/query`, Date.now() + 6_000, {
        body: { collection: snap.collection, queryEmbeddings: [snap.vector(i)], nResults: 1, include: ['distances'] },
        headers,
        timeoutMs: 6_000,
      })
    }
    rec.count('query')
    if (answer?.status === 200) {
      const id = answer.body.ids?.[0]?.[0]
      const distance = answer.body.distances?.[0]?.[0]
      if (id !== `r-${i}` || typeof distance !== 'number' || distance > 1e-3) {
        rec.wrongAnswers.push({ at: Date.now(), leaseId: lease.id, sessionId: lease.sessionId, detail: `asked vector(${i}) of snapshot ${lease.snapshot}, got ${id} at distance ${distance}` })
      } else rec.count('query_checked')
    } else if (answer && (answer.status === 401 || answer.status === 403 || answer.status === 404 || answer.status === 410)) {
      refused(`query ${answer.status} ${answer.body?.code} from ${answer.replica.name}`)
      return
    }
    await sleep(100 + rng.int(500))
  }
}
