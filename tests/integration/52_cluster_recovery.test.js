'use strict';
// Issue 14's proof: history and recovery in a cluster. Two herald nodes on
// one redis-server (started by the test on a free port, stopped by PID)
// behind the test balancer (round robin; a node that refuses is skipped),
// 500 phoenix.js clients with examples/recovery.js on one topic and a few
// on a second, and a publisher numbering its messages over a keep-alive
// connection through the balancer (a publish answered non-2xx is sent
// again; only numbers answered 2xx count). Node 1 is restarted (SIGTERM:
// its drain closes the WebSockets with 1012, phoenix.js reconnects through
// the balancer to node 2 and rejoins with since), then node 2; each comes
// back on its own port and the balancer uses it again once its /readyz
// says so. Then the stream in Redis holds every acknowledged number once
// and in order, and every client got exactly the stream after its first
// join, each message once and in order, through the helper and on the
// wire; no join was answered recovered: false.
//
// Also: a client away longer than history_ttl_ms, and a rejoin with a
// wrong epoch, get recovered: false (onGap) and nothing replayed.
const test = require('node:test');
const assert = require('node:assert/strict');
const h = require('./lib/harness');
const c = require('./lib/cluster');
const { balancer } = require('./lib/balancer');
const r = require('./lib/recovery');

const N = Number(process.env.RECOVERY_CLIENTS || 500); // on TOPIC
const M = 20;                                         // of them also on SIDE
const TOPIC = 'room:proof';
const SIDE = 'room:side';
const PHASES = ['announce', 'stop_accepting', 'http', 'flush', 'disconnect', 'presence'];

const config = (port, redis) => `listen = { host = "127.0.0.1", port = ${port} }
cluster = { redis = "${redis.url}", required = true }
drain = { timeout_ms = 15000, announce_ms = 200, disconnect_rate = 1000, http_idle_ms = 100 }
topics = {
  { match = "room:*", history_size = 10000, history_ttl_ms = 60000, recover_max = 1000 },
  { match = "short:*", history_size = 100, history_ttl_ms = 300, recover_max = 100 },
}
`;

// A node on port (a free one unless given), ready (its Redis link up:
// cluster.required); stopped when the test ends, and the test then fails
// on an [error] line or an exit other than 0.
async function node(t, redis, port) {
  if (port === undefined) port = await c.freePort();
  const srv = await h.startHerald(config(port, redis));
  let finished = false;
  srv.finish = async () => { if (!finished) { finished = true; await h.finish(srv); } };
  c.defer(t, () => srv.finish());
  await c.waitFor(async () => (await h.request(srv.port, 'GET', '/readyz')).status === 200,
    `node ${port} ready (its Redis link up)`, 15000);
  return srv;
}

const subscribers = async (port, topic) => {
  try { return (await h.request(port, 'GET', `/api/topics/${encodeURIComponent(topic)}`)).json.subscribers; } catch { return 0; }
};

// A recovering client (lib/recovery.js) disconnected when the test ends.
async function client(t, port, topics, opts) {
  const cl = await r.recoveringClient(port, topics, opts);
  c.defer(t, () => r.disconnect([cl]));
  return cl;
}

