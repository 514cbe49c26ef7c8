// Public typings of the `trypema` package. The addon's own generated typings are in
// `binding.d.ts`; this file describes the API users call.

/** Admitted. */
export interface AllowedDecision {
  readonly kind: 'allowed'
}

/** Absolute strategy: the limit is reached and nothing was recorded. */
export interface RejectedDecision {
  readonly kind: 'rejected'
  /** The window the limit applies to. */
  readonly windowSizeSeconds: number
  /** Milliseconds until the oldest counted bucket leaves the window. */
  readonly retryAfterMs: number
  /** What the window will hold once that bucket has left. */
  readonly remainingAfterWaiting: number
}

/** Suppressed strategy: the key is over its rate and calls are being shed at random. */
export interface SuppressedDecision {
  readonly kind: 'suppressed'
  /** Probability in [0, 1] that a call is declined right now. */
  readonly suppressionFactor: number
  /** Whether this call was admitted. */
  readonly isAllowed: boolean
}

export type RateLimitDecision = AllowedDecision | RejectedDecision | SuppressedDecision

/** The `code` of every error trypema throws or rejects with (wrong argument types are `TypeError`s). */
export type TrypemaErrorCode =
  | 'TRYPEMA_INVALID_RATE_LIMIT'
  | 'TRYPEMA_INVALID_WINDOW_SIZE'
  | 'TRYPEMA_INVALID_RATE_GROUP_SIZE'
  | 'TRYPEMA_INVALID_HARD_LIMIT_FACTOR'
  | 'TRYPEMA_INVALID_SUPPRESSION_FACTOR_CACHE'
  | 'TRYPEMA_INVALID_SYNC_INTERVAL'
  | 'TRYPEMA_INVALID_CLEANUP_INTERVAL'
  | 'TRYPEMA_INVALID_STALE_AFTER'
  | 'TRYPEMA_INVALID_COUNT'
  | 'TRYPEMA_INVALID_KEY'
  | 'TRYPEMA_INVALID_REDIS_KEY'
  | 'TRYPEMA_INVALID_REDIS_PREFIX'
  | 'TRYPEMA_REDIS_NOT_CONFIGURED'
  | 'TRYPEMA_REDIS'
  | 'TRYPEMA_UNEXPECTED_SCRIPT_RESULT'
  | 'TRYPEMA_CLOSED'

export interface TrypemaError extends Error {
  code: TrypemaErrorCode
}

/** In-process absolute strategy: synchronous. */
export interface LocalAbsolute {
  /** Records `count` (default 1) for `key` unless that would exceed `floor(window × rate)`. */
  inc(key: string, rate: number, count?: number): AllowedDecision | RejectedDecision
  /** Whether one more call would be admitted now; records nothing. */
  isAllowed(key: string): AllowedDecision | RejectedDecision
}

/** In-process suppressed strategy: synchronous. */
export interface LocalSuppressed {
  /** Records `count` (default 1) as observed for `key` and decides whether to admit it. */
  inc(key: string, rate: number, count?: number): AllowedDecision | SuppressedDecision
  /** The key's current suppression factor in [0, 1] (0 for an unknown key); records nothing. */
  getSuppressionFactor(key: string): number
}

export interface LocalProvider {
  readonly absolute: LocalAbsolute
  readonly suppressed: LocalSuppressed
}

/** Absolute strategy through Redis: exact across every process sharing the Redis and prefix. */
export interface RedisAbsolute {
  /** Records `count` (default 1) for `key` unless that would exceed `floor(window × rate)`. */
  inc(key: string, rate: number, count?: number): Promise<AllowedDecision | RejectedDecision>
  /** Whether one more call would be admitted now; records nothing. */
  isAllowed(key: string): Promise<AllowedDecision | RejectedDecision>
}

/** Suppressed strategy through Redis. */
export interface RedisSuppressed {
  /** Records `count` (default 1) as observed for `key` and decides whether to admit it. */
  inc(key: string, rate: number, count?: number): Promise<AllowedDecision | SuppressedDecision>
  /** The key's current suppression factor in [0, 1] (0 for an unknown key); records nothing. */
  getSuppressionFactor(key: string): Promise<number>
}

export interface RedisProvider {
  readonly absolute: RedisAbsolute
  readonly suppressed: RedisSuppressed
}

/**
 * Absolute strategy, hybrid: calls are served from a lease of quota reserved in Redis, with no
 * I/O while the lease covers them; instances sharing a key never admit more than its capacity.
 */
export interface HybridAbsolute {
  /** Records `count` (default 1) for `key` unless that would exceed `floor(window × rate)`. */
  inc(key: string, rate: number, count?: number): Promise<AllowedDecision | RejectedDecision>
  /** Whether one more call would be admitted now; records nothing. */
  isAllowed(key: string): Promise<AllowedDecision | RejectedDecision>
}

/** Suppressed strategy, hybrid: decided locally on window totals shared through Redis every sync. */
export interface HybridSuppressed {
  /** Records `count` (default 1) as observed for `key` and decides whether to admit it. */
  inc(key: string, rate: number, count?: number): Promise<AllowedDecision | SuppressedDecision>
  /** The key's current suppression factor in [0, 1] (0 for an unknown key); records nothing. */
  getSuppressionFactor(key: string): Promise<number>
}

export interface HybridProvider {
  readonly absolute: HybridAbsolute
  readonly suppressed: HybridSuppressed
}

export declare class RateLimiterBuilder {
  /** Sliding window length in seconds (whole number ≥ 1, default 10). */
  windowSizeSeconds(value: number): this
  /** Increments closer together than this share a bucket (whole ms ≥ 1, default 100). */
  rateGroupSizeMs(value: number): this
  /** Suppressed strategy's hard ceiling as a multiple of the soft one (≥ 1.0, default 1.0). */
  hardLimitFactor(value: number): this
  /** How long a key's suppression factor may be reused (whole ms ≥ 1, default 100). */
  suppressionFactorCacheMs(value: number): this
  /** First part of every Redis key (1–255 bytes, no `:`; default `trypema`). */
  redisPrefix(value: string): this
  /** Hybrid provider's reconciliation period (whole ms ≥ 1, default 10). */
  syncIntervalMs(value: number): this
  /** How often idle keys are looked for (whole ms ≥ 1, default 10000). */
  cleanupIntervalMs(value: number): this
  /** Idle time after which a key's local state is dropped (whole ms ≥ 1, default: the window). */
  staleAfterMs(value: number): this
  /** Validates every setting and creates the limiter; rejects with a `TrypemaError` if one is invalid. */
  build(): Promise<RateLimiter>
}

export declare class RateLimiter {
  /** Starts configuring a limiter; pass a Redis URL to enable the `redis` and `hybrid` providers. */
  static builder(redisUrl?: string): RateLimiterBuilder
  private constructor()
  /** The configured window length in seconds. */
  readonly windowSizeSeconds: number
  /** In-process limits: synchronous, no I/O. */
  readonly local: LocalProvider
  /**
   * Limits shared through Redis: one round trip per call, exact across processes.
   * Throws `TRYPEMA_REDIS_NOT_CONFIGURED` on a limiter built without a Redis URL.
   */
  readonly redis: RedisProvider
  /**
   * Limits shared through Redis, decided locally and synchronised every `syncIntervalMs`.
   * Throws `TRYPEMA_REDIS_NOT_CONFIGURED` on a limiter built without a Redis URL.
   */
  readonly hybrid: HybridProvider
  /** Stops background work and releases all state; later calls fail with `TRYPEMA_CLOSED`. */
  close(): Promise<void>
}
