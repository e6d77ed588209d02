import t from 'tap'
import { ecrRepositoryArn, type PolicyDocument, type PolicyStatement } from '../policies.ts'
import { ACCOUNT, installMocks, one, resourcesOf, settled } from './helpers/mocks.ts'
import { DOMAIN, testConfig } from './helpers/config.ts'

// IAM scoping of the Pulumi program, read from the policies it registers (pulumi
// runtime mocks): the control plane runs only the session task definition, passes only
// the session's two roles, stops/describes/lists tasks only in its cluster, touches S3
// only in the snapshot bucket; the state machine calls only the control plane's URL
// through its one connection.

installMocks()
const { createStack } = await import('../stack.ts')
createStack(testConfig('iam'))
createStack(testConfig('public', { controlPlaneImage: 'ghcr.io/example/chroma-lease:1.0.0', snapshotBucketName: 'corp-chroma-snapshots' }))
await settled()

const ROLE_POLICY = 'aws:iam/rolePolicy:RolePolicy'
const policy = (prefix: string, name: string) => JSON.parse(one(prefix, ROLE_POLICY, name).inputs.policy) as PolicyDocument
const list = (x: string | string[]) => (Array.isArray(x) ? x : [x])
const statement = (doc: PolicyDocument, sid: string) => {
  const s = doc.Statement.find((x) => x.Sid === sid)
  if (!s) throw new Error(`no statement ${sid} in ${JSON.stringify(doc)}`)
  return s
}

const cluster = `arn:aws:ecs:eu-west-1:${ACCOUNT}:cluster/iam`
const bucket = 'arn:aws:s3:::iam-snapshots-bucket'
const tasksInCluster = `arn:aws:ecs:eu-west-1:${ACCOUNT}:task/iam/*`

t.test('no policy grants a wildcard action or an unconditioned wildcard resource', async (t) => {
  const allowedStarResource = new Set(['ecr:GetAuthorizationToken', 'ecs:ListTasks', 'secretsmanager:ListSecrets', 'ecs:DescribeTaskDefinition', 'ec2:DescribeSubnets', 'ec2:DescribeSecurityGroups', 'ec2:DescribeNetworkInterfaces'])
  for (const prefix of ['iam', 'public']) {
    const policies = resourcesOf(prefix, ROLE_POLICY)
    t.equal(policies.length, 5, 'five roles, each with one inline policy')
    t.equal(resourcesOf(prefix, 'aws:iam/rolePolicyAttachment:RolePolicyAttachment').length, 0, 'no managed policies attached')
    for (const r of policies) {
      const doc = JSON.parse(r.inputs.policy) as PolicyDocument
      for (const s of doc.Statement) {
        t.equal(s.Effect, 'Allow')
        for (const a of list(s.Action)) t.notMatch(a, /\*/, `${r.name}: ${a} is a single action`)
        if (list(s.Resource).includes('*')) {
          t.ok(list(s.Action).every((a) => allowedStarResource.has(a)), `${r.name}: Resource * only for ${[...allowedStarResource].join(', ')}`)
          if (list(s.Action).includes('ecs:ListTasks')) t.same(s.Condition, { ArnEquals: { 'ecs:cluster': `arn:aws:ecs:eu-west-1:${ACCOUNT}:cluster/${prefix}` } })
        }
      }
    }
  }
})

t.test('the control plane runs only the session task definition, in its cluster', async (t) => {
  const doc = policy('iam', 'control-plane-task')
  const run = statement(doc, 'RunSessionTasks')
  t.same(run.Action, 'ecs:RunTask')
  t.same(run.Resource, `arn:aws:ecs:eu-west-1:${ACCOUNT}:task-definition/iam-session:*`, 'the session family, any revision')
  t.same(run.Condition, { ArnEquals: { 'ecs:cluster': cluster } })
  const manage = statement(doc, 'ManageSessionTasks')
  t.same(manage.Action, ['ecs:StopTask', 'ecs:DescribeTasks'])
  t.same(manage.Resource, tasksInCluster, 'tasks of its cluster only')
  t.same(manage.Condition, { ArnEquals: { 'ecs:cluster': cluster } })
  const tag = statement(doc, 'TagSessionTasksOnCreate')
  t.same(tag.Resource, tasksInCluster)
  t.same(tag.Condition, { StringEquals: { 'ecs:CreateAction': 'RunTask' } }, 'tagging only as part of RunTask')
  // every ECS action the control plane has, listed
  const ecsActions = doc.Statement.flatMap((s) => list(s.Action)).filter((a) => a.startsWith('ecs:')).sort()
  t.same(ecsActions, ['ecs:DescribeClusters', 'ecs:DescribeTaskDefinition', 'ecs:DescribeTasks', 'ecs:ListTasks', 'ecs:RunTask', 'ecs:StopTask', 'ecs:TagResource'])
  t.same(statement(doc, 'PreflightCluster').Resource, cluster, 'DescribeClusters on its cluster only')
  const ec2Actions = doc.Statement.flatMap((s) => list(s.Action)).filter((a) => a.startsWith('ec2:')).sort()
  t.same(ec2Actions, ['ec2:DescribeNetworkInterfaces', 'ec2:DescribeSecurityGroups', 'ec2:DescribeSubnets'], 'EC2: describe calls only')
})

