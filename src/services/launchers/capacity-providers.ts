import type { CapacityProviderStrategyItem } from '@aws-sdk/client-ecs'

/** `FARGATE`, or `FARGATE_SPOT:3,FARGATE:1:1` (provider:weight:base), as a RunTask capacity provider strategy. */
export function parseCapacityProviders(value: string): CapacityProviderStrategyItem[] {
  return value.split(',').map((part) => {
    const [capacityProvider, weight, base] = part.trim().split(':')
    if (!capacityProvider) throw new Error(`empty capacity provider in ${JSON.stringify(value)}`)
    const item: CapacityProviderStrategyItem = { capacityProvider, weight: weight === undefined ? 1 : Number(weight) }
    if (base !== undefined) item.base = Number(base)
    if (!Number.isInteger(item.weight) || item.weight! < 0 || (item.base !== undefined && (!Number.isInteger(item.base) || item.base < 0))) {
      throw new Error(`bad capacity provider ${JSON.stringify(part)}: use NAME[:WEIGHT[:BASE]]`)
    }
    return item
  })
}
