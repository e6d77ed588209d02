import type { CapacityProviderStrategyItem } from '@aws-sdk/client-ecs'
import { DEFAULT_FARGATE_PRICES, type FargatePrices } from './services/cost.ts'
import { parseCapacityProviders } from './services/launchers/capacity-providers.ts'
import type { HoldSettings } from './services/request-hold.ts'
import { existsSync } from 'node:fs'
import { join, resolve } from 'node:path'
import { envSchema } from 'env-schema'
import { Type, type Static } from 'typebox'

/** A string setting with a fixed set of values (a plain enum, for a readable error). */
function oneOf<T extends string>(values: readonly T[], fallback: T) {
  return Type.Unsafe<T>({ type: 'string', enum: values, default: fallback })
}

/**
 * Every setting the service reads, validated once at start. Names and defaults are
 * documented in README.md and .env.example; keep the three in step.
 */
export const EnvSchema = Type.Object({
  DATABASE_URL: Type.Optional(Type.String({ minLength: 1 })),
  DATA_DIR: Type.String({ default: '.data' }),
  HOST: Type.Optional(Type.String({ minLength: 1 })),
  PORT: Type.Integer({ default: 8080, minimum: 0, maximum: 65535 }),
  LOG_LEVEL: oneOf(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'], 'info'),
  PUBLIC_URL: Type.Optional(Type.String({ minLength: 1 })),
  LAUNCHER: oneOf(['process', 'fargate'] as const, 'process'),
  API_KEYS: Type.String({ default: '' }),
  SNAPSHOT_ROOT: Type.Optional(Type.String({ minLength: 1 })),
  S3_ENDPOINT: Type.Optional(Type.String({ minLength: 1 })),
  AWS_REGION: Type.String({ default: 'us-east-1' }),
  LEASE_TTL_SECONDS: Type.Integer({ default: 300, minimum: 5 }),
  MAX_LEASE_TTL_SECONDS: Type.Integer({ default: 86400, minimum: 5 }),
  IDLE_TTL_SECONDS: Type.Integer({ default: 300, minimum: 0 }),
  MAX_IDLE_TTL_SECONDS: Type.Integer({ default: 3600, minimum: 0 }),
  MAX_SESSION_SECONDS: Type.Integer({ default: 43200, minimum: 60 }),
  START_TIMEOUT_SECONDS: Type.Integer({ default: 600, minimum: 5 }),
  WARM_POOL_MIN: Type.Integer({ default: 0, minimum: 0, maximum: 1000 }),
  WARM_POOL_MAX: Type.Integer({ default: 0, minimum: 0, maximum: 1000 }),
  SWEEP_INTERVAL_SECONDS: Type.Number({ default: 15, exclusiveMinimum: 0 }),
  RECONCILE_INTERVAL_SECONDS: Type.Number({ default: 1, exclusiveMinimum: 0 }),
  SESSION_DEAD_MAN_SECONDS: Type.Integer({ default: 900, minimum: 30 }),
  AGENT_CONFIRM_INTERVAL_SECONDS: Type.Integer({ default: 60, minimum: 1 }),
  SAVE_TIMEOUT_SECONDS: Type.Integer({ default: 900, minimum: 10 }),
  RETENTION_DAYS: Type.Integer({ default: 30, minimum: 1 }),
  BODY_LIMIT_BYTES: Type.Integer({ default: 1048576, minimum: 1024 }),
  PROXY_BODY_LIMIT_BYTES: Type.Integer({ default: 33554432, minimum: 1024 }),
  PROXY_TIMEOUT_SECONDS: Type.Number({ default: 120, exclusiveMinimum: 0, maximum: 3600 }),
  PROXY_HOLD_SECONDS: Type.Number({ default: 50, minimum: 0, maximum: 600 }),
  PROXY_HOLD_MAX_PER_SESSION: Type.Integer({ default: 64, minimum: 1, maximum: 10000 }),
  ECS_CLUSTER: Type.Optional(Type.String({ minLength: 1 })),
  ECS_TASK_DEFINITION: Type.Optional(Type.String({ minLength: 1 })),
  ECS_SUBNETS: Type.Optional(Type.String({ minLength: 1 })),
  ECS_SECURITY_GROUPS: Type.Optional(Type.String({ minLength: 1 })),
  ECS_CONTAINER_NAME: Type.String({ default: 'chroma-session' }),
  ECS_ASSIGN_PUBLIC_IP: Type.Boolean({ default: false }),
  ECS_CAPACITY_PROVIDER: Type.String({ default: 'FARGATE' }),
  ECS_ENDPOINT: Type.Optional(Type.String({ minLength: 1 })),
  EC2_ENDPOINT: Type.Optional(Type.String({ minLength: 1 })),
  ECS_CHROMA_PORT: Type.Integer({ default: 8000, minimum: 1, maximum: 65535 }),
  ECS_STARTED_BY: Type.String({ default: 'chroma-lease', minLength: 1, maxLength: 36, pattern: '^[A-Za-z0-9_-]+$' }),
  ECS_LAUNCH_RATE: Type.Number({ default: 20, exclusiveMinimum: 0 }),
  ECS_LAUNCH_BURST: Type.Integer({ default: 20, minimum: 1 }),
  SESSION_SECRET_PREFIX: Type.String({ default: 'chroma-lease/sessions', minLength: 1, maxLength: 400, pattern: '^[A-Za-z0-9/_+=.@-]+[^/]$' }),
  SESSION_TASK_ROLE_ID: Type.Optional(Type.String({ pattern: '^AROA[A-Z0-9]{10,}$' })),
  SECRETS_MANAGER_ENDPOINT: Type.Optional(Type.String({ minLength: 1 })),
  FARGATE_VCPU_HOUR_USD: Type.Number({ default: DEFAULT_FARGATE_PRICES.x86.vcpuHour, minimum: 0 }),
  FARGATE_GB_HOUR_USD: Type.Number({ default: DEFAULT_FARGATE_PRICES.x86.gbHour, minimum: 0 }),
  FARGATE_ARM_VCPU_HOUR_USD: Type.Number({ default: DEFAULT_FARGATE_PRICES.arm.vcpuHour, minimum: 0 }),
  FARGATE_ARM_GB_HOUR_USD: Type.Number({ default: DEFAULT_FARGATE_PRICES.arm.gbHour, minimum: 0 }),
})
type Env = Static<typeof EnvSchema>

export interface ApiKeySeed {
  role: 'client' | 'operator'
  key: string
}

export interface Config {
  databaseUrl: string | undefined
  dataDir: string
  host: string
  port: number
  logLevel: string
  publicUrl: string | undefined
  launcher: 'process' | 'fargate'
  apiKeys: ApiKeySeed[]
  /** Absolute directory that `file://` snapshots must lie under. */
  snapshotRoot: string
  s3Endpoint: string | undefined
  awsRegion: string
  leaseTtlSeconds: number
  maxLeaseTtlSeconds: number
  idleTtlSeconds: number
  maxIdleTtlSeconds: number
  maxSessionSeconds: number
  startTimeoutSeconds: number
  /** The warm pool's bounds (src/services/warm-pool.ts); max 0: no pool. */
  warmPool: { min: number; max: number }
  sweepIntervalSeconds: number
  reconcileIntervalSeconds: number
  /** Agents stop their session when the control plane has not confirmed it for this long. */
  sessionDeadManSeconds: number
  agentConfirmIntervalSeconds: number
  saveTimeoutSeconds: number
  /** Ended sessions' leases and events older than this are purged; their costs stay as daily rollups. */
  retentionDays: number
  bodyLimitBytes: number
  proxyBodyLimitBytes: number
  /** How long the proxy waits for a session's answer to start, and between its parts. */
  proxyTimeoutSeconds: number
  /** How long a proxied request or query waits for a starting session (0: 409 at once), and how many of a session's wait at once. */
  proxyHold: HoldSettings
  ecs: {
    cluster: string | undefined
    taskDefinition: string | undefined
    subnets: string[]
    securityGroups: string[]
    containerName: string
    assignPublicIp: boolean
    capacityProviders: CapacityProviderStrategyItem[]
    endpoint: string | undefined
    ec2Endpoint: string | undefined
    chromaPort: number
    startedBy: string
    launchRate: number
    launchBurst: number
    /** Each session's secret is `<secretPrefix>/<sessionId>/g<generation>` in Secrets Manager. */
    secretPrefix: string
    /** The session task role's unique id (AROA…): names the one task that may read a session's secret. */
    taskRoleId: string | undefined
    secretsManagerEndpoint: string | undefined
  }
  /** Fargate prices for session costs (the session resource and /metrics). */
  prices: FargatePrices
}

export class ConfigError extends Error {
  override name = 'ConfigError'
}

export function parseApiKeys(spec: string): ApiKeySeed[] {
  return spec
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean)
    .map((entry) => {
      const colon = entry.indexOf(':')
      const role = entry.slice(0, colon)
      const key = entry.slice(colon + 1)
      if (colon < 0 || (role !== 'client' && role !== 'operator')) {
        throw new ConfigError(`API_KEYS entries are role:key with role client or operator; got ${JSON.stringify(entry.slice(0, 12) + '…')}`)
      }
      if (key.length < 16) throw new ConfigError(`API_KEYS: a ${role} key is shorter than 16 characters`)
      return { role, key }
    })
}

