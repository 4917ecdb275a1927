'use strict';
const test = require('node:test');
const assert = require('node:assert/strict');
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const h = require('./lib/harness');

function check(text) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'herald-check-'));
  const f = path.join(dir, 'conf.lua');
  fs.writeFileSync(f, text);
  const r = spawnSync(h.BIN, ['check', f], { encoding: 'utf8' });
  return { file: f, code: r.status, out: r.stdout + r.stderr };
}

test('herald check, version, and start-up failures', async () => {
  let r = check('listen = { port = 4000 }\nlimits = { max_connections = 10 }\n');
  assert.equal(r.code, 0, r.out);
  r = check('listen = { port = 4000 \nlimits = {}\n');
  assert.equal(r.code, 1);
  assert.ok(r.out.includes(`${r.file}:`), r.out);
  assert.match(r.out, /:\d+:/);
  r = check('listen = { port = "x" }\n');
  assert.equal(r.code, 1);
  assert.match(r.out, /listen\.port: expected an integer/);
  r = check('limitz = {}\n');
  assert.equal(r.code, 1);
  assert.match(r.out, /unknown setting 'limitz'/);
  r = check('while true do end\n');
  assert.equal(r.code, 1);
  assert.match(r.out, /instructions/);
  r = check('os.execute("true")\n');
  assert.equal(r.code, 1);
  r = check('scripts = { "missing.lua" }\n');
  assert.equal(r.code, 1);
  assert.match(r.out, /missing\.lua: cannot open/);

  const v = spawnSync(h.BIN, ['version'], { encoding: 'utf8' });
  assert.equal(v.status, 0);
  assert.match(v.stdout, /^herald \d+\.\d+\.\d+/);

  const bad = await h.startHerald('listen = { host = "127.0.0.1", port = "nope" }\n', {}, { expectFail: true });
  assert.notEqual(bad.result.code, 0);
  assert.match(bad.log, /herald\.lua: listen\.port/);
});
