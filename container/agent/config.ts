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
  host: string
  port: number
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
  return {
    sessionId,
    generation: values.generation === undefined ? undefined : integer('--generation', values.generation, 0),
    snapshot: required(env, 'SNAPSHOT_URI'),
    collection: env.COLLECTION || null,
    dataDir: resolve(required(env, 'CHROMA_DATA_DIR')),
    host: env.CHROMA_HOST || '127.0.0.1',
    port: integer('CHROMA_PORT', required(env, 'CHROMA_PORT'), 1, 65535),
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

function integer(name: string, text: string, min: number, max = Number.MAX_SAFE_INTEGER): number {
  const n = Number(text)
  if (!/^\d+$/.test(text) || n < min || n > max) throw new AgentConfigError(`${name} must be an integer from ${min} to ${max}, got ${JSON.stringify(text)}`)
  return n
}
