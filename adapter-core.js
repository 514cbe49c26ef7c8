'use strict'

// Shared engine of trypema's HTTP adapters (`trypema/express`, `trypema/fastify`): option
// checking, the request pipeline (skip → key → rate → cost → one `incWithQuota` call), the
// response headers and `req.rateLimit`, the onError paths and skipFailed/SuccessfulRequests.
// Not a public entry point: the adapters supply a small `host` object that knows how to set
// headers and send a response in their framework.

const crypto = require('node:crypto')
const net = require('node:net')

// ---------------------------------------------------------------------------------------------
// Keys
// ---------------------------------------------------------------------------------------------

/** Value of a hex digit's char code, or -1. */
function hexValue(code) {
  if (code >= 48 && code <= 57) return code - 48 // 0-9
  if (code >= 97 && code <= 102) return code - 87 // a-f
  if (code >= 65 && code <= 70) return code - 55 // A-F
  return -1
}

/**
 * Parses an IPv6 address (optionally with a dotted IPv4 tail and a `%zone`) into eight 16-bit
 * groups, or returns null if it is not one. A single pass over the characters: this runs for
 * every request from an IPv6 client.
 */
function ipv6Groups(address) {
  const zone = address.indexOf('%')
  const text = zone === -1 ? address : address.slice(0, zone)
  const n = text.length
  const groups = []
  let compressAt = -1
  let i = 0
  if (n >= 2 && text.charCodeAt(0) === 58 && text.charCodeAt(1) === 58) {
    compressAt = 0
    i = 2
  }
  while (i < n) {
    const start = i
    let value = 0
    let digit
    while (i < n && (digit = hexValue(text.charCodeAt(i))) !== -1) {
      value = value * 16 + digit
      i++
    }
    if (i < n && text.charCodeAt(i) === 46) {
      // A dotted IPv4 tail: the last 32 bits.
      const tail = text.slice(start)
      if (!net.isIPv4(tail) || groups.length > 6) return null
      const octets = tail.split('.')
      groups.push((Number(octets[0]) << 8) | Number(octets[1]), (Number(octets[2]) << 8) | Number(octets[3]))
      i = n
      break
    }
    if (i === start || i - start > 4 || groups.length === 8) return null
    groups.push(value)
    if (i === n) break
    if (text.charCodeAt(i) !== 58) return null
    i++
    if (i < n && text.charCodeAt(i) === 58) {
      if (compressAt !== -1) return null
      compressAt = groups.length
      i++
    } else if (i === n) {
      return null // a single trailing ':'
    }
  }
  if (compressAt === -1) return groups.length === 8 ? groups : null
  if (groups.length > 7) return null
  const zeros = new Array(8 - groups.length).fill(0)
  groups.splice(compressAt, 0, ...zeros)
  return groups
}

/** The /56 prefix of eight groups in RFC 5952 form, e.g. `2001:db8:1234:5600::/56`. */
function prefix56(groups) {
  // Groups 4–7 are zero, so the trailing zero run (at least four groups) is always the longest
  // one and is what `::` stands for; any earlier run is at most three groups and stays written.
  const kept = [groups[0], groups[1], groups[2], groups[3] & 0xff00]
  let end = 4
  while (end > 0 && kept[end - 1] === 0) end--
  let text = ''
  for (let i = 0; i < end; i++) text += (i === 0 ? '' : ':') + kept[i].toString(16)
  return `${text}::/56`
}

/**
 * The client's address as a rate-limit key: `req.ip` (which honours Express's `trust proxy`
 * setting), else `req.socket.remoteAddress`.
 * - IPv4 addresses are used as they are; IPv4-mapped IPv6 (`::ffff:1.2.3.4`) becomes the IPv4.
 * - Other IPv6 addresses are grouped by their /56 prefix (`2001:db8:1234:5600::/56`), because
 *   one subscriber usually holds a whole /56 (or /64) and could otherwise rotate addresses.
 * The result may contain ':'; the middleware passes every key through `safeKey`.
 */
