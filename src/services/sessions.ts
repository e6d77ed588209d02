import type { Logger } from 'pino'
import { Prisma } from '../generated/prisma/client.ts'
import type { SessionMode, SessionStatus } from '../generated/prisma/enums.ts'
import type { Database, SqlPool } from '../database/client.ts'
import type { Clock } from './clock.ts'
import { sessionCost, type FargatePrices, type SessionCost } from './cost.ts'
import { conflict, notFound } from './errors.ts'
import type { ComputeSize } from './launchers/launcher.ts'
import { noObserver, type Observer, type RecordedEvent } from './metrics.ts'

/** Statuses in which a session may run compute. */
export const LIVE_STATUSES: SessionStatus[] = ['PENDING', 'STARTING', 'READY', 'DRAINING', 'STOPPING']
/** Statuses in which new shared leases attach (the partial unique index covers exactly these). */
export const ATTACHABLE_STATUSES: SessionStatus[] = ['PENDING', 'STARTING', 'READY']
/**
 * Statuses whose agents the control plane confirms (feeds their dead man's switch): the
 * ones it wants serving. A STOPPING session is not confirmed, so its agent stops itself
 * even if every stop request is lost.
 */
export const CONFIRMED_STATUSES: SessionStatus[] = ['STARTING', 'READY', 'DRAINING']
/** Statuses a long-poll waits through. */
export const STARTING_STATUSES: SessionStatus[] = ['PENDING', 'STARTING']

/** A session row as the services see it, with its live lease count. */
export interface SessionRecord {
  id: string
  mode: SessionMode
  poolKey: string | null
  snapshot: string
  collection: string | null
  status: SessionStatus
  generation: number
  launcher: string
  launchRef: string | null
  host: string | null
  port: number | null
  error: string | null
  stopReason: string | null
  idleTtlSeconds: number
  createdBy: string
  createdAt: Date
  updatedAt: Date
  launchedAt: Date | null
  /** When the launcher first reported the compute running; null (or older than launchedAt) until then. */
  runningAt: Date | null
  readyAt: Date | null
  /** When an acquire claimed this session from the warm pool (src/services/warm-pool.ts); null for a cold launch. */
  claimedAt: Date | null
  /** The pin this session was started for (src/services/pins.ts): a standby while claimedAt is null. */
  pinId: string | null
  drainingAt: Date | null
  stoppingAt: Date | null
  endedAt: Date | null
  /** The agent's last restore or save progress, while it is restoring or saving. */
  progress: SessionProgress | null
  saveOnRelease: boolean
  savedSnapshot: string | null
  savedAt: Date | null
  /** The compute's size as its launcher reported it when it first ran; null when it did not (local processes). */
  cpuUnits: number | null
  memoryMiB: number | null
  cpuArchitecture: string | null
  capacityProvider: string | null
  /** What the session agent last reported with its confirmation; null before the first. */
  usage: SessionUsage | null
  leaseCount: number
  /** The database's clock when this row was read: what in-memory comparisons with its timestamps use (never the host's clock). */
  observedAt: Date
}

/** A live session whose agent has an address: what the agent confirmer needs of it. */
export interface ReachableSession {
  id: string
  generation: number
  status: SessionStatus
  host: string
  port: number
}

/** Memory and CPU of a session, as its agent reports them. */
export interface SessionUsage {
  memoryBytes: number
  cpuCores: number
  at: Date
}

/** Where a page of inStatus() ended: the last row's creation time and id. */
export type SessionCursor = Pick<SessionRecord, 'createdAt' | 'id'>

/** Restore or save progress as the agent reports it. */
export interface SessionProgress {
  phase: string
  bytes?: number
  totalBytes?: number
  percent?: number
}

/** Progress is shown while it is news: a restore before READY, a save while serving. */
function showsProgress(s: SessionRecord): boolean {
  if (!s.progress) return false
  if (s.status === 'PENDING' || s.status === 'STARTING') return s.progress.phase === 'restoring'
  return (s.status === 'READY' || s.status === 'DRAINING') && s.progress.phase === 'saving'
}

