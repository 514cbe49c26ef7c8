// Typings of `trypema/express`: Express middleware built on a trypema `RateLimiter`.
//
// Self-contained: they do not need `@types/express`. The request and response types below are
// the parts of Express's that the options' callbacks typically use, so Express's own `Request` /
// `Response` fit them; callbacks may also declare Express's types (or any richer type) for
// their parameter, and `rateLimit<MyRequest, MyResponse>(...)` types everything with your own.

import type { RateLimitDecision } from './index'
import type {
  RateLimitProvider,
  RateLimitStrategy,
  RateLimitInfo,
  ErrorHandler,
  RateLimitOptionsFor,
  MaybePromise,
  ClientAddressSource,
} from './adapter-core'

export type { RateLimitDecision, RateLimitProvider, RateLimitStrategy, RateLimitInfo, MaybePromise, ClientAddressSource }

declare global {
  // Express's augmentation points (as declared by @types/express): whatever an app or a library
  // adds to them (e.g. passport's `req.user`) shows up on `RateLimitRequest` too.
  namespace Express {
    interface Request {}
    interface Response {}
  }
}

/** The request the options' callbacks see by default: the parts of Express's `Request` they use. */
export interface RateLimitRequest extends Express.Request {
  /** The client address (honours `app.set('trust proxy', …)`). */
  readonly ip: string | undefined
  readonly ips: readonly string[]
  readonly socket: { readonly remoteAddress?: string | undefined }
  readonly method: string
  readonly url: string
  readonly originalUrl: string
  readonly path: string
  readonly hostname: string
  readonly protocol: string
  readonly secure: boolean
  readonly headers: { readonly [name: string]: string | string[] | undefined }
  readonly params: any
  readonly query: any
  readonly body: any
  /** A request header (case-insensitive). */
  get(name: string): string | undefined
  header(name: string): string | undefined
}

/** The response an `onError` handler sees by default: the parts of Express's `Response` it uses. */
export interface RateLimitResponse extends Express.Response {
  statusCode: number
  readonly headersSent: boolean
  status(code: number): this
  json(body?: any): this
  send(body?: any): this
  set(field: string, value?: string | string[]): this
  setHeader(name: string, value: number | string | readonly string[]): unknown
  getHeader(name: string): number | string | string[] | undefined
  end(chunk?: any): unknown
}

/** What any request type must offer (a custom `key` needs nothing; `defaultKey` reads `ip` / `socket`). */
export type RequestBase = object

/** What any response type must offer: Node's `ServerResponse` header API. */
export interface ResponseBase {
  statusCode: number
  setHeader(name: string, value: number | string | readonly string[]): unknown
  getHeader(name: string): unknown
}

/** `next`: no argument lets the request through, an error goes to the error handler. */
export type NextFunction = (error?: unknown) => void

/** See `ErrorHandler`: what to do when the limiter (or a callback) fails. */
export type RateLimitErrorHandler<Req = RateLimitRequest, Res = RateLimitResponse> = ErrorHandler<Req, Res, NextFunction>

/** The options of `rateLimit`; see the README for each. */
export type RateLimitOptions<Req = RateLimitRequest, Res = RateLimitResponse> = RateLimitOptionsFor<Req, Res, NextFunction>

/** The middleware: fits `app.use` / `app.get(path, …)` of Express 4 and 5, and Connect. */
export type RateLimitMiddleware<Req = RateLimitRequest, Res = RateLimitResponse> = (req: Req, res: Res, next: NextFunction) => void

/**
 * Creates the middleware. Options are checked now: a bad one throws a `TypeError`, and so does a
 * `'redis'` / `'hybrid'` provider on a limiter built without a Redis URL.
 *
 * Each request makes exactly one limiter call (`incWithQuota`: one Redis round trip), then:
 *
 * | decision | response |
 * |---|---|
 * | `allowed` | `next()` |
 * | `rejected` (absolute) | 429 `{ "error": "Too Many Requests", "retryAfterSeconds": n }`, `Retry-After: n` (= ceil(retryAfterMs / 1000), ≥ 1) |
 * | `suppressed`, admitted | `next()` with `Trypema-Suppression-Factor: <0..1>` |
 * | `suppressed`, declined | `suppressedStatus` with `{ error, "retryAfterSeconds": 1, suppressionFactor }`, `Retry-After: 1` |
 *
 * Every counted response (with `standardHeaders`, the default) carries
 * `RateLimit-Policy: "<policyName>";q=<limit>;w=<window>` and
 * `RateLimit: "<policyName>";r=<remaining>;t=<seconds until quota frees up>`; limited and shed
 * responses say `r=0;t=<Retry-After>`. `legacyHeaders` adds `X-RateLimit-Limit`, `-Remaining`
 * and `-Reset` (Unix seconds). Decisions made by the limiter's `onRedisError` policy while Redis
 * was unreachable add `Trypema-Degraded: 1`. `req.rateLimit` (see `RateLimitInfo`) is set on
 * every counted request.
 */
export declare function rateLimit<Req extends RequestBase = RateLimitRequest, Res extends ResponseBase = RateLimitResponse>(
  options: RateLimitOptions<Req, Res>,
): RateLimitMiddleware<Req, Res>

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
