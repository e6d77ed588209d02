import { createReadStream } from 'node:fs'
import { readdir, readFile, stat } from 'node:fs/promises'
import type { AddressInfo } from 'node:net'
import { createRequire } from 'node:module'
import { join, relative } from 'node:path'
import { PutObjectCommand, S3Client } from '@aws-sdk/client-s3'

/** The part of s3rver's API used here (the package ships no types). */
interface S3rverInstance {
  run(): Promise<AddressInfo>
  close(): Promise<void>
}
type S3rverConstructor = new (options: {
  address: string
  port: number
  directory: string
  silent: boolean
  configureBuckets: Array<{ name: string }>
}) => S3rverInstance

/**
 * s3rver on a loopback port: a real S3 protocol endpoint for the real AWS SDK.
 * `env` is what an agent needs to read from it.
 */
export interface S3Fake {
  endpoint: string
  bucket: string
  client: S3Client
  /** S3_ENDPOINT, AWS_REGION and credentials s3rver accepts. */
  env: Record<string, string>
  putFile(key: string, path: string): Promise<void>
  /** Uploads every file under `dir` as `<prefix>/<relative path>`. */
  putDirectory(prefix: string, dir: string): Promise<void>
  /**
   * Multipart uploads begun and never completed nor aborted, from s3rver's own store
   * (it has no ListMultipartUploads): the key each is for and the parts it holds.
   */
  incompleteUploads(): Promise<Array<{ uploadId: string; key: string; parts: number[] }>>
  close(): Promise<void>
}

const CREDENTIALS = { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' }
const REGION = 'us-east-1'

export async function startS3Fake(storageDir: string, bucket = 'snapshots'): Promise<S3Fake> {
  const S3rver = createRequire(import.meta.url)('s3rver') as S3rverConstructor
  const server = new S3rver({ address: '127.0.0.1', port: 0, directory: storageDir, silent: true, configureBuckets: [{ name: bucket }] })
  const { port } = await server.run()
  const endpoint = `http://127.0.0.1:${port}`
  const client = new S3Client({
    endpoint,
    region: REGION,
    forcePathStyle: true,
    credentials: CREDENTIALS,
    // The SDK's default (WHEN_SUPPORTED) sends streamed bodies aws-chunked with a
    // trailing checksum; s3rver does not decode that framing and stores it verbatim.
    requestChecksumCalculation: 'WHEN_REQUIRED',
  })

  const putFile = async (key: string, path: string) => {
    const { size } = await stat(path)
    await client.send(new PutObjectCommand({ Bucket: bucket, Key: key, Body: createReadStream(path), ContentLength: size }))
  }
  return {
    endpoint,
    bucket,
    client,
    env: {
      S3_ENDPOINT: endpoint,
      AWS_REGION: REGION,
      AWS_ACCESS_KEY_ID: CREDENTIALS.accessKeyId,
      AWS_SECRET_ACCESS_KEY: CREDENTIALS.secretAccessKey,
    },
    putFile,
    async putDirectory(prefix, dir) {
      for (const path of await filesUnder(dir)) await putFile(`${prefix}/${relative(dir, path)}`, path)
    },
    async incompleteUploads() {
      // s3rver keeps an upload in <bucket>/._S3rver_uploads/<uploadId>/{key,metadata,<part>,<part>.md5}.
      const uploads = join(storageDir, bucket, '._S3rver_uploads')
      const ids = await readdir(uploads).catch(() => [] as string[])
      return Promise.all(
        ids.map(async (uploadId) => {
          const files = await readdir(join(uploads, uploadId))
          const parts = files.filter((f) => /^\d+$/.test(f)).map(Number).sort((a, b) => a - b)
          return { uploadId, key: await readFile(join(uploads, uploadId, 'key'), 'utf8'), parts }
        }),
      )
    },
    async close() {
      client.destroy()
      await server.close()
    },
  }
}

/** A request the stalling proxy passed through, with the status its target answered once the answer was sent whole. */
export interface PassedRequest {
  method: string
  path: string
  status: number
}

async function filesUnder(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { withFileTypes: true })
  const nested = await Promise.all(
    entries.map((e) => (e.isDirectory() ? filesUnder(join(dir, e.name)) : Promise.resolve([join(dir, e.name)]))),
  )
  return nested.flat()
}

/**
 * An S3 endpoint in front of `target` that stalls chosen requests: it reads their
 * bodies (an upload gets halfway, or all the way, in) and never answers them, or
 * refuses them. Every other request is passed through to `target`, and what `target`
 * answered is kept in `passed()`. For saves cut short, deterministically.
 */
export async function startStallingS3(
  target: string,
  stall: (method: string, path: string) => boolean,
  /** 'request': never answer; 'half-response': answer, send half the body, then stall; 'refuse': answer 403 AccessDenied (not retried). */
  how: 'request' | 'half-response' | 'refuse' = 'request',
): Promise<{ endpoint: string; stalled: () => number; passed: () => PassedRequest[]; close(): Promise<void> }> {
  const { createServer, request } = await import('node:http')
  let stalled = 0
  const passed: PassedRequest[] = []
  const server = createServer((req, res) => {
    const stalling = stall(req.method ?? 'GET', req.url ?? '/')
    if (stalling && how === 'request') {
      stalled++
      req.resume()
      return
    }
    if (stalling && how === 'refuse') {
      stalled++
      req.resume()
      res.writeHead(403, { 'content-type': 'application/xml' })
      return void res.end('<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>')
    }
    const { hostname, port } = new URL(target)
    const upstream = request({ host: hostname, port, method: req.method, path: req.url, headers: req.headers }, (answer) => {
      if (!stalling) answer.once('end', () => passed.push({ method: req.method ?? 'GET', path: req.url ?? '/', status: answer.statusCode ?? 0 }))
      res.writeHead(answer.statusCode ?? 502, answer.headers)
      if (!stalling) return void answer.pipe(res)
      const half = Number(answer.headers['content-length'] ?? 0) / 2
      let sent = 0
      answer.on('data', (chunk: Buffer) => {
        if (sent >= half) return
        const part = chunk.subarray(0, Math.max(0, Math.ceil(half - sent)))
        sent += part.length
        res.write(part)
        if (sent >= half) {
          stalled++
          answer.pause()
        }
      })
    })
    upstream.on('error', () => res.destroy())
    req.pipe(upstream)
  })
  server.listen(0, '127.0.0.1')
  await new Promise((resolve) => server.once('listening', resolve))
  const { port } = server.address() as AddressInfo
  return {
    endpoint: `http://127.0.0.1:${port}`,
    stalled: () => stalled,
    passed: () => [...passed],
    async close() {
      server.closeAllConnections()
      await new Promise((resolve) => server.close(resolve))
    },
  }
}
