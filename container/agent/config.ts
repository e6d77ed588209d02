import { resolve } from 'node:path'
import { parseArgs } from 'node:util'
import type { S3Settings } from './s3.ts'

/** The agent's settings; main.ts documents the variables they come from. */
export interface AgentConfig {
  sessionId: string
  /** The launch attempt, when the launcher names it (it is in argv so /proc shows it). */
  generation: number | undefined
  snapshot: string
  collection: string | null
  dataDir: string
  /** The session's address: the agent's authorising front listens here. */
  host: string
  port: number
  /** Chroma's own loopback port behind the front (0: any free one). */
  chromaInternalPort: number
  /** The secret every request must carry (x-chroma-token or Authorization: Bearer). */
  sessionToken: string
  /** What the control plane's calls to /_agent/confirm and /_agent/save carry; lease holders never get it. */
  controlToken: string
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
  if (env.CONTROL_TOKEN && env.CONTROL_TOKEN === env.SESSION_TOKEN) throw new AgentConfigError('CONTROL_TOKEN must differ from SESSION_TOKEN')
  return {
    sessionId,
    generation: values.generation === undefined ? undefined : integer('--generation', values.generation, 0),
    snapshot: required(env, 'SNAPSHOT_URI'),
    collection: env.COLLECTION || null,
    dataDir: resolve(required(env, 'CHROMA_DATA_DIR')),
    host: env.CHROMA_HOST || '127.0.0.1',
    port: integer('CHROMA_PORT', required(env, 'CHROMA_PORT'), 1, 65535),
    chromaInternalPort: env.CHROMA_INTERNAL_PORT ? integer('CHROMA_INTERNAL_PORT', env.CHROMA_INTERNAL_PORT, 1, 65535) : 0,
    sessionToken: token('SESSION_TOKEN', required(env, 'SESSION_TOKEN')),
    controlToken: token('CONTROL_TOKEN', required(env, 'CONTROL_TOKEN')),
    deadManSeconds: env.DEAD_MAN_SECONDS ? integer('DEAD_MAN_SECONDS', env.DEAD_MAN_SECONDS, 1) : 900,
    saveOnStop: flag('SAVE_ON_STOP', env.SAVE_ON_STOP),
    stopTimeoutSeconds: env.STOP_TIMEOUT_SECONDS ? integer('STOP_TIMEOUT_SECONDS', env.STOP_TIMEOUT_SECONDS, 1) : 110,
    statusFile: env.STATUS_FILE ? resolve(env.STATUS_FILE) : undefined,
    snapshotRoot: env.SNAPSHOT_ROOT || undefined,
    s3: { endpoint: env.S3_ENDPOINT || undefined, region: env.AWS_REGION || env.AWS_DEFAULT_REGION || 'us-east-1' },
  }
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
