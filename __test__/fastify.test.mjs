// trypema/fastify: the plugin under Fastify 5, over real HTTP and with fastify.inject, against a
// real redis-server: the same headers, bodies, request.rateLimit and onError paths as
// trypema/express.
import { test, describe, before, after } from 'node:test'
import assert from 'node:assert/strict'
import Fastify from 'fastify'

import { RateLimiter } from '../index.mjs'
import trypemaRateLimit, { defaultKey, safeKey } from '../fastify.mjs'
import { get, freshPrefix, sharedRedis, eventually, rateLimitItem, watchUnhandledRejections } from './express-helpers.mjs'

let redis
const limiters = []

before(async () => {
  redis = await sharedRedis()
})

after(async () => {
  await Promise.all(limiters.map((limiter) => limiter.close()))
  await redis.stop()
})

async function redisLimiter({ windowSizeSeconds = 10, hardLimitFactor = 1 } = {}) {
  const limiter = await RateLimiter.builder(redis.url)
    .windowSizeSeconds(windowSizeSeconds)
    .rateGroupSizeMs(10)
    .hardLimitFactor(hardLimitFactor)
    .redisPrefix(freshPrefix('fastify'))
    .build()
  limiters.push(limiter)
  return limiter
}

/** A Fastify app closed after the test. */
function app(t, options) {
  const fastify = Fastify(options)
  t.after(() => fastify.close())
  return fastify
}

test('the plugin is the module, with defaultKey and safeKey beside it', () => {
  assert.equal(typeof trypemaRateLimit, 'function')
  assert.equal(trypemaRateLimit.trypemaRateLimit, trypemaRateLimit)
  assert.equal(trypemaRateLimit.default, trypemaRateLimit)
  assert.equal(defaultKey({ ip: '::ffff:10.0.0.1' }), '10.0.0.1')
  assert.equal(safeKey('a:b'), 'a%3Ab')
})

