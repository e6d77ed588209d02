import { realpath, stat } from 'node:fs/promises'
import { isAbsolute, relative, sep } from 'node:path'
import { pathToFileURL } from 'node:url'
import { GetObjectCommand, HeadObjectCommand, type S3Client } from '@aws-sdk/client-s3'
import { ProblemError, unprocessable } from '../errors.ts'
import { archiveFormat, LATEST_NAME, parseSnapshotUri, SnapshotUriError, type LatestPointer } from './uri.ts'

/**
 * Decides on acquire whether a snapshot can be served, so that a typo is a 422 at
 * once rather than a session that fails a minute later, in two steps:
 * - canonical(): every acquire. Syntax, scheme and the file:// root, with no remote
 *   call; the canonical URI (symlinks resolved) is what pool keys are built from.
 * - forLaunch(): only when a new session is created. Checks that the snapshot exists
 *   and returns the URI the session is launched with and keeps for its whole life.
 */
export class SnapshotService {
  constructor(
    private readonly opts: { snapshotRoot: string; s3?: S3Client },
  ) {}

  async canonical(uri: string): Promise<string> {
    const loc = parse(uri)
    return loc.scheme === 'file' ? this.resolveFile(loc.path) : `s3://${loc.bucket}/${loc.key}`
  }

  /**
   * Takes a canonical URI; file:// snapshots were checked by canonical() already. A
   * saved series (an s3:// prefix with a `latest` pointer) launches pinned to the
   * version `latest` names now, so the session says exactly what it serves.
   */
  async forLaunch(canonicalUri: string): Promise<string> {
    const loc = parse(canonicalUri)
    if (loc.scheme !== 's3') return canonicalUri
    if (!archiveFormat(loc.key)) {
      const pinned = await this.latestOf(loc.bucket, loc.key)
      if (pinned) return pinned
    }
    await this.assertS3Snapshot(loc.bucket, loc.key)
    return canonicalUri
  }

  /** The version a series' `latest` names, or null when the prefix is no series. */
  private async latestOf(bucket: string, key: string): Promise<string | null> {
    const s3 = this.opts.s3
    if (!s3) return null
    const latestKey = `${key.replace(/\/+$/, '')}/${LATEST_NAME}`
    let text: string
    try {
      const object = await s3.send(new GetObjectCommand({ Bucket: bucket, Key: latestKey }))
      text = (await object.Body?.transformToString('utf8')) ?? ''
    } catch (err) {
      const name = (err as { name?: string }).name
      if (name === 'NotFound' || name === 'NoSuchKey') return null
      throw new ProblemError(502, 'snapshot_store_unavailable', 'Bad Gateway', `could not read s3://${bucket}/${latestKey}: ${(err as Error).message}`)
    }
    let pointer: Partial<LatestPointer>
    try {
      pointer = JSON.parse(text) as Partial<LatestPointer>
    } catch {
      pointer = {}
    }
    if (typeof pointer.snapshot !== 'string' || !pointer.snapshot.startsWith(`s3://${bucket}/`)) {
      throw unprocessable('invalid_snapshot', `s3://${bucket}/${latestKey} is not a latest pointer naming a version in the same bucket`)
    }
    return pointer.snapshot
  }

  private async resolveFile(path: string): Promise<string> {
    if (!isAbsolute(path)) throw unprocessable('invalid_snapshot', 'file:// snapshot path must be absolute')
    const root = await realpath(this.opts.snapshotRoot).catch(() => null)
    if (root === null) {
      throw unprocessable('snapshot_not_found', 'file:// snapshots are disabled: SNAPSHOT_ROOT does not exist on this server')
    }
    const real = await realpath(path).catch(() => null)
    // Symlinks are resolved before the containment check, so none can lead outside the root.
    if (real === null || !isInside(root, real)) {
      // One answer for "missing" and "outside the root": probing the filesystem learns nothing.
      throw unprocessable('snapshot_not_found', `no snapshot at ${path} under the snapshot root`)
    }
    const info = await stat(real)
    if (!info.isDirectory() && !(info.isFile() && archiveFormat(real))) {
      throw unprocessable('invalid_snapshot', 'a file:// snapshot must be a directory or a .tar, .tar.gz/.tgz or .tar.zst archive')
    }
    return pathToFileURL(real).href
  }

  private async assertS3Snapshot(bucket: string, key: string): Promise<void> {
    const s3 = this.opts.s3
    const uri = `s3://${bucket}/${key}`
    if (!s3) return
    try {
      // An archive is one object; an unpacked persist directory always has chroma.sqlite3
      // at its root (the agent requires it), so one HEAD answers either way.
      const probe = archiveFormat(key) ? key : `${key.endsWith('/') ? key : `${key}/`}chroma.sqlite3`
      await s3.send(new HeadObjectCommand({ Bucket: bucket, Key: probe }))
    } catch (err) {
      if (err instanceof ProblemError) throw err
      const name = (err as { name?: string }).name
      if (name === 'NotFound' || name === 'NoSuchKey' || name === 'NoSuchBucket') {
        throw unprocessable('snapshot_not_found', `no snapshot at ${uri}`)
      }
      if (name === 'Forbidden' || name === 'AccessDenied') {
        throw unprocessable('snapshot_forbidden', `the control plane may not read ${uri}`)
      }
      throw new ProblemError(502, 'snapshot_store_unavailable', 'Bad Gateway', `could not check ${uri}: ${(err as Error).message}`)
    }
  }
}

function parse(uri: string) {
  try {
    return parseSnapshotUri(uri)
  } catch (err) {
    if (err instanceof SnapshotUriError) throw unprocessable('invalid_snapshot', err.message)
    throw err
  }
}

function isInside(root: string, path: string): boolean {
  const rel = relative(root, path)
  return rel === '' || (!rel.startsWith('..' + sep) && rel !== '..' && !isAbsolute(rel))
}
