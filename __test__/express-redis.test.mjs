// trypema/express against a real redis-server, over real HTTP.
import { test, describe, before, after } from 'node:test'
import assert from 'node:assert/strict'
import express from 'express'

import { RateLimiter } from '../index.mjs'
import { rateLimit, defaultKey } from '../express.mjs'
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

/** A Redis limiter with its own key prefix, closed after the file. */
async function redisLimiter({ windowSizeSeconds = 10, hardLimitFactor = 1 } = {}) {
  const limiter = await RateLimiter.builder(redis.url)
    .windowSizeSeconds(windowSizeSeconds)
    .rateGroupSizeMs(10)
    .hardLimitFactor(hardLimitFactor)
    .redisPrefix(freshPrefix())
    .build()
  limiters.push(limiter)
  return limiter
}

/** An app with one limited route `/` that answers 'ok'. */
async function appWith(t, middleware, configure) {
  const app = express()
  configure?.(app)
  app.get('/', middleware, (req, res) => res.send('ok'))
  const server = await serve(app)
  t.after(() => server.close())
  return server
}

describe('redis absolute', () => {
  test('200s up to floor(window × rate), then 429 with Retry-After, headers and a JSON body', async (t) => {
    const limiter = await redisLimiter({ windowSizeSeconds: 10 })
    const server = await appWith(t, rateLimit({ limiter, provider: 'redis', strategy: 'absolute', rate: 0.35 }))
    for (let i = 0; i < 3; i++) {
      const response = await get(server.url('/'))
      assert.equal(response.status, 200, `request ${i + 1}`)
      assert.equal(response.text, 'ok')
      assert.equal(response.headers.get('ratelimit-policy'), '"default";q=3;w=10')
      // Every allowed response says what is left (exactly: one Redis round trip decides and counts).
      assert.match(response.headers.get('ratelimit'), new RegExp(`^"default";r=${2 - i};t=(9|10)$`))
      assert.equal(response.headers.get('retry-after'), null)
      assert.equal(response.headers.get('x-ratelimit-limit'), null, 'legacy headers are off by default')
    }
    for (let i = 0; i < 2; i++) {
      const response = await get(server.url('/'))
      assert.equal(response.status, 429)
      assert.match(response.headers.get('content-type'), /^application\/json/)
      const retryAfter = Number(response.headers.get('retry-after'))
      assert.ok(Number.isInteger(retryAfter) && retryAfter >= 1 && retryAfter <= 10, `Retry-After ${retryAfter}`)
      assert.deepEqual(response.json, { error: 'Too Many Requests', retryAfterSeconds: retryAfter })
      assert.equal(response.headers.get('ratelimit-policy'), '"default";q=3;w=10')
      assert.equal(response.headers.get('ratelimit'), `"default";r=0;t=${retryAfter}`)
    }
  })

  test('Retry-After is rounded up and the limit frees up after it', async (t) => {
    const limiter = await redisLimiter({ windowSizeSeconds: 1 })
    const server = await appWith(t, rateLimit({ limiter, provider: 'redis', strategy: 'absolute', rate: 2 }))
    assert.equal((await get(server.url('/'))).status, 200)
    assert.equal((await get(server.url('/'))).status, 200)
    const limited = await get(server.url('/'))
    assert.equal(limited.status, 429)
    assert.equal(limited.headers.get('retry-after'), '1') // ≤ 1000 ms left, rounded up to 1 s
    assert.equal(limited.headers.get('ratelimit-policy'), '"default";q=2;w=1')
    await new Promise((resolve) => setTimeout(resolve, 1100))
    assert.equal((await get(server.url('/'))).status, 200)
  })

  test('legacy headers, a custom policy name and stacked limiters', async (t) => {
    const limiter = await redisLimiter({ windowSizeSeconds: 10 })
    const perMinute = rateLimit({
      limiter,
      provider: 'redis',
      strategy: 'absolute',
      rate: 0.5,
      policyName: 'burst',
      legacyHeaders: true,
    })
    const perHour = rateLimit({ limiter, provider: 'redis', strategy: 'absolute', rate: 0.2, policyName: 'sustained', key: () => 'all' })
    const app = express()
    app.get('/', perMinute, perHour, (req, res) => res.send('ok'))
    const server = await serve(app)
    t.after(() => server.close())
    const first = await get(server.url('/'))
    assert.equal(first.status, 200)
    assert.equal(first.headers.get('ratelimit-policy'), '"burst";q=5;w=10, "sustained";q=2;w=10')
    assert.match(first.headers.get('ratelimit'), /^"burst";r=4;t=(9|10), "sustained";r=1;t=(9|10)$/)
    assert.equal(first.headers.get('x-ratelimit-limit'), '5')
    assert.equal(first.headers.get('x-ratelimit-remaining'), '4')
    const reset = Number(first.headers.get('x-ratelimit-reset'))
    assert.ok(Math.abs(reset - (Date.now() / 1000 + 10)) <= 2, `X-RateLimit-Reset ${reset}`)
    const second = await get(server.url('/'))
    assert.equal(second.status, 200)
    assert.equal(second.headers.get('x-ratelimit-remaining'), '3')
    const third = await get(server.url('/'))
    assert.equal(third.status, 429, 'the stricter "sustained" policy applies')
    assert.match(third.headers.get('ratelimit'), /^"burst";r=2;t=(9|10), "sustained";r=0;t=\d+$/)
  })

  test('per-key isolation with a custom key function', async (t) => {
    const limiter = await redisLimiter()
    const server = await appWith(
      t,
      rateLimit({ limiter, provider: 'redis', strategy: 'absolute', rate: 0.2, key: (req) => req.get('x-api-key') ?? 'anonymous' }),
    )
    const as = (key) => get(server.url('/'), { 'x-api-key': key })
    assert.equal((await as('alice')).status, 200)
    assert.equal((await as('alice')).status, 200)
    assert.equal((await as('alice')).status, 429)
    assert.equal((await as('bob')).status, 200, 'bob has his own limit')
    assert.equal((await as('bob')).status, 200)
    assert.equal((await as('bob')).status, 429)
    // Keys that are not valid Redis keys are mapped, not rejected, and stay distinct.
    for (const key of ['user:1', 'user:2', 'x'.repeat(300), `${'x'.repeat(300)}y`]) {
      assert.equal((await as(key)).status, 200, key)
      assert.equal((await as(key)).status, 200, key)
      assert.equal((await as(key)).status, 429, key)
    }
  })

  test('default key: IPv6 clients share a limit within a /56 and not across /56s', async (t) => {
    const limiter = await redisLimiter()
    const server = await appWith(
      t,
      rateLimit({ limiter, provider: 'redis', strategy: 'absolute', rate: 0.2, key: defaultKey }),
      (app) => app.set('trust proxy', true),
    )
    const from = (ip) => get(server.url('/'), { 'x-forwarded-for': ip })
    assert.equal((await from('2001:db8:aaaa:1100::1')).status, 200)
    assert.equal((await from('2001:db8:aaaa:11ff:ffff::2')).status, 200, 'same /56')
    assert.equal((await from('2001:db8:aaaa:1180::3')).status, 429, 'same /56: the shared limit is used up')
    assert.equal((await from('2001:db8:aaaa:1200::1')).status, 200, 'next /56 has its own limit')
    assert.equal((await from('2001:db8:aaaa:1000::1')).status, 200, 'previous /56 has its own limit')
    // IPv4 (also when mapped) is per address.
    assert.equal((await from('203.0.113.7')).status, 200)
    assert.equal((await from('::ffff:203.0.113.7')).status, 200)
    assert.equal((await from('203.0.113.7')).status, 429, 'mapped and plain IPv4 are one client')
    assert.equal((await from('203.0.113.8')).status, 200)
  })

  test('the default key is the client address when no key is given', async (t) => {
    const limiter = await redisLimiter()
    const server = await appWith(t, rateLimit({ limiter, provider: 'redis', strategy: 'absolute', rate: 0.1 }))
    // Without trust proxy, X-Forwarded-For is ignored: both requests come from 127.0.0.1.
    assert.equal((await get(server.url('/'), { 'x-forwarded-for': '198.51.100.1' })).status, 200)
    assert.equal((await get(server.url('/'), { 'x-forwarded-for': '198.51.100.2' })).status, 429)
  })

  test('rate, cost and skip as functions', async (t) => {
    const limiter = await redisLimiter()
    const server = await appWith(
      t,
      rateLimit({
        limiter,
        provider: 'redis',
        strategy: 'absolute',
        key: (req) => req.get('x-user'),
        rate: (req) => (req.get('x-plan') === 'pro' ? 1 : 0.3),
        cost: (req) => Number(req.get('x-cost') ?? 1),
        skip: async (req) => req.get('x-internal') === 'yes',
      }),
    )
    const call = (headers) => get(server.url('/'), headers)
    const free = await call({ 'x-user': 'f', 'x-cost': '2' })
    assert.equal(free.status, 200)
    assert.equal(free.headers.get('ratelimit-policy'), '"default";q=3;w=10')
    assert.equal((await call({ 'x-user': 'f', 'x-cost': '2' })).status, 429, '2 + 2 > 3')
    assert.equal((await call({ 'x-user': 'f' })).status, 200, '2 + 1 = 3')
    const skipped = await call({ 'x-user': 'f', 'x-internal': 'yes' })
    assert.equal(skipped.status, 200, 'skipped requests are not limited')
    assert.equal(skipped.headers.get('ratelimit-policy'), null, 'nor counted or annotated')
    const pro = await call({ 'x-user': 'p', 'x-plan': 'pro', 'x-cost': '10' })
    assert.equal(pro.status, 200)
    assert.equal(pro.headers.get('ratelimit-policy'), '"default";q=10;w=10')
    assert.equal((await call({ 'x-user': 'p', 'x-plan': 'pro' })).status, 429)
  })

  test('a bad key(), rate() or cost() result takes the onError path instead of crashing', async (t) => {
    const limiter = await redisLimiter()
    const errors = []
    const common = { limiter, provider: 'redis', strategy: 'absolute', rate: 1 }
    const app = express()
    app.get('/key-undefined', rateLimit({ ...common, key: () => undefined }), (req, res) => res.send('open'))
    app.get('/key-throws', rateLimit({ ...common, key: () => { throw new Error('boom') }, onError: 'deny' }), (req, res) =>
      res.send('open'),
    )
    app.get('/rate-nan', rateLimit({ ...common, rate: () => Number.NaN, onError: 'deny' }), (req, res) => res.send('open'))
    app.get(
      '/cost-negative',
      rateLimit({
        ...common,
        cost: () => -1,
        onError: (error, req, res) => {
          errors.push(error)
          res.status(400).json({ error: error.message })
        },
      }),
      (req, res) => res.send('open'),
    )
    app.get('/skip-throws', rateLimit({ ...common, skip: async () => { throw new Error('no') }, onError: 'deny' }), (req, res) =>
      res.send('open'),
    )
    app.get('/number-key', rateLimit({ ...common, rate: 0.1, key: () => 42 }), (req, res) => res.send('limited'))
    const server = await serve(app)
    t.after(() => server.close())
    const keyUndefined = await get(server.url('/key-undefined'))
    assert.equal(keyUndefined.status, 200, "onError 'allow' (the default) fails open")
    assert.equal(keyUndefined.text, 'open')
    for (const path of ['/key-throws', '/rate-nan', '/skip-throws']) {
      const response = await get(server.url(path))
      assert.equal(response.status, 503, path)
      assert.equal(response.json.error, 'Service Unavailable')
    }
    const costNegative = await get(server.url('/cost-negative'))
    assert.equal(costNegative.status, 400)
    assert.equal(errors.length, 1)
    assert.ok(errors[0] instanceof TypeError)
    // A numeric key is accepted (converted to a string), not treated as an error.
    assert.equal((await get(server.url('/number-key'))).status, 200)
    assert.equal((await get(server.url('/number-key'))).status, 429)
  })
})

