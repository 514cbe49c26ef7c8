'use strict'

// `trypema/express-rate-limit`: a Store for express-rate-limit (v7 and v8) that counts in a
// trypema limiter's sliding window: `redis` (shared, one round trip per hit), `hybrid` (shared,
// mostly served from local leases) or `local` (in-process).
//
// express-rate-limit counts every hit and decides itself (`totalHits > limit`), so the store must
// record every hit, over the limit too, and return the count in the window. trypema's absolute
// strategy records unless the capacity is reached; with a rate whose capacity is the largest
// trypema counts (2^53 − 1 per window) it can never be reached, so `incWithQuota` records every
// hit and returns, in the same call (one Redis round trip), the count in the window
// (`limit − remaining`) and when its oldest hit leaves the window (`resetMs`). The store's
// keys are prefixed so that this huge rate never meets a key limited at a real rate (the first
// call that creates a key's state fixes its rate).

const { safeKey } = require('./adapter-core.js')

const PROVIDERS = ['redis', 'hybrid', 'local']
const KNOWN_OPTIONS = new Set(['limiter', 'provider', 'prefix'])

function describe(value) {
  if (value === null) return 'null'
  if (typeof value === 'string') return `the string ${JSON.stringify(value)}`
  if (typeof value === 'number') return `the number ${value}`
  return typeof value
}

function storeError(code, message) {
  const error = new Error(message)
  error.code = code
  return error
}

class TrypemaStore {
  /** The strategy object the store counts with (`limiter[provider].absolute`). */
  #counter
  /** A rate whose capacity, `floor(window × rate)`, is beyond what can be reached. */
  #rate
  #windowMs
  /** Set by `init` when express-rate-limit's window differs from the limiter's: every call fails with it. */
  #misconfigured = null

