import { badRequest } from '../services/errors.ts'

/**
 * A date-time query parameter as a Date. The schema's `date-time` format admits what
 * JavaScript cannot represent (a leap second, `…T23:59:60Z`): that is a 400 here, not
 * an Invalid Date sent on to Postgres as a 500.
 */
export function dateParam(name: string, value: string | undefined): Date | undefined {
  if (value === undefined) return undefined
  const date = new Date(value)
  if (Number.isNaN(date.getTime())) throw badRequest('validation_failed', `querystring/${name} ${JSON.stringify(value)} is not a time this server can represent`)
  return date
}
