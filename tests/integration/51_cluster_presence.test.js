'use strict';
// The cluster (issue 12), second part: presence across nodes as phoenix.js
// `Presence` sees it (joins and leaves on another node, a user on two nodes
// as one key with two metas, a leave while the user's node was cut off from
// Redis, a node killed with kill -9 and a node drained), topics spread over two Redis shards, and two herald processes
// sharing one port with SO_REUSEPORT. Every Redis is a real redis-server
// the test starts on a free 127.0.0.1 port and stops by its PID.
//
// Waits are bounded (a Presence view awaited on its onSync events, Redis
// and /admin/status polled); the bounds are the tests' patience, not
// assertions about speed.
const test = require('node:test');
const assert = require('node:assert/strict');
const h = require('./lib/harness');
const c = require('./lib/cluster');

const PRESENCE_CONFIG = `
topics = { { match = 'room:*', presence = true } }
presence = { batch_ms = 20 }
scripts = { "auth.lua" }
`;
// The user id given as a socket param becomes the socket's identity, so
// presence keys are user ids.
const AUTH = 'return { authenticate = function(req) return { id = req.params.user } end }';
const FILES = { 'auth.lua': AUTH };

const upKey = (i) => `herald_cluster_link_up{shard="${i}"}`;
const IN = 'herald_cluster_messages_total{direction="in"}';
const OUT = 'herald_cluster_messages_total{direction="out"}';
const LOST = 'herald_cluster_publishes_lost_total';

async function linkUp(nodes, shards = 1, ms = 15000) {
  await Promise.all(nodes.flatMap((n) => Array.from({ length: shards }, (_, i) =>
    c.waitFor(async () => (await n.metrics())[upKey(i)] === 1, `${upKey(i)} == 1 on node ${n.port}`, ms))));
}

// A phoenix.js socket of `user` on port, joined to topic with a phoenix.js
// Presence on the channel. view() is the Presence as { key: number of metas };
// until(want) resolves once view() equals want (checked now and on every
// onSync), or rejects after ms with the last view. No reconnects: a socket
// whose node went away stays away.
async function presenceClient(t, port, user, topic) {
  const socket = h.phoenixSocket(port, { params: { user }, reconnectAfterMs: () => 60000, rejoinAfterMs: () => 60000 });
  const close = () => h.within(new Promise((r) => socket.disconnect(r)), 10000, 'the phoenix socket to close');
  c.defer(t, () => close().catch(() => {}));
  await h.connect(socket);
  const ch = socket.channel(topic);
  const presence = new h.Presence(ch);
  const waiters = new Set();
  presence.onSync(() => { for (const w of [...waiters]) w(); });
  const view = () => Object.fromEntries(presence.list((k, p) => [k, p.metas.length]).sort(([a], [b]) => (a < b ? -1 : 1)));
  const cl = {
    socket, ch, presence, view, close,
    metas: (key) => presence.list((k, p) => (k === key ? p.metas : null)).find(Boolean) || [],
    until(want, what = JSON.stringify(want), ms = 10000) {
      const ok = () => JSON.stringify(view()) === JSON.stringify(want);
      if (ok()) return Promise.resolve();
      return new Promise((resolve, reject) => {
        const w = () => { if (ok()) { waiters.delete(w); clearTimeout(timer); resolve(); } };
        const timer = setTimeout(() => {
          waiters.delete(w);
          reject(new Error(`timed out after ${ms} ms waiting for ${user}'s Presence on ${topic} via ${port} to be ${what}; it is ${JSON.stringify(view())}`));
        }, ms);
        waiters.add(w);
      });
    },
  };
  await h.join(ch);
  return cl;
}

// Disconnects phoenix.js sockets all at once (each disconnect polls for the
// close for ~150 ms; the cleanup would do them one after the other).
const closeAll = (subs) => h.within(Promise.all(subs.map((s) => new Promise((r) => s.socket.disconnect(r)))), 10000,
  'the phoenix sockets to close');

