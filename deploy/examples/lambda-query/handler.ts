import { ChromaClient } from 'chromadb'

/**
 * Example: a Lambda (or any service inside the VPC) querying a chroma-lease session
 * with the official chromadb JS client, through the control plane's proxy.
 *
 * The client points at the control plane's host and port (the chromadb client ignores
 * any path and calls /api/v2/..., which the control plane proxies to the session the
 * lease token opens); the lease token travels as `x-chroma-token`, as Chroma's own
 * clients send their token.
 *
 * Two ways in:
 *   - the workflow already holds a lease (e.g. the Step Functions template's Acquire
 *     passed `lease.token` on): the event carries `lease: { token }`;
 *   - otherwise the handler takes a lease of its own (POST /v1/leases with the API key,
 *     waiting up to 50 s for READY) and releases it when done, whatever happens.
 *
 * Environment: CHROMA_LEASE_URL (https://chroma-lease.example.com), CHROMA_LEASE_API_KEY
 * (a client key; only needed to take leases). Put the Lambda in the stack's
 * workflowLambdaSecurityGroupId and private subnets (see deploy/README.md).
 */

export interface QueryEvent {
  /** Where the data is: used to take a lease when none is passed in. */
  snapshot?: string
  collection: string
  queryEmbeddings: number[][]
  nResults?: number
  where?: Record<string, unknown>
  /** A lease the caller already holds. */
  lease?: { token: string }
}

export interface QueryResultRow {
  id: string
  document: string | null
  distance: number | null
  metadata: Record<string, unknown> | null
}

interface Lease {
  id: string
  token: string
  session: { id: string; status: string; error: string | null }
}

export interface Settings {
  url: string
  apiKey?: string
  fetch?: typeof fetch
}

export function settingsFromEnv(env: Record<string, string | undefined> = process.env): Settings {
  const url = env.CHROMA_LEASE_URL
  if (!url) throw new Error('set CHROMA_LEASE_URL to the control plane, e.g. https://chroma-lease.example.com')
  return { url: url.replace(/\/$/, ''), apiKey: env.CHROMA_LEASE_API_KEY }
}

/** The official client, pointed at the control plane's proxy, authorised by the lease token. */
export function chromaThroughProxy(controlPlaneUrl: string, leaseToken: string): ChromaClient {
  const u = new URL(controlPlaneUrl)
  const ssl = u.protocol === 'https:'
  return new ChromaClient({
    host: u.hostname,
    port: u.port ? Number(u.port) : ssl ? 443 : 80,
    ssl,
    headers: { 'x-chroma-token': leaseToken },
  })
}

export async function query(event: QueryEvent, settings: Settings = settingsFromEnv()): Promise<QueryResultRow[][]> {
  let own: Lease | null = null
  let token = event.lease?.token
  if (!token) {
    if (!event.snapshot) throw new Error('pass lease.token, or snapshot to take a lease')
    own = await acquire(settings, event.snapshot, event.collection)
    token = own.token
  }
  try {
    const client = chromaThroughProxy(settings.url, token)
    // embeddingFunction: none. Queries carry their own embeddings; the default
    // embedding function would download model weights at run time.
    const collection = await client.getCollection({ name: event.collection, embeddingFunction: undefined })
    const result = await collection.query({
      queryEmbeddings: event.queryEmbeddings,
      nResults: event.nResults ?? 10,
      where: event.where as never,
      include: ['documents', 'metadatas', 'distances'] as never,
    })
    return result.ids.map((row, q) =>
      row.map((id, i) => ({
        id,
        document: result.documents[q]?.[i] ?? null,
        distance: result.distances[q]?.[i] ?? null,
        metadata: (result.metadatas[q]?.[i] as Record<string, unknown> | null) ?? null,
      })),
    )
  } finally {
    if (own) await release(settings, own.id)
  }
}

/** The Lambda entry point. */
export const handler = async (event: QueryEvent) => ({ results: await query(event) })

async function acquire(s: Settings, snapshot: string, collection: string): Promise<Lease> {
  const res = await api(s, 'POST', '/v1/leases', { snapshot, collection, waitSeconds: 50, holder: process.env.AWS_LAMBDA_FUNCTION_NAME ?? 'example-client' })
  const lease = (await res.json()) as Lease
  if (lease.session.status === 'READY') return lease
  // Still starting after 50 s, or failed: give the lease back before saying so.
  await release(s, lease.id)
  throw new Error(`session ${lease.session.id} is ${lease.session.status}${lease.session.error ? `: ${lease.session.error}` : ''}`)
}

async function release(s: Settings, leaseId: string): Promise<void> {
  await api(s, 'DELETE', `/v1/leases/${leaseId}`)
}

async function api(s: Settings, method: string, path: string, body?: unknown): Promise<Response> {
  if (!s.apiKey) throw new Error('set CHROMA_LEASE_API_KEY to take leases')
  const res = await (s.fetch ?? fetch)(`${s.url}${path}`, {
    method,
    headers: { 'x-api-key': s.apiKey, ...(body ? { 'content-type': 'application/json' } : {}) },
    body: body ? JSON.stringify(body) : undefined,
    signal: AbortSignal.timeout(60_000),
  })
  if (!res.ok) throw new Error(`${method} ${path}: ${res.status} ${await res.text()}`)
  return res
}
