// trypema/express without Redis: the default key, safeKey, option validation, the local provider.
import { test, describe } from 'node:test'
import assert from 'node:assert/strict'
import express from 'express'

import { RateLimiter } from '../index.mjs'
import { rateLimit, defaultKey, safeKey } from '../express.mjs'
import { serve, eventually } from './express-helpers.mjs'

describe('defaultKey', () => {
  test('IPv4 addresses are used as they are', () => {
    assert.equal(defaultKey({ ip: '203.0.113.7' }), '203.0.113.7')
    assert.equal(defaultKey({ ip: '127.0.0.1' }), '127.0.0.1')
  })

  test('IPv4-mapped IPv6 becomes the IPv4 address, in dotted and hex forms', () => {
    assert.equal(defaultKey({ ip: '::ffff:203.0.113.7' }), '203.0.113.7')
    assert.equal(defaultKey({ ip: '::FFFF:10.0.0.1' }), '10.0.0.1')
    assert.equal(defaultKey({ ip: '0:0:0:0:0:ffff:cb00:7107' }), '203.0.113.7')
    assert.equal(defaultKey({ ip: '::ffff:c0a8:101' }), '192.168.1.1')
  })

  test('IPv6 is grouped by /56, whatever the spelling of the address', () => {
    const expected = '2001:db8:1234:5600::/56'
    for (const ip of [
      '2001:db8:1234:5600::1',
      '2001:db8:1234:5678::1',
      '2001:db8:1234:56ff:ffff:ffff:ffff:ffff',
      '2001:0db8:1234:5600:0000:0000:0000:0001',
      '2001:DB8:1234:56AB:0:0:0:0',
      '2001:db8:1234:5600::',
      '2001:db8:1234:56aa::abcd:1',
      '2001:db8:1234:5600:1:2:3:4%eth0',
    ]) {
      assert.equal(defaultKey({ ip }), expected, ip)
    }
    assert.equal(defaultKey({ ip: '2001:db8:1234:5700::1' }), '2001:db8:1234:5700::/56')
    assert.equal(defaultKey({ ip: '2001:db8:1234:55ff::1' }), '2001:db8:1234:5500::/56')
  })

  test('compressed forms with zeros in the prefix are expanded and re-compressed correctly', () => {
    assert.equal(defaultKey({ ip: '::1' }), '::/56')
    assert.equal(defaultKey({ ip: '::' }), '::/56')
    assert.equal(defaultKey({ ip: '2001:db8::1' }), '2001:db8::/56')
    assert.equal(defaultKey({ ip: '2001:db8::' }), '2001:db8::/56')
    assert.equal(defaultKey({ ip: '2001::1234:5678:9abc:def0' }), '2001::/56')
    assert.equal(defaultKey({ ip: '2001:0:0:ab12::9' }), '2001:0:0:ab00::/56')
    assert.equal(defaultKey({ ip: '0:0:0:ab00::' }), '0:0:0:ab00::/56')
    assert.equal(defaultKey({ ip: 'fe80::1ff:fe23:4567:890a' }), 'fe80::/56')
    assert.equal(defaultKey({ ip: '1:2:3:4:5:6:7::' }), '1:2:3::/56')
    assert.equal(defaultKey({ ip: '64:ff9b::203.0.113.7' }), '64:ff9b::/56')
  })

  test('falls back to req.socket.remoteAddress, and throws when there is no address', () => {
    assert.equal(defaultKey({ socket: { remoteAddress: '::ffff:127.0.0.1' } }), '127.0.0.1')
    assert.equal(defaultKey({ ip: undefined, socket: { remoteAddress: '2001:db8:1:2ab::3' } }), '2001:db8:1:200::/56')
    assert.throws(() => defaultKey({ socket: {} }), { code: 'TRYPEMA_EXPRESS_NO_CLIENT_ADDRESS' })
    assert.throws(() => defaultKey({}), { code: 'TRYPEMA_EXPRESS_NO_CLIENT_ADDRESS' })
  })

  test('a value that is not an IP address is returned unchanged', () => {
    assert.equal(defaultKey({ ip: 'unix-socket-client' }), 'unix-socket-client')
    assert.equal(defaultKey({ ip: '1::2::3' }), '1::2::3')
  })
})

