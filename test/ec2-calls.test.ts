import { createRequire } from 'node:module'
import t from 'tap'
import { inProcessEc2, oneShotEc2 } from '../src/services/launchers/ec2-calls.ts'
import { EcsFake } from './helpers/ecs-fake.ts'

// The Fargate launcher's two ways to EC2 (ec2-calls.ts), against the ECS fake's EC2 with
// the real SDK: the one-shot way answers as the SDK does but never loads the SDK into
// this process (what keeps ~18 MB off every replica without public IPs); the in-process
// way loads it only at its first call.

const require = createRequire(import.meta.url)
const sdkPath = require.resolve('@aws-sdk/client-ec2')
// import() of a CommonJS package goes through require's cache too.
const sdkLoaded = () => sdkPath in require.cache

const fake = await EcsFake.start({ subnets: ['subnet-a'], securityGroups: ['sg-sessions'] })
t.teardown(() => fake.close())
const config = { endpoint: fake.endpoint, region: 'us-east-1', credentials: { accessKeyId: 'test', secretAccessKey: 'test' } }

t.test('one-shot: answers and EC2 errors as the SDK gives them, retries included, and the SDK never loads here', async (t) => {
  t.notOk(sdkLoaded(), 'nothing loaded the EC2 SDK before')
  const ec2 = oneShotEc2(config)
  const [subnets, groups, missing] = await Promise.all([
    ec2.call('DescribeSubnets', { SubnetIds: ['subnet-a'] }),
    ec2.call('DescribeSecurityGroups', { GroupIds: ['sg-sessions'] }),
    ec2.call('DescribeSubnets', { SubnetIds: ['subnet-a', 'subnet-b'] }).catch((err: Error) => err),
  ])
  t.same(subnets.Subnets?.map((s) => [s.SubnetId, s.VpcId]), [['subnet-a', 'vpc-fake']])
  t.same(groups.SecurityGroups?.map((g) => g.GroupName), ['sg-sessions-name'])
  t.ok(missing instanceof Error)
  t.match(missing, { name: 'InvalidSubnetID.NotFound', message: "The subnet ID 'subnet-b' does not exist" })

  fake.throttleEc2(1)
  const retried = await ec2.call('DescribeSecurityGroups', { GroupIds: ['sg-sessions'] })
  t.equal(retried.SecurityGroups?.length, 1, "RequestLimitExceeded is retried by the SDK's own retries in the child")
  t.notOk(sdkLoaded(), 'the EC2 SDK is still not loaded in this process')
})

t.test('one-shot: a child that cannot answer fails its calls with the reason, not a hang', async (t) => {
  const ec2 = oneShotEc2({ ...config, endpoint: 'http://127.0.0.1:1', maxAttempts: 1 })
  const err = await ec2.call('DescribeSubnets', { SubnetIds: ['subnet-a'] }).catch((e: Error) => e)
  t.ok(err instanceof Error)
  t.match((err as Error).message, /ECONNREFUSED/)
})

t.test('in-process: the SDK loads at the first call, not before', async (t) => {
  const ec2 = inProcessEc2(config)
  t.notOk(sdkLoaded(), 'not loaded when made')
  const reply = await ec2.call('DescribeSubnets', { SubnetIds: ['subnet-a'] })
  t.equal(reply.Subnets?.[0]?.VpcId, 'vpc-fake')
  t.ok(sdkLoaded(), 'loaded by the call')
})
