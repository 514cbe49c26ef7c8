// `node scripts/bench-express.mjs`: requests per second of one Express app limited four ways,
// against the same Redis, in one run (absolute figures drift on shared machines: read the ratios):
//
//   none                 no rate limiting (the ceiling)
//   erl+rate-limit-redis express-rate-limit 8 with rate-limit-redis (ioredis), the usual setup
//   erl+TrypemaStore     express-rate-limit 8 with trypema/express-rate-limit (provider 'redis')
//   trypema/express      trypema's own middleware (provider 'redis', strategy 'absolute')
//
// Each variant runs in its own server process; autocannon loads it from this process with
// 1000 clients (an `x-client` header, the key of every variant) under a limit that is never
// reached, so every request does its full counting work. Rounds are interleaved and the best
// round of each variant is reported.
//
//   --seconds N   length of one measurement (default 5)   --rounds N   (default 2)
//   --connections N  (default 64)   REDIS_URL: use that Redis instead of a private redis-server
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'

const VARIANTS = ['none', 'erl+rate-limit-redis', 'erl+TrypemaStore', 'trypema/express']
const WINDOW_SECONDS = 60
const LIMIT = 1_000_000_000 // per client per window: never reached
const CLIENTS = 1000

function flag(name, fallback) {
  const at = process.argv.indexOf(name)
  return at === -1 ? fallback : Number(process.argv[at + 1])
}

// ---------------------------------------------------------------------------------------------
// Server mode: `bench-express.mjs --serve <variant> <redis url> <prefix>`

async function serve(variant, redisUrl, prefix) {
  const { default: express } = await import('express')
  const app = express()
  app.set('etag', false)
  const key = (req) => req.get('x-client') ?? 'anonymous'
  let close = async () => {}
  if (variant === 'erl+rate-limit-redis') {
    const { rateLimit } = await import('express-rate-limit')
    const { RedisStore } = await import('rate-limit-redis')
    const { default: Redis } = await import('ioredis')
    const client = new Redis(redisUrl)
    close = async () => client.quit()
    app.use(
      rateLimit({
        windowMs: WINDOW_SECONDS * 1000,
        limit: LIMIT,
        standardHeaders: 'draft-8',
        legacyHeaders: false,
        keyGenerator: key,
        store: new RedisStore({ sendCommand: (command, ...args) => client.call(command, ...args), prefix: `${prefix}:` }),
      }),
    )
  } else if (variant === 'erl+TrypemaStore' || variant === 'trypema/express') {
    const { RateLimiter } = await import('trypema')
    const limiter = await RateLimiter.builder(redisUrl).windowSizeSeconds(WINDOW_SECONDS).redisPrefix(prefix).build()
    close = async () => limiter.close()
    if (variant === 'erl+TrypemaStore') {
      const { rateLimit } = await import('express-rate-limit')
      const { TrypemaStore } = await import('trypema/express-rate-limit')
      app.use(
        rateLimit({
          windowMs: WINDOW_SECONDS * 1000,
          limit: LIMIT,
          standardHeaders: 'draft-8',
          legacyHeaders: false,
          keyGenerator: key,
          store: new TrypemaStore({ limiter, provider: 'redis' }),
        }),
      )
    } else {
      const { rateLimit } = await import('trypema/express')
      app.use(rateLimit({ limiter, provider: 'redis', strategy: 'absolute', rate: LIMIT / WINDOW_SECONDS, key }))
    }
  } else if (variant !== 'none') {
    throw new Error(`unknown variant ${variant}`)
  }
  app.get('/', (req, res) => res.send('ok'))
  const server = app.listen(0, '127.0.0.1', () => process.stdout.write(`${server.address().port}\n`))
  process.stdin.resume()
  process.stdin.on('end', async () => {
    server.close()
    server.closeAllConnections()
    await close()
    process.exit(0)
  })
}

// ---------------------------------------------------------------------------------------------
// Load mode (the default)

