import { randomUUID } from 'node:crypto'
import type { Logger } from 'pino'
import { Prisma } from '../generated/prisma/client.ts'
import type { SessionMode, SessionStatus } from '../generated/prisma/enums.ts'
import type { Database, SqlPool } from '../database/client.ts'
import { nextSessionChange, type ChangeFeed } from '../database/change-feed.ts'
import { LeaseTokens, sha256, type Principal } from './auth.ts'
import { ChromaError, type ChromaClient } from './chroma.ts'
import type { Clock } from './clock.ts'
import { badRequest, conflict, gone, notFound, unprocessable } from './errors.ts'
import { noObserver, type AcquireOutcome, type Observer } from './metrics.ts'
import { sessionFailedProblem } from './session-failure.ts'
import {
  ATTACHABLE_STATUSES,
  EVENT_COLUMNS,
  eventFromRow,
  liveLeaseCount,
  SessionService,
  STARTING_STATUSES,
  toRecord,
  type SessionRecord,
  type SessionView,
} from './sessions.ts'
import type { SnapshotService } from './snapshots/snapshot-service.ts'
import type { WarmPoolService } from './warm-pool.ts'

export interface AcquireInput {
  snapshot: string
  collection?: string
  mode?: SessionMode
  ttlSeconds?: number
  idleTtlSeconds?: number
  waitSeconds?: number
  holder?: string
  saveOnRelease?: boolean
}

export interface LeaseLimits {
  leaseTtlSeconds: number
  maxLeaseTtlSeconds: number
  idleTtlSeconds: number
  maxIdleTtlSeconds: number
  launcher: string
}

/** `ended`: its session ended it (failure, force stop, max lifetime); `endReason` says which. */
export type LeaseStatus = 'active' | 'released' | 'expired' | 'ended'

/** Why a lease ended: its holder let go, it ran out, or its session ended it. */
export type LeaseEndReason = 'released' | 'expired' | 'collection_not_found' | 'session_failed' | 'force_stopped' | 'max_lifetime' | 'session_ended'

export interface LeaseView {
  id: string
  token?: string
  /** What `session.endpoint` requires (x-chroma-token) from direct callers; null unless the lease is active and the session serving. */
  sessionToken: string | null
  status: LeaseStatus
  /** Null while active. */
  endReason: LeaseEndReason | null
  holder: string | null
  ttlSeconds: number
  createdAt: string
  expiresAt: string
  endedAt: string | null
  session: SessionView
}

interface LeaseRow {
  id: string
  sessionId: string
  principal: string
  holder: string | null
  idempotencyKey: string | null
  requestHash: string
  ttlSeconds: number
  createdAt: Date
  expiresAt: Date
  endedAt: Date | null
  endReason: string | null
  /** Past its expiry by the database's clock when read (whether or not the reaper has recorded it). */
  lapsed: boolean
}

/** A LeaseRow from the leases table aliased `lease`, read at `now` (the clock's SQL). */
const leaseColumns = (now: Prisma.Sql) => Prisma.sql`lease.id, lease.session_id AS "sessionId", lease.principal, lease.holder,
  lease.idempotency_key AS "idempotencyKey", lease.request_hash AS "requestHash", lease.ttl_seconds AS "ttlSeconds",
  lease.created_at AS "createdAt", lease.expires_at AS "expiresAt", lease.ended_at AS "endedAt", lease.end_reason AS "endReason",
  lease.expires_at <= ${now} AS lapsed`

/** How often a wait for a starting session re-reads it, in case a change notification was missed. */
export const SETTLE_RECHECK_MS = 1_000

/** Attach or create takes a few tries only when a session stops between the two. */
const MAX_ATTACH_ATTEMPTS = 5

/**
 * Leases: the reference counts that keep sessions alive. A lease counts while it has
 * not ended and has not expired, by the clock, whether or not the reaper has visited
 * it yet (invariant 4). All counting happens in SQL, so replicas agree.
 */
export class LeaseService {
  private readonly foundCollections = new Set<string>()

  constructor(
    private readonly deps: {
      db: Database
      /** Hot-path statements (attach, find, renew, release) skip Prisma's engine: see SqlPool. */
      sql: SqlPool
      clock: Clock
      sessions: SessionService
      snapshots: SnapshotService
      /** Checks the collection an acquire names on the session it attached to. */
      chroma: ChromaClient
      tokens: LeaseTokens
      changes: ChangeFeed
      limits: LeaseLimits
      observer?: Observer
      /** Where new sessions come from before a cold launch; none: always cold. */
      warmPool?: WarmPoolService
      logger?: Logger
    },
  ) {}

