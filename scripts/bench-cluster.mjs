// `node scripts/bench-cluster.mjs`: rl.redis.absolute.inc on a Redis Cluster against one
// redis-server, in the same run (issue 12). 256 calls in flight, each caller awaiting its call
// before the next, over 1000 keys, at a rate nothing reaches (every call does its full
// admission work). Per row:
//   ops/s          calls completed per second
//   p50/p99 ms     call latency
//   script µs/call Redis time inside EVALSHA per call (INFO commandstats usec, summed over the
//                  masters, divided by the calls): what the script costs the servers. It is
//                  wall-clock time, so on a machine with fewer cores than busy processes (3-6
//                  servers + Node on 2 cores) it includes time a server was descheduled
//                  mid-script: compare it with the server CPU column
//   server CPU µs  redis-server process CPU (INFO cpu user+sys, summed over the masters, and
//                  over the replicas when there are) per call: script + network + replication
//   client CPU µs  this Node process's CPU per call (addon + redis-rs + JS)
// Rounds alternate between the set-ups; the table shows the median round of each.
// Options: --seconds N (per row, default 4), --rounds N (default 3), --quick (1.5 s, 1 round).
// Nothing here asserts: this prints figures.
import { performance } from 'node:perf_hooks'

import { RateLimiter } from '../index.mjs'
import { command, startCluster } from './redis-topologies.mjs'
import { startRedis } from './redis-server.mjs'

const argument = (name, fallback) => {
  const index = process.argv.indexOf(name)
  return index === -1 ? fallback : Number(process.argv[index + 1])
}
const quick = process.argv.includes('--quick')
const SECONDS = argument('--seconds', quick ? 1.5 : 4)
const ROUNDS = argument('--rounds', quick ? 1 : 3)
const IN_FLIGHT = 256
const KEYS = Array.from({ length: 1000 }, (_, i) => `user_${i}`)
const HUGE_RATE = 1e9

const fmt = (n) => Math.round(n).toLocaleString('en-US')
const table = (rows) => {
  const widths = rows[0].map((_, c) => Math.max(...rows.map((row) => String(row[c]).length)))
  for (const row of rows) console.log(row.map((cell, c) => String(cell)[c === 0 ? 'padEnd' : 'padStart'](widths[c])).join('  '))
}
const median = (values) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)]

/** `INFO <section>` of the server on `port` as { field: value }. */
async function info(port, section) {
  const text = await command(port, ['INFO', section])
  return Object.fromEntries(
    text
      .split('\r\n')
      .filter((line) => line.includes(':'))
      .map((line) => [line.slice(0, line.indexOf(':')), line.slice(line.indexOf(':') + 1)]),
  )
}

/** Script time (µs) and calls of EVALSHA and EVAL on `port` since the last RESETSTAT. */
async function scriptStats(port) {
  const stats = await info(port, 'commandstats')
  let usec = 0
  let calls = 0
  for (const name of ['cmdstat_evalsha', 'cmdstat_eval']) {
    if (stats[name] === undefined) continue
    usec += Number(/usec=(\d+)/.exec(stats[name])[1])
    calls += Number(/calls=(\d+)/.exec(stats[name])[1])
  }
  return { usec, calls }
}

async function cpuSeconds(port) {
  const cpu = await info(port, 'cpu')
  return Number(cpu.used_cpu_user) + Number(cpu.used_cpu_sys)
}

/** 256 callers in flight for `seconds`: { calls, ops, p50, p99 }. */
async function load(call, seconds) {
  const latencies = []
  const deadline = performance.now() + seconds * 1000
  let next = 0
  let errors = 0
  const worker = async () => {
    while (performance.now() < deadline) {
      const key = KEYS[next++ % KEYS.length]
      const started = performance.now()
      try {
        await call(key)
      } catch {
        errors++
      }
      latencies.push(performance.now() - started)
    }
  }
  const started = performance.now()
  await Promise.all(Array.from({ length: IN_FLIGHT }, worker))
  const elapsed = (performance.now() - started) / 1000
  latencies.sort((a, b) => a - b)
  const pick = (q) => latencies[Math.min(latencies.length - 1, Math.floor(q * latencies.length))]
  return { calls: latencies.length, errors, ops: latencies.length / elapsed, p50: pick(0.5), p99: pick(0.99) }
}

