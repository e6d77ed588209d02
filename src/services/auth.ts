import { createHash, createHmac, randomBytes, randomUUID, timingSafeEqual } from 'node:crypto'
import type { Database } from '../database/client.ts'
import type { ApiKeySeed } from '../config.ts'
import type { Clock } from './clock.ts'
import { notFound } from './errors.ts'

export type Role = 'client' | 'operator'

/** Who is calling: an API key's id and role, or "anonymous" when API keys are off. */
export interface Principal {
  id: string
  role: Role
}

/** With no key configured anywhere, every caller is this operator (and the server binds to loopback). */
export const ANONYMOUS: Principal = { id: 'anonymous', role: 'operator' }

export const sha256 = (s: string) => createHash('sha256').update(s).digest('hex')

// A revoked key stops working on every replica within this long.
const KEY_CACHE_MS = 5_000

/**
 * API keys, stored as sha256 hashes (keys are 32 random bytes, so a fast hash is
 * enough). Keys from API_KEYS are seeded on start; more are made with the CLI.
 */
export class ApiKeyService {
  private readonly cache = new Map<string, { principal: Principal | null; until: number }>()
  private enabledFlag = false

  constructor(
    private readonly db: Database,
    private readonly clock: Clock,
  ) {}

  /** Seeds the configured keys and decides whether the API-key check is on. */
  async init(seeds: ApiKeySeed[]): Promise<void> {
    await this.db.apiKey.createMany({
      data: seeds.map((seed) => {
        const keyHash = sha256(seed.key)
        return { id: randomUUID(), name: `API_KEYS ${seed.role} ${keyHash.slice(0, 8)}`, role: seed.role, keyHash, createdAt: this.clock.now() }
      }),
      skipDuplicates: true,
    })
    this.enabledFlag = seeds.length > 0 || (await this.db.apiKey.count({ where: { revokedAt: null } })) > 0
  }

  get enabled(): boolean {
    return this.enabledFlag
  }

  async authenticate(key: string): Promise<Principal | null> {
    const keyHash = sha256(key)
    const hit = this.cache.get(keyHash)
    const now = Date.now()
    if (hit && hit.until > now) return hit.principal
    const row = await this.db.apiKey.findUnique({ where: { keyHash } })
    const principal = row && !row.revokedAt ? { id: row.id, role: row.role } : null
    if (this.cache.size > 10_000) this.cache.clear()
    this.cache.set(keyHash, { principal, until: now + KEY_CACHE_MS })
    return principal
  }

  async create(name: string, role: Role): Promise<{ id: string; key: string }> {
    const key = `clk_${randomBytes(32).toString('base64url')}`
    const id = randomUUID()
    await this.db.apiKey.create({ data: { id, name, role, keyHash: sha256(key), createdAt: this.clock.now() } })
    this.enabledFlag = true
    return { id, key }
  }

  list() {
    return this.db.apiKey.findMany({ orderBy: { createdAt: 'asc' }, select: { id: true, name: true, role: true, createdAt: true, revokedAt: true } })
  }

  async revoke(id: string): Promise<void> {
    const { count } = await this.db.apiKey.updateMany({ where: { id, revokedAt: null }, data: { revokedAt: this.clock.now() } })
    if (count === 0 && !(await this.db.apiKey.findUnique({ where: { id } }))) throw notFound('api_key_not_found', `no API key ${id}`)
  }
}

/**
 * Lease tokens are an HMAC of the lease id under a cluster-wide secret, so the token
 * of an idempotent replay can be given again (Step Functions retries after a lost
 * response would otherwise hold a lease they cannot use) while only its hash is stored.
 */
export class LeaseTokens {
  constructor(private readonly secret: Buffer) {}

  mint(leaseId: string): string {
    return `clt_${createHmac('sha256', this.secret).update(leaseId).digest('base64url')}`
  }

  /** The token a session's agent requires, for one launch generation of it. */
  sessionToken(sessionId: string, generation: number): string {
    return `cls_${createHmac('sha256', this.secret).update(`session:${sessionId}:${generation}`).digest('base64url')}`
  }

  verify(leaseId: string, token: string): boolean {
    const a = Buffer.from(this.mint(leaseId))
    const b = Buffer.from(token)
    return a.length === b.length && timingSafeEqual(a, b)
  }

  static hash(token: string): string {
    return sha256(token)
  }
}

/** The cluster's lease-token secret: made once by whichever replica starts first. */
export async function loadLeaseTokenSecret(db: Database): Promise<Buffer> {
  const key = 'lease_token_secret'
  // ON CONFLICT, not upsert: replicas starting together must all end up with the first one's secret.
  await db.$executeRaw`INSERT INTO settings (key, value) VALUES (${key}, ${randomBytes(32).toString('base64')}) ON CONFLICT (key) DO NOTHING`
  const row = await db.setting.findUniqueOrThrow({ where: { key } })
  return Buffer.from(row.value, 'base64')
}
