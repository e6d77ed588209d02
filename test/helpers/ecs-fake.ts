import { spawn, type ChildProcess } from 'node:child_process'
import { createHash, randomUUID } from 'node:crypto'
import { mkdtemp, rm } from 'node:fs/promises'
import { createServer, type IncomingMessage, type Server } from 'node:http'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { ECSClient } from '@aws-sdk/client-ecs'
import { freeLoopbackPort } from '../../src/free-port.ts'
import { projectPath } from '../../src/paths.ts'
import { inProcessEc2, oneShotEc2, type Ec2Calls } from '../../src/services/launchers/ec2-calls.ts'
import { SessionSecretStore } from '../../src/services/launchers/session-secrets.ts'
import { parseCapacityProviders } from '../../src/services/launchers/capacity-providers.ts'
import type { FargateSettings } from '../../src/services/launchers/fargate-launcher.ts'
import type { SessionSecretDocument } from '../../container/agent/lease-token.ts'
import { SecretsManagerFake } from './secrets-manager-fake.ts'

/**
 * A protocol-level fake of ECS (awsJson1_1) and the few EC2 calls we make (query
 * protocol), served over HTTP so the real AWS SDK talks to it: serialisation, retries
 * and error mapping are the SDK's own. With `runAgents`, RunTask starts the real
 * session agent as a local process on its own loopback address (127.0.0.N, one shared
 * port), so a RUNNING task means a real Chroma answers there.
 *
 * Faults are scripted: throttling (ECS's ThrottlingException, EC2's RequestLimitExceeded),
 * capacity failures (as RunTask `failures` or as a thrown error), per-task behaviours (stops
 * during start, never gets an address, turns UNHEALTHY), and Spot interruptions.
 *
 * Where the launcher relies on ECS's behaviour, the fake behaves as ECS does:
 * - a clientToken is remembered per cluster for 24 hours; replayed with other parameters
 *   it answers ConflictException naming the task it started (`resourceIds`);
 * - a capacity provider strategy places a RunTask's tasks base first, then by weight, so
 *   `FARGATE_SPOT:3,FARGATE:1:1` puts every single-task RunTask on FARGATE;
 * - lastStatus moves PROVISIONING, PENDING, ACTIVATING, RUNNING and, after a stop,
 *   RUNNING with desiredStatus STOPPED for a while, DEACTIVATING, STOPPING (SIGTERM to the
 *   container, SIGKILL after the stop timeout), DEPROVISIONING, STOPPED;
 * - the task's healthStatus is its essential container's; DescribeTasks shows `overrides`;
 *   more than 100 tasks in one DescribeTasks is an InvalidParameterException; the default
 *   CPU architecture is X86_64.
 *
 * Timing: by default (`stepwise`) a task moves on by DescribeTasks calls (tests drive time
 * by describing); `instant` and `realistic` move by the fake's clock (`advanceTime()`
 * moves it on), with each status lasting what ECS shows (`realistic`, scaled by
 * `timeScale`) or nothing (`instant`).
 *
 * Session secrets live in its Secrets Manager fake (`secrets`), which lets each task read
 * only the secret granted to it.
 */
/** `neverListed`: DescribeTasks answers MISSING for it (ECS's eventual consistency, forever). */
export type TaskBehaviour = 'normal' | 'stopDuringStart' | 'noAddress' | 'unhealthy' | 'neverListed'

/** How long each status lasts in the timed profiles (ms, before `timeScale`): provisioning and an image pull as ECS shows them. */
export const REALISTIC_STATUS_MS = {
  PROVISIONING: 15_000,
  PENDING: 25_000,
  ACTIVATING: 5_000,
  /** After StopTask, before ECS moves on from RUNNING. */
  STOP_REQUESTED: 5_000,
  DEACTIVATING: 5_000,
  /** Without a container process (stub agents): how long the container takes to stop. */
  STOPPING: 2_000,
  DEPROVISIONING: 10_000,
} as const
export type StatusTimes = Record<keyof typeof REALISTIC_STATUS_MS, number>

interface FakeTask {
  arn: string
  /** The RunTask request that started it, as the SDK serialised it. */
  runTaskInput: Record<string, any>
  cluster: string
  startedBy?: string
  taskDefinition: string
  /** The first provider of RunTask's capacity provider strategy (FARGATE when none). */
  capacityProvider: string
  tags: Array<{ key: string; value: string }>
  env: Record<string, string>
  behaviour: TaskBehaviour
  describes: number
  ip: string
  eniId: string
  lastStatus: string
  desiredStatus: string
  /** The fake's clock at RunTask and at the stop request (timed profiles). */
  startedAt: number
  stopRequestedAt?: number
  /** It was RUNNING when told to stop (so it stays RUNNING a while before moving on). */
  stoppedWhileRunning?: boolean
  /** When its container exited (timed profiles: DEPROVISIONING counts from it). */
  exitedAt?: number
  /** Stepwise: DescribeTasks calls left while a stopped task still shows RUNNING. */
  stopLagLeft?: number
  stopCode?: string
  stoppedReason?: string
  exitCode?: number
  /** DescribeTasks calls left before an agent-less stopping task is STOPPED (EcsFakeOptions.stopDescribes). */
  stopDescribesLeft?: number
  /** Its agent has had SIGTERM. */
  signalled?: boolean
  agent?: ChildProcess
  /** With `stubAgents`: the session secret its stand-in agent read. */
  secretRead?: SessionSecretDocument
  /** With `stubAgents`: the server answering for it at its address. */
  stub?: Server
  dataDir?: string
}