/** "restoring 45%", or "saving 12.3 MB" when the total is unknown. */
export function describeProgress(p: SessionProgress): string {
  if (p.percent !== undefined) return `${p.phase} ${p.percent}%`
  if (p.bytes !== undefined) return `${p.phase} ${(p.bytes / 1e6).toFixed(1)} MB`
  return p.phase
}

/** The session as the API shows it (see src/schemas/session.ts). */
export interface SessionView {
  id: string
  mode: SessionMode
  status: SessionStatus
  snapshot: string
  collection: string | null
  leaseCount: number
  endpoint: { host: string; port: number; url: string } | null
  proxyUrl: string
  error: string | null
  stopReason: string | null
  /** While restoring or saving: what the agent reported, with `text` like "restoring 45%". */
  progress: (SessionProgress & { text: string }) | null
  saveOnRelease: boolean
  /** The newest snapshot version this session saved back; acquire it to read what was written. */
  savedSnapshot: string | null
  savedAt: string | null
  generation: number
  idleTtlSeconds: number
  createdAt: string
  readyAt: string | null
  /** When an acquire took this session from the warm pool; null when it was launched for its first lease. */
  claimedAt: string | null
  /** The pin this session was started for; with claimedAt null, an unleased standby of that pin. */
  pinId: string | null
  endedAt: string | null
  /** Size, run time and cost at the configured Fargate prices; null when the launcher reported no size. */
  compute: SessionCost | null
  /** Memory and CPU as the session's agent last reported them (about once a minute); null before its first report. */
  usage: { memoryBytes: number; cpuCores: number; at: string } | null
}

export interface SessionEventInput {
  type: string
  reason?: string | null
  leaseId?: string | null
  detail?: Record<string, unknown>
}

/** Stands for "now on the database's clock" in TransitionData: the statement computes it. */
export const DB_NOW: unique symbol = Symbol('the database clock')
type Stamp = Date | typeof DB_NOW | null

/** Fields a transition may set besides status; timestamps are usually DB_NOW. */
export type TransitionData = Partial<
  Pick<SessionRecord, 'launchRef' | 'host' | 'port' | 'error' | 'stopReason' | 'generation' | 'savedSnapshot'> & {
    launchedAt: Stamp
    runningAt: Stamp
    readyAt: Stamp
    drainingAt: Stamp
    stoppingAt: Stamp
    endedAt: Stamp
    savedAt: Stamp
  }
>

/** TransitionData's fields as columns of sessions. */
const TRANSITION_COLUMNS: Record<keyof TransitionData, string> = {
  launchRef: 'launch_ref',
  host: 'host',
  port: 'port',
  error: 'error',
  stopReason: 'stop_reason',
  generation: 'generation',
  savedSnapshot: 'saved_snapshot',
  launchedAt: 'launched_at',
  runningAt: 'running_at',
  readyAt: 'ready_at',
  drainingAt: 'draining_at',
  stoppingAt: 'stopping_at',
  endedAt: 'ended_at',
  savedAt: 'saved_at',
}

/**
 * Why a session's end ended its leases, as the lease resource tells its holder
 * (`endReason`). A lease that had lapsed already stays `expired`.
 */
export function leaseEndReason(to: SessionStatus, event: SessionEventInput): string {
  if (to === 'FAILED') return 'session_failed'
  if (event.type === 'force_stop') return 'force_stopped'
  if (event.reason === 'max_lifetime') return 'max_lifetime'
  return 'session_ended'
}

/** The live leases of session `s` (the alias) at `now`: what every lease count means (invariant 4). */
export const liveLeaseCount = (now: Prisma.Sql, also: Prisma.Sql = Prisma.sql`TRUE`) =>
  Prisma.sql`(SELECT count(*)::int FROM leases l WHERE l.session_id = s.id AND l.ended_at IS NULL AND l.expires_at > ${now} AND ${also})`

/** Columns of session_events that a RETURNING clause hands to SessionService.announce. */
export const EVENT_COLUMNS = Prisma.sql`id, session_id, at, type, status, reason, lease_id, detail`

