// A typed Express consumer of `trypema/express`: compiled by express-typings.test.mjs with
// `tsc --strict --noEmit`. The `@ts-expect-error` lines check that mistakes are caught.
import express, { type Request, type Response, type NextFunction, type RequestHandler } from 'express'
import { RateLimiter, type RateLimitDecision } from 'trypema'
import {
  rateLimit,
  defaultKey,
  safeKey,
  type RateLimitOptions,
  type RateLimitErrorHandler,
  type RateLimitProvider,
  type RateLimitStrategy,
} from 'trypema/express'

async function main(): Promise<void> {
  const limiter: RateLimiter = await RateLimiter.builder('redis://127.0.0.1:6379/').windowSizeSeconds(60).build()
  const app = express()
  app.set('trust proxy', 1)

  // Minimal form.
  const minimal: RequestHandler = rateLimit({ limiter, provider: 'redis', strategy: 'absolute', rate: 5 })
  app.get('/minimal', minimal, (req, res) => {
    res.json({ ok: true })
  })

  // Every option.
  const onError: RateLimitErrorHandler = (error: unknown, req: Request, res: Response, next: NextFunction) => {
    const code = (error as { code?: string }).code
    if (code === 'TRYPEMA_REDIS') res.status(503).json({ error: 'limiter down' })
    else next(error)
  }
  const options: RateLimitOptions = {
    limiter,
    provider: 'hybrid',
    strategy: 'suppressed',
    rate: (req: Request) => (req.get('x-plan') === 'pro' ? 50 : 5),
    key: (req: Request) => req.get('x-api-key') ?? defaultKey(req),
    cost: (req: Request) => (req.method === 'POST' ? 5 : 1),
    skip: async (req: Request) => req.path === '/health',
    onError,
    suppressedStatus: 503,
    standardHeaders: true,
    legacyHeaders: true,
    windowSizeSeconds: 60,
    policyName: 'api',
    timeoutMs: 250,
  }
  app.use('/api', rateLimit(options))
  app.use(rateLimit({ limiter, provider: 'local', strategy: 'absolute', rate: 100, key: (req) => req.ip ?? 'unknown', onError: 'deny' }))

  const provider: RateLimitProvider = 'local'
  const strategy: RateLimitStrategy = 'absolute'
  const decision: RateLimitDecision = limiter.local.absolute.inc(safeKey(defaultKey({ ip: '::1' })), 5)
  if (decision.kind === 'rejected') {
    const seconds: number = Math.ceil(decision.retryAfterMs / 1000)
    void seconds
  }
  const fromSocket: string = defaultKey({ socket: { remoteAddress: '10.0.0.1' } })
  void [provider, strategy, fromSocket]

  // @ts-expect-error: provider must be 'redis' | 'hybrid' | 'local'
  rateLimit({ limiter, provider: 'memcached', strategy: 'absolute', rate: 5 })
  // @ts-expect-error: strategy is required
  rateLimit({ limiter, provider: 'redis', rate: 5 })
  // @ts-expect-error: rate must be a number or a function returning one
  rateLimit({ limiter, provider: 'redis', strategy: 'absolute', rate: '5' })
  // @ts-expect-error: suppressedStatus is 429 or 503
  rateLimit({ limiter, provider: 'redis', strategy: 'suppressed', rate: 5, suppressedStatus: 500 })
  // @ts-expect-error: onError must be 'allow', 'deny' or a handler
  rateLimit({ limiter, provider: 'redis', strategy: 'absolute', rate: 5, onError: 'ignore' })
  // @ts-expect-error: the key function returns a string
  rateLimit({ limiter, provider: 'redis', strategy: 'absolute', rate: 5, key: (req: Request) => ({ id: req.ip }) })
  // @ts-expect-error: safeKey takes a string
  safeKey(42)

  app.listen(3000)
  await limiter.close()
}

void main
