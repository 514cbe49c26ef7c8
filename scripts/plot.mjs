// `npm run plot`: runs the limiter under steady offered loads and draws what it admitted.
//
//   1. absolute and suppressed, local and redis providers, offered 1×, 3× and 10× the rate
//      (all twelve at once, each on its own key);
//   2. hybrid next to redis, offered 3× the rate, for both strategies.
//
// Writes docs/images/{absolute,suppressed,hybrid-vs-redis}.svg (hand-written SVG, no browser
// needed) and, when Debian's chromium is installed, a PNG of each rendered by it (through
// playwright-core). Uses REDIS_URL when set, otherwise a private redis-server.
//
//   npm run plot                  everything
//   npm run plot -- --no-png      SVG only
import { existsSync, mkdirSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { fileURLToPath } from 'node:url'
import { RateLimiter } from 'trypema'
import { redisServerInstalled, startRedis } from './redis-server.mjs'
import { lineChart } from './svg-chart.mjs'

const root = fileURLToPath(new URL('..', import.meta.url))
const outDir = join(root, 'docs', 'images')
const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium'

const RATE = 10 // per second
const WINDOW_SECONDS = 4 // capacity: 40 per window
const HARD_LIMIT_FACTOR = 1.5 // suppressed: never more than 60 admitted per window
const RATE_GROUP_MS = 50
const RUN_SECONDS = 20 // five windows
const BIN_SECONDS = 0.5
const STEADY_SECONDS = 3 * WINDOW_SECONDS // averages over the last three windows
const LOADS = [1, 3, 10]
const BINS = Math.ceil(RUN_SECONDS / BIN_SECONDS)
const CHART_SIZE = { width: 1080, height: 410 }

const COLORS = { offered: '#9aa3ad', local: '#1f6fd1', redis: '#e8710a', hybrid: '#1a9e4b', rate: '#1d232b', hard: '#c62828' }

// ---------------------------------------------------------------------------------------------
// Load

/** One steady stream of calls on its own key. */
function stream(name, offered, call) {
  const zeros = () => new Array(BINS).fill(0)
  return {
    name,
    offered,
    call,
    issued: 0,
    offeredBins: zeros(),
    admittedBins: zeros(),
    limitedBins: zeros(), // rejected (absolute) or declined (suppressed)
    errorBins: zeros(),
    factorSum: zeros(),
    factorCount: zeros(),
    latenciesMs: [],
  }
}

function record(s, bin, decision) {
  if (decision.kind === 'allowed') s.admittedBins[bin]++
  else if (decision.kind === 'rejected') s.limitedBins[bin]++
  else if (decision.kind === 'suppressed') {
    if (decision.isAllowed) s.admittedBins[bin]++
    else s.limitedBins[bin]++
    s.factorSum[bin] += decision.suppressionFactor
    s.factorCount[bin]++
  } else throw new Error(`unexpected decision ${JSON.stringify(decision)}`)
  if (decision.kind !== 'suppressed') s.factorCount[bin]++ // f = 0 below the limit
}

/** Offers every stream its rate for RUN_SECONDS (paced, catching up after a late timer). */
async function drive(streams) {
  const inFlight = new Set()
  const t0 = performance.now()
  for (;;) {
    const elapsed = (performance.now() - t0) / 1000
    if (elapsed >= RUN_SECONDS) break
    const bin = Math.min(BINS - 1, Math.floor(elapsed / BIN_SECONDS))
    for (const s of streams) {
      const due = Math.floor(elapsed * s.offered) + 1
      while (s.issued < due) {
        s.issued++
        s.offeredBins[bin]++
        const started = performance.now()
        let result
        try {
          result = s.call()
        } catch {
          s.errorBins[bin]++
          continue
        }
        const done = (decision) => {
          s.latenciesMs.push(performance.now() - started)
          record(s, bin, decision)
        }
        if (typeof result?.then !== 'function') {
          done(result)
          continue
        }
        const pending = result.then(done, () => s.errorBins[bin]++)
        inFlight.add(pending)
        pending.finally(() => inFlight.delete(pending))
      }
    }
    await sleep(4)
  }
  await Promise.all(inFlight)
}

// ---------------------------------------------------------------------------------------------
// Numbers

const perSecond = (bins) => bins.map((count, i) => [(i + 0.5) * BIN_SECONDS, count / BIN_SECONDS])
const sum = (array, from = 0) => array.slice(from).reduce((a, b) => a + b, 0)
const steadyFrom = BINS - Math.round(STEADY_SECONDS / BIN_SECONDS)

function steady(s) {
  return {
    admitted: sum(s.admittedBins, steadyFrom) / STEADY_SECONDS,
    factor: sum(s.factorCount, steadyFrom) ? sum(s.factorSum, steadyFrom) / sum(s.factorCount, steadyFrom) : 0,
  }
}

function median(values) {
  if (values.length === 0) return NaN
  const sorted = [...values].sort((a, b) => a - b)
  return sorted[Math.floor(sorted.length / 2)]
}

/** Most admitted in any WINDOW_SECONDS-long run of bins (what the limit bounds). */
function maxPerWindow(s) {
  const width = Math.round(WINDOW_SECONDS / BIN_SECONDS)
  let best = 0
  for (let i = 0; i + width <= BINS; i++) best = Math.max(best, sum(s.admittedBins.slice(i, i + width)))
  return best
}

const fmt = (value, digits = 1) => value.toFixed(digits)

function yMaxFor(streams, floor) {
  const top = Math.max(floor, ...streams.flatMap((s) => [...s.offeredBins, ...s.admittedBins].map((c) => c / BIN_SECONDS)))
  const step = top > 50 ? 20 : top > 20 ? 10 : 5
  return Math.ceil((top * 1.08) / step) * step
}

// ---------------------------------------------------------------------------------------------
// Charts

const legendOffered = { label: 'offered', color: COLORS.offered, dash: '5 4', width: 2 }
const legendRate = { label: `rate (${RATE}/s)`, color: COLORS.rate, dash: '2 3', width: 1.2 }

function strategyChart(strategy, byLoad) {
  const suppressed = strategy === 'suppressed'
  const legend = [
    legendOffered,
    { label: 'admitted, local', color: COLORS.local, width: 3 },
    { label: 'admitted, redis', color: COLORS.redis, dash: '7 4', width: 2 },
    legendRate,
  ]
  if (suppressed) {
    legend.push({
      label: `hard ceiling (${RATE * WINDOW_SECONDS * HARD_LIMIT_FACTOR} per window: ${RATE * HARD_LIMIT_FACTOR}/s on average)`,
      color: COLORS.hard,
      dash: '2 3',
      width: 1.2,
    })
  }
  return lineChart({
    ...CHART_SIZE,
    title: suppressed
      ? `suppressed: rate ${RATE}/s, window ${WINDOW_SECONDS} s, hard limit factor ${HARD_LIMIT_FACTOR} ` +
        `(soft ${RATE * WINDOW_SECONDS}, hard ${RATE * WINDOW_SECONDS * HARD_LIMIT_FACTOR} per window)`
      : `absolute: rate ${RATE}/s, window ${WINDOW_SECONDS} s (capacity ${RATE * WINDOW_SECONDS} per window)`,
    subtitle: `calls per second in ${BIN_SECONDS} s bins, offered at a steady pace; averages over the last ${STEADY_SECONDS} s`,
    legend,
    panels: LOADS.map((load) => {
      const { local, redis } = byLoad[load]
      const [l, r] = [steady(local), steady(redis)]
      const refs = [{ y: RATE, color: COLORS.rate, dash: '2 3' }]
      if (suppressed) refs.push({ y: RATE * HARD_LIMIT_FACTOR, color: COLORS.hard, dash: '2 3' })
      return {
        title: `offered ${load}× the rate (${load * RATE}/s)`,
        subtitle: [
          `admitted: local ${fmt(l.admitted)}/s, redis ${fmt(r.admitted)}/s`,
          ...(suppressed ? [`suppression factor: local ${fmt(l.factor, 2)}, redis ${fmt(r.factor, 2)}`] : []),
        ],
        xLabel: 'seconds',
        yLabel: 'calls / s',
        xMax: RUN_SECONDS,
        yMax: yMaxFor([local, redis], RATE * 2),
        refs,
        series: [
          { color: COLORS.offered, dash: '5 4', width: 2, points: perSecond(local.offeredBins) },
          { color: COLORS.local, width: 3, opacity: 0.9, points: perSecond(local.admittedBins) },
          { color: COLORS.redis, dash: '7 4', width: 2, points: perSecond(redis.admittedBins) },
        ],
      }
    }),
  })
}

function hybridChart(pairs) {
  return lineChart({
    ...CHART_SIZE,
    title: `hybrid next to redis: offered 3× the rate (${3 * RATE}/s), rate ${RATE}/s, window ${WINDOW_SECONDS} s`,
    subtitle: `calls per second in ${BIN_SECONDS} s bins; averages over the last ${STEADY_SECONDS} s; median time per call as awaited by the caller`,
    legend: [
      legendOffered,
      { label: 'admitted, redis', color: COLORS.redis, width: 3 },
      { label: 'admitted, hybrid', color: COLORS.hybrid, dash: '7 4', width: 2 },
      legendRate,
    ],
    panels: ['absolute', 'suppressed'].map((strategy) => {
      const { redis, hybrid } = pairs[strategy]
      const [r, h] = [steady(redis), steady(hybrid)]
      return {
        title: strategy,
        subtitle: [
          `admitted: redis ${fmt(r.admitted)}/s, hybrid ${fmt(h.admitted)}/s`,
          `median call: redis ${fmt(median(redis.latenciesMs), 3)} ms, hybrid ${fmt(median(hybrid.latenciesMs), 3)} ms`,
        ],
        xLabel: 'seconds',
        yLabel: 'calls / s',
        xMax: RUN_SECONDS,
        yMax: yMaxFor([redis, hybrid], RATE * 2),
        refs: [{ y: RATE, color: COLORS.rate, dash: '2 3' }],
        series: [
          { color: COLORS.offered, dash: '5 4', width: 2, points: perSecond(redis.offeredBins) },
          { color: COLORS.redis, width: 3, opacity: 0.9, points: perSecond(redis.admittedBins) },
          { color: COLORS.hybrid, dash: '7 4', width: 2, points: perSecond(hybrid.admittedBins) },
        ],
      }
    }),
  })
}

/** Renders each SVG to a PNG (2× pixels) with headless Chromium; returns the files written. */
async function renderPngs(charts) {
  let chromium
  try {
    ;({ chromium } = await import('playwright-core'))
  } catch {
    console.log('PNG: skipped (playwright-core is not installed; run `npm ci`)')
    return []
  }
  if (!existsSync(CHROMIUM)) {
    console.log(`PNG: skipped (${CHROMIUM} not found; apt-get install -y chromium)`)
    return []
  }
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    timeout: 60_000,
  })
  const written = []
  try {
    for (const { file, svg, width, height } of charts) {
      const context = await browser.newContext({ viewport: { width, height }, deviceScaleFactor: 2 })
      const page = await context.newPage()
      await page.setContent(`<!doctype html><html><body style="margin:0;background:#fff">${svg}</body></html>`)
      const png = join(outDir, file.replace(/\.svg$/, '.png'))
      await page.screenshot({ path: png, clip: { x: 0, y: 0, width, height } })
      await context.close()
      written.push(png)
    }
  } finally {
    await browser.close()
  }
  return written
}

