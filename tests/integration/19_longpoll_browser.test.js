'use strict';
// phoenix.js's LongPoll transport in headless Chromium (XMLHttpRequest).
// The first page is of herald's own origin (written into the document of
// herald's /healthz) and uses new Phoenix.Socket("/socket", ...) with
// herald's /phoenix.js: it joins, gets pushes, sees a presence list, has a
// push answered by a message hook. The others come from a web server of the
// test's own (another origin, as an application's page would be) and talk
// to herald cross-origin, every POST after a CORS preflight: one survives a
// drain by reconnecting to the next process on the same port; one with
// longPollFallbackMs against a mount without WebSocket falls back to
// LongPoll; and phoenix.js 1.2.1 (the last release on the V1 serializer,
// which cannot run its LongPoll in Node) joins over LongPoll beside a
// current WebSocket client, heartbeats, gets pushes and presence, and leaves.
const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const net = require('node:net');
const h = require('./lib/harness');
const { SKIP, webServer, openPage } = require('./lib/browser');

const APP = `
return {
  authenticate = function(req) return { id = req.params.user } end,
  message = function(socket, topic, event, payload)
    if event == "ping" then return { pong = payload.n, id = socket.id } end
  end,
}`;
const APP_CONFIG = `
topics = { { match = "room:*", presence = true } }
presence = { batch_ms = 20 }
scripts = { "app.lua" }
`;

// The page: window.lp holds what it saw; window.ping(n) pushes "ping".
// url: the socket's endpoint; opts: the Socket options as JS source.
// src: where phoenix.js comes from (herald's own /phoenix.js).
function page(port, { url = `http://127.0.0.1:${port}/socket`, src = `http://127.0.0.1:${port}/phoenix.js`,
  opts = '{ transport: Phoenix.LongPoll }', topic = 'room:browser' } = {}) {
  return `<!doctype html><meta charset="utf-8"><title>herald longpoll test</title>
<p id="state">connecting</p>
<script src="${src}"></script>
<script>
  window.lp = { state: "connecting", joins: 0, msgs: [], presence: [], closes: [], transport: null };
  const socket = new Phoenix.Socket(${JSON.stringify(url)}, Object.assign(
    { params: { user: "page" }, reconnectAfterMs: () => 100, rejoinAfterMs: () => 100 }, ${opts}));
  window.socket = socket;
  socket.onOpen(() => { lp.transport = socket.transport === Phoenix.LongPoll ? "LongPoll" : "WebSocket"; });
  socket.onClose((e) => lp.closes.push(e.code));
  socket.connect();
  const ch = socket.channel(${JSON.stringify(topic)}, {});
  const presence = new Phoenix.Presence(ch);
  presence.onSync(() => { lp.presence = presence.list((k) => k).sort(); });
  ch.on("msg", ({ event, data }) => lp.msgs.push(event + ": " + JSON.stringify(data)));
  ch.join()
    .receive("ok", () => { lp.joins++; lp.state = "joined"; document.getElementById("state").textContent = "joined"; })
    .receive("error", (r) => { lp.state = "error " + JSON.stringify(r); });
  window.ping = (n) => new Promise((resolve, reject) => ch.push("ping", { n })
    .receive("ok", resolve).receive("error", (r) => reject(new Error(JSON.stringify(r))))
    .receive("timeout", () => reject(new Error("ping timed out"))));
</script>`;
}

const lpState = (tab) => tab.evaluate(() => window.lp);

async function joined(tab, n = 1) {
  await tab.waitForFunction((k) => window.lp && (window.lp.joins >= k || window.lp.state.startsWith('error')), n, { timeout: 15000 });
  const st = await lpState(tab);
  assert.equal(st.state, 'joined', JSON.stringify(st));
  return st;
}

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => { const { port } = s.address(); s.close(() => resolve(port)); });
  });
}