  /** Acquires a lease (below), timed for the observer by its outcome. */
  /** `clientGone` ends a waitSeconds wait early (the caller hung up); the lease stands. */
  async acquire(
    principal: Principal,
    input: AcquireInput,
    idempotencyKey: string | undefined,
    baseUrl: string,
    clientGone?: AbortSignal,
  ): Promise<{ lease: LeaseView; created: boolean }> {
    const started = performance.now()
    const observe = (outcome: AcquireOutcome) =>
      (this.deps.observer ?? noObserver).acquire({
        mode: input.mode ?? 'shared',
        outcome,
        waited: (input.waitSeconds ?? 0) > 0,
        seconds: (performance.now() - started) / 1000,
      })
    try {
      const { lease, created, outcome } = await this.acquireLease(principal, input, idempotencyKey, baseUrl, clientGone)
      observe(outcome)
      return { lease, created }
    } catch (err) {
      observe('error')
      throw err
    }
  }

  private async acquireLease(
    principal: Principal,
    input: AcquireInput,
    idempotencyKey: string | undefined,
    baseUrl: string,
    clientGone: AbortSignal | undefined,
  ): Promise<{ lease: LeaseView; created: boolean; outcome: AcquireOutcome }> {
    const { limits, tokens, clock } = this.deps
    const ttlSeconds = input.ttlSeconds ?? limits.leaseTtlSeconds
    const idleTtlSeconds = input.idleTtlSeconds ?? limits.idleTtlSeconds
    if (ttlSeconds > limits.maxLeaseTtlSeconds) {
      throw badRequest('ttl_out_of_range', `ttlSeconds may be at most ${limits.maxLeaseTtlSeconds} on this server`)
    }
    if (idleTtlSeconds > limits.maxIdleTtlSeconds) {
      throw badRequest('ttl_out_of_range', `idleTtlSeconds may be at most ${limits.maxIdleTtlSeconds} on this server`)
    }
    const mode = input.mode ?? 'shared'
    const saveOnRelease = input.saveOnRelease ?? false
    if (saveOnRelease && mode !== 'exclusive') {
      throw badRequest('save_needs_exclusive', 'saveOnRelease needs mode "exclusive": a shared session\'s writes belong to no single lease')
    }
    const requestHash = sha256(
      JSON.stringify([input.snapshot, input.collection ?? null, mode, ttlSeconds, idleTtlSeconds, input.holder ?? null, ...(saveOnRelease ? [true] : [])]),
    )
    if (idempotencyKey !== undefined) {
      const replay = await this.replay(principal, idempotencyKey, requestHash, input.waitSeconds, baseUrl, input.collection, clientGone)
      if (replay) return { lease: replay, created: false, outcome: 'replayed' }
    }

    const snapshot = await this.deps.snapshots.canonical(input.snapshot)
    if (saveOnRelease && !snapshot.startsWith('s3://')) {
      throw unprocessable('save_unsupported', 'saveOnRelease needs an s3:// snapshot: new versions are uploaded next to it')
    }
    const lease = {
      id: randomUUID(),
      principal: principal.id,
      holder: input.holder ?? null,
      idempotencyKey: idempotencyKey ?? null,
      requestHash,
      ttlSeconds,
    }
    const token = tokens.mint(lease.id)
    let sessionId: string | null = null
    let attached: SessionRecord | null = null
    let outcome: AcquireOutcome = 'reused'
    let launchSnapshot: string | undefined
    let times: LeaseTimes | null = null
    try {
      for (let attempt = 0; sessionId === null && attempt < MAX_ATTACH_ATTEMPTS; attempt++) {
        // One shared session per snapshot: it serves every collection in it (the named one is checked below).
        const poolKey = mode === 'shared' ? snapshot : null
        const a = poolKey === null ? null : await this.attach(poolKey, lease, token)
        attached = a?.session ?? null
        times = a?.times ?? null
        sessionId = attached?.id ?? null
        if (sessionId === null) {
          // An exclusive session waits for its collection (its agent fails at once without it); a shared one is not any acquire's to fail.
          const collection = mode === 'exclusive' ? input.collection : undefined
          // A pinned standby serves already, restored from the pin's snapshot: one statement, no store check.
          // (A saveOnRelease session's agent learns SAVE_ON_STOP at launch or assignment, never a standby's.)
          const pinned = mode === 'exclusive' && !saveOnRelease ? await this.claimPinnedWithLease(snapshot, { mode, collection, idleTtlSeconds }, lease, token) : null
          // Only a new session needs the snapshot checked (and pinned to a version) in its store.
          if (pinned === null) launchSnapshot ??= await this.deps.snapshots.forLaunch(snapshot)
          const spec: NewSession = { mode, poolKey, snapshot: launchSnapshot ?? snapshot, collection, idleTtlSeconds, saveOnRelease }
          // A warm agent only needs its restore; else a cold launch.
          const warm = pinned === null && this.deps.warmPool?.enabled ? await this.claimWarmWithLease(spec, lease, token) : null
          const created = pinned ?? warm ?? (await this.createWithLease(spec, lease, token))
          if (created !== null) {
            sessionId = created.sessionId
            times = created.times
            outcome = pinned ? 'pinned' : warm ? 'warm' : 'created'
            if (pinned === null && this.deps.warmPool?.enabled) this.deps.observer?.warmPoolAcquire?.(warm ? 'hit' : 'miss')
            if (warm) await this.assignClaimed(warm.sessionId)
          }
        }
      }
    } catch (err) {
      // Two retries with one Idempotency-Key raced: the loser answers with the winner's lease.
      if (idempotencyKey !== undefined && isUniqueViolation(err)) {
        const replay = await this.replay(principal, idempotencyKey, requestHash, input.waitSeconds, baseUrl, input.collection, clientGone)
        if (replay) return { lease: replay, created: false, outcome: 'replayed' }
      }
      throw err
    }
    if (sessionId === null) throw conflict('pool_contended', 'the pool kept changing under this acquire; retry')

    const waitSeconds = input.waitSeconds ?? 0
    // A READY session attached to needs no second read; a starting one may be waited for.
    const session = attached && (waitSeconds <= 0 || !STARTING_STATUSES.includes(attached.status)) ? attached : await this.settle(sessionId, waitSeconds, clientGone)
    this.refuseFailed(lease.id, session)
    if (input.collection !== undefined) await this.checkCollection(session, input.collection, lease.id)
    const row: LeaseRow = { ...lease, sessionId, ...times!, endedAt: null, endReason: null, lapsed: false }
    return { lease: { ...this.view(principal, row, session, baseUrl), token }, created: true, outcome }
  }

