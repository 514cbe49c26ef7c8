// Bad inputs: each must fail with the documented error class and code — a TypeError for a wrong
// argument type, an Error with `code` for an invalid value — never crash the process, and leave
// the limiter working. Every method of every provider is covered: `local` throws synchronously,
// `redis` and `hybrid` always return a Promise, which rejects.
//
// Also: Redis answering with an error (out of memory on a private server) gives TRYPEMA_REDIS,
// every Promise settles, and the limiter works again once the condition is gone.
import { test, describe, before, after } from 'node:test'
import assert from 'node:assert/strict'
import Redis from 'ioredis'

import { RateLimiter } from '../index.mjs'
import { startRedis } from '../scripts/redis-server.mjs'
import { ALLOWED, codeError, privateRedis, sharedRedis, typeError, unique, within } from './support.mjs'

let rl // local only
let remote // with Redis (shared server)
let keySerial = 0
function freshKey() {
  keySerial += 1
  return `errors-${process.pid}-${keySerial}-${unique('')}`
}

before(async () => {
  sharedRedis.check()
  rl = await RateLimiter.builder().windowSizeSeconds(1).rateGroupSizeMs(10).build()
  if (!sharedRedis.skip) {
    remote = await RateLimiter.builder(sharedRedis.url)
      .windowSizeSeconds(1)
      .rateGroupSizeMs(10)
      .redisPrefix(unique('errors'))
      .build()
  }
})

after(async () => {
  await rl?.close()
  await remote?.close()
})

const PROVIDERS = ['local', 'redis', 'hybrid']
const provider = (name) => (name === 'local' ? rl.local : remote[name])
/** The `skip` option for tests of `name`. */
const skipFor = (name) => (name === 'local' ? false : sharedRedis.skip)

function describeError(error) {
  if (!(error instanceof Error)) return `a non-Error ${typeof error} ${String(error)}`
  return `${error.constructor.name}${error.code === undefined ? '' : ` (code ${error.code})`}: ${error.message.slice(0, 100)}`
}

/** Whether `error` is what `expected` (typeError or codeError(...)) describes. */
function matches(error, expected) {
  return (
    error instanceof Error &&
    error.constructor === expected.constructor &&
    (expected.code === undefined || error.code === expected.code) &&
    /\S/.test(error.message)
  )
}

/**
 * Calls `call()` and checks it fails as `expected`: synchronously for `local`, as a rejected
 * Promise (never a synchronous throw) for `redis` and `hybrid`. Returns a description of the
 * mismatch, or null.
 */
async function failure(providerName, call, expected, what) {
  const wanted = `${expected.constructor.name}${expected.code ? ` (code ${expected.code})` : ''}`
  let result
  try {
    result = call()
  } catch (error) {
    if (providerName !== 'local') return `${what}: threw synchronously instead of returning a rejected Promise`
    return matches(error, expected) ? null : `${what}: expected ${wanted}, got ${describeError(error)}`
  }
  if (providerName === 'local') return `${what}: expected ${wanted}, returned ${JSON.stringify(result)}`
  if (!(result instanceof Promise)) return `${what}: did not return a Promise`
  try {
    const value = await result
    return `${what}: expected ${wanted}, resolved to ${JSON.stringify(value)}`
  } catch (error) {
    return matches(error, expected) ? null : `${what}: expected ${wanted}, got ${describeError(error)}`
  }
}

async function assertFails(providerName, call, expected, what) {
  const problem = await failure(providerName, call, expected, what)
  if (problem !== null) assert.fail(problem)
}

/** Checks every `[what, call]` of `calls`; reports all mismatches at once. */
async function assertAllFail(providerName, calls, expected) {
  const problems = []
  for (const [what, call] of calls) {
    const problem = await failure(providerName, call, expected, what)
    if (problem !== null) problems.push(problem)
  }
  assert.deepEqual(problems, [], `${problems.length} of ${calls.length} calls failed wrongly:\n${problems.join('\n')}`)
}

/** The shared limiters still make ordinary decisions. */
async function assertStillWorks() {
  assert.deepEqual(rl.local.absolute.inc(freshKey(), 10), ALLOWED)
  assert.deepEqual(rl.local.suppressed.inc(freshKey(), 10), ALLOWED)
  assert.deepEqual(rl.local.absolute.isAllowed(freshKey()), ALLOWED)
  assert.equal(rl.local.suppressed.getSuppressionFactor(freshKey()), 0)
  if (remote) {
    assert.deepEqual(await remote.redis.absolute.inc(freshKey(), 10), ALLOWED)
    assert.deepEqual(await remote.redis.suppressed.inc(freshKey(), 10), ALLOWED)
    assert.deepEqual(await remote.hybrid.absolute.inc(freshKey(), 10), ALLOWED)
    assert.deepEqual(await remote.hybrid.suppressed.inc(freshKey(), 10), ALLOWED)
  }
}

