// The adapters' typings through the "import" condition (an ES module consumer).
import express from 'express'
import Fastify from 'fastify'
import { rateLimit as erl } from 'express-rate-limit'
import { RateLimiter } from 'trypema'
import { rateLimit } from 'trypema/express'
import trypemaRateLimit, { defaultKey } from 'trypema/fastify'
import { TrypemaStore } from 'trypema/express-rate-limit'

const limiter = await RateLimiter.builder().windowSizeSeconds(60).build()
const app = express()
app.use(rateLimit({ limiter, provider: 'local', strategy: 'absolute', rate: 5, key: (req) => req.get('x-key') ?? defaultKey(req) }))
app.use(erl({ windowMs: 60_000, limit: 5, store: new TrypemaStore({ limiter, provider: 'local' }) }))
const fastify = Fastify()
await fastify.register(trypemaRateLimit, { limiter, provider: 'local', strategy: 'suppressed', rate: 5 })
export { app, fastify }
