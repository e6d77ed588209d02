import { mkdtemp } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { ManualClock } from '../src/services/clock.ts'
import { sessionCost, DEFAULT_FARGATE_PRICES } from '../src/services/cost.ts'
import { SessionAgentError } from '../src/services/session-agent.ts'
import { demandRate, poissonQuantile, warmPoolTarget, DEMAND_LONG_WINDOW_SECONDS, DEMAND_WINDOW_SECONDS, TARGET_QUANTILE, WARM_POOL_PASS_SECONDS } from '../src/services/warm-pool.ts'
import { buildTestApp, reconcileUntilSettled, untilWarmReady, type TestApp } from './helpers/app.ts'
import { sample } from './helpers/fake-session.ts'
import { buildSnapshotFixture } from './helpers/snapshot-fixture.ts'

// The warm pool on the real process launcher: warm agents are real agent processes
// (WARM=1, no Chroma until assigned), claims restore real snapshots into real Chroma.

const root = await mkdtemp(join(tmpdir(), 'warm-pool-'))
const fixture = await buildSnapshotFixture(root, { count: 40, dim: 8 })
const snapshot = `file://${fixture.tarPath}`

async function setup(tt: Parameters<typeof buildTestApp>[0], opts: Parameters<typeof buildTestApp>[1] = {}) {
  const clock = new ManualClock()
  const ctx = await buildTestApp(tt, { snapshotRoot: root, clock, warmPool: { min: 1, max: 3 }, ...opts })
  const inject = ctx.app.inject.bind(ctx.app)
  const acquire = async (body: Record<string, unknown> = {}) => {
    const res = await inject({ method: 'POST', url: '/v1/leases', payload: { snapshot, collection: fixture.collection, ...body } })
    if (res.statusCode !== 201) throw new Error(`acquire answered ${res.statusCode}: ${res.body}`)
    return res.json()
  }
  return { ...ctx, clock, inject, acquire }
}

const eventTypes = async (ctx: TestApp, id: string) =>
  (await ctx.app.inject({ method: 'GET', url: `/v1/sessions/${id}/events?limit=1000` })).json().events.map((e: { type: string }) => e.type)

t.test('the target: one more than the Poisson quantile of demand over one replacement, within min..max', async (t) => {
  t.equal(poissonQuantile(0, 0.95), 0, 'no demand needs no agent')
  t.equal(poissonQuantile(1, 0.95), 3, 'P(X<=3) = 0.981 >= 0.95 > P(X<=2) = 0.920')
  t.equal(poissonQuantile(10, 0.95), 15)
  const big = poissonQuantile(10_000, 0.95)
  t.ok(big >= 10_160 && big <= 10_170, `the normal approximation past 500: ${big} (exact: 10165)`)
  const demand = (arrivals: number, refillSeconds = 60) => ({ arrivals, windowSeconds: DEMAND_WINDOW_SECONDS, refillSeconds })
  t.equal(warmPoolTarget(demand(0), 2, 10), 2, 'quiet: the minimum')
  t.equal(warmPoolTarget(demand(15), 0, 10), 4, '15 in 15 minutes, a minute to start and 5 s to the pass: lambda 1.08, quantile 3, plus the agent the acquire takes')
  t.equal(warmPoolTarget(demand(15, 1), 0, 10), 2, 'the same demand with one-second starts: lambda 0.1, quantile 1 (P(0) = 0.905 < 0.95), plus one')
  t.equal(warmPoolTarget(demand(1), 0, 10), 2, 'a single arrival in the window keeps the pool up')
  t.equal(warmPoolTarget(demand(9000), 0, 10), 10, 'never above the maximum')
  t.same(demandRate(3, 40), { arrivals: 40, windowSeconds: DEMAND_LONG_WINDOW_SECONDS }, 'a lull: the hour\'s rate')
  t.same(demandRate(20, 40), { arrivals: 20, windowSeconds: DEMAND_WINDOW_SECONDS }, 'a rise: the quarter hour\'s rate')
})

