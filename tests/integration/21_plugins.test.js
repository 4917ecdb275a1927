'use strict';
const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const crypto = require('node:crypto');
const h = require('./lib/harness');

const { jwt } = h;

test('the PushEx-style example: JWT connect, private user topics, untracked public topic', async (t) => {
  const example = fs.readFileSync(path.join(h.ROOT, 'examples/pushex.lua'), 'utf8')
    .replace(/listen = .*\n/, 'listen = { host = "127.0.0.1", port = 0 }\n');
  process.env.HERALD_JWT_SECRET = 'jwt-secret';
  process.env.HERALD_API_TOKEN = 'api-token';
  const srv = await h.startHerald(example);
  t.after(() => srv.stop());
  const auth = { 'content-type': 'application/json', authorization: 'Bearer api-token' };
  const exp = Math.floor(Date.now() / 1000) + 60;

  const bad = h.phoenixSocket(srv.port, { params: { token: jwt({ sub: '1', exp }, 'wrong') }, reconnectAfterMs: () => 60000 }, '/push_socket');
  await assert.rejects(h.connect(bad));
  bad.disconnect();

  const socket = h.phoenixSocket(srv.port, { authToken: jwt({ sub: '42', exp }, 'jwt-secret') }, '/push_socket');
  t.after(() => socket.disconnect());
  await h.connect(socket);
  const mine = socket.channel('user:42');
  await h.join(mine);
  await assert.rejects(h.join(socket.channel('user:43')), (e) => e.response.reason === 'unauthorized');
  await assert.rejects(h.join(socket.channel('other')), (e) => e.response.reason === 'unauthorized');
  const pub = socket.channel('public:news');
  await h.join(pub);
  const got = h.nextEvent(mine, 'msg');
  assert.equal((await h.push(srv.port, { channel: 'user:42', event: 'note', data: { x: 1 } }, auth)).status, 200);
  assert.deepEqual(await got, { event: 'note', data: { x: 1 } });
  const topic = await h.request(srv.port, 'GET', '/api/topics/public:nobody', { headers: auth });
  assert.equal(topic.json.listening, true);
  assert.deepEqual((await h.request(srv.port, 'GET', '/api/presence/public:news', { headers: auth })).json, {});
  assert.equal(Object.keys((await h.request(srv.port, 'GET', '/api/presence/user:42', { headers: auth })).json)[0], '42');
  assert.deepEqual(srv.errors(), []);
});

test('an unknown plugin or bad plugin options fail start-up with a clear message', async () => {
  let bad = await h.startHerald('plugins = { nope = {} }\n', {}, { expectFail: true });
  assert.notEqual(bad.result.code, 0);
  assert.match(bad.log, /unknown plugin 'nope'/);
  bad = await h.startHerald('plugins = { jwt = {} }\n', {}, { expectFail: true });
  assert.match(bad.log, /herald\.lua: plugins\.jwt\.secret: expected a non-empty string \(required\), got nil/);
  bad = await h.startHerald('plugins = { rate_limit = { per_secnd = 5 } }\n', {}, { expectFail: true });
  assert.notEqual(bad.result.code, 0);
  assert.match(bad.log, /\[error\] \S*herald\.lua: plugins\.rate_limit: unknown option "per_secnd"/);
  assert.doesNotMatch(bad.log, /listening on/);
});

test('the example policy loads and uses every hook', async (t) => {
  const policy = fs.readFileSync(path.join(h.ROOT, 'examples/policy.lua'), 'utf8');
  const srv = await h.startHerald('scripts = { "policy.lua" }\n', { 'policy.lua': policy });
  t.after(() => srv.stop());
  const mac = crypto.createHmac('sha256', 'dev-key').update('ann').digest('hex');
  const socket = h.phoenixSocket(srv.port, { params: { token: `user:ann:${mac}` } });
  t.after(() => socket.disconnect());
  await h.connect(socket);
  const room = socket.channel('room:1', { device: 'cli' });
  assert.deepEqual(await h.join(room), { welcome: 'ann' });
  const pong = await new Promise((resolve, reject) => room.push('ping', {}).receive('ok', resolve).receive('error', reject));
  assert.equal(pong.pong, true);
  const said = h.nextEvent(room, 'msg');
  room.push('say', { text: 'hello' });
  const m = await said;
  assert.equal(m.event, 'said');
  assert.deepEqual({ from: m.data.from, text: m.data.text }, { from: 'user:ann', text: 'hello' });
  assert.equal(m.data.relayed_at, undefined); // herald.publish skips publish hooks
  const relayed = h.nextEvent(room, 'msg');
  await h.push(srv.port, { channel: 'room:1', event: 'news', data: {} });
  assert.equal(typeof (await relayed).data.relayed_at, 'number'); // the publish hook ran
  await h.push(srv.port, { channel: 'room:1', event: 'internal', data: {} });
  assert.equal((await h.metrics(srv.port))['herald_dropped_total{reason="publish_hook"}'], 1);
  const presence = (await h.request(srv.port, 'GET', '/api/presence/room:1')).json;
  assert.equal(presence['user:ann'].metas[0].device, 'cli');
  await assert.rejects(h.join(socket.channel('admin:x')), (e) => e.response.reason === 'admins only');
});
