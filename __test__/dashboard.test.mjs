// The live page of `npm start` in a real browser: starts examples/express-server.mjs (with its own
// redis-server) on a free port, opens `/` in headless Chromium (Debian's package, driven by
// playwright-core), starts a load burst, and checks that the charts' data moved; then stops and
// restarts the example's redis-server from the page. Screenshots go to test-output/.
//
// Needs redis-server and chromium: installed with apt-get when missing and running as root;
// otherwise the test fails and says what to install.
import assert from 'node:assert/strict'
import { spawn, spawnSync } from 'node:child_process'
import { accessSync, constants, mkdirSync } from 'node:fs'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, test } from 'node:test'
import { fileURLToPath } from 'node:url'

const root = fileURLToPath(new URL('..', import.meta.url))
const outputDir = join(root, 'test-output')
const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium'
const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
]
// Generous, bounded waits: the machine may be busy with other work.
const START_TIMEOUT_MS = 60_000
const CONDITION_TIMEOUT_MS = 90_000

function executable(path) {
  try {
    accessSync(path, constants.X_OK)
    return true
  } catch {
    return false
  }
}

function commandWorks(command) {
  return spawnSync(command, ['--version'], { stdio: 'ignore' }).status === 0
}

let aptUpdated = false
/** Installs a Debian package when running as root with apt-get; otherwise fails saying what is missing. */
function aptInstall(pkg, why) {
  const canInstall = process.getuid?.() === 0 && commandWorks('apt-get')
  if (!canInstall) {
    throw new Error(
      `${why} needs the Debian/Ubuntu package '${pkg}', which is missing. Install it (apt-get install -y ${pkg}) ` +
        'or run this test as root on Debian/Ubuntu so that it can install it.',
    )
  }
  const run = (args) => {
    console.error(`dashboard test: apt-get ${args.join(' ')}`)
    const result = spawnSync('apt-get', args, {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' },
      timeout: 15 * 60_000,
      maxBuffer: 64 * 1024 * 1024,
    })
    if (result.status !== 0) {
      throw new Error(`apt-get ${args.join(' ')} failed (${result.signal ?? `exit ${result.status}`}):\n${String(result.stderr).slice(-2000)}`)
    }
  }
  if (!aptUpdated) {
    run(['update', '-qq'])
    aptUpdated = true
  }
  run(['install', '-y', '-qq', pkg])
}

/** Starts the example on a free port; resolves with its URL once it listens. */
function startExample() {
  const env = { ...process.env }
  delete env.REDIS_URL // the example must start (and be able to stop) its own redis-server
  const child = spawn(process.execPath, ['examples/express-server.mjs', '--port', '0'], {
    cwd: root,
    env,
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: true, // its own process group, so cleanup can reach its redis-server too
  })
  let output = ''
  child.stdout.on('data', (chunk) => (output += chunk))
  child.stderr.on('data', (chunk) => (output += chunk))
  child.output = () => output
  const exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })))
  child.exited = exited
  const listening = new Promise((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new Error(`the example did not start within ${START_TIMEOUT_MS} ms:\n${output}`)),
      START_TIMEOUT_MS,
    )
    const check = () => {
      const match = /listening on (http:\/\/127\.0\.0\.1:\d+)/.exec(output)
      if (match && /provider: /.test(output)) {
        clearTimeout(timer)
        resolve(match[1])
      }
    }
    child.stdout.on('data', check)
    exited.then(({ code, signal }) => {
      clearTimeout(timer)
      reject(new Error(`the example exited (${signal ?? code}) before listening:\n${output}`))
    })
  })
  return { child, listening }
}

let example = null
let context = null
let page = null
let base = ''
let userDataDir = null
const pageErrors = []

before(async () => {
  if (!commandWorks('redis-server')) aptInstall('redis-server', 'The live page test (the example runs its own redis-server)')
  if (!executable(CHROMIUM)) aptInstall('chromium', 'The live page test (a real browser)')
  assert.ok(executable(CHROMIUM), `${CHROMIUM} is still missing after installing chromium`)

  let chromium
  try {
    ;({ chromium } = await import('playwright-core'))
  } catch (error) {
    throw new Error(`playwright-core is missing (a devDependency): run \`npm ci\` first (${error.message})`)
  }

  mkdirSync(outputDir, { recursive: true })
  example = startExample()
  base = await example.listening
  assert.match(example.child.output(), /private redis-server at redis:\/\//, 'the example should run its own redis-server')

  userDataDir = await mkdtemp(join(tmpdir(), 'trypema-dashboard-chromium-'))
  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    args: CHROMIUM_ARGS,
    viewport: { width: 1280, height: 1000 },
    timeout: START_TIMEOUT_MS,
  })
  context.setDefaultTimeout(CONDITION_TIMEOUT_MS)
  page = context.pages()[0] ?? (await context.newPage())
  page.on('pageerror', (error) => pageErrors.push(`pageerror: ${error.message}`))
  // Everything the page loads comes from the example itself (no CDN: it must work offline).
  page.on('request', (request) => {
    const url = request.url()
    if (!url.startsWith(`${base}/`) && !url.startsWith('data:')) pageErrors.push(`request outside the example: ${url}`)
  })
  page.on('response', (response) => {
    if (response.status() >= 400) pageErrors.push(`HTTP ${response.status()}: ${response.url()}`)
  })
  page.on('console', (message) => {
    if (message.type() === 'error' && !message.text().startsWith('Failed to load resource')) pageErrors.push(`console.error: ${message.text()}`)
  })
})

