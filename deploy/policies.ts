/**
 * The IAM policy documents of chroma-lease, as pure functions of the ARNs they are
 * scoped to, so that the unit tests can read exactly what gets deployed.
 *
 * Least privilege, as the design asks:
 *   - the control plane may run only the session task definition, pass only the
 *     session's two roles, and stop/describe/list/tag tasks only in the sessions'
 *     cluster, which its own service does not run in (so it cannot stop itself);
 *   - session secrets: the control plane writes, tags and deletes them but cannot read
 *     them; a session task may read only the one tagged for it;
 *   - S3 is the snapshot bucket only (sessions read and write snapshots, the control
 *     plane reads them to resolve a snapshot URI);
 *   - the state machine may call only the control plane's URL over HTTP Tasks, with
 *     its one EventBridge connection and that connection's secret.
 */

export interface PolicyStatement {
  Sid?: string
  Effect: 'Allow' | 'Deny'
  Action: string | string[]
  Resource: string | string[]
  Condition?: Record<string, Record<string, string | string[]>>
}

export interface PolicyDocument {
  Version: '2012-10-17'
  Statement: PolicyStatement[]
}

const doc = (...Statement: PolicyStatement[]): PolicyDocument => ({ Version: '2012-10-17', Statement })

/** A role's trust policy: who may assume it (Principal, not Resource). */
export function trustPolicy(service: string, sourceAccount?: string): object {
  return {
    Version: '2012-10-17',
    Statement: [
      {
        Effect: 'Allow',
        Principal: { Service: service },
        Action: 'sts:AssumeRole',
        ...(sourceAccount ? { Condition: { StringEquals: { 'aws:SourceAccount': sourceAccount } } } : {}),
      },
    ],
  }
}

export interface ControlPlaneTaskPolicyArgs {
  partition: string
  region: string
  accountId: string
  clusterArn: string
  clusterName: string
  /** The session task definition's family: RunTask is allowed on its revisions only. */
  sessionTaskFamily: string
  sessionExecutionRoleArn: string
  sessionTaskRoleArn: string
  snapshotBucketArn: string
  /** `arn:…:secret:<prefix>/*`: the per-session secrets (src/services/launchers/session-secrets.ts). */
  sessionSecretsArn: string
}

/** The tag keys the control plane may set on session secrets. */
const SESSION_SECRET_TAG_KEYS = ['chroma-lease:session', 'chroma-lease:generation', 'chroma-lease:reader']

/** What the control plane's own code does with AWS: the Fargate launcher and snapshot lookups. */
export function controlPlaneTaskPolicy(a: ControlPlaneTaskPolicyArgs): PolicyDocument {
  const inCluster = { ArnEquals: { 'ecs:cluster': a.clusterArn } }
  const taskDefinition = `arn:${a.partition}:ecs:${a.region}:${a.accountId}:task-definition/${a.sessionTaskFamily}:*`
  const tasksInCluster = `arn:${a.partition}:ecs:${a.region}:${a.accountId}:task/${a.clusterName}/*`
  return doc(
    { Sid: 'RunSessionTasks', Effect: 'Allow', Action: 'ecs:RunTask', Resource: taskDefinition, Condition: inCluster },
    {
      // RunTask with tags (the session id the orphan sweeper matches on) needs TagResource on create.
      Sid: 'TagSessionTasksOnCreate',
      Effect: 'Allow',
      Action: 'ecs:TagResource',
      Resource: tasksInCluster,
      Condition: { StringEquals: { 'ecs:CreateAction': 'RunTask' } },
    },
    { Sid: 'ManageSessionTasks', Effect: 'Allow', Action: ['ecs:StopTask', 'ecs:DescribeTasks'], Resource: tasksInCluster, Condition: inCluster },
    // ListTasks is authorised on container instances, not tasks: scope it by the cluster condition.
    { Sid: 'ListSessionTasks', Effect: 'Allow', Action: 'ecs:ListTasks', Resource: '*', Condition: inCluster },
    {
      Sid: 'PassSessionRoles',
      Effect: 'Allow',
      Action: 'iam:PassRole',
      Resource: [a.sessionExecutionRoleArn, a.sessionTaskRoleArn],
      Condition: { StringEquals: { 'iam:PassedToService': 'ecs-tasks.amazonaws.com' } },
    },
    // Preflight (src/services/preflight.ts, at start and GET /v1/preflight) and the public-IP
    // lookup: describe calls only. DescribeTaskDefinition and EC2's Describe* support no
    // resource-level permissions, hence Resource *.
    { Sid: 'PreflightCluster', Effect: 'Allow', Action: 'ecs:DescribeClusters', Resource: a.clusterArn },
    {
      Sid: 'PreflightDescribe',
      Effect: 'Allow',
      Action: ['ecs:DescribeTaskDefinition', 'ec2:DescribeSubnets', 'ec2:DescribeSecurityGroups', 'ec2:DescribeNetworkInterfaces'],
      Resource: '*',
    },
    { Sid: 'ReadSnapshotBucket', Effect: 'Allow', Action: ['s3:ListBucket', 's3:GetBucketLocation'], Resource: a.snapshotBucketArn },
    { Sid: 'ReadSnapshots', Effect: 'Allow', Action: 's3:GetObject', Resource: `${a.snapshotBucketArn}/*` },
    // Session secrets: written before RunTask, granted to the task (a tag), deleted at stop.
    // Never read: GetSecretValue is the session's alone.
    { Sid: 'WriteSessionSecrets', Effect: 'Allow', Action: ['secretsmanager:CreateSecret', 'secretsmanager:PutSecretValue', 'secretsmanager:DescribeSecret', 'secretsmanager:DeleteSecret'], Resource: a.sessionSecretsArn },
    {
      Sid: 'TagSessionSecrets',
      Effect: 'Allow',
      Action: 'secretsmanager:TagResource',
      Resource: a.sessionSecretsArn,
      Condition: { 'ForAllValues:StringEquals': { 'aws:TagKeys': SESSION_SECRET_TAG_KEYS } },
    },
    // The orphan sweep lists leftovers; ListSecrets has no resource-level permission.
    { Sid: 'ListSessionSecrets', Effect: 'Allow', Action: 'secretsmanager:ListSecrets', Resource: '*' },
  )
}