/** Every method, called with `key` (and valid other arguments). */
const KEY_METHODS = {
  'absolute.inc': (p, key) => p.absolute.inc(key, 10, 1),
  'absolute.isAllowed': (p, key) => p.absolute.isAllowed(key),
  'absolute.incWithQuota': (p, key) => p.absolute.incWithQuota(key, 10, 1),
  'absolute.get': (p, key) => p.absolute.get(key, 10),
  'absolute.refund': (p, key) => p.absolute.refund(key, 1),
  'absolute.reset': (p, key) => p.absolute.reset(key),
  'suppressed.inc': (p, key) => p.suppressed.inc(key, 10, 1),
  'suppressed.getSuppressionFactor': (p, key) => p.suppressed.getSuppressionFactor(key),
  'suppressed.incWithQuota': (p, key) => p.suppressed.incWithQuota(key, 10, 1),
  'suppressed.get': (p, key) => p.suppressed.get(key, 10),
  'suppressed.refund': (p, key) => p.suppressed.refund(key, 1),
  'suppressed.reset': (p, key) => p.suppressed.reset(key),
}

/** Every method that takes a rate. */
const RATE_METHODS = {
  'absolute.inc': (p, key, rate) => p.absolute.inc(key, rate, 1),
  'absolute.incWithQuota': (p, key, rate) => p.absolute.incWithQuota(key, rate, 1),
  'absolute.get': (p, key, rate) => p.absolute.get(key, rate),
  'suppressed.inc': (p, key, rate) => p.suppressed.inc(key, rate, 1),
  'suppressed.incWithQuota': (p, key, rate) => p.suppressed.incWithQuota(key, rate, 1),
  'suppressed.get': (p, key, rate) => p.suppressed.get(key, rate),
}

/** Every method that takes a count. */
const COUNT_METHODS = {
  'absolute.inc': (p, key, count) => p.absolute.inc(key, 2, count),
  'absolute.incWithQuota': (p, key, count) => p.absolute.incWithQuota(key, 2, count),
  'absolute.refund': (p, key, count) => p.absolute.refund(key, count),
  'suppressed.inc': (p, key, count) => p.suppressed.inc(key, 2, count),
  'suppressed.incWithQuota': (p, key, count) => p.suppressed.incWithQuota(key, 2, count),
  'suppressed.refund': (p, key, count) => p.suppressed.refund(key, count),
}

// [description, key, expected for local, expected for redis/hybrid]
const BAD_KEYS = [
  ['key as a number', 42, typeError, typeError],
  ['key undefined', undefined, typeError, typeError],
  ['key null', null, typeError, typeError],
  ['key as a plain object', { toString: () => 'k' }, typeError, typeError],
  ['key as a String object', new String('k'), typeError, typeError],
  ['key as an array', ['k'], typeError, typeError],
  ['key as a Symbol', Symbol('k'), typeError, typeError],
  ['key as a bigint', 7n, typeError, typeError],
  ['key with a lone high surrogate', 'a\uD800', typeError, typeError],
  ['key with a lone low surrogate', 'a\uDC00', typeError, typeError],
  ['key that is a lone surrogate', '\uDFFF', typeError, typeError],
  ['key with a reversed surrogate pair', 'x\uDE00\uD83D', typeError, typeError],
  ['key with U+FFFD and a lone surrogate', '\uFFFD\uD800', typeError, typeError],
  ['empty key', '', codeError('TRYPEMA_INVALID_KEY'), codeError('TRYPEMA_INVALID_REDIS_KEY')],
  ['256-byte key', 'x'.repeat(256), codeError('TRYPEMA_INVALID_KEY'), codeError('TRYPEMA_INVALID_REDIS_KEY')],
  ['256-byte key of 2-byte characters', 'é'.repeat(128), codeError('TRYPEMA_INVALID_KEY'), codeError('TRYPEMA_INVALID_REDIS_KEY')],
  ['512-byte key', 'x'.repeat(512), codeError('TRYPEMA_INVALID_KEY'), codeError('TRYPEMA_INVALID_REDIS_KEY')],
  ['600-byte key of 2-byte characters', 'é'.repeat(300), codeError('TRYPEMA_INVALID_KEY'), codeError('TRYPEMA_INVALID_REDIS_KEY')],
  ['10,000-char key', 'k'.repeat(10_000), codeError('TRYPEMA_INVALID_KEY'), codeError('TRYPEMA_INVALID_REDIS_KEY')],
  ['1,000,000-char key', 'k'.repeat(1_000_000), codeError('TRYPEMA_INVALID_KEY'), codeError('TRYPEMA_INVALID_REDIS_KEY')],
]