export interface EcsFakeOptions {
  cluster?: string
  /** Run the real session agent for each task (needs snapshotRoot for file:// snapshots). */
  runAgents?: boolean
  /**
   * Instead, answer at each task's address as an agent whose Chroma is ready (heartbeat,
   * healthcheck, confirm, status; the task's tokens required), without a process: for
   * tests with hundreds of tasks that need them READY, not serving data.
   */
  stubAgents?: boolean
  /** Stub agents: how long a warm one (WARM=1) stays `restoring` after its assignment, in ms (not scaled). Default 0. */
  stubRestoreMs?: number
  snapshotRoot?: string
  /** More environment for every agent: what a task role and VPC endpoints give a real task (S3_ENDPOINT and credentials for s3rver). */
  agentEnv?: Record<string, string>
  /** RunTask calls per second beyond which the fake answers ThrottlingException (after `runTaskBurst`). */
  runTaskRate?: number
  runTaskBurst?: number
  /** What exists, for preflight: task definitions by family:revision, subnets, security groups. */
  taskDefinitions?: Record<string, { containerName: string; containerPort: number | 'chroma' }>
  subnets?: string[]
  securityGroups?: string[]
  /** How long a stopping container gets between SIGTERM and SIGKILL (ECS's stopTimeout). Default 30 s. */
  stopTimeoutMs?: number
  /**
   * How many DescribeTasks calls a stop takes for a task without an agent (DEACTIVATING,
   * STOPPING, then STOPPED), as ECS takes a while to deprovision. Default 0: STOPPED at once.
   */
  stopDescribes?: number
  /** The task definitions' runtimePlatform.cpuArchitecture (default X86_64, as deployed). */
  cpuArchitecture?: 'X86_64' | 'ARM64'
  /** false: tasks lack the `ecs.cpu-architecture` attribute ECS reports, so only their task definition says. */
  architectureAttribute?: boolean
  /** How statuses move on (see the class comment). Default `stepwise`. */
  timing?: 'stepwise' | 'instant' | 'realistic'
  /** `realistic` durations are multiplied by this (e.g. 0.01 for a test, 1 for a benchmark). Default 1. */
  timeScale?: number
  /** Stepwise: how many DescribeTasks calls a stopped task still shows RUNNING with desiredStatus STOPPED. Default 1. */
  stopLagDescribes?: number
}

/** The n-th loopback address (127.0.0.2, …, 127.0.1.1, …): Linux routes all of 127/8 to lo. */
function loopbackAddress(n: number): string {
  // Skip the .0 and .255 of every /24 so that no address looks like a network or broadcast one.
  const index = Math.floor(n / 254) * 256 + (n % 254) + 1
  return `127.${(index >> 16) & 255}.${(index >> 8) & 255}.${index & 255}`
}

export class EcsFake {
  readonly calls = new Map<string, number>()
  readonly tasks = new Map<string, FakeTask>()
  readonly runTaskTimes: number[] = []
  /** DescribeTasks calls that asked for tags (the orphan sweep's; the reconciler's do not), among calls.get('DescribeTasks'). */
  taggedDescribes = 0
  readonly cluster: string
  port = 0
  chromaPort = 0
  private server!: Server
  /** clientTokens by cluster and token, with when they were first used (the fake's clock). */
  private readonly tokens = new Map<string, { params: string; arn: string | null; failure?: string; at: number }>()
  /** Tasks placed per provider by weight so far, per strategy: weights hold across single-task RunTasks. */
  private readonly placedByWeight = new Map<string, Map<string, number>>()
  private timeOffsetMs = 0
  private ec2Throttled = 0
  private capacityFailuresThrown = false
  secrets!: SecretsManagerFake
  private readonly behaviours: TaskBehaviour[] = []
  /** DescribeTasks calls left to answer ThrottlingException, by a task they ask for (throttleDescribesOf). */
  private readonly describesThrottledFor = new Map<string, number>()
  /** Requests left to answer ThrottlingException, for every action (key '*') or one. */
  private readonly throttled = new Map<string, number>()
  private repliesToLose = 0
  /** Tasks ListTasks leaves out for this many more calls (ECS's eventual consistency). */
  private readonly unlisted = new Map<string, number>()
  private capacityFailuresRemaining = 0
  private nextIp = 1
  private bucket: { tokens: number; at: number }

  constructor(private readonly opts: EcsFakeOptions = {}) {
    this.cluster = opts.cluster ?? 'sessions'
    this.bucket = { tokens: opts.runTaskBurst ?? Infinity, at: Date.now() }
  }

  static async start(opts: EcsFakeOptions = {}): Promise<EcsFake> {
    const fake = new EcsFake(opts)
    fake.chromaPort = await freeLoopbackPort()
    fake.secrets = await SecretsManagerFake.start()
    fake.server = createServer((req, res) => {
      void fake.handle(req).then(
        ({ status, body, type }) => {
          if (fake.repliesToLose > 0 && req.headers['x-amz-target']?.toString().endsWith('.RunTask')) {
            fake.repliesToLose--
            res.socket?.destroy() // done, but the caller never hears of it
            return
          }
          res.writeHead(status, { 'content-type': type })
          res.end(body)
        },
        (err: Error) => {
          res.writeHead(500, { 'content-type': 'application/x-amz-json-1.1' })
          res.end(JSON.stringify({ __type: 'ServerException', message: err.message }))
        },
      )
    })
    await new Promise<void>((resolve) => fake.server.listen(0, '127.0.0.1', resolve))
    fake.port = (fake.server.address() as { port: number }).port
    return fake
  }

