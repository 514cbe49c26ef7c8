// Throwaway Redis topologies on loopback for the scale-out tests: a Redis Cluster (masters with
// replicas), a Sentinel group (master, replica, three sentinels) and a TLS server with
// certificates made by openssl at start. Every process is started here and stopped by `stop()`;
// nothing is persisted (each gets its own temporary directory).
import { spawn, spawnSync } from 'node:child_process'
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import net from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'

import { freePort } from './redis-server.mjs'

const encode = (args) => `*${args.length}\r\n` + args.map((a) => `$${Buffer.byteLength(String(a))}\r\n${a}\r\n`).join('')

/**
 * Parses one RESP2 reply at `offset` of `buffer`: `{ value, end }`, or null while incomplete.
 * Errors are `{ error: 'text' }`; bulk strings are strings; nil is null.
 */
export function parseReply(buffer, offset = 0) {
  const lineEnd = buffer.indexOf('\r\n', offset)
  if (lineEnd === -1) return null
  const type = String.fromCharCode(buffer[offset])
  const line = buffer.toString('utf8', offset + 1, lineEnd)
  const next = lineEnd + 2
  switch (type) {
    case '+':
      return { value: line, end: next }
    case '-':
      return { value: { error: line }, end: next }
    case ':':
      return { value: Number(line), end: next }
    case '$': {
      const length = Number(line)
      if (length < 0) return { value: null, end: next }
      if (buffer.length < next + length + 2) return null
      return { value: buffer.toString('utf8', next, next + length), end: next + length + 2 }
    }
    case '*': {
      const count = Number(line)
      if (count < 0) return { value: null, end: next }
      const items = []
      let at = next
      for (let i = 0; i < count; i++) {
        const item = parseReply(buffer, at)
        if (item === null) return null
        items.push(item.value)
        at = item.end
      }
      return { value: items, end: at }
    }
    default:
      throw new Error(`not a RESP reply: ${JSON.stringify(buffer.toString('utf8', offset, offset + 40))}`)
  }
}

/**
 * Sends one command (RESP) and resolves with the whole raw reply text (waiting until the reply
 * is complete, however it is split into packets). `password`: sends AUTH first (rejects if the
 * server refuses it).
 */
export function rawCommand(port, args, { password = null, timeoutMs = 2000 } = {}) {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: '127.0.0.1', port })
    let data = Buffer.alloc(0)
    let authenticating = password !== null
    const finish = (error, value) => {
      clearTimeout(timer)
      socket.destroy()
      if (error) reject(error)
      else resolve(value)
    }
    const timer = setTimeout(() => finish(new Error(`no reply from :${port} to ${args[0]} within ${timeoutMs} ms`)), timeoutMs)
    socket.on('connect', () => {
      socket.write(authenticating ? encode(['AUTH', password]) : encode(args))
    })
    socket.on('data', (chunk) => {
      data = Buffer.concat([data, chunk])
      let reply
      try {
        reply = parseReply(data)
      } catch (error) {
        finish(error)
        return
      }
      if (reply === null) return
      if (authenticating) {
        authenticating = false
        if (reply.value !== 'OK') {
          finish(new Error(`AUTH refused by :${port}: ${reply.value?.error ?? reply.value}`))
          return
        }
        data = data.subarray(reply.end)
        socket.write(encode(args))
        return
      }
      finish(null, data.toString('utf8', 0, reply.end))
    })
    socket.on('error', (error) => finish(error))
  })
}

/** Like rawCommand, resolving with the parsed reply (see parseReply). */
export async function command(port, args, options) {
  return parseReply(Buffer.from(await rawCommand(port, args, options))).value
}

async function waitFor(what, check, timeoutMs = 20_000) {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    try {
      if (await check()) return
    } catch {
      // not yet
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await sleep(50)
  }
}