// [description, rate, expected]
const BAD_RATES = [
  ['rate as a string', '5', typeError],
  ['rate undefined', undefined, typeError],
  ['rate null', null, typeError],
  ['rate as a bigint', 5n, typeError],
  ['rate as a Number object', new Number(5), typeError],
  ['rate 0', 0, codeError('TRYPEMA_INVALID_RATE_LIMIT')],
  ['rate -0', -0, codeError('TRYPEMA_INVALID_RATE_LIMIT')],
  ['rate -1', -1, codeError('TRYPEMA_INVALID_RATE_LIMIT')],
  ['rate NaN', NaN, codeError('TRYPEMA_INVALID_RATE_LIMIT')],
  ['rate Infinity', Infinity, codeError('TRYPEMA_INVALID_RATE_LIMIT')],
  ['rate -Infinity', -Infinity, codeError('TRYPEMA_INVALID_RATE_LIMIT')],
]

// [description, count, expected]
const BAD_COUNTS = [
  ['count as a string', '1', typeError],
  ['count null', null, typeError],
  ['count as a bigint', 1n, typeError],
  ['count as a boolean', true, typeError],
  ['count as a Number object', new Number(1), typeError],
  ['count -1', -1, codeError('TRYPEMA_INVALID_COUNT')],
  ['count 1.5', 1.5, codeError('TRYPEMA_INVALID_COUNT')],
  ['count NaN', NaN, codeError('TRYPEMA_INVALID_COUNT')],
  ['count Infinity', Infinity, codeError('TRYPEMA_INVALID_COUNT')],
  ['count -Infinity', -Infinity, codeError('TRYPEMA_INVALID_COUNT')],
  ['count 2**53', 2 ** 53, codeError('TRYPEMA_INVALID_COUNT')],
  ['count 1e300', 1e300, codeError('TRYPEMA_INVALID_COUNT')],
]

for (const providerName of PROVIDERS) {
  describe(`${providerName}: bad keys`, { skip: skipFor(providerName) }, () => {
    for (const [description, key, localExpected, remoteExpected] of BAD_KEYS) {
      test(description, async () => {
        const expected = providerName === 'local' ? localExpected : remoteExpected
        const calls = Object.entries(KEY_METHODS).map(([method, call]) => [
          `${providerName}.${method}`,
          () => call(provider(providerName), key),
        ])
        await assertAllFail(providerName, calls, expected)
        await assertStillWorks()
      })
    }
  })

  describe(`${providerName}: bad rates`, { skip: skipFor(providerName) }, () => {
    for (const [description, rate, expected] of BAD_RATES) {
      test(description, async () => {
        const p = provider(providerName)
        for (const [method, call] of Object.entries(RATE_METHODS)) {
          const key = freshKey()
          await assertFails(providerName, () => call(p, key, rate), expected, `${providerName}.${method}`)
          // Nothing was recorded and no rate was fixed for the key by the failed call: capacity 1.
          const strategy = method.split('.')[0]
          assert.deepEqual(await p[strategy].inc(key, 1, 1), ALLOWED, `${method}: the failed call recorded something`)
          assert.notDeepEqual(await p[strategy].inc(key, 1, 1), ALLOWED, `${method}: the failed call fixed another rate`)
        }
        await assertStillWorks()
      })
    }
    test('a missing rate (get(key), inc(key)) is a TypeError', async () => {
      const p = provider(providerName)
      for (const call of [() => p.absolute.get(freshKey()), () => p.suppressed.get(freshKey()), () => p.absolute.inc(freshKey()), () => p.suppressed.incWithQuota(freshKey())]) {
        await assertFails(providerName, call, typeError, `${providerName}: ${call}`)
      }
    })
  })

  describe(`${providerName}: bad counts`, { skip: skipFor(providerName) }, () => {
    for (const [description, count, expected] of BAD_COUNTS) {
      test(description, async () => {
        const p = provider(providerName)
        for (const [method, call] of Object.entries(COUNT_METHODS)) {
          const key = freshKey()
          const strategy = method.split('.')[0]
          // One unit recorded first, so that a refund that wrongly ran would show.
          assert.deepEqual(await p[strategy].inc(key, 2, 1), ALLOWED)
          await assertFails(providerName, () => call(p, key, count), expected, `${providerName}.${method}`)
          // Capacity 2, one used: exactly one more fits, so the failed call changed nothing.
          assert.deepEqual(await p[strategy].inc(key, 2, 1), ALLOWED, `${method}: the failed call recorded something`)
          assert.notDeepEqual(await p[strategy].inc(key, 2, 1), ALLOWED, `${method}: the failed call refunded something`)
        }
        await assertStillWorks()
      })
    }
    test('refund without a count is a TypeError', async () => {
      const p = provider(providerName)
      await assertFails(providerName, () => p.absolute.refund(freshKey()), typeError, 'absolute.refund(key)')
      await assertFails(providerName, () => p.suppressed.refund(freshKey()), typeError, 'suppressed.refund(key)')
    })
  })
}

