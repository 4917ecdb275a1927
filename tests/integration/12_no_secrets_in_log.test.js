'use strict';
// No token or secret in any log line (issue 13): herald at log level debug
// with an API token, a jwt plugin secret and Redis passwords, driven with
// good and bad client tokens (connect param and Phoenix subprotocol),
// wrong bearer tokens on /api and /admin, a reload, a malformed request
// carrying a token, and a drain; then none of those strings may appear in
// its log, in either log format (log.format text and json). The same for
// `herald check` and a failed start-up whose config has the secrets in the
// wrong shape (errors are printed and logged).
const test = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const fs = require('node:fs');
const { spawnSync } = require('node:child_process');
const h = require('./lib/harness');
const c = require('./lib/cluster');

const rnd = (what) => `${what}-${crypto.randomBytes(9).toString('hex')}`;
const { jwt } = h;
const b64url = (b) => Buffer.from(b).toString('base64url');

// Fails naming each secret that occurs in text (and where).
function assertNoSecrets(text, secrets, where) {
  for (const [name, value] of Object.entries(secrets)) {
    const i = text.indexOf(value);
    assert.equal(i, -1, `${where} shows ${name} (${value}):\n${text.slice(Math.max(0, i - 200), i + 200)}`);
  }
}

// Resolves true when phoenix.js opens the socket, false when it is refused.
async function opens(port, opts) {
  const s = h.phoenixSocket(port, { reconnectAfterMs: () => 60000, ...opts });
  try {
    await h.connect(s);
    return s;
  } catch {
    s.disconnect();
    return null;
  }
}

// Both log formats: json escapes what it writes, and a secret escaped is
// still a secret (these are plain ASCII, so they would show as they are).
for (const format of ['text', 'json']) test(`secrets never reach the log, at debug level (${format})`, { timeout: 60000 }, async (t) => {
  const haveRedis = fs.existsSync(process.env.REDIS_SERVER || '/usr/bin/redis-server');
  const s = {
    apiToken: rnd('apitoken'), jwtSecret: rnd('jwtsecret'), wrongSecret: rnd('wrongsecret'),
    wrongBearer: rnd('wrongbearer'), garbage: rnd('garbagetoken'), redisPassword: rnd('redispw'),
    wrongRedisPassword: rnd('wrongredispw'),
  };
  const exp = Math.floor(Date.now() / 1000) + 60;
  const good = jwt({ sub: 'u1', exp }, s.jwtSecret);
  const forged = jwt({ sub: 'u1', exp }, s.wrongSecret);
  const expired = jwt({ sub: 'u1', exp: 1000 }, s.jwtSecret);
  // A client's token is a secret too: the whole of each, and the signatures.
  const tokens = { good, forged, expired, goodSignature: good.split('.')[2], forgedSignature: forged.split('.')[2] };

  let cluster = '';
  let redis = null;
  if (haveRedis) {
    redis = await c.startRedis(t, { args: ['--requirepass', s.redisPassword] });
    // Two shards on one Redis: one with the right password, one with a wrong one.
    cluster = `cluster = { redis = { "redis://:${s.redisPassword}@127.0.0.1:${redis.port}",
                                     "redis://:${s.wrongRedisPassword}@127.0.0.1:${redis.port}/1" } }\n`;
  }
  const srv = await h.serve(t, `
log = { level = "debug", format = "${format}" }
api = { token = "${s.apiToken}" }
plugins = { jwt = { secret = "${s.jwtSecret}" }, rate_limit = { joins_per_second = 2 } }
${cluster}`);

  // Clients: a good token as the connect param and as the subprotocol; a
  // forged, an expired and a garbage one, both ways.
  const a = await opens(srv.port, { params: { token: good } });
  assert.ok(a, 'the good token as a param connects');
  t.after(() => a.disconnect());
  const b = await opens(srv.port, { authToken: good });
  assert.ok(b, 'the good token as the subprotocol connects');
  t.after(() => b.disconnect());
  await h.join(a.channel('room:1'));
  for (const bad of [{ params: { token: forged } }, { params: { token: expired } }, { params: { token: s.garbage } },
    { authToken: forged }, { authToken: s.garbage }, { params: { token: `${s.garbage}.${s.garbage}.${s.garbage}` } }]) {
    assert.equal(await opens(srv.port, bad), null, `refused: ${JSON.stringify(bad)}`);
  }
  // Joins over the plugin's limit are refused (logged at debug, if at all).
  for (let i = 0; i < 3; i++) await h.join(a.channel(`room:x${i}`)).catch(() => {});

  // The API and the admin endpoints with a wrong bearer token, a token in
  // other shapes, and the right one.
  const wrong = { authorization: `Bearer ${s.wrongBearer}`, 'content-type': 'application/json' };
  assert.equal((await h.request(srv.port, 'POST', '/admin/reload', { headers: wrong })).status, 403);
  assert.equal((await h.request(srv.port, 'GET', '/admin/status', { headers: wrong })).status, 403);
  assert.equal((await h.push(srv.port, { channel: 'room:1', event: 'e', data: {} }, wrong)).status, 403);
  assert.equal((await h.request(srv.port, 'POST', '/admin/drain',
    { headers: { authorization: `Basic ${Buffer.from(`admin:${s.wrongBearer}`).toString('base64')}` } })).status, 403);
  assert.equal((await h.request(srv.port, 'GET', `/api/topics/room:1?token=${s.wrongBearer}`)).status, 403);
  const right = { authorization: `Bearer ${s.apiToken}`, 'content-type': 'application/json' };
  const got = h.nextEvent(a.channel('room:1'), 'msg');
  assert.equal((await h.push(srv.port, { channel: 'room:1', event: 'e', data: { n: 1 } }, right)).status, 200);
  await got;
  const from = srv.log.length;
  assert.equal((await h.request(srv.port, 'POST', '/admin/reload', { headers: right })).status, 200);
  await srv.waitLog(/scripts reloaded/, from);
  // A request the parser refuses, with tokens in its target and headers.
  await h.rawExchange(srv.port, `GET /socket/websocket?token=${good}&x=\x01 HTTP/1.1\r\n` +
    `Authorization: Bearer ${s.wrongBearer}\r\n\r\n`);
  await h.rawExchange(srv.port, `GET /socket/websocket?vsn=2.0.0&token=${s.garbage} HTTP/1.1\r\nHost: x\r\n` +
    `Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: short\r\n` +
    `Sec-WebSocket-Protocol: phoenix, base64url.bearer.phx.${b64url(s.garbage)}\r\n\r\n`);

  if (redis) {
    await srv.waitLog(/cluster: redis:\/\/127\.0\.0\.1:\d+ up/);
    await srv.waitLog(/cluster: redis:\/\/127\.0\.0\.1:\d+\/1 refused the connection set-up/);
  }
  a.disconnect();
  b.disconnect();
  await srv.stop(); // the drain and the shutdown log too
  if (format === 'text') assert.match(srv.log, /\[debug\]/, 'the server logged at debug level');
  else {
    const lines = srv.log.trimEnd().split('\n');
    const bad = lines.filter((l) => !h.jsonLogLine(l));
    assert.deepEqual(bad, [], 'every line is a JSON object with ts, level, msg');
    assert.ok(lines.some((l) => h.jsonLogLine(l).level === 'debug'), 'the server logged at debug level');
  }
  assertNoSecrets(srv.log, { ...s, ...tokens, garbageBase64: b64url(s.garbage) }, 'the log');
});

