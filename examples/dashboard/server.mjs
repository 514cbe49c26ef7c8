// The live page of `npm start` (examples/express-server.mjs): per-route outcome counts, pushed to
// the browser once a second as server-sent events, load bursts against a route, and a switch for
// the example's own redis-server.
//
// Everything here is counted from what the middleware produced for each request: the response
// status (200 / 429 / 503), the `Trypema-Suppression-Factor` and `Trypema-Degraded` headers, and
// the middleware's `onError` hook. Nothing reads the limiter's internals; the current suppression factor comes from
// the public `getSuppressionFactor(key)`.
import express from 'express'
import { existsSync } from 'node:fs'
import { createRequire } from 'node:module'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { safeKey } from 'trypema/express'

const here = dirname(fileURLToPath(import.meta.url))
const require = createRequire(import.meta.url)

/** Column order of the per-second counts sent to the page. */
export const OUTCOMES = ['admitted', 'suppressedAdmitted', 'rejected', 'declined', 'errors', 'degraded']
const [ADMITTED, SUPPRESSED_ADMITTED, REJECTED, DECLINED, ERRORS, DEGRADED] = OUTCOMES.map((_, i) => i)

const HISTORY_SECONDS = 60
const BURST_MAX_RPS = 200
const BURST_MAX_SECONDS = 60
const BURST_MAX_IN_FLIGHT = 64

/** uPlot's browser build, served from node_modules so the page works offline. */
function uplotDir() {
  try {
    return dirname(require.resolve('uplot'))
  } catch {
    return null
  }
}

const second = () => Math.floor(Date.now() / 1000)

/**
 * @param {object} options
 * @param {Array<{id: string, method: string, path: string, samplePath: string, provider: string,
 *   strategy: 'absolute' | 'suppressed', rate: number, limitedStatus: number, keyOf: (req) => string,
 *   description: string}>} options.routes the limited routes
 * @param {number} options.windowSeconds
 * @param {number} options.hardLimitFactor
 * @param {object} options.limiter the RateLimiter the routes use (for `getSuppressionFactor`)
 * @param {string} options.provider the main provider (`redis` or `local`)
 * @param {null | {url: string, stop(): Promise<void>, restart(): Promise<void>}} options.redis the
 *   redis-server this example started, if any
 * @param {string | undefined} options.redisUrl
 */