const presenceHash = (topic) => `herald:p:{${topic}}`;
const aliveKey = (node) => `herald:n:{${node}}:alive`;
const lines = (text) => text.split('\n').map((l) => l.trim()).filter(Boolean);
// The fields of a topic's presence hash that belong to node ("<node> <phx_ref>").
async function fieldsOf(redis, topic, node) {
  return lines(await redis.cli('HKEYS', presenceHash(topic))).filter((f) => f.startsWith(`${node} `));
}

test('presence across nodes through phoenix.js Presence', async (t) => {
  const redis = await c.startRedis(t);
  const [a, b] = await c.startNodes(t, 2, { redis, config: PRESENCE_CONFIG, files: FILES });
  await linkUp([a, b]);
  const topic = 'room:lobby';
  const idB = (await b.status()).cluster.node;

  const alice = await presenceClient(t, a.port, 'alice', topic);
  await alice.until({ alice: 1 });
  const bob = await presenceClient(t, b.port, 'bob', topic);
  // Each side sees the other's user: A hears of bob from B's announcement,
  // B loaded alice from the topic's hash when bob joined (a presence_diff
  // right after bob's presence_state).
  await alice.until({ alice: 1, bob: 1 }, 'alice and bob (bob is on node B)');
  await bob.until({ alice: 1, bob: 1 }, 'alice and bob (alice is on node A)');
  const bobMeta = alice.metas('bob')[0];
  assert.equal(typeof bobMeta.phx_ref, 'string');
  assert.equal(typeof bobMeta.online_at, 'number');
  assert.deepEqual(bob.metas('bob'), [bobMeta], 'A shows the very meta B has');
  assert.equal((await fieldsOf(redis, topic, idB)).length, 1, 'B owns one entry in the topic\'s hash');

  // carol on both nodes: one key with two metas, on either side.
  const carolA = await presenceClient(t, a.port, 'carol', topic);
  const carolB = await presenceClient(t, b.port, 'carol', topic);
  const all = { alice: 1, bob: 1, carol: 2 };
  await Promise.all([alice, bob, carolA, carolB].map((x) => x.until(all, 'carol with two metas')));
  const refs = alice.metas('carol').map((m) => m.phx_ref);
  assert.equal(new Set(refs).size, 2, `two distinct metas: ${JSON.stringify(alice.metas('carol'))}`);
  assert.deepEqual(bob.metas('carol').map((m) => m.phx_ref).sort(), [...refs].sort(), 'both nodes hold the same two metas');
  // The API of a presence topic answers cluster-wide, as Presence does.
  const api = (await h.request(a.port, 'GET', `/api/presence/${topic}`)).json;
  assert.deepEqual(Object.fromEntries(Object.entries(api).map(([k, v]) => [k, v.metas.length]).sort()), all);

  // bob's channel on B leaves: A's Presence drops bob.
  await h.leave(bob.ch);
  await alice.until({ alice: 1, carol: 2 }, 'bob gone after his leave on B');
  // carol's socket on B closes: A's Presence keeps carol with A's meta only.
  await carolB.close();
  await alice.until({ alice: 1, carol: 1 }, 'carol with one meta after her B socket closed');
  assert.deepEqual(alice.metas('carol').map((m) => m.phx_ref), [carolA.metas('carol')[0].phx_ref]);
  // And the other way: alice leaves A, B's remaining view is told too.
  const dave = await presenceClient(t, b.port, 'dave', topic);
  await dave.until({ alice: 1, carol: 1, dave: 1 });
  await alice.close();
  await dave.until({ carol: 1, dave: 1 }, 'alice gone after her socket on A closed');
  await c.waitFor(async () => (await fieldsOf(redis, topic, idB)).length === 1, 'B\'s hash fields: dave\'s only');
});

