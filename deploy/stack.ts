import * as aws from '@pulumi/aws'
import * as pulumi from '@pulumi/pulumi'
import {
  controlPlaneTaskPolicy,
  ecrRepositoryArn,
  executionRolePolicy,
  sessionTaskPolicy,
  stateMachinePolicy,
  trustPolicy,
} from './policies.ts'
import { renderTemplateJson, TEMPLATE_NAMES, type TemplateName } from './stepfunctions/templates.ts'

/**
 * chroma-lease on AWS:
 *
 *   VPC (private subnets only, no internet route; S3 gateway endpoint and interface
 *   endpoints for ECR, ECS, CloudWatch Logs and Secrets Manager)
 *   ECS cluster (FARGATE + FARGATE_SPOT)
 *     control plane: ECS service behind an internal ALB (HTTPS, public DNS name and a
 *       publicly trusted certificate, as HTTP Tasks require)
 *     sessions: the task definition the control plane runs with ecs:RunTask
 *   Postgres: RDS, or an existing one by config
 *   EventBridge connection (API key header; private connectivity through a VPC
 *     Lattice resource gateway + resource configuration) and the Step Functions state
 *     machines, with a role that may call only the control plane
 *   CloudWatch alarms: a session task fails to start, query latency, memory
 */

export interface StackConfig {
  /** Prefix of every resource name. */
  prefix: string
  vpcCidr: string
  azCount: number
  /**
   * The control plane's public DNS name (it resolves to the internal load balancer's
   * private addresses). HTTP Tasks need a public name with a publicly trusted certificate.
   */
  domainName: string
  /** A public Route 53 zone for domainName: certificate validation and the alias record. */
  hostedZoneId?: string
  /** Bring a certificate instead of having one issued in hostedZoneId. */
  certificateArn?: string
  controlPlaneImage: string
  sessionImage: string
  /** An existing snapshot bucket; one is created when unset. */
  snapshotBucketName?: string
  /** An existing Postgres; an RDS instance is created when unset. */
  database?: {
    /** Secrets Manager secret whose value is the DATABASE_URL. */
    urlSecretArn: string
    /** The database's security group, to let the control plane in (when it is in this VPC). */
    securityGroupId?: string
  }
  /** Master password of the RDS instance created when `database` is unset. */
  databasePassword?: pulumi.Input<string>
  /** The client API key that the EventBridge connection sends as x-api-key. */
  clientApiKey: pulumi.Input<string>
  /** An operator API key for the control plane's operator routes. */
  operatorApiKey?: pulumi.Input<string>
  /** Let the workflow Lambdas' security group reach the sessions' Chroma port directly. */
  directAccess: boolean
  controlPlaneDesiredCount: number
  controlPlanePort: number
  session: {
    cpu: number
    memory: number
    capacityProvider: 'FARGATE' | 'FARGATE_SPOT'
    chromaPort: number
    containerName: string
  }
  alarms: {
    email?: string
    queryLatencyP95Seconds: number
    memoryPercent: number
  }
  /** WARM_POOL_MIN / WARM_POOL_MAX of the control plane (README "Warm pool"); max 0: no warm pool. */
  warmPool: { min: number; max: number }
}

export const defaults = {
  prefix: 'chroma-lease',
  vpcCidr: '10.42.0.0/16',
  azCount: 2,
  directAccess: false,
  controlPlaneDesiredCount: 2,
  controlPlanePort: 8080,
  session: { cpu: 1024, memory: 4096, capacityProvider: 'FARGATE_SPOT', chromaPort: 8000, containerName: 'chroma-session' },
  alarms: { queryLatencyP95Seconds: 2, memoryPercent: 85 },
  warmPool: { min: 0, max: 0 },
} satisfies Partial<StackConfig>

const HTTPS = 443
const POSTGRES = 5432

