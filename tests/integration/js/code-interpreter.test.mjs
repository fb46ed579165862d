// runCode and code contexts through the official @e2b/code-interpreter JS SDK.
import assert from 'node:assert/strict'
import { after, before, describe, test } from 'node:test'

import { NotFoundError, Sandbox, TimeoutError } from '@e2b/code-interpreter'

import { startDaemon } from './daemon.mjs'

const T = { timeout: 120_000 }
let daemon
let sbx

before(async () => {
  daemon = await startDaemon()
  sbx = await Sandbox.create({ timeoutMs: 300_000, envs: { GLOBAL_V: 'g' } })
})

after(async () => {
  if (sbx) await sbx.kill().catch(() => {})
  await daemon?.stop()
})

describe('code interpreter', () => {
  test('quickstart, state and execution count', T, async () => {
    await sbx.runCode('x = 1')
    const ex = await sbx.runCode('x += 1; x')
    assert.equal(ex.text, '2')
    assert.equal(ex.executionCount, 2)
    assert.equal(ex.results[0].isMainResult, true)
    assert.deepEqual(ex.results[0].extra, {})
  })

  test('stdout arrives while the code still runs', T, async () => {
    const seen = []
    const start = Date.now()
    const ex = await sbx.runCode(
      "import time\nprint('first', flush=True)\ntime.sleep(2)\nprint('second')",
      { onStdout: (m) => seen.push([Date.now() - start, m.line]) },
    )
    assert.deepEqual(ex.logs.stdout, ['first\n', 'second\n'])
    assert.ok(seen[0][0] < 1500, JSON.stringify(seen))
    assert.ok(seen[1][0] - seen[0][0] > 1000, JSON.stringify(seen))
  })

  test('errors are data', T, async () => {
    const ex = await sbx.runCode('nope')
    assert.equal(ex.error.name, 'NameError')
    assert.equal(ex.error.value, "name 'nope' is not defined")
    assert.equal((await sbx.runCode('1 + 1')).text, '2')
  })

  test('png plot with a chart, extra stays empty', T, async () => {
    const ex = await sbx.runCode(
      "import matplotlib.pyplot as plt\nplt.bar(['a', 'b'], [1, 2])\nplt.title('T')\nplt.show()",
    )
    const r = ex.results[0]
    assert.ok(r.png.startsWith('iVBORw0KGgo'))
    assert.equal(r.chart.type, 'bar')
    assert.equal(r.chart.title, 'T')
    assert.deepEqual(r.chart.elements.map((e) => [e.label, e.value]), [['a', 1], ['b', 2]])
    assert.deepEqual(r.extra, {})
  })

  test('dataframe', T, async () => {
    const ex = await sbx.runCode("import pandas as pd\npd.DataFrame({'a': [1, 2]})")
    assert.ok(ex.results[0].html.includes('<table'))
    assert.deepEqual(ex.results[0].data, { a: [1, 2] })
  })

  test('contexts: create, list, independent state, restart, remove', T, async () => {
    const list = await sbx.listCodeContexts()
    assert.ok(list.some((c) => c.language === 'python'))
    assert.ok(list.some((c) => c.language === 'javascript'))
    const ctx = await sbx.createCodeContext({ cwd: '/tmp' })
    assert.equal(ctx.cwd, '/tmp')
    assert.equal((await sbx.listCodeContexts()).at(-1).id, ctx.id)
    await sbx.runCode("v = 'c'", { context: ctx })
    assert.equal((await sbx.runCode('v', { context: ctx })).text, 'c')
    assert.equal((await sbx.runCode('import os; os.getcwd()', { context: ctx })).text, '/tmp')
    assert.equal((await sbx.runCode('v')).error.name, 'NameError')
    await sbx.restartCodeContext(ctx)
    assert.equal((await sbx.runCode('v', { context: ctx })).error.name, 'NameError')
    await sbx.removeCodeContext(ctx.id)
    await assert.rejects(sbx.runCode('1', { context: ctx }), NotFoundError)
  })

  test('env vars: sandbox-wide, per run, restored', T, async () => {
    const code = "import os; (os.environ.get('GLOBAL_V'), os.environ.get('RUN_V'))"
    assert.equal((await sbx.runCode(code)).text, "('g', None)")
    assert.equal((await sbx.runCode(code, { envs: { RUN_V: 'r' } })).text, "('g', 'r')")
    assert.equal((await sbx.runCode(code)).text, "('g', None)")
  })

  test('javascript and typescript', T, async () => {
    const js = await sbx.runCode('console.log(20 + 22)', { language: 'js' })
    assert.deepEqual(js.logs.stdout, ['42\n'])
    const ts = await sbx.runCode('const n: number = 3; console.log(n * 2)', { language: 'ts' })
    assert.deepEqual(ts.logs.stdout, ['6\n'])
  })

  test('timeout interrupts the kernel; the next run is prompt', T, async () => {
    await assert.rejects(sbx.runCode('import time; time.sleep(300)', { timeoutMs: 3000 }),
      TimeoutError)
    const start = Date.now()
    assert.equal((await sbx.runCode('1 + 1', { timeoutMs: 10_000 })).text, '2')
    assert.ok(Date.now() - start < 10_000)
  })
})