// [description, configure(builder), expected rejection of build()]
const BAD_SETTINGS = [
  ['windowSizeSeconds(0)', (b) => b.windowSizeSeconds(0), 'TRYPEMA_INVALID_WINDOW_SIZE'],
  ['windowSizeSeconds(1.5)', (b) => b.windowSizeSeconds(1.5), 'TRYPEMA_INVALID_WINDOW_SIZE'],
  ['windowSizeSeconds(-3)', (b) => b.windowSizeSeconds(-3), 'TRYPEMA_INVALID_WINDOW_SIZE'],
  ['windowSizeSeconds(NaN)', (b) => b.windowSizeSeconds(NaN), 'TRYPEMA_INVALID_WINDOW_SIZE'],
  ['windowSizeSeconds(Infinity)', (b) => b.windowSizeSeconds(Infinity), 'TRYPEMA_INVALID_WINDOW_SIZE'],
  ['windowSizeSeconds(1e9 + 1)', (b) => b.windowSizeSeconds(1e9 + 1), 'TRYPEMA_INVALID_WINDOW_SIZE'],
  ['windowSizeSeconds(2**53 - 1)', (b) => b.windowSizeSeconds(2 ** 53 - 1), 'TRYPEMA_INVALID_WINDOW_SIZE'],
  ['rateGroupSizeMs(0)', (b) => b.rateGroupSizeMs(0), 'TRYPEMA_INVALID_RATE_GROUP_SIZE'],
  ['rateGroupSizeMs(2.5)', (b) => b.rateGroupSizeMs(2.5), 'TRYPEMA_INVALID_RATE_GROUP_SIZE'],
  ['rateGroupSizeMs longer than the window', (b) => b.windowSizeSeconds(1).rateGroupSizeMs(1001), 'TRYPEMA_INVALID_RATE_GROUP_SIZE'],
  ['hardLimitFactor(0.5)', (b) => b.hardLimitFactor(0.5), 'TRYPEMA_INVALID_HARD_LIMIT_FACTOR'],
  ['hardLimitFactor(NaN)', (b) => b.hardLimitFactor(NaN), 'TRYPEMA_INVALID_HARD_LIMIT_FACTOR'],
  ['hardLimitFactor(Infinity)', (b) => b.hardLimitFactor(Infinity), 'TRYPEMA_INVALID_HARD_LIMIT_FACTOR'],
  ['suppressionFactorCacheMs(0)', (b) => b.suppressionFactorCacheMs(0), 'TRYPEMA_INVALID_SUPPRESSION_FACTOR_CACHE'],
  ['suppressionFactorCacheMs(1e12 + 1)', (b) => b.suppressionFactorCacheMs(1e12 + 1), 'TRYPEMA_INVALID_SUPPRESSION_FACTOR_CACHE'],
  ['syncIntervalMs(0)', (b) => b.syncIntervalMs(0), 'TRYPEMA_INVALID_SYNC_INTERVAL'],
  ['syncIntervalMs longer than the window', (b) => b.windowSizeSeconds(1).syncIntervalMs(1001), 'TRYPEMA_INVALID_SYNC_INTERVAL'],
  ['cleanupIntervalMs(0)', (b) => b.cleanupIntervalMs(0), 'TRYPEMA_INVALID_CLEANUP_INTERVAL'],
  ['staleAfterMs(0)', (b) => b.staleAfterMs(0), 'TRYPEMA_INVALID_STALE_AFTER'],
  ['staleAfterMs(1) with the default 10 s window', (b) => b.staleAfterMs(1), 'TRYPEMA_INVALID_STALE_AFTER'],
  ['staleAfterMs one ms shorter than the window', (b) => b.windowSizeSeconds(2).staleAfterMs(1999), 'TRYPEMA_INVALID_STALE_AFTER'],
  ['commandTimeoutMs(0)', (b) => b.commandTimeoutMs(0), 'TRYPEMA_INVALID_COMMAND_TIMEOUT'],
  ['commandTimeoutMs(0.5)', (b) => b.commandTimeoutMs(0.5), 'TRYPEMA_INVALID_COMMAND_TIMEOUT'],
  ['localRateFactor(0)', (b) => b.localRateFactor(0), 'TRYPEMA_INVALID_LOCAL_RATE_FACTOR'],
  ['localRateFactor(1.5)', (b) => b.localRateFactor(1.5), 'TRYPEMA_INVALID_LOCAL_RATE_FACTOR'],
  ['localRateFactor(NaN)', (b) => b.localRateFactor(NaN), 'TRYPEMA_INVALID_LOCAL_RATE_FACTOR'],
  ["redisPrefix('')", (b) => b.redisPrefix(''), 'TRYPEMA_INVALID_REDIS_PREFIX'],
  ["redisPrefix('a:b')", (b) => b.redisPrefix('a:b'), 'TRYPEMA_INVALID_REDIS_PREFIX'],
  ['redisPrefix of 256 bytes', (b) => b.redisPrefix('p'.repeat(256)), 'TRYPEMA_INVALID_REDIS_PREFIX'],
  [
    'a valid setting followed by an invalid one',
    (b) => b.windowSizeSeconds(5).rateGroupSizeMs(10).staleAfterMs(0),
    'TRYPEMA_INVALID_STALE_AFTER',
  ],
]