  /**
   * Attaches a lease to the pool's attachable session, if there is one, in one
   * statement. FOR SHARE makes a concurrent stop of that session wait for this insert
   * and then see the lease (the reaper re-counts after taking its row lock); if the
   * stop won, the session no longer matches and nothing is inserted.
   */
  private async attach(poolKey: string, lease: NewLease, token: string): Promise<{ session: SessionRecord; times: LeaseTimes } | null> {
    const now = this.deps.clock.sql
    const rows = await this.deps.sql.rows<Record<string, unknown>>(Prisma.sql`
      WITH s AS (
        SELECT * FROM sessions
        WHERE pool_key = ${poolKey} AND status::text IN (${Prisma.join(ATTACHABLE_STATUSES)})
        FOR SHARE
      ), l AS (
        ${insertLeaseOn(Prisma.raw('s'), lease, token, now)}
      ), e AS (
        INSERT INTO session_events (session_id, at, type, lease_id, detail)
        SELECT session_id, ${now}, 'lease_attached', id, ${JSON.stringify({ holder: lease.holder })}::jsonb FROM l
        RETURNING ${EVENT_COLUMNS}
      )
      -- The session as the caller sees it, in the same round trip. The count reads the
      -- statement's snapshot, which does not hold the lease inserted above: hence + 1.
      SELECT s.*, ${liveLeaseCount(now)} + 1 AS lease_count, ${now} AS observed_at, to_jsonb(e) AS event,
             l.created_at AS lease_created_at, l.expires_at AS lease_expires_at
      FROM s JOIN e ON e.session_id = s.id JOIN l ON l.id = e.lease_id`)
    const row = rows[0]
    if (!row) return null
    this.deps.sessions.announce([eventFromRow(row.event as Record<string, unknown>)])
    return { session: toRecord(row), times: { createdAt: row.lease_created_at as Date, expiresAt: row.lease_expires_at as Date } }
  }

