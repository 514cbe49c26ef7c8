// Typings of `trypema/fastify`: the trypema rate limiter as a Fastify plugin.
//
// Self-contained: they do not need Fastify's types. The request and reply types below are the
// parts of Fastify's that the options' callbacks typically use; callbacks may also declare
// Fastify's own `FastifyRequest` / `FastifyReply` for their parameters.

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

/** The plugin's type (see `trypemaRateLimit` below). */
type TrypemaRateLimitPlugin = (
  instance: unknown,
  options: trypemaRateLimit.TrypemaFastifyOptions,
  done: (error?: Error) => void,
) => void

declare namespace trypemaRateLimit {
  export type { RateLimitDecision, RateLimitProvider, RateLimitStrategy, RateLimitInfo, MaybePromise, ClientAddressSource }

  /** The request the options' callbacks see by default: the parts of Fastify's `FastifyRequest` they use. */
  export interface FastifyRequestLike {
    readonly id: string
    /** The client address (honours Fastify's `trustProxy`). */
    readonly ip: string
    readonly ips?: readonly string[] | undefined
    readonly socket: { readonly remoteAddress?: string | undefined }
    readonly hostname: string
    readonly protocol: string
    readonly method: string
    readonly url: string
    readonly headers: { readonly [name: string]: string | string[] | undefined }
    readonly routeOptions: { readonly url?: string | undefined }
    readonly params: any
    readonly query: any
    readonly body: any
  }

  /** The reply an `onError` handler sees by default: the parts of Fastify's `FastifyReply` it uses. */
  export interface FastifyReplyLike {
    readonly sent: boolean
    statusCode: number
    code(statusCode: number): this
    status(statusCode: number): this
    header(key: string, value: any): this
    getHeader(key: string): number | string | string[] | undefined
    send(payload?: any): this
  }

  /** The hook's `done`: no argument lets the request through, an error goes to Fastify's error handler. */
  export type FastifyDone = (error?: Error) => void

  /** See `ErrorHandler`: `(error, request, reply, done)`; answer with `reply`, or call `done()` / `done(error)`. */
  export type TrypemaFastifyErrorHandler<Req = FastifyRequestLike, Reply = FastifyReplyLike> = ErrorHandler<Req, Reply, FastifyDone>

  /** The plugin's options: those of `trypema/express`'s `rateLimit` (see its README section). */
  export type TrypemaFastifyOptions<Req = FastifyRequestLike, Reply = FastifyReplyLike> = RateLimitOptionsFor<Req, Reply, FastifyDone>

  export const trypemaRateLimit: TrypemaRateLimitPlugin
  export { trypemaRateLimit as default }

  /** As in `trypema/express`: the client IP as a key (IPv6 grouped by /56). */
  export function defaultKey(req: ClientAddressSource): string
  /** As in `trypema/express`: any string as a valid limiter key, injectively. */
  export function safeKey(key: string): string
}

/**
 * The plugin: `await fastify.register(trypemaRateLimit, { limiter, provider, strategy, rate })`.
 * It adds an `onRequest` hook to the context it is registered in (it is not encapsulated, like a
 * `fastify-plugin` plugin), so every route of that context registered after it is limited.
 * Headers, status codes, bodies, `request.rateLimit` and `onError` are those of
 * `trypema/express`. Options are checked when it is registered: a bad one fails the
 * registration with a `TypeError`.
 */
declare function trypemaRateLimit(...args: Parameters<TrypemaRateLimitPlugin>): void

export = trypemaRateLimit