test('herald check and a failed start-up never show a secret', { timeout: 30000 }, async () => {
  const s = { apiToken: rnd('apitoken'), jwtSecret: rnd('jwtsecret'), number: String(100000 + crypto.randomInt(1e6)),
    redisPassword: rnd('redispw'), misplaced: rnd('misplaced') };
  // Secrets in the wrong shape: a token with a NUL byte, a numeric jwt
  // secret, a secret under an option the plugin does not have, a Redis URL
  // with a password and a bad port.
  const config = `
api = { token = "${s.apiToken}\\0" }
plugins = { jwt = { secret = ${s.number} }, rate_limit = { secret = "${s.misplaced}" } }
cluster = { redis = "redis://:${s.redisPassword}@127.0.0.1:70000" }
`;
  const bad = await h.startHerald(config, {}, { expectFail: true });
  const checked = spawnSync(h.BIN, ['check', bad.file], { encoding: 'utf8', timeout: 20000 });
  fs.rmSync(bad.dir, { recursive: true, force: true });
  assert.notEqual(bad.result.code, 0);
  assert.equal(checked.status, 1);
  for (const [out, where] of [[bad.log, 'the start-up log'], [checked.stdout + checked.stderr, 'herald check']]) {
    assert.match(out, /api\.token: expected a string without NUL bytes, or nil, got a string with a NUL byte/, where);
    assert.match(out, /plugins\.jwt\.secret: expected a non-empty string, got a number/, where);
    assert.match(out, /cluster\.redis: port out of range/, where);
    assert.match(out, /plugins\.rate_limit: unknown option "secret"/, where);
    assertNoSecrets(out, s, where);
  }
});