  /**
   * Creates a PENDING session with its first lease. For a shared pool the partial
   * unique index lets exactly one concurrent creator win; the others get null and
   * attach to the winner's session on their next attempt.
   */
  private async createWithLease(
    s: { mode: SessionMode; poolKey: string | null; snapshot: string; collection?: string; idleTtlSeconds: number; saveOnRelease: boolean },
    lease: NewLease,
    token: string,
  ): Promise<{ sessionId: string; times: LeaseTimes } | null> {
    const id = randomUUID()
    const { db, limits, clock } = this.deps
    const now = clock.sql
    const created = await db.$transaction(async (tx) => {
      const inserted = await tx.$queryRaw<Array<{ id: string }>>`
        INSERT INTO sessions (id, mode, pool_key, snapshot, collection, status, generation, launcher, idle_ttl_seconds, save_on_release, created_by, created_at, updated_at)
        VALUES (${id}::uuid, ${s.mode}::"SessionMode", ${s.poolKey}, ${s.snapshot}, ${s.collection ?? null}, 'PENDING', 1,
                ${limits.launcher}, ${s.idleTtlSeconds}, ${s.saveOnRelease}, ${lease.principal}, ${now}, ${now})
        ON CONFLICT (pool_key) WHERE status IN ('PENDING', 'STARTING', 'READY') DO NOTHING
        RETURNING id`
      if (inserted.length === 0) return null
      const [times] = await tx.$queryRaw<LeaseTimes[]>`
        INSERT INTO leases (id, session_id, token_hash, holder, principal, idempotency_key, request_hash, ttl_seconds, expires_at, created_at)
        VALUES (${lease.id}::uuid, ${id}::uuid, ${LeaseTokens.hash(token)}, ${lease.holder}, ${lease.principal}, ${lease.idempotencyKey},
                ${lease.requestHash}, ${lease.ttlSeconds}, ${expiry(now, lease.ttlSeconds)}, ${now})
        RETURNING created_at AS "createdAt", expires_at AS "expiresAt"`
      // Two statements, so the two events keep their order (ids) on the timeline.
      const events = await tx.$queryRaw<Array<Record<string, unknown>>>`
        INSERT INTO session_events (session_id, at, type, status, detail)
        VALUES (${id}::uuid, ${now}, 'created', 'PENDING', ${JSON.stringify({ snapshot: s.snapshot, collection: s.collection ?? null, mode: s.mode })}::jsonb)
        RETURNING ${EVENT_COLUMNS}`
      events.push(
        ...(await tx.$queryRaw<Array<Record<string, unknown>>>`
        INSERT INTO session_events (session_id, at, type, lease_id, detail)
        VALUES (${id}::uuid, ${now}, 'lease_attached', ${lease.id}::uuid, ${JSON.stringify({ holder: lease.holder })}::jsonb)
        RETURNING ${EVENT_COLUMNS}`),
      )
      return { times: times!, events }
    })
    if (!created) return null
    this.deps.sessions.announce(created.events.map(eventFromRow))
    return { sessionId: id, times: created.times }
  }

  /**
   * Takes a READY warm agent for a new session, with its first lease: the agent's row
   * becomes the session (STARTING, its snapshot, collection and pool key), keeping its id
   * and generation, which name its compute and tokens. See claimWithLease.
   */
  private claimWarmWithLease(s: NewSession, lease: NewLease, token: string) {
    // ready_at is the session's, set again when it serves; the agent's is kept in the event.
    return this.claimWithLease(
      'warm_pool',
      Prisma.sql`mode = 'warm' AND status = 'READY' AND launcher = ${this.deps.limits.launcher}`,
      Prisma.sql`mode = ${s.mode}::"SessionMode", pool_key = ${s.poolKey}, snapshot = ${s.snapshot}, collection = ${s.collection ?? null},
                 status = 'STARTING', idle_ttl_seconds = ${s.idleTtlSeconds}, save_on_release = ${s.saveOnRelease}, ready_at = NULL, progress = NULL`,
      s,
      lease,
      token,
    )
  }

  /**
   * Takes a READY standby of an exclusive pin of this snapshot (POST /v1/pins) with its
   * first lease: the session serves already, so the acquire answers READY at once.
   * A standby restored with a collection serves an acquire naming that collection or none.
   */
  private claimPinnedWithLease(canonical: string, s: Pick<NewSession, 'mode' | 'collection' | 'idleTtlSeconds'>, lease: NewLease, token: string) {
    const collection = s.collection ?? null
    return this.claimWithLease(
      'pin',
      Prisma.sql`mode = 'exclusive' AND status = 'READY' AND claimed_at IS NULL AND launcher = ${this.deps.limits.launcher}
                 AND pin_id IN (SELECT id FROM pins WHERE snapshot = ${canonical} AND mode = 'exclusive')
                 AND (${collection}::text IS NULL OR collection IS NULL OR collection = ${collection})
                 AND NOT EXISTS (SELECT 1 FROM leases l WHERE l.session_id = sessions.id AND l.ended_at IS NULL)`,
      Prisma.sql`idle_ttl_seconds = ${s.idleTtlSeconds}`,
      s,
      lease,
      token,
    )
  }

