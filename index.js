'use strict'

// The public JavaScript API. Decisions are made by the Rust core; the addon returns each one
// as a single number (see src/convert.rs) and this layer shapes it into a `RateLimitDecision`,
// because building objects in JavaScript is far cheaper than creating them through napi.

const binding = require('./binding.js')
const { NativeRateLimiter } = binding
// The per-request calls, as raw N-API functions (see src/fast_calls.rs).
const fast = binding.fastCalls()

const ALLOWED = Object.freeze({ kind: 'allowed' })
// Locally decided hybrid calls that are allowed all return this one settled Promise: awaiting
// it costs a microtask, and nothing is allocated per call.
const SETTLED_ALLOWED = Promise.resolve(ALLOWED)

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

function checkInc(key, rate, count) {
  expect('string', 'key', key)
  expect('number', 'rate', rate)
  expect('number', 'count', count)
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

// Provider objects keep the native limiter alive: it releases its state when collected, and a
// caller may hold on to `rl.local.absolute` after dropping `rl`.
class LocalAbsolute {
  #native
  #handle
  #windowSizeSeconds

  constructor(native) {
    this.#native = native
    this.#handle = native.handle
    this.#windowSizeSeconds = native.windowSizeSeconds
  }

  /** Records `count` for `key` unless that would exceed the window's capacity. */
  inc(key, rate, count = 1) {
    checkInc(key, rate, count)
    return absoluteDecision(this.#windowSizeSeconds, fast.localAbsoluteInc(this.#handle, key, rate, count))
  }

  /** Whether one more call would be admitted now; records nothing. */
  isAllowed(key) {
    expect('string', 'key', key)
    return absoluteDecision(this.#windowSizeSeconds, binding.localAbsoluteIsAllowed(this.#handle, key))
  }
}

class LocalSuppressed {
  #native
  #handle

  constructor(native) {
    this.#native = native
    this.#handle = native.handle
  }

  /** Records `count` as observed for `key` and decides whether to admit it. */
  inc(key, rate, count = 1) {
    checkInc(key, rate, count)
    return suppressedDecision(fast.localSuppressedInc(this.#handle, key, rate, count))
  }

  /** The key's current suppression factor in [0, 1] (0 for an unknown key). */
  getSuppressionFactor(key) {
    expect('string', 'key', key)
    return binding.localSuppressedFactor(this.#handle, key)
  }
}

// Operation numbers understood by the addon's `redisEnqueue` (src/redis_bridge.rs).
const OP_ABSOLUTE_INC = 0
const OP_ABSOLUTE_IS_ALLOWED = 1
const OP_SUPPRESSED_INC = 2
const OP_SUPPRESSED_FACTOR = 3
const OP_HYBRID_ABSOLUTE_INC = 4
const OP_HYBRID_ABSOLUTE_IS_ALLOWED = 5
const OP_HYBRID_SUPPRESSED_INC = 6
const OP_HYBRID_SUPPRESSED_FACTOR = 7

// What `hybridAbsoluteTry` / `hybridSuppressedTry` return when the call needs Redis.
const NEEDS_REDIS = -2

// Result kinds in the buffer returned by `redisDrain`, four numbers per result: id, kind, a, b.
const DONE_ALLOWED = 0
const DONE_REJECTED = 1
const DONE_SUPPRESSED = 2
const DONE_FACTOR = 3

function noop() {}

/**
 * Owns the Promises of one limiter's Redis calls. Calls are queued in the addon and sent to
 * Redis once per microtask tick; results come back in batches through `drain`.
 */
class RedisCalls {
  #native = null
  #handle = 0
  #windowSizeSeconds = 0
  #pending = new Map()
  #nextId = 1
  #flushScheduled = false
  #closing = null
  #whenIdle = null
  // Holds the event loop open only while calls are in flight, so a finished program exits.
  #keepAlive = setInterval(noop, 0x7fffffff)

  constructor() {
    this.#keepAlive.unref()
  }

  attach(native) {
    this.#native = native
    this.#handle = native.handle
    this.#windowSizeSeconds = native.windowSizeSeconds
  }

  get handle() {
    return this.#handle
  }

  get windowSizeSeconds() {
    return this.#windowSizeSeconds
  }

  call(op, key, rate, count) {
    if (this.#closing !== null) {
      throw trypemaError('TRYPEMA_CLOSED', 'this rate limiter has been closed')
    }
    const id = this.#nextId++
    binding.redisEnqueue(this.#handle, op, id, key, rate, count)
    if (this.#pending.size === 0) this.#keepAlive.ref()
    if (!this.#flushScheduled) {
      this.#flushScheduled = true
      queueMicrotask(this.#flush)
    }
    return new Promise((resolve, reject) => {
      this.#pending.set(id, { resolve, reject })
    })
  }

  /** A queued `inc` of operation `op`, its arguments checked first. */
  inc(op, key, rate, count) {
    checkInc(key, rate, count)
    return this.call(op, key, rate, count)
  }

  /**
   * A hybrid inc: decided by `tryLocally` without I/O when the key's local state allows (an
   * already-settled Promise, no thread hop), else queued like a Redis call as `op`.
   */
  hybridInc(tryLocally, op, shape, key, rate, count) {
    let encoded
    try {
      checkInc(key, rate, count)
      encoded = tryLocally(this.#handle, key, rate, count)
      if (encoded === NEEDS_REDIS) return this.call(op, key, rate, count)
    } catch (error) {
      return Promise.reject(error)
    }
    return encoded < 0 ? SETTLED_ALLOWED : Promise.resolve(shape(encoded))
  }

  #flush = () => {
    this.#flushScheduled = false
    binding.redisFlush(this.#handle)
  }

  /** Called by the addon whenever results are waiting. */
  drain = () => {
    const { numbers, errors } = binding.redisDrain(this.#handle)
    for (let i = 0; i < numbers.length; i += 4) {
      const call = this.#pending.get(numbers[i])
      this.#pending.delete(numbers[i])
      const a = numbers[i + 2]
      switch (numbers[i + 1]) {
        case DONE_ALLOWED:
          call.resolve(ALLOWED)
          break
        case DONE_REJECTED:
          call.resolve({
            kind: 'rejected',
            windowSizeSeconds: this.#windowSizeSeconds,
            retryAfterMs: a,
            remainingAfterWaiting: numbers[i + 3],
          })
          break
        case DONE_SUPPRESSED:
          call.resolve({ kind: 'suppressed', suppressionFactor: a, isAllowed: numbers[i + 3] === 1 })
          break
        case DONE_FACTOR:
          call.resolve(a)
          break
        default:
          call.reject(trypemaError(errors[a].code, errors[a].message))
      }
    }
    if (this.#pending.size === 0) {
      this.#keepAlive.unref()
      if (this.#whenIdle !== null) this.#whenIdle()
    }
  }

  /** Refuses new calls and waits for the ones in flight (each is bounded by a timeout). */
  close() {
    if (this.#closing === null) {
      this.#closing = new Promise((resolve) => {
        this.#whenIdle = resolve
        if (this.#pending.size === 0) resolve()
      }).then(() => clearInterval(this.#keepAlive))
    }
    return this.#closing
  }
}

class RedisAbsolute {
  #calls

  constructor(calls) {
    this.#calls = calls
  }

  /** Records `count` for `key` unless that would exceed the window's capacity; exact across processes. */
  async inc(key, rate, count = 1) {
    return this.#calls.inc(OP_ABSOLUTE_INC, key, rate, count)
  }

  /** Whether one more call would be admitted now; records nothing. */
  async isAllowed(key) {
    expect('string', 'key', key)
    return this.#calls.call(OP_ABSOLUTE_IS_ALLOWED, key, 1, 0)
  }
}

class RedisSuppressed {
  #calls

  constructor(calls) {
    this.#calls = calls
  }

  /** Records `count` as observed for `key` and decides whether to admit it. */
  async inc(key, rate, count = 1) {
    return this.#calls.inc(OP_SUPPRESSED_INC, key, rate, count)
  }

  /** The key's current suppression factor in [0, 1] (0 for an unknown key). */
  async getSuppressionFactor(key) {
    expect('string', 'key', key)
    return this.#calls.call(OP_SUPPRESSED_FACTOR, key, 1, 0)
  }
}

class HybridAbsolute {
  #calls
  #rejected

  constructor(calls) {
    this.#calls = calls
    const windowSizeSeconds = calls.windowSizeSeconds
    this.#rejected = (encoded) => absoluteDecision(windowSizeSeconds, encoded)
  }

  /**
   * Records `count` for `key` unless that would exceed the window's capacity. Served from the
   * key's local lease without I/O (an already-settled Promise) whenever the lease covers it.
   */
  inc(key, rate, count = 1) {
    return this.#calls.hybridInc(fast.hybridAbsoluteTry, OP_HYBRID_ABSOLUTE_INC, this.#rejected, key, rate, count)
  }

  /** Whether one more call would be admitted now; records nothing. */
  async isAllowed(key) {
    expect('string', 'key', key)
    return this.#calls.call(OP_HYBRID_ABSOLUTE_IS_ALLOWED, key, 1, 0)
  }
}

class HybridSuppressed {
  #calls

  constructor(calls) {
    this.#calls = calls
  }

  /** Records `count` as observed for `key` and decides locally on the shared window totals. */
  inc(key, rate, count = 1) {
    return this.#calls.hybridInc(fast.hybridSuppressedTry, OP_HYBRID_SUPPRESSED_INC, suppressedDecision, key, rate, count)
  }

  /** The key's current suppression factor in [0, 1] (0 for an unknown key). */
  async getSuppressionFactor(key) {
    expect('string', 'key', key)
    return this.#calls.call(OP_HYBRID_SUPPRESSED_FACTOR, key, 1, 0)
  }
}

function notConfigured() {
  return trypemaError('TRYPEMA_REDIS_NOT_CONFIGURED', 'this rate limiter was built without a Redis URL')
}

class RateLimiter {
  #native
  #redisCalls
  #redis
  #hybrid

  /** Starts configuring a limiter; pass a Redis URL to enable the `redis` and `hybrid` providers. */
  static builder(redisUrl) {
    return new RateLimiterBuilder(redisUrl)
  }

  /** @internal use `RateLimiter.builder(...).build()` */
  constructor(native, redisCalls = null) {
    if (!(native instanceof NativeRateLimiter)) {
      throw new TypeError('use RateLimiter.builder(...).build() to create a RateLimiter')
    }
    this.#native = native
    this.#redisCalls = redisCalls
    this.#redis =
      redisCalls &&
      Object.freeze({ absolute: new RedisAbsolute(redisCalls), suppressed: new RedisSuppressed(redisCalls) })
    this.#hybrid =
      redisCalls &&
      Object.freeze({ absolute: new HybridAbsolute(redisCalls), suppressed: new HybridSuppressed(redisCalls) })
    this.local = Object.freeze({
      absolute: new LocalAbsolute(native),
      suppressed: new LocalSuppressed(native),
    })
    Object.freeze(this)
  }

  /** The configured window length in seconds. */
  get windowSizeSeconds() {
    return this.#native.windowSizeSeconds
  }

  /** Limits shared through Redis: one round trip per call, exact across processes. */
  get redis() {
    if (this.#redis === null) throw notConfigured()
    return this.#redis
  }

  /** Limits shared through Redis, decided locally and synchronised in the background. */
  get hybrid() {
    if (this.#hybrid === null) throw notConfigured()
    return this.#hybrid
  }

  /** Stops background work and releases all state; later calls fail with `TRYPEMA_CLOSED`. */
  async close() {
    if (this.#redisCalls !== null) await this.#redisCalls.close()
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

  /** Validates every setting, connects to Redis if a URL was given, and creates the limiter. */
  async build() {
    const options = { ...this.#options }
    if (options.redisUrl === undefined) {
      return new RateLimiter(NativeRateLimiter.createLocal(options))
    }
    // Settings are checked before connecting, so a bad one is reported as such even when
    // Redis is unreachable.
    binding.validateOptions(options)
    const connection = await binding.connectRedis(options.redisUrl)
    if (connection.failure !== null) throw trypemaError('TRYPEMA_REDIS', connection.failure)
    const calls = new RedisCalls()
    const native = NativeRateLimiter.createWithRedis(options, connection, calls.drain)
    calls.attach(native)
    return new RateLimiter(native, calls)
  }
}

module.exports = { RateLimiter, RateLimiterBuilder }