export function createStack(cfg: StackConfig) {
  const p = cfg.prefix
  const tags = { app: 'chroma-lease', stack: p }
  const partition = aws.getPartitionOutput().partition
  const region = aws.getRegionOutput().region
  const accountId = aws.getCallerIdentityOutput().accountId
  const azs = aws.getAvailabilityZonesOutput({ state: 'available' }).names

  // ---- network --------------------------------------------------------------------
  const vpc = new aws.ec2.Vpc(`${p}-vpc`, { cidrBlock: cfg.vpcCidr, enableDnsHostnames: true, enableDnsSupport: true, tags: { ...tags, Name: `${p}-vpc` } })
  const routeTable = new aws.ec2.RouteTable(`${p}-private`, { vpcId: vpc.id, tags: { ...tags, Name: `${p}-private` } })
  const subnets = Array.from({ length: cfg.azCount }, (_, i) => {
    const subnet = new aws.ec2.Subnet(`${p}-private-${i}`, {
      vpcId: vpc.id,
      cidrBlock: subnetCidr(cfg.vpcCidr, i),
      availabilityZone: azs.apply((names) => names[i % names.length]!),
      mapPublicIpOnLaunch: false,
      tags: { ...tags, Name: `${p}-private-${i}`, tier: 'private' },
    })
    new aws.ec2.RouteTableAssociation(`${p}-private-${i}`, { subnetId: subnet.id, routeTableId: routeTable.id })
    return subnet
  })
  const subnetIds = subnets.map((s) => s.id)
  const s3Endpoint = new aws.ec2.VpcEndpoint(`${p}-s3`, {
    vpcId: vpc.id,
    serviceName: pulumi.interpolate`com.amazonaws.${region}.s3`,
    vpcEndpointType: 'Gateway',
    routeTableIds: [routeTable.id],
    tags,
  })

  // ---- security groups: every rule names its peer group; nothing is open to a CIDR ----
  const sg = (name: string, description: string) =>
    new aws.ec2.SecurityGroup(`${p}-${name}`, { vpcId: vpc.id, description, revokeRulesOnDelete: true, tags: { ...tags, Name: `${p}-${name}` } })
  const albSg = sg('alb', 'chroma-lease internal load balancer')
  const controlPlaneSg = sg('control-plane', 'chroma-lease control plane tasks')
  const sessionSg = sg('sessions', 'chroma-lease session tasks (Chroma)')
  const lambdaSg = sg('workflow-lambdas', 'Workflow Lambdas and services that call chroma-lease')
  const gatewaySg = sg('resource-gateway', 'VPC Lattice resource gateway for Step Functions HTTP Tasks')
  const endpointSg = sg('endpoints', 'Interface VPC endpoints')
  const databaseSg = cfg.database ? undefined : sg('database', 'chroma-lease Postgres')

  const ingress = (name: string, to: aws.ec2.SecurityGroup | pulumi.Input<string>, from: aws.ec2.SecurityGroup, port: number, description: string) =>
    new aws.vpc.SecurityGroupIngressRule(`${p}-in-${name}`, {
      securityGroupId: to instanceof aws.ec2.SecurityGroup ? to.id : to,
      referencedSecurityGroupId: from.id,
      ipProtocol: 'tcp',
      fromPort: port,
      toPort: port,
      description,
    })
  const egress = (name: string, from: aws.ec2.SecurityGroup, to: aws.ec2.SecurityGroup, port: number, description: string) =>
    new aws.vpc.SecurityGroupEgressRule(`${p}-out-${name}`, {
      securityGroupId: from.id,
      referencedSecurityGroupId: to.id,
      ipProtocol: 'tcp',
      fromPort: port,
      toPort: port,
      description,
    })
  const egressS3 = (name: string, from: aws.ec2.SecurityGroup) =>
    new aws.vpc.SecurityGroupEgressRule(`${p}-out-${name}-s3`, {
      securityGroupId: from.id,
      prefixListId: s3Endpoint.prefixListId,
      ipProtocol: 'tcp',
      fromPort: HTTPS,
      toPort: HTTPS,
      description: 'S3 through the gateway endpoint',
    })

  // load balancer: HTTPS from the Lattice resource gateway (Step Functions) and the workflow Lambdas
  ingress('alb-from-gateway', albSg, gatewaySg, HTTPS, 'Step Functions HTTP Tasks through VPC Lattice')
  ingress('alb-from-lambdas', albSg, lambdaSg, HTTPS, 'workflow Lambdas')
  egress('gateway-to-alb', gatewaySg, albSg, HTTPS, 'to the control plane load balancer')
  egress('lambdas-to-alb', lambdaSg, albSg, HTTPS, 'to the control plane load balancer')
  egress('alb-to-control-plane', albSg, controlPlaneSg, cfg.controlPlanePort, 'to the control plane tasks')
  ingress('control-plane-from-alb', controlPlaneSg, albSg, cfg.controlPlanePort, 'from the load balancer only')
  // the Chroma port: from the control plane (its proxy), and from the Lambdas only with direct access
  ingress('sessions-from-control-plane', sessionSg, controlPlaneSg, cfg.session.chromaPort, 'Chroma, from the control plane proxy and health checks')
  egress('control-plane-to-sessions', controlPlaneSg, sessionSg, cfg.session.chromaPort, 'Chroma on the session tasks')
  if (cfg.directAccess) {
    ingress('sessions-from-lambdas', sessionSg, lambdaSg, cfg.session.chromaPort, 'Chroma, direct access from the workflow Lambdas')
    egress('lambdas-to-sessions', lambdaSg, sessionSg, cfg.session.chromaPort, 'Chroma on the session tasks (direct access)')
  }
  // AWS APIs: interface endpoints and the S3 gateway
  for (const [name, group] of [['control-plane', controlPlaneSg], ['sessions', sessionSg]] as const) {
    ingress(`endpoints-from-${name}`, endpointSg, group, HTTPS, `AWS APIs for ${name}`)
    egress(`${name}-to-endpoints`, group, endpointSg, HTTPS, 'AWS APIs through interface endpoints')
    egressS3(name, group)
  }
  // Postgres
  const dbSgId = databaseSg ? databaseSg.id : cfg.database?.securityGroupId
  if (dbSgId) {
    ingress('database-from-control-plane', dbSgId, controlPlaneSg, POSTGRES, 'Postgres from the control plane')
  }
  new aws.vpc.SecurityGroupEgressRule(`${p}-out-control-plane-to-database`, {
    securityGroupId: controlPlaneSg.id,
    ...(dbSgId ? { referencedSecurityGroupId: dbSgId } : { cidrIpv4: cfg.vpcCidr }),
    ipProtocol: 'tcp',
    fromPort: POSTGRES,
    toPort: POSTGRES,
    description: 'Postgres',
  })

  // ec2: the control plane's preflight describes subnets and security groups at start.
  const interfaceEndpoints = ['ec2', 'ecr.api', 'ecr.dkr', 'ecs', 'logs', 'secretsmanager'].map(
    (service) =>
      new aws.ec2.VpcEndpoint(`${p}-${service.replace('.', '-')}`, {
        vpcId: vpc.id,
        serviceName: pulumi.interpolate`com.amazonaws.${region}.${service}`,
        vpcEndpointType: 'Interface',
        privateDnsEnabled: true,
        subnetIds,
        securityGroupIds: [endpointSg.id],
        tags,
      }),
  )

  // ---- snapshot bucket --------------------------------------------------------------
  let snapshotBucketArn: pulumi.Output<string>
  let snapshotBucketName: pulumi.Output<string>
  if (cfg.snapshotBucketName) {
    snapshotBucketName = pulumi.output(cfg.snapshotBucketName)
    snapshotBucketArn = pulumi.interpolate`arn:${partition}:s3:::${cfg.snapshotBucketName}`
  } else {
    const bucket = new aws.s3.Bucket(`${p}-snapshots`, { forceDestroy: false, tags })
    new aws.s3.BucketPublicAccessBlock(`${p}-snapshots`, {
      bucket: bucket.id,
      blockPublicAcls: true,
      blockPublicPolicy: true,
      ignorePublicAcls: true,
      restrictPublicBuckets: true,
    })
    new aws.s3.BucketVersioning(`${p}-snapshots`, { bucket: bucket.id, versioningConfiguration: { status: 'Enabled' } })
    // A save-back cut short (SIGKILL, a lost task) leaves its multipart upload open: never
    // visible as an object, but its parts are billed until aborted.
    new aws.s3.BucketLifecycleConfiguration(`${p}-snapshots`, {
      bucket: bucket.id,
      rules: [{ id: 'abort-incomplete-multipart-uploads', status: 'Enabled', filter: {}, abortIncompleteMultipartUpload: { daysAfterInitiation: 1 } }],
    })
    snapshotBucketName = bucket.bucket
    snapshotBucketArn = bucket.arn
  }

  // ---- logs -------------------------------------------------------------------------
  const controlPlaneLogs = new aws.cloudwatch.LogGroup(`${p}-control-plane`, { name: `/ecs/${p}/control-plane`, retentionInDays: 30, tags })
  const sessionLogs = new aws.cloudwatch.LogGroup(`${p}-sessions`, { name: `/ecs/${p}/sessions`, retentionInDays: 14, tags })

  // ---- ECS clusters -----------------------------------------------------------------
  // Sessions have a cluster of their own: the control plane's ECS grants (StopTask,
  // DescribeTasks, TagResource) cover that cluster only, so it cannot stop its own service's tasks.
  const cluster = new aws.ecs.Cluster(`${p}-cluster`, { name: p, settings: [{ name: 'containerInsights', value: 'enabled' }], tags })
  const controlPlaneCluster = new aws.ecs.Cluster(`${p}-control-plane-cluster`, { name: `${p}-control-plane`, settings: [{ name: 'containerInsights', value: 'enabled' }], tags })
  new aws.ecs.ClusterCapacityProviders(`${p}-capacity`, {
    clusterName: cluster.name,
    capacityProviders: ['FARGATE', 'FARGATE_SPOT'],
    defaultCapacityProviderStrategies: [{ capacityProvider: 'FARGATE', weight: 1, base: 0 }],
  })

  // ---- the session task definition ---------------------------------------------------
  const sessionFamily = `${p}-session`
  const role = (name: string, service: string) =>
    new aws.iam.Role(`${p}-${name}`, { name: `${p}-${name}`, assumeRolePolicy: accountId.apply((a) => JSON.stringify(trustPolicy(service, a))), tags })
  const sessionExecutionRole = role('session-execution', 'ecs-tasks.amazonaws.com')
  const sessionTaskRole = role('session-task', 'ecs-tasks.amazonaws.com')
  new aws.iam.RolePolicy(`${p}-session-execution`, {
    role: sessionExecutionRole.id,
    policy: pulumi.all([sessionLogs.arn, partition]).apply(([logGroupArn, part]) =>
      JSON.stringify(executionRolePolicy({ logGroupArn, ecrRepositoryArns: [ecrRepositoryArn(cfg.sessionImage, part)].filter((x): x is string => !!x) })),
    ),
  })
  // Each session's tokens are in a secret of its own under this path (src/services/launchers/session-secrets.ts).
  const sessionSecretPrefix = `${p}/sessions`
  new aws.iam.RolePolicy(`${p}-session-task`, {
    role: sessionTaskRole.id,
    policy: pulumi
      .all([snapshotBucketArn, partition, region, accountId])
      .apply(([arn, part, reg, account]) => JSON.stringify(sessionTaskPolicy(arn, `arn:${part}:secretsmanager:${reg}:${account}:secret:${sessionSecretPrefix}/*`))),
  })
  const sessionTaskDefinition = new aws.ecs.TaskDefinition(`${p}-session`, {
    family: sessionFamily,
    requiresCompatibilities: ['FARGATE'],
    networkMode: 'awsvpc',
    cpu: String(cfg.session.cpu),
    memory: String(cfg.session.memory),
    runtimePlatform: { operatingSystemFamily: 'LINUX', cpuArchitecture: 'X86_64' },
    executionRoleArn: sessionExecutionRole.arn,
    taskRoleArn: sessionTaskRole.arn,
    ephemeralStorage: { sizeInGib: 50 },
    containerDefinitions: pulumi.all([sessionLogs.name, region]).apply(([logGroup, reg]) =>
      JSON.stringify([
        {
          name: cfg.session.containerName,
          image: cfg.sessionImage,
          essential: true,
          portMappings: [{ containerPort: cfg.session.chromaPort, protocol: 'tcp' }],
          // The session's identity, snapshot, tokens and dead man's switch come from the control
          // plane's RunTask overrides (src/services/launchers/fargate-launcher.ts).
          environment: [
            { name: 'CHROMA_HOST', value: '0.0.0.0' },
            // The agent restores into it and deletes it on exit (task ephemeral storage).
            { name: 'CHROMA_DATA_DIR', value: '/data/chroma' },
            { name: 'CHROMA_PORT', value: String(cfg.session.chromaPort) },
            { name: 'AWS_REGION', value: reg },
          ],
          // Time to save the snapshot on SIGTERM (Spot notices give two minutes); the agent
          // keeps its own stop inside it (STOP_TIMEOUT_SECONDS=110 in the image).
          stopTimeout: 120,
          // The image's HEALTHCHECK, which ECS does not read from the image. An UNHEALTHY
          // task is stopped and its session failed by the control plane (RunTask tasks are
          // not replaced by ECS). startPeriod is ECS's maximum; the check itself passes while
          // the agent is restoring or saving.
          healthCheck: { command: ['CMD', 'node', '/app/healthcheck.mjs'], interval: 15, timeout: 5, retries: 3, startPeriod: 300 },
          logConfiguration: { logDriver: 'awslogs', options: { 'awslogs-group': logGroup, 'awslogs-region': reg, 'awslogs-stream-prefix': 'session' } },
        },
      ]),
    ),
    tags,
  })

  // ---- Postgres ---------------------------------------------------------------------
  let databaseUrlSecretArn: pulumi.Output<string>
  if (cfg.database) {
    databaseUrlSecretArn = pulumi.output(cfg.database.urlSecretArn)
  } else {
    if (!cfg.databasePassword) throw new Error('set databasePassword (a secret) or database.urlSecretArn')
    const subnetGroup = new aws.rds.SubnetGroup(`${p}-db`, { subnetIds, tags })
    const db = new aws.rds.Instance(`${p}-db`, {
      engine: 'postgres',
      engineVersion: '16',
      instanceClass: 'db.t4g.small',
      allocatedStorage: 20,
      maxAllocatedStorage: 200,
      storageEncrypted: true,
      dbName: 'chroma_lease',
      username: 'chroma_lease',
      password: cfg.databasePassword,
      dbSubnetGroupName: subnetGroup.name,
      vpcSecurityGroupIds: [databaseSg!.id],
      publiclyAccessible: false,
      multiAz: false,
      backupRetentionPeriod: 7,
      deletionProtection: true,
      skipFinalSnapshot: false,
      finalSnapshotIdentifier: `${p}-db-final`,
      tags,
    })
    const secret = new aws.secretsmanager.Secret(`${p}-database-url`, { name: `${p}/database-url`, tags })
    new aws.secretsmanager.SecretVersion(`${p}-database-url`, {
      secretId: secret.id,
      secretString: pulumi.secret(
        pulumi.interpolate`postgres://chroma_lease:${pulumi.output(cfg.databasePassword).apply(encodeURIComponent)}@${db.address}:${db.port}/chroma_lease?sslmode=no-verify`,
      ),
    })
    databaseUrlSecretArn = secret.arn
  }

  // ---- API keys -----------------------------------------------------------------------
  const apiKeysSecret = new aws.secretsmanager.Secret(`${p}-api-keys`, { name: `${p}/api-keys`, tags })
  new aws.secretsmanager.SecretVersion(`${p}-api-keys`, {
    secretId: apiKeysSecret.id,
    secretString: pulumi.secret(
      pulumi
        .all([cfg.clientApiKey, cfg.operatorApiKey ?? ''])
        .apply(([client, operator]) => [`client:${client}`, ...(operator ? [`operator:${operator}`] : [])].join(',')),
    ),
  })

  // ---- load balancer, certificate, DNS ---------------------------------------------------
  const controlPlaneUrl = `https://${cfg.domainName}`
  const alb = new aws.lb.LoadBalancer(`${p}-alb`, {
    internal: true,
    loadBalancerType: 'application',
    subnets: subnetIds,
    securityGroups: [albSg.id],
    idleTimeout: 75, // above the 50 s long polls and the 60 s HTTP Task limit
    dropInvalidHeaderFields: true,
    tags,
  })
  const targetGroup = (name: string) =>
    new aws.lb.TargetGroup(`${p}-${name}`, {
      port: cfg.controlPlanePort,
      protocol: 'HTTP',
      targetType: 'ip',
      vpcId: vpc.id,
      deregistrationDelay: 30,
      healthCheck: { path: '/readyz', matcher: '200', interval: 15, healthyThreshold: 2, unhealthyThreshold: 3 },
      tags,
    })
  const apiTargets = targetGroup('api')
  // The same tasks, registered twice: queries get a target group of their own, so that
  // its TargetResponseTime is query latency (not the API's 50 s long polls).
  const queryTargets = targetGroup('query')

  let certificateArn: pulumi.Input<string>
  if (cfg.certificateArn) {
    certificateArn = cfg.certificateArn
  } else {
    if (!cfg.hostedZoneId) throw new Error('set hostedZoneId (a public Route 53 zone for domainName) or certificateArn')
    const cert = new aws.acm.Certificate(`${p}-cert`, { domainName: cfg.domainName, validationMethod: 'DNS', tags })
    const validation = new aws.route53.Record(`${p}-cert-validation`, {
      zoneId: cfg.hostedZoneId,
      name: cert.domainValidationOptions[0]!.resourceRecordName,
      type: cert.domainValidationOptions[0]!.resourceRecordType,
      records: [cert.domainValidationOptions[0]!.resourceRecordValue],
      ttl: 300,
      allowOverwrite: true,
    })
    certificateArn = new aws.acm.CertificateValidation(`${p}-cert`, { certificateArn: cert.arn, validationRecordFqdns: [validation.fqdn] }).certificateArn
  }
  if (cfg.hostedZoneId) {
    // A public name for private addresses: what HTTP Tasks over VPC Lattice need.
    new aws.route53.Record(`${p}-dns`, {
      zoneId: cfg.hostedZoneId,
      name: cfg.domainName,
      type: 'A',
      aliases: [{ name: alb.dnsName, zoneId: alb.zoneId, evaluateTargetHealth: true }],
    })
  }
  const listener = new aws.lb.Listener(`${p}-https`, {
    loadBalancerArn: alb.arn,
    port: HTTPS,
    protocol: 'HTTPS',
    sslPolicy: 'ELBSecurityPolicy-TLS13-1-2-2021-06',
    certificateArn,
    defaultActions: [{ type: 'forward', targetGroupArn: apiTargets.arn }],
  })
  new aws.lb.ListenerRule(`${p}-query`, {
    listenerArn: listener.arn,
    priority: 10,
    conditions: [{ pathPattern: { values: ['/v1/sessions/*/query', '/v1/sessions/*/chroma/*', '/api/v2/*'] } }],
    actions: [{ type: 'forward', targetGroupArn: queryTargets.arn }],
  })

  // ---- the control plane --------------------------------------------------------------
  const controlPlaneExecutionRole = role('control-plane-execution', 'ecs-tasks.amazonaws.com')
  const controlPlaneTaskRole = role('control-plane-task', 'ecs-tasks.amazonaws.com')
  new aws.iam.RolePolicy(`${p}-control-plane-execution`, {
    role: controlPlaneExecutionRole.id,
    policy: pulumi.all([controlPlaneLogs.arn, partition, databaseUrlSecretArn, apiKeysSecret.arn]).apply(([logGroupArn, part, dbSecret, keysSecret]) =>
      JSON.stringify(
        executionRolePolicy({
          logGroupArn,
          ecrRepositoryArns: [ecrRepositoryArn(cfg.controlPlaneImage, part)].filter((x): x is string => !!x),
          secretArns: [dbSecret, keysSecret],
        }),
      ),
    ),
  })
  new aws.iam.RolePolicy(`${p}-control-plane-task`, {
    role: controlPlaneTaskRole.id,
    policy: pulumi
      .all([partition, region, accountId, cluster.arn, cluster.name, sessionExecutionRole.arn, sessionTaskRole.arn, snapshotBucketArn])
      .apply(([part, reg, account, clusterArn, clusterName, execArn, taskArn, bucketArn]) =>
        JSON.stringify(
          controlPlaneTaskPolicy({
            partition: part,
            region: reg,
            accountId: account,
            clusterArn,
            clusterName,
            sessionTaskFamily: sessionFamily,
            sessionExecutionRoleArn: execArn,
            sessionTaskRoleArn: taskArn,
            snapshotBucketArn: bucketArn,
            sessionSecretsArn: `arn:${part}:secretsmanager:${reg}:${account}:secret:${sessionSecretPrefix}/*`,
          }),
        ),
      ),
  })
  const controlPlaneTaskDefinition = new aws.ecs.TaskDefinition(`${p}-control-plane`, {
    family: `${p}-control-plane`,
    requiresCompatibilities: ['FARGATE'],
    networkMode: 'awsvpc',
    cpu: '512',
    memory: '1024',
    runtimePlatform: { operatingSystemFamily: 'LINUX', cpuArchitecture: 'X86_64' },
    executionRoleArn: controlPlaneExecutionRole.arn,
    taskRoleArn: controlPlaneTaskRole.arn,
    containerDefinitions: pulumi
      .all([controlPlaneLogs.name, region, cluster.name, pulumi.all(subnetIds), sessionSg.id, databaseUrlSecretArn, apiKeysSecret.arn, sessionTaskRole.uniqueId])
      .apply(([logGroup, reg, clusterName, subnetList, sessionSgId, dbSecret, keysSecret, sessionTaskRoleId]) =>
        JSON.stringify([
          {
            name: 'control-plane',
            image: cfg.controlPlaneImage,
            essential: true,
            portMappings: [{ containerPort: cfg.controlPlanePort, protocol: 'tcp' }],
            environment: [
              { name: 'HOST', value: '0.0.0.0' },
              { name: 'PORT', value: String(cfg.controlPlanePort) },
              { name: 'PUBLIC_URL', value: controlPlaneUrl },
              { name: 'AWS_REGION', value: reg },
              { name: 'LAUNCHER', value: 'fargate' },
              { name: 'ECS_CLUSTER', value: clusterName },
              { name: 'ECS_TASK_DEFINITION', value: sessionFamily },
              { name: 'ECS_SUBNETS', value: subnetList.join(',') },
              { name: 'ECS_SECURITY_GROUPS', value: sessionSgId },
              { name: 'ECS_CONTAINER_NAME', value: cfg.session.containerName },
              { name: 'ECS_ASSIGN_PUBLIC_IP', value: 'false' },
              { name: 'ECS_CAPACITY_PROVIDER', value: cfg.session.capacityProvider },
              { name: 'ECS_CHROMA_PORT', value: String(cfg.session.chromaPort) },
              { name: 'SESSION_SECRET_PREFIX', value: sessionSecretPrefix },
              // Names the one task that may read each session secret (its aws:userid is <role id>:<task id>).
              { name: 'SESSION_TASK_ROLE_ID', value: sessionTaskRoleId },
              { name: 'WARM_POOL_MIN', value: String(cfg.warmPool.min) },
              { name: 'WARM_POOL_MAX', value: String(cfg.warmPool.max) },
            ],
            secrets: [
              { name: 'DATABASE_URL', valueFrom: dbSecret },
              { name: 'API_KEYS', valueFrom: keysSecret },
            ],
            stopTimeout: 30,
            logConfiguration: { logDriver: 'awslogs', options: { 'awslogs-group': logGroup, 'awslogs-region': reg, 'awslogs-stream-prefix': 'control-plane' } },
          },
        ]),
      ),
    tags,
  })
  const controlPlaneService = new aws.ecs.Service(
    `${p}-control-plane`,
    {
      name: `${p}-control-plane`,
      cluster: controlPlaneCluster.arn,
      taskDefinition: controlPlaneTaskDefinition.arn,
      desiredCount: cfg.controlPlaneDesiredCount,
      capacityProviderStrategies: [{ capacityProvider: 'FARGATE', weight: 1 }],
      networkConfiguration: { subnets: subnetIds, securityGroups: [controlPlaneSg.id], assignPublicIp: false },
      loadBalancers: [
        { targetGroupArn: apiTargets.arn, containerName: 'control-plane', containerPort: cfg.controlPlanePort },
        { targetGroupArn: queryTargets.arn, containerName: 'control-plane', containerPort: cfg.controlPlanePort },
      ],
      healthCheckGracePeriodSeconds: 30,
      deploymentCircuitBreaker: { enable: true, rollback: true },
      propagateTags: 'SERVICE',
      tags,
    },
    { dependsOn: [listener, ...interfaceEndpoints] },
  )

  // ---- Step Functions: connection (API key, private over VPC Lattice) + state machines ----
  const resourceGateway = new aws.vpclattice.ResourceGateway(`${p}-gateway`, {
    name: `${p}-gateway`,
    vpcId: vpc.id,
    subnetIds,
    securityGroupIds: [gatewaySg.id],
    ipAddressType: 'IPV4',
    tags,
  })
  const resourceConfiguration = new aws.vpclattice.ResourceConfiguration(`${p}-control-plane`, {
    name: `${p}-control-plane`,
    type: 'SINGLE',
    resourceGatewayIdentifier: resourceGateway.id,
    protocol: 'TCP',
    portRanges: [String(HTTPS)],
    // The public name (resolving to the ALB's private addresses) that the certificate is for.
    resourceConfigurationDefinition: { dnsResource: { domainName: cfg.domainName, ipAddressType: 'IPV4' } },
    tags,
  })
  const connection = new aws.cloudwatch.EventConnection(`${p}-connection`, {
    name: `${p}-control-plane`,
    description: 'chroma-lease control plane: x-api-key, private over VPC Lattice',
    authorizationType: 'API_KEY',
    authParameters: { apiKey: { key: 'x-api-key', value: pulumi.secret(cfg.clientApiKey) } },
    invocationConnectivityParameters: { resourceParameters: { resourceConfigurationArn: resourceConfiguration.arn } },
  })

  const stateMachineName = (t: TemplateName) => `${p}-${t}`
  const stateMachineArns = TEMPLATE_NAMES.map((t) => pulumi.interpolate`arn:${partition}:states:${region}:${accountId}:stateMachine:${stateMachineName(t)}`)
  const stateMachineRole = role('state-machine', 'states.amazonaws.com')
  const stateMachinePolicyResource = new aws.iam.RolePolicy(`${p}-state-machine`, {
    role: stateMachineRole.id,
    policy: pulumi.all([pulumi.all(stateMachineArns), connection.arn, connection.secretArn]).apply(([arns, connectionArn, connectionSecretArn]) =>
      JSON.stringify(stateMachinePolicy({ stateMachineArns: arns, controlPlaneUrl, connectionArn, connectionSecretArn })),
    ),
  })
  const stateMachines = Object.fromEntries(
    TEMPLATE_NAMES.map((t) => [
      t,
      new aws.sfn.StateMachine(
        `${p}-${t}`,
        {
          name: stateMachineName(t),
          type: 'STANDARD',
          roleArn: stateMachineRole.arn,
          definition: connection.arn.apply((ConnectionArn) => renderTemplateJson(t, { ControlPlaneUrl: controlPlaneUrl, ConnectionArn })),
          tags,
        },
        { dependsOn: [stateMachinePolicyResource] },
      ),
    ]),
  ) as Record<TemplateName, aws.sfn.StateMachine>

  // ---- alarms (the original design's list) -----------------------------------------------
  const alarmTopic = new aws.sns.Topic(`${p}-alarms`, { name: `${p}-alarms`, tags })
  if (cfg.alarms.email) {
    new aws.sns.TopicSubscription(`${p}-alarms-email`, { topic: alarmTopic.arn, protocol: 'email', endpoint: cfg.alarms.email })
  }
  // 1. a session task fails to start (image pull, ENI, capacity, secrets): ECS says so in an event
  const startFailures = new aws.cloudwatch.EventRule(`${p}-session-start-failed`, {
    name: `${p}-session-start-failed`,
    description: 'A chroma-lease session task failed to start',
    eventPattern: cluster.arn.apply((clusterArn) =>
      JSON.stringify({
        source: ['aws.ecs'],
        'detail-type': ['ECS Task State Change'],
        detail: { clusterArn: [clusterArn], group: [`family:${sessionFamily}`], lastStatus: ['STOPPED'], stopCode: ['TaskFailedToStart'] },
      }),
    ),
    tags,
  })
  new aws.sns.TopicPolicy(`${p}-alarms`, {
    arn: alarmTopic.arn,
    policy: pulumi.all([alarmTopic.arn, startFailures.arn]).apply(([topicArn, ruleArn]) =>
      JSON.stringify({
        Version: '2012-10-17',
        Statement: [
          { Effect: 'Allow', Principal: { Service: 'events.amazonaws.com' }, Action: 'sns:Publish', Resource: topicArn, Condition: { ArnEquals: { 'aws:SourceArn': ruleArn } } },
          { Effect: 'Allow', Principal: { Service: 'cloudwatch.amazonaws.com' }, Action: 'sns:Publish', Resource: topicArn },
        ],
      }),
    ),
  })
  new aws.cloudwatch.EventTarget(`${p}-session-start-failed`, { rule: startFailures.name, arn: alarmTopic.arn })
  const alarmActions = [alarmTopic.arn]
  // The warm pool's shortfall as a CloudWatch metric, from the control plane's own log lines.
  const warmPoolNamespace = 'ChromaLease'
  new aws.cloudwatch.LogMetricFilter(`${p}-warm-pool-unfilled`, {
    name: `${p}-warm-pool-unfilled`,
    logGroupName: controlPlaneLogs.name,
    pattern: '{ $.msg = "warm pool pass" }',
    metricTransformation: { name: 'WarmPoolUnfilled', namespace: warmPoolNamespace, value: '$.warmPool.unfilled' },
  })
  const alarms = {
    sessionStartFailed: new aws.cloudwatch.MetricAlarm(`${p}-session-start-failed`, {
      name: `${p}-session-start-failed`,
      alarmDescription: 'A session task failed to start (ECS stopCode TaskFailedToStart)',
      namespace: 'AWS/Events',
      metricName: 'TriggeredRules',
      dimensions: { RuleName: startFailures.name },
      statistic: 'Sum',
      period: 300,
      evaluationPeriods: 1,
      threshold: 1,
      comparisonOperator: 'GreaterThanOrEqualToThreshold',
      treatMissingData: 'notBreaching',
      alarmActions,
      okActions: alarmActions,
      tags,
    }),
    // 2. query latency: p95 of the query target group (queries and the Chroma proxy only)
    queryLatency: new aws.cloudwatch.MetricAlarm(`${p}-query-latency`, {
      name: `${p}-query-latency-p95`,
      alarmDescription: `p95 query latency over ${cfg.alarms.queryLatencyP95Seconds} s`,
      namespace: 'AWS/ApplicationELB',
      metricName: 'TargetResponseTime',
      dimensions: { LoadBalancer: alb.arnSuffix, TargetGroup: queryTargets.arnSuffix },
      extendedStatistic: 'p95',
      period: 60,
      evaluationPeriods: 5,
      datapointsToAlarm: 3,
      threshold: cfg.alarms.queryLatencyP95Seconds,
      comparisonOperator: 'GreaterThanThreshold',
      treatMissingData: 'notBreaching',
      alarmActions,
      okActions: alarmActions,
      tags,
    }),
    // 3. memory: the sessions (Container Insights, by task family) and the control plane service
    sessionMemory: new aws.cloudwatch.MetricAlarm(`${p}-session-memory`, {
      name: `${p}-session-memory`,
      alarmDescription: `A session uses over ${cfg.alarms.memoryPercent}% of its memory`,
      metricQueries: [
        {
          id: 'used',
          metric: { namespace: 'ECS/ContainerInsights', metricName: 'MemoryUtilized', dimensions: { ClusterName: cluster.name, TaskDefinitionFamily: sessionFamily }, period: 60, stat: 'Maximum' },
        },
        {
          id: 'reserved',
          metric: { namespace: 'ECS/ContainerInsights', metricName: 'MemoryReserved', dimensions: { ClusterName: cluster.name, TaskDefinitionFamily: sessionFamily }, period: 60, stat: 'Maximum' },
        },
        { id: 'percent', expression: '100 * used / reserved', label: 'session memory %', returnData: true },
      ],
      evaluationPeriods: 5,
      datapointsToAlarm: 3,
      threshold: cfg.alarms.memoryPercent,
      comparisonOperator: 'GreaterThanThreshold',
      treatMissingData: 'notBreaching',
      alarmActions,
      okActions: alarmActions,
      tags,
    }),
    // 4. the warm pool stays short of its target for 10 minutes: refills are failing (or
    //    WARM_POOL_MAX is too small for the demand). Each warm pool pass logs its `unfilled`.
    warmPoolUnfilled: new aws.cloudwatch.MetricAlarm(`${p}-warm-pool-unfilled`, {
      name: `${p}-warm-pool-unfilled`,
      alarmDescription: 'The warm pool has had fewer READY agents than its target for 10 minutes (refills failing?)',
      namespace: warmPoolNamespace,
      metricName: 'WarmPoolUnfilled',
      statistic: 'Minimum',
      period: 60,
      evaluationPeriods: 10,
      datapointsToAlarm: 10,
      threshold: 0,
      comparisonOperator: 'GreaterThanThreshold',
      treatMissingData: 'notBreaching',
      alarmActions,
      okActions: alarmActions,
      tags,
    }),
    controlPlaneMemory: new aws.cloudwatch.MetricAlarm(`${p}-control-plane-memory`, {
      name: `${p}-control-plane-memory`,
      alarmDescription: `The control plane uses over ${cfg.alarms.memoryPercent}% of its memory`,
      namespace: 'AWS/ECS',
      metricName: 'MemoryUtilization',
      dimensions: { ClusterName: controlPlaneCluster.name, ServiceName: controlPlaneService.name },
      statistic: 'Maximum',
      period: 60,
      evaluationPeriods: 5,
      datapointsToAlarm: 3,
      threshold: cfg.alarms.memoryPercent,
      comparisonOperator: 'GreaterThanThreshold',
      treatMissingData: 'notBreaching',
      alarmActions,
      okActions: alarmActions,
      tags,
    }),
  }

  return {
    vpc,
    subnets,
    routeTable,
    s3Endpoint,
    interfaceEndpoints,
    securityGroups: { alb: albSg, controlPlane: controlPlaneSg, sessions: sessionSg, workflowLambdas: lambdaSg, resourceGateway: gatewaySg, endpoints: endpointSg, database: databaseSg },
    cluster,
    controlPlaneCluster,
    sessionTaskDefinition,
    sessionExecutionRole,
    sessionTaskRole,
    controlPlaneTaskDefinition,
    controlPlaneService,
    controlPlaneTaskRole,
    controlPlaneExecutionRole,
    alb,
    listener,
    targetGroups: { api: apiTargets, query: queryTargets },
    resourceGateway,
    resourceConfiguration,
    connection,
    stateMachineRole,
    stateMachines,
    alarmTopic,
    alarms,
    snapshotBucketName,
    controlPlaneUrl,
  }
}

/** The i-th /20 of the VPC's CIDR (a /16 holds sixteen). */
export function subnetCidr(vpcCidr: string, index: number): string {
  const [base, bits] = vpcCidr.split('/')
  if (Number(bits) > 20) throw new Error(`vpcCidr ${vpcCidr} is too small: use a /20 or larger per subnet (a /16 for the VPC)`)
  const octets = base!.split('.').map(Number)
  const value = ((octets[0]! << 24) | (octets[1]! << 16) | (octets[2]! << 8) | octets[3]!) >>> 0
  const subnet = (value + index * 4096) >>> 0
  return `${subnet >>> 24}.${(subnet >>> 16) & 255}.${(subnet >>> 8) & 255}.${subnet & 255}/20`
}