async function startServer(variant, redisUrl, prefix) {
  const child = spawn(process.execPath, [fileURLToPath(import.meta.url), '--serve', variant, redisUrl, prefix], {
    stdio: ['pipe', 'pipe', 'inherit'],
  })
  const [line] = await Promise.race([
    once(createInterface({ input: child.stdout }), 'line'),
    once(child, 'exit').then(([code]) => {
      throw new Error(`the ${variant} server exited with ${code}`)
    }),
  ])
  return {
    url: `http://127.0.0.1:${line.trim()}/`,
    async stop() {
      child.stdin.end()
      if (child.exitCode === null) await once(child, 'exit')
    },
  }
}

async function load(url, { seconds, connections }) {
  const { default: autocannon } = await import('autocannon')
  let n = 0
  const result = await autocannon({
    url,
    connections,
    duration: seconds,
    requests: [
      {
        setupRequest(request) {
          n = (n + 1) % CLIENTS
          return { ...request, headers: { ...request.headers, 'x-client': `client-${n}` } }
        },
      },
    ],
  })
  return {
    rps: result.requests.average,
    p50: result.latency.p50,
    p99: result.latency.p99,
    ok: result['2xx'],
    other: result.non2xx + result.errors + result.timeouts,
  }
}

async function main() {
  const seconds = flag('--seconds', 5)
  const rounds = flag('--rounds', 2)
  const connections = flag('--connections', 64)
  let redis = null
  let redisUrl = process.env.REDIS_URL
  if (!redisUrl) {
    const { startRedis, redisServerInstalled } = await import('./redis-server.mjs')
    if (!redisServerInstalled()) throw new Error('set REDIS_URL or install redis-server')
    redis = await startRedis()
    redisUrl = redis.url
  }
  console.log(`Express ${(await import('express/package.json', { with: { type: 'json' } })).default.version}, ` +
    `Node ${process.version}, Redis at ${redisUrl}; ${connections} connections, ${CLIENTS} clients, ` +
    `${rounds} × ${seconds} s per variant`)
  const best = Object.fromEntries(VARIANTS.map((variant) => [variant, null]))
  try {
    for (let round = 1; round <= rounds; round++) {
      for (const variant of VARIANTS) {
        const server = await startServer(variant, redisUrl, `bench-${process.pid}-${round}-${VARIANTS.indexOf(variant)}`)
        try {
          await load(server.url, { seconds: 1, connections }) // warm-up
          const result = await load(server.url, { seconds, connections })
          console.error(`round ${round}  ${variant.padEnd(22)} ${Math.round(result.rps)} req/s`)
          if (best[variant] === null || result.rps > best[variant].rps) best[variant] = result
        } finally {
          await server.stop()
        }
      }
    }
  } finally {
    if (redis !== null) await redis.stop()
  }
  const base = best['erl+rate-limit-redis'].rps
  const rows = [['variant', 'req/s', 'vs erl+rate-limit-redis', 'vs none', 'p50 ms', 'p99 ms', 'non-2xx']]
  for (const variant of VARIANTS) {
    const r = best[variant]
    rows.push([
      variant,
      Math.round(r.rps).toLocaleString('en-US'),
      `${(r.rps / base).toFixed(2)}×`,
      `${(r.rps / best.none.rps).toFixed(2)}×`,
      String(r.p50),
      String(r.p99),
      String(r.other),
    ])
  }
  const widths = rows[0].map((_, c) => Math.max(...rows.map((row) => row[c].length)))
  const line = (row) => `| ${row.map((cell, c) => (c === 0 ? cell.padEnd(widths[c]) : cell.padStart(widths[c]))).join(' | ')} |`
  console.log(line(rows[0]))
  console.log(`|${widths.map((w, c) => (c === 0 ? `:${'-'.repeat(w + 1)}` : `${'-'.repeat(w + 1)}:`)).join('|')}|`)
  for (const row of rows.slice(1)) console.log(line(row))
}

if (process.argv[2] === '--serve') await serve(process.argv[3], process.argv[4], process.argv[5])
else await main()