/** One measured row on a set-up: `masters` (ports whose scripts run), `all` (every server). */
async function measure(setup) {
  for (const port of setup.all) await command(port, ['CONFIG', 'RESETSTAT'])
  const cpuBefore = await Promise.all(setup.all.map(cpuSeconds))
  const clientBefore = process.cpuUsage()
  const result = await load((key) => setup.rl.redis.absolute.inc(key, HUGE_RATE), SECONDS)
  const client = process.cpuUsage(clientBefore)
  const cpuAfter = await Promise.all(setup.all.map(cpuSeconds))
  const scripts = await Promise.all(setup.masters.map(scriptStats))
  const scriptUsec = scripts.reduce((sum, s) => sum + s.usec, 0)
  const serverCpuUsec = cpuAfter.reduce((sum, after, i) => sum + (after - cpuBefore[i]) * 1e6, 0)
  return {
    ...result,
    scriptCalls: scripts.reduce((sum, s) => sum + s.calls, 0),
    perMaster: scripts.map((s) => s.calls),
    scriptUsecPerCall: scriptUsec / result.calls,
    serverCpuUsecPerCall: serverCpuUsec / result.calls,
    clientCpuUsecPerCall: (client.user + client.system) / result.calls,
  }
}

console.log(`trypema on Redis Cluster vs one redis-server — node ${process.version}, ${new Date().toISOString()}`)
console.log(`${IN_FLIGHT} in flight, ${KEYS.length} keys, rl.redis.absolute.inc, ${SECONDS} s per row, ${ROUNDS} round(s)\n`)

const single = await startRedis()
const cluster = await startCluster({ masters: 3, replicas: 0 })
const replicated = await startCluster({ masters: 3, replicas: 1 })
const setups = []
try {
  const masterPorts = async (c) => (await c.layout()).filter((node) => node.role === 'master').map((node) => node.port)
  setups.push({
    name: 'one redis-server',
    rl: await RateLimiter.builder(single.url).windowSizeSeconds(10).build(),
    masters: [single.port],
    all: [single.port],
  })
  setups.push({
    name: 'cluster, 3 masters',
    rl: await RateLimiter.builder({ cluster: cluster.urls }).windowSizeSeconds(10).build(),
    masters: await masterPorts(cluster),
    all: cluster.ports,
  })
  setups.push({
    name: 'cluster, 3 masters + 3 replicas',
    rl: await RateLimiter.builder({ cluster: replicated.urls }).windowSizeSeconds(10).build(),
    masters: await masterPorts(replicated),
    all: replicated.ports,
  })
  // Warm up: scripts loaded on every master, connections open, JIT warm.
  for (const setup of setups) await load((key) => setup.rl.redis.absolute.inc(key, HUGE_RATE), 1)

  const results = new Map(setups.map((setup) => [setup, []]))
  for (let round = 0; round < ROUNDS; round++) {
    for (const setup of setups) results.get(setup).push(await measure(setup))
  }
  const rows = [['set-up', 'ops/s', 'p50 ms', 'p99 ms', 'script µs/call', 'server CPU µs/call', 'client CPU µs/call', 'errors', 'calls per master']]
  for (const setup of setups) {
    const rounds = results.get(setup)
    const mid = rounds.find((r) => r.ops === median(rounds.map((x) => x.ops)))
    rows.push([
      setup.name,
      fmt(mid.ops),
      mid.p50.toFixed(2),
      mid.p99.toFixed(2),
      mid.scriptUsecPerCall.toFixed(2),
      mid.serverCpuUsecPerCall.toFixed(2),
      mid.clientCpuUsecPerCall.toFixed(2),
      String(rounds.reduce((sum, r) => sum + r.errors, 0)),
      mid.perMaster.map((n) => `${Math.round((100 * n) / mid.scriptCalls)}%`).join('/'),
    ])
  }
  table(rows)
  if (ROUNDS > 1) {
    console.log('\nops/s of every round:')
    for (const setup of setups) console.log(`  ${setup.name}: ${results.get(setup).map((r) => fmt(r.ops)).join(', ')}`)
  }
} finally {
  for (const setup of setups) await setup.rl.close()
  await single.stop()
  await cluster.stop()
  await replicated.stop()
}