function defaultKey(req) {
  let address = req == null ? undefined : req.ip
  if (typeof address !== 'string' || address === '') {
    const socket = req == null ? undefined : req.socket
    address = socket == null ? undefined : socket.remoteAddress
  }
  if (typeof address !== 'string' || address === '') {
    const error = new Error('the client address is unknown (no req.ip and no req.socket.remoteAddress)')
    error.code = 'TRYPEMA_EXPRESS_NO_CLIENT_ADDRESS'
    throw error
  }
  if (address.indexOf(':') === -1) return address // IPv4, or not an IP address: used as it is
  const groups = ipv6Groups(address)
  if (groups === null) return address // not an IP address (a custom `req.ip`): used as it is
  if (groups[0] === 0 && groups[1] === 0 && groups[2] === 0 && groups[3] === 0 && groups[4] === 0 && groups[5] === 0xffff) {
    return `${groups[6] >> 8}.${groups[6] & 0xff}.${groups[7] >> 8}.${groups[7] & 0xff}`
  }
  return prefix56(groups)
}

// Characters that `safeKey` has to rewrite: the escape character itself, ':' (not allowed in
// Redis keys) and UTF-16 surrogates (only lone ones are rewritten: they have no UTF-8 form and
// would all turn into U+FFFD, merging distinct keys).
const NEEDS_ESCAPING = /[%:\uD800-\uDFFF]/
const ESCAPES = /%|:|[\uD800-\uDBFF][\uDC00-\uDFFF]|[\uD800-\uDFFF]/g

function escape(match) {
  if (match === '%') return '%25'
  if (match === ':') return '%3A'
  if (match.length === 2) return match // a valid surrogate pair
  return `%u${match.charCodeAt(0).toString(16).toUpperCase()}`
}

/**
 * Maps any string to a valid Redis key (1–255 UTF-8 bytes, no ':'), injectively:
 * - keys that are already valid and contain no '%' are returned unchanged;
 * - '%' becomes '%25', ':' becomes '%3A' and a lone surrogate becomes '%uXXXX';
 * - the empty key becomes '%00';
 * - a result longer than 255 bytes becomes '%h' + its SHA-256 in hex (66 bytes).
 * The three forms cannot collide: an escaped key only has '%' before '25', '3A' or 'u'.
 */
function safeKey(key) {
  if (typeof key !== 'string') throw new TypeError(`key must be a string, got ${describe(key)}`)
  const escaped = NEEDS_ESCAPING.test(key) ? key.replace(ESCAPES, escape) : key
  if (escaped.length === 0) return '%00'
  // Each UTF-16 unit takes at most 3 bytes, so only long strings need measuring.
  if (escaped.length > 85 && Buffer.byteLength(escaped, 'utf8') > 255) {
    return `%h${crypto.createHash('sha256').update(escaped, 'utf8').digest('hex')}`
  }
  return escaped
}

// ---------------------------------------------------------------------------------------------
// Options
// ---------------------------------------------------------------------------------------------

function describe(value) {
  if (value === null) return 'null'
  if (Array.isArray(value)) return 'an array'
  if (typeof value === 'number') return `the number ${value}`
  if (typeof value === 'string') return `the string ${JSON.stringify(value)}`
  return typeof value
}

/** The largest capacity trypema counts exactly (the core caps `floor(window × rate)` there). */
const MAX_CAPACITY = Number.MAX_SAFE_INTEGER
/** The longest delay `setTimeout` honours; larger values are turned into 1 ms by Node. */
const MAX_TIMEOUT_MS = 2 ** 31 - 1

const KNOWN_OPTIONS = new Set([
  'limiter',
  'provider',
  'strategy',
  'rate',
  'key',
  'cost',
  'skip',
  'onError',
  'suppressedStatus',
  'legacyHeaders',
  'standardHeaders',
  'windowSizeSeconds',
  'policyName',
  'timeoutMs',
  'skipFailedRequests',
  'skipSuccessfulRequests',
  'requestPropertyName',
])

