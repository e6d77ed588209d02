import { randomUUID } from 'node:crypto'
import type { Logger } from 'pino'
import { Prisma } from '../generated/prisma/client.ts'
import type { SessionStatus } from '../generated/prisma/enums.ts'
import type { SqlPool } from '../database/client.ts'
import type { LeaseTokens } from './auth.ts'
import type { Clock } from './clock.ts'
import type { SessionAgentClient } from './session-agent.ts'
import { DB_NOW, EVENT_COLUMNS, eventFromRow, SessionService, type SessionRecord } from './sessions.ts'

/**
 * The warm pool: session agents launched before anyone asks, with no snapshot, so that
 * an acquire needing a new session skips the launch (on Fargate: placement, network
 * interface, image pull, about a minute) and waits only for the restore.
 *
 * A warm agent is a sessions row of mode 'warm' (snapshot '' until claimed), launched by
 * the reconciler like any session (WARM=1: the agent waits for POST /_agent/assign),
 * READY once its agent answers in phase `warm`. Being a session row, it is confirmed by
 * the agent confirmer (dead man's switch), swept by the orphan sweep, and stopped like
 * any session; its tokens are the session's own (derived from id and generation), so a
 * claim hands over no secret: it names the snapshot.
 *
 * An acquire claims one in a single fenced statement (LeaseService: READY warm rows only,
 * FOR UPDATE SKIP LOCKED, so two replicas never claim one agent), which turns the row into
 * the new session (STARTING, its snapshot and pool key) with the lease; then the agent is
 * told its snapshot here, and again by the reconciler until the restore shows, so a crash
 * between claim and assignment loses nothing.
 *
 * refill() keeps the pool at its target: WARM_POOL_MIN..WARM_POOL_MAX, adapted to demand
 * (one more than the Poisson quantile of the arrivals, at the higher rate of the last
 * quarter hour and the last hour, in the time a replacement takes: a pass plus a warm
 * agent's start), falling back to the minimum after an hour without demand. Active hints
 * (src/services/warm-pool-hints.ts) add agents on top of that, within the maximum.
 * It runs once per interval for the whole fleet; every step is a fenced statement, so a
 * crashed or repeated pass does no harm.
 */
export interface WarmPoolSettings {
  min: number
  max: number
  /** The launcher kind whose agents this pool holds (a pool per launcher; one task size per launcher). */
  launcher: string
  /** A READY warm agent older than this is replaced (sessions' MAX_SESSION_SECONDS counts from launch). */
  maxAgeSeconds: number
}

/**
 * Demand is the acquires that needed a new session (claims and cold launches), at the higher
 * rate of two windows: the short one raises the pool within minutes of a rise, the long one
 * keeps it through the gaps of a low rate (at 10 an hour a quarter hour has no arrival one
 * time in twelve, and the pool emptied: 91 % hits where 95 % was promised) and brings it
 * back to the minimum only after an hour without demand.
 */
export const DEMAND_WINDOW_SECONDS = 900
export const DEMAND_LONG_WINDOW_SECONDS = 3600
/** The target leaves an acquire without a READY agent in at most 1 - q of cases: misses rarer than 1 in 20. */
export const TARGET_QUANTILE = 0.95
/** What a warm start is assumed to take before the pool has seen one (a Fargate task: about a minute). */
const DEFAULT_REFILL_SECONDS = 60
/** How often the worker runs refill() (src/workers): a claim's replacement is asked for up to this late. */
export const WARM_POOL_PASS_SECONDS = 5
/** Launches a pass asks for at most: ECS's RunTask burst is shared with cold launches (the launcher's token bucket paces both). */
export const MAX_REFILLS_PER_PASS = 20

/** Counts of the pool's agents by status (live ones only). */
export interface WarmPoolCounts {
  pending: number
  starting: number
  ready: number
}

export interface WarmPoolDemand {
  /** Acquires that needed a new session over the window: warm claims plus cold launches. */
  arrivals: number
  /** The window of the higher rate (demandRate). */
  windowSeconds: number
  /** How long a warm agent took from launch to running (median over the last hour), or the default. */
  refillSeconds: number
}

export interface WarmPoolState {
  enabled: boolean
  min: number
  max: number
  target: number
  counts: WarmPoolCounts
  demand: WarmPoolDemand
  /** Target minus ready agents, never negative: what an acquire burst would miss right now. */
  unfilled: number
  /** Agents added for active hints (POST /v1/warm-pool/hints): their counts less the warm claims since the earliest. */
  hinted: number
}