describe('quota headers, req.rateLimit and refunds', () => {
  test('every allowed response carries RateLimit with r counting down exactly (costs included)', async (t) => {
    const limiter = await redisLimiter({ windowSizeSeconds: 10 })
    const app = express()
    app.get(
      '/',
      rateLimit({
        limiter,
        provider: 'redis',
        strategy: 'absolute',
        rate: 1,
        cost: (req) => Number(req.get('x-cost') ?? 1),
        legacyHeaders: true,
      }),
      (req, res) => res.json(req.rateLimit),
    )
    const server = await serve(app)
    t.after(() => server.close())
    let left = 10
    for (const cost of [1, 2, 3, 1, 0]) {
      left -= cost
      const started = Date.now()
      const response = await get(server.url('/'), { 'x-cost': String(cost) })
      assert.equal(response.status, 200, `cost ${cost}`)
      assert.equal(response.headers.get('ratelimit-policy'), '"default";q=10;w=10')
      const item = rateLimitItem(response.headers.get('ratelimit'))
      assert.equal(item.r, left, `r after cost ${cost}`)
      assert.ok(item.t === 9 || item.t === 10, `t ${item.t}`)
      assert.equal(response.headers.get('x-ratelimit-limit'), '10')
      assert.equal(response.headers.get('x-ratelimit-remaining'), String(left))
      const reset = Number(response.headers.get('x-ratelimit-reset'))
      assert.ok(Math.abs(reset - (started / 1000 + 10)) <= 2, `X-RateLimit-Reset ${reset}`)
      // req.rateLimit, as express-rate-limit sets it.
      const info = response.json
      assert.equal(info.limit, 10)
      assert.equal(info.remaining, left)
      assert.equal(info.used, 10 - left)
      assert.equal(info.key, '127.0.0.1')
      const resetTime = Date.parse(info.resetTime)
      assert.ok(resetTime > started + 8000 && resetTime <= Date.now() + 10_000, `resetTime ${info.resetTime}`)
    }
    // 3 left: a cost of 4 is refused (with today's limited headers), a cost of 3 still fits.
    const refused = await get(server.url('/'), { 'x-cost': '4' })
    assert.equal(refused.status, 429)
    const retryAfter = Number(refused.headers.get('retry-after'))
    assert.equal(refused.headers.get('ratelimit'), `"default";r=0;t=${retryAfter}`)
    assert.equal(refused.headers.get('x-ratelimit-remaining'), '0')
    const last = await get(server.url('/'), { 'x-cost': '3' })
    assert.equal(last.status, 200)
    assert.equal(rateLimitItem(last.headers.get('ratelimit')).r, 0)
    assert.equal((await limiter.redis.absolute.get('127.0.0.1', 1)).remaining, 0)
  })

  test('skipFailedRequests gives back the cost of 5xx/4xx answers, thrown errors and aborted requests', async (t) => {
    const limiter = await redisLimiter({ windowSizeSeconds: 10 })
    const key = 'failing-client'
    let arrived
    const app = express()
    app.use(rateLimit({ limiter, provider: 'redis', strategy: 'absolute', rate: 0.3, key: () => key, skipFailedRequests: true }))
    app.get('/ok', (req, res) => res.send('ok'))
    app.get('/500', (req, res) => res.status(500).send('broken'))
    app.get('/404', (req, res) => res.status(404).send('missing'))
    app.get('/throws', () => {
      throw new Error('handler failed')
    })
    app.get('/hangs', () => arrived())
    app.use((error, req, res, next) => res.status(500).send(error.message)) // quiet: no stack on stderr
    const server = await serve(app)
    t.after(() => server.close())
    const remaining = async () => (await limiter.redis.absolute.get(key, 0.3)).remaining
    const backTo = (n, what) => eventually(async () => (await remaining()) === n, { message: `${what}: remaining back to ${n}` })

    for (const path of ['/500', '/404', '/throws', '/500', '/500']) {
      const response = await get(server.url(path))
      assert.ok(response.status >= 400 && response.status !== 429, `${path}: ${response.status}`)
      // Counted while it ran (the header says so), given back once it failed.
      assert.equal(rateLimitItem(response.headers.get('ratelimit')).r, 2, path)
      await backTo(3, path)
    }

    // A request whose client goes away before the answer: 'close' without 'finish'.
    const controller = new AbortController()
    const gotThere = new Promise((resolve) => (arrived = resolve))
    const aborted = fetch(server.url('/hangs'), { signal: controller.signal }).catch((error) => error)
    await gotThere
    assert.equal(await remaining(), 2, 'counted while in progress')
    controller.abort()
    assert.equal((await aborted).name, 'AbortError')
    await backTo(3, 'aborted request')

    // Successes stay counted.
    for (let i = 0; i < 3; i++) assert.equal((await get(server.url('/ok'))).status, 200)
    assert.equal((await get(server.url('/ok'))).status, 429)
    assert.equal(await remaining(), 0)
  })

  test('skipSuccessfulRequests gives back the cost of answers below 400 only', async (t) => {
    const limiter = await redisLimiter({ windowSizeSeconds: 10 })
    const app = express()
    app.use(rateLimit({ limiter, provider: 'redis', strategy: 'absolute', rate: 0.3, key: () => 'k', skipSuccessfulRequests: true }))
    app.get('/ok', (req, res) => res.send('ok'))
    app.get('/redirect', (req, res) => res.redirect(302, '/ok'))
    app.post('/login', (req, res) => res.status(401).send('wrong password'))
    const server = await serve(app)
    t.after(() => server.close())
    const remaining = async () => (await limiter.redis.absolute.get('k', 0.3)).remaining
    for (let i = 0; i < 5; i++) {
      assert.equal((await get(server.url('/ok'))).status, 200)
      await eventually(async () => (await remaining()) === 3, { message: 'refund of a 200' })
    }
    const redirect = await fetch(server.url('/redirect'), { redirect: 'manual' })
    await redirect.text()
    assert.equal(redirect.status, 302)
    await eventually(async () => (await remaining()) === 3, { message: 'refund of a 302' })
    // Failed logins count: the fourth is limited.
    const login = () => fetch(server.url('/login'), { method: 'POST' }).then(async (r) => (await r.text(), r.status))
    assert.deepEqual([await login(), await login(), await login(), await login()], [401, 401, 401, 429])
    assert.equal(await remaining(), 0)
  })
})

