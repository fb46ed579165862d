// files.* through the official JS SDK, and presigned URLs fetched with plain fetch.
import assert from 'node:assert/strict'
import { describe, test } from 'node:test'

import { FileType, FilesystemEventType, InvalidArgumentError, NotFoundError } from 'e2b'

import { shareSandbox, waitFor } from './daemon.mjs'

const T = { timeout: 60_000 }
const HOME = '/home/user'
let sbx
// The SDK adds `metadata: undefined` to write results; the server sends exactly these keys.
const npt = (i) => ({ name: i.name, path: i.path, type: i.type })

shareSandbox({}, (_daemon, s) => {
  sbx = s
})

describe('files', () => {
  test('write and read text, bytes, blob, stream, empty', T, async () => {
    const info = await sbx.files.write('js/hello.txt', 'héllo')
    assert.deepEqual(npt(info), { name: 'hello.txt', path: `${HOME}/js/hello.txt`, type: 'file' })
    assert.equal(await sbx.files.read('js/hello.txt'), 'héllo')
    const bytes = await sbx.files.read('js/hello.txt', { format: 'bytes' })
    assert.deepEqual(Buffer.from(bytes), Buffer.from('héllo'))
    const blob = await sbx.files.read('js/hello.txt', { format: 'blob' })
    assert.equal(await blob.text(), 'héllo')
    const big = Buffer.alloc(2 * 1024 * 1024 + 3, 7)
    await sbx.files.write('js/big.bin', big)
    const stream = await sbx.files.read('js/big.bin', { format: 'stream' })
    const chunks = []
    for await (const c of stream) chunks.push(Buffer.from(c))
    assert.ok(Buffer.concat(chunks).equals(big))
    await sbx.files.write('js/empty', '')
    assert.equal(await sbx.files.read('js/empty'), '')
    assert.equal((await sbx.files.read('js/empty', { format: 'bytes' })).length, 0)
  })

  test('write many files (nested, absolute) and gzip both ways', T, async () => {
    const infos = await sbx.files.write([
      { path: 'js/many/a.txt', data: 'A' },
      { path: '/tmp/js-abs/b.txt', data: new Blob(['B']) },
    ])
    assert.deepEqual(infos.map(npt), [
      { name: 'a.txt', path: `${HOME}/js/many/a.txt`, type: 'file' },
      { name: 'b.txt', path: '/tmp/js-abs/b.txt', type: 'file' },
    ])
    assert.deepEqual(await sbx.files.write([]), [])
    const data = 'zip me '.repeat(5000)
    await sbx.files.write('js/gz.txt', data, { gzip: true })
    assert.equal(await sbx.files.read('js/gz.txt', { gzip: true }), data)
    assert.equal(await sbx.files.read('js/gz.txt'), data)
  })

  test('list with depth, stat, exists, makeDir, rename, remove', T, async () => {
    for (const p of ['ls/file1.txt', 'ls/subdir1/subdir1_1/f', 'ls/subdir1/subdir1_2/f', 'ls/subdir2/f'])
      await sbx.files.write(`js/${p}`, 'x')
    const rel = (es) => es.map((e) => e.path.slice(`${HOME}/js/ls/`.length))
    assert.deepEqual(rel(await sbx.files.list('js/ls', { depth: 2 })), [
      'file1.txt', 'subdir1', 'subdir1/subdir1_1', 'subdir1/subdir1_2', 'subdir2', 'subdir2/f',
    ])
    const st = await sbx.files.getInfo('js/ls/file1.txt')
    assert.equal(st.type, FileType.FILE)
    assert.equal(st.mode, 0o644)
    assert.equal(st.permissions, '-rw-r--r--')
    assert.equal(st.owner, 'user')
    assert.equal(st.size, 1)
    assert.ok(st.modifiedTime instanceof Date)
    assert.equal(await sbx.files.exists('js/ls/nope'), false)
    assert.equal(await sbx.files.makeDir('js/mk/a'), true)
    assert.equal(await sbx.files.makeDir('js/mk/a'), false)
    const moved = await sbx.files.rename('js/ls/file1.txt', 'js/mk/moved.txt')
    assert.equal(moved.path, `${HOME}/js/mk/moved.txt`)
    await assert.rejects(sbx.files.getInfo('js/ls/file1.txt'), NotFoundError)
    await assert.rejects(sbx.files.read('js/ls/file1.txt'), NotFoundError)
    await sbx.files.remove('js/mk')
    assert.equal(await sbx.files.exists('js/mk'), false)
    await sbx.files.remove('js/mk')
  })

  test('metadata round trip', T, async () => {
    const w = await sbx.files.write('js/m.txt', 'x', { metadata: { Team: 'core' } })
    assert.deepEqual(w.metadata, { team: 'core' })
    assert.deepEqual((await sbx.files.getInfo('js/m.txt')).metadata, { team: 'core' })
    await sbx.files.write('js/m.txt', 'y')
    assert.equal((await sbx.files.getInfo('js/m.txt')).metadata, undefined)
  })

  test('watch: plain, recursive with a directory created later, entries', T, async () => {
    await sbx.files.makeDir('js/w/nested')
    await sbx.files.write('js/w/f.txt', '0')
    const events = []
    const h = await sbx.files.watchDir('js/w', (e) => events.push(e), {
      recursive: true,
      includeEntry: true,
    })
    await sbx.files.write('js/w/f.txt', '1')
    await sbx.files.makeDir('js/w/later')
    await waitFor(async () => events.some((e) => e.type === FilesystemEventType.CREATE && e.name === 'later'), 5000, 'create event')
    await sbx.files.write('js/w/later/g.txt', '2')
    await sbx.files.write('js/w/nested/h.txt', '3')
    const has = (type, name) => events.some((e) => e.type === type && e.name === name)
    await waitFor(async () => has(FilesystemEventType.WRITE, 'f.txt') &&
      has(FilesystemEventType.WRITE, 'later/g.txt') && has(FilesystemEventType.WRITE, 'nested/h.txt'),
    5000, 'write events')
    const w = events.find((e) => e.type === FilesystemEventType.WRITE && e.name === 'f.txt')
    assert.equal(w.entry?.path, `${HOME}/js/w/f.txt`)
    await h.stop()
    await assert.rejects(sbx.files.watchDir('js/no_such_dir', () => {}), NotFoundError)
  })

  test('writes make missing parents as root and hand them to the user, in every upload form', T, async () => {
    // As on E2B (envd writes as root), the default user writes below /, which it cannot
    // write itself: new directories are 0755 and new files 0644, all the user's.
    const events = []
    const h = await sbx.files.watchDir('/', (e) => events.push([e.type, e.name]))
    const forms = {
      'sbx-js-multipart': (p) => sbx.files.write(p, 'x'),
      'sbx-js-many': (p) => sbx.files.write([{ path: p, data: 'x' }]),
      'sbx-js-octet': (p) => sbx.files.write(p, 'x', { useOctetStream: true }),
      'sbx-js-gzip': (p) => sbx.files.write(p, 'x', { gzip: true }),
      'sbx-js-signed': async (p) => {
        const form = new FormData()
        form.append('file', new Blob(['x']))
        const res = await fetch(await sbx.uploadUrl(p), { method: 'POST', body: form })
        assert.equal(res.status, 200, await res.text())
      },
    }
    for (const [top, write] of Object.entries(forms)) {
      await write(`/${top}/a/x.txt`)
      assert.equal(await sbx.files.read(`/${top}/a/x.txt`), 'x')
      for (const [p, mode] of [[`/${top}`, 0o755], [`/${top}/a`, 0o755], [`/${top}/a/x.txt`, 0o644]]) {
        const st = await sbx.files.getInfo(p)
        assert.deepEqual([st.owner, st.group, st.mode], ['user', 'user', mode], p)
      }
    }
    assert.equal(await sbx.files.makeDir('/sbx-js-mk/a/b'), true)
    const st = await sbx.files.getInfo('/sbx-js-mk/a/b')
    assert.deepEqual([st.owner, st.mode, st.permissions], ['user', 0o755, 'drwxr-xr-x'])
    const want = [...Object.keys(forms), 'sbx-js-mk'].flatMap((t) => [['create', t], ['chmod', t]])
    await waitFor(async () => events.length >= want.length, 5000, 'events of /')
    assert.deepEqual(events, want)
    await h.stop()
  })

  test('watchDir streams the events E2B sends for new and overwritten files', T, async () => {
    await sbx.files.makeDir('js/ev')
    const events = []
    const h = await sbx.files.watchDir('js/ev', (e) => events.push([e.type, e.name]))
    // The kernel folds a repeat of the last unread event: whether an overwrite's truncation
    // and its write show as one WRITE or two depends on when the watcher reads.
    const fold = (es) => es.filter((e, i) => i === 0 || es[i - 1].join() !== e.join())
    // Each step ends with a fence, a directory made after it: the stream is in order, so
    // the step's events are exactly those before the fence's.
    let fences = 0
    const step = async (op, want, folded = false) => {
      const start = events.length
      await op()
      const fence = `fence${++fences}`
      await sbx.files.makeDir(`js/ev/${fence}`)
      await waitFor(async () => events.some((e) => e.join() === `chmod,${fence}`), 5000, fence)
      const got = events.slice(start, events.findIndex((e, i) => i >= start && e[1] === fence))
      assert.deepEqual(folded ? fold(got) : got, want)
    }
    await step(() => sbx.files.write('js/ev/new.txt', '1'),
      [['create', 'new.txt'], ['chmod', 'new.txt'], ['write', 'new.txt']])
    await step(() => sbx.files.write('js/ev/new.txt', '22'), [['chmod', 'new.txt'], ['write', 'new.txt']], true)
    await step(() => sbx.files.write('js/ev/oct.txt', 'o', { useOctetStream: true }),
      [['create', 'oct.txt'], ['chmod', 'oct.txt'], ['write', 'oct.txt']])
    await step(() => sbx.files.makeDir('js/ev/d/e'), [['create', 'd'], ['chmod', 'd']])
    await h.stop()
  })

  test('a recursive watch reports what new directories hold, as envd does', T, async () => {
    // envd's fsnotify walks a directory new to a recursive watch, reports each entry as
    // created and watches its subdirectories; one moved within the tree is not walked again.
    await sbx.files.makeDir('js/rw')
    const events = []
    const h = await sbx.files.watchDir('js/rw', (e) => events.push([e.type, e.name]), { recursive: true })
    const until = async (n) => waitFor(async () => events.length >= n, 5000, `${n} events`)
    await sbx.files.makeDir('js/rw/a/b')
    await until(3)
    await sbx.files.write('js/rw/a/b/c.txt', 'x')
    await until(6)
    const r = await sbx.commands.run('mkdir -p ~/js/stage/t/x && echo 1 > ~/js/stage/t/x/f && mv ~/js/stage/t ~/js/rw/t')
    assert.equal(r.exitCode, 0)
    await until(9)
    await sbx.commands.run('mv ~/js/rw/t ~/js/rw/u && echo 2 > ~/js/rw/u/x/g')
    await until(13)
    assert.deepEqual(events, [
      ['create', 'a'], ['create', 'a/b'], ['chmod', 'a'],
      ['create', 'a/b/c.txt'], ['chmod', 'a/b/c.txt'], ['write', 'a/b/c.txt'],
      ['create', 't'], ['create', 't/x'], ['create', 't/x/f'],
      ['rename', 't'], ['create', 'u'], ['create', 'u/x/g'], ['write', 'u/x/g'],
    ])
    await h.stop()
  })

  test('hostile paths', T, async () => {
    const passwd = (await sbx.commands.run('cat /etc/passwd')).stdout
    assert.equal(await sbx.files.read('../../../../etc/passwd'), passwd)
    // The agent acts as root, but never through a /proc magic link and never reads /proc.
    await assert.rejects(sbx.files.read('/proc/self/root/etc/passwd', { user: 'root' }),
      InvalidArgumentError)
    await assert.rejects(sbx.files.read('/proc/self/environ'), /on \/proc/)
    await assert.rejects(sbx.files.list('/proc/self/fd'), /on \/proc/)
    await assert.rejects(sbx.files.write('x'.repeat(300), 'x'), InvalidArgumentError)
    await assert.rejects(sbx.files.getInfo('a\u0000b'), InvalidArgumentError)
    await assert.rejects(sbx.files.getInfo('~root/x'), InvalidArgumentError)
  })

  test('every operation is root\'s for the default user, as on E2B', T, async () => {
    // envd does every file operation as root: the default user reads, lists, stats, watches,
    // renames and removes below root's 0700 /root, which its own commands cannot.
    const r = await sbx.commands.run("sudo sh -c 'mkdir -m 700 /root/js && printf s > /root/js/f.txt && chmod 600 /root/js/f.txt'")
    assert.equal(r.exitCode, 0)
    await assert.rejects(sbx.commands.run('cat /root/js/f.txt'))
    assert.equal(await sbx.files.read('/root/js/f.txt'), 's')
    assert.equal(await sbx.files.read('/root/js/f.txt', { gzip: true }), 's')
    assert.equal(Buffer.from(await sbx.files.read('/root/js/f.txt', { format: 'bytes' })).toString(), 's')
    assert.equal(await (await fetch(await sbx.downloadUrl('/root/js/f.txt'))).text(), 's')
    const st = await sbx.files.getInfo('/root/js/f.txt')
    assert.deepEqual([st.owner, st.mode], ['root', 0o600])
    assert.deepEqual((await sbx.files.list('/root/js')).map((e) => e.name), ['f.txt'])
    const events = []
    const h = await sbx.files.watchDir('/root/js', (e) => events.push([e.type, e.name]))
    await sbx.files.write('/root/js/mine.txt', 'm')
    assert.equal(await sbx.files.read('/root/js/mine.txt'), 'm')
    assert.equal((await sbx.files.rename('/root/js/f.txt', '/root/js/g.txt')).path, '/root/js/g.txt')
    await sbx.files.remove('/root/js/g.txt')
    await waitFor(async () => events.some((e) => e.join() === 'remove,g.txt'), 5000, 'remove event')
    assert.deepEqual(events, [['create', 'mine.txt'], ['chmod', 'mine.txt'], ['write', 'mine.txt'],
      ['rename', 'f.txt'], ['create', 'g.txt'], ['remove', 'g.txt']])
    await h.stop()
    assert.equal(await sbx.files.exists('/root/js/g.txt'), false)
  })

  test('presigned URLs with plain fetch (no E2B headers)', T, async () => {
    await sbx.files.write('js/signed.txt', 'signed content')
    const url = await sbx.downloadUrl('js/signed.txt')
    let res = await fetch(url)
    assert.equal(res.status, 200)
    assert.equal(await res.text(), 'signed content')
    await sbx.files.write('/root/js-root.txt', 'root content', { user: 'root' })
    res = await fetch(await sbx.downloadUrl('/root/js-root.txt', { user: 'root' }))
    assert.equal(await res.text(), 'root content')
    const form = new FormData()
    form.append('file', new Blob(['uploaded']))
    res = await fetch(await sbx.uploadUrl('js/up.txt'), { method: 'POST', body: form })
    assert.equal(res.status, 200)
    assert.deepEqual(await res.json(), [{ name: 'up.txt', path: `${HOME}/js/up.txt`, type: 'file' }])
    res = await fetch(await sbx.downloadUrl('js/signed.txt', { useSignatureExpiration: -10 }))
    assert.equal(res.status, 401)
    assert.deepEqual(await res.json(), { code: 401, message: 'signature is already expired' })
  })
})