export interface WarmPoolPass extends WarmPoolState {
  launched: number
  stopped: number
}

/**
 * The smallest k with P(X <= k) >= q for X ~ Poisson(lambda): how many warm agents cover
 * the arrivals of one refill time in a share q of cases. Past lambda 500 the normal
 * approximation (with continuity correction) stands in for the sum of terms.
 */
export function poissonQuantile(lambda: number, q: number): number {
  if (!(lambda > 0)) return 0
  if (lambda > 500) return Math.max(0, Math.ceil(lambda + normalQuantile(q) * Math.sqrt(lambda) - 0.5))
  let term = Math.exp(-lambda)
  let cdf = term
  let k = 0
  while (cdf < q) {
    k++
    term *= lambda / k
    cdf += term
  }
  return k
}

/** Acklam's rational approximation of the standard normal quantile (|error| < 1.2e-9), enough for a pool size. */
function normalQuantile(p: number): number {
  const a = [-39.69683028665376, 220.9460984245205, -275.9285104469687, 138.357751867269, -30.66479806614716, 2.506628277459239]
  const b = [-54.47609879822406, 161.5858368580409, -155.6989798598866, 66.80131188771972, -13.28068155288572]
  const c = [-0.007784894002430293, -0.3223964580411365, -2.400758277161838, -2.549732539343734, 4.374664141464968, 2.938163982698783]
  const d = [0.007784695709041462, 0.3224671290700398, 2.445134137142996, 3.754408661907416]
  const tail = (r: number) => (((((c[0]! * r + c[1]!) * r + c[2]!) * r + c[3]!) * r + c[4]!) * r + c[5]!) / ((((d[0]! * r + d[1]!) * r + d[2]!) * r + d[3]!) * r + 1)
  if (p < 0.02425) return tail(Math.sqrt(-2 * Math.log(p)))
  if (p > 1 - 0.02425) return -tail(Math.sqrt(-2 * Math.log(1 - p)))
  const x = p - 0.5
  const r = x * x
  return ((((((a[0]! * r + a[1]!) * r + a[2]!) * r + a[3]!) * r + a[4]!) * r + a[5]!) * x) / (((((b[0]! * r + b[1]!) * r + b[2]!) * r + b[3]!) * r + b[4]!) * r + 1)
}

/**
 * The pool's size for this demand, within [min, max]. Each claim's replacement is ready one
 * lead time later (the next pass, then the start), so an acquire finds no READY agent
 * exactly when `target` claims came in the lead time before it. Hence one more than the
 * quantile of the arrivals in a lead time: P(N <= target - 1) >= q. (The quantile alone
 * missed about twice as often as q promises: 86 % hits at 45 acquires an hour.)
 */
export function warmPoolTarget(demand: WarmPoolDemand, min: number, max: number): number {
  const ratePerSecond = demand.arrivals / demand.windowSeconds
  const needed = ratePerSecond > 0 ? poissonQuantile(ratePerSecond * (demand.refillSeconds + WARM_POOL_PASS_SECONDS), TARGET_QUANTILE) + 1 : 0
  return Math.min(max, Math.max(min, needed))
}

/** The window whose rate is higher (DEMAND_WINDOW_SECONDS or DEMAND_LONG_WINDOW_SECONDS), with its arrivals. */
export function demandRate(shortArrivals: number, longArrivals: number): Pick<WarmPoolDemand, 'arrivals' | 'windowSeconds'> {
  return longArrivals / DEMAND_LONG_WINDOW_SECONDS > shortArrivals / DEMAND_WINDOW_SECONDS
    ? { arrivals: longArrivals, windowSeconds: DEMAND_LONG_WINDOW_SECONDS }
    : { arrivals: shortArrivals, windowSeconds: DEMAND_WINDOW_SECONDS }
}

/** An unclaimed warm agent, as GET /v1/warm-pool lists it. */
export interface WarmAgentView {
  id: string
  /** Live statuses only (SessionService.warmAgents reads no ended agent). */
  status: Exclude<SessionStatus, 'STOPPED' | 'FAILED'>
  generation: number
  host: string | null
  port: number | null
  createdAt: string
  readyAt: string | null
}

/** Fences every step on an unclaimed warm row: a claim changes the mode, so a stale pass cannot stop a claimed session. */
const STILL_WARM = Prisma.sql`sessions.mode = 'warm'`

export class WarmPoolService {
  constructor(
    private readonly deps: {
      sql: SqlPool
      clock: Clock
      sessions: SessionService
      agents: SessionAgentClient
      tokens: LeaseTokens
      settings: WarmPoolSettings
      logger?: Logger
    },
  ) {}