describe('hybrid provider', () => {
  test("provider 'hybrid' limits through rl.hybrid", async (t) => {
    const limiter = await redisLimiter()
    const server = await appWith(t, rateLimit({ limiter, provider: 'hybrid', strategy: 'absolute', rate: 0.3 }))
    const statuses = []
    for (let i = 0; i < 8; i++) {
      const response = await get(server.url('/'))
      statuses.push(response.status)
      assert.equal(response.headers.get('ratelimit-policy'), '"default";q=3;w=10')
      // Hybrid leases are recorded from the lease's end, so a refusal's Retry-After (= t) may
      // exceed the window by the lease length (500 ms here); allowed answers are capped at w.
      const { r, t } = rateLimitItem(response.headers.get('ratelimit'))
      const limit = response.status === 200 ? 10 : 11
      assert.ok(r >= 0 && r <= 2 && t >= 1 && t <= limit, `RateLimit ${response.headers.get('ratelimit')}`)
    }
    assert.equal(statuses[0], 200)
    assert.ok(statuses.includes(429), `statuses ${statuses}`)
  })
})

describe('hybrid suppressed', () => {
  test("provider 'hybrid', strategy 'suppressed': r counts down and t stays within the window", async (t) => {
    const limiter = await redisLimiter()
    const server = await appWith(t, rateLimit({ limiter, provider: 'hybrid', strategy: 'suppressed', rate: 0.3 }))
    for (let i = 0; i < 3; i++) {
      const response = await get(server.url('/'))
      assert.equal(response.status, 200)
      const { r, t: seconds } = rateLimitItem(response.headers.get('ratelimit'))
      assert.equal(r, 2 - i)
      assert.ok(seconds >= 1 && seconds <= 10, `t ${seconds}`)
    }
  })
})