test('a page with phoenix.js LongPoll in Chromium: join, pushes, presence, a hook reply', { timeout: 60000, skip: SKIP }, async (t) => {
  const srv = await h.serve(t, APP_CONFIG, { 'app.lua': APP });
  // Same-origin with herald, as a page of herald's own origin would be: the tab
  // opens herald's /healthz and the page is written into that document, so
  // "/socket" and "/phoenix.js" are herald's (herald serves no pages of ours).
  const { tab, pageErrors } = await openPage(t, `${srv.url}/healthz`);
  await tab.setContent(page(srv.port, { url: '/socket', src: '/phoenix.js' }));
  assert.equal(await tab.evaluate(() => window.socket.endPointURL()), `ws://127.0.0.1:${srv.port}/socket/websocket?user=page&vsn=2.0.0`);
  const st = await joined(tab);
  assert.equal(st.transport, 'LongPoll');
  let m = await h.metrics(srv.port);
  assert.equal(m.herald_longpoll_sessions, 1);
  assert.equal((await h.request(srv.port, 'GET', '/api/topics/room:browser')).json.subscribers, 1);

  // A WebSocket client beside it: both in the page's presence list.
  const ws = h.phoenixSocket(srv.port, { params: { user: 'alice' }, reconnectAfterMs: () => 600000, rejoinAfterMs: () => 600000 });
  t.after(() => ws.disconnect());
  await h.connect(ws);
  await h.join(ws.channel('room:browser'));
  await tab.waitForFunction(() => window.lp.presence.join(',') === 'alice,page', null, { timeout: 15000 });

  for (const text of ['from the API', 'ünïcödé ✓']) {
    const r = await h.push(srv.port, { channel: 'room:browser', event: 'hello', data: { text } });
    assert.equal(r.status, 200);
  }
  await tab.waitForFunction(() => window.lp.msgs.length >= 2, null, { timeout: 15000 });
  assert.deepEqual((await lpState(tab)).msgs, ['hello: {"text":"from the API"}', 'hello: {"text":"ünïcödé ✓"}']);

  // A push from the page, answered by the hook.
  assert.deepEqual(await tab.evaluate(() => window.ping(7)), { pong: 7, id: 'page' });
  m = await h.metrics(srv.port);
  assert.ok(m.herald_longpoll_posts_total >= 2, `posts_total ${m.herald_longpoll_posts_total}`);
  assert.ok(m.herald_longpoll_polls_total >= 1, `polls_total ${m.herald_longpoll_polls_total}`);
  assert.deepEqual((await lpState(tab)).closes, []);
  assert.deepEqual(pageErrors, []);
  ws.disconnect();
});

test('the page survives a drain: it reconnects by itself to the next process on the same port', { timeout: 60000, skip: SKIP }, async (t) => {
  const port = await freePort();
  const config = `listen = { host = "127.0.0.1", port = ${port} }
drain = { timeout_ms = 20000, disconnect_rate = 1000, http_idle_ms = 50, flush_ms = 2000 }
` + APP_CONFIG;
  const a = await h.startHerald(config, { 'app.lua': APP });
  t.after(() => a.stop());
  const url = await webServer(t, { '/': page(port) });
  const { tab, pageErrors } = await openPage(t, `${url}/`);
  await joined(tab);
  await h.push(port, { channel: 'room:browser', event: 'n', data: 1 });
  await tab.waitForFunction(() => window.lp.msgs.length >= 1, null, { timeout: 15000 });

  a.proc.kill('SIGTERM');
  await tab.waitForFunction(() => window.lp.closes.length >= 1, null, { timeout: 20000 });
  const exit = await h.within(a.exited, 20000, 'A to exit');
  assert.equal(exit.code, 0, a.log);
  assert.deepEqual(a.errors(), []);
  assert.equal((await lpState(tab)).closes[0], 3410, 'the drain ended the session: phoenix.js closes with 3410 (session gone)');

  const b = await h.serve(t, config, { 'app.lua': APP });
  await joined(tab, 2);
  assert.equal((await h.metrics(b.port)).herald_longpoll_sessions, 1);
  await h.push(port, { channel: 'room:browser', event: 'n', data: 2 });
  await tab.waitForFunction(() => window.lp.msgs.length >= 2, null, { timeout: 15000 });
  assert.deepEqual((await lpState(tab)).msgs, ['n: 1', 'n: 2']);
  assert.equal((await lpState(tab)).transport, 'LongPoll');
  assert.deepEqual(pageErrors, []);
});

test('longPollFallbackMs: against a mount without WebSocket the page falls back to LongPoll', { timeout: 60000, skip: SKIP }, async (t) => {
  const srv = await h.serve(t, 'mounts = { { "/socket", websocket = false } }\n' + APP_CONFIG, { 'app.lua': APP });
  const url = await webServer(t, {
    '/': page(srv.port, { url: `ws://127.0.0.1:${srv.port}/socket`, opts: '{ longPollFallbackMs: 500 }' }),
  });
  const { tab, pageErrors } = await openPage(t, `${url}/`);
  const st = await joined(tab);
  assert.equal(st.transport, 'LongPoll');
  assert.equal((await h.metrics(srv.port)).herald_longpoll_sessions, 1);
  await h.push(srv.port, { channel: 'room:browser', event: 'hello', data: { text: 'via LongPoll' } });
  await tab.waitForFunction(() => window.lp.msgs.length >= 1, null, { timeout: 15000 });
  assert.deepEqual((await lpState(tab)).msgs, ['hello: {"text":"via LongPoll"}']);
  assert.deepEqual(pageErrors, []);
});