  get enabled(): boolean {
    return this.deps.settings.max > 0
  }

  /** The launcher kind the pool serves: acquires claim only agents of their own launcher. */
  get launcher(): string {
    return this.deps.settings.launcher
  }

  /** Counts, demand and target as the database says now. */
  async state(): Promise<WarmPoolState> {
    const { min, max, launcher } = this.deps.settings
    const now = this.deps.clock.sql
    const [row] = await this.deps.sql.rows<{ pending: number; starting: number; ready: number; arrivals: number; long_arrivals: number; refill: number | null; hinted: number }>(Prisma.sql`
      WITH hints AS (SELECT sum(count)::int AS total, min(created_at) AS since FROM warm_pool_hints WHERE expires_at > ${now})
      SELECT
        -- A hint adds its count; each warm claim (not a pin's standby) since the earliest active hint uses one up.
        greatest(0, coalesce((SELECT total FROM hints), 0) - (
          SELECT count(*) FROM sessions
          WHERE claimed_at >= (SELECT since FROM hints) AND pin_id IS NULL AND launcher = ${launcher}))::int AS hinted,
        count(*) FILTER (WHERE mode = 'warm' AND status = 'PENDING')::int AS pending,
        count(*) FILTER (WHERE mode = 'warm' AND status = 'STARTING')::int AS starting,
        count(*) FILTER (WHERE mode = 'warm' AND status = 'READY')::int AS ready,
        count(*) FILTER (WHERE mode <> 'warm' AND coalesce(claimed_at, created_at) > ${now} - make_interval(secs => ${DEMAND_WINDOW_SECONDS}))::int AS arrivals,
        count(*) FILTER (WHERE mode <> 'warm' AND coalesce(claimed_at, created_at) > ${now} - make_interval(secs => ${DEMAND_LONG_WINDOW_SECONDS}))::int AS long_arrivals,
        percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM running_at - launched_at)) FILTER (
          WHERE (mode = 'warm' OR claimed_at IS NOT NULL) AND running_at >= launched_at AND running_at > ${now} - interval '1 hour')::float8 AS refill
      FROM sessions
      WHERE launcher = ${launcher}
        AND (status::text IN ('PENDING', 'STARTING', 'READY') OR created_at > ${now} - make_interval(secs => ${Math.max(3600, DEMAND_LONG_WINDOW_SECONDS)}) OR claimed_at > ${now} - make_interval(secs => ${DEMAND_LONG_WINDOW_SECONDS}))`)
    const counts = { pending: row?.pending ?? 0, starting: row?.starting ?? 0, ready: row?.ready ?? 0 }
    const demand = { ...demandRate(row?.arrivals ?? 0, row?.long_arrivals ?? 0), refillSeconds: row?.refill ?? DEFAULT_REFILL_SECONDS }
    const hinted = row?.hinted ?? 0
    // Hints come on top of what demand asks for (adaptive: the formula without the minimum), all within min..max.
    const target = this.enabled ? Math.min(max, Math.max(min, warmPoolTarget(demand, 0, max) + hinted)) : 0
    return { enabled: this.enabled, min, max, target, counts, demand, unfilled: Math.max(0, target - counts.ready), hinted }
  }

  /**
   * One pass toward the target: launches what is missing (PENDING warm rows, which the
   * reconciler launches within the launcher's rate limit), replaces agents past their
   * age, and stops READY agents beyond the target, oldest first. Starting agents count
   * toward the target, so a slow start is not launched twice.
   */
  async refill(): Promise<WarmPoolPass> {
    await this.purgeExpiredHints()
    const before = await this.state()
    let stopped = 0
    for (const s of await this.readyPastAge()) {
      if (await this.stopAgent(s, 'pool_recycle')) stopped++
    }
    const live = before.counts.pending + before.counts.starting + before.counts.ready - stopped
    const missing = Math.min(MAX_REFILLS_PER_PASS, before.target - live)
    let launched = 0
    for (let i = 0; i < missing; i++) {
      await this.createAgent()
      launched++
    }
    if (live > before.target) {
      // Only READY agents are stopped; a surplus still starting is judged on a later pass.
      for (const s of await this.readyAgents(live - before.target)) {
        if (await this.stopAgent(s, 'pool_shrink')) stopped++
      }
    }
    const pass = { ...before, launched, stopped }
    this.deps.logger?.info(
      { warmPool: { target: pass.target, ready: pass.counts.ready, starting: pass.counts.starting, pending: pass.counts.pending, unfilled: pass.unfilled, launched, stopped, arrivals: pass.demand.arrivals, refillSeconds: pass.demand.refillSeconds, hinted: pass.hinted } },
      'warm pool pass',
    )
    return pass
  }

