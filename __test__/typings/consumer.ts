// A TypeScript program using trypema the way a Node service would. It is only type-checked
// (`tsc -p __test__/typings --strict --noEmit`); every `@ts-expect-error` line is misuse that the
// typings must reject, so a typing that became too loose fails the check too.
import {
  RateLimiter,
  RateLimiterBuilder,
  type AllowedDecision,
  type ConnectionOptions,
  type DecisionMetrics,
  type HybridProvider,
  type LimiterMetrics,
  type OnRedisError,
  type Quota,
  type QuotaDecision,
  type RateLimitDecision,
  type RedisProvider,
  type RejectedDecision,
  type SuppressedDecision,
  type TrypemaError,
  type TrypemaErrorCode,
} from 'trypema'
import * as relative from '../../index.js'

/** Exhaustive handling of every decision kind. */
function describeDecision(d: RateLimitDecision): string {
  switch (d.kind) {
    case 'allowed':
      return 'allowed'
    case 'rejected': {
      const retryAfterSeconds: number = Math.ceil(d.retryAfterMs / 1000)
      return `retry in ${retryAfterSeconds} s (window ${d.windowSizeSeconds} s, ${d.remainingAfterWaiting} left)`
    }
    case 'suppressed': {
      const admitted: boolean = d.isAllowed
      return `suppressed at ${d.suppressionFactor.toFixed(2)}: ${admitted ? 'admitted' : 'declined'}`
    }
    default: {
      const _never: never = d
      return _never
    }
  }
}

function retryAfterHeader(d: AllowedDecision | RejectedDecision): string | undefined {
  if (d.kind === 'rejected') return String(Math.ceil(d.retryAfterMs / 1000))
  // @ts-expect-error narrowed to AllowedDecision: no retryAfterMs here
  return String(d.retryAfterMs)
}

function isTrypemaError(error: unknown): error is TrypemaError {
  return error instanceof Error && typeof (error as { code?: unknown }).code === 'string'
}

export async function main(): Promise<void> {
  const builder: RateLimiterBuilder = RateLimiter.builder()
    .windowSizeSeconds(60)
    .rateGroupSizeMs(10)
    .hardLimitFactor(1.5)
    .suppressionFactorCacheMs(100)
    .syncIntervalMs(10)
    .cleanupIntervalMs(10_000)
    .staleAfterMs(60_000)
    .redisPrefix('app')
  const pending: Promise<RateLimiter> = builder.build()
  const rl = await pending
  const withUrl: RateLimiterBuilder = RateLimiter.builder('redis://127.0.0.1:6379/')
  void withUrl

  // Local calls are synchronous: the decision is available without `await`.
  const d = rl.local.absolute.inc('user_123', 5)
  const twice: AllowedDecision | RejectedDecision = rl.local.absolute.inc('user_123', 5, 2)
  const check: AllowedDecision | RejectedDecision = rl.local.absolute.isAllowed('user_123')
  const s: AllowedDecision | SuppressedDecision = rl.local.suppressed.inc('user_123', 5, 1)
  const factor: number = rl.local.suppressed.getSuppressionFactor('user_123')
  console.log(describeDecision(d), describeDecision(twice), describeDecision(check), describeDecision(s), factor)
  console.log(retryAfterHeader(d))

  // @ts-expect-error retryAfterMs exists only once narrowed to a rejection
  console.log(d.retryAfterMs)
  if (d.kind === 'rejected') {
    const ms: number = d.retryAfterMs
    console.log(ms)
  }
  // @ts-expect-error an absolute decision is never 'suppressed'
  if (d.kind === 'suppressed') console.log('impossible')
  // @ts-expect-error a suppressed decision is never 'rejected'
  if (s.kind === 'rejected') console.log('impossible')
  if (s.kind === 'suppressed') {
    const f: number = s.suppressionFactor
    // @ts-expect-error suppressed decisions carry no retry hint
    console.log(f, s.retryAfterMs)
  }

  // @ts-expect-error the key must be a string
  rl.local.absolute.inc(1, 5)
  // @ts-expect-error the rate is required
  rl.local.absolute.inc('user_123')
  // @ts-expect-error the rate must be a number
  rl.local.suppressed.inc('user_123', '5')
  // @ts-expect-error the count must be a number
  rl.local.absolute.inc('user_123', 5, '1')
  // @ts-expect-error isAllowed takes only a key
  rl.local.absolute.isAllowed('user_123', 5)
  // @ts-expect-error local calls return decisions, not Promises
  const notAPromise: Promise<RateLimitDecision> = rl.local.absolute.inc('user_123', 5)
  void notAPromise
  // @ts-expect-error decisions are read-only
  d.kind = 'allowed'
  // @ts-expect-error the provider properties are read-only
  rl.local = rl.local
  // @ts-expect-error there is no such strategy
  rl.local.slidingLog.inc('user_123', 5)
  // @ts-expect-error the Redis URL must be a string
  RateLimiter.builder(6379)
  // @ts-expect-error settings are numbers
  RateLimiter.builder().windowSizeSeconds('60')
  // @ts-expect-error the prefix is a string
  RateLimiter.builder().redisPrefix(1)
  // @ts-expect-error the constructor is private: use the builder
  new RateLimiter()

  try {
    rl.local.absolute.inc('', 5)
  } catch (error) {
    if (isTrypemaError(error)) {
      const code: TrypemaErrorCode = error.code
      if (code === 'TRYPEMA_INVALID_KEY' || code === 'TRYPEMA_CLOSED') console.log(error.message)
      // @ts-expect-error not one of trypema's codes
      if (code === 'TRYPEMA_NO_SUCH_CODE') console.log('impossible')
    }
  }

  const closed: Promise<void> = rl.close()
  await closed
  // @ts-expect-error close() resolves to nothing
  const nothing: number = await rl.close()
  void nothing

  // The relative path and the package name are the same declarations.
  const same: typeof RateLimiter = relative.RateLimiter
  void same
}

