// What the kernels show and how they run, as in E2B's code interpreter (issue 12), through the
// official @e2b/code-interpreter JS SDK: the stdout chunks, result texts and env var behaviour
// E2B's own suites (e2b-dev/code-interpreter js/tests) assert. The Python SDK side, with more
// detail, is tests/integration/py/test_interpreter_kernels.py.
import assert from 'node:assert/strict'
import { after, before, describe, test } from 'node:test'

import { Sandbox } from '@e2b/code-interpreter'

import { startDaemon } from './daemon.mjs'

const T = { timeout: 180_000 }
let daemon
let sbx

before(async () => {
  daemon = await startDaemon()
  sbx = await Sandbox.create({ timeoutMs: 600_000, envs: { TEST_ENV_VAR: 'supertest' } })
})

after(async () => {
  if (sbx) await sbx.kill().catch(() => {})
  await daemon?.stop()
})

const stdout = (execution) => execution.logs.stdout

describe('javascript and typescript kernel', () => {
  test("E2B's defaultKernels suite", T, async () => {
    assert.deepEqual(stdout(await sbx.runCode('console.log("Hello World!")', { language: 'js' })),
      ['Hello World!\n'])
    const esm = await sbx.runCode(
      "\n    import { readFileSync } from 'fs'\n    console.log(typeof readFileSync)\n    ",
      { language: 'js' })
    assert.deepEqual(stdout(esm), ['function\n'])
    const tla = await sbx.runCode("\n    await Promise.resolve('Hello World!')\n    ",
      { language: 'js' })
    assert.equal(tla.text, 'Hello World!')
    assert.equal(tla.results[0].isMainResult, true)
    const ts = await sbx.runCode('const message: string = "Hello World!"; console.log(message)',
      { language: 'ts' })
    assert.deepEqual(stdout(ts), ['Hello World!\n'])
  })

  test('the last expression is the main result; undefined shows nothing', T, async () => {
    const ex = await sbx.runCode('1 + 2', { language: 'js' })
    assert.equal(ex.text, '3')
    assert.deepEqual(stdout(ex), [])
    assert.deepEqual((await sbx.runCode('undefined', { language: 'js' })).results, [])
    assert.equal((await sbx.runCode("({ a: 1, b: 'x' })", { language: 'js' })).text,
      "{ a: 1, b: 'x' }")
    const typed = await sbx.runCode("const wrong: number = 'unchecked' as any; wrong",
      { language: 'ts' })
    assert.equal(typed.error, undefined)
    assert.equal(typed.text, 'unchecked')
  })

  test("E2B's cwd suite: JavaScript and TypeScript", T, async () => {
    assert.equal((await sbx.runCode('process.cwd()', { language: 'js' })).text, '/home/user')
    assert.equal((await sbx.runCode('process.cwd()', { language: 'ts' })).text, '/home/user')
  })

  test("E2B's env_vars/js suite", T, async () => {
    assert.equal((await sbx.runCode('process.env.TEST_ENV_VAR', { language: 'javascript' }))
      .results[0]?.text.trim(), 'supertest')
    const over = await sbx.runCode('process.env.TEST_ENV_VAR',
      { language: 'javascript', envs: { TEST_ENV_VAR: 'overwrite' } })
    assert.equal(over.results[0]?.text.trim(), 'overwrite')
    assert.equal((await sbx.runCode('process.env.TEST_ENV_VAR', { language: 'javascript' }))
      .results[0]?.text.trim(), 'supertest')
    const foo = await sbx.runCode('process.env.FOO', { envs: { FOO: 'bar' }, language: 'javascript' })
    assert.equal(foo.results[0]?.text.trim(), 'bar')
    const empty = await sbx.runCode("process.env.FOO || 'default'", { language: 'javascript' })
    assert.equal(empty.results[0]?.text.trim(), 'default')
  })
})

describe('java kernel', () => {
  test('println arrives as its text, then the line end', T, async () => {
    const ex = await sbx.runCode('System.out.println("Hello, World!")', { language: 'java' })
    assert.deepEqual(stdout(ex), ['Hello, World!', '\n'])
  })

  test("E2B's env_vars/java suite: system properties", T, async () => {
    const ex = await sbx.runCode('System.getProperty("TEST_ENV_VAR")', { language: 'java' })
    assert.equal(ex.results[0]?.text.trim(), 'supertest')
    const over = await sbx.runCode('System.getProperty("TEST_ENV_VAR")',
      { language: 'java', envs: { TEST_ENV_VAR: 'overwrite' } })
    assert.equal(over.results[0]?.text.trim(), 'overwrite')
    assert.equal((await sbx.runCode('System.getProperty("TEST_ENV_VAR")', { language: 'java' }))
      .results[0]?.text.trim(), 'supertest')
    const foo = await sbx.runCode('System.getProperty("FOO")', { envs: { FOO: 'bar' }, language: 'java' })
    assert.equal(foo.results[0]?.text.trim(), 'bar')
    const empty = await sbx.runCode('System.getProperty("FOO", "default")', { language: 'java' })
    assert.equal(empty.results[0]?.text.trim(), 'default')
    const cwd = await sbx.runCode('System.getProperty("user.dir")', { language: 'java' })
    assert.equal(cwd.results[0]?.text.trim(), '/home/user')
  })
})

describe('pillow, users and working directories', () => {
  test('image.show() and image.save(path) display a PNG', T, async () => {
    const image = 'import numpy\nfrom PIL import Image\n' +
      'image = Image.fromarray((numpy.random.rand(16, 16, 3) * 255).astype("uint8")).convert("RGBA")\n'
    for (const call of ['image.show()', 'image.save("test.png")']) {
      const ex = await sbx.runCode(`${image}${call}\nprint("done")`)
      assert.equal(ex.error, undefined)
      assert.equal(ex.results.length, 1)
      assert.ok(ex.results[0].png.startsWith('iVBORw0KGgo'))
      assert.deepEqual(stdout(ex), ['done\n'])
      assert.deepEqual(ex.logs.stderr, [])
    }
  })

  test('kernels run as root in /home/user; a context may use /root', T, async () => {
    assert.deepEqual(stdout(await sbx.runCode('whoami; pwd', { language: 'bash' })),
      ['root\n', '/home/user\n'])
    assert.equal((await sbx.commands.run('whoami')).stdout, 'user\n')
    const ctx = await sbx.createCodeContext({ language: 'python', cwd: '/root' })
    const last = (await sbx.listCodeContexts()).at(-1)
    assert.deepEqual([last.id, last.language, last.cwd], [ctx.id, 'python', '/root'])
    assert.equal((await sbx.runCode('import os; os.getcwd()', { context: ctx })).text, '/root')
  })
})