  /**
   * Claims one session row that `candidates` selects (a warm agent, a pinned standby) for
   * a new lease, in one statement: the row is locked (SKIP LOCKED: concurrent claims take
   * different ones) and `candidates` re-checked on the locked row by the UPDATE, so two
   * replicas never claim one; `set` turns it into the lease's session, with claimed_at and
   * created_by; the lease and the two events are inserted in the same statement. Null when
   * no candidate is free, or when a concurrent acquire created the pool's shared session
   * first (the partial unique index refuses a second: the caller's next attempt attaches).
   */
  private async claimWithLease(
    from: 'warm_pool' | 'pin',
    candidates: Prisma.Sql,
    set: Prisma.Sql,
    s: Pick<NewSession, 'mode' | 'collection'>,
    lease: NewLease,
    token: string,
  ): Promise<{ sessionId: string; times: LeaseTimes } | null> {
    const now = this.deps.clock.sql
    try {
      const [row] = await this.deps.sql.rows<{ id: string; created_at: Date; expires_at: Date; claimed_event: Record<string, unknown>; attached_event: Record<string, unknown> }>(Prisma.sql`
        WITH candidate AS (
          SELECT id, ready_at FROM sessions WHERE ${candidates}
          ORDER BY ready_at ASC LIMIT 1 FOR UPDATE SKIP LOCKED
        ), claimed AS (
          UPDATE sessions SET ${set}, created_by = ${lease.principal}, claimed_at = ${now}, updated_at = ${now}
          FROM candidate WHERE sessions.id = candidate.id AND ${candidates}
          RETURNING sessions.id, sessions.status, sessions.snapshot, candidate.ready_at
        ), l AS (
          ${insertLeaseOn(Prisma.raw('claimed'), lease, token, now)}
        ), claimed_event AS (
          -- The snapshot as the row has it: a pinned standby keeps the version it restored.
          INSERT INTO session_events (session_id, at, type, status, detail)
          SELECT claimed.id, ${now}, 'claimed', claimed.status,
                 jsonb_build_object('from', ${from}::text, 'snapshot', claimed.snapshot, 'collection', ${s.collection ?? null}::text, 'mode', ${s.mode}::text, 'readySince', claimed.ready_at)
          FROM claimed RETURNING ${EVENT_COLUMNS}
        ), attached_event AS (
          INSERT INTO session_events (session_id, at, type, lease_id, detail)
          SELECT l.session_id, ${now}, 'lease_attached', l.id, ${JSON.stringify({ holder: lease.holder })}::jsonb
          FROM l RETURNING ${EVENT_COLUMNS}
        )
        SELECT l.session_id AS id, l.created_at, l.expires_at, to_jsonb(c) AS claimed_event, to_jsonb(a) AS attached_event
        FROM l, claimed_event c, attached_event a`)
      if (!row) return null
      this.deps.sessions.announce([eventFromRow(row.claimed_event), eventFromRow(row.attached_event)])
      return { sessionId: row.id, times: { createdAt: row.created_at, expiresAt: row.expires_at } }
    } catch (err) {
      if ((err as { constraint?: string }).constraint === 'sessions_one_live_per_pool') return null
      throw err
    }
  }

  /** Names the claimed agent's snapshot now, rather than on the reconciler's next pass (which repeats it until the restore shows). */
  private async assignClaimed(sessionId: string): Promise<void> {
    const s = await this.deps.sessions.find(sessionId)
    if (!s || s.status !== 'STARTING') return
    await this.deps.warmPool!.assign(s).catch((err: Error) =>
      this.deps.logger?.warn({ sessionId, err: err.message }, 'assigning the claimed warm agent failed; the reconciler retries'),
    )
  }

  private async replay(
    principal: Principal,
    idempotencyKey: string,
    requestHash: string,
    waitSeconds: number | undefined,
    baseUrl: string,
    collection: string | undefined,
    clientGone: AbortSignal | undefined,
  ): Promise<LeaseView | null> {
    const [row] = await this.deps.sql.rows<LeaseRow>(Prisma.sql`
      SELECT ${leaseColumns(this.deps.clock.sql)} FROM leases lease
      WHERE lease.principal = ${principal.id} AND lease.idempotency_key = ${idempotencyKey}`)
    if (!row) return null
    if (row.requestHash !== requestHash) {
      throw unprocessable('idempotency_key_reused', 'this Idempotency-Key was used for an acquire with other parameters')
    }
    // The same request (the hash says so) gets the same answer: a lease ended for its collection stays a 404.
    if (row.endReason === 'collection_not_found') throw collectionNotFound(collection ?? '', row.id, undefined, row.sessionId)
    const session = await this.settle(row.sessionId, waitSeconds ?? 0, clientGone)
    this.refuseFailed(row.id, session)
    return { ...this.view(principal, row, session, baseUrl), token: this.deps.tokens.mint(row.id) }
  }

  async get(principal: Principal, id: string, waitSeconds: number, baseUrl: string, clientGone?: AbortSignal): Promise<LeaseView> {
    const row = await this.find(principal, id)
    const session = await this.settle(row.sessionId, waitSeconds, clientGone)
    // A long-poll waits for a usable session: FAILED is its answer as a problem. A plain read shows the lease.
    if (waitSeconds > 0) this.refuseFailed(row.id, session)
    return this.view(principal, row, session, baseUrl)
  }