// ---------------------------------------------------------------------------------------------
// Error codes: every code the library documents is part of the union.
// ---------------------------------------------------------------------------------------------

const everyCode: TrypemaErrorCode[] = [
  'TRYPEMA_INVALID_RATE_LIMIT',
  'TRYPEMA_INVALID_WINDOW_SIZE',
  'TRYPEMA_INVALID_RATE_GROUP_SIZE',
  'TRYPEMA_INVALID_HARD_LIMIT_FACTOR',
  'TRYPEMA_INVALID_SUPPRESSION_FACTOR_CACHE',
  'TRYPEMA_INVALID_SYNC_INTERVAL',
  'TRYPEMA_INVALID_CLEANUP_INTERVAL',
  'TRYPEMA_INVALID_STALE_AFTER',
  'TRYPEMA_INVALID_COMMAND_TIMEOUT',
  'TRYPEMA_INVALID_LOCAL_RATE_FACTOR',
  'TRYPEMA_INVALID_COUNT',
  'TRYPEMA_INVALID_KEY',
  'TRYPEMA_INVALID_REDIS_KEY',
  'TRYPEMA_INVALID_REDIS_PREFIX',
  'TRYPEMA_REDIS_NOT_CONFIGURED',
  'TRYPEMA_REDIS',
  'TRYPEMA_REDIS_TIMEOUT',
  'TRYPEMA_REDIS_AUTH',
  'TRYPEMA_UNEXPECTED_SCRIPT_RESULT',
  'TRYPEMA_CLOSED',
  'TRYPEMA_INTERNAL',
]
void everyCode

/** Exhaustive over the codes a Redis call can fail with: must compile without a default. */
function outageAdvice(code: 'TRYPEMA_REDIS' | 'TRYPEMA_REDIS_TIMEOUT' | 'TRYPEMA_REDIS_AUTH' | 'TRYPEMA_INTERNAL'): string {
  const asCode: TrypemaErrorCode = code
  switch (asCode) {
    case 'TRYPEMA_REDIS':
      return 'unreachable or answered with an error'
    case 'TRYPEMA_REDIS_TIMEOUT':
      return 'may have been counted'
    case 'TRYPEMA_REDIS_AUTH':
      return 'credentials or ACL'
    case 'TRYPEMA_INTERNAL':
      return 'bug or no threads'
    default:
      return 'other'
  }
}
void outageAdvice