t.test('the target leaves an acquire without an agent in at most 1 - q of cases (Poisson arrivals)', async (t) => {
  // Each claim's replacement is ready one lead time later (the next pass, then the start),
  // so an acquire finds no READY agent exactly when `target` claims came in the lead time
  // before it: P(N >= target), N ~ Poisson(rate x lead). Computed here independently.
  const tail = (lambda: number, k: number) => {
    let term = Math.exp(-lambda)
    let below = 0
    for (let i = 0; i < k; i++) {
      below += term
      term *= lambda / (i + 1)
    }
    return 1 - below
  }
  for (const arrivals of [1, 5, 15, 45, 150, 450, 2000]) {
    for (const refillSeconds of [30, 60, 120]) {
      const target = warmPoolTarget({ arrivals, windowSeconds: DEMAND_WINDOW_SECONDS, refillSeconds }, 0, 10_000)
      const lambda = (arrivals / DEMAND_WINDOW_SECONDS) * (refillSeconds + WARM_POOL_PASS_SECONDS)
      const miss = tail(lambda, target)
      t.ok(miss <= 1 - TARGET_QUANTILE + 1e-9, `${arrivals} arrivals in ${DEMAND_WINDOW_SECONDS} s, ${refillSeconds} s refill: target ${target}, an acquire misses with P = ${miss.toFixed(3)}`)
    }
  }
})

t.test('a claimed session is billed from its claim; what ran before is the pool\'s', async (t) => {
  const launchedAt = new Date('2026-12-05T10:00:00Z')
  const claimedAt = new Date('2026-12-05T10:30:00Z')
  const endedAt = new Date('2026-12-05T10:30:30Z')
  const size = { cpuUnits: 1024, memoryMiB: 2048, cpuArchitecture: 'x86_64', capacityProvider: 'FARGATE' }
  const cold = sessionCost({ ...size, launchedAt, endedAt }, DEFAULT_FARGATE_PRICES, endedAt)!
  const warm = sessionCost({ ...size, launchedAt, claimedAt, endedAt }, DEFAULT_FARGATE_PRICES, endedAt)!
  t.equal(cold.runSeconds, 1830)
  t.equal(warm.runSeconds, 30, 'from the claim')
  t.ok(warm.costUsd < (cold.hourlyUsd * 60) / 3600, 'no one-minute minimum: the task paid it as a warm agent')
})

