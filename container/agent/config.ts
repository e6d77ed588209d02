import { resolve } from 'node:path'
import { parseArgs } from 'node:util'
import type { S3Settings } from './s3.ts'

/** The agent's settings; main.ts documents the variables they come from. */
export interface AgentConfig {
  sessionId: string
  /** The launch attempt, when the launcher names it (it is in argv so /proc shows it). */
  generation: number | undefined
  /** null: a warm pool agent (WARM=1), which waits for POST /_agent/assign to name its snapshot. */
  snapshot: string | null
  collection: string | null
  dataDir: string
  /** The session's address: the agent's authorising front listens here. */
  host: string
  port: number
  /** Chroma's own loopback port behind the front (0: any free one). */
  chromaInternalPort: number
  /** Where the session's tokens come from (secrets.ts loads them): never argv, and from the environment only when run by hand. */
  secretSource: SecretSource
  /** The dead man's switch: stop when the control plane has not confirmed for this long. */
  deadManSeconds: number
  /** Save the directory back as a new snapshot version before a SIGTERM stop. */
  saveOnStop: boolean
  /** Everything a stop (saving included) may take before Chroma and the save are cut short. */
  stopTimeoutSeconds: number
  statusFile: string | undefined
  snapshotRoot: string | undefined
  s3: S3Settings
}

/**
 * The launchers hand the session's secrets over as a 0600 file the agent reads and
 * deletes (SESSION_SECRET_FILE, the process launcher) or as the name of a Secrets Manager
 * secret its task role may read (SESSION_SECRET_ID, Fargate). SESSION_TOKEN and
 * CONTROL_TOKEN in the environment are for running the agent by hand.
 */
export type SecretSource =
  | { kind: 'file'; path: string }
  | { kind: 'secrets-manager'; secretId: string; endpoint: string | undefined; region: string; waitSeconds: number }
  | { kind: 'environment'; sessionToken: string; controlToken: string; leaseKey: string | undefined }

export class AgentConfigError extends Error {}

export function readAgentConfig(argv: string[], env: Record<string, string | undefined>): AgentConfig {
  const { values } = parseArgs({
    args: argv,
    options: { session: { type: 'string' }, generation: { type: 'string' } },
    strict: true,
  })
  const sessionId = values.session ?? env.SESSION_ID
  if (!sessionId) throw new AgentConfigError('the session id is missing: pass --session <id> or set SESSION_ID')
  if (values.session && env.SESSION_ID && values.session !== env.SESSION_ID) {
    throw new AgentConfigError(`--session ${values.session} and SESSION_ID=${env.SESSION_ID} disagree`)
  }
  const region = env.AWS_REGION || env.AWS_DEFAULT_REGION || 'us-east-1'
  const warm = flag('WARM', env.WARM)
  if (warm && (env.SNAPSHOT_URI || env.COLLECTION)) throw new AgentConfigError('WARM=1 waits for its snapshot to be assigned: SNAPSHOT_URI and COLLECTION must not be set')
  return {
    sessionId,
    generation: values.generation === undefined ? undefined : integer('--generation', values.generation, 0),
    snapshot: warm ? null : required(env, 'SNAPSHOT_URI'),
    collection: env.COLLECTION || null,
    dataDir: resolve(required(env, 'CHROMA_DATA_DIR')),
    host: env.CHROMA_HOST || '127.0.0.1',
    port: integer('CHROMA_PORT', required(env, 'CHROMA_PORT'), 1, 65535),
    chromaInternalPort: env.CHROMA_INTERNAL_PORT ? integer('CHROMA_INTERNAL_PORT', env.CHROMA_INTERNAL_PORT, 1, 65535) : 0,
    secretSource: secretSource(env, region),
    deadManSeconds: env.DEAD_MAN_SECONDS ? integer('DEAD_MAN_SECONDS', env.DEAD_MAN_SECONDS, 1) : 900,
    saveOnStop: flag('SAVE_ON_STOP', env.SAVE_ON_STOP),
    stopTimeoutSeconds: env.STOP_TIMEOUT_SECONDS ? integer('STOP_TIMEOUT_SECONDS', env.STOP_TIMEOUT_SECONDS, 1) : 110,
    statusFile: env.STATUS_FILE ? resolve(env.STATUS_FILE) : undefined,
    snapshotRoot: env.SNAPSHOT_ROOT || undefined,
    s3: { endpoint: env.S3_ENDPOINT || undefined, region },
  }
}

function secretSource(env: Record<string, string | undefined>, region: string): SecretSource {
  const given = ['SESSION_SECRET_FILE', 'SESSION_SECRET_ID', 'SESSION_TOKEN'].filter((name) => env[name])
  if (given.length > 1) throw new AgentConfigError(`set one of SESSION_SECRET_FILE, SESSION_SECRET_ID and SESSION_TOKEN, not ${given.join(' and ')}`)
  if (env.SESSION_SECRET_FILE) return { kind: 'file', path: resolve(env.SESSION_SECRET_FILE) }
  if (env.SESSION_SECRET_ID) {
    return {
      kind: 'secrets-manager',
      secretId: env.SESSION_SECRET_ID,
      endpoint: env.SECRETS_MANAGER_ENDPOINT || undefined,
      region,
      waitSeconds: env.SESSION_SECRET_WAIT_SECONDS ? integer('SESSION_SECRET_WAIT_SECONDS', env.SESSION_SECRET_WAIT_SECONDS, 1) : 120,
    }
  }
  if (!env.SESSION_TOKEN) throw new AgentConfigError('the session secrets are missing: set SESSION_SECRET_FILE or SESSION_SECRET_ID (or SESSION_TOKEN and CONTROL_TOKEN when running by hand)')
  const tokens = { sessionToken: token('SESSION_TOKEN', env.SESSION_TOKEN), controlToken: token('CONTROL_TOKEN', required(env, 'CONTROL_TOKEN')) }
  if (tokens.controlToken === tokens.sessionToken) throw new AgentConfigError('CONTROL_TOKEN must differ from SESSION_TOKEN')
  return { kind: 'environment', ...tokens, leaseKey: env.LEASE_KEY || undefined }
}

function required(env: Record<string, string | undefined>, name: string): string {
  const value = env[name]
  if (!value) throw new AgentConfigError(`${name} is not set`)
  return value
}

/** A short token would be guessable; the control plane's are 43 characters of base64url. */
function token(name: string, value: string): string {
  if (value.length < 16) throw new AgentConfigError(`${name} must be at least 16 characters`)
  return value
}

function flag(name: string, value: string | undefined): boolean {
  if (value === undefined || value === '' || value === '0' || value === 'false') return false
  if (value === '1' || value === 'true') return true
  throw new AgentConfigError(`${name} must be 1/true or 0/false, got ${JSON.stringify(value)}`)
}

function integer(name: string, text: string, min: number, max = Number.MAX_SAFE_INTEGER): number {
  const n = Number(text)
  if (!/^\d+$/.test(text) || n < min || n > max) throw new AgentConfigError(`${name} must be an integer from ${min} to ${max}, got ${JSON.stringify(text)}`)
  return n
}
