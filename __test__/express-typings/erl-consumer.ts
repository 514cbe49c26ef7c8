// A typed consumer of `trypema/express-rate-limit` with express-rate-limit v8 and v7: compiled
// by the adapters' tests with `tsc --strict --noEmit`.
import express from 'express'
import { rateLimit, type Store } from 'express-rate-limit'
import { rateLimit as rateLimitV7, type Store as StoreV7 } from 'express-rate-limit-v7'
import { RateLimiter } from 'trypema'
import { TrypemaStore, type ClientRateLimitInfo } from 'trypema/express-rate-limit'

export async function main(): Promise<void> {
  const limiter = await RateLimiter.builder('redis://127.0.0.1:6379/').windowSizeSeconds(60).build()
  const app = express()
  const store: Store = new TrypemaStore({ limiter, provider: 'redis', prefix: 'api/' })
  const storeV7: StoreV7 = new TrypemaStore({ limiter })
  app.use(rateLimit({ windowMs: 60_000, limit: 100, standardHeaders: 'draft-8', legacyHeaders: false, store }))
  app.use(rateLimitV7({ windowMs: 60_000, limit: 100, standardHeaders: 'draft-7', store: storeV7 }))
  app.use(rateLimit({ windowMs: 60_000, limit: 10, store: new TrypemaStore({ limiter, provider: 'local' }) }))

  const direct = new TrypemaStore({ limiter, provider: 'hybrid' })
  const info: ClientRateLimitInfo = await direct.increment('k')
  const hits: number = info.totalHits
  const local: boolean = direct.localKeys
  void [hits, local]

  // @ts-expect-error: provider must be 'redis' | 'hybrid' | 'local'
  new TrypemaStore({ limiter, provider: 'memory' })
  // @ts-expect-error: a limiter is required
  new TrypemaStore({ provider: 'redis' })
  await limiter.close()
}
