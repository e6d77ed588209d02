import { createHash, createHmac, randomBytes, randomUUID, timingSafeEqual } from 'node:crypto'
import type { Database } from '../database/client.ts'
import type { ApiKeySeed } from '../config.ts'
import type { Clock } from './clock.ts'
import { conflict, notFound } from './errors.ts'
import { signLeaseToken } from '../../container/agent/lease-token.ts'

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

/** An API key as operators see it: never the key, only its fingerprint (the first 8 hex digits of its sha256). */
export interface ApiKeyView {
  id: string
  name: string
  role: Role
  fingerprint: string
  createdAt: Date
  revokedAt: Date | null
}

const KEY_VIEW = { id: true, name: true, role: true, keyHash: true, createdAt: true, revokedAt: true } as const

function keyView(row: { id: string; name: string; role: Role; keyHash: string; createdAt: Date; revokedAt: Date | null }): ApiKeyView {
  return { id: row.id, name: row.name, role: row.role, fingerprint: row.keyHash.slice(0, 8), createdAt: row.createdAt, revokedAt: row.revokedAt }
}

/**
 * API keys, stored as sha256 hashes (keys are 32 random bytes, so a fast hash is
 * enough). Keys from API_KEYS are seeded on start; more are made through /v1/keys
 * (the CLI's `keys create`).
 *
 * The check is off while no active key exists anywhere. The first key made on a
 * keyless server must be an operator key (a client key alone would lock operators
 * out); every replica notices it within KEY_CACHE_MS. From then on the check stays
 * on: the last active operator key cannot be revoked, so revoking never opens the server.
 */
export class ApiKeyService {
  private readonly cache = new Map<string, { principal: Principal | null; until: number }>()
  private enabledFlag = false
  private enabledCheckedAt = 0
  private enabledCheck: Promise<boolean> | null = null

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

  /** Whether the check is on, re-reading the database (at most every KEY_CACHE_MS) while it is off: another replica may have made the first key. */
  async isEnabled(): Promise<boolean> {
    if (this.enabledFlag || Date.now() - this.enabledCheckedAt < KEY_CACHE_MS) return this.enabledFlag
    this.enabledCheck ??= this.db.apiKey
      .count({ where: { revokedAt: null } })
      .then((n) => {
        this.enabledCheckedAt = Date.now()
        if (n > 0) this.enabledFlag = true
        return this.enabledFlag
      })
      .finally(() => {
        this.enabledCheck = null
      })
    return this.enabledCheck
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

  /**
   * Makes a key and returns it (the only time it is ever shown). `enabledNow` is true
   * when this key switched the API-key check on.
   */
  async create(name: string, role: Role): Promise<ApiKeyView & { key: string; enabledNow: boolean }> {
    const wasEnabled = await this.isEnabled()
    if (!wasEnabled && role !== 'operator') {
      throw conflict('operator_key_required', 'no API key exists yet, so the first one must be an operator key: a client key alone would turn the API-key check on and lock operators out')
    }
    const key = `clk_${randomBytes(32).toString('base64url')}`
    const row = await this.db.apiKey.create({
      data: { id: randomUUID(), name, role, keyHash: sha256(key), createdAt: this.clock.now() },
      select: KEY_VIEW,
    })
    this.enabledFlag = true
    return { ...keyView(row), key, enabledNow: !wasEnabled }
  }

  async list(): Promise<ApiKeyView[]> {
    return (await this.db.apiKey.findMany({ orderBy: { createdAt: 'asc' }, select: KEY_VIEW })).map(keyView)
  }

  /**
   * Revokes a key (idempotent: a revoked key answers as it is). The last active
   * operator key cannot be revoked: nobody could manage keys or sessions afterwards.
   * Make another operator key first. Revocation reaches every replica within KEY_CACHE_MS.
   */
  async revoke(id: string): Promise<ApiKeyView> {
    const now = this.clock.now()
    const revoked = await this.db.$transaction(async (tx) => {
      // Serialises concurrent revocations of operator keys, so two cannot each leave the other as "the last one".
      await tx.$executeRaw`SELECT pg_advisory_xact_lock(727130403)`
      const row = await tx.apiKey.findUnique({ where: { id }, select: KEY_VIEW })
      if (!row) throw notFound('api_key_not_found', `no API key ${id}`)
      if (row.revokedAt) return row
      if (row.role === 'operator' && (await tx.apiKey.count({ where: { role: 'operator', revokedAt: null } })) <= 1) {
        throw conflict('last_operator_key', 'this is the last active operator key; create another operator key before revoking it')
      }
      return tx.apiKey.update({ where: { id }, data: { revokedAt: now }, select: KEY_VIEW })
    })
    this.cache.clear()
    return keyView(revoked)
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

  /**
   * The token only the control plane holds for a session's agent endpoints (the dead
   * man's switch confirmation, save-back): lease holders get the session token, which
   * opens Chroma but cannot save the series or keep the session alive.
   */
  controlToken(sessionId: string, generation: number): string {
    return `clc_${createHmac('sha256', this.secret).update(`control:${sessionId}:${generation}`).digest('base64url')}`
  }

  /**
   * The key that signs a session generation's direct-access lease tokens: delivered to its
   * agent with the other two as its secret, derived so every replica knows it (base64url).
   */
  leaseKey(sessionId: string, generation: number): string {
    return createHmac('sha256', this.secret).update(`lease-key:${sessionId}:${generation}`).digest('base64url')
  }

  /**
   * A lease holder's token for the session's endpoint (direct access): per lease, valid
   * until the lease's expiry and checked by the agent alone (container/agent/lease-token.ts).
   * A renewal moves the expiry and so gives a new token; a release is revoked at the agent.
   */
  directToken(sessionId: string, generation: number, leaseId: string, expiresAt: Date): string {
    return signLeaseToken(Buffer.from(this.leaseKey(sessionId, generation), 'base64url'), leaseId, expiresAt.getTime())
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