describe('safeKey', () => {
  const isValidRedisKey = (key) => key.length > 0 && !key.includes(':') && Buffer.byteLength(key) <= 255

  test('valid keys without % are unchanged', () => {
    for (const key of ['user_123', '203.0.113.7', 'a'.repeat(255), 'é'.repeat(127), '😀', 'a/b{c}']) {
      assert.equal(safeKey(key), key)
    }
  })

  test("keys with ':' become valid and stay distinct", () => {
    const keys = ['a:b', 'a%3Ab', 'a_b', 'a;b', 'a.b', 'a::b', 'a%b', 'a%25b', '2001:db8:1234:5600::/56']
    const safe = keys.map(safeKey)
    for (const key of safe) assert.ok(isValidRedisKey(key), key)
    assert.equal(new Set(safe).size, keys.length, `collision in ${JSON.stringify(safe)}`)
    assert.equal(safeKey('2001:db8:1234:5600::/56'), '2001%3Adb8%3A1234%3A5600%3A%3A/56')
  })

  test('the empty key and keys over 255 bytes become valid and distinct', () => {
    const keys = [
      '',
      '%00',
      'x'.repeat(256),
      'x'.repeat(257),
      'x'.repeat(255) + 'y',
      'é'.repeat(128),
      ':'.repeat(100),
      `${'a'.repeat(300)}:b`,
      `${'a'.repeat(300)}%3Ab`,
    ]
    const safe = keys.map(safeKey)
    for (const key of safe) assert.ok(isValidRedisKey(key), JSON.stringify(key))
    assert.equal(new Set(safe).size, keys.length)
    assert.equal(safeKey(''), '%00')
    assert.match(safeKey('x'.repeat(256)), /^%h[0-9a-f]{64}$/)
    // deterministic
    assert.equal(safeKey('x'.repeat(1000)), safeKey('x'.repeat(1000)))
  })

  test('lone surrogates do not collide with each other or with U+FFFD', () => {
    const keys = ['a\uD800', 'a\uD801', 'a\uFFFD', 'a\uDC00', 'a\uD83D\uDE00']
    const safe = keys.map(safeKey)
    assert.equal(new Set(safe.map((k) => Buffer.from(k, 'utf8').toString('hex'))).size, keys.length)
    assert.equal(safeKey('a\uD83D\uDE00'), 'a\uD83D\uDE00')
  })

  test('rejects non-strings with a TypeError', () => {
    assert.throws(() => safeKey(42), TypeError)
    assert.throws(() => safeKey(undefined), TypeError)
  })
})

describe('rateLimit options', () => {
  test('bad options throw TypeErrors when the middleware is created', async () => {
    const limiter = await RateLimiter.builder().windowSizeSeconds(10).build()
    const good = { limiter, provider: 'local', strategy: 'absolute', rate: 1 }
    assert.equal(typeof rateLimit(good), 'function')
    const bad = [
      undefined,
      null,
      'options',
      {},
      { ...good, limiter: undefined },
      { ...good, limiter: {} },
      { ...good, provider: 'memcached' },
      { ...good, provider: undefined },
      { ...good, strategy: 'leaky' },
      { ...good, rate: 0 },
      { ...good, rate: -1 },
      { ...good, rate: Number.NaN },
      { ...good, rate: Number.POSITIVE_INFINITY },
      { ...good, rate: '5' },
      { ...good, key: 'ip' },
      { ...good, cost: -1 },
      { ...good, cost: 1.5 },
      { ...good, cost: '1' },
      { ...good, skip: true },
      { ...good, onError: 'ignore' },
      { ...good, suppressedStatus: 500 },
      { ...good, suppressedStatus: '503' },
      { ...good, legacyHeaders: 'yes' },
      { ...good, standardHeaders: 1 },
      { ...good, windowSizeSeconds: 0 },
      { ...good, windowSizeSeconds: 1.5 },
      { ...good, windowSizeSeconds: 11 }, // the limiter's window is 10
      { ...good, policyName: '' },
      { ...good, policyName: 'naïve' },
      { ...good, timeoutMs: 0 },
      { ...good, timeoutMs: -1 },
      { ...good, timeoutMs: 1.5 },
      { ...good, timeoutMs: 2 ** 31 }, // setTimeout would turn it into 1 ms and fail open
      { ...good, timeoutMs: 1e12 },
      { ...good, timeoutMs: Number.POSITIVE_INFINITY },
      { ...good, rate: 1e308 }, // floor(10 s × rate) = Infinity
      { ...good, rate: 2 ** 53 }, // × 10 s: more than 2^53 − 1
      { ...good, skipFailedRequests: 'yes' },
      { ...good, skipSuccessfulRequests: 1 },
      { ...good, requestPropertyName: '' },
      { ...good, requestPropertyName: 42 },
      { ...good, limiter: { local: { absolute: { inc: () => ({ kind: 'allowed' }) } } } }, // no incWithQuota
      { ...good, rateLimit: 5 }, // unknown option (a typo)
    ]
    for (const options of bad) {
      assert.throws(() => rateLimit(options), TypeError, JSON.stringify(options, (k, v) => (k === 'limiter' ? typeof v : v)))
    }
    // A matching window is accepted, and so are the largest timeout and capacity.
    assert.equal(typeof rateLimit({ ...good, windowSizeSeconds: 10 }), 'function')
    assert.equal(typeof rateLimit({ ...good, timeoutMs: 2 ** 31 - 1 }), 'function')
    assert.equal(typeof rateLimit({ ...good, rate: 1e14 }), 'function')
    assert.equal(typeof rateLimit({ ...good, skipFailedRequests: true, requestPropertyName: false }), 'function')
    assert.throws(() => rateLimit({ ...good, timeoutMs: 2 ** 31 }), { name: 'TypeError', message: /2\^31 − 1/ })
    assert.throws(() => rateLimit({ ...good, rate: 1e308 }), { name: 'TypeError', message: /more than trypema can count/ })
    await limiter.close()
  })

  test('a redis provider on a limiter without Redis is refused up front', async () => {
    const limiter = await RateLimiter.builder().build()
    assert.throws(() => rateLimit({ limiter, provider: 'redis', strategy: 'absolute', rate: 1 }), {
      name: 'TypeError',
      message: /needs a limiter built with a Redis URL/,
    })
    assert.throws(() => rateLimit({ limiter, provider: 'hybrid', strategy: 'suppressed', rate: 1 }), TypeError)
    await limiter.close()
  })
})