/**
 * A fresh directory for a topology's files, in memory (/dev/shm) when there is one: a cluster
 * node fsyncs nodes.conf on every layout change and a replica its RDB, and on a busy disk those
 * fsyncs stall a node long enough (seconds) for the others to mark it as failing.
 */
function topologyDir(label) {
  const base = existsSync('/dev/shm') ? '/dev/shm' : tmpdir()
  return mkdtempSync(join(base, `trypema-${label}-`))
}

/**
 * Removes a topology's directory (configs, logs), unless TRYPEMA_KEEP_TOPOLOGIES=1 (then it says
 * where it is, to read the servers' logs after a failure).
 */
function removeDir(dir) {
  if (process.env.TRYPEMA_KEEP_TOPOLOGIES === '1') console.error(`kept ${dir} (TRYPEMA_KEEP_TOPOLOGIES=1)`)
  else rmSync(dir, { recursive: true, force: true })
}

// Servers still running. If this process ends without stop() (a test timed out, an exception
// escaped, Ctrl-C), they are killed on the way out instead of being left behind.
const running = new Set()
function killRunning() {
  for (const child of running) child.kill('SIGKILL')
}
process.once('exit', killRunning)
for (const signal of ['SIGINT', 'SIGTERM']) {
  process.once(signal, () => {
    killRunning()
    process.kill(process.pid, signal)
  })
}

/** Starts `redis-server` with `args` (its log file is set by them). */
function spawnServer(args) {
  const child = spawn('redis-server', args, { stdio: ['ignore', 'ignore', 'inherit'] })
  running.add(child)
  child.exited = new Promise((resolve) =>
    child.once('exit', (...result) => {
      running.delete(child)
      resolve(...result)
    }),
  )
  return child
}

