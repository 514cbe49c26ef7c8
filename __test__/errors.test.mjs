// Bad inputs: each must fail with the documented error class and code, never crash the process,
// and leave the limiter working.
import { test, describe, before, after } from 'node:test'
import assert from 'node:assert/strict'

import { RateLimiter } from '../index.mjs'

const ALLOWED = { kind: 'allowed' }

let rl
let keySerial = 0
function freshKey() {
  keySerial += 1
  return `errors-${process.pid}-${keySerial}`
}

before(async () => {
  rl = await RateLimiter.builder().windowSizeSeconds(1).rateGroupSizeMs(10).build()
})

after(async () => {
  await rl.close()
})

/** What a wrong argument type must throw. */
const typeError = { constructor: TypeError, name: 'TypeError', message: /\S/ }
/** What an invalid value must throw or reject with: a plain `Error` carrying `code`. */
function codeError(code) {
  return { constructor: Error, name: 'Error', code, message: /\S/ }
}

/** The shared limiter (and a freshly built one) still make ordinary decisions. */
async function assertStillWorks() {
  assert.deepEqual(rl.local.absolute.inc(freshKey(), 10), ALLOWED)
  assert.deepEqual(rl.local.suppressed.inc(freshKey(), 10), ALLOWED)
  assert.deepEqual(rl.local.absolute.isAllowed(freshKey()), ALLOWED)
  assert.equal(rl.local.suppressed.getSuppressionFactor(freshKey()), 0)
}

const KEY_METHODS = {
  'absolute.inc': (key) => rl.local.absolute.inc(key, 10, 1),
  'absolute.isAllowed': (key) => rl.local.absolute.isAllowed(key),
  'suppressed.inc': (key) => rl.local.suppressed.inc(key, 10, 1),
  'suppressed.getSuppressionFactor': (key) => rl.local.suppressed.getSuppressionFactor(key),
}

const INC_METHODS = {
  'absolute.inc': (key, rate, count) => rl.local.absolute.inc(key, rate, count),
  'suppressed.inc': (key, rate, count) => rl.local.suppressed.inc(key, rate, count),
}

// [description, key, expected]
const BAD_KEYS = [
  ['key as a number', 42, typeError],
  ['key undefined', undefined, typeError],
  ['key null', null, typeError],
  ['key as a plain object', { toString: () => 'k' }, typeError],
  ['key as a String object', new String('k'), typeError],
  ['key as an array', ['k'], typeError],
  ['key as a Symbol', Symbol('k'), typeError],
  ['key as a bigint', 7n, typeError],
  ['empty key', '', codeError('TRYPEMA_INVALID_KEY')],
  ['256-byte key', 'x'.repeat(256), codeError('TRYPEMA_INVALID_KEY')],
  ['256-byte key of 2-byte characters', 'é'.repeat(128), codeError('TRYPEMA_INVALID_KEY')],
  ['512-byte key', 'x'.repeat(512), codeError('TRYPEMA_INVALID_KEY')],
  ['600-byte key of 2-byte characters', 'é'.repeat(300), codeError('TRYPEMA_INVALID_KEY')],
  ['10,000-char key', 'k'.repeat(10_000), codeError('TRYPEMA_INVALID_KEY')],
  ['1,000,000-char key', 'k'.repeat(1_000_000), codeError('TRYPEMA_INVALID_KEY')],
]

// [description, rate, expected]
const BAD_RATES = [
  ['rate as a string', '5', typeError],
  ['rate undefined', undefined, typeError],
  ['rate null', null, typeError],
  ['rate as a bigint', 5n, typeError],
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
  ['count -1', -1, codeError('TRYPEMA_INVALID_COUNT')],
  ['count 1.5', 1.5, codeError('TRYPEMA_INVALID_COUNT')],
  ['count NaN', NaN, codeError('TRYPEMA_INVALID_COUNT')],
  ['count Infinity', Infinity, codeError('TRYPEMA_INVALID_COUNT')],
  ['count -Infinity', -Infinity, codeError('TRYPEMA_INVALID_COUNT')],
  ['count 2**53', 2 ** 53, codeError('TRYPEMA_INVALID_COUNT')],
  ['count 1e300', 1e300, codeError('TRYPEMA_INVALID_COUNT')],
]

