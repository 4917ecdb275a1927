'use strict';
// The status page (GET /admin) and its feed, the topic herald:status: the
// page in headless Chromium signs in with the API token, shows live
// figures that follow a client's join and a push, looks up a presence,
// reloads the scripts, then shows a broken script's error; a screenshot is
// kept. Without the browser: who may join herald:status, and what a
// publish to it can do.
const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const h = require('./lib/harness');
const { SKIP, openPage } = require('./lib/browser');

const TOKEN = 'status-page-token-3f9a';
// A join hook that would crash (refusing the join) if the token reached it.
const POLICY = `return {
  join = function(socket, topic, payload)
    if payload.token ~= nil then error("the token reached the join hook") end
    return true
  end,
}
`;

// Where the screenshot goes: beside the binary under test (the build dir),
// else a temp dir; the path is printed either way.
function artifactDir() {
  const dir = process.env.HERALD_BIN
    ? path.join(path.dirname(process.env.HERALD_BIN), 'test-artifacts')
    : fs.mkdtempSync(path.join(os.tmpdir(), 'herald-artifacts-'));
  fs.mkdirSync(dir, { recursive: true });
  return dir;
}

const text = (tab, sel) => tab.textContent(sel);
const num = async (tab, sel) => Number(await text(tab, sel));

test('the status page signs in, shows live figures, reloads, and shows a broken script', { timeout: 120000, skip: SKIP }, async (t) => {
  const srv = await h.serve(t, `api = { token = "${TOKEN}" }\nscripts = { "policy.lua" }\n`,
    { 'policy.lua': POLICY }, { allowErrors: true });
  const urls = [];
  const { tab, pageErrors } = await openPage(t, `${srv.url}/admin`);
  tab.on('request', (r) => urls.push(r.url()));
  tab.on('websocket', (ws) => urls.push(ws.url()));

  // With a token configured the page asks for it first.
  await tab.waitForSelector('#token', { state: 'visible', timeout: 15000 });
  await tab.fill('#token', 'not the token');
  await tab.click('#login-go');
  await tab.waitForFunction(() => document.getElementById('login-error').textContent === 'the token was refused');
  await tab.fill('#token', TOKEN);
  await tab.click('#login-go');
  await tab.waitForSelector('#main', { state: 'visible', timeout: 15000 });
  await tab.waitForFunction(() => document.getElementById('live').textContent === 'live', null, { timeout: 15000 });
  await tab.waitForFunction(() => document.getElementById('joins-total').textContent !== '–', null, { timeout: 15000 });
  assert.equal(await text(tab, '#state'), 'ready');
  const conns = await num(tab, '#connections');
  const pubs = await num(tab, '#publishes-total');
  assert.equal(conns, 1, 'the page itself');

  // A client joins a topic and a push is made: the pushed figures follow.
  const socket = h.phoenixSocket(srv.port, { params: { user: 'ada' } });
  t.after(() => socket.disconnect());
  await h.connect(socket);
  const ch = socket.channel('room:watched', {});
  await h.join(ch);
  await tab.waitForFunction((n) => Number(document.getElementById('connections').textContent) > n, conns, { timeout: 15000 });
  await tab.waitForFunction(() => [...document.querySelectorAll('#top-topics td')].some((td) => td.textContent === 'room:watched'),
    null, { timeout: 15000 });
  const auth = { 'content-type': 'application/json', authorization: `Bearer ${TOKEN}` };
  const r = await h.push(srv.port, { channel: 'room:watched', event: 'hello', data: { n: 1 } }, auth);
  assert.equal(r.status, 200);
  await tab.waitForFunction((n) => Number(document.getElementById('publishes-total').textContent) > n, pubs, { timeout: 15000 });

  // The presence of a topic typed in (GET /api/presence/<t>).
  await tab.fill('#presence-topic', 'room:watched');
  await tab.click('#presence-go');
  await tab.waitForSelector('#presence-count', { timeout: 15000 });
  assert.equal(await text(tab, '#presence-count'), '1 present on room:watched');

  // Reload: success, then a broken script's error (the old scripts stay).
  await tab.click('#reload');
  await tab.waitForFunction(() => document.getElementById('action-result').textContent.startsWith('Reloaded'), null, { timeout: 15000 });
  assert.equal(await text(tab, '#action-result'), 'Reloaded: generation 2');
  fs.writeFileSync(path.join(srv.dir, 'policy.lua'), 'return {\n  join = function(socket\n');
  await tab.click('#reload');
  await tab.waitForFunction(() => document.getElementById('action-result').textContent.startsWith('Reload failed'), null, { timeout: 15000 });
  assert.match(await text(tab, '#action-result'), /policy\.lua:\d+/);
  await tab.waitForFunction(() => /policy\.lua:\d+/.test(document.getElementById('script-error').textContent), null, { timeout: 15000 });
  assert.equal(await text(tab, '#generation'), '2');

  const shot = path.join(artifactDir(), 'status-page.png');
  await tab.screenshot({ path: shot, fullPage: true });
  t.diagnostic(`screenshot: ${shot}`);
  console.log(`# status page screenshot: ${shot}`);

  // The token went in headers and the join payload only.
  assert.ok(urls.length > 0);
  for (const u of urls) assert.ok(!u.includes(TOKEN), `token in a URL: ${u}`);
  assert.deepEqual(pageErrors, []);
  const errors = srv.errors().filter((l) => !/reload failed, the previous scripts stay in force/.test(l));
  assert.deepEqual(errors, []);
});