  /**
   * An acquire (or its replay, or a lease's long-poll) whose session is FAILED answers a
   * problem instead of a lease that can never be used. The lease is already ended: the
   * transition to FAILED ends every lease of the session in its own transaction.
   */
  private refuseFailed(leaseId: string, session: SessionRecord): void {
    if (session.status === 'FAILED') throw sessionFailedProblem(session, leaseId)
  }

  /**
   * Extends an active lease. Ended or expired leases stay ended (410): renew never
   * resurrects. The expiry only moves forward (a shorter ttlSeconds never cuts it), and
   * renew takes the session's row lock as attach does: a stop that won makes it 410.
   */
  async renew(principal: Principal, id: string, ttlSeconds: number | undefined, baseUrl: string): Promise<LeaseView> {
    const { clock, limits } = this.deps
    if (ttlSeconds !== undefined && ttlSeconds > limits.maxLeaseTtlSeconds) {
      throw badRequest('ttl_out_of_range', `ttlSeconds may be at most ${limits.maxLeaseTtlSeconds} on this server`)
    }
    const row = await this.find(principal, id)
    const now = clock.sql
    const ttl = ttlSeconds ?? row.ttlSeconds
    const [renewed] = await this.deps.sql.rows<{ expiresAt: Date; ttlSeconds: number }>(Prisma.sql`
      WITH s AS (
        SELECT id FROM sessions WHERE id = ${row.sessionId}::uuid AND status::text IN (${Prisma.join(HOLDABLE_STATUSES)})
        FOR SHARE)
      UPDATE leases SET expires_at = GREATEST(expires_at, ${expiry(now, ttl)}), ttl_seconds = ${ttl}
      WHERE id = ${id}::uuid AND ended_at IS NULL AND expires_at > ${now} AND session_id IN (SELECT id FROM s)
      RETURNING expires_at AS "expiresAt", ttl_seconds AS "ttlSeconds"`)
    if (!renewed) {
      const current = await this.find(principal, id)
      const status = leaseStatus(current)
      throw gone(
        'lease_ended',
        status === 'active'
          ? `lease ${id} cannot be renewed: its session is stopping; acquire a new one`
          : `lease ${id} is ${status}${current.endReason && status === 'ended' ? ` (${current.endReason})` : ''} and cannot be renewed; acquire a new one`,
      )
    }
    return this.view(principal, { ...row, ...renewed, lapsed: false }, await this.deps.sessions.get(row.sessionId), baseUrl)
  }

  /** Ends a lease. Releasing an ended lease is a no-op that answers with its state. */
  async release(principal: Principal, id: string, baseUrl: string): Promise<LeaseView> {
    const now = this.deps.clock.sql
    const mayEnd = principal.role === 'operator' ? Prisma.sql`TRUE` : Prisma.sql`principal = ${principal.id}`
    // One round trip: the lease as it was, its end (when this call ended it), the event,
    // and its session. The session's count excludes this lease, which no longer counts.
    const [r] = await this.deps.sql.rows<LeaseRow & Record<string, unknown>>(Prisma.sql`
      WITH l AS (
        UPDATE leases SET ended_at = LEAST(${now}, expires_at),
                          end_reason = CASE WHEN expires_at <= ${now} THEN 'expired' ELSE 'released' END
        WHERE id = ${id}::uuid AND ended_at IS NULL AND ${mayEnd}
        RETURNING id, session_id, ended_at, end_reason),
      e AS (
        INSERT INTO session_events (session_id, at, type, lease_id)
        SELECT session_id, ${now}, 'lease_' || end_reason, id FROM l
        RETURNING ${EVENT_COLUMNS})
      SELECT ${leaseColumns(now)}, l.ended_at AS released_at, l.end_reason AS released_as, to_jsonb(e) AS event,
             to_jsonb(s) AS session, ${liveLeaseCount(now, Prisma.sql`l.id <> ${id}::uuid`)} AS lease_count, ${now} AS observed_at
      FROM leases lease JOIN sessions s ON s.id = lease.session_id
      LEFT JOIN l ON TRUE LEFT JOIN e ON TRUE
      WHERE lease.id = ${id}::uuid`)
    const row = this.visible(principal, id, r)
    if (r!.event) this.deps.sessions.announce([eventFromRow(r!.event as Record<string, unknown>)])
    if (!r!.released_at && !row.endedAt) {
      // Not ended by this call, yet not ended in its snapshot: another release (or end)
      // committed while this UPDATE waited for it. Answer the final state, never "active".
      return this.get(principal, id, 0, baseUrl)
    }
    const current = r!.released_at ? { ...row, endedAt: r!.released_at as Date, endReason: r!.released_as as string } : row
    return this.view(principal, current, toRecord({ ...(r!.session as Record<string, unknown>), lease_count: r!.lease_count, observed_at: r!.observed_at }), baseUrl)
  }