const PROVIDERS = ['redis', 'hybrid', 'local']
const STRATEGIES = ['absolute', 'suppressed']

const isPositiveFinite = (value) => typeof value === 'number' && Number.isFinite(value) && value > 0
const isCount = (value) => Number.isSafeInteger(value) && value >= 0

function codedError(code, message, Type = Error) {
  const error = new Type(message)
  error.code = code
  return error
}

/** A structured-field string (RFC 8941 §3.3.3): printable ASCII, with '"' and '\' escaped. */
function sfString(text) {
  return `"${text.replace(/[\\"]/g, '\\$&')}"`
}

/**
 * The window of `limiter`: its `windowSizeSeconds` property when it has one, else read from a
 * rejection of the local provider. A local absolute `inc` with a rate so small that the
 * capacity is 0 is always rejected, records nothing, does no I/O, and the rejection carries the
 * window. The probe key contains ':', which `safeKey` never produces, so it cannot meet a real key.
 */
function windowOf(limiter) {
  try {
    const own = limiter.windowSizeSeconds
    if (Number.isSafeInteger(own) && own >= 1) return own
    const decision = limiter.local.absolute.inc('trypema:express:window-probe', 1e-12, 1)
    const seconds = decision && decision.kind === 'rejected' ? decision.windowSizeSeconds : undefined
    if (Number.isSafeInteger(seconds) && seconds >= 1) return seconds
  } catch {
    // not a full trypema limiter (or a closed one): fall back to the option
  }
  return undefined
}

/** Why `rate` cannot be used with a window of `windowSeconds` (unknown: undefined), or null. */
function rateProblem(rate, windowSeconds) {
  if (!isPositiveFinite(rate)) return 'a finite number > 0'
  const capacity = Math.floor((windowSeconds === undefined ? 1 : windowSeconds) * rate)
  if (!(capacity <= MAX_CAPACITY)) {
    return `at most ${MAX_CAPACITY} / window (${windowSeconds === undefined ? 'the window' : `${windowSeconds} s`} × rate = ${capacity} is more than trypema can count)`
  }
  return null
}

/**
 * Checks `options` and returns the normalised configuration. `fn` names the function in error
 * messages (`rateLimit`, `trypemaRateLimit`).
 */