// [description, call that must throw a TypeError synchronously]
const BAD_BUILDER_TYPES = [
  ['RateLimiter.builder(123)', () => RateLimiter.builder(123)],
  ['RateLimiter.builder(null)', () => RateLimiter.builder(null)],
  ['RateLimiter.builder([url])', () => RateLimiter.builder(['redis://localhost'])],
  ['RateLimiter.builder({}) (no url, cluster or sentinel)', () => RateLimiter.builder({})],
  ['RateLimiter.builder({ url, cluster })', () => RateLimiter.builder({ url: 'redis://a/', cluster: ['redis://b/'] })],
  ['RateLimiter.builder({ url, sentinel })', () => RateLimiter.builder({ url: 'redis://a/', sentinel: { urls: ['redis://b/'], masterName: 'm' } })],
  ['RateLimiter.builder({ url: 5 })', () => RateLimiter.builder({ url: 5 })],
  ['RateLimiter.builder({ cluster: [] })', () => RateLimiter.builder({ cluster: [] })],
  ["RateLimiter.builder({ cluster: 'redis://a/' })", () => RateLimiter.builder({ cluster: 'redis://a/' })],
  ['RateLimiter.builder({ cluster: [5] })', () => RateLimiter.builder({ cluster: [5] })],
  ['RateLimiter.builder({ sentinel }) without masterName', () => RateLimiter.builder({ sentinel: { urls: ['redis://a/'] } })],
  ['RateLimiter.builder({ sentinel: null })', () => RateLimiter.builder({ sentinel: null })],
  ['an unknown connection option', () => RateLimiter.builder({ url: 'redis://a/', urls: ['redis://b/'] })],
  ["onRedisError: 'ignore' in the options", () => RateLimiter.builder({ url: 'redis://a/', onRedisError: 'ignore' })],
  ["connectTimeoutMs: '5'", () => RateLimiter.builder({ url: 'redis://a/', connectTimeoutMs: '5' })],
  ['commandTimeoutMs: null', () => RateLimiter.builder({ url: 'redis://a/', commandTimeoutMs: null })],
  ['tls: null', () => RateLimiter.builder({ url: 'rediss://a/', tls: null })],
  ['tls.ca as a number', () => RateLimiter.builder({ url: 'rediss://a/', tls: { ca: 5 } })],
  ['tls.cert without tls.key', () => RateLimiter.builder({ url: 'rediss://a/', tls: { cert: 'PEM' } })],
  ["windowSizeSeconds('10')", () => RateLimiter.builder().windowSizeSeconds('10')],
  ["rateGroupSizeMs('10')", () => RateLimiter.builder().rateGroupSizeMs('10')],
  ["hardLimitFactor('1.5')", () => RateLimiter.builder().hardLimitFactor('1.5')],
  ["suppressionFactorCacheMs('100')", () => RateLimiter.builder().suppressionFactorCacheMs('100')],
  ["syncIntervalMs('10')", () => RateLimiter.builder().syncIntervalMs('10')],
  ["cleanupIntervalMs('10')", () => RateLimiter.builder().cleanupIntervalMs('10')],
  ["staleAfterMs('10')", () => RateLimiter.builder().staleAfterMs('10')],
  ["commandTimeoutMs('10')", () => RateLimiter.builder().commandTimeoutMs('10')],
  ["localRateFactor('1')", () => RateLimiter.builder().localRateFactor('1')],
  ["onRedisError('ignore')", () => RateLimiter.builder().onRedisError('ignore')],
  ['onRedisError()', () => RateLimiter.builder().onRedisError()],
  ['windowSizeSeconds(10n)', () => RateLimiter.builder().windowSizeSeconds(10n)],
  ['windowSizeSeconds()', () => RateLimiter.builder().windowSizeSeconds()],
  ['redisPrefix(5)', () => RateLimiter.builder().redisPrefix(5)],
]

