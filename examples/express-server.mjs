// `npm start`: a small Express API protected by trypema.
//
//   npm start                 serve on http://127.0.0.1:3000 (or PORT, or a free port);
//                             open it in a browser for the live page (examples/dashboard/)
//   npm start -- --port 4000  serve on that port (0: any free port)
//   npm start -- --demo       fire a burst at every route, print what came back, exit
//
// Redis: REDIS_URL when set; otherwise a private redis-server on a free loopback port (stopped on
// exit; the live page can stop and restart it); without redis-server installed, the in-process
// `local` provider.
import express from 'express'
import net from 'node:net'
import { RateLimiter } from 'trypema'
import { defaultKey, rateLimit } from 'trypema/express'
import { startRedis, redisServerInstalled, freePort } from '../scripts/redis-server.mjs'
import { createDashboard } from './dashboard/server.mjs'

const HOST = '127.0.0.1'
const WINDOW_SECONDS = 10
const HARD_LIMIT_FACTOR = 1.5
const demo = process.argv.includes('--demo')
const portFlag = process.argv.indexOf('--port')
const requestedPort = portFlag === -1 ? process.env.PORT || undefined : String(process.argv[portFlag + 1])
if (requestedPort !== undefined && !/^\d{1,5}$/.test(requestedPort)) {
  console.error(`--port / PORT must be a port number, got ${JSON.stringify(requestedPort)}`)
  process.exit(2)
}

// ---------------------------------------------------------------------------------------------
// Redis and the limiter

let redis = null // the redis-server this script started, if any
let redisUrl = process.env.REDIS_URL || undefined
let provider = 'redis'

if (redisUrl === undefined) {
  if (redisServerInstalled()) {
    try {
      redis = await startRedis()
      redisUrl = redis.url
    } catch (error) {
      console.log(`Could not start redis-server (${error.message}); using the in-process 'local' provider.`)
      provider = 'local'
    }
  } else {
    console.log("redis-server is not installed and REDIS_URL is not set: using the in-process 'local' provider.")
    provider = 'local'
  }
}

// Make sure a redis-server we started never outlives this process.
process.once('exit', () => {
  if (redis !== null) redis.stop()
})

let limiter
try {
  limiter = await RateLimiter.builder(provider === 'local' ? undefined : redisUrl)
    .windowSizeSeconds(WINDOW_SECONDS)
    .rateGroupSizeMs(10)
    .hardLimitFactor(HARD_LIMIT_FACTOR)
    // Each run gets its own keys, so a shared REDIS_URL does not carry over earlier runs' counts.
    .redisPrefix(`trypema-demo-${process.pid}`)
    // While Redis is unreachable, decide with in-process limits of the same settings (marked
    // `Trypema-Degraded: 1` on the responses) instead of failing.
    .onRedisError('local')
    .build()
} catch (error) {
  console.error(`Could not create the rate limiter with ${redisUrl}: ${error.message}`)
  if (redis !== null) await redis.stop()
  process.exit(1)
}

// ---------------------------------------------------------------------------------------------
// The app

const HELLO_RATE = 2 // per second: 20 requests per 10 s window per client
const SEARCH_RATE = 3 // per second: soft 30, hard 45 per window per client
const FEED_RATE = 5 // per second: 50 per 10 s window per client, served from local leases
// The hybrid provider needs Redis too; without it the feed route falls back to local as well.
const feedProvider = provider === 'local' ? 'local' : 'hybrid'

const ROUTES = [
  { method: 'GET', path: '/', description: 'this list (not limited); in a browser, the live page' },
  { method: 'GET', path: '/metrics', description: "the limiter's counters, Prometheus text format (not limited)" },
  {
    method: 'GET',
    path: '/api/hello',
    description: `${provider} absolute, ${HELLO_RATE}/s → ${HELLO_RATE * WINDOW_SECONDS} per ${WINDOW_SECONDS} s, then 429`,
  },
  {
    method: 'GET',
    path: '/api/search?q=rust',
    description: `${provider} suppressed, ${SEARCH_RATE}/s: above it a growing share gets 503`,
  },
  {
    method: 'GET',
    path: '/api/feed',
    description: `${feedProvider} absolute, ${FEED_RATE}/s → ${FEED_RATE * WINDOW_SECONDS} per ${WINDOW_SECONDS} s (decided locally, synced with Redis), then 429`,
  },
]

const feedKey = (req) => `feed/${defaultKey(req)}`