test('500 clients, two nodes restarted one after the other under continuous publishing: every acknowledged message once and in order', { timeout: 90000 }, async (t) => {
  const began = Date.now();
  const redis = await c.startRedis(t);
  const nodes = [await node(t, redis), await node(t, redis)];
  const lb = await balancer(nodes.map((n) => n.port), { rotate: true });
  c.defer(t, () => lb.close());

  // The clients, 50 at a time (the first M also on SIDE).
  const clients = [];
  c.defer(t, () => r.disconnect(clients));
  for (let i = 0; i < N; i += 50) {
    const batch = [];
    for (let j = i; j < Math.min(N, i + 50); j++) batch.push(r.recoveringClient(lb.port, j < M ? [TOPIC, SIDE] : [TOPIC]));
    clients.push(...await Promise.all(batch));
  }
  const everyone = async (topic, n) => (await subscribers(nodes[0].port, topic)) + (await subscribers(nodes[1].port, topic)) === n;
  await c.waitFor(() => everyone(TOPIC, N), `${N} subscribers of ${TOPIC}`);
  const spread = [await subscribers(nodes[0].port, TOPIC), await subscribers(nodes[1].port, TOPIC)];

  const pub = r.publisher(lb.port, [TOPIC, SIDE]);
  c.defer(t, () => pub.stop());

  // Restarts a node: SIGTERM, its drain, exit 0; a new process on the same
  // port, given back to the balancer once its /readyz is 200.
  const restart = async (i) => {
    const old = nodes[i];
    old.proc.kill('SIGTERM');
    const exit = await h.within(old.exited, 20000, `node ${i + 1} to exit after SIGTERM`);
    assert.deepEqual(exit, { code: 0, signal: null }, old.log);
    for (const phase of PHASES) assert.match(old.log, new RegExp(`drain: phase ${phase} done in \\d+ ms`));
    await old.finish(); // (its log: no [error] line)
    const slot = lb.backends.indexOf(old.port);
    lb.backends.splice(slot, 1);
    nodes[i] = await node(t, redis, old.port);
    lb.backends.splice(slot, 0, old.port);
  };

  await pub.acknowledged(100);
  await restart(0);
  await c.waitFor(() => everyone(TOPIC, N), `all ${N} clients back after node 1's restart`, 30000);
  await pub.acknowledged(pub.acked[TOPIC].length + 100);
  await restart(1);
  await c.waitFor(() => everyone(TOPIC, N), `all ${N} clients back after node 2's restart`, 30000);
  await c.waitFor(() => everyone(SIDE, M), `all ${M} clients of ${SIDE} back`, 30000);
  await pub.acknowledged(pub.acked[TOPIC].length + 100);
  await pub.stop();

  // The streams: every acknowledged number once, in order, at offsets
  // 1, 2, 3, ... Every client reaches the top, and then has exactly the
  // stream after its first join.
  const streams = {};
  for (const topic of [TOPIC, SIDE]) {
    streams[topic] = await r.readStream(redis.cli, topic);
    assert.deepEqual(r.checkStream(streams[topic], pub.acked[topic], pub.unknown), [], topic);
  }
  await Promise.all(clients.flatMap((cl) => Object.entries(cl.on).map(([topic, s]) => s.reach(streams[topic].top))));
  const k = r.tally(clients, streams);
  // Redis ran one EVALSHA per message stored and one per history read.
  const evalsha = Number(/cmdstat_evalsha:calls=(\d+)/.exec(await redis.cli('INFO', 'commandstats'))[1]);
  const reads = evalsha - streams[TOPIC].top - streams[SIDE].top;
  const joins = N + M + k.recoveries + k.gaps;
  const ms = Date.now() - began;
  t.diagnostic(`clients: ${N} on ${TOPIC} (${spread.join(' + ')} on the two nodes at the start), ${M} of them also on ${SIDE}`);
  t.diagnostic(`messages: ${pub.acked[TOPIC].length} acknowledged on ${TOPIC}, ${pub.acked[SIDE].length} on ${SIDE}; ` +
    `${pub.retried.length} answered non-2xx and sent again (${[...new Set(pub.retried)].join(', ') || '-'}), ${pub.unknown.length} unanswered`);
  t.diagnostic(`received: ${k.deliveries} of ${k.expected} expected; lost: ${k.lost}; duplicated: ${k.duplicated}; ` +
    `out of order: ${k.outOfOrder}; offsets sent twice on the wire: ${k.wireDup}; ` +
    `recoveries (recovered: true): ${k.recoveries}; gaps (recovered: false): ${k.gaps}`);
  t.diagnostic(`history reads: ${reads} for ${joins} joins (${N + M} first joins, ${k.recoveries + k.gaps} rejoins); ${ms} ms`);

  assert.deepEqual(k.bad, [], 'every client got exactly the stream after its first join');
  assert.deepEqual({ lost: k.lost, duplicated: k.duplicated, outOfOrder: k.outOfOrder, wireDup: k.wireDup, gaps: k.gaps },
    { lost: 0, duplicated: 0, outOfOrder: 0, wireDup: 0, gaps: 0 });
  assert.equal(k.deliveries, k.expected);
  assert.deepEqual(pub.unknown, [], 'every publish was answered');
  for (const cl of clients) {
    assert.ok(cl.closes.length >= 1 && cl.closes.every((code) => code === 1012), `closes ${JSON.stringify(cl.closes)}`);
    for (const s of Object.values(cl.on)) assert.ok(s.recovered >= 1, 'every client was moved once at least, and recovered');
  }
});