describe('bad settings make build() reject', () => {
  for (const [description, configure, code] of BAD_SETTINGS) {
    test(description, async () => {
      const building = configure(RateLimiter.builder()).build()
      assert.ok(building instanceof Promise, 'build() reports bad settings by rejecting, not throwing')
      await assert.rejects(building, codeError(code))
      await assertStillWorks()
      const fresh = await RateLimiter.builder().windowSizeSeconds(1).build()
      assert.deepEqual(fresh.local.absolute.inc('k', 1), ALLOWED)
      await fresh.close()
    })
  }

  test('with Redis too, and before connecting: the setting is blamed even with Redis unreachable', { skip: sharedRedis.skip }, async () => {
    for (const [description, configure, code] of BAD_SETTINGS) {
      await assert.rejects(configure(RateLimiter.builder(sharedRedis.url)).build(), codeError(code), description)
      await assert.rejects(configure(RateLimiter.builder('redis://127.0.0.1:1/')).build(), codeError(code), description)
    }
  })
})

describe('wrong builder argument types throw TypeError', () => {
  for (const [description, call] of BAD_BUILDER_TYPES) {
    test(description, async () => {
      assert.throws(call, typeError)
      await assertStillWorks()
    })
  }
})

describe('edge values that are valid', () => {
  test('a 255-byte key', () => {
    const key = 'y'.repeat(254) + String(keySerial++ % 10)
    assert.equal(Buffer.byteLength(key), 255)
    assert.deepEqual(rl.local.absolute.inc(key, 10), ALLOWED)
    assert.deepEqual(rl.local.suppressed.inc(key, 10), ALLOWED)
    assert.deepEqual(rl.local.absolute.isAllowed(key), ALLOWED)
    assert.equal(rl.local.suppressed.getSuppressionFactor(key), 0)
  })

  test('multi-byte UTF-8 keys up to 255 bytes, valid surrogate pairs included', () => {
    const keys = [
      'é'.repeat(127) + 'z', // 255 bytes
      '😀'.repeat(63) + 'abc', // 255 bytes
      'ключ-用户-🔑',
      '\uFFFD', // U+FFFD itself is a well-formed character
    ]
    for (const key of keys) {
      assert.ok(Buffer.byteLength(key) <= 255)
      assert.equal(key.isWellFormed(), true)
      assert.deepEqual(rl.local.absolute.inc(key, 1), ALLOWED, key)
      assert.equal(rl.local.absolute.inc(key, 1).kind, 'rejected', 'the key must map to one state')
    }
  })

  test("keys with ':', '{' and '}' are fine for the local provider, and distinct", () => {
    const base = freshKey()
    for (const suffix of [':a', ':b', ':a:b:c', '{a}', '{a', 'a}', '}{', '']) {
      assert.deepEqual(rl.local.absolute.inc(`${base}${suffix}`, 1), ALLOWED, suffix)
    }
    assert.deepEqual(rl.local.absolute.inc(':', 1000), ALLOWED)
    assert.equal(rl.local.absolute.inc(`${base}:a`, 1).kind, 'rejected')
  })

  test('keys with NUL, whitespace and control characters are distinct keys', () => {
    const base = freshKey()
    for (const suffix of ['\u0000a', '\u0000b', ' ', '\t', '\n']) {
      assert.deepEqual(rl.local.absolute.inc(base + suffix, 1), ALLOWED, JSON.stringify(suffix))
    }
  })

  test('count 0 and count 2**53 - 1 are valid counts', () => {
    const key = freshKey()
    assert.deepEqual(rl.local.absolute.inc(key, 1, 0), ALLOWED)
    assert.equal(rl.local.absolute.inc(key, 1, 2 ** 53 - 1).kind, 'rejected')
    assert.deepEqual(rl.local.suppressed.inc(freshKey(), 1, 0), ALLOWED)
    assert.equal(rl.local.suppressed.inc(freshKey(), 1, 2 ** 53 - 1).kind, 'suppressed')
    assert.equal(rl.local.absolute.refund(freshKey(), 2 ** 53 - 1), 0)
    assert.equal(rl.local.absolute.refund(freshKey(), 0), 0)
  })

  test('a count above the capacity is told to wait exactly one window (retryAfterMs = window × 1000)', () => {
    // Without state, and with state (where the oldest bucket would free sooner).
    const empty = freshKey()
    assert.deepEqual(rl.local.absolute.inc(empty, 5, 6), {
      kind: 'rejected',
      windowSizeSeconds: 1,
      retryAfterMs: 1000,
      remainingAfterWaiting: 0,
    })
    const used = freshKey()
    assert.deepEqual(rl.local.absolute.inc(used, 5, 2), ALLOWED)
    const rejected = rl.local.absolute.inc(used, 5, 2 ** 53 - 1)
    assert.equal(rejected.kind, 'rejected')
    assert.equal(rejected.retryAfterMs, 1000)
  })

  test('tiny and huge finite rates are valid', () => {
    assert.equal(rl.local.absolute.inc(freshKey(), Number.MIN_VALUE).kind, 'rejected')
    assert.deepEqual(rl.local.absolute.inc(freshKey(), Number.MAX_VALUE), ALLOWED)
    assert.deepEqual(rl.local.absolute.inc(freshKey(), 1e300, 2 ** 53 - 1), ALLOWED)
    assert.deepEqual(rl.local.suppressed.inc(freshKey(), Number.MAX_VALUE), ALLOWED)
  })

  test('boundary settings build', async () => {
    const limiter = await RateLimiter.builder(undefined)
      .windowSizeSeconds(1)
      .rateGroupSizeMs(1)
      .hardLimitFactor(1)
      .suppressionFactorCacheMs(1)
      .syncIntervalMs(1)
      .cleanupIntervalMs(1)
      .staleAfterMs(1000) // exactly the window
      .commandTimeoutMs(1)
      .localRateFactor(1)
      .onRedisError('allow')
      .redisPrefix('p'.repeat(255))
      .build()
    assert.deepEqual(limiter.local.absolute.inc('k', 1), ALLOWED)
    await limiter.close()
    const widest = await RateLimiter.builder().windowSizeSeconds(1e9).rateGroupSizeMs(1e12).syncIntervalMs(1e12).staleAfterMs(1e12).build()
    assert.deepEqual(widest.local.absolute.inc('k', 1e-8), ALLOWED)
    await widest.close()
  })
})