describe('local provider (no Redis)', () => {
  test('absolute: 200s, then 429 with Retry-After, RateLimit headers and a JSON body', async (t) => {
    const limiter = await RateLimiter.builder().windowSizeSeconds(5).build()
    const app = express()
    app.get('/', rateLimit({ limiter, provider: 'local', strategy: 'absolute', rate: 0.6, legacyHeaders: true }), (req, res) =>
      res.send('ok'),
    )
    const server = await serve(app)
    t.after(async () => {
      await server.close()
      await limiter.close()
    })
    for (let i = 0; i < 3; i++) {
      const response = await fetch(server.url('/'))
      assert.equal(response.status, 200)
      assert.equal(await response.text(), 'ok')
      assert.equal(response.headers.get('ratelimit-policy'), '"default";q=3;w=5')
      assert.equal(response.headers.get('ratelimit'), `"default";r=${2 - i};t=5`)
      assert.equal(response.headers.get('x-ratelimit-limit'), '3')
      assert.equal(response.headers.get('x-ratelimit-remaining'), String(2 - i))
    }
    const response = await fetch(server.url('/'))
    assert.equal(response.status, 429)
    const retryAfter = Number(response.headers.get('retry-after'))
    assert.ok(retryAfter >= 1 && retryAfter <= 5, `Retry-After ${retryAfter}`)
    assert.deepEqual(await response.json(), { error: 'Too Many Requests', retryAfterSeconds: retryAfter })
    assert.equal(response.headers.get('ratelimit'), `"default";r=0;t=${retryAfter}`)
    assert.equal(response.headers.get('x-ratelimit-remaining'), '0')
    const reset = Number(response.headers.get('x-ratelimit-reset'))
    assert.ok(Math.abs(reset - (Date.now() / 1000 + retryAfter)) <= 2, `X-RateLimit-Reset ${reset}`)
  })

  test('skipFailedRequests with the local provider; requestPropertyName', async (t) => {
    const limiter = await RateLimiter.builder().windowSizeSeconds(5).build()
    const app = express()
    app.use(
      rateLimit({
        limiter,
        provider: 'local',
        strategy: 'suppressed',
        rate: 0.4,
        key: () => 'k',
        skipFailedRequests: true,
        requestPropertyName: 'quota',
      }),
    )
    app.get('/ok', (req, res) => res.json({ quota: req.quota, rateLimit: req.rateLimit ?? null }))
    app.get('/fail', (req, res) => res.status(503).send('down'))
    const server = await serve(app)
    t.after(async () => {
      await server.close()
      await limiter.close()
    })
    for (let i = 0; i < 4; i++) {
      const response = await fetch(server.url('/fail'))
      assert.equal(response.status, 503)
      assert.equal(response.headers.get('ratelimit'), '"default";r=1;t=5')
      await response.text()
      // Given back once the response has finished.
      await eventually(() => limiter.local.suppressed.get('k', 0.4).remaining === 2, { message: 'the refund' })
    }
    const ok = await fetch(server.url('/ok'))
    const body = await ok.json()
    assert.equal(body.rateLimit, null, 'only the configured property is set')
    assert.equal(body.quota.limit, 2)
    assert.equal(body.quota.remaining, 1)
    assert.equal(body.quota.used, 1)
  })

  test('a limiter that never answers is bounded by timeoutMs', async (t) => {
    const hanging = { windowSizeSeconds: 10, redis: { absolute: { incWithQuota: () => new Promise(() => {}) } } }
    const errors = []
    const app = express()
    app.get(
      '/allow',
      rateLimit({ limiter: hanging, provider: 'redis', strategy: 'absolute', rate: 1, timeoutMs: 100 }),
      (req, res) => res.send('through'),
    )
    app.get(
      '/handler',
      rateLimit({
        limiter: hanging,
        provider: 'redis',
        strategy: 'absolute',
        rate: 1,
        timeoutMs: 100,
        onError: (error, req, res) => {
          errors.push(error)
          res.status(504).send('timed out')
        },
      }),
      (req, res) => res.send('through'),
    )
    const server = await serve(app)
    t.after(() => server.close())
    const started = Date.now()
    const [allowed, handled] = await Promise.all([fetch(server.url('/allow')), fetch(server.url('/handler'))])
    assert.ok(Date.now() - started < 2000)
    assert.equal(allowed.status, 200)
    assert.equal(await allowed.text(), 'through')
    assert.equal(handled.status, 504)
    assert.equal(errors.length, 1)
    assert.equal(errors[0].code, 'TRYPEMA_EXPRESS_TIMEOUT')
  })
})