function validate(options, fn) {
  const optionError = (name, expected, value) =>
    new TypeError(`${fn}: \`${name}\` must be ${expected}, got ${describe(value)}`)
  if (options === null || typeof options !== 'object') {
    throw new TypeError(`${fn}: options must be an object, got ${describe(options)}`)
  }
  for (const name of Object.keys(options)) {
    if (!KNOWN_OPTIONS.has(name)) throw new TypeError(`${fn}: unknown option \`${name}\``)
  }
  const {
    limiter,
    provider,
    strategy,
    rate,
    key = defaultKey,
    cost = 1,
    skip,
    onError = 'allow',
    suppressedStatus = 429,
    legacyHeaders = false,
    standardHeaders = true,
    windowSizeSeconds,
    policyName = 'default',
    timeoutMs,
    skipFailedRequests = false,
    skipSuccessfulRequests = false,
    requestPropertyName = 'rateLimit',
  } = options

  if (limiter === null || typeof limiter !== 'object') {
    throw optionError('limiter', 'a RateLimiter (from `await RateLimiter.builder(...).build()`)', limiter)
  }
  if (!PROVIDERS.includes(provider)) throw optionError('provider', "'redis', 'hybrid' or 'local'", provider)
  if (!STRATEGIES.includes(strategy)) throw optionError('strategy', "'absolute' or 'suppressed'", strategy)
  if (typeof rate !== 'function' && !isPositiveFinite(rate)) {
    throw optionError('rate', 'a finite number > 0 or a function returning one', rate)
  }
  if (typeof key !== 'function') throw optionError('key', 'a function', key)
  if (typeof cost !== 'function' && !isCount(cost)) {
    throw optionError('cost', 'a whole number ≥ 0 or a function returning one', cost)
  }
  if (skip !== undefined && typeof skip !== 'function') throw optionError('skip', 'a function', skip)
  if (onError !== 'allow' && onError !== 'deny' && typeof onError !== 'function') {
    throw optionError('onError', "'allow', 'deny' or a function", onError)
  }
  if (suppressedStatus !== 429 && suppressedStatus !== 503) {
    throw optionError('suppressedStatus', '429 or 503', suppressedStatus)
  }
  if (typeof legacyHeaders !== 'boolean') throw optionError('legacyHeaders', 'a boolean', legacyHeaders)
  if (typeof standardHeaders !== 'boolean') throw optionError('standardHeaders', 'a boolean', standardHeaders)
  if (windowSizeSeconds !== undefined && !(Number.isSafeInteger(windowSizeSeconds) && windowSizeSeconds >= 1)) {
    throw optionError('windowSizeSeconds', 'a whole number ≥ 1', windowSizeSeconds)
  }
  if (typeof policyName !== 'string' || !/^[\x20-\x7e]{1,256}$/.test(policyName)) {
    throw optionError('policyName', 'a non-empty string of printable ASCII (at most 256 characters)', policyName)
  }
  if (timeoutMs !== undefined && !(Number.isSafeInteger(timeoutMs) && timeoutMs >= 1 && timeoutMs <= MAX_TIMEOUT_MS)) {
    throw optionError('timeoutMs', `a whole number of milliseconds from 1 to ${MAX_TIMEOUT_MS} (2^31 − 1)`, timeoutMs)
  }
  if (typeof skipFailedRequests !== 'boolean') throw optionError('skipFailedRequests', 'a boolean', skipFailedRequests)
  if (typeof skipSuccessfulRequests !== 'boolean') {
    throw optionError('skipSuccessfulRequests', 'a boolean', skipSuccessfulRequests)
  }
  if (requestPropertyName !== false && (typeof requestPropertyName !== 'string' || requestPropertyName === '')) {
    throw optionError('requestPropertyName', 'a non-empty string or false', requestPropertyName)
  }

  // The provider is looked up now, so a limiter without Redis (or a provider this version does
  // not have) is reported when the app starts rather than on every request.
  let providerObject
  try {
    providerObject = limiter[provider]
  } catch (error) {
    if (error && error.code === 'TRYPEMA_REDIS_NOT_CONFIGURED') {
      throw new TypeError(
        `${fn}: provider '${provider}' needs a limiter built with a Redis URL (RateLimiter.builder(url))`,
      )
    }
    throw error
  }
  const strategyObject = providerObject == null ? undefined : providerObject[strategy]
  if (strategyObject == null || typeof strategyObject.incWithQuota !== 'function') {
    throw optionError('limiter', `an object with \`${provider}.${strategy}.incWithQuota()\``, limiter)
  }
  if ((skipFailedRequests || skipSuccessfulRequests) && typeof strategyObject.refund !== 'function') {
    throw optionError('limiter', `an object with \`${provider}.${strategy}.refund()\` (skipFailedRequests / skipSuccessfulRequests)`, limiter)
  }

  const known = windowOf(limiter)
  if (known !== undefined && windowSizeSeconds !== undefined && known !== windowSizeSeconds) {
    throw new TypeError(`${fn}: \`windowSizeSeconds\` is ${windowSizeSeconds} but the limiter's window is ${known} s`)
  }
  const windowSeconds = known !== undefined ? known : windowSizeSeconds
  if (typeof rate !== 'function') {
    const problem = rateProblem(rate, windowSeconds)
    if (problem !== null) throw optionError('rate', problem, rate)
  }

  return {
    strategyObject,
    isLocal: provider === 'local',
    rate,
    key,
    cost,
    skip,
    onError,
    suppressedStatus,
    legacyHeaders,
    standardHeaders,
    windowSeconds,
    policyName: sfString(policyName),
    timeoutMs,
    skipFailedRequests,
    skipSuccessfulRequests,
    requestPropertyName,
  }
}

// ---------------------------------------------------------------------------------------------
// The request pipeline
// ---------------------------------------------------------------------------------------------

