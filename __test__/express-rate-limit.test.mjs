// trypema/express-rate-limit: TrypemaStore under express-rate-limit v8 and v7 (the real
// packages), over real HTTP, against a real redis-server; two server processes sharing a limit.
import { test, describe, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'
import express from 'express'
import { rateLimit as rateLimitV8 } from 'express-rate-limit'
import { rateLimit as rateLimitV7 } from 'express-rate-limit-v7'

import { RateLimiter } from '../index.mjs'
import { TrypemaStore } from '../express-rate-limit.mjs'
import { serve, get, freshPrefix, sharedRedis, eventually, rateLimitItem } from './express-helpers.mjs'

let redis
const limiters = []

before(async () => {
  redis = await sharedRedis()
})

after(async () => {
  await Promise.all(limiters.map((limiter) => limiter.close()))
  await redis.stop()
})

async function redisLimiter(windowSizeSeconds = 10) {
  const limiter = await RateLimiter.builder(redis.url).windowSizeSeconds(windowSizeSeconds).rateGroupSizeMs(10).redisPrefix(freshPrefix('erl')).build()
  limiters.push(limiter)
  return limiter
}

/**
 * Captures console.warn / console.error (what express-rate-limit's validations and store errors
 * go to) until `stop()`, which returns them.
 */
function captureConsole() {
  const seen = []
  const saved = { warn: console.warn, error: console.error }
  console.warn = (...args) => seen.push({ level: 'warn', message: args.map(String).join(' ') })
  console.error = (...args) => seen.push({ level: 'error', message: args.map(String).join(' ') })
  return {
    stop() {
      Object.assign(console, saved)
      return seen
    },
  }
}

const VERSIONS = [
  ['express-rate-limit 8', rateLimitV8, 'draft-8'],
  ['express-rate-limit 7', rateLimitV7, 'draft-7'],
]

describe('TrypemaStore options', () => {
  test('bad options are TypeErrors; localKeys is true only for the local provider; no resetAll', async () => {
    const limiter = await redisLimiter()
    const local = await RateLimiter.builder().build()
    limiters.push(local)
    for (const options of [
      undefined,
      {},
      { limiter: null },
      { limiter, provider: 'memory' },
      { limiter, prefix: 42 },
      { limiter, windowMs: 1000 },
      { limiter: local, provider: 'redis' }, // no Redis
      { limiter: {}, provider: 'local' },
    ]) {
      assert.throws(() => new TrypemaStore(options), TypeError, JSON.stringify(options, (k, v) => (k === 'limiter' ? typeof v : v)))
    }
    assert.equal(new TrypemaStore({ limiter }).localKeys, false)
    assert.equal(new TrypemaStore({ limiter, provider: 'hybrid' }).localKeys, false)
    assert.equal(new TrypemaStore({ limiter: local, provider: 'local' }).localKeys, true)
    const store = new TrypemaStore({ limiter })
    assert.equal(store.prefix, 'erl/')
    assert.equal(store.windowMs, 10_000)
    assert.equal(store.resetAll, undefined, 'resetAll would need a scan of Redis: not offered')
  })
})

for (const [label, rateLimit, draft] of VERSIONS) {
  describe(label, () => {
    test('counts every hit in the sliding window, decides at the limit, and sets its headers; no warnings', async (t) => {
      const limiter = await redisLimiter(10)
      const store = new TrypemaStore({ limiter, provider: 'redis' })
      const logs = captureConsole()
      const middleware = rateLimit({ windowMs: 10_000, limit: 3, standardHeaders: draft, legacyHeaders: true, store })
      const app = express()
      app.use(middleware)
      app.get('/', (req, res) => res.json(req.rateLimit))
      const server = await serve(app)
      t.after(() => server.close())
      let statuses = []
      try {
        for (let i = 1; i <= 5; i++) {
          const started = Date.now()
          const response = await get(server.url('/'))
          statuses.push(response.status)
          assert.equal(response.headers.get('x-ratelimit-limit'), '3')
          assert.equal(response.headers.get('x-ratelimit-remaining'), String(Math.max(0, 3 - i)))
          const reset = Number(response.headers.get('x-ratelimit-reset'))
          assert.ok(Math.abs(reset - (started / 1000 + 10)) <= 2, `X-RateLimit-Reset ${reset}`)
          if (draft === 'draft-8') {
            const item = rateLimitItem(response.headers.get('ratelimit').replaceAll('; ', ';'), '3-in-10sec')
            assert.equal(item.r, Math.max(0, 3 - i))
            assert.ok(item.t === 10 || item.t === 9, `t ${item.t}`)
          } else {
            assert.match(response.headers.get('ratelimit'), new RegExp(`^limit=3, remaining=${Math.max(0, 3 - i)}, reset=(9|10)$`))
          }
          if (i <= 3) {
            assert.equal(response.json.used, i)
            assert.equal(response.json.remaining, 3 - i)
            const resetTime = Date.parse(response.json.resetTime)
            assert.ok(resetTime >= started + 9000 && resetTime <= Date.now() + 10_100, response.json.resetTime)
          } else {
            assert.match(response.headers.get('retry-after'), /^(9|10)$/)
          }
        }
      } finally {
        const seen = logs.stop()
        assert.deepEqual(seen, [], 'express-rate-limit logged nothing (its validations passed)')
      }
      assert.deepEqual(statuses, [200, 200, 200, 429, 429])
      // Hits over the limit are counted too (express-rate-limit decides on totalHits > limit).
      const info = await middleware.getKey('127.0.0.1')
      assert.equal(info.totalHits, 5)
      assert.ok(info.resetTime instanceof Date)
      // The counts live in trypema's window, under the store's prefix.
      const quota = await limiter.redis.absolute.get('erl/127.0.0.1', Number.MAX_SAFE_INTEGER / 10)
      assert.equal(quota.limit - quota.remaining, 5)
      // resetKey forgets them.
      await middleware.resetKey('127.0.0.1')
      assert.equal(await middleware.getKey('127.0.0.1'), undefined)
      assert.equal((await get(server.url('/'))).status, 200)
    })

    test('skipFailedRequests decrements through the store (refund)', async (t) => {
      const limiter = await redisLimiter(10)
      const store = new TrypemaStore({ limiter, prefix: 'failures/' })
      const app = express()
      app.use(rateLimit({ windowMs: 10_000, limit: 2, standardHeaders: draft, skipFailedRequests: true, store }))
      app.get('/fail', (req, res) => res.status(500).send('no'))
      app.get('/ok', (req, res) => res.send('ok'))
      const server = await serve(app)
      t.after(() => server.close())
      for (let i = 0; i < 4; i++) {
        assert.equal((await get(server.url('/fail'))).status, 500)
        await eventually(async () => (await store.get('127.0.0.1')) === undefined, { message: 'the decrement' })
      }
      assert.equal((await get(server.url('/ok'))).status, 200)
      assert.equal((await get(server.url('/ok'))).status, 200)
      assert.equal((await get(server.url('/ok'))).status, 429)
    })

    test('the local provider counts in this process; hybrid shares through Redis', async (t) => {
      const limiter = await redisLimiter(10)
      const logs = captureConsole()
      const app = express()
      // Two stores on one request: distinct prefixes, so the double-count check stays quiet.
      app.use(rateLimit({ windowMs: 10_000, limit: 2, standardHeaders: draft, store: new TrypemaStore({ limiter, provider: 'local', prefix: 'l/' }) }))
      app.use(rateLimit({ windowMs: 10_000, limit: 3, standardHeaders: draft, store: new TrypemaStore({ limiter, provider: 'hybrid', prefix: 'h/' }) }))
      app.get('/', (req, res) => res.send('ok'))
      const server = await serve(app)
      t.after(() => server.close())
      const statuses = []
      try {
        for (let i = 0; i < 3; i++) statuses.push((await get(server.url('/'))).status)
      } finally {
        assert.deepEqual(logs.stop(), [])
      }
      assert.deepEqual(statuses, [200, 200, 429])
      const local = limiter.local.absolute.get('l/127.0.0.1', Number.MAX_SAFE_INTEGER / 10)
      assert.equal(local.limit - local.remaining, 3)
      const hybrid = await limiter.hybrid.absolute.get('h/127.0.0.1', Number.MAX_SAFE_INTEGER / 10)
      assert.equal(hybrid.limit - hybrid.remaining, 2, 'the limited request stopped before the second limiter')
    })

    test("a windowMs other than the limiter's window is reported and fails every request loudly", async (t) => {
      const limiter = await redisLimiter(10)
      if (label.endsWith('7')) {
        // v7 calls init() without catching: the app fails to start.
        assert.throws(() => rateLimit({ windowMs: 60_000, limit: 2, store: new TrypemaStore({ limiter }) }), {
          code: 'TRYPEMA_STORE_WINDOW_MISMATCH',
        })
        return
      }
      // v8 logs init()'s error and goes on: every request then fails (its store errors go to next(err)).
      const logs = captureConsole()
      let seen
      try {
        const app = express()
        app.use(rateLimit({ windowMs: 60_000, limit: 2, standardHeaders: draft, store: new TrypemaStore({ limiter }) }))
        app.get('/', (req, res) => res.send('ok'))
        app.use((error, req, res, next) => res.status(500).json({ code: error.code }))
        const server = await serve(app)
        t.after(() => server.close())
        const response = await get(server.url('/'))
        assert.equal(response.status, 500)
        assert.deepEqual(response.json, { code: 'TRYPEMA_STORE_WINDOW_MISMATCH' })
      } finally {
        seen = logs.stop()
      }
      assert.ok(
        seen.some(({ message }) => /windowMs is 60000 but the trypema limiter's window is 10000 ms/.test(message)),
        JSON.stringify(seen),
      )
    })
  })
}

test('the sliding window: hits leave one by one as they age, not all at a fixed reset', async (t) => {
  const limiter = await redisLimiter(1)
  const store = new TrypemaStore({ limiter })
  store.init({ windowMs: 1000 })
  await store.increment('slide')
  await new Promise((resolve) => setTimeout(resolve, 500))
  await store.increment('slide')
  const both = await store.increment('slide')
  assert.equal(both.totalHits, 3)
  assert.ok(both.resetTime.getTime() - Date.now() <= 600, 'resetTime: when the oldest hit leaves')
  await eventually(async () => (await store.get('slide'))?.totalHits === 2, { message: 'the first hit leaving', timeoutMs: 2000 })
  await eventually(async () => (await store.get('slide')) === undefined, { message: 'the others leaving', timeoutMs: 2000 })
})

test('two server processes with express-rate-limit and TrypemaStore share one limit', async (t) => {
  const prefix = freshPrefix('erl-shared')
  const app = fileURLToPath(new URL('./express-rate-limit-app.mjs', import.meta.url))
  const servers = []
  t.after(() => {
    for (const { child } of servers) child.stdin.end()
  })
  for (let i = 0; i < 2; i++) {
    const child = spawn(process.execPath, [app], {
      env: { ...process.env, REDIS_URL: redis.url, REDIS_PREFIX: prefix, WINDOW_SECONDS: '10', LIMIT: '7' },
      stdio: ['pipe', 'pipe', 'inherit'],
    })
    const [line] = await Promise.race([
      once(createInterface({ input: child.stdout }), 'line'),
      once(child, 'exit').then(([code]) => {
        throw new Error(`server ${i} exited with ${code}`)
      }),
    ])
    servers.push({ child, base: `http://127.0.0.1:${JSON.parse(line).port}` })
  }
  // 10 requests of one client alternating between the two processes, then concurrently.
  const seen = []
  for (let i = 0; i < 10; i++) {
    const response = await get(`${servers[i % 2].base}/`, { 'x-client': 'alice' })
    seen.push(response.status)
    if (response.status === 200) assert.equal(response.json.hits, i + 1, 'the count is shared')
  }
  assert.deepEqual(seen, [200, 200, 200, 200, 200, 200, 200, 429, 429, 429])
  const burst = await Promise.all(
    Array.from({ length: 40 }, (_, i) => get(`${servers[i % 2].base}/`, { 'x-client': 'bob' })),
  )
  assert.equal(burst.filter((r) => r.status === 200).length, 7, 'exactly the limit admitted across both processes')
  assert.equal(burst.filter((r) => r.status === 429).length, 33)
  for (const { base } of servers) assert.deepEqual((await get(`${base}/logs`)).json, [], 'no express-rate-limit warnings')
})
