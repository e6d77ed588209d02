import { createHash } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import {
  DescribeClustersCommand,
  DescribeTaskDefinitionCommand,
  DescribeTasksCommand,
  ListTasksCommand,
  RunTaskCommand,
  StopTaskCommand,
  type CapacityProviderStrategyItem,
  type ConflictException,
  type ECSClient,
  type RunTaskCommandInput,
  type RunTaskCommandOutput,
  type Task,
} from '@aws-sdk/client-ecs'
import type { Logger } from 'pino'
import { systemClock, type Clock } from '../clock.ts'
import { LaunchDeferred, type ComputeSize, type LaunchSpec, type LaunchTarget, type Launcher, type ObservedCompute, type PreflightCheck, type RunningCompute } from './launcher.ts'
import { TokenBucket, type RateLimiter } from './token-bucket.ts'
import type { Ec2Calls } from './ec2-calls.ts'
import type { SessionSecretStore } from './session-secrets.ts'

export interface FargateSettings {
  cluster: string
  taskDefinition: string
  containerName: string
  subnets: string[]
  securityGroups: string[]
  assignPublicIp: boolean
  /** e.g. [{ capacityProvider: 'FARGATE_SPOT', weight: 3 }, { capacityProvider: 'FARGATE', weight: 1, base: 1 }] */
  capacityProviders: CapacityProviderStrategyItem[]
  /** The port the session image serves Chroma on (its task definition's containerPort). */
  chromaPort: number
  /** Marks this control plane's tasks; ListTasks filters on it (at most 36 characters). */
  startedBy: string
  /** RunTask calls per second, and how many may go at once (ECS: about 20/s; Fargate launches: a burst of 100, then 20/s). */
  launchRate: number
  launchBurst: number
}

export interface FargateLauncherDeps {
  ecs: ECSClient
  /** Subnets and security groups for the preflight, ENIs for public IPs; see ec2-calls.ts for why not an EC2Client. */
  ec2: Ec2Calls
  /** Where each launch attempt's tokens go (Secrets Manager): the task gets the secret's name only. */
  secrets: SessionSecretStore
  settings: FargateSettings
  logger?: Logger
  /** Waits between RunTask retries after capacity failures (real time: ECS's capacity comes back in real time); tests pass one that records. */
  wait?: (ms: number) => Promise<void>
  /** Jitter for those waits, in [0, 1); default Math.random. */
  random?: () => number
  /** The control plane's clock (launch claims are stamped with it); default the system clock. */
  clock?: Clock
  /** Spaces RunTask calls: one bucket all replicas share in production; default one of this process (launchRate, launchBurst). */
  limiter?: RateLimiter
}

/** RunTask replies with `failures` (capacity, ENI limits) are retried this many times, then the launch fails. */
const CAPACITY_ATTEMPTS = 4
/**
 * ECS's API is eventually consistent: DescribeTasks right after RunTask may answer
 * MISSING for the new task. A launch claimed this recently is still starting; after
 * that, MISSING means gone. Read from the session's launch claim, so any replica agrees.
 */
const UNLISTED_GRACE_MS = 30_000
/** ECS accepts at most 100 tasks per DescribeTasks call. */
const DESCRIBE_BATCH = 100
/**
 * DescribeTasks calls in flight at once: at thousands of tasks a pass makes dozens, and one
 * after another their round trips alone would outlast the pass interval. As many calls as
 * before, in bursts of this many (ECS's read bucket holds far more; the SDK retries a throttle).
 */
const DESCRIBE_CONCURRENCY = 5
/** EC2 accepts at most 200 filter values per call (FilterLimitExceeded beyond). */
const FILTER_VALUES_PER_CALL = 200
/** lastStatus of a task whose container has exited: nothing left to reach. */
const GONE_STATUSES = new Set(['STOPPED', 'DELETED'])
/** Marks StopTask reasons as ours, so a stop by anyone else (Spot, an operator) is told apart. */
const STOP_REASON_PREFIX = 'chroma-lease: '
/** Throttling that outlasts the SDK's own retries defers the launch to a later pass instead of failing it. */
const THROTTLED = new Set(['ThrottlingException', 'TooManyRequestsException', 'RequestLimitExceeded'])
/** A RunTask error that is a lack of capacity rather than a fault (ECS: "Capacity is unavailable at this time…"). */
const CAPACITY_FAILURE = /capacity is unavailable|insufficient capacity/i
/** The task attribute in which ECS reports a Fargate task's CPU architecture (x86_64, arm64). */
const ARCHITECTURE_ATTRIBUTE = 'ecs.cpu-architecture'

