// trypema/express when things fail: Redis going away (onError 'allow', 'deny', a handler;
// degraded decisions; recovery), and `skip` / `key` / `rate` / `cost` callbacks that throw,
// reject, hang or return nonsense — always the onError path, never a synchronous throw or an
// unhandled rejection.
import { test, describe } from 'node:test'
import assert from 'node:assert/strict'
import express from 'express'

import { RateLimiter } from '../index.mjs'
import { rateLimit } from '../express.mjs'
import { serve, get, freshPrefix, privateRedis, watchUnhandledRejections, rateLimitItem } from './express-helpers.mjs'

test('with Redis stopped, onError decides; no request hangs; service resumes with Redis', async (t) => {
  const redis = await privateRedis()
  const limiter = await RateLimiter.builder(redis.url).windowSizeSeconds(10).redisPrefix(freshPrefix('errors')).build()
  t.after(async () => {
    await limiter.close()
    await redis.stop()
  })

  const seen = []
  const common = { limiter, provider: 'redis', strategy: 'absolute', rate: 10 }
  const app = express()
  app.get('/allow', rateLimit({ ...common }), (req, res) => res.send('allowed through'))
  app.get('/deny', rateLimit({ ...common, onError: 'deny' }), (req, res) => res.send('should not get here'))
  app.get(
    '/handler',
    rateLimit({
      ...common,
      strategy: 'suppressed',
      onError: (error, req, res) => {
        seen.push({ code: error.code, path: req.path })
        res.status(502).json({ error: 'limiter down', code: error.code })
      },
    }),
    (req, res) => res.send('should not get here'),
  )
  app.get(
    '/handler-next',
    rateLimit({
      ...common,
      onError: (error, req, res, next) => {
        seen.push({ code: error.code, path: req.path })
        next()
        next() // a second call is ignored
      },
    }),
    (req, res) => res.send('handler let it through'),
  )
  app.get(
    '/handler-throws',
    rateLimit({
      ...common,
      onError: async () => {
        throw new Error('handler failed')
      },
    }),
    (req, res) => res.send('should not get here'),
  )
  // Express's error handler receives what the onError handler threw.
  app.use((error, req, res, next) => res.status(500).json({ caught: error.message }))
  const server = await serve(app)
  t.after(() => server.close())

  // Healthy first.
  const healthy = await get(server.url('/deny'))
  assert.equal(healthy.status, 200)
  assert.equal(healthy.headers.get('ratelimit-policy'), '"default";q=100;w=10')

  await redis.stop()

  const started = Date.now()
  const [allow, deny, handler, handlerNext, handlerThrows] = await Promise.all(
    ['/allow', '/deny', '/handler', '/handler-next', '/handler-throws'].map((path) => get(server.url(path))),
  )
  const elapsed = Date.now() - started
  assert.ok(elapsed < 10_000, `answers took ${elapsed} ms`)

  assert.equal(allow.status, 200, "'allow' fails open")
  assert.equal(allow.text, 'allowed through')
  assert.equal(allow.headers.get('ratelimit-policy'), null, 'no limit headers without a decision')

  assert.equal(deny.status, 503, "'deny' fails closed")
  assert.match(deny.headers.get('content-type'), /^application\/json/)
  assert.equal(deny.json.error, 'Service Unavailable')

  assert.equal(handler.status, 502)
  assert.deepEqual(handler.json, { error: 'limiter down', code: 'TRYPEMA_REDIS' })
  assert.equal(handlerNext.status, 200)
  assert.equal(handlerNext.text, 'handler let it through')
  assert.equal(handlerThrows.status, 500)
  assert.deepEqual(handlerThrows.json, { caught: 'handler failed' })
  assert.deepEqual(
    seen.sort((a, b) => a.path.localeCompare(b.path)),
    [
      { code: 'TRYPEMA_REDIS', path: '/handler' },
      { code: 'TRYPEMA_REDIS', path: '/handler-next' },
    ],
  )

  // Redis comes back on the same port: limiting resumes without restarting the app.
  await redis.restart()
  let recovered = null
  for (let attempt = 0; attempt < 40 && recovered === null; attempt++) {
    const response = await get(server.url('/deny'))
    if (response.status === 200 && response.headers.get('ratelimit-policy') !== null) recovered = response
    else await new Promise((resolve) => setTimeout(resolve, 100))
  }
  assert.ok(recovered !== null, 'the limiter answers again once Redis is back')
})

