import { existsSync } from 'node:fs'
import { mkdir, mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { chromium, type Page } from 'playwright-core'
import t from 'tap'
import { buildTestApp, reconcileUntilSettled } from './helpers/app.ts'
import { buildSnapshotFixture } from './helpers/snapshot-fixture.ts'

// Swagger UI as the operators' console, in a real headless Chromium (Debian's package;
// .ci/run installs it and sets REQUIRE_BROWSER=1, so CI never skips this test).
const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium'
const ARTIFACTS = join(process.cwd(), '.tap', 'artifacts')
if (!existsSync(CHROMIUM)) {
  if (process.env.REQUIRE_BROWSER) throw new Error(`no Chromium at ${CHROMIUM}: install Debian's chromium package (apt-get install chromium)`)
  t.plan(0, `no Chromium at ${CHROMIUM} (apt-get install chromium to run the browser test)`)
  process.exit(0)
}

const OPERATOR = 'operator-key-0123456789'
const root = await mkdtemp(join(tmpdir(), 'chroma-lease-ui-'))
t.teardown(() => rm(root, { recursive: true, force: true }))
const fixture = await buildSnapshotFixture(root, { count: 10, dim: 4 })
const ctx = await buildTestApp(t, { snapshotRoot: root, listen: true, apiKeys: [{ role: 'operator', key: OPERATOR }] })
const lease = await ctx.app.inject({
  method: 'POST',
  url: '/v1/leases',
  headers: { 'x-api-key': OPERATOR },
  payload: { snapshot: `file://${fixture.dir}`, holder: 'ui-test' },
})
const sessionId: string = lease.json().session.id
// Drain is for serving sessions (a PENDING one answers 409), so let a real Chroma start first.
if ((await reconcileUntilSettled(ctx, sessionId)).status !== 'READY') throw new Error('the session did not become READY')

const browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox', '--disable-gpu'] })
t.teardown(() => browser.close())

/** Expands one operation, fills path parameters, executes it, and returns the live response's status and body. */
async function execute(page: Page, method: string, path: string, params: Record<string, string> = {}) {
  const op = page.locator(`.opblock-${method}`).filter({ has: page.locator('.opblock-summary-path', { hasText: new RegExp(`^${path.replace(/[{}]/g, '\\$&')}$`) }) })
  // Expand it unless an earlier call left it open; clear an earlier call's response.
  if (!(await op.getByRole('button', { name: 'Execute' }).isVisible())) await op.locator('.opblock-summary').first().click()
  // The console opens with "Try it out" already on (uiConfig.tryItOutEnabled).
  await op.getByRole('button', { name: 'Execute' }).waitFor()
  const clear = op.getByRole('button', { name: 'Clear' })
  if (await clear.isVisible()) await clear.click()
  for (const [name, value] of Object.entries(params)) {
    const row = op.locator(`tr[data-param-name="${name}"]`)
    // Booleans and enums are drop-downs, everything else a text field.
    if (await row.locator('select').count()) await row.locator('select').selectOption(value)
    else await row.locator('input').fill(value)
  }
  await op.getByRole('button', { name: 'Execute' }).click()
  const response = op.locator('.live-responses-table .response')
  await response.first().waitFor()
  const status = Number((await response.locator('.response-col_status').first().innerText()).trim())
  const body = await response.locator('.response-col_description pre').first().innerText()
  return { status, body }
}

t.test('an operator authorises with a key, lists sessions, inspects, drains and force-stops one', async (t) => {
  const page = await browser.newPage()
  await page.goto(`${ctx.url}/docs`)
  await page.locator('.swagger-ui .info .title').filter({ hasText: 'chroma-lease' }).waitFor()

  // Without a key, the API refuses: the console really goes through auth.
  const refused = await execute(page, 'get', '/v1/sessions')
  t.equal(refused.status, 401, 'before authorising')

  await page.getByRole('button', { name: 'Authorize' }).first().click()
  const apiKeyForm = page.locator('.auth-container').filter({ hasText: 'x-api-key' }).first()
  await apiKeyForm.locator('input').fill(OPERATOR)
  await apiKeyForm.getByRole('button', { name: 'Apply credentials' }).click()
  await apiKeyForm.getByRole('button', { name: 'Remove authorization' }).waitFor() // the key is applied
  await page.getByRole('button', { name: 'Close' }).first().click()

  // The list again, authorised (execute() clears the refused answer first, so what it reads is the new one).
  const list = await execute(page, 'get', '/v1/sessions')
  t.equal(list.status, 200, 'after authorising')
  t.match(list.body, sessionId, 'the list shows the session')

  const one = await execute(page, 'get', '/v1/sessions/{id}', { id: sessionId })
  t.equal(one.status, 200)
  t.equal(JSON.parse(one.body).leaseCount, 1, 'inspect: its live lease count')

  const drained = await execute(page, 'delete', '/v1/sessions/{id}', { id: sessionId })
  t.equal(drained.status, 200)
  t.equal(JSON.parse(drained.body).status, 'DRAINING')
  t.equal((await ctx.services.sessions.get(sessionId)).status, 'DRAINING', 'the drain reached the database')

  const stopped = await execute(page, 'delete', '/v1/sessions/{id}', { id: sessionId, force: 'true', reason: 'stuck, from the console' })
  t.equal(stopped.status, 200)
  t.equal(JSON.parse(stopped.body).status, 'STOPPING', 'force stop')
  const events = await ctx.services.sessions.events(sessionId, { limit: 100 })
  t.match(events.find((e) => e.type === 'force_stop'), { reason: 'stuck, from the console' }, 'the force stop and its reason are on the timeline')
  const leaseNow = await ctx.app.inject({ url: `/v1/leases/${lease.json().id}`, headers: { 'x-api-key': OPERATOR } })
  t.not(leaseNow.json().status, 'active', 'the force stop ended the lease')

  await mkdir(ARTIFACTS, { recursive: true })
  await page.screenshot({ path: join(ARTIFACTS, 'swagger-ui.png'), fullPage: true })
  t.ok(existsSync(join(ARTIFACTS, 'swagger-ui.png')), 'screenshot kept as a test artifact')
})
