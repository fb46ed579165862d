// Sandbox lifecycle through the official JS SDK.
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { after, before, describe, test } from 'node:test'

import { Sandbox, SandboxNotFoundError } from 'e2b'

import { sleep, startDaemon, waitFor } from './daemon.mjs'

const T = { timeout: 60_000 }
let daemon
const made = []

async function create(opts = {}) {
  const sbx = await Sandbox.create({ timeoutMs: 120_000, ...opts })
  made.push(sbx.sandboxId)
  return sbx
}

async function listAll(opts) {
  const p = Sandbox.list(opts)
  const items = []
  while (p.hasNext) items.push(...(await p.nextItems()))
  return items
}

const tag = () => 't' + randomBytes(6).toString('hex')

before(async () => {
  daemon = await startDaemon()
})

after(async () => {
  for (const id of made) await Sandbox.kill(id).catch(() => {})
  await daemon?.stop()
})

describe('lifecycle', () => {
  test('create with metadata, envs and timeout; getInfo', T, async () => {
    const t = tag()
    const before = Date.now()
    const sbx = await create({ metadata: { tag: t, suite: 'js' }, envs: { JS_GLOBAL: 'g' }, timeoutMs: 90_000 })
    assert.match(sbx.sandboxId, /^[a-z0-9]+$/)
    assert.equal(await sbx.isRunning(), true)

    const info = await sbx.getInfo()
    assert.equal(info.sandboxId, sbx.sandboxId)
    assert.ok(info.templateId)
    assert.deepEqual(info.metadata, { tag: t, suite: 'js' })
    assert.equal(info.state, 'running')
    assert.ok(info.cpuCount >= 1)
    assert.ok(info.memoryMB > 0)
    assert.match(info.envdVersion, /^\d+\.\d+\.\d+/)
    assert.ok(info.startedAt instanceof Date)
    assert.ok(Math.abs(info.startedAt.getTime() - before) < 30_000)
    const lifetime = (info.endAt - info.startedAt) / 1000
    assert.ok(lifetime >= 80 && lifetime <= 100, `lifetime ${lifetime}`)

    const r = await sbx.commands.run('echo $JS_GLOBAL')
    assert.equal(r.stdout, 'g\n')

    const byId = await Sandbox.getInfo(sbx.sandboxId)
    assert.equal(byId.sandboxId, sbx.sandboxId)
  })

  test('getInfo of an unknown sandbox throws SandboxNotFoundError', T, async () => {
    await assert.rejects(Sandbox.getInfo('nosuchsandbox0000'), SandboxNotFoundError)
  })

  test('list filters by metadata and state', T, async () => {
    const t = tag()
    const a = await create({ metadata: { tag: t, role: 'a' } })
    const b = await create({ metadata: { tag: t, role: 'b' } })
    await create({ metadata: { tag: tag(), role: 'a' } })

    const both = await listAll({ query: { metadata: { tag: t } } })
    assert.deepEqual(new Set(both.map((s) => s.sandboxId)), new Set([a.sandboxId, b.sandboxId]))
    const onlyA = await listAll({ query: { metadata: { tag: t, role: 'a' } } })
    assert.deepEqual(onlyA.map((s) => s.sandboxId), [a.sandboxId])
    assert.deepEqual(onlyA[0].metadata, { tag: t, role: 'a' })

    const running = await listAll({ query: { metadata: { tag: t }, state: ['running'] } })
    assert.equal(running.length, 2)
    const paused = await listAll({ query: { metadata: { tag: t }, state: ['paused'] } })
    assert.deepEqual(paused, [])

    const special = { 'k y&=%': 'v&w=x %2F/ü' }
    const s = await create({ metadata: special })
    const found = await listAll({ query: { metadata: special } })
    assert.deepEqual(found.map((x) => x.sandboxId), [s.sandboxId])
    assert.deepEqual(found[0].metadata, special)
  })

  test('list pages with nextItems and nextToken', { timeout: 120_000 }, async () => {
    const t = tag()
    const ids = []
    for (let i = 0; i < 3; i++) ids.push((await create({ metadata: { tag: t } })).sandboxId)

    const p = Sandbox.list({ query: { metadata: { tag: t } }, limit: 2 })
    assert.equal(p.hasNext, true)
    const first = await p.nextItems()
    assert.equal(first.length, 2)
    assert.equal(p.hasNext, true)
    assert.ok(p.nextToken)
    const second = await p.nextItems()
    assert.equal(second.length, 1)
    assert.equal(p.hasNext, false)
    const got = [...first, ...second].map((s) => s.sandboxId)
    assert.deepEqual([...got].sort(), [...ids].sort(), 'every sandbox exactly once')
    const starts = [...first, ...second].map((s) => s.startedAt.getTime())
    assert.deepEqual(starts, [...starts].sort((x, y) => y - x), 'newest first')
    await assert.rejects(p.nextItems())

    const p1 = Sandbox.list({ query: { metadata: { tag: t } }, limit: 1 })
    const head = await p1.nextItems()
    const p2 = Sandbox.list({ query: { metadata: { tag: t } }, limit: 5, nextToken: p1.nextToken })
    const rest = await p2.nextItems()
    assert.deepEqual([...head, ...rest].map((s) => s.sandboxId).sort(), [...ids].sort())
    assert.equal(p2.hasNext, false)
  })

  test('setTimeout extends and shortens; expiry kills the sandbox', T, async () => {
    const sbx = await create()
    await sbx.setTimeout(600_000)
    let remaining = ((await sbx.getInfo()).endAt - Date.now()) / 1000
    assert.ok(remaining > 580 && remaining <= 610, `remaining ${remaining}`)

    await sbx.setTimeout(3_000)
    assert.equal(await sbx.isRunning(), true)
    await waitFor(async () => !(await sbx.isRunning()), 15_000, 'expiry')
    const listed = await listAll()
    assert.ok(!listed.some((s) => s.sandboxId === sbx.sandboxId))
    await assert.rejects(Sandbox.getInfo(sbx.sandboxId), SandboxNotFoundError)
  })

  test('kill returns true, then false; unknown id returns false', T, async () => {
    const sbx = await create()
    assert.equal(await sbx.kill(), true)
    assert.equal(await sbx.isRunning(), false)
    assert.equal(await Sandbox.kill(sbx.sandboxId), false)
    assert.equal(await Sandbox.kill('nosuchsandbox0000'), false)
    await assert.rejects(Sandbox.connect(sbx.sandboxId), SandboxNotFoundError)

    const other = await create()
    assert.equal(await Sandbox.kill(other.sandboxId), true)
    assert.equal(await other.isRunning(), false)
  })

  test('connect by id shares the sandbox and extends its timeout', T, async () => {
    const sbx = await create()
    await sbx.commands.run('echo shared > /tmp/connect-check')
    const other = await Sandbox.connect(sbx.sandboxId)
    assert.equal(other.sandboxId, sbx.sandboxId)
    assert.equal((await other.commands.run('cat /tmp/connect-check')).stdout, 'shared\n')

    await sbx.setTimeout(100_000)
    const end = (await sbx.getInfo()).endAt
    await Sandbox.connect(sbx.sandboxId, { timeoutMs: 10_000 })
    assert.ok((await sbx.getInfo()).endAt >= end, 'connect must never shorten the timeout')
    await Sandbox.connect(sbx.sandboxId, { timeoutMs: 400_000 })
    const remaining = ((await sbx.getInfo()).endAt - Date.now()) / 1000
    assert.ok(remaining >= 380, `remaining ${remaining}`)
  })

  test('mcp: the SDK starts the gateway itself and kills the sandbox when it cannot', T, async () => {
    // base has no mcp-gateway binary: the SDK's start fails after the create succeeded.
    const t = tag()
    await assert.rejects(
      Sandbox.create('base', { timeoutMs: 60_000, metadata: { mcp: t }, mcp: { srv: {} } }),
      /Failed to start MCP gateway/
    )
    assert.deepEqual(await listAll({ query: { metadata: { mcp: t } } }), [])
  })

  test('the daemon is still alive', async () => {
    await sleep(0)
    assert.equal(daemon.alive, true, daemon.logTail())
  })
})
