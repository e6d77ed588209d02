import { spawn } from 'node:child_process'
import { createRequire } from 'node:module'
import type {
  DescribeNetworkInterfacesCommandInput,
  DescribeNetworkInterfacesCommandOutput,
  DescribeSecurityGroupsCommandInput,
  DescribeSecurityGroupsCommandOutput,
  DescribeSubnetsCommandInput,
  DescribeSubnetsCommandOutput,
} from '@aws-sdk/client-ec2'

/** The EC2 calls the Fargate launcher makes, by action: [input, output]. */
interface Ec2Actions {
  DescribeSubnets: [DescribeSubnetsCommandInput, DescribeSubnetsCommandOutput]
  DescribeSecurityGroups: [DescribeSecurityGroupsCommandInput, DescribeSecurityGroupsCommandOutput]
  DescribeNetworkInterfaces: [DescribeNetworkInterfacesCommandInput, DescribeNetworkInterfacesCommandOutput]
}
export type Ec2Action = keyof Ec2Actions

/**
 * EC2 as the Fargate launcher uses it. The EC2 SDK is one 2 MB module holding every EC2
 * operation's schema: loaded, it keeps ~9 MB of V8 heap and ~18 MB of RSS (~38 MB right
 * after the calls) in a process for good, measured on Node 20 (BENCHMARKS.md). Without
 * public IPs the launcher only needs it for the preflight's two lookups, so those run in a
 * short-lived process instead (see oneShotEc2).
 */
export interface Ec2Calls {
  call<A extends Ec2Action>(action: A, input: Ec2Actions[A][0]): Promise<Ec2Actions[A][1]>
}

/** What an EC2 client is built from; serialisable, so a child process can build the same one. */
export interface Ec2ClientConfig {
  region: string
  endpoint?: string
  credentials?: { accessKeyId: string; secretAccessKey: string; sessionToken?: string }
  maxAttempts?: number
}

/**
 * The SDK loaded in this process at the first call and kept: for lookups made every pass
 * (public IPs, ECS_ASSIGN_PUBLIC_IP), where reloading it each time would cost far more.
 */
export function inProcessEc2(config: Ec2ClientConfig): Ec2Calls {
  let loaded: Promise<{ sdk: typeof import('@aws-sdk/client-ec2'); client: import('@aws-sdk/client-ec2').EC2Client }> | undefined
  return {
    async call(action, input) {
      const { sdk, client } = await (loaded ??= import('@aws-sdk/client-ec2').then((sdk) => ({ sdk, client: new sdk.EC2Client(config) })))
      const commands = { DescribeSubnets: sdk.DescribeSubnetsCommand, DescribeSecurityGroups: sdk.DescribeSecurityGroupsCommand, DescribeNetworkInterfaces: sdk.DescribeNetworkInterfacesCommand }
      const Command = commands[action] as new (input: unknown) => Parameters<typeof client.send>[0]
      return client.send(new Command(input)) as never
    },
  }
}

/** Runs in the child: reads { sdkPath, config, calls } on stdin, writes one { output } or { error } per call. */
const CHILD_SCRIPT = `
const chunks = []
process.stdin.on('data', (c) => chunks.push(c)).on('end', async () => {
  const { sdkPath, config, calls } = JSON.parse(Buffer.concat(chunks).toString())
  const sdk = require(sdkPath)
  const client = new sdk.EC2Client(config)
  const results = await Promise.all(calls.map(({ action, input }) => client.send(new sdk[action + 'Command'](input)).then(
    (output) => ({ output }),
    (err) => ({ error: { name: err.name, message: err.message } }),
  )))
  client.destroy()
  process.stdout.write(JSON.stringify(results), () => process.exit(0))
})
`
/** A lookup that takes longer than this (the SDK's retries included) fails. */
const CHILD_TIMEOUT_MS = 60_000

/**
 * Each batch of calls (those made in the same tick: the preflight's two) in a child Node
 * process that loads the SDK, makes them and exits, so this process never holds the SDK.
 * A worker thread was measured first and kept as much RSS as loading the SDK here (its
 * freed heap stays in the allocator's arenas); a process returns all of it. Costs about
 * half a second of CPU per batch. Replies come back as JSON: dates arrive as strings.
 */
export function oneShotEc2(config: Ec2ClientConfig): Ec2Calls {
  // Resolved, not loaded: the child requires the SDK from the path this process would use.
  const sdkPath = createRequire(import.meta.url).resolve('@aws-sdk/client-ec2')
  let batch: Array<{ action: Ec2Action; input: unknown; resolve: (output: never) => void; reject: (err: Error) => void }> | undefined
  const run = async (calls: NonNullable<typeof batch>) => {
    try {
      const results = await runChild(JSON.stringify({ sdkPath, config, calls: calls.map(({ action, input }) => ({ action, input })) }))
      calls.forEach((c, i) => {
        const r = results[i]
        if (r && 'output' in r) c.resolve(r.output as never)
        else c.reject(Object.assign(new Error(r?.error.message ?? 'no reply'), { name: r?.error.name ?? 'Error' }))
      })
    } catch (err) {
      for (const c of calls) c.reject(err as Error)
    }
  }
  return {
    call(action, input) {
      return new Promise((resolve, reject) => {
        if (!batch) {
          batch = []
          const calls = batch
          queueMicrotask(() => {
            batch = undefined
            void run(calls)
          })
        }
        batch.push({ action, input, resolve, reject })
      })
    },
  }
}

type ChildResult = { output: unknown } | { error: { name: string; message: string } }

function runChild(request: string): Promise<ChildResult[]> {
  return new Promise((resolve, reject) => {
    // NODE_OPTIONS is left out: the parent's loaders, hooks and heap flags are not for this child.
    const { NODE_OPTIONS: _, ...env } = process.env
    const child = spawn(process.execPath, ['-e', CHILD_SCRIPT], { env, stdio: ['pipe', 'pipe', 'pipe'], timeout: CHILD_TIMEOUT_MS })
    let stdout = ''
    let stderr = ''
    child.stdout.setEncoding('utf8').on('data', (s: string) => (stdout += s))
    child.stderr.setEncoding('utf8').on('data', (s: string) => (stderr = (stderr + s).slice(-2000)))
    child.on('error', reject)
    child.on('close', (code, signal) => {
      if (code === 0) {
        try {
          return resolve(JSON.parse(stdout))
        } catch {}
      }
      reject(new Error(`EC2 lookup process ${signal ? `killed by ${signal}` : `exited with ${code}`}: ${stderr.trim().split('\n').slice(-3).join(' ') || 'no output'}`))
    })
    child.stdin.end(request)
  })
}
