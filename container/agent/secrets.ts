import { readFile, rm } from 'node:fs/promises'
import { setTimeout as sleep } from 'node:timers/promises'
import { AgentConfigError, type SecretSource } from './config.ts'
import type { SessionSecretDocument } from './lease-token.ts'

/** The session's tokens, as the front checks them. */
export interface SessionSecrets {
  sessionToken: string
  controlToken: string
  /** Signs direct-access lease tokens; null: direct access takes the session token only (a by-hand run without LEASE_KEY). */
  leaseKey: Buffer | null
}

/**
 * Loads the session's secrets from where the launcher put them. A file is deleted once
 * read (nothing else needs it, and the data directory's neighbours should not see it).
 * A Secrets Manager secret becomes readable only once the control plane has named this
 * task as its reader (a tag it sets right after RunTask answers), so AccessDenied and
 * ResourceNotFound are waited out, up to waitSeconds.
 */
export async function loadSessionSecrets(source: SecretSource, log: (message: string) => void, signal?: AbortSignal): Promise<SessionSecrets> {
  if (source.kind === 'environment') return { sessionToken: source.sessionToken, controlToken: source.controlToken, leaseKey: source.leaseKey ? Buffer.from(source.leaseKey, 'base64url') : null }
  if (source.kind === 'file') {
    const text = await readFile(source.path, 'utf8').catch((err: Error) => {
      throw new AgentConfigError(`cannot read SESSION_SECRET_FILE ${source.path}: ${err.message}`)
    })
    await rm(source.path, { force: true })
    return parse(text, `SESSION_SECRET_FILE ${source.path}`)
  }
  // Loaded only here: the SDK costs every local agent's start time for nothing.
  const { GetSecretValueCommand, SecretsManagerClient } = await import('@aws-sdk/client-secrets-manager')
  const client = new SecretsManagerClient({ region: source.region, ...(source.endpoint ? { endpoint: source.endpoint } : {}) })
  const deadline = Date.now() + source.waitSeconds * 1000
  try {
    for (let attempt = 0; ; attempt++) {
      try {
        const reply = await client.send(new GetSecretValueCommand({ SecretId: source.secretId }), { abortSignal: signal })
        if (!reply.SecretString) throw new AgentConfigError(`secret ${source.secretId} has no SecretString`)
        return parse(reply.SecretString, `secret ${source.secretId}`)
      } catch (err) {
        const name = (err as Error).name
        const waitable = name === 'AccessDeniedException' || name === 'ResourceNotFoundException'
        if (!waitable || Date.now() > deadline || signal?.aborted) {
          throw new AgentConfigError(`cannot read the session secret ${source.secretId}: ${name}: ${(err as Error).message}`)
        }
        if (attempt === 0) log(`session secret ${source.secretId} not readable yet (${name}); waiting for the control plane to grant it`)
        await sleep(Math.min(2000, 100 * 2 ** attempt), undefined, { signal }).catch(() => {})
      }
    }
  } finally {
    client.destroy()
  }
}

function parse(text: string, where: string): SessionSecrets {
  let doc: Partial<SessionSecretDocument>
  try {
    doc = JSON.parse(text) as Partial<SessionSecretDocument>
  } catch {
    throw new AgentConfigError(`${where} is not JSON`)
  }
  for (const field of ['sessionToken', 'controlToken', 'leaseKey'] as const) {
    if (typeof doc[field] !== 'string' || doc[field]!.length < 16) throw new AgentConfigError(`${where} has no valid ${field}`)
  }
  if (doc.sessionToken === doc.controlToken) throw new AgentConfigError(`${where}: controlToken must differ from sessionToken`)
  return { sessionToken: doc.sessionToken!, controlToken: doc.controlToken!, leaseKey: Buffer.from(doc.leaseKey!, 'base64url') }
}