/**
 * Sessions: reading them, and moving them through their lifecycle. Every change of
 * status is a compare-and-set on (id, generation, status) with its event written in
 * the same transaction, so any replica may take any step and a repeated step is a no-op.
 *
 * Every event written anywhere (here, by LeaseService, by the reaper) is announced
 * through announce() once committed: one structured log line per event and the
 * observer (metrics), so timeline, log and metrics tell the same story.
 */
export class SessionService {
  constructor(
    private readonly db: Database,
    private readonly sql: SqlPool,
    private readonly clock: Clock,
    /** What a session's compute costs (its view's `compute`). */
    private readonly prices: FargatePrices,
    private readonly observer: Observer = noObserver,
    private readonly logger?: Logger,
  ) {}

  /** Logs committed events (one line each) and reports them to the observer. */
  announce(events: RecordedEvent[]): void {
    for (const e of events) {
      this.logger?.info(
        {
          sessionId: e.sessionId,
          eventId: e.id?.toString() ?? null,
          type: e.type,
          status: e.status,
          reason: e.reason,
          leaseId: e.leaseId,
          detail: e.detail ?? null,
          at: e.at.toISOString(),
        },
        'session event',
      )
      this.observer.sessionEvent(e)
    }
  }

  async find(id: string): Promise<SessionRecord | null> {
    const rows = await this.select(Prisma.sql`s.id = ${id}::uuid`)
    return rows[0] ?? null
  }

  async get(id: string): Promise<SessionRecord> {
    const s = await this.find(id)
    if (!s) throw notFound('session_not_found', `no session ${id}`)
    return s
  }

  /** The sessions with these ids, in one query. */
  async byIds(ids: string[]): Promise<Map<string, SessionRecord>> {
    if (ids.length === 0) return new Map()
    const rows = await this.select(Prisma.sql`s.id = ANY(${ids}::uuid[])`, ids.length)
    return new Map(rows.map((r) => [r.id, r]))
  }

  /** Sessions, newest first; unclaimed warm pool agents are listed by WarmPoolService instead. */
  async list(filter: { status?: SessionStatus[]; limit: number; before?: Date }): Promise<SessionRecord[]> {
    const conditions = [Prisma.sql`s.mode <> 'warm'`]
    if (filter.status?.length) conditions.push(Prisma.sql`s.status::text IN (${Prisma.join(filter.status)})`)
    if (filter.before) conditions.push(Prisma.sql`s.created_at < ${filter.before}`)
    return this.select(Prisma.join(conditions, ' AND '), filter.limit)
  }

  /** Unclaimed warm pool agents of one launcher that may run compute, newest first (WarmPoolService lists them). */
  warmAgents(launcher: string, limit: number): Promise<SessionRecord[]> {
    return this.select(Prisma.sql`s.mode = 'warm' AND s.launcher = ${launcher} AND s.status::text IN (${Prisma.join(LIVE_STATUSES)})`, limit)
  }

  /**
   * Sessions in the given statuses, oldest first: what the workers walk. One page of
   * `limit`; pass the last row of a page as `after` for the next (keyset: a session
   * created meanwhile or moved between pages is neither skipped nor read twice by order).
   */
  inStatus(statuses: SessionStatus[], limit = 500, after?: SessionCursor): Promise<SessionRecord[]> {
    const where = [Prisma.sql`s.status::text IN (${Prisma.join(statuses)})`]
    if (after) where.push(Prisma.sql`(s.created_at, s.id) > (${after.createdAt}, ${after.id}::uuid)`)
    return this.select(Prisma.join(where, ' AND '), limit, Prisma.sql`s.created_at ASC, s.id ASC`)
  }

  /** Claimed warm agents still restoring, with their agent's endpoint (recorded when the agent came up): a handful at a time. */
  claimedStarting(launcher: string, limit = 500): Promise<SessionRecord[]> {
    return this.select(
      Prisma.sql`s.status = 'STARTING' AND s.claimed_at IS NOT NULL AND s.launcher = ${launcher} AND s.host IS NOT NULL AND s.port IS NOT NULL`,
      limit,
      Prisma.sql`s.claimed_at ASC`,
    )
  }

