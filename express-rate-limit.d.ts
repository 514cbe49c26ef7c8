// Typings of `trypema/express-rate-limit`: a store for express-rate-limit (v7, v8) that counts in
// a trypema limiter's sliding window. Self-contained: they need neither express-rate-limit's nor
// Express's types, and a `TrypemaStore` is assignable to express-rate-limit's `Store`.

import type { RateLimiter } from './index'

/** What the store reports for a key (express-rate-limit's `ClientRateLimitInfo`). */
export interface ClientRateLimitInfo {
  /** Hits of the key in the window, this one included (over the limit too). */
  totalHits: number
  /** When the oldest of those hits leaves the window. */
  resetTime: Date | undefined
}

export interface TrypemaStoreOptions {
  /** The limiter: its window must equal express-rate-limit's `windowMs`. */
  limiter: RateLimiter
  /**
   * Where the counts live: `'redis'` (default: shared by every process on the same Redis and
   * limiter prefix, exact, one round trip per hit), `'hybrid'` (shared, mostly without I/O;
   * counts of other processes arrive with their synchronisation) or `'local'` (this process).
   */
  provider?: 'redis' | 'hybrid' | 'local'
  /** Prepended to every key; default `'erl/'`. Give each store on one limiter its own. */
  prefix?: string
}

/**
 * `new TrypemaStore({ limiter, provider: 'redis' })`, passed as express-rate-limit's `store`.
 * Every hit is recorded in trypema's sliding window (over the limit too, as express-rate-limit
 * expects); `totalHits` is the count in the window and `resetTime` when its oldest hit leaves.
 * `resetAll` is not supported (it would need a scan of Redis).
 */
export declare class TrypemaStore {
  constructor(options: TrypemaStoreOptions)
  /** The prefix of every key. */
  readonly prefix: string
  /** `true` only for the `local` provider (counts that stay in this process). */
  readonly localKeys: boolean
  readonly provider: 'redis' | 'hybrid' | 'local'
  /** The limiter's window in ms. */
  readonly windowMs: number
  /** Checks express-rate-limit's `windowMs` against the limiter's window (a mismatch throws, and every later call fails). */
  init(options: { readonly windowMs: number }): void
  /** Records one hit and returns the key's hits in the window. */
  increment(key: string): Promise<ClientRateLimitInfo> | ClientRateLimitInfo
  /** Takes back one hit of `key`. */
  decrement(key: string): Promise<void> | void
  /** Forgets `key`'s hits. */
  resetKey(key: string): Promise<void> | void
  /** The key's hits in the window, or `undefined` without any; records nothing. */
  get(key: string): Promise<ClientRateLimitInfo | undefined> | ClientRateLimitInfo | undefined
}