t.test('warm agent: launched with no snapshot, claimed by an acquire, restored, serving; the pool refills', async (t) => {
  const ctx = await setup(t)
  t.equal((await ctx.services.warmPool.refill()).launched, 1, 'the pass launches the minimum')
  t.equal((await ctx.services.warmPool.refill()).launched, 0, 'a second pass counts the PENDING agent')
  await untilWarmReady(ctx, 1)

  const pool = (await ctx.inject({ method: 'GET', url: '/v1/warm-pool' })).json()
  t.match(pool, { enabled: true, min: 1, max: 3, target: 1, unfilled: 0, counts: { pending: 0, starting: 0, ready: 1 } })
  t.equal(pool.agents.length, 1)
  const agentId = pool.agents[0].id
  t.equal(pool.agents[0].status, 'READY')
  t.same((await ctx.inject({ method: 'GET', url: '/v1/sessions' })).json().sessions, [], 'unclaimed agents are not sessions')
  const before = (await ctx.inject({ method: 'GET', url: '/metrics' })).body
  t.equal(sample(before, 'chroma_lease_sessions', { status: 'READY' }), undefined, 'nor in the sessions gauge')
  t.equal(sample(before, 'chroma_lease_warm_pool_agents', { status: 'READY' }), 1, 'but in the pool\'s')
  // The dead man's switch runs while warm: the confirmer confirms the agent like any session.
  t.equal(await ctx.workers.confirmer.confirmSessions(), 1, 'the warm agent is confirmed')

  const lease = await ctx.acquire({ holder: 'wf-warm' })
  t.equal(lease.session.id, agentId, 'the acquire took the warm agent')
  t.equal(lease.session.mode, 'shared')
  t.equal(lease.session.status, 'STARTING')
  t.ok(lease.session.claimedAt, 'claimedAt is set')
  t.equal(lease.session.readyAt, null, 'not ready as a session yet (the agent was ready as a warm agent)')
  const ready = await reconcileUntilSettled(ctx, agentId)
  t.equal(ready.status, 'READY')
  const q = await ctx.inject({
    method: 'POST',
    url: `/v1/sessions/${agentId}/query`,
    headers: { 'x-chroma-token': lease.token },
    payload: { collection: fixture.collection, queryEmbeddings: [fixture.vector(7)], nResults: 1 },
  })
  t.equal(q.statusCode, 200, q.body)
  t.equal(q.json().ids[0][0], 'r-7', 'the claimed agent serves the snapshot it was assigned')
  t.same(await eventTypes(ctx, agentId), ['created', 'launching', 'launched', 'running', 'ready', 'claimed', 'lease_attached', 'ready'])
  const events = (await ctx.inject({ method: 'GET', url: `/v1/sessions/${agentId}/events` })).json().events
  t.match(events.at(-1).detail, { warm: true }, 'the READY event says the start was warm')
  const claimedEvent = events.find((e: { type: string }) => e.type === 'claimed')
  t.match(claimedEvent.detail, { from: 'warm_pool', snapshot: String, mode: 'shared' })
  t.ok(claimedEvent.detail.readySince, 'the claimed event keeps when the agent was ready')

  // The assignment is the agent's once: another snapshot is refused, the same one answered again.
  const s = await ctx.services.sessions.get(agentId)
  const refused = await ctx.services.warmPool.assign({ ...s, snapshot: 'file:///elsewhere.tar' }).catch((err: unknown) => err)
  t.ok(refused instanceof SessionAgentError && refused.status === 409 && refused.code === 'already_assigned', 'another snapshot: 409 already_assigned')
  await t.resolves(ctx.services.warmPool.assign(s))

  const metrics = (await ctx.inject({ method: 'GET', url: '/metrics' })).body
  t.equal(sample(metrics, 'chroma_lease_warm_pool_acquires_total', { result: 'hit' }), 1)
  t.equal(sample(metrics, 'chroma_lease_warm_pool_agents', { status: 'READY' }), 0)
  t.equal(sample(metrics, 'chroma_lease_warm_pool_unfilled'), 1, 'the pool is one short until it refills')

  t.equal((await ctx.services.warmPool.refill()).launched, 1, 'the next pass replaces the claimed agent')
  // An exclusive acquire while the replacement is still starting launches cold: a miss.
  const cold = await ctx.acquire({ mode: 'exclusive' })
  t.not(cold.session.id, agentId)
  t.equal(cold.session.claimedAt, null, 'launched cold')
  const after = (await ctx.inject({ method: 'GET', url: '/metrics' })).body
  t.equal(sample(after, 'chroma_lease_warm_pool_acquires_total', { result: 'miss' }), 1)
  const costs = (await ctx.inject({ method: 'GET', url: '/v1/costs' })).json()
  t.match(costs.warmPool, { agents: 1, unpricedAgents: 1, costUsd: 0 }, 'the pool\'s own line (agents launched so far): local processes have no price')
  t.ok(costs.warmPool.idleSeconds >= 0)
})

t.test('a claimed agent turns READY when its restore ends, between reconcile passes (the warm-starts loop)', async (t) => {
  const ctx = await setup(t, { warmPool: { min: 1, max: 1 } })
  await ctx.services.warmPool.refill()
  await untilWarmReady(ctx, 1)
  const lease = await ctx.acquire({ mode: 'exclusive' })
  t.ok(lease.session.claimedAt, 'claimed from the pool')
  // No reconcile pass from here: only the loop that follows claimed restores.
  const deadline = Date.now() + 60_000
  let s = await ctx.services.sessions.get(lease.session.id)
  while (s.status === 'STARTING' && Date.now() < deadline) {
    await ctx.workers.tick('warm-starts')
    s = await ctx.services.sessions.get(lease.session.id)
    if (s.status === 'STARTING') await new Promise((r) => setTimeout(r, 100))
  }
  t.equal(s.status, 'READY', 'READY without a reconcile pass')
  const events = (await ctx.inject({ method: 'GET', url: `/v1/sessions/${s.id}/events` })).json().events
  t.match(events.at(-1), { type: 'ready', detail: { warm: true, startSeconds: Number, phases: { launching: 0, provisioning: 0 } } }, 'the same READY event as a pass records')
  const q = await ctx.inject({
    method: 'POST',
    url: `/v1/sessions/${s.id}/query`,
    headers: { 'x-chroma-token': lease.token },
    payload: { collection: fixture.collection, queryEmbeddings: [fixture.vector(3)], nResults: 1 },
  })
  t.equal(q.json().ids[0][0], 'r-3', 'and it serves its snapshot')
  await ctx.workers.tick('warm-starts')
  t.equal((await eventTypes(ctx, s.id)).filter((e: string) => e === 'ready').length, 2, 'a later tick records nothing more (one READY as an agent, one as the session)')
})