type Architecture = ComputeSize['architecture']

/**
 * Sessions as ECS Fargate tasks. Idempotent per launch attempt through RunTask's
 * clientToken, observed in batches (one DescribeTasks per 100 sessions), and never
 * relying on memory: tags on each task name its session and generation, so any
 * replica, or this one after a crash, finds every task it started.
 */
export class FargateLauncher implements Launcher {
  readonly kind = 'fargate' as const
  private readonly bucket: RateLimiter
  private readonly wait: (ms: number) => Promise<void>
  private readonly random: () => number
  /**
   * CPU architectures of task definitions by ARN, for tasks that do not report theirs:
   * asked once per task definition for the life of the process, never once per pass.
   */
  private readonly taskDefinitionArchitectures = new Map<string, Promise<Architecture>>()

  constructor(private readonly deps: FargateLauncherDeps) {
    this.bucket = deps.limiter ?? new TokenBucket(deps.settings.launchRate, deps.settings.launchBurst)
    this.wait = deps.wait ?? ((ms) => sleep(ms))
    this.random = deps.random ?? Math.random
  }

  async launch(spec: LaunchSpec): Promise<{ ref: string }> {
    const secretId = await this.aws('writing the session secret', () => this.deps.secrets.write(spec))
    const { ref } = await this.runTasks(spec, secretId)
    // The task may read its secret once it is named the reader; a replay (a later pass,
    // the same clientTokens) gets the same task back and grants it again.
    await this.aws('granting the session secret to its task', () => this.deps.secrets.grant(secretId, ref))
    return { ref }
  }