// The live page counts every limited route's outcomes per second (see examples/dashboard/).
// `limitedStatus`: what the route answers when the limiter says no; `keyOf`: its limiter key.
const dashboard = createDashboard({
  routes: [
    { id: 'hello', samplePath: '/api/hello', provider, strategy: 'absolute', rate: HELLO_RATE, limitedStatus: 429, keyOf: defaultKey },
    {
      id: 'search',
      samplePath: '/api/search?q=rust',
      provider,
      strategy: 'suppressed',
      rate: SEARCH_RATE,
      limitedStatus: 503,
      keyOf: defaultKey,
    },
    { id: 'feed', samplePath: '/api/feed', provider: feedProvider, strategy: 'absolute', rate: FEED_RATE, limitedStatus: 429, keyOf: feedKey },
  ].map((route) => {
    const path = route.samplePath.split('?')[0]
    return { method: 'GET', path, description: ROUTES.find((r) => r.path.split('?')[0] === path).description, ...route }
  }),
  windowSeconds: WINDOW_SECONDS,
  hardLimitFactor: HARD_LIMIT_FACTOR,
  limiter,
  provider,
  redis,
  redisUrl,
})

const app = express()
app.disable('x-powered-by')

app.get('/', (req, res) => {
  // A browser gets the live page; curl and other clients get the list of routes.
  if ((req.get('accept') ?? '').includes('text/html')) return dashboard.page(req, res)
  res.json({ provider, windowSeconds: WINDOW_SECONDS, routes: ROUTES })
})
app.use(dashboard.router)
app.get('/metrics', (req, res) => {
  res.type('text/plain; version=0.0.4').send(limiter.metricsText())
})

// `onError: dashboard.onError` does what the default `'allow'` does (fail open: the request goes
// on without limit headers) and records the failure for the page.
app.get(
  '/api/hello',
  dashboard.counter('hello'),
  rateLimit({
    limiter,
    provider,
    strategy: 'absolute',
    rate: HELLO_RATE,
    policyName: 'hello',
    legacyHeaders: true,
    onError: dashboard.onError,
  }),
  (req, res) => res.json({ message: 'Hello from trypema!' }),
)

app.get(
  '/api/search',
  dashboard.counter('search'),
  rateLimit({
    limiter,
    provider,
    strategy: 'suppressed',
    rate: SEARCH_RATE,
    policyName: 'search',
    suppressedStatus: 503,
    onError: dashboard.onError,
  }),
  (req, res) => {
    const q = String(req.query.q ?? '')
    res.json({ query: q, results: [`${q} book`, `${q} crate`, `${q} tutorial`] })
  },
)

app.get(
  '/api/feed',
  dashboard.counter('feed'),
  rateLimit({
    limiter,
    provider: feedProvider,
    strategy: 'absolute',
    rate: FEED_RATE,
    policyName: 'feed',
    // Its own count per client: /api/hello also limits the client's IP with the absolute strategy.
    key: feedKey,
    onError: dashboard.onError,
  }),
  (req, res) => res.json({ items: ['release notes', 'benchmarks', 'changelog'] }),
)

async function portToUse() {
  if (requestedPort !== undefined) return Number(requestedPort)
  const free = await new Promise((resolve) => {
    const probe = net.createServer()
    probe.once('error', () => resolve(false))
    probe.listen(3000, HOST, () => probe.close(() => resolve(true)))
  })
  return free ? 3000 : freePort()
}

const server = await new Promise((resolve, reject) => {
  portToUse().then((port) => {
    const s = app.listen(port, HOST, () => resolve(s))
    s.once('error', reject)
  }, reject)
})
const base = `http://${HOST}:${server.address().port}`
dashboard.start(base)

let shuttingDown = null
function shutdown() {
  shuttingDown ??= (async () => {
    dashboard.close()
    server.closeAllConnections?.()
    await new Promise((resolve) => server.close(resolve))
    await limiter.close()
    if (redis !== null) await redis.stop()
  })()
  return shuttingDown
}

// ---------------------------------------------------------------------------------------------
// Interactive mode

if (!demo) {
  console.log(`trypema Express example listening on ${base}`)
  console.log(
    provider === 'local'
      ? "provider: local (in-process)"
      : `provider: ${provider} (${redis !== null ? 'private redis-server at ' : ''}${redisUrl})`,
  )
  console.log(`\nLive page: open ${base}/ in a browser (${base}/?burst=hello starts a burst right away)`)
  console.log('\nTry:')
  console.log(`  curl -i ${base}/`)
  console.log(`  curl -i ${base}/api/hello`)
  console.log(`  for i in $(seq 25); do curl -s -o /dev/null -w '%{http_code} ' ${base}/api/hello; done; echo`)
  console.log(`  curl -i '${base}/api/search?q=rust'`)
  console.log(`  curl -i ${base}/api/feed`)
  console.log(`  curl -X POST '${base}/demo/burst?route=search&multiple=10&seconds=20'   # a load burst`)
  if (redis !== null) console.log(`  curl -X POST ${base}/demo/redis/stop      # and /demo/redis/start: a Redis outage`)
  console.log(`  npm start -- --demo     # burst every route and print a summary`)
  console.log('\nCtrl+C to stop.')
}

// Ctrl+C or a kill: close the server, the limiter and our redis-server, then exit.
for (const signal of ['SIGINT', 'SIGTERM']) {
  process.once(signal, () => {
    console.log(`\n${signal}: shutting down`)
    shutdown().then(
      () => process.exit(demo ? 130 : 0),
      (error) => {
        console.error(error)
        process.exit(1)
      },
    )
  })
}

