import { isAbsolute } from 'node:path'
import { spawn, spawnSync } from 'node:child_process'
import { Duplex, Transform, type Readable } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import zlib from 'node:zlib'
import { Decompress as ZstdDecompress } from 'fzstd'
import { Unpack, type ReadEntry } from 'tar'
import type { archiveFormat } from '../../src/services/snapshots/uri.ts'
import { coalesce } from './coalesce.ts'
import { assertDigest, HashingTap } from './manifest.ts'
import type { ProgressMeter } from './progress.ts'
import { RestoreError } from './restore-error.ts'

export type ArchiveFormat = NonNullable<ReturnType<typeof archiveFormat>>

/** The archive's expected sha256, and where that expectation came from (for the failure reason). */
export interface ExpectedDigest {
  sha256: string
  manifest: string
}

/** What the tar parser is handed at a time (see coalesce.ts). */
const UNPACK_CHUNK_BYTES = 1024 * 1024
/** zlib's output buffer (16 KiB by default): fewer, larger hand-offs from the thread pool. */
const GUNZIP_CHUNK_BYTES = 256 * 1024

/** Entry types a Chroma persist directory consists of; everything else is refused. */
const ALLOWED_ENTRY_TYPES = new Set(['File', 'OldFile', 'ContiguousFile', 'Directory'])

/**
 * A zstd decompressor: Node's own where it has one (22.15 and later); else the `zstd`
 * program when it is installed (the session image has it: about 3x faster than
 * JavaScript, and on the other core); else fzstd, a maintained pure-JavaScript
 * streaming decoder (no native build, no install script).
 */
export function zstdDecompressor(): Duplex {
  const native = (zlib as { createZstdDecompress?: () => Transform }).createZstdDecompress
  if (typeof native === 'function') return native()
  if (hasZstdProgram()) return zstdProgram()
  return fzstdDecompressor()
}

let zstdProgramFound: boolean | undefined
function hasZstdProgram(): boolean {
  zstdProgramFound ??= spawnSync('zstd', ['--version'], { stdio: 'ignore' }).status === 0
  return zstdProgramFound
}

/** `zstd -dc` as a stream stage; a non-zero exit (a corrupt frame) fails the stage with zstd's words. */
function zstdProgram(): Duplex {
  const child = spawn('zstd', ['-d', '-c', '-q'], { stdio: ['pipe', 'pipe', 'pipe'] })
  let stderr = ''
  child.stderr.on('data', (c: Buffer) => (stderr = (stderr + c.toString('utf8')).slice(-2000)))
  const duplex = Duplex.from({ writable: child.stdin, readable: child.stdout })
  child.on('exit', (code, signal) => {
    if (code !== 0) duplex.destroy(new Error(`zstd: ${stderr.trim().split('\n').at(-1) || (signal ?? `exit code ${code}`)}`))
  })
  child.stdin.on('error', () => {}) // EPIPE once zstd gave up; its exit says why
  duplex.on('close', () => child.kill())
  return duplex
}

export function fzstdDecompressor(): Transform {
  let push: ((chunk: Buffer) => void) | undefined
  const decoder = new ZstdDecompress((chunk) => push?.(Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength)))
  return new Transform({
    transform(chunk: Buffer, _encoding, done) {
      push = (out) => this.push(out)
      try {
        decoder.push(chunk)
        done()
      } catch (err) {
        done(new Error(`zstd: ${(err as Error).message}`))
      }
    },
    flush(done) {
      push = (out) => this.push(out)
      try {
        decoder.push(new Uint8Array(0), true)
        done()
      } catch (err) {
        done(new Error(`zstd: ${(err as Error).message}`))
      }
    },
  })
}

/**
 * Streams a tar archive (plain, gzip or zstd) into `dataDir`, which must exist,
 * counting the archive's bytes and, when a manifest gave one, checking its sha256
 * (the data directory is the caller's to delete when that fails: nothing is served).
 *
 * Only regular files and directories at relative paths without `..` are accepted;
 * the first other entry (absolute path, `..`, symlink, hard link, device) aborts the
 * extraction. Chroma never writes links, and refusing them outright closes every
 * route out of the data directory through them.
 */
export async function extractTar(
  source: Readable,
  dataDir: string,
  {
    snapshot,
    format,
    progress,
    signal,
    expected,
  }: { snapshot: string; format: ArchiveFormat; progress: ProgressMeter; signal: AbortSignal; expected?: ExpectedDigest },
): Promise<void> {
  let refused: string | null = null
  const unpack: Unpack = new Unpack({
    cwd: dataDir,
    strict: true,
    // Extracted files belong to the agent, not to whoever made the archive (node-tar
    // would otherwise chown to the archive's uids when the agent runs as root).
    preserveOwner: false,
    filter: (path, entry) => {
      const problem = refuseReason(path, entry as ReadEntry)
      if (problem && !refused) {
        refused = `snapshot ${snapshot} contains ${problem}; refusing to restore it`
        unpack.abort(new RestoreError(refused))
      }
      return problem === null
    },
  })
  // Hashing costs a pass over every byte: only when a manifest asks for it.
  const hash = expected ? new HashingTap() : null
  // Decompressed here rather than by node-tar (which would recognise gzip itself): zlib's
  // gunzip then runs on the thread pool beside the parsing, in large chunks: the restore
  // of bench/restore.ts's .tar.gz went from 1.28x to 0.74–0.80x of GNU tar -xz
  // (BENCHMARKS.md, Restore runs).
  const stages = [...(hash ? [hash] : []), ...decompressor(format), coalesce(UNPACK_CHUNK_BYTES), unpack]
  try {
    await pipeline([progress.watch(source), ...stages], { signal })
  } catch (err) {
    if (signal.aborted) throw err
    if (refused) throw new RestoreError(refused)
    // A system error (disk full, connection reset) says nothing about the archive.
    if ((err as NodeJS.ErrnoException).syscall) throw new RestoreError(`restoring snapshot ${snapshot} failed: ${(err as Error).message}`)
    throw new RestoreError(`snapshot ${snapshot} is not a valid ${format} archive: ${describeTarError(err as Error)}`)
  }
  if (expected && hash) assertDigest(snapshot, 'the archive', hash.hex(), expected.sha256, expected.manifest)
}

function decompressor(format: ArchiveFormat): Array<Duplex | Transform> {
  if (format === 'tar.gz') return [zlib.createGunzip({ chunkSize: GUNZIP_CHUNK_BYTES })]
  if (format === 'tar.zst') return [zstdDecompressor()]
  return []
}

function refuseReason(path: string, entry: ReadEntry): string | null {
  const shown = JSON.stringify(path)
  if (!ALLOWED_ENTRY_TYPES.has(entry.type)) return `a ${entry.type} entry ${shown} (only files and directories are allowed)`
  if (isAbsolute(path) || /^[A-Za-z]:/.test(path)) return `an entry with an absolute path ${shown}`
  if (path.split(/[\\/]/).includes('..')) return `an entry ${shown} that escapes the data directory`
  return null
}

/** node-tar's or zlib's message without node-tar's `TAR_CODE: ` prefix; the code only where it adds to the message. */
function describeTarError(err: Error & { code?: string }): string {
  const message = err.message.replace(/^TAR_[A-Z_]+: /, '')
  return err.code && err.code !== 'TAR_BAD_ARCHIVE' ? `${message} (${err.code})` : message
}
