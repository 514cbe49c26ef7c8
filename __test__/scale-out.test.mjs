// Scale-out Redis (issue 12): a real Redis Cluster (3 masters, 3 replicas), resharding and
// failover under load, Sentinel failover, TLS and mutual TLS, and passwords kept out of error
// messages. Every topology is started here on loopback (scripts/redis-topologies.mjs) and
// stopped in `after` / `finally`; TRYPEMA_TEST_REDIS_URL is not used. Needs redis-server,
// redis-cli and openssl: without them the tests fail saying so (TRYPEMA_TEST_ALLOW_SKIP=1 skips).
//
// Recovery times are printed as test diagnostics ("# ..." lines) and summarised at the end.
//
// Four tests fail today; each documents a bug in the library (see the comment on each):
// - "a master down for good ...": one unavailable master opens the limiter-wide circuit
//   breaker, so keys on the healthy masters fail too;
// - "a password-protected master behind Sentinels without a password": no way to give the
//   master's credentials separately from the Sentinels' (proposed: sentinel.password);
// - "a wrong password in the cluster URLs is TRYPEMA_REDIS_AUTH ...": it is TRYPEMA_REDIS;
// - "unknown keys inside sentinel and tls are a TypeError": they are silently ignored.
import { test, describe, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { execFile, spawnSync } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { setTimeout as sleep } from 'node:timers/promises'

import { RateLimiter } from '../index.js'
import { busiest, merged, perWindow, runInstances } from './instances.mjs'
import { lineChild, requirement, unique, within } from './support.mjs'
import { makeCertificates, startCluster, startSentinels, startTlsRedis } from '../scripts/redis-topologies.mjs'

const CALLER = fileURLToPath(new URL('./fixtures/scale-out-caller.mjs', import.meta.url))

const missing = [
  ['redis-server', ['--version']],
  ['redis-cli', ['--version']],
  ['openssl', ['version']],
].find(([name, args]) => spawnSync(name, args, { stdio: 'ignore' }).status !== 0)
const tools = requirement(
  missing ? `${missing[0]} is not installed (the scale-out tests start Redis Cluster, Sentinel and TLS servers)` : null,
)

/** What the tests measured, printed once at the end. */
const measured = {}

after(() => {
  if (Object.keys(measured).length > 0) console.log(`scale-out measurements: ${JSON.stringify(measured)}`)
})

/**
 * A caller process (fixtures/scale-out-caller.mjs): `start()`, then `stop()` resolves with its
 * report. Killed if it outlives `timeoutMs`.
 */
async function startCallers(configs, { timeoutMs = 120_000 } = {}) {
  const children = configs.map((config) => lineChild([CALLER, JSON.stringify(config)], { timeoutMs }))
  try {
    for (const child of children) {
      const line = await within(30_000, child.next(), 'a caller process getting ready')
      assert.deepEqual(JSON.parse(line), { ready: true }, `caller: ${line}; stderr: ${child.stderr}`)
    }
  } catch (error) {
    for (const child of children) child.child.kill('SIGKILL')
    throw error
  }
  return {
    start() {
      for (const child of children) child.send('start')
    },
    async stop() {
      for (const child of children) child.send('stop')
      return Promise.all(
        children.map(async (child) => JSON.parse(await within(60_000, child.next(), 'a caller process reporting'))),
      )
    },
    kill() {
      for (const child of children) child.child.kill('SIGKILL')
    },
  }
}

/** Sums the per-key counts of several caller reports. */
function totals(reports, keys) {
  const sum = Object.fromEntries(keys.map((key) => [key, { allowed: 0, rejected: 0, errors: 0 }]))
  for (const report of reports) {
    for (const [key, counts] of Object.entries(report.perKey)) {
      for (const field of Object.keys(counts)) sum[key][field] += counts[field]
    }
  }
  return sum
}

/** The slot of the entity key trypema uses for `key` under `prefix` (absolute strategy). */
async function slotOf(cluster, port, prefix, key) {
  return Number(await cluster.command(port, ['CLUSTER', 'KEYSLOT', `{${prefix}:${key}}:a`]))
}

const owns = (node, slot) => node.slots.some(([first, last]) => slot >= first && slot <= last)

/** The error outcomes of caller reports, `[start, end, keyIndex, code]`, sorted by start. */
function errorsOf(reports) {
  return reports
    .flatMap((report) => report.outcomes)
    .filter(([, , , code]) => !['ok', 'rejected', 'declined'].includes(code))
    .sort((a, b) => a[0] - b[0])
}

/**
 * Checks a failover as seen by callers that kept running: no error before the kill, errors only
 * from TRYPEMA_REDIS / TRYPEMA_REDIS_TIMEOUT, each settled within the command timeout (+ slack),
 * errors end soon after the promotion, and after the last error every key answers again for at
 * least `quietMs` until the callers stopped. Returns { recoveryMs, errors }.
 */
function checkRecovery(reports, { killedAt, promotedAt, stoppedAt, keys, quietMs, commandTimeoutMs }) {
  const outcomes = reports.flatMap((report) => report.outcomes)
  const errors = errorsOf(reports)
  const messages = [...new Set(reports.flatMap((report) => report.messages))]
  assert.ok(outcomes.length > 0, 'the callers made calls')
  // A call may fail only if it was still in flight at the kill: it ended after the kill and
  // was sent shortly before it (before the kill a call answers within milliseconds; 500 ms is
  // for a loaded 2-core machine). Such a call can take the whole command timeout.
  const early = errors.filter(([start, end]) => start < killedAt && (end < killedAt || killedAt - start > 500))
  assert.deepEqual(early, [], `no errors before the kill: ${JSON.stringify(early.slice(0, 5))}`)
  const codes = new Set(errors.map(([, , , code]) => code))
  for (const code of codes) {
    assert.ok(['TRYPEMA_REDIS', 'TRYPEMA_REDIS_TIMEOUT'].includes(code), `unexpected error code ${code}: ${messages.join(' | ')}`)
  }
  const slow = errors.filter(([start, end]) => end - start > commandTimeoutMs + 1500)
  assert.deepEqual(slow, [], `every failing call settles within the command timeout (${commandTimeoutMs} ms)`)
  const lastErrorEnd = errors.length === 0 ? killedAt : Math.max(...errors.map(([, end]) => end))
  assert.ok(
    stoppedAt - lastErrorEnd >= quietMs,
    `calls recover by themselves and stay healthy: last error ${lastErrorEnd - killedAt} ms after the kill, ` +
      `callers stopped ${stoppedAt - killedAt} ms after it (${errors.length} errors: ${messages.join(' | ')})`,
  )
  // The failover window: from the kill until shortly after the promotion (the client learns the
  // new layout on its next errors; a call in flight may still time out).
  assert.ok(
    lastErrorEnd <= promotedAt + commandTimeoutMs + 3000,
    `errors only during the failover: the last one ended ${lastErrorEnd - promotedAt} ms after the promotion`,
  )
  for (const [index, key] of keys.entries()) {
    const after = outcomes.filter(([start, , keyIndex, code]) => keyIndex === index && start > lastErrorEnd && code === 'ok')
    assert.ok(after.length > 0, `key ${key} is served again after the failover`)
  }
  return { recoveryMs: lastErrorEnd - killedAt, errors: errors.length, calls: outcomes.length, messages }
}

describe('Redis Cluster: 3 masters, 3 replicas', { skip: tools.skip }, () => {
  let cluster

  before(async () => {
    tools.check()
    cluster = await startCluster({ masters: 3, replicas: 1 })
  })

  after(async () => {
    await cluster?.stop()
  })

  const connection = () => ({ cluster: cluster.urls })
  const masters = async () => (await cluster.layout()).filter((node) => node.role === 'master' && !node.failed && node.slots.length > 0)

  test('4 processes on capacity 500 (redis, absolute) admit exactly 500', { timeout: 90_000 }, async () => {
    const prefix = unique('cx')
    const config = {
      url: cluster.urls[0],
      connection: connection(),
      prefix,
      key: 'user_123',
      provider: 'redis',
      strategy: 'absolute',
      window: 10,
      rate: 50,
      calls: { burst: 250, concurrency: 16 },
    }
    const reports = await runInstances([config, config, config, config])
    assert.deepEqual(reports.flatMap((r) => r.errors), [], 'no errors')
    const all = merged(reports)
    assert.equal(all.length, 500, `exactly the capacity is admitted: ${reports.map((r) => r.allowed.length)}`)
    assert.equal(reports.reduce((sum, r) => sum + r.rejected, 0), 500, 'the rest is rejected')
    assert.ok(all.at(-1) - all[0] < 10_000, 'all within one window')
    const rl = await RateLimiter.builder(connection()).redisPrefix(prefix).windowSizeSeconds(10).build()
    try {
      assert.equal((await rl.redis.absolute.get('user_123', 50)).remaining, 0, 'Redis holds exactly 500')
    } finally {
      await rl.close()
    }
  })

  test('1000 keys end up spread over all masters', { timeout: 60_000 }, async () => {
    const prefix = unique('cs')
    const rl = await RateLimiter.builder(connection()).redisPrefix(prefix).windowSizeSeconds(60).build()
    try {
      const decisions = await Promise.all(Array.from({ length: 1000 }, (_, i) => rl.redis.absolute.inc(`key${i}`, 5)))
      assert.ok(decisions.every((d) => d.kind === 'allowed'))
    } finally {
      await rl.close()
    }
    const nodes = await masters()
    assert.equal(nodes.length, 3)
    const counts = []
    for (const node of nodes) {
      const dbsize = await cluster.command(node.port, ['DBSIZE'])
      assert.ok(dbsize > 0, `DBSIZE of master ${node.port} is ${dbsize}`)
      counts.push((await cluster.command(node.port, ['KEYS', `{${prefix}:*`])).length)
    }
    assert.equal(counts.reduce((a, b) => a + b, 0), 1000, `every key is on a master: ${counts}`)
    for (const count of counts) assert.ok(count > 200, `each master holds about a third of the keys: ${counts}`)
  })

  test('hybrid on the cluster: 2 instances at saturation stay <= C in any window and use >= 90%', { timeout: 90_000 }, async () => {
    // W = 2 s, rate 25/s: capacity 50 (as in hybrid-instances.test.mjs), 25 calls/s each.
    const prefix = unique('ch')
    const config = {
      url: cluster.urls[0],
      connection: connection(),
      prefix,
      key: 'k',
      provider: 'hybrid',
      strategy: 'absolute',
      window: 2,
      rate: 25,
      groupMs: 10,
      calls: { perSecond: 25, durationMs: 7000 },
      afterwards: 'close',
    }
    const reports = await runInstances([config, config])
    assert.deepEqual(reports.flatMap((r) => r.errors), [], 'no errors')
    const all = merged(reports)
    const windows = perWindow(all, all[0], 2000, 3)
    for (const used of windows) assert.ok(used >= 45 && used <= 50, `per window: ${windows}`)
    const span = 2000 - 10 - 50
    const worst = busiest(all, span)
    assert.ok(worst.count <= 50, `at most 50 in any ${span} ms of server time, got ${worst.count}`)
  })

  test('hybrid on the cluster: one sync round over keys of every master, leases returned on close', { timeout: 60_000 }, async () => {
    const prefix = unique('cb')
    const keys = Array.from({ length: 300 }, (_, i) => `key${i}`)
    const rl = await RateLimiter.builder(connection()).redisPrefix(prefix).windowSizeSeconds(10).build()
    try {
      const decisions = await Promise.all(keys.map((key) => rl.hybrid.absolute.inc(key, 5)))
      assert.ok(decisions.every((d) => d.kind === 'allowed'), 'every first call is admitted')
    } finally {
      await rl.close()
    }
    const check = await RateLimiter.builder(connection()).redisPrefix(prefix).windowSizeSeconds(10).build()
    try {
      const remaining = await Promise.all(keys.map(async (key) => (await check.redis.absolute.get(key, 5)).remaining))
      assert.deepEqual(new Set(remaining), new Set([49]), 'after close, Redis holds exactly the one admitted unit of each key')
    } finally {
      await check.close()
    }
    const counts = []
    for (const node of await masters()) counts.push((await cluster.command(node.port, ['KEYS', `{${prefix}:*`])).length)
    assert.ok(counts.every((count) => count > 0), `the keys are on every master: ${counts}`)
  })

  test('resharding 1000 slots while 4 processes call: no errors reach callers, exactness kept', { timeout: 180_000 }, async (t) => {
    const prefix = unique('cr')
    const nodes = (await masters()).sort((a, b) => a.slots[0][0] - b.slots[0][0])
    const [from, to] = nodes
    // redis-cli moves the source's lowest slots first: keys in the first 1000 slots all move.
    const firstSlot = from.slots[0][0]
    const moving = (slot) => slot >= firstSlot && slot < firstSlot + 1000 && owns(from, slot)
    const keys = []
    for (let i = 0; keys.length < 40; i++) {
      if (moving(await slotOf(cluster, from.port, prefix, `k${i}`))) keys.push(`k${i}`)
    }
    // W = 100 s (longer than the run): each key's admissions so far are in one window, so the
    // key admits exactly min(offered, C), whichever node serves it. Rates 1, 2, 4 and 8 per
    // second (C = 100 to 800) make keys fill up at different times during the reshard.
    const window = 100
    const rateOf = (index) => 2 ** (index % 4)
    const byRate = [0, 1, 2, 3].map((r) => keys.filter((_, index) => index % 4 === r))
    const configs = byRate.map((group, r) => ({
      connection: connection(),
      prefix,
      window,
      keys: group,
      rate: 2 ** r,
      concurrency: 4,
      pauseMs: 2,
    }))
    const callers = await startCallers(configs)
    let reports
    let reshard
    try {
      callers.start()
      await sleep(300)
      const started = Date.now()
      // Asynchronous (execFile), so that this process keeps reading the callers' output meanwhile.
      reshard = await new Promise((resolve, reject) => {
        execFile(
          'redis-cli',
          ['--cluster', 'reshard', `127.0.0.1:${from.port}`, '--cluster-from', from.id, '--cluster-to', to.id, '--cluster-slots', '1000', '--cluster-yes'],
          { timeout: 120_000, maxBuffer: 64 * 1024 * 1024 },
          (error, stdout, stderr) =>
            error ? reject(new Error(`reshard failed: ${error.message}\n${stdout.slice(-2000)}${stderr}`)) : resolve({ started, ended: Date.now() }),
        )
      })
      await sleep(300)
      reports = await callers.stop()
    } finally {
      callers.kill()
    }
    const after = (await masters()).find((node) => node.id === to.id)
    for (const key of keys) {
      assert.ok(owns(after, await slotOf(cluster, to.port, prefix, key)), `${key} now lives on the target master`)
    }
    const errors = errorsOf(reports)
    assert.deepEqual(
      errors.slice(0, 10),
      [],
      `no errors reach callers during the reshard: ${errors.length} (${reports.flatMap((r) => r.messages).join(' | ')})`,
    )
    const during = reports.flatMap((r) => r.outcomes).filter(([start, end]) => start >= reshard.started && end <= reshard.ended)
    const admittedDuring = during.filter(([, , , code]) => code === 'ok').length
    assert.ok(admittedDuring > 0, 'calls were admitted while slots moved (the test saw the migration)')
    const sum = totals(reports, keys)
    const rl = await RateLimiter.builder(connection()).redisPrefix(prefix).windowSizeSeconds(window).build()
    try {
      for (const [index, key] of keys.entries()) {
        const capacity = window * rateOf(index)
        const { allowed, rejected } = sum[key]
        assert.ok(allowed <= capacity, `${key}: ${allowed} admitted, capacity ${capacity}`)
        if (rejected > 0) assert.equal(allowed, capacity, `${key}: rejections only once full (exact)`)
        const quota = await rl.redis.absolute.get(key, rateOf(index))
        assert.equal(capacity - quota.remaining, allowed, `${key}: Redis holds exactly what was admitted (nothing lost or counted twice)`)
      }
    } finally {
      await rl.close()
    }
    const full = keys.filter((key) => sum[key].rejected > 0).length
    measured.reshard = {
      ms: reshard.ended - reshard.started,
      calls: reports.reduce((n, r) => n + r.calls, 0),
      callsDuringReshard: during.length,
      admittedDuringReshard: admittedDuring,
      keysFilled: full,
    }
    t.diagnostic(`reshard of 1000 slots took ${reshard.ended - reshard.started} ms; ${during.length} calls during it, ${admittedDuring} admitted; ${full}/${keys.length} keys reached capacity, all exactly`)
  })

  test('failover: a master with a replica is killed while calls run; calls recover without a restart', { timeout: 180_000 }, async (t) => {
    const prefix = unique('cf')
    const nodes = await masters()
    const layout = await cluster.layout()
    const victim = nodes.find((node) => layout.some((other) => other.masterId === node.id && !other.failed))
    assert.ok(victim, 'a master with a live replica')
    const replica = layout.find((node) => node.masterId === victim.id && !node.failed)
    const survivor = nodes.find((node) => node.id !== victim.id)
    const keys = Array.from({ length: 30 }, (_, i) => `k${i}`)
    const onVictim = []
    for (const key of keys) if (owns(victim, await slotOf(cluster, survivor.port, prefix, key))) onVictim.push(key)
    assert.ok(onVictim.length > 0, 'some keys live on the master that is killed')
    const commandTimeoutMs = 2000
    const config = { connection: connection(), prefix, window: 60, keys, rate: 1000, concurrency: 4, pauseMs: 10 }
    const callers = await startCallers([config, config])
    let reports
    let killedAt
    let promotedAt = null
    let stoppedAt
    try {
      callers.start()
      await sleep(1000)
      killedAt = Date.now()
      await cluster.kill(victim.port)
      const deadline = killedAt + 60_000
      // The promotion as the replica itself sees it (the other nodes learn it by gossip later).
      while (promotedAt === null && Date.now() < deadline) {
        const view = await cluster.layout(replica.port).catch(() => [])
        if (view.some((node) => node.myself && node.role === 'master' && node.slots.length > 0)) promotedAt = Date.now()
        else await sleep(50)
      }
      assert.ok(promotedAt !== null, 'the replica was promoted within 60 s (cluster-node-timeout 2000 ms)')
      // Keep calling for a while after the promotion: calls must recover and stay healthy.
      await sleep(6000)
      stoppedAt = Date.now()
      reports = await callers.stop()
    } finally {
      callers.kill()
    }
    const result = checkRecovery(reports, { killedAt, promotedAt, stoppedAt, keys, quietMs: 3000, commandTimeoutMs })
    const victimIndices = new Set(onVictim.map((key) => keys.indexOf(key)))
    const errors = errorsOf(reports)
    const onHealthy = errors.filter(([, , index]) => !victimIndices.has(index)).length
    measured.clusterFailover = {
      promotionMs: promotedAt - killedAt,
      recoveryMs: result.recoveryMs,
      errors: result.errors,
      errorsOnKeysOfHealthyMasters: onHealthy,
      calls: result.calls,
    }
    t.diagnostic(
      `cluster failover: replica promoted ${promotedAt - killedAt} ms after the kill; last error ${result.recoveryMs} ms after it; ` +
        `${result.errors} errors of ${result.calls} calls (${onHealthy} on keys of the healthy masters); ${result.messages.join(' | ')}`,
    )
  })

  // Runs last: it leaves a third of the slots without a master. Fails today: the circuit
  // breaker is one per limiter, so the lost master's timeouts open it for every key, and its
  // probe (PING, which redis-rs sends to every primary) keeps failing while a primary is down.
  test('a master down for good (no replica left): keys on the other masters keep being served', { timeout: 60_000 }, async (t) => {
    const prefix = unique('cd')
    const layout = await cluster.layout()
    const nodes = await masters()
    const victim = nodes.find((node) => !layout.some((other) => other.masterId === node.id && !other.failed)) ?? nodes[0]
    const survivor = nodes.find((node) => node.id !== victim.id)
    const healthy = []
    const lost = []
    for (let i = 0; healthy.length < 20 || lost.length < 5; i++) {
      const key = `k${i}`
      ;(owns(victim, await slotOf(cluster, survivor.port, prefix, key)) ? lost : healthy).push(key)
    }
    const rl = await RateLimiter.builder({ ...connection(), commandTimeoutMs: 1000 }).redisPrefix(prefix).windowSizeSeconds(60).build()
    const counts = { healthyOk: 0, healthyErrors: 0, lostOk: 0, lostErrors: 0 }
    const messages = new Set()
    try {
      await cluster.kill(victim.port)
      const until = Date.now() + 8000
      const loop = async (keys, label) => {
        for (let i = 0; Date.now() < until; i++) {
          try {
            await rl.redis.absolute.inc(keys[i % keys.length], 1000)
            counts[`${label}Ok`]++
          } catch (error) {
            counts[`${label}Errors`]++
            if (label === 'healthy') messages.add(`${error.code}: ${error.message}`)
          }
          await sleep(5)
        }
      }
      await Promise.all([loop(healthy, 'healthy'), loop(healthy, 'healthy'), loop(lost, 'lost')])
    } finally {
      await rl.close()
    }
    measured.shardDown = counts
    t.diagnostic(`one master down for good: ${JSON.stringify(counts)}`)
    assert.ok(counts.lostErrors > 0, 'calls on the lost slots fail')
    assert.ok(counts.healthyOk > 0)
    assert.equal(
      counts.healthyErrors,
      0,
      `calls on keys of the healthy masters fail too (${counts.healthyErrors} of ${counts.healthyErrors + counts.healthyOk}): ${[...messages].join(' | ')}`,
    )
  })
})

describe('Sentinel: 1 master, 1 replica, 3 sentinels', { skip: tools.skip }, () => {
  let sentinels

  before(async () => {
    tools.check()
    sentinels = await startSentinels()
  })

  after(async () => {
    await sentinels?.stop()
  })

  test('the master is killed while calls run; calls recover after the promotion', { timeout: 120_000 }, async (t) => {
    const prefix = unique('sf')
    const keys = Array.from({ length: 10 }, (_, i) => `k${i}`)
    const connection = { sentinel: { urls: sentinels.sentinelUrls, masterName: sentinels.masterName } }
    const config = { connection, prefix, window: 60, keys, rate: 1000, concurrency: 4, pauseMs: 10 }
    const callers = await startCallers([config])
    let reports
    let killedAt
    let promotedAt = null
    let stoppedAt
    let old
    try {
      callers.start()
      await sleep(1000)
      killedAt = Date.now()
      old = await sentinels.killMaster()
      const deadline = killedAt + 60_000
      while (promotedAt === null && Date.now() < deadline) {
        const now = await sentinels.currentMaster().catch(() => old)
        if (now !== old) promotedAt = Date.now()
        else await sleep(100)
      }
      assert.ok(promotedAt !== null, 'the sentinels promoted the replica within 60 s')
      await sleep(5000)
      stoppedAt = Date.now()
      reports = await callers.stop()
    } finally {
      callers.kill()
    }
    assert.equal(await sentinels.currentMaster(), sentinels.replicaPort, 'the replica is the master now')
    const result = checkRecovery(reports, { killedAt, promotedAt, stoppedAt, keys, quietMs: 3000, commandTimeoutMs: 2000 })
    measured.sentinelFailover = { promotionMs: promotedAt - killedAt, recoveryMs: result.recoveryMs, errors: result.errors, calls: result.calls }
    t.diagnostic(
      `sentinel failover: promotion seen ${promotedAt - killedAt} ms after the kill; last error ${result.recoveryMs} ms after it; ` +
        `${result.errors} errors of ${result.calls} calls; ${result.messages.join(' | ')}`,
    )
  })

  // The usual set-up: the data nodes require a password, the Sentinels know it (auth-pass) and
  // need none themselves. Today the URL's credentials are sent to the Sentinels and the master
  // alike, so there is no way to connect: this test uses a proposed option, sentinel.password
  // (and sentinel.username), for the master's credentials.
  test('a password-protected master behind Sentinels without a password', { timeout: 60_000 }, async () => {
    const PASSWORD = 'Master-pw-71c2'
    const master = await sentinels.currentMaster()
    await sentinels.command(master, ['CONFIG', 'SET', 'requirepass', PASSWORD])
    for (const port of sentinels.sentinelPorts) await sentinels.command(port, ['SENTINEL', 'SET', sentinels.masterName, 'auth-pass', PASSWORD])
    const urls = sentinels.sentinelUrls
    const withUrlPassword = urls.map((url) => url.replace('redis://', `redis://:${PASSWORD}@`))
    // What can be written today fails either way.
    await assert.rejects(RateLimiter.builder({ sentinel: { urls, masterName: sentinels.masterName } }).build(), { code: 'TRYPEMA_REDIS_AUTH' })
    await assert.rejects(RateLimiter.builder({ sentinel: { urls: withUrlPassword, masterName: sentinels.masterName } }).build(), { code: 'TRYPEMA_REDIS_AUTH' })
    let rl
    try {
      rl = await RateLimiter.builder({ sentinel: { urls, masterName: sentinels.masterName, password: PASSWORD } }).build()
    } catch (error) {
      assert.fail(`the master's own credentials (proposed sentinel.password) cannot be given: ${error.code ?? error.name}: ${error.message}`)
    }
    try {
      assert.deepEqual(await rl.redis.absolute.inc('user_123', 5), { kind: 'allowed' })
    } finally {
      await rl.close()
    }
  })
})

describe('TLS', { skip: tools.skip }, () => {
  let certificates
  let server
  let mutual

  before(async () => {
    tools.check()
    certificates = makeCertificates()
    server = await startTlsRedis(certificates)
    mutual = await startTlsRedis(certificates, { clientAuth: true })
  })

  after(async () => {
    await server?.stop()
    await mutual?.stop()
    certificates?.remove()
  })

  // Generous connect timeouts: a TLS handshake on 2 busy cores can take a while.
  const connectTimeoutMs = 10_000

  test('rediss:// with the CA works', async () => {
    // PEM as a string and as a Buffer.
    for (const ca of [certificates.ca, Buffer.from(certificates.ca)]) {
      const rl = await RateLimiter.builder({ url: server.url, tls: { ca }, connectTimeoutMs }).redisPrefix(unique('tls')).windowSizeSeconds(10).build()
      try {
        assert.deepEqual(await rl.redis.absolute.inc('user_123', 5), { kind: 'allowed' })
        assert.equal((await rl.redis.absolute.get('user_123', 5)).remaining, 49)
        assert.deepEqual(await rl.hybrid.absolute.inc('user_456', 5), { kind: 'allowed' })
      } finally {
        await rl.close()
      }
    }
  })

  test('rediss:// without the CA: build() fails with TRYPEMA_REDIS naming the certificate problem', async () => {
    await assert.rejects(RateLimiter.builder({ url: server.url, connectTimeoutMs }).build(), (error) => {
      assert.equal(error.code, 'TRYPEMA_REDIS')
      assert.match(error.message, /certificate/i, error.message)
      assert.match(error.message, /UnknownIssuer|unknown issuer|not trusted|self.signed/i, error.message)
      return true
    })
  })

  test('mutual TLS with a client certificate works', async () => {
    const tls = { ca: certificates.ca, cert: certificates.cert, key: certificates.key }
    const rl = await RateLimiter.builder({ url: mutual.url, tls, connectTimeoutMs }).build()
    try {
      assert.deepEqual(await rl.redis.absolute.inc('user_123', 5), { kind: 'allowed' })
      assert.deepEqual(await rl.redis.suppressed.inc('user_123', 5), { kind: 'allowed' })
    } finally {
      await rl.close()
    }
  })

  test('mutual TLS without a client certificate: build() fails with TRYPEMA_REDIS saying a certificate is required', async () => {
    await assert.rejects(RateLimiter.builder({ url: mutual.url, tls: { ca: certificates.ca }, connectTimeoutMs }).build(), (error) => {
      assert.equal(error.code, 'TRYPEMA_REDIS')
      assert.match(error.message, /certificate/i, error.message)
      return true
    })
  })
})

describe('passwords never appear in TRYPEMA_REDIS messages', { skip: tools.skip }, () => {
  const PASSWORD = 'Pw-9f3c7e1d-secret'
  const WRONG = 'Wrong-4b8a2d6f-guess'
  let cluster

  before(async () => {
    tools.check()
    cluster = await startCluster({ masters: 3, replicas: 0, password: PASSWORD })
  })

  after(async () => {
    await cluster?.stop()
  })

  function assertNoPassword(error) {
    for (const secret of [PASSWORD, WRONG, encodeURIComponent(PASSWORD), encodeURIComponent(WRONG)]) {
      for (const text of [error.message, error.stack, String(error)]) {
        assert.ok(!text.includes(secret), `the error reveals a password: ${text}`)
      }
    }
  }

  const wrongUrls = () => cluster.urls.map((url) => url.replace(encodeURIComponent(PASSWORD), WRONG))

  test('the right password in the cluster URLs works', async () => {
    const rl = await RateLimiter.builder({ cluster: cluster.urls }).build()
    try {
      assert.deepEqual(await rl.redis.absolute.inc('user_123', 5), { kind: 'allowed' })
    } finally {
      await rl.close()
    }
  })

  test('a wrong password in the cluster URLs: build() fails and the message has no password', async () => {
    for (const urls of [wrongUrls(), wrongUrls().map((url) => url.replace('redis://:', 'redis://someuser:'))]) {
      await assert.rejects(RateLimiter.builder({ cluster: urls }).build(), (error) => {
        assert.ok(['TRYPEMA_REDIS', 'TRYPEMA_REDIS_AUTH'].includes(error.code), `${error.code}: ${error.message}`)
        assertNoPassword(error)
        return true
      })
    }
    // One server: a wrong password, and the right one on a port where nothing listens.
    for (const url of [wrongUrls()[0], `redis://:${encodeURIComponent(PASSWORD)}@127.0.0.1:1/`]) {
      await assert.rejects(RateLimiter.builder(url).build(), (error) => {
        assertNoPassword(error)
        return true
      })
    }
  })

  // Fails today: redis-rs reports the cluster's failed AUTH as an Io error wrapping
  // AuthenticationFailed ("Failed to create initial connections - Io: Password authentication
  // failed"), which classify() does not recognise as an authentication failure.
  test('a wrong password in the cluster URLs is TRYPEMA_REDIS_AUTH, as for a single server', async () => {
    const single = await RateLimiter.builder(wrongUrls()[0]).build().then(
      () => assert.fail('built with a wrong password'),
      (error) => error,
    )
    assert.equal(single.code, 'TRYPEMA_REDIS_AUTH', single.message)
    await assert.rejects(RateLimiter.builder({ cluster: wrongUrls() }).build(), (error) => {
      assert.equal(error.code, 'TRYPEMA_REDIS_AUTH', `a cluster with a wrong password: ${error.code}: ${error.message}`)
      return true
    })
  })

  test('errors of calls while a master is down carry no password', { timeout: 60_000 }, async () => {
    const rl = await RateLimiter.builder({ cluster: cluster.urls }).commandTimeoutMs(500).build()
    try {
      assert.deepEqual(await rl.redis.absolute.inc('before', 5), { kind: 'allowed' })
      const [victim] = (await cluster.layout()).filter((node) => node.role === 'master')
      await cluster.kill(victim.port)
      const errors = []
      for (let i = 0; i < 60; i++) {
        await rl.redis.absolute.inc(`k${i}`, 5).catch((error) => errors.push(error))
        await rl.redis.suppressed.inc(`k${i}`, 5).catch((error) => errors.push(error))
      }
      assert.ok(errors.length > 0, 'calls failed while a master (without replica) is down')
      for (const error of errors) {
        assert.ok(['TRYPEMA_REDIS', 'TRYPEMA_REDIS_TIMEOUT'].includes(error.code), `${error.code}: ${error.message}`)
        assertNoPassword(error)
      }
      assert.ok(!rl.metricsText().includes(PASSWORD), 'nor do the metrics')
    } finally {
      await rl.close()
    }
  })
})

describe('connection options', () => {
  // Top-level unknown options are a TypeError (index.js); nested ones must be too, or a typo
  // (or an ioredis habit such as tls.rejectUnauthorized) is silently ignored.
  test('unknown keys inside sentinel and tls are a TypeError at builder()', () => {
    assert.throws(() => RateLimiter.builder({ url: 'redis://127.0.0.1:6379/', colour: 1 }), TypeError)
    assert.throws(
      () => RateLimiter.builder({ sentinel: { urls: ['redis://127.0.0.1:26379/'], masterName: 'mymaster', pasword: 'x' } }),
      TypeError,
      'a misspelt sentinel option',
    )
    assert.throws(
      () => RateLimiter.builder({ url: 'rediss://127.0.0.1:6380/', tls: { rejectUnauthorized: false } }),
      TypeError,
      'an unknown tls option (rejectUnauthorized: false does not disable verification)',
    )
  })
})