describe('after close(), every method of every provider fails with TRYPEMA_CLOSED', { skip: sharedRedis.skip }, () => {
  test('local, redis and hybrid', async () => {
    const limiter = await RateLimiter.builder(sharedRedis.url).windowSizeSeconds(1).redisPrefix(unique('closed')).build()
    await limiter.redis.absolute.inc('k', 5)
    await limiter.close()
    const closed = codeError('TRYPEMA_CLOSED')
    for (const providerName of PROVIDERS) {
      const p = limiter[providerName]
      const calls = Object.entries(KEY_METHODS).map(([method, call]) => [`${providerName}.${method}`, () => call(p, 'k')])
      await assertAllFail(providerName, calls, closed)
    }
    assert.throws(() => limiter.metrics(), closed)
  })
})

describe('Redis answering with an error', { skip: privateRedis.skip }, () => {
  let server
  let admin
  let limiter

  before(async () => {
    privateRedis.check()
    server = await startRedis()
    admin = new Redis(server.url, { maxRetriesPerRequest: 1 })
    limiter = await RateLimiter.builder(server.url).windowSizeSeconds(10).commandTimeoutMs(1000).build()
  })

  after(async () => {
    await limiter?.close()
    admin?.disconnect()
    await server?.stop()
  })

  test('writes refused for lack of memory reject with TRYPEMA_REDIS; every call settles; the limiter recovers', async () => {
    const existing = unique('oom')
    assert.deepEqual(await limiter.redis.absolute.inc(existing, 5), ALLOWED)
    await admin.config('SET', 'maxmemory-policy', 'noeviction')
    await admin.config('SET', 'maxmemory', '1')
    try {
      // Calls that must write: new state in every strategy and provider, and more on existing state.
      const writing = [
        limiter.redis.absolute.inc(unique('oom'), 5),
        limiter.redis.absolute.inc(existing, 5),
        limiter.redis.absolute.incWithQuota(unique('oom'), 5),
        limiter.redis.suppressed.inc(unique('oom'), 5),
        limiter.redis.suppressed.incWithQuota(unique('oom'), 5),
        limiter.hybrid.absolute.inc(unique('oom'), 5),
        limiter.hybrid.suppressed.inc(unique('oom'), 5),
      ]
      const results = await within(10_000, Promise.allSettled(writing), 'calls while Redis refuses writes')
      for (const [i, result] of results.entries()) {
        assert.equal(result.status, 'rejected', `call ${i} must fail: ${JSON.stringify(result.value)}`)
        assert.equal(result.reason.constructor, Error)
        assert.equal(result.reason.code, 'TRYPEMA_REDIS', `call ${i}: ${result.reason.message}`)
        assert.match(result.reason.message, /OOM|maxmemory/, `call ${i}`)
      }
      // A Redis error is not an outage: no circuit breaker, reads still work.
      assert.deepEqual(await limiter.redis.absolute.isAllowed(existing), ALLOWED)
      assert.equal((await limiter.redis.absolute.get(existing, 5)).remaining, 49)
      assert.equal(limiter.metrics().redisDegraded, false)
      // A limiter cannot be built while its probe cannot write.
      await assert.rejects(RateLimiter.builder(server.url).build(), codeError('TRYPEMA_REDIS'))
    } finally {
      await admin.config('SET', 'maxmemory', '0')
    }
    // Everything works again at once, with the earlier state intact.
    assert.deepEqual(await limiter.redis.absolute.inc(existing, 5), ALLOWED)
    assert.equal((await limiter.redis.absolute.get(existing, 5)).remaining, 48)
    assert.deepEqual(await limiter.redis.suppressed.inc(unique('oom'), 5), ALLOWED)
    assert.deepEqual(await limiter.hybrid.absolute.inc(unique('oom'), 5), ALLOWED)
    assert.deepEqual(await limiter.hybrid.suppressed.inc(unique('oom'), 5), ALLOWED)
  })
})

