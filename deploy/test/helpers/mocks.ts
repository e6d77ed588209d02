import * as pulumi from '@pulumi/pulumi'

// Pulumi unit testing without the CLI or provider plugins: setMocks answers every
// resource registration and data-source call in-process, and records what the
// program asked for, so the tests can assert on the exact inputs AWS would get.

export const ACCOUNT = '123456789012'
export const REGION = 'eu-west-1'

export interface Registered {
  type: string
  name: string
  id: string
  /** The inputs with secrets unwrapped. */
  inputs: Record<string, any>
  /** The inputs as the engine got them: secrets still wrapped. */
  raw: Record<string, any>
  state: Record<string, any>
}

// How the Pulumi engine marks a secret value on the wire.
const SECRET_SIG = '4dabf18193072939515e22adb298388d'
const SECRET_VALUE = '1b47061264138c4ac30d75fd1eb44270'

export function isSecret(value: unknown): boolean {
  return !!value && typeof value === 'object' && (value as Record<string, unknown>)[SECRET_SIG] === SECRET_VALUE
}

function unwrap(value: unknown): any {
  if (isSecret(value)) return unwrap((value as { value: unknown }).value)
  if (Array.isArray(value)) return value.map(unwrap)
  if (value && typeof value === 'object') return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, unwrap(v)]))
  return value
}

export const registered: Registered[] = []

const service = (type: string) => type.split(':')[1]!.split('/')[0]!.toLowerCase()

/** Plausible computed outputs (ARNs, names) for the resource types the stack reads back. */
function computed(type: string, name: string, inputs: Record<string, any>): Record<string, unknown> {
  const n = inputs.name ?? name
  switch (type) {
    case 'aws:iam/role:Role':
      return { arn: `arn:aws:iam::${ACCOUNT}:role/${n}`, name: n, uniqueId: `AROA${Buffer.from(n).toString('hex').toUpperCase().slice(0, 17)}` }
    case 'aws:ecs/cluster:Cluster':
      return { arn: `arn:aws:ecs:${REGION}:${ACCOUNT}:cluster/${n}`, name: n }
    case 'aws:ecs/taskDefinition:TaskDefinition':
      return { arn: `arn:aws:ecs:${REGION}:${ACCOUNT}:task-definition/${inputs.family}:1`, revision: 1 }
    case 'aws:ecs/service:Service':
      return { arn: `arn:aws:ecs:${REGION}:${ACCOUNT}:service/${n}`, name: n }
    case 'aws:s3/bucket:Bucket':
      return { arn: `arn:aws:s3:::${name}-bucket`, bucket: `${name}-bucket` }
    case 'aws:ec2/vpcEndpoint:VpcEndpoint':
      return { prefixListId: 'pl-6da54004' }
    case 'aws:lb/loadBalancer:LoadBalancer':
      return { arn: `arn:aws:elasticloadbalancing:${REGION}:${ACCOUNT}:loadbalancer/app/${name}/50dc6c495c0c9188`, arnSuffix: `app/${name}/50dc6c495c0c9188`, dnsName: `internal-${name}.${REGION}.elb.amazonaws.com`, zoneId: 'Z32O12XQLNTSW2' }
    case 'aws:lb/targetGroup:TargetGroup':
      return { arn: `arn:aws:elasticloadbalancing:${REGION}:${ACCOUNT}:targetgroup/${name}/943f017f100becff`, arnSuffix: `targetgroup/${name}/943f017f100becff` }
    case 'aws:acm/certificate:Certificate':
      return { arn: `arn:aws:acm:${REGION}:${ACCOUNT}:certificate/${name}`, domainValidationOptions: [{ domainName: inputs.domainName, resourceRecordName: `_x.${inputs.domainName}.`, resourceRecordType: 'CNAME', resourceRecordValue: '_y.acm-validations.aws.' }] }
    case 'aws:acm/certificateValidation:CertificateValidation':
      return { certificateArn: inputs.certificateArn }
    case 'aws:cloudwatch/eventConnection:EventConnection':
      return { arn: `arn:aws:events:${REGION}:${ACCOUNT}:connection/${n}/6c1a2b3c-0000-4000-8000-000000000001`, secretArn: `arn:aws:secretsmanager:${REGION}:${ACCOUNT}:secret:events!connection/${n}/6c1a2b3c-AbCdEf` }
    case 'aws:cloudwatch/eventRule:EventRule':
      return { arn: `arn:aws:events:${REGION}:${ACCOUNT}:rule/${n}`, name: n }
    case 'aws:sfn/stateMachine:StateMachine':
      return { arn: `arn:aws:states:${REGION}:${ACCOUNT}:stateMachine:${n}` }
    case 'aws:cloudwatch/logGroup:LogGroup':
      return { arn: `arn:aws:logs:${REGION}:${ACCOUNT}:log-group:${n}`, name: n }
    case 'aws:secretsmanager/secret:Secret':
      return { arn: `arn:aws:secretsmanager:${REGION}:${ACCOUNT}:secret:${n}-AbCdEf` }
    case 'aws:route53/record:Record':
      return { fqdn: inputs.name }
    case 'aws:rds/instance:Instance':
      return { address: `${name}.cluster.${REGION}.rds.amazonaws.com`, port: 5432 }
    default:
      return { arn: `arn:aws:${service(type)}:${REGION}:${ACCOUNT}:${type.split(':').pop()!.toLowerCase()}/${n}` }
  }
}