  /** An AWS call whose failure defers the launch to a later pass rather than failing the session (a replay repeats it). */
  private async aws<T>(what: string, call: () => Promise<T>): Promise<T> {
    try {
      return await call()
    } catch (err) {
      const status = (err as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode
      if (THROTTLED.has((err as Error).name) || status === undefined || status >= 500) {
        throw new LaunchDeferred(`${what}: ${(err as Error).name}: ${(err as Error).message}; launching on a later pass`)
      }
      throw err
    }
  }

  private async runTasks(spec: LaunchSpec, secretId: string): Promise<{ ref: string }> {
    const { settings } = this.deps
    let lastFailure = ''
    for (let attempt = 0; attempt < CAPACITY_ATTEMPTS; attempt++) {
      if (attempt > 0) await this.wait(runTaskRetryDelayMs(attempt, this.random()))
      const input = this.runTaskInput(spec, attempt, secretId)
      let reply = await this.runTask(input)
      if (typeof reply === 'object' && 'conflict' in reply) {
        // ECS names the task the token already started (resourceIds): that is this launch's,
        // whatever the configuration is now. Adopted before any lookup by tags.
        if (reply.resourceIds[0]) {
          this.deps.logger?.info({ sessionId: spec.sessionId, generation: spec.generation, taskArn: reply.resourceIds[0], attempt }, 'RunTask token already used; adopted the task ECS named')
          return { ref: reply.resourceIds[0] }
        }
        // The token was first used with other parameters: the configuration changed (a
        // deploy) between a launch whose answer was lost and this replay. That first call
        // may have started a task; if it did, it is this launch's.
        //
        // Not listed does not prove not started (ListTasks is eventually consistent), but
        // this path does not defer on that account: a replay reaches it at the earliest
        // one orphaned-claim wait (15 s) after the claim, long after ListTasks normally
        // shows a task, and should a task still be missed, the orphan sweep stops the
        // duplicate (the session records one launch_ref; cause `duplicate`) within one
        // sweep. Deferring instead would delay every such launch for a rare double bill.
        const started = await this.taskStartedFor(spec)
        if (started) {
          this.deps.logger?.info({ sessionId: spec.sessionId, generation: spec.generation, taskArn: started, attempt }, 'RunTask token reused with a new configuration; adopted the task it started')
          return { ref: started }
        }
        reply = await this.runTask({ ...input, clientToken: FargateLauncher.clientToken(spec.sessionId, spec.generation, attempt, configurationFingerprint(input)) })
        if (typeof reply === 'object' && 'conflict' in reply && reply.resourceIds[0]) return { ref: reply.resourceIds[0] }
        if ('conflict' in reply) throw new Error(`ECS RunTask answered ConflictException for the token of this configuration too (session ${spec.sessionId}, generation ${spec.generation})`)
      }
      const task = reply.tasks?.[0]
      if (task?.taskArn) {
        this.deps.logger?.info({ sessionId: spec.sessionId, generation: spec.generation, taskArn: task.taskArn, attempt }, 'fargate task started')
        return { ref: task.taskArn }
      }
      lastFailure = (reply.failures ?? []).map((f) => [f.reason, f.detail].filter(Boolean).join(': ')).join('; ') || 'RunTask started no task'
      this.deps.logger?.warn({ sessionId: spec.sessionId, attempt, failure: lastFailure }, 'RunTask failed; retrying')
    }
    throw new Error(`ECS could not start the task after ${CAPACITY_ATTEMPTS} attempts: ${lastFailure} (cluster ${settings.cluster})`)
  }

  /**
   * One RunTask under the rate limit: its reply; `conflict` when the token was used before
   * with other parameters, with the task it started when ECS names it (resourceIds); or
   * LaunchDeferred when there is no usable answer.
   */
  private async runTask(input: RunTaskCommandInput): Promise<RunTaskCommandOutput | { conflict: true; resourceIds: string[] }> {
    // The shared bucket lives in Postgres: while it cannot be reached, launches wait rather than fail.
    await this.bucket.take().catch((err: Error) => {
      throw new LaunchDeferred(`the RunTask rate limit cannot be read (${err.message}); launching on a later pass`)
    })
    try {
      return await this.deps.ecs.send(new RunTaskCommand(input))
    } catch (err) {
      const name = (err as Error).name
      if (THROTTLED.has(name)) throw new LaunchDeferred(`ECS is throttling RunTask: ${(err as Error).message}`)
      if (name === 'ConflictException') return { conflict: true, resourceIds: (err as ConflictException).resourceIds ?? [] }
      // ECS reports a lack of capacity in `failures` or as a thrown error: either way it is retried like one.
      if (CAPACITY_FAILURE.test((err as Error).message)) return { tasks: [], failures: [{ reason: (err as Error).message }], $metadata: {} }
      // No reply (the connection broke) or a server error, after the SDK's own retries:
      // the task may have started. A later pass replays the same clientTokens, which
      // returns that task if there is one, rather than failing the session and leaving
      // the task to the orphan sweep.
      const status = (err as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode
      if (status === undefined || status >= 500) {
        throw new LaunchDeferred(`ECS RunTask got no usable answer (${name}: ${(err as Error).message}); retrying with the same clientToken`)
      }
      throw err
    }
  }

  /**
   * A task this control plane started for the launch attempt and that has not been told
   * to stop, found by its tags (as the orphan sweep finds them). When ECS does not answer
   * (throttling, an outage), the launch is deferred rather than failed: a later pass
   * replays the same tokens, gets ConflictException again and looks again.
   */
  private async taskStartedFor(spec: LaunchSpec): Promise<string | undefined> {
    let running: RunningCompute[]
    try {
      running = await this.listRunning()
    } catch (err) {
      throw new LaunchDeferred(`ECS RunTask answered ConflictException and the task it may have started cannot be looked up (${(err as Error).name}: ${(err as Error).message}); launching on a later pass`)
    }
    return running.find((r) => r.sessionId === spec.sessionId && r.generation === spec.generation)?.ref
  }

  /**
   * Each retry of a launch attempt gets its own token, derived from (session, generation,
   * attempt): a retry after a crash replays the same sequence, so ECS answers every
   * step as before, while a retry after a capacity failure asks anew instead of
   * replaying the failure. A replay under a changed configuration (ConflictException)
   * that finds no task to adopt asks under the token of its configuration, which a
   * further replay with that configuration repeats. At most 63 characters (ECS: 64).
   */
  static clientToken(sessionId: string, generation: number, attempt: number, configuration?: string): string {
    return `cl-${sessionId}-g${generation}-a${attempt}${configuration ? `-${configuration}` : ''}`
  }

  private runTaskInput(spec: LaunchSpec, attempt: number, secretId: string): RunTaskCommandInput {
    const s = this.deps.settings
    // The agent's settings (container/agent/config.ts); the image sets its port and data
    // directory. No secret: the tokens are in the session secret, which the task reads
    // with its role (DescribeTasks shows these overrides to anyone allowed to call it).
    const environment = [
      { name: 'SESSION_ID', value: spec.sessionId },
      { name: 'SESSION_GENERATION', value: String(spec.generation) },
      spec.warm ? { name: 'WARM', value: '1' } : { name: 'SNAPSHOT_URI', value: spec.snapshot },
      { name: 'SESSION_SECRET_ID', value: secretId },
      ...(spec.collection !== null ? [{ name: 'COLLECTION', value: spec.collection }] : []),
      ...(spec.deadManSeconds !== undefined ? [{ name: 'DEAD_MAN_SECONDS', value: String(spec.deadManSeconds) }] : []),
      ...(spec.saveOnStop ? [{ name: 'SAVE_ON_STOP', value: '1' }] : []),
    ]
    return {
      cluster: s.cluster,
      taskDefinition: s.taskDefinition,
      count: 1,
      clientToken: FargateLauncher.clientToken(spec.sessionId, spec.generation, attempt),
      startedBy: s.startedBy,
      capacityProviderStrategy: s.capacityProviders,
      networkConfiguration: {
        awsvpcConfiguration: { subnets: s.subnets, securityGroups: s.securityGroups, assignPublicIp: s.assignPublicIp ? ('ENABLED' as const) : ('DISABLED' as const) },
      },
      overrides: { containerOverrides: [{ name: s.containerName, environment }] },
      tags: [
        { key: 'chroma-lease:session', value: spec.sessionId },
        { key: 'chroma-lease:generation', value: String(spec.generation) },
      ],
      propagateTags: 'TASK_DEFINITION' as const,
      enableECSManagedTags: true,
    }
  }

  /** The cluster, task definition (with the container and its Chroma port), subnets and security groups: each problem named. */
  async preflight(): Promise<PreflightCheck[]> {
    const s = this.deps.settings
    const check = async (name: string, run: () => Promise<string>): Promise<PreflightCheck> => {
      try {
        return { name, ok: true, detail: await run() }
      } catch (err) {
        return { name, ok: false, detail: (err as Error).message }
      }
    }
    return Promise.all([
      check('cluster', async () => {
        const reply = await this.deps.ecs.send(new DescribeClustersCommand({ clusters: [s.cluster] }))
        const cluster = reply.clusters?.[0]
        if (!cluster) throw new Error(`ECS cluster ${s.cluster} does not exist (${reply.failures?.[0]?.reason ?? 'not found'})`)
        if (cluster.status !== 'ACTIVE') throw new Error(`ECS cluster ${s.cluster} is ${cluster.status}`)
        return `ECS cluster ${cluster.clusterArn} is ACTIVE`
      }),
      check('task definition', async () => {
        const { taskDefinition: td } = await this.deps.ecs.send(new DescribeTaskDefinitionCommand({ taskDefinition: s.taskDefinition }))
        const container = td?.containerDefinitions?.find((c) => c.name === s.containerName)
        if (!container) throw new Error(`task definition ${s.taskDefinition} has no container named ${s.containerName} (ECS_CONTAINER_NAME)`)
        if (!container.portMappings?.some((p) => p.containerPort === s.chromaPort)) {
          throw new Error(`container ${s.containerName} of ${s.taskDefinition} does not expose port ${s.chromaPort} (ECS_CHROMA_PORT)`)
        }
        if (!td?.requiresCompatibilities?.includes('FARGATE')) throw new Error(`task definition ${s.taskDefinition} is not compatible with FARGATE`)
        return `${td.taskDefinitionArn}: ${s.containerName} on port ${s.chromaPort}, ${td.cpu} CPU units, ${td.memory} MiB, ${td.runtimePlatform?.cpuArchitecture ?? 'X86_64'}`
      }),
      check('subnets', async () => {
        if (s.subnets.length === 0) throw new Error('no subnets configured (ECS_SUBNETS)')
        const reply = await this.deps.ec2.call('DescribeSubnets', { SubnetIds: s.subnets })
        return `${reply.Subnets?.length ?? 0} subnets in ${[...new Set(reply.Subnets?.map((x) => x.VpcId))].join(', ')}`
      }),
      check('security groups', async () => {
        if (s.securityGroups.length === 0) return 'none configured: the VPC default security group applies'
        const reply = await this.deps.ec2.call('DescribeSecurityGroups', { GroupIds: s.securityGroups })
        return `${reply.SecurityGroups?.length ?? 0} security groups: ${reply.SecurityGroups?.map((g) => g.GroupName).join(', ')}`
      }),
    ])
  }

  /**
   * Targets whose DescribeTasks batch (or, with public IPs, whose DescribeNetworkInterfaces)
   * failed after the SDK's retries are left out of the answer: unknown this pass, rather
   * than taken for stopped or failing the whole pass.
   */
  async describe(targets: LaunchTarget[]): Promise<Map<string, ObservedCompute>> {
    const unanswered = new Set<string>()
    const tasks = new Map<string, Task>()
    await inBatches(targets.map((t) => t.ref), async (batch) => {
      try {
        for (const task of await this.describeBatch(batch)) tasks.set(task.taskArn!, task)
      } catch (err) {
        this.deps.logger?.warn({ err, tasks: batch.length }, 'DescribeTasks failed; these sessions are looked at again next pass')
        for (const ref of batch) unanswered.add(ref)
      }
    })
    let publicIps = new Map<string, string>()
    if (this.deps.settings.assignPublicIp) {
      try {
        publicIps = await this.publicIps([...tasks.values()])
      } catch (err) {
        // Without its address a live task cannot be told from one that has none yet.
        this.deps.logger?.warn({ err }, 'DescribeNetworkInterfaces failed; running sessions are looked at again next pass')
        for (const task of tasks.values()) if (!GONE_STATUSES.has(task.lastStatus ?? '')) unanswered.add(task.taskArn!)
      }
    }
    const architectures = await this.architectures([...tasks.values()])
    const now = (this.deps.clock ?? systemClock).now().getTime()
    return new Map(
      targets
        .filter((t) => !unanswered.has(t.ref))
        .map((t): [string, ObservedCompute] => {
          const unlisted = !tasks.has(t.ref) && t.launchedAt !== undefined && now - t.launchedAt.getTime() < UNLISTED_GRACE_MS
          return [t.ref, unlisted ? { state: 'starting', detail: 'launched; ECS does not list the task yet' } : this.observe(tasks.get(t.ref), publicIps, architectures)]
        }),
    )
  }

  private observe(task: Task | undefined, publicIps: Map<string, string>, architectures: Map<string, Architecture>): ObservedCompute {
    if (!task) return { state: 'stopped', reason: 'ECS does not know the task (it stopped long ago, or never ran)' }
    const status = task.lastStatus ?? 'UNKNOWN'
    // STOPPED means gone: ECS reports it once the container has exited.
    if (GONE_STATUSES.has(status)) {
      const exitCode = task.containers?.find((c) => c.name === this.deps.settings.containerName)?.exitCode
      return { state: 'stopped', reason: stopReason(task), ...(stoppedCleanly(task, exitCode) ? { clean: true } : {}) }
    }
    const eni = networkInterface(task)
    const host = this.deps.settings.assignPublicIp ? (eni.id ? publicIps.get(eni.id) : undefined) : eni.privateIp
    if (task.desiredStatus === 'STOPPED' || ['DEACTIVATING', 'STOPPING', 'DEPROVISIONING'].includes(status)) {
      // On its way out, its container told to stop (SIGTERM, then SIGKILL after stopTimeout).
      // A stop we did not ask for (a Spot interruption, someone else's StopTask) is news:
      // the reconciler drains the session so no new lease attaches while it saves and exits.
      const ours = stoppedByUs(task)
      const detail = `ECS ${status}, stopping (${task.stopCode ?? 'no stopCode yet'})`
      const stopUnderway = task.desiredStatus === 'STOPPED'
      if (!ours && host && status !== 'DEPROVISIONING') return { state: 'running', host, port: this.deps.settings.chromaPort, detail, stopping: true, stopUnderway, size: sizeOf(task, architectures) }
      return { state: 'starting', detail, stopUnderway }
    }
    // ECS keeps an UNHEALTHY task running when RunTask started it (no service replaces
    // it), so the control plane treats it as gone: the reconciler fails and stops it.
    const unhealthy = task.healthStatus === 'UNHEALTHY' || task.containers?.some((c) => c.name === this.deps.settings.containerName && c.healthStatus === 'UNHEALTHY')
    if (unhealthy) return { state: 'stopped', reason: 'the session container is UNHEALTHY (its Chroma healthcheck fails)' }
    // PROVISIONING, PENDING, ACTIVATING: not addressable yet.
    if (status !== 'RUNNING') return { state: 'starting', detail: `ECS ${status}` }
    if (!host) return { state: 'starting', detail: 'RUNNING, waiting for the task to get an address' }
    // The agent answers (and takes the dead man's switch confirmation) before Chroma is ready.
    return { state: 'running', host, port: this.deps.settings.chromaPort, detail: 'ECS RUNNING', size: sizeOf(task, architectures) }
  }

  /**
   * The CPU architecture of each running task, by task ARN. ECS reports it as a task
   * attribute; a task without it takes its task definition's (DescribeTaskDefinition,
   * once per task definition: see taskDefinitionArchitectures). Unknown: null.
   */
  private async architectures(tasks: Task[]): Promise<Map<string, Architecture>> {
    const result = new Map<string, Architecture>()
    await Promise.all(
      tasks
        .filter((task) => task.lastStatus === 'RUNNING' && task.taskArn)
        .map(async (task) => {
          const reported = task.attributes?.find((a) => a.name === ARCHITECTURE_ATTRIBUTE)?.value
          result.set(task.taskArn!, reported ? architecture(reported) : await this.taskDefinitionArchitecture(task.taskDefinitionArn ?? this.deps.settings.taskDefinition))
        }),
    )
    return result
  }

  private taskDefinitionArchitecture(taskDefinition: string): Promise<Architecture> {
    let known = this.taskDefinitionArchitectures.get(taskDefinition)
    if (!known) {
      known = this.deps.ecs.send(new DescribeTaskDefinitionCommand({ taskDefinition })).then(
        // ECS runs a task definition without a runtimePlatform on X86_64.
        ({ taskDefinition: td }) => architecture(td?.runtimePlatform?.cpuArchitecture ?? 'X86_64'),
        (err: Error) => {
          // Remembered as unknown, not retried: a cost priced as x86 beats an extra call every pass.
          this.deps.logger?.warn({ err, taskDefinition }, 'cannot read the task definition\'s CPU architecture; its sessions are priced as x86')
          return null
        },
      )
      this.taskDefinitionArchitectures.set(taskDefinition, known)
    }
    return known
  }

  /** DescribeTasks in batches of 100: one call per sweep for up to 100 sessions. */
  private async describeTasks(arns: string[], include?: Array<'TAGS'>): Promise<Map<string, Task>> {
    const tasks = new Map<string, Task>()
    await inBatches(arns, async (batch) => {
      for (const task of await this.describeBatch(batch, include)) tasks.set(task.taskArn!, task)
    })
    return tasks
  }

  private async describeBatch(arns: string[], include?: Array<'TAGS'>): Promise<Task[]> {
    const reply = await this.deps.ecs.send(new DescribeTasksCommand({ cluster: this.deps.settings.cluster, tasks: arns, include }))
    return (reply.tasks ?? []).filter((task) => task.taskArn)
  }

  /**
   * Public addresses (ECS_ASSIGN_PUBLIC_IP) are only on the ENI: DescribeNetworkInterfaces
   * for every task that has one, stopping ones included (a Spot notice must still find
   * the session to drain it). A filter rather than NetworkInterfaceIds: an ENI deleted
   * while its task deprovisions would fail the whole call (InvalidNetworkInterfaceID.NotFound),
   * where a filter leaves it out. One call per 200 tasks, EC2's limit on filter values.
   */
  private async publicIps(tasks: Task[]): Promise<Map<string, string>> {
    const ids = tasks.filter((t) => !GONE_STATUSES.has(t.lastStatus ?? '')).flatMap((t) => networkInterface(t).id ?? [])
    const publicIps = new Map<string, string>()
    for (let i = 0; i < ids.length; i += FILTER_VALUES_PER_CALL) {
      let nextToken: string | undefined
      do {
        const reply = await this.deps.ec2.call('DescribeNetworkInterfaces', {
          Filters: [{ Name: 'network-interface-id', Values: ids.slice(i, i + FILTER_VALUES_PER_CALL) }],
          MaxResults: 1000,
          NextToken: nextToken,
        })
        for (const n of reply.NetworkInterfaces ?? []) if (n.NetworkInterfaceId && n.Association?.PublicIp) publicIps.set(n.NetworkInterfaceId, n.Association.PublicIp)
        nextToken = reply.NextToken
      } while (nextToken)
    }
    return publicIps
  }

  async stop(target: LaunchTarget, reason: string): Promise<void> {
    try {
      await this.deps.ecs.send(new StopTaskCommand({ cluster: this.deps.settings.cluster, task: target.ref, reason: `${STOP_REASON_PREFIX}${reason}`.slice(0, 255) }))
    } catch (err) {
      // Stopping a task ECS no longer knows is done already.
      if (!((err as Error).name === 'InvalidParameterException' && /not found|does not exist/i.test((err as Error).message))) throw err
    }
    // Its agent read the secret at start; a duplicate's stop leaves alone a secret granted to another task.
    await this.deps.secrets.deleteUnlessGrantedElsewhere(target.sessionId, target.generation, target.ref)
  }

  /** Session secrets that exist, for the orphan sweeper (it deletes those of sessions no longer live). */
  listSecrets(): Promise<Array<{ sessionId: string; generation: number }>> {
    return this.deps.secrets.list()
  }

  deleteSecret(sessionId: string, generation: number): Promise<void> {
    return this.deps.secrets.delete(sessionId, generation)
  }

  /** This control plane's tasks (ListTasks by startedBy), with the session and generation from their tags. */
  async listRunning(): Promise<RunningCompute[]> {
    const arns: string[] = []
    let nextToken: string | undefined
    do {
      const page = await this.deps.ecs.send(
        new ListTasksCommand({ cluster: this.deps.settings.cluster, startedBy: this.deps.settings.startedBy, desiredStatus: 'RUNNING', nextToken, maxResults: 100 }),
      )
      arns.push(...(page.taskArns ?? []))
      nextToken = page.nextToken
    } while (nextToken)
    if (arns.length === 0) return []
    const tasks = await this.describeTasks(arns, ['TAGS'])
    const running: RunningCompute[] = []
    for (const task of tasks.values()) {
      const tag = (key: string) => task.tags?.find((t) => t.key === key)?.value
      const sessionId = tag('chroma-lease:session')
      const generation = Number(tag('chroma-lease:generation'))
      // A task without our tags has no session to belong to: the sweeper stops it as an orphan.
      running.push({ ref: task.taskArn!, sessionId: sessionId ?? '00000000-0000-0000-0000-000000000000', generation: Number.isInteger(generation) ? generation : 0 })
    }
    return running
  }
}

/** Runs `call` on each DESCRIBE_BATCH of `refs`, DESCRIBE_CONCURRENCY at a time; rejects with the first failure, after the calls in flight settle. */
async function inBatches(refs: string[], call: (batch: string[]) => Promise<void>): Promise<void> {
  const batches: string[][] = []
  for (let i = 0; i < refs.length; i += DESCRIBE_BATCH) batches.push(refs.slice(i, i + DESCRIBE_BATCH))
  let failure: unknown
  const worker = async () => {
    for (let batch = batches.shift(); batch && failure === undefined; batch = batches.shift()) await call(batch).catch((err: unknown) => (failure ??= err))
  }
  await Promise.all(Array.from({ length: Math.min(DESCRIBE_CONCURRENCY, batches.length) }, worker))
  if (failure !== undefined) throw failure
}

/**
 * How long to wait before RunTask attempt `attempt` (1, 2, …) after capacity failures:
 * exponential from 2 s, at most 30 s, with jitter (half to all of it, from `random` in
 * [0, 1)) so that a herd that failed together does not retry together.
 */
export function runTaskRetryDelayMs(attempt: number, random: number): number {
  return Math.round(Math.min(30_000, 1000 * 2 ** attempt) * (0.5 + random / 2))
}

/** A short digest of a RunTask request without its token: equal for equal configurations. */
function configurationFingerprint(input: RunTaskCommandInput): string {
  const { clientToken: _token, ...configuration } = input
  return createHash('sha256').update(JSON.stringify(configuration)).digest('hex').slice(0, 8)
}

/** The task's size as ECS reports it (cpu and memory are strings of CPU units and MiB); none when it does not. */
function sizeOf(task: Task, architectures: Map<string, Architecture>): ComputeSize | undefined {
  const cpuUnits = Number(task.cpu)
  const memoryMiB = Number(task.memory)
  if (!(cpuUnits > 0) || !(memoryMiB > 0)) return undefined
  return { cpuUnits, memoryMiB, architecture: architectures.get(task.taskArn ?? '') ?? null, capacityProvider: task.capacityProviderName ?? null }
}

/** x86_64 or arm64, from ECS's spellings (X86_64 / ARM64 in task definitions, lower case in task attributes). */
function architecture(value: string): Architecture {
  const v = value.toLowerCase()
  return v === 'arm64' || v === 'x86_64' ? v : null
}

function networkInterface(task: Task): { id?: string; privateIp?: string } {
  const eni = task.attachments?.find((a) => a.type === 'ElasticNetworkInterface')
  const detail = (name: string) => eni?.details?.find((d) => d.name === name)?.value
  return { id: detail('networkInterfaceId'), privateIp: detail('privateIPv4Address') }
}

/** Our StopTask reasons carry STOP_REASON_PREFIX (ECS sets stoppedReason to the reason given). */
function stoppedByUs(task: Task): boolean {
  return task.stoppedReason?.startsWith(STOP_REASON_PREFIX) ?? false
}

/**
 * Whether a stopped task ended as intended rather than failed, from ECS's stop code
 * (docs/dependencies.md lists them): our own StopTask; a Spot interruption or termination
 * notice (the session was drained and the agent had its stopTimeout to save, so it was
 * not lost); and a container that exited 0 on its own (the agent's dead man's switch, a
 * save on release) or after someone else's StopTask. A task that failed to start, a
 * non-zero exit, InfrastructureHealth, and any code not listed here (new ones appear)
 * are failures: an unknown reason is never taken for a clean one.
 */
function stoppedCleanly(task: Task, exitCode: number | undefined): boolean {
  switch (task.stopCode) {
    case 'UserInitiated':
      return stoppedByUs(task) || exitCode === 0
    case 'SpotInterruption':
    case 'TerminationNotice':
      return true
    case 'EssentialContainerExited':
    case 'ServiceSchedulerInitiated':
      return exitCode === 0
    default:
      return false
  }
}

/** Why a task stopped, for the session's error: stopCode (any value, known or new), reason, and the container's exit. */
function stopReason(task: Task): string {
  const container = task.containers?.find((c) => c.exitCode !== undefined || c.reason)
  const exit = container ? [container.exitCode !== undefined ? `exit code ${container.exitCode}` : '', container.reason ?? ''].filter(Boolean).join(', ') : ''
  const parts = [task.stopCode ?? task.lastStatus ?? 'STOPPED', task.stoppedReason, exit].filter(Boolean)
  return `task stopped: ${parts.join(': ')}`
}
