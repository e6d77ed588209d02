import type { CapacityProviderStrategyItem } from '@aws-sdk/client-ecs'

/** ECS's bounds (CapacityProviderStrategyItem): weight 0-1000, base 0-100000, at most 6 providers. */
const MAX_WEIGHT = 1000
const MAX_BASE = 100_000
const MAX_PROVIDERS = 6

/**
 * `FARGATE`, or `FARGATE_SPOT:3,FARGATE:1:1` (provider:weight:base), as a RunTask capacity
 * provider strategy. Checked here against ECS's own rules, so a bad setting stops the
 * process at start instead of failing every launch with a RunTask 400.
 */
export function parseCapacityProviders(value: string): CapacityProviderStrategyItem[] {
  const usage = 'use NAME[:WEIGHT[:BASE]],…'
  const items = value.split(',').map((part) => {
    const fields = part.trim().split(':')
    const [capacityProvider, weight, base] = fields
    if (!capacityProvider) throw new Error(`empty capacity provider in ${JSON.stringify(value)}: ${usage}`)
    if (fields.length > 3) throw new Error(`bad capacity provider ${JSON.stringify(part)}: ${usage}`)
    const item: CapacityProviderStrategyItem = { capacityProvider, weight: weight === undefined ? 1 : integerIn(weight, MAX_WEIGHT, 'weight', part) }
    if (base !== undefined) item.base = integerIn(base, MAX_BASE, 'base', part)
    return item
  })
  if (items.length > MAX_PROVIDERS) throw new Error(`at most ${MAX_PROVIDERS} capacity providers in a strategy (ECS's rule), in ${JSON.stringify(value)}`)
  if (items.filter((i) => i.base !== undefined).length > 1) throw new Error(`only one capacity provider may have a base (ECS's rule), in ${JSON.stringify(value)}`)
  if (new Set(items.map((i) => i.capacityProvider)).size !== items.length) throw new Error(`a capacity provider is named twice in ${JSON.stringify(value)}`)
  if (!items.some((i) => i.weight! > 0)) throw new Error(`at least one capacity provider needs a weight above 0, in ${JSON.stringify(value)}`)
  return items
}

function integerIn(text: string, max: number, what: string, part: string): number {
  const n = /^\d+$/.test(text) ? Number(text) : NaN
  if (!Number.isInteger(n) || n > max) throw new Error(`bad capacity provider ${JSON.stringify(part)}: ${what} must be an integer from 0 to ${max}`)
  return n
}