describe('redis suppressed', () => {
  test('admits up to the soft limit, then declines with 429 by default or 503 when configured', async (t) => {
    const limiter = await redisLimiter({ windowSizeSeconds: 10, hardLimitFactor: 1 })
    const app = express()
    app.get('/default', rateLimit({ limiter, provider: 'redis', strategy: 'suppressed', rate: 0.4, key: () => 'a' }), (req, res) =>
      res.send('ok'),
    )
    app.get(
      '/unavailable',
      rateLimit({ limiter, provider: 'redis', strategy: 'suppressed', rate: 0.4, key: () => 'b', suppressedStatus: 503 }),
      (req, res) => res.send('ok'),
    )
    const server = await serve(app)
    t.after(() => server.close())
    for (const [path, status, error] of [
      ['/default', 429, 'Too Many Requests'],
      ['/unavailable', 503, 'Service Unavailable'],
    ]) {
      for (let i = 0; i < 4; i++) {
        const response = await get(server.url(path))
        assert.equal(response.status, 200, `${path} request ${i + 1}`)
        assert.equal(response.headers.get('trypema-suppression-factor'), null, 'under the soft limit: plain allowed')
        assert.equal(response.headers.get('ratelimit-policy'), '"default";q=4;w=10')
        assert.match(response.headers.get('ratelimit'), new RegExp(`^"default";r=${3 - i};t=(9|10)$`))
      }
      // hard limit = soft limit: from now on everything is declined.
      for (let i = 0; i < 3; i++) {
        const response = await get(server.url(path))
        assert.equal(response.status, status, path)
        assert.equal(response.headers.get('retry-after'), '1')
        assert.equal(response.headers.get('ratelimit'), '"default";r=0;t=1')
        assert.deepEqual(response.json, { error, retryAfterSeconds: 1, suppressionFactor: 1 })
      }
    }
  })

  test('requests admitted under suppression carry Trypema-Suppression-Factor', async (t) => {
    // 1 s window, rate 10: soft limit 10, hard limit 100. Just above the rate the factor is
    // small (1 − 10/observed), so most requests past the soft limit are still admitted.
    const limiter = await redisLimiter({ windowSizeSeconds: 1, hardLimitFactor: 10 })
    const server = await appWith(t, rateLimit({ limiter, provider: 'redis', strategy: 'suppressed', rate: 10 }))
    const responses = []
    for (let i = 0; i < 30; i++) responses.push(await get(server.url('/')))
    const plain = responses.filter((r) => r.status === 200 && !r.headers.has('trypema-suppression-factor'))
    const admitted = responses.filter((r) => r.status === 200 && r.headers.has('trypema-suppression-factor'))
    const declined = responses.filter((r) => r.status === 429)
    assert.equal(plain.length + admitted.length + declined.length, 30, 'only 200 and 429 answers')
    assert.ok(plain.length >= 10, `the first 10 are plain admits, got ${plain.length}`)
    assert.ok(admitted.length >= 1, 'some requests were admitted under suppression')
    for (const response of admitted) {
      const factor = Number(response.headers.get('trypema-suppression-factor'))
      assert.ok(factor > 0 && factor < 1, `factor ${factor}`)
      assert.equal(response.text, 'ok')
      assert.equal(response.headers.get('ratelimit'), '"default";r=0;t=1')
      assert.equal(response.headers.get('retry-after'), null)
    }
    for (const response of declined) {
      assert.equal(response.headers.get('retry-after'), '1')
      assert.ok(response.json.suppressionFactor > 0 && response.json.suppressionFactor <= 1)
    }
  })
})
