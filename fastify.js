'use strict'

// `trypema/fastify`: the trypema/express middleware as a Fastify plugin. The same options,
// headers, `request.rateLimit` and onError paths (the engine is adapter-core.js); the limit is
// applied in an `onRequest` hook to every route of the context the plugin is registered in
// (like fastify-plugin, it is not encapsulated), so register it before the routes it guards.
//
//   fastify.register(trypemaRateLimit, { limiter, provider: 'redis', strategy: 'absolute', rate: 5 })

const { createHandler, defaultKey, safeKey } = require('./adapter-core.js')

/** Fastify's reply API. */
const host = {
  getHeader: (reply, name) => reply.getHeader(name),
  setHeader: (reply, name, value) => {
    reply.header(name, value)
  },
  send(reply, status, body) {
    if (reply.sent || reply.raw.headersSent) return
    reply.code(status).send(body)
  },
  raw: (reply) => reply.raw,
}

// Options Fastify itself reads from `register(plugin, options)`: not the plugin's.
const REGISTER_OPTIONS = new Set(['prefix', 'logLevel', 'logSerializers'])

/**
 * The plugin: `fastify.register(trypemaRateLimit, options)`. Options are checked when it is
 * registered (a bad one fails `register` / `ready()` with a TypeError).
 */
function trypemaRateLimit(fastify, options, done) {
  let handle
  let propertyName = 'rateLimit'
  try {
    const own = {}
    for (const name of Object.keys(options ?? {})) {
      if (!REGISTER_OPTIONS.has(name)) own[name] = options[name]
    }
    handle = createHandler(own, 'trypemaRateLimit', host)
    if (own.requestPropertyName !== undefined) propertyName = own.requestPropertyName
    // Declared up front, so Fastify keeps the request objects' shape.
    if (propertyName !== false && !fastify.hasRequestDecorator(propertyName)) fastify.decorateRequest(propertyName, null)
  } catch (error) {
    return done(error)
  }
  fastify.addHook('onRequest', function trypemaRateLimitHook(request, reply, next) {
    handle(request, reply, next)
  })
  done()
}

// Not encapsulated (what `fastify-plugin` does): the hook applies to the registering context.
trypemaRateLimit[Symbol.for('skip-override')] = true
trypemaRateLimit[Symbol.for('fastify.display-name')] = 'trypema-rate-limit'
trypemaRateLimit[Symbol.for('plugin-meta')] = { name: 'trypema-rate-limit', fastify: '4.x || 5.x' }

module.exports = trypemaRateLimit
module.exports.default = trypemaRateLimit
module.exports.trypemaRateLimit = trypemaRateLimit
module.exports.defaultKey = defaultKey
module.exports.safeKey = safeKey