let installed = false

export function installMocks(): void {
  if (installed) return
  installed = true
  pulumi.runtime.setMocks(
    {
      newResource(args: pulumi.runtime.MockResourceArgs) {
        const id = `${args.name}-id`
        const inputs = unwrap(args.inputs) as Record<string, any>
        const state = { ...inputs, ...computed(args.type, args.name, inputs) }
        registered.push({ type: args.type, name: args.name, id, inputs, raw: args.inputs, state })
        return { id, state }
      },
      call(args: pulumi.runtime.MockCallArgs) {
        switch (args.token) {
          case 'aws:index/getCallerIdentity:getCallerIdentity':
            return { accountId: ACCOUNT, arn: `arn:aws:iam::${ACCOUNT}:user/test`, userId: 'AIDTEST', id: ACCOUNT }
          case 'aws:index/getRegion:getRegion':
            return { name: REGION, region: REGION, id: REGION, endpoint: `ec2.${REGION}.amazonaws.com`, description: 'Europe (Ireland)' }
          case 'aws:index/getPartition:getPartition':
            return { partition: 'aws', dnsSuffix: 'amazonaws.com', id: 'aws', reverseDnsPrefix: 'com.amazonaws' }
          case 'aws:index/getAvailabilityZones:getAvailabilityZones':
            return { names: [`${REGION}a`, `${REGION}b`, `${REGION}c`], zoneIds: ['euw1-az1', 'euw1-az2', 'euw1-az3'], id: REGION }
          default:
            throw new Error(`no mock for ${args.token}`)
        }
      },
    },
    'chroma-lease',
    'test',
    false,
  )
}

/** Resolves an Output's value (mocks resolve everything in-process). */
export function valueOf<T>(o: pulumi.Input<T>): Promise<T> {
  return new Promise((resolve) => pulumi.output(o).apply((v) => resolve(v as T)))
}

/** Waits until no resource has registered for a while: applies have run, policies are rendered. */
export async function settled(quietMs = 150, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  let count = -1
  while (count !== registered.length) {
    if (Date.now() > deadline) throw new Error('resources kept registering')
    count = registered.length
    await new Promise((r) => setTimeout(r, quietMs))
  }
}

/** The registrations of one stack (by its prefix), optionally of one type. */
export function resourcesOf(prefix: string, type?: string): Registered[] {
  return registered.filter((r) => r.name.startsWith(`${prefix}-`) && (!type || r.type === type))
}

export function one(prefix: string, type: string, name: string): Registered {
  const r = registered.find((x) => x.type === type && x.name === `${prefix}-${name}`)
  if (!r) throw new Error(`no ${type} named ${prefix}-${name}; have ${resourcesOf(prefix, type).map((x) => x.name).join(', ')}`)
  return r
}
