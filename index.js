'use strict'

// The public JavaScript API. Decisions are made by the Rust core; the addon returns each one
// as a single number (see src/convert.rs) and this layer shapes it into a `RateLimitDecision`,
// because building objects in JavaScript is far cheaper than creating them through napi.
//
// Asynchronous calls of every limiter on this thread share one completion channel: they are
// queued in the addon, handed to its I/O threads once per microtask tick, and their results
// come back in batches through `drain`. Nothing here keeps a limiter reachable once the
// program drops it (unless it has calls in flight), so an unclosed limiter is freed by GC.

function loadBinding() {
  try {
    return require('./binding.js')
  } catch (error) {
    // No prebuilt binary fits this platform (or it failed to load): say which and what to do.
    throw require('./platform.js').explainLoadFailure(error)
  }
}

const binding = loadBinding()
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
  return typeof value === 'string' ? 'a string' : `${typeof value}`
}

function expect(type, name, value) {
  if (typeof value !== type) {
    throw new TypeError(`${name} must be a ${type}, got ${describe(value)}`)
  }
}

function checkKey(key) {
  expect('string', 'key', key)
  if (!key.isWellFormed()) {
    throw new TypeError('key must be a well-formed string: it contains a lone UTF-16 surrogate')
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

function closedError() {
  return trypemaError('TRYPEMA_CLOSED', 'this rate limiter has been closed')
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

// ---------------------------------------------------------------------------------------------
// The completion channel of this thread
// ---------------------------------------------------------------------------------------------

// Result kinds in the buffer returned by `redisDrain`, eight numbers per result:
// id, kind, a, b, limit, remaining, resetMs, flags (src/calls.rs).
const DONE_ALLOWED = 0
const DONE_REJECTED = 1
const DONE_SUPPRESSED = 2
const DONE_NUMBER = 3
const DONE_QUOTA = 5
const DONE_VOID = 6
const HAS_QUOTA = 1
const DEGRADED = 2
const RESULT_SIZE = 8

function noop() {}

/** id → { resolve, reject, owner } of every call in flight on this thread. */
const pending = new Map()
let nextId = 1
let flushScheduled = false
// Holds the event loop open only while calls are in flight, so a finished program exits.
const keepAlive = setInterval(noop, 0x7fffffff)
keepAlive.unref()

function flush() {
  flushScheduled = false
  binding.redisFlush()
}

function scheduleFlush() {
  if (!flushScheduled) {
    flushScheduled = true
    queueMicrotask(flush)
  }
}

/** Registers a Promise for call `id` (already queued in the addon). */
function awaitResult(id, owner) {
  if (pending.size === 0) keepAlive.ref()
  if (owner !== null) owner.inFlight++
  scheduleFlush()
  return new Promise((resolve, reject) => {
    pending.set(id, { resolve, reject, owner })
  })
}

function decision(kind, a, b, windowSizeSeconds) {
  switch (kind) {
    case DONE_ALLOWED:
      return ALLOWED
    case DONE_REJECTED:
      return { kind: 'rejected', windowSizeSeconds, retryAfterMs: a, remainingAfterWaiting: b }
    default:
      return { kind: 'suppressed', suppressionFactor: a, isAllowed: b === 1 }
  }
}

/** Called by the addon whenever results are waiting. */
function drain() {
  const { numbers, errors } = binding.redisDrain()
  for (let i = 0; i < numbers.length; i += RESULT_SIZE) {
    const call = pending.get(numbers[i])
    if (call === undefined) continue
    pending.delete(numbers[i])
    const kind = numbers[i + 1]
    const a = numbers[i + 2]
    const windowSizeSeconds = call.owner === null ? 0 : call.owner.windowSizeSeconds
    let value
    if (kind === DONE_NUMBER) value = a
    else if (kind === DONE_VOID) value = undefined
    else if (kind === DONE_QUOTA) value = { limit: numbers[i + 4], remaining: numbers[i + 5], resetMs: numbers[i + 6] }
    else if (kind <= DONE_SUPPRESSED) {
      value = decision(kind, a, numbers[i + 3], windowSizeSeconds)
      const flags = numbers[i + 7]
      if (flags & HAS_QUOTA) {
        value = {
          decision: value,
          limit: numbers[i + 4],
          remaining: numbers[i + 5],
          resetMs: numbers[i + 6],
          degraded: (flags & DEGRADED) !== 0,
        }
      }
    } else {
      const error = errors[a]
      call.reject(trypemaError(error.code, error.message))
      if (call.owner !== null) call.owner.settled()
      continue
    }
    call.resolve(value)
    if (call.owner !== null) call.owner.settled()
  }
  if (pending.size === 0) keepAlive.unref()
}

binding.init(drain)

// Operation numbers understood by the addon's `redisEnqueue` (src/calls.rs):
// provider * 12 + strategy * 6 + action.
const REDIS = 0
const HYBRID = 12
const ABSOLUTE = 0
const SUPPRESSED = 6
const INC = 0
const CHECK = 1
const INC_WITH_QUOTA = 2
const GET = 3
const REFUND = 4
const RESET = 5

// What `hybridAbsoluteTry` / `hybridSuppressedTry` return when the call needs Redis.
const NEEDS_REDIS = -2

/** One limiter's asynchronous calls: refuses new ones once closing, and knows when it is idle. */
class Calls {
  inFlight = 0
  closing = false
  #whenIdle = []

  constructor(native) {
    this.native = native
    this.handle = native.handle
    this.windowSizeSeconds = native.windowSizeSeconds
  }

  /** A queued call of operation `op`; arguments are checked by the addon before it is queued. */
  call(op, key, rate, count) {
    if (this.closing) throw closedError()
    checkKey(key)
    const id = nextId++
    binding.redisEnqueue(this.handle, op, id, key, rate, count)
    return awaitResult(id, this)
  }

  settled() {
    if (--this.inFlight === 0) {
      for (const resolve of this.#whenIdle.splice(0)) resolve()
    }
  }

  idle() {
    return this.inFlight === 0 ? Promise.resolve() : new Promise((resolve) => this.#whenIdle.push(resolve))
  }

  /** Gives back hybrid leases and pushes pending counts; bounded by the command timeout. */
  flushHybrid() {
    const id = nextId++
    binding.closeEnqueue(this.handle, id)
    return awaitResult(id, this)
  }
}

/** Runs `call` as an async function: thrown errors become rejections. */
function promised(call) {
  try {
    return call()
  } catch (error) {
    return Promise.reject(error)
  }
}

// ---------------------------------------------------------------------------------------------
// Providers
// ---------------------------------------------------------------------------------------------

function localQuotaDecision(windowSizeSeconds, shape, numbers) {
  return {
    decision: shape(windowSizeSeconds, numbers[0]),
    limit: numbers[1],
    remaining: numbers[2],
    resetMs: numbers[3],
    degraded: false,
  }
}

// The native local quota calls write their numbers here (reused: read before the next call).
const localNumbers = new Float64Array(4)

function localQuota(numbers) {
  return { limit: numbers[0], remaining: numbers[1], resetMs: numbers[2] }
}

// Provider objects keep the native limiter alive: it releases its state when collected, and a
// caller may hold on to `rl.local.absolute` after dropping `rl`.
class LocalStrategy {
  #native
  #handle
  #strategy

  constructor(native, strategy) {
    this.#native = native
    this.#handle = native.handle
    this.#strategy = strategy
  }

  /** Like `inc`, and also returns the key's quota after the call. */
  incWithQuota(key, rate, count = 1) {
    checkInc(key, rate, count)
    checkKey(key)
    binding.localIncWithQuota(this.#handle, this.#strategy, key, rate, count, localNumbers)
    return this.#strategy === 0
      ? localQuotaDecision(this.#native.windowSizeSeconds, absoluteDecision, localNumbers)
      : localQuotaDecision(0, (_, encoded) => suppressedDecision(encoded), localNumbers)
  }

  /** The key's quota (for a key without state, from `rate`); records nothing. */
  get(key, rate) {
    checkKey(key)
    expect('number', 'rate', rate)
    binding.localGet(this.#handle, this.#strategy, key, rate, localNumbers)
    return localQuota(localNumbers)
  }

  /** Takes back up to `count` recorded units of `key`, newest first; returns how many. */
  refund(key, count) {
    checkKey(key)
    expect('number', 'count', count)
    return binding.localRefund(this.#handle, this.#strategy, key, count)
  }

  /** Forgets the key's state. */
  reset(key) {
    checkKey(key)
    binding.localReset(this.#handle, this.#strategy, key)
  }
}

class LocalAbsolute extends LocalStrategy {
  #handle
  #windowSizeSeconds

  constructor(native) {
    super(native, 0)
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
    checkKey(key)
    return absoluteDecision(this.#windowSizeSeconds, binding.localAbsoluteIsAllowed(this.#handle, key))
  }
}

class LocalSuppressed extends LocalStrategy {
  #handle

  constructor(native) {
    super(native, 1)
    this.#handle = native.handle
  }

  /** Records `count` as observed for `key` and decides whether to admit it. */
  inc(key, rate, count = 1) {
    checkInc(key, rate, count)
    return suppressedDecision(fast.localSuppressedInc(this.#handle, key, rate, count))
  }

  /** The key's current suppression factor in [0, 1] (0 for an unknown key). */
  getSuppressionFactor(key) {
    checkKey(key)
    return binding.localSuppressedFactor(this.#handle, key)
  }
}

/** The asynchronous methods both Redis-backed providers share, for one strategy. */
class RemoteStrategy {
  #calls
  #op

  constructor(calls, op) {
    this.#calls = calls
    this.#op = op
  }

  /** Like `inc`, and also returns the key's quota after the call, in the same round trip. */
  incWithQuota(key, rate, count = 1) {
    return promised(() => {
      checkInc(key, rate, count)
      return this.#calls.call(this.#op + INC_WITH_QUOTA, key, rate, count)
    })
  }

  /** The key's quota (for a key without state, from `rate`); records nothing. */
  get(key, rate) {
    return promised(() => {
      checkKey(key)
      expect('number', 'rate', rate)
      return this.#calls.call(this.#op + GET, key, rate, 0)
    })
  }

  /** Takes back up to `count` recorded units of `key`, newest first; resolves to how many. */
  refund(key, count) {
    return promised(() => {
      checkKey(key)
      expect('number', 'count', count)
      return this.#calls.call(this.#op + REFUND, key, 1, count)
    })
  }

  /** Forgets the key's state for every process sharing this Redis and prefix. */
  reset(key) {
    return promised(() => {
      checkKey(key)
      return this.#calls.call(this.#op + RESET, key, 1, 0)
    })
  }

  /** `inc` through Redis, one round trip. */
  remoteInc(key, rate, count) {
    return promised(() => {
      checkInc(key, rate, count)
      return this.#calls.call(this.#op + INC, key, rate, count)
    })
  }

  /** `isAllowed` / `getSuppressionFactor`. */
  check(key) {
    return promised(() => {
      checkKey(key)
      return this.#calls.call(this.#op + CHECK, key, 1, 0)
    })
  }
}

class RedisAbsolute extends RemoteStrategy {
  constructor(calls) {
    super(calls, REDIS + ABSOLUTE)
  }

  /** Records `count` for `key` unless that would exceed the window's capacity; exact across processes. */
  inc(key, rate, count = 1) {
    return this.remoteInc(key, rate, count)
  }

  /** Whether one more call would be admitted now; records nothing. */
  isAllowed(key) {
    return this.check(key)
  }
}

class RedisSuppressed extends RemoteStrategy {
  constructor(calls) {
    super(calls, REDIS + SUPPRESSED)
  }

  /** Records `count` as observed for `key` and decides whether to admit it. */
  inc(key, rate, count = 1) {
    return this.remoteInc(key, rate, count)
  }

  /** The key's current suppression factor in [0, 1] (0 for an unknown key). */
  getSuppressionFactor(key) {
    return this.check(key)
  }
}

/**
 * A hybrid inc: decided by `tryLocally` without I/O when the key's local state allows (an
 * already-settled Promise, no thread hop), else queued like a Redis call as `op`.
 */
function hybridInc(calls, tryLocally, op, shape, key, rate, count) {
  let encoded
  try {
    checkInc(key, rate, count)
    if (calls.closing) throw closedError()
    encoded = tryLocally(calls.handle, key, rate, count)
    if (encoded === NEEDS_REDIS) return calls.call(op, key, rate, count)
  } catch (error) {
    return Promise.reject(error)
  }
  return encoded < 0 ? SETTLED_ALLOWED : Promise.resolve(shape(encoded))
}

class HybridAbsolute extends RemoteStrategy {
  #calls
  #rejected

  constructor(calls) {
    super(calls, HYBRID + ABSOLUTE)
    this.#calls = calls
    const windowSizeSeconds = calls.windowSizeSeconds
    this.#rejected = (encoded) => absoluteDecision(windowSizeSeconds, encoded)
  }

  /**
   * Records `count` for `key` unless that would exceed the window's capacity. Served from the
   * key's local lease without I/O (an already-settled Promise) whenever the lease covers it.
   */
  inc(key, rate, count = 1) {
    return hybridInc(this.#calls, fast.hybridAbsoluteTry, HYBRID + ABSOLUTE + INC, this.#rejected, key, rate, count)
  }

  /** Whether one more call would be admitted now; records nothing. */
  isAllowed(key) {
    return this.check(key)
  }
}

class HybridSuppressed extends RemoteStrategy {
  #calls

  constructor(calls) {
    super(calls, HYBRID + SUPPRESSED)
    this.#calls = calls
  }

  /** Records `count` as observed for `key` and decides locally on the shared window totals. */
  inc(key, rate, count = 1) {
    return hybridInc(
      this.#calls,
      fast.hybridSuppressedTry,
      HYBRID + SUPPRESSED + INC,
      suppressedDecision,
      key,
      rate,
      count,
    )
  }

  /** The key's current suppression factor in [0, 1] (0 for an unknown key). */
  getSuppressionFactor(key) {
    return this.check(key)
  }
}

function notConfigured() {
  return trypemaError('TRYPEMA_REDIS_NOT_CONFIGURED', 'this rate limiter was built without Redis')
}

class RateLimiter {
  #native
  #calls
  #redis
  #hybrid
  #closed = null

  /**
   * Starts configuring a limiter: no argument for the local provider only, a Redis URL, or
   * connection options (`url` | `cluster` | `sentinel`, `tls`, timeouts, `onRedisError`).
   */
  static builder(connection) {
    return new RateLimiterBuilder(connection)
  }

  /** @internal use `RateLimiter.builder(...).build()` */
  constructor(native, hasRedis = false) {
    if (!(native instanceof NativeRateLimiter)) {
      throw new TypeError('use RateLimiter.builder(...).build() to create a RateLimiter')
    }
    this.#native = native
    this.#calls = hasRedis ? new Calls(native) : null
    const calls = this.#calls
    this.#redis = calls && Object.freeze({ absolute: new RedisAbsolute(calls), suppressed: new RedisSuppressed(calls) })
    this.#hybrid = calls && Object.freeze({ absolute: new HybridAbsolute(calls), suppressed: new HybridSuppressed(calls) })
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

  /** Counters of decisions, errors, degraded decisions, Redis round trips and hybrid leases. */
  metrics() {
    return binding.metrics(this.#native.handle)
  }

  /** The same counters in the Prometheus text exposition format. */
  metricsText() {
    return binding.metricsText(this.#native.handle)
  }

  /**
   * Refuses new calls, waits for the ones in flight, gives back unused hybrid leases and pushes
   * pending hybrid counts (each bounded by the command timeout), then releases everything.
   * Later calls fail with `TRYPEMA_CLOSED`.
   */
  close() {
    if (this.#closed === null) {
      const calls = this.#calls
      this.#closed = (async () => {
        if (calls !== null) {
          calls.closing = true
          await calls.idle()
          try {
            await calls.flushHybrid()
          } catch {
            // Redis is unreachable: the leases expire with their window; nothing to wait for.
          }
        }
        this.#native.close()
      })()
    }
    return this.#closed
  }
}

const CONNECTION_KEYS = new Set(['url', 'cluster', 'sentinel', 'tls', 'connectTimeoutMs', 'commandTimeoutMs', 'onRedisError'])
const POLICIES = new Set(['reject', 'allow', 'local'])
const SENTINEL_KEYS = new Set(['urls', 'masterName', 'username', 'password'])
const TLS_KEYS = new Set(['ca', 'cert', 'key'])

function onlyKeys(object, allowed, what) {
  for (const name of Object.keys(object)) {
    if (!allowed.has(name)) throw new TypeError(`unknown ${what} option ${JSON.stringify(name)}`)
  }
}

function pem(value, name) {
  if (value === undefined) return undefined
  if (typeof value === 'string') return value
  if (value instanceof Uint8Array) return Buffer.from(value.buffer, value.byteOffset, value.byteLength).toString('utf8')
  throw new TypeError(`tls.${name} must be a string or a Buffer / Uint8Array (PEM), got ${describe(value)}`)
}

function stringList(value, name) {
  if (!Array.isArray(value) || value.length === 0 || !value.every((item) => typeof item === 'string')) {
    throw new TypeError(`${name} must be a non-empty array of URL strings`)
  }
  return [...value]
}

/** Checks the connection argument of `RateLimiter.builder` and splits it into addon options. */
function connectionOptions(connection, options) {
  if (connection === undefined) return null
  if (typeof connection === 'string') return { url: connection }
  if (connection === null || typeof connection !== 'object' || Array.isArray(connection)) {
    throw new TypeError(`RateLimiter.builder takes nothing, a Redis URL or an options object, got ${describe(connection)}`)
  }
  onlyKeys(connection, CONNECTION_KEYS, 'connection')
  const targets = ['url', 'cluster', 'sentinel'].filter((name) => connection[name] !== undefined)
  if (targets.length !== 1) {
    throw new TypeError(`give exactly one of url, cluster and sentinel, got ${targets.length === 0 ? 'none' : targets.join(' and ')}`)
  }
  const out = {}
  if (connection.url !== undefined) {
    expect('string', 'url', connection.url)
    out.url = connection.url
  }
  if (connection.cluster !== undefined) out.cluster = stringList(connection.cluster, 'cluster')
  if (connection.sentinel !== undefined) {
    const sentinel = connection.sentinel
    if (sentinel === null || typeof sentinel !== 'object') throw new TypeError('sentinel must be { urls, masterName }')
    onlyKeys(sentinel, SENTINEL_KEYS, 'sentinel')
    out.sentinelUrls = stringList(sentinel.urls, 'sentinel.urls')
    expect('string', 'sentinel.masterName', sentinel.masterName)
    out.sentinelMasterName = sentinel.masterName
    for (const [name, field] of [['username', 'sentinelUsername'], ['password', 'sentinelPassword']]) {
      if (sentinel[name] !== undefined) {
        expect('string', `sentinel.${name}`, sentinel[name])
        out[field] = sentinel[name]
      }
    }
  }
  if (connection.tls !== undefined) {
    const tls = connection.tls
    if (tls === null || typeof tls !== 'object') throw new TypeError('tls must be { ca?, cert?, key? }')
    onlyKeys(tls, TLS_KEYS, 'tls')
    out.tlsCa = pem(tls.ca, 'ca')
    out.tlsCert = pem(tls.cert, 'cert')
    out.tlsKey = pem(tls.key, 'key')
    if ((out.tlsCert === undefined) !== (out.tlsKey === undefined)) {
      throw new TypeError('tls.cert and tls.key must be given together')
    }
  }
  for (const name of ['connectTimeoutMs', 'commandTimeoutMs']) {
    if (connection[name] !== undefined) {
      expect('number', name, connection[name])
      out[name] = connection[name]
    }
  }
  if (connection.commandTimeoutMs !== undefined) options.commandTimeoutMs = connection.commandTimeoutMs
  if (connection.onRedisError !== undefined) {
    if (!POLICIES.has(connection.onRedisError)) {
      throw new TypeError(`onRedisError must be 'reject', 'allow' or 'local', got ${JSON.stringify(connection.onRedisError)}`)
    }
    options.onRedisError = connection.onRedisError
  }
  return out
}

class RateLimiterBuilder {
  #options = {}
  #connection = null

  constructor(connection) {
    this.#connection = connectionOptions(connection, this.#options)
  }

  #number(name, value) {
    expect('number', name, value)
    this.#options[name] = value
    return this
  }

  /** Sliding window length in seconds (whole number from 1 to 10^9, default 10). */
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

  /** Idle time after which a key's local state is dropped (whole ms ≥ the window, default: the window). */
  staleAfterMs(value) {
    return this.#number('staleAfterMs', value)
  }

  /** How long one Redis round trip may take before the call fails (whole ms ≥ 1, default 2000). */
  commandTimeoutMs(value) {
    if (this.#connection !== null) this.#connection.commandTimeoutMs = value
    return this.#number('commandTimeoutMs', value)
  }

  /** What Redis-backed calls do while Redis is unreachable: 'reject' (default), 'allow' or 'local'. */
  onRedisError(policy) {
    if (!POLICIES.has(policy)) {
      throw new TypeError(`onRedisError must be 'reject', 'allow' or 'local', got ${JSON.stringify(policy)}`)
    }
    this.#options.onRedisError = policy
    return this
  }

  /** Under onRedisError 'local', the share of each rate this process allows alone (0 < f ≤ 1). */
  localRateFactor(value) {
    return this.#number('localRateFactor', value)
  }

  /** First part of every Redis key (1–255 bytes, no `:`; default `trypema`). */
  redisPrefix(value) {
    expect('string', 'redisPrefix', value)
    this.#options.redisPrefix = value
    return this
  }

  /**
   * Validates every setting and creates the limiter. With Redis, also connects and verifies
   * the connection, the credentials and the commands the scripts need, within the connect
   * timeout plus one command timeout.
   */
  async build() {
    const options = { ...this.#options }
    if (this.#connection === null) {
      return new RateLimiter(NativeRateLimiter.createLocal(options))
    }
    const id = nextId++
    binding.redisBuild(id, options, { ...this.#connection })
    await awaitResult(id, null)
    return new RateLimiter(NativeRateLimiter.adopt(id), true)
  }
}

module.exports = { RateLimiter, RateLimiterBuilder }
