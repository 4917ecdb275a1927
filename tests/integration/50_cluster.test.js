'use strict';
// The cluster (issue 12): herald nodes joined by a real redis-server that
// the test starts itself on 127.0.0.1. Cross-node fan-out exactly once and
// in order, subscriptions in Redis only where there are subscribers, no
// echo, the PUBLISH payload on the wire (both ways), an outage of Redis
// with local delivery going on and the queue accounted for, the
// cluster-wide "listening", the status block, and a node whose Redis is
// not there (yet).
//
// "Nothing arrived" is never awaited as a timeout: a later message that
// travels the same way (same publishing node, so the same Redis connection
// and order) is awaited instead, and then the counts are asserted.
const test = require('node:test');
const assert = require('node:assert/strict');
const h = require('./lib/harness');
const c = require('./lib/cluster');

const UP = 'herald_cluster_link_up{shard="0"}';
const IN = 'herald_cluster_messages_total{direction="in"}';
const OUT = 'herald_cluster_messages_total{direction="out"}';
const LOST = 'herald_cluster_publishes_lost_total';
const QUEUED = 'herald_cluster_queued';
const RECONNECTS = 'herald_cluster_reconnects_total';

async function pub(node, topic, data) {
  const r = await h.push(node.port, { channel: topic, event: 'e', data });
  assert.equal(r.status, 200, r.body);
}

const { linkUp, numsubIs } = c;

const datas = (sub) => sub.got.map((m) => m.payload.data);
const msg = (data) => ({ event: 'msg', payload: { data, event: 'e' } });