// ---------------------------------------------------------------------------------------------
// Demo mode: a bounded burst per route, then a summary table

const REQUESTS_PER_ROUTE = 200
const CONCURRENCY = 16

function progressBar(label, done, total) {
  const width = 30
  const filled = Math.round((done / total) * width)
  return `${label.padEnd(18)} [${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${String(done).padStart(3)}/${total}`
}

async function burst(path) {
  const counts = { ok: 0, admittedUnderSuppression: 0, tooMany: 0, unavailable: 0, other: 0 }
  let started = 0
  let finished = 0
  const interactive = process.stderr.isTTY
  const draw = () => {
    if (interactive) process.stderr.write(`\r${progressBar(path, finished, REQUESTS_PER_ROUTE)}`)
    else if (finished === REQUESTS_PER_ROUTE || finished % 50 === 0) {
      process.stderr.write(`${progressBar(path, finished, REQUESTS_PER_ROUTE)}\n`)
    }
  }
  async function worker() {
    while (started < REQUESTS_PER_ROUTE) {
      started++
      try {
        const response = await fetch(`${base}${path}`)
        await response.arrayBuffer()
        if (response.status === 200) {
          if (response.headers.has('trypema-suppression-factor')) counts.admittedUnderSuppression++
          else counts.ok++
        } else if (response.status === 429) counts.tooMany++
        else if (response.status === 503) counts.unavailable++
        else counts.other++
      } catch {
        counts.other++
      }
      finished++
      draw()
    }
  }
  await Promise.all(Array.from({ length: CONCURRENCY }, worker))
  if (interactive) process.stderr.write('\n')
  return counts
}

function table(rows) {
  const header = ['route', '200', '200 suppressed', '429', '503', 'other']
  const body = rows.map(({ path, counts }) => [
    path,
    counts.ok,
    counts.admittedUnderSuppression,
    counts.tooMany,
    counts.unavailable,
    counts.other,
  ])
  const cells = [header, ...body].map((row) => row.map(String))
  const widths = header.map((_, i) => Math.max(...cells.map((row) => row[i].length)))
  const line = (row) => `| ${row.map((cell, i) => (i === 0 ? cell.padEnd(widths[i]) : cell.padStart(widths[i]))).join(' | ')} |`
  const rule = `|${widths.map((w, i) => (i === 0 ? '-'.repeat(w + 2) : `${'-'.repeat(w + 1)}:`)).join('|')}|`
  return [line(cells[0]), rule, ...cells.slice(1).map(line)].join('\n')
}

if (demo) {
  let exitCode = 0
  try {
    console.log(
      `Demo: ${REQUESTS_PER_ROUTE} requests per route, ${CONCURRENCY} at a time, against ${base} ` +
        `(provider ${provider}${redis !== null ? `, private redis-server ${redisUrl}` : ''})`,
    )
    // Every counted response says how much quota is left: watch it count down.
    const countdown = []
    for (let i = 0; i < 5; i++) {
      const response = await fetch(`${base}/api/hello`)
      await response.arrayBuffer()
      countdown.push(`${response.status} ${response.headers.get('ratelimit')}`)
    }
    console.log(`First requests to /api/hello (status, RateLimit header):\n  ${countdown.join('\n  ')}\n`)
    const rows = []
    for (const path of ['/api/hello', '/api/search?q=rust', '/api/feed']) {
      rows.push({ path, counts: await burst(path) })
    }
    console.log()
    console.log(table(rows))
    if (redis !== null) {
      // An outage: stop the private redis-server; decisions go on, made locally and marked.
      await redis.stop()
      const during = []
      for (let i = 0; i < 3; i++) {
        const response = await fetch(`${base}/api/hello`)
        await response.arrayBuffer()
        during.push(`${response.status} Trypema-Degraded: ${response.headers.get('trypema-degraded') ?? '-'}`)
      }
      await redis.restart()
      console.log(
        `\nWith redis-server stopped (onRedisError 'local': in-process limits decide), /api/hello answered:\n  ${during.join('\n  ')}`,
      )
    }
    console.log(
      `\n/api/hello admits ${HELLO_RATE * WINDOW_SECONDS} per ${WINDOW_SECONDS} s window, then answers 429 with Retry-After.` +
        `\n/api/search admits ${SEARCH_RATE * WINDOW_SECONDS} per window, then sheds a growing share (503),` +
        ` never admitting more than ${SEARCH_RATE * WINDOW_SECONDS * HARD_LIMIT_FACTOR}.` +
        `\n/api/feed admits ${FEED_RATE * WINDOW_SECONDS} per window (${feedProvider}: decided from a local lease), then 429.`,
    )
  } catch (error) {
    console.error(error)
    exitCode = 1
  } finally {
    await shutdown()
  }
  process.exit(exitCode)
}