// [description, configure(builder), expected rejection of build()]
const BAD_SETTINGS = [
  ['windowSizeSeconds(0)', (b) => b.windowSizeSeconds(0), 'TRYPEMA_INVALID_WINDOW_SIZE'],
  ['windowSizeSeconds(1.5)', (b) => b.windowSizeSeconds(1.5), 'TRYPEMA_INVALID_WINDOW_SIZE'],
  ['windowSizeSeconds(-3)', (b) => b.windowSizeSeconds(-3), 'TRYPEMA_INVALID_WINDOW_SIZE'],
  ['windowSizeSeconds(NaN)', (b) => b.windowSizeSeconds(NaN), 'TRYPEMA_INVALID_WINDOW_SIZE'],
  ['windowSizeSeconds(Infinity)', (b) => b.windowSizeSeconds(Infinity), 'TRYPEMA_INVALID_WINDOW_SIZE'],
  ['rateGroupSizeMs(0)', (b) => b.rateGroupSizeMs(0), 'TRYPEMA_INVALID_RATE_GROUP_SIZE'],
  ['rateGroupSizeMs(2.5)', (b) => b.rateGroupSizeMs(2.5), 'TRYPEMA_INVALID_RATE_GROUP_SIZE'],
  ['hardLimitFactor(0.5)', (b) => b.hardLimitFactor(0.5), 'TRYPEMA_INVALID_HARD_LIMIT_FACTOR'],
  ['hardLimitFactor(NaN)', (b) => b.hardLimitFactor(NaN), 'TRYPEMA_INVALID_HARD_LIMIT_FACTOR'],
  ['hardLimitFactor(Infinity)', (b) => b.hardLimitFactor(Infinity), 'TRYPEMA_INVALID_HARD_LIMIT_FACTOR'],
  ['suppressionFactorCacheMs(0)', (b) => b.suppressionFactorCacheMs(0), 'TRYPEMA_INVALID_SUPPRESSION_FACTOR_CACHE'],
  ['syncIntervalMs(0)', (b) => b.syncIntervalMs(0), 'TRYPEMA_INVALID_SYNC_INTERVAL'],
  ['cleanupIntervalMs(0)', (b) => b.cleanupIntervalMs(0), 'TRYPEMA_INVALID_CLEANUP_INTERVAL'],
  ['staleAfterMs(0)', (b) => b.staleAfterMs(0), 'TRYPEMA_INVALID_STALE_AFTER'],
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
  ['RateLimiter.builder({})', () => RateLimiter.builder({ url: 'redis://localhost' })],
  ["windowSizeSeconds('10')", () => RateLimiter.builder().windowSizeSeconds('10')],
  ["rateGroupSizeMs('10')", () => RateLimiter.builder().rateGroupSizeMs('10')],
  ["hardLimitFactor('1.5')", () => RateLimiter.builder().hardLimitFactor('1.5')],
  ["suppressionFactorCacheMs('100')", () => RateLimiter.builder().suppressionFactorCacheMs('100')],
  ["syncIntervalMs('10')", () => RateLimiter.builder().syncIntervalMs('10')],
  ["cleanupIntervalMs('10')", () => RateLimiter.builder().cleanupIntervalMs('10')],
  ["staleAfterMs('10')", () => RateLimiter.builder().staleAfterMs('10')],
  ['windowSizeSeconds(10n)', () => RateLimiter.builder().windowSizeSeconds(10n)],
  ['windowSizeSeconds()', () => RateLimiter.builder().windowSizeSeconds()],
  ['redisPrefix(5)', () => RateLimiter.builder().redisPrefix(5)],
]

describe('bad keys', () => {
  for (const [description, key, expected] of BAD_KEYS) {
    for (const [method, call] of Object.entries(KEY_METHODS)) {
      test(`${description} → ${method}`, async () => {
        assert.throws(() => call(key), expected)
        await assertStillWorks()
      })
    }
  }
})

describe('bad rates', () => {
  for (const [description, rate, expected] of BAD_RATES) {
    for (const [method, call] of Object.entries(INC_METHODS)) {
      test(`${description} → ${method}`, async () => {
        const key = freshKey()
        assert.throws(() => call(key, rate, 1), expected)
        // Nothing was recorded and no rate was fixed for the key by the failed call.
        assert.deepEqual(call(key, 1, 1), ALLOWED)
        await assertStillWorks()
      })
    }
  }
})

describe('bad counts', () => {
  for (const [description, count, expected] of BAD_COUNTS) {
    for (const [method, call] of Object.entries(INC_METHODS)) {
      test(`${description} → ${method}`, async () => {
        const key = freshKey()
        assert.throws(() => call(key, 2, count), expected)
        assert.deepEqual(call(key, 2, 2), ALLOWED, 'the failed call must not have recorded anything')
        await assertStillWorks()
      })
    }
  }
})

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

  test('multi-byte UTF-8 keys up to 255 bytes', () => {
    const keys = [
      'é'.repeat(127) + 'z', // 255 bytes
      '😀'.repeat(63) + 'abc', // 255 bytes
      'ключ-用户-🔑',
    ]
    for (const key of keys) {
      assert.ok(Buffer.byteLength(key) <= 255)
      assert.deepEqual(rl.local.absolute.inc(key, 1), ALLOWED, key)
      assert.equal(rl.local.absolute.inc(key, 1).kind, 'rejected', 'the key must map to one state')
    }
  })

  test("keys with ':' are fine for the local provider, and distinct", () => {
    const base = freshKey()
    assert.deepEqual(rl.local.absolute.inc(`${base}:a`, 1), ALLOWED)
    assert.deepEqual(rl.local.absolute.inc(`${base}:b`, 1), ALLOWED)
    assert.deepEqual(rl.local.absolute.inc(`${base}:a:b:c`, 1), ALLOWED)
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
      .staleAfterMs(1)
      .redisPrefix('p'.repeat(255))
      .build()
    assert.deepEqual(limiter.local.absolute.inc('k', 1), ALLOWED)
    await limiter.close()
  })
})
