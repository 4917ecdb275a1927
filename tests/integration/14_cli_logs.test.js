'use strict';
// The client commands (herald publish / status / reload / drain) against a
// real node: outputs, exit statuses, the token sent from HERALD_API_TOKEN
// and never printed; usage errors (exit 2) and a refused connection (exit
// 1). Then log.format = "json": every line one JSON object, the conn id in
// its own field, control characters and bytes that are not UTF-8 escaped;
// and the start-up line naming every mount.
const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const net = require('node:net');
const path = require('node:path');
const { execFile } = require('node:child_process');
const h = require('./lib/harness');

const TOKEN = 'cli-token-5f1e0c2d9b';

// Runs `herald args...` (never through a shell); resolves { code, stdout,
// stderr }. env adds to (or, with undefined, removes from) this process's.
function cli(args, env = {}) {
  const e = { ...process.env };
  delete e.HERALD_URL;
  delete e.HERALD_API_TOKEN;
  for (const [k, v] of Object.entries(env)) if (v === undefined) delete e[k]; else e[k] = v;
  return new Promise((resolve) => {
    execFile(h.BIN, args, { env: e, timeout: 20000 }, (err, stdout, stderr) => {
      resolve({ code: err ? (typeof err.code === 'number' ? err.code : -1) : 0, stdout, stderr });
    });
  });
}

// Fails if any output of a run shows the token.
function noToken(r) {
  assert.equal(`${r.stdout}${r.stderr}`.indexOf(TOKEN), -1, 'the token is never printed');
}

const SCRIPT_OK = 'local M = {}\nfunction M.publish(msg) return msg end\nreturn M\n';
const SCRIPT_BROKEN = 'local M = {}\nfunction M.publish(msg) return msg\nreturn M\n'; // no end