describe('Redis that stops answering (a paused server)', { skip: privateRedis.skip }, () => {
  test('every call settles within commandTimeoutMs: TRYPEMA_REDIS_TIMEOUT, then fail-fast TRYPEMA_REDIS; policies degrade; recovery', async () => {
    privateRedis.check()
    const server = await startRedis()
    const COMMAND_TIMEOUT_MS = 300
    const reject = await RateLimiter.builder(server.url).commandTimeoutMs(COMMAND_TIMEOUT_MS).build()
    const allow = await RateLimiter.builder({ url: server.url, onRedisError: 'allow', commandTimeoutMs: COMMAND_TIMEOUT_MS }).build()
    const local = await RateLimiter.builder(server.url).onRedisError('local').commandTimeoutMs(COMMAND_TIMEOUT_MS).build()
    try {
      assert.deepEqual(await reject.redis.absolute.inc(unique('p'), 5), ALLOWED)
      process.kill(server.pid, 'SIGSTOP')
      const started = performance.now()
      const rejected = [
        reject.redis.absolute.inc(unique('p'), 5),
        reject.redis.absolute.incWithQuota(unique('p'), 5),
        reject.redis.suppressed.inc(unique('p'), 5),
        reject.redis.absolute.get(unique('p'), 5),
        reject.redis.absolute.refund(unique('p'), 1),
        reject.redis.absolute.reset(unique('p')),
        reject.hybrid.absolute.inc(unique('p'), 5),
        reject.hybrid.suppressed.inc(unique('p'), 5),
      ]
      const degraded = [allow.redis.absolute.incWithQuota(unique('p'), 5), allow.hybrid.absolute.inc(unique('p'), 5)]
      const key = unique('p')
      const byLocal = [local.redis.absolute.inc(key, 0.1), local.redis.absolute.inc(key, 0.1)] // capacity 1
      const results = await within(COMMAND_TIMEOUT_MS + 5000, Promise.allSettled([...rejected, ...degraded, ...byLocal]), 'calls to a paused server')
      const took = performance.now() - started
      assert.ok(took < COMMAND_TIMEOUT_MS + 1000, `the calls took ${took} ms`)
      for (const [i, result] of results.slice(0, rejected.length).entries()) {
        assert.equal(result.status, 'rejected', `call ${i}`)
        assert.equal(result.reason.code, 'TRYPEMA_REDIS_TIMEOUT', `call ${i}: ${result.reason.message}`)
      }
      const [quota, hybridAllowed, first, second] = results.slice(rejected.length).map((result) => result.value)
      assert.deepEqual(quota.decision, ALLOWED)
      assert.equal(quota.degraded, true)
      assert.deepEqual(hybridAllowed, ALLOWED)
      assert.deepEqual(first, ALLOWED)
      assert.equal(second.kind, 'rejected', "'local' decides with an in-process limiter")
      // The circuit is open: new calls fail at once, without waiting for the timeout.
      const fast = performance.now()
      await assert.rejects(reject.redis.absolute.inc(unique('p'), 5), codeError('TRYPEMA_REDIS'))
      assert.ok(performance.now() - fast < COMMAND_TIMEOUT_MS / 2, 'fail fast while the circuit is open')
      assert.equal(reject.metrics().redisDegraded, true)
    } finally {
      process.kill(server.pid, 'SIGCONT')
    }
    try {
      const deadline = Date.now() + 3000
      let ok = false
      while (!ok && Date.now() < deadline) {
        ok = await reject.redis.absolute.inc(unique('p'), 5).then(() => true, () => false)
        if (!ok) await new Promise((resolve) => setTimeout(resolve, 20))
      }
      assert.ok(ok, 'calls succeed again within 3 s of the server resuming')
      assert.deepEqual(await reject.hybrid.absolute.inc(unique('p'), 5), ALLOWED)
    } finally {
      await Promise.all([reject.close(), allow.close(), local.close()])
      await server.stop()
    }
  })
})
