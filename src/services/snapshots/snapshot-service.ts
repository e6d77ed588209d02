import { realpath, stat } from 'node:fs/promises'
import { isAbsolute, relative, resolve, sep } from 'node:path'
import { pathToFileURL } from 'node:url'
import type { S3Client } from '@aws-sdk/client-s3'
import { ProblemError, unprocessable } from '../errors.ts'
import { archiveFormat, LATEST_NAME, parseSnapshotUri, snapshotSeries, SnapshotUriError, type LatestPointer } from './uri.ts'

/** What the snapshot service needs of S3: a real S3Client, or createS3's, which loads the SDK on first use. */
export type S3Sender = Pick<S3Client, 'send'>

/**
 * The S3 SDK's commands, loaded with the first s3:// snapshot: a control plane that serves
 * only file:// snapshots never loads the SDK (about 10 MB of its idle RSS; BENCHMARKS.md).
 */
const s3Commands = () => import('@aws-sdk/client-s3')

/**
 * Decides on acquire whether a snapshot can be served, so that a typo is a 422 at
 * once rather than a session that fails a minute later, in two steps:
 * - canonical(): every acquire. Syntax, scheme and the file:// root, with no remote
 *   call; the canonical URI (symlinks resolved) is what pool keys are built from.
 * - forLaunch(): only when a new session is created. Resolves a versioned name to one
 *   version, checks that it exists, and returns the URI the session is launched with
 *   and keeps for its whole life.
 */
export class SnapshotService {
  constructor(
    private readonly opts: { snapshotRoot: string; s3?: S3Sender },
  ) {}

  async canonical(uri: string): Promise<string> {
    const loc = parse(uri)
    return loc.scheme === 'file' ? this.resolveFile(loc.path) : `s3://${loc.bucket}/${loc.key}`
  }

  /**
   * Takes a canonical URI; file:// snapshots were checked by canonical() already. An
   * s3:// snapshot with versions resolves here to one concrete version, which the
   * session keeps for its whole life while newer ones are published (shared sessions
   * pool on the name as given, so acquires of `.../latest/` reuse the running session).
   */
  async forLaunch(canonicalUri: string): Promise<string> {
    const loc = parse(canonicalUri)
    if (loc.scheme !== 's3') return canonicalUri
    const version = await this.resolveVersion(loc.bucket, loc.key)
    await this.assertS3Snapshot(version.bucket, version.key)
    return `s3://${version.bucket}/${version.key}`
  }

  /**
   * The version a snapshot name stands for; an archive, or a prefix with no versions, is itself.
   * - `receipts/manifest.json` (any key ending in .json): the version its `snapshot`
   *   (or `latest`) names, relative to the manifest's folder or as a full s3:// URI.
   * - a series written by save-back (`receipts/v1`, with a `receipts/v1/latest` pointer,
   *   or `receipts/v1/latest` itself): the version the pointer names.
   * - `receipts/latest/` with no pointer object: the greatest name directly under
   *   `receipts/`, an archive or a persist directory. Name versions so that they sort
   *   (dates, zero-padded numbers).
   */
  private async resolveVersion(bucket: string, key: string): Promise<{ bucket: string; key: string }> {
    const s3 = this.opts.s3
    if (!s3 || archiveFormat(key)) return { bucket, key }
    if (key.endsWith('.json')) {
      const text = await this.objectText(s3, bucket, key)
      if (text === null) throw unprocessable('snapshot_not_found', `no snapshot manifest at s3://${bucket}/${key}`)
      return followPointer(bucket, key, text)
    }
    const latest = /^(.*\/)?latest\/?$/.exec(key)
    const pointerKey = latest ? key.replace(/\/+$/, '') : `${key.replace(/\/+$/, '')}/${LATEST_NAME}`
    const pointer = await this.objectText(s3, bucket, pointerKey)
    if (pointer !== null) return followPointer(bucket, pointerKey, pointer)
    if (latest) return { bucket, key: await this.newestVersion(s3, bucket, latest[1] ?? '') }
    return { bucket, key }
  }

  /** The `latest` pointer of the series an s3:// snapshot belongs to, or null when it has none (or it cannot be read as one). */
  async latestPointer(snapshotUri: string): Promise<LatestPointer | null> {
    const s3 = this.opts.s3
    const loc = parse(snapshotUri)
    if (!s3 || loc.scheme !== 's3') return null
    const series = snapshotSeries(loc)
    const text = await this.objectText(s3, series.bucket, `${series.prefix}/${LATEST_NAME}`)
    try {
      const pointer = text === null ? null : (JSON.parse(text) as LatestPointer)
      return pointer && typeof pointer.snapshot === 'string' && typeof pointer.version === 'string' ? pointer : null
    } catch {
      return null
    }
  }

  /** An object's text, or null when there is no such object. */
  private async objectText(s3: S3Sender, bucket: string, key: string): Promise<string | null> {
    const { GetObjectCommand } = await s3Commands()
    try {
      const object = await s3.send(new GetObjectCommand({ Bucket: bucket, Key: key }))
      return (await object.Body?.transformToString('utf8')) ?? ''
    } catch (err) {
      const name = (err as { name?: string }).name
      if (name === 'NotFound' || name === 'NoSuchKey') return null
      throw storeError(err, `s3://${bucket}/${key}`)
    }
  }

