import { randomBytes } from 'node:crypto'
import { pipeline } from 'node:stream'
import { PutObjectCommand } from '@aws-sdk/client-s3'
import { Upload } from '@aws-sdk/lib-storage'
import * as tar from 'tar'
import {
  ARCHIVE_MANIFEST_SUFFIX,
  LATEST_NAME,
  parseSnapshotUri,
  snapshotSeries,
  VERSIONS_DIR,
  type LatestPointer,
} from '../../src/services/snapshots/uri.ts'
import { formatSha256Sums, HashingTap } from './manifest.ts'
import type { ProgressListener } from './progress.ts'
import { s3Client, type S3Settings } from './s3.ts'

export class SaveError extends Error {
  override name = 'SaveError'
}

export interface SaveResult {
  /** s3:// URI of the new version's archive: acquire it to get exactly this data. */
  snapshot: string
  version: string
  /** s3:// URI of the series: acquiring it restores whatever `latest` names. */
  series: string
  sha256: string
  bytes: number
  savedAt: string
}

/**
 * Packs a persist directory (Chroma must be stopped: sqlite, its WAL and the HNSW
 * files are only consistent at rest) and uploads it as a new version of the snapshot's
 * series, in this order: the archive (streamed, multipart, hashed on the way), its
 * sha256 manifest, then the `latest` pointer. A save cut short at any point leaves
 * `latest` on the previous version and every earlier version untouched; an aborted
 * multipart upload leaves no object behind.
 */
export async function saveSnapshot(
  sourceUri: string,
  dataDir: string,
  options: { s3: S3Settings; signal: AbortSignal; onProgress: ProgressListener; now?: Date; sessionId?: string },
): Promise<SaveResult> {
  const location = parseSnapshotUri(sourceUri)
  if (location.scheme !== 's3') throw new SaveError(`save-back needs an s3:// snapshot; ${sourceUri} is not one`)
  const { bucket, prefix } = snapshotSeries(location)
  const savedAt = options.now ?? new Date()
  // Sortable by time, unique without coordination.
  const version = `${savedAt.toISOString().replace(/[-:]/g, '').replace(/\.\d+Z$/, 'Z')}-${randomBytes(4).toString('hex')}`
  const key = `${prefix}/${VERSIONS_DIR}/${version}.tar.gz`
  const client = s3Client(options.s3)
  try {
    const hash = new HashingTap((bytes) => options.onProgress(bytes, undefined))
    const archive = tar.c({ cwd: dataDir, gzip: true, portable: true }, ['.'])
    // A packing error destroys `hash`, which fails the upload reading from it.
    pipeline(archive, hash, () => {})
    const upload = new Upload({ client, params: { Bucket: bucket, Key: key, Body: hash, ContentType: 'application/gzip' }, leavePartsOnError: false })
    const abort = () => void upload.abort()
    options.signal.addEventListener('abort', abort, { once: true })
    try {
      await upload.done()
    } finally {
      options.signal.removeEventListener('abort', abort)
    }
    options.signal.throwIfAborted()
    const sha256 = hash.hex()
    const snapshot = `s3://${bucket}/${key}`
    const put = (Key: string, Body: string, ContentType: string) =>
      client.send(new PutObjectCommand({ Bucket: bucket, Key, Body, ContentType }), { abortSignal: options.signal })
    await put(`${key}${ARCHIVE_MANIFEST_SUFFIX}`, formatSha256Sums([[`${version}.tar.gz`, sha256]]), 'text/plain')
    const pointer: LatestPointer = { version, snapshot, sha256, bytes: hash.bytes, savedAt: savedAt.toISOString(), savedFrom: sourceUri, ...(options.sessionId ? { savedBy: options.sessionId } : {}) }
    options.signal.throwIfAborted()
    await put(`${prefix}/${LATEST_NAME}`, JSON.stringify(pointer, null, 2) + '\n', 'application/json')
    return { snapshot, version, series: `s3://${bucket}/${prefix}`, sha256, bytes: hash.bytes, savedAt: pointer.savedAt }
  } catch (err) {
    if (options.signal.aborted) throw new SaveError(`save to s3://${bucket}/${key} was cut short: ${describeAbort(options.signal)}; latest is unchanged`)
    if (err instanceof SaveError) throw err
    throw new SaveError(`save to s3://${bucket}/${key} failed: ${(err as Error).message}; latest is unchanged`)
  } finally {
    client.destroy()
  }
}

function describeAbort(signal: AbortSignal): string {
  const reason = signal.reason as unknown
  return reason instanceof Error ? reason.message : String(reason)
}
