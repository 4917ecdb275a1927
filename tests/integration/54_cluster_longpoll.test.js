'use strict';
// LongPoll across the cluster: a session lives on the node that opened it
// and its token names that node, so a poll or a POST that reaches another
// node (a balancer without sticky sessions) is forwarded to it through
// Redis and answered as that node would have, with no new session:
//   - on the wire: open on A, join and poll through B, a push published on
//     B reaches the poll held through B; counted on both sides;
//   - a forged token naming A, through B: A refuses it (410, counted on A);
//     a token naming a node that is not there: 410 once the wait is over
//     (herald_longpoll_forward_timeouts_total);
//   - a client that drops a poll held through B: A is told (counted), and
//     what is pushed meanwhile waits for the next poll;
//   - B drains while it holds a poll for A's session: the poll is answered
//     204 with the token, and the session goes on (a poll through A gets
//     what was pushed meanwhile);
//   - phoenix.js's LongPoll through a round-robin proxy in front of both
//     nodes: join, pushes published on either node, hook replies, every
//     request alternating between the nodes, one session in all.
// A real redis-server, started by the test on a free port.
const test = require('node:test');
const assert = require('node:assert/strict');
const http = require('node:http');
const h = require('./lib/harness');
const c = require('./lib/cluster');
const { LongPoll } = require('phoenix');

const LP = '/socket/longpoll?vsn=2.0.0';
const OUT = 'herald_longpoll_forwarded_total{direction="out"}';
const IN = 'herald_longpoll_forwarded_total{direction="in"}';
const NDJSON = { 'content-type': 'application/x-ndjson' };

const lp = (node, method, token, body) => h.request(node.port, method,
  `${LP}${token ? `&token=${encodeURIComponent(token)}` : ''}`, { body, headers: body ? NDJSON : {}, ms: 20000 });

const frame = (text) => JSON.parse(text);

async function cluster(t, config = '') {
  const redis = await c.startRedis(t);
  const nodes = await c.startNodes(t, 2, { redis, config: 'longpoll = { poll_ms = 1500 }\n' + config });
  await c.linkUp(nodes);
  return { redis, nodes };
}

// Resolves once n's metric reaches want.
const metricIs = (n, name, want) => c.waitFor(async () => h.metricSum(await n.metrics(), name) >= want, `${name} >= ${want}`);

test('a session opened on A is polled and posted to through B: forwarded both ways, one session', { timeout: 60000 }, async (t) => {
  const { nodes: [a, b] } = await cluster(t);
  const open = await lp(a, 'GET');
  assert.equal(open.json.status, 410);
  const token = open.json.token;
  assert.equal(token.slice(48), (await a.status()).node, 'the token names the node of its session');

  // The join goes through B; its reply comes to a poll through B.
  const posted = await lp(b, 'POST', token, JSON.stringify(['1', '1', 'room:lp', 'phx_join', {}]));
  assert.equal(posted.status, 200);
  assert.deepEqual(posted.json, { status: 200 });
  let r = await lp(b, 'GET', token);
  assert.equal(r.json.status, 200, r.body);
  assert.equal(r.json.token, token);
  assert.deepEqual(r.json.messages.map(frame), [['1', '1', 'room:lp', 'phx_reply', { status: 'ok', response: {} }]]);

  // A poll held through B gets a push published on B.
  const held = lp(b, 'GET', token);
  await metricIs(a, IN, 3);
  assert.equal((await h.push(b.port, { channel: 'room:lp', event: 'e', data: { n: 1 } })).status, 200);
  r = await held;
  assert.equal(r.json.status, 200, r.body);
  assert.deepEqual(r.json.messages.map(frame), [[null, null, 'room:lp', 'msg', { data: { n: 1 }, event: 'e' }]]);

  const [ma, mb] = [await a.metrics(), await b.metrics()];
  assert.equal(ma.herald_longpoll_sessions, 1);
  assert.equal(mb.herald_longpoll_sessions, 0);
  assert.equal(h.metricSum(ma, 'herald_longpoll_sessions_opened_total') + h.metricSum(mb, 'herald_longpoll_sessions_opened_total'), 1);
  assert.equal(h.metricSum(mb, OUT), 3);
  assert.equal(h.metricSum(ma, IN), 3);
  assert.equal(h.metricSum(ma, OUT) + h.metricSum(mb, IN), 0);
  assert.equal(h.metricSum(ma, 'herald_longpoll_tokens_rejected_total') + h.metricSum(mb, 'herald_longpoll_tokens_rejected_total'), 0);
});

