import { randomUUID } from 'node:crypto'
import type { Logger } from 'pino'
import { Prisma } from '../generated/prisma/client.ts'
import type { SessionMode } from '../generated/prisma/enums.ts'
import type { SqlPool } from '../database/client.ts'
import type { Principal } from './auth.ts'
import type { Clock } from './clock.ts'
import { badRequest, conflict, notFound } from './errors.ts'
import { DB_NOW, EVENT_COLUMNS, eventFromRow, SessionService } from './sessions.ts'
import type { SnapshotService } from './snapshots/snapshot-service.ts'

/**
 * Pinned snapshots: an operator keeps sessions of a snapshot restored and READY with no
 * lease, so an acquire on it is one statement.
 *
 * - A shared pin keeps the snapshot's shared session: the keeper creates it when none is
 *   live (no lease; the partial unique index keeps it one), the reaper does not stop it for
 *   idleness while the pin exists (max lifetime still recycles it, and the keeper starts the
 *   next), and a shared acquire attaches to it as to any shared session.
 * - An exclusive pin keeps `sessions` standbys: exclusive sessions started for the pin
 *   (pin_id set, claimed_at null). An exclusive acquire of the snapshot (and collection, when
 *   it names one) takes a READY standby with its lease in one UPDATE (LeaseService), and the
 *   keeper starts a replacement.
 *
 * keepOnce() is one fleet-wide pass: every step is a conditional statement, so a crashed or
 * repeated pass does no harm. Removing a pin stops its unclaimed standbys (fenced: an
 * acquire that took one first keeps it) and lets the shared session idle out.
 */
export interface PinView {
  id: string
  snapshot: string
  collection: string | null
  mode: 'shared' | 'exclusive'
  sessions: number
  /** Of the sessions the pin keeps: how many serve (READY) and how many are on their way. */
  ready: number
  starting: number
  createdBy: string
  createdAt: string
}

export interface PinInput {
  snapshot: string
  collection?: string
  mode?: 'shared' | 'exclusive'
  sessions?: number
}

/** Standbys of one exclusive pin at most (each is a whole session). */
export const MAX_PINNED_SESSIONS = 50
/** Sessions a pass starts at most (launches go through the launcher's rate limit too). */
const MAX_STARTS_PER_PASS = 20

interface PinRow {
  id: string
  snapshot: string
  collection: string | null
  mode: SessionMode
  sessions: number
  created_by: string
  created_at: Date
  ready: number
  starting: number
}

export class PinService {
  constructor(
    private readonly deps: {
      sql: SqlPool
      clock: Clock
      sessions: SessionService
      snapshots: SnapshotService
      /** New sessions' idle TTL (a shared pinned session keeps it once its pin is gone) and launcher. */
      idleTtlSeconds: number
      launcher: string
      logger?: Logger
    },
  ) {}

  async create(principal: Principal, input: PinInput): Promise<PinView> {
    const mode = input.mode ?? 'shared'
    const sessions = input.sessions ?? 1
    if (mode === 'shared' && sessions !== 1) {
      throw badRequest('invalid_pin', 'a shared pin keeps the snapshot\'s one shared session: sessions must be 1 (pin mode "exclusive" keeps several)')
    }
    if (sessions < 1 || sessions > MAX_PINNED_SESSIONS) throw badRequest('invalid_pin', `sessions must be 1 to ${MAX_PINNED_SESSIONS}`)
    const snapshot = await this.deps.snapshots.canonical(input.snapshot)
    // A snapshot that cannot be launched is refused now (422), not on the keeper's first pass.
    await this.deps.snapshots.forLaunch(snapshot)
    const id = randomUUID()
    const rows = await this.deps.sql.rows<{ id: string }>(Prisma.sql`
      INSERT INTO pins (id, snapshot, collection, mode, sessions, created_by, created_at)
      VALUES (${id}::uuid, ${snapshot}, ${input.collection ?? null}, ${mode}::"SessionMode", ${sessions}, ${principal.id}, ${this.deps.clock.sql})
      ON CONFLICT DO NOTHING RETURNING id`)
    if (rows.length === 0) {
      const existing = await this.find(snapshot, input.collection ?? null, mode)
      throw conflict('pin_exists', `${snapshot}${input.collection ? ` (collection ${input.collection})` : ''} is pinned (${mode}) already: change it by removing pin ${existing?.id} first`, { pinId: existing?.id })
    }
    return this.get(id)
  }

  async list(): Promise<PinView[]> {
    return (await this.select(Prisma.sql`TRUE`)).map(toView)
  }

  async get(id: string): Promise<PinView> {
    const [row] = await this.select(Prisma.sql`p.id = ${id}::uuid`)
    if (!row) throw notFound('pin_not_found', `no pin ${id}`)
    return toView(row)
  }

  /** Removes a pin; its unclaimed standbys are stopped by the next pass. Answers the pin as it was. */
  async remove(id: string): Promise<PinView> {
    const pin = await this.get(id)
    await this.deps.sql.rows(Prisma.sql`DELETE FROM pins WHERE id = ${id}::uuid RETURNING id`)
    return pin
  }