describe('redis absolute', () => {
  test('over real HTTP: r counts down on every allowed answer, then 429 with Retry-After and a JSON body', async (t) => {
    const limiter = await redisLimiter()
    const fastify = app(t)
    await fastify.register(trypemaRateLimit, { limiter, provider: 'redis', strategy: 'absolute', rate: 0.3, legacyHeaders: true })
    fastify.get('/', async (request) => request.rateLimit)
    const base = await fastify.listen({ port: 0, host: '127.0.0.1' })
    for (let i = 0; i < 3; i++) {
      const response = await get(`${base}/`)
      assert.equal(response.status, 200)
      assert.equal(response.headers.get('ratelimit-policy'), '"default";q=3;w=10')
      assert.match(response.headers.get('ratelimit'), new RegExp(`^"default";r=${2 - i};t=(9|10)$`))
      assert.equal(response.headers.get('x-ratelimit-limit'), '3')
      assert.equal(response.headers.get('x-ratelimit-remaining'), String(2 - i))
      assert.deepEqual(
        { limit: response.json.limit, used: response.json.used, remaining: response.json.remaining, key: response.json.key },
        { limit: 3, used: i + 1, remaining: 2 - i, key: '127.0.0.1' },
      )
    }
    const limited = await get(`${base}/`)
    assert.equal(limited.status, 429)
    assert.match(limited.headers.get('content-type'), /^application\/json/)
    const retryAfter = Number(limited.headers.get('retry-after'))
    assert.ok(retryAfter >= 1 && retryAfter <= 10)
    assert.deepEqual(limited.json, { error: 'Too Many Requests', retryAfterSeconds: retryAfter })
    assert.equal(limited.headers.get('ratelimit'), `"default";r=0;t=${retryAfter}`)
    assert.equal(limited.headers.get('x-ratelimit-remaining'), '0')
  })

  test('with inject: per-key limits, cost, skip, two stacked policies', async (t) => {
    const limiter = await redisLimiter()
    const fastify = app(t)
    await fastify.register(trypemaRateLimit, {
      limiter,
      provider: 'redis',
      strategy: 'absolute',
      rate: 0.5,
      policyName: 'burst',
      key: (request) => String(request.headers['x-user'] ?? 'anonymous'),
      cost: async (request) => Number(request.headers['x-cost'] ?? 1),
      skip: (request) => request.url === '/health',
    })
    await fastify.register(trypemaRateLimit, {
      limiter,
      provider: 'redis',
      strategy: 'absolute',
      rate: 0.8,
      policyName: 'all',
      key: () => 'everyone',
      requestPropertyName: 'overall',
      skip: (request) => request.url === '/health',
    })
    fastify.get('/', async () => 'ok')
    fastify.get('/health', async () => 'healthy')
    const call = (headers) => fastify.inject({ url: '/', headers })
    const first = await call({ 'x-user': 'a', 'x-cost': '3' })
    assert.equal(first.statusCode, 200)
    assert.equal(first.headers['ratelimit-policy'], '"burst";q=5;w=10, "all";q=8;w=10')
    assert.equal(rateLimitItem(first.headers.ratelimit, 'burst').r, 2)
    assert.equal(rateLimitItem(first.headers.ratelimit, 'all').r, 7)
    assert.equal((await call({ 'x-user': 'a', 'x-cost': '3' })).statusCode, 429, '3 + 3 > 5')
    assert.equal((await call({ 'x-user': 'b', 'x-cost': '5' })).statusCode, 200, 'b has its own burst limit')
    const health = await fastify.inject('/health')
    assert.equal(health.statusCode, 200)
    assert.equal(health.headers.ratelimit, undefined, 'skipped: not counted')
    for (let i = 0; i < 6; i++) await call({ 'x-user': `u${i}` })
    const overall = await call({ 'x-user': 'z' })
    assert.equal(overall.statusCode, 429, 'the shared "all" policy is used up')
    assert.match(overall.headers.ratelimit, /"all";r=0;t=\d+$/)
  })

  test('skipFailedRequests gives back the cost of failed answers (inject and real HTTP)', async (t) => {
    const limiter = await redisLimiter()
    const fastify = app(t)
    await fastify.register(trypemaRateLimit, { limiter, provider: 'redis', strategy: 'absolute', rate: 0.2, key: () => 'k', skipFailedRequests: true })
    fastify.get('/fail', async (request, reply) => reply.code(500).send({ error: 'broken' }))
    fastify.get('/throws', async () => {
      throw new Error('handler failed')
    })
    fastify.get('/ok', async () => 'ok')
    const base = await fastify.listen({ port: 0, host: '127.0.0.1' })
    const remaining = async () => (await limiter.redis.absolute.get('k', 0.2)).remaining
    for (const send of [() => fastify.inject('/fail'), () => fastify.inject('/throws'), () => get(`${base}/fail`)]) {
      const response = await send()
      assert.equal(response.statusCode ?? response.status, 500)
      await eventually(async () => (await remaining()) === 2, { message: 'the refund' })
    }
    assert.equal((await fastify.inject('/ok')).statusCode, 200)
    assert.equal((await fastify.inject('/ok')).statusCode, 200)
    assert.equal((await fastify.inject('/ok')).statusCode, 429)
  })

  test('registered in an encapsulated context, it limits only that context', async (t) => {
    const limiter = await redisLimiter()
    const fastify = app(t)
    await fastify.register(
      async (api) => {
        await api.register(trypemaRateLimit, { limiter, provider: 'redis', strategy: 'absolute', rate: 0.1, key: () => 'x' })
        api.get('/limited', async () => 'limited')
      },
      { prefix: '/api' },
    )
    fastify.get('/open', async () => 'open')
    assert.equal((await fastify.inject('/api/limited')).statusCode, 200)
    assert.equal((await fastify.inject('/api/limited')).statusCode, 429)
    const open = await fastify.inject('/open')
    assert.equal(open.statusCode, 200)
    assert.equal(open.headers.ratelimit, undefined)
  })
})

describe('redis suppressed', () => {
  test('admits up to the soft limit, then sheds with suppressedStatus', async (t) => {
    const limiter = await redisLimiter()
    const fastify = app(t)
    await fastify.register(trypemaRateLimit, { limiter, provider: 'redis', strategy: 'suppressed', rate: 0.3, suppressedStatus: 503 })
    fastify.get('/', async () => 'ok')
    for (let i = 0; i < 3; i++) {
      const response = await fastify.inject('/')
      assert.equal(response.statusCode, 200)
      assert.match(response.headers.ratelimit, new RegExp(`^"default";r=${2 - i};t=(9|10)$`))
    }
    const shed = await fastify.inject('/')
    assert.equal(shed.statusCode, 503)
    assert.equal(shed.headers['retry-after'], '1')
    assert.equal(shed.headers.ratelimit, '"default";r=0;t=1')
    assert.deepEqual(shed.json(), { error: 'Service Unavailable', retryAfterSeconds: 1, suppressionFactor: 1 })
  })
})