// phoenix.js 1.2.1's page: V1 over LongPoll (vsn=1.0.0, JSON objects both
// ways; its Presence is syncState/syncDiff). Over LongPoll it sends no
// heartbeats of its own (skipHeartbeat): window.beat() sends one as its
// WebSocket transport would, and the page counts the replies.
const PHOENIX_V1_JS = path.join(h.ROOT, 'tests', 'node_modules', 'phoenix-v1', 'priv', 'static', 'phoenix.js');
function v1Page(port) {
  return `<!doctype html><meta charset="utf-8"><title>herald V1 longpoll test</title>
<script src="/phoenix-v1.js"></script>
<script>
  window.lp = { state: "connecting", joins: 0, msgs: [], presence: [], closes: [], heartbeats: 0 };
  const socket = new Phoenix.Socket("http://127.0.0.1:${port}/socket", { transport: Phoenix.LongPoll,
    params: { user: "v1page" }, reconnectAfterMs: () => 100 });
  window.socket = socket;
  socket.onClose((e) => lp.closes.push(e && e.code));
  socket.onMessage((m) => { if (m.topic === "phoenix" && m.event === "phx_reply" && m.payload.status === "ok") lp.heartbeats++; });
  socket.connect();
  const ch = socket.channel("room:v1", {});
  let state = {};
  const list = () => { lp.presence = Object.keys(state).sort(); };
  ch.on("presence_state", (s) => { state = Phoenix.Presence.syncState(state, s); list(); });
  ch.on("presence_diff", (d) => { state = Phoenix.Presence.syncDiff(state, d); list(); });
  ch.on("msg", ({ event, data }) => lp.msgs.push(event + ": " + JSON.stringify(data)));
  ch.join()
    .receive("ok", () => { lp.joins++; lp.state = "joined"; })
    .receive("error", (r) => { lp.state = "error " + JSON.stringify(r); });
  window.ping = (n) => new Promise((resolve, reject) => ch.push("ping", { n })
    .receive("ok", resolve).receive("error", (r) => reject(new Error(JSON.stringify(r))))
    .receive("timeout", () => reject(new Error("ping timed out"))));
  window.leave = () => new Promise((resolve) => ch.leave().receive("ok", () => resolve("left")));
  window.beat = () => socket.sendHeartbeat();
</script>`;
}

test('phoenix.js 1.2.1 (V1) LongPoll in Chromium beside a current WebSocket client: join, heartbeat, pushes, presence, a hook reply, leave', { timeout: 60000, skip: SKIP }, async (t) => {
  const srv = await h.serve(t, APP_CONFIG, { 'app.lua': APP });
  const url = await webServer(t, { '/': v1Page(srv.port), '/phoenix-v1.js': fs.readFileSync(PHOENIX_V1_JS, 'utf8') });
  const { tab, pageErrors } = await openPage(t, `${url}/`);
  assert.equal(await tab.evaluate(() => window.socket.endPointURL()), `http://127.0.0.1:${srv.port}/socket/websocket?user=v1page&vsn=1.0.0`); // (its LongPoll: /socket/longpoll)
  await joined(tab);
  assert.equal((await h.metrics(srv.port)).herald_longpoll_sessions, 1);

  const ws = h.phoenixSocket(srv.port, { params: { user: 'alice' }, reconnectAfterMs: () => 600000, rejoinAfterMs: () => 600000 });
  t.after(() => ws.disconnect());
  await h.connect(ws);
  const wch = ws.channel('room:v1');
  const wsMsgs = new h.Inbox();
  wch.on('msg', (p) => wsMsgs.push(p));
  await h.join(wch);
  await tab.waitForFunction(() => window.lp.presence.join(',') === 'alice,v1page', null, { timeout: 15000 });

  // Heartbeats are answered.
  await tab.evaluate(() => { window.beat(); window.beat(); });
  await tab.waitForFunction(() => window.lp.heartbeats >= 2, null, { timeout: 15000 });

  // One push reaches both, each in its own serializer.
  assert.equal((await h.push(srv.port, { channel: 'room:v1', event: 'hello', data: { text: 'ünï ✓' } })).status, 200);
  assert.deepEqual(await wsMsgs.next(), { event: 'hello', data: { text: 'ünï ✓' } });
  await tab.waitForFunction(() => window.lp.msgs.length >= 1, null, { timeout: 15000 });
  assert.deepEqual((await lpState(tab)).msgs, ['hello: {"text":"ünï ✓"}']);

  assert.deepEqual(await tab.evaluate(() => window.ping(5)), { pong: 5, id: 'v1page' });

  // Leave: the topic has the WebSocket client only; a push reaches it and not the page.
  assert.equal(await tab.evaluate(() => window.leave()), 'left');
  assert.equal((await h.request(srv.port, 'GET', '/api/topics/room:v1')).json.subscribers, 1);
  await h.push(srv.port, { channel: 'room:v1', event: 'after', data: 2 });
  assert.deepEqual(await wsMsgs.next(), { event: 'after', data: 2 });
  // A heartbeat sent after that push is answered after it would have come.
  await tab.evaluate(() => window.beat());
  await tab.waitForFunction(() => window.lp.heartbeats >= 3, null, { timeout: 15000 });
  const st = await lpState(tab);
  assert.deepEqual(st.msgs, ['hello: {"text":"ünï ✓"}']);
  assert.deepEqual(st.closes, []);
  assert.deepEqual(pageErrors, []);
  assert.equal(h.metricSum(await h.metrics(srv.port), 'herald_longpoll_tokens_rejected_total'), 0);
  ws.disconnect();
});
