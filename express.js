'use strict'

// Express integration of trypema: `rateLimit(options)` returns a middleware that makes exactly one
// limiter call per request (`incWithQuota`: for `redis`, one round trip) and answers with the
// standard rate-limit headers. It does not load Express itself, so it works with any framework
// that uses Node's `req` / `res` / `next` shape. The engine is shared with `trypema/fastify`
// (adapter-core.js); this file only says how to set headers and answer in Express.

const { createHandler, defaultKey, safeKey } = require('./adapter-core.js')

/** Node's `ServerResponse` API: what Express's `res` is built on. */
const host = {
  getHeader: (res, name) => res.getHeader(name),
  setHeader: (res, name, value) => {
    res.setHeader(name, value)
  },
  send(res, status, body) {
    if (res.headersSent) return
    const text = JSON.stringify(body)
    res.statusCode = status
    res.setHeader('Content-Type', 'application/json; charset=utf-8')
    res.setHeader('Content-Length', Buffer.byteLength(text))
    res.end(text)
  },
  raw: (res) => res,
}

/**
 * Creates the middleware. See `express.d.ts` for every option; in short:
 * `rateLimit({ limiter, provider: 'redis', strategy: 'absolute', rate: 5 })`.
 */
function rateLimit(options) {
  const handle = createHandler(options, 'rateLimit', host)
  return function trypemaRateLimit(req, res, next) {
    handle(req, res, next)
  }
}

module.exports = { rateLimit, defaultKey, safeKey }