test('through B: a forged token naming A is refused by A; a token naming no node gets 410 when the wait is over', { timeout: 60000 }, async (t) => {
  const { nodes: [a, b] } = await cluster(t);
  const node = (await a.status()).node;
  let r = await lp(b, 'GET', '0'.repeat(48) + node);
  assert.deepEqual(r.json, { status: 410 });
  assert.equal(h.metricSum(await a.metrics(), 'herald_longpoll_tokens_rejected_total{reason="forged"}'), 1);

  r = await lp(b, 'GET', '0'.repeat(48) + 'x'.repeat(100)); // longer than any token
  assert.deepEqual(r.json, { status: 410 });
  assert.equal(h.metricSum(await b.metrics(), 'herald_longpoll_tokens_rejected_total{reason="forged"}'), 1);

  r = await lp(b, 'GET', '0'.repeat(48) + 'nobody~00000000');
  assert.deepEqual(r.json, { status: 410 });
  const m = await b.metrics();
  assert.equal(h.metricSum(m, 'herald_longpoll_forward_timeouts_total'), 1);
  assert.equal(h.metricSum(m, OUT), 2);
});

test('a client that drops a poll held through B: A is told, and a push meanwhile waits for the next poll', { timeout: 60000 }, async (t) => {
  const { nodes: [a, b] } = await cluster(t, 'longpoll = { poll_ms = 20000 }\n');
  const token = (await lp(a, 'GET')).json.token;
  assert.deepEqual((await lp(a, 'POST', token, JSON.stringify(['1', '1', 'room:c', 'phx_join', {}]))).json, { status: 200 });
  assert.equal((await lp(a, 'GET', token)).json.messages.length, 1); // the join's reply
  const sock = require('node:net').connect(b.port, '127.0.0.1');
  await new Promise((r) => sock.once('connect', r));
  sock.write(`GET ${LP}&token=${encodeURIComponent(token)} HTTP/1.1\r\nHost: b\r\n\r\n`);
  await metricIs(a, IN, 1); // A holds it for B
  sock.destroy();
  // B saw the client leave and told A, which holds no poll for it now.
  await metricIs(a, 'herald_longpoll_forward_cancels_total', 1);
  const pushed = await h.push(a.port, { channel: 'room:c', event: 'kept', data: 1 });
  assert.equal(pushed.status, 200);
  const next = await lp(a, 'GET', token);
  assert.deepEqual(next.json.messages.map(frame), [[null, null, 'room:c', 'msg', { data: 1, event: 'kept' }]]);
});

test('B drains while it holds a poll for A\'s session: 204 with the token, and the session goes on on A', { timeout: 60000 }, async (t) => {
  const { nodes: [a, b] } = await cluster(t, 'drain = { announce_ms = 0, http_idle_ms = 50 }\nlongpoll = { poll_ms = 20000 }\n');
  const token = (await lp(a, 'GET')).json.token;
  assert.deepEqual((await lp(a, 'POST', token, JSON.stringify(['1', '1', 'room:d', 'phx_join', {}]))).json, { status: 200 });
  assert.equal((await lp(a, 'GET', token)).json.messages.length, 1); // the join's reply
  const held = lp(b, 'GET', token);
  await metricIs(a, IN, 1);
  b.srv.proc.kill('SIGTERM');
  const r = await held;
  assert.deepEqual(r.json, { status: 204, token, messages: [] });
  assert.equal((await h.within(b.srv.exited, 20000, 'B to exit')).code, 0);
  assert.equal((await h.push(a.port, { channel: 'room:d', event: 'after', data: 1 })).status, 200);
  const next = await lp(a, 'GET', token);
  assert.deepEqual(next.json.messages.map(frame), [[null, null, 'room:d', 'msg', { data: 1, event: 'after' }]]);
});

