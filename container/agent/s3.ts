import { createWriteStream } from 'node:fs'
import { mkdir } from 'node:fs/promises'
import { dirname, join } from 'node:path'
import { Readable } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import { GetObjectCommand, paginateListObjectsV2, S3Client, S3ServiceException } from '@aws-sdk/client-s3'
import { ARCHIVE_MANIFEST_SUFFIX, LATEST_NAME, PREFIX_MANIFEST_NAME, VERSIONS_DIR, type LatestPointer } from '../../src/services/snapshots/uri.ts'
import { extractTar, type ArchiveFormat } from './archive.ts'
import { archiveDigest, assertDigest, HashingTap, parseSha256Sums } from './manifest.ts'
import { ProgressMeter, type ProgressListener } from './progress.ts'
import { RestoreError } from './restore-error.ts'

export interface S3Settings {
  /** An S3-compatible endpoint (MinIO, s3rver); path-style addressing is used with it. */
  endpoint?: string
  region: string
}

interface S3RestoreOptions {
  snapshot: string
  s3: S3Settings
  signal: AbortSignal
  onProgress: ProgressListener
}

/** Objects of a prefix snapshot downloaded at the same time. */
const PARALLEL_DOWNLOADS = 4

export function s3Client(settings: S3Settings): S3Client {
  // Credentials come from the SDK's default chain: AWS_* variables locally, the task
  // role on Fargate.
  return new S3Client({
    region: settings.region,
    ...(settings.endpoint ? { endpoint: settings.endpoint, forcePathStyle: true } : {}),
    // Uploads stream plain bodies; the default aws-chunked framing with trailing
    // checksums is not understood by every S3-compatible store. The manifest carries
    // the sha256 that matters.
    requestChecksumCalculation: 'WHEN_REQUIRED',
  })
}

/**
 * Streams an archive object straight into tar extraction; nothing is buffered whole.
 * Its sidecar manifest (`<key>.sha256`), when there is one, is checked on the way.
 */
export async function restoreS3Archive(
  location: { bucket: string; key: string },
  format: ArchiveFormat,
  dataDir: string,
  options: S3RestoreOptions,
): Promise<void> {
  const client = s3Client(options.s3)
  try {
    const manifestKey = `${location.key}${ARCHIVE_MANIFEST_SUFFIX}`
    const manifestText = await getText(client, location.bucket, manifestKey, options)
    const manifest = `s3://${location.bucket}/${manifestKey}`
    const expected = manifestText === null ? undefined : archiveDigest(manifestText, manifest, location.key.slice(location.key.lastIndexOf('/') + 1))
    const object = await send(options, () =>
      client.send(new GetObjectCommand({ Bucket: location.bucket, Key: location.key }), { abortSignal: options.signal }),
    )
    const progress = new ProgressMeter(object.ContentLength, options.onProgress)
    await extractTar(bodyStream(object.Body), dataDir, { snapshot: options.snapshot, format, progress, signal: options.signal, expected })
  } finally {
    client.destroy()
  }
}

/** The version a series' `latest` pointer names, or null when `key` is no series (no `latest` under it). */
export async function resolveLatest(location: { bucket: string; key: string }, options: S3RestoreOptions): Promise<string | null> {
  const client = s3Client(options.s3)
  try {
    const key = `${location.key.replace(/\/+$/, '')}/${LATEST_NAME}`
    const text = await getText(client, location.bucket, key, options)
    if (text === null) return null
    let pointer: Partial<LatestPointer>
    try {
      pointer = JSON.parse(text) as Partial<LatestPointer>
    } catch {
      throw new RestoreError(`s3://${location.bucket}/${key} is not the JSON pointer the agent writes`)
    }
    if (typeof pointer.snapshot !== 'string') throw new RestoreError(`s3://${location.bucket}/${key} names no snapshot`)
    return pointer.snapshot
  } finally {
    client.destroy()
  }
}

/** A small object's text, or null when it does not exist. */
async function getText(client: S3Client, bucket: string, key: string, options: S3RestoreOptions): Promise<string | null> {
  try {
    const object = await client.send(new GetObjectCommand({ Bucket: bucket, Key: key }), { abortSignal: options.signal })
    return (await object.Body?.transformToString('utf8')) ?? ''
  } catch (err) {
    if (err instanceof S3ServiceException && (err.name === 'NoSuchKey' || err.$metadata.httpStatusCode === 404)) return null
    return send(options, () => Promise.reject(err))
  }
}

/**
 * Downloads every object under `key/` to the same relative path in `dataDir`, a few
 * at a time. Keys that would land outside `dataDir` fail the restore.
 */