// ---------------------------------------------------------------------------------------------
// Main

const startedAt = performance.now()
const elapsed = (from = startedAt) => `${((performance.now() - from) / 1000).toFixed(1)} s`

let redis = null
let url = process.env.REDIS_URL
if (url === undefined) {
  if (!redisServerInstalled()) {
    console.error('npm run plot needs Redis: set REDIS_URL, or install redis-server (apt-get install -y redis-server).')
    process.exit(1)
  }
  redis = await startRedis()
  url = redis.url
}
process.once('exit', () => redis?.stop())

const limiter = await RateLimiter.builder(url)
  .windowSizeSeconds(WINDOW_SECONDS)
  .rateGroupSizeMs(RATE_GROUP_MS)
  .hardLimitFactor(HARD_LIMIT_FACTOR)
  .redisPrefix(`trypema-plot-${process.pid}-${Date.now()}`)
  .build()

try {
  console.log(
    `rate ${RATE}/s, window ${WINDOW_SECONDS} s, hard limit factor ${HARD_LIMIT_FACTOR}, ${RUN_SECONDS} s per run, ` +
      `Redis ${redis !== null ? `private redis-server ${url}` : url}`,
  )

  // 1. absolute and suppressed, local and redis, 1× / 3× / 10×: all at once, one key each.
  let phase = performance.now()
  const runs = { absolute: {}, suppressed: {} }
  const streams = []
  for (const strategy of ['absolute', 'suppressed']) {
    for (const load of LOADS) {
      const local = stream(`local ${strategy} ${load}×`, load * RATE, () => limiter.local[strategy].inc(`${strategy}-${load}`, RATE))
      const remote = stream(`redis ${strategy} ${load}×`, load * RATE, () => limiter.redis[strategy].inc(`${strategy}-${load}`, RATE))
      runs[strategy][load] = { local, redis: remote }
      streams.push(local, remote)
    }
  }
  console.log(`\n[1/2] local and redis, offered 1×, 3×, 10× (${streams.length} streams at once)…`)
  await drive(streams)
  console.log(`      done in ${elapsed(phase)}`)

  // 2. hybrid next to redis at 3×.
  phase = performance.now()
  const pairs = {}
  const pairStreams = []
  for (const strategy of ['absolute', 'suppressed']) {
    pairs[strategy] = {
      redis: stream(`redis ${strategy} 3×`, 3 * RATE, () => limiter.redis[strategy].inc(`pair-redis-${strategy}`, RATE)),
      hybrid: stream(`hybrid ${strategy} 3×`, 3 * RATE, () => limiter.hybrid[strategy].inc(`pair-hybrid-${strategy}`, RATE)),
    }
    pairStreams.push(pairs[strategy].redis, pairs[strategy].hybrid)
  }
  console.log(`[2/2] hybrid next to redis, offered 3× (${pairStreams.length} streams at once)…`)
  await drive(pairStreams)
  console.log(`      done in ${elapsed(phase)}`)

  // Summary
  const rows = [...streams, ...pairStreams].map((s) => {
    const st = steady(s)
    return [
      s.name,
      fmt(s.offered, 0),
      fmt(st.admitted),
      String(maxPerWindow(s)),
      fmt(st.factor, 2),
      String(sum(s.errorBins)),
      fmt(median(s.latenciesMs), 3),
    ]
  })
  const header = ['stream', 'offered/s', `admitted/s (last ${STEADY_SECONDS} s)`, `max admitted per ${WINDOW_SECONDS} s`, 'mean factor', 'errors', 'median ms']
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)))
  const line = (cells) => cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join('  ')
  console.log(`\n${line(header)}\n${rows.map(line).join('\n')}`)
  console.log(
    `(absolute admits at most ${RATE * WINDOW_SECONDS} per window; suppressed at most ` +
      `${RATE * WINDOW_SECONDS * HARD_LIMIT_FACTOR}. The 0.5 s bins are not aligned with the limiter's buckets.)`,
  )

  // Charts
  mkdirSync(outDir, { recursive: true })
  const charts = [
    { file: 'absolute.svg', svg: strategyChart('absolute', runs.absolute) },
    { file: 'suppressed.svg', svg: strategyChart('suppressed', runs.suppressed) },
    { file: 'hybrid-vs-redis.svg', svg: hybridChart(pairs) },
  ].map((chart) => ({ ...chart, ...CHART_SIZE }))
  for (const { file, svg } of charts) writeFileSync(join(outDir, file), svg)
  console.log(`\nwrote ${charts.map((c) => `docs/images/${c.file}`).join(', ')}`)
  if (!process.argv.includes('--no-png')) {
    phase = performance.now()
    const pngs = await renderPngs(charts)
    if (pngs.length) console.log(`wrote ${pngs.map((p) => p.slice(root.length)).join(', ')} (Chromium, ${elapsed(phase)})`)
  }
} finally {
  await limiter.close()
  await redis?.stop()
}
console.log(`\nnpm run plot took ${elapsed()}`)
