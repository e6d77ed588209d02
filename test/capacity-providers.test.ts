import t from 'tap'
import { loadConfig } from '../src/config.ts'
import { parseCapacityProviders } from '../src/services/launchers/capacity-providers.ts'

t.test('ECS_CAPACITY_PROVIDER becomes a RunTask capacity provider strategy', async (t) => {
  t.same(parseCapacityProviders('FARGATE'), [{ capacityProvider: 'FARGATE', weight: 1 }])
  t.same(parseCapacityProviders('FARGATE_SPOT'), [{ capacityProvider: 'FARGATE_SPOT', weight: 1 }])
  t.same(parseCapacityProviders('FARGATE_SPOT:3, FARGATE:1:2'), [
    { capacityProvider: 'FARGATE_SPOT', weight: 3 },
    { capacityProvider: 'FARGATE', weight: 1, base: 2 },
  ], 'weights and a base, spaces allowed')
  t.same(parseCapacityProviders('FARGATE:0:1,FARGATE_SPOT:1'), [
    { capacityProvider: 'FARGATE', weight: 0, base: 1 },
    { capacityProvider: 'FARGATE_SPOT', weight: 1 },
  ], 'a base on a weight-0 provider: the first task there, the rest on Spot')
})

t.test('a bad strategy is refused with what is wrong, before any launch', async (t) => {
  const bad: Array<[string, RegExp]> = [
    ['', /empty capacity provider/],
    ['FARGATE,', /empty capacity provider/],
    [':3', /empty capacity provider/],
    ['FARGATE:x', /weight must be an integer from 0 to 1000/],
    ['FARGATE:-1', /weight must be an integer/],
    ['FARGATE:1.5', /weight must be an integer/],
    ['FARGATE::1', /weight must be an integer/],
    ['FARGATE:1001', /weight must be an integer from 0 to 1000/],
    ['FARGATE:1:100001', /base must be an integer from 0 to 100000/],
    ['FARGATE:1:1:1', /use NAME\[:WEIGHT\[:BASE\]\]/],
    ['FARGATE:1:1,FARGATE_SPOT:1:1', /only one capacity provider may have a base/],
    ['FARGATE,FARGATE:2', /named twice/],
    ['FARGATE:0,FARGATE_SPOT:0', /at least one capacity provider needs a weight above 0/],
    ['A,B,C,D,E,F,G', /at most 6 capacity providers/],
  ]
  for (const [value, message] of bad) t.throws(() => parseCapacityProviders(value), message, JSON.stringify(value))

  t.throws(
    () => loadConfig({ LAUNCHER: 'fargate', ECS_CLUSTER: 'c', ECS_TASK_DEFINITION: 'td', ECS_SUBNETS: 'subnet-a', SESSION_TASK_ROLE_ID: 'AROAEXAMPLEROLEID01', ECS_CAPACITY_PROVIDER: 'FARGATE_SPOT:lots' }),
    /ECS_CAPACITY_PROVIDER: bad capacity provider "FARGATE_SPOT:lots": weight must be an integer/,
    'the configuration names the variable',
  )
})
