import { request } from 'undici'
import { requestOnce } from './session-http.ts'

/**
 * The control plane's own calls to a session's Chroma server (API v2): readiness
 * probes for the reconciler and the JSON query for callers without a Chroma client.
 * Proxied traffic does not come through here; it streams through src/routes/proxy.ts.
 * Every call carries the session token (x-chroma-token), which the session's agent
 * requires before it passes anything to Chroma.
 */
const TENANT_DB = '/api/v2/tenants/default_tenant/databases/default_database'

export type Readiness = { ready: true } | { ready: false; reason: string }

export class ChromaError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message)
  }
}

export interface QueryRequest {
  collection: string
  queryEmbeddings: number[][]
  nResults: number
  where?: Record<string, unknown>
  whereDocument?: Record<string, unknown>
  include: string[]
}

export interface QueryResult {
  ids: string[][]
  documents?: (string | null)[][] | null
  metadatas?: (Record<string, unknown> | null)[][] | null
  distances?: (number | null)[][] | null
  embeddings?: (number[] | null)[][] | null
}

/** On a connection of its own, closed with the answer (see readiness and session-http.ts). */
const ONCE = true

export class ChromaClient {
  constructor(private readonly timeoutMs = 5_000) {}

  /**
   * Ready means: the heartbeat answers, Chroma's healthcheck passes (it is 503 until
   * the server can serve), and the requested collection exists when one was named.
   */
  async readiness(base: string, collection: string | null, token: string): Promise<Readiness> {
    try {
      // Asked once a pass per starting session, of thousands of sessions: no kept-alive
      // connection nor undici pool is left behind per session (session-http.ts).
      const heartbeat = await this.call('GET', `${base}/api/v2/heartbeat`, token, undefined, ONCE)
      if (heartbeat.status !== 200) return { ready: false, reason: `heartbeat answered ${heartbeat.status}` }
      const health = await this.call('GET', `${base}/api/v2/healthcheck`, token, undefined, ONCE)
      if (health.status !== 200) return { ready: false, reason: `healthcheck answered ${health.status}` }
      if (collection !== null) {
        const c = await this.call('GET', `${base}${TENANT_DB}/collections/${encodeURIComponent(collection)}`, token, undefined, ONCE)
        if (c.status === 404) return { ready: false, reason: `collection ${JSON.stringify(collection)} is not in the snapshot` }
        if (c.status !== 200) return { ready: false, reason: `collection lookup answered ${c.status}` }
      }
      return { ready: true }
    } catch (err) {
      return { ready: false, reason: (err as Error).message }
    }
  }

  async collectionId(base: string, name: string, token: string): Promise<string> {
    const res = await this.call('GET', `${base}${TENANT_DB}/collections/${encodeURIComponent(name)}`, token)
    if (res.status !== 200) throw new ChromaError(res.status, res.status === 404 ? `no collection ${JSON.stringify(name)}` : describe(res))
    return (res.body as { id: string }).id
  }

  async query(base: string, q: QueryRequest, token: string): Promise<QueryResult> {
    const id = await this.collectionId(base, q.collection, token)
    const res = await this.call('POST', `${base}${TENANT_DB}/collections/${id}/query`, token, {
      query_embeddings: q.queryEmbeddings,
      n_results: q.nResults,
      where: q.where,
      where_document: q.whereDocument,
      include: q.include,
    })
    if (res.status !== 200) throw new ChromaError(res.status, describe(res))
    return res.body as QueryResult
  }

  private async call(method: 'GET' | 'POST', url: string, token: string, body?: unknown, once = false): Promise<{ status: number; body: unknown }> {
    const opts = {
      method,
      headers: { 'x-chroma-token': token, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
      body: body === undefined ? undefined : JSON.stringify(body),
    }
    let res: { statusCode: number; text: string }
    if (once) res = await requestOnce(url, { ...opts, timeoutMs: this.timeoutMs })
    else {
      const answer = await request(url, { ...opts, headersTimeout: this.timeoutMs, bodyTimeout: this.timeoutMs })
      res = { statusCode: answer.statusCode, text: await answer.body.text() }
    }
    const text = res.text
    let parsed: unknown = text
    try {
      parsed = text ? JSON.parse(text) : null
    } catch {
      // non-JSON error bodies are reported as text
    }
    return { status: res.statusCode, body: parsed }
  }
}

function describe(res: { status: number; body: unknown }): string {
  const b = res.body as { message?: string; error?: string } | string | null
  const msg = typeof b === 'string' ? b : (b?.message ?? b?.error ?? '')
  return `chroma answered ${res.status}${msg ? `: ${String(msg).slice(0, 300)}` : ''}`
}