// A TCP proxy in front of Redis for one node: cut() ends every connection
// through it and refuses new ones (the node's network to Redis is gone),
// restore() lets them through again.
async function redisProxy(t, redisPort) {
  const net = require('node:net');
  let open = true;
  const socks = new Set();
  const server = net.createServer((down) => {
    if (!open) { down.destroy(); return; }
    const up = net.connect(redisPort, '127.0.0.1');
    for (const x of [down, up]) { socks.add(x); x.on('close', () => socks.delete(x)); x.on('error', () => {}); }
    down.pipe(up).pipe(down);
    down.on('close', () => up.destroy());
    up.on('close', () => down.destroy());
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  c.defer(t, () => new Promise((r) => { for (const x of socks) x.destroy(); server.close(r); }));
  return {
    port: server.address().port,
    cut() { open = false; for (const x of socks) x.destroy(); },
    restore() { open = true; },
  };
}

test('users who leave while one node is cut off from Redis: they leave the others\' Presence once it is back, both ways', async (t) => {
  const redis = await c.startRedis(t);
  const proxy = await redisProxy(t, redis.port);
  const [a] = await c.startNodes(t, 1, { redis: `redis://127.0.0.1:${proxy.port}`, config: PRESENCE_CONFIG, files: FILES });
  const [b] = await c.startNodes(t, 1, { redis, config: PRESENCE_CONFIG, files: FILES });
  await linkUp([a, b]);
  const topic = 'room:cut';
  const idA = (await a.status()).cluster.node;
  const alice = await presenceClient(t, a.port, 'alice', topic);
  const carol = await presenceClient(t, a.port, 'carol', topic);
  const bob = await presenceClient(t, b.port, 'bob', topic);
  const dave = await presenceClient(t, b.port, 'dave', topic);
  const everyone = { alice: 1, bob: 1, carol: 1, dave: 1 };
  await bob.until(everyone);
  await carol.until(everyone);

  proxy.cut();
  await c.waitFor(async () => (await a.metrics())[upKey(0)] === 0, 'A\'s link down');
  await alice.close(); // A drops her; nothing reaches Redis or B
  await dave.close(); // B drops him and tells Redis; A does not hear it
  await carol.until({ bob: 1, carol: 1, dave: 1 }, 'alice gone on A');
  await bob.until({ alice: 1, bob: 1, carol: 1 }, 'dave gone on B (B cannot know of alice yet)');

  proxy.restore();
  await linkUp([a]);
  await bob.until({ bob: 1, carol: 1 }, 'alice gone on B once A is back');
  await carol.until({ bob: 1, carol: 1 }, 'dave gone on A once A loaded the hash again');
  assert.equal(h.metricSum(await a.metrics(), 'herald_cluster_presence_stale_total'), 1);
  assert.equal((await fieldsOf(redis, topic, idA)).length, 1, 'A\'s fields in the hash: carol\'s only');
  assert.deepEqual(carol.view(), { bob: 1, carol: 1 });
});

test('joins while Redis does not answer (over cluster.queue_max in flight): not sent then, resynced after, every user on the peer', async (t) => {
  const redis = await c.startRedis(t);
  const [a] = await c.startNodes(t, 1, { redis, cluster: 'queue_max = 4', config: PRESENCE_CONFIG, files: FILES });
  const [b] = await c.startNodes(t, 1, { redis, config: PRESENCE_CONFIG, files: FILES });
  await linkUp([a, b]);
  const topic = 'room:busy';
  const bob = await presenceClient(t, b.port, 'bob', topic);
  const alice = await presenceClient(t, a.port, 'alice', topic);
  await bob.until({ alice: 1, bob: 1 });
  // Writes wait in Redis (PUBLISH and HSET among them) while 10 users join on A.
  await redis.cli('CLIENT', 'PAUSE', '3000', 'WRITE');
  const users = Array.from({ length: 10 }, (_, i) => `u${i}`);
  await Promise.all(users.map((u) => presenceClient(t, a.port, u, topic)));
  const deferred = h.metricSum(await a.metrics(), 'herald_cluster_presence_deferred_total');
  assert.ok(deferred >= 1, `presence changes held back: ${deferred}`);
  // Once Redis answers again, A sends its presence again: B sees everyone.
  const all = Object.fromEntries(['alice', 'bob', ...users].sort().map((k) => [k, 1]));
  await bob.until(all, 'every user of A on B after the resync', 15000);
  assert.equal(h.metricSum(await a.metrics(), 'herald_cluster_publishes_lost_total'), 0);
});

test('kill -9 of a node: its users leave the peers\' Presence after node_timeout_ms', async (t) => {
  const redis = await c.startRedis(t);
  const TIMEOUT = 2000;
  const [a, b] = await c.startNodes(t, 2, {
    redis, cluster: `node_timeout_ms = ${TIMEOUT}, heartbeat_ms = 200`, config: PRESENCE_CONFIG, files: FILES,
  });
  await linkUp([a, b]);
  const topic = 'room:crash';
  const idA = (await a.status()).cluster.node;
  const idB = (await b.status()).cluster.node;
  const alice = await presenceClient(t, a.port, 'alice', topic);
  const carolA = await presenceClient(t, a.port, 'carol', topic);
  await presenceClient(t, b.port, 'bob', topic);
  await presenceClient(t, b.port, 'dave', topic);
  await presenceClient(t, b.port, 'carol', topic);
  await alice.until({ alice: 1, bob: 1, carol: 2, dave: 1 }, 'everyone, carol twice');
  assert.equal((await fieldsOf(redis, topic, idB)).length, 3);
  assert.equal(Number((await redis.cli('EXISTS', aliveKey(idB))).trim()), 1, 'B keeps its liveness key');

  const logFrom = a.log.length;
  const killed = await b.kill9();
  assert.equal(killed.signal, 'SIGKILL');
  // Nothing told A: it finds B's liveness key expired and drops B's entries.
  await alice.until({ alice: 1, carol: 1 }, 'B\'s users gone, carol with her A meta', 3 * TIMEOUT);
  assert.deepEqual(alice.metas('carol').map((m) => m.phx_ref), [carolA.metas('carol')[0].phx_ref]);
  await a.srv.waitLog(new RegExp(`cluster: node ${idB} is gone: 3 presence entries withdrawn`), logFrom, 5000);
  assert.equal(Number((await redis.cli('EXISTS', aliveKey(idB))).trim()), 0);
  // A deleted the dead node's fields from the hash; its own stay.
  await c.waitFor(async () => (await fieldsOf(redis, topic, idB)).length === 0, 'B\'s fields deleted from the hash');
  assert.equal((await fieldsOf(redis, topic, idA)).length, 2);
  // A late joiner on A is not shown the dead node's users either.
  const erin = await presenceClient(t, a.port, 'erin', topic);
  await erin.until({ alice: 1, carol: 1, erin: 1 });
});

for (const disconnect of [true, false]) {
  const what = disconnect
    ? 'SIGTERM (drain): the drained node\'s users leave the peers\' Presence at once'
    : 'SIGTERM (drain) with drain.disconnect_sockets = false: the withdrawal alone removes its users';
  test(what, async (t) => {
    const redis = await c.startRedis(t);
    // node_timeout_ms = 60000: within the wait below no entry can expire,
    // so a leave can only come from the drain.
    const [a, b] = await c.startNodes(t, 2, {
      redis, cluster: 'node_timeout_ms = 60000',
      config: `${PRESENCE_CONFIG}drain = { disconnect_sockets = ${disconnect} }\n`, files: FILES,
    });
    await linkUp([a, b]);
    const topic = 'room:drain';
    const idB = (await b.status()).cluster.node;
    const alice = await presenceClient(t, a.port, 'alice', topic);
    await presenceClient(t, b.port, 'bob', topic);
    await presenceClient(t, b.port, 'dave', topic);
    await alice.until({ alice: 1, bob: 1, dave: 1 });
    assert.equal((await fieldsOf(redis, topic, idB)).length, 2);

    b.srv.proc.kill('SIGTERM'); // one signal: the drain (b.stop() would also wait for the exit)
    await alice.until({ alice: 1 }, 'B\'s users gone after its drain', 10000);
    const exit = await h.within(b.srv.exited, 20000, 'B to exit after its drain');
    assert.deepEqual(exit, { code: 0, signal: null }, 'the drain ends with exit 0');
    assert.match(b.log, /drain: phase presence done in \d+ ms/);
    assert.deepEqual(await fieldsOf(redis, topic, idB), [], 'B\'s fields are gone from the hash');
    assert.equal(Number((await redis.cli('EXISTS', aliveKey(idB))).trim()), 0, 'B deleted its liveness key');
    assert.ok(!/cluster: node \S+ is gone/.test(a.log), 'A did not have to find B dead');
  });
}

// Jump consistent hash of FNV-1a 64 (the shard of a topic; core/cluster.c).
const MASK = (1n << 64n) - 1n;
function shardOf(topic, n) {
  let key = 14695981039346656037n;
  for (const byte of Buffer.from(topic)) key = ((key ^ BigInt(byte)) * 1099511628211n) & MASK;
  let b = -1n;
  let j = 0n;
  while (j < BigInt(n)) {
    b = j;
    key = (key * 2862933555777941757n + 1n) & MASK;
    j = BigInt(Math.trunc(Number(b + 1n) * (2147483648 / Number((key >> 33n) + 1n))));
  }
  return Number(b);
}

test('two Redis shards: topics spread over both, each on exactly one, every publish once', async (t) => {
  const shards = [await c.startRedis(t), await c.startRedis(t)];
  const [n1, n2] = await c.startNodes(t, 2, { redis: shards });
  await linkUp([n1, n2], 2);
  for (const n of [n1, n2]) assert.deepEqual((await n.status()).cluster.shards.map((s) => s.url), shards.map((r) => r.url));
  const N = 40;
  const topics = Array.from({ length: N }, (_, i) => `shard:${i}`);
  const expected = [new Set(), new Set()];
  for (const tp of topics) expected[shardOf(tp, 2)].add(c.topicChannel(tp));
  assert.ok(expected[0].size > 0 && expected[1].size > 0, 'the topic names hash onto both shards');

  const subs = await Promise.all(topics.map((tp) => c.subscribe(t, n2.port, tp)));
  const channelsOn = async (r) => new Set(lines(await r.cli('PUBSUB', 'CHANNELS', 'herald:t:*')));
  const seen = await c.waitFor(async () => {
    const on = await Promise.all(shards.map(channelsOn));
    return on[0].size + on[1].size === N ? on : null;
  }, `${N} channels subscribed over the two shards`);
  for (const i of [0, 1]) {
    assert.ok(seen[i].size > 0, `shard ${i} has subscribers`);
    assert.deepEqual([...seen[i]].sort(), [...expected[i]].sort(), `shard ${i} holds the topics that hash to it`);
  }
  const union = new Set([...seen[0], ...seen[1]]);
  assert.deepEqual([...union].sort(), topics.map(c.topicChannel).sort(), 'the union is the 40 channels, each once');
  for (const tp of topics) {
    const i = shardOf(tp, 2);
    assert.equal(await shards[i].numsub(c.topicChannel(tp)), 1, `${tp} on shard ${i}`);
    assert.equal(await shards[1 - i].numsub(c.topicChannel(tp)), 0, `${tp} not on shard ${1 - i}`);
  }

  const before = [await n1.metrics(), await n2.metrics()];
  const pushAll = async (tag) => {
    const r = await h.push(n1.port, topics.map((tp) => ({ channel: tp, event: 'e', data: { tp, tag } })));
    assert.equal(r.status, 200, r.body);
  };
  await pushAll('first');
  await Promise.all(subs.map((s) => s.until((m) => m.payload.data.tag === 'first', `first on ${s.topic}`)));
  // A second round on the same way (same node, same shard link, same
  // order): a duplicate of the first would have arrived before it.
  await pushAll('second');
  await Promise.all(subs.map((s) => s.until((m) => m.payload.data.tag === 'second', `second on ${s.topic}`)));
  for (const s of subs) {
    assert.deepEqual(s.got, ['first', 'second'].map((tag) => ({ event: 'msg', payload: { event: 'e', data: { tp: s.topic, tag } } })),
      `exactly once each on ${s.topic}`);
  }
  const after = [await n1.metrics(), await n2.metrics()];
  assert.equal(after[0][OUT] - before[0][OUT], 2 * N, 'node 1 sent one PUBLISH per publish');
  assert.equal(after[1][IN] - before[1][IN], 2 * N, 'node 2 took each in once');
  assert.equal(after[0][LOST] - before[0][LOST], 0);
  await closeAll(subs);
});

// One keep-alive HTTP connection to a shared port: every request on it
// reaches the process that accepted it.
function pinned(conn, id) {
  const call = async (method, p, body) => {
    const b = body === undefined ? '' : JSON.stringify(body);
    const head = `${method} ${p} HTTP/1.1\r\nHost: 127.0.0.1\r\n` +
      (body === undefined ? '' : `Content-Type: application/json\r\nContent-Length: ${Buffer.byteLength(b)}\r\n`) + '\r\n';
    conn.write(head + b);
    return conn.response();
  };
  return {
    id, conn, call,
    async status() {
      const r = await call('GET', '/admin/status');
      assert.equal(r.status, 200, r.body);
      assert.equal(r.json.node, id, 'the same process answers on a kept-alive connection');
      return r.json;
    },
  };
}

test('two processes on one port (SO_REUSEPORT) in one cluster: clients spread, every publish reaches all once', async (t) => {
  const redis = await c.startRedis(t);
  const port = await c.freePort();
  // The join reply names the node that accepted the socket.
  const files = { 'where.lua': 'return { join = function() return true, { reply = { node = herald.node_id() } } end }' };
  const nodes = await c.startNodes(t, 2, {
    redis, files, config: `listen = { host = "127.0.0.1", port = ${port}, reuseport = true }\nscripts = { "where.lua" }\n`,
  });
  assert.deepEqual(nodes.map((n) => n.port), [port, port], 'both listen on the one port');
  // The config has a single listener, so a process cannot be addressed by
  // a port of its own: the test keeps one HTTP connection to each instead,
  // opening connections (bounded) until the kernel gave it one per process
  // (each names its node in /admin/status).
  const pins = new Map();
  for (let i = 0; i < 200 && pins.size < 2; i++) {
    const conn = await h.httpConn(port);
    const r = await pinned(conn, null).call('GET', '/admin/status');
    assert.equal(r.status, 200, r.body);
    if (pins.has(r.json.node)) conn.end();
    else { pins.set(r.json.node, pinned(conn, r.json.node)); c.defer(t, () => conn.end()); }
  }
  assert.equal(pins.size, 2, 'connections to the shared port reached both processes');
  const [p1, p2] = [...pins.values()];
  await c.waitFor(async () => (await Promise.all([p1, p2].map((p) => p.status()))).every((s) => s.cluster.shards[0].up),
    'both processes\' Redis links up', 15000);

  const topic = 'rp:all';
  const clients = await Promise.all(Array.from({ length: 20 }, () => c.subscribe(t, port, topic)));
  const byNode = {};
  for (const cl of clients) byNode[cl.joinReply.node] = (byNode[cl.joinReply.node] || 0) + 1;
  assert.deepEqual(Object.keys(byNode).sort(), [p1.id, p2.id].sort(), `the 20 clients spread over both processes: ${JSON.stringify(byNode)}`);
  for (const p of [p1, p2]) {
    const st = await p.status();
    assert.equal(st.connections, byNode[p.id], `process ${p.id} holds the sockets whose join it answered`);
    const tr = await p.call('GET', `/api/topics/${topic}`);
    assert.equal(tr.json.subscribers, byNode[p.id]);
  }
  await c.waitFor(async () => (await redis.numsub(c.topicChannel(topic))) === 2, 'both processes subscribed in Redis');

  const pub = async (p, data) => {
    const r = await p.call('POST', '/api/push', { channel: topic, event: 'e', data });
    assert.equal(r.status, 200, r.body);
    await Promise.all(clients.map((cl) => cl.until((m) => m.payload.data.n === data.n, `publish ${data.n}`)));
  };
  // From one process, then the other, then the first again: an echo (or any
  // duplicate) of a publish would reach its clients before the next one.
  await pub(p1, { n: 1 });
  await pub(p2, { n: 2 });
  await pub(p1, { n: 3 });
  for (const cl of clients) assert.deepEqual(cl.got.map((m) => m.payload.data), [{ n: 1 }, { n: 2 }, { n: 3 }]);
  await closeAll(clients);
});