/**
 * A session restores its snapshot and may save a new version of it (the snapshot bucket
 * only), and reads its own session secret: one whose `chroma-lease:reader` tag is its own
 * identity. ECS names a task role's session after the task, so a task's `aws:userid` is
 * `<role id>:<task id>`, and the control plane tags each secret with the task it started.
 */
export function sessionTaskPolicy(snapshotBucketArn: string, sessionSecretsArn: string): PolicyDocument {
  return doc(
    {
      Sid: 'ReadOwnSessionSecret',
      Effect: 'Allow',
      Action: 'secretsmanager:GetSecretValue',
      Resource: sessionSecretsArn,
      Condition: { StringEquals: { 'secretsmanager:ResourceTag/chroma-lease:reader': '${aws:userid}' } },
    },
    { Sid: 'ListSnapshotBucket', Effect: 'Allow', Action: ['s3:ListBucket', 's3:GetBucketLocation'], Resource: snapshotBucketArn },
    {
      Sid: 'ReadWriteSnapshots',
      Effect: 'Allow',
      Action: ['s3:GetObject', 's3:PutObject', 's3:AbortMultipartUpload', 's3:ListMultipartUploadParts'],
      Resource: `${snapshotBucketArn}/*`,
    },
  )
}

export interface ExecutionRolePolicyArgs {
  logGroupArn: string
  /** ECR repositories the image comes from (none for a public registry image). */
  ecrRepositoryArns: string[]
  /** Secrets Manager secrets injected as environment variables. */
  secretArns?: string[]
}

/** What ECS itself needs to start a task: pull its image, write its logs, read its secrets. */
export function executionRolePolicy(a: ExecutionRolePolicyArgs): PolicyDocument {
  const statements: PolicyStatement[] = [
    { Sid: 'WriteLogs', Effect: 'Allow', Action: ['logs:CreateLogStream', 'logs:PutLogEvents'], Resource: `${a.logGroupArn}:*` },
  ]
  if (a.ecrRepositoryArns.length) {
    // GetAuthorizationToken has no resource-level permission.
    statements.push({ Sid: 'EcrLogin', Effect: 'Allow', Action: 'ecr:GetAuthorizationToken', Resource: '*' })
    statements.push({
      Sid: 'PullImage',
      Effect: 'Allow',
      Action: ['ecr:BatchGetImage', 'ecr:GetDownloadUrlForLayer', 'ecr:BatchCheckLayerAvailability'],
      Resource: a.ecrRepositoryArns,
    })
  }
  if (a.secretArns?.length) {
    statements.push({ Sid: 'ReadSecrets', Effect: 'Allow', Action: 'secretsmanager:GetSecretValue', Resource: a.secretArns })
  }
  return doc(...statements)
}

export interface StateMachinePolicyArgs {
  stateMachineArns: string[]
  /** https://host of the control plane, no trailing slash. */
  controlPlaneUrl: string
  connectionArn: string
  connectionSecretArn: string
}

/** HTTP Tasks to the control plane only, through the one connection. */
export function stateMachinePolicy(a: StateMachinePolicyArgs): PolicyDocument {
  return doc(
    {
      Sid: 'InvokeControlPlane',
      Effect: 'Allow',
      Action: 'states:InvokeHTTPEndpoint',
      Resource: a.stateMachineArns,
      Condition: {
        StringEquals: { 'states:HTTPMethod': ['GET', 'POST', 'DELETE'] },
        StringLike: { 'states:HTTPEndpoint': `${a.controlPlaneUrl}/v1/*` },
      },
    },
    { Sid: 'UseConnection', Effect: 'Allow', Action: 'events:RetrieveConnectionCredentials', Resource: a.connectionArn },
    {
      Sid: 'ReadConnectionSecret',
      Effect: 'Allow',
      Action: ['secretsmanager:GetSecretValue', 'secretsmanager:DescribeSecret'],
      Resource: a.connectionSecretArn,
    },
  )
}

/** `123456789012.dkr.ecr.eu-west-1.amazonaws.com/repo:tag` to the repository's ARN; null for other registries. */
export function ecrRepositoryArn(image: string, partition = 'aws'): string | null {
  const m = /^(\d{12})\.dkr\.ecr\.([a-z0-9-]+)\.amazonaws\.com(?:\.cn)?\/([^:@]+)/.exec(image)
  return m ? `arn:${partition}:ecr:${m[2]}:${m[1]}:repository/${m[3]}` : null
}
