// A TypeScript program using trypema the way a Node service would. It is only type-checked
// (`tsc -p __test__/typings --strict --noEmit`); every `@ts-expect-error` line is misuse that the
// typings must reject, so a typing that became too loose fails the check too.
import {
  RateLimiter,
  RateLimiterBuilder,
  type AllowedDecision,
  type RateLimitDecision,
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