test('three nodes on one Redis', async (t) => {
  const redis = await c.startRedis(t);
  const nodes = await c.startNodes(t, 3, { redis });
  const [n1, n2, n3] = nodes;
  await linkUp(nodes);

  await t.test('/admin/status has the cluster block, up after connect; null without a cluster', async (st) => {
    const ids = new Set();
    for (const n of nodes) {
      const cl = (await n.status()).cluster;
      assert.ok(cl && typeof cl === 'object', JSON.stringify(cl));
      assert.equal(typeof cl.node, 'string');
      assert.ok(cl.node.length > 0);
      ids.add(cl.node);
      assert.equal(cl.shards.length, 1, JSON.stringify(cl.shards));
      const { url, up, reconnects } = cl.shards[0];
      assert.deepEqual({ url, up, reconnects }, { url: redis.url, up: true, reconnects: 0 });
      for (const k of ['messages_out', 'messages_in', 'lost', 'queued', 'oldest_queued_ms'])
        assert.equal(typeof cl[k], 'number', `cluster.${k} in ${JSON.stringify(cl)}`);
      assert.equal(cl.lost, 0);
      assert.equal(cl.queued, 0);
    }
    assert.equal(ids.size, 3, 'every node has its own id');
    const [single] = await c.startNodes(st, 1, { redis: null });
    assert.equal((await single.status()).cluster, null);
  });

  await t.test('a publish on node 1 reaches a client on every node exactly once, in order', async (st) => {
    const topic = 'clu:fanout';
    const subs = [];
    for (const n of nodes) subs.push(await c.subscribe(st, n.port, topic));
    await numsubIs(redis, topic, 3); // every node SUBSCRIBEd (one subscriber connection each)
    const before = await Promise.all(nodes.map((n) => n.metrics()));
    const want = [];
    for (let i = 0; i < 50; i++) { await pub(n1, topic, { n: i }); want.push({ n: i }); }
    await pub(n1, topic, { marker: 1 });
    want.push({ marker: 1 });
    await Promise.all(subs.map((s) => s.until((m) => m.payload.data.marker === 1, 'marker 1')));
    // A second marker from node 2: when it has reached node 1's client, an
    // echo of node 1's own PUBLISHes (which Redis sent to node 1 before it
    // saw node 2's) would have arrived there too.
    await pub(n2, topic, { marker: 2 });
    want.push({ marker: 2 });
    await Promise.all(subs.map((s) => s.until((m) => m.payload.data.marker === 2, 'marker 2')));
    for (const [i, s] of subs.entries()) assert.deepEqual(datas(s), want, `client on node ${i + 1}`);
    assert.deepEqual(subs[0].got[0], msg({ n: 0 }), 'the Phoenix message is the same as a local one');
    assert.deepEqual(subs[2].got[0], msg({ n: 0 }));
    const after = await Promise.all(nodes.map((n) => n.metrics()));
    const d = (i, k) => after[i][k] - before[i][k];
    assert.equal(d(0, IN), 1, 'node 1 took in only marker 2');
    assert.equal(d(1, IN), 51, 'node 2 took in node 1\'s 51');
    assert.equal(d(2, IN), 52, 'node 3 took in 51 from node 1 and 1 from node 2');
    assert.ok(d(0, OUT) >= 51, `node 1 sent its 51 publishes (out grew by ${d(0, OUT)})`);
    for (let i = 0; i < 3; i++) assert.equal(d(i, LOST), 0);
  });

  await t.test('a topic with subscribers only on node 2: Redis and node 3 see only that', async (st) => {
    const topic = 'clu:only2';
    const probe = 'clu:only2-probe';
    assert.equal(await redis.numsub(c.topicChannel(topic)), 0);
    const s2 = await c.subscribe(st, n2.port, topic);
    const s3 = await c.subscribe(st, n3.port, probe);
    await numsubIs(redis, topic, 1);
    await numsubIs(redis, probe, 1);
    const before = await Promise.all(nodes.map((n) => n.metrics()));
    await pub(n1, topic, { n: 1 });
    await s2.until((m) => m.payload.data.n === 1);
    // Node 1 PUBLISHes the probe after the message on the same connection:
    // had node 3 been subscribed to the topic, Redis would have sent it the
    // message before the probe.
    await pub(n1, probe, { probe: 1 });
    await s3.until((m) => m.payload.data.probe === 1);
    const after = await Promise.all(nodes.map((n) => n.metrics()));
    assert.equal(after[2][IN] - before[2][IN], 1, 'node 3 took in the probe only');
    assert.equal(after[1][IN] - before[1][IN], 1, 'node 2 took in the message only');
    assert.deepEqual(datas(s2), [{ n: 1 }]);
    assert.deepEqual(datas(s3), [{ probe: 1 }]);
    assert.equal(await redis.numsub(c.topicChannel(topic)), 1, 'only node 2 is subscribed');
    await s2.leave();
    await numsubIs(redis, topic, 0);
  });

  await t.test('no echo: node 1\'s client gets node 1\'s publish once', async (st) => {
    const topic = 'clu:echo';
    const s1 = await c.subscribe(st, n1.port, topic);
    const s2 = await c.subscribe(st, n2.port, topic);
    await numsubIs(redis, topic, 2);
    const before = await n1.metrics();
    await pub(n1, topic, { n: 1 });
    await s2.until((m) => m.payload.data.n === 1);
    // Redis has sent node 1 its own message by now (it reached node 2); a
    // marker from node 2 comes after it on node 1's subscriber connection.
    await pub(n2, topic, { marker: 1 });
    await s1.until((m) => m.payload.data.marker === 1);
    assert.deepEqual(datas(s1), [{ n: 1 }, { marker: 1 }]);
    await s2.until((m) => m.payload.data.marker === 1);
    assert.deepEqual(datas(s2), [{ n: 1 }, { marker: 1 }]);
    assert.equal((await n1.metrics())[IN] - before[IN], 1, 'node 1 took in only node 2\'s marker');
  });

  await t.test('the PUBLISH payload is "h1 <origin node> <event length>\\n<event><the Phoenix message>", both ways', async (st) => {
    const topic = 'clu:wire';
    const raw = await h.wsClient(n1.port);
    c.defer(st, () => raw.ws.terminate());
    raw.send(['1', '1', topic, 'phx_join', {}]);
    assert.equal((await raw.nextJson())[4].status, 'ok');
    const tap = await redis.subscriber(st, c.topicChannel(topic));
    await numsubIs(redis, topic, 2); // node 1 and the tap
    await pub(n1, topic, { n: 1 });
    const text = await raw.next(); // the message as node 1 framed it for its own client
    assert.deepEqual(JSON.parse(text), [null, null, topic, 'msg', { data: { n: 1 }, event: 'e' }]);
    const id1 = (await n1.status()).cluster.node;
    assert.equal((await tap.next()).toString('utf8'), `h1 ${id1} 1\ne${text}`);
    // What is not Herald's is not delivered; another node's message is, as is.
    const foreign = JSON.stringify([null, null, topic, 'msg', { data: { from: 'elsewhere' }, event: 'e' }]);
    await redis.cli('PUBLISH', c.topicChannel(topic), 'not a herald message');
    await redis.cli('PUBLISH', c.topicChannel(topic), `h1 some-other-node 1\ne${foreign}`);
    assert.equal(await raw.next(), foreign);
  });

  await t.test('GET /api/topics/<t> says listening cluster-wide', async (st) => {
    const topic = 'clu:listen';
    const info = async (n) => { const j = await n.topic(topic); return { topic: j.topic, listening: j.listening }; };
    assert.deepEqual(await info(n3), { topic, listening: false });
    const s2 = await c.subscribe(st, n2.port, topic);
    await numsubIs(redis, topic, 1);
    assert.deepEqual(await info(n3), { topic, listening: true });
    assert.deepEqual(await info(n1), { topic, listening: true });
    assert.equal((await n3.topic(topic)).subscribers, 0, 'subscribers stays the local count');
    await s2.leave();
    await numsubIs(redis, topic, 0);
    assert.deepEqual(await info(n3), { topic, listening: false });
  });
});

