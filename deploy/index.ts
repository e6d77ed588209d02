import * as pulumi from '@pulumi/pulumi'
import { createStack, defaults, type StackConfig } from './stack.ts'

// The Pulumi program: configuration in, stack outputs out. Everything else is in
// stack.ts (resources) and policies.ts (IAM documents). Configuration keys are under
// the `chroma-lease:` namespace; see README.md beside this file.

const config = new pulumi.Config('chroma-lease')
const existingDatabaseUrlSecretArn = config.get('databaseUrlSecretArn')

const cfg: StackConfig = {
  prefix: config.get('prefix') ?? `${defaults.prefix}-${pulumi.getStack()}`,
  vpcCidr: config.get('vpcCidr') ?? defaults.vpcCidr,
  azCount: config.getNumber('azCount') ?? defaults.azCount,
  domainName: config.require('domainName'),
  hostedZoneId: config.get('hostedZoneId'),
  certificateArn: config.get('certificateArn'),
  controlPlaneImage: config.require('controlPlaneImage'),
  sessionImage: config.require('sessionImage'),
  snapshotBucketName: config.get('snapshotBucketName'),
  database: existingDatabaseUrlSecretArn
    ? { urlSecretArn: existingDatabaseUrlSecretArn, securityGroupId: config.get('databaseSecurityGroupId') }
    : undefined,
  databasePassword: existingDatabaseUrlSecretArn ? undefined : config.requireSecret('databasePassword'),
  clientApiKey: config.requireSecret('clientApiKey'),
  operatorApiKey: config.getSecret('operatorApiKey'),
  directAccess: config.getBoolean('directAccess') ?? defaults.directAccess,
  controlPlaneDesiredCount: config.getNumber('controlPlaneDesiredCount') ?? defaults.controlPlaneDesiredCount,
  controlPlanePort: defaults.controlPlanePort,
  session: {
    ...defaults.session,
    cpu: config.getNumber('sessionCpu') ?? defaults.session.cpu,
    memory: config.getNumber('sessionMemory') ?? defaults.session.memory,
    capacityProvider: (config.get('sessionCapacityProvider') as 'FARGATE' | 'FARGATE_SPOT' | undefined) ?? defaults.session.capacityProvider,
  },
  alarms: {
    email: config.get('alarmEmail'),
    queryLatencyP95Seconds: config.getNumber('queryLatencyP95Seconds') ?? defaults.alarms.queryLatencyP95Seconds,
    memoryPercent: config.getNumber('memoryAlarmPercent') ?? defaults.alarms.memoryPercent,
  },
  warmPool: {
    min: config.getNumber('warmPoolMin') ?? defaults.warmPool.min,
    max: config.getNumber('warmPoolMax') ?? defaults.warmPool.max,
  },
}

const stack = createStack(cfg)

export const controlPlaneUrl = stack.controlPlaneUrl
export const loadBalancerDnsName = stack.alb.dnsName
export const clusterName = stack.cluster.name
/** The control plane's own service runs in a cluster of its own: its ECS grants cover the sessions' cluster only. */
export const controlPlaneClusterName = stack.controlPlaneCluster.name
/** SESSION_TASK_ROLE_ID for a control plane run outside this stack (the stack sets it on its own). */
export const sessionTaskRoleId = stack.sessionTaskRole.uniqueId
export const sessionTaskDefinition = stack.sessionTaskDefinition.family
export const snapshotBucket = stack.snapshotBucketName
export const workflowLambdaSecurityGroupId = stack.securityGroups.workflowLambdas.id
export const privateSubnetIds = stack.subnets.map((s) => s.id)
export const connectionArn = stack.connection.arn
export const leaseQueryStateMachineArn = stack.stateMachines['lease-query'].arn
export const leaseMapQueryStateMachineArn = stack.stateMachines['lease-map-query'].arn
export const alarmTopicArn = stack.alarmTopic.arn