  get endpoint() {
    return `http://127.0.0.1:${this.port}`
  }

  /** FargateLauncher settings for this fake's cluster, as the tests deploy it (no launch throttling). */
  launcherSettings(over: Partial<FargateSettings> = {}): FargateSettings {
    return {
      cluster: this.cluster,
      taskDefinition: 'chroma-session:3',
      containerName: 'chroma-session',
      subnets: ['subnet-a'],
      securityGroups: ['sg-sessions'],
      assignPublicIp: false,
      capacityProviders: parseCapacityProviders('FARGATE'),
      chromaPort: this.chromaPort,
      startedBy: 'chroma-lease-test',
      launchRate: 1000,
      launchBurst: 1000,
      ...over,
    }
  }

  /** The environment a control plane process (`npm start`) needs to launch sessions into this fake: what the benches start replicas with. */
  controlPlaneEnv(): Record<string, string> {
    return {
      LAUNCHER: 'fargate',
      ECS_ENDPOINT: this.endpoint,
      EC2_ENDPOINT: this.endpoint,
      SECRETS_MANAGER_ENDPOINT: this.secrets.endpoint,
      SESSION_TASK_ROLE_ID: this.secrets.taskRoleId,
      ECS_CLUSTER: this.cluster,
      ECS_TASK_DEFINITION: 'chroma-session:3',
      ECS_SUBNETS: 'subnet-a',
      ECS_SECURITY_GROUPS: 'sg-sessions',
      ECS_CHROMA_PORT: String(this.chromaPort),
      AWS_REGION: 'us-east-1',
      AWS_ACCESS_KEY_ID: 'bench',
      AWS_SECRET_ACCESS_KEY: 'bench',
    }
  }

  /** Real SDK clients pointed at the fake (EC2 through either of the launcher's ways), and the session secret store on its Secrets Manager fake. */
  clients(ec2: 'in-process' | 'one-shot' = 'in-process'): { ecs: ECSClient; ec2: Ec2Calls; secrets: SessionSecretStore } {
    const common = { endpoint: this.endpoint, region: 'us-east-1', credentials: { accessKeyId: 'test', secretAccessKey: 'test' } }
    return {
      ecs: new ECSClient({ ...common, maxAttempts: 3 }),
      ec2: ec2 === 'one-shot' ? oneShotEc2(common) : inProcessEc2(common),
      secrets: new SessionSecretStore(this.secrets.client(), { prefix: 'chroma-lease/sessions', taskRoleId: this.secrets.taskRoleId }),
    }
  }

  /** The fake's clock: real time plus what advanceTime() added (client tokens expire on it; timed profiles move on it). */
  now(): number {
    return Date.now() + this.timeOffsetMs
  }

  advanceTime(ms: number) {
    this.timeOffsetMs += ms
  }

  /** The next `n` EC2 requests answer RequestLimitExceeded (EC2's throttling). */
  throttleEc2(n: number) {
    this.ec2Throttled = n
  }

  /** The next tasks RunTask starts behave like this, in order. */
  nextTasks(...behaviours: TaskBehaviour[]) {
    this.behaviours.push(...behaviours)
  }

  /** The next `n` requests of any action, or of `action` only, answer ThrottlingException. */
  throttle(n: number, action = '*') {
    this.throttled.set(action, n)
  }

  /** The next `n` DescribeTasks calls that ask for this task answer ThrottlingException, whatever else they ask for (a fault for one batch of many, in whatever order they go). */
  throttleDescribesOf(arn: string, n: number) {
    this.describesThrottledFor.set(arn, n)
  }

  /** The next `n` RunTask calls do their work but their replies are lost (the connection drops). */
  loseRunTaskReplies(n: number) {
    this.repliesToLose = n
  }

  /** The next `n` ListTasks calls leave the task out, as ListTasks may right after RunTask. */
  notListedFor(arn: string, n: number) {
    this.unlisted.set(arn, n)
  }

  /** The next `n` RunTask calls start nothing and report a capacity failure: in `failures` (default), or thrown as an error, as ECS does both. */
  capacityFailures(n: number, how: 'failures' | 'thrown' = 'failures') {
    this.capacityFailuresRemaining = n
    this.capacityFailuresThrown = how === 'thrown'
  }

  /**
   * What Fargate Spot does on an interruption: the task is marked for stopping
   * (stopCode SpotInterruption) and its container gets SIGTERM, then SIGKILL.
   */
  interrupt(arn: string) {
    const task = this.tasks.get(arn)
    if (!task) throw new Error(`no task ${arn}`)
    this.stopTask(task, 'SpotInterruption', 'Your Spot Task was interrupted.')
  }

  /**
   * ECS stopping a task on its own account (an infrastructure problem, a stop code
   * introduced after this code was written). A task without an agent exits with `exitCode`.
   */
  stopAs(arn: string, stopCode: string, reason: string, exitCode?: number) {
    const task = this.tasks.get(arn)
    if (!task) throw new Error(`no task ${arn}`)
    this.stopTask(task, stopCode, reason, exitCode)
  }

