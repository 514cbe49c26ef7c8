// Throwaway Redis topologies on loopback for the scale-out tests: a Redis Cluster (masters with
// replicas), a Sentinel group (master, replica, three sentinels) and a TLS server with
// certificates made by openssl at start. Every process is started here and stopped by `stop()`;
// nothing is persisted (each gets its own temporary directory).
import { spawn, spawnSync } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import net from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'

import { freePort } from './redis-server.mjs'

/** Sends one command (RESP) and resolves with the raw reply text. */
export function rawCommand(port, args, { tls = null, timeoutMs = 2000 } = {}) {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: '127.0.0.1', port })
    let data = ''
    const timer = setTimeout(() => {
      socket.destroy()
      reject(new Error(`no reply from :${port} to ${args.join(' ')}`))
    }, timeoutMs)
    socket.setEncoding('utf8')
    socket.on('connect', () => {
      socket.write(`*${args.length}\r\n` + args.map((a) => `$${Buffer.byteLength(String(a))}\r\n${a}\r\n`).join(''))
    })
    socket.on('data', (chunk) => {
      data += chunk
      if (data.endsWith('\r\n')) {
        clearTimeout(timer)
        socket.destroy()
        resolve(data)
      }
    })
    socket.on('error', (error) => {
      clearTimeout(timer)
      reject(error)
    })
  })
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

