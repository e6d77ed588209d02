import { Type } from 'typebox'

export const PreflightReport = Type.Object({
  ok: Type.Boolean({ description: 'True when every check passed' }),
  launcher: Type.Union([Type.Literal('process'), Type.Literal('fargate')]),
  checks: Type.Array(
    Type.Object({
      name: Type.String({ description: 'What was checked, e.g. "task definition"' }),
      ok: Type.Boolean(),
      detail: Type.String({ description: 'What was found, or what is wrong and which setting to fix' }),
    }),
  ),
})