  /** Leases visible to the caller: their own, or all for an operator. */
  async list(principal: Principal, filter: { sessionId?: string; active?: boolean; limit: number }, baseUrl: string) {
    const now = this.deps.clock.sql
    const conditions = [Prisma.sql`TRUE`]
    if (principal.role !== 'operator') conditions.push(Prisma.sql`lease.principal = ${principal.id}`)
    if (filter.sessionId) conditions.push(Prisma.sql`lease.session_id = ${filter.sessionId}::uuid`)
    if (filter.active) conditions.push(Prisma.sql`lease.ended_at IS NULL AND lease.expires_at > ${now}`)
    const rows = await this.deps.sql.rows<LeaseRow>(Prisma.sql`
      SELECT ${leaseColumns(now)} FROM leases lease WHERE ${Prisma.join(conditions, ' AND ')}
      ORDER BY lease.created_at DESC LIMIT ${filter.limit}`)
    const sessions = await this.deps.sessions.byIds([...new Set(rows.map((r) => r.sessionId))])
    return rows.map((r) => this.view(principal, r, sessions.get(r.sessionId)!, baseUrl))
  }

  private async find(principal: Principal, id: string): Promise<LeaseRow> {
    const [row] = await this.deps.sql.rows<LeaseRow>(Prisma.sql`SELECT ${leaseColumns(this.deps.clock.sql)} FROM leases lease WHERE lease.id = ${id}::uuid`)
    return this.visible(principal, id, row)
  }

  /** Another client's lease is "not found": its existence is not the caller's business. */
  private visible(principal: Principal, id: string, row: LeaseRow | undefined): LeaseRow {
    if (!row || (principal.role !== 'operator' && row.principal !== principal.id)) {
      throw notFound('lease_not_found', `no lease ${id}`)
    }
    return row
  }


  /**
   * The collection an acquire names must be in its session's snapshot. Checked once the
   * session serves (at acquire, or after its wait); one that is still starting is checked
   * by Chroma itself on the first query. A missing one ends the lease (404): the caller
   * asked for something the snapshot does not have, so nothing holds the session for it.
   * Found collections are remembered per session generation: a snapshot never changes.
   */
  private async checkCollection(session: SessionRecord, collection: string, leaseId: string): Promise<void> {
    if ((session.status !== 'READY' && session.status !== 'DRAINING') || session.host === null || session.port === null) return
    // A session started for this collection was READY only once Chroma showed it (the
    // readiness check names it): a pinned standby's acquire asks Chroma nothing more.
    if (session.collection === collection) return
    const key = `${session.id}/${session.generation}/${collection}`
    if (this.foundCollections.has(key)) return
    try {
      await this.deps.chroma.collectionId(`http://${session.host}:${session.port}`, collection, this.deps.tokens.sessionToken(session.id, session.generation))
    } catch (err) {
      if (!(err instanceof ChromaError && err.status === 404)) return // unreachable or slow: the first query will tell
      // Ended with its event on the session's timeline, in one statement.
      const now = this.deps.clock.sql
      const events = await this.deps.sql.rows<Record<string, unknown>>(Prisma.sql`
        WITH ended AS (
          UPDATE leases SET ended_at = LEAST(${now}, expires_at), end_reason = 'collection_not_found'
          WHERE id = ${leaseId}::uuid AND ended_at IS NULL RETURNING id, session_id)
        INSERT INTO session_events (session_id, at, type, reason, lease_id)
        SELECT session_id, ${now}, 'lease_ended', 'collection_not_found', id FROM ended
        RETURNING ${EVENT_COLUMNS}`)
      this.deps.sessions.announce(events.map(eventFromRow))
      throw collectionNotFound(collection, leaseId, session.snapshot, session.id)
    }
    if (this.foundCollections.size >= 10_000) this.foundCollections.clear()
    this.foundCollections.add(key)
  }

  /**
   * Reads the session, holding the answer up to waitSeconds while it is still starting,
   * or until `clientGone` aborts. Woken by the change feed; the 1 s re-read covers a
   * missed notification.
   */
  async settle(sessionId: string, waitSeconds: number, clientGone?: AbortSignal): Promise<SessionRecord> {
    const deadline = Date.now() + waitSeconds * 1000
    for (;;) {
      const session = await this.deps.sessions.get(sessionId)
      const remaining = deadline - Date.now()
      // A client that hung up gets no answer: stop waiting for it.
      if (!STARTING_STATUSES.includes(session.status) || remaining <= 0 || clientGone?.aborted) return session
      await nextSessionChange(this.deps.changes, sessionId, Math.min(remaining, SETTLE_RECHECK_MS), clientGone ? [clientGone] : [])
    }
  }

