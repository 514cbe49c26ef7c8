// Public typings of the `trypema` package (self-contained: they need no other package's types).

/** Admitted. */
export interface AllowedDecision {
  readonly kind: 'allowed'
}

/** Absolute strategy: the limit is reached and nothing was recorded. */
export interface RejectedDecision {
  readonly kind: 'rejected'
  /** The window the limit applies to. */
  readonly windowSizeSeconds: number
  /**
   * Milliseconds until the oldest counted bucket leaves the window; a whole window
   * (`windowSizeSeconds * 1000`) when the count can never fit (count > capacity).
   */
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

/** A key's quota in one strategy. */
export interface Quota {
  /** Capacity: `floor(window × rate)` (absolute) or the soft capacity `window × rate` (suppressed). */
  readonly limit: number
  /** What is left of `limit` (never below 0). */
  readonly remaining: number
  /** Milliseconds until the oldest recorded bucket leaves the window (0 without state). */
  readonly resetMs: number
}

/** What `incWithQuota` resolves to: the decision `inc` would give, and the quota after it. */
export interface QuotaDecision<D extends RateLimitDecision = RateLimitDecision> extends Quota {
  readonly decision: D
  /** Decided by the `onRedisError` policy while Redis was unreachable. */
  readonly degraded: boolean
}

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
  | 'TRYPEMA_INVALID_COMMAND_TIMEOUT'
  | 'TRYPEMA_INVALID_LOCAL_RATE_FACTOR'
  | 'TRYPEMA_INVALID_COUNT'
  | 'TRYPEMA_INVALID_KEY'
  | 'TRYPEMA_INVALID_REDIS_KEY'
  | 'TRYPEMA_INVALID_REDIS_PREFIX'
  | 'TRYPEMA_REDIS_NOT_CONFIGURED'
  | 'TRYPEMA_REDIS'
  | 'TRYPEMA_REDIS_TIMEOUT'
  | 'TRYPEMA_REDIS_AUTH'
  | 'TRYPEMA_UNEXPECTED_SCRIPT_RESULT'
  | 'TRYPEMA_CLOSED'
  | 'TRYPEMA_INTERNAL'
  /** Thrown by `require('trypema')`: no prebuilt addon for this platform. */
  | 'TRYPEMA_UNSUPPORTED_PLATFORM'
  /** Thrown by `require('trypema')`: the platform package is missing or its addon failed to load. */
  | 'TRYPEMA_NATIVE_LOAD_FAILED'

export interface TrypemaError extends Error {
  code: TrypemaErrorCode
}

/** What every provider offers beyond `inc`, for one strategy. */
interface QuotaMethods<Sync extends boolean> {
  /** The key's quota (for a key without state, from `rate`); records nothing. */
  get(key: string, rate: number): Sync extends true ? Quota : Promise<Quota>
  /** Takes back up to `count` recorded units of `key`, newest first, never below zero; returns how many. */
  refund(key: string, count: number): Sync extends true ? number : Promise<number>
  /** Forgets the key's state (for Redis-backed providers: for every process sharing the Redis and prefix). */
  reset(key: string): Sync extends true ? void : Promise<void>
}

/** In-process absolute strategy: synchronous. */
export interface LocalAbsolute extends QuotaMethods<true> {
  /** Records `count` (default 1) for `key` unless that would exceed `floor(window × rate)`. */
  inc(key: string, rate: number, count?: number): AllowedDecision | RejectedDecision
  /** Like `inc`, and also returns the key's quota after the call. */
  incWithQuota(key: string, rate: number, count?: number): QuotaDecision<AllowedDecision | RejectedDecision>
  /** Whether one more call would be admitted now; records nothing. */
  isAllowed(key: string): AllowedDecision | RejectedDecision
}

/** In-process suppressed strategy: synchronous. */
export interface LocalSuppressed extends QuotaMethods<true> {
  /** Records `count` (default 1) as observed for `key` and decides whether to admit it. */
  inc(key: string, rate: number, count?: number): AllowedDecision | SuppressedDecision
  /** Like `inc`, and also returns the key's quota (against the soft capacity) after the call. */
  incWithQuota(key: string, rate: number, count?: number): QuotaDecision<AllowedDecision | SuppressedDecision>
  /** The key's current suppression factor in [0, 1] (0 for an unknown key); records nothing. */
  getSuppressionFactor(key: string): number
}

export interface LocalProvider {
  readonly absolute: LocalAbsolute
  readonly suppressed: LocalSuppressed
}

/** Absolute strategy through Redis (one round trip per call, exact in Redis server time), or hybrid. */
export interface RemoteAbsolute extends QuotaMethods<false> {
  /** Records `count` (default 1) for `key` unless that would exceed `floor(window × rate)`. */
  inc(key: string, rate: number, count?: number): Promise<AllowedDecision | RejectedDecision>
  /** Like `inc`, and also returns the key's quota after the call (same round trip). */
  incWithQuota(key: string, rate: number, count?: number): Promise<QuotaDecision<AllowedDecision | RejectedDecision>>
  /** Whether one more call would be admitted now; records nothing. */
  isAllowed(key: string): Promise<AllowedDecision | RejectedDecision>
}

/** Suppressed strategy through Redis, or hybrid. */
export interface RemoteSuppressed extends QuotaMethods<false> {
  /** Records `count` (default 1) as observed for `key` and decides whether to admit it. */
  inc(key: string, rate: number, count?: number): Promise<AllowedDecision | SuppressedDecision>
  /** Like `inc`, and also returns the key's quota (against the soft capacity) after the call. */
  incWithQuota(key: string, rate: number, count?: number): Promise<QuotaDecision<AllowedDecision | SuppressedDecision>>
  /** The key's current suppression factor in [0, 1] (0 for an unknown key); records nothing. */
  getSuppressionFactor(key: string): Promise<number>
}

export type RedisAbsolute = RemoteAbsolute
export type RedisSuppressed = RemoteSuppressed
/**
 * Absolute strategy, hybrid: calls are served from leases of quota reserved in Redis, with no
 * I/O while a lease covers them; instances sharing a key never admit more than its capacity.
 */
export type HybridAbsolute = RemoteAbsolute
/** Suppressed strategy, hybrid: the factor is computed locally; admissions come from leases. */
export type HybridSuppressed = RemoteSuppressed

export interface RedisProvider {
  readonly absolute: RedisAbsolute
  readonly suppressed: RedisSuppressed
}

export interface HybridProvider {
  readonly absolute: HybridAbsolute
  readonly suppressed: HybridSuppressed
}

/** What Redis-backed calls do while Redis is unreachable. */
export type OnRedisError = 'reject' | 'allow' | 'local'

/** PEM text or bytes. */
export type Pem = string | Uint8Array

interface ConnectionCommon {
  /** A CA to trust instead of the system's, and a client certificate and key (mutual TLS). */
  tls?: { ca?: Pem; cert?: Pem; key?: Pem }
  /** How long connecting may take (default 2000 ms). */
  connectTimeoutMs?: number
  /** How long one Redis round trip may take (default 2000 ms). */
  commandTimeoutMs?: number
  /** Default `'reject'`. */
  onRedisError?: OnRedisError
}

/** How to reach Redis: exactly one of `url`, `cluster` and `sentinel`. */
export type ConnectionOptions = ConnectionCommon &
  (
    | { /** `redis://` or `rediss://` (TLS); `user:password@` for ACL users. */ url: string; cluster?: never; sentinel?: never }
    | { /** Seed node URLs of a Redis Cluster. */ cluster: string[]; url?: never; sentinel?: never }
    | {
        /**
         * Sentinel URLs (their credentials are the Sentinels') and the master's name; the
         * master's own credentials when they differ from the Sentinels'.
         */
        sentinel: { urls: string[]; masterName: string; username?: string; password?: string }
        url?: never
        cluster?: never
      }
  )

export interface DecisionMetrics {
  readonly provider: 'local' | 'redis' | 'hybrid'
  readonly strategy: 'absolute' | 'suppressed'
  readonly allowed: number
  readonly rejected: number
  readonly suppressedAdmitted: number
  readonly suppressedDeclined: number
  /** Calls that failed because Redis was unavailable (under `onRedisError: 'reject'`). */
  readonly errors: number
  /** Decisions made by the `onRedisError` policy. */
  readonly degraded: number
}

export interface LimiterMetrics {
  readonly decisions: DecisionMetrics[]
  readonly redisRoundTrips: number
  readonly redisFailures: number
  /** Upper bound of the power-of-two bucket holding the median / 99th percentile. */
  readonly redisLatencyP50Ms: number
  readonly redisLatencyP99Ms: number
  readonly breakerOpened: number
  /** The circuit breaker is open: Redis recently failed to answer. */
  readonly redisDegraded: boolean
  readonly hybridLeasedUnits: number
  readonly hybridReturnedUnits: number
}

export declare class RateLimiterBuilder {
  /** Use `RateLimiter.builder(...)`; the same arguments. */
  constructor(connection?: string | ConnectionOptions)
  /** Sliding window length in seconds (whole number from 1 to 10^9, default 10). */
  windowSizeSeconds(value: number): this
  /** Increments closer together than this share a bucket (whole ms ≥ 1, default 100; at least window / 500). */
  rateGroupSizeMs(value: number): this
  /** Suppressed strategy's hard ceiling as a multiple of the soft one (≥ 1.0, default 1.0). */
  hardLimitFactor(value: number): this
  /** How long a key's suppression factor may be reused (whole ms ≥ 1, default 100). */
  suppressionFactorCacheMs(value: number): this
  /** First part of every Redis key (1–255 bytes, no `:`; default `trypema`). */
  redisPrefix(value: string): this
  /** Hybrid provider's reconciliation period (whole ms ≥ 1 and at most the window, default 10). */
  syncIntervalMs(value: number): this
  /** How often idle keys are looked for (whole ms ≥ 1, default 10000). */
  cleanupIntervalMs(value: number): this
  /** Idle time after which a key's local state is dropped (whole ms, at least the window, which is the default). */
  staleAfterMs(value: number): this
  /** How long one Redis round trip may take before the call fails with `TRYPEMA_REDIS_TIMEOUT` (default 2000). */
  commandTimeoutMs(value: number): this
  /** What Redis-backed calls do while Redis is unreachable (default `'reject'`). */
  onRedisError(policy: OnRedisError): this
  /** Under `'local'`, the share of each rate this process allows alone (0 < f ≤ 1, default 1). */
  localRateFactor(value: number): this
  /**
   * Validates every setting and creates the limiter. With Redis, also connects and checks the
   * connection, credentials and permissions (`TRYPEMA_REDIS` / `TRYPEMA_REDIS_AUTH`).
   */
  build(): Promise<RateLimiter>
}

export declare class RateLimiter {
  /**
   * Starts configuring a limiter: nothing (local provider only), a Redis URL, or connection
   * options. A bad combination of options is a `TypeError`.
   */
  static builder(connection?: string | ConnectionOptions): RateLimiterBuilder
  private constructor()
  /** The configured window length in seconds. */
  readonly windowSizeSeconds: number
  /** In-process limits: synchronous, no I/O. */
  readonly local: LocalProvider
  /**
   * Limits shared through Redis: one round trip per call, exact across processes.
   * Throws `TRYPEMA_REDIS_NOT_CONFIGURED` on a limiter built without Redis.
   */
  readonly redis: RedisProvider
  /**
   * Limits shared through Redis, decided locally from leases and synchronised every
   * `syncIntervalMs`. Throws `TRYPEMA_REDIS_NOT_CONFIGURED` on a limiter built without Redis.
   */
  readonly hybrid: HybridProvider
  /** Counters of what this limiter decided and of its Redis round trips. */
  metrics(): LimiterMetrics
  /** The same counters in the Prometheus text exposition format. */
  metricsText(): string
  /**
   * Refuses new calls, waits for those in flight, gives back unused hybrid leases and pushes
   * pending hybrid counts (bounded by the command timeout), then releases everything. Later
   * calls fail with `TRYPEMA_CLOSED`. A limiter that is never closed is freed by the garbage
   * collector once unreachable.
   */
  close(): Promise<void>
}
