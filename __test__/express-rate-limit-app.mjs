// A server process for express-rate-limit.test.mjs (not a test file): Express with
// express-rate-limit and a TrypemaStore. Configured by environment variables; prints
// `{"port":N}` once listening; GET /logs returns what express-rate-limit logged. Exits when its
// standard input closes (so it never outlives the test).
import express from 'express'
import { rateLimit } from 'express-rate-limit'
import { RateLimiter } from 'trypema'
import { TrypemaStore } from 'trypema/express-rate-limit'

const logs = []
for (const level of ['warn', 'error']) console[level] = (...args) => logs.push({ level, message: args.map(String).join(' ') })

const { REDIS_URL, REDIS_PREFIX, WINDOW_SECONDS = '10', LIMIT = '5', PROVIDER = 'redis' } = process.env
const limiter = await RateLimiter.builder(REDIS_URL).windowSizeSeconds(Number(WINDOW_SECONDS)).redisPrefix(REDIS_PREFIX).build()
const app = express()
app.get('/logs', (req, res) => res.json(logs))
app.use(
  rateLimit({
    windowMs: Number(WINDOW_SECONDS) * 1000,
    limit: Number(LIMIT),
    standardHeaders: 'draft-8',
    legacyHeaders: false,
    keyGenerator: (req) => req.get('x-client') ?? 'anonymous',
    store: new TrypemaStore({ limiter, provider: PROVIDER }),
  }),
)
app.get('/', (req, res) => res.json({ pid: process.pid, hits: req.rateLimit.used }))
const server = app.listen(0, '127.0.0.1', () => {
  process.stdout.write(`${JSON.stringify({ port: server.address().port })}\n`)
})
process.stdin.resume()
process.stdin.on('end', async () => {
  server.close()
  server.closeAllConnections()
  await limiter.close()
  process.exit(0)
})