test('herald:status: joined with the API token only; a publish to it cannot pass for the feed', { timeout: 60000 }, async (t) => {
  const srv = await h.serve(t, `api = { token = "${TOKEN}" }\nscripts = { "policy.lua" }\n`, { 'policy.lua': POLICY });
  const socket = h.phoenixSocket(srv.port);
  t.after(() => socket.disconnect());
  await h.connect(socket);

  for (const params of [{}, { token: 'wrong' }, { token: TOKEN.slice(0, -1) }]) {
    const ch = socket.channel('herald:status', params);
    const err = await h.join(ch).then(() => null, (e) => e);
    assert.ok(err, `joined with ${JSON.stringify(params)}`);
    assert.deepEqual(err.response, { reason: 'unauthorized' });
    ch.leave();
  }
  // A topic name spelled with an escape is the same topic.
  const raw = await h.wsClient(srv.port);
  t.after(() => raw.ws.close());
  raw.ws.send('["1","1","herald\\u003astatus","phx_join",{}]');
  const refusal = JSON.parse(await raw.next());
  assert.deepEqual(refusal, ['1', '1', 'herald:status', 'phx_reply', { status: 'error', response: { reason: 'unauthorized' } }]);

  const ch = socket.channel('herald:status', { token: TOKEN });
  const first = h.nextEvent(ch, 'status');
  await h.join(ch); // (the join hook would refuse it if it saw the token)
  const s = await first;
  assert.equal(s.state, 'ready');
  assert.equal(s.connections, 2);
  assert.ok(s.top_topics.some((x) => x.topic === 'herald:status' && x.subscribers === 1));
  assert.equal(typeof s.joins_per_s, 'number');
  assert.equal(s.scripts.generation, 1);
  assert.equal(s.websocket.port, srv.port);

  // A publish to the topic (the API needs the token too) comes as "msg",
  // which the page does not read: it cannot fake the figures.
  const msg = h.nextEvent(ch, 'msg');
  const r = await h.push(srv.port, { channel: 'herald:status', event: 'status', data: { connections: 999 } },
    { 'content-type': 'application/json', authorization: `Bearer ${TOKEN}` });
  assert.equal(r.status, 200);
  assert.deepEqual(await msg, { event: 'status', data: { connections: 999 } });
  const next = await h.nextEvent(ch, 'status');
  assert.equal(next.connections, 2);

  const m = await h.metrics(srv.port, { authorization: `Bearer ${TOKEN}` });
  assert.equal(h.metricSum(m, 'herald_joins_refused_total'), 4);
});

test('herald:status without api.token: loopback clients join without a token', { timeout: 60000 }, async (t) => {
  const srv = await h.serve(t, '');
  const socket = h.phoenixSocket(srv.port);
  t.after(() => socket.disconnect());
  await h.connect(socket);
  const ch = socket.channel('herald:status', {});
  const first = h.nextEvent(ch, 'status');
  await h.join(ch);
  assert.equal((await first).topics, 1);
  // The page and phoenix.js come with the binary.
  const page = await h.request(srv.port, 'GET', '/admin');
  assert.equal(page.status, 200);
  assert.match(page.headers['content-type'], /^text\/html/);
  assert.match(page.body, /<script src="\/phoenix.js"><\/script>/);
  const js = await h.request(srv.port, 'GET', '/phoenix.js');
  assert.equal(js.status, 200);
  assert.match(js.headers['content-type'], /^application\/javascript/);
  assert.match(js.headers['cache-control'], /max-age=/);
  assert.match(js.body, /var Phoenix = /);
  // With a config file, / stays 404.
  assert.equal((await h.request(srv.port, 'GET', '/')).status, 404);
});

test('the admin listener answers the status page\'s questions too: /api/presence and /api/topics', async (t) => {
  const srv = await h.serve(t, 'admin = { host = "127.0.0.1", port = 0 }\ntopics = { { match = "p:*", presence = true } }\n');
  const ADMIN = /admin listening on http:\/\/127\.0\.0\.1:(\d+)/;
  await srv.waitLog(ADMIN);
  const adminPort = Number(ADMIN.exec(srv.log)[1]);
  const socket = h.phoenixSocket(srv.port, { params: {} });
  t.after(() => socket.disconnect());
  await h.connect(socket);
  await h.join(socket.channel('p:1', {}));
  const pres = await h.request(adminPort, 'GET', '/api/presence/p%3A1');
  assert.equal(pres.status, 200, pres.body);
  assert.equal(Object.keys(JSON.parse(pres.body)).length, 1);
  const top = await h.request(adminPort, 'GET', '/api/topics/p%3A1');
  assert.equal(top.status, 200, top.body);
  // The push stays the public port's.
  assert.equal((await h.request(adminPort, 'POST', '/api/push', { body: '{}' })).status, 404);
});
