// Typings of `trypema/express`: Express middleware built on a trypema `RateLimiter`.

import type { Request, Response, NextFunction, RequestHandler } from 'express'
import type { RateLimiter, RateLimitDecision } from './index'

export type { RateLimitDecision }

/** Where the limit's state lives (see the `trypema` README). */
export type RateLimitProvider = 'redis' | 'hybrid' | 'local'

/** What happens at the limit: `absolute` rejects, `suppressed` sheds a growing share of traffic. */
export type RateLimitStrategy = 'absolute' | 'suppressed'

/**
 * What to do when the limiter fails (Redis unreachable: `code === 'TRYPEMA_REDIS'`; a `key`,
 * `rate`, `cost` or `skip` callback that throws or returns something invalid; a timeout):
 * - `'allow'` (default): fail open, the request continues with `next()`;
 * - `'deny'`: answer 503 with `{ "error": "Service Unavailable", "message": ... }`;
 * - a function: called with the error and must answer or call `next` itself. If it throws or
 *   its Promise rejects, that error goes to `next(err)` (Express's error handler). Calls to
 *   `next` after the first are ignored.
 */
export type RateLimitErrorHandler = (
  error: unknown,
  req: Request,
  res: Response,
  next: NextFunction,
) => void | Promise<void>

export interface RateLimitOptions {
  /** The limiter, from `await RateLimiter.builder(redisUrl).build()`. */
  limiter: RateLimiter
  /** `'redis'` and `'hybrid'` need a limiter built with a Redis URL; `'local'` is in-process. */
  provider: RateLimitProvider
  strategy: RateLimitStrategy
  /**
   * Allowed requests per second, averaged over the limiter's window: a key may make
   * `floor(window × rate)` requests (times `cost`) per window. A function is called once per
   * request. As in the core, the first request that creates a key's state fixes its rate until
   * that state expires.
   */
  rate: number | ((req: Request) => number)
  /**
   * The rate-limit key of a request; default `defaultKey` (the client IP, IPv6 grouped by /56).
   * Any string works (numbers are converted): every key goes through `safeKey`, so keys with ':',
   * empty keys and keys longer than 255 bytes are mapped to valid Redis keys instead of failing.
   * Anything else (`undefined`, an object, a throw) takes the `onError` path.
   */
  key?: (req: Request) => string | number
  /** Units a request uses: a whole number ≥ 0, default 1. */
  cost?: number | ((req: Request) => number)
  /** Requests for which this returns (or resolves to) `true` are not counted nor limited. */
  skip?: (req: Request) => boolean | Promise<boolean>
  /** Default `'allow'` (fail open). See `RateLimitErrorHandler`. */
  onError?: 'allow' | 'deny' | RateLimitErrorHandler
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
   * The limiter's window in seconds, used for `RateLimit-Policy`'s `w` and the quota. Only
   * needed when it cannot be read from the limiter: the middleware takes the limiter's own
   * `windowSizeSeconds` property if it has one, else reads it from its local provider when the
   * middleware is created (a capacity-0 `inc` on a private key: always rejected, records nothing,
   * no I/O), else uses this option, else learns it from the first rejection. If given and the
   * limiter's window is known to differ, `rateLimit` throws a TypeError.
   */
  windowSizeSeconds?: number
  /** Name of this policy in the `RateLimit` / `RateLimit-Policy` headers; default `'default'`. */
  policyName?: string
  /**
   * Give up on a limiter call after this many ms and take the `onError` path (error code
   * `TRYPEMA_EXPRESS_TIMEOUT`). Default: no extra timeout; Redis calls are already bounded
   * by the core's own timeout.
   */
  timeoutMs?: number
}

/**
 * Creates the middleware. Options are checked now: a bad one throws a `TypeError`, and so does a
 * `'redis'` / `'hybrid'` provider on a limiter built without a Redis URL.
 *
 * Each request makes exactly one limiter call (`inc`), then:
 *
 * | decision | response |
 * |---|---|
 * | `allowed` | `next()` |
 * | `rejected` (absolute) | 429 `{ "error": "Too Many Requests", "retryAfterSeconds": n }`, `Retry-After: n` (= ceil(retryAfterMs / 1000), ≥ 1) |
 * | `suppressed`, admitted | `next()` with `Trypema-Suppression-Factor: <0..1>` |
 * | `suppressed`, declined | `suppressedStatus` with `{ error, "retryAfterSeconds": 1, suppressionFactor }`, `Retry-After: 1` |
 *
 * Headers (with `standardHeaders`, the default):
 * - every response: `RateLimit-Policy: "<policyName>";q=<quota>;w=<window>` where quota is
 *   `floor(window × rate)` (for `suppressed`, the soft capacity);
 * - limited and suppressed responses: `RateLimit: "<policyName>";r=0;t=<seconds>` with `t` the
 *   Retry-After value (1 for suppressed).
 *
 * `RateLimit` is not sent on plain allowed responses: an `allowed` decision does not carry the
 * remaining quota, and with Redis a second round trip per request (or an in-process estimate
 * that other processes would make wrong) is a worse trade than omitting it. `r` is therefore only
 * reported when it is known exactly (0 once the limit is reached).
 */
export declare function rateLimit(options: RateLimitOptions): RequestHandler

/** What `defaultKey` reads from a request (an Express `Request` has both). */
export interface ClientAddressSource {
  readonly ip?: string | undefined
  readonly socket?: { readonly remoteAddress?: string | undefined } | undefined
}

/**
 * The client's address as a key: `req.ip` (honours `app.set('trust proxy', ...)`), else
 * `req.socket.remoteAddress`. IPv4 as is; IPv4-mapped IPv6 (`::ffff:1.2.3.4`) → `1.2.3.4`;
 * other IPv6 → its /56 prefix in canonical form, e.g. `2001:db8:1234:5600::/56`. A value that is
 * not an IP address is returned unchanged. Throws (code `TRYPEMA_EXPRESS_NO_CLIENT_ADDRESS`)
 * when there is no address at all; in the middleware that takes the `onError` path.
 */
export declare function defaultKey(req: ClientAddressSource): string

/**
 * Maps any string to a valid Redis key (1–255 bytes, no ':'), injectively: valid keys without
 * '%' are unchanged; '%' → '%25', ':' → '%3A', a lone UTF-16 surrogate → '%uXXXX'; '' → '%00';
 * a result over 255 bytes → '%h' + SHA-256 hex. The middleware applies it to every key.
 */
export declare function safeKey(key: string): string
