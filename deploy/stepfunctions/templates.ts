import { readFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

/**
 * The Step Functions templates of chroma-lease and the one way they are filled in.
 *
 * A template is Amazon States Language (JSONPath) with two deploy-time placeholders,
 * written `${Name}` as CloudFormation's DefinitionSubstitutions and CDK's
 * definitionSubstitutions write them:
 *
 *   ${ControlPlaneUrl}  the control plane's base URL, https, no trailing slash
 *   ${ConnectionArn}    the EventBridge connection that adds the API key
 *
 * Both the Pulumi program and the tests render through renderTemplate(), so what the
 * tests execute is what gets deployed.
 */

export const TEMPLATE_NAMES = ['lease-query', 'lease-map-query'] as const
export type TemplateName = (typeof TEMPLATE_NAMES)[number]

export const PLACEHOLDERS = ['ControlPlaneUrl', 'ConnectionArn'] as const
export type Placeholder = (typeof PLACEHOLDERS)[number]
export type Substitutions = Record<Placeholder, string>

export const HTTP_INVOKE = 'arn:aws:states:::http:invoke'

const here = dirname(fileURLToPath(import.meta.url))

export function templatePath(name: TemplateName): string {
  return join(here, `${name}.asl.json`)
}

/** The template as written, placeholders and all. */
export function loadTemplate(name: TemplateName): AslDefinition {
  return JSON.parse(readFileSync(templatePath(name), 'utf8')) as AslDefinition
}

export interface RenderOptions {
  /**
   * Allow an http:// control plane URL. Only for local runs (aws-local-stepfunctions):
   * a real HTTP Task calls https endpoints only.
   */
  allowHttp?: boolean
}

/**
 * Fills the placeholders in. Substitution happens in parsed JSON string values, never
 * in the raw text, so no value can change the document's structure.
 */
export function renderTemplate(name: TemplateName, values: Substitutions, opts: RenderOptions = {}): AslDefinition {
  return renderDefinition(loadTemplate(name), values, opts)
}

export function renderDefinition(definition: AslDefinition, values: Substitutions, opts: RenderOptions = {}): AslDefinition {
  checkSubstitutions(values, opts)
  const rendered = mapStrings(definition, (s) =>
    s.replace(/\$\{([A-Za-z]+)\}/g, (whole, key: string) => {
      if (!(PLACEHOLDERS as readonly string[]).includes(key)) throw new Error(`unknown placeholder ${whole} in template`)
      return values[key as Placeholder]
    }),
  ) as AslDefinition
  return rendered
}

/** Rendered as the JSON text a state machine's `definition` takes. */
export function renderTemplateJson(name: TemplateName, values: Substitutions, opts: RenderOptions = {}): string {
  return JSON.stringify(renderTemplate(name, values, opts))
}

function checkSubstitutions(values: Substitutions, opts: RenderOptions) {
  for (const p of PLACEHOLDERS) {
    if (typeof values[p] !== 'string' || values[p] === '') throw new Error(`missing substitution for \${${p}}`)
  }
  let url: URL
  try {
    url = new URL(values.ControlPlaneUrl)
  } catch {
    throw new Error(`ControlPlaneUrl is not a URL: ${values.ControlPlaneUrl}`)
  }
  if (url.protocol !== 'https:' && !(opts.allowHttp && url.protocol === 'http:')) {
    throw new Error(`ControlPlaneUrl must be https (HTTP Tasks call https endpoints only): ${values.ControlPlaneUrl}`)
  }
  if (values.ControlPlaneUrl.endsWith('/') || url.search || url.hash) {
    throw new Error(`ControlPlaneUrl must be a base URL without a trailing slash, query or fragment: ${values.ControlPlaneUrl}`)
  }
  if (!/^arn:aws[a-z-]*:events:[a-z0-9-]+:\d{12}:connection\/.+/.test(values.ConnectionArn)) {
    throw new Error(`ConnectionArn is not an EventBridge connection ARN: ${values.ConnectionArn}`)
  }
}

function mapStrings(value: unknown, f: (s: string) => string): unknown {
  if (typeof value === 'string') return f(value)
  if (Array.isArray(value)) return value.map((v) => mapStrings(v, f))
  if (value && typeof value === 'object') {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, mapStrings(v, f)]))
  }
  return value
}

// ---------------------------------------------------------------------------------
// A small typed view of ASL, and walks over it, for the tests and the Pulumi program.

export interface AslDefinition {
  Comment?: string
  StartAt: string
  TimeoutSeconds?: number
  States: Record<string, AslState>
}

export interface AslState {
  Type: 'Task' | 'Parallel' | 'Map' | 'Pass' | 'Wait' | 'Choice' | 'Succeed' | 'Fail'
  Resource?: string
  Parameters?: Record<string, unknown>
  Next?: string
  End?: boolean
  Default?: string
  Choices?: Array<Record<string, unknown> & { Next: string }>
  Catch?: Array<{ ErrorEquals: string[]; Next: string; ResultPath?: string | null }>
  Retry?: Array<{ ErrorEquals: string[]; MaxAttempts?: number }>
  Branches?: AslDefinition[]
  ItemProcessor?: AslDefinition & { ProcessorConfig?: { Mode?: string } }
  TimeoutSeconds?: number
  [key: string]: unknown
}

export interface StateRef {
  name: string
  state: AslState
  /** Names of the enclosing Parallel/Map states, outermost first. */
  parents: string[]
}

/** Every state, nested ones (Parallel branches, Map item processors) included. */
export function allStates(def: AslDefinition, parents: string[] = []): StateRef[] {
  const out: StateRef[] = []
  for (const [name, state] of Object.entries(def.States)) {
    out.push({ name, state, parents })
    for (const b of state.Branches ?? []) out.push(...allStates(b, [...parents, name]))
    if (state.ItemProcessor) out.push(...allStates(state.ItemProcessor, [...parents, name]))
  }
  return out
}

export function httpTasks(def: AslDefinition): StateRef[] {
  return allStates(def).filter((s) => s.state.Type === 'Task' && s.state.Resource === HTTP_INVOKE)
}

/** The states a state can move to: Next, Default, each Choice's Next, each Catch's Next. */
export function successors(state: AslState): string[] {
  return [
    ...(state.Next ? [state.Next] : []),
    ...(state.Default ? [state.Default] : []),
    ...(state.Choices ?? []).map((c) => c.Next),
    ...(state.Catch ?? []).map((c) => c.Next),
  ]
}

export interface HttpTaskParameters {
  ApiEndpoint?: string
  'ApiEndpoint.$'?: string
  Method?: string
  Authentication?: { ConnectionArn?: string }
  InvocationConfig?: { ConnectionArn?: string }
  Headers?: Record<string, unknown>
  QueryParameters?: Record<string, unknown>
  RequestBody?: unknown
  'RequestBody.$'?: string
  Transform?: unknown
}