test('Redis killed mid-stream and restarted: local delivery goes on, the queue is accounted for', async (t) => {
  // Node A logs in to Redis as user "nodea". The restarted Redis has that
  // user disabled until B has subscribed again: a PUBLISH that A flushed
  // before B resubscribed would be lost with no node able to count it, so
  // the test makes the order certain instead of hoping for it.
  const acl = (state) => ['--user', 'nodea', state, '>secret-a', '~*', '&*', '+@all'];
  const redis = await c.startRedis(t, { args: acl('on') });
  const QMAX = 5;
  // Debug logging: a failed connection attempt is logged at debug level
  // ("cluster: cannot connect to ..."), the one event that shows a node
  // tried to reconnect while Redis was away.
  const debug = 'log = { level = "debug" }';
  const [a] = await c.startNodes(t, 1, {
    redis: `redis://nodea:secret-a@127.0.0.1:${redis.port}`, cluster: `queue_max = ${QMAX}`, config: debug,
  });
  const [b] = await c.startNodes(t, 1, { redis, config: debug });
  await linkUp([a, b]);
  const topic = 'clu:outage';
  const sa = await c.subscribe(t, a.port, topic);
  const sb = await c.subscribe(t, b.port, topic);
  await numsubIs(redis, topic, 2);
  await pub(a, topic, { n: 0 });
  await sb.until((m) => m.payload.data.n === 0);
  const before = { a: await a.metrics(), b: await b.metrics() };

  const logFrom = [a.log.length, b.log.length];
  const killed = await redis.kill9();
  assert.equal(killed.signal, 'SIGKILL');
  await linkUp([a, b], 0);
  // Both tried again while nothing listened (connection refused), and must
  // still come back once Redis does.
  await Promise.all([a, b].map((n, i) => n.srv.waitLog(/\[debug\] cluster: .*cannot connect/, logFrom[i], 10000)));
  assert.equal((await a.status()).cluster.shards[0].up, false);

  // Redis is down: every publish on A still reaches A's client.
  const N = 8;
  for (let i = 1; i <= N; i++) {
    await pub(a, topic, { n: i });
    await sa.until((m) => m.payload.data.n === i, `local delivery of ${i} during the outage`);
  }
  let m = await a.metrics();
  assert.equal(m[QUEUED], QMAX, 'the queue holds queue_max publishes');
  assert.equal(m[LOST] - before.a[LOST], N - QMAX, 'what did not fit is counted lost');
  const st = (await a.status()).cluster;
  assert.equal(st.queued, QMAX);
  assert.equal(st.lost, N - QMAX);
  assert.equal(typeof st.oldest_queued_ms, 'number');

  await redis.restart(acl('off'));
  await linkUp([b]);
  await numsubIs(redis, topic, 1); // B resubscribed its topic
  assert.equal((await a.metrics())[UP], 0, 'A cannot log in yet');
  assert.equal((await a.metrics())[QUEUED], QMAX, 'A still holds its queue');
  assert.equal((await redis.cli('ACL', 'SETUSER', 'nodea', 'on')).trim(), 'OK');
  await linkUp([a]);
  await numsubIs(redis, topic, 2);
  await c.waitFor(async () => (await a.metrics())[QUEUED] === 0, 'A\'s queue to be flushed');

  // Both directions work again, without restarting herald.
  await pub(a, topic, { marker: 1 });
  await sb.until((x) => x.payload.data.marker === 1, 'a publish on A after the outage');
  await pub(b, topic, { marker: 2 });
  await sa.until((x) => x.payload.data.marker === 2, 'a publish on B after the outage');
  await sb.until((x) => x.payload.data.marker === 2);

  m = await a.metrics();
  const lost = m[LOST] - before.a[LOST];
  const outage = datas(sb).filter((d) => d.n >= 1).map((d) => d.n);
  assert.equal(outage.length + lost, N, `received ${JSON.stringify(outage)} + lost ${lost} == published ${N}`);
  assert.equal(outage.length, QMAX, 'every queued publish arrived after the reconnect');
  assert.deepEqual(outage, [...outage].sort((x, y) => x - y), 'in order');
  assert.equal(new Set(outage).size, outage.length, 'once each');
  assert.deepEqual(datas(sb), [{ n: 0 }, ...outage.map((n) => ({ n })), { marker: 1 }, { marker: 2 }]);
  // A's client got everything once: nothing flushed after the reconnect came back to it.
  assert.deepEqual(datas(sa), [...Array(N + 1).keys()].map((n) => ({ n })).concat([{ marker: 1 }, { marker: 2 }]));
  const mb = await b.metrics();
  assert.ok(m[RECONNECTS] > before.a[RECONNECTS], 'A counted its reconnect');
  assert.ok(mb[RECONNECTS] > before.b[RECONNECTS], 'B counted its reconnect');
  assert.equal(mb[LOST] - before.b[LOST], 0);
  assert.equal(m[QUEUED], 0);
  assert.ok((await b.status()).cluster.shards[0].reconnects >= 1);
});

