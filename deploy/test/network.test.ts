import t from 'tap'
import { installMocks, isSecret, one, resourcesOf, settled, valueOf, type Registered } from './helpers/mocks.ts'
import { DOMAIN, testConfig } from './helpers/config.ts'

// The network rules of the Pulumi program, read from what it registers (pulumi
// runtime mocks: no CLI, no AWS): private subnets only, the S3 gateway endpoint,
// security groups whose every ingress names a peer group, the Chroma port open to the
// control plane only (and to the workflow Lambdas only with direct access), the
// internal load balancer, the Fargate capacity providers, the EventBridge connection
// over VPC Lattice, the state machines and the alarms.

installMocks()
const { createStack } = await import('../stack.ts')
createStack(testConfig('base'))
createStack(testConfig('direct', { directAccess: true }))
const existing = createStack(
  testConfig('existing', {
    database: { urlSecretArn: 'arn:aws:secretsmanager:eu-west-1:123456789012:secret:shared/pg-url-AbCdEf', securityGroupId: 'sg-0123456789abcdef0' },
    databasePassword: undefined,
    snapshotBucketName: 'corp-chroma-snapshots',
    certificateArn: 'arn:aws:acm:eu-west-1:123456789012:certificate/11111111-2222-3333-4444-555555555555',
    hostedZoneId: undefined,
  }),
)
await settled()

const SG = 'aws:ec2/securityGroup:SecurityGroup'
const INGRESS = 'aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule'
const EGRESS = 'aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule'

/** Security group ids (mock ids are `<name>-id`) back to their short names. */
function groupName(prefix: string, id: string): string {
  const sg = resourcesOf(prefix, SG).find((s) => s.id === id)
  return sg ? sg.name.slice(prefix.length + 1) : id
}

function rules(prefix: string, type: string, group: string) {
  const id = one(prefix, SG, group).id
  return resourcesOf(prefix, type)
    .filter((r) => r.inputs.securityGroupId === id)
    .map((r) => ({
      port: r.inputs.fromPort as number,
      toPort: r.inputs.toPort as number,
      protocol: r.inputs.ipProtocol as string,
      peer: r.inputs.referencedSecurityGroupId ? groupName(prefix, r.inputs.referencedSecurityGroupId) : r.inputs.prefixListId ? `prefix-list:${r.inputs.prefixListId}` : `cidr:${r.inputs.cidrIpv4 ?? r.inputs.cidrIpv6}`,
    }))
    .sort((a, b) => a.port - b.port || a.peer.localeCompare(b.peer))
}

t.test('the VPC is private: no internet or NAT gateway, no public addresses, an S3 gateway endpoint', async (t) => {
  for (const type of ['aws:ec2/internetGateway:InternetGateway', 'aws:ec2/natGateway:NatGateway', 'aws:ec2/eip:Eip']) {
    t.equal(resourcesOf('base', type).length, 0, `no ${type.split(':').pop()}`)
  }
  const subnets = resourcesOf('base', 'aws:ec2/subnet:Subnet')
  t.equal(subnets.length, 2)
  for (const s of subnets) t.equal(s.inputs.mapPublicIpOnLaunch, false)
  t.same(subnets.map((s) => s.inputs.cidrBlock), ['10.42.0.0/20', '10.42.16.0/20'])
  t.not(subnets[0]!.inputs.availabilityZone, subnets[1]!.inputs.availabilityZone, 'two AZs')
  t.equal(resourcesOf('base', 'aws:ec2/route:Route').length, 0, 'no route out of the VPC')

  const s3 = one('base', 'aws:ec2/vpcEndpoint:VpcEndpoint', 's3')
  t.equal(s3.inputs.vpcEndpointType, 'Gateway')
  t.equal(s3.inputs.serviceName, 'com.amazonaws.eu-west-1.s3')
  t.same(s3.inputs.routeTableIds, [one('base', 'aws:ec2/routeTable:RouteTable', 'private').id])
  const interfaces = resourcesOf('base', 'aws:ec2/vpcEndpoint:VpcEndpoint').filter((e) => e.inputs.vpcEndpointType === 'Interface')
  t.same(interfaces.map((e) => e.inputs.serviceName.split('.').slice(3).join('.')).sort(), ['ec2', 'ecr.api', 'ecr.dkr', 'ecs', 'logs', 'secretsmanager'])
  for (const e of interfaces) {
    t.equal(e.inputs.privateDnsEnabled, true)
    t.same(e.inputs.securityGroupIds, [one('base', SG, 'endpoints').id])
  }
})