// An HTTP proxy that sends each request to the next of ports in turn, as a
// round-robin balancer without sticky sessions does.
async function roundRobin(t, ports) {
  let next = 0;
  const seen = ports.map(() => 0);
  const proxy = http.createServer((req, res) => {
    const i = next++ % ports.length;
    seen[i]++;
    const up = http.request({ host: '127.0.0.1', port: ports[i], method: req.method, path: req.url, headers: req.headers }, (ur) => {
      res.writeHead(ur.statusCode, ur.headers);
      ur.pipe(res);
    });
    up.on('error', () => { res.statusCode = 502; res.end(); });
    req.pipe(up);
  });
  await new Promise((r) => proxy.listen(0, '127.0.0.1', r));
  t.after(() => new Promise((r) => { proxy.closeAllConnections(); proxy.close(r); }));
  return { port: proxy.address().port, seen };
}

const APP = `
return {
  authenticate = function(req) return { id = req.params.user } end,
  message = function(socket, topic, event, payload)
    if event == "ping" then return { pong = payload.n, node = herald.node_id() } end
  end,
}`;

test('phoenix.js LongPoll through a round-robin proxy over both nodes: join, pushes from either node, hook replies, one session', { timeout: 60000 }, async (t) => {
  const redis = await c.startRedis(t);
  const nodes = await c.startNodes(t, 2, {
    redis,
    config: 'longpoll = { poll_ms = 1500 }\nscripts = { "app.lua" }\n',
    files: { 'app.lua': APP },
  });
  await c.linkUp(nodes);
  const rr = await roundRobin(t, nodes.map((n) => n.port));
  const socket = new h.Socket(`http://127.0.0.1:${rr.port}/socket`, {
    transport: LongPoll, params: { user: 'lp' }, reconnectAfterMs: () => 100, rejoinAfterMs: () => 100,
  });
  t.after(() => socket.disconnect());
  const closes = [];
  socket.onClose((e) => closes.push(e.code));
  await h.connect(socket);
  const ch = socket.channel('room:rr');
  const msgs = new h.Inbox();
  ch.on('msg', (p) => msgs.push(p));
  await h.join(ch);

  for (let i = 0; i < 6; i++) {
    const via = nodes[i % 2];
    assert.equal((await h.push(via.port, { channel: 'room:rr', event: 'n', data: i })).status, 200);
    assert.deepEqual(await msgs.next(), { data: i, event: 'n' });
  }
  const pongs = [];
  for (let n = 0; n < 4; n++) {
    pongs.push(await new Promise((resolve, reject) => ch.push('ping', { n })
      .receive('ok', resolve).receive('error', reject).receive('timeout', () => reject(new Error('no reply')))));
  }
  assert.deepEqual(pongs.map((p) => p.pong), [0, 1, 2, 3]);
  assert.equal(new Set(pongs.map((p) => p.node)).size, 1, 'every reply from the session\'s node');

  const ms = await Promise.all(nodes.map((n) => n.metrics()));
  const sum = (name) => ms.reduce((x, m) => x + h.metricSum(m, name), 0);
  assert.equal(sum('herald_longpoll_sessions_opened_total'), 1, 'one session: no request came back 410');
  assert.equal(sum('herald_longpoll_tokens_rejected_total'), 0);
  assert.ok(sum(OUT) >= 4, `forwarded ${sum(OUT)}`);
  assert.ok(rr.seen[0] > 3 && rr.seen[1] > 3, `requests per node ${rr.seen}`);
  assert.deepEqual(closes, []);
  socket.disconnect();
});