t.test('one warm agent, concurrent acquires: exactly one claims it, the rest launch cold', async (t) => {
  const ctx = await setup(t, { warmPool: { min: 1, max: 1 } })
  await ctx.services.warmPool.refill()
  const { counts } = await untilWarmReady(ctx, 1)
  t.equal(counts.ready, 1)
  const [agent] = await ctx.services.warmPool.list(10)
  const leases = await Promise.all(Array.from({ length: 6 }, () => ctx.acquire({ mode: 'exclusive' })))
  const claimed = leases.filter((l) => l.session.id === agent!.id)
  t.equal(claimed.length, 1, 'one acquire claimed the agent')
  t.equal(new Set(leases.map((l) => l.session.id)).size, 6, 'six sessions, none shared by two exclusive leases')
  t.equal(leases.filter((l) => l.session.claimedAt === null).length, 5, 'the other five launched cold')
})

t.test('a stale pool pass cannot stop an agent claimed since it read it (the fence is its mode)', async (t) => {
  const ctx = await setup(t, { warmPool: { min: 1, max: 1 } })
  await ctx.services.warmPool.refill()
  await untilWarmReady(ctx, 1)
  const stale = await ctx.services.sessions.get((await ctx.services.warmPool.list(1))[0]!.id)
  const lease = await ctx.acquire()
  t.equal(lease.session.id, stale.id)
  t.equal(await ctx.services.warmPool.stopAgent(stale, 'pool_shrink'), false, 'refused: the row is a session now')
  t.equal((await ctx.services.sessions.get(stale.id)).status, 'STARTING')
  const ready = await reconcileUntilSettled(ctx, stale.id)
  t.equal(ready.status, 'READY', 'and it starts serving')
})

t.test('demand raises the target; a quiet quarter hour keeps the hour\'s rate, a quiet hour brings it back to the minimum, and surplus agents stop', async (t) => {
  const ctx = await setup(t, { warmPool: { min: 0, max: 3 } })
  t.equal((await ctx.services.warmPool.state()).target, 0)
  // 40 new sessions in the window, refills of 60 s (none measured yet): lambda = 40/900*60 = 2.7, quantile 6, capped at 3.
  for (let i = 0; i < 40; i++) await ctx.acquire({ mode: 'exclusive' })
  t.equal((await ctx.services.warmPool.state()).target, 3)
  const pass = await ctx.services.warmPool.refill()
  t.equal(pass.launched, 3)
  ctx.clock.advance(DEMAND_WINDOW_SECONDS + 1)
  const afterQuarter = await ctx.services.warmPool.state()
  t.same([afterQuarter.demand.windowSeconds, afterQuarter.demand.arrivals, afterQuarter.target], [DEMAND_LONG_WINDOW_SECONDS, 40, 3], 'a quiet quarter hour: the last hour\'s rate (40/3600*65 = 0.72: quantile 2, plus one) keeps it')
  ctx.clock.advance(DEMAND_LONG_WINDOW_SECONDS - DEMAND_WINDOW_SECONDS)
  t.equal((await ctx.services.warmPool.state()).target, 0, 'no arrivals in the last hour: the minimum')
  await untilWarmReady(ctx, 3)
  const shrink = await ctx.services.warmPool.refill()
  t.equal(shrink.stopped, 3, 'READY agents beyond the target are stopped')
  t.equal((await ctx.services.warmPool.state()).counts.ready, 0)
})

t.test('warm agents obey the dead man\'s switch, and a failed one is replaced', async (t) => {
  const ctx = await setup(t, { warmPool: { min: 1, max: 1 }, deadManSeconds: 2 })
  await ctx.services.warmPool.refill()
  await untilWarmReady(ctx, 1)
  const [agent] = await ctx.services.warmPool.list(1)
  // Nobody confirms it (the confirmer does not run): the agent stops itself, and the reconciler sees it gone.
  const deadline = Date.now() + 30_000
  let s = await ctx.services.sessions.get(agent!.id)
  while (s.status === 'READY' && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 200))
    await ctx.workers.reconciler.reconcileOnce()
    s = await ctx.services.sessions.get(agent!.id)
  }
  t.not(s.status, 'READY', `the unconfirmed agent stopped itself (${s.status}: ${s.error})`)
  t.same(await ctx.launcher.listRunning(), [], 'no process is left')
  t.equal((await ctx.services.warmPool.refill()).launched, 1, 'the pool launches a replacement')
})
