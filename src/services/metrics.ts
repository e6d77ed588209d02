import type { WarmPoolService, WarmPoolState } from './warm-pool.ts'
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client'
import { Prisma } from '../generated/prisma/client.ts'
import type { SessionMode, SessionStatus } from '../generated/prisma/enums.ts'
import type { Database } from '../database/client.ts'
import type { Clock } from './clock.ts'
import { sessionCostSql, type FargatePrices } from './cost.ts'

/** A session event as committed to session_events (the timeline, the log line and the metrics all come from it). */
export interface RecordedEvent {
  id: bigint | null
  sessionId: string
  at: Date
  type: string
  status: SessionStatus | null
  reason: string | null
  leaseId: string | null
  detail: unknown
}

/** How an acquire ended: attached to a running session, started one, replayed an Idempotency-Key, or failed. */
/** reused: attached to a live session; created: launched a new one; warm: claimed a warm pool agent; pinned: took a pin's standby. */
export type AcquireOutcome = 'reused' | 'created' | 'warm' | 'pinned' | 'replayed' | 'error'

/**
 * The phases of a session's start, as the timeline records them (README, Metrics):
 * `launching` created → launch claimed by a reconciler (PENDING → STARTING);
 * `provisioning` claimed → the launcher first reports the compute running (the launch
 * call, capacity, image pull, the agent restoring the snapshot);
 * `chroma_boot` running → READY (Chroma answers its healthcheck and has the collection).
 */
export const START_PHASES = ['launching', 'provisioning', 'chroma_boot'] as const
export type StartPhase = (typeof START_PHASES)[number]
export type StartPhases = Record<StartPhase, number>

/** Why a start failed; the `cause` in the detail of a `failed` event. */
export const LAUNCH_FAILURE_CAUSES = ['launch_error', 'compute_stopped', 'start_timeout', 'launch_unrecorded'] as const
export type LaunchFailureCause = (typeof LAUNCH_FAILURE_CAUSES)[number]

/**
 * Why a session that had started ended. `compute_lost`: its compute died while serving;
 * `compute_exited`: it stopped cleanly on someone else's word (scale-in, Spot, its dead
 * man's switch); `saved`: stopped after its save on release; `save_failed`: that save failed.
 */
export const REAP_CAUSES = ['idle', 'drained', 'max_lifetime', 'force_stop', 'compute_lost', 'compute_exited', 'saved', 'save_failed'] as const
export type ReapCause = (typeof REAP_CAUSES)[number]

/**
 * Why the orphan sweeper stopped a compute: no session row; the session moved on to a
 * later generation; the session ended; or a second compute of the session's generation
 * beside the one it recorded as its launch_ref (`duplicate`).
 */
export const ORPHAN_CAUSES = ['no_session', 'superseded', 'session_ended', 'duplicate'] as const
export type OrphanCause = (typeof ORPHAN_CAUSES)[number]

export type QueryKind = 'proxy' | 'query'
/** How a proxied or JSON query ended, from its status code (or the client hanging up). */
export type QueryOutcome = 'ok' | 'client_error' | 'denied' | 'not_ready' | 'upstream_error' | 'aborted'

/**
 * How a proxied request or query held for a starting session ended: `served` (the session
 * turned READY and the request went on), `failed` (the session failed), `timeout`
 * (PROXY_HOLD_SECONDS passed), `rejected` (PROXY_HOLD_MAX_PER_SESSION already held; not
 * held at all), `ended` (its lease ended, or the session stopped, while held),
 * `abandoned` (the client hung up) and `closing` (this replica shut down).
 */
export const HOLD_OUTCOMES = ['served', 'failed', 'timeout', 'rejected', 'ended', 'abandoned', 'closing'] as const
export type HoldOutcome = (typeof HOLD_OUTCOMES)[number]

/**
 * What services and workers report, handed to them through their constructors
 * (createServices / createWorkers). Metrics implements it; `noObserver` ignores it all.
 */