export async function restoreS3Prefix(
  location: { bucket: string; key: string },
  dataDir: string,
  options: S3RestoreOptions,
): Promise<void> {
  const prefix = location.key.endsWith('/') ? location.key : `${location.key}/`
  const client = s3Client(options.s3)
  try {
    const listed = await listObjects(client, location.bucket, prefix, options)
    // A series' saved versions and pointer, and the manifest, sit beside the files.
    const reserved = (key: string) => {
      const rel = key.slice(prefix.length)
      return rel === LATEST_NAME || rel === PREFIX_MANIFEST_NAME || rel.startsWith(`${VERSIONS_DIR}/`)
    }
    const objects = listed.filter((o) => !reserved(o.key))
    const manifest = `s3://${location.bucket}/${prefix}${PREFIX_MANIFEST_NAME}`
    const sums = listed.some((o) => o.key === `${prefix}${PREFIX_MANIFEST_NAME}`)
      ? parseSha256Sums((await getText(client, location.bucket, `${prefix}${PREFIX_MANIFEST_NAME}`, options)) ?? '', manifest)
      : null
    if (sums) {
      const present = new Set(objects.map((o) => o.key.slice(prefix.length)))
      const missing = [...sums.keys()].filter((p) => !present.has(p))
      const unlisted = [...present].filter((p) => !sums.has(p))
      if (missing.length || unlisted.length) {
        throw new RestoreError(
          `snapshot ${options.snapshot} does not match its manifest ${manifest}: ` +
            [missing.length ? `missing ${missing.slice(0, 3).join(', ')}` : '', unlisted.length ? `not listed ${unlisted.slice(0, 3).join(', ')}` : '']
              .filter(Boolean)
              .join('; '),
        )
      }
    }
    if (objects.length === 0) {
      throw new RestoreError(
        `snapshot ${options.snapshot} is neither an archive (.tar, .tar.gz, .tgz) nor a prefix with objects under it`,
      )
    }
    const totalBytes = objects.reduce((sum, o) => sum + o.size, 0)
    const progress = new ProgressMeter(totalBytes, options.onProgress)
    const queue = objects.map((o) => ({ key: o.key, target: join(dataDir, relativeTarget(o.key, prefix, options.snapshot)) }))
    // The first failed download cancels the others: the restore has failed already.
    const failed = new AbortController()
    const downloadOptions = { ...options, signal: AbortSignal.any([options.signal, failed.signal]) }
    const downloadNext = async (): Promise<void> => {
      try {
        for (let next = queue.shift(); next; next = queue.shift()) {
          const rel = next.key.slice(prefix.length)
          const expected = sums?.get(rel)
          const sha256 = await downloadObject(client, location.bucket, next.key, next.target, progress, downloadOptions, expected !== undefined)
          if (expected) assertDigest(options.snapshot, rel, sha256!, expected, manifest)
        }
      } catch (err) {
        failed.abort(err)
        throw err
      }
    }
    await Promise.all(Array.from({ length: PARALLEL_DOWNLOADS }, downloadNext))
  } finally {
    client.destroy()
  }
}

async function listObjects(
  client: S3Client,
  bucket: string,
  prefix: string,
  options: S3RestoreOptions,
): Promise<Array<{ key: string; size: number }>> {
  const objects: Array<{ key: string; size: number }> = []
  const pages = paginateListObjectsV2({ client }, { Bucket: bucket, Prefix: prefix })
  await send(options, async () => {
    for await (const page of pages) {
      options.signal.throwIfAborted()
      for (const o of page.Contents ?? []) {
        // "folder/" placeholder objects that consoles create carry no data.
        if (o.Key && !o.Key.endsWith('/')) objects.push({ key: o.Key, size: o.Size ?? 0 })
      }
    }
  })
  return objects
}

/** The object's path below the prefix, refused when it could escape the data directory. */
function relativeTarget(key: string, prefix: string, snapshot: string): string {
  const rel = key.slice(prefix.length)
  const parts = rel.split('/')
  if (rel.startsWith('/') || rel.includes('\\') || rel.includes('\0') || parts.some((p) => p === '' || p === '.' || p === '..')) {
    throw new RestoreError(`snapshot ${snapshot} contains an object ${JSON.stringify(key)} that does not map to a path inside the data directory; refusing to restore it`)
  }
  return rel
}

async function downloadObject(
  client: S3Client,
  bucket: string,
  key: string,
  target: string,
  progress: ProgressMeter,
  options: S3RestoreOptions,
  /** Hash the object on the way (a manifest lists it). */
  verify: boolean,
): Promise<string | null> {
  const object = await send(options, () =>
    client.send(new GetObjectCommand({ Bucket: bucket, Key: key }), { abortSignal: options.signal }),
  )
  await mkdir(dirname(target), { recursive: true })
  if (!verify) {
    await pipeline(progress.watch(bodyStream(object.Body)), createWriteStream(target), { signal: options.signal })
    return null
  }
  const hash = new HashingTap()
  await pipeline(progress.watch(bodyStream(object.Body)), hash, createWriteStream(target), { signal: options.signal })
  return hash.hex()
}

function bodyStream(body: unknown): Readable {
  if (body instanceof Readable) return body
  throw new Error('S3 GetObject returned no readable body')
}

/** Runs an S3 call, turning the service's errors into reasons a person can act on. */
async function send<T>(options: S3RestoreOptions, call: () => Promise<T>): Promise<T> {
  try {
    return await call()
  } catch (err) {
    if (options.signal.aborted || !(err instanceof S3ServiceException)) throw err
    const status = err.$metadata.httpStatusCode
    const reason = err.name === 'NoSuchKey' ? 'it does not exist' : err.name === 'NoSuchBucket' ? 'its bucket does not exist' : `${err.name}${status ? ` (HTTP ${status})` : ''}: ${err.message}`
    throw new RestoreError(`snapshot ${options.snapshot} cannot be read from S3: ${reason}`)
  }
}