test("degraded decisions (onRedisError 'allow' / 'local') are answered with Trypema-Degraded: 1", async (t) => {
  const redis = await privateRedis()
  const allowing = await RateLimiter.builder({ url: redis.url, onRedisError: 'allow', commandTimeoutMs: 500 })
    .windowSizeSeconds(10)
    .redisPrefix(freshPrefix('degraded'))
    .build()
  const local = await RateLimiter.builder({ url: redis.url, onRedisError: 'local', commandTimeoutMs: 500 })
    .windowSizeSeconds(10)
    .redisPrefix(freshPrefix('degraded'))
    .build()
  t.after(async () => {
    await allowing.close()
    await local.close()
    await redis.stop()
  })
  const app = express()
  const common = { provider: 'redis', strategy: 'absolute', rate: 0.2, skipFailedRequests: true }
  app.get('/allow', rateLimit({ ...common, limiter: allowing }), (req, res) => res.send('ok'))
  app.get('/local', rateLimit({ ...common, limiter: local }), (req, res) => res.send('ok'))
  const server = await serve(app)
  t.after(() => server.close())

  const healthy = await get(server.url('/allow'))
  assert.equal(healthy.status, 200)
  assert.equal(healthy.headers.get('trypema-degraded'), null)
  assert.equal(rateLimitItem(healthy.headers.get('ratelimit')).r, 1)

  await redis.stop()
  const unhandled = watchUnhandledRejections()
  for (let i = 0; i < 3; i++) {
    const response = await get(server.url('/allow'))
    assert.equal(response.status, 200, "'allow' lets everything through while Redis is down")
    assert.equal(response.headers.get('trypema-degraded'), '1')
    assert.equal(rateLimitItem(response.headers.get('ratelimit')).r, 2, 'no count behind a degraded allow')
  }
  // 'local': an in-process limiter decides, with its own count; limited answers are degraded too.
  const statuses = []
  for (let i = 0; i < 3; i++) {
    const response = await get(server.url('/local'))
    statuses.push(response.status)
    assert.equal(response.headers.get('trypema-degraded'), '1')
  }
  assert.deepEqual(statuses, [200, 200, 429])
  assert.deepEqual(await unhandled.stop(), [], 'no refund is attempted (or left unhandled) for degraded decisions')
})

