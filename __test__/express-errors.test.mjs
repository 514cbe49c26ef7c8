// trypema/express when Redis goes away: onError 'allow', 'deny' and a handler; and recovery.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import express from 'express'

import { RateLimiter } from '../index.mjs'
import { rateLimit } from '../express.mjs'
import { startRedis } from '../scripts/redis-server.mjs'
import { serve, get, freshPrefix } from './express-helpers.mjs'

test('with Redis stopped, onError decides; no request hangs; service resumes with Redis', async (t) => {
  const redis = await startRedis()
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