  /**
   * @param {{ limiter: import('./index').RateLimiter, provider?: 'redis' | 'hybrid' | 'local', prefix?: string }} options
   */
  constructor(options) {
    if (options === null || typeof options !== 'object') {
      throw new TypeError(`TrypemaStore: options must be an object, got ${describe(options)}`)
    }
    for (const name of Object.keys(options)) {
      if (!KNOWN_OPTIONS.has(name)) throw new TypeError(`TrypemaStore: unknown option \`${name}\``)
    }
    const { limiter, provider = 'redis', prefix = 'erl/' } = options
    if (limiter === null || typeof limiter !== 'object') {
      throw new TypeError(`TrypemaStore: \`limiter\` must be a RateLimiter, got ${describe(limiter)}`)
    }
    if (!PROVIDERS.includes(provider)) {
      throw new TypeError(`TrypemaStore: \`provider\` must be 'redis', 'hybrid' or 'local', got ${describe(provider)}`)
    }
    if (typeof prefix !== 'string') throw new TypeError(`TrypemaStore: \`prefix\` must be a string, got ${describe(prefix)}`)
    let counter
    try {
      counter = limiter[provider].absolute
    } catch (error) {
      if (error && error.code === 'TRYPEMA_REDIS_NOT_CONFIGURED') {
        throw new TypeError(`TrypemaStore: provider '${provider}' needs a limiter built with a Redis URL (RateLimiter.builder(url))`)
      }
      throw error
    }
    const window = limiter.windowSizeSeconds
    if (counter == null || typeof counter.incWithQuota !== 'function' || !Number.isSafeInteger(window) || window < 1) {
      throw new TypeError('TrypemaStore: `limiter` must be a trypema RateLimiter (from `await RateLimiter.builder(...).build()`)')
    }
    this.#counter = counter
    this.#windowMs = window * 1000
    this.#rate = Number.MAX_SAFE_INTEGER / window
    /** The limiter's window in milliseconds: express-rate-limit's `windowMs` must be the same. */
    Object.defineProperty(this, 'windowMs', { value: this.#windowMs, enumerable: true })
    /**
     * Prepended to every key (express-rate-limit also uses it to tell stores apart in its
     * double-count check). Give each store on one limiter its own prefix when they must not
     * share counts.
     */
    this.prefix = prefix
    /** Only the `local` provider's counts stay in this process. */
    this.localKeys = provider === 'local'
    this.provider = provider
  }

  /**
   * Called by express-rate-limit with its options. Its `windowMs` must be the limiter's window:
   * a trypema limiter has one window, so use one limiter per window length.
   */
  init(options) {
    const windowMs = options == null ? undefined : options.windowMs
    if (windowMs !== undefined && windowMs !== this.#windowMs) {
      this.#misconfigured = storeError(
        'TRYPEMA_STORE_WINDOW_MISMATCH',
        `TrypemaStore: express-rate-limit's windowMs is ${windowMs} but the trypema limiter's window is ` +
          `${this.#windowMs} ms (windowSizeSeconds ${this.#windowMs / 1000}); build a limiter with that window, ` +
          'or set windowMs to match',
      )
      throw this.#misconfigured
    }
  }

  #key(key) {
    if (this.#misconfigured !== null) throw this.#misconfigured
    return safeKey(this.prefix + String(key))
  }

  #info(quota, recorded, now) {
    let totalHits = quota.limit - quota.remaining
    // A hit the limiter did not record (only if the key's state was created at a real rate, or
    // under `onRedisError: 'allow'` while Redis is down) still counts for express-rate-limit.
    if (!recorded) totalHits += 1
    return {
      totalHits: Math.max(1, totalHits),
      // A hit made now leaves the window W·1000 + 1 ms later (a bucket counts while its start
      // is at most W·1000 ms old); reported as at most the window, as trypema/express does, so
      // express-rate-limit never rounds it up to a reset one second longer than its window.
      resetTime: new Date(now + (quota.resetMs > 0 ? Math.min(quota.resetMs, this.#windowMs) : this.#windowMs)),
    }
  }

  #counted(quota, now) {
    const recorded = quota.decision.kind === 'allowed' && quota.degraded !== true
    return this.#info(quota, recorded, now)
  }

  /**
   * Records one hit and returns the hits in the window (this one included) and when the oldest
   * of them leaves it. One limiter call: for `redis`, one Redis round trip.
   */
  increment(key) {
    const now = Date.now()
    if (this.localKeys) {
      return this.#counted(this.#counter.incWithQuota(this.#key(key), this.#rate, 1), now)
    }
    let pending
    try {
      pending = this.#counter.incWithQuota(this.#key(key), this.#rate, 1)
    } catch (error) {
      return Promise.reject(error)
    }
    return pending.then((quota) => this.#counted(quota, now))
  }

  /** Takes back one hit of `key` (the newest). */
  decrement(key) {
    if (this.localKeys) {
      this.#counter.refund(this.#key(key), 1)
      return undefined
    }
    try {
      return this.#counter.refund(this.#key(key), 1).then(() => undefined)
    } catch (error) {
      return Promise.reject(error)
    }
  }

  /** Forgets `key`'s hits (for Redis-backed providers: in every process sharing the limiter's Redis and prefix). */
  resetKey(key) {
    if (this.localKeys) {
      this.#counter.reset(this.#key(key))
      return undefined
    }
    try {
      return this.#counter.reset(this.#key(key))
    } catch (error) {
      return Promise.reject(error)
    }
  }

  /** The hits of `key` in the window and when the oldest leaves it, or `undefined` without hits. Records nothing. */
  get(key) {
    const now = Date.now()
    const shape = (quota) => (quota.limit - quota.remaining > 0 ? this.#info(quota, true, now) : undefined)
    if (this.localKeys) return shape(this.#counter.get(this.#key(key), this.#rate))
    let pending
    try {
      pending = this.#counter.get(this.#key(key), this.#rate)
    } catch (error) {
      return Promise.reject(error)
    }
    return pending.then(shape)
  }

  // No `resetAll`: forgetting every key would mean scanning Redis (KEYS / SCAN), which trypema
  // never does. express-rate-limit treats a missing resetAll as "not supported".
}

module.exports = { TrypemaStore }
