import * as pulumi from '@pulumi/pulumi'
import t from 'tap'
import { installMocks, isSecret, one, resourcesOf, settled, valueOf } from './helpers/mocks.ts'

// The program's entry point (index.ts) wired to stack configuration as `pulumi up`
// would give it: required keys, secrets kept secret, defaults, outputs.

installMocks()
pulumi.runtime.setAllConfig(
  {
    'chroma-lease:prefix': 'prog',
    'chroma-lease:domainName': 'leases.example.org',
    'chroma-lease:hostedZoneId': 'Z0PUBLICZONE',
    'chroma-lease:controlPlaneImage': '123456789012.dkr.ecr.eu-west-1.amazonaws.com/cl/cp:2',
    'chroma-lease:sessionImage': '123456789012.dkr.ecr.eu-west-1.amazonaws.com/cl/session:2',
    'chroma-lease:databasePassword': 'pw-from-config',
    'chroma-lease:clientApiKey': 'clk_from-config',
    'chroma-lease:directAccess': 'true',
    'chroma-lease:sessionCapacityProvider': 'FARGATE',
    'chroma-lease:alarmEmail': 'oncall@example.org',
  },
  ['chroma-lease:databasePassword', 'chroma-lease:clientApiKey'],
)
const program = await import('../index.ts')
await settled()

t.test('configuration reaches the stack', async (t) => {
  t.equal(await valueOf(program.controlPlaneUrl), 'https://leases.example.org')
  t.equal(await valueOf(program.clusterName), 'prog')
  t.equal(await valueOf(program.sessionTaskDefinition), 'prog-session')
  t.equal((await valueOf(program.privateSubnetIds)).length, 2)
  t.match(await valueOf(program.leaseQueryStateMachineArn), /stateMachine:prog-lease-query$/)
  t.match(await valueOf(program.leaseMapQueryStateMachineArn), /stateMachine:prog-lease-map-query$/)
  t.equal(await valueOf(program.workflowLambdaSecurityGroupId), 'prog-workflow-lambdas-id')
  t.ok(resourcesOf('prog', 'aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule').some((r) => r.name === 'prog-in-sessions-from-lambdas'), 'directAccess from config')
  const env = JSON.parse(one('prog', 'aws:ecs/taskDefinition:TaskDefinition', 'control-plane').inputs.containerDefinitions)[0].environment
  t.ok(env.some((e: { name: string; value: string }) => e.name === 'ECS_CAPACITY_PROVIDER' && e.value === 'FARGATE'))
  t.equal(one('prog', 'aws:sns/topicSubscription:TopicSubscription', 'alarms-email').inputs.endpoint, 'oncall@example.org')
  const connection = one('prog', 'aws:cloudwatch/eventConnection:EventConnection', 'connection')
  t.equal(connection.inputs.authParameters.apiKey.value, 'clk_from-config')
  t.ok(isSecret(connection.raw.authParameters), 'a secret config value stays secret')
  t.equal(one('prog', 'aws:rds/instance:Instance', 'db').inputs.password, 'pw-from-config')
  t.ok(isSecret(one('prog', 'aws:rds/instance:Instance', 'db').raw.password))
})