test('publish, status, reload and drain against a running node', { timeout: 60000 }, async (t) => {
  const srv = await h.serve(t, `api = { token = "${TOKEN}" }\nscripts = { "hooks.lua" }\n`,
    { 'hooks.lua': SCRIPT_OK }, { allowErrors: true }); // the failed reload logs an error
  const env = { HERALD_API_TOKEN: TOKEN };
  const url = ['--url', srv.url];

  const s = h.phoenixSocket(srv.port);
  await h.connect(s);
  t.after(() => s.disconnect());
  const ch = s.channel('room:1');
  await h.join(ch);

  // publish: the subscriber gets it; the node's answer is printed, indented.
  const got = h.nextEvent(ch, 'msg');
  let r = await cli(['publish', 'room:1', 'hello', '{"text":"hi","n":[1,2]}', ...url], env);
  assert.equal(r.code, 0, r.stderr);
  assert.deepEqual(JSON.parse(r.stdout), { channel: ['room:1'], data: { text: 'hi', n: [1, 2] }, event: 'hello' });
  assert.match(r.stdout, /^\{\n {2}"channel": \[/);
  assert.equal(r.stderr, '');
  assert.deepEqual(await got, { data: { text: 'hi', n: [1, 2] }, event: 'hello' });
  noToken(r);
  // Any JSON value as data, after -- when it starts with '-'.
  r = await cli(['publish', '--url', srv.url, 'room:1', 'n', '--', '-1.5'], env);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(JSON.parse(r.stdout).data, -1.5);

  // status, with the URL from HERALD_URL.
  r = await cli(['status'], { ...env, HERALD_URL: srv.url });
  assert.equal(r.code, 0, r.stderr);
  const st = JSON.parse(r.stdout);
  assert.equal(st.state, 'ready');
  assert.equal(st.connections, 1);
  assert.equal(st.scripts.generation, 1);
  noToken(r);

  // The token: missing, or wrong: 403, exit 1, saying so.
  r = await cli(['status', ...url]);
  assert.equal(r.code, 1);
  assert.equal(r.stdout, '');
  assert.match(r.stderr, /answered 403: Access forbidden \(HERALD_API_TOKEN is not set\)/);
  r = await cli(['publish', 'room:1', 'e', '1', ...url], { HERALD_API_TOKEN: 'wrong-token' });
  assert.equal(r.code, 1);
  assert.match(r.stderr, /answered 403: Access forbidden \(is HERALD_API_TOKEN the node's api.token\?\)/);
  assert.doesNotMatch(r.stderr, /wrong-token/);

  // reload: the new generation; a script that does not compile fails the
  // reload (exit 1) with its error, and the old scripts stay.
  r = await cli(['reload', ...url], env);
  assert.equal(r.code, 0, r.stderr);
  assert.deepEqual(JSON.parse(r.stdout), { status: 'ok', generation: 2 });
  fs.writeFileSync(path.join(srv.dir, 'hooks.lua'), SCRIPT_BROKEN);
  r = await cli(['reload', ...url], env);
  assert.equal(r.code, 1);
  assert.equal(r.stdout, '');
  assert.match(r.stderr, /^herald reload: the reload failed: http:\/\/127\.0\.0\.1:\d+ answered 422: .*hooks\.lua:\d+:/);
  noToken(r);
  r = await cli(['status', ...url], env);
  assert.equal(JSON.parse(r.stdout).scripts.generation, 2);

  // drain: accepted; the node then exits 0 on its own.
  r = await cli(['drain', ...url], env);
  assert.equal(r.code, 0, r.stderr);
  assert.deepEqual(JSON.parse(r.stdout), { status: 'draining' });
  assert.deepEqual(await h.within(srv.exited, 20000, 'herald to exit after the drain'), { code: 0, signal: null });
  assert.deepEqual(srv.errors().length, 1, 'the failed reload is the one error line');
  assert.equal(srv.log.indexOf(TOKEN), -1, 'the token is not in the log');
});

test('help, usage errors and a refused connection', { timeout: 30000 }, async () => {
  let r = await cli(['--help']);
  assert.equal(r.code, 0);
  for (const cmd of ['publish TOPIC EVENT JSON', 'status', 'reload', 'drain']) assert.match(r.stdout, new RegExp(`herald ${cmd} `));
  for (const cmd of ['publish', 'status', 'reload', 'drain']) {
    r = await cli([cmd, '--help']);
    assert.equal(r.code, 0);
    assert.match(r.stdout, new RegExp(`^usage: herald ${cmd}`));
    assert.match(r.stdout, /--url URL/);
    assert.equal(r.stderr, '');
  }
  // Usage errors: exit 2, nothing on stdout; the usage on stderr after a
  // wrong command, option or count of arguments, one line for a bad value.
  for (const [args, why, usage] of [
    [['frobnicate'], /unexpected argument 'frobnicate'/, true],
    [['status', '--verbose'], /herald status: unknown option '--verbose'/, true],
    [['status', 'extra'], /herald status: unexpected argument 'extra'/, true],
    [['publish', 'room:1', 'e'], /herald publish: expected TOPIC EVENT JSON/, true],
    [['status', '--url'], /--url needs a value/, true],
    [['status', '--timeout', '0'], /--timeout takes seconds/, true],
    [['publish', 'room:1', 'e', '{"a":'], /^herald publish: JSON is not valid JSON: .*\n$/, false],
    [['status', '--url', 'ftp://x'], /^herald status: --url: the URL must start with http:\/\/\n$/, false],
    [['status', '--url', `http://user:${TOKEN}@127.0.0.1:1`], /^herald status: --url: credentials in the URL are not supported/, false],
  ]) {
    r = await cli(args);
    assert.equal(r.code, 2, args.join(' '));
    assert.match(r.stderr, why);
    if (usage) assert.match(r.stderr, /usage: herald/);
    assert.equal(r.stdout, '');
    noToken(r);
  }
  // Nothing listening: a clear message, exit 1.
  const probe = net.createServer();
  await new Promise((resolve) => probe.listen(0, '127.0.0.1', resolve));
  const port = probe.address().port;
  await new Promise((resolve) => probe.close(resolve));
  r = await cli(['status', '--url', `http://127.0.0.1:${port}`], { HERALD_API_TOKEN: TOKEN });
  assert.equal(r.code, 1);
  assert.equal(r.stdout, '');
  assert.equal(r.stderr, `herald status: cannot connect to http://127.0.0.1:${port}: Connection refused (is herald running there?)\n`);
});

test('log.format = "json": one object a line, conn ids, escapes; every mount listed', { timeout: 30000 }, async (t) => {
  // A publish hook that logs control characters, a quote, a backslash and
  // bytes that are not UTF-8 (Lua's decimal escapes).
  const hook = 'local M = {}\nfunction M.publish(msg)\n' +
    '  herald.log("info", "odd:\\1\\9\\10\\13\\"\\\\ \\255\\254 end")\n  return msg\nend\nreturn M\n';
  const srv = await h.serve(t, 'log = { level = "debug", format = "json" }\n' +
    'mounts = { "/socket", "/live", "/a/b" }\nscripts = { "log.lua" }\n', { 'log.lua': hook });
  const lines = () => srv.log.trimEnd().split('\n').map((l) => {
    const o = h.jsonLogLine(l);
    assert.ok(o, `not a JSON log line: ${l}`);
    assert.deepEqual(Object.keys(o).slice(0, 3), ['ts', 'level', 'msg']);
    return o;
  });
  const listening = lines().find((o) => o.msg.startsWith('listening on'));
  assert.match(listening.msg, /WebSocket at \/socket\/websocket, \/live\/websocket, \/a\/b\/websocket; LongPoll at \/socket\/longpoll, \/live\/longpoll, \/a\/b\/longpoll; API at \/api\/push/);

  // A request the parser refuses logs at debug with its connection's id.
  let from = srv.log.length;
  await h.rawExchange(srv.port, 'GET /x HTTP/1.1\r\nHost: \x01\r\n\r\n');
  await srv.waitLog(/"conn":\d+\}/, from);
  const refused = lines().find((o) => o.conn !== undefined);
  assert.equal(refused.level, 'debug');
  assert.match(refused.msg, /^HTTP 400: bad request/);
  assert.ok(Number.isInteger(refused.conn) && refused.conn > 0);

  from = srv.log.length;
  const r = await cli(['publish', 'room:1', 'e', '{}', '--url', srv.url]);
  assert.equal(r.code, 0, r.stderr);
  await srv.waitLog(/odd:/, from);
  const odd = lines().find((o) => o.msg.includes('odd:'));
  assert.match(odd.msg, /^\[lua\] .*log\.lua:3: odd:\u0001\t\n\r"\\ \ufffd\ufffd end$/);
  await srv.stop();
  lines(); // the drain and the shutdown too
});