  private async select(where: Prisma.Sql, limit = 1000, order = Prisma.sql`s.created_at DESC`): Promise<SessionRecord[]> {
    const rows = await this.sql.rows<Record<string, unknown>>(Prisma.sql`
      SELECT s.*, ${liveLeaseCount(this.clock.sql)} AS lease_count, ${this.clock.sql} AS observed_at
      FROM sessions s WHERE ${where} ORDER BY ${order} LIMIT ${limit}`)
    return rows.map(toRecord)
  }

  async events(id: string, opts: { afterId?: bigint; limit: number }) {
    await this.get(id)
    return this.db.sessionEvent.findMany({
      where: { sessionId: id, ...(opts.afterId !== undefined ? { id: { gt: opts.afterId } } : {}) },
      orderBy: { id: 'asc' },
      take: opts.limit,
    })
  }

  /**
   * Moves a session from one of `from` to `to` if nobody else has moved it since it was
   * read (same generation, status still in `from`), recording the event atomically.
   * Returns false, changing nothing, when the session has moved on.
   */
  async transition(
    s: Pick<SessionRecord, 'id' | 'generation'>,
    from: SessionStatus[],
    to: SessionStatus,
    event: SessionEventInput,
    data: TransitionData = {},
    // A session on its way out holds no leases: end them in the same transaction, so
    // counts and clients agree. Only a force stop or max lifetime stops a leased session.
    endLeases = to === 'STOPPED' || to === 'FAILED',
    /** A further condition the row (aliased `sessions`) must meet (see recordLaunch). */
    fence: Prisma.Sql = Prisma.sql`TRUE`,
  ): Promise<boolean> {
    const now = this.clock.sql
    const sets = Object.entries(data).map(([field, value]) => {
      const column = Prisma.raw(TRANSITION_COLUMNS[field as keyof TransitionData])
      return value === DB_NOW ? Prisma.sql`${column} = ${now}` : Prisma.sql`${column} = ${value ?? null}`
    })
    const events = await this.db.$transaction(async (tx) => {
      const moved = await tx.$queryRaw<Array<Record<string, unknown>>>`
        WITH moved AS (
          UPDATE sessions SET ${Prisma.join([Prisma.sql`status = ${to}::"SessionStatus"`, Prisma.sql`updated_at = ${now}`, ...sets])}
          WHERE id = ${s.id}::uuid AND generation = ${s.generation} AND status::text IN (${Prisma.join(from)}) AND ${fence}
          RETURNING id)
        ${insertEvent(Prisma.sql`SELECT id FROM moved`, now, to, event)}`
      if (moved.length !== 1) return null
      const written = moved.map(eventFromRow)
      if (endLeases) {
        const ended = await tx.$queryRaw<Array<Record<string, unknown>>>`
          WITH ended AS (
            UPDATE leases SET ended_at = LEAST(${now}, expires_at),
                              end_reason = CASE WHEN expires_at <= ${now} THEN 'expired' ELSE ${leaseEndReason(to, event)} END
            WHERE session_id = ${s.id}::uuid AND ended_at IS NULL RETURNING id)
          INSERT INTO session_events (session_id, at, type, status, reason, lease_id)
          SELECT ${s.id}::uuid, ${now}, 'lease_ended', ${to}::"SessionStatus", ${event.type}, id FROM ended
          RETURNING ${EVENT_COLUMNS}`
        written.push(...ended.map(eventFromRow))
      }
      return written
    })
    if (!events) return false
    this.announce(events)
    return true
  }

  /**
   * Records the compute a launch started, with a `launched` event, unless a ref is
   * recorded already: two replicas that both launched an unrecorded claim must not
   * overwrite each other's record (the orphan sweeper stops compute that is not the
   * recorded one, as a duplicate). False when another replica recorded first.
   */
  recordLaunch(s: Pick<SessionRecord, 'id' | 'generation'>, ref: string): Promise<boolean> {
    return this.transition(s, ['STARTING'], 'STARTING', { type: 'launched', detail: { ref } }, { launchRef: ref }, false, Prisma.sql`sessions.launch_ref IS NULL`)
  }

