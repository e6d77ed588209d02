/**
 * What a chaos run saw: every fault with its window, every acknowledged lease, every
 * acquire and its outcome, every 5xx, and the counts of operations. The invariant
 * checker judges these against Postgres's rows once the run has quiesced.
 */
export type FaultKind = 'replica_kill' | 'replica_stop' | 'chroma_kill' | 'agent_kill' | 'agent_stop' | 'pg_restart' | 'pg_cut'

export interface FaultRecord {
  id: number
  kind: FaultKind
  /** A replica's name, a session id, or "postgres". */
  target: string
  sessionId?: string
  replica?: string
  start: number
  /** When the fault was undone (replica ready again, process resumed, Postgres back); null while it lasts. */
  end: number | null
  detail?: string
}

export interface LeaseRecord {
  id: string
  token: string
  sessionId: string
  snapshot: number
  mode: 'shared' | 'exclusive'
  idempotencyKey: string
  ackAt: number
  /** The latest expiry a replica acknowledged (acquire, read or renew), epoch ms on the database's clock. */
  ackExpiresAt: number
  releaseSentAt: number | null
  abandoned: boolean
}

export interface AcquireRecord {
  key: string
  worker: number
  snapshot: number
  mode: 'shared' | 'exclusive'
  start: number
  deadline: number
  resolvedAt: number | null
  outcome: 'ready' | 'failed' | 'problem' | 'unresolved'
  leaseId?: string
  sessionId?: string
  detail?: string
}

export interface ServerError {
  at: number
  replica: string
  method: string
  path: string
  status: number
  code: string | null
  /** The session in the path, for a data-path 5xx. */
  sessionId?: string
  detail?: string
}

/** Something that may count against an invariant once judged (e.g. a refusal of a lease we hold). */
export interface Suspect {
  at: number
  leaseId: string
  sessionId: string
  what: string
}

export interface RestartRecord {
  replica: string
  restartedAt: number
  readyAt: number | null
  firstAcquireAt: number | null
}

export class Recorder {
  readonly t0 = Date.now()
  readonly faults: FaultRecord[] = []
  readonly leases = new Map<string, LeaseRecord>()
  readonly acquires: AcquireRecord[] = []
  readonly serverErrors: ServerError[] = []
  readonly wrongAnswers: Array<{ at: number; leaseId: string; sessionId: string; detail: string }> = []
  readonly suspects: Suspect[] = []
  readonly idempotencyBroken: Array<{ at: number; key: string; detail: string }> = []
  readonly poolDuplicates: Array<{ at: number; poolKey: string; sessions: string[] }> = []
  readonly restarts: RestartRecord[] = []
  readonly ops = new Map<string, number>()

  count(op: string, n = 1): void {
    this.ops.set(op, (this.ops.get(op) ?? 0) + n)
  }

  fault(kind: FaultKind, target: string, extra: Partial<FaultRecord> = {}): FaultRecord {
    const f: FaultRecord = { id: this.faults.length + 1, kind, target, start: Date.now(), end: null, ...extra }
    this.faults.push(f)
    return f
  }

  /** Seconds since the run began, for reports. */
  rel(at: number): string {
    return `${((at - this.t0) / 1000).toFixed(1)}s`
  }

  /** The faults that overlap [at - before, at + after], for a report's "which fault was near". */
  near(at: number, beforeMs = 10_000, afterMs = 2_000): string {
    const hits = this.faults.filter((f) => f.start <= at + afterMs && (f.end ?? Infinity) >= at - beforeMs)
    return hits.length ? hits.map((f) => `#${f.id} ${f.kind} ${f.target} @${this.rel(f.start)}`).join('; ') : 'none'
  }
}
