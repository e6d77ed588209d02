import { createHmac, timingSafeEqual } from 'node:crypto'

/**
 * Direct-access tokens: one per lease, `cld_<leaseId>.<expiresAtMs>.<signature>`, the
 * signature an HMAC-SHA256 of `<leaseId>.<expiresAtMs>` under the session's lease key
 * (delivered to the agent in its session secret, never in its environment or argv).
 * The agent checks one without calling the control plane: a valid signature, an expiry
 * still ahead, a lease not revoked. A renewal moves the expiry, so the lease's token
 * changes with it; a release is revoked at the agent by the control plane.
 */
export const LEASE_TOKEN_PREFIX = 'cld_'

export function signLeaseToken(leaseKey: Buffer, leaseId: string, expiresAtMs: number): string {
  return `${LEASE_TOKEN_PREFIX}${leaseId}.${expiresAtMs}.${signature(leaseKey, leaseId, expiresAtMs).toString('base64url')}`
}

export type LeaseTokenCheck = { ok: true; leaseId: string; expiresAtMs: number } | { ok: false; reason: 'malformed' | 'bad_signature' | 'expired' }

/** Checks signature and expiry (revocation is the caller's). */
export function verifyLeaseToken(leaseKey: Buffer, token: string, nowMs: number): LeaseTokenCheck {
  const m = /^cld_([0-9a-f-]{36})\.(\d{1,15})\.([A-Za-z0-9_-]{43})$/.exec(token)
  if (!m) return { ok: false, reason: 'malformed' }
  const leaseId = m[1]!
  const expiresAtMs = Number(m[2])
  const expected = signature(leaseKey, leaseId, expiresAtMs)
  const given = Buffer.from(m[3]!, 'base64url')
  if (given.length !== expected.length || !timingSafeEqual(given, expected)) return { ok: false, reason: 'bad_signature' }
  if (expiresAtMs <= nowMs) return { ok: false, reason: 'expired' }
  return { ok: true, leaseId, expiresAtMs }
}

function signature(leaseKey: Buffer, leaseId: string, expiresAtMs: number): Buffer {
  return createHmac('sha256', leaseKey).update(`${leaseId}.${expiresAtMs}`).digest()
}

/** What the control plane hands each session's agent, as one JSON document (a Secrets Manager secret, or a 0600 file). */
export interface SessionSecretDocument {
  /** The proxy's and the reconciler's credential to the session (LeaseTokens.sessionToken): never given to lease holders. */
  sessionToken: string
  /** The control plane's credential for /_agent/confirm, /_agent/save and /_agent/revoke. */
  controlToken: string
  /** base64url of the key that signs the session's direct-access lease tokens. */
  leaseKey: string
}
