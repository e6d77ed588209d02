import { createWriteStream } from 'node:fs'
import { mkdir } from 'node:fs/promises'
import { dirname, join } from 'node:path'
import { Readable } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import { GetObjectCommand, paginateListObjectsV2, S3Client, S3ServiceException } from '@aws-sdk/client-s3'
import { extractTar } from './archive.ts'
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

function s3Client(settings: S3Settings): S3Client {
  // Credentials come from the SDK's default chain: AWS_* variables locally, the task
  // role on Fargate.
  return new S3Client({
    region: settings.region,
    ...(settings.endpoint ? { endpoint: settings.endpoint, forcePathStyle: true } : {}),
  })
}

/** Streams an archive object straight into tar extraction; nothing is buffered whole. */
export async function restoreS3Archive(
  location: { bucket: string; key: string },
  dataDir: string,
  options: S3RestoreOptions,
): Promise<void> {
  const client = s3Client(options.s3)
  try {
    const object = await send(options, () =>
      client.send(new GetObjectCommand({ Bucket: location.bucket, Key: location.key }), { abortSignal: options.signal }),
    )
    const progress = new ProgressMeter(object.ContentLength, options.onProgress)
    await extractTar(bodyStream(object.Body), dataDir, { snapshot: options.snapshot, progress, signal: options.signal })
  } finally {
    client.destroy()
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
    const objects = await listObjects(client, location.bucket, prefix, options)
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
          await downloadObject(client, location.bucket, next.key, next.target, progress, downloadOptions)
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
): Promise<void> {
  const object = await send(options, () =>
    client.send(new GetObjectCommand({ Bucket: bucket, Key: key }), { abortSignal: options.signal }),
  )
  await mkdir(dirname(target), { recursive: true })
  await pipeline(bodyStream(object.Body), progress.tap(), createWriteStream(target), { signal: options.signal })
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