// ---------------------------------------------------------------------------------------------
// Connecting: a URL, or options with exactly one of url / cluster / sentinel.
// ---------------------------------------------------------------------------------------------

export function connections(ca: Buffer, cert: string, key: Uint8Array): RateLimiterBuilder[] {
  const policy: OnRedisError = 'local'
  const byUrl: ConnectionOptions = { url: 'rediss://user:pw@redis.internal:6380/0', tls: { ca, cert, key }, connectTimeoutMs: 500 }
  const builders: RateLimiterBuilder[] = [
    RateLimiter.builder(),
    RateLimiter.builder(undefined),
    RateLimiter.builder('redis://127.0.0.1:6379/'),
    RateLimiter.builder({ url: 'redis://127.0.0.1:6379/' }),
    RateLimiter.builder(byUrl),
    RateLimiter.builder({ cluster: ['redis://10.0.0.1:7000/', 'redis://10.0.0.2:7000/'], commandTimeoutMs: 250 }),
    RateLimiter.builder({ sentinel: { urls: ['redis://10.0.0.1:26379/'], masterName: 'mymaster' }, onRedisError: 'allow' }),
    RateLimiter.builder({ url: 'redis://127.0.0.1:6379/', onRedisError: policy }),
    // The builder's constructor takes the same arguments.
    new RateLimiterBuilder(),
    new RateLimiterBuilder('redis://127.0.0.1:6379/'),
    new RateLimiterBuilder({ cluster: ['redis://10.0.0.1:7000/'] }),
  ]
  // @ts-expect-error url and cluster together
  RateLimiter.builder({ url: 'redis://a/', cluster: ['redis://b/'] })
  // @ts-expect-error url and sentinel together
  RateLimiter.builder({ url: 'redis://a/', sentinel: { urls: ['redis://b/'], masterName: 'm' } })
  // @ts-expect-error cluster and sentinel together
  new RateLimiterBuilder({ cluster: ['redis://b/'], sentinel: { urls: ['redis://b/'], masterName: 'm' } })
  // @ts-expect-error one of url, cluster or sentinel is required
  RateLimiter.builder({ connectTimeoutMs: 100 })
  // @ts-expect-error the sentinel master's name is required
  RateLimiter.builder({ sentinel: { urls: ['redis://b/'] } })
  // @ts-expect-error cluster takes a list of URLs
  RateLimiter.builder({ cluster: 'redis://b/' })
  // @ts-expect-error no such policy
  RateLimiter.builder({ url: 'redis://a/', onRedisError: 'ignore' })
  // @ts-expect-error no such option
  RateLimiter.builder({ url: 'redis://a/', password: 'x' })
  // @ts-expect-error timeouts are numbers
  RateLimiter.builder({ url: 'redis://a/', connectTimeoutMs: '100' })
  // @ts-expect-error PEM is text or bytes
  RateLimiter.builder({ url: 'rediss://a/', tls: { ca: 5 } })
  return builders
}

export function settings(): RateLimiterBuilder {
  const builder: RateLimiterBuilder = RateLimiter.builder('redis://127.0.0.1:6379/')
    .windowSizeSeconds(60)
    .commandTimeoutMs(500)
    .onRedisError('reject')
    .localRateFactor(0.5)
  // @ts-expect-error no such policy
  builder.onRedisError('fail-open')
  // @ts-expect-error a number
  builder.localRateFactor('0.5')
  // @ts-expect-error a number
  builder.commandTimeoutMs(undefined)
  return builder
}

// ---------------------------------------------------------------------------------------------
// The Redis-backed providers, quotas, metrics.
// ---------------------------------------------------------------------------------------------

