'use strict';
// The command line: `herald check FILE`, `herald version`, and start-up with
// a bad config.
const test = require('node:test');
const assert = require('node:assert/strict');
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const h = require('./lib/harness');

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'herald-check-'));
test.after(() => fs.rmSync(dir, { recursive: true, force: true }));
let n = 0;
function write(text, name = `conf${++n}.lua`) {
  const f = path.join(dir, name);
  fs.writeFileSync(f, text);
  return f;
}
function run(args) {
  const r = spawnSync(h.BIN, args, { encoding: 'utf8', timeout: 20000 });
  return { code: r.status, signal: r.signal, out: (r.stdout || '') + (r.stderr || '') };
}
function check(text) { const file = write(text); return { file, ...run(['check', file]) }; }

const GOOD = `
listen   = { host = "127.0.0.1", port = 0 }
api      = { token = "secret" }
mounts   = { "/push_socket", "/socket" }
limits   = { max_connections = 100000, max_message_bytes = 65536, send_queue_bytes = 1048576,
             max_header_bytes = 16384, max_url_bytes = 8192, max_body_bytes = 1048576, max_topics_per_socket = 100 }
timeouts = { ws_idle_ms = 45000, http_idle_ms = 60000, ws_close_ms = 5000 }
`;

test('herald check accepts valid configs', { timeout: 30000 }, () => {
  for (const text of [GOOD, '', '-- only a comment\n', 'listen = { port = 4000 }\nlimits = { max_connections = 10 }\n',
    'local p = 4000 + 1\nlisten = { host = "127.0.0.1", port = p }\n']) {
    const r = check(text);
    assert.equal(r.code, 0, `${JSON.stringify(text)}: ${r.out}`);
  }
});

test('herald check: a syntax error names file:line', { timeout: 30000 }, () => {
  const r = check('listen = { host = "127.0.0.1", port = 0 }\n\nlimits = { max_connections = 10\ntimeouts = {}\n');
  assert.equal(r.code, 1, r.out);
  assert.ok(r.out.includes(r.file), `the message names the file: ${r.out}`);
  assert.match(r.out, new RegExp(`${r.file.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}:[34]\\b`), `file:line: ${r.out}`);
});

test('herald check: wrong types and bad values name the key', { timeout: 30000 }, () => {
  const cases = [
    ['listen = { port = "x" }\n', /listen\.port/],
    ['listen = { host = 5 }\n', /listen\.host/],
    ['listen = "127.0.0.1:4000"\n', /listen/],
    ['limits = { max_connections = "many" }\n', /limits\.max_connections/],
    ['limits = { max_message_bytes = {} }\n', /limits\.max_message_bytes/],
    ['timeouts = { ws_idle_ms = true }\n', /timeouts\.ws_idle_ms/],
    ['api = { token = 42 }\n', /api\.token/],
    ['mounts = "/socket"\n', /mounts/],
  ];
  for (const [text, re] of cases) {
    const r = check(text);
    assert.equal(r.code, 1, `${text}: exit ${r.code}: ${r.out}`);
    assert.match(r.out, re, text);
    assert.ok(r.out.includes(r.file), `the message names the file: ${r.out}`);
  }
});

test('herald check: a runtime error in the config and a missing file', { timeout: 30000 }, () => {
  let r = check('listen = { port = 4000 }\nerror("boom")\n');
  assert.equal(r.code, 1, r.out);
  assert.match(r.out, /boom/);
  assert.ok(r.out.includes(r.file), r.out);
  const missing = path.join(dir, 'does-not-exist.lua');
  r = run(['check', missing]);
  assert.equal(r.code, 1, r.out);
  assert.ok(r.out.includes(missing), r.out);
});

test('herald check reports every error, one line each, and plugin options', { timeout: 30000 }, () => {
  const r = check('listen = { port = "x" }\nlimits = { max_conections = 5 }\n' +
    'plugins = { rate_limit = { per_secnd = 5 }, jwt = { secret = "s", leeway_s = "30" } }\n');
  assert.equal(r.code, 1, r.out);
  const lines = r.out.trimEnd().split('\n');
  assert.deepEqual(lines, [
    `${r.file}: listen.port: expected an integer from 0 to 65535, got "x"`,
    `${r.file}: unknown setting 'limits.max_conections'`,
    `${r.file}: plugins.jwt.leeway_s: expected a number >= 0, got "30"`,
    `${r.file}: plugins.rate_limit: unknown option "per_secnd" (rate_limit takes joins_per_second, messages_per_second)`,
  ]);
  const ok = check('plugins = { rate_limit = { joins_per_second = 5 }, big_topics = { patterns = { "public:*" } } }\n');
  assert.equal(ok.code, 0, ok.out);
  assert.match(ok.out, /ok \(0 script\(s\), 2 plugin\(s\)\)/);
});

test('start-up with several errors logs each on its own log line', { timeout: 30000 }, async () => {
  const bad = await h.startHerald('limits = { max_conections = 5 }\nlog = { level = "loud" }\n' +
    'plugins = { big_topics = { patterns = {} } }\n', {}, { expectFail: true });
  assert.notEqual(bad.result.code, 0);
  const errors = bad.errors();
  assert.equal(errors.length, 3, bad.log);
  assert.match(errors[0], /herald\.lua: unknown setting 'limits\.max_conections'$/);
  assert.match(errors[1], /herald\.lua: log\.level: expected one of/);
  assert.match(errors[2], /herald\.lua: plugins\.big_topics\.patterns: expected a non-empty list/);
  assert.deepEqual(h.badLogLines(bad.log), []);
  fs.rmSync(bad.dir, { recursive: true, force: true });
});

test('herald version prints a version', { timeout: 30000 }, () => {
  const v = run(['version']);
  assert.equal(v.code, 0, v.out);
  assert.match(v.out, /\b\d+\.\d+\.\d+\b/);
});

test('start-up with a bad config exits non-zero and names the file', { timeout: 60000 }, async () => {
  for (const [text, re] of [
    ['listen = { host = "127.0.0.1", port = "nope" }\n', /listen\.port/],
    ['listen = { host = "127.0.0.1", port = 0 \n', /herald\.lua:\d+/],
  ]) {
    const bad = await h.startHerald(text, {}, { expectFail: true });
    assert.notEqual(bad.result.code, 0, `exit ${JSON.stringify(bad.result)}: ${bad.log}`);
    assert.equal(bad.result.signal, null, `killed by a signal: ${bad.log}`);
    assert.ok(bad.log.includes(bad.file), `the message names the file: ${bad.log}`);
    assert.match(bad.log, re);
    assert.doesNotMatch(bad.log, /listening on/);
    fs.rmSync(bad.dir, { recursive: true, force: true });
  }
  // A config file that does not exist.
  const missing = path.join(dir, 'nowhere.lua');
  const r = await h.startHerald('', {}, { expectFail: true, args: ['-c', missing] });
  assert.notEqual(r.result.code, 0);
  assert.ok(r.log.includes(missing), r.log);
  fs.rmSync(r.dir, { recursive: true, force: true });
});

test('a good config starts and serves', { timeout: 30000 }, async (t) => {
  const srv = await h.serve(t, GOOD);
  assert.equal((await h.request(srv.port, 'GET', '/readyz')).status, 200);
});
