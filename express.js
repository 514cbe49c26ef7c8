'use strict'

// Express integration of trypema: `rateLimit(options)` returns a middleware that makes exactly one
// limiter call per request and answers with the standard rate-limit headers. It does not load
// Express itself, so it works with any framework that uses Node's `req` / `res` / `next` shape.

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

function optionError(name, expected, value) {
  return new TypeError(`rateLimit: \`${name}\` must be ${expected}, got ${describe(value)}`)
}

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
])

const PROVIDERS = ['redis', 'hybrid', 'local']
const STRATEGIES = ['absolute', 'suppressed']

const isPositiveFinite = (value) => typeof value === 'number' && Number.isFinite(value) && value > 0
const isCount = (value) => Number.isSafeInteger(value) && value >= 0

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
  const own = limiter.windowSizeSeconds
  if (Number.isSafeInteger(own) && own >= 1) return own
  try {
    const decision = limiter.local.absolute.inc('trypema:express:window-probe', 1e-12, 1)
    const seconds = decision && decision.kind === 'rejected' ? decision.windowSizeSeconds : undefined
    if (Number.isSafeInteger(seconds) && seconds >= 1) return seconds
  } catch {
    // not a full trypema limiter (or a closed one): fall back to the option
  }
  return undefined
}

function validate(options) {
  if (options === null || typeof options !== 'object') {
    throw new TypeError(`rateLimit: options must be an object, got ${describe(options)}`)
  }
  for (const name of Object.keys(options)) {
    if (!KNOWN_OPTIONS.has(name)) throw new TypeError(`rateLimit: unknown option \`${name}\``)
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
  if (timeoutMs !== undefined && !(Number.isSafeInteger(timeoutMs) && timeoutMs >= 1)) {
    throw optionError('timeoutMs', 'a whole number of milliseconds ≥ 1', timeoutMs)
  }

  // The provider is looked up now, so a limiter without Redis (or a provider this version does
  // not have) is reported when the app starts rather than on every request.
  let providerObject
  try {
    providerObject = limiter[provider]
  } catch (error) {
    if (error && error.code === 'TRYPEMA_REDIS_NOT_CONFIGURED') {
      throw new TypeError(
        `rateLimit: provider '${provider}' needs a limiter built with a Redis URL (RateLimiter.builder(url))`,
      )
    }
    throw error
  }
  const strategyObject = providerObject == null ? undefined : providerObject[strategy]
  if (strategyObject == null || typeof strategyObject.inc !== 'function') {
    throw optionError('limiter', `an object with \`${provider}.${strategy}.inc()\``, limiter)
  }

  const known = windowOf(limiter)
  if (known !== undefined && windowSizeSeconds !== undefined && known !== windowSizeSeconds) {
    throw new TypeError(
      `rateLimit: \`windowSizeSeconds\` is ${windowSizeSeconds} but the limiter's window is ${known} s`,
    )
  }

  return {
    strategyObject,
    isLocal: provider === 'local',
    absolute: strategy === 'absolute',
    rate,
    key,
    cost,
    skip,
    onError,
    suppressedStatus,
    legacyHeaders,
    standardHeaders,
    windowSeconds: known !== undefined ? known : windowSizeSeconds,
    policyName: sfString(policyName),
    timeoutMs,
  }
}

// ---------------------------------------------------------------------------------------------
// Middleware
// ---------------------------------------------------------------------------------------------

function codedError(code, message) {
  const error = new Error(message)
  error.code = code
  return error
}

/** Sets a list-valued header, keeping what an earlier limiter on the same route already set. */
function appendHeader(res, name, value) {
  const previous = res.getHeader(name)
  res.setHeader(name, previous === undefined || previous === '' ? value : `${previous}, ${value}`)
}

function sendJson(res, status, body) {
  if (res.headersSent) return
  const text = JSON.stringify(body)
  res.statusCode = status
  res.setHeader('Content-Type', 'application/json; charset=utf-8')
  res.setHeader('Content-Length', Buffer.byteLength(text))
  res.end(text)
}

function formatFactor(factor) {
  return String(Math.round(factor * 10000) / 10000)
}

/**
 * Creates the middleware. See `express.d.ts` for every option; in short:
 * `rateLimit({ limiter, provider: 'redis', strategy: 'absolute', rate: 5 })`.
 */
function rateLimit(options) {
  const config = validate(options)
  const {
    strategyObject,
    isLocal,
    absolute,
    key: keyOf,
    skip,
    onError,
    suppressedStatus,
    legacyHeaders,
    standardHeaders,
    policyName,
    timeoutMs,
  } = config
  const rateOption = config.rate
  const costOption = config.cost
  const rateIsFunction = typeof rateOption === 'function'
  const costIsFunction = typeof costOption === 'function'
  let windowSeconds = config.windowSeconds

  // With a fixed rate the policy never changes: build its header values once.
  let fixedQuota = rateIsFunction || windowSeconds === undefined ? undefined : Math.floor(windowSeconds * rateOption)
  let fixedPolicy = fixedQuota === undefined ? undefined : `${policyName};q=${fixedQuota};w=${windowSeconds}`

  function fail(error, req, res, next) {
    if (onError === 'allow') return next()
    if (onError === 'deny') {
      return sendJson(res, 503, { error: 'Service Unavailable', message: 'the rate limiter is unavailable' })
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
      if (result !== null && typeof result === 'object' && typeof result.then === 'function') {
        result.then(undefined, (handlerError) => once(handlerError))
      }
    } catch (handlerError) {
      once(handlerError)
    }
  }

  /** Applies a decision: headers, then `next()` or the limited response. */
  function respond(decision, rate, req, res, next) {
    let kind
    let status = 0
    let retryAfter = 0
    let body
    let factorHeader
    try {
      kind = decision.kind
      if (kind === 'allowed') {
        // nothing to compute
      } else if (kind === 'rejected') {
        const learned = decision.windowSizeSeconds
        if (windowSeconds === undefined && Number.isSafeInteger(learned) && learned >= 1) {
          windowSeconds = learned
          if (!rateIsFunction) {
            fixedQuota = Math.floor(windowSeconds * rateOption)
            fixedPolicy = `${policyName};q=${fixedQuota};w=${windowSeconds}`
          }
        }
        retryAfter = Math.max(1, Math.ceil(decision.retryAfterMs / 1000))
        if (!Number.isFinite(retryAfter)) retryAfter = windowSeconds === undefined ? 1 : windowSeconds
        status = 429
        body = { error: 'Too Many Requests', retryAfterSeconds: retryAfter }
      } else if (kind === 'suppressed') {
        const factor = decision.suppressionFactor
        retryAfter = 1
        if (decision.isAllowed === true) {
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

      if (standardHeaders || legacyHeaders) {
        let quota = fixedQuota
        let policy = fixedPolicy
        if (rateIsFunction && windowSeconds !== undefined) {
          quota = Math.floor(windowSeconds * rate)
          policy = `${policyName};q=${quota};w=${windowSeconds}`
        }
        // Remaining is only known when the limit has been reached (0); an allowed decision
        // carries no count, and a second limiter call per request is not worth it.
        const limited = kind !== 'allowed'
        if (standardHeaders) {
          if (policy !== undefined) appendHeader(res, 'RateLimit-Policy', policy)
          if (limited) appendHeader(res, 'RateLimit', `${policyName};r=0;t=${retryAfter}`)
        }
        if (legacyHeaders) {
          if (quota !== undefined) res.setHeader('X-RateLimit-Limit', String(quota))
          if (limited) {
            res.setHeader('X-RateLimit-Remaining', '0')
            res.setHeader('X-RateLimit-Reset', String(Math.ceil(Date.now() / 1000) + retryAfter))
          }
        }
      }
      if (factorHeader !== undefined) res.setHeader('Trypema-Suppression-Factor', factorHeader)
      if (status !== 0) res.setHeader('Retry-After', String(retryAfter))
    } catch (error) {
      return fail(error, req, res, next)
    }
    if (status === 0) return next()
    sendJson(res, status, body)
  }

  function limit(req, res, next) {
    let rate
    let pending
    try {
      const rawKey = keyOf(req)
      let keyText
      if (typeof rawKey === 'string') keyText = rawKey
      else if ((typeof rawKey === 'number' && Number.isFinite(rawKey)) || typeof rawKey === 'bigint') {
        keyText = String(rawKey)
      } else {
        throw new TypeError(`rateLimit: \`key(req)\` must return a string, got ${describe(rawKey)}`)
      }
      rate = rateIsFunction ? rateOption(req) : rateOption
      if (rateIsFunction && !isPositiveFinite(rate)) {
        throw new TypeError(`rateLimit: \`rate(req)\` must return a finite number > 0, got ${describe(rate)}`)
      }
      const cost = costIsFunction ? costOption(req) : costOption
      if (costIsFunction && !isCount(cost)) {
        throw new TypeError(`rateLimit: \`cost(req)\` must return a whole number ≥ 0, got ${describe(cost)}`)
      }
      pending = strategyObject.inc(safeKey(keyText), rate, cost)
    } catch (error) {
      return fail(error, req, res, next)
    }
    if (isLocal || pending === null || typeof pending !== 'object' || typeof pending.then !== 'function') {
      return respond(pending, rate, req, res, next)
    }
    if (timeoutMs === undefined) {
      pending.then(
        (decision) => respond(decision, rate, req, res, next),
        (error) => fail(error, req, res, next),
      )
      return
    }
    let settled = false
    const timer = setTimeout(() => {
      if (settled) return
      settled = true
      fail(codedError('TRYPEMA_EXPRESS_TIMEOUT', `the rate limiter did not answer within ${timeoutMs} ms`), req, res, next)
    }, timeoutMs)
    pending.then(
      (decision) => {
        if (settled) return
        settled = true
        clearTimeout(timer)
        respond(decision, rate, req, res, next)
      },
      (error) => {
        if (settled) return
        settled = true
        clearTimeout(timer)
        fail(error, req, res, next)
      },
    )
  }

  return function trypemaRateLimit(req, res, next) {
    if (skip === undefined) return limit(req, res, next)
    let skipped
    try {
      skipped = skip(req)
    } catch (error) {
      return fail(error, req, res, next)
    }
    if (skipped !== null && typeof skipped === 'object' && typeof skipped.then === 'function') {
      skipped.then(
        (value) => (value ? next() : limit(req, res, next)),
        (error) => fail(error, req, res, next),
      )
      return
    }
    if (skipped) return next()
    limit(req, res, next)
  }
}

module.exports = { rateLimit, defaultKey, safeKey }