t.test('iam:PassRole only for the session task definition\'s two roles, only to ECS tasks', async (t) => {
  const doc = policy('iam', 'control-plane-task')
  const pass = statement(doc, 'PassSessionRoles')
  t.same(pass.Resource, [`arn:aws:iam::${ACCOUNT}:role/iam-session-execution`, `arn:aws:iam::${ACCOUNT}:role/iam-session-task`])
  t.same(pass.Condition, { StringEquals: { 'iam:PassedToService': 'ecs-tasks.amazonaws.com' } })
  const td = one('iam', 'aws:ecs/taskDefinition:TaskDefinition', 'session')
  t.same(list(pass.Resource).sort(), [td.inputs.executionRoleArn, td.inputs.taskRoleArn].sort(), 'exactly the roles of the session task definition')
  for (const r of resourcesOf('iam', ROLE_POLICY)) {
    if (r.name === 'iam-control-plane-task') continue
    t.notMatch(r.inputs.policy, /iam:PassRole/, `${r.name} cannot pass roles`)
  }
})

t.test('S3 only on the snapshot bucket', async (t) => {
  for (const [prefix, arn] of [['iam', bucket], ['public', 'arn:aws:s3:::corp-chroma-snapshots']] as const) {
    for (const name of ['control-plane-task', 'session-task']) {
      const s3 = policy(prefix, name).Statement.filter((s) => list(s.Action).some((a) => a.startsWith('s3:')))
      t.ok(s3.length > 0)
      for (const s of s3) {
        for (const r of list(s.Resource)) t.ok(r === arn || r === `${arn}/*`, `${prefix}-${name}: ${r} is the snapshot bucket`)
      }
    }
    t.notMatch(JSON.stringify(policy(prefix, 'control-plane-task')), /s3:PutObject|s3:DeleteObject/, 'the control plane only reads snapshots')
    t.notMatch(JSON.stringify(policy(prefix, 'session-task')), /s3:DeleteObject/, 'sessions add versions, never delete')
    const sessionActions = policy(prefix, 'session-task').Statement.flatMap((s) => list(s.Action))
    t.ok(sessionActions.every((a) => a.startsWith('s3:') || a === 'secretsmanager:GetSecretValue'), 'a session has S3 and reads its secret, nothing else')
  }
})

t.test('execution roles: their own log group, their own image repository, their own secrets', async (t) => {
  const session = policy('iam', 'session-execution')
  t.same(statement(session, 'WriteLogs').Resource, `arn:aws:logs:eu-west-1:${ACCOUNT}:log-group:/ecs/iam/sessions:*`)
  t.same(statement(session, 'PullImage').Resource, [`arn:aws:ecr:eu-west-1:${ACCOUNT}:repository/chroma-lease/session`])
  t.notOk(session.Statement.some((s) => s.Sid === 'ReadSecrets'), 'sessions get no secrets')
  const cp = policy('iam', 'control-plane-execution')
  t.same(statement(cp, 'PullImage').Resource, [`arn:aws:ecr:eu-west-1:${ACCOUNT}:repository/chroma-lease/control-plane`])
  t.same(statement(cp, 'ReadSecrets').Resource, [
    `arn:aws:secretsmanager:eu-west-1:${ACCOUNT}:secret:iam/database-url-AbCdEf`,
    `arn:aws:secretsmanager:eu-west-1:${ACCOUNT}:secret:iam/api-keys-AbCdEf`,
  ])
  // an image from another registry: nothing to grant on ECR
  const publicCp = policy('public', 'control-plane-execution')
  t.notOk(publicCp.Statement.some((s) => list(s.Action).some((a) => a.startsWith('ecr:'))))
  t.equal(ecrRepositoryArn('123456789012.dkr.ecr.us-east-2.amazonaws.com/team/app@sha256:abc'), 'arn:aws:ecr:us-east-2:123456789012:repository/team/app')
  t.equal(ecrRepositoryArn('public.ecr.aws/x/y:1'), null)
})