export interface Observer {
  /** Every session event, after its transaction committed. */
  sessionEvent(event: RecordedEvent): void
  acquire(a: { mode: SessionMode; outcome: AcquireOutcome; waited: boolean; seconds: number }): void
  orphanStopped(cause: OrphanCause): void
  /** An acquire that needed a new session, with the warm pool on: it claimed a warm agent (hit) or launched cold (miss). */
  warmPoolAcquire?(result: 'hit' | 'miss'): void
  /** A request starts being held for a starting session (RequestHold). */
  holdStarted?(kind: QueryKind): void
  /** A held request is let go, or one is refused a hold (`rejected`, never started): how long it was held and why it ended. */
  holdEnded?(h: { kind: QueryKind; outcome: HoldOutcome; seconds: number }): void
  /** A worker's scheduled pass: how long it ran, or that another replica had claimed it (skipped). */
  workerPass?(worker: string, outcome: { seconds: number } | 'skipped'): void
  /** Where a reconcile pass's time went: reading sessions, describing their compute, stepping them (RECONCILE_PHASES). */
  reconcilePhase?(phase: ReconcilePhase, seconds: number): void
}

/** The parts of a reconcile pass: `read` (the pages of sessions from Postgres), `describe` (the launcher's describe calls), `step` (each session's step: its SQL, HTTP and JavaScript). */
export const RECONCILE_PHASES = ['read', 'describe', 'step'] as const
export type ReconcilePhase = (typeof RECONCILE_PHASES)[number]

export const noObserver: Observer = { sessionEvent() {}, acquire() {}, orphanStopped() {} }

const SECONDS_FAST = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60]
const SECONDS_START = [0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 45, 60, 90, 120, 180, 300, 600]

/**
 * Prometheus metrics. Labels are bounded (statuses, routes, outcomes, causes): never a
 * session or lease id. Gauges of database state are read at scrape time, so every
 * replica reports the same cluster-wide numbers; counters and histograms count what
 * this replica did (sum them across replicas). Names and meanings: README, Metrics.
 */