/** A redis-server; its log goes to `<dir>/redis-<port>.log`. */
function server(args, dir) {
  const port = args[args.indexOf('--tls-port') + 1 || args.indexOf('--port') + 1]
  return spawnServer(['--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir, '--logfile', join(dir, `redis-${port}.log`), ...args])
}

async function stopAll(children) {
  await Promise.all(
    children.map(async (child) => {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGKILL')
        await child.exited
      }
    }),
  )
}

function canListen(port) {
  return new Promise((resolve) => {
    const probe = net.createServer()
    probe.unref()
    probe.once('error', () => resolve(false))
    probe.listen(port, '127.0.0.1', () => probe.close(() => resolve(true)))
  })
}

const takenClusterPorts = new Set()

/**
 * A port for a cluster node: it and its cluster bus port (port + 10000) are free. Taken from
 * 20000-22767 (bus 30000-32767), below Linux's ephemeral range (32768-60999), because a port
 * that `freePort()` returns may be above 55535, whose bus port does not exist (redis-server then
 * refuses to start: "Your Redis port number must be 55535 or less").
 */
async function freeClusterPort() {
  for (let attempt = 0; attempt < 200; attempt++) {
    const port = 20000 + Math.floor(Math.random() * 2768)
    if (takenClusterPorts.has(port)) continue
    if ((await canListen(port)) && (await canListen(port + 10000))) {
      takenClusterPorts.add(port)
      return port
    }
  }
  throw new Error('no free port pair (port, port + 10000) for a cluster node in 20000-22767')
}

/** Runs `start()`; if it throws, kills `children()` (what was started) and removes `dir`. */
async function cleanupOnFailure(children, dir, start) {
  try {
    return await start()
  } catch (error) {
    await stopAll(children())
    removeDir(dir)
    throw error
  }
}

/**
 * A Redis Cluster of `masters` masters with `replicas` replicas each, on free loopback ports.
 * `password`: every node gets `requirepass` and `masterauth` (replicas authenticate to their
 * masters), and `urls` carry it (`redis://:password@127.0.0.1:port/`).
 * @returns {Promise<{ urls: string[], ports: number[], nodes: object[], password: string | null, kill(port): Promise<void>, stop(): Promise<void> }>}
 */
export async function startCluster({ masters = 3, replicas = 1, password = null } = {}) {
  const dir = topologyDir('cluster')
  const count = masters * (1 + replicas)
  const ports = []
  for (let i = 0; i < count; i++) ports.push(await freeClusterPort())
  const nodes = ports.map((port) =>
    server(
      [
        '--port', String(port), '--cluster-enabled', 'yes', '--cluster-config-file', `nodes-${port}.conf`,
        '--cluster-node-timeout', '2000', '--cluster-require-full-coverage', 'no',
        // Replicas sync at once (not after the default 5 s wait for more replicas).
        '--repl-diskless-sync-delay', '0', '--repl-diskless-load', 'on-empty-db',
        ...(password === null ? [] : ['--requirepass', password, '--masterauth', password]),
      ],
      dir,
    ),
  )
  const auth = { password }
  const cliAuth = password === null ? [] : ['--no-auth-warning', '-a', password]
  const release = () => {
    for (const port of ports) takenClusterPorts.delete(port)
    return nodes
  }
  await cleanupOnFailure(release, dir, async () => {
    for (const port of ports) {
      await waitFor(`cluster node ${port}`, async () => (await rawCommand(port, ['PING'], auth)).startsWith('+PONG'))
    }
    const create = spawnSync(
      'redis-cli',
      [...cliAuth, '--cluster', 'create', ...ports.map((p) => `127.0.0.1:${p}`), '--cluster-replicas', String(replicas), '--cluster-yes'],
      { encoding: 'utf8', timeout: 60_000 },
    )
    if (create.status !== 0) throw new Error(`redis-cli --cluster create failed: ${create.stdout}${create.stderr}`)
    // Every node agrees on the layout: state ok and every master known with its replicas.
    await waitFor('cluster state ok', async () => {
      for (const port of ports) {
        if (!(await rawCommand(port, ['CLUSTER', 'INFO'], auth)).includes('cluster_state:ok')) return false
        const known = parseClusterNodes(await command(port, ['CLUSTER', 'NODES'], auth))
        if (known.filter((node) => node.role === 'master' && node.slots.length > 0).length !== masters) return false
        if (known.filter((node) => node.role === 'replica').length !== masters * replicas) return false
      }
      return true
    })
    // A replica that has not finished its first sync cannot take over from its master: wait
    // until every replica has its data (a failover test may kill a master right away).
    for (const node of parseClusterNodes(await command(ports[0], ['CLUSTER', 'NODES'], auth))) {
      if (node.role !== 'replica') continue
      await waitFor(`replica ${node.port} in sync`, async () =>
        (await rawCommand(node.port, ['INFO', 'replication'], auth)).includes('master_link_status:up'),
      )
    }
  })
  const credentials = password === null ? '' : `:${encodeURIComponent(password)}@`
  return {
    ports,
    nodes,
    password,
    urls: ports.slice(0, masters).map((port) => `redis://${credentials}127.0.0.1:${port}/`),
    /** The nodes as `port` (default: the first live one) sees them: see parseClusterNodes. */
    async layout(port) {
      const live = port ?? ports.find((p) => nodes[ports.indexOf(p)].exitCode === null && nodes[ports.indexOf(p)].signalCode === null)
      return parseClusterNodes(await command(live, ['CLUSTER', 'NODES'], auth))
    },
    /** Sends one command to the node on `port` (authenticated if the cluster has a password). */
    command: (port, args, options = {}) => command(port, args, { ...auth, ...options }),
    /** `redis-cli` with the cluster's password (if any) and `args`; throws on failure. */
    cli: (args, options) => redisCli([...cliAuth, ...args], options),
    async kill(port) {
      const child = nodes[ports.indexOf(port)]
      child.kill('SIGKILL')
      await child.exited
    },
    async stop() {
      await stopAll(nodes)
      for (const port of ports) takenClusterPorts.delete(port)
      removeDir(dir)
    },
  }
}

/**
 * `CLUSTER NODES` text as `[{ id, port, role: 'master'|'replica', masterId, failed, slots:
 * [[first, last], ...] }]` (importing/migrating markers are left out of `slots`).
 */
export function parseClusterNodes(text) {
  return text
    .trim()
    .split('\n')
    .map((line) => {
      const [id, address, flags, masterId, , , , , ...slots] = line.trim().split(' ')
      const flagList = flags.split(',')
      return {
        id,
        port: Number(address.split('@')[0].split(':')[1]),
        role: flagList.includes('master') ? 'master' : 'replica',
        masterId: masterId === '-' ? null : masterId,
        failed: flagList.includes('fail') || flagList.includes('fail?'),
        myself: flagList.includes('myself'),
        slots: slots
          .filter((slot) => !slot.startsWith('['))
          .map((slot) => slot.split('-').map(Number))
          .map(([first, last]) => [first, last ?? first]),
      }
    })
}

/** `redis-cli` with `args`; throws on failure. */
export function redisCli(args, { timeoutMs = 120_000 } = {}) {
  const result = spawnSync('redis-cli', args, { encoding: 'utf8', timeout: timeoutMs })
  if (result.status !== 0) throw new Error(`redis-cli ${args.join(' ')} failed: ${result.stdout}${result.stderr}`)
  return result.stdout
}

/**
 * A master, a replica and three sentinels watching them as `mymaster` (quorum 2, down after
 * 1000 ms, failover timeout 5000 ms).
 */
export async function startSentinels({ masterName = 'mymaster' } = {}) {
  const dir = topologyDir('sentinel')
  const masterPort = await freePort()
  const replicaPort = await freePort()
  const master = server(['--port', String(masterPort), '--repl-diskless-sync-delay', '0'], dir)
  const replica = server(['--port', String(replicaPort), '--replicaof', '127.0.0.1', String(masterPort), '--repl-diskless-sync-delay', '0'], dir)
  const sentinelPorts = []
  const sentinels = []
  await cleanupOnFailure(() => [master, replica, ...sentinels], dir, async () => {
    for (const port of [masterPort, replicaPort]) {
      await waitFor(`redis ${port}`, async () => (await rawCommand(port, ['PING'])).startsWith('+PONG'))
    }
    await waitFor('replica in sync', async () => (await rawCommand(replicaPort, ['INFO', 'replication'])).includes('master_link_status:up'))
    for (let i = 0; i < 3; i++) {
      const port = await freePort()
      const config = join(dir, `sentinel-${port}.conf`)
      writeFileSync(
        config,
        [
          `port ${port}`,
          'bind 127.0.0.1',
          `dir ${dir}`,
          `logfile ${join(dir, `sentinel-${port}.log`)}`,
          `sentinel monitor ${masterName} 127.0.0.1 ${masterPort} 2`,
          `sentinel down-after-milliseconds ${masterName} 1000`,
          `sentinel failover-timeout ${masterName} 5000`,
          `sentinel parallel-syncs ${masterName} 1`,
          '',
        ].join('\n'),
      )
      const child = spawnServer([config, '--sentinel'])
      sentinels.push(child)
      sentinelPorts.push(port)
    }
    // A failover needs each sentinel to know the replica and the other sentinels (found through
    // the master's INFO and hello messages, within a few seconds of starting).
    for (const port of sentinelPorts) {
      await waitFor(`sentinel ${port} to know the master, the replica and the other sentinels`, async () => {
        const fields = await command(port, ['SENTINEL', 'MASTER', masterName])
        const info = Object.fromEntries(fields.flatMap((value, i) => (i % 2 === 0 ? [[value, fields[i + 1]]] : [])))
        return info.port === String(masterPort) && info['num-slaves'] === '1' && info['num-other-sentinels'] === '2'
      })
    }
  })
  const nodes = { [masterPort]: master, [replicaPort]: replica }
  return {
    masterName,
    masterPort,
    replicaPort,
    sentinelPorts,
    sentinelUrls: sentinelPorts.map((port) => `redis://127.0.0.1:${port}/`),
    /** Sends one command to the server or sentinel on `port` (see `command`). */
    command: (port, args, options) => command(port, args, options),
    /** The master's port as the sentinels see it now. */
    async currentMaster() {
      const [, port] = await command(sentinelPorts[0], ['SENTINEL', 'get-master-addr-by-name', masterName])
      return Number(port)
    },
    async killMaster() {
      const port = await this.currentMaster()
      nodes[port].kill('SIGKILL')
      await nodes[port].exited
      return port
    },
    async stop() {
      await stopAll([...sentinels, master, replica])
      removeDir(dir)
    },
  }
}

/**
 * Certificates made by openssl: a CA, a server certificate for 127.0.0.1 and a client
 * certificate, all PEM text.
 */
export function makeCertificates() {
  const dir = mkdtempSync(join(tmpdir(), 'trypema-tls-'))
  const run = (args) => {
    const result = spawnSync('openssl', args, { cwd: dir, encoding: 'utf8' })
    if (result.status !== 0) {
      removeDir(dir)
      throw new Error(`openssl ${args.join(' ')}: ${result.error?.message ?? result.stderr}`)
    }
  }
  run(['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2', '-subj', '/CN=trypema test CA', '-keyout', 'ca.key', '-out', 'ca.crt'])
  writeFileSync(join(dir, 'server.ext'), 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n')
  run(['req', '-newkey', 'rsa:2048', '-nodes', '-subj', '/CN=127.0.0.1', '-keyout', 'server.key', '-out', 'server.csr'])
  run(['x509', '-req', '-in', 'server.csr', '-CA', 'ca.crt', '-CAkey', 'ca.key', '-CAcreateserial', '-days', '2', '-extfile', 'server.ext', '-out', 'server.crt'])
  writeFileSync(join(dir, 'client.ext'), 'basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n')
  run(['req', '-newkey', 'rsa:2048', '-nodes', '-subj', '/CN=trypema test client', '-keyout', 'client.key', '-out', 'client.csr'])
  run(['x509', '-req', '-in', 'client.csr', '-CA', 'ca.crt', '-CAkey', 'ca.key', '-CAcreateserial', '-days', '2', '-extfile', 'client.ext', '-out', 'client.crt'])
  const read = (name) => readFileSync(join(dir, name), 'utf8')
  return {
    dir,
    ca: read('ca.crt'),
    cert: read('client.crt'),
    key: read('client.key'),
    files: (name) => join(dir, name),
    /** Deletes the files (after the servers using them have stopped). */
    remove: () => rmSync(dir, { recursive: true, force: true }),
  }
}

/**
 * A redis-server that only speaks TLS, on a free port. `clientAuth`: require a client
 * certificate signed by the CA (mutual TLS).
 */
export async function startTlsRedis(certificates, { clientAuth = false } = {}) {
  const dir = topologyDir('tlsredis')
  const port = await freePort()
  const child = server(
    [
      '--port', '0', '--tls-port', String(port),
      '--tls-cert-file', certificates.files('server.crt'),
      '--tls-key-file', certificates.files('server.key'),
      '--tls-ca-cert-file', certificates.files('ca.crt'),
      '--tls-auth-clients', clientAuth ? 'yes' : 'no',
    ],
    dir,
  )
  await cleanupOnFailure(() => [child], dir, () =>
    waitFor(`TLS redis ${port}`, async () => {
      const probe = spawnSync(
        'redis-cli',
        ['--tls', '--cacert', certificates.files('ca.crt'), '--cert', certificates.files('client.crt'), '--key', certificates.files('client.key'), '-p', String(port), 'PING'],
        { encoding: 'utf8', timeout: 2000 },
      )
      return probe.stdout.includes('PONG')
    }),
  )
  return {
    port,
    url: `rediss://127.0.0.1:${port}/`,
    async stop() {
      await stopAll([child])
      removeDir(dir)
    },
  }
}
