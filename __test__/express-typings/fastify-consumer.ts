// A typed Fastify consumer of `trypema/fastify`: compiled by the adapters' tests with
// `tsc --strict --noEmit`. The `@ts-expect-error` lines check that mistakes are caught.
import Fastify, { type FastifyRequest, type FastifyReply } from 'fastify'
import { RateLimiter } from 'trypema'
import trypemaRateLimit, { trypemaRateLimit as named, defaultKey, type TrypemaFastifyOptions, type RateLimitInfo } from 'trypema/fastify'

declare module 'fastify' {
  interface FastifyRequest {
    rateLimit: RateLimitInfo | null
  }
}

export async function main(): Promise<void> {
  const limiter = await RateLimiter.builder('redis://127.0.0.1:6379/').windowSizeSeconds(60).build()
  const fastify = Fastify({ trustProxy: true })

  await fastify.register(trypemaRateLimit, { limiter, provider: 'redis', strategy: 'absolute', rate: 5 })
  await fastify.register(trypemaRateLimit, {
    limiter,
    provider: 'hybrid',
    strategy: 'suppressed',
    rate: (request) => (request.headers['x-plan'] === 'pro' ? 50 : 5),
    key: async (request) => String(request.headers['x-api-key'] ?? defaultKey(request)),
    cost: (request) => (request.method === 'POST' ? 5 : 1),
    skip: (request) => request.routeOptions.url === '/health',
    onError: (error, request, reply, done) => {
      if ((error as { code?: string }).code === 'TRYPEMA_REDIS') reply.code(503).send({ error: 'limiter down' })
      else done()
    },
    suppressedStatus: 503,
    legacyHeaders: true,
    policyName: 'api',
    timeoutMs: 250,
    skipFailedRequests: true,
    requestPropertyName: 'rateLimit',
  })

  // Fastify's own types on the callbacks.
  const options: TrypemaFastifyOptions = {
    limiter,
    provider: 'local',
    strategy: 'absolute',
    rate: 1,
    key: (request: FastifyRequest) => request.ip,
    onError: async (error: unknown, request: FastifyRequest, reply: FastifyReply) => {
      await reply.code(500).send({ error: String(error), id: request.id })
    },
  }
  await fastify.register(trypemaRateLimit, options)
  fastify.register(named, { limiter, provider: 'local', strategy: 'absolute', rate: 2 })

  fastify.get('/', async (request) => ({ remaining: request.rateLimit?.remaining ?? null }))

  // @ts-expect-error: strategy is required
  fastify.register(trypemaRateLimit, { limiter, provider: 'redis', rate: 5 })
  // @ts-expect-error: provider must be 'redis' | 'hybrid' | 'local'
  fastify.register(trypemaRateLimit, { limiter, provider: 'memcached', strategy: 'absolute', rate: 5 })
  // @ts-expect-error: the key is a string
  fastify.register(trypemaRateLimit, { limiter, provider: 'redis', strategy: 'absolute', rate: 5, key: () => ({}) })

  await fastify.listen({ port: 0 })
  await fastify.close()
  await limiter.close()
}
