import { createHash, type Hash } from 'node:crypto'
import { Transform } from 'node:stream'
import type { ExpectedDigest } from './archive.ts'
import { RestoreError } from './restore-error.ts'

/**
 * sha256 manifests in sha256sum's format (`<64 hex>  <path>` per line; `*` before the
 * path marks binary mode and is ignored), so that `sha256sum -c` checks them too.
 * Returns path → hex digest.
 */
export function parseSha256Sums(text: string, where: string): Map<string, string> {
  const sums = new Map<string, string>()
  for (const [i, raw] of text.split('\n').entries()) {
    const line = raw.trim()
    if (line === '' || line.startsWith('#')) continue
    const m = /^([0-9a-fA-F]{64}) [ *](.+)$/.exec(line)
    if (!m) throw new RestoreError(`manifest ${where} line ${i + 1} is not "<sha256>  <path>": ${JSON.stringify(line.slice(0, 80))}`)
    sums.set(m[2]!.replace(/^\.\//, ''), m[1]!.toLowerCase())
  }
  if (sums.size === 0) throw new RestoreError(`manifest ${where} lists no files`)
  return sums
}

export function formatSha256Sums(entries: Array<[path: string, sha256: string]>): string {
  return entries.map(([path, sha]) => `${sha}  ${path}\n`).join('')
}

/** A pass-through stream that hashes what flows through it; `hex()` once it has ended. */
export class HashingTap extends Transform {
  private readonly hash: Hash = createHash('sha256')
  private digest: string | undefined
  bytes = 0

  constructor(private readonly onBytes?: (bytes: number) => void) {
    super()
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, done: (err: null, chunk: Buffer) => void): void {
    this.hash.update(chunk)
    this.bytes += chunk.length
    this.onBytes?.(this.bytes)
    done(null, chunk)
  }

  hex(): string {
    this.digest ??= this.hash.digest('hex')
    return this.digest
  }
}

/** Fails the restore when a digest differs from the manifest's. */
export function assertDigest(snapshot: string, what: string, actual: string, expected: string, manifest: string): void {
  if (actual !== expected) {
    throw new RestoreError(`snapshot ${snapshot} does not match its manifest: ${what} has sha256 ${actual}, ${manifest} says ${expected}; refusing to serve it`)
  }
}

/** An archive's manifest holds one line; when it names other files too, the archive's own line counts. */
export function archiveDigest(text: string, manifest: string, archiveName: string): ExpectedDigest {
  const sums = parseSha256Sums(text, manifest)
  const sha256 = sums.get(archiveName) ?? (sums.size === 1 ? [...sums.values()][0]! : undefined)
  if (!sha256) throw new RestoreError(`manifest ${manifest} has no line for ${archiveName}`)
  return { sha256, manifest }
}
