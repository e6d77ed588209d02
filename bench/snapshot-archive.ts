/**
 * The benchmarks' Chroma snapshot: COUNT x DIM random vectors in one collection `bench`,
 * written by the real (pinned) Chroma server, packed as .tar, .tar.gz and .tar.zst, and
 * cached under bench/results/restore-snapshot-<count>x<dim>/ so reruns (and the other
 * benches using it: bench:restore, bench:start) skip the build.
 */
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { existsSync } from 'node:fs'
import { mkdir, rm, stat } from 'node:fs/promises'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { ChromaClient } from 'chromadb'
import * as tar from 'tar'
import { ChromaServer } from '../container/agent/chroma-process.ts'
import { freeLoopbackPort } from '../src/free-port.ts'

export type Format = 'tar' | 'tar.gz' | 'tar.zst'
export const FORMATS: Format[] = ['tar', 'tar.gz', 'tar.zst']
/** The collection the snapshot holds. */
export const SNAPSHOT_COLLECTION = 'bench'

const repo = fileURLToPath(new URL('..', import.meta.url))

/** The directory holding the cached archives of this size. */
export function snapshotCacheDir(count: number, dim: number): string {
  return join(repo, 'bench/results', `restore-snapshot-${count}x${dim}`)
}

/** The snapshot and its archives, built once and cached. */
export async function snapshotArchives(count: number, dim: number): Promise<Record<Format, { path: string; bytes: number }>> {
  const cache = snapshotCacheDir(count, dim)
  const persist = join(cache, 'persist')
  if (!existsSync(join(cache, 'snapshot.tar.zst'))) {
    await rm(cache, { recursive: true, force: true })
    await mkdir(persist, { recursive: true })
    console.log(`building a ${count} x ${dim} snapshot with the real Chroma server (cached in ${cache})`)
    const server = ChromaServer.start({ dataDir: persist, host: '127.0.0.1', port: await freeLoopbackPort(), stdout: 'ignore' })
    try {
      await server.waitForHeartbeat(30_000)
      const { hostname, port } = new URL(server.url)
      const client = new ChromaClient({ host: hostname, port: Number(port), ssl: false })
      const col = await client.createCollection({ name: SNAPSHOT_COLLECTION, embeddingFunction: null })
      let seed = 1
      const random = () => ((seed = (seed * 16807) % 2147483647) / 2147483647) * 2 - 1
      const BATCH = 2_000
      for (let start = 0; start < count; start += BATCH) {
        const n = Math.min(BATCH, count - start)
        const ids = Array.from({ length: n }, (_, i) => `r-${start + i}`)
        await col.add({
          ids,
          embeddings: ids.map(() => Array.from({ length: dim }, random)),
          documents: ids.map((id) => `receipt ${id}`),
        })
        if ((start / BATCH) % 10 === 0) console.log(`  ${start + n} / ${count}`)
      }
    } finally {
      await server.stop(60_000)
    }
    await tar.c({ cwd: persist, file: join(cache, 'snapshot.tar'), portable: true }, ['.'])
    await run('gzip', ['-k', '-6', '-f', join(cache, 'snapshot.tar')])
    await run('zstd', ['-q', '-f', '-3', '-T0', join(cache, 'snapshot.tar'), '-o', join(cache, 'snapshot.tar.zst')])
  }
  const entry = async (f: Format) => {
    const path = join(cache, `snapshot.${f}`)
    return { path, bytes: (await stat(path)).size }
  }
  return { tar: await entry('tar'), 'tar.gz': await entry('tar.gz'), 'tar.zst': await entry('tar.zst') }
}

async function run(command: string, args: string[]): Promise<void> {
  const child = spawn(command, args, { stdio: 'inherit' })
  const [code] = (await once(child, 'exit')) as [number]
  if (code !== 0) throw new Error(`${command} exited ${code}`)
}