  /**
   * Starts a new launch attempt of a STARTING session whose launch was never recorded
   * (its claimant crashed, is paused, or was deferred): the generation grows by one and
   * the launch is claimed anew (launch_ref, address and launchedAt reset), in one
   * compare-and-set on (id, STARTING, generation, launch_ref IS NULL). Whatever the
   * earlier claimant does next is refused (its generation is stale), and the compute it
   * may still start carries the old generation, which the orphan sweep stops. Returns the
   * session as the new attempt, or null when another replica moved it first.
   */
  async relaunch(s: SessionRecord, reason: string): Promise<SessionRecord | null> {
    const generation = s.generation + 1
    const ok = await this.transition(s, ['STARTING'], 'STARTING', { type: 'relaunching', reason, detail: { generation, previousGeneration: s.generation } }, {
      generation,
      launchRef: null,
      host: null,
      port: null,
      launchedAt: DB_NOW,
    }, false, Prisma.sql`sessions.launch_ref IS NULL`)
    return ok ? this.find(s.id) : null
  }

  /**
   * Records that the launcher reports this launch attempt's compute running (a
   * `running` event and runningAt), once per attempt across replicas: the update only
   * matches while runningAt is unset or from an earlier attempt. Returns the time it set.
   * The size the launcher reports is recorded with it, for the session's cost.
   */
  async markRunning(s: Pick<SessionRecord, 'id' | 'generation'>, detail: Record<string, unknown>, size?: ComputeSize): Promise<Date | null> {
    const now = this.clock.sql
    const [row] = await this.sql.rows<Record<string, unknown>>(Prisma.sql`
      WITH marked AS (
        UPDATE sessions SET running_at = ${now}, updated_at = ${now},
          cpu_units = ${size?.cpuUnits ?? null}::int, memory_mib = ${size?.memoryMiB ?? null}::int,
          cpu_architecture = ${size?.architecture ?? null}::text, capacity_provider = ${size?.capacityProvider ?? null}::text
        WHERE id = ${s.id}::uuid AND generation = ${s.generation} AND status = 'STARTING'
          AND (running_at IS NULL OR running_at < launched_at)
        RETURNING id)
      ${insertEvent(Prisma.sql`SELECT id FROM marked`, now, 'STARTING', { type: 'running', detail })}`)
    if (!row) return null
    const event = eventFromRow(row)
    this.announce([event])
    return event.at
  }

  /**
   * Stops a session that holds no live lease: the only way, besides a force stop and
   * max lifetime, that the control plane stops a session (invariant 1). The row lock
   * waits for acquires attaching right now (they hold FOR SHARE); the re-count after it
   * runs in a fresh snapshot, so it sees their leases. Returns false if a lease holds it.
   */
  async stopUnleased(
    s: Pick<SessionRecord, 'id' | 'generation' | 'status'>,
    reason: 'idle' | 'drained' | 'max_lifetime' | 'saved',
    stillEligible: Prisma.Sql = Prisma.sql`TRUE`,
  ): Promise<boolean> {
    const now = this.clock.sql
    const event = await this.db.$transaction(async (tx) => {
      const locked = await tx.$queryRaw<Array<{ id: string }>>`
        SELECT id FROM sessions WHERE id = ${s.id}::uuid AND generation = ${s.generation} AND status::text = ${s.status} FOR UPDATE`
      if (locked.length === 0) return null
      const stopped = await tx.$executeRaw`
        UPDATE sessions SET status = 'STOPPING', stopping_at = ${now}, updated_at = ${now},
                            stop_reason = COALESCE(stop_reason, ${reason})
        WHERE sessions.id = ${s.id}::uuid
          AND NOT EXISTS (SELECT 1 FROM leases l WHERE l.session_id = sessions.id AND l.ended_at IS NULL AND l.expires_at > ${now})
          AND ${stillEligible}`
      if (stopped !== 1) return null
      const [row] = await tx.$queryRaw<Array<Record<string, unknown>>>`${insertEvent(Prisma.sql`SELECT ${s.id}::uuid`, now, 'STOPPING', { type: 'stopping', reason })}`
      return eventFromRow(row!)
    })
    if (!event) return false
    this.announce([event])
    return true
  }