function formatFactor(factor) {
  return String(Math.round(factor * 10000) / 10000)
}

/** Objects and functions may be thenables: they are resolved like `await` would. */
const mayBeThenable = (value) => value !== null && (typeof value === 'object' || typeof value === 'function')

function noop() {}

/**
 * Builds the request handler of an adapter.
 *
 * `host` tells the engine how to talk to the framework:
 * - `getHeader(res, name)`, `setHeader(res, name, value)`;
 * - `send(res, status, body)`: answer with a JSON body (the headers set so far go with it);
 * - `raw(res)`: Node's `ServerResponse` behind `res` (for `skipFailedRequests` and friends).
 *
 * The handler is `(req, res, next)`: `next()` lets the request through, `next(error)` hands an
 * error to the framework (only ever called by a user `onError` handler).
 */
function createHandler(options, fn, host) {
  const config = validate(options, fn)
  const {
    strategyObject,
    isLocal,
    key: keyOf,
    skip,
    onError,
    suppressedStatus,
    legacyHeaders,
    standardHeaders,
    policyName,
    timeoutMs,
    skipFailedRequests,
    skipSuccessfulRequests,
    requestPropertyName,
  } = config
  const rateOption = config.rate
  const costOption = config.cost
  const rateIsFunction = typeof rateOption === 'function'
  const costIsFunction = typeof costOption === 'function'
  const watchOutcome = skipFailedRequests || skipSuccessfulRequests
  let windowSeconds = config.windowSeconds

  /** Per request: where it is in the pipeline, and whether it has been answered or let through. */
  class Flow {
    constructor(req, res, next) {
      this.req = req
      this.res = res
      this.next = next
      this.key = ''
      this.keyText = ''
      this.rate = rateOption
      this.cost = costOption
      this.done = false
      this.timer = undefined
    }
  }

  function settle(flow) {
    flow.done = true
    if (flow.timer !== undefined) clearTimeout(flow.timer)
  }

  /** Lets the request through (skipped, or allowed). */
  function pass(flow) {
    settle(flow)
    flow.next()
  }

  /** The onError path. At most once per request; later failures (a late timeout) are dropped. */
  function fail(flow, error) {
    if (flow.done) return
    settle(flow)
    const { req, res, next } = flow
    if (onError === 'allow') return next()
    if (onError === 'deny') {
      return host.send(res, 503, { error: 'Service Unavailable', message: 'the rate limiter is unavailable' })
    }
    // A user handler: make sure it cannot hang the request or call `next` twice.
    let called = false
    const once = (arg) => {
      if (called) return
      called = true
      next(arg)
    }
    try {
      const result = onError(error, req, res, once)
      if (mayBeThenable(result)) Promise.resolve(result).then(undefined, (handlerError) => once(handlerError))
    } catch (handlerError) {
      once(handlerError)
    }
  }

  function onTimeout(flow) {
    flow.timer = undefined
    fail(flow, codedError('TRYPEMA_EXPRESS_TIMEOUT', `the rate limiter did not answer within ${timeoutMs} ms`))
  }

  /**
   * Continues with `then(flow, value)` once `value` has settled (resolved like `await`: a throwing
   * `then` getter, a rejection or a throw inside `then` take the onError path).
   */
  function wait(flow, value, then) {
    try {
      Promise.resolve(value).then(
        (settled) => {
          if (!flow.done) then(flow, settled)
        },
        (error) => fail(flow, error),
      )
    } catch (error) {
      fail(flow, error)
    }
  }

  /** Runs `callback(req)`, then `then(flow, result)`, synchronously unless the result is thenable. */
  function step(flow, callback, then) {
    let value
    try {
      value = callback(flow.req)
    } catch (error) {
      return fail(flow, error)
    }
    if (mayBeThenable(value)) return wait(flow, value, then)
    then(flow, value)
  }

  function afterSkip(flow, skipped) {
    if (skipped) return pass(flow)
    step(flow, keyOf, afterKey)
  }

  function afterKey(flow, rawKey) {
    let keyText
    if (typeof rawKey === 'string') keyText = rawKey
    else if ((typeof rawKey === 'number' && Number.isFinite(rawKey)) || typeof rawKey === 'bigint') keyText = String(rawKey)
    else {
      return fail(
        flow,
        codedError('TRYPEMA_EXPRESS_INVALID_KEY', `${fn}: \`key(req)\` must return a string, got ${describe(rawKey)}`, TypeError),
      )
    }
    try {
      flow.key = safeKey(keyText)
    } catch (error) {
      return fail(flow, error)
    }
    flow.keyText = keyText
    if (rateIsFunction) step(flow, rateOption, afterRate)
    else if (costIsFunction) step(flow, costOption, afterCost)
    else call(flow)
  }

  function afterRate(flow, rate) {
    const problem = rateProblem(rate, windowSeconds)
    if (problem !== null) {
      return fail(
        flow,
        codedError('TRYPEMA_EXPRESS_INVALID_RATE', `${fn}: \`rate(req)\` must return ${problem}, got ${describe(rate)}`, TypeError),
      )
    }
    flow.rate = rate
    if (costIsFunction) step(flow, costOption, afterCost)
    else call(flow)
  }

  function afterCost(flow, cost) {
    if (!isCount(cost)) {
      return fail(
        flow,
        codedError('TRYPEMA_EXPRESS_INVALID_COST', `${fn}: \`cost(req)\` must return a whole number ≥ 0, got ${describe(cost)}`, TypeError),
      )
    }
    flow.cost = cost
    call(flow)
  }

  /** The one limiter call of the request. */
  function call(flow) {
    let pending
    try {
      pending = strategyObject.incWithQuota(flow.key, flow.rate, flow.cost)
    } catch (error) {
      return fail(flow, error)
    }
    // The local provider answers synchronously; Redis-backed ones with a Promise.
    if (isLocal && !(pending instanceof Promise)) return respond(flow, pending)
    wait(flow, pending, respond)
  }

  function appendHeader(res, name, value) {
    const previous = host.getHeader(res, name)
    host.setHeader(res, name, previous === undefined || previous === '' ? value : `${previous}, ${value}`)
  }

  /** Applies a quota decision: headers and `req.rateLimit`, then `next()` or the limited response. */
  function respond(flow, quota) {
    const { req, res } = flow
    let status = 0
    let body
    let counted = false
    try {
      const decision = quota.decision
      const kind = decision.kind
      const now = Date.now()
      let retryAfter = 0 // seconds, for limited and suppressed responses
      let factorHeader
      if (kind === 'allowed') {
        counted = true
      } else if (kind === 'rejected') {
        const learned = decision.windowSizeSeconds
        if (windowSeconds === undefined && Number.isSafeInteger(learned) && learned >= 1) windowSeconds = learned
        retryAfter = Math.max(1, Math.ceil(decision.retryAfterMs / 1000))
        if (!Number.isFinite(retryAfter)) retryAfter = windowSeconds === undefined ? 1 : windowSeconds
        status = 429
        body = { error: 'Too Many Requests', retryAfterSeconds: retryAfter }
      } else if (kind === 'suppressed') {
        const factor = decision.suppressionFactor
        retryAfter = 1
        if (decision.isAllowed === true) {
          counted = true
          factorHeader = formatFactor(factor)
        } else {
          status = suppressedStatus
          body = {
            error: status === 429 ? 'Too Many Requests' : 'Service Unavailable',
            retryAfterSeconds: 1,
            suppressionFactor: factor,
          }
        }
      } else {
        throw codedError('TRYPEMA_EXPRESS_UNEXPECTED_DECISION', `unexpected decision ${JSON.stringify(decision)}`)
      }
      const limit = Math.floor(quota.limit)
      const left = quota.remaining
      if (!(limit >= 0 && Number.isSafeInteger(limit) && Number.isSafeInteger(left) && left >= 0)) {
        throw codedError('TRYPEMA_EXPRESS_UNEXPECTED_DECISION', `unexpected quota ${JSON.stringify(quota)}`)
      }

      // `r` and `t`: what is left and when quota frees up. Once limited (or shedding), today's
      // answer: nothing left, come back after Retry-After (1 s while shedding).
      let remaining
      let resetMs
      if (kind === 'allowed') {
        remaining = left
        resetMs = quota.resetMs > 0 ? quota.resetMs : 0
        // Counted units always leave at some point: a reset of 0 with units counted (what the
        // hybrid suppressed strategy reports today) is read as "at most a window from now".
        if (resetMs === 0 && left < limit && windowSeconds !== undefined) resetMs = windowSeconds * 1000
        // Hybrid leases are recorded from their end, so a reset may lie up to a lease beyond
        // the window; `t` never says more than `w`.
        if (windowSeconds !== undefined && resetMs > windowSeconds * 1000) resetMs = windowSeconds * 1000
      } else {
        remaining = kind === 'suppressed' && counted ? left : 0
        resetMs = retryAfter * 1000
      }
      const resetSeconds = Math.ceil(resetMs / 1000)

      if (requestPropertyName !== false) {
        req[requestPropertyName] = {
          limit,
          used: Math.max(0, limit - left),
          remaining,
          resetTime: new Date(now + resetMs),
          key: flow.keyText,
        }
      }
      if (standardHeaders) {
        if (windowSeconds !== undefined) appendHeader(res, 'RateLimit-Policy', `${policyName};q=${limit};w=${windowSeconds}`)
        appendHeader(res, 'RateLimit', `${policyName};r=${remaining};t=${resetSeconds}`)
      }
      if (legacyHeaders) {
        host.setHeader(res, 'X-RateLimit-Limit', String(limit))
        host.setHeader(res, 'X-RateLimit-Remaining', String(remaining))
        host.setHeader(
          res,
          'X-RateLimit-Reset',
          String(kind === 'allowed' ? Math.ceil((now + resetMs) / 1000) : Math.ceil(now / 1000) + retryAfter),
        )
      }
      if (quota.degraded === true) {
        host.setHeader(res, 'Trypema-Degraded', '1')
        counted = false // decided without Redis: there is nothing to refund there
      }
      if (factorHeader !== undefined) host.setHeader(res, 'Trypema-Suppression-Factor', factorHeader)
      if (status !== 0) host.setHeader(res, 'Retry-After', String(retryAfter))
    } catch (error) {
      return fail(flow, error)
    }
    if (status !== 0) {
      settle(flow)
      return host.send(res, status, body)
    }
    if (watchOutcome && counted && flow.cost > 0) watch(flow)
    pass(flow)
  }

  /**
   * skipFailedRequests / skipSuccessfulRequests: once the response is over, gives the request's
   * cost back when it failed (status ≥ 400, or the connection closed before the response was
   * complete) or succeeded, as asked. A refund that fails (Redis down) is dropped.
   */
  function watch(flow) {
    const raw = host.raw(flow.res)
    let decided = false
    const decide = (failed) => {
      if (decided) return
      decided = true
      raw.removeListener('finish', onFinish)
      raw.removeListener('close', onClose)
      if (failed ? !skipFailedRequests : !skipSuccessfulRequests) return
      try {
        const refunded = strategyObject.refund(flow.key, flow.cost)
        if (mayBeThenable(refunded)) Promise.resolve(refunded).then(undefined, noop)
      } catch {
        // the request stays counted
      }
    }
    const onFinish = () => decide(!(raw.statusCode < 400))
    const onClose = () => decide(!raw.writableEnded || !(raw.statusCode < 400))
    raw.once('finish', onFinish)
    raw.once('close', onClose)
  }

  return function handle(req, res, next) {
    const flow = new Flow(req, res, next)
    if (timeoutMs !== undefined) flow.timer = setTimeout(onTimeout, timeoutMs, flow)
    if (skip === undefined) step(flow, keyOf, afterKey)
    else step(flow, skip, afterSkip)
  }
}

module.exports = { createHandler, defaultKey, safeKey }