t.test('security groups: no inline rules, no ingress from any CIDR', async (t) => {
  for (const prefix of ['base', 'direct', 'existing']) {
    for (const sg of resourcesOf(prefix, SG)) {
      t.notOk(sg.inputs.ingress?.length, `${sg.name}: no inline ingress`)
      t.notOk(sg.inputs.egress?.length, `${sg.name}: no inline egress (the provider drops AWS's default allow-all)`)
    }
    for (const r of resourcesOf(prefix, INGRESS)) {
      t.ok(r.inputs.referencedSecurityGroupId, `${r.name}: ingress names a security group`)
      t.notOk(r.inputs.cidrIpv4 || r.inputs.cidrIpv6 || r.inputs.prefixListId, `${r.name}: not a CIDR`)
      t.equal(r.inputs.ipProtocol, 'tcp')
      t.equal(r.inputs.fromPort, r.inputs.toPort, `${r.name}: one port`)
    }
  }
})

t.test('the Chroma port is open to the control plane only, and to the workflow Lambdas with direct access', async (t) => {
  t.same(rules('base', INGRESS, 'sessions'), [{ port: 8000, toPort: 8000, protocol: 'tcp', peer: 'control-plane' }])
  t.same(rules('direct', INGRESS, 'sessions'), [
    { port: 8000, toPort: 8000, protocol: 'tcp', peer: 'control-plane' },
    { port: 8000, toPort: 8000, protocol: 'tcp', peer: 'workflow-lambdas' },
  ])
  t.same(rules('base', EGRESS, 'workflow-lambdas'), [{ port: 443, toPort: 443, protocol: 'tcp', peer: 'alb' }], 'without direct access the Lambdas reach the control plane only')
  t.same(rules('direct', EGRESS, 'workflow-lambdas'), [
    { port: 443, toPort: 443, protocol: 'tcp', peer: 'alb' },
    { port: 8000, toPort: 8000, protocol: 'tcp', peer: 'sessions' },
  ])
  // sessions talk to AWS APIs and S3 only
  t.same(rules('base', EGRESS, 'sessions'), [
    { port: 443, toPort: 443, protocol: 'tcp', peer: 'endpoints' },
    { port: 443, toPort: 443, protocol: 'tcp', peer: 'prefix-list:pl-6da54004' },
  ])
})

t.test('the control plane is reached through its load balancer only', async (t) => {
  t.same(rules('base', INGRESS, 'control-plane'), [{ port: 8080, toPort: 8080, protocol: 'tcp', peer: 'alb' }])
  t.same(rules('base', INGRESS, 'alb'), [
    { port: 443, toPort: 443, protocol: 'tcp', peer: 'resource-gateway' },
    { port: 443, toPort: 443, protocol: 'tcp', peer: 'workflow-lambdas' },
  ])
  t.same(rules('base', EGRESS, 'alb'), [{ port: 8080, toPort: 8080, protocol: 'tcp', peer: 'control-plane' }])
  t.same(rules('base', EGRESS, 'resource-gateway'), [{ port: 443, toPort: 443, protocol: 'tcp', peer: 'alb' }])
  t.same(rules('base', EGRESS, 'control-plane'), [
    { port: 443, toPort: 443, protocol: 'tcp', peer: 'endpoints' },
    { port: 443, toPort: 443, protocol: 'tcp', peer: 'prefix-list:pl-6da54004' },
    { port: 5432, toPort: 5432, protocol: 'tcp', peer: 'database' },
    { port: 8000, toPort: 8000, protocol: 'tcp', peer: 'sessions' },
  ])
  t.same(rules('base', INGRESS, 'database'), [{ port: 5432, toPort: 5432, protocol: 'tcp', peer: 'control-plane' }])
  t.same(rules('base', INGRESS, 'endpoints'), [
    { port: 443, toPort: 443, protocol: 'tcp', peer: 'control-plane' },
    { port: 443, toPort: 443, protocol: 'tcp', peer: 'sessions' },
  ])

  const alb = one('base', 'aws:lb/loadBalancer:LoadBalancer', 'alb')
  t.equal(alb.inputs.internal, true, 'internal load balancer')
  t.same(alb.inputs.subnets, resourcesOf('base', 'aws:ec2/subnet:Subnet').map((s) => s.id))
  t.ok(alb.inputs.idleTimeout > 60, 'idle timeout above the long polls')
  const listener = one('base', 'aws:lb/listener:Listener', 'https')
  t.equal(listener.inputs.protocol, 'HTTPS')
  t.equal(listener.inputs.port, 443)
  t.match(listener.inputs.sslPolicy, /TLS13/)
  t.equal(resourcesOf('base', 'aws:lb/listener:Listener').length, 1, 'no plain-HTTP listener')
  const service = one('base', 'aws:ecs/service:Service', 'control-plane')
  t.equal(service.inputs.networkConfiguration.assignPublicIp, false)
  t.same(service.inputs.networkConfiguration.securityGroups, [one('base', SG, 'control-plane').id])
  t.equal(service.inputs.loadBalancers.length, 2, 'registered with the API and the query target groups')
})