  /** A lease as `viewer` sees it: the session token only for the lease's own principal, only while it is active. */
  view(viewer: Principal, row: LeaseRow, session: SessionRecord, baseUrl: string): LeaseView {
    const status = leaseStatus(row)
    const serving = session.status === 'READY' || session.status === 'DRAINING'
    // An operator listing leases has no use for other principals' session tokens.
    const own = row.principal === viewer.id
    return {
      id: row.id,
      status,
      endReason: status === 'active' ? null : endReasonOf(row),
      // Per lease and until its expiry: a renewal shows a new one, a release revokes it at the agent.
      sessionToken: own && status === 'active' && serving ? this.deps.tokens.directToken(session.id, session.generation, row.id, row.expiresAt) : null,
      holder: row.holder,
      ttlSeconds: row.ttlSeconds,
      createdAt: row.createdAt.toISOString(),
      expiresAt: row.expiresAt.toISOString(),
      endedAt: row.endedAt?.toISOString() ?? null,
      session: this.deps.sessions.view(session, baseUrl),
    }
  }
}

type NewLease = Pick<LeaseRow, 'id' | 'principal' | 'holder' | 'idempotencyKey' | 'requestHash' | 'ttlSeconds'>

type LeaseTimes = Pick<LeaseRow, 'createdAt' | 'expiresAt'>
/** A session an acquire starts (or claims): what createWithLease and the claims set on it. */
type NewSession = { mode: SessionMode; poolKey: string | null; snapshot: string; collection?: string; idleTtlSeconds: number; saveOnRelease: boolean }

const collectionNotFound = (collection: string, leaseId: string, snapshot?: string, sessionId?: string) =>
  notFound(
    'collection_not_found',
    `collection ${JSON.stringify(collection)} is not in snapshot${snapshot ? ` ${snapshot}` : ''}; lease ${leaseId} was ended. Acquire without "collection", or name one the snapshot holds`,
    { leaseId, ...(sessionId ? { sessionId } : {}) },
  )

/** A session a lease may still be renewed on: not on its way out. */
const HOLDABLE_STATUSES: SessionStatus[] = ['PENDING', 'STARTING', 'READY', 'DRAINING']

/** `now` (the clock's SQL) plus a TTL, computed by the statement. */
const expiry = (now: Prisma.Sql, ttlSeconds: number) => Prisma.sql`(${now} + make_interval(secs => ${ttlSeconds}))`

/** A lease's status from its row, read on the database's clock (`lapsed`). */
export function leaseStatus(row: Pick<LeaseRow, 'endedAt' | 'endReason' | 'lapsed'>): LeaseStatus {
  if (row.endedAt) {
    if (row.endReason === 'expired') return 'expired'
    return row.endReason === 'released' ? 'released' : 'ended'
  }
  return row.lapsed ? 'expired' : 'active'
}

/** The end reason the API shows; rows written before reasons were told apart read `session_ended`. */
function endReasonOf(row: Pick<LeaseRow, 'endedAt' | 'endReason'>): LeaseEndReason {
  if (!row.endedAt) return 'expired' // lapsed, not yet recorded by the reaper
  return (row.endReason as LeaseEndReason | null) ?? 'session_ended'
}

/** A unique_violation (23505), raised by node-postgres (SqlPool) or by Prisma's driver adapter. */
/**
 * The INSERT of a lease on the session row `source` (a CTE of the same statement, with an
 * id column) yields, if it yields one: attach and claim each make their lease this way.
 */
function insertLeaseOn(source: Prisma.Sql, lease: NewLease, token: string, now: Prisma.Sql): Prisma.Sql {
  return Prisma.sql`INSERT INTO leases (id, session_id, token_hash, holder, principal, idempotency_key, request_hash, ttl_seconds, expires_at, created_at)
        SELECT ${lease.id}::uuid, ${source}.id, ${LeaseTokens.hash(token)}, ${lease.holder}, ${lease.principal}, ${lease.idempotencyKey},
               ${lease.requestHash}, ${lease.ttlSeconds}, ${expiry(now, lease.ttlSeconds)}, ${now}
        FROM ${source} RETURNING id, session_id, created_at, expires_at`
}

function isUniqueViolation(err: unknown): boolean {
  const e = err as { code?: string; meta?: { code?: string; driverAdapterError?: { cause?: { kind?: string; originalCode?: string } } } }
  return (
    e?.code === '23505' ||
    e?.code === 'P2002' ||
    e?.meta?.code === '23505' ||
    e?.meta?.driverAdapterError?.cause?.kind === 'UniqueConstraintViolation' ||
    e?.meta?.driverAdapterError?.cause?.originalCode === '23505'
  )
}