// The test balancer in front of port, closed when the test ends.
async function balanced(t, port) {
  const lb = await balancer([port]);
  c.defer(t, () => lb.close());
  return lb;
}

async function publish(port, topic, numbers) {
  for (const n of numbers) assert.equal((await h.push(port, { channel: topic, event: 'n', data: { n } })).status, 200);
}

test('a client away longer than history_ttl_ms gets recovered: false, and nothing replayed', { timeout: 60000 }, async (t) => {
  const redis = await c.startRedis(t);
  const [n1, n2] = [await node(t, redis), await node(t, redis)];
  const topic = 'short:1';
  const lb = await balanced(t, n1.port);
  const cl = await client(t, lb.port, [topic]);
  const s = cl.on[topic];
  assert.equal(s.first.offset, 0);
  await publish(n2.port, topic, [1, 2]); // through Redis from the other node
  await s.count(2);

  // Cut the client (no leave: its TCP connection destroyed) and keep it
  // away; publish while it is away, then let the stream expire.
  const backends = lb.backends.splice(0);
  cl.socket.conn.terminate();
  await c.waitFor(async () => (await subscribers(n1.port, topic)) === 0, 'node 1 to see the cut');
  await publish(n2.port, topic, [3, 4]);
  await c.waitFor(async () => (await redis.cli('EXISTS', `herald:h:{${topic}}`, `herald:hm:{${topic}}`)).trim() === '0',
    `the stream of ${topic} to expire in Redis (history_ttl_ms 300)`, 10000);
  lb.backends.push(...backends);
  const again = await s.replies.next(15000, 'the rejoin reply');
  assert.equal(again.recovered, false);
  assert.match(again.epoch, /^[0-9a-f]{16}$/);
  assert.notEqual(again.epoch, s.first.epoch, 'a stream gone from Redis starts again with a new epoch');
  assert.equal(again.offset, 0);
  assert.equal(s.gaps, 1);
  assert.equal(s.recovered, 0);
  await publish(n2.port, topic, [5]);
  await s.count(3);
  assert.deepEqual(s.got, [{ n: 1, offset: 1 }, { n: 2, offset: 2 }, { n: 5, offset: 1 }], 'nothing of 3 and 4 replayed');
  assert.deepEqual(s.ch.recovery.since(), { epoch: again.epoch, offset: 1 });
});

test('a rejoin with a wrong epoch gets recovered: false and nothing replayed; the right one is replayed', { timeout: 60000 }, async (t) => {
  const redis = await c.startRedis(t);
  const [n1, n2] = [await node(t, redis), await node(t, redis)];
  const topic = 'room:epoch';
  const a = await client(t, n1.port, [topic]);
  const { epoch } = a.on[topic].first;
  assert.match(epoch, /^[0-9a-f]{16}$/);
  await publish(n1.port, topic, [1, 2, 3, 4, 5, 6, 7, 8]);
  await a.on[topic].count(8);

  // The helper resuming from a saved position of another epoch, on the
  // other node.
  const wrong = epoch.replace(/^./, (d) => (d === '0' ? '1' : '0'));
  const b = await client(t, n2.port, [topic], { since: { epoch: wrong, offset: 6 } });
  const bs = b.on[topic];
  assert.deepEqual(bs.first, { recovered: false, epoch, offset: 8 });
  assert.equal(bs.gaps, 1);
  await publish(n1.port, topic, [9]);
  await bs.count(1);
  assert.deepEqual(bs.got, [{ n: 9, offset: 9 }], 'nothing replayed before the live message');
  assert.deepEqual(bs.frames, [9]);

  // The same position in the right epoch is replayed (the control).
  const d = await client(t, n2.port, [topic], { since: { epoch, offset: 6 } });
  const ds = d.on[topic];
  assert.deepEqual(ds.first, { recovered: true, epoch, offset: 9 });
  await ds.count(3);
  assert.deepEqual(ds.got, [{ n: 7, offset: 7 }, { n: 8, offset: 8 }, { n: 9, offset: 9 }]);
  assert.equal(ds.recovered, 1);
  assert.equal(ds.gaps, 0);
});
