// Sandbox networking through the official JS SDK: getHost() names this server, user ports
// answer through it (Host routing), the proxy's errors, the traffic token, maskRequestHost,
// and egress settings. Requests go to the daemon on 127.0.0.1 with the Host that getHost()
// gives (*.localhost names resolve to the loopback in browsers and curl, not through
// getaddrinfo).
import assert from 'node:assert/strict'
import http from 'node:http'
import { after, before, describe, test } from 'node:test'

import { Sandbox } from 'e2b'

import { startDaemon, waitFor } from './daemon.mjs'

const T = { timeout: 60_000 }
let daemon
const made = []

async function create(opts = {}) {
  const sbx = await Sandbox.create({ timeoutMs: 120_000, ...opts })
  made.push(sbx.sandboxId)
  return sbx
}

function get(host, path = '/', headers = {}) {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port: daemon.port, path, headers: { host, ...headers } },
      (res) => {
        let body = ''
        res.on('data', (d) => (body += d))
        res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body }))
      })
    req.on('error', reject)
    req.end()
  })
}

async function serve(sbx, port) {
  await sbx.commands.run(`cd /tmp && echo hello > index.html && python3 -m http.server ${port} >/dev/null 2>&1`,
    { background: true })
}

before(async () => {
  daemon = await startDaemon()
})

after(async () => {
  for (const id of made) await Sandbox.kill(id).catch(() => {})
  await daemon?.stop()
})

describe('network', () => {
  test('getHost names this server and reaches a port', T, async () => {
    const sbx = await create()
    assert.equal(sbx.getHost(8000), `8000-${sbx.sandboxId}.localhost:${daemon.port}`)
    await serve(sbx, 8000)
    await waitFor(async () => (await get(sbx.getHost(8000), '/index.html')).status === 200, 15_000, 'port 8000')
    assert.equal((await get(sbx.getHost(8000), '/index.html')).body, 'hello\n')
  })

  test('a killed sandbox answers 502 not found', T, async () => {
    const sbx = await create()
    const host = sbx.getHost(3000)
    await sbx.kill()
    const r = await get(host)
    assert.equal(r.status, 502)
    const body = JSON.parse(r.body)
    assert.equal(body.message, 'The sandbox was not found')
    assert.equal(body.code, 502)
    assert.ok(sbx.sandboxId.startsWith(body.sandboxId))
  })

  test('allowPublicTraffic=false needs the traffic token', T, async () => {
    const sbx = await create({ network: { allowPublicTraffic: false } })
    assert.ok(sbx.trafficAccessToken)
    await serve(sbx, 8080)
    const token = { 'e2b-traffic-access-token': sbx.trafficAccessToken }
    await waitFor(async () => (await get(sbx.getHost(8080), '/', token)).status === 200, 15_000, 'port 8080')
    assert.equal((await get(sbx.getHost(8080))).status, 403)
  })

  test('maskRequestHost is what the service sees', T, async () => {
    const sbx = await create({ network: { maskRequestHost: 'custom-host.example.com:${PORT}' } })
    await sbx.commands.run(
      'python3 -c "import socket; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); ' +
      "s.bind(('0.0.0.0', 8080)); s.listen(1); c, _ = s.accept(); open('/tmp/headers.txt', 'wb').write(c.recv(65536)); " +
      "c.sendall(b'HTTP/1.0 200 OK\\r\\n\\r\\n'); c.close()\"",
      { background: true })
    await waitFor(async () => (await get(sbx.getHost(8080))).status === 200, 15_000, 'port 8080')
    const seen = await sbx.files.read('/tmp/headers.txt')
    assert.match(seen, /Host: custom-host\.example\.com:8080/)
  })

  test('egress settings are kept and replaced', T, async () => {
    const sbx = await create({ allowInternetAccess: false })
    let info = await sbx.getInfo()
    assert.equal(info.allowInternetAccess, false)
    const denied = await sbx.commands.run('getent hosts pypi.org', { timeoutMs: 10_000 }).catch((e) => e)
    assert.notEqual(denied.exitCode, 0)
    await sbx.updateNetwork({ denyOut: ['198.51.100.0/24'] })
    info = await sbx.getInfo()
    assert.deepEqual(info.network.denyOut, ['198.51.100.0/24'])
    const r = await sbx.commands.run('getent hosts pypi.org', { timeoutMs: 10_000 })
    assert.equal(r.exitCode, 0)
  })
})