  /**
   * Sessions of one launcher that the control plane wants serving (CONFIRMED_STATUSES) whose agent has an address (recorded as soon as the
   * launcher reports one, before READY): what the agent confirmer walks. A lean query,
   * run every confirmer pass: no lease counts.
   */
  async reachable(launcher: string, limit = 10_000): Promise<ReachableSession[]> {
    const rows = await this.sql.rows<{ id: string; generation: number; status: SessionStatus; host: string; port: number }>(Prisma.sql`
      SELECT id, generation, status, host, port FROM sessions
      WHERE status::text IN (${Prisma.join(CONFIRMED_STATUSES)}) AND launcher = ${launcher} AND host IS NOT NULL AND port IS NOT NULL
      ORDER BY created_at ASC LIMIT ${limit}`)
    return rows.map((r) => ({ id: r.id, generation: Number(r.generation), status: r.status, host: r.host, port: Number(r.port) }))
  }

  /**
   * Records where a starting session's agent answers, so the agent confirmer can reach it
   * before READY (a long restore must not run out its dead man's switch). The view shows
   * the endpoint only once the session serves.
   */
  async recordEndpoint(s: Pick<SessionRecord, 'id' | 'generation'>, host: string, port: number): Promise<void> {
    await this.db.$executeRaw`
      UPDATE sessions SET host = ${host}, port = ${port}::int
      WHERE id = ${s.id}::uuid AND generation = ${s.generation} AND status = 'STARTING'
        AND (host IS DISTINCT FROM ${host} OR port IS DISTINCT FROM ${port}::int)`
  }

  /**
   * Records the memory and CPU the session's agent reported (no notification: nothing
   * waits on it), fenced on (id, status, generation) as read before asking the agent.
   */
  async recordUsage(s: Pick<SessionRecord, 'id' | 'generation' | 'status'>, usage: { memoryBytes: number; cpuCores: number }): Promise<void> {
    await this.db.$executeRaw`
      UPDATE sessions SET memory_bytes = ${Math.round(usage.memoryBytes)}::bigint, cpu_cores = ${usage.cpuCores}::float8, usage_at = ${this.clock.sql}
      WHERE id = ${s.id}::uuid AND generation = ${s.generation} AND status = ${s.status}::"SessionStatus" AND ended_at IS NULL`
  }

  /**
   * Records the agent's restore or save progress (null once it is done). A plain write
   * with no event, made only when the report changed: progress is for people watching,
   * not part of the lifecycle. `whileStatus`: only while the session is still in it (an
   * answer read before a concurrent move to READY must not leave a restore's progress behind).
   */
  async setProgress(s: Pick<SessionRecord, 'id' | 'generation'>, progress: SessionProgress | null, whileStatus?: SessionStatus): Promise<void> {
    const json = progress === null ? null : JSON.stringify(progress)
    const inStatus = whileStatus ? Prisma.sql`AND status = ${whileStatus}::"SessionStatus"` : Prisma.empty
    await this.db.$executeRaw`
      UPDATE sessions SET progress = ${json}::jsonb
      WHERE id = ${s.id}::uuid AND generation = ${s.generation} AND progress IS DISTINCT FROM ${json}::jsonb ${inStatus}`
  }

  /** Records a completed save-back: the new version's URI on the session, and a `saved` event. */
  async recordSave(s: Pick<SessionRecord, 'id' | 'generation'>, saved: { snapshot: string; version: string; sha256: string; bytes: number; savedAt: string }, trigger: string): Promise<void> {
    const now = this.clock.sql
    const [row] = await this.sql.rows<Record<string, unknown>>(Prisma.sql`
      WITH saved AS (
        UPDATE sessions SET saved_snapshot = ${saved.snapshot}, saved_at = ${now}, updated_at = ${now}
        WHERE id = ${s.id}::uuid AND generation = ${s.generation}
        RETURNING id)
      ${insertEvent(Prisma.sql`SELECT id FROM saved`, now, null, { type: 'saved', reason: trigger, detail: { ...saved } })}`)
    if (row) this.announce([eventFromRow(row)])
  }