  /**
   * Tells a claimed agent its snapshot. Idempotent (the agent answers the same assignment
   * again); the reconciler repeats it until the restore shows, so a failure here only
   * delays the start by a pass.
   */
  async assign(s: Pick<SessionRecord, 'id' | 'generation' | 'host' | 'port' | 'snapshot' | 'collection' | 'saveOnRelease'>): Promise<void> {
    if (s.host === null || s.port === null) return
    await this.deps.agents.assign(`http://${s.host}:${s.port}`, this.deps.tokens.controlToken(s.id, s.generation), {
      snapshot: s.snapshot,
      collection: s.collection,
      saveOnStop: s.saveOnRelease,
    })
  }

  /** Whether a starting warm agent is up and waiting for an assignment (its agent says phase `warm`). */
  async isWaiting(s: Pick<SessionRecord, 'id' | 'generation'>, host: string, port: number): Promise<boolean> {
    const status = await this.deps.agents.status(`http://${host}:${port}`, this.deps.tokens.controlToken(s.id, s.generation))
    return status.phase === 'warm'
  }

  /** Unclaimed warm agents, newest first. */
  async list(limit: number): Promise<WarmAgentView[]> {
    const rows = await this.deps.sessions.warmAgents(this.deps.settings.launcher, limit)
    return rows.map((s) => ({
      id: s.id,
      status: s.status as WarmAgentView['status'],
      generation: s.generation,
      host: s.host,
      port: s.port,
      createdAt: s.createdAt.toISOString(),
      readyAt: s.readyAt?.toISOString() ?? null,
    }))
  }

  /** A READY warm agent leaves the pool (no lease can hold it: claiming it changes its mode, which the fence checks). */
  stopAgent(s: Pick<SessionRecord, 'id' | 'generation'>, reason: 'pool_shrink' | 'pool_recycle' | 'compute_stopping'): Promise<boolean> {
    return this.deps.sessions.transition(s, ['READY', 'STARTING', 'PENDING'], 'STOPPING', { type: 'stopping', reason }, { stoppingAt: DB_NOW, stopReason: reason }, false, STILL_WARM)
  }

  private async createAgent(): Promise<void> {
    const { sql, clock, sessions, settings } = this.deps
    const id = randomUUID()
    const now = clock.sql
    const rows = await sql.rows<Record<string, unknown>>(Prisma.sql`
      WITH s AS (
        INSERT INTO sessions (id, mode, pool_key, snapshot, collection, status, generation, launcher, idle_ttl_seconds, save_on_release, created_by, created_at, updated_at)
        VALUES (${id}::uuid, 'warm', NULL, '', NULL, 'PENDING', 1, ${settings.launcher}, 0, false, 'warm-pool', ${now}, ${now})
        RETURNING id)
      INSERT INTO session_events (session_id, at, type, status, detail)
      SELECT id, ${now}, 'created', 'PENDING', '{"warm": true}'::jsonb FROM s
      RETURNING ${EVENT_COLUMNS}`)
    sessions.announce(rows.map(eventFromRow))
  }

  /** Expired hints count for nothing; their rows go a day later (kept that long for whoever looks into a burst). */
  private async purgeExpiredHints(): Promise<void> {
    await this.deps.sql.execute(Prisma.sql`DELETE FROM warm_pool_hints WHERE expires_at < ${this.deps.clock.sql} - interval '1 day'`)
  }

  private readyAgents(limit: number): Promise<Array<{ id: string; generation: number }>> {
    return this.deps.sql.rows(Prisma.sql`
      SELECT id, generation FROM sessions
      WHERE mode = 'warm' AND status = 'READY' AND launcher = ${this.deps.settings.launcher}
      ORDER BY ready_at ASC LIMIT ${Math.max(0, limit)}`)
  }

  private readyPastAge(): Promise<Array<{ id: string; generation: number }>> {
    return this.deps.sql.rows(Prisma.sql`
      SELECT id, generation FROM sessions
      WHERE mode = 'warm' AND status = 'READY' AND launcher = ${this.deps.settings.launcher}
        AND created_at <= ${this.deps.clock.sql} - make_interval(secs => ${this.deps.settings.maxAgeSeconds})
      ORDER BY created_at ASC LIMIT ${MAX_REFILLS_PER_PASS}`)
  }
}