export async function remote(rl: RateLimiter): Promise<void> {
  const windowSizeSeconds: number = rl.windowSizeSeconds
  const redis: RedisProvider = rl.redis
  const hybrid: HybridProvider = rl.hybrid
  // @ts-expect-error read-only
  rl.windowSizeSeconds = 5
  // @ts-expect-error read-only
  rl.redis = redis
  // @ts-expect-error read-only
  rl.hybrid = hybrid

  // Remote calls are asynchronous.
  const d = await rl.redis.absolute.inc('user_123', 5, 1)
  if (d.kind === 'rejected') {
    const header: string = String(Math.ceil(d.retryAfterMs / 1000))
    console.log(header, d.windowSizeSeconds, d.remainingAfterWaiting, windowSizeSeconds)
  }
  // @ts-expect-error a Promise, not a decision: it must be awaited
  console.log(rl.redis.absolute.inc('user_123', 5).kind)
  const s = await rl.hybrid.suppressed.inc('user_123', 5)
  if (s.kind === 'suppressed' && !s.isAllowed) console.log(s.suppressionFactor)
  const checked: AllowedDecision | RejectedDecision = await rl.hybrid.absolute.isAllowed('user_123')
  const factor: number = await rl.redis.suppressed.getSuppressionFactor('user_123')
  console.log(checked, factor)

  // incWithQuota: the decision and the quota, in one round trip.
  const q = await rl.redis.absolute.incWithQuota('user_123', 5)
  const limit: number = q.limit
  const remaining: number = q.remaining
  const resetMs: number = q.resetMs
  const degraded: boolean = q.degraded
  console.log(limit, remaining, resetMs, degraded)
  if (q.decision.kind === 'rejected') console.log(q.decision.retryAfterMs)
  // @ts-expect-error narrow first
  console.log(q.decision.retryAfterMs)
  // @ts-expect-error an absolute decision is never 'suppressed'
  if (q.decision.kind === 'suppressed') console.log('impossible')
  const sq: QuotaDecision<AllowedDecision | SuppressedDecision> = await rl.hybrid.suppressed.incWithQuota('user_123', 5, 2)
  if (sq.decision.kind === 'suppressed') console.log(sq.decision.suppressionFactor)
  // @ts-expect-error quotas are read-only
  q.remaining = 5

  // get / refund / reset.
  const quota: Quota = await rl.redis.absolute.get('user_123', 5)
  const refunded: number = await rl.hybrid.absolute.refund('user_123', 2)
  const reset: void = await rl.redis.suppressed.reset('user_123')
  console.log(quota.remaining, refunded, reset)
  // @ts-expect-error get needs the rate (for a key without state)
  await rl.redis.absolute.get('user_123')
  // @ts-expect-error refund needs the count
  await rl.redis.absolute.refund('user_123')
  // @ts-expect-error a get records nothing and carries no decision
  console.log(quota.decision)
  // @ts-expect-error remote get is a Promise
  const notAwaited: Quota = rl.redis.absolute.get('user_123', 5)
  void notAwaited

  // Local equivalents are synchronous.
  const lq: QuotaDecision<AllowedDecision | RejectedDecision> = rl.local.absolute.incWithQuota('user_123', 5)
  const lget: Quota = rl.local.suppressed.get('user_123', 5)
  const lrefund: number = rl.local.absolute.refund('user_123', 1)
  const lreset: void = rl.local.suppressed.reset('user_123')
  console.log(lq.remaining, lget.limit, lrefund, lreset)
  // @ts-expect-error local calls are not Promises
  await rl.local.absolute.get('user_123', 5).then(() => {})

  // Metrics.
  const m: LimiterMetrics = rl.metrics()
  const first: DecisionMetrics | undefined = m.decisions[0]
  if (first !== undefined) {
    const provider: 'local' | 'redis' | 'hybrid' = first.provider
    const total: number = first.allowed + first.rejected + first.suppressedAdmitted + first.suppressedDeclined + first.errors + first.degraded
    console.log(provider, total)
  }
  const numbers: number[] = [m.redisRoundTrips, m.redisFailures, m.redisLatencyP50Ms, m.redisLatencyP99Ms, m.breakerOpened, m.hybridLeasedUnits, m.hybridReturnedUnits]
  const isDegraded: boolean = m.redisDegraded
  const text: string = rl.metricsText()
  console.log(numbers, isDegraded, text)
  // @ts-expect-error no such counter
  console.log(m.cacheHits)
}