  /** How many saves of this session failed, the last one's reason and time (its save_failed events). */
  async saveFailures(id: string): Promise<{ count: number; lastAt: Date | null; lastReason: string }> {
    const where = { sessionId: id, type: 'save_failed' }
    const [count, last] = await Promise.all([
      this.db.sessionEvent.count({ where }),
      this.db.sessionEvent.findFirst({ where, orderBy: { id: 'desc' }, select: { at: true, reason: true } }),
    ])
    return { count, lastAt: last?.at ?? null, lastReason: last?.reason ?? 'unknown' }
  }

  async recordEvent(sessionId: string, event: SessionEventInput, status: SessionStatus | null = null): Promise<void> {
    const [row] = await this.sql.rows<Record<string, unknown>>(insertEvent(Prisma.sql`SELECT ${sessionId}::uuid`, this.clock.sql, status, event))
    this.announce([eventFromRow(row!)])
  }

  /**
   * Operator drain: no new leases attach; the reaper stops the session once its
   * leases end. Draining a session that is already draining or stopping is a no-op.
   * Only a serving (READY) session drains: a PENDING or STARTING one is refused with
   * 409 `session_not_serving` and left as it was, since a drain would strand it (never
   * launched, or its launch never recorded); ?force=true stops it.
   */
  async drain(id: string, reason: string): Promise<SessionRecord> {
    for (;;) {
      const s = await this.get(id)
      if (s.status === 'DRAINING' || s.status === 'STOPPING' || s.status === 'STOPPED' || s.status === 'FAILED') return s
      if (s.status === 'PENDING' || s.status === 'STARTING') {
        throw conflict('session_not_serving', `session ${s.id} is ${s.status}: only a serving session drains; stop it with ?force=true`, { sessionStatus: s.status })
      }
      const ok = await this.transition(s, ['READY'], 'DRAINING', { type: 'draining', reason }, {
        drainingAt: DB_NOW,
        stopReason: 'drain',
      })
      if (ok) return this.get(id)
    }
  }

  /** Operator force stop: ends every lease now. The one way (with max lifetime) to stop a leased session. */
  async forceStop(id: string, reason: string): Promise<SessionRecord> {
    for (;;) {
      const s = await this.get(id)
      if (s.status === 'STOPPING' || s.status === 'STOPPED' || s.status === 'FAILED') return s
      const ok = await this.transition(s, [s.status], 'STOPPING', { type: 'force_stop', reason, detail: { liveLeases: s.leaseCount } }, {
        stoppingAt: DB_NOW,
        stopReason: 'force_stop',
      }, true)
      if (ok) return this.get(id)
    }
  }

  /** Refuses operations that need a session able to serve. */
  static assertServing(s: SessionRecord): void {
    if (s.status !== 'READY' && s.status !== 'DRAINING') {
      throw conflict('session_not_ready', `session ${s.id} is ${s.status}${s.error ? `: ${s.error}` : ''}`, { sessionStatus: s.status })
    }
  }

  /** The session as the API shows it, its cost as of now. */
  view(s: SessionRecord, baseUrl: string): SessionView {
    const serving = (s.status === 'READY' || s.status === 'DRAINING') && s.host !== null && s.port !== null
    return {
      id: s.id,
      mode: s.mode,
      status: s.status,
      snapshot: s.snapshot,
      collection: s.collection,
      leaseCount: s.leaseCount,
      endpoint: serving ? { host: s.host!, port: s.port!, url: `http://${s.host}:${s.port}` } : null,
      proxyUrl: `${baseUrl}/v1/sessions/${s.id}/chroma`,
      error: s.error,
      stopReason: s.stopReason,
      progress: showsProgress(s) ? { ...s.progress!, text: describeProgress(s.progress!) } : null,
      saveOnRelease: s.saveOnRelease,
      savedSnapshot: s.savedSnapshot,
      savedAt: s.savedAt?.toISOString() ?? null,
      generation: s.generation,
      idleTtlSeconds: s.idleTtlSeconds,
      createdAt: s.createdAt.toISOString(),
      readyAt: s.readyAt?.toISOString() ?? null,
      claimedAt: s.claimedAt?.toISOString() ?? null,
      pinId: s.pinId,
      endedAt: s.endedAt?.toISOString() ?? null,
      compute: sessionCost(s, this.prices, s.observedAt),
      usage: s.usage && { memoryBytes: s.usage.memoryBytes, cpuCores: s.usage.cpuCores, at: s.usage.at.toISOString() },
    }
  }
}