export function createDashboard({ routes, windowSeconds, hardLimitFactor, limiter, provider, redis, redisUrl }) {
  let base = null // set by start(): the server's own URL, for bursts
  const byId = new Map(routes.map((route) => [route.id, route]))
  const lastKey = new Map() // route id -> the limiter key of the latest request
  const factor = new Map() // route id -> latest getSuppressionFactor (null: the call failed)
  const lastPolicy = new Map() // route id -> latest RateLimit-Policy header
  const lastError = new Map() // route id -> latest limiter error code
  // [{ t, c: { id: [5 counts] }, f: { id: factor }, down?: true }], oldest first; `down`: the
  // example's redis-server was stopped during that second
  const history = []
  let current = emptyEntry(second())
  const clients = new Set()
  const bursts = new Map() // route id -> { rps, multiple, endsAt, sent, stop }
  const redisState = { managed: redis !== null, up: redis !== null, busy: false, url: redisUrl ?? null, message: '' }
  let timer = null
  let closed = false

  function emptyEntry(t) {
    return { t, c: Object.fromEntries(routes.map((r) => [r.id, OUTCOMES.map(() => 0)])), f: {} }
  }

  /** Closes every finished second (the empty ones too) and sends it to the page. */
  function rollOver() {
    const now = second()
    while (current.t < now) {
      if (redisState.managed && !redisState.up) current.down = true // shaded on the page
      for (const route of routes) {
        if (route.strategy === 'suppressed' && factor.has(route.id)) current.f[route.id] = factor.get(route.id)
      }
      history.push(current)
      if (history.length > HISTORY_SECONDS) history.shift()
      broadcast('tick', { entry: current, state: state() })
      current = emptyEntry(current.t + 1)
    }
  }

  function count(routeId, outcome) {
    rollOver()
    current.c[routeId][outcome]++
  }

  function state() {
    const now = Date.now()
    return {
      redis: { ...redisState },
      bursts: Object.fromEntries(
        [...bursts].map(([id, b]) => [id, { rps: b.rps, multiple: b.multiple, secondsLeft: Math.max(0, Math.ceil((b.endsAt - now) / 1000)), sent: b.sent }]),
      ),
      policies: Object.fromEntries(lastPolicy),
      lastErrors: Object.fromEntries(lastError),
    }
  }

  function config() {
    return {
      provider,
      windowSeconds,
      hardLimitFactor,
      outcomes: OUTCOMES,
      historySeconds: HISTORY_SECONDS,
      routes: routes.map(({ id, method, path, samplePath, provider: p, strategy, rate, limitedStatus, description }) => ({
        id,
        method,
        path,
        samplePath,
        provider: p,
        strategy,
        rate,
        limitedStatus,
        description,
        quota: Math.floor(windowSeconds * rate),
        hardQuota: strategy === 'suppressed' ? Math.floor(windowSeconds * rate * hardLimitFactor) : null,
      })),
    }
  }

  function snapshot() {
    rollOver()
    return { config: config(), history, state: state() }
  }

  function send(res, event, data) {
    res.write(`event: ${event}\ndata: ${JSON.stringify(data)}\n\n`)
  }

  function broadcast(event, data) {
    for (const res of clients) send(res, event, data)
  }

  /** Once a second: close the second that ended and ask the limiter for the current factors. */
  function tick() {
    if (closed) return
    rollOver()
    for (const route of routes) {
      if (route.strategy !== 'suppressed' || !lastKey.has(route.id)) continue
      Promise.resolve()
        .then(() => limiter[route.provider].suppressed.getSuppressionFactor(lastKey.get(route.id)))
        .then(
          (f) => factor.set(route.id, f),
          () => factor.set(route.id, null),
        )
    }
    // Align to the next second boundary (a little after it), so each tick closes one second.
    timer = setTimeout(tick, 1000 - (Date.now() % 1000) + 25)
    timer.unref()
  }

  /**
   * Middleware to put in front of a route's `rateLimit(...)`: counts the outcome of every request
   * once its response is finished.
   */
  function counter(routeId) {
    const route = byId.get(routeId)
    return function countOutcome(req, res, next) {
      res.locals.trypemaRoute = routeId
      try {
        lastKey.set(routeId, safeKey(route.keyOf(req)))
      } catch {
        // the middleware's onError path will count this request
      }
      res.once('finish', () => {
        const policy = res.getHeader('RateLimit-Policy')
        if (policy !== undefined) lastPolicy.set(routeId, String(policy))
        if (res.locals.trypemaError !== undefined) return count(routeId, ERRORS)
        // Decided by the limiter's outage policy while Redis was unreachable.
        if (res.getHeader('Trypema-Degraded') !== undefined) return count(routeId, DEGRADED)
        const status = res.statusCode
        if (status === 200) {
          count(routeId, res.getHeader('Trypema-Suppression-Factor') === undefined ? ADMITTED : SUPPRESSED_ADMITTED)
        } else if (status === route.limitedStatus) {
          count(routeId, route.strategy === 'suppressed' ? DECLINED : REJECTED)
        } else {
          count(routeId, ERRORS)
        }
      })
      next()
    }
  }

  /**
   * The routes' `onError`: what the middleware does by default ('allow': fail open, the request
   * goes on without limit headers), but recorded, so the page shows the calls that failed.
   */
  function onError(error, req, res, next) {
    const code = (error && error.code) || 'ERROR'
    res.locals.trypemaError = code
    if (res.locals.trypemaRoute !== undefined) lastError.set(res.locals.trypemaRoute, code)
    next()
  }

  // -------------------------------------------------------------------------------------------
  // Bursts: the server sends itself paced requests from 127.0.0.1, so they count against that
  // address's limit (shared with a browser on the same machine).

  function startBurst(route, multiple, seconds) {
    bursts.get(route.id)?.stop()
    const rps = Math.min(BURST_MAX_RPS, route.rate * multiple)
    const startedAt = Date.now()
    const burst = { rps, multiple, endsAt: startedAt + seconds * 1000, sent: 0, stopped: false, inFlight: 0 }
    burst.stop = () => {
      burst.stopped = true
      if (bursts.get(route.id) === burst) bursts.delete(route.id)
    }
    bursts.set(route.id, burst)
    const url = `${base}${route.samplePath}`
    const step = () => {
      if (burst.stopped || closed) return
      const now = Date.now()
      if (now >= burst.endsAt) return burst.stop()
      const due = Math.floor(((now - startedAt) / 1000) * rps) + 1
      while (burst.sent < due && burst.inFlight < BURST_MAX_IN_FLIGHT) {
        burst.sent++
        burst.inFlight++
        fetch(url, { signal: AbortSignal.timeout(15_000) })
          .then((response) => response.arrayBuffer())
          .catch(() => {})
          .finally(() => burst.inFlight--)
      }
      setTimeout(step, 10)
    }
    step()
    return burst
  }

  // -------------------------------------------------------------------------------------------
  // Routes

  const router = express.Router()
  const assets = join(here, 'public')
  const uplot = uplotDir()

  router.get('/demo/state', (req, res) => res.json(snapshot()))

  router.get('/demo/events', (req, res) => {
    res.writeHead(200, {
      'Content-Type': 'text/event-stream; charset=utf-8',
      'Cache-Control': 'no-store',
      Connection: 'keep-alive',
    })
    res.write('retry: 1000\n\n')
    send(res, 'snapshot', snapshot())
    clients.add(res)
    req.on('close', () => clients.delete(res))
  })

  router.post('/demo/burst', express.json({ limit: '1kb' }), (req, res) => {
    const params = { ...req.query, ...(req.body ?? {}) }
    const route = byId.get(String(params.route))
    if (route === undefined) {
      return res.status(400).json({ error: `unknown route; one of ${[...byId.keys()].join(', ')}` })
    }
    const multiple = params.multiple === undefined ? 10 : Number(params.multiple)
    const seconds = params.seconds === undefined ? 20 : Number(params.seconds)
    if (!(multiple > 0 && multiple <= 100) || !(seconds > 0 && seconds <= BURST_MAX_SECONDS)) {
      return res.status(400).json({ error: `multiple must be in (0, 100], seconds in (0, ${BURST_MAX_SECONDS}]` })
    }
    const burst = startBurst(route, multiple, seconds)
    res.status(202).json({ route: route.id, rps: burst.rps, seconds })
  })

  router.post('/demo/burst/stop', (req, res) => {
    for (const burst of [...bursts.values()]) burst.stop()
    res.json({ stopped: true })
  })

  async function switchRedis(req, res, action) {
    if (redis === null) {
      return res.status(409).json({
        error: redisUrl === undefined
          ? 'no redis-server: this example runs on the local provider'
          : 'REDIS_URL is set: this example did not start that Redis, so it will not stop it',
      })
    }
    if (redisState.busy) return res.status(409).json({ error: 'redis-server is already being switched' })
    redisState.busy = true
    try {
      if (action === 'stop') {
        await redis.stop()
        redisState.up = false
        rollOver()
        current.down = true
        redisState.message = `redis-server stopped at ${new Date().toISOString()}`
      } else {
        await redis.restart() // same port, empty data: the limiter reconnects and reloads its scripts
        redisState.up = true
        redisState.message = `redis-server started at ${new Date().toISOString()} (empty: counts start over)`
      }
      console.log(redisState.message)
      res.json({ redis: { ...redisState, busy: false } })
    } catch (error) {
      redisState.message = `could not ${action} redis-server: ${error.message}`
      res.status(500).json({ error: redisState.message })
    } finally {
      redisState.busy = false
      broadcast('state', state())
    }
  }
  router.post('/demo/redis/stop', (req, res) => switchRedis(req, res, 'stop'))
  router.post('/demo/redis/start', (req, res) => switchRedis(req, res, 'start'))

  router.use('/dashboard', express.static(assets, { index: false }))
  router.get('/vendor/uPlot.iife.min.js', (req, res) => {
    if (uplot === null) return res.status(404).type('text').send('uplot is not installed: run `npm ci` in the repository')
    res.sendFile(join(uplot, 'uPlot.iife.min.js'))
  })
  router.get('/vendor/uPlot.min.css', (req, res) => {
    if (uplot === null) return res.status(404).type('text').send('uplot is not installed')
    res.sendFile(join(uplot, 'uPlot.min.css'))
  })

  /** `/` for a browser: the page. */
  function page(req, res) {
    res.sendFile(join(assets, 'index.html'))
  }

  return {
    router,
    counter,
    onError,
    page,
    /** Starts the once-a-second tick; `url` is where this server listens. */
    start(url) {
      base = url
      if (!existsSync(join(assets, 'index.html'))) throw new Error(`missing ${join(assets, 'index.html')}`)
      tick()
    },
    /** Stops the tick, the bursts and the event streams. */
    close() {
      closed = true
      clearTimeout(timer)
      for (const burst of [...bursts.values()]) burst.stop()
      for (const res of clients) res.end()
      clients.clear()
    },
  }
}