  private async newestVersion(s3: S3Sender, bucket: string, prefix: string): Promise<string> {
    const { ListObjectsV2Command } = await s3Commands()
    let newest: string | null = null
    let token: string | undefined
    try {
      do {
        const page = await s3.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: prefix, Delimiter: '/', ContinuationToken: token }))
        const names = [
          ...(page.CommonPrefixes ?? []).map((p) => p.Prefix!).filter((p) => p !== `${prefix}${LATEST_NAME}/`),
          ...(page.Contents ?? []).map((o) => o.Key!).filter((k) => archiveFormat(k) !== null),
        ]
        for (const name of names) if (newest === null || name > newest) newest = name
        token = page.IsTruncated ? page.NextContinuationToken : undefined
      } while (token)
    } catch (err) {
      throw storeError(err, `s3://${bucket}/${prefix}`)
    }
    if (newest === null) {
      throw unprocessable('snapshot_not_found', `no snapshot versions under s3://${bucket}/${prefix} (archives or folders, named so that they sort)`)
    }
    return newest
  }

  private async resolveFile(path: string): Promise<string> {
    if (!isAbsolute(path)) throw unprocessable('invalid_snapshot', 'file:// snapshot path must be absolute')
    const root = await realpath(this.opts.snapshotRoot).catch(() => null)
    if (root === null) {
      throw unprocessable('snapshot_not_found', 'file:// snapshots are disabled: SNAPSHOT_ROOT does not exist on this server')
    }
    const setting = `SNAPSHOT_ROOT (${this.opts.snapshotRoot})`
    // Outside the root as written: a fact of the path alone, so saying it reveals nothing about the filesystem.
    if (!isInside(resolve(this.opts.snapshotRoot), resolve(path)) && !isInside(root, resolve(path))) {
      throw unprocessable('snapshot_not_found', `${path} lies outside ${setting}: file:// snapshots must be under it; move the snapshot there or set SNAPSHOT_ROOT`)
    }
    const real = await realpath(path).catch(() => null)
    // Symlinks are resolved before the containment check, so none can lead outside the root.
    if (real === null || !isInside(root, real)) {
      // One answer for "missing" and "a symlink out of the root": probing the filesystem learns nothing.
      throw unprocessable('snapshot_not_found', `no snapshot at ${path} under ${setting}`)
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
    const { HeadObjectCommand } = await s3Commands()
    try {
      // An archive is one object; an unpacked persist directory always has chroma.sqlite3
      // at its root (the agent requires it), so one HEAD answers either way.
      const probe = archiveFormat(key) ? key : `${key.endsWith('/') ? key : `${key}/`}chroma.sqlite3`
      await s3.send(new HeadObjectCommand({ Bucket: bucket, Key: probe }))
    } catch (err) {
      throw storeError(err, uri)
    }
  }
}

/**
 * The version a pointer names: a manifest or a save-back series' `latest` (JSON with
 * `snapshot`, or `latest`), relative to the pointer's folder or as a full s3:// URI.
 */
function followPointer(bucket: string, pointerKey: string, text: string): { bucket: string; key: string } {
  const uri = `s3://${bucket}/${pointerKey}`
  let named: unknown
  try {
    const pointer = JSON.parse(text) as Partial<LatestPointer> & { latest?: unknown }
    named = pointer.snapshot ?? pointer.latest
  } catch {
    throw unprocessable('invalid_snapshot', `${uri} is not JSON: expected {"snapshot": "<version key or s3:// URI>"}`)
  }
  if (typeof named !== 'string' || named === '') {
    throw unprocessable('invalid_snapshot', `${uri} names no snapshot: expected {"snapshot": "<version key or s3:// URI>"}`)
  }
  const folder = pointerKey.includes('/') ? pointerKey.slice(0, pointerKey.lastIndexOf('/') + 1) : ''
  const target = parse(named.startsWith('s3://') ? named : `s3://${bucket}/${folder}${named.replace(/^\.\//, '')}`)
  if (target.scheme !== 's3') throw unprocessable('invalid_snapshot', `${uri} names ${named}, not an s3:// snapshot`)
  return { bucket: target.bucket, key: target.key }
}

/** An S3 error as the caller should see it: a 422 for a snapshot that is not there or not readable, a 502 otherwise. */
function storeError(err: unknown, uri: string): ProblemError {
  if (err instanceof ProblemError) return err
  const name = (err as { name?: string }).name
  if (name === 'NotFound' || name === 'NoSuchKey' || name === 'NoSuchBucket') {
    return unprocessable('snapshot_not_found', `no snapshot at ${uri}`)
  }
  if (name === 'Forbidden' || name === 'AccessDenied') {
    return unprocessable('snapshot_forbidden', `the control plane may not read ${uri}`)
  }
  return new ProblemError(502, 'snapshot_store_unavailable', 'Bad Gateway', `could not check ${uri}: ${(err as Error).message}`)
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