/** A session_events row from raw SQL (`RETURNING ${EVENT_COLUMNS}`). */
export function eventFromRow(r: Record<string, unknown>): RecordedEvent {
  return {
    id: r.id == null ? null : BigInt(r.id as bigint | number | string),
    sessionId: r.session_id as string,
    at: asDate(r.at)!,
    type: r.type as string,
    status: (r.status as SessionStatus | null) ?? null,
    reason: (r.reason as string | null) ?? null,
    leaseId: (r.lease_id as string | null) ?? null,
    detail: r.detail ?? null,
  }
}

/**
 * INSERT of one event per session id that `ids` selects, at `now`, returning
 * EVENT_COLUMNS: the tail of a statement, so an event commits with its change.
 */
function insertEvent(ids: Prisma.Sql, now: Prisma.Sql, status: SessionStatus | null, e: SessionEventInput): Prisma.Sql {
  return Prisma.sql`
    INSERT INTO session_events (session_id, at, type, status, reason, lease_id, detail)
    SELECT ids.id, ${now}, ${e.type}, ${status}::"SessionStatus", ${e.reason ?? null}, ${e.leaseId ?? null}::uuid, ${e.detail ? JSON.stringify(e.detail) : null}::jsonb
    FROM (${ids}) AS ids(id)
    RETURNING ${EVENT_COLUMNS}`
}

export function toRecord(r: Record<string, unknown>): SessionRecord {
  return {
    id: r.id as string,
    mode: r.mode as SessionMode,
    poolKey: (r.pool_key as string | null) ?? null,
    snapshot: r.snapshot as string,
    collection: (r.collection as string | null) ?? null,
    status: r.status as SessionStatus,
    generation: Number(r.generation),
    launcher: r.launcher as string,
    launchRef: (r.launch_ref as string | null) ?? null,
    host: (r.host as string | null) ?? null,
    port: r.port == null ? null : Number(r.port),
    error: (r.error as string | null) ?? null,
    stopReason: (r.stop_reason as string | null) ?? null,
    idleTtlSeconds: Number(r.idle_ttl_seconds),
    createdBy: r.created_by as string,
    createdAt: asDate(r.created_at)!,
    updatedAt: asDate(r.updated_at)!,
    launchedAt: asDate(r.launched_at),
    runningAt: asDate(r.running_at),
    readyAt: asDate(r.ready_at),
    claimedAt: asDate(r.claimed_at),
    pinId: (r.pin_id as string | null) ?? null,
    drainingAt: asDate(r.draining_at),
    stoppingAt: asDate(r.stopping_at),
    endedAt: asDate(r.ended_at),
    progress: (r.progress as SessionProgress | null) ?? null,
    saveOnRelease: Boolean(r.save_on_release),
    savedSnapshot: (r.saved_snapshot as string | null) ?? null,
    savedAt: asDate(r.saved_at),
    cpuUnits: r.cpu_units == null ? null : Number(r.cpu_units),
    memoryMiB: r.memory_mib == null ? null : Number(r.memory_mib),
    cpuArchitecture: (r.cpu_architecture as string | null) ?? null,
    capacityProvider: (r.capacity_provider as string | null) ?? null,
    usage: r.usage_at == null ? null : { memoryBytes: Number(r.memory_bytes), cpuCores: Number(r.cpu_cores), at: asDate(r.usage_at)! },
    leaseCount: Number(r.lease_count ?? 0),
    observedAt: asDate(r.observed_at) ?? new Date(),
  }
}

const asDate = (v: unknown): Date | null => (v == null ? null : v instanceof Date ? v : new Date(String(v)))