describe('callbacks that fail take the onError path', () => {
  /** An app whose routes each use one middleware, answering 'through' when let through. */
  async function appWithRoutes(t, routes) {
    const limiter = await RateLimiter.builder().windowSizeSeconds(10).build()
    const errors = []
    const app = express()
    for (const [path, options] of Object.entries(routes)) {
      app.get(
        path,
        rateLimit({
          limiter,
          provider: 'local',
          strategy: 'absolute',
          rate: 1,
          onError: (error, req, res) => {
            errors.push({ path: req.path, error })
            res.status(503).json({ code: error.code ?? null, message: error.message })
          },
          ...options,
        }),
        (req, res) => res.send('through'),
      )
    }
    const server = await serve(app)
    t.after(async () => {
      await server.close()
      await limiter.close()
    })
    return { server, errors, limiter }
  }

  test('async skip / key / rate / cost that reject: onError, no unhandled rejection', async (t) => {
    const unhandled = watchUnhandledRejections()
    const reject = (message) => async () => {
      throw new Error(message)
    }
    const { server, errors } = await appWithRoutes(t, {
      '/skip': { skip: reject('skip rejected') },
      '/key': { key: reject('key rejected') },
      '/rate': { rate: reject('rate rejected') },
      '/cost': { cost: reject('cost rejected') },
      '/key-promise-of-object': { key: async () => ({ id: 1 }) },
      '/rate-sync-throw': {
        rate: () => {
          throw new Error('rate threw')
        },
      },
    })
    for (const [path, message] of [
      ['/skip', 'skip rejected'],
      ['/key', 'key rejected'],
      ['/rate', 'rate rejected'],
      ['/cost', 'cost rejected'],
      ['/rate-sync-throw', 'rate threw'],
    ]) {
      const response = await get(server.url(path))
      assert.equal(response.status, 503, path)
      assert.equal(response.json.message, message, path)
    }
    const objectKey = await get(server.url('/key-promise-of-object'))
    assert.equal(objectKey.status, 503)
    assert.equal(objectKey.json.code, 'TRYPEMA_EXPRESS_INVALID_KEY')
    assert.equal(errors.length, 6)
    assert.deepEqual(await unhandled.stop(), [])
  })

  test('async callbacks that resolve are awaited; thenables work like Promises', async (t) => {
    const { server } = await appWithRoutes(t, {
      '/async': { key: async () => 'k', rate: async () => 0.3, cost: async () => 1, skip: async () => false },
      '/thenable-skip': { skip: () => ({ then: (resolve) => resolve(true) }) },
    })
    for (let i = 2; i >= 0; i--) {
      const response = await get(server.url('/async'))
      assert.equal(response.status, 200)
      assert.equal(rateLimitItem(response.headers.get('ratelimit')).r, i)
    }
    assert.equal((await get(server.url('/async'))).status, 429)
    const skipped = await get(server.url('/thenable-skip'))
    assert.equal(skipped.status, 200)
    assert.equal(skipped.headers.get('ratelimit'), null, 'skipped: not counted')
  })

  test("a skip result whose 'then' getter throws takes the onError path and never throws synchronously", async (t) => {
    const hostile = () => ({
      get then() {
        throw new Error('then getter exploded')
      },
    })
    const { server, errors } = await appWithRoutes(t, { '/hostile': { skip: hostile }, '/hostile-key': { key: hostile } })
    const response = await get(server.url('/hostile'))
    assert.equal(response.status, 503)
    assert.equal(response.json.message, 'then getter exploded')
    assert.equal((await get(server.url('/hostile-key'))).json.message, 'then getter exploded')
    assert.equal(errors.length, 2)

    // Called directly, outside any framework: no throw, and onError ('deny') answers.
    const limiter = await RateLimiter.builder().build()
    t.after(() => limiter.close())
    const middleware = rateLimit({ limiter, provider: 'local', strategy: 'absolute', rate: 1, skip: hostile, onError: 'deny' })
    const headers = new Map()
    const answered = new Promise((resolve) => {
      const res = {
        statusCode: 200,
        headersSent: false,
        getHeader: (name) => headers.get(name.toLowerCase()),
        setHeader: (name, value) => headers.set(name.toLowerCase(), value),
        end: (body) => resolve({ status: res.statusCode, body }),
      }
      assert.doesNotThrow(() => middleware({ ip: '10.0.0.1' }, res, () => resolve({ next: true })))
    })
    const { status, body } = await answered
    assert.equal(status, 503)
    assert.equal(JSON.parse(body).error, 'Service Unavailable')
  })

  test('rate() giving an absurd capacity (1e308 → Infinity) is an error, not a limit', async (t) => {
    const { server, errors } = await appWithRoutes(t, {
      '/huge': { rate: () => 1e308 },
      '/too-big': { rate: () => 2 ** 53 }, // × 10 s: beyond 2^53 − 1
      '/infinite': { rate: () => Number.POSITIVE_INFINITY },
      '/large': { rate: () => 1e5 },
    })
    for (const path of ['/huge', '/too-big', '/infinite']) {
      const response = await get(server.url(path))
      assert.equal(response.status, 503, path)
      assert.equal(response.json.code, 'TRYPEMA_EXPRESS_INVALID_RATE', path)
      assert.match(response.json.message, /rate\(req\)/)
    }
    assert.match(errors[0].error.message, /10 s × rate = Infinity is more than trypema can count/)
    assert.ok(errors.every(({ error }) => error instanceof TypeError))
    const large = await get(server.url('/large'))
    assert.equal(large.status, 200)
    assert.equal(large.headers.get('ratelimit-policy'), '"default";q=1000000;w=10')
    assert.equal(large.headers.get('ratelimit'), '"default";r=999999;t=10')
  })

  test('timeoutMs also bounds callbacks that never settle', async (t) => {
    const never = () => new Promise(() => {})
    const { server, errors } = await appWithRoutes(t, {
      '/skip': { skip: never, timeoutMs: 50 },
      '/key': { key: never, timeoutMs: 50 },
      '/cost': { cost: never, timeoutMs: 50 },
    })
    const responses = await Promise.all(['/skip', '/key', '/cost'].map((path) => get(server.url(path))))
    for (const response of responses) {
      assert.equal(response.status, 503)
      assert.equal(response.json.code, 'TRYPEMA_EXPRESS_TIMEOUT')
    }
    assert.equal(errors.length, 3)
  })
})
