// Option types shared by `trypema/express` and `trypema/fastify` (the engine behind both is
// adapter-core.js). Self-contained: no framework's types are needed. Import them from the
// adapter entry points, which re-export them.

import type { RateLimiter } from './index'

/** Where the limit's state lives (see the `trypema` README). */
export type RateLimitProvider = 'redis' | 'hybrid' | 'local'

/** What happens at the limit: `absolute` rejects, `suppressed` sheds a growing share of traffic. */
export type RateLimitStrategy = 'absolute' | 'suppressed'

/** What `defaultKey` reads from a request (Express's and Fastify's requests have both). */
export interface ClientAddressSource {
  readonly ip?: string | undefined
  readonly socket?: { readonly remoteAddress?: string | undefined } | undefined
}

/** A value, or a Promise (any thenable) of one: callbacks may be `async`. */
export type MaybePromise<T> = T | PromiseLike<T>

/**
 * A callback type whose parameters are checked bivariantly (like a method's), so a callback may
 * declare its request with the framework's own, richer type (`(req: express.Request) => …`).
 */
export type Callback<Args extends unknown[], Result> = {
  bivarianceHack(...args: Args): Result
}['bivarianceHack']

/**
 * What the adapters store on the request (`req.rateLimit` by default, see `requestPropertyName`)
 * for every counted request, like express-rate-limit does.
 */
export interface RateLimitInfo {
  /** The capacity per window: `floor(window × rate)` (for `suppressed`, of the soft limit). */
  readonly limit: number
  /** Units counted in the window, as the limiter sees them (`limit − what is left`). */
  readonly used: number
  /** What is left; 0 once the request was limited or shed. Equals the `RateLimit` header's `r`. */
  readonly remaining: number
  /** When quota frees up (`t` of the `RateLimit` header), or when a retry may succeed. */
  readonly resetTime: Date
  /** The key the request was counted under, as `key(req)` returned it (before `safeKey`). */
  readonly key: string
}

/**
 * What to do when the limiter fails (Redis unreachable: `code === 'TRYPEMA_REDIS'`; a `key`,
 * `rate`, `cost` or `skip` callback that throws, rejects or returns something invalid; a timeout):
 * - `'allow'` (default): fail open, the request continues;
 * - `'deny'`: answer 503 with `{ "error": "Service Unavailable", "message": ... }`;
 * - a function: called with the error and must answer or call `next` itself. If it throws or
 *   its Promise rejects, that error goes to `next(err)` (the framework's error handler). Calls to
 *   `next` after the first are ignored.
 */
export type ErrorHandler<Req, Res, Next> = Callback<[error: unknown, req: Req, res: Res, next: Next], void | PromiseLike<void>>

/** The options of `rateLimit` (Express) and of the Fastify plugin. */
export interface RateLimitOptionsFor<Req, Res, Next> {
  /** The limiter, from `await RateLimiter.builder(redisUrl).build()`. */
  limiter: RateLimiter
  /** `'redis'` and `'hybrid'` need a limiter built with a Redis URL; `'local'` is in-process. */
  provider: RateLimitProvider
  strategy: RateLimitStrategy
  /**
   * Allowed requests per second, averaged over the limiter's window: a key may make
   * `floor(window × rate)` requests (times `cost`) per window, at most 2^53 − 1. A function is
   * called once per request (it may be `async`). As in the core, the first request that creates
   * a key's state fixes its rate until that state expires.
   */
  rate: number | Callback<[req: Req], MaybePromise<number>>
  /**
   * The rate-limit key of a request; default `defaultKey` (the client IP, IPv6 grouped by /56).
   * Any string works (numbers are converted): every key goes through `safeKey`. Anything else
   * (`undefined`, an object, a throw, a rejection) takes the `onError` path.
   */
  key?: Callback<[req: Req], MaybePromise<string | number>>
  /** Units a request uses: a whole number ≥ 0, default 1. */
  cost?: number | Callback<[req: Req], MaybePromise<number>>
  /** Requests for which this returns (or resolves to) `true` are not counted nor limited. */
  skip?: Callback<[req: Req], MaybePromise<boolean>>
  /** Default `'allow'` (fail open). See `ErrorHandler`. */
  onError?: 'allow' | 'deny' | ErrorHandler<Req, Res, Next>
  /** Status for a request declined by the suppressed strategy: 429 (default) or 503. */
  suppressedStatus?: 429 | 503
  /**
   * Send `RateLimit-Policy` and `RateLimit` (draft-ietf-httpapi-ratelimit-headers). Default true.
   * Both are structured-field lists: when several limiters run on one route, each appends its
   * own item, so give each a distinct `policyName`.
   */
  standardHeaders?: boolean
  /** Also send `X-RateLimit-Limit`, `X-RateLimit-Remaining` and `X-RateLimit-Reset`. Default false. */
  legacyHeaders?: boolean
  /**
   * The limiter's window in seconds, for `RateLimit-Policy`'s `w`. Only needed for a limiter-like
   * object whose window cannot be read (a trypema `RateLimiter` has `windowSizeSeconds`). If it
   * disagrees with the limiter's window, creating the middleware throws a TypeError.
   */
  windowSizeSeconds?: number
  /** Name of this policy in the `RateLimit` / `RateLimit-Policy` headers; default `'default'`. */
  policyName?: string
  /**
   * Give up on a request's limiting (its `skip` / `key` / `rate` / `cost` callbacks and the
   * limiter call) after this many ms and take the `onError` path (error code
   * `TRYPEMA_EXPRESS_TIMEOUT`). A whole number from 1 to 2^31 − 1. Default: none; Redis calls
   * are already bounded by the core's own timeout.
   */
  timeoutMs?: number
  /**
   * Give a request's cost back when its response fails: status ≥ 400, or the connection closes
   * before the response is complete. Default false. (Requests the limiter refused were never
   * counted and are not refunded.)
   */
  skipFailedRequests?: boolean
  /** Give a request's cost back when its response succeeds (status < 400). Default false. */
  skipSuccessfulRequests?: boolean
  /** Where `RateLimitInfo` is stored on the request; default `'rateLimit'`; `false`: nowhere. */
  requestPropertyName?: string | false
}