t.test('the snapshot bucket aborts multipart uploads left incomplete (a save-back cut short) after a day', async (t) => {
  const bucket = one('base', 'aws:s3/bucket:Bucket', 'snapshots')
  const lifecycle = one('base', 'aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration', 'snapshots')
  t.equal(lifecycle.inputs.bucket, bucket.id, 'on the snapshot bucket')
  const rules = lifecycle.inputs.rules as Array<Record<string, any>>
  const abort = rules.filter((r) => r.abortIncompleteMultipartUpload)
  t.equal(abort.length, 1)
  t.match(abort[0], { status: 'Enabled', abortIncompleteMultipartUpload: { daysAfterInitiation: 1 } })
  t.same(abort[0]!.filter ?? {}, {}, 'for every key in the bucket')
  t.equal(resourcesOf('existing', 'aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration').length, 0, "an existing bucket's lifecycle is left alone")
})

t.test('an existing database: the control plane is let into its security group, no RDS is created', async (t) => {
  t.equal(resourcesOf('existing', 'aws:rds/instance:Instance').length, 0)
  t.equal(resourcesOf('existing', SG).filter((s) => s.name === 'existing-database').length, 0)
  const rule = one('existing', INGRESS, 'in-database-from-control-plane')
  t.equal(rule.inputs.securityGroupId, 'sg-0123456789abcdef0')
  t.equal(rule.inputs.referencedSecurityGroupId, one('existing', SG, 'control-plane').id)
  t.equal(rule.inputs.fromPort, 5432)
  t.equal(resourcesOf('existing', 'aws:s3/bucket:Bucket').length, 0, 'the named snapshot bucket is used')
  t.equal(resourcesOf('existing', 'aws:acm/certificate:Certificate').length, 0, 'the given certificate is used')
  t.equal(one('existing', 'aws:lb/listener:Listener', 'https').inputs.certificateArn, 'arn:aws:acm:eu-west-1:123456789012:certificate/11111111-2222-3333-4444-555555555555')
  t.equal(await valueOf(existing.snapshotBucketName), 'corp-chroma-snapshots')
  const db = resourcesOf('base', 'aws:rds/instance:Instance')[0]!
  t.equal(db.inputs.publiclyAccessible, false)
  t.equal(db.inputs.storageEncrypted, true)
  t.same(db.inputs.vpcSecurityGroupIds, [one('base', SG, 'database').id])
})