describe('failures take the onError path', () => {
  test('callbacks that reject or throw, a then getter that throws, timeouts; no unhandled rejection', async (t) => {
    const limiter = await RateLimiter.builder().windowSizeSeconds(10).build()
    limiters.push(limiter)
    const unhandled = watchUnhandledRejections()
    const seen = []
    const fastify = app(t)
    const routes = {
      '/key-rejects': { key: async () => Promise.reject(new Error('key rejected')) },
      '/rate-throws': { rate: () => { throw new Error('rate threw') } },
      '/skip-then-getter': { skip: () => ({ get then() { throw new Error('then getter exploded') } }) },
      '/cost-hangs': { cost: () => new Promise(() => {}), timeoutMs: 50 },
      '/rate-huge': { rate: () => 1e308 },
    }
    for (const [path, options] of Object.entries(routes)) {
      await fastify.register(async (scope) => {
        await scope.register(trypemaRateLimit, {
          limiter,
          provider: 'local',
          strategy: 'absolute',
          rate: 1,
          onError: (error, request, reply) => {
            seen.push(error)
            reply.code(503).send({ message: error.message, code: error.code ?? null })
          },
          ...options,
        })
        scope.get(path, async () => 'through')
      })
    }
    await fastify.register(async (scope) => {
      await scope.register(trypemaRateLimit, { limiter, provider: 'local', strategy: 'absolute', rate: 1, key: () => undefined, onError: 'deny' })
      scope.get('/deny', async () => 'through')
    })
    await fastify.register(async (scope) => {
      await scope.register(trypemaRateLimit, { limiter, provider: 'local', strategy: 'absolute', rate: 1, key: () => null })
      scope.get('/allow', async () => 'through')
    })
    await fastify.register(async (scope) => {
      await scope.register(trypemaRateLimit, {
        limiter,
        provider: 'local',
        strategy: 'absolute',
        rate: 1,
        key: () => {
          throw new Error('to the error handler')
        },
        onError: (error, request, reply, done) => done(error),
      })
      scope.setErrorHandler((error, request, reply) => reply.code(500).send({ caught: error.message }))
      scope.get('/done-error', async () => 'through')
    })
    const expect = {
      '/key-rejects': 'key rejected',
      '/rate-throws': 'rate threw',
      '/skip-then-getter': 'then getter exploded',
      '/cost-hangs': 'the rate limiter did not answer within 50 ms',
    }
    for (const [path, message] of Object.entries(expect)) {
      const response = await fastify.inject(path)
      assert.equal(response.statusCode, 503, path)
      assert.equal(response.json().message, message, path)
    }
    const huge = await fastify.inject('/rate-huge')
    assert.equal(huge.json().code, 'TRYPEMA_EXPRESS_INVALID_RATE')
    assert.equal((await fastify.inject('/deny')).statusCode, 503)
    const allowed = await fastify.inject('/allow')
    assert.equal(allowed.statusCode, 200, "onError 'allow' (the default) fails open")
    assert.equal(allowed.body, 'through')
    assert.deepEqual((await fastify.inject('/done-error')).json(), { caught: 'to the error handler' })
    assert.equal(seen.length, 5)
    assert.deepEqual(await unhandled.stop(), [])
  })

  test('bad options fail the registration with a TypeError', async (t) => {
    const limiter = await RateLimiter.builder().build()
    limiters.push(limiter)
    for (const options of [
      { limiter, provider: 'local', strategy: 'absolute' },
      { limiter, provider: 'redis', strategy: 'absolute', rate: 1 }, // no Redis
      { limiter, provider: 'local', strategy: 'absolute', rate: 1, timeoutMs: 2 ** 31 },
      { limiter, provider: 'local', strategy: 'absolute', rate: 1, bogus: true },
    ]) {
      const fastify = Fastify()
      fastify.register(trypemaRateLimit, options)
      await assert.rejects(fastify.ready(), TypeError)
      await fastify.close()
    }
  })

  test("degraded decisions carry Trypema-Degraded: 1 (onRedisError 'allow')", async (t) => {
    // A limiter-like object giving the degraded answer a real limiter gives while Redis is down
    // (express-errors.test.mjs checks that with a real limiter and a stopped redis-server).
    const degraded = {
      windowSizeSeconds: 10,
      redis: {
        absolute: {
          incWithQuota: async () => ({ decision: { kind: 'allowed' }, limit: 3, remaining: 3, resetMs: 0, degraded: true }),
        },
      },
    }
    const fastify = app(t)
    await fastify.register(trypemaRateLimit, { limiter: degraded, provider: 'redis', strategy: 'absolute', rate: 0.3 })
    fastify.get('/', async () => 'ok')
    const response = await fastify.inject('/')
    assert.equal(response.statusCode, 200)
    assert.equal(response.headers['trypema-degraded'], '1')
    assert.equal(response.headers.ratelimit, '"default";r=3;t=0')
  })
})
