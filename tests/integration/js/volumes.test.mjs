// Volumes through the official JS SDK: the control plane, the volume content API (the SDK's
// Volume class, with the volume's token; the official tests/volume/*.test.ts are msw-mocked
// and never reach a server), and volumes mounted into two sandboxes at once.
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { after, before, describe, test } from 'node:test'

import { Sandbox, Volume } from 'e2b'

import { sleep, startDaemon } from './daemon.mjs'

const T = { timeout: 60_000 }
let daemon
const sandboxes = []
const volumes = []

const name = () => 'v-' + randomBytes(5).toString('hex')

before(async () => {
  daemon = await startDaemon()
})

after(async () => {
  for (const id of sandboxes) await Sandbox.kill(id).catch(() => {})
  for (const id of volumes) await Volume.destroy(id).catch(() => {})
  await daemon?.stop()
})

async function newVolume() {
  const vol = await Volume.create(name())
  volumes.push(vol.volumeId)
  return vol
}

describe('volumes', () => {
  test('create, list, getInfo, destroy', T, async () => {
    const n = name()
    const vol = await Volume.create(n)
    assert.equal(vol.name, n)
    assert.ok(vol.volumeId && vol.token)
    await assert.rejects(Volume.create(n), /already exists/)
    await assert.rejects(Volume.create('no spaces'), /Invalid volume name/)
    const listed = await Volume.list()
    assert.ok(listed.some((v) => v.volumeId === vol.volumeId && v.name === n))
    const info = await Volume.getInfo(vol.volumeId)
    assert.equal(info.token, vol.token)
    assert.equal(await Volume.destroy(vol.volumeId), true)
    assert.equal(await Volume.destroy(vol.volumeId), false)
    await assert.rejects(Volume.getInfo(vol.volumeId), { name: 'VolumeNotFoundError' })
  })

  test('content API', T, async () => {
    const vol = await newVolume()
    const st = await vol.writeFile('/hello.txt', 'hi there')
    assert.equal(st.name, 'hello.txt')
    assert.equal(st.type, 'file')
    assert.equal(st.size, 8)
    assert.equal(st.mode, 0o644)
    assert.equal(await vol.readFile('/hello.txt'), 'hi there')
    const bytes = await vol.readFile('/hello.txt', { format: 'bytes' })
    assert.equal(Buffer.from(bytes).toString(), 'hi there')
    await assert.rejects(vol.writeFile('/hello.txt', 'x'))
    await vol.writeFile('/hello.txt', 'again', { force: true })
    assert.equal(await vol.readFile('/hello.txt'), 'again')
    await vol.writeFile('/empty.txt', '')
    assert.equal(await vol.readFile('/empty.txt'), '')
    await assert.rejects(vol.makeDir('/a/b'), { name: 'VolumePathNotFoundError' })
    const dir = await vol.makeDir('/a/b', { force: true, uid: 1000, gid: 1000 })
    assert.equal(dir.type, 'directory')
    assert.equal(dir.uid, 1000)
    const entries = await vol.list('/', { depth: 2 })
    assert.deepEqual(entries.map((e) => e.path).sort(), ['/a', '/a/b', '/empty.txt', '/hello.txt'])
    assert.equal(await vol.exists('/a/b'), true)
    assert.equal(await vol.exists('/nope'), false)
    const m = await vol.updateMetadata('/hello.txt', { mode: 0o600 })
    assert.equal(m.mode, 0o600)
    await vol.remove('/a')
    assert.equal(await vol.exists('/a'), false)
    await assert.rejects(vol.readFile('/a'), { name: 'VolumePathNotFoundError' })
  })

  test('two sandboxes mount one volume at once; data outlives them', T, async () => {
    const vol = await newVolume()
    const a = await Sandbox.create({ volumeMounts: { '/mnt/data': vol } })
    sandboxes.push(a.sandboxId)
    const b = await Sandbox.create({ volumeMounts: { '/home/user/v': vol.name } })
    sandboxes.push(b.sandboxId)
    assert.deepEqual((await a.getInfo()).volumeMounts, [{ name: vol.name, path: '/mnt/data' }])
    await a.commands.run('echo from-a > /mnt/data/a.txt')
    assert.equal((await b.commands.run('cat /home/user/v/a.txt')).stdout, 'from-a\n')
    assert.equal((await b.commands.run('stat -c %U /home/user/v/a.txt')).stdout, 'user\n')
    await vol.writeFile('/api.txt', 'api')
    assert.equal((await a.commands.run('cat /mnt/data/api.txt')).stdout, 'api')
    await a.kill()
    await b.kill()
    assert.equal(await vol.readFile('/a.txt'), 'from-a\n')
  })
})

test('the daemon is still alive', async () => {
  await sleep(0)
  assert.equal(daemon.alive, true, daemon.logTail())
})