function server(args, dir) {
  const child = spawn('redis-server', ['--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir, ...args], {
    stdio: ['ignore', 'ignore', 'inherit'],
  })
  child.exited = new Promise((resolve) => child.once('exit', resolve))
  return child
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

/**
 * A Redis Cluster of `masters` masters with `replicas` replicas each, on free loopback ports.
 * @returns {Promise<{ urls: string[], ports: number[], nodes: object[], kill(port): Promise<void>, stop(): Promise<void> }>}
 */
export async function startCluster({ masters = 3, replicas = 1 } = {}) {
  const dir = mkdtempSync(join(tmpdir(), 'trypema-cluster-'))
  const count = masters * (1 + replicas)
  const ports = []
  for (let i = 0; i < count; i++) ports.push(await freePort())
  const nodes = ports.map((port) =>
    server(
      [
        '--port', String(port), '--cluster-enabled', 'yes', '--cluster-config-file', `nodes-${port}.conf`,
        '--cluster-node-timeout', '2000', '--cluster-require-full-coverage', 'no',
      ],
      dir,
    ),
  )
  for (const port of ports) await waitFor(`cluster node ${port}`, async () => (await rawCommand(port, ['PING'])).startsWith('+PONG'))
  const create = spawnSync(
    'redis-cli',
    ['--cluster', 'create', ...ports.map((p) => `127.0.0.1:${p}`), '--cluster-replicas', String(replicas), '--cluster-yes'],
    { encoding: 'utf8', timeout: 60_000 },
  )
  if (create.status !== 0) {
    await stopAll(nodes)
    throw new Error(`redis-cli --cluster create failed: ${create.stdout}${create.stderr}`)
  }
  await waitFor('cluster state ok', async () => {
    for (const port of ports) if (!(await rawCommand(port, ['CLUSTER', 'INFO'])).includes('cluster_state:ok')) return false
    return true
  })
  return {
    ports,
    nodes,
    urls: ports.slice(0, masters).map((port) => `redis://127.0.0.1:${port}/`),
    async kill(port) {
      const child = nodes[ports.indexOf(port)]
      child.kill('SIGKILL')
      await child.exited
    },
    async stop() {
      await stopAll(nodes)
      rmSync(dir, { recursive: true, force: true })
    },
  }
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
  const dir = mkdtempSync(join(tmpdir(), 'trypema-sentinel-'))
  const masterPort = await freePort()
  const replicaPort = await freePort()
  const master = server(['--port', String(masterPort)], dir)
  const replica = server(['--port', String(replicaPort), '--replicaof', '127.0.0.1', String(masterPort)], dir)
  for (const port of [masterPort, replicaPort]) {
    await waitFor(`redis ${port}`, async () => (await rawCommand(port, ['PING'])).startsWith('+PONG'))
  }
  await waitFor('replica in sync', async () => (await rawCommand(replicaPort, ['INFO', 'replication'])).includes('master_link_status:up'))
  const sentinelPorts = []
  const sentinels = []
  for (let i = 0; i < 3; i++) {
    const port = await freePort()
    const config = join(dir, `sentinel-${port}.conf`)
    writeFileSync(
      config,
      [
        `port ${port}`,
        'bind 127.0.0.1',
        `dir ${dir}`,
        `sentinel monitor ${masterName} 127.0.0.1 ${masterPort} 2`,
        `sentinel down-after-milliseconds ${masterName} 1000`,
        `sentinel failover-timeout ${masterName} 5000`,
        `sentinel parallel-syncs ${masterName} 1`,
        '',
      ].join('\n'),
    )
    const child = spawn('redis-server', [config, '--sentinel'], { stdio: ['ignore', 'ignore', 'inherit'] })
    child.exited = new Promise((resolve) => child.once('exit', resolve))
    sentinels.push(child)
    sentinelPorts.push(port)
  }
  for (const port of sentinelPorts) {
    await waitFor(`sentinel ${port}`, async () =>
      (await rawCommand(port, ['SENTINEL', 'get-master-addr-by-name', masterName])).includes(String(masterPort)),
    )
  }
  const nodes = { [masterPort]: master, [replicaPort]: replica }
  return {
    masterName,
    masterPort,
    replicaPort,
    sentinelUrls: sentinelPorts.map((port) => `redis://127.0.0.1:${port}/`),
    /** The master's port as the sentinels see it now. */
    async currentMaster() {
      const reply = await rawCommand(sentinelPorts[0], ['SENTINEL', 'get-master-addr-by-name', masterName])
      return Number(reply.split('\r\n')[4])
    },
    async killMaster() {
      const port = await this.currentMaster()
      nodes[port].kill('SIGKILL')
      await nodes[port].exited
      return port
    },
    async stop() {
      await stopAll([...sentinels, master, replica])
      rmSync(dir, { recursive: true, force: true })
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
    if (result.status !== 0) throw new Error(`openssl ${args.join(' ')}: ${result.stderr}`)
  }
  run(['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2', '-subj', '/CN=trypema test CA', '-keyout', 'ca.key', '-out', 'ca.crt'])
  writeFileSync(join(dir, 'server.ext'), 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n')
  run(['req', '-newkey', 'rsa:2048', '-nodes', '-subj', '/CN=127.0.0.1', '-keyout', 'server.key', '-out', 'server.csr'])
  run(['x509', '-req', '-in', 'server.csr', '-CA', 'ca.crt', '-CAkey', 'ca.key', '-CAcreateserial', '-days', '2', '-extfile', 'server.ext', '-out', 'server.crt'])
  writeFileSync(join(dir, 'client.ext'), 'basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n')
  run(['req', '-newkey', 'rsa:2048', '-nodes', '-subj', '/CN=trypema test client', '-keyout', 'client.key', '-out', 'client.csr'])
  run(['x509', '-req', '-in', 'client.csr', '-CA', 'ca.crt', '-CAkey', 'ca.key', '-CAcreateserial', '-days', '2', '-extfile', 'client.ext', '-out', 'client.crt'])
  const read = (name) => spawnSync('cat', [join(dir, name)], { encoding: 'utf8' }).stdout
  return { dir, ca: read('ca.crt'), cert: read('client.crt'), key: read('client.key'), files: (name) => join(dir, name) }
}

/**
 * A redis-server that only speaks TLS, on a free port. `clientAuth`: require a client
 * certificate signed by the CA (mutual TLS).
 */
export async function startTlsRedis(certificates, { clientAuth = false } = {}) {
  const dir = mkdtempSync(join(tmpdir(), 'trypema-tlsredis-'))
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
  await waitFor(`TLS redis ${port}`, async () => {
    const probe = spawnSync(
      'redis-cli',
      ['--tls', '--cacert', certificates.files('ca.crt'), '--cert', certificates.files('client.crt'), '--key', certificates.files('client.key'), '-p', String(port), 'PING'],
      { encoding: 'utf8', timeout: 2000 },
    )
    return probe.stdout.includes('PONG')
  })
  return {
    port,
    url: `rediss://127.0.0.1:${port}/`,
    async stop() {
      await stopAll([child])
      rmSync(dir, { recursive: true, force: true })
    },
  }
}
