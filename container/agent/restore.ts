import { createReadStream, createWriteStream } from 'node:fs'
import { lstat, mkdir, readdir, readFile, realpath, stat } from 'node:fs/promises'
import { basename, isAbsolute, join, relative } from 'node:path'
import { pipeline } from 'node:stream/promises'
import { ARCHIVE_MANIFEST_SUFFIX, archiveFormat, parseSnapshotUri, SnapshotUriError } from '../../src/services/snapshots/uri.ts'
import { extractTar, type ExpectedDigest } from './archive.ts'
import { archiveDigest } from './manifest.ts'
import { ProgressMeter, type ProgressListener } from './progress.ts'
import { RestoreError } from './restore-error.ts'
import { resolveLatest, restoreS3Archive, restoreS3Prefix, type S3Settings } from './s3.ts'

export { RestoreError }

export interface RestoreOptions {
  /** When set, `file://` snapshots must resolve (symlinks followed) to a path under it. */
  snapshotRoot?: string
  s3: S3Settings
  signal: AbortSignal
  onProgress: ProgressListener
}

/**
 * Restores the snapshot at `uri` into `dataDir` (existing and empty), checking it
 * against its sha256 manifest when it has one. Returns the URI actually restored (a
 * series' `latest` resolves to its version). Throws RestoreError with the reason the
 * session fails with, or the signal's abort error.
 */
export async function restoreSnapshot(uri: string, dataDir: string, options: RestoreOptions): Promise<string> {
  const location = parseLocation(uri)
  let restored = uri
  if (location.scheme === 'file') {
    await restoreFile(uri, location.path, dataDir, options)
  } else {
    const format = archiveFormat(location.key)
    if (format) {
      await restoreS3Archive(location, format, dataDir, { snapshot: uri, ...options })
    } else {
      const latest = await resolveLatest(location, { snapshot: uri, ...options })
      if (latest) {
        restored = latest
        const version = parseLocation(latest)
        if (version.scheme !== 's3' || !archiveFormat(version.key)) throw new RestoreError(`the latest pointer of ${uri} names ${latest}, which is not an s3:// archive`)
        await restoreS3Archive(version, archiveFormat(version.key)!, dataDir, { snapshot: latest, ...options })
      } else {
        await restoreS3Prefix(location, dataDir, { snapshot: uri, ...options })
      }
    }
  }
  await assertChromaPersistDir(restored, dataDir)
  return restored
}

function parseLocation(uri: string) {
  try {
    return parseSnapshotUri(uri)
  } catch (err) {
    if (err instanceof SnapshotUriError) throw new RestoreError(err.message)
    throw err
  }
}

async function restoreFile(uri: string, path: string, dataDir: string, options: RestoreOptions): Promise<void> {
  const real = await realpath(path).catch((err: NodeJS.ErrnoException) => {
    throw new RestoreError(`snapshot ${uri} cannot be read: ${err.code === 'ENOENT' ? 'no such file or directory' : err.message}`)
  })
  if (options.snapshotRoot !== undefined) await assertUnderRoot(uri, real, options.snapshotRoot)
  const info = await stat(real)
  if (info.isDirectory()) return copyDirectory(uri, real, dataDir, options)
  // The format is the name's, as the user wrote it: the target of a symlink may be named anything.
  const format = archiveFormat(path)
  if (!info.isFile() || !format) {
    throw new RestoreError(`snapshot ${uri} is neither a directory nor a .tar, .tar.gz/.tgz or .tar.zst archive`)
  }
  const progress = new ProgressMeter(info.size, options.onProgress)
  const expected = await fileManifest(`${real}${ARCHIVE_MANIFEST_SUFFIX}`)
  await extractTar(createReadStream(real), dataDir, { snapshot: uri, format, progress, signal: options.signal, expected })
}

/** The digest an archive's sidecar manifest (`<archive>.sha256`) gives it, if it has one. */
async function fileManifest(path: string): Promise<ExpectedDigest | undefined> {
  const text = await readFile(path, 'utf8').catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT') return null
    throw new RestoreError(`manifest ${path} cannot be read: ${err.message}`)
  })
  return text === null ? undefined : archiveDigest(text, path, basename(path.slice(0, -ARCHIVE_MANIFEST_SUFFIX.length)))
}

async function assertUnderRoot(uri: string, real: string, snapshotRoot: string): Promise<void> {
  const root = await realpath(snapshotRoot).catch(() => {
    throw new RestoreError(`SNAPSHOT_ROOT ${snapshotRoot} does not exist`)
  })
  const rel = relative(root, real)
  if (rel === '..' || rel.startsWith('../') || isAbsolute(rel)) {
    throw new RestoreError(`snapshot ${uri} is outside SNAPSHOT_ROOT ${snapshotRoot}`)
  }
}

/**
 * Copies a persist directory that is stored as a directory. Like archives, it may
 * hold only files and directories: a symlink could point anywhere.
 */
async function copyDirectory(uri: string, source: string, dataDir: string, options: RestoreOptions): Promise<void> {
  const entries = await listTree(uri, source)
  const totalBytes = entries.reduce((sum, e) => sum + e.size, 0)
  const progress = new ProgressMeter(totalBytes, options.onProgress)
  for (const entry of entries) {
    const target = join(dataDir, entry.relPath)
    if (entry.isDirectory) {
      await mkdir(target, { recursive: true })
    } else {
      await pipeline(createReadStream(join(source, entry.relPath)), progress.tap(), createWriteStream(target), {
        signal: options.signal,
      })
    }
  }
}

interface TreeEntry {
  relPath: string
  isDirectory: boolean
  size: number
}

/** Every entry under `root`, parents before children. */
async function listTree(uri: string, root: string, relDir = ''): Promise<TreeEntry[]> {
  const entries: TreeEntry[] = []
  for (const name of await readdir(join(root, relDir))) {
    const relPath = join(relDir, name)
    const info = await lstat(join(root, relPath))
    if (info.isDirectory()) {
      entries.push({ relPath, isDirectory: true, size: 0 }, ...(await listTree(uri, root, relPath)))
    } else if (info.isFile()) {
      entries.push({ relPath, isDirectory: false, size: info.size })
    } else {
      throw new RestoreError(`snapshot ${uri} contains ${JSON.stringify(relPath)}, which is neither a file nor a directory; refusing to restore it`)
    }
  }
  return entries
}

/** Without it, Chroma would happily start on an empty database and serve nothing. */
async function assertChromaPersistDir(uri: string, dataDir: string): Promise<void> {
  const sqlite = await stat(join(dataDir, 'chroma.sqlite3')).catch(() => null)
  if (!sqlite?.isFile()) {
    throw new RestoreError(
      `snapshot ${uri} has no chroma.sqlite3 at its root, so it is not a Chroma persist directory ` +
        '(an archive must hold the directory\'s contents, e.g. made with tar -C DIR -cf snapshot.tar .)',
    )
  }
}