  count(action: string) {
    return this.calls.get(action) ?? 0
  }

  resetCounts() {
    this.calls.clear()
    this.taggedDescribes = 0
  }

  async close() {
    for (const task of this.tasks.values()) this.kill(task, 'SIGKILL')
    await Promise.all([...this.tasks.values()].map((t) => t.stub && new Promise((resolve) => t.stub!.close(resolve))))
    await new Promise((resolve) => this.server.close(resolve))
    await this.secrets.close()
    await Promise.all([...this.tasks.values()].map((t) => (t.dataDir ? rm(t.dataDir, { recursive: true, force: true }) : undefined)))
  }

  private async handle(req: IncomingMessage): Promise<{ status: number; body: string; type: string }> {
    let raw = ''
    for await (const chunk of req) raw += chunk
    const target = req.headers['x-amz-target']
    if (typeof target !== 'string') return this.ec2(new URLSearchParams(raw))
    const action = target.split('.').pop()!
    this.calls.set(action, this.count(action) + 1)
    const json = (status: number, body: unknown) => ({ status, body: JSON.stringify(body), type: 'application/x-amz-json-1.1' })
    const error = (type: string, message: string) => json(400, { __type: type, message })
    for (const key of [action, '*']) {
      const left = this.throttled.get(key) ?? 0
      if (left === 0) continue
      this.throttled.set(key, left - 1)
      return error('ThrottlingException', 'Rate exceeded')
    }
    const input = JSON.parse(raw || '{}')
    if (action === 'DescribeTasks') {
      const arn = (input.tasks as string[] | undefined)?.find((a) => (this.describesThrottledFor.get(a) ?? 0) > 0)
      if (arn) {
        this.describesThrottledFor.set(arn, this.describesThrottledFor.get(arn)! - 1)
        return error('ThrottlingException', 'Rate exceeded')
      }
    }
    if (action === 'DescribeTasks' && input.include?.includes('TAGS')) this.taggedDescribes++
    if (input.cluster && input.cluster !== this.cluster) return error('ClusterNotFoundException', 'Cluster not found.')
    switch (action) {
      case 'RunTask':
        return this.runTask(input, json, error)
      case 'DescribeTasks':
        if ((input.tasks ?? []).length > 100) return error('InvalidParameterException', 'Tasks cannot be longer than 100.')
        return json(200, this.describeTasks(input))
      case 'StopTask': {
        const task = this.tasks.get(input.task)
        if (!task) return error('InvalidParameterException', 'The referenced task was not found.')
        this.stopTask(task, 'UserInitiated', input.reason ?? 'Task stopped by user')
        return json(200, { task: this.view(task, false) })
      }
      case 'DescribeClusters':
        return json(200, input.clusters?.[0] === this.cluster
          ? { clusters: [{ clusterArn: `arn:aws:ecs:us-east-1:123456789012:cluster/${this.cluster}`, clusterName: this.cluster, status: 'ACTIVE' }], failures: [] }
          : { clusters: [], failures: [{ arn: input.clusters?.[0], reason: 'MISSING' }] })
      case 'DescribeTaskDefinition': {
        const name = String(input.taskDefinition).replace(/^arn:aws:ecs:[^:]+:\d+:task-definition\//, '')
        const td = (this.opts.taskDefinitions ?? { 'chroma-session:3': { containerName: 'chroma-session', containerPort: 'chroma' } })[name]
        if (!td) return error('ClientException', 'Unable to describe task definition.')
        return json(200, {
          taskDefinition: {
            taskDefinitionArn: `arn:aws:ecs:us-east-1:123456789012:task-definition/${name}`,
            requiresCompatibilities: ['FARGATE'],
            cpu: '1024',
            memory: '2048',
            runtimePlatform: { cpuArchitecture: this.opts.cpuArchitecture ?? 'X86_64', operatingSystemFamily: 'LINUX' },
            containerDefinitions: [{ name: td.containerName, portMappings: [{ containerPort: td.containerPort === 'chroma' ? this.chromaPort : td.containerPort }] }],
          },
        })
      }
      case 'ListTasks': {
        const matching = [...this.tasks.values()].filter(
          (t) => (!input.startedBy || t.startedBy === input.startedBy) && (input.desiredStatus ?? 'RUNNING') === t.desiredStatus && !this.unlisted.get(t.arn),
        )
        // One fewer call to miss for every lagging task (on the first page only: one call each).
        if (!input.nextToken) for (const [arn, n] of this.unlisted) this.unlisted.set(arn, Math.max(0, n - 1))
        const from = Number(input.nextToken ?? 0)
        const size = input.maxResults ?? 100
        const page = matching.slice(from, from + size)
        return json(200, { taskArns: page.map((t) => t.arn), ...(from + size < matching.length ? { nextToken: String(from + size) } : {}) })
      }
      default:
        return error('InvalidParameterException', `the fake does not implement ${action}`)
    }
  }

  private runTask(input: any, json: (s: number, b: unknown) => any, error: (t: string, m: string) => any) {
    this.runTaskTimes.push(Date.now())
    if (this.opts.runTaskRate) {
      const now = Date.now()
      this.bucket.tokens = Math.min(this.opts.runTaskBurst ?? 1, this.bucket.tokens + ((now - this.bucket.at) / 1000) * this.opts.runTaskRate)
      this.bucket.at = now
      if (this.bucket.tokens < 1) return error('ThrottlingException', 'Rate exceeded')
      this.bucket.tokens -= 1
    }
    if (typeof input.clientToken === 'string' && input.clientToken.length > 64) return error('InvalidParameterException', 'clientToken is longer than 64 characters')
    if (input.launchType && input.capacityProviderStrategy) return error('InvalidParameterException', 'Specifying both a launch type and capacity provider strategy is not supported.')
    const { clientToken, ...params } = input
    const paramsHash = createHash('sha256').update(JSON.stringify(params)).digest('hex')
    // Tokens are per cluster and forgotten after 24 hours (ECS: "up to 24 hours").
    const tokenKey = `${this.cluster}|${clientToken}`
    const remembered = clientToken ? this.tokens.get(tokenKey) : undefined
    const seen = remembered && this.now() - remembered.at < 24 * 3600_000 ? remembered : undefined
    if (seen) {
      if (seen.params !== paramsHash) return json(400, { __type: 'ConflictException', message: 'The specified client token has already been used in another request.', resourceIds: seen.arn ? [seen.arn] : [] })
      return json(200, seen.arn ? { tasks: [this.view(this.tasks.get(seen.arn)!, false)], failures: [] } : { tasks: [], failures: [{ reason: seen.failure }] })
    }
    if (this.capacityFailuresRemaining > 0) {
      this.capacityFailuresRemaining--
      const failure = 'Capacity is unavailable at this time. Please try again later or in a different availability zone'
      if (this.capacityFailuresThrown) return json(500, { __type: 'ServerException', message: `Fargate ${failure}` })
      if (clientToken) this.tokens.set(tokenKey, { params: paramsHash, arn: null, failure, at: this.now() })
      return json(200, { tasks: [], failures: [{ reason: failure }] })
    }
    const id = randomUUID().replaceAll('-', '')
    const container = input.overrides?.containerOverrides?.[0]
    const task: FakeTask = {
      arn: `arn:aws:ecs:us-east-1:123456789012:task/${this.cluster}/${id}`,
      runTaskInput: input,
      cluster: this.cluster,
      startedBy: input.startedBy,
      taskDefinition: input.taskDefinition,
      capacityProvider: this.place(input.capacityProviderStrategy),
      tags: input.tags ?? [],
      env: Object.fromEntries((container?.environment ?? []).map((e: { name: string; value: string }) => [e.name, e.value])),
      behaviour: this.behaviours.shift() ?? 'normal',
      describes: 0,
      ip: loopbackAddress(this.nextIp++),
      eniId: `eni-${id.slice(0, 17)}`,
      lastStatus: 'PROVISIONING',
      desiredStatus: 'RUNNING',
      startedAt: this.now(),
    }
    this.tasks.set(task.arn, task)
    if (clientToken) this.tokens.set(tokenKey, { params: paramsHash, arn: task.arn, at: this.now() })
    if (this.opts.runAgents && task.behaviour !== 'stopDuringStart') void this.startAgent(task)
    if (this.opts.stubAgents && task.behaviour !== 'stopDuringStart') this.startStubAgent(task)
    return json(200, { tasks: [this.view(task, false)], failures: [] })
  }

  /**
   * Where one task of a RunTask goes: a provider's base is filled first (per RunTask call,
   * as ECS does for standalone tasks), then the weights share the rest; this fake
   * launches one task per call, so a base on any provider takes every task.
   */
  private place(strategy: Array<{ capacityProvider: string; weight?: number; base?: number }> | undefined): string {
    if (!strategy?.length) return 'FARGATE'
    const based = strategy.find((p) => (p.base ?? 0) > 0)
    if (based) return based.capacityProvider
    const key = JSON.stringify(strategy)
    const placed = this.placedByWeight.get(key) ?? new Map<string, number>()
    this.placedByWeight.set(key, placed)
    const weighted = strategy.filter((p) => (p.weight ?? 0) > 0)
    // The provider furthest below its share so far.
    const next = weighted.reduce((best, p) => ((placed.get(p.capacityProvider) ?? 0) / p.weight! < (placed.get(best.capacityProvider) ?? 0) / best.weight! ? p : best))
    placed.set(next.capacityProvider, (placed.get(next.capacityProvider) ?? 0) + 1)
    return next.capacityProvider
  }

  private describeTasks(input: { tasks: string[]; include?: string[] }) {
    const tasks = []
    const failures = []
    for (const arn of input.tasks) {
      const task = this.tasks.get(arn)
      if (!task || task.behaviour === 'neverListed') {
        failures.push({ arn, reason: 'MISSING' })
        continue
      }
      this.advance(task)
      tasks.push(this.view(task, input.include?.includes('TAGS') ?? false))
    }
    return { tasks, failures }
  }

  /** Stepwise: PROVISIONING on the first look, then RUNNING (or what the behaviour says); a stop moves on one step per look. */
  private advance(task: FakeTask) {
    task.describes++
    if (this.opts.timing === 'instant' || this.opts.timing === 'realistic') return this.advanceTimed(task)
    if (task.desiredStatus === 'STOPPED' && task.lastStatus !== 'STOPPED') return this.advanceStop(task)
    if (task.lastStatus !== 'PROVISIONING' || task.describes < 2) return
    if (task.behaviour === 'stopDuringStart') {
      this.stopTask(task, 'TaskFailedToStart', 'CannotPullContainerError: pull image manifest has been retried 5 time(s): not found')
      return
    }
    task.lastStatus = 'RUNNING'
  }

  /** Status durations of the timed profiles (ms, scaled). */
  private statusTimes(): StatusTimes {
    const scale = this.opts.timing === 'realistic' ? (this.opts.timeScale ?? 1) : 0
    return Object.fromEntries(Object.entries(REALISTIC_STATUS_MS).map(([k, v]) => [k, v * scale])) as StatusTimes
  }

  /** Timed profiles: where the task is now, from when it started, was told to stop, and its container exited. */
  private advanceTimed(task: FakeTask): void {
    if (task.lastStatus === 'STOPPED') return
    const d = this.statusTimes()
    const now = this.now()
    if (task.desiredStatus !== 'STOPPED') {
      let elapsed = now - task.startedAt
      for (const status of ['PROVISIONING', 'PENDING', 'ACTIVATING'] as const) {
        if (elapsed < d[status]) return void (task.lastStatus = status)
        elapsed -= d[status]
      }
      if (task.behaviour === 'stopDuringStart') {
        this.stopTask(task, 'TaskFailedToStart', 'CannotPullContainerError: pull image manifest has been retried 5 time(s): not found')
        return this.advanceTimed(task)
      }
      task.lastStatus = 'RUNNING'
      return
    }
    const wasRunning = task.stoppedWhileRunning ?? false
    let elapsed = now - task.stopRequestedAt!
    if (wasRunning && elapsed < d.STOP_REQUESTED) return // still RUNNING, desiredStatus STOPPED
    elapsed -= wasRunning ? d.STOP_REQUESTED : 0
    if (task.exitedAt === undefined) {
      if (elapsed < d.DEACTIVATING) return void (task.lastStatus = 'DEACTIVATING')
      task.lastStatus = 'STOPPING'
      if (task.agent) {
        if (!task.signalled) {
          task.signalled = true
          this.kill(task, 'SIGTERM')
          setTimeout(() => this.kill(task, 'SIGKILL'), this.opts.stopTimeoutMs ?? 30_000).unref()
        }
        return // STOPPING until the container exits (its exit handler records exitedAt)
      }
      if (elapsed - d.DEACTIVATING < d.STOPPING) return
      task.exitedAt = task.stopRequestedAt! + (wasRunning ? d.STOP_REQUESTED : 0) + d.DEACTIVATING + d.STOPPING
      task.stub?.close()
    }
    task.lastStatus = now - task.exitedAt < d.DEPROVISIONING ? 'DEPROVISIONING' : 'STOPPED'
  }

  private view(task: FakeTask, withTags: boolean) {
    const running = task.lastStatus === 'RUNNING'
    // The essential container's health, which ECS reports as the task's too.
    const containerHealth = running && task.behaviour === 'unhealthy' ? 'UNHEALTHY' : running ? 'HEALTHY' : 'UNKNOWN'
    const details = [{ name: 'networkInterfaceId', value: task.eniId }]
    if (task.behaviour !== 'noAddress') details.push({ name: 'privateIPv4Address', value: task.ip })
    return {
      taskArn: task.arn,
      clusterArn: `arn:aws:ecs:us-east-1:123456789012:cluster/${task.cluster}`,
      lastStatus: task.lastStatus,
      desiredStatus: task.desiredStatus,
      taskDefinitionArn: `arn:aws:ecs:us-east-1:123456789012:task-definition/${task.taskDefinition}`,
      cpu: '1024',
      memory: '2048',
      capacityProviderName: task.capacityProvider,
      launchType: 'FARGATE',
      ...(this.opts.architectureAttribute === false ? {} : { attributes: [{ name: 'ecs.cpu-architecture', value: (this.opts.cpuArchitecture ?? 'X86_64').toLowerCase() }] }),
      startedBy: task.startedBy,
      healthStatus: containerHealth,
      // What RunTask was given, as ECS returns it to anyone allowed to DescribeTasks.
      overrides: task.runTaskInput.overrides ?? { containerOverrides: [] },
      stopCode: task.stopCode,
      stoppedReason: task.stoppedReason,
      attachments: task.lastStatus === 'PROVISIONING' ? [] : [{ type: 'ElasticNetworkInterface', status: 'ATTACHED', details }],
      containers: [{ name: 'chroma-session', lastStatus: task.lastStatus, exitCode: task.exitCode, healthStatus: containerHealth }],
      ...(withTags ? { tags: task.tags } : {}),
    }
  }

  private stopTask(task: FakeTask, stopCode: string, reason: string, exitCode?: number) {
    if (task.desiredStatus === 'STOPPED') return
    task.desiredStatus = 'STOPPED'
    task.stopCode = stopCode
    task.stoppedReason = reason
    task.stopRequestedAt = this.now()
    task.stoppedWhileRunning = task.lastStatus === 'RUNNING'
    if (this.opts.timing === 'instant' || this.opts.timing === 'realistic') {
      if (exitCode !== undefined) task.exitCode = exitCode
      if (task.lastStatus !== 'RUNNING' && !task.agent) task.exitedAt = this.now() // never started a container
      return
    }
    // ECS shows a stopped task RUNNING (desiredStatus STOPPED) for a while before it moves on.
    if (task.lastStatus === 'RUNNING' && stopCode !== 'EssentialContainerExited' && (this.opts.stopLagDescribes ?? 1) > 0) {
      task.stopLagLeft = this.opts.stopLagDescribes ?? 1
      if (exitCode !== undefined) task.exitCode = exitCode
      return
    }
    this.leaveRunning(task, exitCode)
  }

  /** Stepwise: from RUNNING (or never running) towards STOPPED. */
  private leaveRunning(task: FakeTask, exitCode?: number) {
    if (task.agent && task.agent.exitCode === null && task.agent.signalCode === null) {
      // The container gets SIGTERM when ECS moves on from DEACTIVATING: here, at the next look.
      task.lastStatus = 'DEACTIVATING'
      return
    }
    if (exitCode !== undefined) task.exitCode = exitCode
    task.stub?.close()
    task.stopDescribesLeft = this.opts.stopDescribes ?? 0
    task.lastStatus = task.stopDescribesLeft > 0 ? 'DEACTIVATING' : 'STOPPED'
  }

  /** A stopping task's next step: SIGTERM to its agent (the task is STOPPED once it has exited), or one step nearer STOPPED. */
  private advanceStop(task: FakeTask) {
    if (task.stopLagLeft !== undefined) {
      if (task.stopLagLeft > 0) return void task.stopLagLeft-- // still RUNNING at this look
      task.stopLagLeft = undefined
      return this.leaveRunning(task, task.exitCode)
    }
    if (task.agent) {
      if (task.signalled) return
      task.signalled = true
      this.kill(task, 'SIGTERM')
      setTimeout(() => this.kill(task, 'SIGKILL'), this.opts.stopTimeoutMs ?? 30_000).unref()
      return
    }
    task.stopDescribesLeft = (task.stopDescribesLeft ?? 1) - 1
    task.lastStatus = task.stopDescribesLeft > 0 ? 'STOPPING' : 'STOPPED'
  }

  private kill(task: FakeTask, signal: NodeJS.Signals) {
    const pid = task.agent?.pid
    if (pid && task.agent!.exitCode === null) {
      try {
        process.kill(-pid, signal)
      } catch {
        // already gone
      }
    }
  }

  private async startAgent(task: FakeTask) {
    task.dataDir = await mkdtemp(join(tmpdir(), 'ecs-fake-task-'))
    if (task.desiredStatus === 'STOPPED') return // stopped before its container started
    const child = spawn(process.execPath, ['--import', 'tsx', projectPath('container', 'agent', 'main.ts')], {
      detached: true,
      stdio: 'ignore',
      env: {
        PATH: process.env.PATH,
        AWS_ACCESS_KEY_ID: 'task',
        AWS_SECRET_ACCESS_KEY: 'task',
        ...task.env,
        CHROMA_HOST: task.ip,
        CHROMA_PORT: String(this.chromaPort),
        CHROMA_DATA_DIR: join(task.dataDir, 'data'),
        ...(this.opts.snapshotRoot ? { SNAPSHOT_ROOT: this.opts.snapshotRoot } : {}),
        ...this.opts.agentEnv,
        // The task role's identity (ECS gives a real task its credentials the same way, out of band).
        ...this.secrets.taskCredentialEnv(task.arn.split('/').pop()!),
        SESSION_SECRET_WAIT_SECONDS: '30',
      },
    })
    task.agent = child
    child.on('exit', (code, signal) => {
      // A container killed by a signal reports 128 + its number, as Docker does.
      task.exitCode = code ?? (signal === 'SIGKILL' ? 137 : 143)
      task.exitedAt = this.now()
      if (task.desiredStatus !== 'STOPPED') this.stopTask(task, 'EssentialContainerExited', 'Essential container in task exited')
      // Timed profiles deprovision for a while; stepwise goes to STOPPED at once.
      if (this.opts.timing !== 'instant' && this.opts.timing !== 'realistic') task.lastStatus = 'STOPPED'
    })
  }

  private startStubAgent(task: FakeTask) {
    // WARM=1 (a warm pool agent): phase `warm` until POST /_agent/assign, then `restoring`
    // for `stubRestoreMs`, then `ready`; Chroma's endpoints answer 503 until then, as the
    // real agent's front does while it has no Chroma (container/agent/main.ts).
    let phase: 'warm' | 'restoring' | 'ready' = task.env.WARM === '1' ? 'warm' : 'ready'
    let assigned: string | null = null
    task.stub = createServer((req, res) => {
      const send = (status: number, body: unknown) => {
        res.writeHead(status, { 'content-type': 'application/json' })
        res.end(JSON.stringify(body))
      }
      // The tokens an agent reads from its session secret at start.
      const secret = this.secrets.valueOf(task.env.SESSION_SECRET_ID ?? '')
      task.secretRead ??= secret ? (JSON.parse(secret) as SessionSecretDocument) : undefined
      const token = req.headers['x-chroma-token']
      const control = token === task.secretRead?.controlToken
      if (!control && (!task.secretRead || token !== task.secretRead.sessionToken)) return send(401, { code: 'session_token_required' })
      const status = () => ({ phase, pid: 0, at: new Date().toISOString(), ...(assigned ? { restored: assigned } : {}) })
      if (req.url === '/_agent/assign' && req.method === 'POST' && control) return void this.stubAssign(req, task, assigned, (snapshot) => {
        if (assigned === null) {
          assigned = snapshot
          phase = 'restoring'
          setTimeout(() => (phase = 'ready'), this.opts.stubRestoreMs ?? 0).unref()
        }
        return status()
      }, send)
      if (req.url === '/_agent/status') return send(200, status())
      if (req.url === '/_agent/confirm' && control) return send(200, status())
      if (phase !== 'ready') return send(503, { code: 'session_unavailable' })
      if (req.url === '/api/v2/heartbeat') return send(200, { 'nanosecond heartbeat': Date.now() * 1e6 })
      if (req.url === '/api/v2/healthcheck') return send(200, { is_executor_ready: true })
      send(404, { error: 'NotFound' })
    })
    task.stub.listen(this.chromaPort, task.ip)
  }

  /** A stub agent's POST /_agent/assign: once (the same snapshot again is answered as before, another one 409); only a WARM=1 agent takes one. */
  private stubAssign(req: IncomingMessage, task: FakeTask, assigned: string | null, accept: (snapshot: string) => unknown, send: (status: number, body: unknown) => void) {
    let body = ''
    req.on('data', (c: Buffer) => (body += c))
    req.on('end', () => {
      let snapshot: unknown
      try {
        snapshot = (JSON.parse(body || '{}') as { snapshot?: unknown }).snapshot
      } catch {
        return send(400, { code: 'invalid_json' })
      }
      if (typeof snapshot !== 'string' || !snapshot) return send(400, { code: 'invalid_assignment' })
      if (task.env.WARM !== '1') return send(409, { code: 'already_assigned' })
      if (assigned !== null && assigned !== snapshot) return send(409, { code: 'already_assigned' })
      send(200, accept(snapshot))
    })
  }

  /** EC2's query protocol, for DescribeNetworkInterfaces (public addresses). */
  private ec2(params: URLSearchParams) {
    const action = params.get('Action') ?? ''
    this.calls.set(action, this.count(action) + 1)
    if (this.ec2Throttled > 0) {
      this.ec2Throttled--
      return { status: 503, type: 'text/xml', body: `<Response><Errors><Error><Code>RequestLimitExceeded</Code><Message>Request limit exceeded.</Message></Error></Errors><RequestID>fake</RequestID></Response>` }
    }
    const xml = (body: string) => ({ status: 200, type: 'text/xml', body: `<${action}Response xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">${body}</${action}Response>` })
    const notFound = (code: string, message: string) => ({
      status: 400,
      type: 'text/xml',
      body: `<Response><Errors><Error><Code>${code}</Code><Message>${message}</Message></Error></Errors><RequestID>fake</RequestID></Response>`,
    })
    const listed = (prefix: string) => [...params.entries()].filter(([k]) => k.startsWith(prefix)).map(([, v]) => v)
    if (action === 'DescribeSubnets') {
      const known = this.opts.subnets ?? ['subnet-a', 'subnet-b']
      const missing = listed('SubnetId.').filter((id) => !known.includes(id))
      if (missing.length) return notFound('InvalidSubnetID.NotFound', `The subnet ID '${missing.join("', '")}' does not exist`)
      return xml(`<subnetSet>${listed('SubnetId.').map((id) => `<item><subnetId>${id}</subnetId><vpcId>vpc-fake</vpcId></item>`).join('')}</subnetSet>`)
    }
    if (action === 'DescribeSecurityGroups') {
      const known = this.opts.securityGroups ?? ['sg-sessions']
      const missing = listed('GroupId.').filter((id) => !known.includes(id))
      if (missing.length) return notFound('InvalidGroup.NotFound', `The security group '${missing.join("', '")}' does not exist`)
      return xml(`<securityGroupInfo>${listed('GroupId.').map((id) => `<item><groupId>${id}</groupId><groupName>${id}-name</groupName></item>`).join('')}</securityGroupInfo>`)
    }
    if (action !== 'DescribeNetworkInterfaces') return notFound('InvalidAction', `the fake does not implement ${action}`)
    // What EC2 enforces: a listed ENI id that does not exist fails the whole call; a filter
    // just leaves it out, takes at most 200 values, and pages with MaxResults.
    const listedIds = listed('NetworkInterfaceId.')
    const filterName = params.get('Filter.1.Name')
    const filterIds = listed('Filter.1.Value.')
    if (listedIds.length && params.has('MaxResults')) return notFound('InvalidParameterCombination', 'The parameter NetworkInterfaceIds cannot be used with the parameter MaxResults')
    if (filterIds.length > 200) return notFound('FilterLimitExceeded', 'The maximum number of filter values specified on a single call is 200')
    if (filterName && filterName !== 'network-interface-id') return notFound('InvalidParameterValue', `the fake does not filter on ${filterName}`)
    const existing = new Map([...this.tasks.values()].filter((t) => t.lastStatus !== 'STOPPED').map((t) => [t.eniId, t]))
    const missing = listedIds.filter((id) => !existing.has(id))
    if (missing.length) return notFound('InvalidNetworkInterfaceID.NotFound', `The networkInterface ID '${missing.join("', '")}' does not exist`)
    const found = [...new Set([...listedIds, ...filterIds])].flatMap((id) => existing.get(id) ?? [])
    const from = Number(params.get('NextToken') ?? 0)
    const size = Number(params.get('MaxResults') ?? found.length)
    const page = found.slice(from, from + size)
    const next = from + size < found.length ? `<nextToken>${from + size}</nextToken>` : ''
    const items = page.map((t) => `<item><networkInterfaceId>${t.eniId}</networkInterfaceId><association><publicIp>${t.ip}</publicIp></association></item>`).join('')
    return xml(`<networkInterfaceSet>${items}</networkInterfaceSet>${next}`)
  }
}
