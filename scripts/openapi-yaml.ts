import { stringify } from 'yaml'

/** The spec as YAML without anchors and aliases, which some OpenAPI tools reject. */
export function openapiYaml(spec: unknown): string {
  return stringify(spec, { aliasDuplicateObjects: false, lineWidth: 0 })
}