t.test('the state machine calls the control plane only, through its one connection', async (t) => {
  const doc = policy('iam', 'state-machine')
  t.equal(doc.Statement.length, 3)
  const invoke = statement(doc, 'InvokeControlPlane')
  t.same(invoke.Action, 'states:InvokeHTTPEndpoint')
  t.same(invoke.Resource, [`arn:aws:states:eu-west-1:${ACCOUNT}:stateMachine:iam-lease-query`, `arn:aws:states:eu-west-1:${ACCOUNT}:stateMachine:iam-lease-map-query`])
  t.same(invoke.Condition, {
    StringEquals: { 'states:HTTPMethod': ['GET', 'POST', 'DELETE'] },
    StringLike: { 'states:HTTPEndpoint': `https://${DOMAIN}/v1/*` },
  })
  const connection = one('iam', 'aws:cloudwatch/eventConnection:EventConnection', 'connection').state
  t.same(statement(doc, 'UseConnection'), { Sid: 'UseConnection', Effect: 'Allow', Action: 'events:RetrieveConnectionCredentials', Resource: connection.arn })
  t.same(statement(doc, 'ReadConnectionSecret').Resource, connection.secretArn, "the connection's own secret, not events!connection/*")
  // the state machines' ARNs in the policy are the ones created
  for (const name of ['lease-query', 'lease-map-query']) {
    t.ok(list(invoke.Resource).includes(one('iam', 'aws:sfn/stateMachine:StateMachine', name).state.arn))
  }
  // every HTTP Task in the definitions calls inside the allowed URL
  for (const name of ['lease-query', 'lease-map-query']) {
    const def = one('iam', 'aws:sfn/stateMachine:StateMachine', name).inputs.definition as string
    for (const m of def.matchAll(/"ApiEndpoint":"([^"]+)"/g)) t.ok(m[1]!.startsWith(`https://${DOMAIN}/v1/`), m[1]!)
    t.match(def, new RegExp(`"api":"https://${DOMAIN.replace(/\./g, '\\.')}"`))
  }
})

t.test('trust policies: each role is assumable by its one service, from this account', async (t) => {
  const expected: Record<string, string> = {
    'iam-session-execution': 'ecs-tasks.amazonaws.com',
    'iam-session-task': 'ecs-tasks.amazonaws.com',
    'iam-control-plane-execution': 'ecs-tasks.amazonaws.com',
    'iam-control-plane-task': 'ecs-tasks.amazonaws.com',
    'iam-state-machine': 'states.amazonaws.com',
  }
  const roles = resourcesOf('iam', 'aws:iam/role:Role')
  t.same(roles.map((r) => r.name).sort(), Object.keys(expected).sort())
  for (const r of roles) {
    const trust = JSON.parse(r.inputs.assumeRolePolicy)
    t.same(trust.Statement, [
      { Effect: 'Allow', Principal: { Service: expected[r.name] }, Action: 'sts:AssumeRole', Condition: { StringEquals: { 'aws:SourceAccount': ACCOUNT } } },
    ], r.name)
  }
})

/**
 * Whether a policy allows `action` on `resource` in a request with these condition keys:
 * IAM's evaluation for the statement shapes these policies use (Allow only; Resource
 * wildcards; ArnEquals, StringEquals, ForAllValues:StringEquals; policy variables).
 */
function allows(doc: PolicyDocument, action: string, resource: string, context: Record<string, string | string[]>): boolean {
  const glob = (pattern: string, value: string) => new RegExp(`^${pattern.split('*').map((p) => p.replace(/[.+?^${}()|[\]\\]/g, '\\$&')).join('.*')}$`).test(value)
  const variable = (v: string) => v.replace(/\$\{([^}]+)\}/g, (_, key: string) => String(context[key] ?? '\u0000unset'))
  return doc.Statement.some((s) => {
    if (s.Effect !== 'Allow' || !list(s.Action).includes(action) || !list(s.Resource).some((r) => glob(r, resource))) return false
    return Object.entries(s.Condition ?? {}).every(([operator, keys]) =>
      Object.entries(keys).every(([key, expected]) => {
        const given = context[key]
        if (given === undefined) return false
        if (operator === 'ForAllValues:StringEquals') return list(given).every((g) => list(expected).includes(g))
        if (operator === 'ArnEquals' || operator === 'StringEquals') return list(expected).some((e) => variable(e) === given)
        throw new Error(`the evaluator does not know ${operator}`)
      }),
    )
  })
}