test('Redis not there at start: local service goes on; required waits for it', async (t) => {
  const port = await c.freePort(); // nothing listens on it yet
  const redis = await c.startRedis(t, { port, start: false });
  const [loose] = await c.startNodes(t, 1, { redis });
  const [strict] = await c.startNodes(t, 1, { redis, cluster: 'required = true' });

  assert.equal(await loose.readyz(), 200, 'required = false: ready without Redis');
  const topic = 'clu:alone';
  const s = await c.subscribe(t, loose.port, topic);
  await pub(loose, topic, { n: 1 });
  await s.until((m) => m.payload.data.n === 1, 'a local publish without Redis');
  assert.equal((await loose.metrics())[UP], 0);
  assert.equal((await loose.status()).cluster.shards[0].up, false);
  assert.equal(await strict.readyz(), 503, 'required = true: not ready without Redis');
  assert.equal((await strict.metrics())[UP], 0);

  await redis.start();
  await c.waitFor(async () => (await strict.readyz()) === 200, '/readyz 200 once Redis is up', 20000);
  await linkUp([loose, strict]);
  await numsubIs(redis, topic, 1); // the loose node subscribed its topic on connect
  await pub(strict, topic, { n: 2 });
  await s.until((m) => m.payload.data.n === 2, 'a publish from the other node once Redis is up');
  assert.deepEqual(datas(s), [{ n: 1 }, { n: 2 }]);
});
