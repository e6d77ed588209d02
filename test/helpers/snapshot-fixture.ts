import { spawnSync } from 'node:child_process'
import { mkdir, rm } from 'node:fs/promises'
import { join } from 'node:path'
import { ChromaClient } from 'chromadb'
import * as tar from 'tar'
import { ChromaServer } from '../../container/agent/chroma-process.ts'
import { freeLoopbackPort } from '../../src/free-port.ts'

/**
 * A real Chroma snapshot for tests: a persist directory written by the real server
 * (the same chroma-server.cjs the agent runs), and the same directory packed as .tar
 * and .tar.gz. Vectors are deterministic, so a test can query with `vector(i)` and
 * expect `r-<i>` as the nearest hit.
 */
export interface SnapshotFixture {
  /** The persist directory. */
  dir: string
  tarPath: string
  tarGzPath: string
  /** The same archive compressed with zstd (the zstd CLI), or null when this machine has no zstd. */
  tarZstPath: string | null
  collection: string
  count: number
  dim: number
  /** The embedding stored under id `r-<i>`. */
  vector(i: number): number[]
}

export interface SnapshotFixtureOptions {
  collection?: string
  count?: number
  dim?: number
  seed?: number
}

const ITEMS = ['coffee', 'bagel', 'notebook', 'train ticket', 'umbrella', 'lunch', 'batteries', 'flowers']

/** Builds the fixture under `parentDir` (created if needed): persist/, snapshot.tar, snapshot.tar.gz. */
export async function buildSnapshotFixture(parentDir: string, options: SnapshotFixtureOptions = {}): Promise<SnapshotFixture> {
  const { collection = 'receipts', count = 200, dim = 16, seed = 1 } = options
  const random = mulberry32(seed)
  const vectors = Array.from({ length: count }, () => Array.from({ length: dim }, () => random() * 2 - 1))
  const documents = vectors.map((_, i) => `receipt ${i}: ${ITEMS[i % ITEMS.length]} ${(1 + random() * 40).toFixed(2)}`)

  const dir = join(parentDir, 'persist')
  await rm(dir, { recursive: true, force: true })
  await mkdir(dir, { recursive: true })
  const server = ChromaServer.start({ dataDir: dir, host: '127.0.0.1', port: await freeLoopbackPort(), stdout: 'ignore' })
  try {
    await server.waitForHeartbeat(30_000)
    const client = chromaClient(server.url)
    // embeddingFunction null: the default one downloads model weights, which cannot work offline.
    const col = await client.createCollection({ name: collection, embeddingFunction: null })
    await col.add({
      ids: vectors.map((_, i) => `r-${i}`),
      embeddings: vectors,
      documents,
      metadatas: vectors.map((_, i) => ({ n: i })),
    })
  } finally {
    // SIGINT: a graceful stop leaves sqlite closed and the files consistent to copy.
    await server.stop(10_000)
  }

  const tarPath = join(parentDir, 'snapshot.tar')
  const tarGzPath = join(parentDir, 'snapshot.tar.gz')
  await tar.c({ cwd: dir, file: tarPath, portable: true }, ['.'])
  await tar.c({ cwd: dir, file: tarGzPath, portable: true, gzip: true }, ['.'])
  const tarZstPath = join(parentDir, 'snapshot.tar.zst')
  const zstd = spawnSync('zstd', ['-q', '-f', '-3', tarPath, '-o', tarZstPath])
  return { dir, tarPath, tarGzPath, tarZstPath: zstd.status === 0 ? tarZstPath : null, collection, count, dim, vector: (i) => [...vectors[i]!] }
}

export interface ChromaQueryHit {
  id: string
  document: string | null
  distance: number | null
}

/**
 * Queries a running Chroma at host:port directly, with the official client, as a
 * session's user would: nearest neighbours of `embedding` in `collection`.
 */
/** A Chroma address; `token` is sent as x-chroma-token (a session agent requires it). */
export interface ChromaEndpoint {
  host: string
  port: number
  token?: string
}

export async function queryChroma(
  endpoint: ChromaEndpoint,
  collection: string,
  embedding: number[],
  nResults = 3,
): Promise<ChromaQueryHit[]> {
  const client = chromaClient(`http://${endpoint.host}:${endpoint.port}`, endpoint.token)
  const col = await client.getCollection({ name: collection })
  const result = await col.query({ queryEmbeddings: [embedding], nResults, include: ['documents', 'distances'] })
  return (result.ids[0] ?? []).map((id, i) => ({
    id,
    document: result.documents[0]?.[i] ?? null,
    distance: result.distances[0]?.[i] ?? null,
  }))
}

/** The number of records in `collection` of the Chroma at host:port. */
export async function countChroma(endpoint: ChromaEndpoint, collection: string): Promise<number> {
  const col = await chromaClient(`http://${endpoint.host}:${endpoint.port}`, endpoint.token).getCollection({ name: collection })
  return col.count()
}

/** True when `GET /api/v2/heartbeat` of the Chroma at host:port answers 200 within a second. */
export async function chromaAnswers(endpoint: ChromaEndpoint): Promise<boolean> {
  try {
    const res = await fetch(`http://${endpoint.host}:${endpoint.port}/api/v2/heartbeat`, {
      signal: AbortSignal.timeout(1_000),
      headers: endpoint.token ? { 'x-chroma-token': endpoint.token } : {},
    })
    await res.body?.cancel()
    return res.ok
  } catch {
    return false
  }
}

export function chromaClient(url: string, token?: string): ChromaClient {
  const { hostname, port } = new URL(url)
  return new ChromaClient({ host: hostname, port: Number(port), ssl: false, ...(token ? { headers: { 'x-chroma-token': token } } : {}) })
}

/** A small seeded PRNG (mulberry32): the same seed gives the same vectors everywhere. */
function mulberry32(seed: number): () => number {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}
