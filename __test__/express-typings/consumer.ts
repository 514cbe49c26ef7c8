// A typed Express consumer of `trypema/express`: compiled by express-package.test.mjs with
// `tsc --strict --noEmit`. The `@ts-expect-error` lines check that mistakes are caught.
import express, { type Request, type Response, type NextFunction, type RequestHandler } from 'express'
import http, { type IncomingMessage, type ServerResponse } from 'node:http'
import { RateLimiter, type RateLimitDecision } from 'trypema'
import {
  rateLimit,
  defaultKey,
  safeKey,
  type RateLimitOptions,
  type RateLimitErrorHandler,
  type RateLimitInfo,
  type RateLimitMiddleware,
  type RateLimitProvider,
  type RateLimitStrategy,
} from 'trypema/express'

// An app's own augmentation of Express's request (as passport does for `req.user`).
declare global {
  namespace Express {
    interface Request {
      user?: { id: string }
    }
  }
}

async function main(): Promise<void> {
  const limiter: RateLimiter = await RateLimiter.builder('redis://127.0.0.1:6379/').windowSizeSeconds(60).build()
  const app = express()
  app.set('trust proxy', 1)

  // Minimal form.
  const minimal: RequestHandler = rateLimit({ limiter, provider: 'redis', strategy: 'absolute', rate: 5 })
  app.get('/minimal', minimal, (req, res) => {
    res.json({ ok: true })
  })

  // Unannotated callbacks get an Express-shaped request, wherever the middleware is used.
  app.use('/api', rateLimit({ limiter, provider: 'redis', strategy: 'absolute', rate: (req) => (req.get('x-plan') === 'pro' ? 50 : 5) }))
  app.get(
    '/user',
    rateLimit({ limiter, provider: 'redis', strategy: 'absolute', rate: 5, key: (req) => req.user?.id ?? defaultKey(req) }),
    (req, res) => {
      const info = (req as Request & { rateLimit?: RateLimitInfo }).rateLimit
      res.json({ remaining: info?.remaining, reset: info?.resetTime.toISOString() })
    },
  )
  app.use(
    rateLimit({
      limiter,
      provider: 'redis',
      strategy: 'absolute',
      rate: 1,
      skip: (req) => req.path === '/health' || req.method === 'OPTIONS',
      onError: (error, req, res, next) => {
        res.status(503).json({ error: String(error), path: req.path })
        void next
      },
    }),
  )

  // Every option, with Express's own types declared on the callbacks.
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
    key: async (req: Request) => req.get('x-api-key') ?? defaultKey(req),
    cost: (req: Request) => (req.method === 'POST' ? 5 : 1),
    skip: async (req: Request) => req.path === '/health',
    onError,
    suppressedStatus: 503,
    standardHeaders: true,
    legacyHeaders: true,
    windowSizeSeconds: 60,
    policyName: 'api',
    timeoutMs: 250,
    skipFailedRequests: true,
    skipSuccessfulRequests: false,
    requestPropertyName: 'quota',
  }
  app.use('/api', rateLimit(options))
  app.use(rateLimit({ limiter, provider: 'local', strategy: 'absolute', rate: 100, key: (req) => req.ip ?? 'unknown', onError: 'deny' }))

  // Typed with Express's request and response throughout.
  const typed: RateLimitMiddleware<Request, Response> = rateLimit<Request, Response>({
    limiter,
    provider: 'redis',
    strategy: 'absolute',
    rate: 5,
    onError: (error, req, res) => {
      res.status(500).send(req.originalUrl)
    },
  })
  app.use(typed)

  // Plain Node http: name the types.
  const plain = rateLimit<IncomingMessage, ServerResponse>({
    limiter,
    provider: 'local',
    strategy: 'absolute',
    rate: 1,
    key: (req) => req.socket.remoteAddress ?? 'unknown',
    onError: (error, req, res) => {
      res.statusCode = 503
      res.end()
    },
  })
  http.createServer((req, res) => plain(req, res, () => res.end('ok')))

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
  // @ts-expect-error: an async key resolves to a string too
  rateLimit({ limiter, provider: 'redis', strategy: 'absolute', rate: 5, key: async () => undefined })
  // @ts-expect-error: req.ip may be undefined
  rateLimit({ limiter, provider: 'redis', strategy: 'absolute', rate: 5, key: (req) => req.ip })
  // @ts-expect-error: skipFailedRequests is a boolean
  rateLimit({ limiter, provider: 'redis', strategy: 'absolute', rate: 5, skipFailedRequests: 'yes' })
  // @ts-expect-error: safeKey takes a string
  safeKey(42)

  app.listen(3000)
  await limiter.close()
}

void main
