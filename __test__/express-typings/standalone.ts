// A consumer of `trypema/express` with no @types/express and no @types/node installed (see
// tsconfig.standalone.json: `types: []`, and 'express' resolves to nothing): the typings must
// compile on their own, for users of Connect-style frameworks or plain `http`.
import { RateLimiter } from 'trypema'
import { rateLimit, defaultKey, type RateLimitMiddleware, type RateLimitRequest, type RateLimitInfo } from 'trypema/express'

interface MyRequest {
  readonly ip?: string
  readonly socket?: { readonly remoteAddress?: string }
  readonly headers: Record<string, string | undefined>
  rateLimit?: RateLimitInfo
}
interface MyResponse {
  statusCode: number
  setHeader(name: string, value: string | number | readonly string[]): void
  getHeader(name: string): string | undefined
  end(body?: string): void
}

export async function build(): Promise<RateLimitMiddleware<MyRequest, MyResponse>> {
  const limiter = await RateLimiter.builder().windowSizeSeconds(10).build()
  const byDefault = rateLimit({ limiter, provider: 'local', strategy: 'absolute', rate: 1, key: (req: RateLimitRequest) => req.get('x-key') ?? 'anonymous' })
  void byDefault
  return rateLimit<MyRequest, MyResponse>({
    limiter,
    provider: 'local',
    strategy: 'suppressed',
    rate: 2,
    key: (req) => req.headers['x-api-key'] ?? defaultKey(req),
    skip: async (req) => req.headers['x-internal'] === 'yes',
    onError: (error, req, res, next) => {
      res.statusCode = 503
      res.end(String(error))
      void next
    },
  })
}

// trypema/fastify and trypema/express-rate-limit, without Fastify's or express-rate-limit's types.
import trypemaRateLimit, { type TrypemaFastifyOptions, type FastifyRequestLike } from 'trypema/fastify'
import { TrypemaStore, type ClientRateLimitInfo } from 'trypema/express-rate-limit'

export async function adapters(): Promise<number> {
  const limiter = await RateLimiter.builder().windowSizeSeconds(60).build()
  const options: TrypemaFastifyOptions = {
    limiter,
    provider: 'local',
    strategy: 'absolute',
    rate: 5,
    key: (request: FastifyRequestLike) => request.ip,
    onError: (error, request, reply) => {
      reply.code(503).send({ error: String(error) })
    },
  }
  // What Fastify does with a plugin: call it with an instance, the options and a callback.
  trypemaRateLimit({}, options, () => {})
  const store = new TrypemaStore({ limiter, provider: 'local', prefix: 'p/' })
  store.init({ windowMs: 60_000 })
  const info: ClientRateLimitInfo = await store.increment('k')
  return info.totalHits
}