after(async () => {
  if (context !== null) await context.close().catch(() => {})
  if (userDataDir !== null) await rm(userDataDir, { recursive: true, force: true }).catch(() => {})
  if (example !== null && example.child.exitCode === null && example.child.signalCode === null) {
    example.child.kill('SIGTERM') // the example closes its server and limiter and stops its redis-server
    let timer
    const stopped = await Promise.race([
      example.child.exited,
      new Promise((resolve) => (timer = setTimeout(resolve, 20_000, null))),
    ])
    clearTimeout(timer)
    if (stopped === null) {
      try {
        process.kill(-example.child.pid, 'SIGKILL') // the example and its redis-server
      } catch {}
      await example.child.exited
    }
  }
})

/** Sums a chart series over the last minute, in the page. */
function seriesTotal(route, key) {
  return page.evaluate(
    ([route, key]) => {
      const chart = window.trypemaDashboard.charts[route]
      const column = chart.data[chart.seriesKeys.indexOf(key)] ?? []
      return column.reduce((sum, value) => sum + (value ?? 0), 0)
    },
    [route, key],
  )
}

/** Waits until a route's chart has, at or after second `since`, a point where `key` is > 0. */
function waitForPoint(route, key, since = 0) {
  return page.waitForFunction(
    ([route, key, since]) => {
      const chart = window.trypemaDashboard.charts[route]
      const times = chart.data[0]
      const column = chart.data[chart.seriesKeys.indexOf(key)] ?? []
      return times.some((t, i) => t >= since && column[i] > 0)
    },
    [route, key, since],
    { timeout: CONDITION_TIMEOUT_MS, polling: 250 },
  )
}

test('the live page charts a burst: admitted, then rejected, per second', async () => {
  await page.goto(`${base}/?burst=hello&multiple=10`, { waitUntil: 'domcontentloaded', timeout: START_TIMEOUT_MS })
  await page.waitForFunction(() => window.trypemaDashboard && window.trypemaDashboard.ready, null, {
    timeout: START_TIMEOUT_MS,
  })

  const routes = await page.evaluate(() => Object.keys(window.trypemaDashboard.charts))
  assert.deepEqual(routes.sort(), ['feed', 'hello', 'search'])
  assert.equal(await page.locator('section.route canvas').count() >= 3, true, 'each route has a chart canvas')
  assert.match(await page.locator('#summary').textContent(), /provider redis/)
  assert.equal((await page.locator('#redis-badge').textContent()).trim(), 'up')

  // The burst (20 req/s against 2/s) shows admitted requests, then 429s.
  await waitForPoint('hello', 'admitted')
  await waitForPoint('hello', 'rejected')
  const admitted = await seriesTotal('hello', 'admitted')
  const rejected = await seriesTotal('hello', 'rejected')
  assert.ok(admitted >= 1 && rejected >= 1, `admitted ${admitted}, rejected ${rejected}`)
  // A 10 s window of 20: admitted over the last minute can be at most 20 per started window.
  assert.ok(admitted <= 20 * 7, `admitted ${admitted} over the last minute`)

  // The charts keep moving: the newest second advances while the page is open.
  const newest = () => page.evaluate(() => window.trypemaDashboard.charts.hello.data[0].at(-1))
  const first = await newest()
  await page.waitForFunction((t) => window.trypemaDashboard.charts.hello.data[0].at(-1) > t, first, {
    timeout: CONDITION_TIMEOUT_MS,
  })

  // The DOM shows the same totals and the route's policy header.
  await page.waitForFunction(() => Number(document.querySelector('section[data-route="hello"]').dataset.rejected) > 0)
  assert.match(await page.locator('section[data-route="hello"] .policy-header').textContent(), /"hello";q=20;w=10/)

  await page.screenshot({ path: join(outputDir, 'dashboard.png'), fullPage: true })
  assert.deepEqual(pageErrors, [])
})

test('the live page shows a Redis outage (decisions made locally, marked degraded) and the recovery', async () => {
  // A suppressed-route burst from the page's own button: admitted, then suppressed and declined.
  const searchCard = page.locator('section[data-route="search"]')
  await searchCard.locator('button[data-multiple="10"]').click()
  await waitForPoint('search', 'declined')
  await page.waitForFunction(() => Number(document.querySelector('section[data-route="search"]').dataset.factor) > 0, null, {
    timeout: CONDITION_TIMEOUT_MS,
    polling: 250,
  })

  await page.locator('#redis-stop').click()
  await page.waitForFunction(() => document.getElementById('redis-badge').textContent.trim() === 'down')
  // A fresh burst, in case the first one is already over on a slow machine.
  await searchCard.locator('button[data-multiple="3"]').click()
  // The example's limiter runs with onRedisError 'local': the route keeps deciding, in process,
  // and the page charts those decisions as degraded.
  await waitForPoint('search', 'degraded')
  assert.ok((await seriesTotal('search', 'degraded')) >= 1)
  await page.screenshot({ path: join(outputDir, 'dashboard-outage.png'), fullPage: true })

  await page.locator('#redis-start').click()
  await page.waitForFunction(() => document.getElementById('redis-badge').textContent.trim() === 'up')
  const restartedAt = await page.evaluate(() => Math.floor(Date.now() / 1000) + 1)
  // A fresh burst (the first may be over on a slow machine): Redis starts empty, so it is admitted.
  await searchCard.locator('button[data-multiple="3"]').click()
  await waitForPoint('search', 'admitted', restartedAt)
  await page.screenshot({ path: join(outputDir, 'dashboard-recovered.png'), fullPage: true })
  assert.deepEqual(pageErrors, [])
})
