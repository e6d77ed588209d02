/**
 * Snapshot URIs, parsed once and shared by the control plane (validation on acquire)
 * and the session agent (restore). Parsing is syntax only; whether the snapshot
 * exists and is allowed is SnapshotService's job.
 */
export type SnapshotLocation =
  | { scheme: 'file'; path: string }
  | { scheme: 's3'; bucket: string; key: string }

export class SnapshotUriError extends Error {}

const S3_BUCKET = /^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/

export function parseSnapshotUri(uri: string): SnapshotLocation {
  let url: URL
  try {
    url = new URL(uri)
  } catch {
    throw new SnapshotUriError(`snapshot must be a URI (file:///abs/path or s3://bucket/key), got ${JSON.stringify(uri)}`)
  }
  if (url.protocol === 'file:') {
    if (url.host !== '') throw new SnapshotUriError('file:// snapshots must not name a host (use file:///abs/path)')
    if (url.search || url.hash) throw new SnapshotUriError('file:// snapshots take no query or fragment')
    let path: string
    try {
      path = decodeURIComponent(url.pathname)
    } catch {
      throw new SnapshotUriError('file:// snapshot path is not valid percent-encoding')
    }
    if (path.includes('\0')) throw new SnapshotUriError('file:// snapshot path contains a NUL byte')
    return { scheme: 'file', path }
  }
  if (url.protocol === 's3:') {
    const bucket = url.hostname
    if (!S3_BUCKET.test(bucket)) throw new SnapshotUriError(`invalid S3 bucket name ${JSON.stringify(bucket)}`)
    if (url.search || url.hash) throw new SnapshotUriError('s3:// snapshots take no query or fragment')
    const key = decodeURIComponent(url.pathname.replace(/^\//, ''))
    if (key === '') throw new SnapshotUriError('s3:// snapshot needs a key or prefix after the bucket')
    if (key.split('/').some((part) => part === '..' || part === '.')) {
      throw new SnapshotUriError('s3:// snapshot key must not contain . or .. segments')
    }
    return { scheme: 's3', bucket, key }
  }
  throw new SnapshotUriError(`unsupported snapshot scheme ${JSON.stringify(url.protocol)}: use file:// or s3://`)
}

/** Archive formats the agent restores; anything else at a file path must be a directory. */
export function archiveFormat(name: string): 'tar' | 'tar.gz' | 'tar.zst' | null {
  if (name.endsWith('.tar')) return 'tar'
  if (name.endsWith('.tar.gz') || name.endsWith('.tgz')) return 'tar.gz'
  if (name.endsWith('.tar.zst') || name.endsWith('.tzst')) return 'tar.zst'
  return null
}

/**
 * Saved versions of a snapshot live under its series prefix S:
 *   S/versions/<version>.tar.gz          the persist directory, packed
 *   S/versions/<version>.tar.gz.sha256   its manifest (sha256sum format)
 *   S/latest                             JSON naming the newest complete version
 * S is the prefix a version already lives under, or else the snapshot's key without
 * its archive extension (s3://b/receipts/v1.tar.gz → receipts/v1, s3://b/receipts → receipts).
 * `latest` is written last, so it only ever names a complete, verified upload.
 */
export const VERSIONS_DIR = 'versions'
export const LATEST_NAME = 'latest'
/** The manifest of a prefix snapshot: `<sha256>  <relative path>` per file, as sha256sum writes it. */
export const PREFIX_MANIFEST_NAME = 'SHA256SUMS'
/** The manifest of an archive sits beside it with this suffix. */
export const ARCHIVE_MANIFEST_SUFFIX = '.sha256'

export function snapshotSeries(location: { bucket: string; key: string }): { bucket: string; prefix: string } {
  const key = location.key.replace(/\/+$/, '')
  const version = new RegExp(`^(.+)/${VERSIONS_DIR}/[^/]+$`).exec(key)
  if (version) return { bucket: location.bucket, prefix: version[1]! }
  return { bucket: location.bucket, prefix: key.replace(/(\.tar\.gz|\.tgz|\.tar\.zst|\.tzst|\.tar)$/, '') }
}

/** The `latest` pointer object of a series, as the agent writes it. */
export interface LatestPointer {
  version: string
  /** s3:// URI of the version's archive. */
  snapshot: string
  sha256: string
  bytes: number
  savedAt: string
  /** The snapshot the saved session had restored. */
  savedFrom: string
  /** The session whose agent saved it, so a save on SIGTERM can be found after its task is gone. */
  savedBy?: string
}