t.test('the control plane cannot stop, describe or tag its own tasks: only session tasks, in a cluster of their own', async (t) => {
  const doc = policy('iam', 'control-plane-task')
  const service = one('iam', 'aws:ecs/service:Service', 'control-plane')
  const controlCluster = one('iam', 'aws:ecs/cluster:Cluster', 'control-plane-cluster').state.arn as string
  t.equal(service.inputs.cluster, controlCluster, 'the control plane runs in its own cluster')
  t.not(controlCluster, cluster, 'not the sessions\' cluster')
  const controlName = controlCluster.split('/').pop()
  const ownTask = { resource: `arn:aws:ecs:eu-west-1:${ACCOUNT}:task/${controlName}/0123456789abcdef0123456789abcdef`, context: { 'ecs:cluster': controlCluster } }
  const sessionTask = { resource: `arn:aws:ecs:eu-west-1:${ACCOUNT}:task/iam/fedcba9876543210fedcba9876543210`, context: { 'ecs:cluster': cluster } }
  for (const action of ['ecs:StopTask', 'ecs:DescribeTasks']) {
    t.notOk(allows(doc, action, ownTask.resource, ownTask.context), `${action} is denied on the control plane's own tasks`)
    t.ok(allows(doc, action, sessionTask.resource, sessionTask.context), `${action} is allowed on session tasks`)
  }
  t.notOk(allows(doc, 'ecs:TagResource', ownTask.resource, { ...ownTask.context, 'ecs:CreateAction': 'RunTask' }), 'TagResource neither')
  t.notOk(allows(doc, 'ecs:ListTasks', '*', ownTask.context), 'nor list them')
  t.notOk(allows(doc, 'ecs:RunTask', `arn:aws:ecs:eu-west-1:${ACCOUNT}:task-definition/iam-control-plane:1`, sessionTask.context), 'nor run more of itself')
})

t.test('session secrets: the control plane writes, tags and deletes them but never reads one; a session task reads only the one tagged for it', async (t) => {
  const secrets = `arn:aws:secretsmanager:eu-west-1:${ACCOUNT}:secret:iam/sessions/*`
  const secretArn = `arn:aws:secretsmanager:eu-west-1:${ACCOUNT}:secret:iam/sessions/6ee81e62-0000-4000-8000-000000000001/g1-AbCdEf`
  const cp = policy('iam', 'control-plane-task')
  for (const action of ['secretsmanager:CreateSecret', 'secretsmanager:PutSecretValue', 'secretsmanager:DeleteSecret', 'secretsmanager:DescribeSecret']) {
    t.ok(allows(cp, action, secretArn, {}), `the control plane may ${action}`)
  }
  t.ok(allows(cp, 'secretsmanager:TagResource', secretArn, { 'aws:TagKeys': ['chroma-lease:reader'] }), 'and tag it with its reader')
  t.notOk(allows(cp, 'secretsmanager:TagResource', secretArn, { 'aws:TagKeys': ['owner'] }), 'with its own tag keys only')
  t.notOk(allows(cp, 'secretsmanager:GetSecretValue', secretArn, {}), 'the control plane cannot read a session secret')
  t.notOk(allows(cp, 'secretsmanager:CreateSecret', `arn:aws:secretsmanager:eu-west-1:${ACCOUNT}:secret:iam/database-url-AbCdEf`, {}), 'nor write other secrets')
  t.same(statement(cp, 'WriteSessionSecrets').Resource, secrets)

  const session = policy('iam', 'session-task')
  const roleId = one('iam', 'aws:iam/role:Role', 'session-task').state.uniqueId as string
  const taskA = { 'aws:userid': `${roleId}:0123456789abcdef0123456789abcdef` }
  const taskB = { 'aws:userid': `${roleId}:fedcba9876543210fedcba9876543210` }
  const taggedForA = { 'secretsmanager:ResourceTag/chroma-lease:reader': taskA['aws:userid'] }
  t.ok(allows(session, 'secretsmanager:GetSecretValue', secretArn, { ...taskA, ...taggedForA }), 'the task the secret is granted to reads it')
  t.notOk(allows(session, 'secretsmanager:GetSecretValue', secretArn, { ...taskB, ...taggedForA }), 'another session task cannot')
  t.notOk(allows(session, 'secretsmanager:GetSecretValue', secretArn, taskA), 'nor the task before the grant (no reader tag)')
  t.notOk(allows(session, 'secretsmanager:GetSecretValue', `arn:aws:secretsmanager:eu-west-1:${ACCOUNT}:secret:iam/database-url-AbCdEf`, { ...taskA, 'secretsmanager:ResourceTag/chroma-lease:reader': taskA['aws:userid'] }), 'nor any secret outside the session path')

  // The control plane is told the role id and the path it writes under.
  const td = one('iam', 'aws:ecs/taskDefinition:TaskDefinition', 'control-plane')
  const env = Object.fromEntries((JSON.parse(td.inputs.containerDefinitions)[0].environment as Array<{ name: string; value: string }>).map((e) => [e.name, e.value]))
  t.equal(env.SESSION_TASK_ROLE_ID, roleId)
  t.equal(env.SESSION_SECRET_PREFIX, 'iam/sessions')
})

export type { PolicyStatement }