t.test('ECS: FARGATE and FARGATE_SPOT, the session task definition', async (t) => {
  const cp = one('base', 'aws:ecs/clusterCapacityProviders:ClusterCapacityProviders', 'capacity')
  t.same([...cp.inputs.capacityProviders].sort(), ['FARGATE', 'FARGATE_SPOT'])
  const cluster = one('base', 'aws:ecs/cluster:Cluster', 'cluster')
  t.same(cluster.inputs.settings, [{ name: 'containerInsights', value: 'enabled' }], 'Container Insights for the memory alarm')
  const td = one('base', 'aws:ecs/taskDefinition:TaskDefinition', 'session')
  t.equal(td.inputs.family, 'base-session')
  t.same(td.inputs.requiresCompatibilities, ['FARGATE'])
  t.equal(td.inputs.networkMode, 'awsvpc')
  const [container] = JSON.parse(td.inputs.containerDefinitions)
  t.equal(container.name, 'chroma-session', 'the container name the control plane overrides (ECS_CONTAINER_NAME)')
  t.same(container.portMappings, [{ containerPort: 8000, protocol: 'tcp' }])
  t.ok(container.environment.some((e: { name: string; value: string }) => e.name === 'CHROMA_PORT' && e.value === '8000'))
  t.same(container.healthCheck.command, ['CMD', 'node', '/app/healthcheck.mjs'], "the image's healthcheck, which ECS does not take from the image")
  t.ok(container.stopTimeout <= 120 && container.stopTimeout > 110, "room for the agent's own 110 s stop (a save on SIGTERM)")
  t.equal(td.inputs.executionRoleArn, 'arn:aws:iam::123456789012:role/base-session-execution')
  t.equal(td.inputs.taskRoleArn, 'arn:aws:iam::123456789012:role/base-session-task')

  const cpTd = one('base', 'aws:ecs/taskDefinition:TaskDefinition', 'control-plane')
  const env = Object.fromEntries(JSON.parse(cpTd.inputs.containerDefinitions)[0].environment.map((e: { name: string; value: string }) => [e.name, e.value]))
  t.match(env, {
    LAUNCHER: 'fargate',
    ECS_CLUSTER: 'base',
    ECS_TASK_DEFINITION: 'base-session',
    ECS_SECURITY_GROUPS: one('base', SG, 'sessions').id,
    ECS_CONTAINER_NAME: 'chroma-session',
    ECS_ASSIGN_PUBLIC_IP: 'false',
    ECS_CAPACITY_PROVIDER: 'FARGATE_SPOT',
    PUBLIC_URL: `https://${DOMAIN}`,
  })
  t.equal(env.ECS_SUBNETS, resourcesOf('base', 'aws:ec2/subnet:Subnet').map((s) => s.id).join(','))
  const secrets = JSON.parse(cpTd.inputs.containerDefinitions)[0].secrets.map((s: { name: string }) => s.name)
  t.same(secrets, ['DATABASE_URL', 'API_KEYS'], 'credentials come from Secrets Manager, not plain environment')
})

