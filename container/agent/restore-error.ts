/** A restore that cannot succeed; its message is the session's failure reason, as is. */
export class RestoreError extends Error {
  override name = 'RestoreError'
}
