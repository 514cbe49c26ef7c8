'use strict'

// The public JavaScript API. Decisions are made by the Rust core; the addon returns each one
// as a single number (see src/convert.rs) and this layer shapes it into a `RateLimitDecision`,
// because building objects in JavaScript is far cheaper than creating them through napi.

const binding = require('./binding.js')
const { NativeRateLimiter } = binding

const ALLOWED = Object.freeze({ kind: 'allowed' })

function describe(value) {
  if (value === null) return 'null'
  if (Array.isArray(value)) return 'an array'
  return typeof value === 'string' ? `a string` : `${typeof value}`
}

function expect(type, name, value) {
  if (typeof value !== type) {
    throw new TypeError(`${name} must be a ${type}, got ${describe(value)}`)
  }
}

function trypemaError(code, message) {
  const error = new Error(message)
  error.code = code
  return error
}

function absoluteDecision(windowSizeSeconds, encoded) {
  if (encoded < 0) return ALLOWED
  return {
    kind: 'rejected',
    windowSizeSeconds,
    retryAfterMs: encoded,
    remainingAfterWaiting: binding.lastRemaining(),
  }
}

function suppressedDecision(encoded) {
  if (encoded < 0) return ALLOWED
  const isAllowed = encoded < 2
  return { kind: 'suppressed', suppressionFactor: isAllowed ? encoded : encoded - 2, isAllowed }
}

class LocalAbsolute {
  #handle
  #windowSizeSeconds

  constructor(native) {
    this.#handle = native.handle
    this.#windowSizeSeconds = native.windowSizeSeconds
  }

  /** Records `count` for `key` unless that would exceed the window's capacity. */
  inc(key, rate, count = 1) {
    expect('string', 'key', key)
    expect('number', 'rate', rate)
    expect('number', 'count', count)
    return absoluteDecision(this.#windowSizeSeconds, binding.localAbsoluteInc(this.#handle, key, rate, count))
  }

  /** Whether one more call would be admitted now; records nothing. */
  isAllowed(key) {
    expect('string', 'key', key)
    return absoluteDecision(this.#windowSizeSeconds, binding.localAbsoluteIsAllowed(this.#handle, key))
  }
}

class LocalSuppressed {
  #handle

  constructor(native) {
    this.#handle = native.handle
  }

  /** Records `count` as observed for `key` and decides whether to admit it. */
  inc(key, rate, count = 1) {
    expect('string', 'key', key)
    expect('number', 'rate', rate)
    expect('number', 'count', count)
    return suppressedDecision(binding.localSuppressedInc(this.#handle, key, rate, count))
  }

  /** The key's current suppression factor in [0, 1] (0 for an unknown key). */
  getSuppressionFactor(key) {
    expect('string', 'key', key)
    return binding.localSuppressedFactor(this.#handle, key)
  }
}

class RateLimiter {
  #native

  /** Starts configuring a limiter; pass a Redis URL to enable the `redis` and `hybrid` providers. */
  static builder(redisUrl) {
    return new RateLimiterBuilder(redisUrl)
  }

  /** @internal use `RateLimiter.builder(...).build()` */
  constructor(native) {
    if (!(native instanceof NativeRateLimiter)) {
      throw new TypeError('use RateLimiter.builder(...).build() to create a RateLimiter')
    }
    this.#native = native
    this.local = Object.freeze({
      absolute: new LocalAbsolute(native),
      suppressed: new LocalSuppressed(native),
    })
    Object.freeze(this)
  }

  get redis() {
    throw trypemaError('TRYPEMA_REDIS_NOT_CONFIGURED', 'this rate limiter was built without a Redis URL')
  }

  get hybrid() {
    throw trypemaError('TRYPEMA_REDIS_NOT_CONFIGURED', 'this rate limiter was built without a Redis URL')
  }

  /** Stops background work and releases all state; later calls fail with `TRYPEMA_CLOSED`. */
  async close() {
    this.#native.close()
  }
}

class RateLimiterBuilder {
  #options = {}

  constructor(redisUrl) {
    if (redisUrl !== undefined) {
      expect('string', 'redisUrl', redisUrl)
      this.#options.redisUrl = redisUrl
    }
  }

  #number(name, value) {
    expect('number', name, value)
    this.#options[name] = value
    return this
  }

  /** Sliding window length in seconds (whole number ≥ 1, default 10). */
  windowSizeSeconds(value) {
    return this.#number('windowSizeSeconds', value)
  }

  /** Increments closer together than this share a bucket (whole ms ≥ 1, default 100). */
  rateGroupSizeMs(value) {
    return this.#number('rateGroupSizeMs', value)
  }

  /** Suppressed strategy's hard ceiling as a multiple of the soft one (≥ 1.0, default 1.0). */
  hardLimitFactor(value) {
    return this.#number('hardLimitFactor', value)
  }

  /** How long a key's suppression factor may be reused (whole ms ≥ 1, default 100). */
  suppressionFactorCacheMs(value) {
    return this.#number('suppressionFactorCacheMs', value)
  }

  /** Hybrid provider's reconciliation period (whole ms ≥ 1, default 10). */
  syncIntervalMs(value) {
    return this.#number('syncIntervalMs', value)
  }

  /** How often idle keys are looked for (whole ms ≥ 1, default 10000). */
  cleanupIntervalMs(value) {
    return this.#number('cleanupIntervalMs', value)
  }

  /** Idle time after which a key's local state is dropped (whole ms ≥ 1, default: the window). */
  staleAfterMs(value) {
    return this.#number('staleAfterMs', value)
  }

  /** First part of every Redis key (1–255 bytes, no `:`; default `trypema`). */
  redisPrefix(value) {
    expect('string', 'redisPrefix', value)
    this.#options.redisPrefix = value
    return this
  }

  /** Validates every setting and creates the limiter. */
  async build() {
    return new RateLimiter(NativeRateLimiter.createLocal({ ...this.#options }))
  }
}

module.exports = { RateLimiter, RateLimiterBuilder }