t.test('Step Functions: API-key connection over VPC Lattice, the rendered templates', async (t) => {
  const connection = one('base', 'aws:cloudwatch/eventConnection:EventConnection', 'connection')
  t.equal(connection.inputs.authorizationType, 'API_KEY')
  t.equal(connection.inputs.authParameters.apiKey.key, 'x-api-key', 'the header the control plane reads')
  t.equal(connection.inputs.authParameters.apiKey.value, 'clk_test')
  t.ok(isSecret(connection.raw.authParameters), 'the API key is a secret in the Pulumi state')
  t.ok(isSecret(one('base', 'aws:secretsmanager/secretVersion:SecretVersion', 'api-keys').raw.secretString), 'so are the control plane keys')
  t.ok(isSecret(one('base', 'aws:secretsmanager/secretVersion:SecretVersion', 'database-url').raw.secretString), 'and the database URL')
  const rc = one('base', 'aws:vpclattice/resourceConfiguration:ResourceConfiguration', 'control-plane')
  t.equal(connection.inputs.invocationConnectivityParameters.resourceParameters.resourceConfigurationArn, rc.state.arn)
  t.same(rc.inputs.resourceConfigurationDefinition, { dnsResource: { domainName: DOMAIN, ipAddressType: 'IPV4' } }, 'the public name the certificate is for')
  t.same(rc.inputs.portRanges, ['443'])
  const gw = one('base', 'aws:vpclattice/resourceGateway:ResourceGateway', 'gateway')
  t.equal(rc.inputs.resourceGatewayIdentifier, gw.id)
  t.same(gw.inputs.securityGroupIds, [one('base', SG, 'resource-gateway').id])
  const record = one('base', 'aws:route53/record:Record', 'dns')
  t.equal(record.inputs.name, DOMAIN)
  t.equal(record.inputs.aliases[0].name, one('base', 'aws:lb/loadBalancer:LoadBalancer', 'alb').state.dnsName, 'the public name points at the internal load balancer')
  t.equal(one('base', 'aws:acm/certificate:Certificate', 'cert').inputs.validationMethod, 'DNS', 'a publicly trusted ACM certificate')

  for (const name of ['lease-query', 'lease-map-query']) {
    const sm = one('base', 'aws:sfn/stateMachine:StateMachine', name)
    t.equal(sm.inputs.name, `base-${name}`)
    t.equal(sm.inputs.roleArn, 'arn:aws:iam::123456789012:role/base-state-machine')
    t.notMatch(sm.inputs.definition, /\$\{/, `${name}: placeholders filled in`)
    const def = JSON.parse(sm.inputs.definition)
    t.equal(def.States.Configure.Parameters.api, `https://${DOMAIN}`)
    t.equal(def.States.Acquire.Parameters.ApiEndpoint, `https://${DOMAIN}/v1/leases`)
    t.equal(def.States.Acquire.Parameters.Authentication.ConnectionArn, connection.state.arn)
  }
})

t.test('alarms: a session fails to start, query latency, memory', async (t) => {
  const alarms = resourcesOf('base', 'aws:cloudwatch/metricAlarm:MetricAlarm')
  t.same(alarms.map((a) => a.inputs.name).sort(), ['base-control-plane-memory', 'base-query-latency-p95', 'base-session-memory', 'base-session-start-failed', 'base-warm-pool-unfilled'])
  const topic = one('base', 'aws:sns/topic:Topic', 'alarms').state.arn
  for (const a of alarms) t.same(a.inputs.alarmActions, [topic], `${a.inputs.name} notifies`)

  const rule = one('base', 'aws:cloudwatch/eventRule:EventRule', 'session-start-failed')
  t.match(JSON.parse(rule.inputs.eventPattern), {
    source: ['aws.ecs'],
    'detail-type': ['ECS Task State Change'],
    detail: { group: ['family:base-session'], stopCode: ['TaskFailedToStart'], clusterArn: ['arn:aws:ecs:eu-west-1:123456789012:cluster/base'] },
  })
  t.equal(one('base', 'aws:cloudwatch/eventTarget:EventTarget', 'session-start-failed').inputs.arn, topic)
  const start = alarms.find((a) => a.inputs.name === 'base-session-start-failed')!
  t.same(start.inputs.dimensions, { RuleName: 'base-session-start-failed' })

  const latency = alarms.find((a) => a.inputs.name === 'base-query-latency-p95')!
  t.equal(latency.inputs.extendedStatistic, 'p95')
  t.equal(latency.inputs.dimensions.TargetGroup, one('base', 'aws:lb/targetGroup:TargetGroup', 'query').state.arnSuffix, 'query latency, not the long polls')
  const queryRule = one('base', 'aws:lb/listenerRule:ListenerRule', 'query')
  t.same(queryRule.inputs.conditions[0].pathPattern.values, ['/v1/sessions/*/query', '/v1/sessions/*/chroma/*', '/api/v2/*'])

  // The warm pool alarm watches the metric the control plane's "warm pool pass" log lines make.
  const filter = one('base', 'aws:cloudwatch/logMetricFilter:LogMetricFilter', 'warm-pool-unfilled')
  t.equal(filter.inputs.pattern, '{ $.msg = "warm pool pass" }')
  t.same(filter.inputs.metricTransformation, { name: 'WarmPoolUnfilled', namespace: 'ChromaLease', value: '$.warmPool.unfilled' })
  const warm = alarms.find((a) => a.inputs.name === 'base-warm-pool-unfilled')!
  t.match(warm.inputs, { namespace: 'ChromaLease', metricName: 'WarmPoolUnfilled', statistic: 'Minimum', evaluationPeriods: 10, threshold: 0 })

  const memory = alarms.find((a) => a.inputs.name === 'base-session-memory')!
  const used = memory.inputs.metricQueries.find((q: Registered['inputs']) => q.id === 'used')
  t.same(used.metric.dimensions, { ClusterName: 'base', TaskDefinitionFamily: 'base-session' })
  t.equal(memory.inputs.threshold, 85)
})
