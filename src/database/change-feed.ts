import { EventEmitter } from 'node:events'
import pg from 'pg'
import type { Logger } from 'pino'

/**
 * Changes committed by any replica, from Postgres LISTEN/NOTIFY (the triggers in the
 * first migration). Long-polls wait on it and the proxy drops cached routes on it.
 * A missed notification is never fatal: every consumer also re-reads the database
 * on a timer, this only makes them prompt.
 */
export type Change =
  | { kind: 'session'; sessionId: string; status: string }
  | { kind: 'lease'; leaseId: string; sessionId: string }

export interface ChangeFeed {
  on(listener: (change: Change) => void): () => void
  /** Listeners now: each is a long-poll or a held request waiting on a session. */
  listenerCount(): number
  close(): Promise<void>
}

const CHANNEL = 'chroma_lease'

export class PostgresChangeFeed implements ChangeFeed {
  private readonly emitter = new EventEmitter().setMaxListeners(0)
  private client: pg.Client | null = null
  private closed = false
  private retry: NodeJS.Timeout | null = null

  private constructor(
    private readonly url: string,
    private readonly logger?: Logger,
  ) {}

  static async connect(url: string, logger?: Logger): Promise<PostgresChangeFeed> {
    const feed = new PostgresChangeFeed(url, logger)
    await feed.listen()
    return feed
  }

  on(listener: (change: Change) => void): () => void {
    this.emitter.on('change', listener)
    return () => this.emitter.off('change', listener)
  }

  listenerCount(): number {
    return this.emitter.listenerCount('change')
  }

  async close(): Promise<void> {
    this.closed = true
    if (this.retry) clearTimeout(this.retry)
    await this.client?.end().catch(() => {})
  }

  private async listen(): Promise<void> {
    const client = new pg.Client({ connectionString: this.url })
    client.on('notification', (msg) => this.dispatch(msg.payload))
    client.on('error', (err) => {
      this.logger?.warn({ err }, 'change feed connection lost; reconnecting')
      this.scheduleReconnect()
    })
    await client.connect()
    await client.query(`LISTEN ${CHANNEL}`)
    this.client = client
  }

  private scheduleReconnect() {
    if (this.closed || this.retry) return
    this.client?.end().catch(() => {})
    this.client = null
    this.retry = setTimeout(() => {
      this.retry = null
      this.listen().catch(() => this.scheduleReconnect())
    }, 1000)
    this.retry.unref()
  }

  private dispatch(payload: string | undefined) {
    if (!payload) return
    try {
      const p = JSON.parse(payload) as { session: string; status?: string; lease?: string }
      const change: Change = p.lease
        ? { kind: 'lease', leaseId: p.lease, sessionId: p.session }
        : { kind: 'session', sessionId: p.session, status: p.status ?? '' }
      this.emitter.emit('change', change)
    } catch (err) {
      this.logger?.warn({ err, payload }, 'unreadable change notification')
    }
  }
}

/** A feed that never reports: for tools that build the app without a database (the OpenAPI writer). */
export const noChanges: ChangeFeed = { on: () => () => {}, listenerCount: () => 0, close: async () => {} }

/**
 * Resolves on the next change to a session, after `timeoutMs`, or once any of `signals`
 * aborts, whichever comes first; never rejects. What every wait for a session's status
 * uses (the acquire long-poll, held proxy requests): callers re-read the database after
 * it, since a notification can be missed.
 */
export function nextSessionChange(changes: ChangeFeed, sessionId: string, timeoutMs: number, signals: AbortSignal[] = []): Promise<void> {
  return new Promise<void>((resolve) => {
    if (signals.some((s) => s.aborted)) return resolve()
    const done = () => {
      off()
      clearTimeout(timer)
      for (const s of signals) s.removeEventListener('abort', done)
      resolve()
    }
    const off = changes.on((c) => {
      if (c.kind === 'session' && c.sessionId === sessionId) done()
    })
    const timer = setTimeout(done, timeoutMs)
    for (const s of signals) s.addEventListener('abort', done, { once: true })
  })
}