  /** One pass: each pin's sessions brought to its count, standbys of removed pins stopped. */
  async keepOnce(): Promise<{ started: number; stopped: number }> {
    let started = 0
    for (const pin of await this.select(Prisma.sql`TRUE`)) {
      const missing = Math.min(MAX_STARTS_PER_PASS - started, pin.sessions - pin.ready - pin.starting)
      for (let i = 0; i < missing; i++) if (await this.startSession(pin)) started++
    }
    let stopped = 0
    for (const s of await this.orphanedStandbys()) {
      const ok = await this.deps.sessions.transition(s, ['PENDING', 'STARTING', 'READY'], 'STOPPING', { type: 'stopping', reason: 'unpinned' }, { stoppingAt: DB_NOW, stopReason: 'unpinned' }, false,
        // Fenced on still being an unclaimed standby with no lease: an acquire that took it keeps it.
        Prisma.sql`sessions.claimed_at IS NULL AND NOT EXISTS (SELECT 1 FROM leases l WHERE l.session_id = sessions.id AND l.ended_at IS NULL AND l.expires_at > ${this.deps.clock.sql})`)
      if (ok) stopped++
    }
    if (started || stopped) this.deps.logger?.info({ pins: { started, stopped } }, 'pins pass')
    return { started, stopped }
  }

  private async startSession(pin: PinRow): Promise<boolean> {
    const { sql, clock, sessions, snapshots, launcher, idleTtlSeconds } = this.deps
    const id = randomUUID()
    const now = clock.sql
    const launchSnapshot = await snapshots.forLaunch(pin.snapshot)
    const poolKey = pin.mode === 'shared' ? pin.snapshot : null
    const rows = await sql.rows<Record<string, unknown>>(Prisma.sql`
      WITH s AS (
        INSERT INTO sessions (id, mode, pool_key, snapshot, collection, status, generation, launcher, idle_ttl_seconds, save_on_release, created_by, created_at, updated_at, pin_id)
        VALUES (${id}::uuid, ${pin.mode}::"SessionMode", ${poolKey}, ${launchSnapshot}, ${pin.collection}, 'PENDING', 1, ${launcher}, ${idleTtlSeconds}, false,
                ${`pin:${pin.id}`}, ${now}, ${now}, ${pin.id}::uuid)
        ON CONFLICT (pool_key) WHERE status IN ('PENDING', 'STARTING', 'READY') DO NOTHING
        RETURNING id)
      INSERT INTO session_events (session_id, at, type, status, detail)
      SELECT id, ${now}, 'created', 'PENDING', ${JSON.stringify({ snapshot: launchSnapshot, collection: pin.collection, mode: pin.mode, pinId: pin.id })}::jsonb FROM s
      RETURNING ${EVENT_COLUMNS}`)
    sessions.announce(rows.map(eventFromRow))
    return rows.length > 0
  }

  /** Unclaimed standbys whose pin is gone. */
  private orphanedStandbys(): Promise<Array<{ id: string; generation: number }>> {
    return this.deps.sql.rows(Prisma.sql`
      SELECT s.id, s.generation FROM sessions s
      WHERE s.pin_id IS NOT NULL AND s.claimed_at IS NULL AND s.mode = 'exclusive' AND s.status IN ('PENDING', 'STARTING', 'READY')
        AND NOT EXISTS (SELECT 1 FROM pins p WHERE p.id = s.pin_id)
      LIMIT 100`)
  }

  private find(snapshot: string, collection: string | null, mode: SessionMode) {
    return this.deps.sql.rows<{ id: string }>(Prisma.sql`
      SELECT id FROM pins WHERE snapshot = ${snapshot} AND coalesce(collection, '') = ${collection ?? ''} AND mode = ${mode}::"SessionMode"`).then((r) => r[0])
  }

  /**
   * Pins with the sessions each keeps, by status: a shared pin's is the live shared session
   * of its snapshot (whoever started it); an exclusive pin's are its unclaimed standbys.
   */
  private select(where: Prisma.Sql): Promise<PinRow[]> {
    return this.deps.sql.rows<PinRow>(Prisma.sql`
      SELECT p.id, p.snapshot, p.collection, p.mode, p.sessions, p.created_by, p.created_at,
             count(s.id) FILTER (WHERE s.status = 'READY')::int AS ready,
             count(s.id) FILTER (WHERE s.status IN ('PENDING', 'STARTING'))::int AS starting
      FROM pins p
      LEFT JOIN sessions s ON s.launcher = ${this.deps.launcher} AND s.status IN ('PENDING', 'STARTING', 'READY') AND (
        (p.mode = 'shared' AND s.mode = 'shared' AND s.pool_key = p.snapshot)
        OR (p.mode = 'exclusive' AND s.pin_id = p.id AND s.claimed_at IS NULL))
      WHERE ${where}
      GROUP BY p.id ORDER BY p.created_at DESC`)
  }
}

function toView(r: PinRow): PinView {
  return {
    id: r.id,
    snapshot: r.snapshot,
    collection: r.collection,
    mode: r.mode as 'shared' | 'exclusive',
    sessions: r.sessions,
    ready: r.ready,
    starting: r.starting,
    createdBy: r.created_by,
    createdAt: r.created_at.toISOString(),
  }
}
