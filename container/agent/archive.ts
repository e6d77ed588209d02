import { isAbsolute } from 'node:path'
import type { Readable } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import zlib from 'node:zlib'
import { Unpack, type ReadEntry } from 'tar'
import type { archiveFormat } from '../../src/services/snapshots/uri.ts'
import type { ProgressMeter } from './progress.ts'
import { RestoreError } from './restore-error.ts'

type ArchiveFormat = NonNullable<ReturnType<typeof archiveFormat>>

/** Entry types a Chroma persist directory consists of; everything else is refused. */
const ALLOWED_ENTRY_TYPES = new Set(['File', 'OldFile', 'ContiguousFile', 'Directory'])

/**
 * Fails early, before any byte is read, for formats this runtime cannot decompress.
 * node-tar detects zstd by its magic bytes, but needs zlib's zstd (Node >= 22.15).
 */
export function assertArchiveSupported(snapshot: string, format: ArchiveFormat): void {
  if (format === 'tar.zst' && typeof (zlib as { createZstdDecompress?: unknown }).createZstdDecompress !== 'function') {
    throw new RestoreError(
      `snapshot ${snapshot} is zstd-compressed, which this agent cannot read: Node ${process.version} has no zstd ` +
        'in zlib (Node 22.15 and later have); store the snapshot as .tar or .tar.gz',
    )
  }
}

/**
 * Streams a tar archive (plain, gzip or zstd: node-tar recognises the compression by
 * its magic bytes) into `dataDir`, which must exist, counting the archive's bytes.
 *
 * Only regular files and directories at relative paths without `..` are accepted;
 * the first other entry (absolute path, `..`, symlink, hard link, device) aborts the
 * extraction. Chroma never writes links, and refusing them outright closes every
 * route out of the data directory through them.
 */
export async function extractTar(
  source: Readable,
  dataDir: string,
  { snapshot, progress, signal }: { snapshot: string; progress: ProgressMeter; signal: AbortSignal },
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
  try {
    await pipeline(source, progress.tap(), unpack, { signal })
  } catch (err) {
    if (signal.aborted) throw err
    if (refused) throw new RestoreError(refused)
    // A system error (disk full, connection reset) says nothing about the archive.
    if ((err as NodeJS.ErrnoException).syscall) throw new RestoreError(`restoring snapshot ${snapshot} failed: ${(err as Error).message}`)
    throw new RestoreError(`snapshot ${snapshot} is not a valid tar archive: ${describeTarError(err as Error)}`)
  }
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