export class Metrics implements Observer {
  readonly registry = new Registry()
  readonly httpDuration = new Histogram({
    name: 'chroma_lease_http_request_duration_seconds',
    help: 'HTTP request latency by route and status class',
    labelNames: ['method', 'route', 'status_class'] as const,
    buckets: SECONDS_FAST,
    registers: [this.registry],
  })
  readonly acquireDuration = new Histogram({
    name: 'chroma_lease_acquire_duration_seconds',
    help: 'Time to answer an acquire, by mode, outcome (reused, created, replayed, error) and whether the caller asked to wait for READY',
    labelNames: ['mode', 'outcome', 'waited'] as const,
    buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 50],
    registers: [this.registry],
  })
  readonly sessionStart = new Histogram({
    name: 'chroma_lease_session_start_seconds',
    help: 'Time from a session being created to READY',
    buckets: SECONDS_START,
    registers: [this.registry],
  })
  readonly sessionStartPhase = new Histogram({
    name: 'chroma_lease_session_start_phase_seconds',
    help: 'Time to READY by phase: launching (created to launch claimed), provisioning (claimed to compute running), chroma_boot (running to READY)',
    labelNames: ['phase'] as const,
    buckets: SECONDS_START,
    registers: [this.registry],
  })
  readonly launchFailures = new Counter({
    name: 'chroma_lease_session_launch_failures_total',
    help: 'Sessions that failed before READY, by cause (launch_error, compute_stopped, start_timeout, launch_unrecorded)',
    labelNames: ['cause'] as const,
    registers: [this.registry],
  })
  readonly sessionsReaped = new Counter({
    name: 'chroma_lease_sessions_reaped_total',
    help: 'Started sessions that ended, by cause (idle, drained, max_lifetime, force_stop, compute_lost, compute_exited, saved, save_failed)',
    labelNames: ['cause'] as const,
    registers: [this.registry],
  })
  readonly orphansStopped = new Counter({
    name: 'chroma_lease_orphans_stopped_total',
    help: 'Compute stopped by the orphan sweeper, by cause (no_session, superseded, session_ended)',
    labelNames: ['cause'] as const,
    registers: [this.registry],
  })
  readonly warmPoolAcquires = new Counter({
    name: 'chroma_lease_warm_pool_acquires_total',
    help: 'Acquires that needed a new session while the warm pool is on: hit (claimed a warm agent) or miss (launched cold)',
    labelNames: ['result'] as const,
    registers: [this.registry],
  })
  readonly workerPassDuration = new Histogram({
    name: 'chroma_lease_worker_pass_seconds',
    help: 'Duration of the worker passes this replica ran, by worker (reconciler, orphan-sweeper, ...)',
    labelNames: ['worker'] as const,
    buckets: [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60],
    registers: [this.registry],
  })
  readonly reconcilePhaseSeconds = new Counter({
    name: 'chroma_lease_reconcile_phase_seconds_total',
    help: 'Time the reconcile passes this replica ran spent reading sessions (read), describing their compute (describe) and stepping them (step)',
    labelNames: ['phase'] as const,
    registers: [this.registry],
  })
  readonly workerPassesSkipped = new Counter({
    name: 'chroma_lease_worker_passes_skipped_total',
    help: 'Scheduled worker passes this replica skipped because another replica had claimed them (one pass per interval for the fleet)',
    labelNames: ['worker'] as const,
    registers: [this.registry],
  })
  readonly sessionEvents = new Counter({
    name: 'chroma_lease_session_events_total',
    help: 'Session timeline events recorded, by type',
    labelNames: ['type'] as const,
    registers: [this.registry],
  })
  readonly queryDuration = new Histogram({
    name: 'chroma_lease_query_duration_seconds',
    help: 'Latency of queries to sessions, by kind (proxy: Chroma API through the proxy; query: the JSON query route), session status and outcome',
    labelNames: ['kind', 'session_status', 'outcome'] as const,
    buckets: SECONDS_FAST,
    registers: [this.registry],
  })
  readonly queriesInFlight = new Gauge({
    name: 'chroma_lease_queries_in_flight',
    help: 'Queries to sessions being served right now, by kind',
    labelNames: ['kind'] as const,
    registers: [this.registry],
  })

  readonly requestsHeld = new Gauge({
    name: 'chroma_lease_held_requests',
    help: 'Proxied requests and queries held right now for a session that is still starting, by kind',
    labelNames: ['kind'] as const,
    registers: [this.registry],
  })
  readonly holdDuration = new Histogram({
    name: 'chroma_lease_request_hold_seconds',
    help: 'How long proxied requests and queries were held for a starting session, by kind and outcome (served, failed, timeout, rejected, ended, abandoned, closing)',
    labelNames: ['kind', 'outcome'] as const,
    buckets: [0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 40, 50, 60],
    registers: [this.registry],
  })

  constructor(db: Database, clock: Clock, prices: FargatePrices) {
    collectDefaultMetrics({ register: this.registry, prefix: 'chroma_lease_' })
    // Known label values start at zero, so rates and alerts work before the first event.
    for (const cause of LAUNCH_FAILURE_CAUSES) this.launchFailures.inc({ cause }, 0)
    for (const cause of REAP_CAUSES) this.sessionsReaped.inc({ cause }, 0)
    for (const cause of ORPHAN_CAUSES) this.orphansStopped.inc({ cause }, 0)
    for (const kind of ['proxy', 'query'] as const) {
      this.queriesInFlight.set({ kind }, 0)
      this.requestsHeld.set({ kind }, 0)
    }
    new Gauge({
      name: 'chroma_lease_sessions',
      help: 'Sessions by status (unclaimed warm pool agents are not sessions: chroma_lease_warm_pool_agents)',
      labelNames: ['status'] as const,
      registers: [this.registry],
      async collect() {
        const rows = await db.session.groupBy({ by: ['status'], _count: { _all: true }, where: { status: { notIn: ['STOPPED'] }, mode: { not: 'warm' } } })
        this.reset()
        for (const r of rows) this.set({ status: r.status }, r._count._all)
      },
    })
    new Gauge({
      name: 'chroma_lease_live_leases',
      help: 'Leases that are active and unexpired',
      registers: [this.registry],
      async collect() {
        const [row] = await db.$queryRaw<Array<{ n: number }>>`SELECT count(*)::int AS n FROM leases WHERE ended_at IS NULL AND expires_at > ${clock.sql}`
        this.set(row?.n ?? 0)
      },
    })
    // Sessions' own memory and CPU, as their agents report them with each confirmation:
    // the largest session and the total over live sessions, as separate metrics (a
    // label telling max from sum would make summing over labels meaningless), and
    // without per-session labels.
    const usageGauge = (name: string, help: string, column: 'memory_bytes' | 'cpu_cores', stat: 'max' | 'sum') =>
      new Gauge({
        name,
        help,
        registers: [this.registry],
        async collect() {
          const [row] = await db.$queryRaw<Array<{ value: number | null }>>`
            SELECT ${Prisma.raw(`${stat}(${column})`)}::float8 AS value
            FROM sessions WHERE ended_at IS NULL AND usage_at IS NOT NULL`
          this.set(Number(row?.value ?? 0))
        },
      })
    usageGauge('chroma_lease_session_memory_max_bytes', 'Resident memory (agent and Chroma) of the largest live session, as its agent last reported it', 'memory_bytes', 'max')
    usageGauge('chroma_lease_live_sessions_memory_bytes', 'Resident memory (agent and Chroma) of all live sessions together, as their agents last reported it', 'memory_bytes', 'sum')
    usageGauge('chroma_lease_session_cpu_max_cores', 'CPU cores busy in the busiest live session (agent and Chroma), averaged over the interval before its agent last reported', 'cpu_cores', 'max')
    usageGauge('chroma_lease_live_sessions_cpu_cores', 'CPU cores busy in all live sessions together, averaged over the interval before their agents last reported', 'cpu_cores', 'sum')
    new Gauge({
      name: 'chroma_lease_session_cost_usd',
      help: 'Cost of sessions at the configured Fargate prices (per second, one-minute minimum): live ones so far, ended ones in total; sessions with no reported size (local processes) cost nothing',
      labelNames: ['state'] as const,
      registers: [this.registry],
      async collect() {
        // cost.ts sessionCostSql() per session, summed in the database: a scrape reads no rows.
        const rows = await db.$queryRaw<Array<{ live: boolean; usd: number }>>`
          SELECT s.ended_at IS NULL AS live, sum(${sessionCostSql(prices, clock.sql)})::float8 AS usd
          FROM sessions s WHERE s.cpu_units IS NOT NULL AND s.memory_mib IS NOT NULL AND s.launched_at IS NOT NULL AND s.mode <> 'warm'
          GROUP BY 1`
        this.set({ state: 'live' }, 0)
        this.set({ state: 'ended' }, 0)
        for (const r of rows) this.set({ state: r.live ? 'live' : 'ended' }, Number(r.usd))
      },
    })
  }

  /**
   * The timeline is the source of truth: start times, launch failures and reaps are
   * counted from the events that record them, by the replica whose transition won.
   */
  sessionEvent(e: RecordedEvent): void {
    this.sessionEvents.inc({ type: e.type })
    const detail = (e.detail ?? {}) as { cause?: string; phases?: Partial<StartPhases> }
    switch (e.type) {
      case 'ready': {
        if (!detail.phases) return
        let total = 0
        for (const phase of START_PHASES) {
          const seconds = detail.phases[phase]
          if (typeof seconds !== 'number') continue
          this.sessionStartPhase.observe({ phase }, seconds)
          total += seconds
        }
        this.sessionStart.observe(total)
        return
      }
      case 'stopped':
        if (detail.cause === 'compute_exited') this.sessionsReaped.inc({ cause: 'compute_exited' })
        return
      case 'failed':
        if (detail.cause === 'compute_lost' || detail.cause === 'save_failed') this.sessionsReaped.inc({ cause: detail.cause })
        else this.launchFailures.inc({ cause: isOneOf(LAUNCH_FAILURE_CAUSES, detail.cause) ? detail.cause : 'compute_stopped' })
        return
      case 'stopping':
        if (isOneOf(REAP_CAUSES, e.reason)) this.sessionsReaped.inc({ cause: e.reason })
        return
      case 'force_stop':
        this.sessionsReaped.inc({ cause: 'force_stop' })
        return
    }
  }

  acquire(a: { mode: SessionMode; outcome: AcquireOutcome; waited: boolean; seconds: number }): void {
    this.acquireDuration.observe({ mode: a.mode, outcome: a.outcome, waited: String(a.waited) }, a.seconds)
  }

  workerPass(worker: string, outcome: { seconds: number } | 'skipped'): void {
    if (outcome === 'skipped') this.workerPassesSkipped.inc({ worker })
    else this.workerPassDuration.observe({ worker }, outcome.seconds)
  }

  reconcilePhase(phase: ReconcilePhase, seconds: number): void {
    this.reconcilePhaseSeconds.inc({ phase }, seconds)
  }

  holdStarted(kind: QueryKind): void {
    this.requestsHeld.inc({ kind })
  }

  holdEnded(h: { kind: QueryKind; outcome: HoldOutcome; seconds: number }): void {
    if (h.outcome !== 'rejected') this.requestsHeld.dec({ kind: h.kind }) // a rejected one was never held
    this.holdDuration.observe({ kind: h.kind, outcome: h.outcome }, h.seconds)
  }

  orphanStopped(cause: OrphanCause): void {
    this.orphansStopped.inc({ cause })
  }

  warmPoolAcquire(result: 'hit' | 'miss'): void {
    this.warmPoolAcquires.inc({ result })
  }

  /**
   * The warm pool's gauges, read from the database at scrape time (every replica reports
   * the same fleet-wide figures): agents by status, the target, how far READY agents fall
   * short of it (deploy/ alarms when that lasts), and the pool's idle cost.
   */
  watchWarmPool(pool: Pick<WarmPoolService, 'state'>, idleCost: () => Promise<{ costUsd: number }>): void {
    for (const result of ['hit', 'miss'] as const) this.warmPoolAcquires.inc({ result }, 0)
    let state: Promise<WarmPoolState> | null = null
    // One read per scrape for the three gauges that share it.
    const read = () => (state ??= pool.state().finally(() => setImmediate(() => (state = null))))
    new Gauge({
      name: 'chroma_lease_warm_pool_agents',
      help: 'Unclaimed warm pool agents by status (PENDING, STARTING, READY)',
      labelNames: ['status'] as const,
      registers: [this.registry],
      async collect() {
        const { counts } = await read()
        this.set({ status: 'PENDING' }, counts.pending)
        this.set({ status: 'STARTING' }, counts.starting)
        this.set({ status: 'READY' }, counts.ready)
      },
    })
    new Gauge({
      name: 'chroma_lease_warm_pool_target',
      help: 'The warm pool\'s target size: WARM_POOL_MIN..WARM_POOL_MAX, adapted to recent demand',
      registers: [this.registry],
      async collect() {
        this.set((await read()).target)
      },
    })
    new Gauge({
      name: 'chroma_lease_warm_pool_unfilled',
      help: 'Target minus READY warm agents (0 when full): a value that stays above 0 means refills are failing or the pool is too small',
      registers: [this.registry],
      async collect() {
        this.set((await read()).unfilled)
      },
    })
    new Gauge({
      name: 'chroma_lease_warm_pool_idle_cost_usd',
      help: 'What warm agents cost before they were claimed (or until they ended unclaimed), at the configured Fargate prices: the pool\'s own line beside chroma_lease_session_cost_usd',
      registers: [this.registry],
      async collect() {
        this.set((await idleCost()).costUsd)
      },
    })
  }
}

function isOneOf<T extends string>(values: readonly T[], v: unknown): v is T {
  return typeof v === 'string' && (values as readonly string[]).includes(v)
}
