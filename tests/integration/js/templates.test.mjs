// Templates built with the official JS Template SDK, as E2B's own template tests do
// (packages/js-sdk/tests/template: build.test.ts, tags.test.ts, exists.test.ts), against a
// real daemon. Build steps have no network here: nothing installs packages.
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { after, before, describe, test } from 'node:test'

import { Sandbox, Template } from 'e2b'

import { startDaemon } from './daemon.mjs'

const T = { timeout: 120_000 }
let daemon
let ctx

const name = (p = 'e2b-test') => `${p}-${randomBytes(5).toString('hex')}`
const build = (t, n, opts = {}) =>
  Template.build(t, n, { cpuCount: 1, memoryMB: 1024, ...opts })

before(async () => {
  daemon = await startDaemon()
  // The official test's context: a folder with a file and relative, absolute and dangling
  // symlinks.
  ctx = fs.mkdtempSync(path.join(os.tmpdir(), 'sbx-tpl-'))
  fs.mkdirSync(path.join(ctx, 'folder'))
  fs.writeFileSync(path.join(ctx, 'folder', 'test.txt'), 'This is a test file.')
  fs.symlinkSync('test.txt', path.join(ctx, 'folder', 'symlink.txt'))
  fs.symlinkSync('/etc/hostname', path.join(ctx, 'folder', 'absolute.txt'))
  fs.symlinkSync('nowhere.txt', path.join(ctx, 'folder', 'dangling.txt'))
})

after(async () => {
  fs.rmSync(ctx, { recursive: true, force: true })
  await daemon?.stop()
})

describe('templates', () => {
  test('build template (COPY with symlinks, RUN, WORKDIR) and a sandbox of it', T, async () => {
    const n = name()
    const logs = []
    const template = Template({ fileContextPath: ctx })
      .fromBaseImage()
      .copy('folder/*', 'folder', { forceUpload: true })
      .runCmd('cat folder/test.txt')
      .setWorkdir('/app')
    const info = await build(template, n, { onBuildLogs: (e) => logs.push(e.message) })
    assert.equal(info.name, n)
    assert.deepEqual(info.tags, ['default'])
    assert.ok(logs.some((l) => l.includes('This is a test file.')), logs.join('\n'))
    const sbx = await Sandbox.create(n, { timeoutMs: 60_000 })
    try {
      const r = await sbx.commands.run(
        'cat /home/user/folder/test.txt; echo; readlink /home/user/folder/absolute.txt; ' +
          'readlink /home/user/folder/dangling.txt; test -d /app && echo app')
      assert.equal(r.stdout, 'This is a test file.\n/etc/hostname\nnowhere.txt\napp\n')
    } finally {
      await sbx.kill()
    }
  })

  test('from base template, skipCache', T, async () => {
    const template = Template().fromTemplate('base').skipCache().runCmd('echo from-base')
    const info = await build(template, name())
    assert.ok(info.buildId)
  })

  test('a failing step names its step and command', T, async () => {
    const template = Template().fromBaseImage().runCmd('true').runCmd('exit 7')
    await assert.rejects(build(template, name()), (e) => {
      assert.match(String(e.message), /failed to run command 'exit 7': exit status 7/)
      return true
    })
  })

  test('exists', T, async () => {
    assert.equal(await Template.exists('base'), true)
    assert.equal(await Template.exists(`nonexistent-${randomBytes(8).toString('hex')}`), false)
  })

  test('tags: build with tags, assign, reject bad tags, remove', T, async () => {
    const n = name()
    const info = await build(Template().fromBaseImage(), `${n}:v1`, { tags: ['stable'] })
    assert.deepEqual([...info.tags].sort(), ['stable', 'v1'])
    const assigned = await Template.assignTags(`${n}:v1`, ['production', 'latest'])
    assert.equal(assigned.buildId, info.buildId)
    await assert.rejects(Template.assignTags(`${n}:v1`, [':invalid-tag']))
    await assert.rejects(Template.assignTags(`${n}:v1`, 'name:'))
    await Template.removeTags(n, ['production'])
    assert.equal(await Template.exists(`${n}:latest`), true)
    assert.equal(await Template.exists(`${n}:production`), false)
  })
})
