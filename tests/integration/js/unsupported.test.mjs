// Honest answers (issue 12, item 7) through the official JS SDK: what sbx does not implement
// is refused with a 400/501 whose message names it, and nothing is made on the way; getInfo
// and list show the settings a sandbox has, no more and no fewer. Every row of
// docs/features.md is probed by tests/integration/py/test_features.py; this file checks what
// the JS SDK itself reaches.
import assert from 'node:assert/strict'
import { after, before, test } from 'node:test'

import { Sandbox, Secret } from 'e2b'

import { startDaemon } from './daemon.mjs'

const T = { timeout: 60_000 }
let daemon

before(async () => {
  daemon = await startDaemon()
})

after(async () => {
  await daemon?.stop()
})

// The call is refused: its error has the status and names the feature.
async function refused(call, status, name) {
  await assert.rejects(call, (e) => {
    assert.match(e.message, new RegExp(`\\b${status}\\b`), e.message)
    assert.ok(e.message.toLowerCase().includes(name.toLowerCase()), `${name} not in ${e.message}`)
    return true
  })
}

const running = async () => (await Sandbox.list().nextItems()).map((s) => s.sandboxId)

test('create options sbx does not implement are refused by name, and nothing is made', T, async () => {
  await refused(Sandbox.create({
    iam: { tokens: { aws: { audience: 'sts.amazonaws.com', tokenType: 'JWT-SVID' } } },
  }), 501, 'iam')
  await refused(Sandbox.create({
    network: {
      allowOut: ['example.com'],
      rules: { 'example.com': [{ transform: { headers: { 'X-Probe': '1' } } }] },
    },
  }), 400, 'network.rules')
  // The SDK's default template with mcp is E2B's mcp-gateway, which sbx does not have.
  await refused(Sandbox.create({ mcp: { exa: { apiKey: 'k' } } }), 400, 'mcp-gateway')
  assert.deepEqual(await running(), [])
})

test('APIs sbx does not implement answer 501 naming them', T, async () => {
  await refused(Secret.create('probe', 'value'), 501, 'secrets')
  await refused(Secret.list().nextItems(), 501, 'secrets')
  const create = await fetch(`${daemon.url}/v2/sandboxes`, {
    method: 'POST',
    headers: { 'X-API-KEY': daemon.apiKey, 'Content-Type': 'application/json', 'Idempotency-Key': 'k-1' },
    body: JSON.stringify({ templateID: 'base' }),
  })
  const body = await create.json()
  assert.deepEqual([create.status, body.code], [501, 501])
  assert.match(body.message, /Idempotency-Key/)
  for (const [path, name] of [['/sandboxes/metrics?sandbox_ids=x', '/sandboxes/metrics'],
    ['/teams', 'teams']]) {
    const { status, text } = await daemon.request('GET', path)
    assert.equal(status, 501, text)
    assert.match(JSON.parse(text).message, new RegExp(name))
  }
  assert.deepEqual(await running(), [])
})

test('getInfo and list report the settings applied, and nothing asked for is left out', T, async () => {
  const plain = await Sandbox.create({ timeoutMs: 60_000 })
  const set = await Sandbox.create({
    timeoutMs: 60_000,
    network: { allowOut: ['198.51.100.7'], denyOut: ['0.0.0.0/0'] },
    lifecycle: { onTimeout: 'pause', autoResume: true },
  })
  try {
    const a = await plain.getInfo()
    assert.equal(a.network, undefined)
    assert.deepEqual([a.lifecycle, a.volumeMounts], [{ onTimeout: 'kill', autoResume: false }, []])
    const b = await set.getInfo()
    // The SDK spells out the fields the server left out as undefined.
    const applied = (o) => JSON.parse(JSON.stringify(o))
    assert.deepEqual([applied(b.network), b.lifecycle],
      [{ allowOut: ['198.51.100.7'], denyOut: ['0.0.0.0/0'] }, { onTimeout: 'pause', autoResume: true }])
    const listed = (await Sandbox.list().nextItems()).find((s) => s.sandboxId === set.sandboxId)
    assert.deepEqual([listed.cpuCount, listed.memoryMB, listed.volumeMounts], [b.cpuCount, b.memoryMB, []])
  } finally {
    await plain.kill()
    await set.kill()
  }
})