/**
 * Reads `.env` from the working directory into process.env, if the file exists, as
 * `npm start`, `serve` and `migrate` do before loadConfig: a copy of .env.example works
 * as is. A variable set in the real environment wins over the file.
 */
export function loadEnvFile(path = '.env'): boolean {
  if (!existsSync(path)) return false
  try {
    process.loadEnvFile(path)
  } catch (err) {
    throw new ConfigError(`cannot read ${resolve(path)}: ${(err as Error).message}`)
  }
  return true
}

const list = (s: string | undefined) => (s ?? '').split(',').map((x) => x.trim()).filter(Boolean)

export function loadConfig(env: Record<string, string | undefined> = process.env): Config {
  let e: Env
  try {
    e = envSchema<Env>({ schema: EnvSchema, data: env, dotenv: false })
  } catch (err) {
    throw new ConfigError(`invalid configuration: ${describeErrors(err as Error & { errors?: SchemaError[] }, env)}`)
  }
  const apiKeys = parseApiKeys(e.API_KEYS)
  if (e.IDLE_TTL_SECONDS > e.MAX_IDLE_TTL_SECONDS) throw new ConfigError('IDLE_TTL_SECONDS exceeds MAX_IDLE_TTL_SECONDS')
  if (e.LEASE_TTL_SECONDS > e.MAX_LEASE_TTL_SECONDS) throw new ConfigError('LEASE_TTL_SECONDS exceeds MAX_LEASE_TTL_SECONDS')
  // Three missed confirmations in a row must not stop a healthy session.
  if (e.AGENT_CONFIRM_INTERVAL_SECONDS * 3 > e.SESSION_DEAD_MAN_SECONDS) {
    throw new ConfigError('AGENT_CONFIRM_INTERVAL_SECONDS must be at most a third of SESSION_DEAD_MAN_SECONDS')
  }
  // The agent confirmer runs on the reconciler's period: it cannot confirm more often than that.
  if (e.RECONCILE_INTERVAL_SECONDS > e.AGENT_CONFIRM_INTERVAL_SECONDS) {
    throw new ConfigError('RECONCILE_INTERVAL_SECONDS must not exceed AGENT_CONFIRM_INTERVAL_SECONDS (the agent confirmer runs on its period)')
  }
  if (e.WARM_POOL_MIN > e.WARM_POOL_MAX) throw new ConfigError('WARM_POOL_MIN exceeds WARM_POOL_MAX (WARM_POOL_MAX=0 turns the warm pool off)')
  if (e.LAUNCHER === 'fargate') {
    const missing = (['ECS_CLUSTER', 'ECS_TASK_DEFINITION', 'ECS_SUBNETS', 'SESSION_TASK_ROLE_ID'] as const).filter((k) => !e[k])
    if (missing.length) throw new ConfigError(`LAUNCHER=fargate needs ${missing.join(', ')}`)
  }
  // With no API key configured, anyone who can reach the port could lease compute:
  // bind to loopback only unless keys are set (DESIGN.md, Auth).
  const host = e.HOST ?? (apiKeys.length ? '0.0.0.0' : '127.0.0.1')
  if (!apiKeys.length && !isLoopback(host)) {
    throw new ConfigError(`HOST=${host} is not loopback, but no API_KEYS are configured: set API_KEYS or bind to 127.0.0.1`)
  }
  return {
    databaseUrl: e.DATABASE_URL,
    dataDir: e.DATA_DIR,
    host,
    port: e.PORT,
    logLevel: e.LOG_LEVEL,
    publicUrl: e.PUBLIC_URL,
    launcher: e.LAUNCHER,
    apiKeys,
    snapshotRoot: resolve(e.SNAPSHOT_ROOT ?? join(e.DATA_DIR, 'snapshots')),
    s3Endpoint: e.S3_ENDPOINT,
    awsRegion: e.AWS_REGION,
    leaseTtlSeconds: e.LEASE_TTL_SECONDS,
    maxLeaseTtlSeconds: e.MAX_LEASE_TTL_SECONDS,
    idleTtlSeconds: e.IDLE_TTL_SECONDS,
    maxIdleTtlSeconds: e.MAX_IDLE_TTL_SECONDS,
    maxSessionSeconds: e.MAX_SESSION_SECONDS,
    startTimeoutSeconds: e.START_TIMEOUT_SECONDS,
    warmPool: { min: e.WARM_POOL_MIN, max: e.WARM_POOL_MAX },
    sweepIntervalSeconds: e.SWEEP_INTERVAL_SECONDS,
    reconcileIntervalSeconds: e.RECONCILE_INTERVAL_SECONDS,
    sessionDeadManSeconds: e.SESSION_DEAD_MAN_SECONDS,
    agentConfirmIntervalSeconds: e.AGENT_CONFIRM_INTERVAL_SECONDS,
    saveTimeoutSeconds: e.SAVE_TIMEOUT_SECONDS,
    retentionDays: e.RETENTION_DAYS,
    bodyLimitBytes: e.BODY_LIMIT_BYTES,
    proxyBodyLimitBytes: e.PROXY_BODY_LIMIT_BYTES,
    proxyTimeoutSeconds: e.PROXY_TIMEOUT_SECONDS,
    proxyHold: { holdSeconds: e.PROXY_HOLD_SECONDS, maxPerSession: e.PROXY_HOLD_MAX_PER_SESSION },
    ecs: {
      cluster: e.ECS_CLUSTER,
      taskDefinition: e.ECS_TASK_DEFINITION,
      subnets: list(e.ECS_SUBNETS),
      securityGroups: list(e.ECS_SECURITY_GROUPS),
      containerName: e.ECS_CONTAINER_NAME,
      assignPublicIp: e.ECS_ASSIGN_PUBLIC_IP,
      capacityProviders: capacityProviders(e.ECS_CAPACITY_PROVIDER),
      endpoint: e.ECS_ENDPOINT,
      ec2Endpoint: e.EC2_ENDPOINT,
      chromaPort: e.ECS_CHROMA_PORT,
      startedBy: e.ECS_STARTED_BY,
      launchRate: e.ECS_LAUNCH_RATE,
      launchBurst: e.ECS_LAUNCH_BURST,
      secretPrefix: e.SESSION_SECRET_PREFIX,
      taskRoleId: e.SESSION_TASK_ROLE_ID,
      secretsManagerEndpoint: e.SECRETS_MANAGER_ENDPOINT,
    },
    prices: {
      x86: { vcpuHour: e.FARGATE_VCPU_HOUR_USD, gbHour: e.FARGATE_GB_HOUR_USD },
      arm: { vcpuHour: e.FARGATE_ARM_VCPU_HOUR_USD, gbHour: e.FARGATE_ARM_GB_HOUR_USD },
      minimumSeconds: DEFAULT_FARGATE_PRICES.minimumSeconds,
    },
  }
}

interface SchemaError {
  instancePath: string
  keyword: string
  message?: string
  params: { allowedValues?: unknown[] }
}

/** Each invalid setting with what it allows and what it got (values that may hold secrets are not echoed). */
function describeErrors(err: Error & { errors?: SchemaError[] }, env: Record<string, string | undefined>): string {
  if (!err.errors?.length) return err.message.replaceAll('env/', '')
  return err.errors
    .map((e) => {
      const name = e.instancePath.replace(/^\//, '')
      const got = /URL|KEY/.test(name) ? '' : ` (got ${JSON.stringify(env[name])})`
      if (e.keyword === 'enum') return `${name} must be one of ${e.params.allowedValues!.join(', ')}${got}`
      return `${name} ${e.message}${got}`
    })
    .join('; ')
}

function capacityProviders(value: string): CapacityProviderStrategyItem[] {
  try {
    return parseCapacityProviders(value)
  } catch (err) {
    throw new ConfigError(`ECS_CAPACITY_PROVIDER: ${(err as Error).message}`)
  }
}

export function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || host.startsWith('127.')
}
