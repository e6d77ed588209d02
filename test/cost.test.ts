import t from 'tap'
import { loadConfig } from '../src/config.ts'
import { alwaysOnVersusOnDemand, DEFAULT_FARGATE_PRICES as prices, hourlyPrice, runCost, sessionCost } from '../src/services/cost.ts'

// Session cost at Fargate prices: pure functions and their configuration.

const x86 = { cpuUnits: 1024, memoryMiB: 2048, architecture: 'x86_64' }
const arm = { ...x86, architecture: 'arm64' }
const close = (actual: number, expected: number) => Math.abs(actual - expected) < 1e-12

t.test('hourly price per vCPU-hour and GB-hour, ARM cheaper than x86', async (t) => {
  t.ok(close(hourlyPrice(x86, prices), 0.04937), '1 vCPU + 2 GB x86: $0.04048 + 2 × $0.004445')
  t.ok(close(hourlyPrice(arm, prices), 0.0395), '1 vCPU + 2 GB ARM: $0.03238 + 2 × $0.00356')
  t.ok(close(hourlyPrice({ cpuUnits: 256, memoryMiB: 512, architecture: 'x86_64' }, prices), 0.0123425), '0.25 vCPU + 0.5 GB')
  t.ok(close(hourlyPrice({ ...x86, architecture: 'unknown' }, prices), 0.04937), 'an unknown architecture is priced as x86, the dearer')
})

t.test('per-second billing with a one-minute minimum', async (t) => {
  t.ok(close(runCost(x86, 5, prices), 0.04937 / 60), '5 s bills a minute')
  t.ok(close(runCost(x86, 0, prices), 0.04937 / 60), 'so does a task that never ran')
  t.ok(close(runCost(x86, 60, prices), 0.04937 / 60))
  t.ok(close(runCost(x86, 90.2, prices), (0.04937 * 91) / 3600), 'whole seconds, rounded up')
  t.ok(close(runCost(x86, 3600, prices), 0.04937), 'an hour costs the hourly price')
  t.ok(close(runCost(arm, 7200, prices), 0.079), 'two ARM hours')
})

t.test('a session costs from launch to end, or to now while it runs; none without a size', async (t) => {
  const launchedAt = new Date('2026-11-25T10:00:00Z')
  const base = { cpuUnits: 1024, memoryMiB: 2048, cpuArchitecture: 'arm64', capacityProvider: 'FARGATE_SPOT', launchedAt, endedAt: null }
  const running = sessionCost(base, prices, new Date('2026-11-25T11:00:00Z'))
  t.same(running, { vcpu: 1, memoryGb: 2, architecture: 'arm64', capacityProvider: 'FARGATE_SPOT', runSeconds: 3600, hourlyUsd: 0.0395, costUsd: 0.0395 })
  const ended = sessionCost({ ...base, endedAt: new Date('2026-11-25T10:00:30Z') }, prices, new Date('2026-11-26T00:00:00Z'))!
  t.equal(ended.runSeconds, 30, 'an ended session stops costing')
  t.equal(ended.costUsd, 0.000658, 'the one-minute minimum: $0.0395 / 60, to the micro-dollar')
  const x86Run = sessionCost({ ...base, cpuArchitecture: 'x86_64', capacityProvider: 'FARGATE', endedAt: new Date('2026-11-25T10:05:00Z') }, prices, new Date())!
  t.same([x86Run.runSeconds, x86Run.hourlyUsd, x86Run.costUsd], [300, 0.04937, 0.004114], '5 min x86: $0.04937 / 12')
  t.equal(sessionCost({ ...base, cpuArchitecture: null }, prices, launchedAt)!.architecture, 'x86_64', 'no architecture reported: priced as x86')
  t.equal(sessionCost({ ...base, cpuUnits: null, memoryMiB: null }, prices, new Date()), null, 'local processes report no size')
  t.equal(sessionCost({ ...base, launchedAt: null }, prices, new Date()), null, 'never launched')
})

t.test("the original design's comparison: a 0.5 vCPU / 2 GB x86 task 24/7 is $21.26 a month", async (t) => {
  const size = { cpuUnits: 512, memoryMiB: 2048, architecture: 'x86_64' }
  const { alwaysOnUsd, onDemandUsd } = alwaysOnVersusOnDemand(size, Array(730).fill(345), prices)
  t.equal(alwaysOnUsd, 21.26, '$0.02913/h × 730 h')
  t.equal(onDemandUsd, 2.0379, '730 runs of 345 s: 730 × 345 s × $0.02913/h')
})

t.test('prices come from the environment, validated', async (t) => {
  t.same(loadConfig({}).prices, prices, 'us-east-1 by default')
  const config = loadConfig({ FARGATE_VCPU_HOUR_USD: '0.05', FARGATE_ARM_GB_HOUR_USD: '0.004' })
  t.same(config.prices.x86, { vcpuHour: 0.05, gbHour: 0.004445 })
  t.same(config.prices.arm, { vcpuHour: 0.03238, gbHour: 0.004 })
  t.equal(config.prices.minimumSeconds, 60)
  t.throws(() => loadConfig({ FARGATE_GB_HOUR_USD: 'cheap' }), { name: 'ConfigError', message: /FARGATE_GB_HOUR_USD/ })
  t.throws(() => loadConfig({ FARGATE_ARM_VCPU_HOUR_USD: '-1' }), { name: 'ConfigError', message: /FARGATE_ARM_VCPU_HOUR_USD/ })
})
